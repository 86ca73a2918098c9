"""How policies and models are used: generation, apply/remove on pipelines, ablation."""

"""cachepilot: learned cache policies for diffusion transformers, shipped as diffusers plugins."""

__version__ = "0.1.0"

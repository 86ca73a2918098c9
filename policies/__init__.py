"""Who decides what to cache: the Policy protocol, heuristic baselines, the learned network, policy files."""

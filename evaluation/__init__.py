"""Evaluation: generate under a cache method and score against the uncached output; the oracle's measurements.

Training and the ablation both build on it; it imports neither."""

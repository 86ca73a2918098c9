"""Gymnasium environments around denoising: single and batched episodes, observations, rewards."""

"""ToyWanPipeline: a text-to-video DiffusionPipeline whose denoising loop mirrors diffusers' WanPipeline.

Like WanPipeline it runs the conditional and the unconditional branch as two transformer calls inside
`transformer.cache_context("cond"/"uncond", step_index=i, sigma=..., num_inference_steps=...)`, so diffusers' own caches and
cachepilot's runtime hook into it exactly as they hook into Wan.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch
from diffusers import DiffusionPipeline, UniPCMultistepScheduler, WanTransformer3DModel
from diffusers.pipelines.wan.pipeline_output import WanPipelineOutput

from .components import with_position
from .scenes import HEIGHT, NUM_FRAMES, WIDTH
from .text_encoder import ToyPromptEncoder


# What `prepare_denoising` takes besides the prompts, step count, guidance and generators: `__call__`'s defaults
PREPARED_INPUTS = {"num_frames": NUM_FRAMES, "height": HEIGHT, "width": WIDTH, "num_videos_per_prompt": 1,
                   "latents": None, "prompt_embeds": None, "negative_prompt_embeds": None}


class ToyWanPipeline(DiffusionPipeline):
    model_cpu_offload_seq = "text_encoder->transformer"
    _callback_tensor_inputs = ["latents", "prompt_embeds", "negative_prompt_embeds"]

    def __init__(self, text_encoder: ToyPromptEncoder, transformer: WanTransformer3DModel, scheduler: UniPCMultistepScheduler):
        super().__init__()
        self.register_modules(text_encoder=text_encoder, transformer=transformer, scheduler=scheduler)

    @property
    def guidance_scale(self) -> float:
        return self._guidance_scale

    @property
    def do_classifier_free_guidance(self) -> bool:
        return self._guidance_scale > 1.0

    @property
    def num_timesteps(self) -> int:
        return self._num_timesteps

    @property
    def current_timestep(self):
        return self._current_timestep

    @property
    def interrupt(self) -> bool:
        return self._interrupt

    def encode_prompt(
        self,
        prompt: str | list[str],
        negative_prompt: str | list[str] | None = None,
        do_classifier_free_guidance: bool = True,
        num_videos_per_prompt: int = 1,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        prompt = [prompt] if isinstance(prompt, str) else list(prompt)
        prompt_embeds = self.text_encoder.encode(prompt).repeat_interleave(num_videos_per_prompt, dim=0)
        negative_prompt_embeds = None
        if do_classifier_free_guidance:
            negative_prompt = negative_prompt or ""
            negative_prompt = [negative_prompt] * len(prompt) if isinstance(negative_prompt, str) else list(negative_prompt)
            if len(negative_prompt) != len(prompt):
                raise ValueError(f"got {len(negative_prompt)} negative prompts for {len(prompt)} prompts")
            negative_prompt_embeds = self.text_encoder.encode(negative_prompt).repeat_interleave(num_videos_per_prompt, dim=0)
        return prompt_embeds, negative_prompt_embeds

    def prepare_latents(self, batch_size: int, num_frames: int, height: int, width: int, generator, latents=None) -> torch.Tensor:
        if latents is not None:
            return latents.to(device=self._execution_device, dtype=self.transformer.dtype)
        shape = (batch_size, self.transformer.config.out_channels, num_frames, height, width)
        if isinstance(generator, list) and len(generator) != batch_size:
            raise ValueError(f"got {len(generator)} generators for a batch of {batch_size}")
        if isinstance(generator, list):
            noise = torch.cat([torch.randn(shape[1:], generator=g, dtype=torch.float32).unsqueeze(0) for g in generator])
        else:
            noise = torch.randn(shape, generator=generator, dtype=torch.float32)
        return noise.to(device=self._execution_device, dtype=self.transformer.dtype)

    def prepare_denoising(self, prompt=None, negative_prompt=None, num_inference_steps: int = 50,
                          guidance_scale: float = 5.0, generator=None, **inputs):
        """Everything before the loop: embeddings, timesteps, initial latents (see `denoise_step`). `inputs`: the
        rest of `__call__`'s inputs (num_frames, height, width, num_videos_per_prompt, latents, prompt_embeds,
        negative_prompt_embeds), at its defaults where not given."""
        unknown = set(inputs) - set(PREPARED_INPUTS)
        if unknown:
            raise TypeError(f"prepare_denoising got unknown inputs {sorted(unknown)}")
        inputs = PREPARED_INPUTS | inputs
        prompt_embeds, negative_prompt_embeds = inputs["prompt_embeds"], inputs["negative_prompt_embeds"]
        self._guidance_scale = guidance_scale
        self._current_timestep = None
        self._interrupt = False

        if prompt_embeds is None:
            if prompt is None:
                raise ValueError("pass a prompt or prompt_embeds")
            prompt_embeds, negative_prompt_embeds = self.encode_prompt(
                prompt, negative_prompt, self.do_classifier_free_guidance, inputs["num_videos_per_prompt"]
            )
        elif self.do_classifier_free_guidance and negative_prompt_embeds is None:
            negative_prompt_embeds = torch.zeros_like(prompt_embeds)
        device = self._execution_device
        dtype = self.transformer.dtype
        prompt_embeds = prompt_embeds.to(device, dtype)
        if negative_prompt_embeds is not None:
            negative_prompt_embeds = negative_prompt_embeds.to(device, dtype)

        self.scheduler.set_timesteps(num_inference_steps, device=device)
        timesteps = self.scheduler.timesteps
        self._num_timesteps = len(timesteps)
        latents = self.prepare_latents(prompt_embeds.shape[0], inputs["num_frames"], inputs["height"], inputs["width"],
                                       generator, inputs["latents"])
        return latents, prompt_embeds, negative_prompt_embeds, timesteps

    @staticmethod
    def latents_to_frames(latents: torch.Tensor) -> torch.Tensor:
        """The latent is the video itself: (B, C, F, H, W) in [-1, 1] -> (B, F, H, W, C) in [0, 1]."""
        return ((latents.float() + 1) / 2).clamp(0, 1).permute(0, 2, 3, 4, 1)

    def denoise_step(self, latents: torch.Tensor, i: int, t: torch.Tensor, prompt_embeds: torch.Tensor,
                     negative_prompt_embeds: torch.Tensor | None, attention_kwargs: dict | None = None,
                     scheduler=None) -> torch.Tensor:
        """One denoising step exactly as `__call__` takes it (cond, then uncond, in their cache contexts), with
        `scheduler` (default: the pipeline's) so a stepper can keep its own copy and fork."""
        scheduler = scheduler or self.scheduler
        timestep = t.expand(latents.shape[0])
        context = {"step_index": i, "sigma": float(scheduler.sigmas[i]), "num_inference_steps": self._num_timesteps}
        model_input = with_position(latents, self.transformer.config.in_channels)
        with self.transformer.cache_context("cond", **context):
            noise_pred = self.transformer(
                hidden_states=model_input, timestep=timestep, encoder_hidden_states=prompt_embeds,
                attention_kwargs=attention_kwargs, return_dict=False,
            )[0]
        if self.do_classifier_free_guidance:
            with self.transformer.cache_context("uncond", **context):
                noise_uncond = self.transformer(
                    hidden_states=model_input, timestep=timestep, encoder_hidden_states=negative_prompt_embeds,
                    attention_kwargs=attention_kwargs, return_dict=False,
                )[0]
            noise_pred = noise_uncond + self.guidance_scale * (noise_pred - noise_uncond)
        return scheduler.step(noise_pred, t, latents, return_dict=False)[0]

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        negative_prompt: str | list[str] | None = None,
        num_frames: int = NUM_FRAMES,
        height: int = HEIGHT,
        width: int = WIDTH,
        num_inference_steps: int = 50,
        guidance_scale: float = 5.0,
        num_videos_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        output_type: str = "np",
        return_dict: bool = True,
        attention_kwargs: dict[str, Any] | None = None,
        callback_on_step_end: Callable[[Any, int, torch.Tensor, dict], dict] | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ["latents"],
    ):
        """Generate videos. Returns frames as (batch, frames, height, width, 3) in [0, 1] for output_type "np"
        (a tensor for "pt", the raw [-1, 1] latents for "latent")."""
        if output_type not in ("np", "pt", "latent"):
            raise ValueError(f"output_type must be 'np', 'pt' or 'latent', not {output_type!r}")
        for name in callback_on_step_end_tensor_inputs:
            if name not in self._callback_tensor_inputs:
                raise ValueError(f"callback tensor input {name!r} not in {self._callback_tensor_inputs}")
        latents, prompt_embeds, negative_prompt_embeds, timesteps = self.prepare_denoising(
            prompt, negative_prompt, num_inference_steps, guidance_scale, generator, num_frames=num_frames,
            height=height, width=width, num_videos_per_prompt=num_videos_per_prompt, latents=latents,
            prompt_embeds=prompt_embeds, negative_prompt_embeds=negative_prompt_embeds)

        with self.progress_bar(total=num_inference_steps) as progress_bar:
            for i, t in enumerate(timesteps):
                if self.interrupt:
                    continue
                self._current_timestep = t
                latents = self.denoise_step(latents, i, t, prompt_embeds, negative_prompt_embeds, attention_kwargs)

                if callback_on_step_end is not None:
                    local = {"latents": latents, "prompt_embeds": prompt_embeds, "negative_prompt_embeds": negative_prompt_embeds}
                    outputs = callback_on_step_end(self, i, t, {k: local[k] for k in callback_on_step_end_tensor_inputs})
                    latents = outputs.pop("latents", latents)
                    prompt_embeds = outputs.pop("prompt_embeds", prompt_embeds)
                    negative_prompt_embeds = outputs.pop("negative_prompt_embeds", negative_prompt_embeds)
                progress_bar.update()
        self._current_timestep = None

        if output_type == "latent":
            video = latents
        else:
            video = self.latents_to_frames(latents)
            if output_type == "np":
                video = video.cpu().numpy().astype(np.float32)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (video,)
        return WanPipelineOutput(frames=video)

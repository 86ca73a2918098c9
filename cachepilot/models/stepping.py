"""One way to step any supported pipeline: prepare, one denoising step at a time, fork, decode.

A `Stepper` is built from the pipeline's own components and methods (its `encode_prompt`, `prepare_latents`,
scheduler, transformer(s), VAE and video processor) and takes each step exactly as the family's `__call__` does:
the same transformer calls in the same cache contexts (two calls "cond" / "uncond", or one batched
"cond_uncond" call), the same guidance and scheduler step. Stepping to the end is bit-identical to `__call__`
(tests/test_stepping.py). What a step changes lives in a `Denoising` state with its own scheduler copy, so
`fork` gives an independent continuation: the oracle explores several from one step.

Every call also carries the step index, sigma and step count in its cache context (not every family's `__call__`
passes them), so the cache runtime never has to count calls to know where a generation is.
"""

from __future__ import annotations

import copy
import inspect
import math
from dataclasses import dataclass, field, replace
from typing import Any, Callable

import numpy as np
import torch
from diffusers import CogVideoXDPMScheduler
from diffusers.utils.torch_utils import randn_tensor

from cachepilot.errors import InvalidInputError

from .limits import check_generation


@dataclass
class Denoising:
    """Everything a denoising loop carries from one step to the next."""

    latents: torch.Tensor
    timesteps: torch.Tensor
    scheduler: Any  # a private copy: multistep schedulers keep a history of model outputs
    step: int = 0
    extra: dict = field(default_factory=dict)  # per family: embeddings, masks, generators, solver state

    @property
    def done(self) -> bool:
        return self.step >= len(self.timesteps)


def _clone_generators(generators):
    def clone(g):
        if not isinstance(g, torch.Generator):
            return g
        twin = torch.Generator(device=g.device)
        twin.set_state(g.get_state())
        return twin
    return [clone(g) for g in generators] if isinstance(generators, list) else clone(generators)


class Stepper:
    """Steps one family's pipeline (see the module docstring). Subclasses say how a family prepares, steps and
    decodes; the defaults of every option are the pipeline's own `__call__` defaults."""


    def __init__(self, pipe):
        self.pipe = pipe
        params = inspect.signature(type(pipe).__call__).parameters
        self.defaults = {n: p.default for n, p in params.items() if p.default is not inspect.Parameter.empty}

    # ---- the loop -----------------------------------------------------------------------------
    def check_options(self, options: dict) -> None:
        """Refuse what the pipeline's `__call__` does not take."""
        unknown = set(options) - set(self.defaults)
        if unknown:
            raise InvalidInputError(f"{type(self.pipe).__name__} takes no option(s) {', '.join(sorted(unknown))}")

    def prepare(self, prompts: list[str], generators, num_inference_steps: int = 50, guidance_scale: float = 5.0,
                negative_prompt=None, **options) -> Denoising:
        """Encode the prompts, set the timesteps, draw the initial latents: the state before step 0."""
        self.check_options(options)
        opts = {**self.defaults, **options}
        check_generation(self.pipe, len(prompts), num_inference_steps, opts)
        pipe = self.pipe
        pipe._guidance_scale, pipe._attention_kwargs = guidance_scale, None
        pipe._current_timestep, pipe._interrupt = None, False
        state = self._prepare(list(prompts), generators, int(num_inference_steps), float(guidance_scale),
                              negative_prompt, opts)
        pipe._num_timesteps = len(state.timesteps)
        return state

    @torch.no_grad()
    def step(self, state: Denoising) -> Denoising:
        """Take the next denoising step in place (and return the state)."""
        i, t = state.step, state.timesteps[state.step]
        self.pipe._current_timestep = t
        state.latents = self._step(state, i, t)
        state.step += 1
        return state

    def fork(self, state: Denoising) -> Denoising:
        """An independent copy of `state` (tensors are never modified in place, so they are shared)."""
        extra = {k: (_clone_generators(v) if k == "generator" else copy.copy(v)) for k, v in state.extra.items()}
        return replace(state, scheduler=copy.deepcopy(state.scheduler), extra=extra)

    @torch.no_grad()
    def decode(self, state: Denoising) -> np.ndarray:
        """Frames (batch, frames, height, width, 3) in [0, 1], as `__call__(output_type="np")` returns them."""
        self.pipe._current_timestep = None
        return np.asarray(self._decode(state), dtype=np.float32)

    @torch.no_grad()
    def run(self, prompts: list[str], generators, num_inference_steps: int = 50, guidance_scale: float = 5.0,
            on_step: Callable[[int, torch.Tensor], None] | None = None, decode: bool = True, **options):
        """Prepare, step to the end and decode: what `__call__` computes (the final latents if not `decode`).
        `on_step(i, latents)` after each step."""
        state = self.prepare(prompts, generators, num_inference_steps, guidance_scale, **options)
        while not state.done:
            self.step(state)
            if on_step is not None:
                on_step(state.step - 1, state.latents)
        return self.decode(state) if decode else state.latents

    # ---- what a family defines ----------------------------------------------------------------
    def _prepare(self, prompts, generators, steps, guidance, negative_prompt, opts) -> Denoising:
        raise NotImplementedError

    def _step(self, state: Denoising, i: int, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _decode(self, state: Denoising):
        raise NotImplementedError

    # ---- shared pieces ------------------------------------------------------------------------
    @property
    def device(self):
        return self.pipe._execution_device

    def _scheduler(self, steps: int, **kwargs):
        """A copy of the pipeline's scheduler with this generation's timesteps (the pipeline's stays untouched)."""
        scheduler = copy.deepcopy(self.pipe.scheduler)
        retrieve = self._pipeline_function("retrieve_timesteps", required=False)
        if retrieve is not None:
            timesteps, _ = retrieve(scheduler, steps, self.device, **kwargs)
        else:
            scheduler.set_timesteps(steps, device=self.device)
            timesteps = scheduler.timesteps
        return scheduler, timesteps

    def _pipeline_function(self, name: str, required: bool = True):
        """A helper function of the pipeline's own module (its `retrieve_timesteps`, `calculate_shift`, ...)."""
        found = getattr(inspect.getmodule(type(self.pipe)), name, None)
        if found is None and required:
            raise InvalidInputError(f"{type(self.pipe).__name__}'s module has no {name}; this diffusers is not supported")
        return found

    def _context(self, state: Denoising, i: int) -> dict:
        sigmas = getattr(state.scheduler, "sigmas", None)
        sigma = float(sigmas[i]) if sigmas is not None and len(sigmas) > i else None
        return {"step_index": i, "sigma": sigma, "num_inference_steps": len(state.timesteps)}


class WanStepper(Stepper):
    """WanPipeline: cond and uncond calls; Wan2.2's two experts switch at `boundary_ratio`."""


    def _prepare(self, prompts, generators, steps, guidance, negative_prompt, opts):
        pipe = self.pipe
        guidance_2 = opts.get("guidance_scale_2")
        if pipe.config.boundary_ratio is not None and guidance_2 is None:
            guidance_2 = guidance
        pipe._guidance_scale_2 = guidance_2
        embeds, negative = pipe.encode_prompt(prompt=prompts, negative_prompt=negative_prompt,
                                              do_classifier_free_guidance=pipe.do_classifier_free_guidance,
                                              num_videos_per_prompt=1, max_sequence_length=opts["max_sequence_length"],
                                              device=self.device)
        dtype = self.dtype
        scheduler, timesteps = self._scheduler(steps)
        first = pipe.transformer if pipe.transformer is not None else pipe.transformer_2
        latents = pipe.prepare_latents(len(prompts), first.config.in_channels, opts["height"], opts["width"],
                                       opts["num_frames"], torch.float32, self.device, generators, None)
        scheduler.set_begin_index(0)
        boundary = (pipe.config.boundary_ratio * scheduler.config.num_train_timesteps
                    if pipe.config.boundary_ratio is not None else None)
        return Denoising(latents, timesteps, scheduler, extra={
            "embeds": embeds.to(dtype), "negative": None if negative is None else negative.to(dtype),
            "guidance": (guidance, guidance_2), "boundary": boundary, "attention_kwargs": opts.get("attention_kwargs")})

    @property
    def dtype(self):
        return (self.pipe.transformer or self.pipe.transformer_2).dtype

    def expert(self, state: Denoising, i: int) -> int:
        """0: `transformer` (Wan2.1, or Wan2.2's high-noise expert), 1: `transformer_2` (low noise)."""
        boundary = state.extra["boundary"]
        return 0 if boundary is None or state.timesteps[i] >= boundary else 1

    def _step(self, state, i, t):
        pipe, x = self.pipe, state.extra
        expert = self.expert(state, i)
        model = pipe.transformer if expert == 0 else pipe.transformer_2
        model_input = state.latents.to(self.dtype)
        if pipe.config.expand_timesteps:
            mask = torch.ones(state.latents.shape, dtype=torch.float32, device=state.latents.device)
            timestep = (mask[0][0][:, ::2, ::2] * t).flatten().unsqueeze(0).expand(state.latents.shape[0], -1)
        else:
            timestep = t.expand(state.latents.shape[0])
        context = self._context(state, i)
        call = dict(hidden_states=model_input, timestep=timestep, attention_kwargs=x["attention_kwargs"], return_dict=False)
        with model.cache_context("cond", **context):
            noise = model(encoder_hidden_states=x["embeds"], **call)[0]
        if pipe.do_classifier_free_guidance:
            with model.cache_context("uncond", **context):
                uncond = model(encoder_hidden_states=x["negative"], **call)[0]
            noise = uncond + x["guidance"][expert] * (noise - uncond)
        return state.scheduler.step(noise, t, state.latents, return_dict=False)[0]

    def _decode(self, state):
        vae = self.pipe.vae
        latents = state.latents.to(vae.device, dtype=vae.dtype)
        shape = (1, vae.config.z_dim, 1, 1, 1)
        mean = torch.tensor(vae.config.latents_mean).view(shape).to(latents.device, latents.dtype)
        inverse_std = 1.0 / torch.tensor(vae.config.latents_std).view(shape).to(latents.device, latents.dtype)
        video = vae.decode(latents / inverse_std + mean, return_dict=False)[0]
        return self.pipe.video_processor.postprocess_video(video, output_type="np")


class ToyWanStepper(Stepper):
    """ToyWanPipeline: Wan's loop on a latent that is the video itself."""


    def _prepare(self, prompts, generators, steps, guidance, negative_prompt, opts):
        latents, embeds, negative, timesteps = self.pipe.prepare_denoising(
            prompts, negative_prompt, steps, guidance, generators, num_frames=opts["num_frames"], height=opts["height"],
            width=opts["width"])
        return Denoising(latents, timesteps, copy.deepcopy(self.pipe.scheduler),
                         extra={"embeds": embeds, "negative": negative})

    def _step(self, state, i, t):
        return self.pipe.denoise_step(state.latents, i, t, state.extra["embeds"], state.extra["negative"],
                                      scheduler=state.scheduler)

    def _decode(self, state):
        return self.pipe.latents_to_frames(state.latents).cpu().numpy()


class HunyuanVideoStepper(Stepper):
    """HunyuanVideoPipeline: guidance is embedded; a second ("uncond") call only with true CFG."""


    def _encode(self, prompts, opts):
        embeds, pooled, mask = self.pipe.encode_prompt(
            prompt=prompts, prompt_2=None, prompt_template=opts["prompt_template"], num_videos_per_prompt=1,
            device=self.device, max_sequence_length=opts["max_sequence_length"])
        dtype = self.pipe.transformer.dtype
        return {"embeds": embeds.to(dtype), "mask": mask.to(dtype), "pooled": pooled.to(dtype)}

    def _prepare(self, prompts, generators, steps, guidance, negative_prompt, opts):
        pipe = self.pipe
        true_cfg = opts["true_cfg_scale"] > 1 and negative_prompt is not None
        cond = self._encode(prompts, opts)
        uncond = self._encode(negative_prompt, opts) if true_cfg else None  # as `__call__`: a string encodes once
        sigmas = np.linspace(1.0, 0.0, steps + 1)[:-1]
        scheduler, timesteps = self._scheduler(steps, sigmas=sigmas)
        latents = pipe.prepare_latents(len(prompts), pipe.transformer.config.in_channels, opts["height"], opts["width"],
                                       opts["num_frames"], torch.float32, self.device, generators, None)
        embedded = torch.tensor([guidance] * latents.shape[0], dtype=pipe.transformer.dtype, device=self.device) * 1000.0
        scheduler.set_begin_index(0)
        return Denoising(latents, timesteps, scheduler, extra={
            "cond": cond, "uncond": uncond, "embedded_guidance": embedded, "true_cfg_scale": opts["true_cfg_scale"],
            "attention_kwargs": opts.get("attention_kwargs")})

    def _step(self, state, i, t):
        model, x = self.pipe.transformer, state.extra
        call = dict(hidden_states=state.latents.to(model.dtype), timestep=t.expand(state.latents.shape[0]).to(state.latents.dtype),
                    guidance=x["embedded_guidance"], attention_kwargs=x["attention_kwargs"], return_dict=False)
        context = self._context(state, i)

        def predict(branch, text):
            with model.cache_context(branch, **context):
                return model(encoder_hidden_states=text["embeds"], encoder_attention_mask=text["mask"],
                             pooled_projections=text["pooled"], **call)[0]
        noise = predict("cond", x["cond"])
        if x["uncond"] is not None:
            uncond = predict("uncond", x["uncond"])
            noise = uncond + x["true_cfg_scale"] * (noise - uncond)
        return state.scheduler.step(noise, t, state.latents, return_dict=False)[0]

    def _decode(self, state):
        vae = self.pipe.vae
        video = vae.decode(state.latents.to(vae.dtype) / vae.config.scaling_factor, return_dict=False)[0]
        return self.pipe.video_processor.postprocess_video(video, output_type="np")


class CogVideoXStepper(Stepper):
    """CogVideoXPipeline: one batched [uncond; cond] call; DPM-solver state carried between steps."""


    def _prepare(self, prompts, generators, steps, guidance, negative_prompt, opts):
        pipe = self.pipe
        cfg = guidance > 1.0
        embeds, negative = pipe.encode_prompt(prompts, negative_prompt, cfg, num_videos_per_prompt=1,
                                              max_sequence_length=opts["max_sequence_length"], device=self.device)
        if cfg:
            embeds = torch.cat([negative, embeds], dim=0)
        scheduler, timesteps = self._scheduler(steps, timesteps=None)
        num_frames = opts["num_frames"]
        latent_frames = (num_frames - 1) // pipe.vae_scale_factor_temporal + 1
        patch_t = pipe.transformer.config.patch_size_t
        padding = patch_t - latent_frames % patch_t if patch_t is not None and latent_frames % patch_t else 0
        num_frames += padding * pipe.vae_scale_factor_temporal
        latents = pipe.prepare_latents(len(prompts), pipe.transformer.config.in_channels, num_frames, opts["height"],
                                       opts["width"], embeds.dtype, self.device, generators, None)
        rotary = (pipe._prepare_rotary_positional_embeddings(opts["height"], opts["width"], latents.size(1), self.device)
                  if pipe.transformer.config.use_rotary_positional_embeddings else None)
        return Denoising(latents, timesteps, scheduler, extra={
            "embeds": embeds, "cfg": cfg, "guidance": guidance, "dynamic_cfg": opts["use_dynamic_cfg"],
            "generator": generators, "eta": opts["eta"], "rotary": rotary, "padding": padding, "old_pred": None,
            "attention_kwargs": opts.get("attention_kwargs")})

    def _step(self, state, i, t):
        pipe, x, scheduler = self.pipe, state.extra, state.scheduler
        model_input = torch.cat([state.latents] * 2) if x["cfg"] else state.latents
        model_input = scheduler.scale_model_input(model_input, t)
        with pipe.transformer.cache_context("cond_uncond", **self._context(state, i)):
            noise = pipe.transformer(hidden_states=model_input, encoder_hidden_states=x["embeds"],
                                     timestep=t.expand(model_input.shape[0]), image_rotary_emb=x["rotary"],
                                     attention_kwargs=x["attention_kwargs"], return_dict=False)[0].float()
        if x["dynamic_cfg"]:
            steps = len(state.timesteps)
            pipe._guidance_scale = 1 + x["guidance"] * ((1 - math.cos(math.pi * ((steps - t.item()) / steps) ** 5.0)) / 2)
        if x["cfg"]:
            uncond, cond = noise.chunk(2)
            noise = uncond + pipe.guidance_scale * (cond - uncond)
        step_kwargs = pipe.prepare_extra_step_kwargs(x["generator"], x["eta"])  # the state's (forkable) generators
        if isinstance(scheduler, CogVideoXDPMScheduler):
            latents, x["old_pred"] = scheduler.step(noise, x["old_pred"], t, state.timesteps[i - 1] if i > 0 else None,
                                                    state.latents, **step_kwargs, return_dict=False)
        else:
            latents = scheduler.step(noise, t, state.latents, **step_kwargs, return_dict=False)[0]
        return latents.to(x["embeds"].dtype)

    def _decode(self, state):
        video = self.pipe.decode_latents(state.latents[:, state.extra["padding"]:])
        return self.pipe.video_processor.postprocess_video(video=video, output_type="np")


class LTXVideoStepper(Stepper):
    """LTXPipeline: one batched [uncond; cond] call on packed latents."""


    def _prepare(self, prompts, generators, steps, guidance, negative_prompt, opts):
        pipe = self.pipe
        pipe._guidance_rescale = opts["guidance_rescale"]
        cfg = pipe.do_classifier_free_guidance
        embeds, mask, negative, negative_mask = pipe.encode_prompt(
            prompt=prompts, negative_prompt=negative_prompt, do_classifier_free_guidance=cfg, num_videos_per_prompt=1,
            max_sequence_length=opts["max_sequence_length"], device=self.device)
        if cfg:
            embeds, mask = torch.cat([negative, embeds], dim=0), torch.cat([negative_mask, mask], dim=0)
        height, width, num_frames = opts["height"], opts["width"], opts["num_frames"]
        latents = pipe.prepare_latents(len(prompts), pipe.transformer.config.in_channels, height, width, num_frames,
                                       torch.float32, self.device, generators, None)
        frames = (num_frames - 1) // pipe.vae_temporal_compression_ratio + 1
        h, w = height // pipe.vae_spatial_compression_ratio, width // pipe.vae_spatial_compression_ratio
        config = pipe.scheduler.config
        mu = self._pipeline_function("calculate_shift")(frames * h * w, config.get("base_image_seq_len", 256), config.get("max_image_seq_len", 4096),
                             config.get("base_shift", 0.5), config.get("max_shift", 1.15))
        scheduler, timesteps = self._scheduler(steps, timesteps=None, sigmas=np.linspace(1.0, 1 / steps, steps), mu=mu)
        rope = (pipe.vae_temporal_compression_ratio / opts["frame_rate"], pipe.vae_spatial_compression_ratio,
                pipe.vae_spatial_compression_ratio)
        return Denoising(latents, timesteps, scheduler, extra={
            "embeds": embeds, "mask": mask, "cfg": cfg, "shape": (frames, h, w), "rope": rope,
            "generator": generators, "decode_timestep": opts["decode_timestep"],
            "decode_noise_scale": opts["decode_noise_scale"], "attention_kwargs": opts.get("attention_kwargs")})

    def _step(self, state, i, t):
        pipe, x = self.pipe, state.extra
        model_input = (torch.cat([state.latents] * 2) if x["cfg"] else state.latents).to(x["embeds"].dtype)
        frames, h, w = x["shape"]
        with pipe.transformer.cache_context("cond_uncond", **self._context(state, i)):
            noise = pipe.transformer(hidden_states=model_input, encoder_hidden_states=x["embeds"],
                                     timestep=t.expand(model_input.shape[0]), encoder_attention_mask=x["mask"],
                                     num_frames=frames, height=h, width=w, rope_interpolation_scale=x["rope"],
                                     attention_kwargs=x["attention_kwargs"], return_dict=False)[0].float()
        if x["cfg"]:
            uncond, cond = noise.chunk(2)
            noise = uncond + pipe.guidance_scale * (cond - uncond)
            if pipe.guidance_rescale > 0:
                noise = self._pipeline_function("rescale_noise_cfg")(noise, cond, guidance_rescale=pipe.guidance_rescale)
        return state.scheduler.step(noise, t, state.latents, return_dict=False)[0]

    def _decode(self, state):
        pipe, x, vae = self.pipe, state.extra, self.pipe.vae
        frames, h, w = x["shape"]
        latents = pipe._unpack_latents(state.latents, frames, h, w, pipe.transformer_spatial_patch_size,
                                       pipe.transformer_temporal_patch_size)
        latents = pipe._denormalize_latents(latents, vae.latents_mean, vae.latents_std, vae.config.scaling_factor)
        latents = latents.to(x["embeds"].dtype)
        timestep = None
        if vae.config.timestep_conditioning:
            batch = latents.shape[0]
            noise = randn_tensor(latents.shape, generator=x["generator"], device=self.device, dtype=latents.dtype)
            decode_t = x["decode_timestep"] if isinstance(x["decode_timestep"], list) else [x["decode_timestep"]] * batch
            scale = x["decode_noise_scale"]
            scale = decode_t if scale is None else (scale if isinstance(scale, list) else [scale] * batch)
            timestep = torch.tensor(decode_t, device=self.device, dtype=latents.dtype)
            scale = torch.tensor(scale, device=self.device, dtype=latents.dtype)[:, None, None, None, None]
            latents = (1 - scale) * latents + scale * noise
        video = vae.decode(latents.to(vae.dtype), timestep, return_dict=False)[0]
        return pipe.video_processor.postprocess_video(video, output_type="np")


STEPPERS: dict[str, type[Stepper]] = {"ToyWanPipeline": ToyWanStepper, "WanPipeline": WanStepper,
                                      "HunyuanVideoPipeline": HunyuanVideoStepper, "CogVideoXPipeline": CogVideoXStepper,
                                      "LTXPipeline": LTXVideoStepper}


OPTIONS_ATTRIBUTE = "_cachepilot_options"


def set_generation_options(pipe, **options) -> None:
    """How every generation cachepilot runs on `pipe` is called besides prompts, seeds, steps and guidance (the
    video size, a negative prompt, a family's own knobs): set once where the model is loaded, checked here."""
    stepper_for(pipe).check_options(options)
    options = {k: v for k, v in options.items() if v is not None}
    if options.keys() & {"height", "width", "num_frames"}:  # a size given where the model loads is checked there
        check_generation(pipe, 1, None, options)
    setattr(pipe, OPTIONS_ATTRIBUTE, options)


def generation_options(pipe) -> dict:
    return dict(getattr(pipe, OPTIONS_ATTRIBUTE, {}))


def generate_batch(pipe, prompts: list[str], seeds: list[int], steps: int, guidance: float,
                   on_step: Callable[[int, torch.Tensor], None] | None = None, decode: bool = True):
    """One batched generation (sample i from seed i) the way every cachepilot measurement runs one: frames
    (batch, frames, height, width, 3) in [0, 1], or the final latents if not `decode`."""
    generators = [torch.Generator().manual_seed(int(s)) for s in seeds]
    return stepper_for(pipe).run(list(prompts), generators, steps, guidance, on_step=on_step, decode=decode,
                                 **generation_options(pipe))


def stepper_for(pipe) -> Stepper:
    """The stepper of a pipeline (by class name, as the adapters are found)."""
    name = type(pipe).__name__
    if name not in STEPPERS:
        raise InvalidInputError(f"cachepilot cannot step a {name}; supported pipelines: {', '.join(sorted(STEPPERS))}")
    return STEPPERS[name](pipe)

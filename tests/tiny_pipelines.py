"""Tiny random diffusers pipelines of every supported family, complete (tokenizers, text encoders, VAE,
transformer, scheduler) and offline: the tokenizers are word-level `tokenizers` models, so the text encoders
run for real on the prompts. `write_folder` saves one with `save_pretrained`, as a real model folder is laid out.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
from transformers import (CLIPTextConfig, CLIPTextModel, LlamaConfig, LlamaModel, PreTrainedTokenizerFast, T5Config,
                          T5EncoderModel, UMT5Config, UMT5EncoderModel)

WORDS = ("a an the of on in and with video red blue green yellow white black square circle triangle ball cube "
         "moves moving left right up down slowly fast background scene").split()
SIZE = {"height": 16, "width": 16, "num_frames": 5}
STEPS = 6
PROMPTS = ["a red square moves left", "a blue circle moves up", "a green ball moves right slowly",
           "a white cube moves down on a black background"]


def _tokenizer(specials: dict[str, str]) -> PreTrainedTokenizerFast:
    names = list(dict.fromkeys(specials.values()))
    vocab = {w: i for i, w in enumerate([*names, *WORDS])}
    model = Tokenizer(models.WordLevel(vocab, unk_token=specials["unk_token"]))
    model.normalizer = normalizers.Lowercase()
    model.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=model, **specials)


T5_SPECIALS = {"pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>"}


def _t5(umt5: bool = False):
    tokenizer = _tokenizer(T5_SPECIALS)
    config = dict(vocab_size=len(tokenizer), d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=2,
                  relative_attention_num_buckets=8)
    encoder = UMT5EncoderModel(UMT5Config(**config)) if umt5 else T5EncoderModel(T5Config(**config))
    return tokenizer, encoder.eval()


def tiny_wan(experts: int = 1):
    """Wan2.1 (one transformer) or Wan2.2 A14B's layout (`transformer` for high noise, `transformer_2` for low
    noise, switching at `boundary_ratio`)."""
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel
    torch.manual_seed(0)
    tokenizer, text_encoder = _t5(umt5=True)
    vae = AutoencoderKLWan(base_dim=3, z_dim=4, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                           temperal_downsample=[False, True, True], latents_mean=[0.0] * 4, latents_std=[1.0] * 4)

    def transformer():
        return WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=8, in_channels=4,
                                     out_channels=4, text_dim=16, freq_dim=16, ffn_dim=32, num_layers=3,
                                     rope_max_seq_len=32)
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0)
    extra = {"transformer_2": transformer(), "boundary_ratio": 0.875} if experts == 2 else {}
    return WanPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae.eval(), transformer=transformer(),
                       scheduler=scheduler, **extra)


def tiny_hunyuan():
    from diffusers import (AutoencoderKLHunyuanVideo, FlowMatchEulerDiscreteScheduler, HunyuanVideoPipeline,
                           HunyuanVideoTransformer3DModel)
    torch.manual_seed(0)
    tokenizer = _tokenizer({"pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>", "bos_token": "<s>"})
    text_encoder = LlamaModel(LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32,
                                          num_hidden_layers=3, num_attention_heads=2, num_key_value_heads=2,
                                          max_position_embeddings=512, pad_token_id=0))
    tokenizer_2 = _tokenizer({"pad_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
                              "bos_token": "<|startoftext|>"})
    text_encoder_2 = CLIPTextModel(CLIPTextConfig(vocab_size=len(tokenizer_2), hidden_size=8, intermediate_size=16,
                                                  num_hidden_layers=1, num_attention_heads=2, projection_dim=8,
                                                  max_position_embeddings=77, pad_token_id=0, bos_token_id=1,
                                                  eos_token_id=0))
    vae = AutoencoderKLHunyuanVideo(latent_channels=4, block_out_channels=(8, 8, 8, 8), layers_per_block=1,
                                    norm_num_groups=4, mid_block_add_attention=False)
    transformer = HunyuanVideoTransformer3DModel(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=8, num_layers=2, num_single_layers=2,
        num_refiner_layers=1, mlp_ratio=2.0, patch_size=1, patch_size_t=1, qk_norm="rms_norm", guidance_embeds=True,
        text_embed_dim=16, pooled_projection_dim=8, rope_axes_dim=(2, 2, 4))
    return HunyuanVideoPipeline(text_encoder=text_encoder.eval(), tokenizer=tokenizer, transformer=transformer.eval(),
                                vae=vae.eval(), scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0),
                                text_encoder_2=text_encoder_2.eval(), tokenizer_2=tokenizer_2)


def tiny_cogvideox():
    from diffusers import AutoencoderKLCogVideoX, CogVideoXDPMScheduler, CogVideoXPipeline, CogVideoXTransformer3DModel
    torch.manual_seed(0)
    tokenizer, text_encoder = _t5()
    vae = AutoencoderKLCogVideoX(down_block_types=("CogVideoXDownBlock3D",) * 4, up_block_types=("CogVideoXUpBlock3D",) * 4,
                                 block_out_channels=(8, 8, 8, 8), latent_channels=4, layers_per_block=1,
                                 norm_num_groups=2, temporal_compression_ratio=4)
    transformer = CogVideoXTransformer3DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=4,
                                              time_embed_dim=8, text_embed_dim=16, num_layers=3, sample_width=2,
                                              sample_height=2, sample_frames=5, patch_size=1,
                                              temporal_compression_ratio=4, max_text_seq_length=226)
    scheduler = CogVideoXDPMScheduler(timestep_spacing="trailing", prediction_type="v_prediction", snr_shift_scale=3.0,
                                      beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                      rescale_betas_zero_snr=True, clip_sample=False, set_alpha_to_one=True)
    return CogVideoXPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae.eval(), transformer=transformer.eval(),
                             scheduler=scheduler)


def tiny_ltx():
    from diffusers import AutoencoderKLLTXVideo, FlowMatchEulerDiscreteScheduler, LTXPipeline, LTXVideoTransformer3DModel
    torch.manual_seed(0)
    tokenizer, text_encoder = _t5()
    vae = AutoencoderKLLTXVideo(latent_channels=4, block_out_channels=(8, 8, 8, 8), decoder_block_out_channels=(8, 8, 8, 8),
                                layers_per_block=(1, 1, 1, 1, 1), decoder_layers_per_block=(1, 1, 1, 1, 1),
                                spatio_temporal_scaling=(True, True, False, False),
                                decoder_spatio_temporal_scaling=(True, True, False, False),
                                decoder_inject_noise=(False,) * 5, upsample_residual=(False,) * 4,
                                upsample_factor=(1,) * 4, timestep_conditioning=False, patch_size=1, patch_size_t=1,
                                encoder_causal=True, decoder_causal=False)
    transformer = LTXVideoTransformer3DModel(in_channels=4, out_channels=4, patch_size=1, patch_size_t=1,
                                             num_attention_heads=2, attention_head_dim=8, cross_attention_dim=16,
                                             num_layers=3, caption_channels=16)
    return LTXPipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae.eval(), text_encoder=text_encoder,
                       tokenizer=tokenizer, transformer=transformer.eval())


TINY_PIPELINES = {"wan": tiny_wan, "wan2.2": lambda: tiny_wan(experts=2), "hunyuanvideo": tiny_hunyuan,
                  "cogvideox": tiny_cogvideox, "ltx-video": tiny_ltx}
# what each family's pipeline is called with besides prompts: a video size it accepts, short prompts
CALL_OPTIONS = {kind: {**SIZE, "max_sequence_length": 8} for kind in TINY_PIPELINES}
CALL_OPTIONS["ltx-video"].update(height=32, width=32, num_frames=9)  # LTX: sides multiple of 32, 8k + 1 frames
CALL_OPTIONS["cogvideox"].update(max_sequence_length=226)  # CogVideoX's positions count its text tokens


def write_folder(kind: str, folder: str | Path) -> Path:
    """Save a tiny pipeline as a diffusers folder (loaded back with `from_pretrained(local_files_only=True)`)."""
    folder = Path(folder)
    TINY_PIPELINES[kind]().save_pretrained(folder)
    return folder

"""Tiny random-weight pipelines built in memory (no hub, no files) for tests and smoke runs."""

from __future__ import annotations

import torch

_WORDS = (
    "a an the of and with on in above below left right red green blue yellow big small large cat dog "
    "photo painting circle square triangle tree house sky car"
).split()


def tiny_tokenizer(max_length: int = 77):
    """A word-level fast tokenizer with CLIP-like special tokens."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, "<unk>": 2}
    for word in _WORDS:
        vocab.setdefault(word, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|startoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        unk_token="<unk>",
        model_max_length=max_length,
    )


def tiny_clip_text_encoder(seed: int, hidden_size: int = 32, vocab_size: int = 64):
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    config = CLIPTextConfig(
        bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_size=hidden_size, intermediate_size=37,
        layer_norm_eps=1e-5, num_attention_heads=4, num_hidden_layers=2, vocab_size=vocab_size,
        hidden_act="gelu", projection_dim=hidden_size, max_position_embeddings=77,
    )
    return CLIPTextModelWithProjection(config).eval()


def tiny_sd3_transformer(seed: int = 0, num_layers: int = 2, qk_norm: str | None = None,
                         dual_attention_layers: tuple[int, ...] = (), patch_size: int = 2):
    from diffusers import SD3Transformer2DModel

    torch.manual_seed(seed)
    return SD3Transformer2DModel(
        sample_size=32, patch_size=patch_size, in_channels=4, num_layers=num_layers, attention_head_dim=8,
        num_attention_heads=4, joint_attention_dim=32, caption_projection_dim=32, pooled_projection_dim=64,
        out_channels=4, pos_embed_max_size=48, qk_norm=qk_norm, dual_attention_layers=dual_attention_layers,
    ).eval()


def tiny_sd3_pipeline(seed: int = 0, **transformer_kwargs):
    """A StableDiffusion3Pipeline with random weights: 32x32 images -> 16x16 image tokens (patch 2)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline

    transformer = tiny_sd3_transformer(seed, **transformer_kwargs)
    vae = tiny_vae(seed + 1)
    pipe = StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=vae,
        text_encoder=tiny_clip_text_encoder(seed + 2),
        tokenizer=tiny_tokenizer(),
        text_encoder_2=tiny_clip_text_encoder(seed + 3),
        tokenizer_2=tiny_tokenizer(),
        text_encoder_3=None,
        tokenizer_3=None,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_t5_encoder(seed: int, d_model: int = 32, vocab_size: int = 64):
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    config = T5Config(d_model=d_model, d_kv=8, d_ff=37, num_layers=2, num_heads=4, vocab_size=vocab_size,
                      relative_attention_num_buckets=8, pad_token_id=1, eos_token_id=1, decoder_start_token_id=0)
    return T5EncoderModel(config).eval()


def tiny_vae(seed: int, latent_channels: int = 4):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(
        sample_size=32, in_channels=3, out_channels=3, block_out_channels=(4,), layers_per_block=1,
        latent_channels=latent_channels, norm_num_groups=1, use_quant_conv=False, use_post_quant_conv=False,
        shift_factor=0.0609, scaling_factor=1.5035,
    ).eval()


def tiny_pixart_transformer(seed: int = 0, num_layers: int = 2):
    from diffusers import PixArtTransformer2DModel

    torch.manual_seed(seed)
    return PixArtTransformer2DModel(
        sample_size=16, num_layers=num_layers, patch_size=2, attention_head_dim=8, num_attention_heads=3,
        caption_channels=32, in_channels=4, cross_attention_dim=24, out_channels=8, attention_bias=True,
        activation_fn="gelu-approximate", num_embeds_ada_norm=1000, norm_type="ada_norm_single",
        norm_elementwise_affine=False, norm_eps=1e-6,
    ).eval()


def tiny_pixart_pipeline(seed: int = 0, sigma: bool = True):
    """A PixArt-Sigma (or -alpha) pipeline with random weights: 32x32 images -> 16x16 image tokens."""
    from diffusers import DPMSolverMultistepScheduler, PixArtAlphaPipeline, PixArtSigmaPipeline

    cls = PixArtSigmaPipeline if sigma else PixArtAlphaPipeline
    pipe = cls(
        tokenizer=tiny_tokenizer(), text_encoder=tiny_t5_encoder(seed + 2), vae=tiny_vae(seed + 1),
        transformer=tiny_pixart_transformer(seed), scheduler=DPMSolverMultistepScheduler(),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_flux_transformer(seed: int = 0, num_layers: int = 1, num_single_layers: int = 1):
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(seed)
    return FluxTransformer2DModel(
        patch_size=1, in_channels=4, num_layers=num_layers, num_single_layers=num_single_layers,
        attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32,
        axes_dims_rope=(4, 4, 8),
    ).eval()


def tiny_flux_pipeline(seed: int = 0):
    """A FLUX.1 pipeline with random weights: 32x32 images -> 16x16 packed image tokens."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline

    pipe = FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(), vae=tiny_vae(seed + 1, latent_channels=1),
        text_encoder=_clip_text_model(seed + 2),
        tokenizer=tiny_tokenizer(), text_encoder_2=tiny_t5_encoder(seed + 3), tokenizer_2=tiny_tokenizer(),
        transformer=tiny_flux_transformer(seed),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _clip_text_model(seed: int, hidden_size: int = 32):
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    config = CLIPTextConfig(
        bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_size=hidden_size, intermediate_size=37,
        layer_norm_eps=1e-5, num_attention_heads=4, num_hidden_layers=2, vocab_size=64, hidden_act="gelu",
        projection_dim=hidden_size, max_position_embeddings=77,
    )
    return CLIPTextModel(config).eval()

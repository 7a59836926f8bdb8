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
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline

    transformer = tiny_sd3_transformer(seed, **transformer_kwargs)
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(
        sample_size=32, in_channels=3, out_channels=3, block_out_channels=(4,), layers_per_block=1,
        latent_channels=4, norm_num_groups=1, use_quant_conv=False, use_post_quant_conv=False,
        shift_factor=0.0609, scaling_factor=1.5035,
    ).eval()
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

"""Stable Diffusion 3 / 3.5 (`SD3Transformer2DModel`, MMDiT `JointTransformerBlock`s).

Pruned per block: the image stream's joint attention (and the extra image self-attention `attn2` of
SD3.5-medium's dual-attention blocks) and the image feed-forward `ff`. The text stream, AdaLN
modulation, norms, residuals and the final projection run on all tokens.
"""

from __future__ import annotations

import torch
from diffusers.models.attention_processor import JointAttnProcessor2_0

from .base import FamilySpec, register
from .joint import CATJointAttnProcessor


def _attention_modules(transformer):
    found = []
    for i, block in enumerate(transformer.transformer_blocks):
        found.append((f"transformer_blocks.{i}.attn", block.attn))
        if block.attn2 is not None:
            found.append((f"transformer_blocks.{i}.attn2", block.attn2))
    return found


def _feed_forward_modules(transformer):
    return [(f"transformer_blocks.{i}.ff", block.ff) for i, block in enumerate(transformer.transformer_blocks)]


def _make_processor(original, runtime, name):
    if type(original) is not JointAttnProcessor2_0:
        raise TypeError(
            f"CAT on SD3 needs the default JointAttnProcessor2_0 at {name}, found {type(original).__name__}; "
            "reset the attention processors (e.g. no fused projections or IP-adapter) before applying CAT."
        )
    return CATJointAttnProcessor(original, runtime, name)


def _check(transformer) -> None:
    for i, block in enumerate(transformer.transformer_blocks):
        if block._chunk_size is not None:
            raise ValueError(
                f"CAT cannot prune transformer_blocks.{i}.ff with feed-forward chunking enabled; "
                "call transformer.disable_forward_chunking() first."
            )


def patchified_grid(transformer, args, kwargs) -> tuple[int, int]:
    """Token grid of a [B, C, H, W] latent input cut into p x p patches."""
    hidden_states = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
    p = transformer.config.patch_size
    return hidden_states.shape[-2] // p, hidden_states.shape[-1] // p


def latent_to_tokens(transformer, sample: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] -> [B, N, p*p*C] in the transformer's own token layout (h, w, p, q, c)."""
    p = transformer.config.patch_size
    b, c, hh, ww = sample.shape
    x = sample.reshape(b, c, hh // p, p, ww // p, p)  # [B, C, h, p, w, q]
    return x.permute(0, 2, 4, 3, 5, 1).reshape(b, (hh // p) * (ww // p), p * p * c)


def tokens_to_latent(transformer, tokens: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Inverse of `latent_to_tokens`.  [B, N, p*p*C] -> [B, C, H, W]"""
    p = transformer.config.patch_size
    b, c, hh, ww = like.shape
    x = tokens.reshape(b, hh // p, ww // p, p, p, c)  # [B, h, w, p, q, C]
    return x.permute(0, 5, 1, 3, 2, 4).reshape(b, c, hh, ww)


SD3 = register(
    FamilySpec(
        name="sd3",
        transformer_classes=("SD3Transformer2DModel",),
        attention_modules=_attention_modules,
        make_processor=_make_processor,
        feed_forward_modules=_feed_forward_modules,
        grid=patchified_grid,
        to_tokens=latent_to_tokens,
        from_tokens=tokens_to_latent,
        check=_check,
    )
)

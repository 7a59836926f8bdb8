"""Stable Diffusion 3 / 3.5 (`SD3Transformer2DModel`, MMDiT `JointTransformerBlock`s).

Pruned per block: the image stream's joint attention (and the extra image self-attention `attn2` of
SD3.5-medium's dual-attention blocks), the image feed-forward `ff`, and the norms and modulation in
front of them (`row_norms`). The text stream, the gated residuals and the final projection run on
all tokens.
"""

from __future__ import annotations

import torch
from diffusers.models.attention_processor import JointAttnProcessor2_0

from .base import FamilySpec, check_no_chunking, processor_factory, register, submodules
from .joint import CATJointAttnProcessor


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


def row_norms(transformer) -> list[tuple[str, torch.nn.Module, tuple[str, ...]]]:
    """Per block: the LayerNorm inside `norm1` (AdaLN-Zero; its output, modulated per sample, feeds `attn`
    and SD3.5's `attn2`) and `norm2` (feeds `ff`)."""
    from diffusers.models.normalization import AdaLayerNormZero, SD35AdaLayerNormZeroX

    found = []
    for i, block in enumerate(transformer.transformer_blocks):
        prefix = f"transformer_blocks.{i}"
        if type(block.norm1) in (AdaLayerNormZero, SD35AdaLayerNormZeroX) and isinstance(block.norm1.norm, torch.nn.LayerNorm):
            attns = (f"{prefix}.attn",) + ((f"{prefix}.attn2",) if block.attn2 is not None else ())
            found.append((f"{prefix}.norm1.norm", block.norm1.norm, attns))
        if isinstance(block.norm2, torch.nn.LayerNorm) and block.ff is not None:
            found.append((f"{prefix}.norm2", block.norm2, (f"{prefix}.ff",)))
    return found


SD3 = register(
    FamilySpec(
        name="sd3",
        transformer_classes=("SD3Transformer2DModel",),
        attention_modules=submodules("transformer_blocks", "attn", "attn2"),
        make_processor=processor_factory(
            JointAttnProcessor2_0, CATJointAttnProcessor, "SD3",
            "reset the attention processors (no fused projections or IP-adapter) before applying CAT.",
        ),
        feed_forward_modules=submodules("transformer_blocks", "ff"),
        grid=patchified_grid,
        to_tokens=latent_to_tokens,
        from_tokens=tokens_to_latent,
        check=check_no_chunking,
        row_norms=row_norms,
    )
)

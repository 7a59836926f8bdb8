"""Stable Diffusion 3 / 3.5 (`SD3Transformer2DModel`, MMDiT `JointTransformerBlock`s).

The token engine prunes, per block, the image stream's joint attention (and the extra image
self-attention `attn2` of SD3.5-medium's dual-attention blocks), the image feed-forward `ff`, and the
norms and modulation in front of them (`row_norms`). The text stream, the gated residuals and the final
projection run on all tokens. FORA, ToCa and TaylorSeer cache or forecast `attn`, `attn2`, `ff` and
`ff_context` (the last block has no `ff_context`: it returns no text stream).
"""

from __future__ import annotations

import torch
from diffusers.models.attention_processor import JointAttnProcessor2_0

from .base import ATTENTION, FEED_FORWARD, FORECAST, STEP_CACHED, Family, check_no_chunking, hidden_states_of, register, tensor

BLOCK_MODULES = r"transformer_blocks\.\d+\.(attn|attn2|ff|ff_context)"


def patchified_grid(transformer, args, kwargs) -> tuple[int, int]:
    """Token grid of a [B, C, H, W] latent input cut into p x p patches."""
    hidden_states = hidden_states_of(args, kwargs)
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


def example_inputs(config, batch: int, height: int, width: int, text_tokens: int, generator=None,
                   device="cpu") -> dict:
    """Inputs of one call: a [B, C, H, W] latent, the joint text embedding, the pooled embedding."""
    device = torch.device(device)
    return dict(
        hidden_states=tensor((batch, config.in_channels, height, width), generator, device),
        encoder_hidden_states=tensor((batch, text_tokens, config.joint_attention_dim), generator, device),
        pooled_projections=tensor((batch, config.pooled_projection_dim), generator, device),
        timestep=torch.full((batch,), 500.0, device=device),
        return_dict=False,
    )


SD3 = register(
    Family(
        name="sd3",
        transformer_classes=("SD3Transformer2DModel",),
        architecture="mmdit",
        blocks=("transformer_blocks",),
        modules={
            ATTENTION: (r"transformer_blocks\.\d+\.(attn|attn2)",),
            FEED_FORWARD: (r"transformer_blocks\.\d+\.ff",),
            STEP_CACHED: (BLOCK_MODULES,),
            FORECAST: (BLOCK_MODULES,),
        },
        attention_processor=JointAttnProcessor2_0,
        processor_hint="reset the attention processors (no fused projections or IP-adapter) before applying CAT.",
        grid=patchified_grid,
        to_tokens=latent_to_tokens,
        from_tokens=tokens_to_latent,
        token_patch=lambda config: int(config.get("patch_size") or 1),
        example_inputs=example_inputs,
        check=check_no_chunking,
        row_norms=row_norms,
    )
)

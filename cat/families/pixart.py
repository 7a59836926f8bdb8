"""PixArt-alpha / PixArt-Sigma (`PixArtTransformer2DModel`, `BasicTransformerBlock` with AdaLN-single).

The token engine prunes, per block, self-attention `attn1`, cross-attention `attn2` (queries only; the
text keys and values are cached) and the feed-forward `ff`. The AdaLN-single modulation is per sample,
so it stays exact for every token; the norms in front of `attn1` and `ff` run on the selected tokens
only (`row_norms`); residuals and the final projection run on all tokens. FORA, ToCa and TaylorSeer
cache or forecast `attn1`, `attn2` and `ff`.
"""

from __future__ import annotations

import torch
from diffusers.models.attention_processor import AttnProcessor2_0

from .base import ATTENTION, FEED_FORWARD, FORECAST, STEP_CACHED, Family, check_no_chunking, find_modules, register, tensor
from .sd3 import latent_to_tokens, patchified_grid, tokens_to_latent

ATTENTIONS = r"transformer_blocks\.\d+\.(attn1|attn2)"
BLOCK_MODULES = r"transformer_blocks\.\d+\.(attn1|attn2|ff)"


def check(transformer, method: str) -> None:
    check_no_chunking(transformer, method)
    for name, attn in find_modules(transformer, (ATTENTIONS,)):
        if attn.spatial_norm is not None or attn.group_norm is not None or attn.residual_connection:
            raise ValueError(f"{method} on PixArt does not support spatial/group norm or a residual connection in {name}")
    for i, block in enumerate(transformer.transformer_blocks):
        if block.norm_type != "ada_norm_single":
            raise ValueError(f"{method} on PixArt expects norm_type='ada_norm_single' in block {i}, found "
                             f"{block.norm_type!r}")


def row_norms(transformer) -> list[tuple[str, torch.nn.Module, tuple[str, ...]]]:
    """Per block: `norm1` (its output, modulated per sample, feeds `attn1`) and `norm2` (feeds `ff`). The
    cross-attention `attn2` reads the un-normalised hidden states and picks its rows itself."""
    found = []
    for i, block in enumerate(transformer.transformer_blocks):
        prefix = f"transformer_blocks.{i}"
        if block.pos_embed is None and not block.only_cross_attention and isinstance(block.norm1, torch.nn.LayerNorm):
            found.append((f"{prefix}.norm1", block.norm1, (f"{prefix}.attn1",)))
        if isinstance(block.norm2, torch.nn.LayerNorm) and block.ff is not None:
            found.append((f"{prefix}.norm2", block.norm2, (f"{prefix}.ff",)))
    return found


def example_inputs(config, batch: int, height: int, width: int, text_tokens: int, generator=None,
                   device="cpu") -> dict:
    """Inputs of one call: a [B, C, H, W] latent, the T5 embedding and its mask, the size conditions."""
    device = torch.device(device)
    sizes = {"resolution": None, "aspect_ratio": None}
    if config.use_additional_conditions:
        sizes = {"resolution": tensor((batch, 2), generator, device), "aspect_ratio": tensor((batch, 1), generator, device)}
    return dict(
        hidden_states=tensor((batch, config.in_channels, height, width), generator, device),
        encoder_hidden_states=tensor((batch, text_tokens, config.caption_channels), generator, device),
        encoder_attention_mask=tensor((batch, text_tokens), generator, device, random=False),
        timestep=torch.full((batch,), 500.0, device=device),
        added_cond_kwargs=sizes,
        return_dict=False,
    )


PIXART = register(
    Family(
        name="pixart",
        transformer_classes=("PixArtTransformer2DModel",),
        architecture="pixart",
        blocks=("transformer_blocks",),
        modules={
            ATTENTION: (ATTENTIONS,),
            FEED_FORWARD: (r"transformer_blocks\.\d+\.ff",),
            STEP_CACHED: (BLOCK_MODULES,),
            FORECAST: (BLOCK_MODULES,),
        },
        attention_processor=AttnProcessor2_0,
        processor_hint="unfuse QKV projections or reset the attention processors before applying CAT.",
        grid=patchified_grid,
        to_tokens=latent_to_tokens,
        from_tokens=tokens_to_latent,
        token_patch=lambda config: int(config.get("patch_size") or 1),
        example_inputs=example_inputs,
        check=check,
        row_norms=row_norms,
    )
)

"""PixArt-alpha / PixArt-Sigma (`PixArtTransformer2DModel`, `BasicTransformerBlock` with AdaLN-single).

Pruned per block: self-attention `attn1`, cross-attention `attn2` (queries only; the text keys and
values are cached) and the feed-forward `ff`. The AdaLN-single modulation is per sample, so it stays
exact for every token; the norms in front of `attn1` and `ff` run on the selected tokens only
(`row_norms`); residuals and the final projection run on all tokens.
"""

from __future__ import annotations

import torch
from diffusers.models.attention_processor import AttnProcessor2_0

from .attention import CATAttnProcessor
from .base import FamilySpec, check_no_chunking, processor_factory, register, submodules
from .sd3 import latent_to_tokens, patchified_grid, tokens_to_latent


def _check(transformer) -> None:
    check_no_chunking(transformer)
    for name, attn in submodules("transformer_blocks", "attn1", "attn2")(transformer):
        if attn.spatial_norm is not None or attn.group_norm is not None or attn.residual_connection:
            raise ValueError(f"CAT on PixArt does not support spatial/group norm or a residual connection in {name}")
    for i, block in enumerate(transformer.transformer_blocks):
        if block.norm_type != "ada_norm_single":
            raise ValueError(f"CAT on PixArt expects norm_type='ada_norm_single' in block {i}, found {block.norm_type!r}")


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


PIXART = register(
    FamilySpec(
        name="pixart",
        transformer_classes=("PixArtTransformer2DModel",),
        attention_modules=submodules("transformer_blocks", "attn1", "attn2"),
        make_processor=processor_factory(
            AttnProcessor2_0, CATAttnProcessor, "PixArt",
            "unfuse QKV projections or reset the attention processors before applying CAT.",
        ),
        feed_forward_modules=submodules("transformer_blocks", "ff"),
        grid=patchified_grid,
        to_tokens=latent_to_tokens,
        from_tokens=tokens_to_latent,
        check=_check,
        row_norms=row_norms,
    )
)

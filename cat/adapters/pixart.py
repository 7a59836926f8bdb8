"""PixArt-alpha / PixArt-Sigma (`PixArtTransformer2DModel`, `BasicTransformerBlock` with AdaLN-single).

Pruned per block: self-attention `attn1`, cross-attention `attn2` (queries only; the text keys and
values are cached) and the feed-forward `ff`. The AdaLN-single modulation is per sample, so it stays
exact for every token; norms, residuals and the final projection run on all tokens.
"""

from __future__ import annotations

from diffusers.models.attention_processor import AttnProcessor2_0

from .attention import CATAttnProcessor
from .base import FamilySpec, register
from .sd3 import latent_to_tokens, patchified_grid, tokens_to_latent


def _attention_modules(transformer):
    found = []
    for i, block in enumerate(transformer.transformer_blocks):
        found.append((f"transformer_blocks.{i}.attn1", block.attn1))
        if block.attn2 is not None:
            found.append((f"transformer_blocks.{i}.attn2", block.attn2))
    return found


def _feed_forward_modules(transformer):
    return [(f"transformer_blocks.{i}.ff", block.ff) for i, block in enumerate(transformer.transformer_blocks)]


def _make_processor(original, runtime, name):
    if type(original) is not AttnProcessor2_0:
        raise TypeError(
            f"CAT on PixArt needs the default AttnProcessor2_0 at {name}, found {type(original).__name__}; "
            "unfuse QKV projections or reset the attention processors before applying CAT."
        )
    return CATAttnProcessor(original, runtime, name)


def _check(transformer) -> None:
    for i, block in enumerate(transformer.transformer_blocks):
        if block._chunk_size is not None:
            raise ValueError(
                f"CAT cannot prune transformer_blocks.{i}.ff with feed-forward chunking enabled; "
                "call transformer.disable_forward_chunking() first."
            )
        if block.norm_type != "ada_norm_single":
            raise ValueError(f"CAT on PixArt expects norm_type='ada_norm_single', found {block.norm_type!r}")
        for attn in (block.attn1, block.attn2):
            if attn is not None and (attn.spatial_norm is not None or attn.group_norm is not None or attn.residual_connection):
                raise ValueError("CAT on PixArt does not support spatial/group norm or residual attention layers")


PIXART = register(
    FamilySpec(
        name="pixart",
        transformer_classes=("PixArtTransformer2DModel",),
        attention_modules=_attention_modules,
        make_processor=_make_processor,
        feed_forward_modules=_feed_forward_modules,
        grid=patchified_grid,
        to_tokens=latent_to_tokens,
        from_tokens=tokens_to_latent,
        check=_check,
    )
)

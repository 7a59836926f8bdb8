"""FLUX.1 (`FluxTransformer2DModel`: double-stream and single-stream blocks, rotary positions).

The token engine prunes double-stream blocks like SD3's joint blocks (image attention rows and image
`ff`). Single-stream blocks see one [text, image] sequence: the text rows always run, the image rows
only where selected, in the attention, `proj_mlp` and `proj_out`. TaylorSeer forecasts the attentions
and MLPs of both kinds of block. FORA and ToCa have no FLUX mapping yet (no `STEP_CACHED` modules).
"""

from __future__ import annotations

import math

import torch
from diffusers.models.transformers.transformer_flux import FluxAttnProcessor

from .base import ATTENTION, FEED_FORWARD, FORECAST, JOINT, Family, find_modules, hidden_states_of, register, tensor

ATTENTIONS = r"(single_)?transformer_blocks\.\d+\.attn"


def check(transformer, method: str) -> None:
    for name, attn in find_modules(transformer, (ATTENTIONS,)):
        if getattr(attn, "fused_projections", False):
            raise ValueError(f"{method} cannot prune {name} with fused QKV projections; call "
                             "transformer.unfuse_qkv_projections()")


def grid(transformer, args, kwargs) -> tuple[int, int]:
    """Token grid from the image position ids (rows, cols in channels 1 and 2); square on `meta`."""
    n = hidden_states_of(args, kwargs).shape[1]
    img_ids = kwargs.get("img_ids")
    if img_ids is not None and img_ids.device.type != "meta":
        ids = img_ids[0] if img_ids.ndim == 3 else img_ids  # [N, 3]
        h, w = int(ids[:, 1].max()) + 1, int(ids[:, 2].max()) + 1
        if h * w == n:
            return h, w
    side = math.isqrt(n)
    if side * side != n:
        raise ValueError(f"cannot infer the token grid of {n} FLUX tokens without img_ids")
    return side, side


def example_inputs(config, batch: int, height: int, width: int, text_tokens: int, generator=None,
                   device="cpu") -> dict:
    """Inputs of one call: the packed latent tokens (2x2 latent pixels each), text and pooled embeddings,
    image and text position ids."""
    device = torch.device(device)
    gh, gw = height // 2, width // 2
    if device.type == "meta":
        img_ids = torch.empty(gh * gw, 3, device=device)
    else:
        img_ids = torch.zeros(gh, gw, 3)
        img_ids[..., 1] = torch.arange(gh)[:, None]
        img_ids[..., 2] = torch.arange(gw)[None, :]
        img_ids = img_ids.reshape(-1, 3)
    inputs = dict(
        hidden_states=tensor((batch, gh * gw, config.in_channels), generator, device),
        encoder_hidden_states=tensor((batch, text_tokens, config.joint_attention_dim), generator, device),
        pooled_projections=tensor((batch, config.pooled_projection_dim), generator, device),
        timestep=torch.full((batch,), 0.5, device=device),
        img_ids=img_ids,
        txt_ids=torch.zeros(text_tokens, 3, device=device),
        return_dict=False,
    )
    if config.guidance_embeds:
        inputs["guidance"] = torch.full((batch,), 3.5, device=device)
    return inputs


FLUX = register(
    Family(
        name="flux",
        transformer_classes=("FluxTransformer2DModel",),
        architecture="mmdit",
        blocks=("transformer_blocks", "single_transformer_blocks"),
        modules={
            ATTENTION: (ATTENTIONS,),
            FEED_FORWARD: (r"transformer_blocks\.\d+\.ff",),
            JOINT: (r"single_transformer_blocks\.\d+\.(proj_mlp|proj_out)",),
            FORECAST: (r"transformer_blocks\.\d+\.(attn|ff|ff_context)",
                       r"single_transformer_blocks\.\d+\.(attn|proj_mlp|proj_out)"),
        },
        attention_processor=FluxAttnProcessor,
        processor_hint="remove IP-adapters before applying CAT.",
        grid=grid,
        to_tokens=lambda transformer, sample: sample,  # FLUX already works on packed tokens [B, N, C]
        from_tokens=lambda transformer, tokens, sample: tokens,
        token_patch=lambda config: 2,
        example_inputs=example_inputs,
        check=check,
        cache_dtypes=False,
    )
)

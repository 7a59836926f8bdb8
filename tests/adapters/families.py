"""Tiny random models of every supported family, with the inputs their pipelines and transformers take."""

from dataclasses import dataclass, field
from typing import Callable

import torch

from cat import testing


@dataclass
class Family:
    name: str
    pipeline: Callable
    transformer: Callable
    pipeline_kwargs: dict = field(default_factory=dict)
    has_cfg: bool = True  # the pipeline batches [uncond, cond] when guidance_scale > 1


def sd3_inputs(batch, h=32, w=32, text=7, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return dict(
        hidden_states=torch.randn(batch, 4, h, w, generator=gen),
        encoder_hidden_states=torch.randn(batch, text, 32, generator=gen),
        pooled_projections=torch.randn(batch, 64, generator=gen),
        timestep=torch.full((batch,), 500.0),
        return_dict=False,
    )


def pixart_inputs(batch, h=32, w=32, text=7, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return dict(
        hidden_states=torch.randn(batch, 4, h, w, generator=gen),
        encoder_hidden_states=torch.randn(batch, text, 32, generator=gen),
        encoder_attention_mask=torch.ones(batch, text),
        timestep=torch.full((batch,), 500.0),
        added_cond_kwargs={"resolution": None, "aspect_ratio": None},
        return_dict=False,
    )


def flux_inputs(batch, h=32, w=32, text=7, seed=0):
    gen = torch.Generator().manual_seed(seed)
    gh, gw = h // 2, w // 2
    img_ids = torch.zeros(gh, gw, 3)
    img_ids[..., 1] = torch.arange(gh)[:, None]
    img_ids[..., 2] = torch.arange(gw)[None, :]
    return dict(
        hidden_states=torch.randn(batch, gh * gw, 4, generator=gen),
        encoder_hidden_states=torch.randn(batch, text, 32, generator=gen),
        pooled_projections=torch.randn(batch, 32, generator=gen),
        timestep=torch.full((batch,), 0.5),
        img_ids=img_ids.reshape(-1, 3),
        txt_ids=torch.zeros(text, 3),
        return_dict=False,
    )


PIXART_CALL = {"use_resolution_binning": False, "max_sequence_length": 16, "clean_caption": False}

FAMILIES = {
    "sd3": Family("sd3", testing.tiny_sd3_pipeline, testing.tiny_sd3_transformer),
    "sd3_qk_norm": Family(
        "sd3_qk_norm",
        lambda: testing.tiny_sd3_pipeline(qk_norm="rms_norm"),
        lambda: testing.tiny_sd3_transformer(qk_norm="rms_norm"),
    ),
    "sd35_dual_attention": Family(
        "sd35_dual_attention",
        lambda: testing.tiny_sd3_pipeline(qk_norm="rms_norm", dual_attention_layers=(0,)),
        lambda: testing.tiny_sd3_transformer(qk_norm="rms_norm", dual_attention_layers=(0,)),
    ),
    "pixart_sigma": Family("pixart_sigma", testing.tiny_pixart_pipeline, testing.tiny_pixart_transformer, PIXART_CALL),
    "pixart_alpha": Family(
        "pixart_alpha", lambda: testing.tiny_pixart_pipeline(sigma=False), testing.tiny_pixart_transformer, PIXART_CALL
    ),
    "flux": Family(
        "flux", testing.tiny_flux_pipeline, testing.tiny_flux_transformer, {"max_sequence_length": 16}, has_cfg=False
    ),
}

INPUTS = {"sd3": sd3_inputs, "sd3_qk_norm": sd3_inputs, "sd35_dual_attention": sd3_inputs,
          "pixart_sigma": pixart_inputs, "pixart_alpha": pixart_inputs, "flux": flux_inputs}

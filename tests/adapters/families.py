"""Tiny random models of every supported family, with the inputs their pipelines and transformers take
(the inputs come from the family registry, `cat.families`)."""

import functools
from dataclasses import dataclass, field
from typing import Callable

import torch

from cat import testing
from cat.families import family_for


@dataclass
class Family:
    name: str
    pipeline: Callable
    transformer: Callable
    pipeline_kwargs: dict = field(default_factory=dict)
    has_cfg: bool = True  # the pipeline batches [uncond, cond] when guidance_scale > 1


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


@functools.cache
def _model(name: str) -> torch.nn.Module:
    return FAMILIES[name].transformer()


def _inputs(name: str):
    def make(batch, h=32, w=32, text=7, seed=0):
        model = _model(name)
        return family_for(model).example_inputs(model.config, batch, h, w, text, torch.Generator().manual_seed(seed))

    return make


INPUTS = {name: _inputs(name) for name in FAMILIES}

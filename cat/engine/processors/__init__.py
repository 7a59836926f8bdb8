"""The token engine's attention processors, each adapted from the diffusers processor a family's
attentions carry by default (`Family.attention_processor`)."""

from __future__ import annotations

from diffusers.models.attention_processor import AttnProcessor2_0, JointAttnProcessor2_0
from diffusers.models.transformers.transformer_flux import FluxAttnProcessor

from .flux import CATFluxAttnProcessor
from .joint import CATJointAttnProcessor
from .plain import CATAttnProcessor

ADAPTED = {JointAttnProcessor2_0: CATJointAttnProcessor, AttnProcessor2_0: CATAttnProcessor,
           FluxAttnProcessor: CATFluxAttnProcessor}


def make_processor(family, original, runtime, name: str, method: str):
    """The token engine's processor in place of `original` at attention `name`; TypeError when the
    attention does not carry its family's default processor."""
    expected = family.attention_processor
    if type(original) is not expected:
        raise TypeError(f"{method} on {family.name} needs the default {expected.__name__} at {name}, found "
                        f"{type(original).__name__}; {family.processor_hint}")
    return ADAPTED[expected](original, runtime, name)

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


def make_processor(family, attn, runtime, name: str, method: str):
    """The token engine's processor in place of the one attention `name` carries; TypeError when that is
    not its family's default processor. Tells the runtime what the processor indexes (`Runtime.uses`)."""
    original = attn.processor
    expected = family.attention_processor
    if type(original) is not expected:
        raise TypeError(f"{method} on {family.name} needs the default {expected.__name__} at {name}, found "
                        f"{type(original).__name__}; {family.processor_hint}")
    cls = ADAPTED[expected]
    runtime.uses(attn.heads if cls.per_head_cache else None, cls.layouts)
    return cls(original, runtime, name)

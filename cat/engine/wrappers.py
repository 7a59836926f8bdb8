"""Modules that stand in for token-wise modules while the token engine is applied (`swap_in` puts them in
place and records the exact inverse)."""

from __future__ import annotations

import torch

from .runtime import Runtime
from .state import GenerationState
from .tokens import cache_dtype, gather_rows, keep, update_output


class PrunedTokenwise(torch.nn.Module):
    """Stands in for a token-wise module (a block's feed-forward, FLUX's single-stream projections) while
    the token engine is applied: runs it on the selected tokens only; the others reuse their cached output.

    With `joint=True` the module's input is a [text, image] sequence (FLUX single-stream blocks): the
    text rows always run, the image rows only where selected.

    The wrapped module stays a registered child (`module`), so it moves with the model's `.to()`;
    `swap_in` puts the wrapper in its place and records the exact inverse. A wrapper class rather than a
    diffusers hook because the hook registry gives every hooked module a `forward` object of its own,
    which torch.compile guards by identity: each block would then compile graphs of its own.
    """

    def __init__(self, module: torch.nn.Module, runtime: Runtime, name: str, joint: bool = False):
        super().__init__()
        self.module = module
        self.runtime = runtime
        self.name = name
        self.joint = joint
        self.gathered = name in runtime.gathered_inputs  # a pruned step's input holds the selected rows only
        self.caches = runtime.layer_caches(name)
        if joint:
            runtime.uses(layouts=("text_image",))

    def forward(self, hidden_states, *args, **kwargs):
        run = self.runtime
        state: GenerationState = run.state
        index = state.index
        if index is None:
            out = self.module(hidden_states, *args, **kwargs)
            if state.record:
                keep(self.caches[run.context], "out", out, cache_dtype(run.config, "out"))
            return out
        cache = self.caches[run.context]
        if index.size == 0 and not self.joint and state.forecast is None:
            return cache.out  # a step that recomputes no image token (cat_fora's reuse): the module does not run
        if self.joint:
            positions, rows = index.text_image, index.text_image_rows  # [B, T+K], [B*(T+K)]
        else:
            positions, rows = index.plan, index.rows  # [B, K], [B*K]
        x = hidden_states if self.gathered else gather_rows(hidden_states, rows)  # [B, K, C]
        out = self.module(x, *args, **kwargs)  # [B, K, C]
        return update_output(cache, index, out, state.forecast, positions)  # [B, N, C]

    def extra_repr(self) -> str:
        return f"name={self.name!r}" + (", joint=True" if self.joint else "")


class RowsOnly(torch.nn.Module):
    """Stands in for a token-wise norm whose output only the pruned modules read (a `Family.row_norms`
    entry): in a pruned step it normalises the selected image tokens only, instead of every token for
    the consumers to pick rows from. Per-row norms give those rows bit-identical values either way;
    the consumers know their input arrives gathered (`Runtime.gathered_inputs`). Full steps pass through.
    """

    def __init__(self, module: torch.nn.Module, runtime: Runtime, name: str):
        super().__init__()
        self.module = module
        self.runtime = runtime
        self.name = name

    def forward(self, hidden_states, *args, **kwargs):
        index = self.runtime.state.index
        if index is not None:
            hidden_states = gather_rows(hidden_states, index.rows)  # [B, K, C]
        return self.module(hidden_states, *args, **kwargs)

    def extra_repr(self) -> str:
        return f"name={self.name!r}"

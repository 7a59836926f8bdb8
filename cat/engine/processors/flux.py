"""The token engine's attention processor for FLUX.1's double- and single-stream blocks.

Double-stream blocks are pruned like SD3's joint blocks (image attention rows). Single-stream blocks
see one [text, image] sequence: the text rows always run, the image rows only where selected (their
`proj_mlp` and `proj_out` are `PrunedTokenwise` with `joint=True`). Rotary embeddings are gathered for the
rows that run, and keys are cached after their rotation. FLUX is guidance-distilled: without true
CFG there are no uncond/cond pairs and each sample selects from its own output.

The attention processor is adapted from `FluxAttnProcessor` (diffusers 0.42.1), keeping its
operations, so a full step is bit-identical to the original.
"""

from __future__ import annotations

import torch
from diffusers.models.attention_dispatch import dispatch_attention_fn
from diffusers.models.embeddings import apply_rotary_emb

from ..runtime import Runtime
from ..state import GenerationState
from ..tokens import gather_rows, keep, put_tokens, update_output


def _rotate_rows(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding at per-sample positions (FLUX layout), `cos` and `sin` gathered at them.  x [B, S, H, d];
    cos, sin [B, S, 1, d]"""
    x_real, x_imag = x.reshape(*x.shape[:-1], -1, 2).unbind(-1)
    x_rotated = torch.stack([-x_imag, x_real], dim=-1).flatten(3)
    return (x.float() * cos + x_rotated.float() * sin).to(x.dtype)


class CATFluxAttnProcessor:
    per_head_cache = False  # keys and values cached as [B, T+N, H, d]: written by token
    layouts = ("text_image",)  # single-stream blocks: every text row and the selected image rows

    def __init__(self, original, runtime: Runtime, name: str):
        self.original = original
        self.runtime = runtime
        self.name = name
        self.caches = runtime.layer_caches(name)  # per cache context; see Runtime.layer_caches

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None):
        state: GenerationState = self.runtime.state
        if state.index is None and not state.record:
            return self.original(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb)
        index = state.index  # the step's plan and index tensors, or None (a full step that fills the cache)
        if index is not None and attention_mask is not None:
            raise NotImplementedError(f"CAT cannot prune {self.name} with an attention mask")
        cache = self.caches[self.runtime.context]
        double = encoder_hidden_states is not None

        if index is None:
            x = hidden_states
        else:
            x = gather_rows(hidden_states, index.rows if double else index.text_image_rows)  # [B, K or T+K, C]
        query = attn.to_q(x).unflatten(-1, (-1, attn.head_dim))  # [B, S, H, d]
        key = attn.to_k(x).unflatten(-1, (-1, attn.head_dim))
        value = attn.to_v(x).unflatten(-1, (-1, attn.head_dim))
        query = attn.norm_q(query)
        key = attn.norm_k(key)
        if double:
            context_query = attn.add_q_proj(encoder_hidden_states).unflatten(-1, (-1, attn.head_dim))  # [B, T, H, d]
            context_key = attn.add_k_proj(encoder_hidden_states).unflatten(-1, (-1, attn.head_dim))
            context_value = attn.add_v_proj(encoder_hidden_states).unflatten(-1, (-1, attn.head_dim))
            context_query = attn.norm_added_q(context_query)
            context_key = attn.norm_added_k(context_key)
            query = torch.cat([context_query, query], dim=1)  # [B, T+K, H, d]
            key = torch.cat([context_key, key], dim=1)
            value = torch.cat([context_value, value], dim=1)
        if image_rotary_emb is not None:
            if index is None:
                query = apply_rotary_emb(query, image_rotary_emb, sequence_dim=1)
                key = apply_rotary_emb(key, image_rotary_emb, sequence_dim=1)
            else:
                cos, sin = (f.to(x.device)[index.text_image][:, :, None, :] for f in image_rotary_emb)  # [B, T+K, 1, d]
                query = _rotate_rows(query, cos, sin)
                key = _rotate_rows(key, cos, sin)

        if index is None:
            keep(cache, "key", key)  # [B, T+N, H, d]
            keep(cache, "value", value)
        else:
            key = put_tokens(cache.key, index, index.text_image, key)  # [B, T+N, H, d]
            value = put_tokens(cache.value, index, index.text_image, value)

        out = dispatch_attention_fn(
            query, key, value, attn_mask=attention_mask,
            backend=self.original._attention_backend, parallel_config=self.original._parallel_config,
        )  # [B, S, H, d]
        out = out.flatten(2, 3).to(query.dtype)  # [B, S, C]

        if not double:
            if index is None:
                return keep(cache, "out", out)
            return update_output(cache, index, out, state.forecast, index.text_image)  # [B, T+N, C]
        num_text = encoder_hidden_states.shape[1]
        context_out, out = out.split_with_sizes([num_text, out.shape[1] - num_text], dim=1)
        out = attn.to_out[0](out.contiguous())
        out = attn.to_out[1](out)  # [B, K, C]
        context_out = attn.to_add_out(context_out.contiguous())
        if index is None:
            keep(cache, "out", out)
        else:
            out = update_output(cache, index, out, state.forecast)  # [B, N, C]
        return out, context_out

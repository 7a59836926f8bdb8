"""The token engine's attention processor for joint (image + text) attention of MMDiT blocks.

Adapted from `diffusers.models.attention_processor.JointAttnProcessor2_0` (diffusers 0.42.1); the
operations and their order are the same, so a full step through this processor is bit-identical to
the original (tests/adapters check it). The only change: in a pruned step the image queries, keys and
values are computed for the selected tokens only, keys and values are written into the layer's cache,
and the queries attend over the cached keys and values of every image token plus the fresh text ones.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..runtime import Runtime
from ..state import GenerationState
from ..tokens import cache_dtype, gather_rows, keep, keep_kv, put_heads, update_output


class CATJointAttnProcessor:
    """Pruned joint attention; delegates to the original processor when no cache is involved."""

    per_head_cache = True  # keys and values cached as [B, H, N+T, d]
    layouts = ("image_text",)  # one write per cache: the selected image rows and the text rows together

    def __init__(self, original, runtime: Runtime, name: str):
        self.original = original
        self.runtime = runtime
        self.name = name
        self.caches = runtime.layer_caches(name)  # per cache context; see Runtime.layer_caches
        self.gathered = name in runtime.gathered_inputs  # a pruned step's input holds the selected rows only

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, *args, **kwargs):
        state: GenerationState = self.runtime.state
        if state.index is None and not state.record:
            return self.original(attn, hidden_states, encoder_hidden_states, attention_mask, *args, **kwargs)
        cache = self.caches[self.runtime.context]
        index = state.index  # the step's plan and index tensors, or None (a full step that fills the cache)
        batch_size = hidden_states.shape[0]
        x = hidden_states if index is None or self.gathered else gather_rows(hidden_states, index.rows)  # [B, K, C]

        query = attn.to_q(x)
        key = attn.to_k(x)
        value = attn.to_v(x)
        inner_dim = key.shape[-1]
        head_dim = inner_dim // attn.heads
        query = query.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)  # [B, H, K, d]
        key = key.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)  # [B, H, K, d]
        value = value.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)  # [B, H, K, d]
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)

        if encoder_hidden_states is not None:
            context_query = attn.add_q_proj(encoder_hidden_states)
            context_key = attn.add_k_proj(encoder_hidden_states)
            context_value = attn.add_v_proj(encoder_hidden_states)
            context_query = context_query.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)  # [B, H, T, d]
            context_key = context_key.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)  # [B, H, T, d]
            context_value = context_value.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)  # [B, H, T, d]
            if attn.norm_added_q is not None:
                context_query = attn.norm_added_q(context_query)
            if attn.norm_added_k is not None:
                context_key = attn.norm_added_k(context_key)
            query = torch.cat([query, context_query], dim=2)  # [B, H, K+T, d]
            key = torch.cat([key, context_key], dim=2)  # [B, H, K+T, d]
            value = torch.cat([value, context_value], dim=2)

        # The caches hold the keys and values exactly as attention reads them: [B, H, N(+T), d], image
        # tokens first. A pruned step writes its K image rows and the T text rows in one `index_put_`
        # per cache (two writes into one buffer made inductor copy the whole cache at every step).
        if index is None:
            kv = cache_dtype(self.runtime.config, "kv")
            keep_kv(cache, "key", key, kv)
            keep_kv(cache, "value", value, kv)
        else:
            rows = index.plan if encoder_hidden_states is None else index.image_text  # [B, K(+T)]
            key = put_heads(cache.key, index, rows, key, cache.key_scale)  # [B, H, N(+T), d]
            value = put_heads(cache.value, index, rows, value, cache.value_scale)

        out = F.scaled_dot_product_attention(query, key, value, dropout_p=0.0, is_causal=False)  # [B, H, K+T, d]
        out = out.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim)  # [B, K+T, C]
        out = out.to(query.dtype)

        if encoder_hidden_states is not None:
            out, context_out = out[:, : x.shape[1]], out[:, x.shape[1] :]  # [B, K, C], [B, T, C]
            if not attn.context_pre_only:
                context_out = attn.to_add_out(context_out)

        out = attn.to_out[0](out)
        out = attn.to_out[1](out)  # [B, K, C]
        if index is None:
            keep(cache, "out", out, cache_dtype(self.runtime.config, "out"))
        else:
            out = update_output(cache, index, out, state.forecast)  # [B, N, C]

        if encoder_hidden_states is not None:
            return out, context_out
        return out

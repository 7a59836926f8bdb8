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
from ..tokens import cache_dtype, gather_tokens, store, update_heads, update_output


class CATJointAttnProcessor:
    """Pruned joint attention; delegates to the original processor when no cache is involved."""

    def __init__(self, original, runtime: Runtime, name: str):
        self.original = original
        self.runtime = runtime
        self.name = name
        self.caches = runtime.layer_caches(name)  # per cache context; see Runtime.layer_caches
        self.gathered = name in runtime.gathered_inputs  # a pruned step's input holds the selected rows only

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, *args, **kwargs):
        state: GenerationState = self.runtime.state
        if state.plan is None and not state.record:
            return self.original(attn, hidden_states, encoder_hidden_states, attention_mask, *args, **kwargs)
        cache = self.caches[self.runtime.context]
        plan = state.plan  # [B, K] or None (a full step that fills the cache)
        batch_size = hidden_states.shape[0]
        x = hidden_states if plan is None or self.gathered else gather_tokens(hidden_states, plan)  # [B, K, C]

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

        # The caches hold the keys and values exactly as attention reads them: [B, H, N(+T), d], image
        # tokens first, so a pruned step writes K image rows and T text rows instead of concatenating.
        if plan is None:
            if encoder_hidden_states is not None:
                key = torch.cat([key, context_key], dim=2)  # [B, H, N+T, d]
                value = torch.cat([value, context_value], dim=2)
            kv = cache_dtype(self.runtime.config, "kv")
            cache.key, cache.value = store(key, kv), store(value, kv)
        elif encoder_hidden_states is not None and torch.compiler.is_compiling():
            # One write per cache (the image rows and the text rows together): a second write into
            # the same buffer makes inductor copy the whole cache at every pruned step.
            num_text = context_key.shape[2]
            text = torch.arange(cache.key.shape[2] - num_text, cache.key.shape[2], device=plan.device)
            rows = torch.cat([plan, text.expand(plan.shape[0], num_text)], dim=1)  # [B, K+T]
            key = update_heads(cache.key, rows, torch.cat([key, context_key], dim=2))  # [B, H, N+T, d]
            value = update_heads(cache.value, rows, torch.cat([value, context_value], dim=2))
        else:
            if encoder_hidden_states is not None:
                num_image = cache.key.shape[2] - context_key.shape[2]
                cache.key[:, :, num_image:] = context_key
                cache.value[:, :, num_image:] = context_value
            key = update_heads(cache.key, plan, key)  # [B, H, N(+T), d]
            value = update_heads(cache.value, plan, value)

        out = F.scaled_dot_product_attention(query, key, value, dropout_p=0.0, is_causal=False)  # [B, H, K+T, d]
        out = out.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim)  # [B, K+T, C]
        out = out.to(query.dtype)

        if encoder_hidden_states is not None:
            out, context_out = out[:, : x.shape[1]], out[:, x.shape[1] :]  # [B, K, C], [B, T, C]
            if not attn.context_pre_only:
                context_out = attn.to_add_out(context_out)

        out = attn.to_out[0](out)
        out = attn.to_out[1](out)  # [B, K, C]
        if plan is None:
            cache.out = store(out, cache_dtype(self.runtime.config, "out"))
        else:
            out = update_output(cache, plan, out, state.forecast)  # [B, N, C]

        if encoder_hidden_states is not None:
            return out, context_out
        return out

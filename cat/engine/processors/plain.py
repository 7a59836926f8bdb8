"""The token engine's attention processor for plain self- and cross-attention (PixArt's `BasicTransformerBlock`).

Adapted from `diffusers.models.attention_processor.AttnProcessor2_0` (diffusers 0.42.1), keeping its
operations, so a full step is bit-identical to the original. In a pruned step:
- self-attention: queries, keys and values for the selected image tokens only; keys and values are
  written into the layer's cache and the queries attend over the cached keys/values of all tokens;
- cross-attention: queries for the selected tokens against the text keys/values cached at the
  cache-filling step (the prompt does not change during a generation).
"""

from __future__ import annotations

import torch.nn.functional as F

from ..runtime import Runtime
from ..state import GenerationState
from ..tokens import cache_dtype, gather_rows, keep, keep_kv, put_heads, update_output


class CATAttnProcessor:
    per_head_cache = True  # self-attention keys and values cached as [B, H, N, d]
    layouts = ()

    def __init__(self, original, runtime: Runtime, name: str):
        self.original = original
        self.runtime = runtime
        self.name = name
        self.caches = runtime.layer_caches(name)  # per cache context; see Runtime.layer_caches
        self.gathered = name in runtime.gathered_inputs  # a pruned step's input holds the selected rows only

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args, **kwargs):
        state: GenerationState = self.runtime.state
        if state.index is None and not state.record:
            return self.original(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
        cache = self.caches[self.runtime.context]
        index = state.index  # the step's plan and index tensors, or None (a full step that fills the cache)
        cross = encoder_hidden_states is not None
        batch_size = hidden_states.shape[0]
        sequence_length = (encoder_hidden_states if cross else hidden_states).shape[1]
        if index is not None and self.gathered and not cross:
            sequence_length = cache.key.shape[2]  # every image token's key, not just the K rows given
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
            attention_mask = attention_mask.view(batch_size, attn.heads, -1, attention_mask.shape[-1])
            if index is not None and attention_mask.shape[2] != 1:
                raise NotImplementedError(f"CAT cannot prune {self.name} with a per-query attention mask")
        x = hidden_states if index is None or self.gathered else gather_rows(hidden_states, index.rows)  # [B, K, C]

        query = attn.to_q(x)
        head_dim = query.shape[-1] // attn.heads
        if cross and index is not None:
            key, value = cache.key, cache.value  # text keys/values [B, H, T, d]
        else:
            context = x
            if cross:
                context = attn.norm_encoder_hidden_states(encoder_hidden_states) if attn.norm_cross else encoder_hidden_states
            key = attn.to_k(context)
            value = attn.to_v(context)
            key = key.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)  # [B, H, K or T, d]
            value = value.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
            if attn.norm_k is not None:
                key = attn.norm_k(key)
        query = query.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)  # [B, H, K, d]
        if attn.norm_q is not None:
            query = attn.norm_q(query)

        if index is None:
            # the text keys and values of cross-attention stay in the compute dtype: T rows, read whole by
            # every pruned step, where a conversion would cost more than the bytes it saves
            kv = None if cross else cache_dtype(self.runtime.config, "kv")
            keep_kv(cache, "key", key, kv)
            keep_kv(cache, "value", value, kv)
        elif not cross:
            key = put_heads(cache.key, index, index.plan, key, cache.key_scale)  # [B, H, N, d]
            value = put_heads(cache.value, index, index.plan, value, cache.value_scale)

        out = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask, dropout_p=0.0, is_causal=False)
        out = out.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim)  # [B, K, C]
        out = out.to(query.dtype)
        out = attn.to_out[0](out)
        out = attn.to_out[1](out)
        out = out / attn.rescale_output_factor
        if index is None:
            return keep(cache, "out", out, cache_dtype(self.runtime.config, "out"))
        return update_output(cache, index, out, state.forecast)  # [B, N, C]

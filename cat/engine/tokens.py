"""Gather and scatter of token rows, and the caches' storage dtypes.

A plan is an index tensor [B, K] of the tokens recomputed in a step; these functions take those rows out
of a [B, N, ...] tensor and write fresh rows back into a cache in place.
"""

from __future__ import annotations

import torch


def gather_tokens(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Rows of the selected tokens.  [B, N, *row], [B, K] -> [B, K, *row]"""
    b, n = x.shape[:2]
    flat = x.reshape(b * n, -1) if n else x.reshape(0, int(torch.tensor(x.shape[2:]).prod()))
    rows = flat.index_select(0, _flat(index, n))  # [B*K, row]
    return rows.view(b, index.shape[1], *x.shape[2:])


def joint_rows(plan: torch.Tensor, num_text: int) -> torch.Tensor:
    """Rows of a [text, image] sequence: every text token, then the selected image tokens.  [B, K] -> [B, T+K]"""
    text = torch.arange(num_text, device=plan.device).expand(plan.shape[0], num_text)
    return torch.cat([text, plan + num_text], dim=1)


def scatter_tokens_(target: torch.Tensor, index: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Writes the selected tokens' rows in place and returns `target`.  [B, N, *row] <- [B, K, *row]

    One `index_put_` on the buffer itself (whole rows, no view of it): torch.compile then updates the
    buffer in place, where an `index_copy_` into a flattened view made it copy the whole buffer out and
    back at every pruned step.
    """
    batch = torch.arange(target.shape[0], device=index.device)[:, None]  # [B, 1]
    return target.index_put_((batch, index), rows)


def scatter_heads_(target: torch.Tensor, index: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """The same for per-head tensors.  [B, H, N, d] <- [B, H, K, d] at token indices [B, K]"""
    b, h = target.shape[:2]
    batch = torch.arange(b, device=index.device)[:, None, None]  # [B, 1, 1]
    heads = torch.arange(h, device=index.device)[None, :, None]  # [1, H, 1]
    return target.index_put_((batch, heads, index[:, None, :]), rows)


CACHE_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float8_e4m3fn": torch.float8_e4m3fn}


def cache_dtype(config, kind: str) -> torch.dtype | None:
    """The dtype caches of `kind` ("kv" or "out") are stored in (None: the compute dtype). fp8 applies to
    keys and values only; module outputs then use bfloat16."""
    name = getattr(config, "cache_dtype", None)
    if name is None:
        return None
    if name == "float8_e4m3fn" and kind == "out":
        return torch.bfloat16
    return CACHE_DTYPES[name]


def store(t: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    """A contiguous cache copy of `t` in `dtype` (the tensor itself when no conversion is needed)."""
    return t.contiguous() if dtype is None or dtype == t.dtype else t.to(dtype).contiguous()


def update_heads(cache_t: torch.Tensor, index: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Writes fresh per-head rows into a cache (converting to its dtype) and returns the full tensor in
    the rows' dtype (the cache itself when the dtypes agree)."""
    scatter_heads_(cache_t, index, rows.to(cache_t.dtype))
    return cache_t if cache_t.dtype == rows.dtype else cache_t.to(rows.dtype)


def update_tokens(cache_t: torch.Tensor, index: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """The same for [B, N, *row] caches."""
    scatter_tokens_(cache_t, index, rows.to(cache_t.dtype))
    return cache_t if cache_t.dtype == rows.dtype else cache_t.to(rows.dtype)


def update_output(cache, index: torch.Tensor, rows: torch.Tensor, forecast: torch.Tensor | None = None) -> torch.Tensor:
    """A pruned module's output for every token: the fresh rows written into `cache.out` in place (as
    `update_tokens`), the other tokens' cached outputs, or, given per-token coefficients rho ([B, N, 1],
    zero at the fresh tokens), their first-order forecast from their last two computations:
    out + rho * (out - prev), `cache.prev` holding each token's output before its newest one. The fresh
    tokens' newest cached output moves into `cache.prev` first (one write per buffer). A [text, image]
    cache (FLUX single-stream) gets rho zero on its text rows.  [B, N, C] <- [B, K, C]
    """
    if forecast is None:
        return update_tokens(cache.out, index, rows)
    scatter_tokens_(cache.prev, index, gather_tokens(cache.out, index))
    last = update_tokens(cache.out, index, rows)
    rho = forecast.to(rows.dtype)
    if rho.shape[1] < last.shape[1]:
        rho = torch.nn.functional.pad(rho, (0, 0, last.shape[1] - rho.shape[1], 0))
    return last + rho * (last - cache.prev.to(rows.dtype))


def _flat(index: torch.Tensor, n: int) -> torch.Tensor:
    """Row numbers in a flattened [B*N] batch.  [B, K] -> [B*K]"""
    return (index + torch.arange(index.shape[0], device=index.device)[:, None] * n).reshape(-1)

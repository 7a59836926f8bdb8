"""A pruned step's index tensors, the gather and scatter of token rows with them, and the caches' storage.

A plan is an index tensor [B, K] of the tokens recomputed in a step. `StepIndex` holds it with every
other index tensor the layers need (flat rows for gathers, the sample and head of each row for
scatters, the rows of a joint text and image sequence), built once per step in buffers that keep
their storage: a layer then gathers its input with one `index_select` and writes each cache with one
`index_put_`, and makes no index of its own.

Every tensor a compiled block reads or writes across steps (caches, index buffers) is allocated outside
the compiled code, updated in place, and marked as a static address (`static`): CUDA graphs
(`compile_mode="reduce-overhead"`) then read and write it where it is instead of copying it or skipping
the graph.
"""

from __future__ import annotations

import torch


def static(t: torch.Tensor) -> torch.Tensor:
    """`t`, marked as a tensor whose storage stays put across calls of a compiled block (returned as is)."""
    torch._dynamo.mark_static_address(t)
    return t


def fits(buf: torch.Tensor | None, shape, dtype: torch.dtype, device: torch.device) -> bool:
    """Whether `buf` can be updated in place to hold a tensor of this shape, dtype and device (a buffer
    made under `torch.inference_mode` cannot be updated outside it)."""
    return (buf is not None and buf.shape == tuple(shape) and buf.dtype == dtype and buf.device == device
            and buf.is_inference() == torch.is_inference_mode_enabled())


class StepIndex:
    """The index tensors of the pruned steps of one budget K, refilled in place at every such step (`load`).

    Attributes (B samples, K selected image tokens of N, T text tokens):
        plan: [B, K] the selected image tokens, ascending per sample.
        rows: [B*K] their rows in a flattened [B*N] batch (what `gather_rows` reads).
        batch: [B, 1] the sample of each row (the first index of every scatter).
        heads: {H: [1, H, 1]} the head of each row of a [B, H, S, d] cache, for every head count in use.
        image_text: [B, K+T] the selected image tokens and every text token in an [image, text] sequence
            (SD3's joint keys and values), when `layouts` asks for it.
        text_image, text_image_rows: [B, T+K] every text token and the selected image tokens in a
            [text, image] sequence (FLUX's single-stream blocks), and the same as flat rows [B*(T+K)].
    """

    def __init__(self, batch: int, k: int, num_image: int, num_text: int, heads: tuple[int, ...],
                 layouts: frozenset[str], device: torch.device):
        def empty(*shape):
            return static(torch.empty(shape, dtype=torch.long, device=device))

        b, n, t = batch, num_image, num_text
        self.signature = (b, k, n, t, heads, layouts, device, torch.is_inference_mode_enabled())
        self.image_text = self.text_image = self.text_image_rows = None
        if "image_text" in layouts:
            self.image_text = empty(b, k + t)
            self.image_text[:, k:] = torch.arange(n, n + t, device=device)
            self.plan = static(self.image_text[:, :k])  # filling the plan fills the joint rows
        else:
            self.plan = empty(b, k)
        self.rows = empty(b * k)
        self.batch = static(torch.arange(b, device=device)[:, None])
        self._offsets = torch.arange(b, device=device)[:, None] * n  # [B, 1] first row of each sample
        self.heads = {h: static(torch.arange(h, device=device)[None, :, None]) for h in heads}
        if "text_image" in layouts:
            self.text_image = empty(b, t + k)
            self.text_image[:, :t] = torch.arange(t, device=device)
            self.text_image_rows = empty(b * (t + k))
            self._joint_offsets = torch.arange(b, device=device)[:, None] * (t + n)  # [B, 1]
        self.num_text = t

    def load(self, active: torch.Tensor) -> "StepIndex":
        """Fills every index from the selection `active` [P, K], shared by both halves of a CFG batch
        ([uncond..., cond...]: B = 2P) or one per sample (B = P); returns self."""
        b, k = self.plan.shape
        p = active.shape[0]
        self.plan.view(b // p, p, k).copy_(active)  # [uncond, cond] halves share one selection
        torch.add(self.plan, self._offsets, out=self.rows.view(b, k))
        if self.text_image is not None:
            torch.add(self.plan, self.num_text, out=self.text_image[:, self.num_text:])
            torch.add(self.text_image, self._joint_offsets, out=self.text_image_rows.view(b, -1))
        return self

    @property
    def size(self) -> int:
        """K, the image tokens recomputed per sample."""
        return self.plan.shape[1]

    def tensors(self) -> list[torch.Tensor]:
        return [t for t in (self.plan, self.rows, self.batch, *self.heads.values(), self.image_text,
                            self.text_image, self.text_image_rows) if t is not None]


def gather_rows(x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Rows of a batch at flat row numbers (`StepIndex.rows`): one `index_select`.  [B, S, *row], [B*K] -> [B, K, *row]"""
    b, s = x.shape[:2]
    flat = x.reshape(b * s, *x.shape[2:])  # a view of the contiguous activations
    return flat.index_select(0, rows).view(b, rows.shape[0] // b, *x.shape[2:])


def put_tokens(target: torch.Tensor, index: StepIndex, positions: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Writes rows at per-sample token positions in place and returns `target` in the rows' dtype: one
    `index_put_` on the buffer itself (a flattened view of it made inductor copy the whole buffer at
    every pruned step).  [B, S, *row] <- [B, K, *row] at positions [B, K]
    """
    target.index_put_((index.batch, positions), rows.to(target.dtype))
    return target if target.dtype == rows.dtype else target.to(rows.dtype)


def put_heads(target: torch.Tensor, index: StepIndex, positions: torch.Tensor, rows: torch.Tensor,
              scale: torch.Tensor | None = None) -> torch.Tensor:
    """The same for a per-head cache (an fp8 one stores rows / `scale`, see `keep_kv`).
    [B, H, S, d] <- [B, H, K, d] at positions [B, K]"""
    heads = index.heads[target.shape[1]]  # [1, H, 1]
    stored = rows if scale is None else (rows / scale).clamp(-FP8_MAX, FP8_MAX)
    target.index_put_((index.batch[:, :, None], heads, positions[:, None, :]), stored.to(target.dtype))
    if target.dtype == rows.dtype:
        return target
    return target.to(rows.dtype) if scale is None else target.to(rows.dtype) * scale


def gather_tokens(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Rows of the tokens `index` names, for an index made on the spot (ToCa's per-module picks): one
    `gather`.  [B, N, C], [B, K] -> [B, K, C]"""
    return x.gather(1, index[..., None].expand(-1, -1, x.shape[-1]))


def scatter_tokens_(target: torch.Tensor, index: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Writes those rows back in place: one `scatter_`.  [B, N, C] <- [B, K, C]"""
    return target.scatter_(1, index[..., None].expand(-1, -1, target.shape[-1]), rows)


CACHE_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float8_e4m3fn": torch.float8_e4m3fn}
FP8_MAX = 448.0  # the largest finite float8_e4m3fn


def cache_dtype(config, kind: str) -> torch.dtype | None:
    """The dtype caches of `kind` ("kv" or "out") are stored in (None: the compute dtype). fp8 applies to
    keys and values only; module outputs then use bfloat16."""
    name = getattr(config, "cache_dtype", None)
    if name is None:
        return None
    if name == "float8_e4m3fn" and kind == "out":
        return torch.bfloat16
    return CACHE_DTYPES[name]


def keep(cache, field: str, t: torch.Tensor, dtype: torch.dtype | None = None, copy: bool = False) -> torch.Tensor:
    """Stores `t` (every token) as `cache.<field>` in `dtype` (None: its own) and returns `t`: copied into
    the buffer already there when it fits, so that the buffer's storage stays put from the generation's
    first cache-filling step to its last step and across generations of the same shape; else `t` itself
    (or its conversion; a copy with `copy`, when `t` changes later) becomes the buffer."""
    dtype = dtype or t.dtype
    buf = getattr(cache, field)
    if fits(buf, t.shape, dtype, t.device):
        buf.copy_(t)
    elif dtype != t.dtype:
        setattr(cache, field, static(t.to(dtype).contiguous()))
    else:
        setattr(cache, field, static(t.clone(memory_format=torch.contiguous_format) if copy else t.contiguous()))
    return t


def keep_kv(cache, field: str, t: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    """`keep` for keys and values. In fp8 they are stored divided by a per-tensor scale (`<field>_scale`, in
    the compute dtype: the largest magnitude at the cache-filling step maps to fp8's largest value, and
    rows written later are clamped to its range), so large activations neither overflow nor lose their
    small neighbours to the format's few exponent bits; `put_heads` scales them back. Returns `t`."""
    if dtype != torch.float8_e4m3fn:
        return keep(cache, field, t, dtype)
    scale = (t.abs().amax() / FP8_MAX).clamp(min=torch.finfo(t.dtype).tiny)  # [] in t's dtype
    keep(cache, f"{field}_scale", scale, copy=True)
    keep(cache, field, (t / scale).clamp(-FP8_MAX, FP8_MAX), dtype)
    return t


def update_output(cache, index: StepIndex, rows: torch.Tensor, forecast: torch.Tensor | None = None,
                  positions: torch.Tensor | None = None) -> torch.Tensor:
    """A pruned module's output for every token: the fresh rows written into `cache.out` in place (at
    `positions`, the plan by default), the other tokens' cached outputs, or, given per-token coefficients
    rho ([B, N, 1], zero at the fresh tokens), their first-order forecast from their last two computations:
    out + rho * (out - prev), `cache.prev` holding each token's output before its newest one. The fresh
    tokens' newest cached output moves into `cache.prev` first (one write per buffer). A [text, image]
    cache (FLUX single-stream) gets rho zero on its text rows.  [B, N, C] <- [B, K, C]
    """
    positions = index.plan if positions is None else positions
    if forecast is None:
        return put_tokens(cache.out, index, positions, rows)
    cache.prev.index_put_((index.batch, positions), cache.out[index.batch, positions])
    last = put_tokens(cache.out, index, positions, rows)
    rho = forecast.to(rows.dtype)
    if rho.shape[1] < last.shape[1]:
        rho = torch.nn.functional.pad(rho, (0, 0, last.shape[1] - rho.shape[1], 0))
    return last + rho * (last - cache.prev.to(rows.dtype))

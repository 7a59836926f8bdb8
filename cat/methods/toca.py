"""ToCa: token-wise feature caching.

Zou et al. 2024, "Accelerating Diffusion Transformers with Token-wise Feature Caching",
arXiv 2410.05317, ICLR 2025 (code: github.com/Shenyi-Z/ToCa). This follows their PixArt-alpha
implementation (`PixArt-alpha-ToCa/diffusion/model/nets/PixArt.py`, `PixArtBlock.forward`, and
`diffusion/model/cache_functions/`) and their FLUX implementation (`flux-ToCa/src/flux/modules/layers.py`,
`DoubleStreamBlock`, and `flux-ToCa/src/flux/modules/cache_functions/`) for the MMDiT blocks. The
defaults are their PixArt setting; `ToCaConfig.authors(family, num_steps)` gives their setting for the
model's architecture (their FLUX one on SD3, SD3.5 and FLUX).

Steps are either full or partial:
  * Full steps ("force activation"): every module runs on every token and its output is cached.
    Steps 0 .. warmup_steps-1 are full (their PixArt code: step 0; their FLUX code: steps 0-2), then
    `refresh` decides. "modulo" (their PixArt code): step s is full when `s % threshold == 0`, where
    `threshold` is re-derived at every full step s as `round(interval / (1 - w + 2 w s / T))`
    (`force_scheduler`, w = `interval_step_weight`, 0.2 in their PixArt code; T = number of steps):
    refreshes are a bit sparser early and denser late. For 8 steps and interval 3 the full steps are
    0, 4 and 6. "counter" (their FLUX code, `cal_type`): a step is full `interval` steps after the last
    full one (their FLUX `force_scheduler` has w = 0): at 28 steps, warm-up 3 and interval 4 the full
    steps are 0, 1, 2, 6, 10, ..., 26.
  * Partial steps: self-attention is not run at all; its cached output is reused whole (their code
    computes no attention tokens on partial steps in the final version, in all of DiT, PixArt and
    FLUX). Cross-attention and feed-forward modules run on a few "fresh" tokens only; the other
    tokens' outputs come from the cache, and the fresh tokens' new outputs are written into it.

Per module type:
    PixArt  attn1 (self-attention): reused whole on partial steps.
            attn2 (cross-attention): token-wise on image-token queries ("cross-attn" ratio factor).
            ff: token-wise on image tokens ("mlp" ratio factor).
    SD3     attn (joint attention; image and text outputs), attn2 (SD3.5 dual image self-attention):
            reused whole on partial steps, as FLUX-ToCa does for its double-stream joint attention.
            ff: token-wise on image tokens ("mlp" factor).
            ff_context: token-wise on text tokens (as FLUX-ToCa's `txt_mlp`), "mlp" factor, no
            spatial bonus (text tokens have no grid).

Fresh tokens per module (`cache_cutfresh`): `int(r * N)` of the module's N tokens, with the ratio
r (`fresh_ratio_scheduler`, clamped to [0, 1]). Schedule "toca" (their PixArt code's 'ToCa'):
    r = fresh_ratio * (1.9 - 1.8 s/T) * (1.6 - 1.2 l/(L-1)) * (0.6 for cross-attention, 1.6 for MLPs)
i.e. more tokens early in sampling and in shallow layers, fewer for cross-attention (the most
temporally redundant) and more for MLPs. Schedule "flux" (their FLUX code's 'ToCa'): no step factor and
no module factor,
    r = fresh_ratio * (1.5 - l/(L-1)) * (0.4 in joint (double-stream) blocks, 1.6 in the others)
(SD3's blocks are all joint; a PixArt block counts as single-stream). Both codes divide the layer index
by 27, PixArt's depth minus one, also in FLUX's 19 double-stream blocks; here the layer term uses the
model's own depth L, as the PixArt schedule was meant (on SD3-medium's 24 blocks the factor falls to 0.5
instead of their literal 0.65; FLUX's double-stream blocks would reach 0.5 instead of 0.83). The tokens
with the highest score are recomputed:
    score = s_base + soft_fresh_weight * staleness / interval, then the spatial bonus (`spatial_bonus`).
`staleness` counts, per token and module, the partial steps since the token was last recomputed
(their cache-frequency score s3, reset at full steps); the bonus (s4, uniform spatial distribution)
adds 0.4 x its score to the best token of every 4x4 cell of the image grid (their FLUX code has it
commented out).

The score their results use as s_base ('attention') needs attention probabilities, which PyTorch's
fused SDPA kernel does not return: on PixArt the entropy of the layer's cross-attention map, on FLUX
the attention each key token receives in the block's joint attention (mean over heads and queries) at
the last full step. Their non-attention options are offered instead (`score`):
    "straight"   a constant, so staleness and the spatial bonus alone decide (default; no deviation
                 from their code for this option);
    "norm"       L2 norm of the module's input tokens, L2-normalised over the tokens;
    "similarity" 1 - cosine similarity between a token's input and its cached output, normalised;
    "random"     uniform noise, shared by the two halves of a CFG batch (as in their PixArt code),
                 from a generator seeded with 0 at every generation so that runs repeat exactly.
For "norm" and "similarity" their code scores the block's residual stream before the module; a hook
on the module sees the module's input instead (the same tensor for PixArt's cross-attention, the
normalised and modulated residual for the MLPs).

`fresh_ratio=1.0` is the full model (bit-exact: every step is full), as is `interval=1`.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F
from diffusers.hooks import ModelHook

from ..engine.module_cache import ModuleCacheHandle, ReuseHook, StepState
from ..engine.stats import MethodStats, StepRecord
from ..engine.tokens import gather_tokens, scatter_tokens_
from .base import MethodConfig, architecture, check, check_warmup, check_warmup_steps, is_int, is_num, register

HOOK_NAME = "toca"

SCORES = ("straight", "norm", "similarity", "random")
RATIO_SCHEDULES = ("toca", "flux", "constant")
REFRESH_RULES = ("modulo", "counter")

# Constants of the authors' PixArt code ('ToCa' ratio schedule and the spatial bonus).
STEP_WEIGHT = -0.9  # step factor 1 - w + 2 w s/T: 1.9 at the first step, 0.1 at the end
LAYER_WEIGHT = 0.6  # layer factor 1 + w - 2 w l/(L-1): 1.6 at the first layer, 0.4 at the last
MODULE_WEIGHT = 1.0
MODULE_TIME_WEIGHT = 0.6  # cross-attention factor 1 - (1 - 0.6) * 1.0 = 0.6, MLP factor 1 + 0.6 * 1.0 = 1.6
BONUS_RATIO = 0.4
BONUS_CELL = 4
# Constants of the authors' FLUX code ('ToCa' ratio schedule of flux-ToCa: no step or module factor).
FLUX_LAYER_WEIGHT = 0.5  # layer factor 1 + w - 2 w l/(L-1): 1.5 at the first layer, 0.5 at the last
STREAM_WEIGHT = 0.6  # stream factor 1 - 0.6 = 0.4 in joint (double-stream) blocks, 1 + 0.6 = 1.6 in the others

# Module kinds: "attn" is reused whole on partial steps; the others are token-wise.
SELF_ATTN, CROSS_ATTN, MLP = "attn", "cross-attn", "mlp"


@register
@dataclass(frozen=True)
class ToCaConfig(MethodConfig):
    """ToCa (Zou et al. 2024, arXiv 2410.05317, ICLR 2025). Defaults: the authors' PixArt-alpha
    command in their README (`--fresh_threshold 3 --fresh_ratio 0.30 --soft_fresh_weight 0.25
    --ratio_scheduler ToCa --force_fresh global`) and their PixArt `force_scheduler` (0.2).

    The authors' setting per architecture, `ToCaConfig.authors(family, num_steps)` (Shenyi-Z/ToCa
    @e84096f; their code has no SD3 version: SD3's joint blocks are FLUX's double-stream blocks). No value
    depends on the step count (their step factor and refresh threshold read s/T themselves).

    | field | MMDiT (SD3, FLUX): in `flux-ToCa/src/flux/modules/cache_functions/` | PixArt: in `PixArt-alpha-ToCa/diffusion/model/` |
    |---|---|---|
    | interval | 4: `cache_init.py` `cache_init` (`fresh_threshold`) | 3: README.md command `--fresh_threshold 3` |
    | fresh_ratio | 0.1: `cache_init` (`fresh_ratio`) | 0.30: README.md command |
    | warmup_steps | 3, fixed at any T: `cal_type.py` `cal_type` (`step <= 2`) | 1: `cache_functions/global_force_fresh.py` `global_force_fresh` (step 0) |
    | refresh | "counter": `cal_type` (`cache_counter == fresh_interval - 1`) | "modulo": `global_force_fresh` (`step % cal_threshold == 0`) |
    | interval_step_weight | 0.0: `force_scheduler.py` `force_scheduler` | 0.2: `cache_functions/force_scheduler.py` `force_scheduler` |
    | ratio_schedule | "flux": `fresh_ratio_scheduler.py` `fresh_ratio_scheduler` ('ToCa': step weight 0, layer weight 0.5, stream weight 0.6) | "toca": `cache_functions/fresh_ratio_scheduler.py` ('ToCa') |
    | spatial_bonus | False: `cache_cutfresh.py` `cache_cutfresh` (the bonus line commented out) | True: `cache_functions/cache_cutfresh.py` `cache_cutfresh` (0.4, 4x4) |
    | soft_fresh_weight | 0.25: `cache_init` | 0.25: README.md command |
    | score | "straight" (deviation, below) | "straight" (deviation, below) |

    Where ours still deviates: (1) the score. Theirs is 'attention': on FLUX the attention each token
    receives (`flux-ToCa/src/flux/math.py` `attention`, mean of the softmax map over heads and queries),
    on PixArt the entropy of the cross-attention map (`cache_functions/scores.py` `attn_score`); SDPA
    returns no attention map. The nearest available score is "straight": it keeps every other term of
    their score as it is (staleness, and the bonus on PixArt) and adds no signal of its own, where
    "norm" would score the modulated LayerNorm output a hook sees, nearly constant over tokens, and
    "similarity" measures another thing. (2) The layer factor divides by the model's depth minus one,
    not their literal 27 (module docstring). (3) PixArt: where the re-derived threshold changes, their
    test runs per layer after layer 0 re-derived it, so only layer 0 is full at that step
    (`nets/PixArt.py` `PixArtBlock.forward`; at 28 steps step 8); ours makes the whole step full. (4)
    MMDiT: on partial steps they re-apply the attention output projection to the cached attention; ours
    reuses the projected output (the same values, fewer MACs).

    Attributes:
        interval: base number of steps between full refreshes (`fresh_threshold`); 1 is the full model.
        fresh_ratio: base share of tokens recomputed per token-wise module on partial steps, before
            the ratio schedule; 1.0 is the full model, 0.0 reuses every cached token (FORA-like).
        ratio_schedule: "toca" (their PixArt step x layer x module schedule), "flux" (their FLUX
            layer x stream schedule) or "constant" (`fresh_ratio` everywhere).
        score: base token score, one of "straight", "norm", "similarity", "random" (see the module
            docstring; their attention-map score is not available with SDPA).
        soft_fresh_weight: weight of the staleness (cache-frequency) score.
        interval_step_weight: how much the refresh interval shrinks over sampling (their
            `linear_step_weight`); 0 keeps it at `interval`. Read by the "modulo" rule only.
        warmup_steps: leading steps computed in full (1: step 0 only, their PixArt code; their FLUX
            code: 3).
        refresh: when a step after the warm-up is full. "modulo" (their PixArt code): when
            `step % threshold == 0`, the threshold re-derived at every full step from
            `interval_step_weight`. "counter" (their FLUX code): `interval` steps after the last full
            step, with no step-dependent threshold.
        spatial_bonus: whether the best token of every 4x4 cell of the image grid gets a bonus (their
            PixArt code: yes; their FLUX code: no).
    """

    name: ClassVar[str] = "toca"
    interval: int = 3
    fresh_ratio: float = 0.30
    ratio_schedule: str = "toca"
    score: str = "straight"
    soft_fresh_weight: float = 0.25
    interval_step_weight: float = 0.2
    warmup_steps: int = 1
    refresh: str = "modulo"
    spatial_bonus: bool = True

    def __post_init__(self) -> None:
        check(is_int(self.interval) and self.interval >= 1, self, "interval", "an integer >= 1")
        check(is_num(self.fresh_ratio) and 0.0 <= self.fresh_ratio <= 1.0, self, "fresh_ratio",
              "a float in [0, 1]")
        check(self.ratio_schedule in RATIO_SCHEDULES, self, "ratio_schedule", f"one of {', '.join(RATIO_SCHEDULES)}")
        check(self.score in SCORES, self, "score", f"one of {', '.join(SCORES)}")
        check(is_num(self.soft_fresh_weight) and self.soft_fresh_weight >= 0.0, self, "soft_fresh_weight",
              "a float >= 0")
        check(is_num(self.interval_step_weight) and 0.0 <= self.interval_step_weight < 1.0, self,
              "interval_step_weight", "a float in [0, 1)")
        check_warmup(self)
        check(self.refresh in REFRESH_RULES, self, "refresh", f"one of {', '.join(REFRESH_RULES)}")
        check(isinstance(self.spatial_bonus, bool), self, "spatial_bonus", "true or false")

    def check_steps(self, num_steps: int) -> None:
        check_warmup_steps(self, num_steps)

    def key_ignores(self) -> tuple[str, ...]:
        """`interval_step_weight` under the counter rule, which keeps the interval fixed."""
        return ("interval_step_weight",) if self.refresh == "counter" else ()

    @property
    def needs_num_steps(self) -> bool:
        """Whether the schedules read the number of steps (the step factor, a step-dependent threshold)."""
        if self.is_identity:
            return False
        return self.ratio_schedule == "toca" or (self.refresh == "modulo" and self.interval_step_weight != 0)

    @classmethod
    def authors(cls, family: str, num_steps: int) -> dict:
        """Their FLUX setting on MMDiT, their PixArt-alpha setting on PixArt (see the class docstring)."""
        if architecture(cls, family, num_steps) == "mmdit":
            return {"interval": 4, "fresh_ratio": 0.1, "ratio_schedule": "flux", "score": "straight",
                    "soft_fresh_weight": 0.25, "interval_step_weight": 0.0, "warmup_steps": 3, "refresh": "counter",
                    "spatial_bonus": False}
        return {"interval": 3, "fresh_ratio": 0.30, "ratio_schedule": "toca", "score": "straight",
                "soft_fresh_weight": 0.25, "interval_step_weight": 0.2, "warmup_steps": 1, "refresh": "modulo",
                "spatial_bonus": True}

    @classmethod
    def examples(cls, num_steps: int) -> tuple["ToCaConfig", "ToCaConfig"]:
        return cls(interval=1), cls()

    @property
    def is_identity(self) -> bool:
        """Whether every step is full (the method then changes nothing)."""
        return self.interval == 1 or self.fresh_ratio >= 1.0


def _float32(x: float) -> float:
    """`x` rounded to float32, as a Python float. Their schedules compute in float32 tensors; a float32 sum,
    product or quotient equals the double one rounded to float32, so the host reproduces them without a
    tensor (a tensor read would stop a compiled graph in every module)."""
    return struct.unpack("f", struct.pack("f", x))[0]


def refresh_threshold(config: ToCaConfig, step: int, num_steps: int | None) -> int:
    """Steps until the next refresh, as set at full step `step` (their `force_scheduler`, in float32)."""
    w = config.interval_step_weight
    if w == 0 or config.refresh == "counter":
        return config.interval
    factor = _float32(1 - w + 2 * w * step / num_steps)
    return max(1, int(round(_float32(config.interval / factor))))


def is_full(config: ToCaConfig, step: int, last_full: int, threshold: int) -> bool:
    """Whether step `step` is full, given the last full step and the threshold set there (their `cal_type`
    and `global_force_fresh`)."""
    if config.is_identity or step < config.warmup_steps:
        return True
    if config.refresh == "counter":
        return step - last_full >= config.interval
    return step % threshold == 0


def full_steps(config: ToCaConfig, num_steps: int) -> tuple[int, ...]:
    """The full steps of a `num_steps` generation (what the handle's stats report as "full")."""
    out, last, threshold = [], 0, config.interval
    for step in range(num_steps):
        if is_full(config, step, last, threshold):
            out.append(step)
            last, threshold = step, refresh_threshold(config, step, num_steps)
    return tuple(out)


def fresh_count(config: ToCaConfig, num_tokens: int, step: int, num_steps: int | None, layer: int,
                num_layers: int, kind: str, joint: bool = False) -> int:
    """Tokens a token-wise module recomputes at a partial step (their `fresh_ratio_scheduler` and
    `cache_cutfresh`: the ratio is clamped to [0, 1] in float32, then `int(ratio * N)`). `joint`: the module
    is in a joint (double-stream) block, which the "flux" schedule weighs by 0.4."""
    ratio = config.fresh_ratio
    if config.ratio_schedule == "flux":
        layer_factor = 1 + FLUX_LAYER_WEIGHT - 2 * FLUX_LAYER_WEIGHT * layer / max(num_layers - 1, 1)
        stream_factor = 1 - STREAM_WEIGHT if joint else 1 + STREAM_WEIGHT
        ratio = ratio * layer_factor * stream_factor
    elif config.ratio_schedule == "toca":
        step_factor = 1 - STEP_WEIGHT + 2 * STEP_WEIGHT * step / num_steps
        layer_factor = 1 + LAYER_WEIGHT - 2 * LAYER_WEIGHT * layer / max(num_layers - 1, 1)
        if kind == CROSS_ATTN:
            module_factor = 1 - (1 - MODULE_TIME_WEIGHT) * MODULE_WEIGHT
        else:
            module_factor = 1 + MODULE_TIME_WEIGHT * MODULE_WEIGHT
        ratio = ratio * layer_factor * step_factor * module_factor
    return int(_float32(min(max(_float32(ratio), 0.0), 1.0) * num_tokens))


def spatial_bonus(score: torch.Tensor, grid: tuple[int, int], cell: int = BONUS_CELL,
                  bonus: float = BONUS_RATIO) -> torch.Tensor:
    """Adds `bonus` x its score to the highest-scoring token of every `cell` x `cell` cell of the grid.
    [B, h*w] -> [B, h*w]. A grid that is not a multiple of `cell` gets smaller cells at its edges."""
    b, n = score.shape
    h, w = grid
    s = score.view(b, h, w)
    ph, pw = -h % cell, -w % cell
    if ph or pw:
        s = F.pad(s, (0, pw, 0, ph), value=float("-inf"))
    hh, ww = s.shape[1:]
    cells = s.reshape(b, hh // cell, cell, ww // cell, cell).permute(0, 1, 3, 2, 4).reshape(b, -1, cell * cell)
    best, where = cells.max(dim=-1, keepdim=True)  # the first maximum of each cell
    cells = cells.scatter_add(-1, where, best * bonus)
    s = cells.reshape(b, hh // cell, ww // cell, cell, cell).permute(0, 1, 3, 2, 4).reshape(b, hh, ww)
    return s[:, :h, :w].reshape(b, n)


@dataclass
class ToCaStats(MethodStats):
    """Full and partial steps of the current or last generation, and per token-wise module the number
    of tokens per sample it recomputed at each step."""

    fresh_tokens: dict[str, tuple[int, ...]] = field(default_factory=dict)
    total_tokens: dict[str, int] = field(default_factory=dict)

    @property
    def full_steps(self) -> tuple[int, ...]:
        return self.steps_in("full")

    @property
    def partial_steps(self) -> tuple[int, ...]:
        return self.steps_in("partial")

    @property
    def fresh_fraction(self) -> float:
        """Share of token rows the token-wise modules recomputed over the generation (1.0: all)."""
        done = sum(sum(v) for v in self.fresh_tokens.values())
        total = sum(self.total_tokens[k] * len(v) for k, v in self.fresh_tokens.items())
        return done / total if total else 1.0


class _Entry:
    """Cached output of a token-wise module and how stale each of its tokens is."""

    def __init__(self, out: torch.Tensor):
        self.out = out.contiguous()
        self.staleness = torch.zeros(out.shape[:2], dtype=torch.int32, device=out.device)  # [B, N]


class _ToCaState(StepState):
    @property
    def recompute(self) -> bool:  # self-attention runs on full steps only
        return self.full

    @property
    def keep_cache(self) -> bool:
        return not self.config.is_identity

    def _on_new_generation(self) -> None:
        self.full = True
        self.threshold = self.config.interval
        self.last_full = 0
        self.records: list[StepRecord] = []
        self.fresh: dict[str, list[int]] = {}
        self.total: dict[str, int] = {}
        self.generator: torch.Generator | None = None

    def _plan(self) -> None:
        config, step = self.config, self.step
        self.full = is_full(config, step, self.last_full, self.threshold)
        if config.needs_num_steps and self.num_steps is None:
            raise RuntimeError(
                "ToCa's schedules need the number of denoising steps: apply ToCa to the pipeline, or call "
                "handle.reset(num_steps=...) before using a bare transformer."
            )
        self.records.append(StepRecord(step, "full" if self.full else "partial", self.num_tokens if self.full else None))
        if self.full and not config.is_identity:
            self.last_full = step
            self.threshold = refresh_threshold(config, step, self.num_steps)

    def record(self, name: str, fresh: int, total: int) -> None:
        self.fresh.setdefault(name, []).append(fresh)
        self.total[name] = total

    def random_score(self, b: int, n: int, device) -> torch.Tensor:
        if self.generator is None or self.generator.device != torch.device(device):
            self.generator = torch.Generator(device=device).manual_seed(0)
        if self.clock.cfg_pairs and b % 2 == 0:
            half = torch.rand(b // 2, n, generator=self.generator, device=device)
            return torch.cat([half, half], dim=0)
        return torch.rand(b, n, generator=self.generator, device=device)


class _TokenHook(ModelHook):
    """Cross-attention / MLP: on partial steps runs on the fresh tokens only and updates their cached rows."""

    def __init__(self, state: _ToCaState, name: str, layer: int, num_layers: int, kind: str, spatial: bool,
                 joint: bool):
        super().__init__()
        self.state = state
        self.name = name
        self.layer = layer
        self.num_layers = num_layers
        self.kind = kind
        self.spatial = spatial
        self.joint = joint

    def new_forward(self, module, *args, **kwargs):
        state = self.state
        forward = self.fn_ref.original_forward
        if state.bypass or state.step < 0:
            return forward(*args, **kwargs)
        if "hidden_states" in kwargs:
            kwargs = dict(kwargs)
            hidden_states = kwargs.pop("hidden_states")
        else:
            hidden_states, args = args[0], args[1:]
        b, n = hidden_states.shape[:2]
        entry = state.cache.get(self.name)
        if state.full or entry is None or entry.out.shape[:2] != (b, n):
            out = forward(hidden_states, *args, **kwargs)
            if not state.config.is_identity:
                state.cache[self.name] = _Entry(out)
                state.record(self.name, n, n)
            return out
        k = fresh_count(state.config, n, state.step, state.num_steps, self.layer, self.num_layers, self.kind,
                        joint=self.joint)
        index = self._select(hidden_states, entry, k)  # [B, k]
        entry.staleness += 1
        entry.staleness.scatter_(1, index, 0)
        if k > 0:
            rows = forward(gather_tokens(hidden_states, index), *args, **kwargs)  # [B, k, C]
            scatter_tokens_(entry.out, index, rows.to(entry.out.dtype))
        state.record(self.name, k, n)
        return entry.out

    def _select(self, tokens: torch.Tensor, entry: _Entry, k: int) -> torch.Tensor:
        """The k tokens with the highest score (their `score_evaluate` + `local_selection_with_bonus`)."""
        state, config = self.state, self.state.config
        b, n = tokens.shape[:2]
        if config.score == "straight":
            score = torch.ones(b, n, device=tokens.device)
        elif config.score == "norm":
            score = F.normalize(tokens.float().norm(dim=-1), dim=-1)
        elif config.score == "similarity":
            if tokens.shape[-1] != entry.out.shape[-1]:
                raise ValueError(f"ToCa's similarity score needs equal input and output widths at {self.name}")
            score = F.normalize(1 - F.cosine_similarity(tokens.float(), entry.out.float(), dim=-1), dim=-1)
        else:
            score = state.random_score(b, n, tokens.device)
        score = score + config.soft_fresh_weight * entry.staleness.float() / config.interval
        if self.spatial and state.grid is not None and state.grid[0] * state.grid[1] == n:
            score = spatial_bonus(score, state.grid)
        return score.argsort(dim=-1, descending=True, stable=True)[:, :k]


class ToCaHandle(ModuleCacheHandle):
    hook_name = HOOK_NAME

    def _make_state(self) -> StepState:
        return _ToCaState(self.config, self.clock, self.family)

    def _module_hook(self, name, layer, attr, module) -> ModelHook:
        if attr in ("ff", "ff_context"):
            kind = MLP
        elif getattr(module, "is_cross_attention", False):
            kind = CROSS_ATTN  # PixArt's attn2
        else:
            return ReuseHook(self.state, name)  # self-attention: SD3's joint attn and dual attn2, PixArt's attn1
        blocks = self.transformer.transformer_blocks
        # a joint (double-stream) block: its attention projects a text stream of its own (SD3's, FLUX's)
        joint = getattr(getattr(blocks[layer], "attn", None), "add_k_proj", None) is not None
        return _TokenHook(self.state, name, layer, len(blocks), kind,
                          spatial=attr != "ff_context" and self.config.spatial_bonus, joint=joint)

    @property
    def stats(self) -> ToCaStats:
        """Full/partial steps and fresh tokens per module of the current or last generation."""
        state = self.state
        return ToCaStats(steps=list(state.records), fresh_tokens={k: tuple(v) for k, v in state.fresh.items()},
                         total_tokens=dict(state.total))


ToCaConfig.handle = ToCaHandle

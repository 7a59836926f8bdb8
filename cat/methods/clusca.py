"""ClusCa: cluster-driven feature caching ("Compute Only 16 Tokens in One Timestep: Accelerating Diffusion
Transformers with Cluster-Driven Feature Caching", ACM MM 2025, arXiv 2509.10312; code in
github.com/Shenyi-Z/Cache4Diffusion: `flux/clusca-flux`, `dit/clusca-dit`).

TaylorSeer's cache-then-forecast (the authors run ClusCa on top of a Taylor forecast) plus a spatial update
of the MLP caches on the steps in between:

  * Full steps (steps 0 .. warmup_steps-1, then every `interval` steps): every cached module runs and its
    Taylor factors are refreshed (`cat/engine/forecast_cache.py`). The image tokens leaving the last block
    are clustered into K clusters by the authors' k-means (L1 assignment, at most `kmeans_iters` Lloyd
    iterations, started from the previous full step's centroids; `cat.core.propagation.lloyd_l1`).
  * Cached steps: attentions are forecast (Taylor, x steps after the last full step). Each image MLP (`ff`)
    runs on K tokens only, one uniformly drawn member per cluster (drawn anew for every layer and step); their
    fresh outputs replace those tokens' rows of the MLP's cached output F_0, and every token mixes in its
    cluster representative's output, F_0 <- gamma R[label] + (1 - gamma) F_0 (gamma: `propagation_ratio`). The
    update persists: F_0 stays updated for the next cached steps and for the next full step's differences.
    The MLP's output is then the Taylor forecast from the updated factors.

Per module (their FLUX double-stream block, `flux/modules/layers.py` `DoubleStreamBlock.forward`, type
'ClusCa', is the model for SD3's joint blocks; their `DiTBlock.forward` for PixArt's blocks):
    SD3    attn (image and text outputs), attn2 (SD3.5): forecast. ff: ClusCa on the image clusters.
           ff_context: ClusCa on text clusters (the text tokens leaving the last block with a text MLP,
           SD3's last block having none) with gamma = 0, as their txt_mlp (`update_cache`): the K
           representatives' rows are replaced, nothing is propagated.
    PixArt attn1, attn2 (cross-attention): forecast. ff: ClusCa on the image clusters.

One representative per cluster (their `k`, 1 in their final code, "the k > 1 branch is not used in the final
version"), so a cached step recomputes exactly K image tokens per MLP: fixed shapes. The draws come from a
generator on the model's device seeded at every generation, one [L, B, N] draw per stream and step, so a cached
step reads nothing back from the device; k-means (full steps only) reads its stopping test once per iteration.
FLUX is refused (no `STEP_CACHED` modules in its family mapping).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from diffusers.hooks import ModelHook

from ..core.forecast import taylor_weights, weigh
from ..core.propagation import lloyd_l1, one_per_cluster, propagate_, random_centroids, rows
from ..engine.forecast_cache import ForecastHandle, ForecastHook, ForecastState, full_steps
from ..engine.patching import attach_hook
from ..engine.module_cache import StepState
from ..engine.stats import tensor_bytes
from .base import MethodConfig, architecture, check, check_warmup, check_warmup_steps, is_int, is_num, register

HOOK_NAME = "clusca"
IMAGE, TEXT = "image", "text"  # the token streams clustered


@register
@dataclass(frozen=True)
class ClusCaConfig(MethodConfig):
    """ClusCa. Defaults: the authors' FLUX setting (below). `interval=1` computes every step: bit-exact.

    The authors' setting per architecture, `ClusCaConfig.authors(family, num_steps)` (Shenyi-Z/Cache4Diffusion
    @91a1949; no SD3 and no PixArt code: MMDiT follows their FLUX code `flux/clusca-flux/`, PixArt their DiT
    code `dit/clusca-dit/`, the nearest: a PixArt block is DiT's plus cross-attention). Nothing depends on the
    step count.

    | field | MMDiT (SD3, FLUX): `flux/clusca-flux/` | PixArt (DiT): `dit/clusca-dit/` |
    |---|---|---|
    | interval | 5: `sample.py` `app` (`--fresh_threshold` default); `flux/modules/cache_functions/cal_type.py` `cal_type` (counter) | 4: `sample.py` (`--interval` default); `cache_functions/cal_type.py` `cal_type` |
    | max_order | 1: `sample.py` (`--max_order` default) | 4: `sample.py` (`--max-order` default) |
    | num_clusters | 16: `sample.py` (`--cluster_num` default) | 16: `sample.py` (`--cluster-num` default) |
    | propagation_ratio | 0.005: `sample.py` (`--propagation_ratio` default); `cache_functions/update_cache.py` `propagation_update_cache_compile` | 0.0: `sample.py` (`--propagation-ratio` default; `DiTBlock.forward` then calls `update_cache`) |
    | kmeans_iters | 10: `flux/cluster_utils/Kmeans.py` `Kmeans.__init__` (`max_iters=10`, `p=1`), called by `cluster_utils/__init__.py` `get_cluster_info` | 100: `cluster_utils/Kmeans.py` `Kmeans.__init__` (`max_iters=100`, `p=1`) |
    | warmup_steps | 3, fixed at any T: `cache_functions/cache_init.py` `cache_init` (mode 'ClusCa', `first_enhance`); `cal_type` (`step < first_enhance`) | 2: `cache_functions/cache_init.py` `cache_init` (`first_enhance`); `cal_type` (the first two steps of the countdown) |

    (Their FLUX `cluster_utils/__init__.py` `cluster_scheduler` reads a key `topk` that `cache_init` never sets;
    the HiCache repository's copy of the same code, yiming-l21/CFGCache @bf339cb, reads `k`, with the same
    defaults.) Their other ClusCa code agrees on MMDiT: the diffusers FLUX port (`ascend/flux/clusca_flux/`) uses 16
    clusters, order 1, warm-up 3 with interval 6 and ratio 0.007; HunyuanVideo's `sample.sh` 32 clusters and
    0.01. The PixArt ratio 0.0 is the DiT script's default (the representatives' rows only).

    Where ours deviates: (1) a cluster left empty by k-means (their random init draws with replacement, and an
    empty cluster's centroid moves to 0) gets token 0 as representative in their code, whose output is then
    added to token 0's cluster a second time; ours recomputes that token too but propagates nothing for the
    empty cluster. (2) k-means runs in float32 throughout (theirs: distances in float32, centroid updates in
    the model dtype). (3) The random draws (k-means init, representatives) come from seeded generators, drawn
    per step for all layers at once, where theirs draw from the global generator per module.

    Attributes:
        interval: a full step every `interval` steps after the warm-up (their `fresh_threshold`); 1 computes
            every step.
        max_order: the Taylor order of the forecast (their `max_order`).
        num_clusters: K, the clusters of the image tokens, and the image tokens each MLP recomputes per
            cached step (their `cluster_num`).
        propagation_ratio: gamma, the weight of the representative's fresh output in every token of its
            cluster (their `propagation_ratio`); 0 updates the representatives' rows only.
        kmeans_iters: the most Lloyd iterations per clustering (their `max_iters`).
        warmup_steps: leading full steps (their `first_enhance`).
    """

    name: ClassVar[str] = "clusca"
    interval: int = 5
    max_order: int = 1
    num_clusters: int = 16
    propagation_ratio: float = 0.005
    kmeans_iters: int = 10
    warmup_steps: int = 3

    def __post_init__(self) -> None:
        check(is_int(self.interval) and self.interval >= 1, self, "interval", "an integer >= 1")
        check(is_int(self.max_order) and 0 <= self.max_order <= 4, self, "max_order", "an integer in [0, 4]")
        check(is_int(self.num_clusters) and self.num_clusters >= 1, self, "num_clusters", "an integer >= 1")
        check(is_num(self.propagation_ratio) and 0.0 <= self.propagation_ratio <= 1.0, self, "propagation_ratio",
              "a float in [0, 1]")
        check(is_int(self.kmeans_iters) and self.kmeans_iters >= 1, self, "kmeans_iters", "an integer >= 1")
        check_warmup(self)

    def check_steps(self, num_steps: int) -> None:
        check_warmup_steps(self, num_steps)

    def check_tokens(self, num_tokens: int) -> None:
        check(self.num_clusters <= num_tokens, self, "num_clusters",
              f"at most the number of image tokens ({num_tokens})")

    @property
    def is_identity(self) -> bool:
        return self.interval == 1

    def forecast_weights(self, x: int) -> list[float]:
        """The Taylor weights x steps after the last full step."""
        return taylor_weights(x, self.max_order)

    @classmethod
    def authors(cls, family: str, num_steps: int) -> dict:
        """Their FLUX setting on MMDiT, their DiT setting on PixArt (see the class docstring)."""
        if architecture(cls, family, num_steps) == "mmdit":
            return {"interval": 5, "max_order": 1, "num_clusters": 16, "propagation_ratio": 0.005,
                    "kmeans_iters": 10, "warmup_steps": 3}
        return {"interval": 4, "max_order": 4, "num_clusters": 16, "propagation_ratio": 0.0, "kmeans_iters": 100,
                "warmup_steps": 2}

    @classmethod
    def examples(cls, num_steps: int) -> tuple["ClusCaConfig", "ClusCaConfig"]:
        return cls(interval=1), cls()

    def offline_schedule(self, num_steps: int, num_tokens: int) -> list[int]:
        """All tokens on full steps; K (one per cluster, in every image MLP) on the others."""
        full = set(full_steps(num_steps, 1 if self.is_identity else self.interval, self.warmup_steps))
        return [num_tokens if s in full else self.num_clusters for s in range(num_steps)]


class _ClusCaState(ForecastState):
    cached_phase = "cluster"

    @property
    def cached_tokens(self) -> int:
        return self.config.num_clusters

    def _on_new_generation(self) -> None:
        super()._on_new_generation()
        self.clusters: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # stream -> labels [B, N], centroids [B, K, D]
        self.representatives: dict[str, torch.Tensor] = {}  # stream -> this step's [L, B, K]
        self.init_generator = torch.Generator().manual_seed(0)
        self.generator: torch.Generator | None = None

    def _plan(self) -> None:
        super()._plan()
        self.representatives = {}

    def cluster(self, stream: str, tokens: torch.Tensor) -> None:
        """Clusters a stream's tokens at a full step, from the previous full step's centroids.  [B, N, D]"""
        b, n, d = tokens.shape
        k = min(self.config.num_clusters, n)
        previous = self.clusters.get(stream)
        if previous is not None and previous[1].shape == (b, k, d):
            centroids = previous[1]
        else:
            centroids = random_centroids(tokens, k, self.init_generator)  # [B, K, D]
        self.clusters[stream] = lloyd_l1(tokens, centroids, self.config.kmeans_iters)

    def representative(self, stream: str, layer: int, num_layers: int) -> torch.Tensor:
        """This step's representative of every cluster of `stream` in block `layer`.  -> [B, K]"""
        if stream not in self.representatives:
            labels, centroids = self.clusters[stream]
            uniforms = self._uniforms((num_layers, *labels.shape), labels.device)  # [L, B, N]
            self.representatives[stream] = one_per_cluster(labels, centroids.shape[1], uniforms)  # [L, B, K]
        return self.representatives[stream][layer]

    def _uniforms(self, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
        if device.type == "meta":
            return torch.rand(shape, device=device)
        if self.generator is None or self.generator.device != device:
            self.generator = torch.Generator(device=device).manual_seed(0)
        return torch.rand(shape, generator=self.generator, device=device)


class _ClusterHook(ForecastHook):
    """An MLP of a clustered stream: on cached steps it runs on one representative per cluster, updates its
    cached output from them, and returns the forecast of the updated factors."""

    def __init__(self, state: _ClusCaState, name: str, layer: int, num_layers: int, stream: str, gamma: float):
        super().__init__(state, name)
        self.layer = layer
        self.num_layers = num_layers
        self.stream = stream
        self.gamma = gamma

    def new_forward(self, module, *args, **kwargs):
        state = self.state
        if (state.bypass or state.step < 0 or state.full or self.name not in state.cache
                or self.stream not in state.clusters):
            return super().new_forward(module, *args, **kwargs)
        if "hidden_states" in kwargs:
            kwargs = dict(kwargs)
            hidden_states = kwargs.pop("hidden_states")
        else:
            hidden_states, args = args[0], args[1:]
        index = state.representative(self.stream, self.layer, self.num_layers)  # [B, K]
        fresh = self.fn_ref.original_forward(rows(hidden_states, index), *args, **kwargs)  # [B, K, D]
        factors = state.cache[self.name][0]
        propagate_(factors[0], index, fresh, state.clusters[self.stream][0], self.gamma)
        return weigh(factors, state.weights)


class _ClusterSource(ModelHook):
    """On a block whose outputs are clustered: at full steps, clusters each stream's tokens as they leave it."""

    def __init__(self, state: _ClusCaState, streams: dict[str, int]):
        super().__init__()
        self.state = state
        self.streams = streams  # stream -> its index in the block's output tuple

    def post_forward(self, module, output):
        state = self.state
        if state.full and state.keep_cache and not state.bypass and state.step >= 0:
            for stream, index in self.streams.items():
                state.cluster(stream, output[index] if isinstance(output, tuple) else output)
        return output


class ClusCaHandle(ForecastHandle):
    hook_name = HOOK_NAME

    def _make_state(self) -> StepState:
        return _ClusCaState(self.config, self.clock, self.family)

    def _module_hook(self, name, layer, attr, module) -> ModelHook:
        num_layers = len(self.transformer.transformer_blocks)
        if attr == "ff":
            return _ClusterHook(self.state, name, layer, num_layers, IMAGE, self.config.propagation_ratio)
        if attr == "ff_context":
            return _ClusterHook(self.state, name, layer, num_layers, TEXT, 0.0)
        return ForecastHook(self.state, name)

    def _install(self) -> None:
        super()._install()
        from diffusers.hooks._helpers import TransformerBlockRegistry

        blocks = self.transformer.transformer_blocks
        sources: dict[int, dict[str, int]] = {}
        image = TransformerBlockRegistry.get(type(blocks[-1]))
        sources[len(blocks) - 1] = {IMAGE: image.return_hidden_states_index}
        text = [i for i, block in enumerate(blocks) if getattr(block, "ff_context", None) is not None]
        if text:
            meta = TransformerBlockRegistry.get(type(blocks[text[-1]]))
            sources.setdefault(text[-1], {})[TEXT] = meta.return_encoder_hidden_states_index
        for i, streams in sources.items():
            attach_hook(blocks[i], _ClusterSource(self.state, streams), self._undo, HOOK_NAME)

    def cache_bytes(self) -> int:
        return tensor_bytes(self.state.cache, self.state.clusters)


ClusCaConfig.handle = ClusCaHandle

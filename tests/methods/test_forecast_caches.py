"""ClusCa and HiCache against hand computations on tiny SD3 (SD3.5 dual attention) and PixArt transformers.

Every hooked module's inputs and outputs are recorded at every step; the outputs at the cached steps are then
recomputed by hand from the recorded full-step outputs, with the formulas of the authors' code written out
here (their TaylorSeer recursion and schedule, the scaled Hermite weights from numpy, ClusCa's clustering of
the last block's image tokens, one representative per cluster, the propagated update), and with copies of
the unpatched modules for the representatives' fresh outputs."""

import copy
import math

import pytest
import torch
from numpy.polynomial import hermite as H

import cat
from cat import testing
from cat.core.propagation import lloyd_l1, one_per_cluster, random_centroids
from cat.families import family_for
from cat.methods.clusca import ClusCaConfig
from cat.methods.hicache import HiCacheConfig

pytestmark = pytest.mark.usefixtures("one_thread")

MAKERS = {
    "sd3": testing.tiny_sd3_transformer,
    "sd35_dual_attention": lambda: testing.tiny_sd3_transformer(qk_norm="rms_norm", dual_attention_layers=(0,)),
    "pixart": testing.tiny_pixart_transformer,
}
BATCH, LATENT, TEXT = 2, 16, 7  # 8 x 8 = 64 image tokens


def modules(transformer):
    """The cached modules, by qualified name (the family's STEP_CACHED ones)."""
    from cat.families.base import STEP_CACHED

    return dict(family_for(transformer).find(transformer, STEP_CACHED))


def run(transformer, config, steps):
    """Runs `steps` denoising calls under `config`; returns the handle's stats and, per step, every cached
    module's input and output, the last block's output, and ClusCa's state (clusters, representatives)."""
    inputs = family_for(transformer).example_inputs(transformer.config, BATCH, LATENT, LATENT, TEXT,
                                                    torch.Generator().manual_seed(0))
    noise = torch.randn(inputs["hidden_states"].shape, generator=torch.Generator().manual_seed(1))
    record = [dict() for _ in range(steps)]
    step = [0]
    handles = []
    for name, module in modules(transformer).items():
        handles.append(module.register_forward_pre_hook(
            lambda m, a, k, name=name: record[step[0]].__setitem__(("in", name), (a[0] if a else k["hidden_states"]).clone()),
            with_kwargs=True))
        handles.append(module.register_forward_hook(
            lambda m, a, out, name=name: record[step[0]].__setitem__(("out", name), copy.deepcopy(out))))
        linear = next(m for m in module.modules() if isinstance(m, torch.nn.Linear))  # runs only if the module does
        handles.append(linear.register_forward_pre_hook(
            lambda m, a, name=name: record[step[0]].__setitem__(("rows", name), a[0].shape[1])))
    blocks = transformer.transformer_blocks
    for i in range(len(blocks)):
        handles.append(blocks[i].register_forward_hook(
            lambda m, a, out, i=i: record[step[0]].__setitem__(("block", i), copy.deepcopy(out))))
    try:
        with torch.no_grad(), cat.apply(transformer, config) as handle:
            handle.reset(cfg_pairs=False)
            for s in range(steps):
                step[0] = s
                call = {**inputs, "hidden_states": inputs["hidden_states"] + 0.3 * s * noise,
                        "timestep": torch.full((BATCH,), 900.0 - 80 * s)}
                transformer(**call)
                state = handle.state
                record[s]["state"] = {k: getattr(state, k, None) for k in ("clusters", "representatives")}
                record[s]["state"] = copy.deepcopy(record[s]["state"])
                record[s]["factors"] = {n: [list(f) for f in fs] for n, fs in state.cache.items()}
            stats = handle.stats
    finally:
        for h in handles:
            h.remove()
    return stats, record


def tensors(out):
    return list(out) if isinstance(out, tuple) else [out]


def close(a, b):
    return torch.allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module", params=list(MAKERS))
def transformer(request):
    return MAKERS[request.param]()


def test_hicache_forecasts_every_module_from_the_recorded_full_steps(transformer):
    """Warm-up 3, interval 3, order 2, scale 0.7: full steps 0, 1, 2, 5; the factors restart at steps 0 and 1
    (differences start at step warmup - 1 = 2), so at step 5 they are y5, (y5 - y2)/3 and ((y5 - y2)/3 - (y2 - y1))/3,
    and the forecast x steps after is y5 + sum_i F_i s^i H_i(s x) / i!."""
    config = HiCacheConfig(interval=3, warmup_steps=3, max_order=2, scale=0.7)
    stats, rec = run(transformer, config, 8)
    assert stats.full_steps == (0, 1, 2, 5) and stats.forecast_steps == (3, 4, 6, 7)
    assert [r.num_recomputed for r in stats.steps] == [64, 64, 64, 0, 0, 64, 0, 0]

    def weight(x, i):
        return config.scale ** i * H.hermval(config.scale * x, [0] * i + [1]) / math.factorial(i)

    for name in modules(transformer):
        assert [("rows", name) in rec[s] for s in range(8)] == [True, True, True, False, False, True, False, False]
        for k, (y1, y2, y5) in enumerate(zip(*(tensors(rec[s]["out", name]) for s in (1, 2, 5)))):
            d1 = y2 - y1
            for s, x in ((3, 1), (4, 2)):  # first order after step 2
                assert close(tensors(rec[s]["out", name])[k], y2 + weight(x, 1) * d1), (name, s)
            f1 = (y5 - y2) / 3
            f2 = (f1 - d1) / 3
            for s, x in ((6, 1), (7, 2)):
                assert close(tensors(rec[s]["out", name])[k], y5 + weight(x, 1) * f1 + weight(x, 2) * f2), (name, s)


def test_hicache_at_order_0_reuses_the_last_full_output_exactly(transformer):
    stats, rec = run(transformer, HiCacheConfig(interval=4, warmup_steps=1, max_order=0), 4)
    for name in modules(transformer):
        for out in tensors(rec[3]["out", name]):
            assert any(torch.equal(out, y) for y in tensors(rec[0]["out", name]))


def clusca_by_hand(transformer, config, rec, steps):
    """ClusCa's cached-step outputs recomputed from the record: {(step, module): [expected outputs]}."""
    blocks = transformer.transformer_blocks
    num_layers = len(blocks)
    text_block = max((i for i, b in enumerate(blocks) if getattr(b, "ff_context", None) is not None), default=None)
    original = {name: copy.deepcopy(m) for name, m in modules(transformer).items()}
    generator = torch.Generator().manual_seed(0)  # the k-means init draws
    draws = torch.Generator().manual_seed(0)  # the representatives' draws (the model's device: the CPU)
    clusters, factors, last_full, expected = {}, {}, None, {}
    for s in range(steps):
        is_full = s < config.warmup_steps or s - last_full >= config.interval
        if is_full:
            distance = None if last_full is None or s < config.warmup_steps - 1 else s - last_full
            for name in original:
                ys = tensors(rec[s]["out", name])
                old = factors.get(name)
                new = []
                for k, y in enumerate(ys):
                    fs = [y]
                    if distance is not None and old is not None:
                        for i in range(min(config.max_order, len(old[k]))):
                            fs.append((fs[i] - old[k][i]) / distance)
                    new.append(fs)
                factors[name] = new
            # the clusters: the image tokens leaving the last block; SD3's text tokens leaving its last text block
            # (clustered as the blocks run: SD3's text block comes first, and draws the init first)
            out = rec[s]["block", num_layers - 1]
            sources = {"image": out[1] if isinstance(out, tuple) else out}
            if text_block is not None:
                sources = {"text": rec[s]["block", text_block][0], **sources}
            for stream, x in sources.items():
                k = min(config.num_clusters, x.shape[1])
                start = clusters[stream][1] if stream in clusters else random_centroids(x, k, generator)
                clusters[stream] = lloyd_l1(x, start, config.kmeans_iters)
            last_full = s
            continue
        x = s - last_full
        reps = {}
        for stream in ("image", "text"):  # the order of the first draws in a step: block 0's ff, then ff_context
            if stream in clusters:
                labels, centroids = clusters[stream]
                reps[stream] = one_per_cluster(labels, centroids.shape[1],
                                               torch.rand((num_layers, *labels.shape), generator=draws))
        for name, module in original.items():
            layer, attr = int(name.split(".")[1]), name.split(".")[2]
            fs = factors[name]
            if attr in ("ff", "ff_context"):
                stream, gamma = ("image", config.propagation_ratio) if attr == "ff" else ("text", 0.0)
                labels = clusters[stream][0]
                index = reps[stream][layer]  # [B, K]
                inputs = rec[s]["in", name]
                with torch.no_grad():
                    fresh = module(torch.stack([inputs[b, index[b]] for b in range(BATCH)]))  # [B, K, D]
                cache = fs[0][0].clone()
                for b in range(BATCH):
                    cache[b, index[b]] = fresh[b]
                    cache[b] = fresh[b, labels[b]] * gamma + cache[b] * (1 - gamma)
                fs[0][0] = cache  # the update persists
                for b in range(BATCH):  # one member of each cluster that has members
                    assert all(labels[b, index[b, c]] == c for c in labels[b].unique().tolist())
            expected[s, name] = [f[0] + sum(f[i] * x ** i / math.factorial(i) for i in range(1, len(f))) for f in fs]
    return expected, factors


def test_clusca_matches_the_hand_computation(transformer):
    """Warm-up 2, interval 3, order 1, 4 clusters, gamma 0.3: full steps 0, 1, 4; at steps 2, 3, 5 the attentions
    are forecast, each image MLP runs on one drawn member per cluster, its cached output takes the fresh rows and
    gamma R[label] + (1 - gamma) C, and returns the Taylor forecast; SD3's text MLP does the same on the text
    clusters with gamma 0. The next full step's differences start from the updated cache."""
    config = ClusCaConfig(interval=3, warmup_steps=2, max_order=1, num_clusters=4, propagation_ratio=0.3,
                          kmeans_iters=10)
    steps = 6
    stats, rec = run(transformer, config, steps)
    assert stats.full_steps == (0, 1, 4) and [r.num_recomputed for r in stats.steps] == [64, 64, 4, 4, 64, 4]
    assert [r.phase for r in stats.steps] == ["full", "full", "cluster", "cluster", "full", "cluster"]
    expected, _ = clusca_by_hand(transformer, config, rec, steps)
    for (s, name), outs in expected.items():
        for got, want in zip(tensors(rec[s]["out", name]), outs):
            assert close(got, want), (s, name, (got - want).abs().max())
        runs = rec[s].get(("rows", name))  # the MLPs run on K tokens, the attentions not at all
        assert runs == (4 if name.endswith(("ff", "ff_context")) else None), (s, name, runs)
    # the clusters the method used are the hand's, and at step 4 the differences start from the updated cache
    for s in (1, 4):
        assert rec[s]["state"]["clusters"]["image"][0].shape == (BATCH, 64)
    ff = next(n for n in modules(transformer) if n.endswith(".ff"))
    f_after_3 = expected[3, ff][0] - (rec[1]["out", ff] - rec[0]["out", ff]) * 2  # the updated F_0 at step 3
    assert close(rec[4]["factors"][ff][0][1], (rec[4]["out", ff] - f_after_3) / 3)


def test_clusca_with_gamma_0_changes_only_the_representatives_rows(transformer):
    config = ClusCaConfig(interval=3, warmup_steps=1, max_order=0, num_clusters=4, propagation_ratio=0.0)
    _, rec = run(transformer, config, 2)
    ff = next(n for n in modules(transformer) if n.endswith(".ff"))
    changed = (rec[1]["out", ff] != rec[0]["out", ff]).any(-1)  # [B, N]
    index = rec[1]["state"]["representatives"]["image"][int(ff.split(".")[1])]
    assert all(set(changed[b].nonzero().flatten().tolist()) <= set(index[b].tolist()) for b in range(BATCH))
    assert changed.sum(-1).tolist() != [0, 0]


def test_clusca_and_hicache_macs_counted_while_running_match_the_offline_schedule():
    """The executed MACs of a tiny SD3 pipeline under each method agree with the meta-device count of its
    offline schedule (full steps: every token; cached steps: K image tokens per MLP, or nothing). ClusCa's
    executed count also holds its k-means on the full steps (the centroid updates' products, at most
    `kmeans_iters` per stream and full step), which the offline count leaves out: a few percent on this tiny
    model, about 1e-4 of a full step on SD3-medium at 1024 px."""
    from experiments.run.macs import realised_transformer_macs, report_from_config

    pipe = testing.tiny_sd3_pipeline()
    call = lambda: pipe(["a red circle"], num_inference_steps=8, guidance_scale=5.0, height=32, width=32,  # noqa: E731
                        output_type="latent", max_sequence_length=8)
    full = realised_transformer_macs(pipe, call)
    tcfg = {k: v for k, v in dict(pipe.transformer.config).items() if not k.startswith("_")}
    clusca = ClusCaConfig(interval=3, num_clusters=8)
    kmeans = 4 * clusca.kmeans_iters * 2 * 8 * (256 + 85) * 32  # 4 full steps, batch 2, image and text tokens, width 32
    for config, overhead in ((clusca, kmeans), (HiCacheConfig(interval=3), 0)):
        with cat.apply(pipe, config):
            counted = realised_transformer_macs(pipe, call)
        meta = report_from_config("SD3Transformer2DModel", tcfg, height=32, width=32, text_tokens=85, steps=8,
                                  guidance=True, method=config, vae_scale=1)
        assert full == pytest.approx(meta.transformer_macs_full, rel=1e-3)
        assert meta.transformer_macs * (1 - 1e-3) <= counted <= meta.transformer_macs * (1 + 1e-3) + overhead
        assert counted < 0.75 * full


@pytest.mark.parametrize("cls, field, value", [
    (ClusCaConfig, "interval", 0), (ClusCaConfig, "max_order", 5), (ClusCaConfig, "num_clusters", 0),
    (ClusCaConfig, "propagation_ratio", 1.5), (ClusCaConfig, "kmeans_iters", 0), (HiCacheConfig, "interval", 0),
    (HiCacheConfig, "max_order", -1), (HiCacheConfig, "scale", 0.0), (HiCacheConfig, "scale", float("inf")),
])
def test_bad_fields_are_named_with_their_range(cls, field, value):
    with pytest.raises(ValueError, match=rf"{cls.__name__}\.{field}={value!r} is invalid: {field} must be"):
        cls(**{field: value})


def test_more_clusters_than_tokens_is_refused_before_any_model_loads():
    ClusCaConfig(num_clusters=16).check_tokens(16)
    with pytest.raises(ValueError, match=r"num_clusters=17 is invalid: num_clusters must be at most the number of "
                                         r"image tokens \(16\)"):
        ClusCaConfig(num_clusters=17).check_tokens(16)


def test_the_schedules_the_harness_reads():
    assert ClusCaConfig().offline_schedule(10, 256) == [256, 256, 256, 16, 16, 16, 16, 256, 16, 16]
    assert HiCacheConfig().offline_schedule(10, 256) == [256, 256, 256, 0, 0, 0, 0, 0, 0, 256]
    assert HiCacheConfig(interval=1).offline_schedule(4, 9) == [9] * 4
    assert HiCacheConfig(max_order=0).key_ignores() == ("scale",) and HiCacheConfig().key_ignores() == ()


@pytest.mark.parametrize("name", ["sd3", "pixart"])
def test_cached_steps_read_nothing_back_from_the_device(name):
    """On the `meta` device a tensor has no values, so any read (`.item()`, `torch.equal`, branching on a value)
    fails: both methods run their cached steps there (k-means, on full steps, skips its stopping test)."""
    with torch.device("meta"):
        transformer = MAKERS[name]()
    inputs = family_for(transformer).example_inputs(transformer.config, BATCH, LATENT, LATENT, TEXT, device="meta")
    for config in (ClusCaConfig(interval=3, warmup_steps=1, num_clusters=4), HiCacheConfig(interval=3, warmup_steps=1)):
        with torch.no_grad(), cat.apply(transformer, config) as handle:
            handle.reset(cfg_pairs=False)
            for _ in range(4):
                out = transformer(**inputs)[0]
            cached = "cluster" if isinstance(config, ClusCaConfig) else "forecast"
            assert [r.phase for r in handle.stats.steps] == ["full", cached, cached, "full"]
        assert out.device.type == "meta"

"""`<Config>.authors(family, num_steps)`: every method's authors' setting per architecture class, each value
written out here from the authors' code as read at fixed commits (the methods' docstrings cite file and
function): "sd3" and "flux" follow the authors' MMDiT / FLUX code, "pixart" their PixArt code or the nearest
they have. Checked at 28 steps and at a step count where the authors' values scale (or must not)."""

import dataclasses

import pytest

import cat
from cat.families import family_names
from cat.methods.base import ARCHITECTURES, MethodConfig
from cat.methods.toca import full_steps

CAT = {"keep_ratio": 0.3, "reference_offset": 1, "cluster_feature_weight": 0.05, "kmeans_iters": 300,
       "staleness_decay": 0.5, "cluster_share": 0.25, "quota_unit": 0.05, "cluster_quotas": (3, 2, 1),
       "first_cluster_cap": 0.10, "smooth_first": True, "prune_attention": True, "prune_ff": True}
TOCA_MMDIT = {"interval": 4, "fresh_ratio": 0.1, "ratio_schedule": "flux", "score": "straight",
              "soft_fresh_weight": 0.25, "interval_step_weight": 0.0, "warmup_steps": 3, "refresh": "counter",
              "spatial_bonus": False}
TOCA_PIXART = {"interval": 3, "fresh_ratio": 0.30, "ratio_schedule": "toca", "score": "straight",
               "soft_fresh_weight": 0.25, "interval_step_weight": 0.2, "warmup_steps": 1, "refresh": "modulo",
               "spatial_bonus": True}
TAYLORSEER_MMDIT = {"cache_interval": 6, "max_order": 1, "warmup_steps": 3, "factors_dtype": None,
                    "disable_cache_after_step": None}
TAYLORSEER_PIXART = {"cache_interval": 4, "max_order": 4, "warmup_steps": 2, "factors_dtype": None,
                     "disable_cache_after_step": None}
# The forecasting caches: ClusCa (Shenyi-Z/Cache4Diffusion @91a1949: flux/clusca-flux on MMDiT, dit/clusca-dit
# on PixArt) and HiCache (yiming-l21/CFGCache @bf339cb: the README's FLUX launcher, for every class)
CLUSCA_MMDIT = {"interval": 5, "max_order": 1, "num_clusters": 16, "propagation_ratio": 0.005, "kmeans_iters": 10,
                "warmup_steps": 3}
CLUSCA_PIXART = {"interval": 4, "max_order": 4, "num_clusters": 16, "propagation_ratio": 0.0, "kmeans_iters": 100,
                 "warmup_steps": 2}
HICACHE = {"interval": 7, "max_order": 2, "scale": 0.5, "warmup_steps": 3}
# The budgeted forecasting cache has no authors: its own documented defaults, for every class and step count
FORECAST_SEARCH = {"schedule": "searched", "correction": "none", "num_corrected": 16, "gamma": 1.0, "max_order": 2,
                   "basis": "hermite", "scale": 0.5, "max_skip": 6, "warmup_steps": 1}


def ras(warmup, resets, starvation, high):
    return {"sample_ratio": 0.5, "warmup_steps": warmup, "error_reset_steps": resets, "end_step": None,
            "starvation_scale": starvation, "high_ratio": high, "metric": "std"}


def magcache(threshold, skips, retention, forced):
    return {"threshold": threshold, "max_skip_steps": skips, "retention_ratio": retention, "warmup_steps": None,
            "forced_steps": forced}


# The field's step and block caches (issue 36).
DBCACHE = {"threshold": 0.12, "fn_blocks": 1, "bn_blocks": 0, "warmup_steps": 8, "max_cached_steps": None,
           "max_continuous_cached_steps": 3, "taylorseer_order": 0}
PAB_MMDIT = {"spatial_range": 2, "spatial_timesteps": (100.0, 850.0), "cross_range": None,
             "cross_timesteps": (100.0, 800.0), "warmup_steps": 1}
PAB_PIXART = {"spatial_range": 2, "spatial_timesteps": (100.0, 800.0), "cross_range": 6,
              "cross_timesteps": (100.0, 800.0), "warmup_steps": 1}


def fastercache(attention, weight, steps):
    warmup, uncond, low_end, high_start = steps
    return {"attention_interval": attention, "attention_weight": weight, "uncond_interval": 5, "warmup_steps": warmup,
            "uncond_start": uncond, "low_freq_end": low_end, "high_freq_start": high_start, "alpha_low": 1.1,
            "alpha_high": 1.1}


# (method, architecture class, steps) -> the authors' values. 28 steps, and 50 or 20 where a value scales or is
# kept fixed on purpose (ToCa's and TaylorSeer's warm-ups, FORA's and FBCache's step 0).
EXPECTED = {
    # CAT (ada-cheng/CAT-Pruning @3b88889, SD3-medium for every class): 8 warm-up steps of 28, the share kept
    ("cat", "sd3", 28): {**CAT, "warmup_steps": 8},
    ("cat", "sd3", 50): {**CAT, "warmup_steps": 14},
    ("cat", "pixart", 28): {**CAT, "warmup_steps": 8},
    ("cat", "pixart", 20): {**CAT, "warmup_steps": 6},
    # CAT + FORA: CAT's values (the composition has no authors)
    ("cat_budget", "sd3", 28): {**CAT, "warmup_steps": 8},  # CAT's authors; the budget is this project's
    ("cat_budget", "sd3", 50): {**CAT, "warmup_steps": 14},
    ("cat_budget", "pixart", 28): {**CAT, "warmup_steps": 8},
    ("cat_budget", "pixart", 20): {**CAT, "warmup_steps": 6},
    ("cat_fora", "sd3", 28): {**CAT, "warmup_steps": 8},
    ("cat_fora", "sd3", 20): {**CAT, "warmup_steps": 6},
    ("cat_fora", "pixart", 28): {**CAT, "warmup_steps": 8},
    ("cat_fora", "pixart", 50): {**CAT, "warmup_steps": 14},
    # FORA (prathebaselva/FORA @acde628, DiT only, for both classes)
    ("fora", "sd3", 28): {"interval": 3, "warmup_steps": 1},
    ("fora", "sd3", 50): {"interval": 3, "warmup_steps": 1},
    ("fora", "pixart", 28): {"interval": 3, "warmup_steps": 1},
    ("fora", "pixart", 20): {"interval": 3, "warmup_steps": 1},
    # ToCa (Shenyi-Z/ToCa @e84096f): flux-ToCa on MMDiT, PixArt-alpha-ToCa on PixArt; nothing scales
    ("toca", "sd3", 28): TOCA_MMDIT,
    ("toca", "sd3", 50): TOCA_MMDIT,
    ("toca", "pixart", 28): TOCA_PIXART,
    ("toca", "pixart", 20): TOCA_PIXART,
    # TaylorSeer (Shenyi-Z/TaylorSeer @288776d): TaylorSeer-FLUX on MMDiT, TaylorSeer-DiT on PixArt; fixed
    ("taylorseer", "sd3", 28): TAYLORSEER_MMDIT,
    ("taylorseer", "sd3", 50): TAYLORSEER_MMDIT,
    ("taylorseer", "pixart", 28): TAYLORSEER_PIXART,
    ("taylorseer", "pixart", 50): TAYLORSEER_PIXART,
    # RAS (microsoft/RAS @a9c5ec8): the SD3 script at 28 steps, the Lumina script at 30, indices scaled,
    # the warm-up at least 4
    ("ras", "sd3", 28): ras(4, (12, 20), 1.0, 0.3),
    ("ras", "sd3", 50): ras(7, (21, 36), 1.0, 0.3),
    ("ras", "sd3", 20): ras(4, (9, 14), 1.0, 0.3),
    ("ras", "pixart", 28): ras(4, (11, 21), 0.1, 1.0),
    ("ras", "pixart", 30): ras(4, (12, 22), 0.1, 1.0),
    ("ras", "pixart", 50): ras(7, (20, 37), 0.1, 1.0),
    ("ras", "pixart", 20): ras(4, (8, 15), 0.1, 1.0),
    # MagCache (Zehong-Ma/MagCache @df81cb1): FLUX with its step 11 of 28 mapped to T; Open-Sora on PixArt
    ("magcache", "sd3", 28): magcache(0.24, 5, 0.1, (11,)),
    ("magcache", "sd3", 50): magcache(0.24, 5, 0.1, (20,)),
    ("magcache", "sd3", 20): magcache(0.24, 5, 0.1, (8,)),
    ("magcache", "sd3", 10): magcache(0.24, 5, 0.1, ()),  # no step maps to 11 at 10 steps
    ("magcache", "pixart", 28): magcache(0.12, 3, 0.2, ()),
    ("magcache", "pixart", 50): magcache(0.12, 3, 0.2, ()),
    # FBCache (chengzeyi/ParaAttention @58e476d): the FLUX adapter; the Wan adapter for PixArt
    ("fbcache", "sd3", 28): {"threshold": 0.05, "warmup_steps": 1},
    ("fbcache", "sd3", 50): {"threshold": 0.05, "warmup_steps": 1},
    ("fbcache", "pixart", 28): {"threshold": 0.03, "warmup_steps": 1},
    ("fbcache", "pixart", 20): {"threshold": 0.03, "warmup_steps": 1},
    # ClusCa and HiCache: nothing scales with the step count
    ("clusca", "sd3", 28): CLUSCA_MMDIT,
    ("clusca", "sd3", 50): CLUSCA_MMDIT,
    ("clusca", "pixart", 28): CLUSCA_PIXART,
    ("clusca", "pixart", 50): CLUSCA_PIXART,
    ("hicache", "sd3", 28): HICACHE,
    ("hicache", "sd3", 50): HICACHE,
    ("hicache", "pixart", 28): HICACHE,
    ("hicache", "pixart", 20): HICACHE,
    # --- the field's step and block caches (issue 36) ---
    # DBCache (vipshop/cache-dit @f86744a): their example runner's defaults for every model, the warm-up fixed
    ("dbcache", "sd3", 28): DBCACHE,
    ("dbcache", "sd3", 50): DBCACHE,
    ("dbcache", "pixart", 28): DBCACHE,
    ("dbcache", "pixart", 20): DBCACHE,
    # TeaCache (ali-vilab/TeaCache @7c10efc): TeaCache4FLUX on MMDiT, their Latte code on PixArt; nothing scales
    ("teacache", "sd3", 28): {"threshold": 0.6, "warmup_steps": 1, "compute_last_step": True},
    ("teacache", "sd3", 50): {"threshold": 0.6, "warmup_steps": 1, "compute_last_step": True},
    ("teacache", "pixart", 28): {"threshold": 0.1, "warmup_steps": 1, "compute_last_step": True},
    ("teacache", "pixart", 20): {"threshold": 0.1, "warmup_steps": 1, "compute_last_step": True},
    # PAB (NUS-HPC-AI-Lab/VideoSys @4cce477): CogVideoX's setting on MMDiT, Latte's on PixArt; timesteps, not steps
    ("pab", "sd3", 28): PAB_MMDIT,
    ("pab", "sd3", 50): PAB_MMDIT,
    ("pab", "pixart", 28): PAB_PIXART,
    ("pab", "pixart", 20): PAB_PIXART,
    # FasterCache (Vchitect/FasterCache @02d05ef): CogVideoX on MMDiT, Latte on PixArt, their steps of 50 scaled
    ("fastercache", "sd3", 28): fastercache(3, 0.3, (10, 10, 22, 16)),
    ("fastercache", "sd3", 50): fastercache(3, 0.3, (17, 17, 39, 29)),
    ("fastercache", "sd3", 20): fastercache(3, 0.3, (7, 7, 16, 12)),
    ("fastercache", "pixart", 28): fastercache(2, 0.5, (8, 10, 24, 25)),
    ("fastercache", "pixart", 50): fastercache(2, 0.5, (15, 17, 43, 44)),
    ("fastercache", "pixart", 20): fastercache(2, 0.5, (6, 7, 17, 18)),
    # the budgeted forecasting cache (issue 37): no authors, this project's defaults
    ("forecast_search", "sd3", 28): FORECAST_SEARCH,
    ("forecast_search", "sd3", 50): FORECAST_SEARCH,
    ("forecast_search", "pixart", 28): FORECAST_SEARCH,
    ("forecast_search", "pixart", 20): FORECAST_SEARCH,
    # fewer steps: no authors; half the steps
    ("steps", "sd3", 28): {"num_steps": 14},
    ("steps", "sd3", 50): {"num_steps": 25},
    ("steps", "pixart", 28): {"num_steps": 14},
    ("steps", "pixart", 20): {"num_steps": 10},
}


def test_every_method_and_both_classes_are_covered():
    covered = {(name, family) for name, family, _ in EXPECTED}
    assert covered == {(name, family) for name in cat.METHODS for family in ("sd3", "pixart")}
    assert all({steps for n, f, steps in EXPECTED if (n, f) == key} - {28} for key in covered)  # and another T


@pytest.mark.parametrize("name, family, steps", list(EXPECTED))
def test_the_authors_values(name, family, steps):
    cls = cat.METHODS[name]
    values = cls.authors(family, steps)
    assert values == EXPECTED[name, family, steps]
    assert all(type(v) is type(EXPECTED[name, family, steps][k]) for k, v in values.items())
    config = cls(**values)  # a valid config, for a run of that step count
    config.check_steps(steps)
    assert {k: getattr(config, k) for k in values} == values
    if family == "sd3":  # FLUX follows the same authors' code as SD3
        assert cls.authors("flux", steps) == values


def test_model_size_fields_are_left_out():
    assert "num_clusters" not in cat.CATConfig.authors("sd3", 28)
    assert "mag_ratios" not in cat.MagCacheConfig.authors("sd3", 28)
    assert "reuse_interval" not in cat.CATFORAConfig.authors("sd3", 28)  # no authors for the composition
    assert "coefficients" not in cat.TeaCacheConfig.authors("sd3", 28)


def test_toca_mmdit_setting_is_full_at_the_authors_steps():
    assert full_steps(cat.ToCaConfig(**cat.ToCaConfig.authors("sd3", 28)), 28) == (0, 1, 2, 6, 10, 14, 18, 22, 26)
    assert full_steps(cat.ToCaConfig(**cat.ToCaConfig.authors("sd3", 20)), 20) == (0, 1, 2, 6, 10, 14, 18)
    # PixArt: step 0, then round(3 / (0.8 + 0.4 s/T)) re-derived at each full step (whole steps here; their
    # per-layer check makes step 8 full in layer 0 only: a documented deviation)
    assert full_steps(cat.ToCaConfig(**cat.ToCaConfig.authors("pixart", 28)), 28) == (0, 4, 8, 9, 12, 15, 18, 21,
                                                                                       24, 27)


@pytest.mark.parametrize("name", sorted(cat.METHODS))
def test_unknown_family_and_bad_step_counts_are_refused(name):
    cls = cat.METHODS[name]
    with pytest.raises(ValueError, match=rf"{cls.__name__}\.authors: family='sdxl' is invalid: family must be one "
                                         r"of flux, pixart, sd3\."):
        cls.authors("sdxl", 28)
    for bad in (0, 28.0, None):
        with pytest.raises(ValueError, match=rf"num_steps={bad!r} is invalid: num_steps must be an integer >= 1"):
            cls.authors("sd3", bad)


def test_the_architecture_classes_name_every_family():
    assert set(ARCHITECTURES) == set(family_names()) == {"flux", "pixart", "sd3"}


def test_the_contract_default_names_the_class():
    @dataclasses.dataclass(frozen=True)
    class NoAuthorsConfig(MethodConfig):
        pass

    with pytest.raises(NotImplementedError, match="NoAuthorsConfig declares no authors' setting"):
        NoAuthorsConfig.authors("sd3", 28)


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("family", ["sd3", "pixart"])
def test_every_authors_setting_runs_on_a_tiny_model(family):
    """Each authors' setting (plus what the model config holds: CAT's clusters, MagCache's ratios) runs and
    changes the output, on the tiny pipelines at 10 steps."""
    import torch

    from cat import testing

    steps = 10
    pipe = testing.tiny_sd3_pipeline() if family == "sd3" else testing.tiny_pixart_pipeline()
    extra = {"max_sequence_length": 8} if family == "sd3" else {"use_resolution_binning": False,
                                                               "max_sequence_length": 16, "clean_caption": False}
    model_fields = {"cat": {"num_clusters": 4}, "cat_fora": {"num_clusters": 4}, "cat_budget": {"num_clusters": 4},
                    "magcache": {"mag_ratios": tuple(1.0 - 0.01 * i for i in range(steps))},
                    "teacache": {"coefficients": (0.0, 0.0, 0.0, 1.0, 0.0)},
                    "forecast_search": {"calibration": forecast_search_calibration(steps)}}

    def generate(overrides=None):
        return pipe(["a red circle"], guidance_scale=5.0, height=32, width=32, output_type="latent",
                    generator=torch.Generator().manual_seed(0),
                    **{"num_inference_steps": steps, **extra, **(overrides or {})}).images

    base = generate()
    for name, cls in sorted(cat.METHODS.items()):
        config = cls(**cls.authors(family, steps), **model_fields.get(name, {}))
        with cat.apply(pipe, config) as handle:
            out = generate(handle.call_overrides())
        assert torch.isfinite(out).all(), name
        if name not in ("fbcache", "dbcache"):  # their thresholds may skip nothing on a random tiny model
            assert not torch.equal(out, base), name


def forecast_search_calibration(steps: int) -> dict:
    """A stand-in for what a model's calibration holds (`ForecastSearchConfig.calibrate`): segment costs growing
    with the segment's length, MACs per action in image tokens, at its defaults."""
    costs = [[float(skipped ** 2) if s + skipped < steps else None for skipped in range(1, 7)] for s in range(steps)]
    macs = {kind: {"F": 256, "f": 0, "c": 16} for kind in ("none", "cluster", "topk")}
    settings = {"num_corrected": 16, "gamma": 1.0, "max_order": 2, "basis": "hermite", "scale": 0.5, "max_skip": 6}
    return {"num_steps": steps, "guidance_scale": 5.0, "settings": settings, "macs": {"model": 256, **macs},
            "costs": {"none": costs, "cluster": [[c / 2 if c else c for c in row] for row in costs], "topk": costs}}

"""Every config file composes, and bad values fail before any model is loaded."""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

import experiments.lifecycle.resolvers  # noqa: F401
from experiments.tasks.validation import method_config, validate

CONF = Path(__file__).resolve().parents[3] / "conf"


def _compose(overrides, hydra=False):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=overrides, return_hydra_config=hydra)


def _names(group):
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.mark.parametrize("group", ["model", "method", "data", "metrics", "logger", "experiment", "sweep", "debug"])
def test_every_config_file_composes(group):
    for name in _names(group):
        cfg = _compose([f"{group}={name}"])
        OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves
        if group in ("method", "experiment") and cfg.method.config is not None:
            import cat

            config = method_config(cfg)
            assert cat.METHODS[type(config).name] is type(config)
            assert getattr(config, cfg.method.knob) == cfg.method.config[cfg.method.knob]


def test_defaults_are_the_embedded_model_and_cat():
    cfg = _compose([])
    assert cfg.model.name == "tiny_sd3_shapes" and cfg.method.name == "cat" and cfg.data.name == "shapes"
    assert cfg.logger.mode == "offline"


def test_warmup_scales_with_the_step_count():
    assert method_config(_compose(["model=sd3_medium"])).warmup_steps == 8
    assert method_config(_compose(["model=sd3_medium", "model.steps=50"])).warmup_steps == 14


def test_ablation_sweep_is_a_multirun_over_policy_keep_and_clusters_with_enough_prompts():
    cfg = _compose(["sweep=ablation"], hydra=True)
    assert cfg.hydra.mode.name == "MULTIRUN"
    params = cfg.hydra.sweeper.params
    for axis in ("method", "method.config.keep_ratio", "method.config.num_clusters"):
        assert axis in params
    assert cfg.data.limit >= 32  # paired intervals need prompts


def test_peers_sweep_compares_every_method_in_every_variant_with_a_knob_it_can_move():
    import dataclasses

    import cat
    from experiments.compare.settings import Plan, authors_conflicts, derived_fields

    cfg = _compose(["sweep=peers"], hydra=True)
    params = cfg.hydra.sweeper.params
    methods = params["method"].split(",")
    assert set(methods) == set(cat.METHODS) | {"cat_random"}  # the registered methods and random tokens
    assert params["compare.variant"] == "authors,tuned,shared_warmup" and cfg.task == "compare"
    assert cfg.data.limit >= 32
    for name in methods:
        composed = _compose([f"method={name}"])
        plan = Plan.of(composed.method)
        fields = {f.name for f in dataclasses.fields(method_config(composed))}
        assert plan.knob in fields and set(plan.tune) <= fields, name
        assert plan.continuous or len(plan.levels) >= 2, name
        grid = 1
        for values in plan.tune.values():
            grid *= len(values)
        assert grid <= 8, f"{name}: a tuning grid of {grid} settings"  # the sweep's runtime
    # no YAML sets a field against the authors' setting (task=compare refuses that), on either architecture:
    # the step-scaled defaults (`${for_steps:...}`) are the YAML's own and never count
    for model in ("tiny_sd3_shapes", "pixart_sigma"):
        for name in methods:
            composed = _compose([f"method={name}", f"model={model}"])
            assert not authors_conflicts(method_config(composed), composed.model.family, int(composed.model.steps), (),
                                         composed.method.knob, derived_fields(composed.method.config)), (model, name)


@pytest.mark.parametrize("overrides, message", [
    (["method.config.keep_ratio=1.5"], r"keep_ratio=1\.5 is invalid: keep_ratio must be a float in \(0, 1\]"),
    (["model.steps=6", "method.config.warmup_steps=8"], r"warmup_steps=8 is invalid: warmup_steps must be smaller than the number of steps \(6\)"),
    (["method.config.policy=magic"], r"policy must be one of cat, no_cluster"),
    (["method.config.warmup_steps=1"], r"warmup_steps=1 is invalid"),
])
def test_bad_method_values_fail_with_the_field_and_range(overrides, message):
    with pytest.raises(ValueError, match=message):
        validate(_compose(overrides))


def test_unknown_model_is_a_hydra_error_listing_the_options():
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException, match="sd3_medium"):
        _compose(["model=sd4"])


def test_magcache_ratios_given_on_the_command_line_are_taken():
    """The documented way to run MagCache without a calibration file: `method.config.mag_ratios=[...]`."""
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=["model=tiny_random", "method=magcache", "method.config.mag_ratios=[1.0,0.9]"])
    assert method_config(cfg).mag_ratios == (1.0, 0.9)


def test_task_macs_counts_the_methods_with_an_offline_schedule_and_names_the_others():
    from experiments.base.config_files import ConfigError

    for method in ("cat", "cat_fora", "ras", "steps", "fora"):
        validate(_compose(["model=tiny_random", "task=macs", f"method={method}"]))
    with pytest.raises(ConfigError, match="method=toca does not say them: use task=generate"):
        validate(_compose(["model=tiny_random", "task=macs", "method=toca"]))


def test_a_method_that_needs_calibrating_names_the_command_that_does_it():
    from experiments.base.config_files import ConfigError

    with pytest.raises(ConfigError, match=r"method=magcache needs magnitude ratios .* run `python scripts/calibrate\.py "
                                          r"method=magcache model=tiny_random model\.steps=10` once"):
        validate(_compose(["model=tiny_random", "method=magcache"]))


def test_model_scheduler_overrides_rebuild_the_pipeline_scheduler_and_unknown_ones_are_named():
    from cat import testing
    from experiments.run.pipelines import with_scheduler

    pipe = testing.tiny_sd3_pipeline()
    before = dict(pipe.scheduler.config)
    assert with_scheduler(pipe, {}).scheduler.config == before
    assert with_scheduler(pipe, {"shift": 3.0}).scheduler.config.shift == 3.0
    with pytest.raises(ValueError, match="model.scheduler: shfit is not a setting of FlowMatchEulerDiscreteScheduler"):
        with_scheduler(pipe, {"shfit": 3.0})


PROTOCOL_WARMUPS = {3, 5, 8, 10}  # the warm-ups every tuned method picks from (docs/harness.md, the fair comparison)


@pytest.mark.parametrize("model", ["tiny_sd3_shapes", "tiny_sd3_scenes"])
def test_every_tuned_method_with_a_warmup_picks_it_from_the_same_set(model):
    """`tuned` searches the same warm-ups for every method with one (CAT and its variants included, MagCache's
    as leading full steps in place of its retention share), and only those, times at most one binary second
    knob; CAT's cluster count is tuned over half and all of the model's."""
    import dataclasses

    import cat
    from experiments.compare.settings import Plan, candidates, variant_base

    params = _compose(["sweep=peers"], hydra=True).hydra.sweeper.params
    for name in params["method"].split(","):
        composed = _compose([f"method={name}", f"model={model}"])
        config = method_config(composed)
        pool = candidates(variant_base(config, "tuned", "sd3", 28), Plan.of(composed.method), "tuned", 28, 256)
        if not type(config).has_warmup:
            assert len(pool) == 1, name  # fewer steps: nothing to tune
            continue
        warmups = {c.retained_steps(28) if isinstance(c, cat.MagCacheConfig) else c.warmup_steps for c in pool}
        assert warmups == PROTOCOL_WARMUPS, f"{name}: the tuned warm-ups {sorted(warmups)}"
        assert all(isinstance(c.warmup_steps, int) for c in pool), name  # MagCache: no share of the steps left
        others = {f.name: {getattr(c, f.name) for c in pool} for f in dataclasses.fields(config) if f.name != "warmup_steps"}
        second = {field: values for field, values in others.items() if len(values) > 1}
        assert len(second) <= 1 and all(len(v) == 2 for v in second.values()), f"{name}: second knobs {second}"
        assert len(pool) == len(PROTOCOL_WARMUPS) * (2 if second else 1), name  # every combination, once
        if name == "cat":
            clusters = composed.model.num_clusters
            assert {c.num_clusters for c in pool} == {clusters // 2, clusters}


def test_the_peers_sweep_runs_the_scene_models_protocol_and_keeps_the_defaults_elsewhere():
    """`python run.py sweep=peers model=tiny_sd3_scenes`: every calibration prompt of the scene set (32), 32
    evaluation prompts, disjoint; the default model 8 calibration prompts and the 40-60% the results report;
    other models 8 and 30-70%."""
    from experiments.compare.calibration import calibration_config
    from experiments.prompts.sets import check_disjoint, prompts_of

    scenes = _compose(["sweep=peers", "model=tiny_sd3_scenes"])
    calibration = prompts_of(calibration_config(scenes).data)
    evaluation = prompts_of(scenes.data)
    assert scenes.compare.calibration_prompts == len(calibration) == 32 and len(evaluation) == 32
    assert len(calibration) == len(prompts_of({**calibration_config(scenes).data, "limit": -1}))  # all of them
    check_disjoint(evaluation, calibration)
    assert list(scenes.compare.targets) == [0.4, 0.5, 0.6]
    shapes = _compose(["sweep=peers"])
    assert shapes.compare.calibration_prompts == 8 and list(shapes.compare.targets) == [0.4, 0.5, 0.6]
    real = _compose(["sweep=peers", "model=sd3_medium"])
    assert real.compare.calibration_prompts == 8 and list(real.compare.targets) == [0.3, 0.4, 0.5, 0.6, 0.7]
    assert _compose(["sweep=peers", "model=tiny_sd3_scenes", "compare.calibration_prompts=4"]).compare.calibration_prompts == 4


def test_the_forecast_ablation_runs_each_arm_at_the_reference_steps_and_with_fewer_solver_steps_tuned():
    """`python run.py sweep=forecast_ablation`: schedule x correction x solver; at `solver=reference` the arm keeps
    `forecast_steps` at None (not tuned), at `solver=tuned` (arm `..._fewer`) it is tuned over the method's grid,
    None or 10% of the model's steps; schedule and correction are each arm's, never tuned."""
    from experiments.compare.calibration import tuning_pool
    from experiments.compare.settings import kept_fields

    params = _compose(["sweep=forecast_ablation"], hydra=True).hydra.sweeper.params
    assert params["solver"] == "reference,tuned"
    assert params["method.config.schedule"] == "interval,searched"
    assert params["method.config.correction"] == "none,cluster,topk"
    for model, steps, k in (("tiny_sd3_shapes", 28, 3), ("tiny_pixart_shapes", 20, 2)):
        for solver, name, kept, values in (("reference", "fs_searched_none", "forecast_steps", {None}),
                                           ("tuned", "fs_searched_none_fewer", None, {None, k})):
            cfg = _compose(["sweep=forecast_ablation", f"model={model}", f"solver={solver}"])
            assert cfg.method.name == name
            keep = kept_fields(cfg, cfg.method.knob)
            assert {"schedule", "correction"} <= set(keep) and (kept in keep) == (kept is not None)
            assert cfg.compare.variant == "tuned" and cfg.model.steps == steps
            _, _, pool = tuning_pool(cfg, method_config(cfg), cfg.model.family, 256)  # what the comparison searches
            assert {c.forecast_steps for c in pool} == values, (model, solver)
            assert {(c.schedule, c.correction) for c in pool} == {("searched", "none")}

"""Issue 34: what a hostile new user still found. Each case is one line before any model loads (or where it stops),
nothing silently ignored, no folder left behind or written outside `output_root`, and a timing that says how far
it can be trusted. In process wherever the process itself is not under test."""

import json
import logging
import shutil
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from experiments.base.config_files import ConfigError
from experiments.lifecycle import launch, resolvers  # noqa: F401
from experiments.lifecycle.command_line import check
from experiments.tasks.validation import check_output_root, validate

ROOT = Path(__file__).resolve().parents[3]


def cfg_of(*overrides, hydra=False):
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        return compose("config", overrides=list(overrides), return_hydra_config=hydra)


def stub_run_folder(root: Path) -> Path:
    """What Hydra leaves before the task starts: `.hydra/` and the log."""
    run_dir = root / "runs" / "tiny_random-shapes-cat" / "default-0123"
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / "run.log").write_text("")
    return run_dir


# --- a refused run: its error once, no folder ------------------------------------------------------------------


@pytest.mark.parametrize("new_root", [False, True])
def test_a_refused_run_prints_its_error_once_and_leaves_no_folder(tmp_path, capsys, new_root):
    root = tmp_path / "out"
    cfg = cfg_of("debug=tiny", "method.config.keep_ratio=1.5", f"output_root={root}")
    run_dir = stub_run_folder(root)
    with pytest.raises(SystemExit) as exit_:
        launch.job(cfg, run_dir, multirun=False, new_root=new_root)
    assert exit_.value.code == 2
    captured = capsys.readouterr()
    assert captured.err.count("keep_ratio=1.5 is invalid") == 1 and "keep_ratio" not in captured.out
    assert captured.err.strip() == ("error: method=cat: CATConfig.keep_ratio=1.5 is invalid: keep_ratio must be a "
                                    "float in (0, 1].")
    # no empty runs/ left; output_root itself too when this run made it
    assert not (root / "runs").exists() and root.exists() != new_root


@pytest.mark.parametrize("multirun", [False, True])
def test_ctrl_c_says_where_it_stopped_and_how_to_resume(tmp_path, capsys, monkeypatch, multirun):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(launch, "run_task", interrupted)
    run_dir = stub_run_folder(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        launch.job(cfg_of("debug=tiny"), run_dir, multirun=multirun, cell=2)
    assert exit_.value.code == 130
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "rerun the same command to resume" in err and "Traceback" not in err
    where = f"sweep cell 3 ({run_dir.name}) of {run_dir.parent}" if multirun else f"run {run_dir}"
    assert err.startswith(f"interrupted: {where} was stopped")


# --- one line before any model loads -----------------------------------------------------------------------------


def test_a_seed_no_generator_can_hold_is_refused_before_the_model_loads():
    with pytest.raises(ConfigError, match=r"^seed=99999999999999999999 is invalid; allowed: an integer in "
                                          r"\[0, 4294967295\]"):
        validate(cfg_of("debug=tiny", "seed=99999999999999999999"))
    validate(cfg_of("debug=tiny", "seed=4294967295"))


@pytest.mark.parametrize("name", ["../../x", "a/b", "..", "/tmp/x"])
def test_name_is_one_folder_under_output_root(tmp_path, name):
    with pytest.raises(ConfigError, match=r"is invalid; allowed: a folder name without /"):
        validate(cfg_of("debug=tiny", f"name={name}"))
    with pytest.raises(ConfigError, match=r"^name=.* is invalid"):
        check([f"name={name}", f"output_root={tmp_path}"])  # before Hydra makes output_root/runs/<name>/
    assert not list(tmp_path.iterdir())


def test_an_output_root_no_folder_can_be_made_in_is_named():
    """/proc passes the permission check (as root) and refuses every new folder."""
    if not Path("/proc/self").exists():
        pytest.skip("no /proc here")
    with pytest.raises(ConfigError, match=r"^output_root='/proc/x' cannot be created: /proc is not (a folder new "
                                          r"folders can be made in|writable for this user)"):
        check_output_root("/proc/x")


def test_a_new_top_level_key_is_refused_and_never_suggested(tmp_path):
    """`+seeed=3` was suggested for `seeed=3`, then ignored: the folder named seeed=3 held seed-0 results."""
    with pytest.raises(ConfigError) as err:
        check(["seeed=3", f"output_root={tmp_path}"])
    assert "did you mean seed?" in str(err.value) and "+seeed" not in str(err.value)
    with pytest.raises(ConfigError, match=r"^\+seeed=3: no such setting \(did you mean seed\?\); .*a new top-level "
                                          r"key would be read by nothing"):
        check(["+seeed=3", f"output_root={tmp_path}"])
    check(["+model.scheduler.shift=3.0", f"output_root={tmp_path}"])  # below the top level, `+` adds what is read


def test_a_sweep_whose_every_cell_is_invalid_is_one_error_before_any_folder(tmp_path):
    with pytest.raises(ConfigError, match=r"^every one of the sweep's 6 cells is invalid, the first "
                                          r"\(method.config.keep_ratio=0.1\) with: method=cat with model=tiny_sd3_shapes "
                                          r"at 6 steps .*warmup_steps=8 is invalid"):
        check(["sweep=keep_ratio", "model.steps=6", "method.config.warmup_steps=8", f"output_root={tmp_path}"])
    assert not list(tmp_path.iterdir())
    check(["sweep=keep_ratio", "model.steps=10", f"output_root={tmp_path}"])  # a valid cell: the sweep runs


def test_a_cuda_graph_run_of_a_method_that_is_not_graph_safe_is_refused_before_loading():
    for task in ("generate", "latency"):
        with pytest.raises(ConfigError, match=r"^method=fora: compile_mode='reduce-overhead' \(CUDA graphs\) is "
                                              r"refused for 'fora'"):
            validate(cfg_of("debug=tiny", f"task={task}", "method=fora", "compile=true",
                            "compile_mode=reduce-overhead", "metrics.macs=false"))


def test_a_long_prompt_is_shown_cut_in_the_error(tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a large red circle on the left " * 20_000 + "\n")  # one line of 620 KB
    with pytest.raises(ConfigError) as err:
        validate(cfg_of("debug=tiny", f"data.path={prompts}"))
    assert "outside the shapes judge's grammar" in str(err.value) and len(str(err.value)) < 600
    assert "... (619999 characters)" in str(err.value)


def test_help_lists_the_groups_a_user_chooses_and_every_task():
    text = OmegaConf.to_container(cfg_of(hydra=True).hydra.help, resolve=True)["template"]
    assert "method_fields" not in text and "$APP_CONFIG_GROUPS" not in text
    assert "\nmethod: cat, cat_budget," in text and "\nsweep: ablation," in text
    for task in ("compare", "generate", "latency", "macs"):
        assert f"task={task} " in text


# --- a run says how long it took; a noisy timing is never cached in silence -------------------------------------


def test_a_run_says_how_long_it_took(tiny_run):
    assert any(line.startswith("done in ") and line.endswith(str(tiny_run.run_dir)) for line in tiny_run.info)
    assert "speedup_spread" in tiny_run.metrics and tiny_run.metrics["speedup_noisy"] in (0, 1)


@pytest.mark.usefixtures("one_thread")
def test_a_cached_noisy_timing_warns_and_retime_times_it_again(tiny_run, tmp_path, caplog):
    root = tmp_path / "out"
    shutil.copytree(tiny_run.output_root, root)
    run_dir = root / tiny_run.run_dir.relative_to(tiny_run.output_root)
    metrics = {**tiny_run.metrics, "speedup": 0.94, "speedup_spread": 0.5, "speedup_noisy": 1}
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    images = {p: p.stat().st_mtime_ns for p in (run_dir / "images").rglob("*.png")}
    caplog.set_level(logging.INFO)
    assert launch.run(*tiny_run.overrides, f"output_root={root}") == (run_dir, metrics)
    assert "holds a noisy timing (speedup 0.94, spread 0.5" in caplog.text and "metrics.latency.retime=true" in caplog.text
    caplog.clear()
    again, retimed = launch.run(*tiny_run.overrides, f"output_root={root}", "metrics.latency.retime=true")
    assert again == run_dir  # the same run: retiming is not another configuration
    assert "timing it again" in caplog.text and retimed["speedup"] != 0.94
    assert {k: v for k, v in retimed.items() if not k.startswith(("latency_", "denoise_", "speedup"))} == \
        {k: v for k, v in metrics.items() if not k.startswith(("latency_", "denoise_", "speedup"))}
    assert json.loads((run_dir / "metrics.json").read_text()) == retimed
    assert {p: p.stat().st_mtime_ns for p in (run_dir / "images").rglob("*.png")} == images  # images kept


def test_a_resolver_that_refuses_is_one_line_not_a_traceback_while_hydra_names_the_folder(tmp_path, capsys):
    """The calibration refused at another guidance scale was raised while Hydra named the run folder (run_id) and
    while secrets were scrubbed, before validation could say it in one line."""
    from experiments.run.keys import run_id

    cfg = cfg_of("method=magcache", "model.guidance_scale=1.0", f"output_root={tmp_path}", hydra=True)
    assert run_id(cfg)  # named by what was asked
    run_dir = stub_run_folder(tmp_path)
    with pytest.raises(SystemExit):
        launch.job(cfg_of("method=magcache", "model.guidance_scale=1.0", f"output_root={tmp_path}"), run_dir, False)
    assert capsys.readouterr().err.startswith("error: method=magcache: assets/magcache/tiny_sd3_shapes-28.json was "
                                              "calibrated at guidance_scale=5.0")


def test_a_hub_model_neither_cached_nor_reachable_is_refused_before_any_folder(tmp_path, monkeypatch):
    """`python run.py model=sd3_medium` on a laptop without the weights: one line saying how to fetch them (not the
    loader's traceback after the run's folder was made); task=macs needs no weights; once cached, it validates."""
    from experiments.run import pipelines

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub = ("model=sd3_medium", f"+model.load_kwargs.cache_dir={tmp_path / 'hub'}")
    pipelines.hub_commit.cache_clear()
    with pytest.raises(ConfigError, match=r"^model=sd3_medium: stabilityai/stable-diffusion-3-medium-diffusers at "
                                          r"revision 'main' is not in the local hub cache and the hub could not be "
                                          r"asked \(HF_HUB_OFFLINE=1\)\. Fetch it once with network access: "
                                          r"`huggingface-cli download stabilityai/stable-diffusion-3-medium-diffusers`"):
        validate(cfg_of(*hub))
    validate(cfg_of(*hub, "task=macs"))
    commit = "a" * 40
    cache = tmp_path / "hub" / "models--stabilityai--stable-diffusion-3-medium-diffusers"
    (cache / "refs").mkdir(parents=True)
    (cache / "refs" / "main").write_text(commit)
    (cache / "snapshots" / commit).mkdir(parents=True)
    (cache / "snapshots" / commit / "model_index.json").write_text("{}")
    pipelines.hub_commit.cache_clear()
    validate(cfg_of(*hub))
    pipelines.hub_commit.cache_clear()


def test_prompts_or_weights_that_cannot_be_fetched_are_one_error_with_the_way_to_get_them(tmp_path, capsys,
                                                                                           monkeypatch):
    """A prompt set (or a hub model) that is neither cached nor fetchable now fails the run with the fetcher's one
    line (how to get it), not a traceback; the run's status.json keeps the traceback; a sweep cell is recorded."""
    from experiments.base.config_files import Unavailable
    from experiments.prompts import sets

    def offline(repo, pattern, how):
        raise Unavailable(f"could not fetch {pattern} of the hub dataset {repo} (offline); {how}")

    monkeypatch.setattr(sets, "_from_hub", offline)
    root = tmp_path / "out"
    cfg = cfg_of("debug=tiny", "data=parti", f"output_root={root}")
    run_dir = stub_run_folder(root)
    with pytest.raises(SystemExit) as exit_:
        launch.job(cfg, run_dir, multirun=False)
    err = capsys.readouterr().err
    assert exit_.value.code == 1 and "Traceback" not in err
    assert err.startswith("error: could not fetch PartiPrompts.tsv") and err.count("scripts/fetch_data.py parti") == 1
    status = json.loads((run_dir / "status.json").read_text())
    assert status["status"] == "failed" and "Traceback" in status["traceback"]
    assert launch.job(cfg, run_dir, multirun=True) == {"status": "failed"}

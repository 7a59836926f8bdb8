"""Results you can trust: run identity from content, crash safety, early validation, secrets, provenance."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from experiments.base.config_files import ConfigError, Unavailable
from experiments.base.secrets import scrub
from experiments.lifecycle import launch, resolvers  # noqa: F401
from experiments.run import keys, pipelines
from experiments.tasks.generate import check_prompts
from experiments.tasks.validation import validate

ROOT = Path(__file__).resolve().parents[3]
SECRET = "hf_TopSecretValue123"


def run(*args, check=True, env=None):
    env = {**os.environ, "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1", **(env or {})}
    proc = subprocess.run([sys.executable, "run.py", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(proc.stdout[-3000:] + proc.stderr[-3000:])
    return proc


def cfg_of(*overrides):
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        return compose("config", overrides=list(overrides))


def key_of(*overrides):
    return keys.digest(keys.key_material(OmegaConf.to_container(cfg_of(*overrides), resolve=True)))


def runs(root: Path) -> list[Path]:
    return sorted(p.parent for p in (root / "runs").glob("*/*/run_key.json"))


# 1. identity ---------------------------------------------------------------------------------------------

@pytest.mark.slow  # long: runs in CI's second step (pytest -m slow)
def test_the_shipped_28_and_50_step_experiments_never_share_results(tmp_path, caplog):
    caplog.set_level("INFO")
    for exp in ("sd3_parti_28", "sd3_parti_50"):
        launch.run(f"experiment={exp}", "task=macs", "logger=none", f"output_root={tmp_path}")
    assert "already done" not in caplog.text
    dirs = runs(tmp_path)
    assert len(dirs) == 2
    values = [json.loads((d / "metrics.json").read_text())["transformer_macs_full"] for d in dirs]
    assert values[0] != values[1]
    assert sorted(values)[1] / sorted(values)[0] == pytest.approx(50 / 28, rel=1e-6)


@pytest.mark.parametrize("change", ["model.steps=12", "seed=1", "batch_size=2", "model.guidance_scale=3.0",
                                    "model.height=64", "dtype=bfloat16", "method=cat_random",
                                    "method.config.keep_ratio=0.5", "data.limit=3", "metrics.fidelity=false"])
def test_anything_that_changes_the_output_changes_the_key(change):
    base = ["debug=tiny"]
    assert key_of(*base) != key_of(*base, change)


def test_what_does_not_change_the_output_keeps_the_key():
    base = key_of("debug=tiny")
    for change in ("overwrite=true", "output_root=/elsewhere", "logger=wandb", "group=g",
                   f"+model.load_kwargs.token={SECRET}"):
        assert key_of("debug=tiny", change) == base, change


def test_the_key_follows_the_prompt_file_content_not_its_path(tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a large red circle on the left\na small blue square on the right\n")
    first = key_of("debug=tiny", f"data.path={prompts}")
    copy = tmp_path / "copy.txt"
    copy.write_text(prompts.read_text())
    assert key_of("debug=tiny", f"data.path={copy}") == first
    prompts.write_text("a large green circle on the left\na small blue square on the right\n")
    os.utime(prompts, ns=(1, 1))  # even with an old timestamp
    assert key_of("debug=tiny", f"data.path={prompts}") != first


def test_an_edited_prompt_file_gets_a_new_run_and_new_full_model_images(tmp_path, caplog):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a large red circle on the left\na small blue square on the right\n")
    args = ["debug=tiny", f"output_root={tmp_path / 'out'}", "metrics.latency.enabled=false", f"data.path={prompts}"]
    launch.run(*args)
    prompts.write_text("a large green circle on the left\na small blue square on the right\n")
    caplog.set_level("INFO")
    launch.run(*args)
    assert "already done" not in caplog.text
    assert len(runs(tmp_path / "out")) == 2
    assert len(list((tmp_path / "out" / "full_images").iterdir())) == 2
    records = [json.loads(line) for d in runs(tmp_path / "out") for line in (d / "records.jsonl").read_text().splitlines()]
    assert {r["prompt"] for r in records if r["index"] == 0} == {"a large red circle on the left",
                                                                 "a large green circle on the left"}


# 2. crash safety -----------------------------------------------------------------------------------------

def test_leftover_temporaries_and_a_corrupt_metrics_file_are_survived(tiny_run, tmp_path, caplog):
    shutil.copytree(tiny_run.output_root, tmp_path / "out")  # the shared run stays as it is
    args = [*tiny_run.overrides, f"output_root={tmp_path / 'out'}"]
    (run_dir,) = runs(tmp_path / "out")
    (run_dir / ".metrics.json.abc.tmp").write_text("{half")
    (run_dir / "images" / "cat" / ".00000.png.xyz.tmp").write_bytes(b"\x89PNG trunc")
    (run_dir / "images" / "cat" / "00001.tmp.png").write_bytes(b"\x89PNG trunc")  # an older naming
    (run_dir / "metrics.json").write_text('{"psnr": 3')  # truncated by a crash
    caplog.set_level("INFO")
    assert launch.run(*args)[0] == run_dir
    assert "already done" not in caplog.text
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["num_images"] == 2
    assert not (run_dir / ".metrics.json.abc.tmp").exists()
    caplog.clear()
    launch.run(*args)
    assert "already done" in caplog.text


@pytest.mark.slow  # long: runs in CI's second step (pytest -m slow)
def test_two_processes_on_one_run_directory_do_the_work_once(tmp_path):
    args = [sys.executable, "run.py", "debug=tiny", f"output_root={tmp_path}", "data.limit=2",
            "metrics.latency.enabled=false"]
    env = {**os.environ, "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    assert sum("already done" in o for o in outs) == 1, outs
    (run_dir,) = runs(tmp_path)
    assert json.loads((run_dir / "status.json").read_text())["status"] == "done"
    assert not list(run_dir.rglob("*.tmp"))


def test_a_summary_that_cannot_be_written_fails_loudly(tmp_path, monkeypatch, capsys):
    from experiments.lifecycle.sweep_callback import SweepSummary
    from experiments.reports import sweeps

    cell = tmp_path / "cell"
    cell.mkdir()
    (cell / "status.json").write_text('{"status": "done"}')
    (cell / "metrics.json").write_text('{"psnr": 30}')
    monkeypatch.setattr(sweeps, "write_text", lambda *a: (_ for _ in ()).throw(OSError("disk full")))
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}, "overrides": {"task": []}}, "logger": None})
    with pytest.raises(SystemExit) as exit_:
        SweepSummary().on_multirun_end(config)
    assert exit_.value.code == 1
    assert "could not be written" in capsys.readouterr().err


@pytest.mark.slow  # long: runs in CI's second step (pytest -m slow)
def test_a_sweep_over_prompt_file_paths_stays_flat(tmp_path):
    files = []
    for name, text in (("a.txt", "a large red circle on the left"), ("b.txt", "a small blue square on the right")):
        (tmp_path / name).write_text(text + "\n")
        files.append(str(tmp_path / name))
    run("-m", "debug=tiny", f"output_root={tmp_path / 'out'}", "group=paths", "metrics=fast",
        "metrics.latency.enabled=false", f"data.path={files[0]},{files[1]}")
    sweep = tmp_path / "out" / "sweeps" / "paths-tiny_random"
    cells = [p for p in sweep.iterdir() if p.is_dir()]
    assert len(cells) == 2 and all((c / "metrics.json").exists() for c in cells)
    table = pd.read_csv(sweep / "summary.csv")
    assert len(table) == 2 and set(table.status) == {"done"}


# 3. validation before any model loads --------------------------------------------------------------------

@pytest.mark.parametrize("override, message", [
    ("batch_size=0", "batch_size=0 is invalid"),
    ("batch_size=-3", "batch_size=-3 is invalid"),
    ("model.steps=0", "model.steps=0 is invalid"),
    ("model.guidance_scale=abc", "model.guidance_scale='abc' is invalid"),
    ("model.height=31", "model.height=31 is invalid"),
    ("method.config.num_clusters=300", "num_clusters=300 is invalid"),
    ("data.limit=-2", "data.limit=-2 is invalid"),
    ("dtype=float8", "dtype='float8' is invalid"),
    ("method=cat_random model.steps=2", "warmup_steps"),
    ("method.config.keep_ratio=1e-9", "keep_ratio=1e-09 is invalid: keep_ratio must be large enough to keep at "
                                      "least one token"),
    ("method=cat_random method.config.keep_ratio=1e-9", "keep_ratio=1e-09 is invalid"),
    ("method=cat_fora method.config.keep_ratio=1e-9", "keep_ratio=1e-09 is invalid"),
    ("method=ras method.config.sample_ratio=1e-9", "sample_ratio=1e-09 is invalid: sample_ratio must be large enough "
                                                   "to ask for at least one token per sparse step"),
])
def test_bad_settings_are_named_before_anything_loads(override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        validate(cfg_of("debug=tiny", *override.split()))


@pytest.mark.slow  # long: runs in CI's second step (pytest -m slow)
@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda_is_a_one_line_error(tmp_path):
    proc = run("debug=tiny", f"output_root={tmp_path}", "device=cuda", check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: device='cuda' but this torch has no CUDA")
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "full_images").exists()


def test_every_method_rejects_zero_steps():
    for method in ("none", "cat", "cat_random", "cat_no_cluster"):
        with pytest.raises(ConfigError, match="model.steps=0"):
            validate(cfg_of("debug=tiny", f"method={method}", "model.steps=0"))


def test_limit_minus_one_means_every_prompt():
    from experiments.prompts.sets import load_prompts

    assert len(load_prompts("shapes", limit=-1)) == len(load_prompts("shapes", limit=None))


def test_prompts_outside_the_judge_grammar_fail_at_load_time(tmp_path):
    from experiments.prompts.sets import Prompt

    cfg = cfg_of("debug=tiny")
    with pytest.raises(ConfigError, match="outside the shapes judge's grammar"):
        check_prompts(cfg, [Prompt(0, "a large red circle on the left"), Prompt(1, "a photo of a cat")])
    check_prompts(cfg_of("debug=tiny", "metrics.adherence=false"), [Prompt(1, "a photo of a cat")])


def test_float16_on_cpu_warns(caplog):
    validate(cfg_of("debug=tiny", "dtype=float16", "device=cpu"))
    assert "dtype=float16 on the CPU" in caplog.text


# 4. secrets ----------------------------------------------------------------------------------------------

def test_the_scrubber_matches_secret_keys_exactly():
    cfg = {"model": {"load_kwargs": {"token": "x", "tokenizer_3": None}, "macs": {"text_tokens": 77}},
           "logger": {"api_key": "y"}, "max_tokens": 5}
    clean = scrub(cfg)
    assert clean["model"]["load_kwargs"] == {"token": "<redacted>", "tokenizer_3": None}
    assert clean["model"]["macs"] == {"text_tokens": 77} and clean["max_tokens"] == 5
    assert clean["logger"]["api_key"] == "<redacted>"


@pytest.mark.slow  # long: runs in CI's second step (pytest -m slow)
def test_a_token_override_never_reaches_files_names_or_logs(tmp_path):
    proc = run("debug=tiny", f"output_root={tmp_path}", "data.limit=2", "metrics.latency.enabled=false",
               "logger=wandb", f"+model.load_kwargs.token={SECRET}", env={"WANDB_MODE": "offline"})
    assert SECRET not in proc.stdout + proc.stderr
    for path in tmp_path.rglob("*"):
        assert SECRET not in str(path)
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path
    assert any(tmp_path.rglob("*.wandb")) or any(tmp_path.rglob("wandb"))
    (run_dir,) = runs(tmp_path)
    assert "done:" in (run_dir / "run.log").read_text()  # run.py logs to the run folder through Hydra


def test_a_run_in_process_scrubs_what_its_task_wrote_even_when_it_fails(tmp_path, monkeypatch):
    """run_task, not run.py, scrubs the run folder, so a run made by experiments.lifecycle.launch is scrubbed too."""
    import dataclasses

    from experiments.tasks import TASKS

    def leaky(cfg, run_dir, method):  # a task that writes the token into a log and then fails
        (run_dir / "wandb").mkdir()
        (run_dir / "wandb" / "debug.log").write_text(f"token={cfg.model.load_kwargs.token}\n")
        raise RuntimeError("boom")

    monkeypatch.setitem(TASKS, "macs", dataclasses.replace(TASKS["macs"], run=leaky))
    with pytest.raises(RuntimeError, match="boom"):
        launch.run("debug=tiny", "task=macs", f"output_root={tmp_path}", f"+model.load_kwargs.token={SECRET}")
    (log,) = tmp_path.rglob("debug.log")
    assert SECRET not in log.read_text() and "token=" in log.read_text()
    for path in tmp_path.rglob("*"):
        assert SECRET not in str(path)
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path


# 5. batches ----------------------------------------------------------------------------------------------

def test_batch_size_is_in_the_key_and_batches_agree_within_one_grey_level():
    from cat.testing import tiny_sd3_pipeline
    import torch

    pipe = tiny_sd3_pipeline()
    prompts = ["a red circle", "a blue square", "a green triangle"]
    kwargs = dict(num_inference_steps=4, guidance_scale=5.0, height=32, width=32, output_type="np",
                  max_sequence_length=8)
    gens = lambda: [torch.Generator().manual_seed(i) for i in range(3)]  # noqa: E731
    together = pipe(prompts, generator=gens(), **kwargs).images
    alone = np.concatenate([pipe([p], generator=[g], **kwargs).images for p, g in zip(prompts, gens())])
    diff = np.abs(np.round(together * 255) - np.round(alone * 255))
    assert diff.max() <= 1  # the tolerance docs/harness.md states
    assert key_of("debug=tiny", "batch_size=1") != key_of("debug=tiny", "batch_size=4")


# 6. provenance -------------------------------------------------------------------------------------------

def test_the_run_folder_records_code_versions_log_and_real_images(tiny_run):
    run_dir = tiny_run.run_dir
    record = json.loads((run_dir / "run_key.json").read_text())
    prov = record["provenance"]
    assert len(prov["git_sha"]) == 40 and prov["git_dirty"] in (True, False)
    for key in ("torch", "diffusers", "transformers", "device"):
        assert prov[key], key
    assert record["key"].startswith(run_dir.name.rsplit("-", 1)[1])
    assert any(line.startswith("done:") for line in tiny_run.info)
    images = list((run_dir / "images" / "full").glob("*.png"))
    assert len(images) == 2 and (run_dir / "images" / "full" / "macs.jsonl").exists()
    for image in images:
        assert not image.is_symlink() and image.stat().st_size > 0


# 7. help -------------------------------------------------------------------------------------------------

@pytest.mark.slow  # long: runs in CI's second step (pytest -m slow)
def test_help_describes_the_groups_and_main_options():
    proc = run("--help")
    for text in ("Configuration groups", "method: ", "model: ", "batch_size=16", "data.limit", "sweep=peers"):
        assert text in proc.stdout, text


def test_policies_without_clusters_ignore_the_clustering_fields_in_their_key():
    def material(policy, clusters, **more):
        return keys.key_material({"task": "macs", "model": {"name": "m"}, "method": {"name": "x", "config": {
            "_target_": "cat.CATConfig", "policy": policy, "num_clusters": clusters, "keep_ratio": 0.3, **more}}})

    assert keys.digest(material("no_cluster", 4)) == keys.digest(material("no_cluster", 16))
    assert keys.digest(material("cat", 4)) != keys.digest(material("cat", 16))
    assert keys.digest(material("no_cluster", 4)) != keys.digest(material("cat", 4))
    # the key comes from the instantiated config: restating a default changes nothing
    assert keys.digest(material("cat", 4)) == keys.digest(material("cat", 4, seed=0, staleness_decay=0.5))


def test_a_cell_with_a_finished_sibling_of_the_same_key_reuses_its_results(tmp_path):
    from experiments.base.files import read_json, write_json
    from experiments.lifecycle.runs import reuse_sibling

    done, other, new = tmp_path / "a-1", tmp_path / "b-2", tmp_path / "c-3"
    for d in (done, other, new):
        (d / "images").mkdir(parents=True)
    write_json(done / "run_key.json", {"key": "k1"})
    write_json(done / "status.json", {"status": "done"})
    write_json(done / "metrics.json", {"psnr": 40.0})
    (done / "images" / "0.png").write_bytes(b"png")
    (done / "records.jsonl").write_text("{}\n")
    write_json(other / "run_key.json", {"key": "k2"})
    write_json(other / "status.json", {"status": "done"})
    write_json(other / "metrics.json", {"psnr": 1.0})
    write_json(new / "run_key.json", {"key": "k1", "material": {}})
    assert reuse_sibling(new, "k9") is None  # no sibling with this key
    assert reuse_sibling(new, "k1") == {"psnr": 40.0}
    assert (new / "images" / "0.png").read_bytes() == b"png" and (new / "records.jsonl").exists()
    assert read_json(new / "status.json") == {"status": "done", "reused_from": "a-1"}
    assert read_json(new / "run_key.json")["reused_from"] == "a-1"


def test_a_retrained_local_model_at_the_same_path_is_a_new_run(tmp_path):
    """The key holds the content of a local model's files: retraining the embedded model in place (same
    path, same configs) never reuses the old model's results; its card and training log do not count."""
    import shutil

    import torch

    from experiments.run.generate import full_image_cache

    def full_images():  # the shared cache of the full model's images
        return full_image_cache(cfg_of(f"model.local_path={copy}", f"output_root={tmp_path / 'out'}"), {},
                                torch.float32, "cpu")

    copy = tmp_path / "model"
    shutil.copytree(ROOT / "assets" / "tiny-sd3-shapes", copy)
    before, images_before = key_of(f"model.local_path={copy}"), full_images()
    (copy / "README.md").write_text("a new card\n")
    assert key_of(f"model.local_path={copy}") == before
    weights = copy / "transformer" / "diffusion_pytorch_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1  # one bit of one weight
    weights.write_bytes(bytes(data))
    after = key_of(f"model.local_path={copy}")
    assert after != before and full_images() != images_before
    assert keys.key_material(OmegaConf.to_container(cfg_of("task=macs"), resolve=True))["model"].get(
        "files_sha256") is None  # MACs are counted from the configs alone


def test_a_hub_model_is_keyed_by_and_loads_the_commit_its_revision_resolves_to(tmp_path, monkeypatch):
    """`revision: main` of a hub model stands for a commit: when `main` moves (an updated hub repo), the
    run is a new one, and the loader asks for exactly the keyed commit. Offline, the local hub cache says."""
    import diffusers

    from experiments.run.pipelines import _load

    repo, a, b = "stabilityai/stable-diffusion-3-medium-diffusers", "a" * 40, "b" * 40
    cache = tmp_path / "hub" / "models--stabilityai--stable-diffusion-3-medium-diffusers"

    def point_main_at(commit):
        (cache / "refs").mkdir(parents=True, exist_ok=True)
        (cache / "refs" / "main").write_text(commit)
        (cache / "snapshots" / commit).mkdir(parents=True, exist_ok=True)
        (cache / "snapshots" / commit / "model_index.json").write_text("{}")
        pipelines.hub_commit.cache_clear()

    hub = ("model=sd3_medium", f"+model.load_kwargs.cache_dir={tmp_path / 'hub'}")
    pipelines.hub_commit.cache_clear()
    unresolved = key_of(*hub)  # not downloaded, no network: keyed apart from every commit
    point_main_at(a)
    at_a = key_of(*hub)
    assert pipelines.model_snapshot(OmegaConf.to_container(cfg_of(*hub).model, resolve=True)) == a
    point_main_at(b)
    at_b = key_of(*hub)
    assert len({unresolved, at_a, at_b}) == 3
    assert key_of(*hub, f"model.revision={a}") == at_a  # a pinned commit is the same run as main at it

    asked = {}

    def from_pretrained(source, **kwargs):
        asked.update(kwargs, source=source)
        raise OSError("stop before loading")

    monkeypatch.setattr(diffusers.StableDiffusion3Pipeline, "from_pretrained", from_pretrained)
    model = OmegaConf.to_container(cfg_of(*hub).model, resolve=True)
    with pytest.raises(Unavailable, match="could not load"):
        _load(model, "cpu", None)
    assert asked["source"] == repo and asked["revision"] == b and asked["local_files_only"]
    with pytest.raises(ConfigError, match="set model.revision"):
        validate(cfg_of(*hub, f"+model.load_kwargs.revision={a}"))
    pipelines.hub_commit.cache_clear()

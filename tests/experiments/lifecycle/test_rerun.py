"""Reruns you can trust, run in process end to end on a random-weight model: results made by other code
are never returned silently, and a run interrupted at any phase resumes to exactly the files and metrics
of an uninterrupted run."""

import json
import logging
import shutil
from pathlib import Path

import pytest

from experiments.lifecycle import launch
from experiments.run import keys
from scripts.make_tables import main_table

ROOT = Path(__file__).resolve().parents[3]
TINY = ("debug=tiny", "metrics.latency.enabled=false")

pytestmark = pytest.mark.usefixtures("one_thread")


def run_here(output_root: Path, *overrides: str):
    return launch.run(*TINY, *overrides, f"output_root={output_root}")


def code_of(run_dir: Path) -> str:
    return json.loads((run_dir / "run_key.json").read_text())["material"]["code"]["sha256"]


def test_results_made_by_other_code_are_recomputed_unless_reuse_is_asked_and_then_marked(tmp_path, monkeypatch,
                                                                                           caplog):
    edit = tmp_path / "edit.py"
    edit.write_text("x = 1\n")
    files = keys.code_files
    monkeypatch.setattr(keys, "code_files", lambda: files() + [("cat/edit.py", edit)])
    out, args = tmp_path / "out", ("data.limit=2", "batch_size=2")
    caplog.set_level(logging.INFO)

    first_dir, first = run_here(out, *args)
    assert run_here(out, *args) == (first_dir, first)
    assert "already done" in caplog.text

    edit.write_text("x = 22\n")  # the library changes
    caplog.clear()
    second_dir, second = run_here(out, *args)
    assert second_dir != first_dir and code_of(second_dir) != code_of(first_dir)
    assert "already done" not in caplog.text
    assert f"{first_dir} holds this configuration's results made by other code" in caplog.text
    assert len(list((out / "full_images").iterdir())) == 2  # the full model's images are made anew too
    assert "reused_code_from" not in json.loads((second_dir / "status.json").read_text())

    edit.write_text("x = 333\n")
    caplog.clear()
    third_dir, third = run_here(out, *args, "reuse_other_code=true")
    assert third == second  # the newest run of the same configuration
    for name in ("run_key.json", "status.json"):
        assert json.loads((third_dir / name).read_text())["reused_code_from"] == code_of(second_dir)
    assert "marked stale_code" in caplog.text
    assert len(list((out / "full_images").iterdir())) == 2  # nothing was generated
    # a run with the reuse flag and a finished run of its own code takes its own
    assert run_here(out, *args, "reuse_other_code=true") == (third_dir, third)
    # every table tells the three runs apart by their code and marks the reused one
    from experiments.reports.results import load_runs
    from experiments.reports.sweeps import collect

    table = main_table(load_runs(out)).set_index("code")
    assert len(table) == 3 and table["stale_code"].tolist().count(True) == 1
    assert table.loc[code_of(third_dir)[:8], "stale_code"]
    sweep = tmp_path / "sweep"
    for folder in (first_dir, third_dir):
        shutil.copytree(folder, sweep / folder.name)
    assert sorted(collect(sweep)["stale_code"]) == [False, True]


def snapshot(run_dir: Path) -> dict[str, bytes]:
    """Every result file of a run folder (images, statistics, records, metrics) by relative path."""
    skip = {"run_key.json", "config.yaml", "grid.png", "selection.png"}  # provenance and figures (plot metadata)
    return {p.relative_to(run_dir).as_posix(): p.read_bytes() for p in sorted(run_dir.rglob("*"))
            if p.is_file() and not p.name.startswith(".") and p.name not in skip}


@pytest.mark.parametrize("kill", ["metrics"] + [  # the other two phases run with the slow tests
    pytest.param(k, marks=pytest.mark.slow) for k in ("method_images", "full_images")])
def test_a_run_killed_in_any_phase_resumes_to_the_files_and_metrics_of_an_uninterrupted_run(tmp_path, kill):
    args = ("data.limit=5", "batch_size=2")  # batches {0, 1}, {2, 3}, {4}
    run_dir, metrics = run_here(tmp_path / "clean", *args)
    assert {"cache_bytes", "cache_batch"} <= set(metrics) and metrics["cache_batch"] == 2
    clean = snapshot(run_dir)

    resumed_dir, _ = run_here(tmp_path / "resumed", *args)
    # What a kill leaves (every file is written atomically): the later phases' files are missing.
    for name in ("metrics.json", "records.jsonl", "grid.png", "selection.png"):
        (resumed_dir / name).unlink()
    (resumed_dir / "status.json").write_text('{"status": "running"}')
    if kill in ("method_images", "full_images"):
        for name in ("first_batch.json", "selection.npz"):
            (resumed_dir / name).unlink()
        for index in (0, 3):  # one image of the first batch, one of the second
            (resumed_dir / "images" / "cat" / f"{index:05d}.png").unlink()
    if kill == "full_images":
        (cache,) = (tmp_path / "resumed" / "full_images").iterdir()
        shutil.rmtree(resumed_dir / "images" / "full")
        (cache / "00003.png").unlink()
    again_dir, again = run_here(tmp_path / "resumed", *args)
    assert again_dir == resumed_dir
    assert again == metrics
    assert snapshot(resumed_dir) == clean


def test_missing_images_are_generated_in_the_batches_of_the_run(tmp_path):
    """Batched generation differs from single generation in the last bits, so prompt i is always
    generated with the same companions: its batch is generated whole, and only its missing images written."""
    from PIL import Image

    from experiments.prompts.sets import Prompt
    from experiments.run.generate import batches, generate, image_path

    calls = []

    class Pipe:
        def __call__(self, texts, generator, **kwargs):
            calls.append(list(texts))
            return type("Out", (), {"images": [Image.new("RGB", (4, 4), (len(calls), 0, 0)) for _ in texts]})()

    prompts = [Prompt(i, f"prompt {i}") for i in range(5)]
    work = batches(prompts, 2)
    assert [[p.index for p in b] for _, b in work] == [[0, 1], [2, 3], [4]]
    assert generate(Pipe(), work, tmp_path, 0, {}) == 3
    stamps = {i: image_path(tmp_path, i).stat().st_mtime_ns for i in range(5)}
    for i in (0, 3):
        image_path(tmp_path, i).unlink()
    calls.clear()
    assert generate(Pipe(), work, tmp_path, 0, {}) == 2
    assert calls == [["prompt 0", "prompt 1"], ["prompt 2", "prompt 3"]]
    assert {i: image_path(tmp_path, i).stat().st_mtime_ns for i in (1, 2, 4)} == {i: stamps[i] for i in (1, 2, 4)}


@pytest.mark.slow
def test_an_edit_of_the_library_is_a_new_run_of_run_py(tmp_path):
    """The repro of the report, as a user meets it: run, edit the library so that it gives other images,
    run the same command again in a copy of the project."""
    import os
    import subprocess
    import sys

    project = tmp_path / "project"
    for name in ("cat", "experiments", "conf"):
        shutil.copytree(ROOT / name, project / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "run.py", project / "run.py")
    env = {**os.environ, "PYTHONPATH": str(project), "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "run.py", *TINY, "data.limit=2", "model.steps=6", f"output_root={tmp_path / 'out'}"]

    def run():
        proc = subprocess.run(command, cwd=project, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc.stdout + proc.stderr

    run()
    source = project / "experiments" / "run" / "generate.py"
    source.write_text(source.read_text().replace("return seed * 1_000_003 + index", "return seed * 1_000_003 + index + 7"))
    second = run()
    assert "already done" not in second and "made by other code" in second
    folders = sorted((tmp_path / "out" / "runs" / "tiny_random-shapes-cat").iterdir())
    assert len(folders) == 2
    psnr = [json.loads((f / "metrics.json").read_text())["psnr"] for f in folders]
    assert psnr[0] != psnr[1]

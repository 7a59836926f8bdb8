"""A sweep's records carried to another machine without their images (`scripts/sweep_carry.py`), and a comparison
cell that resumes from such records: the settings it had scored are reused, not run again."""

import importlib.util
import json
from pathlib import Path
from types import SimpleNamespace

import pytest

import cat
from experiments.compare.bench import Bench
from experiments.compare.settings import setting_key
from experiments.prompts.sets import Prompt
from experiments.run.keys import code_identity

spec = importlib.util.spec_from_file_location("sweep_carry", Path(__file__).resolve().parents[1] / "scripts" / "sweep_carry.py")
carry = importlib.util.module_from_spec(spec)
spec.loader.exec_module(carry)
CARRY_NAME = carry.CARRY


def write(path: Path, text: str = "x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def a_sweep(root: Path) -> Path:
    """An output root with a sweep of model `m` in flight, its full-model caches, and another model's cache."""
    sweep = root / "sweeps" / "peers-m"
    write(sweep / "multirun.yaml", "model:\n  name: m\n")
    write(sweep / ".cells", "done-cell\n")
    write(sweep / "done-cell" / "status.json", '{"status": "done"}')
    write(sweep / "done-cell" / "run_key.json", json.dumps({"material": {"code": code_identity()}}))
    write(sweep / "done-cell" / "cells" / "k1.json", "{}")
    write(sweep / "done-cell" / "cells" / "k1" / "00000.png")
    write(sweep / "done-cell" / ".hydra" / "overrides.yaml", "- method=cat\n")
    write(sweep / "done-cell" / "wandb" / "offline-run" / "run.wandb")  # git ignores it: never carried
    write(sweep / "running-cell" / ".lock")
    write(sweep / "running-cell" / "calibration" / ".k9.json.x1.tmp")  # a row being written while packing
    write(sweep / "running-cell" / "calibration" / "k2.json", "{}")
    write(sweep / "interim" / "summary.md")
    (sweep / "interim" / "done-cell").symlink_to(sweep / "done-cell")
    write(root / "full_images" / "m-abc" / "00000.png")
    write(root / "full_images" / "m-abc" / "macs.jsonl")
    write(root / "full_images" / "m-abc-settings" / "k2.json", "{}")
    write(root / "full_images" / "m-abc-settings" / "k2" / "00000.png")
    write(root / "full_images" / "other-xyz" / "key.json")
    return sweep


def listing(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and not p.is_symlink()}


def test_a_pack_holds_the_records_without_images_locks_temporaries_or_the_interim_report(tmp_path):
    sweep = a_sweep(tmp_path / "outputs")
    manifest = carry.pack(sweep, tmp_path / "carry")
    assert listing(tmp_path / "carry") == {
        "CARRY.json", "sweeps/peers-m/multirun.yaml", "sweeps/peers-m/.cells", "sweeps/peers-m/done-cell/status.json",
        "sweeps/peers-m/done-cell/run_key.json",
        "sweeps/peers-m/done-cell/cells/k1.json", "sweeps/peers-m/done-cell/.hydra/overrides.yaml",
        "sweeps/peers-m/running-cell/calibration/k2.json", "full_images/m-abc/macs.jsonl",
        "full_images/m-abc/00000.png",  # the full model's images are carried: the rows were scored against them
        "full_images/m-abc-settings/k2.json"}
    assert manifest["model"] == "m" and manifest["files"] == 10
    assert manifest["cell_code"] == {code_identity()["sha256"]: 1}
    assert manifest["folders"] == ["sweeps/peers-m", "full_images/m-abc", "full_images/m-abc-settings"]
    assert json.loads((tmp_path / "carry" / "CARRY.json").read_text())["code"]["sha256"]
    write(sweep / "done-cell" / "cells" / "k3.json", "{}")  # a later pack replaces the earlier one
    (sweep / "running-cell" / "calibration" / "k2.json").unlink()
    carry.pack(sweep, tmp_path / "carry")
    assert "sweeps/peers-m/done-cell/cells/k3.json" in listing(tmp_path / "carry")
    assert "sweeps/peers-m/running-cell/calibration/k2.json" not in listing(tmp_path / "carry")


def test_unpack_restores_the_records_and_keeps_what_is_there(tmp_path, capsys):
    sweep = a_sweep(tmp_path / "outputs")
    carry.pack(sweep, tmp_path / "carry")
    there = write(tmp_path / "next" / "sweeps" / "peers-m" / "done-cell" / "status.json", "mine")
    carry.main(["unpack", str(tmp_path / "carry"), "--output-root", str(tmp_path / "next")])
    out = capsys.readouterr().out
    assert "9 files copied, 1 already there (kept)" in out and "warning" not in out  # the same code
    assert there.read_text() == "mine"
    assert listing(tmp_path / "next") == listing(tmp_path / "carry") - {"CARRY.json"}
    manifest = json.loads((tmp_path / "carry" / "CARRY.json").read_text())
    manifest["cell_code"] = {"0" * 64: 2}  # cells made by other code
    (tmp_path / "carry" / "CARRY.json").write_text(json.dumps(manifest))
    carry.main(["unpack", str(tmp_path / "carry"), "--output-root", str(tmp_path / "next")])
    out = capsys.readouterr().out
    assert "warning: the carry was made by other code (sha256 differ)" in out
    assert f"from a checkout of {manifest['provenance']['git_sha']}" in out


def test_pack_and_unpack_refuse_what_is_not_theirs(tmp_path):
    sweep = a_sweep(tmp_path / "outputs")
    write(tmp_path / "mine" / "notes.txt")
    with pytest.raises(SystemExit, match="holds no CARRY.json"):
        carry.pack(sweep, tmp_path / "mine")  # never wipes a folder that is not a carry
    assert (tmp_path / "mine" / "notes.txt").exists()
    with pytest.raises(SystemExit, match="not a sweep folder"):
        carry.pack(sweep / "done-cell", tmp_path / "carry")
    with pytest.raises(SystemExit, match="not a carry"):
        carry.unpack(tmp_path / "mine", tmp_path / "next")
    carry.pack(sweep, tmp_path / "carry")
    manifest = json.loads((tmp_path / "carry" / "CARRY.json").read_text())
    for outside in ("../elsewhere", "/etc"):
        (tmp_path / "carry" / "CARRY.json").write_text(json.dumps({**manifest, "folders": [outside]}))
        with pytest.raises(SystemExit, match="is outside an output root"):
            carry.unpack(tmp_path / "carry", tmp_path / "next")
    assert not (tmp_path / "elsewhere").exists()



def test_pack_refuses_a_file_or_a_folder_in_or_around_the_output_root(tmp_path):
    sweep = a_sweep(tmp_path / "outputs")
    write(tmp_path / "a-file")
    with pytest.raises(SystemExit, match="a-file: a file"):
        carry.pack(sweep, tmp_path / "a-file")
    for dest in (sweep / "carry", tmp_path / "outputs" / "carry"):  # its copies would be read as runs there
        with pytest.raises(SystemExit, match="inside or around the output root"):
            carry.pack(sweep, dest)
        assert not dest.exists()
    write(tmp_path / CARRY_NAME, "{}")  # a folder holding the output root is never replaced
    with pytest.raises(SystemExit, match="inside or around the output root"):
        carry.pack(sweep, tmp_path)
    assert (sweep / "multirun.yaml").exists()



@pytest.mark.parametrize("text", ["model: [m\n", "- m\n"])
def test_pack_names_an_unreadable_multirun_file(tmp_path, text):
    sweep = a_sweep(tmp_path / "outputs")
    (sweep / "multirun.yaml").write_text(text)
    with pytest.raises(SystemExit, match="multirun.yaml: unreadable .*; Hydra writes it when the sweep starts"):
        carry.pack(sweep, tmp_path / "carry")
    assert not (tmp_path / "carry").exists()

@pytest.mark.parametrize("manifest", [[], {"folders": "sweeps/peers-m", "sweep": "s", "packed": "p", "code": {}},
                                      {"folders": ["sweeps/peers-m"]}])
def test_unpack_refuses_a_manifest_that_pack_did_not_write(tmp_path, manifest):
    write(tmp_path / "carry" / CARRY_NAME, json.dumps(manifest))
    with pytest.raises(SystemExit, match="not a carry's manifest"):
        carry.main(["unpack", str(tmp_path / "carry"), "--output-root", str(tmp_path / "next")])
    assert not (tmp_path / "next").exists()


def test_unpack_refuses_a_file_as_output_root_and_names_an_incomplete_carry(tmp_path, capsys):
    carry.pack(a_sweep(tmp_path / "outputs"), tmp_path / "carry")
    write(tmp_path / "a-file")
    with pytest.raises(SystemExit, match="--output-root .*a-file: a file"):
        carry.unpack(tmp_path / "carry", tmp_path / "a-file")
    (tmp_path / "carry" / "sweeps" / "peers-m" / ".cells").unlink()  # lost on the way
    carry.main(["unpack", str(tmp_path / "carry"), "--output-root", str(tmp_path / "next")])
    assert "holds 9 of the 10 files it was packed with" in capsys.readouterr().err

def test_a_scored_setting_carried_without_images_is_reused_as_measured(tmp_path):
    """Its row is taken (the bench has no pipeline: running anything would fail) and copied to the run's folder."""
    prompts = [Prompt(i, f"p{i}") for i in range(2)]
    bench = Bench(SimpleNamespace(batch_size=2, seed=0), None, {}, prompts, tmp_path / "full_images" / "m-key",
                  tmp_path / "run" / "calibration", [])
    config = cat.FORAConfig(interval=2)
    key = setting_key(config)
    row = {"key": key, "indices": [0, 1], "reduction": [0.5, 0.5], "psnr": [30.0, 32.0]}
    write(bench.shared / f"{key}.json", json.dumps(row))
    write(bench.shared / key / "00001.png")  # one image left of two
    assert bench.run(config)["psnr"] == [30.0, 32.0]
    assert json.loads((bench.folder / f"{key}.json").read_text()) == row
    assert listing(bench.folder / key) == {"00001.png"}


@pytest.mark.slow  # two comparison cells on the random model, about 10 s
@pytest.mark.usefixtures("one_thread")
def test_a_cell_rerun_from_records_without_images_runs_nothing_again(tmp_path, monkeypatch):
    """A cell's settings scored and kept beside the full model's cache, every image gone (as a carry leaves
    them) and the cell's own folder too: the rerun reads every setting it needs from those rows, generates
    nothing, and ends with the first run's metrics."""
    import shutil

    from experiments.lifecycle import launch

    args = ("debug=tiny", "task=compare", "data.limit=4", "batch_size=2", "compare.calibration_prompts=2",
            "method=fbcache", "compare.variant=authors", "compare.targets=[0.3]", f"output_root={tmp_path}")
    run_dir, metrics = launch.run(*args)
    assert metrics["calibration_runs"] > 0  # its reductions were measured on the calibration prompts
    for path in tmp_path.rglob("*.png"):
        path.unlink()
    shutil.rmtree(run_dir)
    ran = []
    original = Bench._generate
    monkeypatch.setattr(Bench, "_generate", lambda self, folder, *a: ran.append(folder) or original(self, folder, *a))
    again_dir, again = launch.run(*args)
    assert again_dir == run_dir and again == metrics and not ran
    assert list((run_dir / "calibration").glob("*.json")) and not list(run_dir.rglob("*.png"))


def test_a_pack_from_a_checkout_that_made_none_of_the_cells_says_so(tmp_path, capsys):
    sweep = a_sweep(tmp_path / "outputs")
    write(sweep / "done-cell" / "run_key.json", json.dumps({"material": {"code": {"sha256": "ab" * 32}}}))
    carry.main(["pack", str(sweep), str(tmp_path / "carry")])
    out = capsys.readouterr().out
    assert "warning: this checkout's code" in out and "made none of the sweep's cells (abababababab)" in out

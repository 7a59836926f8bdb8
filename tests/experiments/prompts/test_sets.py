"""Prompt loaders, on the copies of the real files in ../shared/data (skipped where absent)."""

import json
import shutil
from pathlib import Path

import huggingface_hub
from huggingface_hub import constants as hub_constants
import pandas as pd
import pytest

from experiments.prompts import sets

SHARED = Path(__file__).resolve().parents[4] / "shared" / "data"
needs_shared = pytest.mark.skipif(not SHARED.exists(), reason="../shared/data is not beside the repository")


@needs_shared
def test_parti_prompts():
    prompts = sets.load_prompts("parti", str(SHARED / "PartiPrompts.tsv"))
    assert len(prompts) == 1632 - sets.CALIBRATION_SIZE  # the last 64 are kept for calibration
    assert [p.index for p in prompts] == list(range(1632 - sets.CALIBRATION_SIZE))
    assert len({p.meta["category"] for p in prompts}) == 12
    assert len({p.meta["challenge"] for p in prompts}) == 11
    animals = sets.load_prompts("parti", str(SHARED / "PartiPrompts.tsv"), categories=["Animals"])
    assert animals and all(p.meta["category"] == "Animals" for p in animals)


@needs_shared
def test_coco_first_caption_per_image():
    prompts = sets.load_prompts("coco2017", str(SHARED / "captions_val2017.json"))
    calibration = sets.load_prompts("coco2017", str(SHARED / "captions_val2017.json"), split="calibration")
    assert len(prompts) + len(calibration) == 5000 and len(calibration) == sets.CALIBRATION_SIZE
    assert len({p.meta["image_id"] for p in prompts + calibration}) == 5000
    assert all(p.text and p.meta["file_name"].endswith(".jpg") for p in prompts[:50])


@needs_shared
def test_limit_and_shards_keep_global_indices():
    path = str(SHARED / "PartiPrompts.tsv")
    whole = sets.load_prompts("parti", path, limit=10)
    shards = [sets.load_prompts("parti", path, limit=10, shard=i, num_shards=3) for i in range(3)]
    assert sorted(p.index for s in shards for p in s) == [p.index for p in whole] == list(range(10))


def test_shapes_prompts_are_bundled():
    prompts = sets.load_prompts("shapes")
    assert len(prompts) == 64 and prompts[0].index == 0


def test_missing_files_and_bad_names_are_clear(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="allowed: parti, coco2017, shapes"):
        sets.load_prompts("laion")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        sets.load_prompts("parti", str(tmp_path / "nope.tsv"))
    monkeypatch.setenv("CAT_PRUNING_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    for source in ("hub", "file"):
        with pytest.raises(FileNotFoundError, match="scripts/fetch_data.py parti"):
            sets.load_prompts("parti", source=source)
        with pytest.raises(FileNotFoundError, match="scripts/fetch_data.py coco"):
            sets.load_prompts("coco2017", source=source)
    with pytest.raises(FileNotFoundError, match="nateraw/parti-prompts"):
        sets.load_prompts("parti")
    with pytest.raises(ValueError, match="data.source='web' is invalid; allowed: hub, file"):
        sets.load_prompts("parti", source="web")
    with pytest.raises(ValueError, match="data.shard=3"):
        sets.load_prompts("shapes", shard=3, num_shards=2)


def _hub_layout(json_file: Path, out: Path) -> Path:
    """The hub copy's layout (phiyodr/coco2017): one row per image, its annotation ids and captions,
    rows and captions in shuffled order so the loader has to sort them."""
    raw = json.loads(json_file.read_text())
    names = {img["id"]: img["file_name"] for img in raw["images"]}
    rows: dict[int, dict] = {}
    for ann in raw["annotations"][::-1]:
        row = rows.setdefault(ann["image_id"], {"image_id": ann["image_id"], "file_name": names[ann["image_id"]],
                                                 "ids": [], "captions": []})
        row["ids"].append(ann["id"])
        row["captions"].append(ann["caption"])
    out.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(list(rows.values())[::-1]).to_parquet(out)
    return out


@needs_shared
def test_coco_hub_copy_gives_the_same_prompts_as_the_json(tmp_path):
    pytest.importorskip("pyarrow")
    parquet = _hub_layout(SHARED / "captions_val2017.json", tmp_path / "validation.parquet")
    from_json = sets.load_prompts("coco2017", str(SHARED / "captions_val2017.json"))
    from_hub = sets.load_prompts("coco2017", str(parquet))
    assert [(p.index, p.text, p.meta) for p in from_hub] == [(p.index, p.text, p.meta) for p in from_json]


@needs_shared
def test_hub_source_downloads_through_huggingface_hub(tmp_path, monkeypatch):
    pytest.importorskip("pyarrow")
    repo = tmp_path / "snapshot"
    shutil.copy(SHARED / "PartiPrompts.tsv", tmp_path / "PartiPrompts.tsv")
    _hub_layout(SHARED / "captions_val2017.json", repo / "data" / "validation-00000-of-00001.parquet")
    asked = []

    def snapshot_download(repo_id, repo_type, allow_patterns):
        asked.append((repo_id, repo_type, allow_patterns))
        return str(tmp_path if repo_id == "nateraw/parti-prompts" else repo)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    assert len(sets.load_prompts("parti")) == 1632 - sets.CALIBRATION_SIZE
    assert len(sets.load_prompts("coco2017", limit=5000)) == 5000 - sets.CALIBRATION_SIZE
    assert asked == [("nateraw/parti-prompts", "dataset", ["PartiPrompts.tsv"]),
                     ("phiyodr/coco2017", "dataset", ["data/validation-*.parquet"])]


@pytest.mark.parametrize("name", ["shapes", "scenes", "parti", "coco2017"])
def test_calibration_and_evaluation_prompts_never_overlap(name):
    """Methods are tuned and calibrated on the calibration split, evaluated on the evaluation split."""
    path = {"parti": SHARED / "PartiPrompts.tsv", "coco2017": SHARED / "captions_val2017.json"}.get(name)
    if path is not None and not path.exists():
        pytest.skip("../shared/data is not beside the repository")
    args = (name, str(path) if path else None)
    evaluation, calibration = sets.load_prompts(*args), sets.load_prompts(*args, split="calibration")
    assert len(calibration) >= 32 and len(evaluation) >= 64
    sets.check_disjoint(evaluation, calibration)
    assert not {p.index for p in evaluation} & {p.index for p in calibration}  # other seeds, other image names
    with pytest.raises(ValueError, match="also evaluation prompts"):
        sets.check_disjoint(evaluation, calibration + evaluation[:1])


def test_a_calibration_file_can_be_given_for_any_set(tmp_path):
    file = tmp_path / "calibration.txt"
    file.write_text("a small red circle on the left\na large blue square\n")
    prompts = sets.load_prompts("shapes", split="calibration", calibration_path=str(file))
    assert [p.text for p in prompts] == ["a small red circle on the left", "a large blue square"]
    assert prompts[0].index == sets.CALIBRATION_INDEX
    assert sets.load_prompts("shapes", calibration_path=str(file)) == sets.load_prompts("shapes")
    with pytest.raises(ValueError, match="data.split='tuning' is invalid"):
        sets.load_prompts("shapes", split="tuning")


def test_a_bad_split_or_calibration_file_is_named_before_anything_loads():
    from hydra import compose, initialize_config_dir

    from experiments.base.config_files import ConfigError
    from experiments.lifecycle import resolvers  # noqa: F401
    from experiments.tasks.validation import validate

    conf = Path(__file__).resolve().parents[3] / "conf"
    for override, message in (("data.split=tuning", "data.split='tuning' is invalid; allowed: evaluation, calibration"),
                              ("data.calibration_path=/nonexistent.txt", "data.calibration_path='/nonexistent.txt' is not a file")):
        with initialize_config_dir(str(conf), version_base="1.3"):
            cfg = compose("config", overrides=["model=tiny_random", override])
        with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
            validate(cfg)


def test_prompt_files_are_utf8_and_a_byte_order_mark_is_dropped(tmp_path):
    """Issue 34: a BOM stayed inside prompt 0 and reached the model (files are now read as UTF-8 by name, not in the
    locale's encoding, and the mark is dropped)."""
    text = tmp_path / "prompts.txt"
    text.write_bytes("\ufeffa large red circle on the left\nun café on the right\n".encode("utf-8"))
    assert [p.text for p in sets.prompts_of({"name": "shapes", "path": str(text)})] == [
        "a large red circle on the left", "un café on the right"]
    tsv = tmp_path / "parti.tsv"
    tsv.write_bytes("\ufeffPrompt\tCategory\tChallenge\nun café\tFood\tBasic\n".encode("utf-8"))
    assert [(p.text, p.meta["category"]) for p in sets.parti_prompts(str(tsv))] == [("un café", "Food")]

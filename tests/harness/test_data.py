"""Prompt loaders, on the copies of the real files in ../shared/data (skipped where absent)."""

from pathlib import Path

import pytest

from experiments import data

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"
needs_shared = pytest.mark.skipif(not SHARED.exists(), reason="../shared/data is not beside the repository")


@needs_shared
def test_parti_prompts():
    prompts = data.load_prompts("parti", str(SHARED / "PartiPrompts.tsv"))
    assert len(prompts) == 1632
    assert [p.index for p in prompts] == list(range(1632))
    assert len({p.meta["category"] for p in prompts}) == 12
    assert len({p.meta["challenge"] for p in prompts}) == 11
    animals = data.load_prompts("parti", str(SHARED / "PartiPrompts.tsv"), categories=["Animals"])
    assert animals and all(p.meta["category"] == "Animals" for p in animals)


@needs_shared
def test_coco_first_caption_per_image():
    prompts = data.load_prompts("coco2017", str(SHARED / "captions_val2017.json"))
    assert len(prompts) == 5000
    assert len({p.meta["image_id"] for p in prompts}) == 5000
    assert all(p.text and p.meta["file_name"].endswith(".jpg") for p in prompts[:50])


@needs_shared
def test_limit_and_shards_keep_global_indices():
    path = str(SHARED / "PartiPrompts.tsv")
    whole = data.load_prompts("parti", path, limit=10)
    shards = [data.load_prompts("parti", path, limit=10, shard=i, num_shards=3) for i in range(3)]
    assert sorted(p.index for s in shards for p in s) == [p.index for p in whole] == list(range(10))


def test_shapes_prompts_are_bundled():
    prompts = data.load_prompts("shapes")
    assert len(prompts) == 64 and prompts[0].index == 0


def test_missing_files_and_bad_names_are_clear(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="allowed: parti, coco2017, shapes"):
        data.load_prompts("laion")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        data.load_prompts("parti", str(tmp_path / "nope.tsv"))
    monkeypatch.setenv("CAT_PRUNING_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="scripts/fetch_data.py parti"):
        data.load_prompts("parti")
    with pytest.raises(FileNotFoundError, match="scripts/fetch_data.py coco"):
        data.load_prompts("coco2017")
    with pytest.raises(ValueError, match="data.shard=3"):
        data.load_prompts("shapes", shard=3, num_shards=2)

"""`scripts/fetch_data.py` and `scripts/fetch_coco_images.py` (no network in tests: every download is faked):
bad options are refused before any download, a failed download is one line, and an interrupted one leaves no
file that later reads as a shorter prompt set."""

import urllib.error

import pytest

from experiments.base.config_files import Unavailable
from scripts import fetch_coco_images, fetch_data


def no_download(*args, **kwargs):
    raise AssertionError("downloaded")


def test_a_dest_that_is_a_file_is_refused_before_any_download(tmp_path, monkeypatch):
    monkeypatch.setattr(fetch_data.urllib.request, "urlretrieve", no_download)
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(SystemExit, match="--dest .*a-file: cannot be a folder"):
        fetch_data.main(["parti", "--source", "file", "--dest", str(tmp_path / "a-file")])


def test_a_failed_download_is_one_line_and_leaves_no_prompt_file(tmp_path, monkeypatch):
    def cut(url, path):
        open(path, "w").write("Prompt\tCategory\tChallenge\nhalf a")
        raise urllib.error.URLError("connection reset")

    monkeypatch.setattr(fetch_data.urllib.request, "urlretrieve", cut)
    with pytest.raises(SystemExit, match=r"^error: could not fetch parti from .*connection reset.*--source hub$"):
        fetch_data.main(["parti", "--source", "file", "--dest", str(tmp_path)])
    assert not (tmp_path / "PartiPrompts.tsv").exists()


def test_a_hub_set_that_cannot_be_fetched_is_one_line(monkeypatch):
    def offline(*args, **kwargs):
        raise Unavailable("could not fetch PartiPrompts.tsv of the hub dataset x (offline); run it with network")

    monkeypatch.setattr(fetch_data, "load_prompts", offline)
    with pytest.raises(SystemExit, match="^error: could not fetch PartiPrompts.tsv"):
        fetch_data.main(["parti"])


@pytest.mark.parametrize("args, said", [(["--limit", "0"], "--limit 0 is invalid; allowed: an integer >= 1"),
                                        (["--limit", "-5"], "--limit -5 is invalid"),
                                        (["--dest", "{tmp}/a-file"], "a-file: cannot be a folder")])
def test_coco_images_refuse_bad_options_before_the_780_mb_download(tmp_path, monkeypatch, args, said):
    monkeypatch.setattr(fetch_coco_images.urllib.request, "urlopen", no_download)
    (tmp_path / "a-file").write_text("x")
    args = [a.format(tmp=tmp_path) for a in args]
    with pytest.raises(SystemExit, match=said):
        fetch_coco_images.main(["--dest", str(tmp_path / "coco"), *args])


def test_coco_images_that_cannot_be_fetched_are_one_line(tmp_path, monkeypatch):
    def offline(url):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(fetch_coco_images.urllib.request, "urlopen", offline)
    with pytest.raises(SystemExit, match="^error: could not fetch .*val2017.zip .*no network"):
        fetch_coco_images.main(["--dest", str(tmp_path / "coco")])

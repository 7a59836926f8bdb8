"""Following one knob from conf/ to the selection crosses few files: CAT's `keep_ratio`.

The code and configuration of the project (run.py, pyproject.toml, cat/, experiments/, conf/, scripts/) are
searched; tests and docs are not. What may name it, and why each is unavoidable:
- cat/methods/cat.py: the field, its check and the selection budget K (the method's one file);
- conf/method/cat.yaml: the knob sweep=peers varies (`knob: keep_ratio`) and its value at a level;
- conf/sweep/ablation.yaml, clustering.yaml, keep_ratio.yaml: sweeps over it by its key
  (`method.config.keep_ratio`), which is what a sweep file is.
The library's engine, the harness and the scripts read it from the config, never by name.
"""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SEARCHED = ("cat", "experiments", "conf", "scripts")
ALLOWED = 6


def mentioning(word: str) -> list[str]:
    files = [ROOT / "run.py", ROOT / "pyproject.toml"]
    files += [p for folder in SEARCHED for p in (ROOT / folder).rglob("*")
              if p.is_file() and "__pycache__" not in p.parts and p.suffix in (".py", ".yaml", ".yml", ".toml", ".txt")]
    return sorted(str(p.relative_to(ROOT)) for p in files if word in p.read_text(errors="ignore"))


def test_keep_ratio_crosses_at_most_six_files():
    found = mentioning("keep_ratio")
    assert "cat/methods/cat.py" in found and "conf/method/cat.yaml" in found
    assert len(found) <= ALLOWED, found

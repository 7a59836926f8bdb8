"""The harness asks a config, never a name: no method or policy name appears in experiments/ or scripts/.

Read with `ast`, so prose ("cat" in a docstring) and `import cat` are left alone: a string constant equal
to a method name (a key of `cat.METHODS`, a method's conf/method file) or a policy (`cat.POLICIES`), and a
name or attribute equal to a method's config or handle class (`CATConfig`, `cat.CATHandle`, ...) are
what is refused. Words that are also keys of the other configs (`model.steps`, the key, against the
`steps` method) cannot be told apart by text and are left out of the vocabulary.
"""

import ast
from pathlib import Path

from omegaconf import OmegaConf

import cat

ROOT = Path(__file__).resolve().parents[2]
CHECKED = ("experiments", "scripts")


def _keys(node) -> set[str]:
    if isinstance(node, dict):
        return set(map(str, node)) | {k for v in node.values() for k in _keys(v)}
    if isinstance(node, list):
        return {k for v in node for k in _keys(v)}
    return set()


def config_keys() -> set[str]:
    """Every key of conf/ outside the method and sweep groups."""
    files = [ROOT / "conf" / "config.yaml"] + [p for p in (ROOT / "conf").rglob("*.yaml")
                                               if p.parent.name not in ("method", "sweep", "conf")]
    return {k for f in files for k in _keys(OmegaConf.to_container(OmegaConf.load(f)))}


def method_files() -> set[str]:
    """The conf/method files of methods (not the full model's, whose `config` is null)."""
    return {p.stem for p in (ROOT / "conf" / "method").glob("*.yaml")
            if "config" not in (loaded := OmegaConf.load(p)) or loaded.config is not None}


def vocabulary() -> tuple[set[str], set[str]]:
    names = set(cat.METHODS) | set(cat.POLICIES) | method_files()
    classes = {cls.__name__ for cls in cat.METHODS.values()} | {cls.handle.__name__ for cls in cat.METHODS.values()}
    return names - config_keys(), classes


def mentions(path: Path, names: set[str], classes: set[str]) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in names:
            found.append(f"{path.relative_to(ROOT)}:{node.lineno}: the string {node.value!r}")
        elif isinstance(node, ast.Name) and node.id in classes:
            found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.id}")
        elif isinstance(node, ast.Attribute) and node.attr in classes:
            found.append(f"{path.relative_to(ROOT)}:{node.lineno}: .{node.attr}")
        elif isinstance(node, ast.ImportFrom):
            found += [f"{path.relative_to(ROOT)}:{node.lineno}: import {a.name}" for a in node.names if a.name in classes]
    return found


def test_the_vocabulary_holds_the_methods_and_policies():
    names, classes = vocabulary()
    assert {"cat", "cat_fora", "fora", "toca", "ras", "magcache", "cat_random", "no_cluster", "random"} <= names
    assert {"CATConfig", "CATHandle", "FORAConfig", "MagCacheConfig"} <= classes
    assert "steps" not in names  # a key of every model config
    assert "none" not in names  # the full model's conf file


def test_no_method_or_policy_name_in_experiments_or_scripts():
    names, classes = vocabulary()
    found = [m for folder in CHECKED for path in sorted((ROOT / folder).rglob("*.py"))
             for m in mentions(path, names, classes)]
    assert not found, "\n".join(found)

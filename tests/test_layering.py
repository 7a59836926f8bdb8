"""Imports point one way: the library never pulls in the experiment layer's dependencies."""

import subprocess
import sys
from pathlib import Path


def _loaded_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print(' '.join(sorted(m.split('.')[0] for m in sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return set(out.split())


def test_cat_imports_no_experiment_dependencies():
    loaded = _loaded_after("import cat")
    assert not loaded & {"hydra", "omegaconf", "wandb", "torchmetrics", "experiments", "pandas", "matplotlib"}


def test_cat_core_imports_no_diffusers():
    core = Path(__file__).resolve().parents[1] / "cat" / "core"
    loaded = _loaded_after(
        "import importlib.util as u; "
        f"s = u.spec_from_file_location('catcore', r'{core / '__init__.py'}', submodule_search_locations=[r'{core}']); "
        "m = u.module_from_spec(s); sys.modules['catcore'] = m; s.loader.exec_module(m)"
    )
    assert "torch" in loaded and "catcore" in loaded
    assert not loaded & {"diffusers", "transformers", "cat"}


# What each part may import, for imports to point one way: run.py -> experiments -> cat (its API, and the
# model facts of cat.families, public) -> cat.methods -> cat.engine / cat.families -> cat.core -> torch.
ALLOWED = {
    "cat.core": {"cat.core"},
    "cat.families": {"cat.families"},
    "cat.engine": {"cat.engine", "cat.families", "cat.core"},
    "cat.methods": {"cat.methods", "cat.engine", "cat.families", "cat.core"},
    "cat.api": {"cat.api", "cat.methods", "cat.engine", "cat.families", "cat.core"},
    "cat": {"cat", "cat.api", "cat.methods", "cat.engine", "cat.families", "cat.core"},  # __init__, testing
    "experiments": {"experiments", "cat", "cat.families"},
    "run": {"experiments"},
}
ROOT = Path(__file__).resolve().parents[1]


def _part(module: str) -> str:
    for part in sorted(ALLOWED, key=len, reverse=True):
        if module == part or module.startswith(part + "."):
            return part
    return module.split(".")[0]


def _imports(path: Path) -> set[str]:
    """The project modules `path` imports (relative imports resolved; `from p import m` as p.m when m is a module)."""
    import ast

    module = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}".rstrip(".")
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                is_module = (ROOT / sub.replace(".", "/")).with_suffix(".py").exists() or (ROOT / sub.replace(".", "/")).is_dir()
                found.add(sub if is_module else base)
    return {m for m in found if m.split(".")[0] in ("cat", "experiments", "run")}


def test_imports_point_one_way():
    files = [ROOT / "run.py", *(ROOT / "cat").rglob("*.py"), *(ROOT / "experiments").rglob("*.py")]
    wrong = []
    for path in files:
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        allowed = ALLOWED[_part(module)]
        wrong += [f"{path.relative_to(ROOT)} imports {m}" for m in sorted(_imports(path)) if _part(m) not in allowed]
    assert not wrong, "\n".join(wrong)

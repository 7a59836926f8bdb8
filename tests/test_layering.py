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

"""Tables, figures and the notebook, from a results tree made in the test by a real run."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def results(tiny_run):
    return tiny_run.output_root


def _script(name, *args):
    return subprocess.run([sys.executable, f"scripts/{name}", *map(str, args)], cwd=ROOT, check=True,
                          capture_output=True, text=True, timeout=300).stdout


@pytest.mark.slow  # long: runs in CI's second step (pytest -m slow)
def test_tables(results, tiny_run, tmp_path):
    import pandas as pd

    out = _script("make_tables.py", results, "--out", tmp_path)
    assert "tiny_random" in out
    metrics = tiny_run.metrics
    table = pd.read_csv(tmp_path / "main.csv")
    assert len(table) == 1 and table.loc[0, "model"] == "tiny_random" and table.loc[0, "method"] == "cat"
    for key in ("psnr", "ssim", "macs_reduction"):
        assert table.loc[0, key] == pytest.approx(metrics[key], rel=1e-4), key
    assert f"{metrics['psnr']:.4g}"[:5] in (tmp_path / "main.md").read_text()
    tex = (tmp_path / "main.tex").read_text()
    assert "tabular" in tex and "tiny" in tex


@pytest.mark.slow  # long: runs in CI's second step (pytest -m slow)
def test_figures(results, tmp_path):
    import numpy as np
    from PIL import Image

    _script("make_figures.py", results, "--out", tmp_path)
    names = {p.name for p in tmp_path.glob("*.png")}
    assert any(n.startswith("grid_") for n in names) and any(n.startswith("selection_") for n in names)
    assert "quality_vs_macs_psnr.png" in names
    assert (tmp_path / "quality_vs_macs_psnr.pdf").read_bytes().startswith(b"%PDF")
    for name in names:  # real pictures, not blank canvases
        pixels = np.asarray(Image.open(tmp_path / name).convert("L"))
        assert min(pixels.shape) >= 32 and pixels.std() > 1, name


def test_notebook_is_valid_and_uses_the_result_reader():
    nb = json.loads((ROOT / "notebooks" / "results.ipynb").read_text())
    assert nb["nbformat"] == 4
    code = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")
    assert "from experiments.reports.results import load_runs" in code
    compile(code.replace("display(", "print("), "results.ipynb", "exec")
    assert all(not c.get("outputs") for c in nb["cells"] if c["cell_type"] == "code")
    assert "'results'" not in code and '"results"' not in code  # it reads results; it never writes into results/


def test_main_table_keeps_runs_and_paper_sweep_cells_only():
    from scripts.make_tables import main_table
    import pandas as pd

    runs = pd.DataFrame({
        "model": ["m"] * 3, "data": ["d"] * 3, "steps": [28] * 3, "method": ["cat", "cat", "cat_random"],
        "task": ["generate"] * 3, "status": ["done"] * 3, "psnr": [30.0, 31.0, 25.0],
        "sweep": [None, "paper_sd3", "ablation"], "seed": [0, 1, 2],  # three runs, not one found three times
    })
    assert sorted(main_table(runs).psnr) == [30.0, 31.0]
    assert sorted(main_table(runs, "*").psnr) == [25.0, 30.0, 31.0]


def test_the_main_table_shows_a_speedups_spread_and_noise_next_to_it():
    """Issue 34: a noisy speedup (0.94 on a busy machine) was copied into the table's speedup column as it was."""
    from scripts.make_tables import main_table
    import pandas as pd

    runs = pd.DataFrame({"model": ["m"], "data": ["d"], "steps": [28], "method": ["cat"], "task": ["generate"],
                         "status": ["done"], "speedup": [0.94], "speedup_spread": [0.5], "speedup_noisy": [1]})
    columns = list(main_table(runs).columns)
    assert columns[columns.index("speedup") + 1: columns.index("speedup") + 3] == ["speedup_spread", "speedup_noisy"]


def test_macs_table_lists_offline_counts_per_setting():
    from scripts.make_tables import macs_table
    import pandas as pd

    runs = pd.DataFrame({
        "model": ["sd3_medium"] * 3, "steps": [28, 50, 28], "method": ["cat"] * 3, "keep_ratio": [0.24, 0.24, 0.3],
        "warmup_steps": [8, 8, 8], "task": ["macs", "macs", "generate"], "status": ["done"] * 3,
        "macs_reduction": [0.5024, 0.5909, 0.46], "cache_bytes": [5.03e9, 5.03e9, None],
    })
    table = macs_table(runs)
    assert list(table.steps) == [28, 50] and list(table.macs_reduction) == [0.5024, 0.5909]

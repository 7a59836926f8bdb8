"""The selection figure shows each selecting step once, spread over the schedule (a synthetic
`selection.npz` in the format `save_selection` writes)."""

import numpy as np
import pytest

from experiments.reports import figures


def _selection_npz(path, num_steps: int, warmup: int, grid=(4, 4)):
    n = grid[0] * grid[1]
    rng = np.random.default_rng(0)
    phases = ["full"] * (warmup - 2) + ["reference", "cluster"] + ["pruned"] * (num_steps - warmup)
    np.savez_compressed(
        path, noise_magnitude=rng.random((num_steps, n), dtype=np.float32),
        active=rng.random((num_steps, n)) < 0.5, staleness=rng.random((num_steps, n), dtype=np.float32),
        labels=rng.integers(0, 3, n), grid=np.array(grid), steps=np.arange(num_steps), phases=np.array(phases),
        prompt=np.array("a red circle"), kept=np.array(8), num_clusters=np.array(3))
    return path


@pytest.mark.parametrize("num_steps, warmup, shown", [
    (6, 4, [3, 4, 5]),  # three selecting steps: three columns, no step twice
    (6, 2, [1, 2, 3, 4, 5]),
    (28, 8, [7, 11, 15, 19, 23, 27]),  # six columns, first to last
])
def test_each_column_is_a_distinct_selecting_step(tmp_path, monkeypatch, num_steps, warmup, shown):
    npz = _selection_npz(tmp_path / "selection.npz", num_steps, warmup)
    data = np.load(npz)
    picks = figures.selection_columns(data["steps"], data["phases"], num_columns=6)
    assert [int(data["steps"][i]) for i in picks] == shown
    drawn = []

    def keep(fig, path, pdf=False):
        drawn.append(fig)
        return path

    monkeypatch.setattr(figures, "save", keep)
    figures.selection_figure(npz, tmp_path / "selection.png")
    titles = [ax.get_title() for ax in drawn[0].axes if ax.get_title()]
    assert titles == [f"step {s}" for s in shown]
    figures.plt.close(drawn[0])

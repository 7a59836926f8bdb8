"""Figures from saved results: image grids (method vs full model) and the selection-map figure."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402


def save(fig, path: Path, pdf: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=150, bbox_inches="tight")
    if pdf:
        fig.savefig(path.with_suffix(".pdf"), bbox_inches="tight")
    plt.close(fig)
    return path


def image_grid(rows: dict[str, list[Path]], titles: list[str] | None, path: Path, pdf: bool = False) -> Path:
    """One row per variant (e.g. full, cat), one column per prompt."""
    names = list(rows)
    cols = max(len(v) for v in rows.values())
    fig, axes = plt.subplots(len(names), cols, figsize=(1.6 * cols, 1.7 * len(names)), squeeze=False)
    for r, name in enumerate(names):
        for c in range(cols):
            ax = axes[r][c]
            ax.axis("off")
            if c < len(rows[name]):
                ax.imshow(Image.open(rows[name][c]))
            if c == 0:
                ax.set_title(name, fontsize=8, loc="left")
            elif r == 0 and titles:
                ax.set_title(titles[c][:28], fontsize=6)
        if r == 0 and titles:
            axes[0][0].set_title(f"{name}: {titles[0][:20]}", fontsize=6, loc="left")
    return save(fig, path, pdf)


def selection_figure(npz: Path, path: Path, num_columns: int = 6, pdf: bool = False) -> Path:
    """Like the paper's overview: per selected step, relative noise, clusters, recomputed tokens, staleness."""
    data = np.load(npz, allow_pickle=False)
    h, w = (int(v) for v in data["grid"])
    steps, phases = data["steps"], [str(p) for p in data["phases"]]
    usable = [i for i, p in enumerate(phases) if p in ("cluster", "pruned")]
    if not usable:
        raise ValueError(f"{npz} holds no pruned step")
    picks = [usable[round(j * (len(usable) - 1) / max(1, num_columns - 1))] for j in range(min(num_columns, len(usable)))]
    rows = ["relative noise", "clusters", "recomputed", "staleness"]
    fig, axes = plt.subplots(len(rows), len(picks), figsize=(1.5 * len(picks), 1.6 * len(rows)), squeeze=False)
    for c, i in enumerate(picks):
        maps = [data["noise_magnitude"][i], data["labels"], data["active"][min(i + 1, len(phases) - 1)],
                data["staleness"][i]]
        for r, (name, m) in enumerate(zip(rows, maps)):
            ax = axes[r][c]
            ax.imshow(np.asarray(m, dtype=float).reshape(h, w), cmap="tab20" if name == "clusters" else "viridis")
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(name, fontsize=7)
            if r == 0:
                ax.set_title(f"step {int(steps[i])}", fontsize=7)
    fig.suptitle("CAT selection (recomputed row: tokens chosen for the next step)", fontsize=8)
    return save(fig, path, pdf)


def save_selection(stats, path: Path, row: int = 0) -> None:
    """Writes one prompt's per-step selection statistics (a cat.GenerationStats) to `selection.npz`."""
    n = stats.num_image_tokens
    zeros = np.zeros(n, dtype=np.float32)
    pick = lambda t, dtype=np.float32: zeros.astype(dtype) if t is None else t[row].numpy().astype(dtype)  # noqa: E731
    np.savez_compressed(
        path,
        noise_magnitude=np.stack([pick(s.noise_magnitude) for s in stats.steps]),
        active=np.stack([pick(s.active, bool) if s.active is not None else np.ones(n, bool) for s in stats.steps]),
        staleness=np.stack([pick(s.staleness) for s in stats.steps]),
        labels=stats.labels[row].numpy() if stats.labels is not None else np.zeros(n, np.int64),
        grid=np.array(stats.grid),
        steps=np.array([s.step for s in stats.steps]),
        phases=np.array([s.phase for s in stats.steps]),
    )

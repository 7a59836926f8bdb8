"""Method settings run on a fixed prompt list and measured: executed MACs per prompt, and the comparison's
metrics (`experiments.metrics`, those registered with `comparison=True`) against the full model's images."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import numpy as np
from PIL import Image

import cat

from ..base.files import read_json, write_json
from ..metrics.registry import Metric, Scoring
from ..run.generate import batches, generate, image_path, link_images
from ..run.macs import read_batch_records
from .settings import setting_key

log = logging.getLogger(__name__)

FULL = "full.json"  # the full model's own per-prompt scores, beside the settings' `<key>.json` rows


class Bench:
    """Runs method settings on a fixed prompt list and measures them: executed MACs per prompt (counted on
    the batches that make the images, `experiments.run.generate.generate` with its `macs.jsonl`) and each of
    `metrics` per prompt (`experiments.metrics`: PSNR / SSIM against the full model, the adherence judge).

    Each setting's images and `<key>.json` are kept in `shared`, beside the full model's cached images of the
    same prompts (same model, seed, batches and code), so that another cell of the sweep asking for the same
    setting (CAT's authors' and shared-warm-up variants, a tuned setting equal to the authors') reads it
    instead of running it again; the run's own copy goes to `folder`. A setting a knob search only measures
    (`reduction`) runs on the first batch of the prompts, kept in `shared` alone."""

    def __init__(self, cfg, pipe, kwargs: dict, prompts, full_folder: Path, folder: Path, metrics: list[Metric]):
        self.cfg, self.pipe, self.kwargs, self.prompts = cfg, pipe, kwargs, prompts
        self.full_folder, self.folder, self.metrics = full_folder, folder, metrics
        self.shared = full_folder.with_name(full_folder.name + "-settings")
        self.memo: dict[str, dict] = {}
        self.searched: dict[str, float] = {}  # each setting a search measured: its first batch's mean reduction
        self._full = None

    def _generate(self, folder: Path, kwargs: dict, desc: str) -> tuple[list, list[float]]:
        """The prompts' images in `folder` (generated where missing, whole batches, counted) and each
        prompt's transformer MACs (its batch's count over the batch's size)."""
        generate(self.pipe, batches(self.prompts, self.cfg.batch_size), folder, self.cfg.seed, kwargs, desc=desc,
                 macs=True)
        per_prompt = {i: r["transformer_macs_per_prompt"] for r in read_batch_records(folder).values()
                      for i in r["indices"]}
        images = []
        for p in self.prompts:
            with Image.open(image_path(folder, p.index)) as image:
                images.append(image.convert("RGB"))
        return images, [per_prompt[p.index] for p in self.prompts]

    def full(self) -> tuple[list, list[float]]:
        """The full model's images and per-prompt MACs (the shared cache, generated where missing)."""
        if self._full is None:
            self._full = self._generate(self.full_folder, self.kwargs, "full model")
        return self._full

    def full_scores(self) -> dict:
        """The full model's own per-prompt values of the metrics that score each image on its own (adherence; not
        those against the full model): {"indices", <metric>: [...]}, so that a report can pair every method with
        the full model. Kept as `full.json` beside the settings' rows (`shared`) and in `folder`; computed from the
        cached full images where missing (a comparison made before it was kept)."""
        indices = [p.index for p in self.prompts]
        own = [m for m in self.metrics if not m.against_full]
        for folder in (self.folder, self.shared):
            row = read_json(folder / FULL)
            if row is not None and row.get("indices") == indices and all(m.name in row for m in own):
                if folder != self.folder:  # another cell of the sweep scored it: this run's folder may not exist yet
                    self.folder.mkdir(parents=True, exist_ok=True)
                    write_json(self.folder / FULL, row)
                return row
        images, _ = self.full()
        scoring = Scoring(images, self.prompts, None, self.cfg.data.name, self.cfg.metrics)
        row = {"indices": indices, **{m.name: [float(v) for v in m.compute(scoring)] for m in own}}
        for folder in (self.shared, self.folder):
            folder.mkdir(parents=True, exist_ok=True)
        write_json(self.shared / FULL, row)
        write_json(self.folder / FULL, row)
        return row

    def _found(self, key: str) -> tuple[Path, dict] | None:
        """The setting's row on these prompts and the folder that holds it (the run's, else the shared one)."""
        indices = [p.index for p in self.prompts]
        for folder in (self.folder, self.shared):
            row = read_json(folder / f"{key}.json")
            if row is not None and row.get("indices") == indices:
                return folder, row
        return None

    def _stored(self, key: str) -> dict | None:
        """The setting's row, copied into the run's folder with its images when another run made it.

        A row is written only after its images, so a row whose images are gone was carried without them
        (`scripts/sweep_carry.py`): its values stand (they were measured on those images) and the run's folder
        gets the row alone; nothing reads a setting's images after it is scored."""
        if (found := self._found(key)) is None:
            return None
        folder, row = found
        if folder != self.folder:
            present = [i for i in row["indices"] if image_path(folder / key, i).exists()]
            if len(present) < len(row["indices"]):
                log.info("compare: %s was carried without its images (%d of %d here): its row is reused as measured",
                         row.get("setting") or key, len(present), len(row["indices"]))
            link_images(folder / key, self.folder / key, present)
            write_json(self.folder / f"{key}.json", row)
        return row

    def run(self, config, label: str = "") -> dict:
        key = setting_key(config)
        if key in self.memo:
            return self.memo[key]
        if (row := self._stored(key)) is not None:
            self.memo[key] = {**row, "setting": label or row.get("setting", "")}
            return self.memo[key]
        full, full_macs = self.full()
        log.info("compare: %s on %d prompt(s): %s", type(config).name, len(self.prompts), label or key)
        with cat.apply(self.pipe, config) as handle:
            kwargs = {**self.kwargs, **handle.call_overrides(self.kwargs["num_inference_steps"])}
            images, macs = self._generate(self.shared / key, kwargs, type(config).name)
        row = {"key": key, "setting": label, "method": type(config).name,
               "config": json.loads(json.dumps(dataclasses.asdict(config), default=str)),
               "indices": [p.index for p in self.prompts], "transformer_macs": macs, "transformer_macs_full": full_macs,
               "reduction": [1.0 - m / f for m, f in zip(macs, full_macs)]}
        scoring = Scoring(images, self.prompts, full, self.cfg.data.name, self.cfg.metrics)
        for metric in self.metrics:
            row[metric.name] = [float(v) for v in metric.compute(scoring)]
        write_json(self.shared / f"{key}.json", row)  # after its images: its presence says the setting is complete
        link_images(self.shared / key, self.folder / key, row["indices"])
        write_json(self.folder / f"{key}.json", row)
        self.memo[key] = row
        return row

    def reduction(self, config, label: str = "") -> float:
        """The setting's mean executed-MACs reduction over the first batch of the prompts (over all of them when
        they make one batch), for a knob search: it needs no more than the MACs, and most settings it tries are
        never scored. A setting not yet run generates that batch alone; one scored later (`run`) generates only
        the batches it lacks, so no batch is made twice. The value is the same whether the setting was run
        whole or not (a resumed cell, another cell's run of it), so a search takes the same path either way; a
        row read here stays out of the run's folder, which holds the settings the run scored whatever ran
        before it."""
        key = setting_key(config)
        work = batches(self.prompts, self.cfg.batch_size)[:1]
        first = [p.index for p in work[0][1]]
        if len(first) == len(self.prompts):
            return float(np.mean(self.run(config, label)["reduction"]))
        if key not in self.searched:
            found = self._found(key)
            if found is None:
                _, full_macs = self.full()
                log.info("compare: %s on the first %d prompt(s): %s", type(config).name, len(first), label or key)
                with cat.apply(self.pipe, config) as handle:
                    kwargs = {**self.kwargs, **handle.call_overrides(self.kwargs["num_inference_steps"])}
                    generate(self.pipe, work, self.shared / key, self.cfg.seed, kwargs, desc=type(config).name,
                             macs=True)
                macs = read_batch_records(self.shared / key)[0]["transformer_macs_per_prompt"]
                reductions = [1.0 - macs / m for m in full_macs[:len(first)]]
            else:
                reductions = found[1]["reduction"][:len(first)]
            self.searched[key] = float(np.mean(reductions))
        return self.searched[key]

    def score(self, config, metric: Metric, label: str = "") -> float:
        """The setting's mean of `metric` over the prompts."""
        return float(np.mean(self.run(config, label)[metric.name]))

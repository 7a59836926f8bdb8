"""The sweep's lifecycle: a Hydra callback (conf/hydra/default.yaml) that lists the cells of a multirun as
they end and, when it ends, scrubs secrets from the sweep folder and writes the sweep's tables and reports
(`experiments.reports.sweeps.write_summary`)."""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
from filelock import FileLock
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import OmegaConf

from ..base.files import write_text
from ..base.secrets import override_secrets, scrub_tree, secret_values
from ..metrics.registry import ordered
from ..reports.loggers import make_sink
from ..reports.sweeps import COST, MANIFEST, write_summary
from ..run.latency import TRUST


class SweepSummary(Callback):
    """Writes the sweep's tables when the multirun ends; exits non-zero when a cell failed or the
    summary cannot be written (Hydra turns exceptions in callbacks into warnings, so this raises
    SystemExit, which it does not catch)."""

    def on_multirun_start(self, config, **kwargs) -> None:
        """Starts this run's list of cells (cells of earlier runs in the same directory are left out)."""
        sweep_dir = Path(config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        write_text(sweep_dir / MANIFEST, "")

    def on_job_end(self, config, job_return=None, **kwargs) -> None:
        """Each cell adds itself (launchers may run cells in other processes: appended under a lock)."""
        try:
            hydra = HydraConfig.get()
            if hydra.mode is None or str(hydra.mode) != "RunMode.MULTIRUN":
                return
            out = Path(hydra.runtime.output_dir)
        except Exception:  # not a Hydra job
            return
        with FileLock(str(out.parent / (MANIFEST + ".lock"))):
            with open(out.parent / MANIFEST, "a") as f:
                f.write(out.name + "\n")

    def on_multirun_end(self, config, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        plain = {k: OmegaConf.to_container(v) if OmegaConf.is_config(v) else v for k, v in config.items() if k != "hydra"}
        scrub_tree(sweep_dir, secret_values(plain) + override_secrets(list(config.hydra.overrides.task)))
        try:
            contrast = config.get("contrast")
            frame = write_summary(sweep_dir, reference=config.get("paired_reference"),
                                  contrast=OmegaConf.to_container(contrast) if contrast else None)
            self._report(config, sweep_dir, frame)
        except Exception as err:
            print(f"error: the sweep summary of {sweep_dir} could not be written: {type(err).__name__}: {err}",
                  file=sys.stderr)
            raise SystemExit(1) from err
        failed = 0 if frame.empty else int((frame.status != "done").sum())
        if frame.empty or failed:
            print(f"error: {failed if not frame.empty else 'all'} sweep cell(s) failed; see their status.json "
                  f"and {sweep_dir / 'summary.csv'}", file=sys.stderr)
            raise SystemExit(1)

    @staticmethod
    def _report(config, sweep_dir: Path, frame: pd.DataFrame) -> None:
        if frame.empty:
            return
        shown = ("status", *(c for m in ordered() for c in m.columns), *COST, *TRUST)
        cols = [c for c in shown if c in frame.columns]
        keys = [c for c in frame.columns if c not in cols and c not in ("cell", "error")
                and not pd.api.types.is_numeric_dtype(frame[c])]
        print(frame[keys + cols].to_string(index=False))
        if (sweep_dir / "trends.md").exists():
            print((sweep_dir / "trends.md").read_text())
        print(f"sweep table: {sweep_dir / 'summary.csv'} ({(frame.status == 'done').sum()} done, "
              f"{(frame.status == 'failed').sum()} failed)")
        sink = make_sink(dict(config.get("logger") or {}), "summary", config.get("group"), {}, sweep_dir)
        if sink is not None:
            sink.table("sweep_summary", frame)
            sink.finish()

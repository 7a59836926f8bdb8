"""Tests never touch the network and never log to W&B; one tiny run is shared by the tests that only read it."""

import os
from dataclasses import dataclass
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run much faster single-threaded on a shared CPU; restores the setting afterwards.
    A test module opts in with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


TINY_RUN = ("debug=tiny", "data.limit=2", "batch_size=2", "model.steps=4", "metrics.latency.repeats=2")


@dataclass(frozen=True)
class TinyRun:
    """One finished run of `python run.py <overrides> output_root=<output_root>`, made in process."""

    overrides: tuple[str, ...]
    output_root: Path
    run_dir: Path
    metrics: dict
    info: list[str]  # the INFO messages the run logged


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> TinyRun:
    """The tiny run (random-weight model, 2 prompts, 4 steps, latency timed) that tests only read; a test
    that changes it works on a copy of `output_root`."""
    import logging

    import torch

    from experiments.lifecycle import launch

    output_root, info = tmp_path_factory.mktemp("tiny_run"), []

    class Keep(logging.Handler):
        def emit(self, record):
            if record.levelno == logging.INFO:
                info.append(record.getMessage())

    handler, root, level, threads = Keep(logging.INFO), logging.getLogger(), logging.getLogger().level, \
        torch.get_num_threads()
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    torch.set_num_threads(1)
    try:
        run_dir, metrics = launch.run(*TINY_RUN, f"output_root={output_root}")
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
        torch.set_num_threads(threads)
    return TinyRun(TINY_RUN, output_root, run_dir, metrics, info)

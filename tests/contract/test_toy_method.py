"""Adding a method is one file in cat/methods/ and one YAML in conf/method/, with no other edit.

In a copy of the project, a toy method (every other transformer call returns the previous call's output)
is added as `cat/methods/toy.py` plus `conf/method/toy.yaml`. It is discovered (`cat.METHODS`), runs
through `python run.py method=toy debug=tiny ...` with fidelity and executed MACs in its metrics.json,
and the peers sweep visits it.
"""

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

TOY = '''
"""A toy method: every `interval`-th transformer call of a generation returns the previous call's output."""

from dataclasses import dataclass
from typing import ClassVar

from .base import MethodConfig, MethodHandle, check, is_int, register


class ToyHandle(MethodHandle):
    def _install(self):
        transformer, original = self.transformer, self.transformer.forward
        self._new_generation()

        def forward(*args, **kwargs):
            self.calls += 1
            if self.last is None or self.calls % self.config.interval:
                self.last = original(*args, **kwargs)
            return self.last

        transformer.forward = forward
        self._undo.append(lambda: delattr(transformer, "forward"))
        self.clock.observe_pipeline(self._undo)

    def _new_generation(self):
        self.calls, self.last = 0, None


@register
@dataclass(frozen=True)
class ToyConfig(MethodConfig):
    name: ClassVar[str] = "toy"
    handle: ClassVar[type] = ToyHandle
    interval: int = 2

    def __post_init__(self):
        check(is_int(self.interval) and self.interval >= 2, self, "interval", "an integer >= 2")

    @classmethod
    def examples(cls, num_steps):
        return cls(interval=num_steps + 1), cls()
'''

TOY_YAML = '''
defaults:
  - /method_fields@config: toy
  - _self_
name: toy
knob: interval
levels: [2, 3]
config:
  _target_: cat.methods.toy.ToyConfig
  interval: ${level:}
'''


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    copy = tmp_path_factory.mktemp("project")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for folder in ("cat", "experiments", "conf"):
        shutil.copytree(ROOT / folder, copy / folder, ignore=ignore)
    shutil.copy2(ROOT / "run.py", copy / "run.py")
    (copy / "cat" / "methods" / "toy.py").write_text(textwrap.dedent(TOY).lstrip())
    (copy / "conf" / "method" / "toy.yaml").write_text(textwrap.dedent(TOY_YAML).lstrip())
    return copy


def python(project: Path, *args: str) -> subprocess.CompletedProcess:
    paths = [str(project), *(p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths), "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, *args], cwd=project, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.mark.slow  # long: runs in CI's second step (pytest -m slow)
def test_a_toy_method_is_discovered_runs_and_joins_the_peers_sweep(project, tmp_path):
    code = ("import cat; from cat.methods.toy import ToyConfig; "
            "assert cat.METHODS['toy'] is ToyConfig and cat.__file__.startswith(r'%s'); print('found')" % project)
    assert "found" in python(project, "-c", code).stdout

    python(project, "run.py", "method=toy", "debug=tiny", "data.limit=2", "metrics.latency.enabled=false",
           f"output_root={tmp_path}")
    metrics = json.loads(next((tmp_path / "runs").rglob("metrics.json")).read_text())
    assert metrics["psnr"] > 0 and "transformer_macs" in metrics
    assert 0.3 < metrics["macs_reduction"] < 0.7  # every other call of 10 reuses the previous output

    sweep = ("from hydra import compose, initialize_config_dir; from experiments.lifecycle import resolvers; "
             "from experiments.base.config_files import CONF\n"
             "with initialize_config_dir(str(CONF), version_base='1.3'):\n"
             "    cfg = compose('config', overrides=['sweep=peers'], return_hydra_config=True)\n"
             "print(cfg.hydra.sweeper.params.method)")
    assert "toy" in python(project, "-c", sweep).stdout.strip().split(",")

"""What a user sees when something is wrong or slow: one-line errors for bad commands, prompt files and
output folders, no stub folders after a failed run, and a line for every long phase."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from experiments import resolvers  # noqa: F401
from experiments.checks import ConfigError, check_output_root
from experiments.command_line import check

ROOT = Path(__file__).resolve().parents[2]


def run(*args):
    env = {**os.environ, "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "run.py", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)


def one_line_error(proc) -> str:
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: "), proc.stderr
    return last


# unknown override keys ------------------------------------------------------------------------------------

def test_a_typo_in_a_sweep_started_the_documented_way_names_the_key(tmp_path):
    proc = run("sweep=keep_ratio", "method.config.keep_ratio=0.2,0.3", "method.config.warmup_stepz=3",
               f"output_root={tmp_path}")
    line = one_line_error(proc)
    assert "Ambiguous" not in proc.stderr
    assert line.startswith("error: method.config.warmup_stepz=3: no such setting for method=cat")
    assert "did you mean method.config.warmup_steps?" in line
    assert not list(tmp_path.iterdir())  # nothing was created


@pytest.mark.parametrize("argv, message", [
    (["-m", "method.config.keep_ratio=0.2,0.3", "methd.config.warmup_steps=3"],
     "methd.config.warmup_steps=3: no such setting (did you mean method.config.warmup_steps?); allowed top-level"),
    (["model=tiny_random", "model.stepz=2"], "model.stepz=2: no such setting for model=tiny_random (did you mean "
                                             "model.steps?); allowed under model: name,"),
    (["sweep=keep_ratio", "method.config.keep_ratioo=0.2,0.3"], "did you mean method.config.keep_ratio?"),
    (["seeed=1"], "to add a new key write +seeed=1"),
])
def test_unknown_override_keys_are_named_with_the_nearest_setting(argv, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        check(argv)


@pytest.mark.parametrize("argv", [
    [], ["sweep=keep_ratio", "method.config.keep_ratio=0.2,0.3"], ["sweep=peers"], ["debug=tiny", "data.limit=2"],
    ["-m", "method=fora,toca", "method.config.interval=2,3"],  # a key of every swept option but not the default's
    ["experiment=sd3_parti_28", "+model.load_kwargs.token=hf_x"], ["--help"],
    ["method=no_such_method"],  # left to Hydra, which lists the options
])
def test_valid_commands_and_problems_hydra_names_itself_pass(argv):
    check(argv)


# output_root ----------------------------------------------------------------------------------------------

def test_an_output_root_that_is_a_file_or_under_a_file_is_named(tmp_path):
    file = tmp_path / "results.txt"
    file.write_text("not a folder")
    with pytest.raises(ConfigError, match=r"output_root='.*results.txt' is a file; allowed: a folder"):
        check([f"output_root={file}"])
    with pytest.raises(ConfigError, match=r"output_root='.*results.txt/out' cannot be created: .*results.txt is a file"):
        check([f"output_root={file / 'out'}"])
    check([f"output_root={tmp_path / 'new' / 'folder'}"])


def test_a_read_only_output_root_is_named(tmp_path):
    folder = tmp_path / "read_only"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        if os.access(folder, os.W_OK):
            pytest.skip("this user (root) can write to a read-only folder")
        with pytest.raises(ConfigError, match="output_root='.*read_only' is not writable for this user"):
            check_output_root(folder)
        with pytest.raises(ConfigError, match="cannot be created: .*read_only is not writable"):
            check_output_root(folder / "out")
    finally:
        folder.chmod(0o755)

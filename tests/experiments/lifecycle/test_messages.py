"""What a user sees when something is wrong or slow: one-line errors for bad commands, prompt files and
output folders, no stub folders after a failed run, and a line for every long phase."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from experiments.base.config_files import ConfigError
from experiments.lifecycle import resolvers  # noqa: F401
from experiments.lifecycle.command_line import check
from experiments.tasks.validation import check_output_root, validate

ROOT = Path(__file__).resolve().parents[3]


def run(*args):
    env = {**os.environ, "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "run.py", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)


def cfg_of(*overrides):
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        return compose("config", overrides=list(overrides))


def one_line_error(proc) -> str:
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: "), proc.stderr
    return last


# unknown override keys ------------------------------------------------------------------------------------

@pytest.mark.slow  # long: runs in CI's second step (pytest -m slow)
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
    (["seeed=1"], "seeed=1: no such setting (did you mean seed?); allowed top-level settings: data, model,"),
    (["model.scheduler.shiftt=3"], "to add a new key write +model.scheduler.shiftt=3"),
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
    with pytest.raises(ConfigError, match=r"output_root='.*/out' cannot be created: .*results.txt is a file"):
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


# prompt files ---------------------------------------------------------------------------------------------

@pytest.mark.slow  # long: runs in CI's second step (pytest -m slow)
def test_a_prompt_file_that_is_not_utf8_is_one_line_and_leaves_no_run_folder(tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_bytes("a large red circle on the left\n".encode() + b"caf\xe9 on the right\n")
    proc = run("debug=tiny", f"output_root={tmp_path / 'out'}", f"data.path={prompts}")
    line = one_line_error(proc)
    assert line == (f"error: data.path='{prompts}' is not UTF-8 text (byte 0xe9 at offset 34); give a UTF-8 text "
                    "file with one prompt per line")
    assert not list((tmp_path / "out" / "runs").glob("*/*")), "a run that failed validation left a folder"


@pytest.mark.parametrize("content", ["", "\n  \n"])
def test_an_empty_prompt_file_names_data_path(tmp_path, content):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(content)
    with pytest.raises(ConfigError, match=r"data.path='.*prompts.txt' holds no prompts; give a UTF-8 text file"):
        validate(cfg_of("debug=tiny", f"data.path={prompts}"))


def test_a_prompt_file_of_the_wrong_format_names_data_path(tmp_path):
    tsv = tmp_path / "parti.tsv"
    tsv.write_text("Prompt\tCategory\na red cube\tObjects\n")
    with pytest.raises(ConfigError, match=r"data.path='.*parti.tsv' cannot be read as data=parti prompts "
                                          r"\(KeyError: 'Challenge'\); give a PartiPrompts.tsv"):
        validate(cfg_of("debug=tiny", "data=parti", f"data.path={tsv}", "metrics.adherence=false"))


def test_no_prompts_left_after_the_limit_names_data_path():
    with pytest.raises(ConfigError, match="the prompt set is empty: check data.path, data.limit"):
        validate(cfg_of("debug=tiny", "data.limit=0"))


# stub run folders -----------------------------------------------------------------------------------------

def test_only_a_stub_run_folder_is_removed(tmp_path):
    from experiments.base.files import remove_stub

    stub, done = tmp_path / "runs" / "a" / "stub", tmp_path / "runs" / "b" / "done"
    for folder in (stub, done):
        (folder / ".hydra").mkdir(parents=True)
        (folder / ".hydra" / "config.yaml").write_text("{}")
        (folder / "run.log").write_text("")
    (done / "metrics.json").write_text('{"psnr": 30}')
    assert remove_stub(stub) and not stub.parent.exists()
    assert not remove_stub(done)
    assert (done / "metrics.json").exists() and (done / ".hydra" / "config.yaml").exists()


# locks ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("folder, num_processes", [("runs/m-d-cat/default-0123", None), ("full_images/m-0123", 1)])
def test_waiting_for_a_lock_another_process_holds_is_logged(tmp_path, caplog, folder, num_processes):
    import threading
    import time

    from filelock import FileLock

    from experiments.base.files import lock

    path = tmp_path / folder / ".lock"
    path.parent.mkdir(parents=True)
    other = FileLock(path)  # another process: flock locks of two open files exclude each other
    other.acquire()
    entered = threading.Event()

    def wait():
        with lock(path, num_processes):
            entered.set()

    caplog.set_level("INFO", logger="experiments.base.files")
    thread = threading.Thread(target=wait)
    thread.start()
    for _ in range(200):
        if "waiting for" in caplog.text:
            break
        time.sleep(0.01)
    assert not entered.is_set()
    other.release()
    thread.join(10)
    assert entered.is_set()
    assert f"waiting for {path.parent} (another process holds its lock {path})" in caplog.text
    caplog.clear()
    with lock(path):  # free: no message
        pass
    assert "waiting" not in caplog.text


# temporaries ----------------------------------------------------------------------------------------------

def test_temporaries_below_the_run_folder_are_cleaned(tmp_path):
    from experiments.lifecycle.runs import run_task

    run_dir = tmp_path / "run"
    left = [run_dir / ".metrics.json.a.tmp", run_dir / "images" / "cat" / ".00000.png.b.tmp",
            run_dir / "images" / "full" / ".00001.png.c.tmp"]
    kept = [run_dir / "images" / "cat" / "00000.png", run_dir / "images" / "full" / "notes.tmp"]
    for path in left + kept:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"\x89PNG trunc")
    run_task(cfg_of("debug=tiny", "task=macs"), run_dir)
    assert [p for p in left if p.exists()] == []
    assert all(p.exists() for p in kept)


# progress of the long phases ------------------------------------------------------------------------------

def test_every_phase_after_generation_says_what_it_does(tiny_run):
    """The shared tiny run: 2 prompts, 4 steps, batches of 2, latency timed twice."""
    for expected in ("metrics: prompt adherence on 4 image(s) ...",
                     "metrics: PSNR, SSIM against the full model on 2 image(s) ...",
                     "timing: full model, 1 warm-up call(s) ...", "timing: cat, 1 warm-up call(s) ...",
                     "timing: full model, turn 1/2 ...", "timing: cat, turn 2/2 ..."):
        assert expected in tiny_run.info, (expected, tiny_run.info)


def test_info_lines_reach_the_console():
    """run.py logs through Hydra's job logging: INFO and above go to the console as well as run.log."""
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        logging = compose("config", return_hydra_config=True).hydra.job_logging
    assert logging.root.level == "INFO" and "console" in logging.root.handlers
    assert logging.handlers.console.get("level", "NOTSET") in ("NOTSET", "DEBUG", "INFO")

"""Run folders a failed or interrupted start leaves behind stay usable; a task's own error is the
one reported; a task class that cannot work is refused before anything is written."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO, subprocess_env
from tests.toy_tasks import RegressionTask, ToyPlugin
from vlattn.errors import PluginContractError, VlattnError
from vlattn.train import fit

QUIET = {"quiet": True, "tensorboard": False}


pytestmark = pytest.mark.usefixtures("toy_host")


def test_a_failing_training_step_is_reported_as_itself_and_nothing_runs_after_it(tmp_path: Path) -> None:
    ToyPlugin.events.clear()
    before = RegressionTask.evaluations
    with pytest.raises(RuntimeError, match="task bug at call 3"):
        fit("toy-regression", {"fail_at_step": 3}, {**QUIET, "epochs": 2}, tmp_path / "run")
    assert RegressionTask.evaluations == before  # no validation after the failed step
    assert ("end", "failed") in ToyPlugin.events
    assert not (tmp_path / "run" / "last.safetensors").exists()


def test_a_run_that_failed_before_its_first_checkpoint_can_be_started_again(tmp_path: Path) -> None:
    run = tmp_path / "run"
    with pytest.raises(RuntimeError):
        fit("toy-regression", {"fail_at_step": 1}, QUIET, run)
    assert (run / "config.json").is_file()
    result = fit("toy-regression", {}, {**QUIET, "epochs": 1}, run)  # the corrected command
    assert result.reason == "finished" and (run / "last.safetensors").is_file()
    with pytest.raises(VlattnError, match="already exists and holds more than an unstarted run"):
        fit("toy-regression", {}, QUIET, run)


def test_resume_of_a_run_without_checkpoint_starts_it_from_step_zero(tmp_path: Path) -> None:
    run = tmp_path / "run"
    with pytest.raises(RuntimeError):
        fit("toy-regression", {"fail_at_step": 1}, QUIET, run)
    config = json.loads((run / "config.json").read_text())
    config["task_config"]["fail_at_step"] = 0  # as if the data problem was fixed
    (run / "config.json").write_text(json.dumps(config))
    result = fit(None, None, {"epochs": 1}, run, resume=True)
    assert result.reason == "finished" and result.step == 8


def test_a_task_class_with_missing_methods_is_refused_before_the_run_folder_is_made(tmp_path: Path) -> None:
    with pytest.raises(PluginContractError, match="does not implement evaluate, training_step"):
        fit("toy-unfinished", {}, QUIET, tmp_path / "run")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda run: None, "run folder {run} does not exist"),
        (lambda run: run.write_text("x"), "{run} is a file, not a run folder"),
        (lambda run: (run.mkdir(), (run / "config.json").write_text("{not json")), "config.json is corrupt"),
        (lambda run: (run.mkdir(), (run / "config.json").write_text("[1, 2]")), "not a vlattn run configuration"),
    ],
)
def test_resume_errors_say_what_is_wrong(tmp_path: Path, setup: object, message: str) -> None:
    run = tmp_path / "run"
    setup(run)  # type: ignore[operator]
    with pytest.raises(VlattnError, match=message.format(run=run).replace(".", r"\.")):
        fit(None, None, None, run, resume=True)


def cli(*args: str, **popen: object) -> subprocess.Popen[str]:
    env = subprocess_env({"PYTHONPATH": str(REPO)})
    code = (
        "import sys; from tests.toy_tasks import ToyPlugin; from vlattn.plugins import get_host; "
        "get_host().add_plugin(ToyPlugin, 'toy'); from vlattn.cli import main; main(sys.argv[1:])"
    )
    return subprocess.Popen(
        [sys.executable, "-c", code, *args],
        env=env,
        cwd=REPO,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        **popen,  # type: ignore[arg-type]
    )


def test_cli_resume_of_a_missing_folder_is_one_line(tmp_path: Path) -> None:
    proc = cli("train", "--resume", str(tmp_path / "nosuchdir"))
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert err.strip() == f"vlattn: error: run folder {tmp_path / 'nosuchdir'} does not exist"


def test_sigterm_during_start_up_is_one_line_and_leaves_a_reusable_folder(tmp_path: Path) -> None:
    run = tmp_path / "run"
    # 2M examples: a start-up and a first epoch long enough to be stopped in
    proc = cli("train", "toy-regression", "--n", "2000000", "--out", str(run), "--quiet")
    deadline = time.monotonic() + 60
    while not (run / "config.json").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.2)
    os.kill(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode in (130, 0), err
    assert "Traceback" not in err
    if proc.returncode == 130:
        assert err.strip().splitlines()[-1].startswith(("vlattn: interrupted", "resume with: vlattn train --resume"))
    done = fit("toy-regression", {}, {**QUIET, "epochs": 1}, run) if not (run / "last.safetensors").exists() else None
    assert done is None or done.reason == "finished"


def test_without_a_terminal_each_epoch_prints_one_progress_line(tmp_path: Path) -> None:
    proc = cli("train", "toy-regression", "--epochs", "3", "--out", str(tmp_path / "run"))
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    lines = [line for line in err.splitlines() if line.startswith("toy-regression: step")]
    assert len(lines) == 3, err
    assert lines[-1].startswith("toy-regression: step 24/24 epoch 3 | train loss ") and "| val loss " in lines[-1]


def test_a_crash_between_weights_and_state_resumes_from_the_matching_pair(tmp_path: Path) -> None:
    """Simulates a kill -9 after last.safetensors of step 16 was written, before its trainer state:
    the previous weights (step 8) kept during the save match the state, so the resume is exact."""
    import shutil

    from safetensors.torch import load_file

    straight = fit("toy-regression", {}, {**QUIET, "epochs": 3}, tmp_path / "straight")
    run = tmp_path / "run"
    fit("toy-regression", {}, {**QUIET, "epochs": 1}, run)
    state = (run / "trainer_state.pt").read_bytes()
    rng = (run / "rng_state.rank0.pt").read_bytes()
    fit(None, None, {"epochs": 2}, run, resume=True)  # step 16 written...
    shutil.copy(run / "last.safetensors", tmp_path / "step16.safetensors")
    (run / "trainer_state.pt").write_bytes(state)  # ...but its state never was: step 8 on disk
    (run / "rng_state.rank0.pt").write_bytes(rng)
    with pytest.raises(VlattnError, match=r"trainer state is from step 8 but last\.safetensors is from step 16"):
        fit(None, None, {"epochs": 3}, run, resume=True)
    # with the copy the trainer keeps during a save, the pair matches
    fit("toy-regression", {}, {**QUIET, "epochs": 1}, tmp_path / "again")
    shutil.copy(tmp_path / "again" / "last.safetensors", run / "last.previous.safetensors")
    shutil.copy(tmp_path / "step16.safetensors", run / "last.safetensors")
    result = fit(None, None, {"epochs": 3}, run, resume=True)
    assert result.step == 24 and not (run / "last.previous.safetensors").exists()
    for name, value in load_file(str(straight.last_path)).items():
        assert torch.equal(value, load_file(str(result.last_path))[name]), name


def test_a_stale_rng_file_resumes_with_a_warning(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    fit("toy-regression", {}, {**QUIET, "epochs": 1}, run)
    rng = (run / "rng_state.rank0.pt").read_bytes()
    fit(None, None, {"epochs": 2}, run, resume=True)
    (run / "rng_state.rank0.pt").write_bytes(rng)  # the RNG file of step 8 beside the state of step 16
    result = fit(None, None, {"epochs": 3}, run, resume=True)
    assert result.step == 24
    assert "the RNG state is from step 8, the trainer state from step 16" in capsys.readouterr().err

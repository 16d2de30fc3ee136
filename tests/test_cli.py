"""The command line: fast start without torch, generated options, one-line errors, eval, resume."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import subprocess_env


def vlattn(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the CLI in this process (``env`` is already applied by the fixtures) and capture its output."""
    import contextlib
    import io

    from vlattn.cli import main

    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(list(args))
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
    return subprocess.CompletedProcess(list(args), code, out.getvalue(), err.getvalue())


def assert_one_line_error(proc: subprocess.CompletedProcess[str], code: int, fragment: str) -> None:
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    assert fragment in proc.stderr


@pytest.mark.parametrize("args", [["--help"], ["plugins"], ["list"], ["train", "--help"], ["--version"]])
def test_light_commands_import_no_torch(args: list[str]) -> None:
    code = "\n".join(
        [
            "import sys",
            "from vlattn.cli import main",
            "try:",
            f"    main({args!r})",
            "except SystemExit as e:",
            "    assert not e.code, e.code",
            "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH', file=sys.stderr)",
        ]
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=subprocess_env(), timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == "NO-TORCH"


def test_version_and_list_json() -> None:
    assert vlattn("--version").stdout.strip().startswith("vlattn ")
    listing = json.loads(vlattn("list", "--json").stdout)
    names = {m["name"]: m["plugin"] for m in listing["attention"]}
    assert names["additive"] == "attention"


def test_unknown_task_suggests(example_plugin: dict[str, str]) -> None:
    proc = vlattn("train", "find-markr", env=example_plugin)
    assert_one_line_error(proc, 2, "did you mean 'find-marker'")


def test_train_help_lists_task_and_trainer_options(example_plugin: dict[str, str]) -> None:
    proc = vlattn("train", "find-marker", "--help", env=example_plugin)
    assert proc.returncode == 0, proc.stderr
    for flag in ("--attention", "--vocab-size", "--epochs", "--lr", "--resume", "--config", "--out", "--deterministic"):
        assert flag in proc.stdout, flag
    assert "[default: 0.01]" in proc.stdout  # the task's own trainer default for --lr


def test_bad_option_values_are_usage_errors(example_plugin: dict[str, str], tmp_path: Path) -> None:
    assert_one_line_error(
        vlattn("train", "find-marker", "--epochs", "many", env=example_plugin), 2, "'many' is not a valid integer"
    )
    assert_one_line_error(
        vlattn("train", "find-marker", "--batch-size", "0", "--out", str(tmp_path / "r"), env=example_plugin),
        1,
        "batch_size must be > 0",
    )
    assert_one_line_error(
        vlattn("train", "find-marker", "--attention", "additiv", "--out", str(tmp_path / "r2"), env=example_plugin),
        1,
        "did you mean 'additive'",
    )


def test_toml_config_overrides_and_eval(example_plugin: dict[str, str], tmp_path: Path) -> None:
    config = tmp_path / "run.toml"
    config.write_text("[task]\ndim = 12\ntrain-size = 256\n[trainer]\nepochs = 1\nquiet = true\nlr = 0.02\n")
    out = tmp_path / "run"
    proc = vlattn("train", "find-marker", "-c", str(config), "--epochs", "6", "--out", str(out), env=example_plugin)
    assert proc.returncode == 0, proc.stderr
    saved = json.loads((out / "config.json").read_text())
    assert saved["task_config"]["dim"] == 12 and saved["task_config"]["train_size"] == 256
    assert saved["trainer"]["epochs"] == 6 and saved["trainer"]["lr"] == 0.02
    result = json.loads(vlattn("eval", str(out), "--json", env=example_plugin).stdout)
    assert result["task"] == "find-marker" and result["accuracy"] > 0.9
    text = vlattn("eval", str(out / "last.safetensors"), env=example_plugin).stdout
    assert "accuracy" in text


def test_bad_config_file_and_model_files(example_plugin: dict[str, str], tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("epochs = [")
    assert_one_line_error(vlattn("train", "find-marker", "-c", str(bad), env=example_plugin), 1, "is not valid TOML")
    typo = tmp_path / "typo.toml"
    typo.write_text("epoch = 3\n")
    assert_one_line_error(
        vlattn("train", "find-marker", "-c", str(typo), env=example_plugin), 1, "did you mean 'epochs'"
    )
    assert_one_line_error(vlattn("eval", str(tmp_path / "missing.safetensors")), 1, "model file not found")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00\x01 not a model")
    assert_one_line_error(vlattn("eval", str(junk)), 1, "not a readable .safetensors model file")
    assert_one_line_error(vlattn("eval", str(tmp_path)), 1, "holds no best.safetensors")


def test_sigint_saves_and_resume_continues(example_plugin: dict[str, str], tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = ["train", "find-marker", "--out", str(out), "--epochs", "0", "--max-steps", "100000", "--eval-every", "5",
            "--log-every", "1", "--quiet", "--train-size", "64"]  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-m", "vlattn", *args], env=subprocess_env(example_plugin), stderr=subprocess.PIPE, text=True
    )
    deadline = time.time() + 120
    while time.time() < deadline and not (out / "trainer_state.pt").exists():
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "resume with: vlattn train --resume" in err and "Traceback" not in err
    import torch

    step = torch.load(out / "trainer_state.pt", weights_only=True)["progress"]["step"]
    from safetensors import safe_open

    with safe_open(str(out / "last.safetensors"), "pt") as fh:
        assert json.loads(fh.metadata()["vlattn.info"])["step"] == step > 0
    resumed = vlattn("train", "find-marker", "--resume", str(out), "--max-steps", str(step + 3), env=example_plugin)
    assert resumed.returncode == 0, resumed.stderr
    assert f"finished at step {step + 3}" in resumed.stderr
    assert_one_line_error(
        vlattn("train", "find-marker", "--resume", str(out), "--dim", "8", env=example_plugin),
        1,
        "cannot change on --resume",
    )


def test_errors_of_several_items_are_one_line_each() -> None:
    import click
    from click.testing import CliRunner

    from vlattn.cli import VlattnGroup
    from vlattn.errors import ItemErrors

    @click.group(cls=VlattnGroup)
    def root() -> None:
        pass

    @root.command("many")
    def many() -> None:
        click.echo("done: c")
        raise ItemErrors(["a: no such file", "b: not an image\n(details)"])

    result = CliRunner().invoke(root, ["many"])
    assert result.exit_code == 1
    assert result.stdout == "done: c\n"
    assert result.stderr.splitlines() == ["vlattn: error: a: no such file", "vlattn: error: b: not an image"]

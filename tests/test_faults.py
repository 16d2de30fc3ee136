"""Fault injection through the command line: full disks, kill -9 mid-save, damaged and tampered
files, closed stdin, odd options. Every fixable failure must be one ``vlattn: error:`` line with exit
status 1 (2 for usage errors), never a traceback, and what was saved before must still load."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import pickle
import random
import resource
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import subprocess_env
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from vlattn_text.predict import BUNDLED_MODEL as TEXT_MODEL

from vlattn.checkpoint import load_model, read_header, save_model
from vlattn.errors import VlattnError
from vlattn.fileio import WriteError, atomic_write_text
from vlattn.train.state import STATE_FILE, load_state

MEMORY_LIMIT = 16 << 30  # subprocesses that must not allocate much get this address-space limit


def vlattn(
    *args: str,
    stdin: bytes | None = None,
    umask: int | None = None,
    memory_limit: int | None = None,
    timeout: float = 300,
) -> subprocess.CompletedProcess[str]:
    """``python -m vlattn ARGS`` in a fresh process (text out)."""

    def setup() -> None:
        if umask is not None:
            os.umask(umask)
        if memory_limit is not None:
            resource.setrlimit(resource.RLIMIT_AS, (memory_limit, memory_limit))

    proc = subprocess.run(
        [sys.executable, "-m", "vlattn", *args],
        input=stdin,
        capture_output=True,
        env=subprocess_env(),
        timeout=timeout,
        preexec_fn=setup,
    )
    return subprocess.CompletedProcess(proc.args, proc.returncode, proc.stdout.decode(), proc.stderr.decode())


def assert_one_error(proc: subprocess.CompletedProcess[str], code: int, *fragments: str) -> str:
    """Exit ``code``, no traceback, exactly one ``vlattn: error:`` line holding every fragment."""
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr and "internal error" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("vlattn: error:")]
    assert len(errors) == 1, proc.stderr
    others = [line for line in proc.stderr.splitlines() if line and not line.startswith(("vlattn: error:", "note:"))]
    assert not others, proc.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


def retag(source: Path, target: Path, **changes: Callable[[str], str] | str | None) -> Path:
    """Copy the model file ``source`` to ``target`` with metadata keys changed (``vlattn_task`` names
    ``vlattn.task``; a callable maps the old value, ``None`` deletes the key)."""
    with safe_open(str(source), framework="pt") as fh:
        meta = dict(fh.metadata() or {})
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118
    for key, change in changes.items():
        name = key.replace("_", ".", 1)
        if change is None:
            meta.pop(name, None)
        else:
            meta[name] = change(meta[name]) if callable(change) else change
    save_file(tensors, str(target), metadata=meta)
    return target


def config_with(**values: Any) -> Callable[[str], str]:
    return lambda text: json.dumps({**json.loads(text), **values})


@contextlib.contextmanager
def tiny_disk(folder: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` mounted on ``folder``; skips the test where mounting is not permitted."""
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("a small disk needs root (mount -t tmpfs)")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def tiny_text_data(folder: Path, n: int = 64) -> Path:
    rng = random.Random(0)
    rows = []
    for i in range(n):
        cue = rng.choice(["great", "love"] if i % 2 else ["awful", "broken"])
        words = [*rng.sample(["the", "phone", "was", "it", "food"], 2), cue]
        rows.append(" ".join(words) + f"\t{i % 2}")
    path = folder / "tiny.txt"
    path.write_text("\n".join(rows) + "\n")
    return path


def train_args(data: Path, out: Path, epochs: int = 1, size: int = 8) -> list[str]:
    return [
        "train", "text-classifier", "--data", str(data), "--epochs", str(epochs), "--embed-dim", str(size),
        "--hidden-size", str(size), "--subword-buckets", "0", "--seed", "3", "--quiet", "--out", str(out),
    ]  # fmt: skip


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The same small training run twice, each in a fresh process, under umask 022."""
    root = tmp_path_factory.mktemp("runs")
    data = tiny_text_data(root)
    for name in ("a", "b"):
        proc = vlattn(*train_args(data, root / name), umask=0o022)
        assert proc.returncode == 0, proc.stderr
    return root / "a", root / "b"


# --- files: permissions and byte-reproducible model files ----------------------------------------


def test_run_files_get_normal_permissions(two_runs: tuple[Path, Path]) -> None:
    run, _ = two_runs
    names = {p.name: stat.S_IMODE(p.stat().st_mode) for p in run.iterdir() if p.is_file()}
    assert {"config.json", "metrics.csv", "last.safetensors", STATE_FILE} <= set(names)
    assert set(names.values()) == {0o644}, names


def test_identical_runs_give_identical_model_files(two_runs: tuple[Path, Path]) -> None:
    a, b = two_runs
    for name in ("last.safetensors", "best.safetensors"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def test_rewrite_keeps_the_mode_of_the_file_it_replaces(tmp_path: Path) -> None:
    path = tmp_path / "notes.json"
    path.write_text("{}")
    path.chmod(0o640)
    atomic_write_text(path, '{"a": 1}')
    assert stat.S_IMODE(path.stat().st_mode) == 0o640 and json.loads(path.read_text()) == {"a": 1}


def test_draw_outputs_follow_the_umask_and_never_replace_a_foreign_png(tmp_path: Path) -> None:
    out = tmp_path / "x.gif"
    photo = tmp_path / "x.png"
    Image.new("RGB", (4, 4), (1, 2, 3)).save(photo)
    before = photo.read_bytes()
    refused = vlattn("draw", "--steps", "2", "--num", "4", "--out", str(out), umask=0o027)
    assert_one_error(refused, 1, str(photo), "not written by vlattn draw")
    assert photo.read_bytes() == before and not out.exists()

    fresh = tmp_path / "fresh.gif"
    drawn = vlattn("draw", "--steps", "2", "--num", "4", "--out", str(fresh), umask=0o027)
    assert drawn.returncode == 0, drawn.stderr
    for path in (fresh, fresh.with_suffix(".png")):
        assert stat.S_IMODE(path.stat().st_mode) == 0o640, path
    again = vlattn("draw", "--steps", "3", "--num", "4", "--out", str(fresh))  # replaces its own pictures
    assert again.returncode == 0 and "3 frames" in again.stdout, again.stderr


# --- disk full ---------------------------------------------------------------------------------


def small_model(width: int) -> torch.nn.Module:
    torch.manual_seed(width)
    return torch.nn.Linear(width, 64)


def test_disk_full_is_one_error_and_the_previous_model_file_survives(tmp_path: Path) -> None:
    with tiny_disk(tmp_path / "disk", "256k") as disk:
        target = disk / "last.safetensors"
        save_model(target, small_model(16), task_name="toy", config={})
        before = target.read_bytes()
        with pytest.raises(WriteError) as info:
            save_model(target, small_model(2000), task_name="toy", config={})  # 512 kB: does not fit
        message = str(info.value)
        assert message == f"cannot write {target}: the disk is full; the previous {target} is intact"
        assert target.read_bytes() == before
        assert [p.name for p in disk.iterdir()] == ["last.safetensors"]  # no temporary file left behind
        assert load_file(str(target))["weight"].shape == (64, 16)


def test_a_writer_failing_midway_keeps_the_previous_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same guarantee where no small disk can be mounted: the model writer fails half way."""
    import vlattn.checkpoint as checkpoint

    target = tmp_path / "last.safetensors"
    save_model(target, small_model(16), task_name="toy", config={})
    before = target.read_bytes()

    def half_then_full(path: Path, data: bytes) -> None:
        path.write_bytes(data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint, "write_canonical", half_then_full)
    with pytest.raises(WriteError, match=r"the disk is full; the previous .*last\.safetensors is intact"):
        save_model(target, small_model(32), task_name="toy", config={})
    assert target.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["last.safetensors"]
    monkeypatch.undo()
    with pytest.raises(WriteError, match=r"no fresh\.safetensors was written"):
        monkeypatch.setattr(checkpoint, "write_canonical", half_then_full)
        save_model(tmp_path / "fresh.safetensors", small_model(32), task_name="toy", config={})


@pytest.mark.slow
def test_disk_full_during_training_is_one_line_and_the_checkpoint_loads(tmp_path: Path) -> None:
    data = tiny_text_data(tmp_path)
    with tiny_disk(tmp_path / "disk", "1800k") as disk:  # room for one set of checkpoints, not two
        run = disk / "run"
        proc = vlattn(*train_args(data, run, epochs=4, size=64))
        line = assert_one_error(proc, 1, "the disk is full", "is intact")
        assert str(run) in line
        loaded = load_model(run / "last.safetensors")
        assert loaded.header.info["step"] > 0


# --- kill -9 during a save ---------------------------------------------------------------------

SAVER = """
import sys, torch
from vlattn.checkpoint import save_model
target = sys.argv[1]
for i in range(10_000):
    model = torch.nn.Linear(512, 1024)
    torch.nn.init.constant_(model.weight, float(i)); torch.nn.init.constant_(model.bias, float(i))
    save_model(target, model, task_name="toy", config={"i": i})
    print(i, flush=True)
"""


def test_kill_9_during_saves_leaves_a_loadable_file(tmp_path: Path) -> None:
    target = tmp_path / "last.safetensors"
    rng = random.Random(0)
    for _ in range(2):
        proc = subprocess.Popen(
            [sys.executable, "-c", SAVER, str(target)], stdout=subprocess.PIPE, env=subprocess_env(), text=True
        )
        assert proc.stdout is not None
        proc.stdout.readline()  # one save done
        time.sleep(rng.uniform(0.0, 0.3))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        header = read_header(target)  # a whole file: the old one or the new one, never a mixture
        weights = load_file(str(target))
        i = header.config["i"]
        assert torch.equal(weights["weight"], torch.full((1024, 512), float(i)))
        assert torch.equal(weights["bias"], torch.full((1024,), float(i)))


# --- damaged and tampered files ------------------------------------------------------------------


@pytest.fixture(scope="module")
def damaged_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    if not TEXT_MODEL.is_file():
        pytest.skip("bundled sentiment model not built")
    root = tmp_path_factory.mktemp("damaged")
    raw = TEXT_MODEL.read_bytes()
    files = {
        "truncated": raw[: len(raw) // 2],
        "header-only": raw[:200],
        "empty": b"",
        "garbage": bytes(random.Random(1).getrandbits(8) for _ in range(4096)),
    }
    paths = {}
    for name, data in files.items():
        paths[name] = root / f"{name}.safetensors"
        paths[name].write_bytes(data)
    paths["absurd"] = retag(TEXT_MODEL, root / "absurd.safetensors", vlattn_config=config_with(hidden_size=10**7))
    paths["artifacts"] = retag(
        TEXT_MODEL,
        root / "artifacts.safetensors",
        vlattn_artifacts=lambda t: json.dumps({**json.loads(t), "tokenizer": 7}),
    )
    paths["artifacts-json"] = retag(TEXT_MODEL, root / "artifacts-json.safetensors", vlattn_artifacts="{not json")
    paths["future"] = retag(TEXT_MODEL, root / "future.safetensors", vlattn_format="2", vlattn_version="9.0")
    paths["foreign"] = retag(TEXT_MODEL, root / "foreign.safetensors", vlattn_format=None)
    return paths


@pytest.mark.parametrize(
    ("name", "fragment"),
    [
        ("truncated", "not a readable .safetensors model file"),
        ("header-only", "not a readable .safetensors model file"),
        ("empty", "not a readable .safetensors model file"),
        ("garbage", "not a readable .safetensors model file"),
        ("absurd", "the file holds"),
        ("artifacts", "corrupt artifacts"),
        ("artifacts-json", "vlattn.artifacts is not JSON"),
        ("future", "newer vlattn (9.0, model format 2); upgrade"),
        ("foreign", "not a vlattn model"),
    ],
)
def test_damaged_model_files_are_one_line(damaged_models: dict[str, Path], name: str, fragment: str) -> None:
    from click.testing import CliRunner

    from vlattn.cli import build_cli

    result = CliRunner().invoke(build_cli(), ["classify", "--model", str(damaged_models[name]), "fine"])
    proc = subprocess.CompletedProcess([], result.exit_code, result.stdout, result.stderr)
    assert_one_error(proc, 1, fragment, str(damaged_models[name]))


def test_damaged_model_files_in_a_fresh_process(damaged_models: dict[str, Path]) -> None:
    """Through the real entry point, with memory capped: an absurd config fails in one line, before
    the model is built (building it would ask for terabytes)."""
    absurd = vlattn("classify", "--model", str(damaged_models["absurd"]), "fine", memory_limit=MEMORY_LIMIT)
    assert_one_error(absurd, 1, "the file holds", "the config gives")


def test_absurd_sizes_are_refused_before_anything_is_built(damaged_models: dict[str, Path]) -> None:
    from vlattn.checkpoint import check_shapes  # noqa: F401 (the check exists and runs first)

    start = time.perf_counter()
    with pytest.raises(VlattnError, match=r"hidden_size|the file holds \[.*\], the config gives"):
        load_model(damaged_models["absurd"])
    assert time.perf_counter() - start < 30


def test_tampered_trainer_state_is_refused_in_one_line(two_runs: tuple[Path, Path], tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    for path in two_runs[0].iterdir():
        if path.is_file():
            (run / path.name).write_bytes(path.read_bytes())
    state = run / STATE_FILE
    good = state.read_bytes()

    state.write_bytes(good[: len(good) // 3])
    with pytest.raises(VlattnError, match="truncated or corrupt"):
        load_state(run, 0)

    state.write_bytes(pickle.dumps({"progress": Path("/etc/passwd")}))
    with pytest.raises(VlattnError, match="does not unpickle"):
        load_state(run, 0)
    proc = vlattn("train", "--resume", str(run))
    assert_one_error(proc, 1, str(state), "does not unpickle")

    torch.save({"progress": {}}, state)
    with pytest.raises(VlattnError, match="not a vlattn trainer state"):
        load_state(run, 0)


# --- stdin, options, help ----------------------------------------------------------------------


@pytest.mark.skipif(not TEXT_MODEL.is_file(), reason="bundled sentiment model not built")
def test_classify_with_stdin_closed() -> None:
    proc = subprocess.run(
        ["sh", "-c", 'exec "$0" -m vlattn classify - <&-', sys.executable],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        timeout=120,
    )
    assert_one_error(subprocess.CompletedProcess(proc.args, proc.returncode, proc.stdout, proc.stderr), 1, "stdin")


def test_usage_errors_of_plugin_commands_exit_2(tmp_path: Path) -> None:
    out = str(tmp_path / "x.gif")
    assert_one_error(vlattn("draw", "--steps", "0", "--out", out), 2, "--steps", "vlattn draw --help")
    assert_one_error(vlattn("classify"), 2, "nothing to classify")
    start = time.perf_counter()
    huge = vlattn("draw", "--num", "1024", "--steps", "1000", "--out", out, memory_limit=MEMORY_LIMIT, timeout=120)
    assert_one_error(huge, 2, "GiB of GIF frames", "lower --num, --steps or --scale")
    assert time.perf_counter() - start < 60 and not Path(out).exists()


def test_help_keeps_whole_summaries() -> None:
    proc = vlattn("--help")
    assert proc.returncode == 0
    draw = next(line for line in proc.stdout.splitlines() if line.strip().startswith("draw "))
    assert "Gregor et al. 2015" in draw, proc.stdout


# --- signals during training ---------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_mid_training_saves_and_the_run_resumes(tmp_path: Path, signum: int) -> None:
    data = tiny_text_data(tmp_path, n=256)
    run = tmp_path / "run"
    args = [*train_args(data, run, epochs=30, size=32), "--batch-size", "4", "--eval-every", "5"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "vlattn", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=subprocess_env()
    )
    deadline = time.monotonic() + 120
    while not (run / STATE_FILE).exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)  # the first checkpoint is written
    time.sleep(random.Random(int(signum)).uniform(0.0, 1.0))  # then anywhere: in a step, a validation, a save
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err.decode()  # the run is far from done when the signal comes
    assert "Traceback" not in err.decode()
    stopped_at = read_header(run / "last.safetensors").info["step"]
    resumed = vlattn("train", "--resume", str(run))
    assert resumed.returncode == 0, resumed.stderr
    assert read_header(run / "last.safetensors").info["step"] >= stopped_at
    load_model(run / "last.safetensors")

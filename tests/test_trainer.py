"""The common trainer: run folder, exact resume, accumulation, divergence, early stopping."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.toy_tasks import ToyPlugin
from vlattn.errors import TrainingDivergedError, VlattnError
from vlattn.train import fit

pytestmark = pytest.mark.usefixtures("toy_host")


def quiet(**kw: object) -> dict[str, object]:
    return {"quiet": True, "tensorboard": False, **kw}


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def test_run_folder_contents(tmp_path: Path) -> None:
    result = fit("toy-regression", {}, quiet(epochs=3), tmp_path / "run")
    run = tmp_path / "run"
    assert result.reason == "finished" and result.step == 3 * 8
    for name in (
        "config.json",
        "metrics.jsonl",
        "metrics.csv",
        "last.safetensors",
        "best.safetensors",
        "trainer_state.pt",
    ):
        assert (run / name).exists(), name
    config = json.loads((run / "config.json").read_text())
    assert config["task"] == "toy-regression" and config["trainer"]["epochs"] == 3
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in rows if r["split"] == "val"]
    assert len(val) == 3 and val[-1]["loss"] < val[0]["loss"]
    header = (run / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"step", "split", "loss", "lr", "examples_per_s"} <= set(header)


def test_existing_run_folder_is_refused(tmp_path: Path) -> None:
    fit("toy-regression", {}, quiet(epochs=1), tmp_path / "run")
    with pytest.raises(VlattnError, match="already exists"):
        fit("toy-regression", {}, quiet(epochs=1), tmp_path / "run")


@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_resume_is_bit_exact(tmp_path: Path, dropout: float) -> None:
    task = {"dropout": dropout}
    straight = fit("toy-regression", task, quiet(epochs=0, max_steps=20, eval_every=3), tmp_path / "a")
    fit("toy-regression", task, quiet(epochs=0, max_steps=7, eval_every=3), tmp_path / "b")
    resumed = fit(None, None, {"max_steps": 20}, tmp_path / "b", resume=True)
    assert straight.step == resumed.step == 20
    a, b = weights(tmp_path / "a" / "last.safetensors"), weights(tmp_path / "b" / "last.safetensors")
    for key in a:
        assert torch.equal(a[key], b[key]), key
    steps = [json.loads(x)["step"] for x in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(steps)


def test_gradient_accumulation_matches_big_batch(tmp_path: Path) -> None:
    fit("toy-regression", {}, quiet(epochs=2, batch_size=16, optimizer="sgd", lr=0.05), tmp_path / "big")
    fit("toy-regression", {}, quiet(epochs=2, batch_size=8, grad_accum=2, optimizer="sgd", lr=0.05), tmp_path / "acc")
    big, acc = weights(tmp_path / "big" / "last.safetensors"), weights(tmp_path / "acc" / "last.safetensors")
    for key in big:
        torch.testing.assert_close(big[key], acc[key], rtol=1e-5, atol=1e-6)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path: Path) -> None:
    run = tmp_path / "run"
    with pytest.raises(TrainingDivergedError, match=r"loss became nan at step 11.*last good checkpoint"):
        fit("toy-regression", {"nan_at_step": 11}, quiet(epochs=3), run)
    info = json.loads(
        __import__("safetensors").safe_open(str(run / "last.safetensors"), "pt").metadata()["vlattn.info"]
    )
    assert info["step"] == 8  # the end of the first epoch, before the NaN
    assert all(torch.isfinite(t).all() for t in weights(run / "last.safetensors").values())


def test_early_stopping_with_patience(tmp_path: Path) -> None:
    result = fit(
        "toy-regression", {"flat_metric": True}, quiet(epochs=50, patience=2, early_stop="score"), tmp_path / "r"
    )
    assert result.reason == "early_stop" and result.step == 3 * 8  # best at the first evaluation, 2 more


def test_bf16_autocast_and_clipping_and_schedule(tmp_path: Path) -> None:
    result = fit(
        "toy-regression",
        {},
        quiet(epochs=2, precision="bf16", grad_clip=0.5, schedule="cosine", warmup_steps=3, optimizer="adamw"),
        tmp_path / "r",
    )
    assert result.reason == "finished"
    rows = [json.loads(x) for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r["split"] == "train"]
    assert "grad_norm" in train[0]
    assert train[-1]["lr"] < train[3]["lr"]  # cosine decay after warm-up


def test_fp16_needs_cuda(tmp_path: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    with pytest.raises(VlattnError, match="fp16 needs a CUDA device"):
        fit("toy-regression", {}, quiet(precision="fp16"), tmp_path / "r")


def test_no_validation_split_still_checkpoints(tmp_path: Path) -> None:
    result = fit("toy-regression", {"with_val": False}, quiet(epochs=2), tmp_path / "r")
    assert result.last_path.exists() and result.best_path is None


def test_unknown_early_stop_metric_is_explained(tmp_path: Path) -> None:
    with pytest.raises(VlattnError, match="metric 'bleu' is not among the validation metrics"):
        fit("toy-regression", {}, quiet(epochs=1, early_stop="bleu"), tmp_path / "r")


def test_trainer_events_reach_plugins(tmp_path: Path) -> None:
    ToyPlugin.events.clear()
    fit("toy-regression", {}, quiet(epochs=2), tmp_path / "r")
    kinds = [k for k, _ in ToyPlugin.events]
    assert kinds[0] == "start" and kinds[-1] == "end" and ToyPlugin.events[-1] == ("end", "finished")
    assert ("checkpoint", (16, True)) in ToyPlugin.events and "metrics" in kinds


def test_eval_command_takes_task_options(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from vlattn.cli import main

    fit("toy-regression", {}, quiet(epochs=1), tmp_path / "r")
    main(["eval", str(tmp_path / "r"), "--json"])
    plain = json.loads(capsys.readouterr().out)["loss"]
    main(["eval", str(tmp_path / "r"), "--json", "--scale", "3"])
    assert json.loads(capsys.readouterr().out)["loss"] == pytest.approx(3 * plain)
    main(["eval", str(tmp_path / "r"), "--help-task"])  # returns: exit status 0
    assert "--scale FLOAT" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        main(["eval", str(tmp_path / "r"), "--scal", "3"])
    assert exc.value.code == 2 and "Did you mean '--scale'" in capsys.readouterr().err


def test_adam_takes_the_fused_update_on_a_cpu_and_matches_the_default_one() -> None:
    from vlattn.train.optim import build_optimizer, fused_adam_supported
    from vlattn.train.trainer_config import TrainerConfig

    torch.manual_seed(0)
    start = [torch.randn(40, 30), torch.randn(30)]
    results = []
    for fused in (True, False):
        params = [torch.nn.Parameter(t.clone()) for t in start]
        cfg = TrainerConfig(optimizer="adamw", lr=1e-2, weight_decay=0.1)
        optimizer = build_optimizer(params, cfg)
        assert optimizer.defaults["fused"] is True
        if not fused:
            optimizer = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.1)
        for step in range(5):
            for p in params:
                p.grad = torch.sin(p.detach() * (step + 1))
            versions = [p._version for p in params]
            optimizer.step()
            assert all(p._version > v for p, v in zip(params, versions, strict=True))  # caches see the write
        results.append([p.detach() for p in params])
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    assert not fused_adam_supported([torch.nn.Parameter(torch.ones(2, dtype=torch.float64)), torch.ones(2, 2).int()])
    assert not fused_adam_supported([])

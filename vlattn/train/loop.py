"""The common training loop: one readable loop for every task.

Read :meth:`Trainer.train` top to bottom: each epoch walks a resumable sampler, each batch runs the
task's ``training_step`` under autocast, every ``grad_accum`` batches the optimizer steps, and
logging, validation, checkpoints and stop conditions happen between optimizer steps only, so a
checkpoint never holds half-accumulated gradients and a resume continues exactly.
"""

from __future__ import annotations

import contextlib
import math
import signal
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from vlattn.checkpoint import save_model
from vlattn.errors import TrainingDivergedError, VlattnError
from vlattn.task import Task
from vlattn.train import distributed
from vlattn.train.data import ResumableSampler, batch_size_of, make_loader, to_device
from vlattn.train.logging import MetricsLog
from vlattn.train.optim import build_optimizer, build_scheduler, trainable_groups
from vlattn.train.state import STATE_FILE, Progress, load_state, restore_rng, save_state
from vlattn.train.trainer_config import TrainerConfig

LAST, BEST = "last.safetensors", "best.safetensors"
# the previous last.safetensors, kept while a checkpoint is being written: a crash between the
# weights and the trainer state leaves a pair that still matches
PREVIOUS = "last.previous.safetensors"
LOWER_IS_BETTER = ("loss", "nll", "error", "perplexity", "ppl", "bpd", "kl")


@dataclass
class RunResult:
    """What a finished (or stopped) run produced."""

    run_dir: Path
    step: int
    reason: str
    last_path: Path
    best_path: Path | None
    best_metric: str
    best_value: float | None
    metrics: dict[str, float]


class Trainer:
    """Trains one task in one run folder; see :func:`vlattn.train.fit` for the usual entry."""

    def __init__(
        self,
        task: Task,
        task_name: str,
        cfg: TrainerConfig,
        run_dir: Path,
        *,
        hooks: Any = None,
        run_config: Mapping[str, Any] | None = None,
    ) -> None:
        """``run_config`` is what the run folder's ``config.json`` holds (read from it when not given)."""
        self.task, self.task_name, self.cfg, self.run_dir = task, task_name, cfg, run_dir
        self.hooks = hooks
        self._run_config = dict(run_config) if run_config is not None else None
        placement = distributed.from_environment()
        self.device = distributed.resolve_device(cfg.device, placement.local_rank)
        self.dist = distributed.init_distributed(self.device, placement)
        if cfg.precision == "fp16" and self.device.type != "cuda":
            raise VlattnError("--precision fp16 needs a CUDA device; use bf16 on CPU")
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        if cfg.deterministic or torch.are_deterministic_algorithms_enabled():
            # only when it changes something: the call imports torch._inductor (seconds on a CPU)
            torch.use_deterministic_algorithms(cfg.deterministic, warn_only=True)
        torch.backends.cudnn.benchmark = not cfg.deterministic
        self.metric_name, self.metric_mode = self._metric()
        self.progress = Progress()
        self._stop_signal: str | None = None
        self._last_train_row: dict[str, float] = {}
        # without a terminal the progress bar is off: print a line per epoch and per validation
        self._plain_progress = not cfg.quiet and not sys.stderr.isatty()

    # -- setup -----------------------------------------------------------------------------------
    def _metric(self) -> tuple[str, str]:
        name, mode = self.task.best_metric
        if self.cfg.early_stop and self.cfg.early_stop != name:
            name = self.cfg.early_stop.removeprefix("val_")
            mode = "min" if any(w in name for w in LOWER_IS_BETTER) else "max"
        return name, mode

    def _setup(self, resume: bool) -> None:
        torch.manual_seed(self.cfg.seed)
        splits = self.task.setup_data()
        torch.manual_seed(self.cfg.seed)
        model = self.task.build_model().to(self.device)
        torch.manual_seed(self.cfg.seed + self.dist.rank)
        self.model = model
        self.ddp_model: torch.nn.Module = model
        if self.dist.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp_model = torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)
        self.sampler = ResumableSampler(splits.train, self.dist, shuffle=True, seed=self.cfg.seed)
        pin = self.device.type == "cuda"
        self.train_loader = make_loader(
            splits.train,
            batch_size=self.cfg.batch_size,
            collate=self.task.collate,
            sampler=self.sampler,
            num_workers=self.cfg.num_workers,
            pin_memory=pin,
        )
        self.val_loader = None
        if splits.val is not None and len(splits.val) > 0:  # type: ignore[arg-type]
            self.val_loader = make_loader(
                splits.val,
                batch_size=self.cfg.eval_batch_size or 2 * self.cfg.batch_size,
                collate=self.task.collate,
                num_workers=self.cfg.num_workers,
                pin_memory=pin,
            )
        self.batches_per_epoch = math.ceil(len(self.sampler.dataset) / self.cfg.batch_size / self.dist.world_size)  # type: ignore[arg-type]
        if self.batches_per_epoch == 0:
            raise VlattnError("the training set is empty")
        self.steps_per_epoch = math.ceil(self.batches_per_epoch / self.cfg.grad_accum)
        epoch_steps = self.cfg.epochs * self.steps_per_epoch
        self.total_steps = min(s for s in (self.cfg.max_steps, epoch_steps) if s > 0)
        self.optimizer = build_optimizer(trainable_groups(model, self.cfg.lr), self.cfg)
        self.scheduler = build_scheduler(self.optimizer, self.cfg, self.total_steps)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.cfg.precision == "fp16")
        self.log = MetricsLog(self.run_dir, tensorboard=self.cfg.tensorboard) if self.dist.is_main else None
        if resume:
            self._restore()
        elif self.log is not None:
            self.log.resume(up_to_step=-1)

    def _restore(self) -> None:
        from safetensors.torch import load_file

        state, rng = load_state(self.run_dir, self.dist.rank)
        self.progress = Progress(**state["progress"])
        weights = load_file(str(self._weights_for_step(self.progress.step)), device=str(self.device))
        self.model.load_state_dict(weights)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        if rng is not None and rng.get("step") == self.progress.step:
            restore_rng(rng)
        elif rng is not None:  # the run stopped while writing its RNG file: continue, not bit-exactly
            print(
                f"vlattn: warning: {self.run_dir}: the RNG state is from step {rng.get('step')}, the trainer "
                f"state from step {self.progress.step}; resuming with fresh random streams (not bit-exact)",
                file=sys.stderr,
            )
        if self.log is not None:
            self.log.resume(up_to_step=self.progress.step)

    def _weights_for_step(self, step: int) -> Path:
        """``last.safetensors``, or the previous one kept during a save that did not finish: the
        one written at ``step``, as the trainer state was."""
        from vlattn.checkpoint import read_header

        found = []
        for name in (LAST, PREVIOUS):
            path = self.run_dir / name
            if path.is_file():
                saved = read_header(path).info.get("step")
                if saved == step:
                    return path
                found.append(f"{name} is from step {saved}")
        detail = "; ".join(found) or f"no {LAST}"
        raise VlattnError(
            f"{self.run_dir}: the trainer state is from step {step} but {detail}; the run cannot continue "
            f"exactly ({LAST} is still a complete model file: evaluate or use it, or train again)"
        )

    # -- the loop --------------------------------------------------------------------------------
    def train(self, resume: bool = False) -> RunResult:
        """Run until the epochs / max steps are done, early stopping, a signal, or divergence."""
        self._setup(resume)
        p, cfg = self.progress, self.cfg
        if self.dist.is_main and self.hooks is not None:
            self.hooks.broadcast("on_train_start", run_dir=self.run_dir, config=self._config_dict())
        reason, last_metrics = "finished", {}
        bar = tqdm(
            total=self.total_steps,
            initial=p.step,
            disable=True if cfg.quiet or not self.dist.is_main else None,  # None: off when not a TTY
            dynamic_ncols=True,
            desc=self.task_name,
            unit="step",
        )
        window = _Window()
        with self._signals():
            try:
                while p.step < self.total_steps and reason == "finished":
                    self.sampler.set_position(p.epoch, p.batch_in_epoch * cfg.batch_size)
                    self.ddp_model.train()
                    micro = 0
                    for batch in self.train_loader:
                        micro += 1
                        p.batch_in_epoch += 1
                        at_end = p.batch_in_epoch == self.batches_per_epoch
                        self._forward_backward(batch, sync=micro == cfg.grad_accum or at_end, window=window)
                        if micro < cfg.grad_accum and not at_end:
                            continue
                        micro = 0
                        self._optimizer_step(window)
                        bar.update(1)
                        if p.step % cfg.log_every == 0 or p.step == self.total_steps:
                            row = window.flush(self.dist, self.optimizer)
                            bar.set_postfix(loss=f"{row['loss']:.4g}", ex_s=f"{row['examples_per_s']:.0f}")
                            self._log("train", row)
                        if at_end:
                            p.epoch, p.batch_in_epoch = p.epoch + 1, 0
                        validated = False
                        if (cfg.eval_every and p.step % cfg.eval_every == 0) or (not cfg.eval_every and at_end):
                            last_metrics, improved_out = self._validate()
                            validated = True
                            if improved_out:
                                reason = "early_stop"
                        elif at_end and self.val_loader is None:
                            self._save(is_best=False)
                        if at_end or validated:
                            self._progress_line(last_metrics if validated else {})
                        if self._stop_signal:
                            reason = "interrupted"
                        if p.step >= self.total_steps or reason != "finished":
                            break
            except TrainingDivergedError:
                reason = "diverged"
                raise
            except BaseException:
                # a task's error (or an abort): report it as it is; never validate or save after a
                # failed step, so the last checkpoint stays the last good one
                reason = "failed"
                raise
            finally:
                bar.close()
                if reason not in ("diverged", "failed"):
                    self._finish(reason)
                if self.dist.is_main and self.hooks is not None:
                    self.hooks.broadcast("on_train_end", run_dir=self.run_dir, step=p.step, reason=reason)
                if self.log is not None:
                    self.log.close()
                distributed.shutdown(self.dist)
        best = self.run_dir / BEST
        return RunResult(
            self.run_dir,
            p.step,
            reason,
            self.run_dir / LAST,
            best if best.exists() else None,
            self.metric_name,
            p.best_value,
            last_metrics,
        )

    def _forward_backward(self, batch: Any, *, sync: bool, window: _Window) -> None:
        batch = to_device(batch, self.device)
        no_sync = self.ddp_model.no_sync if (self.dist.enabled and not sync) else contextlib.nullcontext
        with torch.enable_grad(), no_sync(), self._autocast():
            loss, logs = self.task.training_step(self.ddp_model, batch)
            if not torch.isfinite(loss.detach()).all():
                self._diverged(float(loss.detach().float().mean()))
            self.scaler.scale(loss / self.cfg.grad_accum).backward()
        window.add(loss, logs, batch_size_of(batch))

    def _optimizer_step(self, window: _Window) -> None:
        cfg = self.cfg
        if cfg.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
            window.add_value("grad_norm", norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.progress.step += 1

    def _autocast(self) -> Any:
        if self.cfg.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.cfg.precision == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    def _diverged(self, value: float) -> None:
        kept = self.run_dir / LAST
        where = f"; the last good checkpoint is {kept}" if kept.exists() else "; no checkpoint was written yet"
        raise TrainingDivergedError(
            f"the loss became {value} at step {self.progress.step + 1} (epoch {self.progress.epoch}){where}. "
            "Try a lower --lr, --grad-clip 1.0 or --precision fp32"
        )

    # -- validation, checkpoints, logs ------------------------------------------------------------
    def _validate(self) -> tuple[dict[str, float], bool]:
        """Evaluate on rank 0, save checkpoints, and say whether early stopping triggers."""
        from vlattn.train.evaluation import run_evaluation

        p, metrics = self.progress, {}
        if self.val_loader is not None and self.dist.is_main:
            metrics = run_evaluation(
                self.task,
                self.model,
                self.val_loader,
                self.device,
                options=self.task.validation_options(),
                autocast=self._autocast,
            )
        metrics = distributed.broadcast_object(metrics, self.dist)
        if not metrics:
            self._save(is_best=False)
            return metrics, False
        if self.metric_name not in metrics:
            raise VlattnError(
                f"metric {self.metric_name!r} is not among the validation metrics ({', '.join(sorted(metrics))})"
            )
        value = float(metrics[self.metric_name])
        better = p.best_value is None or (value < p.best_value if self.metric_mode == "min" else value > p.best_value)
        if better:
            p.best_value, p.evals_without_improvement = value, 0
        else:
            p.evals_without_improvement += 1
        self._log("val", metrics)
        self._save(is_best=better)
        stop = self.cfg.patience > 0 and p.evals_without_improvement >= self.cfg.patience
        self.ddp_model.train()
        return metrics, stop

    def _save(self, *, is_best: bool) -> None:
        p = self.progress
        info = {"step": p.step, "epoch": p.epoch, "best_metric": self.metric_name, "best_value": p.best_value}
        previous = self.run_dir / PREVIOUS
        if self.dist.is_main and (self.run_dir / LAST).is_file():
            _keep_copy(self.run_dir / LAST, previous)
        if self.dist.is_main:
            for name, wanted in ((LAST, True), (BEST, is_best)):
                if not wanted:
                    continue
                path = save_model(
                    self.run_dir / name,
                    self.model,
                    task_name=self.task_name,
                    config=self._config_dict()["task_config"],
                    artifacts=self.task.artifacts(),
                    info=info,
                )
                if self.hooks is not None:
                    self.hooks.broadcast(
                        "on_checkpoint", run_dir=self.run_dir, step=p.step, path=path, is_best=name == BEST
                    )
        save_state(
            self.run_dir,
            progress=p,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            scaler=self.scaler,
            rank=self.dist.rank,
            is_main=self.dist.is_main,
        )
        distributed.barrier(self.dist)
        if self.dist.is_main:
            previous.unlink(missing_ok=True)  # weights and state now match again

    def _finish(self, reason: str) -> None:
        """Final checkpoint, unless the last validation already wrote one for this step."""
        state_file = self.run_dir / STATE_FILE
        if reason == "finished" and self.val_loader is not None and self._saved_step() != self.progress.step:
            self._validate()
        elif not state_file.exists() or self._saved_step() != self.progress.step:
            self._save(is_best=False)

    def _saved_step(self) -> int | None:
        path = self.run_dir / STATE_FILE
        if not path.exists():
            return None
        return int(torch.load(path, map_location="cpu", weights_only=True)["progress"]["step"])

    def _progress_line(self, val_metrics: dict[str, float]) -> None:
        """One line on stderr (when it is not a terminal): step, epoch, train loss, validation."""
        if not self._plain_progress or not self.dist.is_main:
            return
        p = self.progress
        parts = [f"{self.task_name}: step {p.step}/{self.total_steps} epoch {p.epoch}"]
        if "loss" in self._last_train_row:
            parts.append(f"train loss {self._last_train_row['loss']:.4g}")
        if val_metrics:
            shown = list(val_metrics.items())[:6]
            parts.append("val " + " ".join(f"{k} {v:.4g}" for k, v in shown))
        print(" | ".join(parts), file=sys.stderr, flush=True)

    def _log(self, split: str, metrics: dict[str, float]) -> None:
        if split == "train":
            self._last_train_row = dict(metrics)
        if self.log is None:
            return
        self.log.log(self.progress.step, self.progress.epoch, split, metrics)
        if self.hooks is not None:
            self.hooks.broadcast(
                "on_metrics",
                run_dir=self.run_dir,
                step=self.progress.step,
                metrics={f"{split}_{k}": v for k, v in metrics.items()},
            )

    def _config_dict(self) -> dict[str, Any]:
        """The run folder's configuration (task, task config, trainer config), read once."""
        if self._run_config is None:
            from vlattn.train.run import read_run_config

            self._run_config = read_run_config(self.run_dir)
        return self._run_config

    @contextlib.contextmanager
    def _signals(self) -> Iterator[None]:
        """SIGINT / SIGTERM ask the loop to save and stop after the current step; a second one aborts."""

        def handler(signum: int, _frame: Any) -> None:
            if self._stop_signal:
                raise KeyboardInterrupt
            self._stop_signal = signal.Signals(signum).name

        previous = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):  # ValueError: not the main thread
                previous[sig] = signal.signal(sig, handler)
        try:
            yield
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old)


def _keep_copy(path: Path, copy: Path) -> None:
    """Keep ``path``'s current content as ``copy``: a hard link (instant) where the file system has
    them, else a copy; the link is replaced atomically."""
    import os
    import shutil

    tmp = copy.with_name(copy.name + ".tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(path, tmp)
    except OSError:
        shutil.copy2(path, tmp)
    os.replace(tmp, copy)


class _Window:
    """Running sums of the logged values between two log rows."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, int] = {}
        self.examples = 0
        self.started = time.perf_counter()

    def add(self, loss: torch.Tensor, logs: Any, examples: int) -> None:
        self.add_value("loss", loss)
        for key, value in dict(logs).items():
            self.add_value(key, value)
        self.examples += examples

    def add_value(self, key: str, value: Any) -> None:
        v = value.detach().float().mean() if isinstance(value, torch.Tensor) else torch.tensor(float(value))
        self.sums[key] = self.sums.get(key, torch.zeros((), device=v.device)) + v
        self.counts[key] = self.counts.get(key, 0) + 1

    def flush(self, dist: distributed.DistInfo, optimizer: torch.optim.Optimizer) -> dict[str, float]:
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        row = {k: float(distributed.all_mean(self.sums[k] / self.counts[k], dist)) for k in sorted(self.sums)}
        row["lr"] = float(optimizer.param_groups[0]["lr"])
        row["examples_per_s"] = self.examples * dist.world_size / elapsed
        self.__init__()  # type: ignore[misc]
        return row

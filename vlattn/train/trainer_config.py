"""The trainer's options, shared by every task (``vlattn train TASK --help`` lists them)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from vlattn.config import option


@dataclass
class TrainerConfig:
    """Options of the common trainer. Tasks may change the defaults (``Task.trainer_defaults``)."""

    epochs: int = option(10, help="passes over the training set")
    max_steps: int = option(0, help="stop after this many optimizer steps (0 = no limit)")
    batch_size: int = option(32, help="examples per batch on each process")
    eval_batch_size: int = option(0, help="examples per evaluation batch (0 = 2 x batch size)")
    lr: float = option(1e-3, help="peak learning rate")
    weight_decay: float = option(0.0, help="weight decay (decoupled for adamw)")
    optimizer: Literal["adam", "adamw", "sgd", "rmsprop"] = option("adam", help="optimizer")
    momentum: float = option(0.9, help="momentum for sgd / rmsprop")
    schedule: Literal["constant", "cosine", "linear"] = option("constant", help="learning-rate schedule after warm-up")
    warmup_steps: int = option(0, help="linear warm-up steps")
    grad_clip: float = option(0.0, help="clip the gradient norm to this value (0 = off)")
    grad_accum: int = option(1, help="batches per optimizer step (gradient accumulation)")
    precision: Literal["fp32", "bf16", "fp16"] = option("fp32", help="autocast precision (fp16 needs CUDA)")
    device: str = option("auto", help="auto, cpu, cuda or cuda:N")
    seed: int = option(0, help="random seed")
    deterministic: bool = option(False, help="use deterministic algorithms (slower on GPU)")
    eval_every: int = option(0, help="validate every N optimizer steps (0 = after every epoch)")
    log_every: int = option(50, help="log training metrics every N optimizer steps")
    early_stop: str = option("", help="validation metric for early stopping (empty = the task's best metric)")
    patience: int = option(0, help="stop after N validations without improvement (0 = never)")
    num_workers: int = option(0, help="data-loading worker processes")
    threads: int = option(0, help="torch CPU threads (0 = torch's default)")
    tensorboard: bool = option(True, help="also log to TensorBoard when it is installed")
    quiet: bool = option(False, help="no progress bar")

    def validate(self) -> None:
        """Raise ``ValueError`` for values that cannot work."""
        checks = [
            (self.epochs >= 0, "epochs must be >= 0"),
            (self.max_steps >= 0, "max_steps must be >= 0"),
            (self.epochs > 0 or self.max_steps > 0, "set epochs or max_steps above 0"),
            (self.batch_size > 0, "batch_size must be > 0"),
            (self.eval_batch_size >= 0, "eval_batch_size must be >= 0"),
            (self.lr > 0, "lr must be > 0"),
            (self.grad_accum >= 1, "grad_accum must be >= 1"),
            (self.grad_clip >= 0, "grad_clip must be >= 0"),
            (self.warmup_steps >= 0, "warmup_steps must be >= 0"),
            (self.eval_every >= 0, "eval_every must be >= 0"),
            (self.log_every >= 1, "log_every must be >= 1"),
            (self.patience >= 0, "patience must be >= 0"),
            (self.num_workers >= 0, "num_workers must be >= 0"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

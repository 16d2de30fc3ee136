"""``vlattn train TASK`` and ``vlattn eval MODEL``: options generated from config dataclasses.

``vlattn train`` is a group whose sub-commands are the registered tasks, built only when named, so
``vlattn train --help`` lists tasks without importing any of them.
"""

from __future__ import annotations

import contextlib
import json
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from vlattn.config import click_options, field_names, from_mapping, read_toml
from vlattn.errors import VlattnError
from vlattn.train.trainer_config import TrainerConfig

RESERVED = {"config", "out", "resume"}


def split_values(values: dict[str, Any], task_fields: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split a flat dict of options into (task config values, trainer values); unknown keys raise."""
    trainer_fields = set(field_names(TrainerConfig))
    task_values, trainer_values, unknown = {}, {}, []
    for key, value in values.items():
        if key in task_fields:
            task_values[key] = value
        elif key in trainer_fields:
            trainer_values[key] = value
        else:
            unknown.append(key)
    if unknown:
        import difflib

        known = task_fields + sorted(trainer_fields)
        parts = []
        for key in unknown:
            close = difflib.get_close_matches(key, known, n=1)
            parts.append(repr(key) + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise VlattnError(f"unknown option in config file: {', '.join(parts)}")
    return task_values, trainer_values


def run_training(
    task_name: str | None,
    task_values: dict[str, Any],
    trainer_values: dict[str, Any],
    out: Path | None,
    resume: Path | None,
) -> None:
    """Train and print where the run went.

    SIGTERM during start-up (imports, data, model) stops like Ctrl-C: one line and exit 130; the
    trainer takes the signals over once its loop runs (save, then stop).
    """
    with startup_signals():
        from vlattn.train import fit

        result = fit(
            task_name, task_values, trainer_values, resume if resume is not None else out, resume=resume is not None
        )
    from vlattn.train.distributed import from_environment

    if not from_environment().is_main:
        return
    best = (
        f"; best {result.best_metric} {result.best_value:.4g} in {result.best_path}"
        if result.best_path and result.best_value is not None
        else ""
    )
    message = f"{result.reason} at step {result.step}: {result.last_path}{best}"
    click.echo(message, err=True)
    if result.reason == "interrupted":
        click.echo(f"resume with: vlattn train --resume {result.run_dir}", err=True)
        sys.exit(130)


@contextlib.contextmanager
def startup_signals() -> Iterator[None]:
    """Turn SIGTERM into :class:`KeyboardInterrupt` (what Ctrl-C raises) while the run starts."""

    def interrupt(_signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def plain_text(doc: str) -> str:
    """A docstring paragraph without reStructuredText markup (``:mod:`x```, double backquotes)."""
    import re

    doc = re.sub(r":[a-z]+:`~?([^`]+)`", r"\1", doc)
    return doc.replace("``", "")


def make_task_command(task_name: str) -> click.Command:
    """The ``vlattn train TASK`` command, its options made from the task's and trainer's configs."""
    from vlattn.plugins import task_registry

    spec = task_registry().get(task_name)
    task_cls = spec.load()
    task_fields = field_names(task_cls.Config)
    clash = (set(task_fields) & set(field_names(TrainerConfig))) | (set(task_fields) & RESERVED)
    if clash:
        raise VlattnError(
            f"task {task_name!r} (plugin {spec.plugin}) has options that clash with the trainer's: {sorted(clash)}"
        )

    def callback(config: str | None, out: str | None, resume: str | None, **given: Any) -> None:
        values: dict[str, Any] = read_toml(config) if config else {}
        values.update({k: v for k, v in given.items() if v is not None})
        task_values, trainer_values = split_values(values, task_fields)
        if resume:
            cli_task = {k: v for k, v in given.items() if v is not None and k in task_fields}
            if cli_task:
                raise VlattnError("task options cannot change on --resume; only trainer options can")
            run_training(task_name, {}, trainer_values, None, Path(resume))
            return
        run_training(task_name, task_values, trainer_values, Path(out) if out else None, None)

    params: list[click.Parameter] = [
        click.Option(
            ["--config", "-c"], type=click.Path(dir_okay=False), help="TOML file of options (command-line options win)"
        ),
        click.Option(
            ["--out", "-o"], type=click.Path(file_okay=False), help="run folder to create [default: runs/TASK-TIME]"
        ),
        click.Option(["--resume"], type=click.Path(file_okay=False), help="continue the run in this folder exactly"),
    ]
    params += click_options(task_cls.Config)
    params += click_options(TrainerConfig, defaults=dict(getattr(task_cls, "trainer_defaults", {})))
    doc = plain_text((task_cls.__doc__ or spec.summary or "").strip().split("\n\n")[0])
    return click.Command(
        task_name,
        params=params,
        callback=callback,
        help=f"{doc}\n\nTask options come first, then the trainer's.",
        short_help=spec.summary,
        context_settings={"show_default": False, "max_content_width": 110},
    )


class TrainGroup(click.Group):
    """Sub-commands are the registered tasks, built lazily."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        from vlattn.plugins import task_registry

        return task_registry().names()

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        from vlattn.plugins import task_registry

        if cmd_name not in task_registry():
            return None
        return make_task_command(cmd_name)

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        from vlattn.plugins import task_registry

        name = args[0]
        if name not in task_registry() and not name.startswith("-"):
            raise click.UsageError(task_registry().unknown_message(name), ctx)
        return super().resolve_command(ctx, args)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        from vlattn.plugins import task_registry

        rows = [(s.name, f"{s.summary} [{s.plugin}]") for s in task_registry()]
        if rows:
            with formatter.section("Tasks"):
                formatter.write_dl(rows)


@click.group("train", cls=TrainGroup, invoke_without_command=True, subcommand_metavar="TASK [OPTIONS]")
@click.option("--resume", type=click.Path(file_okay=False), help="continue the run in this folder exactly")
@click.pass_context
def train_group(ctx: click.Context, resume: str | None) -> None:
    """Train a task; `vlattn train TASK --help` lists its options.

    A run folder gets config.json, metrics.jsonl/.csv, last.safetensors, best.safetensors and the
    state for an exact --resume. Under torchrun the run is distributed (DDP).
    """
    if ctx.invoked_subcommand is not None:
        return
    if resume:
        run_training(None, {}, {}, None, Path(resume))
        return
    click.echo(ctx.get_help())
    ctx.exit(2)


@click.command("eval", context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.argument("model_or_run", type=click.Path())
@click.option("--data", help="evaluation data (the task's own format); default: the task's test split")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N")
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True)
@click.pass_context
def eval_command(
    ctx: click.Context, model_or_run: str, data: str | None, as_json: bool, device: str, batch_size: int
) -> None:
    """Evaluate a model file, or the best model of a run folder.

    Tasks may take extra options (for example `--iw-samples 100` for DRAW); `vlattn eval MODEL
    --help-task` lists them.
    """
    from vlattn.checkpoint import model_file, read_header
    from vlattn.plugins import task_registry

    path = model_file(model_or_run)
    header = read_header(path)
    task_cls = task_registry().get(header.task).load()
    options = parse_eval_options(ctx, task_cls, header.task)
    from vlattn.train.evaluation import evaluate_file

    metrics = evaluate_file(path, data=data, options=options, device=device, batch_size=batch_size)
    if as_json:
        click.echo(json.dumps({"model": str(path), "task": header.task, "data": data, **metrics}))
        return
    click.echo(f"{header.task} model {path}" + (f" on {data}" if data else ""))
    width = max((len(k) for k in metrics), default=0)
    for key, value in metrics.items():
        click.echo(f"  {key:<{width}}  {value:.6g}")


def parse_eval_options(ctx: click.Context, task_cls: type, task_name: str) -> Any:
    """Parse the extra arguments of ``vlattn eval`` against the task's ``EvalOptions``."""
    options_cls = task_cls.EvalOptions
    command = click.Command(
        f"vlattn eval MODEL ({task_name} options)", params=click_options(options_cls), add_help_option=False
    )
    command.params.append(click.Option(["--help-task"], is_flag=True, help="show these options"))
    with command.make_context(command.name, list(ctx.args), parent=None) as sub:
        if sub.params.pop("help_task", False):
            click.echo(command.get_help(sub))
            ctx.exit(0)
        values = {k: v for k, v in sub.params.items() if v is not None}
    return from_mapping(options_cls, values, where=f"{task_name} eval options")

"""The ``vlattn`` command line: one click group; plugins add their own commands.

Module-level imports stay light (no torch), so ``vlattn --help``, ``vlattn plugins`` and
``vlattn list`` start fast. Errors a user can fix print one line on stderr and exit non-zero.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import click

from vlattn import __version__
from vlattn.errors import ItemErrors, VlattnError

DEBUG_ENV = "VLATTN_DEBUG"


class VlattnGroup(click.Group):
    """The root group: turns library errors into one-line messages instead of tracebacks."""

    def main(self, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        kwargs.setdefault("prog_name", "vlattn")
        try:
            return super().main(*args, standalone_mode=False, **kwargs)
        except click.exceptions.Exit as exc:
            sys.exit(exc.exit_code)
        except click.Abort as exc:  # click turns Ctrl-C (and SIGTERM while a run starts) into Abort
            interrupted = isinstance(exc.__cause__ or exc.__context__, KeyboardInterrupt)
            click.echo("vlattn: interrupted" if interrupted else "vlattn: aborted", err=True)
            sys.exit(130)
        except click.UsageError as exc:
            fail(usage_message(exc), code=exc.exit_code)
        except click.ClickException as exc:
            fail(exc.format_message(), code=exc.exit_code)
        except KeyboardInterrupt:
            click.echo("vlattn: interrupted", err=True)
            sys.exit(130)
        except BrokenPipeError:
            sys.stderr.close()  # e.g. `vlattn classify ... | head`
            sys.exit(0)
        except ItemErrors as exc:
            fail_each(exc.lines)
        except VlattnError as exc:
            fail(str(exc))
        except OSError as exc:
            if os.environ.get(DEBUG_ENV):
                raise
            where = f": {exc.filename}" if getattr(exc, "filename", None) else ""
            fail(f"{exc.strerror or exc}{where}")
        except Exception as exc:
            if os.environ.get(DEBUG_ENV):
                raise
            fail(f"internal error: {type(exc).__name__}: {exc} (set {DEBUG_ENV}=1 to see the traceback)")


def usage_message(exc: click.UsageError) -> str:
    """A usage error as one line: the message and where to find the command's options."""
    command = exc.ctx.command_path if exc.ctx is not None else "vlattn"
    return f"{exc.format_message()} (see '{command} --help')"


def fail(message: str, code: int = 1) -> None:
    """Print ``vlattn: error: message`` on stderr and exit with ``code``."""
    fail_each([message], code)


def fail_each(messages: list[str], code: int = 1) -> None:
    """Print one ``vlattn: error:`` line per message (its first line) on stderr and exit with ``code``."""
    for message in messages or [""]:
        first = " ".join(str(message).split("\n")[0].split()) or "unknown error"
        click.echo(f"vlattn: error: {first}", err=True)
    sys.exit(code)


@click.group(cls=VlattnGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", "-V", prog_name="vlattn", message="%(prog)s %(version)s")
def cli() -> None:
    """vlattn: classic attention models for vision and language, as plugins.

    \b
    Quick start:
      vlattn list                       tasks and attention mechanisms
      vlattn classify "great phone"     sentiment with attention weights
      vlattn caption image.png          Show-Attend-Tell captions
      vlattn draw --steps 10            DRAW samples as an animated GIF
      vlattn train TASK --help          every option of a task
    """


@cli.command("plugins", short_help="Installed plugins: hooks, what each registered, errors.")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
@click.option(
    "--check", is_flag=True, help="import every factory and run the cheap contract checks (exit 1 if any fails)"
)
def plugins_command(as_json: bool, check: bool) -> None:
    """Installed plugins: version, hooks, what each registered, load errors."""
    from vlattn.plugins import get_host

    if check:
        check_plugins_command(as_json)
        return
    infos = get_host().plugin_list()
    if as_json:
        click.echo(json.dumps([i.to_dict() for i in infos], indent=2))
        return
    if not infos:
        click.echo("no plugins loaded")
    for info in infos:
        dist = f" ({info.distribution} {info.version})" if info.distribution else ""
        click.echo(f"{info.name}{dist}  [{info.module}]")
        if info.error:
            click.echo(f"  error: {info.error}")
            continue
        click.echo(f"  hooks: {', '.join(info.hooks) or '-'}")
        for problem in info.problems:
            click.echo(f"  problem: {problem}")
        for label, items in (("tasks", info.tasks), ("attention", info.attention), ("commands", info.commands)):
            if items:
                click.echo(f"  {label}: {', '.join(items)}")


def check_plugins_command(as_json: bool) -> None:
    """``vlattn plugins --check``: one block per plugin, exit status 1 when anything failed."""
    from vlattn.plugins import get_host
    from vlattn.testing.plugins import check_plugins

    results = check_plugins(get_host())
    if as_json:
        rows = [{"name": r.info.name, "ok": r.ok, "passed": r.passed, "failed": r.failed} for r in results]
        click.echo(json.dumps(rows, indent=2))
    for result in [] if as_json else results:
        info = result.info
        dist = f" ({info.distribution} {info.version})" if info.distribution else ""
        click.echo(f"{info.name}{dist}: {'ok' if result.ok else 'FAILED'}")
        for line in result.passed:
            click.echo(f"  ok      {line}")
        for line in result.failed:
            click.echo(f"  failed  {line}")
    if not all(r.ok for r in results):
        sys.exit(1)


@cli.command("list", short_help="Registered tasks and attention mechanisms.")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
def list_command(as_json: bool) -> None:
    """Registered tasks and attention mechanisms, each with its plugin."""
    from vlattn.plugins import attention_registry, task_registry

    tasks = [{"name": s.name, "plugin": s.plugin, "summary": s.summary} for s in task_registry()]
    mechs = [
        {"name": s.name, "plugin": s.plugin, "summary": s.summary, "formula": s.formula, "paper": s.paper}
        for s in attention_registry()
    ]
    if as_json:
        click.echo(json.dumps({"tasks": tasks, "attention": mechs}, indent=2))
        return
    for title, rows in (("Tasks", tasks), ("Attention mechanisms", mechs)):
        click.echo(f"{title}:")
        width = max((len(r["name"]) for r in rows), default=0)
        for r in rows:
            click.echo(f"  {r['name']:<{width}}  {r['summary']}  [{r['plugin']}]")
        if not rows:
            click.echo("  (none)")


def build_cli() -> click.Group:
    """The root group with the built-in commands and every plugin's commands added."""
    from vlattn.cli_train import eval_command, train_group
    from vlattn.plugins import get_host
    from vlattn.serve.command import serve_command

    if "train" not in cli.commands:
        cli.add_command(train_group)
        cli.add_command(eval_command)
        cli.add_command(serve_command)
        get_host().add_commands(cli)
    return cli


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    try:
        root = build_cli()
    except VlattnError as exc:  # e.g. a broken plugin under VLATTN_STRICT_PLUGINS=1
        fail(str(exc))
    result = root.main(args=argv)
    if isinstance(result, int) and result:
        sys.exit(result)

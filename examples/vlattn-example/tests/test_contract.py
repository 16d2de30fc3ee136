"""The plugin's own tests: vlattn's contract kit on its mechanism and task, and its command.

Run them with ``pytest examples/vlattn-example/tests`` once the plugin is installed
(``pip install -e examples/vlattn-example``).
"""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner
from vlattn_example.attention import CosineAttention
from vlattn_example.task import FindMarkerTask

from vlattn.testing import check_mechanism, check_task

TINY = {"train_size": 64, "val_size": 32, "dim": 8}


def test_cosine_keeps_the_mechanism_contract() -> None:
    check_mechanism(CosineAttention, query_dim=6, key_dim=4)  # the class, before registering it
    check_mechanism("cosine")  # and as every model will find it: by name


def test_find_marker_keeps_the_task_contract() -> None:
    report = check_task(FindMarkerTask, TINY, steps=4)
    assert set(report.loaded_metrics) == {"loss", "accuracy"}


def test_find_marker_trains_with_any_registered_mechanism() -> None:
    check_task("find-marker", {**TINY, "attention": "additive"}, steps=2)


def test_the_command_reads_a_trained_model(tmp_path: Path) -> None:
    from vlattn.cli import build_cli

    report = check_task("find-marker", TINY, steps=4, workdir=tmp_path)
    result = CliRunner().invoke(build_cli(), ["find-marker", str(report.run_dir), "3", "1", "4"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("marker: ") and "1:" in result.output
    result = CliRunner().invoke(build_cli(), ["find-marker", str(report.run_dir), "99"])
    assert result.exit_code == 1 and "below the model's vocab_size 20" in result.output

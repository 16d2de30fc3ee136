"""``vlattn classify``: classify sentences with a trained model and show where it attended.

Only click is imported here; torch is imported when the command runs.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import click

from vlattn.errors import VlattnError
from vlattn_text.data import UCI_LABEL_NAMES, read_text_file


@dataclass
class InputLine:
    """A text to classify and, when the input carried one, its true label."""

    text: str
    label: str | None = None


def decode_stdin() -> str:
    """All of stdin as UTF-8 text, or a one-line error for binary or non-UTF-8 input."""
    raw = sys.stdin.buffer.read()
    if b"\x00" in raw:
        raise VlattnError("stdin looks like binary data, not text")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise VlattnError(f"stdin is not UTF-8 text (bad byte at offset {exc.start})") from None


def read_lines(source: str) -> list[str]:
    """Non-blank lines of the file ``source`` (``-`` = stdin)."""
    text = decode_stdin() if source == "-" else read_text_file(Path(source))
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        where = "stdin" if source == "-" else source
        raise VlattnError(f"{where} holds no text to classify (it is empty or blank)")
    return lines


def split_label(line: str, labels: list[str]) -> InputLine:
    """``sentence<TAB>label`` -> text and label when the label is one of the model's classes
    (or UCI's ``0``/``1`` for a negative/positive model); otherwise the whole line is the text."""
    text, sep, label = line.rpartition("\t")
    label = label.strip()
    if not sep:
        return InputLine(line)
    if label in labels:
        return InputLine(text, label)
    if set(labels) == set(UCI_LABEL_NAMES.values()) and label in UCI_LABEL_NAMES:
        return InputLine(text, UCI_LABEL_NAMES[label])
    return InputLine(line)


def gather_inputs(texts: tuple[str, ...], file: str | None, labels: list[str]) -> list[InputLine]:
    """Every input in order: TEXT arguments (``-`` reads stdin lines), then the lines of ``--file``."""
    inputs: list[InputLine] = []
    for number, text in enumerate(texts, start=1):
        if text == "-":
            inputs.extend(split_label(line, labels) for line in read_lines("-"))
        elif not text.strip():
            raise VlattnError(f"TEXT argument {number} is empty; give a sentence with at least one word")
        else:
            inputs.append(InputLine(text))
    if file is not None:
        inputs.extend(split_label(line, labels) for line in read_lines(file))
    return inputs


def use_colour(choice: bool | None) -> bool:
    """Colour only on a terminal, unless forced; ``NO_COLOR`` turns automatic colour off."""
    if choice is not None:
        return choice
    return sys.stdout.isatty() and not os.environ.get("NO_COLOR")


@click.command("classify")
@click.argument("texts", nargs=-1, metavar="[TEXT]...")
@click.option("--file", "-f", "file", metavar="PATH",
              help="one text per line ('-' = stdin); lines 'text<TAB>label' also report accuracy")
@click.option("--model", "-m", "model_path", metavar="PATH",
              help="a text-classifier model file or training run folder [default: the bundled sentiment model]")
@click.option("--json", "as_json", is_flag=True,
              help="one JSON object per input: text, label, score, tokens, attention")
@click.option("--batch-size", default=256, show_default=True, type=click.IntRange(min=1), help="texts per forward pass")
@click.option("--color/--no-color", "colour", default=None, help="shade tokens by attention [default: on a terminal]")
def classify(texts: tuple[str, ...], file: str | None, model_path: str | None, as_json: bool, batch_size: int,
             colour: bool | None) -> None:
    """Classify TEXT (or the lines of --file, or '-' for stdin) and show each token's attention.

    \b
    Examples:
      vlattn classify "The battery died after a day" "Great food, friendly staff"
      vlattn classify --file reviews.txt --json
      cat reviews.txt | vlattn classify -
    """
    if not texts and file is None:
        raise VlattnError("nothing to classify: give TEXT, --file PATH, or '-' to read stdin")
    from vlattn_text.predict import TextClassifier
    from vlattn_text.render import render_line

    classifier = TextClassifier.load(model_path)
    inputs = gather_inputs(texts, file, classifier.labels)
    colour_on = use_colour(colour)
    width = max(len(label) for label in classifier.labels)
    correct = labelled = 0
    pending: list[str] = []  # output lines, written a batch at a time
    predictions = classifier.iter_classify([item.text for item in inputs], batch_size=batch_size)
    for item, prediction in zip(inputs, predictions, strict=True):
        if item.label is not None:
            labelled += 1
            correct += int(prediction.label == item.label)
        if as_json:
            record = prediction.to_dict()
            if item.label is not None:
                record["true_label"] = item.label
            pending.append(json.dumps(record, ensure_ascii=False))
        else:
            pending.append(render_line(prediction.label, prediction.score, prediction.tokens, prediction.attention,
                                       colour=colour_on, label_width=width))
        if len(pending) >= batch_size:
            click.echo("\n".join(pending), color=colour_on)
            pending.clear()
    if pending:
        click.echo("\n".join(pending), color=colour_on)
    if labelled:
        summary = f"accuracy {correct / labelled:.4f} ({correct}/{labelled} labelled lines)"
        click.echo(summary, err=as_json)

"""``vlattn classify``: classify sentences with a trained model and show where it attended.

Only click is imported here; torch is imported when the command runs.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass

import click

from vlattn.data.text import STDIN, describe, read_lines
from vlattn.errors import VlattnError
from vlattn.model_files import model_option
from vlattn_text.bundled import BUNDLED
from vlattn_text.data import UCI_LABEL_NAMES


@dataclass
class InputLine:
    """One input to classify: its text, its true label when the input carried one, and where it came
    from (``source`` = ``"argument"``, ``"stdin"`` or the file's path; ``line`` = its 1-based line
    number there, or the argument's position). ``blank`` inputs get an empty result, not a prediction."""

    text: str
    label: str | None = None
    source: str = "argument"
    line: int = 0
    blank: bool = False


def read_inputs(source: str, labels: list[str]) -> list[InputLine]:
    """One :class:`InputLine` per line of the file ``source`` (``-`` = stdin), blank lines included
    (marked ``blank``), so the output lines up with the input. Lines end at ``\n`` only."""
    lines = read_lines(source)
    if all(line.blank for line in lines):
        raise VlattnError(f"{describe(source)} holds no text to classify (it is empty or blank)")
    inputs = []
    for line in lines:
        if line.blank:
            inputs.append(InputLine("", source=describe(source), line=line.number, blank=True))
        else:
            item = split_label(line.text, labels)
            inputs.append(InputLine(item.text, item.label, source=describe(source), line=line.number))
    return inputs


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
        if text == STDIN:
            inputs.extend(read_inputs(STDIN, labels))
        elif not text.strip():
            raise VlattnError(f"TEXT argument {number} is empty; give a sentence with at least one word")
        else:
            inputs.append(InputLine(text, line=number))
    if file is not None:
        inputs.extend(read_inputs(file, labels))
    return inputs


def blank_record(item: InputLine) -> dict[str, object]:
    """The ``--json`` object of a blank input line: no label, no score."""
    return {
        "source": item.source,
        "line": item.line,
        "text": item.text,
        "label": None,
        "score": None,
        "probabilities": {},
        "tokens": [],
        "attention": [],
    }


def use_colour(choice: bool | None) -> bool:
    """Colour only on a terminal, unless forced; ``NO_COLOR`` turns automatic colour off."""
    if choice is not None:
        return choice
    return sys.stdout.isatty() and not os.environ.get("NO_COLOR")


@click.command("classify", short_help="Classify sentences and show each token's attention.")
@click.argument("texts", nargs=-1, metavar="[TEXT]...")
@click.option(
    "--file",
    "-f",
    "file",
    metavar="PATH",
    help="one text per line ('-' = stdin); lines 'text<TAB>label' also report accuracy",
)
@model_option("text-classifier", BUNDLED)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="one JSON object per input: source, line, text, label, score, tokens, attention",
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    help="texts per forward pass [default: 32 for a pretrained encoder, else 256]",
)
@click.option("--color/--no-color", "colour", default=None, help="shade tokens by attention [default: on a terminal]")
@click.option(
    "--encoder-attention",
    is_flag=True,
    help="with --json and a pretrained-encoder model: add the encoder's last-layer attention, mean over heads ([T, T])",
)
@click.option(
    "--precision",
    type=click.Choice(["fp32", "bf16", "int8"]),
    default="fp32",
    show_default=True,
    help="a pretrained encoder's matrix products: float32, bfloat16 (fastest on CPUs with AMX or AVX-512 "
    "BF16) or int8 (dynamic quantization)",
)
def classify(
    texts: tuple[str, ...],
    file: str | None,
    model: str | None,
    as_json: bool,
    batch_size: int | None,
    colour: bool | None,
    encoder_attention: bool,
    precision: str,
) -> None:
    """Classify TEXT (or the lines of --file, or '-' for stdin) and show each token's attention.

    One output line per input line, in order: lines end at newline only, and a blank line gets
    an output line with no label (label null with --json). With 'text<TAB>label' lines the
    accuracy over the labelled lines follows.

    \b
    Examples:
      vlattn classify "The battery died after a day" "Great food, friendly staff"
      vlattn classify --file reviews.txt --json
      cat reviews.txt | vlattn classify -
    """
    if not texts and file is None:
        raise click.UsageError("nothing to classify: give TEXT, --file PATH, or '-' to read stdin")
    if encoder_attention and not as_json:
        raise click.UsageError("--encoder-attention needs --json (it adds a matrix per text)")
    from vlattn_text.predict import TextClassifier
    from vlattn_text.render import render_blank, render_line

    classifier = TextClassifier.load(model)
    classifier.set_precision(precision)
    batch_size = batch_size or classifier.default_batch_size
    inputs = gather_inputs(texts, file, classifier.labels)
    colour_on = use_colour(colour)
    width = max(len(label) for label in classifier.labels)
    correct = labelled = 0
    pending: list[str] = []  # output lines, written a batch at a time
    real = [item for item in inputs if not item.blank]
    predictions = iter(
        classifier.iter_classify(
            [item.text for item in real], batch_size=batch_size, encoder_attention=encoder_attention
        )
    )
    for item in inputs:
        if item.blank:
            pending.append(json.dumps(blank_record(item)) if as_json else render_blank(item.line, label_width=width))
        else:
            prediction = next(predictions)
            if item.label is not None:
                labelled += 1
                correct += int(prediction.label == item.label)
            if as_json:
                record = {"source": item.source, "line": item.line, **prediction.to_dict()}
                if item.label is not None:
                    record["true_label"] = item.label
                pending.append(json.dumps(record, ensure_ascii=False))
            else:
                pending.append(
                    render_line(
                        prediction.label,
                        prediction.score,
                        prediction.tokens,
                        prediction.attention,
                        colour=colour_on,
                        label_width=width,
                    )
                )
        if len(pending) >= batch_size:
            click.echo("\n".join(pending), color=colour_on)
            pending.clear()
    if pending:
        click.echo("\n".join(pending), color=colour_on)
    if labelled:
        summary = f"accuracy {correct / labelled:.4f} ({correct}/{labelled} labelled lines)"
        click.echo(summary, err=as_json)

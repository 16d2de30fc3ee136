"""Terminal rendering of a prediction: each token shaded by its attention weight.

Colour uses the 256-colour palette (a pale-yellow-to-red ramp as background); without colour
the heaviest tokens are listed instead. This module imports no torch.
"""

from __future__ import annotations

from collections.abc import Sequence

import click

# xterm-256 background ramp from "no attention" to "all attention".
SHADES = (255, 230, 229, 228, 227, 226, 220, 214, 208, 202, 196)


def shade_index(weight: float, heaviest: float) -> int:
    """Index into :data:`SHADES` for ``weight``, relative to the sentence's ``heaviest`` weight."""
    if heaviest <= 0:
        return 0
    return max(0, min(len(SHADES) - 1, round(weight / heaviest * (len(SHADES) - 1))))


def shaded_tokens(tokens: Sequence[str], weights: Sequence[float] | None) -> str:
    """The tokens joined by spaces, each with an ANSI background for its weight."""
    if not weights:
        return " ".join(tokens)
    heaviest = max(weights, default=0.0)
    parts = []
    for token, weight in zip(tokens, weights, strict=True):
        colour = SHADES[shade_index(weight, heaviest)]
        parts.append(f"\x1b[48;5;{colour}m\x1b[38;5;16m{token}\x1b[0m")
    return " ".join(parts)


def heaviest_tokens(tokens: Sequence[str], weights: Sequence[float] | None, count: int = 3) -> str:
    """``"great 0.41, mic 0.22"``: the ``count`` tokens with the most attention."""
    if not weights:
        return ""
    ranked = sorted(zip(tokens, weights, strict=True), key=lambda tw: tw[1], reverse=True)[:count]
    return ", ".join(f"{t} {w:.2f}" for t, w in ranked)


def render_line(
    label: str,
    score: float,
    tokens: Sequence[str],
    weights: Sequence[float] | None,
    *,
    colour: bool,
    label_width: int = 8,
) -> str:
    """One output line: ``label score  tokens``; shaded tokens with colour, else the heaviest ones."""
    head = f"{label:<{label_width}} {score:.3f}"
    if colour:
        styled = click.style(
            head, fg="green" if label == "positive" else "red" if label == "negative" else None, bold=True
        )
        return f"{styled}  {shaded_tokens(tokens, weights)}"
    top = heaviest_tokens(tokens, weights)
    text = " ".join(tokens) if tokens else "(no known words)"
    return f"{head}  {text}" + (f"  [attention: {top}]" if top else "")


def render_blank(line: int, *, label_width: int = 8) -> str:
    """The output line of a blank input line: no label, no score, its line number."""
    return f"{'-':<{label_width}} {'-':>5}  (blank line {line})"

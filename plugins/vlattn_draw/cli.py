"""``vlattn draw``: sample from a DRAW model (or redraw an image) as an animated GIF and a PNG.

This module imports no torch at import time; the command body does.
"""

from __future__ import annotations

import os
from pathlib import Path

import click

from vlattn.errors import VlattnError

BUNDLED_MODEL = Path(__file__).resolve().parent / "weights" / "draw_mnist.safetensors"
MAX_STEPS = 1000
MAX_NUM = 1024


def _check_output(out: Path) -> tuple[Path, Path]:
    """The GIF path and its PNG sibling; raise if they cannot be written."""
    if out.suffix.lower() != ".gif":
        raise VlattnError(f"--out must name a .gif file, got {out}")
    if out.is_dir():
        raise VlattnError(f"--out {out} is a directory")
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise VlattnError(f"cannot write {out}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise VlattnError(f"cannot write {out}: folder {parent} is not writable")
    for path in (out, out.with_suffix(".png")):
        if path.exists() and not os.access(path, os.W_OK):
            raise VlattnError(f"cannot write {path}: file is not writable")
    return out, out.with_suffix(".png")


@click.command("draw")
@click.option("--steps", type=int, default=None, help="drawing steps (default: the model's T)")
@click.option("--num", type=int, default=16, show_default=True, help="samples per frame (a grid)")
@click.option("--out", type=click.Path(path_type=Path), default=Path("draw.gif"), show_default=True,
              help="animated GIF to write; the final grid goes to the same name with .png")
@click.option("--seed", type=int, default=0, show_default=True, help="random seed")
@click.option("--model", "model_path", type=click.Path(path_type=Path), default=None,
              help="a draw model file (.safetensors; default: the bundled MNIST model)")
@click.option("--boxes", is_flag=True, help="draw each step's write window (red)")
@click.option("--reconstruct", type=click.Path(path_type=Path), default=None,
              help="show this image being read (green window) and redrawn (red window)")
@click.option("--scale", type=click.IntRange(1, 16), default=3, show_default=True, help="pixels per image pixel")
@click.option("--frame-ms", type=click.IntRange(10, 10000), default=100, show_default=True,
              help="time per GIF frame")
def draw_command(
    steps: int | None, num: int, out: Path, seed: int, model_path: Path | None, boxes: bool,
    reconstruct: Path | None, scale: int, frame_ms: int,
) -> None:
    """Draw digits step by step with DRAW (Gregor et al. 2015) and save the canvases as a GIF.

    \b
    Examples:
      vlattn draw --steps 10 --num 16 --out draw.gif --boxes
      vlattn draw --reconstruct digit.png --out redraw.gif
    """
    if steps is not None and not 1 <= steps <= MAX_STEPS:
        raise VlattnError(f"--steps must be between 1 and {MAX_STEPS}, got {steps}")
    if not 1 <= num <= MAX_NUM:
        raise VlattnError(f"--num must be between 1 and {MAX_NUM}, got {num}")
    if seed < 0:
        raise VlattnError(f"--seed must be >= 0, got {seed}")
    gif_path, png_path = _check_output(out)
    path = model_path or BUNDLED_MODEL
    if model_path is None and not BUNDLED_MODEL.is_file():
        raise VlattnError(f"the bundled DRAW model is missing ({BUNDLED_MODEL}); pass --model FILE")

    import torch

    from vlattn.checkpoint import load_model
    from vlattn.viz.gif import save_gif, save_png
    from vlattn_draw import render

    with torch.no_grad():
        loaded = load_model(path, expect_task="draw")
        model = loaded.model
        trained_steps = model.shape.steps
        steps = trained_steps if steps is None else steps
        if steps != trained_steps:
            how = (
                "the canvas gets fewer writes than training used, so drawings stop early (unfinished)"
                if steps < trained_steps
                else "steps beyond T keep adding writes the model never learned to stop, so drawings may overshoot"
            )
            click.echo(f"note: this model was trained for T={trained_steps} steps; drawing {steps}: {how}", err=True)
        if reconstruct is not None:
            from vlattn.data.images import load_image

            picture = load_image(reconstruct)
            s = model.shape
            image = render.prepare_image(picture, s.channels, s.height, s.width, s.likelihood == "bernoulli")
            frames = render.reconstruction_frames(model, image, steps=steps, seed=seed, scale=max(scale, 2) * 2)
        else:
            frames = render.sample_frames(model, num=num, steps=steps, seed=seed, boxes=boxes, scale=scale)
        save_gif(frames.frames, gif_path, duration_ms=frame_ms)
        save_png(frames.final, png_path)
        what = f"reconstruction of {reconstruct}" if reconstruct is not None else f"{num} samples"
        click.echo(f"wrote {gif_path} ({len(frames.frames)} frames, {what}) and {png_path}")

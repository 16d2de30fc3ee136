"""``vlattn draw``: sample from a DRAW model (or redraw an image) as an animated GIF and a PNG.

This module imports no torch at import time; the command body does.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import click

from vlattn.errors import VlattnError
from vlattn.model_files import model_option
from vlattn_draw.bundled import BUNDLED, BUNDLED_MODEL

__all__ = ["BUNDLED", "BUNDLED_MODEL", "check_frame_memory", "draw_command", "grid_pixels"]

MAX_STEPS = 1000
MAX_NUM = 1024
PNG_SOFTWARE = "vlattn draw"  # the PNG text chunk that marks a picture this command wrote
MAX_FRAME_BYTES = 4 << 30  # the GIF's frames are held in memory until it is written
BYTES_PER_PIXEL = 4.5  # measured peak per frame pixel: the RGB frame (3) and the GIF writer's copy (1.5)
PADDING = 2  # pixels between grid tiles (vlattn.viz.grid.image_grid's default)


def grid_pixels(num: int, height: int, width: int, scale: int) -> int:
    """Pixels of one frame: ``num`` images of ``height x width`` at ``scale`` in a square-ish grid."""
    columns = math.ceil(math.sqrt(num))
    rows = math.ceil(num / columns)
    return (columns * width * scale + (columns + 1) * PADDING) * (rows * height * scale + (rows + 1) * PADDING)


def check_frame_memory(num: int, steps: int, height: int, width: int, scale: int, what: str) -> None:
    """Refuse, in one line, a GIF whose frames would take more than :data:`MAX_FRAME_BYTES` of memory."""
    need = steps * grid_pixels(num, height, width, scale) * BYTES_PER_PIXEL
    if need > MAX_FRAME_BYTES:
        raise click.UsageError(
            f"{what} would hold about {need / 2**30:.1f} GiB of GIF frames in memory "
            f"(at most {MAX_FRAME_BYTES / 2**30:.0f} GiB); lower --num, --steps or --scale"
        )


def _check_output(out: Path) -> tuple[Path, Path]:
    """The GIF path and its PNG sibling; raise if they cannot be written, or if the PNG sibling is a
    file that this command did not write (it is never replaced silently)."""
    if out.suffix.lower() != ".gif":
        raise click.BadParameter(f"must name a .gif file, got {out}", param_hint="'--out'")
    if out.is_dir():
        raise VlattnError(f"--out {out} is a directory")
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise VlattnError(f"cannot write {out}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise VlattnError(f"cannot write {out}: folder {parent} is not writable")
    png = out.with_suffix(".png")
    for path in (out, png):
        if path.exists() and not os.access(path, os.W_OK):
            raise VlattnError(f"cannot write {path}: file is not writable")
    if png.is_dir():
        raise VlattnError(f"cannot write {png}: it is a directory")
    if png.exists():
        from vlattn.viz.png import png_text

        if png_text(png).get("Software") != PNG_SOFTWARE:
            raise VlattnError(
                f"{png} exists and was not written by vlattn draw, which puts the final picture there; "
                "choose another --out or move that file"
            )
    return out, png


@click.command("draw", short_help="Draw digits with DRAW (Gregor et al. 2015), saved as a GIF.")
@click.option("--steps", type=click.IntRange(1, MAX_STEPS), default=None, help="drawing steps (default: the model's T)")
@click.option(
    "--num", type=click.IntRange(1, MAX_NUM), default=16, show_default=True, help="samples per frame (a grid)"
)
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=Path("draw.gif"),
    show_default=True,
    help="animated GIF to write; the final grid goes to the same name with .png",
)
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="random seed")
@model_option("DRAW", BUNDLED)
@click.option("--boxes", is_flag=True, help="draw each step's write window (red)")
@click.option(
    "--reconstruct",
    type=click.Path(path_type=Path),
    default=None,
    help="show this image being read (green window) and redrawn (red window)",
)
@click.option("--scale", type=click.IntRange(1, 16), default=3, show_default=True, help="pixels per image pixel")
@click.option("--frame-ms", type=click.IntRange(10, 10000), default=100, show_default=True, help="time per GIF frame")
def draw_command(
    steps: int | None,
    num: int,
    out: Path,
    seed: int,
    model: str | None,
    boxes: bool,
    reconstruct: Path | None,
    scale: int,
    frame_ms: int,
) -> None:
    """Draw digits step by step with DRAW (Gregor et al. 2015) and save the canvases as a GIF.

    \b
    Examples:
      vlattn draw --steps 10 --num 16 --out draw.gif --boxes
      vlattn draw --reconstruct digit.png --out redraw.gif
    """
    gif_path, png_path = _check_output(out)

    import torch

    from vlattn.model_files import load_task_model
    from vlattn.viz.gif import save_gif
    from vlattn.viz.png import save_png
    from vlattn_draw import render
    from vlattn_draw.task import DrawTask

    with torch.no_grad():
        net = load_task_model(model, task=DrawTask.name, bundled=BUNDLED).model
        trained_steps = net.shape.steps
        steps = trained_steps if steps is None else steps
        shape = net.shape
        if reconstruct is not None:
            # two pictures side by side at twice the scale (vlattn_draw.render.reconstruction_frames)
            check_frame_memory(2, steps, shape.height, shape.width, max(scale, 2) * 2, f"--steps {steps}")
        else:
            check_frame_memory(num, steps, shape.height, shape.width, scale, f"--num {num} --steps {steps}")
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
            image = render.prepare_image(
                picture, shape.channels, shape.height, shape.width, shape.likelihood == "bernoulli"
            )
            frames = render.reconstruction_frames(net, image, steps=steps, seed=seed, scale=max(scale, 2) * 2)
        else:
            frames = render.sample_frames(net, num=num, steps=steps, seed=seed, boxes=boxes, scale=scale)
        save_gif(frames.frames, gif_path, duration_ms=frame_ms)
        save_png(frames.final, png_path, text={"Software": PNG_SOFTWARE})
        what = f"reconstruction of {reconstruct}" if reconstruct is not None else f"{num} samples"
        click.echo(f"wrote {gif_path} ({len(frames.frames)} frames, {what}) and {png_path}")

"""``vlattn caption IMAGE...`` and ``vlattn caption-data OUT``.

Module level imports click only; torch and the model code load when a command runs.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from pathlib import Path

import click

from vlattn.errors import ItemErrors, VlattnError
from vlattn.model_files import model_option
from vlattn_caption.bundled import BUNDLED


@click.command("caption", short_help="Caption IMAGE files (many are decoded as one batch).")
@click.argument("images", nargs=-1, required=True, type=click.Path(dir_okay=True, path_type=str))
@model_option("caption", BUNDLED)
@click.option(
    "--beam-size", "-k", default=5, show_default=True, type=click.IntRange(1, 100), help="beam size (1 = greedy)"
)
@click.option(
    "--max-len", default=None, type=click.IntRange(1, 200), help="most words per caption [default: the model's]"
)
@click.option("--length-penalty", default=0.0, show_default=True, type=float, help="length penalty exponent alpha")
@click.option("--json", "as_json", is_flag=True, help="print JSON: caption, tokens, score, per-word attention grids")
@click.option(
    "--attention-out",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="write IMAGE_NAME.attention.png per image: the attention of every word over the image",
)
@click.option("--batch-size", default=16, show_default=True, type=click.IntRange(1, 4096), help="images per batch")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda or cuda:N")
@click.option(
    "--hard-attention",
    "hard_decoding",
    type=click.Choice(["expectation", "argmax", "sample"]),
    default=None,
    help="hard-attention models: expected context, argmax location or a sampled one per word "
    "[default: the model's own, expectation unless trained with --hard-decoding]",
)
@click.option(
    "--precision",
    type=click.Choice(["fp32", "bf16"]),
    default="fp32",
    show_default=True,
    help="the decoder's matrix products: float32, or bfloat16 (faster on CPUs with AMX or AVX-512 BF16, "
    "and on CUDA; refused on other CPUs)",
)
def caption(
    images: tuple[str, ...],
    model: str | None,
    beam_size: int,
    max_len: int | None,
    length_penalty: float,
    as_json: bool,
    attention_out: Path | None,
    batch_size: int,
    device: str,
    hard_decoding: str | None,
    precision: str,
) -> None:
    """Caption IMAGE files (many are decoded as one batch).

    Prints one caption per image (with the file name first when there are several). Unreadable
    files get a one-line error each on stderr; the others are still captioned, and the exit
    status is 1 if any image failed.

    The bundled model was trained on synthetic scenes of coloured shapes only: it describes
    shapes, colours, sizes and positions, not photographs. Train on COCO or Flickr for those:
    vlattn train caption --data dataset_coco.json ...
    """
    from vlattn_caption.inference import check_precision
    from vlattn_caption.predict import Captioner

    checked = check_precision(precision, device)  # bf16 where it cannot run fast: one line
    captioner = Captioner.load(model, device=device)  # a bad model file: one line from the root CLI
    results = captioner.caption_files(
        list(images),
        beam_size=beam_size,
        max_len=max_len,
        alpha=length_penalty,
        batch_size=batch_size,
        keep_pictures=attention_out is not None,
        hard_decoding=hard_decoding,
        precision=checked,
    )
    if attention_out is not None:
        _write_figures(results, attention_out)
    if as_json:
        payload = [r.to_json() for r in results]
        click.echo(json.dumps(payload[0] if len(payload) == 1 else payload))
    else:
        for result in results:
            if result.error is None:
                click.echo(result.caption if len(results) == 1 else f"{result.image}\t{result.caption}")
    failed = [result.error for result in results if result.error is not None]
    if failed:
        raise ItemErrors(failed)


def _write_figures(results: list, folder: Path) -> None:
    from vlattn.viz.overlay import word_attention_figure
    from vlattn.viz.png import save_png

    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise VlattnError(f"cannot create {folder}: {exc.strerror}") from None
    used: set[str] = set()
    for result in results:
        if result.error is not None or result.picture is None or result.attention is None:
            continue
        stem = Path(result.image).stem or "image"
        name, n = f"{stem}.attention.png", 1
        while name in used:
            n += 1
            name = f"{stem}-{n}.attention.png"
        used.add(name)
        figure = word_attention_figure(result.picture, result.tokens, result.attention)
        save_png(figure, folder / name)


@click.command("caption-data", short_help="Write the synthetic scenes as PNG images and a Karpathy JSON.")
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option("--train", "n_train", default=6000, show_default=True, type=click.IntRange(0), help="training scenes")
@click.option("--val", "n_val", default=300, show_default=True, type=click.IntRange(0), help="validation scenes")
@click.option("--test", "n_test", default=500, show_default=True, type=click.IntRange(0), help="test scenes")
@click.option("--seed", default=0, show_default=True, type=int, help="dataset seed")
@click.option("--image-size", default=64, show_default=True, type=click.IntRange(32, 1024), help="image side in pixels")
@click.option("--objects", default="1-3", show_default=True, help="objects per scene, LOW-HIGH within 1-5")
@click.option(
    "--sizes",
    default="",
    help="object side as a fraction of the image side, LOW-HIGH within 0.05-0.45 "
    "[default: the two fixed sizes, 0.19 and 0.31]",
)
@click.option(
    "--background",
    default="60-140",
    show_default=True,
    help="background grey level, LOW-HIGH in 0-256 (HIGH excluded)",
)
@click.option(
    "--noise", default=8.0, show_default=True, type=float, help="standard deviation of the background noise, 0-100"
)
@click.option("--suite", default=None, metavar="NAME", help="write this fixed test suite instead (varied)")
@click.pass_context
def caption_data(
    ctx: click.Context,
    out: Path,
    n_train: int,
    n_val: int,
    n_test: int,
    seed: int,
    image_size: int,
    objects: str,
    sizes: str,
    background: str,
    noise: float,
    suite: str | None,
) -> None:
    """Write the synthetic scene dataset to OUT: PNG images and a Karpathy-style dataset.json.

    Each scene has coloured shapes with bounding boxes and two template captions that name every
    shape. By default a scene has 1-3 shapes of two sizes on a mid-grey background (the scenes of
    `vlattn train caption`); --objects, --sizes, --background and --noise draw them from other
    ranges, e.g. --objects 1-5 --sizes 0.12-0.38 --background 15-230 --noise 16. Train on it with:
    vlattn train caption --data OUT/dataset.json

    --suite varied writes a fixed test suite instead (its own seeds and ranges, every image in
    split "test", its part named under "part"): 250 scenes each of varied sizes, varied
    backgrounds, 4-5 objects, and all of these mixed.
    """
    from vlattn_caption import synthetic
    from vlattn_caption.records import write_suite, write_synthetic

    if suite is not None:
        _check_suite(ctx, suite, synthetic.SUITES)
        parts = synthetic.SUITES[suite]
        total = sum(part.count for part in parts)
    else:
        try:
            style = synthetic.SceneStyle.from_options(objects, sizes, background, noise, prefix="--")
        except ValueError as exc:
            raise VlattnError(str(exc)) from None
        total = n_train + n_val + n_test
    try:
        with click.progressbar(length=total, label="scenes", file=sys.stderr) as bar:
            if suite is not None:
                path = write_suite(out, suite, image_size=image_size, progress=bar.update)
            else:
                path = write_synthetic(
                    out,
                    counts={"train": n_train, "val": n_val, "test": n_test},
                    seed=seed,
                    image_size=image_size,
                    progress=bar.update,
                    style=style,
                )
    except OSError as exc:
        raise VlattnError(f"cannot write to {out}: {exc.strerror or exc}") from None
    what = f"the {suite!r} suite's {total} scenes" if suite is not None else f"{total} scenes"
    click.echo(f"wrote {what} to {path}")


def _check_suite(ctx: click.Context, suite: str, suites: Mapping[str, object]) -> None:
    """A known suite name, and no option that the suite's fixed scenes would ignore."""
    if suite not in suites:
        raise VlattnError(f"--suite must be one of {', '.join(suites)}, got {suite!r}")
    ignored = [
        f"--{name.replace('_', '-').removeprefix('n-')}"
        for name in ("n_train", "n_val", "n_test", "seed", "objects", "sizes", "background", "noise")
        if ctx.get_parameter_source(name) is not click.core.ParameterSource.DEFAULT
    ]
    if ignored:
        raise VlattnError(f"--suite {suite} writes the suite's own scenes; drop {', '.join(ignored)}")

"""Pictures of DRAW at work: canvases over the steps as GIF frames, with attention windows."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from vlattn.data.images import image_tensor
from vlattn.viz.grid import image_grid
from vlattn_draw.model import Draw, DrawTrace

READ_COLOUR = (64, 220, 64)
WRITE_COLOUR = (255, 64, 64)


@dataclass
class Frames:
    """GIF frames (one per step) and the final picture."""

    frames: list[Image.Image]
    final: Image.Image


def _to_hwc(images: torch.Tensor) -> np.ndarray:
    """``[N, C, H, W]`` in ``[0, 1]`` -> ``[N, H, W, C]`` numpy."""
    return images.permute(0, 2, 3, 1).cpu().numpy()


def sample_frames(model: Draw, *, num: int, steps: int, seed: int, boxes: bool, scale: int = 3) -> Frames:
    """Sample ``num`` images from the prior over ``steps`` steps; one grid frame per step.

    With ``boxes`` each frame shows that step's write window in red.
    """
    generator = torch.Generator(device=model.h_dec0.device).manual_seed(seed)
    trace = model.generate(num, steps=steps, generator=generator)
    columns = int(np.ceil(np.sqrt(num)))
    frames = []
    for t, canvas in enumerate(trace.canvases):
        step_boxes = None
        if boxes and trace.write_boxes:
            step_boxes = [[tuple(b)] for b in trace.write_boxes[t].tolist()]
        frames.append(
            image_grid(_to_hwc(canvas), columns=columns, scale=scale, boxes=step_boxes, box_colours=(WRITE_COLOUR,))
        )
    final = image_grid(_to_hwc(trace.canvases[-1]), columns=columns, scale=scale)
    return Frames(frames, final)


def reconstruction_frames(model: Draw, image: torch.Tensor, *, steps: int, seed: int, scale: int = 6) -> Frames:
    """Show ``image [C, H, W]`` being read (green window, left) and redrawn (red window, right)."""
    torch.manual_seed(seed)
    trace = DrawTrace()
    with torch.no_grad():
        model(image.unsqueeze(0), trace=trace, steps=steps)
    source = _to_hwc(image.unsqueeze(0))[0:1]
    frames = []
    for t, canvas in enumerate(trace.canvases):
        read_box = [[tuple(trace.read_boxes[t][0].tolist())]] if trace.read_boxes else None
        write_box = [[tuple(trace.write_boxes[t][0].tolist())]] if trace.write_boxes else None
        left = image_grid(source, columns=1, scale=scale, boxes=read_box, box_colours=(READ_COLOUR,))
        right = image_grid(_to_hwc(canvas), columns=1, scale=scale, boxes=write_box, box_colours=(WRITE_COLOUR,))
        frames.append(_side_by_side(left, right))
    final = _side_by_side(
        image_grid(source, columns=1, scale=scale), image_grid(_to_hwc(trace.canvases[-1]), columns=1, scale=scale)
    )
    return Frames(frames, final)


def _side_by_side(left: Image.Image, right: Image.Image) -> Image.Image:
    out = Image.new("RGB", (left.width + right.width, max(left.height, right.height)), (40, 40, 40))
    out.paste(left, (0, 0))
    out.paste(right, (left.width, 0))
    return out


def prepare_image(picture: Image.Image, channels: int, height: int, width: int, binary: bool) -> torch.Tensor:
    """A user's picture as the model's input ``[C, H, W]`` in ``[0, 1]``.

    Resized to ``width x height``; dark-on-light pictures are inverted (MNIST digits are light on
    dark); binarised at 0.5 for a Bernoulli model.
    """
    image = image_tensor(picture, (height, width), channels=channels).float() / 255.0
    if image.mean() > 0.5:
        image = 1.0 - image
    if binary:
        image = (image >= 0.5).float()
    return image

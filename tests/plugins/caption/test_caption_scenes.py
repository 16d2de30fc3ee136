"""Scene options of the synthetic caption data: the defaults stay today's scenes; wider ranges and the suites."""

from __future__ import annotations

import hashlib

import numpy as np
from vlattn_caption import synthetic

#: sha256 of 48 default scenes (images, captions, boxes); any change to the default scenes breaks it.
DEFAULT_DIGEST = "800d42b8ce72faab04f3f9bbece6d55f65dbc46306f2cb402f57c8939e4f1442"


def _digest(**kwargs: object) -> str:
    digest = hashlib.sha256()
    for split in ("train", "val", "test"):
        for i in range(8):
            for size in (48, 64):
                scene = synthetic.make_scene(0, split, i, size, **kwargs)  # type: ignore[arg-type]
                digest.update(np.asarray(scene.image).tobytes())
                digest.update("|".join(scene.captions).encode())
                digest.update(repr([o.box for o in scene.objects]).encode())
    return digest.hexdigest()


def test_default_scenes_are_pinned() -> None:
    assert _digest() == DEFAULT_DIGEST

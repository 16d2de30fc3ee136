"""The server side of a view: :class:`ViewHandler`, the request it reads and the errors it raises.

Imports no torch and no web framework: a view module can import this at start-up.
"""

from __future__ import annotations

import base64
import binascii
import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from PIL import Image

    from vlattn.model_files import BundledModels

#: Status codes an :class:`ApiError` may carry.
CLIENT_STATUSES = frozenset({400, 404, 413, 422, 503, 504})


class ApiError(Exception):
    """A request the server answers with ``{"error": message}`` and ``status``.

    400: the request is malformed (not JSON, a field of the wrong type); 404: unknown; 413: too
    large; 422: well-formed but unusable (an empty text, an image that is not one); 503: the model
    is unavailable or the server is busy; 504: it took longer than the time limit.
    """

    def __init__(self, message: str, status: int = 422) -> None:
        super().__init__(" ".join(str(message).split()) or "error")
        self.status = status if status in CLIENT_STATUSES else 500


@dataclass(frozen=True)
class Limits:
    """What the server accepts.

    Attributes:
        max_body_bytes: largest request body (an uploaded image included).
        max_pixels: largest image (width x height) decoded; larger ones are refused as bombs.
        timeout_s: time limit of one request, queueing included.
        max_queue: requests waiting per endpoint before new ones get 503.
    """

    max_body_bytes: int = 8 << 20
    max_pixels: int = 4096 * 4096
    timeout_s: float = 30.0
    max_queue: int = 256


@dataclass(frozen=True)
class Upload:
    """An uploaded file, held in memory; its file name is informative only and never opened."""

    data: bytes
    filename: str = ""
    content_type: str = ""


@dataclass
class ApiInput:
    """One request as a view sees it: its fields (JSON object, form fields or query string) and
    uploaded files. The typed getters raise :class:`ApiError` (400/422) with one-line reasons."""

    fields: Mapping[str, Any] = field(default_factory=dict)
    files: Mapping[str, Upload] = field(default_factory=dict)
    limits: Limits = field(default_factory=Limits)

    def has(self, name: str) -> bool:
        """True when ``name`` is a non-empty field or an uploaded file."""
        return name in self.files or self.fields.get(name) not in (None, "")

    def text(self, name: str, *, default: str | None = None, max_chars: int = 10_000) -> str:
        """A string field; required unless ``default`` is given."""
        value = self.fields.get(name)
        if value is None or value == "":
            if default is None:
                raise ApiError(f"'{name}' is required", 400)
            return default
        if not isinstance(value, str):
            raise ApiError(f"'{name}' must be a string", 400)
        if len(value) > max_chars:
            raise ApiError(f"'{name}' is {len(value)} characters long, more than {max_chars}", 413)
        return value

    def texts(self, name: str, *, max_items: int = 100, max_chars: int = 2_000) -> list[str]:
        """A list of strings, or one string holding one item per line (blank lines dropped)."""
        value = self.fields.get(name)
        if isinstance(value, str):
            value = [line for line in value.split("\n") if line.strip()]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ApiError(f"'{name}' must be a list of strings (or one string, one item per line)", 400)
        items = [v.strip() for v in value]
        if not items or not all(items):
            raise ApiError(f"'{name}' must hold at least one non-blank string, and no blank ones", 422)
        if len(items) > max_items:
            raise ApiError(f"'{name}' holds {len(items)} items, more than {max_items}", 413)
        for i, item in enumerate(items):
            if len(item) > max_chars:
                raise ApiError(f"'{name}' item {i} is {len(item)} characters long, more than {max_chars}", 413)
        return items

    def integer(self, name: str, default: int | None, low: int, high: int) -> int | None:
        """An integer field in ``[low, high]`` (form fields may send it as text)."""
        value = self.fields.get(name)
        if value is None or value == "":
            return default
        if isinstance(value, str):
            try:
                value = int(value.strip())
            except ValueError:
                raise ApiError(f"'{name}' must be an integer", 400) from None
        if isinstance(value, bool) or not isinstance(value, int):
            raise ApiError(f"'{name}' must be an integer", 400)
        if not low <= value <= high:
            raise ApiError(f"'{name}' must be between {low} and {high}, got {value}", 422)
        return value

    def number(self, name: str, default: float, low: float, high: float) -> float:
        """A finite number in ``[low, high]``."""
        value = self.fields.get(name)
        if value is None or value == "":
            return default
        try:
            number = float(value) if isinstance(value, (str, int, float)) and not isinstance(value, bool) else None
        except ValueError:
            number = None
        if number is None or not math.isfinite(number):
            raise ApiError(f"'{name}' must be a number", 400)
        if not low <= number <= high:
            raise ApiError(f"'{name}' must be between {low} and {high}, got {number:g}", 422)
        return number

    def choice(self, name: str, choices: Sequence[str], default: str) -> str:
        """One of ``choices``."""
        value = self.fields.get(name)
        if value is None or value == "":
            return default
        if value not in choices:
            raise ApiError(f"'{name}' must be one of {', '.join(choices)}, got {value!r:.40}", 422)
        return str(value)

    def boolean(self, name: str, default: bool) -> bool:
        """``true``/``false`` (form fields: ``1``/``0``, ``on``/``off``, ``true``/``false``)."""
        value = self.fields.get(name)
        if value is None or value == "":
            return default
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("1", "true", "on", "yes", "0", "false", "off", "no"):
            return value.lower() in ("1", "true", "on", "yes")
        raise ApiError(f"'{name}' must be true or false", 400)

    def image(self, name: str = "image") -> Image.Image | None:
        """The image sent as an uploaded file ``name`` or as a base64 string (a ``data:`` URL is
        fine) in field ``name``, as upright 8-bit RGB; ``None`` when neither was sent.

        The bytes go through :func:`vlattn.data.images.load_image`, the command line's checks
        (empty, not an image, truncated or corrupt, decompression bomb), with ``max_pixels``."""
        if name in self.files:
            data = self.files[name].data
        elif self.fields.get(name) not in (None, ""):
            data = decode_base64(self.fields[name], name)
        else:
            return None
        return decode_image(data, max_pixels=self.limits.max_pixels)


def decode_base64(value: Any, name: str) -> bytes:
    """The bytes of a base64 string or ``data:...;base64,`` URL (400 when it is neither)."""
    if not isinstance(value, str):
        raise ApiError(f"'{name}' must be a base64 string or a data: URL", 400)
    _, sep, payload = value.partition("base64,")
    try:
        return base64.b64decode(payload if sep else value, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(f"'{name}' is not valid base64", 400) from None


def decode_image(data: bytes, *, max_pixels: int) -> Image.Image:
    """Decode uploaded image bytes with the command line's checks (422 with its reason)."""
    from vlattn.data.images import ImageLoadError, load_image

    if not data:
        raise ApiError("the image is empty", 422)
    with tempfile.TemporaryDirectory(prefix="vlattn-upload-") as folder:
        path = Path(folder) / "upload"
        with open(path, "wb") as handle:
            handle.write(data)
        try:
            return load_image(path, max_pixels=max_pixels)
        except ImageLoadError as exc:
            reason = str(exc).replace(f"{path}: ", "").replace(str(path), "the image")
            raise ApiError(f"image refused: {reason}", 422) from None


class ViewHandler:
    """Base class of a view's server side, named by :attr:`ViewSpec.handler`.

    The server builds one handler per view at start-up (keep ``__init__`` cheap), calls
    :meth:`load` once on the view's worker thread before the first request is run, and then the
    route methods named by the view's :class:`ApiRoute` s. Route methods run one at a time on that
    thread, so a model needs no locking.

    Attributes:
        models: model slot -> path, for the slots the user filled with ``--model NAME=PATH``.
    """

    def __init__(self, models: Mapping[str, str | os.PathLike[str]]) -> None:
        self.models = {slot: str(path) for slot, path in models.items()}

    def load(self) -> None:
        """Load the view's models (an exception here makes the view's requests answer 503)."""

    def model_path(self, slot: str) -> str | None:
        """The path given for ``slot`` with ``--model``, or ``None`` for the bundled model."""
        return self.models.get(slot)

    def model_file(self, slot: str, *, task: str, bundled: BundledModels, name: str | None = None) -> Path:
        """The model file of ``slot``: the user's ``--model SLOT=PATH`` (a file, a run folder or a
        bundled name), else the bundled model ``name`` (default: the plugin's default one), resolved
        as every command resolves ``--model`` (:func:`vlattn.model_files.resolve_model_file`).

        Raises:
            ApiError: 503 when the bundled model is missing, saying how to pass another one.
            ModelFileError: the given file is not a model of ``task``.
        """
        from vlattn.model_files import bundled_missing_message, resolve_model_file

        given = self.model_path(slot)
        if given is not None:
            return resolve_model_file(given, task=task, bundled=bundled)
        name = name or bundled.default
        if name is None:
            raise ApiError(f"no {task} model; pass --model {slot}=PATH", 503)
        path = bundled.path(name)
        if not path.is_file():
            raise ApiError(bundled_missing_message(task, name, path, bundled.remedy, f"--model {slot}=PATH"), 503)
        return resolve_model_file(path, task=task, bundled=bundled)

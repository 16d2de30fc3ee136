"""Model files: ONE ``.safetensors`` file holding the weights and the metadata to rebuild the model.

Metadata keys (strings, as safetensors requires):

* ``vlattn.format``: ``"1"`` (a larger number: a file of a newer vlattn, refused with a hint to upgrade)
* ``vlattn.task``: the task name, looked up in the plugin registry on load
* ``vlattn.config``: the task config as JSON
* ``vlattn.artifacts``: the task's artifacts as JSON (vocabulary ...)
* ``vlattn.version``: the vlattn version that wrote the file
* ``vlattn.info``: free JSON (metrics, training step ...)

Loading never unpickles anything, and checks the weights' shapes from the file's header against
the model its config describes before building it. The same weights and metadata always give the
same bytes.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vlattn import __version__
from vlattn.errors import ModelFileError, VlattnError
from vlattn.fileio import atomic_write

if TYPE_CHECKING:
    import torch

    from vlattn.task import Task

FORMAT = "1"


def model_file(path: str | Path) -> Path:
    """The model file that ``path`` names: the file itself, or a run folder's ``best.safetensors``
    (else its ``last.safetensors``). Raises :class:`ModelFileError` for a folder holding neither."""
    path = Path(path)
    if not path.is_dir():
        return path
    found = next((p for p in (path / "best.safetensors", path / "last.safetensors") if p.is_file()), None)
    if found is None:
        raise ModelFileError(f"{path} holds no best.safetensors or last.safetensors")
    return found


def save_model(
    path: str | Path,
    model: torch.nn.Module,
    *,
    task_name: str,
    config: Mapping[str, Any],
    artifacts: Mapping[str, Any] | None = None,
    info: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``model``'s weights and metadata to ``path`` atomically."""
    from safetensors.torch import save

    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in unwrap(model).state_dict().items()}
    metadata = {
        "vlattn.format": FORMAT,
        "vlattn.task": task_name,
        "vlattn.config": json.dumps(dict(config)),
        "vlattn.artifacts": json.dumps(dict(artifacts or {})),
        "vlattn.version": __version__,
        "vlattn.info": json.dumps(dict(info or {})),
    }
    return atomic_write(path, lambda p: write_canonical(p, save(state, metadata=metadata)))


def canonical_bytes(data: bytes) -> tuple[bytes, memoryview]:
    """The prefix (length + header) and tensor data of safetensors ``data`` with the header in one
    fixed form: metadata keys sorted, compact JSON, space-padded to 8 bytes. The same tensors and
    metadata then always give the same bytes (safetensors itself orders metadata by hash)."""
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + size])
    meta = header.pop("__metadata__", None)
    ordered: dict[str, Any] = {}
    if meta is not None:
        ordered["__metadata__"] = dict(sorted(meta.items()))
    ordered.update(header)  # tensors keep safetensors' order (by dtype alignment, then name)
    text = json.dumps(ordered, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text, memoryview(data)[8 + size :]


def write_canonical(path: Path, data: bytes) -> None:
    """Write safetensors ``data`` to ``path`` in the canonical form of :func:`canonical_bytes`."""
    prefix, tensors = canonical_bytes(data)
    with open(path, "wb") as fh:
        fh.write(prefix)
        fh.write(tensors)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain module inside a DDP or ``torch.compile`` wrapper."""
    inner = getattr(model, "module", None)
    if inner is not None and type(model).__name__ == "DistributedDataParallel":
        return unwrap(inner)
    return getattr(model, "_orig_mod", model)


@dataclass
class ModelHeader:
    """The metadata of a model file, read without loading its weights.

    ``shapes`` maps each stored tensor's name to its shape, as the file's header gives it.
    """

    path: Path
    task: str
    config: dict[str, Any]
    artifacts: dict[str, Any]
    version: str
    info: dict[str, Any]
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)


def _format_error(p: Path, meta: Mapping[str, str]) -> ModelFileError | None:
    """Why ``meta`` is not metadata this vlattn can load, or ``None`` when it is."""
    written = meta.get("vlattn.format")
    if written is None or "vlattn.task" not in meta:
        return ModelFileError(f"{p} is a safetensors file but not a vlattn model (no vlattn metadata)")
    if written == FORMAT:
        return None
    if written.isdigit() and int(written) > int(FORMAT):
        by = meta.get("vlattn.version", "?")
        return ModelFileError(
            f"{p} was written by a newer vlattn ({by}, model format {written}); upgrade vlattn to load it "
            f"(this is vlattn {__version__}, which reads format {FORMAT})"
        )
    return ModelFileError(f"{p} has an unknown vlattn model format {written!r} (this vlattn reads format {FORMAT})")


def _json_object(p: Path, meta: Mapping[str, str], key: str) -> dict[str, Any]:
    try:
        value = json.loads(meta.get(key, "{}"))
    except json.JSONDecodeError as exc:
        raise ModelFileError(f"{p} has corrupt vlattn metadata: {key} is not JSON ({exc})") from None
    if not isinstance(value, dict):
        raise ModelFileError(f"{p} has corrupt vlattn metadata: {key} is not a JSON object")
    return value


def read_header(path: str | Path) -> ModelHeader:
    """Read a model file's metadata; raise :class:`ModelFileError` with a clear message if it is bad."""
    p = Path(path)
    if p.is_dir():
        raise ModelFileError(f"{p} is a directory, not a model file")
    if not p.exists():
        raise ModelFileError(f"model file not found: {p}")
    from safetensors import safe_open

    try:
        with safe_open(str(p), framework="pt") as fh:
            meta = fh.metadata() or {}
            shapes = {name: tuple(fh.get_slice(name).get_shape()) for name in fh.keys()}  # noqa: SIM118
    except Exception as exc:  # safetensors raises several types for corrupt files
        raise ModelFileError(f"{p} is not a readable .safetensors model file ({exc})") from None
    problem = _format_error(p, meta)
    if problem is not None:
        raise problem
    return ModelHeader(
        path=p,
        task=meta["vlattn.task"],
        config=_json_object(p, meta, "vlattn.config"),
        artifacts=_json_object(p, meta, "vlattn.artifacts"),
        version=meta.get("vlattn.version", "?"),
        info=_json_object(p, meta, "vlattn.info"),
        shapes=shapes,
    )


@dataclass
class LoadedModel:
    """A model rebuilt from a file, with the task object that knows how to use it."""

    task: Task
    model: torch.nn.Module
    header: ModelHeader


def load_model(path: str | Path, *, device: str | torch.device = "cpu", expect_task: str | None = None) -> LoadedModel:
    """Rebuild the task and model stored in ``path`` (weights on ``device``, eval mode).

    Raises :class:`ModelFileError` for a missing, corrupt or foreign file, and
    :class:`vlattn.errors.UnknownNameError` if no installed plugin provides the file's task.
    """
    from safetensors.torch import load_file

    from vlattn.config import from_mapping
    from vlattn.plugins import task_registry

    header = read_header(path)
    if expect_task is not None and header.task != expect_task:
        raise ModelFileError(f"{header.path} is a {header.task!r} model, expected a {expect_task!r} model")
    task_cls = task_registry().get(header.task).load()
    task = task_cls(from_mapping(task_cls.Config, header.config, where=str(header.path)))
    try:
        task.load_artifacts(header.artifacts)
    except VlattnError as exc:
        raise ModelFileError(f"{header.path}: {exc}") from None
    except Exception as exc:  # a plugin's reader meeting malformed JSON: KeyError, TypeError ...
        raise ModelFileError(f"{header.path} has corrupt artifacts ({_first_line(exc)})") from None
    check_shapes(task, header)
    try:
        model = task.build_model()
    except VlattnError:
        raise
    except Exception as exc:
        reason = _first_line(exc)
        raise ModelFileError(f"{header.path}: its config does not build a {header.task!r} model ({reason})") from None
    try:
        state = load_file(str(header.path), device=str(device))
        model.load_state_dict(state, strict=True)
    except (RuntimeError, ValueError, OSError) as exc:
        raise ModelFileError(
            f"{header.path}: weights do not match the {header.task!r} model ({_first_line(exc)})"
        ) from None
    model.to(device).eval()
    return LoadedModel(task=task, model=model, header=header)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    first = text.splitlines()[0] if text else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


EXTRA_BUFFER_BYTES = 1 << 30  # memory a model may hold beyond its stored tensors (unsaved buffers)


def check_shapes(task: Task, header: ModelHeader) -> None:
    """Compare the model ``task`` would build with the tensors ``header`` lists, before anything is
    allocated: the model is built on PyTorch's ``meta`` device, which records shapes only.

    Raises :class:`ModelFileError` for a missing, unexpected or differently shaped tensor, or for a
    config that asks for more than :data:`EXTRA_BUFFER_BYTES` beyond the stored weights (a file
    whose config names absurd sizes is refused here, not by running out of memory). A model that
    cannot be built on the meta device is left to the ordinary load, which checks shapes too.
    """
    import torch

    try:
        with torch.device("meta"):
            model = task.build_model()
    except Exception:
        return
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    where = f"{header.path}: weights do not match the {header.task!r} model its config describes"
    missing = sorted(set(expected) - set(header.shapes))
    if missing:
        raise ModelFileError(f"{where} (missing {_names(missing)})")
    unexpected = sorted(set(header.shapes) - set(expected))
    if unexpected:
        raise ModelFileError(f"{where} (unexpected {_names(unexpected)})")
    for name, shape in expected.items():
        if header.shapes[name] != shape:
            raise ModelFileError(
                f"{where} ({name}: the file holds {list(header.shapes[name])}, the config gives {list(shape)})"
            )
    stored = {id(t) for t in model.state_dict(keep_vars=True).values()}
    extra = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()) if id(t) not in stored)
    if extra > EXTRA_BUFFER_BYTES:
        raise ModelFileError(
            f"{header.path}: its config asks for {extra / 2**30:.1f} GiB of memory beyond the stored weights; "
            "the file is corrupt or was made for another purpose"
        )


def _names(names: list[str]) -> str:
    shown = ", ".join(names[:3])
    return shown + (f" and {len(names) - 3} more" if len(names) > 3 else "")

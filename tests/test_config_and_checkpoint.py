"""Config dataclasses (types, TOML, errors) and one-file model checkpoints."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pytest
import torch
from safetensors.torch import save_file

from vlattn.checkpoint import load_model, read_header, save_model
from vlattn.config import ConfigError, from_mapping, option, read_toml
from vlattn.errors import ModelFileError


@dataclass
class Sample:
    n: int = option(3, help="a count")
    rate: float = option(0.5)
    flag: bool = option(False)
    kind: Literal["a", "b"] = option("a")
    limit: int | None = option(None)
    names: list[str] = option(["x"])


def test_from_mapping_converts_and_rejects() -> None:
    cfg = from_mapping(Sample, {"n": "4", "rate": 1, "flag": "yes", "kind": "b", "limit": "none", "names": "p,q"})
    assert cfg == Sample(4, 1.0, True, "b", None, ["p", "q"])
    for bad, message in (
        ({"n": "x"}, "expects int"),
        ({"n": 1.5}, "expects int"),
        ({"flag": "maybe"}, "true or false"),
        ({"kind": "c"}, "must be one of a, b"),
        ({"rat": 1}, "did you mean 'rate'"),
    ):
        with pytest.raises(ConfigError, match=message):
            from_mapping(Sample, bad)


def test_read_toml_flattens_tables(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("top = 1\n[task]\nmax-len = 32\n[trainer]\nlr = 0.1\n")
    assert read_toml(path) == {"top": 1, "max_len": 32, "lr": 0.1}
    with pytest.raises(ConfigError, match="not found"):
        read_toml(tmp_path / "missing.toml")


def test_model_file_round_trip(tmp_path: Path, toy_host: object) -> None:
    from tests.toy_tasks import RegressionConfig, RegressionTask

    task = RegressionTask(RegressionConfig(dim=3))
    model = task.build_model()
    path = save_model(tmp_path / "m.safetensors", model, task_name="toy-regression", config={"dim": 3},
                      artifacts={"vocab": ["a", "b"]}, info={"step": 7})  # fmt: skip
    header = read_header(path)
    assert (header.task, header.config, header.artifacts, header.info) == (
        "toy-regression",
        {"dim": 3},
        {"vocab": ["a", "b"]},
        {"step": 7},
    )
    loaded = load_model(path)
    assert not loaded.model.training
    for (k, a), (_, b) in zip(model.state_dict().items(), loaded.model.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    with pytest.raises(ModelFileError, match="expected a 'caption' model"):
        load_model(path, expect_task="caption")


def test_bad_model_files_are_explained(tmp_path: Path, toy_host: object) -> None:
    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign))
    with pytest.raises(ModelFileError, match="not a vlattn model"):
        read_header(foreign)
    wrong = tmp_path / "wrong.safetensors"
    save_file(
        {"w": torch.zeros(2)},
        str(wrong),
        metadata={"vlattn.format": "1", "vlattn.task": "toy-regression", "vlattn.config": "{}"},
    )
    with pytest.raises(ModelFileError, match="weights do not match the 'toy-regression' model"):
        load_model(wrong)
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(foreign.read_bytes()[:20])
    with pytest.raises(ModelFileError, match="not a readable"):
        read_header(truncated)

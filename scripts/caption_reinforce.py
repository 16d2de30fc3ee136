"""REINFORCE estimators of a hard-attention captioner compared on the same training batches (CPU).

    python scripts/caption_reinforce.py                      # the bundled hard model
    python scripts/caption_reinforce.py --model runs/compare/hard-spatial-seed0/best.safetensors

For each estimator, over ``--batches`` training batches of ``--batch-size`` synthetic scenes (the
model in training mode, as the trainer sees it), prints the variance of the advantage, its
correlation with the caption length, the gradient-norm ratio of the score-function term to the
word cross-entropy per module (attention scorer, rest of the decoder, CNN encoder), and the
noise of the scorer's gradient: over ``--draws`` draws of locations for the same batch, the mean
squared deviation of the score term's scorer gradient from its mean, relative to the squared
norm of the likelihood gradient of the same parameters.

Estimators: ``summed`` is the caption's summed log-likelihood as the reward with one scalar
moving-average baseline and no reward scale (weighted by words, as before per-word rewards);
the others use the per-word reward with the named baseline and the reward scale ``--scale``;
``to-go`` and ``own-word`` use the moving average and credit each glimpse with the words from it
on (``reward_credit="to-go"``), with discount 1 (unbiased) and 0 (its own word only).
Moving averages (and the learned baseline) are first fitted on ``--warmup`` batches.
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from vlattn_caption.model import CaptionModel, gradient_norms, module_parameters, repeat_batch
from vlattn_caption.predict import WEIGHTS_DIR

from vlattn.attention.reinforce import ReinforceLoss, advantage_statistics
from vlattn.checkpoint import load_model

ESTIMATORS = ("summed", "moving-average", "learned", "leave-one-out", "none", "to-go", "own-word")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=WEIGHTS_DIR / "synthetic-hard.safetensors")
    parser.add_argument("--batches", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--warmup", type=int, default=20, help="batches that fit the baselines first")
    parser.add_argument("--draws", type=int, default=8, help="location draws per batch for the gradient noise")
    parser.add_argument("--samples", type=int, default=4, help="draws per caption of the leave-one-out baseline")
    parser.add_argument("--scale", type=float, default=0.1, help="reward scale of the per-word estimators")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    loaded = load_model(args.model, expect_task="caption")
    task, model = loaded.task, loaded.model
    assert isinstance(model, CaptionModel) and model.reinforce is not None, f"{args.model} is not a hard model"
    task.config.synthetic_train = args.batch_size * (args.batches + args.warmup)  # type: ignore[attr-defined]
    task.config.synthetic_val = 0  # type: ignore[attr-defined]
    train = task.setup_data().train
    batches = [
        task.collate([train[i] for i in range(s, s + args.batch_size)]) for s in range(0, len(train), args.batch_size)
    ]
    model.train()
    print(
        f"{args.model}: {args.batches} batches of {args.batch_size} captions, {args.draws} draws each, "
        f"reward scale {args.scale} (per-word estimators)"
    )
    print(
        "| estimator | advantage variance | corr(advantage, length) | grad ratio attention | decoder | encoder "
        "| scorer gradient noise |"
    )
    print("|---|---|---|---|---|---|---|")
    for name in ESTIMATORS:
        rows = measure(model, name, batches[: args.warmup], batches[args.warmup :], args)
        cells = [f"{statistics.mean(r):.4g}" for r in rows.values()]
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)


def estimator(model: CaptionModel, name: str, scale: float, samples: int) -> ReinforceLoss:
    """The :class:`ReinforceLoss` of estimator ``name`` (sets ``model.samples`` too)."""
    dim = model.encoder.dim + 1
    model.samples = samples if name == "leave-one-out" else 1
    if name == "summed":
        return ReinforceLoss(0.9, 0.0, baseline="moving-average", reward_scale=1.0)
    if name in ("to-go", "own-word"):  # per-word reward, moving average, credit from the glimpse on
        discount = 1.0 if name == "to-go" else 0.0
        return ReinforceLoss(0.9, 0.0, reward_scale=scale, credit="to-go", discount=discount)
    return ReinforceLoss(0.9, 0.0, baseline=name, reward_scale=scale, feature_dim=dim)  # type: ignore[arg-type]


def terms(model: CaptionModel, name: str, batch: dict[str, Any]) -> tuple[Any, Tensor, Tensor]:
    """Loss parts of one draw of locations, the advantage and the word counts."""
    captions, lengths = batch["captions"], batch["lengths"]
    annotations = model.encode(batch["images"])
    if model.samples > 1:
        annotations, captions, lengths = repeat_batch(model.samples, annotations, captions, lengths)
    out = model.decoder(annotations, captions, lengths)
    parts = model.loss(out, captions, doubly_stochastic=0.0)
    if name == "summed":  # the caption's summed log-likelihood with a scalar baseline
        assert model.reinforce is not None and out.log_prob is not None and parts.words is not None
        words = parts.words.to(out.logits.dtype)
        per_word = (
            -torch.nn.functional.cross_entropy(out.logits.transpose(1, 2), captions[:, 1:], reduction="none")
            * out.step_mask
        )
        reward = per_word.sum(1)
        summed = model.reinforce.terms(
            out.log_prob, reward, None, out.step_mask, weight=torch.full_like(words, 1.0 / parts.tokens)
        )
        parts.score, parts.advantage = summed.score, summed.advantage
    assert parts.advantage is not None and parts.words is not None
    return parts, parts.advantage, parts.words


def measure(
    model: CaptionModel,
    name: str,
    warmup: list[dict[str, Any]],
    batches: list[dict[str, Any]],
    args: argparse.Namespace,
) -> dict[str, list[float]]:
    """Per-batch statistics of estimator ``name``."""
    model.reinforce = estimator(model, name, args.scale, args.samples)
    model.reinforce.train()
    predictor = model.reinforce.predictor
    optimizer = torch.optim.Adam(predictor.parameters(), lr=1e-2) if predictor is not None else None
    for batch in _cycle(warmup, 3 if predictor is not None else 1):  # fit the baseline first
        with torch.set_grad_enabled(predictor is not None):
            parts, _, _ = terms(model, name, batch)
        if predictor is not None and optimizer is not None:
            optimizer.zero_grad()
            parts.total.backward(inputs=list(predictor.parameters()))
            optimizer.step()
    rows: dict[str, list[float]] = {k: [] for k in ("var", "corr", "attention", "decoder", "encoder", "noise")}
    scorer = module_parameters(model)["attention"]
    for batch in batches:
        gradients = []
        for draw in range(args.draws):
            parts, advantage, words = terms(model, name, batch)
            if draw == 0:
                stats = advantage_statistics(advantage, words)
                rows["var"].append(stats["advantage_var"])
                rows["corr"].append(stats["advantage_length_corr"])
                score = gradient_norms(model, parts.score)
                likelihood = gradient_norms(model, parts.likelihood)
                for group in ("attention", "decoder", "encoder"):
                    rows[group].append(score[group] / likelihood[group] if likelihood[group] else 0.0)
                reference = torch.autograd.grad(parts.likelihood, scorer, retain_graph=True)
                reference_norm = sum(float(g.double().pow(2).sum()) for g in reference)
            grads = torch.autograd.grad(parts.score, scorer)
            gradients.append(torch.cat([g.reshape(-1).double() for g in grads]))
        stacked = torch.stack(gradients)
        noise = float((stacked - stacked.mean(0)).pow(2).sum(1).mean())
        rows["noise"].append(noise / reference_norm if reference_norm else 0.0)
    return rows


def _cycle(batches: list[dict[str, Any]], times: int) -> Iterator[dict[str, Any]]:
    for _ in range(times):
        yield from batches


if __name__ == "__main__":
    main()

"""Show-Attend-Tell speed against sgrvinod/a-PyTorch-Tutorial-to-Image-Captioning, in one process.

    python scripts/bench_caption.py --anchor-repo PATH [--only train,beam,batched] [--images 32]
                                    [--reps 5] [--threads 1] [--precisions fp32,bf16]

``PATH`` is a checkout of the public implementation, or its bare git directory (the files are
then read from ``HEAD``); nothing of it is vendored here. Its ``models.py`` and ``caption.py``
are copied to a temporary folder and imported from there, with the adaptations today's
libraries need (none changes what is computed):

* ``caption.py``: ``top_k_words / vocab_size`` becomes ``//`` (integer ``/`` is true division
  since torch 1.5, and float indices raise);
* ``scipy.misc.imread`` / ``imresize`` (gone from SciPy) are provided on top of Pillow, and the
  plotting imports that the timed function never calls (``matplotlib``, ``skimage``) get empty
  stand-ins when they are not installed;
* the ``device`` globals are pinned to the CPU.

Workloads, at the anchor's sizes (196 annotation vectors of 512, attention / embedding / LSTM
512, vocabulary 10 000, beam 5):

* ``train``: one training step on precomputed annotations, batch 32, captions of 10-22 tokens
  (``<start>`` and ``<end>`` included): forward, cross-entropy on the real words +
  ``(1 - sum_t alpha)^2`` regulariser, backward, gradients clamped to +-5, Adam(4e-4) (vlattn's
  as its trainer builds it: fused where PyTorch has it). The anchor's ``DecoderWithAttention``
  runs the step as its ``train.py`` does (its packed scores and targets, its top-5 accuracy);
  vlattn's ``CaptionModel`` as ``CaptionTask.training_step`` does.
* ``beam``: beam search for one image, 51 decoder steps with all 5 beams alive on both sides
  (a forward hook on each output layer keeps ``<end>`` out for 50 steps and forces it at the
  51st), image file read and normalised as the anchor's function does.
* ``batched``: the same search for ``--images`` images: the anchor image by image, vlattn in
  one call; the ratio is per image.

``--precisions`` (default ``fp32``) runs vlattn's searches once per listed precision of the
decoder's weight products (``bf16``: bfloat16 weights and inputs, float32 results; the anchor
stays float32), and its training step under CPU autocast to bfloat16 (as the trainer's
``--precision bf16``), each against its own interleaved anchor runs.

Each rep times the anchor and vlattn back to back (alternating which goes first); the figure
printed is the median of the per-pair ratios ``anchor seconds / vlattn seconds`` (per image
for ``batched``), with the medians of both throughputs.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
import types
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

VOCAB, BATCH, GRID, DIM, BEAM, STEPS = 10_000, 32, 14, 512, 5, 51
CAPTION_LENGTHS = (10, 22)
ANCHOR_FILES = ("models.py", "caption.py")
SLASH_FIX = ("prev_word_inds = top_k_words / vocab_size", "prev_word_inds = top_k_words // vocab_size")


# ------------------------------------------------------------------------------------------
# loading the anchor
# ------------------------------------------------------------------------------------------
def anchor_source(repo: Path, name: str) -> str:
    """The text of ``name`` in a checkout (``repo/name``) or a git directory (``HEAD:name``)."""
    if (repo / name).is_file():
        return (repo / name).read_text()
    git_dir = repo / ".git" if (repo / ".git").exists() else repo
    try:
        return subprocess.run(
            ["git", f"--git-dir={git_dir}", "show", f"HEAD:{name}"], check=True, capture_output=True, text=True
        ).stdout
    except (subprocess.CalledProcessError, FileNotFoundError):
        raise SystemExit(f"vlattn: error: {name} not found in {repo} (a checkout or git directory)") from None


def _scipy_misc() -> types.ModuleType:
    """``scipy.misc`` with the ``imread`` / ``imresize`` of old SciPy, on Pillow."""

    def imread(path: str, *_: object, **__: object) -> np.ndarray:
        with Image.open(path) as image:
            return np.array(image)

    def imresize(array: np.ndarray, size: tuple[int, int], interp: str = "bilinear", mode: object = None) -> np.ndarray:
        resample = {"nearest": Image.NEAREST, "bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}[interp]
        return np.array(Image.fromarray(np.asarray(array)).resize((size[1], size[0]), resample=resample))

    module = types.ModuleType("scipy.misc")
    module.imread, module.imresize = imread, imresize  # type: ignore[attr-defined]
    return module


def _stand_ins() -> dict[str, types.ModuleType]:
    """Modules caption.py imports but the timed function never uses, when they are not installed."""
    modules = {"scipy.misc": _scipy_misc()}
    if importlib.util.find_spec("scipy") is None:
        modules["scipy"] = types.ModuleType("scipy")
    for name in ("matplotlib", "matplotlib.pyplot", "matplotlib.cm", "skimage", "skimage.transform"):
        if importlib.util.find_spec(name.split(".")[0]) is None:
            modules[name] = types.ModuleType(name)
    return modules


def load_anchor(repo: Path, folder: Path) -> tuple[types.ModuleType, types.ModuleType]:
    """The anchor's ``models`` and ``caption`` modules, adapted (see the module docstring)."""
    for name in ANCHOR_FILES:
        text = anchor_source(repo, name)
        if name == "caption.py":
            if text.count(SLASH_FIX[0]) != 1:
                raise SystemExit("vlattn: error: caption.py does not contain the expected beam-index line once")
            text = text.replace(*SLASH_FIX)
        (folder / name).write_text(text)
    sys.modules.update(_stand_ins())
    sys.path.insert(0, str(folder))
    try:
        models, caption = importlib.import_module("models"), importlib.import_module("caption")
    finally:
        sys.path.remove(str(folder))
    cpu = torch.device("cpu")
    models.device = caption.device = cpu  # type: ignore[attr-defined]
    return models, caption


# ------------------------------------------------------------------------------------------
# workloads
# ------------------------------------------------------------------------------------------
def caption_batch(start: int, end: int, seed: int = 1234) -> tuple[Tensor, Tensor]:
    """``(captions [32, 52], lengths [32])``: ``<start>`` words ``<end>`` then padding (id 0)."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(CAPTION_LENGTHS[0], CAPTION_LENGTHS[1] + 1, (BATCH,), generator=g)
    captions = torch.zeros(BATCH, 52, dtype=torch.long)
    for row, n in enumerate(lengths.tolist()):
        captions[row, 0], captions[row, n - 1] = start, end
        captions[row, 1 : n - 1] = torch.randint(4, VOCAB - 3, (n - 2,), generator=g)
    return captions, lengths


def features(images: int, seed: int = 4321) -> Tensor:
    """``[images, 14, 14, 512]`` non-negative annotation grids (the anchor encoder's layout)."""
    return torch.rand(images, GRID, GRID, DIM, generator=torch.Generator().manual_seed(seed))


class EndControl:
    """Forward hook on an output layer: ``<end>`` impossible before call ``STEPS``, certain at it."""

    def __init__(self, end: int) -> None:
        self.end, self.calls = end, 0

    def __call__(self, _module: nn.Module, _inputs: object, out: Tensor) -> Tensor:
        self.calls += 1
        out = out.clone()
        out[:, self.end] = 1e4 if self.calls >= STEPS else -1e9
        return out


def vlattn_model() -> nn.Module:
    """vlattn's ``CaptionModel`` with a Show-Attend-Tell decoder at the anchor's sizes (no encoder)."""
    from vlattn_caption.decoder import ShowAttendTellDecoder
    from vlattn_caption.model import CaptionModel

    torch.manual_seed(0)
    decoder = ShowAttendTellDecoder(VOCAB, DIM, DIM, DIM, "soft-spatial", {"hidden_dim": DIM}, 0.5, gate=True)
    return CaptionModel(nn.Identity(), decoder)  # type: ignore[arg-type]


def clamp_and_step(params: list[nn.Parameter], optimizer: torch.optim.Optimizer) -> None:
    for p in params:
        if p.grad is not None:
            p.grad.clamp_(-5.0, 5.0)
    optimizer.step()


def anchor_train(models: types.ModuleType) -> Callable[[], None]:
    """One step of the anchor's decoder as its ``train.py`` runs it (Identity encoder)."""
    from torch.nn.utils.rnn import pack_padded_sequence

    torch.manual_seed(0)
    decoder = models.DecoderWithAttention(
        attention_dim=DIM, embed_dim=DIM, decoder_dim=DIM, vocab_size=VOCAB, encoder_dim=DIM, dropout=0.5
    ).train()
    params = [p for p in decoder.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=4e-4)
    imgs, (captions, lengths) = features(BATCH), caption_batch(VOCAB - 2, VOCAB - 1)
    caplens = lengths[:, None]

    def step() -> None:
        scores, caps_sorted, decode_lengths, alphas, _ = decoder(imgs, captions, caplens)
        targets = caps_sorted[:, 1:]
        scores = pack_padded_sequence(scores, decode_lengths, batch_first=True).data
        targets = pack_padded_sequence(targets, decode_lengths, batch_first=True).data
        loss = nn.functional.cross_entropy(scores, targets) + ((1.0 - alphas.sum(dim=1)) ** 2).mean()
        optimizer.zero_grad()
        loss.backward()
        clamp_and_step(params, optimizer)
        top5 = scores.topk(5, 1).indices.eq(targets[:, None]).sum()  # train.py's top-5 accuracy
        loss.item(), top5.item()

    return step


def vlattn_train(precision: str = "fp32") -> Callable[[], None]:
    """One vlattn training step as ``CaptionTask.training_step`` runs it, on annotations; with
    ``precision="bf16"`` the forward and loss run under CPU autocast to bfloat16, as the trainer's
    ``--precision bf16`` runs them."""
    import contextlib

    from vlattn_caption.vocab import Vocabulary

    from vlattn.train.optim import build_optimizer
    from vlattn.train.trainer_config import TrainerConfig

    model = vlattn_model().train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = build_optimizer(params, TrainerConfig(optimizer="adam", lr=4e-4))  # as the trainer builds it
    annotations = features(BATCH).view(BATCH, GRID * GRID, DIM)
    captions, lengths = caption_batch(Vocabulary.start_id, Vocabulary.end_id)
    captions = captions[:, : int(lengths.max())].contiguous()  # vlattn's collate pads to the longest

    def autocast() -> contextlib.AbstractContextManager[object]:
        if precision == "bf16":
            return torch.autocast("cpu", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def step() -> None:
        with autocast():
            out = model(None, captions, lengths, 0.0, annotations=annotations)
            loss = model.loss(out, captions, 1.0, 0.0).total
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        clamp_and_step(params, optimizer)
        loss.item()

    return step


def anchor_beam(models: types.ModuleType, caption: types.ModuleType, image: str, feats: Tensor) -> Callable[[], None]:
    """``caption_image_beam_search`` (beam 5, 51 steps) for each image of ``feats``, one by one."""
    torch.manual_seed(0)
    decoder = models.DecoderWithAttention(
        attention_dim=DIM, embed_dim=DIM, decoder_dim=DIM, vocab_size=VOCAB, encoder_dim=DIM, dropout=0.5
    ).eval()
    control = EndControl(VOCAB - 1)
    decoder.fc.register_forward_hook(control)
    word_map = {f"w{i}": i for i in range(1, VOCAB - 3)}
    word_map.update({"<unk>": VOCAB - 3, "<start>": VOCAB - 2, "<end>": VOCAB - 1, "<pad>": 0})

    class Precomputed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.index = 0

        def forward(self, _image: Tensor) -> Tensor:
            return feats[self.index : self.index + 1]

    encoder = Precomputed()

    def search() -> None:
        for index in range(feats.shape[0]):
            control.calls, encoder.index = 0, index
            with torch.no_grad():
                seq, _ = caption.caption_image_beam_search(encoder, decoder, image, word_map, beam_size=BEAM)
            if len(seq) != STEPS + 1:
                raise RuntimeError(f"the anchor decoded {len(seq) - 1} words, not {STEPS}")

    return search


def vlattn_beam(image: str, feats: Tensor, precision: str = "fp32") -> Callable[[], None]:
    """vlattn's ``beam_search`` (beam 5, 51 steps) over all images of ``feats`` in one call, its
    weight products in ``precision``."""
    from vlattn_caption.dataset import image_tensor
    from vlattn_caption.search import beam_search
    from vlattn_caption.vocab import Vocabulary

    from vlattn.data.images import load_image

    model = vlattn_model().eval()
    control = EndControl(Vocabulary.end_id)
    model.decoder.out.register_forward_hook(control)
    annotations = feats.reshape(feats.shape[0], GRID * GRID, DIM).contiguous()
    mean, std = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1), torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)

    def search() -> None:
        for _ in range(feats.shape[0]):  # what the anchor does per image before decoding
            (image_tensor(load_image(image), 256).float().div_(255.0) - mean) / std
        control.calls = 0
        decoded = beam_search(model, annotations, beam_size=BEAM, max_len=STEPS - 1, precision=precision)
        if control.calls != STEPS or any(len(t) != STEPS - 1 for t in decoded.tokens):
            raise RuntimeError("vlattn did not decode the fixed length")

    return search


# ------------------------------------------------------------------------------------------
# timing
# ------------------------------------------------------------------------------------------
def interleaved(anchor: Callable[[], None], ours: Callable[[], None], reps: int) -> tuple[list[float], list[float]]:
    """Seconds per call of each, over ``reps`` back-to-back pairs (order alternating), after one warm-up."""
    anchor(), ours()
    times: tuple[list[float], list[float]] = ([], [])
    gc.disable()
    try:
        for rep in range(reps):
            pair = ((0, anchor), (1, ours)) if rep % 2 == 0 else ((1, ours), (0, anchor))
            for side, call in pair:
                start = time.perf_counter()
                call()
                times[side].append(time.perf_counter() - start)
    finally:
        gc.enable()
    return times


def report(name: str, unit: str, per_call: float, anchor_s: list[float], ours_s: list[float]) -> None:
    ratios = [a / o for a, o in zip(anchor_s, ours_s, strict=True)]
    print(
        f"{name}: vlattn {per_call / statistics.median(ours_s):.2f} {unit}, anchor "
        f"{per_call / statistics.median(anchor_s):.2f} {unit}; speed-up {statistics.median(ratios):.2f}x "
        f"(median of {len(ratios)} interleaved pairs, {min(ratios):.2f}-{max(ratios):.2f})",
        flush=True,
    )


def test_image(folder: Path) -> str:
    """A 256x256 JPEG for the image-reading part of both searches."""
    yy, xx = np.mgrid[0:256, 0:256]
    path = folder / "scene.jpg"
    Image.fromarray(np.stack([xx, yy, (xx + yy) // 2], axis=-1).astype(np.uint8)).save(path, quality=90)
    return str(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--anchor-repo", type=Path, required=True, help="checkout or git directory of the anchor")
    parser.add_argument("--only", default="train,beam,batched", help="comma-separated: train, beam, batched")
    parser.add_argument("--images", type=int, default=32, help="images per vlattn call in 'batched'")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--precisions",
        default="fp32",
        help="comma-separated: fp32, bf16 (vlattn's side: its searches' products, its training step's autocast)",
    )
    args = parser.parse_args()
    chosen = {w.strip() for w in args.only.split(",") if w.strip()}
    if not chosen <= {"train", "beam", "batched"} or args.images < 1 or args.reps < 1:
        raise SystemExit("vlattn: error: --only takes train, beam, batched; --images and --reps must be >= 1")
    from vlattn_caption.inference import check_precision

    from vlattn.errors import VlattnError

    precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]
    try:
        precisions = [check_precision(p, "cpu") for p in precisions] or ["fp32"]
    except VlattnError as exc:
        raise SystemExit(f"vlattn: error: --precisions: {exc}") from None
    if not args.anchor_repo.exists():
        raise SystemExit(f"vlattn: error: --anchor-repo {args.anchor_repo} does not exist")
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s), {args.reps} interleaved pairs per workload")
    with tempfile.TemporaryDirectory() as tmp:
        models, caption = load_anchor(args.anchor_repo, Path(tmp))
        image = test_image(Path(tmp))
        for precision in precisions:
            tag = "" if precisions == ["fp32"] else f" [vlattn {precision}]"
            if "train" in chosen:
                timed = interleaved(anchor_train(models), vlattn_train(precision), args.reps)
                report(f"train step, B=32{tag}", "captions/s", BATCH, *timed)
            if "beam" in chosen:
                one = features(1)
                anchor = anchor_beam(models, caption, image, one)
                timed = interleaved(anchor, vlattn_beam(image, one, precision), args.reps)
                report(f"beam 5, one image, 51 steps{tag}", "images/s", 1, *timed)
            if "batched" in chosen:
                many = features(args.images)
                anchor_one = anchor_beam(models, caption, image, many[:1])
                anchor_s, ours_s = interleaved(anchor_one, vlattn_beam(image, many, precision), args.reps)
                per_image = [s / args.images for s in ours_s]
                name = f"beam 5, {args.images} images per vlattn call (anchor per image){tag}"
                report(name, "images/s", 1, anchor_s, per_image)


if __name__ == "__main__":
    main()

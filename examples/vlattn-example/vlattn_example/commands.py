"""``vlattn find-marker MODEL TOKEN...``: a plugin's own command, using a trained model file.

Only click is imported at module level: ``vlattn --help`` builds every plugin's commands, so
torch and the model are imported inside the command's body.
"""

from __future__ import annotations

import click


@click.command("find-marker", short_help="Find the marker token; show where the model looked.")
@click.argument("model", type=click.Path())
@click.argument("tokens", nargs=-1, required=True, type=click.IntRange(min=1))
def find_marker_command(model: str, tokens: tuple[int, ...]) -> None:
    """Classify TOKENS (ids >= 1; 1 is the marker) with a find-marker MODEL file or run folder,
    printing the probability and the attention weight of each token."""
    import torch

    from vlattn.errors import VlattnError
    from vlattn.model_files import load_task_model

    loaded = load_task_model(model, task="find-marker")  # a model file or a run folder, its task checked
    vocab = loaded.task.config.vocab_size
    if max(tokens) >= vocab:
        raise VlattnError(f"token ids must be below the model's vocab_size {vocab}, got {max(tokens)}")
    ids = torch.tensor([tokens])
    with torch.no_grad():
        logits, weights = loaded.model(ids, torch.tensor([len(tokens)]))
    probability = float(torch.softmax(logits, -1)[0, 1])
    click.echo(f"marker: {'yes' if probability >= 0.5 else 'no'} (p = {probability:.3f})")
    click.echo("  ".join(f"{t}:{w:.2f}" for t, w in zip(tokens, weights[0].tolist(), strict=True)))

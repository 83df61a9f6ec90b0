"""Resume after a crash. A training stage's Trainer checkpoints live in checkpoints/<stage>, outside DVC's
outputs, so a killed `dvc repro` leaves them and the next run resumes from the newest complete one.

A run file beside them records what wrote them (the recipe, the model's shape, digests of the weights it
started from and of the training data) and whether that run finished. Checkpoints of an unfinished run of anything else are refused, never
loaded; those of a finished run are cleared when the next run starts.
"""

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

from transformers import PreTrainedModel, TrainingArguments
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from llmpipe.config import flatten
from llmpipe.errors import UserError
from llmpipe.runtime import atomic

RUN_FILE = "llmpipe-run.json"
TRAINER_STATE = "trainer_state.json"  # Trainer writes it last: a checkpoint without it is incomplete
_NOT_SHAPE = {"transformers_version", "_name_or_path", "_commit_hash", "dtype", "torch_dtype"}


def run_identity(recipe: Any, model: PreTrainedModel, base_weights: str | None, data_files: list[str | Path]) -> dict:
    """What must be equal for a checkpoint to continue this run. `base_weights`: the digest of the weights
    training starts from (`artifacts.weights_digest`; None for a model built from its config): a base
    retrained to the same shape must not be continued with checkpoints trained from the old one."""
    shape = {k: v for k, v in model.config.to_diff_dict().items() if k not in _NOT_SHAPE}
    identity = {"recipe": flatten(recipe), "model": shape, "base_weights": base_weights, "data": digest(data_files)}
    return json.loads(json.dumps(identity, default=str))  # as it reads back from the run file


def digest(files: list[str | Path]) -> str:
    """sha256 over the files' bytes, in order."""
    sha = hashlib.sha256()
    for file in files:
        with open(file, "rb") as handle:
            while chunk := handle.read(1 << 20):
                sha.update(chunk)
    return sha.hexdigest()


def newest_complete(folder: Path) -> Path | None:
    steps = {}
    for candidate in folder.glob(f"{PREFIX_CHECKPOINT_DIR}-*"):
        suffix = candidate.name.removeprefix(f"{PREFIX_CHECKPOINT_DIR}-")
        if suffix.isdigit() and (candidate / TRAINER_STATE).is_file():
            steps[int(suffix)] = candidate
    return steps[max(steps)] if steps else None


def _read_run(folder: Path) -> dict | None:
    try:
        return json.loads((folder / RUN_FILE).read_text())
    except (OSError, ValueError):
        return None


def resume_point(folder: str | Path, identity: dict, restart: bool, training: TrainingArguments) -> str | None:
    """The checkpoint to resume from, or None to start over. Every rank calls it; rank 0 goes first and,
    on a fresh start, clears the folder and records `identity`, so the other ranks then agree."""
    folder = Path(folder)
    with training.main_process_first(desc="checkpoints", local=False):
        latest = newest_complete(folder)
        recorded = _read_run(folder)
        if latest is not None and not restart and not (recorded or {}).get("finished"):
            if recorded is None or recorded.get("identity") != identity:
                raise UserError(_refusal(folder, recorded, identity))
            return str(latest)
        if training.process_index == 0:
            shutil.rmtree(folder, ignore_errors=True)
            atomic.write_json(folder / RUN_FILE, {"identity": identity, "finished": False})
        return None


def mark_finished(folder: str | Path) -> None:
    """Rank 0, once the stage's outputs are written: the next run starts over instead of resuming."""
    run = _read_run(Path(folder))
    if run is not None:
        atomic.write_json(Path(folder) / RUN_FILE, {**run, "finished": True})


def _refusal(folder: Path, recorded: dict | None, identity: dict) -> str:
    fix = f"to start over, delete {folder} (or pass --restart)"
    if recorded is None:
        return f"{folder}: holds checkpoints that llmpipe did not record ({RUN_FILE} is missing); {fix}"
    old, new = flatten(recorded.get("identity", {})), flatten(identity)
    changed = [
        f"{key}: {old.get(key, 'unset')!r} there, {new.get(key, 'unset')!r} now"
        for key in sorted(old.keys() | new.keys())
        if old.get(key) != new.get(key)
    ]
    shown = "; ".join(changed[:5]) + (f"; and {len(changed) - 5} more" if len(changed) > 5 else "")
    return (
        f"{folder}: holds checkpoints of an unfinished run with another recipe, model shape, base model or training data "
        f"({shown}); to resume it, restore what it ran with; {fix}"
    )

"""Outputs appear whole or not at all: write beside the target, then rename over it."""

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import psutil

from llmpipe.errors import UserError

# What the stages write into their output folders. A folder of only these, holding a model, tokenizer,
# dataset or answers, is an earlier output: a stage may replace it whole. Anything else is a user's.
OUTPUT_SUFFIXES = {".json", ".jsonl", ".safetensors", ".md", ".png", ".jinja", ".arrow", ".txt", ".model", ".csv"}
OUTPUT_SIGNATURES = {"config.json", "adapter_config.json", "tokenizer.json", "dataset_dict.json"}


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def _prefix(target: Path, kind: str) -> str:
    """Staging names carry the writer's PID, so a leftover is told from another live writer's file."""
    return f".{target.name}.{kind}-{os.getpid()}-"


def _clear_leftovers(target: Path, kinds: tuple[str, ...] = ("tmp", "old")) -> None:
    """Staging paths of `target` whose writer is gone: a run that was killed (SIGKILL leaves no chance to
    clean up). Another process writing the same target at the same time keeps its own. A writer killed
    between moving the old folder aside and the new one in left no target: the old one goes back."""
    for leftover in [path for kind in kinds for path in target.parent.glob(f".{target.name}.{kind}-*")]:
        kind, pid = leftover.name.removeprefix(f".{target.name}.").split("-")[:2]
        if pid.isdigit() and psutil.pid_exists(int(pid)):
            continue
        if kind == "old" and (leftover / target.name).exists() and not target.exists():
            os.replace(leftover / target.name, target)
        if leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)


def check_replaceable(target: str | Path, option: str) -> None:
    """Refuse, before any work, a folder target that `directory` would replace but no stage wrote: a file,
    the working folder (or one holding it), or a folder with anything in it but a stage's outputs."""
    target = Path(target)
    if target.exists() and not target.is_dir():
        raise UserError(f"{option} {target}: is a file; give a folder to write (a stage replaces its output folder whole)")
    if target.resolve() == Path.cwd() or target.resolve() in Path.cwd().parents:
        raise UserError(f"{option} {target}: holds the working folder; give a folder of its own, e.g. artifacts/<name>")
    files = [path for path in target.rglob("*") if path.is_file()] if target.is_dir() else []
    foreign = [path for path in files if path.suffix not in OUTPUT_SUFFIXES]
    written = any(path.name in OUTPUT_SIGNATURES or path.suffix == ".jsonl" for path in files)
    if files and (foreign or not written):
        raise UserError(
            f"{option} {target}: holds files no llmpipe stage writes ({(foreign or files)[0]}), and a stage replaces "
            "its output folder whole; give a new or empty folder, or one a stage wrote"
        )


def check_file_target(target: str | Path, option: str) -> None:
    """Refuse, before any work, a file target that is a folder (the write at the end would fail)."""
    if Path(target).is_dir():
        raise UserError(f"{option} {target}: is a folder; give the path of a file to write")


@contextlib.contextmanager
def directory(target: str | Path) -> Iterator[Path]:
    """Yield an empty temporary folder next to `target`; on success it replaces `target`, its files readable
    as the umask says (safetensors writes weights owner-only)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    _clear_leftovers(target)
    staging = Path(tempfile.mkdtemp(prefix=_prefix(target, "tmp"), dir=target.parent))
    staging.chmod(0o777 & ~_umask())  # mkdtemp makes it owner-only; the output should not be
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    for written in staging.rglob("*"):
        if written.is_file():
            written.chmod(0o666 & ~_umask())
    if target.exists():
        # rename(2) cannot replace a non-empty folder: move the old one aside first, then drop it.
        retired = Path(tempfile.mkdtemp(prefix=_prefix(target, "old"), dir=target.parent))
        os.replace(target, retired / target.name)
        os.replace(staging, target)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        os.replace(staging, target)


@contextlib.contextmanager
def scratch(beside: str | Path) -> Iterator[Path]:
    """A working folder next to `beside`, removed afterwards: on the output's disk, which holds what
    the output will, unlike /tmp (often small, or in RAM)."""
    target = Path(beside)
    target.parent.mkdir(parents=True, exist_ok=True)
    _clear_leftovers(target, ("work",))
    with tempfile.TemporaryDirectory(prefix=_prefix(target, "work"), dir=target.parent) as folder:
        yield Path(folder)


def write_text(target: str | Path, text: str) -> None:
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    _clear_leftovers(target)
    fd, staging = tempfile.mkstemp(prefix=_prefix(target, "tmp"), dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(staging, 0o666 & ~_umask())  # mkstemp makes it owner-only
        os.replace(staging, target)
    except BaseException:
        Path(staging).unlink(missing_ok=True)
        raise


def write_json(target: str | Path, data: dict) -> None:
    write_text(target, json.dumps(data, indent=2, sort_keys=True) + "\n")

"""The data side of `make bench`: BPE training MB/s (the tokenizer stage's `tokenizers` trainer against
`sentencepiece`'s BPE trainer on the same text and vocabulary size), and the corpus stage's tokens/s and
peak memory on generated corpora of growing size (memory should stay flat as they grow). Every
measurement runs in its own process, so the peak memory is its own.

`python bench/data_stages.py bpe-hf|bpe-spm TEXT VOCAB [FOLDER]` is the child that trains one tokenizer."""

import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from llmpipe.data.documents import read_documents

SOURCE_TEXT = Path(__file__).resolve().parents[1] / "data" / "text" / "tinyshakespeare.txt"


def generate_text(target: Path, megabytes: float, seed: int = 0) -> Path:
    """`megabytes` of English-like text: runs of 20-200 consecutive words of a real text, one
    paragraph per line, blank lines between (the corpus stage sees distinct documents)."""
    words = " ".join(read_documents(SOURCE_TEXT, "paragraphs")).split()
    rng = random.Random(seed)
    limit, written = int(megabytes * 2**20), 0
    with open(target, "w", encoding="utf-8") as out:
        while written < limit:
            start, length = rng.randrange(len(words) - 200), rng.randint(20, 200)
            paragraph = " ".join(words[start : start + length]) + "\n\n"
            out.write(paragraph)
            written += len(paragraph.encode("utf-8"))
    return target


def _memory_kib(pid: int) -> tuple[int, int]:
    """(VmHWM, RssAnon) of a running process: its peak resident memory since exec (mapped files
    included), and its anonymous resident memory now — what it allocated, without the pages of
    memory-mapped Arrow files, which the kernel drops under pressure."""
    try:
        status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    except OSError:
        return 0, 0
    return tuple(int(status.get(key, "0 kB").split()[0]) for key in ("VmHWM", "RssAnon"))


def run_measured(args: list[str], cwd: Path | None = None) -> dict:
    """`python ARGS` to its end: wall seconds, stdout, and the process's own memory peaks, polled every
    50 ms (not wait4's ru_maxrss: it keeps the parent's resident size from before exec)."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        started = time.perf_counter()
        process = subprocess.Popen([sys.executable, *args], cwd=cwd, stdout=out, stderr=err, env={**os.environ, "TQDM_DISABLE": "1"})
        peak_resident = peak_anonymous = 0
        while process.poll() is None:
            resident, anonymous = _memory_kib(process.pid)
            peak_resident, peak_anonymous = max(peak_resident, resident), max(peak_anonymous, anonymous)
            time.sleep(0.05)
        seconds = time.perf_counter() - started
        out.seek(0)
        err.seek(0)
        if process.returncode != 0:
            raise RuntimeError(f"python {' '.join(args)} failed:\n{err.read()[-3000:]}")
        return {
            "seconds": seconds, "stdout": out.read(),
            "peak_memory_gb": peak_resident / 2**20, "peak_anonymous_memory_gb": peak_anonymous / 2**20,
        }


def _line_batches(text: Path, size: int = 1000):
    with open(text, encoding="utf-8") as handle:
        batch = []
        for line in handle:
            if line.strip():
                batch.append(line.rstrip("\n"))
            if len(batch) == size:
                yield batch
                batch = []
        if batch:
            yield batch


def train_child(kind: str, text: Path, vocab: int, folder: Path | None) -> None:
    """Train one tokenizer on `text` (one sentence per line for both trainers); print its seconds."""
    if kind == "bpe-hf":
        from llmpipe.stages.tokenizer import TokenizerRecipe, train_bpe

        started = time.perf_counter()  # after the imports, for both
        tokenizer = train_bpe(_line_batches(text), TokenizerRecipe(trainer={"vocab_size": vocab, "show_progress": False}))
        seconds = time.perf_counter() - started
        if folder:
            tokenizer.save_pretrained(folder)
    else:
        import sentencepiece

        started = time.perf_counter()
        with tempfile.TemporaryDirectory() as scratch:
            sentencepiece.SentencePieceTrainer.train(
                input=str(text), model_prefix=f"{scratch}/spm", vocab_size=vocab, model_type="bpe",
                character_coverage=1.0, input_sentence_size=0, num_threads=os.cpu_count(), minloglevel=2,
            )
        seconds = time.perf_counter() - started
    print(json.dumps({"seconds": seconds}))


def tokenizer_training(text: Path, vocab: int, repeats: int, keep: Path) -> dict:
    """MB/s of both trainers (median of `repeats`), their ratio, each one's peak memory."""
    megabytes = text.stat().st_size / 2**20
    result = {"text_mb": round(megabytes, 1), "vocab_size": vocab}
    for kind, name in (("bpe-hf", "tokenizers"), ("bpe-spm", "sentencepiece")):
        runs = [run_measured([__file__, kind, str(text), str(vocab), str(keep)]) for _ in range(repeats)]
        seconds = statistics.median(json.loads(run["stdout"].splitlines()[-1])["seconds"] for run in runs)
        result[f"{name}_mb_per_second"] = round(megabytes / seconds, 2)
        result[f"{name}_peak_memory_gb"] = round(max(run["peak_memory_gb"] for run in runs), 3)
    result["tokenizers_vs_sentencepiece"] = round(result["tokenizers_mb_per_second"] / result["sentencepiece_mb_per_second"], 2)
    return result


def corpus_stage(text: Path, tokenizer: Path, workdir: Path, repeats: int, recipe: dict) -> dict:
    """The real `llmpipe corpus` command on `text`: its tokens/s (the stage's own figure, median) and peak memory."""
    (workdir / "params.yaml").write_text(yaml.safe_dump({
        "recipe": "bench", "accelerate_config": "none",
        "data": {"files": [str(text)]}, "mlflow": {"enabled": False},
    }))
    (workdir / "corpus.yaml").write_text(yaml.safe_dump(recipe))
    runs = []
    for _ in range(repeats):
        run = run_measured(["-m", "llmpipe", "corpus", "--recipe", "corpus.yaml", "--tokenizer", str(tokenizer),
                            "--output", "corpus", "--metrics", "corpus.json"], cwd=workdir)
        runs.append(json.loads((workdir / "corpus.json").read_text()) | {key: run[key] for key in ("peak_memory_gb", "peak_anonymous_memory_gb")})
    metrics = runs[0]
    return {
        "text_mb": round(text.stat().st_size / 2**20, 1),
        "tokens": metrics["train_tokens"] + metrics["validation_tokens"],
        "documents": metrics["documents"],
        "tokens_per_second": statistics.median(run["tokens_per_second"] for run in runs),
        "peak_memory_gb": round(max(run["peak_memory_gb"] for run in runs), 3),
        "peak_anonymous_memory_gb": round(max(run["peak_anonymous_memory_gb"] for run in runs), 3),
        "output_shards": len(list((workdir / "corpus" / "train").glob("*.arrow"))),
    }


def measure(tokenizer_mb: float, vocab: int, corpus_mb: list[float], repeats: int, corpus_repeats: int, recipe: dict) -> dict:
    """Both parts; the corpus stage tokenises with the tokenizer trained in the first."""
    with tempfile.TemporaryDirectory(prefix=".llmpipe-bench-", dir=Path.cwd()) as scratch:  # on disk, not /tmp
        scratch = Path(scratch)
        text = generate_text(scratch / "tokenizer.txt", tokenizer_mb)
        tokenizer = tokenizer_training(text, vocab, repeats, scratch / "tokenizer")
        corpora = []
        for megabytes in corpus_mb:
            workdir = scratch / f"corpus-{megabytes:g}mb"
            workdir.mkdir()
            corpus_text = generate_text(workdir / "corpus.txt", megabytes, seed=1)
            corpora.append(corpus_stage(corpus_text, scratch / "tokenizer", workdir, corpus_repeats, recipe))
            (workdir / "corpus.txt").unlink()
    return {"tokenizer_training": tokenizer, "corpus_stage": corpora}


if __name__ == "__main__":
    kind, text, vocab, *folder = sys.argv[1:]
    train_child(kind, Path(text), int(vocab), Path(folder[0]) if folder else None)

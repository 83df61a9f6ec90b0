"""`llmpipe COMMAND ...`: a table of commands; each module adds its options and runs."""

import argparse
import errno
import importlib
import os
import select
import sys

from llmpipe.errors import UserError

COMMANDS = {
    "tokenizer": ("llmpipe.stages.tokenizer", "train a byte-level BPE tokenizer on the train documents (book ch2)"),
    "corpus": ("llmpipe.stages.corpus", "tokenize the documents and cut them into blocks with a sliding window (ch2)"),
    "pretrain": ("llmpipe.stages.pretrain", "pretrain GPT-2 from config, or continue from given weights (ch4-5, app. D)"),
    "classify": ("llmpipe.stages.classify", "fine-tune the pretrained model as a spam classifier, beside a TF-IDF baseline (ch6)"),
    "adaptation": ("llmpipe.stages.adaptation", "gather the classify runs of several adaptation methods into one table and figure"),
    "sft": ("llmpipe.stages.sft", "instruction fine-tuning with TRL's SFTTrainer, loss on responses only (ch7)"),
    "lora": ("llmpipe.stages.lora", "the instruction task with LoRA adapters (PEFT), plus a merged model (app. E)"),
    "dpo": ("llmpipe.stages.dpo", "preference tuning of the sft model with TRL's DPOTrainer, scored on held-out pairs (ch7 bonus)"),
    "judge-model": ("llmpipe.stages.judge_model", "write the evaluate stage's judge as a model folder (default: SmolLM2-135M-Instruct from PyPI)"),
    "meta-evaluate": ("llmpipe.stages.meta_evaluate", "measure how well each evaluate measure agrees with GPT-4 on the book's 200 rated answers"),
    "evaluate": ("llmpipe.stages.evaluate", "answer the test instructions with each model and score the answers with a judge (ch7.7-7.8)"),
    "generate": ("llmpipe.commands.generate", "continue a prompt with a trained model: greedy, temperature, top-k, top-p (ch5.3)"),
    "push": ("llmpipe.commands.push", "push a trained model to the Hugging Face Hub with its model card, in one commit"),
    "classify-text": ("llmpipe.commands.classify_text", "label texts as ham or spam with a trained classifier"),
    "app": ("llmpipe.commands.app", "a local web app over the trained models: chat, generate, classify, compare (ch5-7)"),
}


def no_space(err: BaseException | None) -> OSError | None:
    """The out-of-space OSError in `err`'s chain of causes, if there is one."""
    while err is not None:
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
            return err
        err = err.__cause__ or err.__context__
    return None


def stdout_reader_gone() -> bool:
    """Whether standard output is a pipe whose reading end was closed (poll reports an error on it)."""
    poller = select.poll()
    poller.register(sys.stdout.fileno(), select.POLLERR)
    return bool(poller.poll(0))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    top = argparse.ArgumentParser(prog="llmpipe", description="The LLMs-from-scratch journey as a reproducible HF pipeline.")
    commands = top.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (_, summary) in COMMANDS.items():
        commands.add_parser(name, help=summary, add_help=False)
    if not argv or argv[0] not in COMMANDS:
        top.parse_args(argv)  # prints help or names the unknown command, and exits
    name, rest = argv[0], argv[1:]
    module_name, summary = COMMANDS[name]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=f"llmpipe {name}", description=summary)
    module.add_arguments(parser)
    args = parser.parse_args(rest)
    try:
        module.main(args)
        sys.stdout.flush()  # a reader that went away shows here rather than at exit
    except UserError as err:
        print(f"llmpipe {name}: error: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        if not stdout_reader_gone():
            raise
        # `llmpipe push --dry-run | head`: the reader has what it wanted; Python's flush at exit would fail again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print(f"\nllmpipe {name}: interrupted; outputs left as they were", file=sys.stderr)
        return 130
    except Exception as err:  # a full disk surfaces wrapped by the library that was writing (datasets, ...)
        full = no_space(err)
        if full is None:
            raise
        print(
            f"llmpipe {name}: error: no space left on the device while writing {full.filename or 'an output'}; "
            "free some space and run it again (the previous outputs are intact)",
            file=sys.stderr,
        )
        return 28
    return 0

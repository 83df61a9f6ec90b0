"""`llmpipe app`: a local web app over what the pipeline wrote: chat with an instruction-tuned model, continue
a prompt with the pretrained one, classify a message as spam or ham, compare two models' judged answers."""

import argparse
import os
import time

from llmpipe.errors import UserError


def named_folder(text: str) -> tuple[str, str]:
    name, _, folder = text.partition("=")
    if not name or not folder:
        raise argparse.ArgumentTypeError(f"expected NAME=FOLDER, e.g. smol=../smol/artifacts/sft (got {text!r})")
    return name, folder


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--artifacts", default="artifacts", help="the folder the pipeline wrote its models into (default: %(default)s)")
    parser.add_argument("--judge", help="the judge model folder that scores Compare's answers (default: ARTIFACTS/judge, the judge-model stage's)")
    parser.add_argument("--model", action="append", type=named_folder, default=[], metavar="NAME=FOLDER",
                        help="one more instruction-tuned model for Chat and Compare, e.g. smol=../smol/artifacts/sft (repeatable)")
    parser.add_argument("--host", default="127.0.0.1", help="the address to serve on (default: %(default)s: this machine only; "
                        "any other lets the network in, with no login)")
    parser.add_argument("--port", type=int, default=7860, help="the port to serve on (default: %(default)s)")


def main(args: argparse.Namespace) -> None:
    started = time.perf_counter()
    # before Gradio, transformers and huggingface_hub are imported: they read these once, at import
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    from llmpipe.app import ui
    from llmpipe.app.models import Models

    models = Models(args.artifacts, args.judge, dict(args.model))
    offered = models.instruction_tuned + models.pretrained + models.classifiers
    if all(choice.unavailable for choice in offered):
        raise UserError(f"{args.artifacts}: no model the pipeline writes is there; run `make repro` first, or pass --artifacts")
    page, url = ui.launch(models, args.host, args.port)
    ready = sum(not choice.unavailable for choice in offered)
    print(f"llmpipe app: {url} serving {ready} of {len(offered)} models, up in {time.perf_counter() - started:.1f} s; Ctrl+C stops it", flush=True)
    page.block_thread()

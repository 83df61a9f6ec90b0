"""The two training loops the bench compares on a recipe's pretrain model: the pretrain stage's loop
(transformers `Trainer` as the stage sets it up, with its Throughput callback) and a plain PyTorch loop,
alike in all but the framework (the same rows, collator and DataLoader settings, loss call and learning-rate
schedule, no KV cache, the loss and gradient norm read back at the same logging steps, both compiled or
neither); the recipe's settings and each fast default's alternative (variants)."""

import contextlib
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import transformers
from torch.nn.attention import SDPBackend, sdpa_kernel
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainerCallback, TrainingArguments, set_seed

from llmpipe import config
from llmpipe.data.packing import causal_lm_batch
from llmpipe.errors import UserError
from llmpipe.runtime import mixed_precision, throughput
from llmpipe.stages import training
from llmpipe.stages.corpus import CorpusRecipe
from llmpipe.stages.pretrain import PretrainRecipe
from llmpipe.stages.tokenizer import BPE_TRAINER_VOCAB, TokenizerRecipe

GPT2_VOCAB = 50257
LOGGING_STEPS = 10  # both loops read the loss and gradient norm back this often


def vocab_size(tokenizer: TokenizerRecipe) -> int | None:
    """The vocabulary the tokenizer stage makes: GPT-2's, or the trained one's (BpeTrainer's default 30,000 when
    the recipe names none); None for another model's tokenizer."""
    if tokenizer.init_from is None:
        return tokenizer.trainer.get("vocab_size", BPE_TRAINER_VOCAB)
    return GPT2_VOCAB if tokenizer.init_from == "gpt2" else None


def recipe_shape(recipe: Path, bf16: bool = False, compile: bool = False) -> dict:
    """Model config, context, batch size, precision and run settings of a recipe folder's pretrain stage
    (bf16 autocast as the recipe says on a GPU, or wherever `bf16` asks for it; `compile`: both loops compiled)."""
    tokenizer = config.load(TokenizerRecipe, recipe / "tokenizer.yaml")
    corpus = config.load(CorpusRecipe, recipe / "corpus.yaml")
    pretrain = config.load(PretrainRecipe, recipe / "pretrain.yaml")
    vocab = vocab_size(tokenizer)
    if pretrain.init_from or vocab is None:
        raise UserError(f"{recipe}: the bench builds a GPT-2 from the pretrain recipe's `model` with a trained or GPT-2's "
                        f"tokenizer; this recipe starts from other weights: use recipes/tiny or recipes/gpt2-book")
    training = pretrain.training
    return {
        # as the stage builds it: ids from the tokenizer, no pad_token_id, no KV cache while training
        "config": GPT2Config(vocab_size=vocab, bos_token_id=vocab - 1, eos_token_id=vocab - 1, use_cache=False, **pretrain.model),
        "context": corpus.context_length,
        "learning_rate": float(training.get("learning_rate", 1e-3)),
        "bf16": bf16 or (bool(training.get("bf16", False)) and torch.cuda.is_available()),
        "gpu": torch.cuda.is_available(),
        "compile": compile,
        "settings": {
            "attention": "sdpa", "optim": "adamw_torch_fused", "workers": 0, "pad_to_multiple_of": pretrain.pad_to_multiple_of,
            "activation": pretrain.model.get("activation_function", "gelu_new"), "dropout": pretrain.model.get("resid_pdrop", 0.1),
            "trainer_syncs": False, "pad_token_id": False, "fp32_outputs": False,
            "micro_batch": training.get("per_device_train_batch_size", 8), "sdpa_backend": None,  # None: PyTorch picks
            "compile_mode": training.get("torch_compile_mode"),  # None: torch.compile's default
        },
    }


# each setting of the defaults above against its alternative; the Trainer syncs are what the pretrain
# stage turned off (Trainer's token count, the NaN/inf filter, blocking copies, a pad_token_id on the config);
# fp32 outputs: accelerate's conversion of the logits to fp32 under bf16, which the stage drops
VARIANTS = {
    "eager_attention": {"attention": "eager"},
    "unfused_adamw": {"optim": "adamw_torch"},
    "two_dataloader_workers": {"workers": 2},
    "unpadded_vocabulary": {"pad_to_multiple_of": None},
    "gelu_new": {"activation": "gelu_new"},
    "no_dropout": {"dropout": 0.0},
    "dropout_0.1": {"dropout": 0.1},
    "trainer_syncs": {"trainer_syncs": True},
    "pad_token_id_on_config": {"pad_token_id": True},
    "fp32_outputs": {"fp32_outputs": True},
    "flash_attention": {"sdpa_backend": "FLASH_ATTENTION"},
    "cudnn_attention": {"sdpa_backend": "CUDNN_ATTENTION"},
    "efficient_attention": {"sdpa_backend": "EFFICIENT_ATTENTION"},
    "micro_batch_16": {"micro_batch": 16},
    "micro_batch_32": {"micro_batch": 32},
    "micro_batch_64": {"micro_batch": 64},
    # inductor's autotuned kernels, and those plus CUDA graphs (one launch a graph instead of one a kernel)
    "compile_max_autotune": {"compile_mode": "max-autotune-no-cudagraphs"},
    "compile_cuda_graphs": {"compile_mode": "max-autotune"},
}
# variants that apply only with bf16 autocast, only on a GPU (the SDPA kernels; micro-batches sized for its
# memory), or only compiled on a GPU (inductor's autotuning takes many minutes on a CPU)
NEEDS = {
    "fp32_outputs": ("bf16",), "flash_attention": ("gpu",), "cudnn_attention": ("gpu",), "efficient_attention": ("gpu",),
    "micro_batch_16": ("gpu",), "micro_batch_32": ("gpu",), "micro_batch_64": ("gpu",),
    "compile_max_autotune": ("gpu", "compile"), "compile_cuda_graphs": ("gpu", "compile"),
}


def variants_of(shape: dict, names: list[str] | None) -> dict[str, dict]:
    """The variants that change something in this recipe (all, or those named)."""
    chosen = {name: VARIANTS[name] for name in (VARIANTS if names is None else names) if all(shape[need] for need in NEEDS.get(name, ()))}
    return {name: change for name, change in chosen.items() if any(shape["settings"][k] != v for k, v in change.items())}


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def fresh_model(shape: dict, device: torch.device, settings: dict) -> GPT2LMHeadModel:
    set_seed(0)
    dropout = settings["dropout"]
    config = GPT2Config(**{
        **shape["config"].to_dict(), "attn_implementation": settings["attention"], "activation_function": settings["activation"],
        "resid_pdrop": dropout, "embd_pdrop": dropout, "attn_pdrop": dropout,
        "pad_token_id": shape["config"].eos_token_id if settings["pad_token_id"] else None,
    })
    model = GPT2LMHeadModel(config)
    if settings["pad_to_multiple_of"]:
        model.resize_token_embeddings(pad_to_multiple_of=settings["pad_to_multiple_of"], mean_resizing=False)
    return model.to(device)


def plain_loop(shape: dict, rows: list[dict], warmup: int, device: torch.device, settings: dict,
               on_step: Callable[[], None] | None = None) -> float:
    """Seconds for the timed steps of the textbook loop: forward, backward, clip, AdamW step, learning-rate
    step (Trainer's default schedule, linear decay); `on_step` is called at the end of each step."""
    model = fresh_model(shape, device, settings).train()
    if shape["compile"]:
        model = torch.compile(model)
    # weight decay on the matrices only, biases and norms without (Trainer's two groups, nanoGPT's split)
    matrices = [parameter for parameter in model.parameters() if parameter.dim() >= 2]
    vectors = [parameter for parameter in model.parameters() if parameter.dim() < 2]
    groups = [{"params": matrices, "weight_decay": 0.1}, {"params": vectors, "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(groups, lr=shape["learning_rate"], fused=True)
    loader = torch.utils.data.DataLoader(
        rows, batch_size=settings["micro_batch"], shuffle=True, collate_fn=causal_lm_batch, drop_last=True,
        pin_memory=device.type == "cuda", num_workers=settings["workers"], generator=torch.Generator().manual_seed(0),
    )
    schedule = transformers.get_scheduler("linear", optimizer, num_warmup_steps=0, num_training_steps=len(loader))
    logged, seconds = torch.zeros((), device=device), 0.0
    for step, batch in enumerate(loader, start=1):
        batch = {key: value.to(device, non_blocking=True) for key, value in batch.items()}
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=shape["bf16"]):
            # the loss as Trainer asks for it: summed and divided by the label count of the batch
            loss = model(**batch, num_items_in_batch=batch["labels"][..., 1:].ne(-100).sum()).loss
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        logged += loss.detach()
        if step in (warmup, len(loader)):  # where WallClock times Trainer: before the step's logging and on_step
            throughput.synchronize()
            seconds = time.perf_counter() - seconds
        if step % LOGGING_STEPS == 0:
            _ = (logged.item(), grad_norm.item())
            logged.zero_()
        if on_step:
            on_step()
    return seconds


class WallClock(TrainerCallback):
    """Seconds from the end of the warm-up steps to the end of the last step (as the plain loop is timed);
    `on_step` is called at the end of each step, as the plain loop calls it."""

    def __init__(self, warmup: int, on_step: Callable[[], None] | None = None):
        self.warmup, self.on_step, self.seconds = warmup, on_step, 0.0

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step in (self.warmup, state.max_steps):
            throughput.synchronize()
            self.seconds = time.perf_counter() - self.seconds
        if self.on_step:
            self.on_step()


def trainer_loop(shape: dict, rows: list[dict], warmup: int, device: torch.device, settings: dict,
                 on_step: Callable[[], None] | None = None) -> float:
    """Seconds for the timed steps under `Trainer`, set up as the pretrain stage sets it up."""
    model = fresh_model(shape, device, settings)
    clock = WallClock(warmup, on_step)
    syncs = {"include_num_input_tokens_seen": "all", "logging_nan_inf_filter": True, "accelerator_config": {"non_blocking": False}}
    with tempfile.TemporaryDirectory() as scratch:
        arguments = TrainingArguments(**{
            **training.fast_defaults(), "include_num_input_tokens_seen": "no", "dataloader_drop_last": True,
            **(syncs if settings["trainer_syncs"] else {}),
            "output_dir": scratch, "max_steps": len(rows) // settings["micro_batch"], "per_device_train_batch_size": settings["micro_batch"],
            "learning_rate": shape["learning_rate"], "weight_decay": 0.1, "max_grad_norm": 1.0, "bf16": shape["bf16"],
            "optim": settings["optim"], "dataloader_num_workers": settings["workers"], "report_to": [], "save_strategy": "no",
            "logging_steps": LOGGING_STEPS, "disable_tqdm": True, "torch_compile": shape["compile"], "seed": 0,
            **({"torch_compile_mode": settings["compile_mode"]} if shape["compile"] and settings["compile_mode"] else {}),
        })
        callbacks = [clock] if settings["fp32_outputs"] else [clock, mixed_precision.HalfPrecisionOutputs()]
        trainer = Trainer(model=model, args=arguments, train_dataset=rows, data_collator=causal_lm_batch, callbacks=callbacks)
        throughput.add_to(trainer, throughput.Throughput(sequence_length=shape["context"], skip_steps=warmup))
        trainer.train()
    return clock.seconds


def timed(loop, shape: dict, rows: list[dict], warmup: int, device: torch.device, settings: dict) -> tuple[float, float]:
    """(seconds, peak memory in GB) of one run of `loop`, with only the settings' SDPA kernel allowed if it names one."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    backend = settings["sdpa_backend"]
    with sdpa_kernel(getattr(SDPBackend, backend)) if backend else contextlib.nullcontext():
        seconds = loop(shape, rows, warmup, device, settings)
    return seconds, throughput.peak_memory_gb(device)


def in_turn(repeat: int, pair: tuple) -> tuple:
    """The pair as given in even repeats, reversed in odd ones: each of two runs goes first in every other
    repeat, so a drift within the process (GPU clocks and heat, allocator, compile caches) favours neither."""
    return pair if repeat % 2 == 0 else pair[::-1]


def trainer_minus_plain(plain: dict[str, float], trainer: dict[str, float]) -> dict[str, float]:
    """Per key (an operation, a function), Trainer's figure less the plain loop's; a key one loop lacks counts 0 there."""
    return {key: trainer.get(key, 0.0) - plain.get(key, 0.0) for key in plain.keys() | trainer.keys()}


def random_rows(shape: dict, steps: int, batch: int) -> list[dict]:
    """Enough full blocks of random token ids for `steps` batches of `batch`."""
    generator = torch.Generator().manual_seed(0)
    blocks = torch.randint(0, shape["config"].vocab_size, (steps * batch, shape["context"]), generator=generator)
    return [{"input_ids": block.tolist()} for block in blocks]

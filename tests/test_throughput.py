import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainerCallback, TrainingArguments

from llmpipe.data.packing import causal_lm_batch
from llmpipe.runtime import throughput


def small_model() -> GPT2LMHeadModel:
    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(vocab_size=64, n_positions=16, n_embd=16, n_layer=2, n_head=2))


def test_full_training_costs_six_flops_per_parameter_per_token_plus_attention():
    model = small_model()
    n = sum(p.numel() for p in model.parameters())
    assert throughput.training_flops_per_token(model, 16) == 6 * n + 12 * 2 * 16 * 16


def test_frozen_weights_cost_no_weight_gradients():
    model = get_peft_model(small_model(), LoraConfig(r=2, target_modules=["c_attn"], fan_in_fan_out=True))
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert 0 < trainable < total
    assert throughput.training_flops_per_token(model, 16) == 4 * total + 2 * trainable + 12 * 2 * 16 * 16


@pytest.mark.parametrize(
    "name, peak",
    [("NVIDIA H100 80GB HBM3", 989e12), ("NVIDIA H100 PCIe", 756e12), ("NVIDIA GH200 480GB", 989e12),
     ("NVIDIA L40S", 362e12), ("NVIDIA L40", 181e12), ("NVIDIA L4", 121e12),
     ("NVIDIA A100-SXM4-80GB", 312e12), ("Some Future GPU", None)],
)
def test_gpu_peaks_come_from_the_most_specific_name(name, peak):
    assert throughput.gpu_peak(name) == peak


def test_cpu_peak_is_measured_once_and_cached(tmp_path, monkeypatch):
    monkeypatch.setattr(throughput, "CPU_PEAK_CACHE", tmp_path / "peak.json")
    calls = []
    monkeypatch.setattr(throughput, "cpu_matmul_peak", lambda: calls.append(1) or 1e11)
    assert throughput.device_peak(torch.device("cpu"))[0] == 1e11
    assert throughput.device_peak(torch.device("cpu"))[0] == 1e11
    assert calls == [1]
    (tmp_path / "peak.json").write_text('{"truncated')  # a cache cut short (killed mid-write, disk full)
    assert throughput.device_peak(torch.device("cpu"))[0] == 1e11 and calls == [1, 1]


@pytest.mark.parametrize("counted_by", ["trainer", "callback"])
def test_callback_counts_the_timed_steps_tokens_only(counted_by, tmp_path, monkeypatch):
    monkeypatch.setattr(throughput, "device_peak", lambda device: (1e7, "test"))  # an MFU far above rounding
    blocks = [{"input_ids": list(range(i, i + 16))} for i in range(13)]  # the 13th is dropped: batches stay full
    arguments = TrainingArguments(
        output_dir=str(tmp_path), max_steps=6, per_device_train_batch_size=2, report_to=[], save_strategy="no",
        include_num_input_tokens_seen="non_padding" if counted_by == "trainer" else "no", dataloader_drop_last=True,
        disable_tqdm=True, use_cpu=True,
    )
    timer = throughput.Throughput(sequence_length=16 if counted_by == "callback" else None, skip_steps=2)
    trainer = Trainer(model=small_model(), args=arguments, train_dataset=blocks, data_collator=causal_lm_batch)
    throughput.add_to(trainer, timer)
    trainer.train()
    summary = timer.summary(trainer)
    assert trainer.state.num_input_tokens_seen == 6 * 2 * 16
    assert trainer.state.num_input_tokens_seen - timer.untimed_tokens == 4 * 2 * 16  # steps 3-6
    assert summary["tokens_per_second"] == pytest.approx(4 * 2 * 16 / timer.seconds, rel=1e-3, abs=0.05)  # rounded to 0.1
    flops = throughput.training_flops_per_token(trainer.model, 16)
    assert summary["mfu"] == pytest.approx(flops * summary["tokens_per_second"] / 1e7, rel=1e-2)
    assert summary["peak_memory_gb"] > 0


@pytest.mark.parametrize("drop_last", [True, False])
def test_callback_counts_every_micro_batch_across_epochs_and_accumulation(tmp_path, drop_last):
    blocks = [{"input_ids": list(range(i, i + 8))} for i in range(7)]  # 3 full batches of 2 an epoch, and one of 1
    arguments = TrainingArguments(
        output_dir=str(tmp_path), num_train_epochs=2, per_device_train_batch_size=2, gradient_accumulation_steps=2,
        report_to=[], save_strategy="no", include_num_input_tokens_seen="no", dataloader_drop_last=drop_last,
        disable_tqdm=True, use_cpu=True,
    )
    trainer = Trainer(model=small_model(), args=arguments, train_dataset=blocks, data_collator=causal_lm_batch)
    throughput.add_to(trainer, throughput.Throughput(sequence_length=8))
    trainer.train()
    assert trainer.state.global_step == 4  # 2 accumulated steps an epoch
    assert trainer.state.num_input_tokens_seen == 2 * (6 if drop_last else 7) * 8  # exactly the blocks trained on


class Reporter(TrainerCallback):
    """Stands for MLflow: Trainer hands each log to the callbacks in order."""

    def __init__(self):
        self.logs = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.logs.append(dict(logs))


def test_tokens_per_second_and_mfu_are_logged_at_every_logging_step(tmp_path, monkeypatch):
    monkeypatch.setattr(throughput, "device_peak", lambda device: (1e9, "test"))
    blocks = [{"input_ids": list(range(i, i + 16))} for i in range(12)]
    arguments = TrainingArguments(
        output_dir=str(tmp_path), max_steps=6, per_device_train_batch_size=2, logging_steps=2, report_to=[],
        save_strategy="no", include_num_input_tokens_seen="no", disable_tqdm=True, use_cpu=True,
    )
    reporter = Reporter()
    trainer = Trainer(model=small_model(), args=arguments, train_dataset=blocks, data_collator=causal_lm_batch, callbacks=[reporter])
    throughput.add_to(trainer, timer := throughput.Throughput(sequence_length=16))
    trainer.train()
    assert trainer.callback_handler.callbacks.index(timer) < trainer.callback_handler.callbacks.index(reporter)
    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert [entry["step"] for entry in logged] == [2, 4, 6]
    for entry, seen in zip(logged, [log for log in reporter.logs if "loss" in log], strict=True):
        assert entry["tokens_per_second"] == seen["tokens_per_second"] > 0
        assert 0 < entry["mfu"] == seen["mfu"]
        assert "grad_norm" in entry and "learning_rate" in entry
    # the windows between logging steps add up to the whole timed run
    windows = [2 * 2 * 16 / entry["tokens_per_second"] for entry in logged]
    assert sum(windows) == pytest.approx(timer.seconds, rel=1e-2)


class Clock:
    """The throughput timer's clock: it stands still but for the hour each evaluation takes."""

    def __init__(self):
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now


class SlowEvaluation(TrainerCallback):
    """An evaluation that takes an hour on the timer's clock: time the timer must leave out."""

    def __init__(self, clock: Clock):
        self.clock, self.evaluations = clock, 0

    def on_evaluate(self, args, state, control, **kwargs):
        self.evaluations += 1
        self.clock.now += 3600.0


def test_evaluation_and_saving_at_epoch_ends_are_not_timed(tmp_path, monkeypatch):
    clock = Clock()
    monkeypatch.setattr(throughput, "time", clock)
    blocks = [{"input_ids": list(range(i, i + 16))} for i in range(4)]
    arguments = TrainingArguments(
        output_dir=str(tmp_path), num_train_epochs=3, per_device_train_batch_size=2, eval_strategy="epoch",
        save_strategy="epoch", logging_strategy="epoch", report_to=[], include_num_input_tokens_seen="no",
        disable_tqdm=True, use_cpu=True,
    )
    slow = SlowEvaluation(clock)
    trainer = Trainer(model=small_model(), args=arguments, train_dataset=blocks, eval_dataset=blocks[:2],
                      data_collator=causal_lm_batch, callbacks=[slow])
    throughput.add_to(trainer, timer := throughput.Throughput(sequence_length=16))
    trainer.train()
    assert slow.evaluations == 3 and len(list(tmp_path.glob("checkpoint-*"))) == 3
    assert timer.seconds == 0.0  # any evaluation inside the timed spans would add its hour


def test_only_rank_0_computes_rates(monkeypatch):
    """Every process gets `on_log`; the others must not measure the CPU's peak at the same time as rank 0."""
    from transformers import TrainerControl, TrainerState

    monkeypatch.setattr(throughput, "device_peak", lambda device: pytest.fail("a rank other than 0 measured the peak"))
    timer = throughput.Throughput(sequence_length=16)
    timer.seconds, timer.first_step = 1.0, 0
    state = TrainerState(is_world_process_zero=False, global_step=2, num_input_tokens_seen=64)
    logs = {"loss": 1.0}
    timer.on_log(TrainingArguments(output_dir="unused", use_cpu=True), state, TrainerControl(), logs=logs, model=small_model())
    assert logs == {"loss": 1.0}

import json

import pytest

from bench import data_stages, host_overhead, host_reads, loops, profiling, training
from llmpipe.errors import UserError
from tests.conftest import REPO


def test_bench_times_both_loops_on_the_same_work_and_reports_their_ratio():
    result = training.training(REPO / "recipes" / "test", steps=2, warmup=1, repeats=1, compile=False, variants=["trainer_syncs", "no_dropout"])
    (run,) = result["runs"]
    assert run["plain_tokens_per_second"] > 0 and run["trainer_tokens_per_second"] > 0
    assert result["trainer_vs_plain"] == pytest.approx(run["trainer_tokens_per_second"] / run["plain_tokens_per_second"], abs=2e-3)
    assert result["trainer_vs_plain_paired"] == pytest.approx(result["trainer_vs_plain"], abs=2e-3)  # one run: one pair
    assert result["context"] == 32 and result["batch"] == 8 and result["warmup_steps"] == 1
    assert result["flops_per_token"] > result["llmc_flops_per_token"] > 6 * result["parameters"]  # plus attention
    assert 0 < result["trainer_mfu"] and result["trainer_peak_memory_gb"] > 0 and result["plain_peak_memory_gb"] > 0
    assert set(result["variants"]) == {"trainer_syncs", "no_dropout"}
    for name, variant in result["variants"].items():  # each fast default, switched off, against a default run beside it
        ratio = variant["trainer_tokens_per_second"] / variant["default_tokens_per_second"]  # of rounded figures
        assert variant["vs_default"] == pytest.approx(ratio, abs=2e-3), name


def test_a_variant_is_timed_beside_a_default_run_in_each_repeat_taking_turns_going_first(monkeypatch):
    shape = loops.recipe_shape(REPO / "recipes" / "test")
    variant = shape["settings"] | {"dropout": 0.0}
    order = []

    def timed(loop, shape, rows, warmup, device, settings):  # the variant takes 1 s, the defaults 2 s
        order.append("variant" if settings == variant else "default")
        return (1.0 if settings == variant else 2.0), 0.5

    monkeypatch.setattr(loops, "timed", timed)
    result = training.paired_variant(shape, variant, loops.random_rows(shape, 3, 8), 2, 1, 2, loops.default_device())
    assert order == ["variant", "default", "default", "variant"]
    assert result["vs_default"] == 2.0 and result["trainer_tokens_per_second"] == 2 * 8 * 32 / 1.0


def test_a_variant_that_cannot_run_is_recorded_with_its_error_and_a_micro_batch_variant_gets_its_own_batches(monkeypatch):
    for name in ("cudnn_attention", "micro_batch_32"):  # GPU variants, tried on the CPU
        monkeypatch.setitem(loops.NEEDS, name, ())
    result = training.training(REPO / "recipes" / "test", steps=2, warmup=1, repeats=1, compile=False,
                               variants=["cudnn_attention", "micro_batch_32"])
    assert "No viable backend" in result["variants"]["cudnn_attention"]["error"]  # no cuDNN kernel on a CPU
    # the run went on past the failure; the default's rows (3 batches of 8) would give no step of 32
    assert result["variants"]["micro_batch_32"]["trainer_tokens_per_second"] > 0


def test_variants_past_the_time_budget_are_recorded_as_skipped_and_the_loops_take_turns_going_first():
    result = training.training(REPO / "recipes" / "test", steps=2, warmup=1, repeats=2, compile=False, variants=["no_dropout"], budget_s=0)
    assert [run["first"] for run in result["runs"]] == ["plain", "trainer"]
    assert all(run["plain_tokens_per_second"] > 0 and run["trainer_tokens_per_second"] > 0 for run in result["runs"])
    assert result["variants"] == {"no_dropout": {"error": "skipped: the run passed its budget of 0 s"}}


def test_trainer_as_the_pretrain_stage_sets_it_up_reads_no_more_back_to_the_host_than_the_plain_loop():
    counted = host_reads.measure(REPO / "recipes" / "test", steps=20)
    plain, trainer, syncs = (counted[loop]["reads"] for loop in ("plain", "trainer", "trainer_syncs"))
    assert plain >= 20 // loops.LOGGING_STEPS * 2  # the loss and the gradient norm at each logging step
    assert trainer <= plain + 1  # Trainer reads its loss once more at the end of training
    assert syncs >= trainer + 2 * 20  # what the stage turns off: the NaN/inf filter and the token count, every step


def test_profile_covers_the_timed_steps_of_both_loops_and_splits_each_step_into_operations_and_the_rest():
    result = profiling.measure(REPO / "recipes" / "test", steps=4, warmup=2)
    for loop in ("plain", "trainer"):
        figures = result[loop]
        assert figures["profiled_steps"] == 4  # the warm-up steps left out, every timed step in
        assert 0 < figures["operations_ms"] < figures["step_ms"]
        assert figures["outside_operations_ms"] == pytest.approx(figures["step_ms"] - figures["operations_ms"], abs=2e-3)
        assert any(key.startswith("aten::") for key in figures["top_operations_ms"])
        assert not any(key.startswith("ProfilerStep") for key in figures["top_operations_ms"])  # the whole step, not an operation
    assert result["operations"] == "CPU operators" and len(result["trainer_minus_plain_ms"]) == profiling.TOP


def test_host_overhead_times_both_loops_on_the_smallest_model_and_profiles_only_the_timed_steps():
    result = host_overhead.measure(REPO / "recipes" / "test", steps=6, warmup=2, repeats=1)
    assert result["plain_ms_per_step"] > 0 and result["trainer_ms_per_step"] > 0
    assert result["trainer_extra_ms_per_step"] == pytest.approx(result["trainer_ms_per_step"] - result["plain_ms_per_step"], abs=2e-3)
    assert result["model"]["n_embd"] == 16 and result["context"] == 32 and len(result["trainer_minus_plain_own_ms"]) == host_overhead.TOP
    shape = host_overhead.smallest_shape(REPO / "recipes" / "test", compile=False)
    profiled = host_overhead.own_ms(loops.trainer_loop, shape, loops.random_rows(shape, 6, 8), 2, loops.default_device())
    functions = {key.split("(")[-1] for key in profiled}
    assert "training_step)" in functions and "create_optimizer)" not in functions  # the steps, not Trainer's set-up


def test_a_part_that_fails_leaves_the_parts_measured_before_it_in_the_output(tmp_path, monkeypatch):
    def fails(*args):
        raise RuntimeError("out of device time")

    monkeypatch.setattr(profiling, "measure", fails)
    output = tmp_path / "results.json"
    argv = ["bench.training", "--recipe", str(REPO / "recipes" / "test"), "--parts", "training,profile", "--steps", "2",
            "--warmup", "1", "--repeats", "1", "--variants", "", "--output", str(output)]
    monkeypatch.setattr("sys.argv", argv)
    with pytest.raises(RuntimeError, match="out of device time"):
        training.main()
    saved = json.loads(output.read_text())
    assert saved["training"]["trainer_tokens_per_second"] > 0 and "profile" not in saved
    assert list(saved["measured_at"]) == ["training"] and {"torch", "transformers", "accelerate", "datasets"} <= set(saved["measured_at"]["training"]["versions"])
    assert saved["measured_at"]["training"]["commit"]  # which code measured it


def test_variants_that_change_nothing_in_a_recipe_are_left_out():
    shape = loops.recipe_shape(REPO / "recipes" / "test")  # unpadded vocabulary, GPT2Config's dropout 0.1
    assert "unpadded_vocabulary" not in loops.variants_of(shape, None)
    assert "dropout_0.1" not in loops.variants_of(shape, None) and "no_dropout" in loops.variants_of(shape, None)
    assert "fp32_outputs" not in loops.variants_of(shape, None)  # no mixed precision, nothing to convert
    assert "fp32_outputs" in loops.variants_of(loops.recipe_shape(REPO / "recipes" / "test", bf16=True), None)
    book = loops.recipe_shape(REPO / "recipes" / "gpt2-book")
    assert book["settings"]["pad_to_multiple_of"] == 64 and "unpadded_vocabulary" in loops.variants_of(book, None)
    on_a_gpu = book | {"gpu": True}
    assert "micro_batch_16" in loops.variants_of(on_a_gpu, None) and "compile_max_autotune" not in loops.variants_of(on_a_gpu, None)
    assert "compile_max_autotune" in loops.variants_of(on_a_gpu | {"compile": True}, None)  # compile modes: compiled only


def test_a_compile_mode_variant_reaches_trainer(monkeypatch):
    class Stop(Exception):
        pass

    def capture(model, args, **kwargs):
        raise Stop(args.torch_compile, args.torch_compile_mode)

    monkeypatch.setattr(loops, "Trainer", capture)
    shape = loops.recipe_shape(REPO / "recipes" / "test", compile=True)
    settings = shape["settings"] | loops.VARIANTS["compile_cuda_graphs"]
    with pytest.raises(Stop) as stopped:
        loops.trainer_loop(shape, loops.random_rows(shape, 1, 8), 0, loops.default_device(), settings)
    assert stopped.value.args == (True, "max-autotune")


def test_generated_text_has_the_size_asked_for_and_distinct_documents(tmp_path):
    text = data_stages.generate_text(tmp_path / "text.txt", 0.5)
    assert 0.5 * 2**20 <= text.stat().st_size < 0.5 * 2**20 + 4096
    paragraphs = text.read_text().split("\n\n")
    assert len(set(paragraphs)) > 0.95 * len(paragraphs)


@pytest.mark.slow
def test_data_bench_trains_both_tokenizers_and_runs_the_real_corpus_stage(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    recipe = {"context_length": 64, "stride": 64, "num_proc": 1, "batch_size": 100, "shard_size": "100KB"}
    result = data_stages.measure(0.3, 300, [0.5], repeats=1, corpus_repeats=1, recipe=recipe)
    tokenizers = result["tokenizer_training"]
    assert tokenizers["tokenizers_mb_per_second"] > 0 and tokenizers["sentencepiece_mb_per_second"] > 0
    assert tokenizers["tokenizers_peak_memory_gb"] > 0.05  # a process's own resident memory, measured
    (corpus,) = result["corpus_stage"]
    assert corpus["tokens"] > 0.5 * 2**20 / 8 and corpus["tokens_per_second"] > 0
    assert corpus["output_shards"] > 1  # saved in shards of at most shard_size
    assert 0 < corpus["peak_anonymous_memory_gb"] < corpus["peak_memory_gb"]
    json.dumps(result)
    assert list(tmp_path.iterdir()) == []  # generated text and outputs are cleaned up


def test_judge_bench_times_the_one_at_a_time_and_the_batched_judge_on_the_same_answers(tmp_path, tiny_model, tokenizer):
    from bench import judge

    tiny_model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    result = judge.measure(str(tmp_path), REPO / "data" / "instruction-data.json", count=2)
    assert result["examples"] == 6 and set(result["readings"]) == {"exact", "first_number"}
    for figures in result["readings"].values():
        assert figures["one_at_a_time_examples_per_second"] > 0 and figures["batched_examples_per_second"] > 0
        assert figures["max_score_difference"] < 1e-4
    assert result["speedup"] > 0


def test_a_recipe_that_starts_from_other_weights_is_refused_by_name():
    with pytest.raises(UserError, match="recipes/smol: the bench builds a GPT-2"):
        loops.recipe_shape(REPO / "recipes" / "smol")

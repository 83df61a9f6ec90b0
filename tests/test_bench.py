from llmpipe import bench
from tests.conftest import REPO


def test_bench_times_both_loops_on_the_same_work_and_reports_their_ratio():
    result = bench.measure(REPO / "recipes" / "test", steps=2, warmup=1, repeats=1, compile=False)
    (run,) = result["runs"]
    assert run["plain_tokens_per_second"] > 0 and run["trainer_tokens_per_second"] > 0
    assert result["trainer_vs_plain"] == round(run["trainer_tokens_per_second"] / run["plain_tokens_per_second"], 3)
    assert result["context"] == 32 and result["batch"] == 8
    assert result["flops_per_token"] > 6 * result["parameters"]  # plus attention
    assert 0 < result["trainer_mfu"] and result["peak_memory_gb"] > 0

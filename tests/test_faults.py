"""Faults: an interrupted or killed stage leaves the old outputs whole and the next run recovers; an MLflow
server that does not answer is named before any training; a full disk leaves the previous artifact intact."""

import errno
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml
from transformers import PreTrainedTokenizerFast

from llmpipe import cli
from llmpipe.runtime import atomic
from tests.conftest import REPO, assert_refused, staging_leftovers

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


def old_output(folder):
    folder.mkdir(parents=True)
    (folder / "config.json").write_text('{"old": true}')
    return folder


@pytest.mark.slow
def test_sigint_during_training_keeps_the_old_output_and_the_next_run_resumes(workspace, tmp_path):
    out, ck = old_output(tmp_path / "pretrain"), tmp_path / "checkpoints"
    argv = [sys.executable, "-m", "llmpipe", "pretrain", "--output", str(out), "--checkpoints", str(ck),
            "--metrics", str(tmp_path / "m.json"), "--plots", str(tmp_path / "p.csv"),
            "--set", "training.max_steps=300", "--set", "training.eval_steps=300"]
    # Ctrl-C reaches a foreground run; a suite started in the background (`make test &`, nohup) passes on
    # SIGINT ignored, and Python then leaves it ignored: the run would train on to its end
    run = subprocess.Popen(argv, cwd=workspace, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 300
    while not (ck / "checkpoint-15" / "trainer_state.json").is_file():
        assert run.poll() is None and time.monotonic() < deadline, "pretrain ended before its first checkpoint"
        time.sleep(0.01)
    run.send_signal(signal.SIGINT)
    _, err = run.communicate(timeout=120)
    assert run.returncode == 130 and "interrupted; outputs left as they were" in err and "Traceback" not in err
    assert (out / "config.json").read_text() == '{"old": true}' and not (tmp_path / "m.json").exists()
    assert not staging_leftovers(tmp_path)

    resumed = subprocess.run(argv, cwd=workspace, env=ENV, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resuming from {ck}/checkpoint-" in resumed.stdout
    assert (out / "model.safetensors").is_file() and not staging_leftovers(tmp_path)


def test_sigkill_while_writing_leaves_the_old_output_and_the_next_write_clears_the_leftovers(tmp_path):
    target = old_output(tmp_path / "artifact")
    script = (
        "import os, signal, sys\nfrom llmpipe.runtime import atomic\n"
        "with atomic.directory(sys.argv[1]) as staging:\n"
        "    (staging / 'config.json').write_text('half')\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    killed = subprocess.run([sys.executable, "-c", script, str(target)], env=ENV)
    assert killed.returncode == -signal.SIGKILL
    assert (target / "config.json").read_text() == '{"old": true}' and staging_leftovers(tmp_path)
    with atomic.directory(target) as staging:
        (staging / "config.json").write_text('{"new": true}')
    assert (target / "config.json").read_text() == '{"new": true}' and not staging_leftovers(tmp_path)


def test_sigkill_between_moving_the_old_output_aside_and_the_new_one_in_restores_the_old_one(tmp_path):
    target = old_output(tmp_path / "artifact")
    script = (
        "import os, signal, sys\nfrom llmpipe.runtime import atomic\nreplace = os.replace\n"
        "def killed_before_the_new_one_moves_in(source, destination):\n"
        "    if '.tmp-' in str(source):\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "    replace(source, destination)\n"
        "os.replace = killed_before_the_new_one_moves_in\n"
        "with atomic.directory(sys.argv[1]) as staging:\n"
        "    (staging / 'config.json').write_text('{\"new\": true}')\n"
    )
    killed = subprocess.run([sys.executable, "-c", script, str(target)], env=ENV)
    assert killed.returncode == -signal.SIGKILL and not target.exists()
    with pytest.raises(RuntimeError), atomic.directory(target):  # the next run starts, then fails
        assert (target / "config.json").read_text() == '{"old": true}'
        raise RuntimeError("the next run fails too")
    assert (target / "config.json").read_text() == '{"old": true}' and not staging_leftovers(tmp_path)


def test_two_processes_writing_one_file_at_once_both_succeed(tmp_path):
    """Leftovers are cleared only when their writer is gone, not another live writer's staging file."""
    script = "import sys\nfrom llmpipe.runtime import atomic\nfor i in range(300):\n    atomic.write_json(sys.argv[1], {'i': i})\n"
    writers = [subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "cache.json")], env=ENV, stderr=subprocess.PIPE, text=True)
               for _ in range(2)]
    for writer in writers:
        assert writer.wait(timeout=120) == 0, writer.stderr.read()
    assert (tmp_path / "cache.json").read_text().startswith("{") and not staging_leftovers(tmp_path)


def tracking_to(workspace, tmp_path, uri: str, unreachable: str) -> str:
    params = yaml.safe_load((workspace / "params.yaml").read_text())
    params["mlflow"] |= {"enabled": True, "tracking_uri": uri, "unreachable": unreachable}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    return str(tmp_path / "params.yaml")


def dead_server() -> str:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


def test_an_mlflow_server_that_does_not_answer_stops_the_stage_at_once(workspace, inside, tmp_path, capsys):
    uri = dead_server()
    out = old_output(tmp_path / "tokenizer")
    code = cli.main(["tokenizer", "--params", tracking_to(workspace, tmp_path, uri, "fail"), "--output", str(out),
                     "--metrics", str(tmp_path / "m.json")])
    assert_refused(code, capsys.readouterr().err, f"MLflow tracking server {uri} does not answer", "`mlflow.unreachable: local`")
    assert (out / "config.json").read_text() == '{"old": true}' and not staging_leftovers(tmp_path)


def test_a_server_that_is_not_mlflow_is_named(workspace, inside, tmp_path, capsys):
    import http.server
    import threading

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)  # 404 at /health
    threading.Thread(target=server.serve_forever, daemon=True).start()
    uri = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        code = cli.main(["tokenizer", "--params", tracking_to(workspace, tmp_path, uri, "fail"),
                         "--output", str(tmp_path / "tokenizer"), "--metrics", str(tmp_path / "m.json")])
    finally:
        server.shutdown()
    assert_refused(code, capsys.readouterr().err, f"MLflow tracking server {uri} does not answer (HTTP 404 at /health: is it an MLflow server?)")


@pytest.mark.slow
def test_unreachable_local_logs_to_the_local_store_instead(workspace, tmp_path):
    argv = [sys.executable, "-m", "llmpipe", "tokenizer", "--params", tracking_to(workspace, tmp_path, dead_server(), "local"),
            "--output", str(tmp_path / "tokenizer"), "--metrics", str(tmp_path / "m.json")]
    (workspace / "mlflow.db").unlink(missing_ok=True)
    result = subprocess.run(argv, cwd=workspace, env=ENV, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"does not answer (ConnectionError); logging to sqlite:///{workspace / 'mlflow.db'} instead" in result.stdout
    assert (workspace / "mlflow.db").is_file() and (tmp_path / "tokenizer/tokenizer.json").is_file()


def test_a_full_disk_while_saving_is_named_and_the_previous_artifact_is_intact(inside, tmp_path, monkeypatch, capsys):
    def no_space(self, folder, *args, **kwargs):
        try:
            raise OSError(errno.ENOSPC, "No space left on device", f"{folder}/tokenizer.json")
        except OSError as err:  # libraries often wrap it (datasets' DatasetGenerationError, ...)
            raise RuntimeError("saving failed") from err

    monkeypatch.setattr(PreTrainedTokenizerFast, "save_pretrained", no_space)
    out = old_output(tmp_path / "tokenizer")
    code = cli.main(["tokenizer", "--output", str(out), "--metrics", str(tmp_path / "m.json")])
    err = capsys.readouterr().err
    assert code == 28 and "no space left on the device while writing" in err and "tokenizer.json" in err
    assert "previous outputs are intact" in err and "Traceback" not in err
    assert (out / "config.json").read_text() == '{"old": true}' and not staging_leftovers(tmp_path)


@pytest.mark.parametrize(
    "target, culprit",
    [("recipes", "--output recipes: holds files no llmpipe stage writes (recipes/"),
     ("params.yaml", "--output params.yaml: is a file"),
     (".", "--output .: holds the working folder")],
)
def test_an_output_that_is_not_a_stage_output_is_refused_before_any_work(inside, capsys, target, culprit):
    """A stage replaces its output folder whole: pointed at the user's own files, it must not touch them."""
    before = {str(path): path.stat().st_mtime_ns for path in inside.rglob("*") if path.is_file() and "mlruns" not in path.parts}
    assert_refused(cli.main(["tokenizer", "--output", target]), capsys.readouterr().err, culprit)
    after = {str(path): path.stat().st_mtime_ns for path in inside.rglob("*") if path.is_file() and "mlruns" not in path.parts}
    assert after == before and not staging_leftovers(inside)


def test_an_earlier_output_and_an_empty_folder_may_be_replaced(inside, capsys, tmp_path):
    (tmp_path / "empty").mkdir()
    for _ in ("empty", "an earlier output"):
        assert cli.main(["tokenizer", "--output", str(tmp_path / "empty"), "--metrics", str(tmp_path / "m.json")]) == 0
        assert (tmp_path / "empty/tokenizer.json").is_file()


def test_a_metrics_path_that_is_a_folder_is_refused_before_any_work(inside, capsys, tmp_path):
    assert_refused(cli.main(["tokenizer", "--output", str(tmp_path / "out"), "--metrics", str(tmp_path)]),
                   capsys.readouterr().err, f"--metrics {tmp_path}: is a folder")
    assert not (tmp_path / "out").exists()


def test_an_output_folders_files_follow_the_umask_even_when_a_library_writes_them_owner_only(tmp_path):
    import torch
    from safetensors.torch import save_file

    previous = os.umask(0o022)
    try:
        with atomic.directory(tmp_path / "model") as staging:
            save_file({"weight": torch.zeros(2)}, staging / "model.safetensors")  # safetensors creates it 0600
    finally:
        os.umask(previous)
    assert (tmp_path / "model/model.safetensors").stat().st_mode & 0o777 == 0o644

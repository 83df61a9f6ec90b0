"""Generation and judge: an empty prompt, too many new tokens, a judge endpoint that hangs. The endpoint that
refuses (HTTP 500, nothing listening) and the one that answers garbage are in test_judge.py, against
`transformers serve`."""

import http.server
import socket
import threading

import pytest

from llmpipe import cli
from llmpipe.errors import UserError
from llmpipe.metrics import evaluate_modules
from tests.conftest import assert_refused, outputs_snapshot


def test_an_empty_prompt_is_refused(inside, capsys):
    code = cli.main(["generate", "--model", "artifacts/pretrain", "--prompt", ""])
    assert_refused(code, capsys.readouterr().err, "the prompt is empty")


def test_more_new_tokens_than_the_context_holds_is_refused(inside, capsys):
    code = cli.main(["generate", "--model", "artifacts/pretrain", "--prompt", "I had", "--max-new-tokens", "5000"])
    assert_refused(code, capsys.readouterr().err, "5000", "512")


def test_a_pretrain_sample_longer_than_the_context_is_refused_before_training(inside, capsys):
    before = outputs_snapshot(inside), sorted((inside / "checkpoints/pretrain").rglob("*"))
    code = cli.main(["pretrain", "--set", "sample_max_new_tokens=600", "--restart"])
    assert_refused(code, capsys.readouterr().err, "600", "512")
    assert (outputs_snapshot(inside), sorted((inside / "checkpoints/pretrain").rglob("*"))) == before  # --restart kept them


def test_impossible_decoding_options_are_refused_by_name_before_the_model_loads(capsys):
    for option, value, culprit in (("--top-k", "0", "argument --top-k: must be at least 1"),
                                   ("--top-p", "1.5", "argument --top-p: must be in (0, 1]"),
                                   ("--temperature", "-1", "argument --temperature: must be 0"),
                                   ("--temperature", "inf", "argument --temperature: must be 0 (greedy, the book's) or a positive finite"),
                                   ("--seed", "-1", "argument --seed: must be between 0 and 4294967295"),
                                   ("--max-new-tokens", "0", "argument --max-new-tokens: must be at least 1 (got 0)"),
                                   ("--top-k", "many", "argument --top-k: invalid int value: 'many'")):
        with pytest.raises(SystemExit) as refused:
            cli.main(["generate", "--model", "no/such/model", "--prompt", "I had", "--temperature", "1", option, value])
        err = capsys.readouterr().err
        assert refused.value.code == 2 and err.count("error:") == 1 and "Traceback" not in err
        assert f"llmpipe generate: error: {culprit}" in err


def test_sampling_filters_with_greedy_decoding_are_refused_before_the_model_loads(capsys):
    assert_refused(cli.main(["generate", "--model", "no/such/model", "--prompt", "I had", "--top-k", "5", "--top-p", "0.9"]),
                   capsys.readouterr().err, "--top-k and --top-p filter sampling, and --temperature 0 decodes greedily")


def judge(base_url: str, **settings) -> dict:
    return evaluate_modules.load("judge").compute(
        predictions=["Red."], references=["Blue."], requests=["Name a colour."],
        backend="openai", base_url=base_url, model="llama3", **{"max_retries": 0, **settings},
    )


@pytest.fixture
def silent_endpoint():
    """A server that accepts connections and never answers."""
    listener = socket.create_server(("127.0.0.1", 0))
    held = []
    stop = threading.Event()

    def accept():
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except OSError:
                continue

    threading.Thread(target=accept, daemon=True).start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}/v1"
    stop.set()
    listener.close()


def test_a_judge_that_times_out_is_named_with_the_fix(silent_endpoint):
    with pytest.raises(UserError, match=rf"judge endpoint {silent_endpoint}/ did not answer .*fix judge.base_url"):
        judge(silent_endpoint, timeout=0.5)  # the recipe's timeout, not the client's 10-minute default


@pytest.fixture
def babbling_endpoint():
    """A server that answers every request with 200 and a web page."""

    class Page(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            body = b"<html>It works!</html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Page)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()


def test_a_judge_answering_garbage_http_is_named(babbling_endpoint):
    with pytest.raises(UserError, match=rf"judge endpoint {babbling_endpoint}/ answered with something that is not an OpenAI"):
        judge(babbling_endpoint)


def test_a_judge_url_with_credentials_is_never_shown(silent_endpoint):
    with_credentials = silent_endpoint.replace("http://", "http://user:s3cret@")
    with pytest.raises(UserError) as refused:
        judge(with_credentials, timeout=0.5)
    assert "s3cret" not in str(refused.value) and silent_endpoint in str(refused.value)

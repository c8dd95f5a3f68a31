"""`electra serve`: the routes, batching, limits and errors in process (Starlette's TestClient), and the
process itself: SIGTERM, a bad model, a busy port. ONNX export runs behind the same code."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time

import pytest

from electra.cli import run
from electra.commands import COMMANDS
from electra.serve.app import Limits, create_app
from electra.serve.backends import Backend, load_backend

from conftest import wait_until_serving
from test_finetune import TINY, classification_rows, write_tsv

pytest.importorskip("httpx")
from starlette.testclient import TestClient  # noqa: E402


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tokenizer_dir):
    root = tmp_path_factory.mktemp("serve")
    rows = [(a, label) for a, _, label in classification_rows(60, 1)]
    write_tsv(root / "train.tsv", rows, ["sentence", "label"])
    write_tsv(root / "new.tsv", [(a,) for a, _ in rows[:20]], ["sentence"])
    assert run(COMMANDS, ["finetune", "--task", "classification", "--model", "tiny", "--tokenizer",
                          str(tokenizer_dir), *TINY, "--train", str(root / "train.tsv"), "--dev", str(root / "train.tsv"),
                          "--out", str(root / "ft")]) == 0
    return root


class HeldBackend(Backend):
    """The real model, held on the model thread until the test releases it, and failing on a chosen input.
    Every wait is bounded, so a broken server fails the test instead of hanging it."""

    def __init__(self, model):
        super().__init__(model, "torch")
        self.computing, self.release = threading.Event(), threading.Event()

    def run(self, endpoint, inputs, options):
        self.computing.set()
        assert self.release.wait(30), "the test never released the model"
        if "explode" in inputs:
            raise RuntimeError("boom")
        return super().run(endpoint, inputs, options)


def _wait_for(condition, what: str, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def test_predictions_equal_electra_predict(model_dir, tmp_path):
    assert run(COMMANDS, ["predict", "--model", str(model_dir / "ft"), "--input", str(model_dir / "new.tsv"),
                          "--output", str(tmp_path / "p.jsonl")]) == 0
    expected = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    texts = [line.split("\t")[0] for line in (model_dir / "new.tsv").read_text().splitlines()[1:]]
    with TestClient(create_app(load_backend(str(model_dir / "ft"), "torch"), max_batch_size=8)) as client:
        r = client.post("/v1/predict", json={"inputs": texts})
        assert r.status_code == 200 and r.json()["outputs"] == expected
        assert client.get("/health").json()["status"] == "ready"
        assert "electra serve" in client.get("/").text
        assert 'electra_requests_total{code="200",endpoint="predict"} 1.0' in client.get("/metrics").text


@pytest.mark.parametrize("body, status, message", [
    (b"{not json", 400, "not valid JSON"),
    (b'{"inputs": []}', 400, "non-empty list"),
    (b'{"inputs": "a text"}', 400, "non-empty list"),
    (b'{"inputs": [3]}', 400, "input 1 must be a text"),
    (b'{"inputs": ["a"], "top_k": 0}', 400, "positive integer"),
    (b'{"inputs": ["a"], "color": 1}', 400, "unknown options"),
    (b'{"inputs": [["a", "b"]]}', 400, "reads single texts"),
    (json.dumps({"inputs": ["x"] * 300}).encode(), 413, "limit is 256"),
    (json.dumps({"inputs": ["word " * 5000]}).encode(), 413, "limit is 20,000"),
    (b"x" * (2 << 20), 413, "limit is 1,048,576"),
])
def test_bad_requests_get_4xx_with_one_line(model_dir, body, status, message):
    with TestClient(create_app(load_backend(str(model_dir / "ft"), "torch"))) as client:
        r = client.post("/v1/predict", content=body)
        assert r.status_code == status and message in r.json()["error"], r.text
        assert "\n" not in r.json()["error"]
        assert client.get("/v1/nope").status_code == 404 and "error" in client.get("/v1/nope").json()
        assert client.post("/v1/detect", json={"inputs": ["a"]}).status_code == 404  # not a pretrained model


def test_batching_health_failures_and_a_full_queue(model_dir):
    from electra.api import load

    backend = HeldBackend(load(model_dir / "ft"))
    app = create_app(backend, max_batch_size=16, max_wait_ms=100, limits=Limits(max_queue=6))
    results = {}
    with TestClient(app) as client:
        def post(name, inputs):
            results[name] = client.post("/v1/predict", json={"inputs": inputs})

        def start(name, inputs):
            thread = threading.Thread(target=post, args=(name, inputs), daemon=True)
            thread.start()
            return thread

        def queued():
            return client.get("/health").json()["queue"]

        threads = [start(f"r{i}", [f"text number {i}"]) for i in range(4)]
        assert backend.computing.wait(20)
        assert client.get("/health").status_code == 200  # answered while the model thread is busy
        def batched():  # inputs the model thread has taken so far
            samples = app.state.metrics.batch_size.collect()[0].samples
            return next(s.value for s in samples if s.name.endswith("_sum"))

        _wait_for(lambda: queued() + batched() == 4, "the requests to queue")
        backend.release.set()
        for t in threads:
            t.join(30)
        assert sorted(results) == ["r0", "r1", "r2", "r3"] and all(r.status_code == 200 for r in results.values())
        batches = app.state.metrics.batch_size.collect()[0].samples
        count = next(s.value for s in batches if s.name.endswith("_count"))
        assert count < 4, "concurrent requests were not batched"
        # a failing batch fails its own requests (500); the next request is served
        assert client.post("/v1/predict", json={"inputs": ["explode"]}).status_code == 500
        assert client.post("/v1/predict", json={"inputs": ["fine"]}).status_code == 200
        # more inputs than the queue holds: 503 with Retry-After, at once
        backend.computing.clear()
        backend.release.clear()
        threads = [start("busy", ["a", "b", "c"])]
        assert backend.computing.wait(20)  # the model holds this one; the queue is empty again
        threads += [start(f"q{i}", ["a", "b", "c"]) for i in range(2)]
        _wait_for(lambda: queued() == 6, "six inputs to queue")
        full = client.post("/v1/predict", json={"inputs": ["d"]})
        assert full.status_code == 503 and full.headers["retry-after"] == "1" and "queue is full" in full.json()["error"]
        backend.release.set()
        for t in threads:
            t.join(30)
        assert all(results[k].status_code == 200 for k in ("busy", "q0", "q1"))


def test_stopping_answers_every_waiting_request():
    """A batcher that stops while requests wait (one in the model, two queued) fails them with Stopping:
    neither the clients nor the shutdown wait for batches that will never run."""
    import asyncio

    from electra.serve.batcher import Batcher, Stopping

    release = threading.Event()

    def run(endpoint, inputs, options):
        release.wait(30)
        return inputs

    async def scenario():
        batcher = Batcher(run, max_batch_size=1, max_wait_ms=1)
        batcher.start()
        requests = [asyncio.ensure_future(batcher.submit("predict", [f"x{i}"], {})) for i in range(3)]
        while batcher.waiting != 2:  # one in the model thread, two queued
            await asyncio.sleep(0.01)
        asyncio.get_running_loop().call_later(0.3, release.set)  # the running batch ends after stop began
        await asyncio.wait_for(batcher.stop(), 30)
        return await asyncio.wait_for(asyncio.gather(*requests, return_exceptions=True), 30)

    answers = asyncio.run(scenario())
    assert all(isinstance(a, Stopping) for a in answers), answers


def test_onnx_backend_gives_the_same_predictions(model_dir, tmp_path):
    pytest.importorskip("onnxruntime")
    assert run(COMMANDS, ["export", "--format", "onnx", "--model", str(model_dir / "ft"), "--out", str(tmp_path / "x")]) == 0
    texts = ["the quick fox", "good cat sat on the mat", "bad"]
    with TestClient(create_app(load_backend(str(model_dir / "ft"), "torch"))) as client:
        want = client.post("/v1/predict", json={"inputs": texts}).json()["outputs"]
    with TestClient(create_app(load_backend(str(tmp_path / "x"), "onnx"))) as client:
        got = client.post("/v1/predict", json={"inputs": texts}).json()["outputs"]
        assert client.get("/health").json()["backend"] == "onnx"
    assert [g["prediction"] for g in got] == [w["prediction"] for w in want]
    for g, w in zip(got, want):
        assert abs(g["score"] - w["score"]) < 1e-4


def test_the_model_thread_hands_freed_memory_back_between_batches(model_dir, monkeypatch):
    """The electra command keeps freed memory for speed; a server would grow with it (a 10-minute soak
    with oneDNN still on: +54% resident), so between batches, at most every TRIM_EVERY_S, it goes back to
    the OS, failed batches included; and the ONNX backend runs a batch in length-sorted pieces of 8."""
    from electra.api import load
    from electra.serve import backends

    released = []
    monkeypatch.setattr(backends, "release_freed_memory", lambda: released.append(1) or True)
    backend = Backend(load(model_dir / "ft"), "torch")
    backend.run("predict", ["a cat", "a dog"], {})
    assert not released  # not yet: TRIM_EVERY_S has not passed
    backend.TRIM_EVERY_S = 0.0
    backend.run("predict", ["a cat"], {})
    with pytest.raises(Exception):
        backend.run("predict", [{"no": "text"}], {})
    assert len(released) == 2
    sizes = []
    monkeypatch.setattr(backend.model, "predict", lambda inputs, top_k, batch_size: sizes.append(batch_size) or [])
    backend.model_batch = 8
    backend.run("predict", ["x"] * 20, {})
    backend.run("predict", ["x"] * 3, {})
    assert sizes == [8, 3]


def test_the_torch_server_keeps_no_onednn_kernel_per_shape(model_dir, monkeypatch):
    """oneDNN (PyTorch's CPU GELU) compiles and caches a kernel for each tensor shape, up to 1,024: a server's
    batches of ever-different lengths filled that cache and grew resident memory all through a soak. The
    torch server switches it off before serving; PyTorch's own GELU gives the same outputs."""
    import torch
    from electra.serve import app

    seen = []
    monkeypatch.setattr(app, "run_server", lambda a, host, port: seen.append(torch.backends.mkldnn.enabled))
    before = torch.backends.mkldnn.enabled
    x = torch.randn(37, 1024)
    with_onednn = torch.nn.functional.gelu(x)
    try:
        assert run(COMMANDS, ["serve", "--model", str(model_dir / "ft"), "--port", str(_free_port())]) == 0
        assert seen == [False]
        assert torch.allclose(torch.nn.functional.gelu(x), with_onednn, atol=1e-6)
    finally:
        torch.backends.mkldnn.enabled = before


def test_bench_infer_times_the_served_model_itself(model_dir, capsys):
    """The offline rate `serve` is compared with: the fine-tuned directory's own tokenizer and weights,
    with the Hugging Face reference on the same weights."""
    pytest.importorskip("transformers")
    args = ["bench", "infer", "--model", str(model_dir / "ft"), "--data", str(model_dir / "new.tsv"),
            "--batch-size", "4", "--rounds", "1", "--compare", "hf", "--json"]
    assert run(COMMANDS, args) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["sentences"] == 20 and result["sequences_per_s"] > 0
    assert result["max_abs_logit_diff"] < 1e-4
    assert run(COMMANDS, ["bench", "infer", "--model", str(model_dir / "nothing-here")]) == 2
    assert "neither a size (tiny, small, base, large) nor a directory" in capsys.readouterr().err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_sigterm_finishes_in_flight_requests_then_exits_0(model_dir):
    import httpx

    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "electra", "serve", "--model", str(model_dir / "ft"), "--port",
                             str(port), "--threads", "1"], stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    wait_until_serving(url, proc)
    answers = []
    texts = [" ".join(["the quick brown fox jumps over the lazy dog"] * 12)] * 256
    sender = threading.Thread(target=lambda: answers.append(
        httpx.post(url + "/v1/predict", json={"inputs": texts}, timeout=60)))
    sender.start()
    while httpx.get(url + "/health").json()["in_flight"] == 0:  # the request is being answered
        assert sender.is_alive(), "the request finished before SIGTERM could be sent"
        time.sleep(0.002)
    proc.terminate()
    sender.join(60)
    assert proc.wait(timeout=30) == 0, proc.stderr.read()
    assert answers and answers[0].status_code == 200 and len(answers[0].json()["outputs"]) == 256


@pytest.mark.parametrize("case", ["bad model", "busy port"])
def test_bad_model_or_busy_port_is_one_line_before_binding(case, tmp_path, model_dir):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1] if case == "busy port" else _free_port()
        model = str(tmp_path / "nope") if case == "bad model" else str(model_dir / "ft")
        proc = subprocess.run([sys.executable, "-m", "electra", "serve", "--model", model, "--port", str(port)],
                              capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert ("not found" if case == "bad model" else "cannot listen on") in proc.stderr


def test_one_bad_input_fails_its_own_request_only(model_dir):
    """A batch that fails is run again request by request: the culprit gets its error, the others answers."""
    from electra.api import load

    backend = HeldBackend(load(model_dir / "ft"))
    backend.release.set()
    with TestClient(create_app(backend, max_batch_size=16, max_wait_ms=200)) as client:
        results = {}
        threads = [threading.Thread(target=lambda n=n, x=x: results.__setitem__(
            n, client.post("/v1/predict", json={"inputs": [x]}))) for n, x in enumerate(["fine", "explode", "good"])]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert [results[n].status_code for n in range(3)] == [200, 500, 200]
        assert client.post("/v1/predict", content=b"[" * 100_000).status_code == 400  # nested too deeply


def test_mixed_endpoints_batch_by_kind_without_cutting_batches_short():
    """detect, embed, detect, embed arriving together make one batch per kind, not four."""
    import asyncio

    from electra.serve.batcher import Batcher

    batches = []

    def run(endpoint, inputs, options):
        batches.append((endpoint, list(inputs)))
        return inputs

    async def scenario():
        batcher = Batcher(run, max_batch_size=8, max_wait_ms=50)
        batcher.start()
        kinds = ["detect", "embed", "detect", "embed", "detect"]
        answers = await asyncio.gather(*(batcher.submit(k, [f"{k}{i}"], {}) for i, k in enumerate(kinds)))
        await batcher.stop()
        return answers

    answers = asyncio.run(scenario())
    assert answers == [["detect0"], ["embed1"], ["detect2"], ["embed3"], ["detect4"]]
    assert batches == [("detect", ["detect0", "detect2", "detect4"]), ("embed", ["embed1", "embed3"])]


def test_requests_that_queued_during_a_batch_wait_for_the_clients_it_answered():
    """A request that queued while a batch ran is not sent alone the moment the model is free: the
    window opens then, so a client the batch just answered can send again and join it (64 closed-loop
    clients otherwise split into a full batch and a batch of one, again and again)."""
    import asyncio

    from electra.serve.batcher import Batcher

    batches = []

    def run(endpoint, inputs, options):
        batches.append(list(inputs))
        if inputs == ["a"]:
            time.sleep(0.5)  # "b" queues meanwhile; its own window is long over when "a" ends
        return inputs

    async def scenario():
        batcher = Batcher(run, max_batch_size=8, max_wait_ms=100)
        batcher.start()
        a = asyncio.ensure_future(batcher.submit("predict", ["a"], {}))
        while not batches:  # "a" runs alone
            await asyncio.sleep(0.01)
        b = asyncio.ensure_future(batcher.submit("predict", ["b"], {}))
        await asyncio.wait_for(a, 30)
        c = asyncio.ensure_future(batcher.submit("predict", ["c"], {}))  # "a"'s client sends again at once
        answers = await asyncio.wait_for(asyncio.gather(b, c), 30)
        await batcher.stop()
        return answers

    assert asyncio.run(scenario()) == [["b"], ["c"]]
    assert batches == [["a"], ["b", "c"]]

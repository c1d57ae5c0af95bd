"""trtq serve: the KServe v2 server, checked with Triton's official client and raw HTTP."""

from __future__ import annotations

import contextlib
import gzip
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import onnx
import pytest

from trtq.calibration import calibrate
from trtq.deploy import OrtRunner
from trtq.quantize import quantize

pytest.importorskip("starlette", reason="needs the serve extra: pip install 'trtq[serve]'")
pytest.importorskip("uvicorn", reason="needs the serve extra: pip install 'trtq[serve]'")
pytest.importorskip("prometheus_client", reason="needs the serve extra: pip install 'trtq[serve]'")
tritonhttp = pytest.importorskip("tritonclient.http", reason="needs tritonclient: pip install 'trtq[test]'")

from trtq.deploy.serving import DynamicBatcher, Overloaded, ServedModel, ServeOptions, create_app  # noqa: E402
from trtq.deploy.serving.protocol import InvalidRequest, encode_infer_response, parse_infer_request  # noqa: E402


@pytest.fixture
def int8_path(tmp_path, cnn_model, cnn_data):
    path = tmp_path / "tiny.int8.onnx"
    onnx.save(quantize(cnn_model, calibrate(cnn_model, cnn_data, progress=False)), path)
    return path


def _free_socket() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    return sock


@contextlib.contextmanager
def running(served: ServedModel):
    """Serve ``served`` in this process on a free loopback port; yield 'host:port'."""
    import uvicorn

    sock = _free_socket()
    server = uvicorn.Server(uvicorn.Config(create_app(served, access_log=False), log_config=None,
                                           timeout_graceful_shutdown=10))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
        time.sleep(0.02)
    try:
        yield "127.0.0.1:%d" % sock.getsockname()[1], server
    finally:
        server.should_exit = True
        thread.join(20)
        sock.close()


def _request(url: str, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
    host, port = url.split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=20)
    conn.request(method, path, body=body, headers=headers or {})
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    return resp.status, data, dict(resp.getheaders())


def _infer_json(x: np.ndarray) -> bytes:
    return json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": list(x.shape),
                                   "data": x.reshape(-1).tolist()}]}).encode()


def _metric(text: str, name: str, **labels: str) -> float:
    """Sum of the samples called ``name`` whose labels include ``labels``."""
    from prometheus_client.parser import text_string_to_metric_families

    values = [sample.value for family in text_string_to_metric_families(text) for sample in family.samples
              if sample.name == name and labels.items() <= sample.labels.items()]
    assert values, f"{name} {labels} not in /metrics"
    return sum(values)


# -- the CLI, with the official client ----------------------------------------------------


def test_trtq_serve_answers_tritonclient_like_ortrunner(int8_path, cnn_data):
    """Acceptance: `trtq serve` on an int8 ONNX; tritonclient's metadata and results equal OrtRunner's."""
    sock = _free_socket()
    port = sock.getsockname()[1]
    sock.close()
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "trtq.cli", "serve", str(int8_path), "--port", str(port),
                             "--name", "tiny"], stderr=subprocess.PIPE, stdout=subprocess.PIPE, env=env, text=True)
    try:
        client = tritonhttp.InferenceServerClient(f"127.0.0.1:{port}")
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(Exception):
                if client.is_server_ready():
                    break
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < deadline, "trtq serve did not become ready"
            time.sleep(0.1)
        assert client.is_server_live() and client.is_model_ready("tiny")
        meta = client.get_model_metadata("tiny")
        assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 3, 8, 8]}]
        assert meta["outputs"] == [{"name": "logits", "datatype": "FP32", "shape": [-1, 4]}]
        assert client.get_model_config("tiny")["max_batch_size"] == 32

        x = cnn_data[:4]
        with OrtRunner(int8_path) as runner:
            expected = runner.infer({"input": x})["logits"]
        for binary in (True, False):  # binary tensor extension, and plain JSON
            inp = tritonhttp.InferInput("input", list(x.shape), "FP32")
            inp.set_data_from_numpy(x, binary_data=binary)
            out = tritonhttp.InferRequestedOutput("logits", binary_data=binary)
            result = client.infer("tiny", [inp], outputs=[out], request_id="r1")
            got = result.as_numpy("logits")
            assert got.dtype == np.float32 and got.shape == (4, 4)
            np.testing.assert_array_equal(got, expected)
            assert result.get_response()["id"] == "r1"
        client.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=30)
    # Uvicorn shuts down gracefully, then re-raises SIGTERM so that supervisors see it.
    assert proc.returncode in (0, -signal.SIGTERM), stderr
    events = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    assert [e["event"] for e in events].count("infer") == 2
    assert {"serving", "stopped"} <= {e["event"] for e in events}


# -- load, batching and metrics ---------------------------------------------------------


def test_concurrent_clients_are_batched_and_get_their_own_results(int8_path):
    """Acceptance: 8 concurrent clients x 200 requests, zero errors, batching visible, outputs
    equal to single-request results."""
    rng = np.random.default_rng(0)
    xs = rng.normal(size=(8, 200, 1, 3, 8, 8)).astype(np.float32)
    with OrtRunner(int8_path, mode="onnxruntime") as runner:  # what the server runs by default
        expected = np.stack([[runner.infer({"input": x})["logits"] for x in client_xs] for client_xs in xs])
    served = ServedModel(int8_path, options=ServeOptions(max_batch=8, max_delay_ms=5))
    with running(served) as (url, _):
        def client_run(k: int) -> np.ndarray:
            client = tritonhttp.InferenceServerClient(url)
            outs = []
            for x in xs[k]:
                inp = tritonhttp.InferInput("input", list(x.shape), "FP32")
                inp.set_data_from_numpy(x)
                outs.append(client.infer("tiny", [inp]).as_numpy("logits"))
            client.close()
            return np.stack(outs)

        with ThreadPoolExecutor(8) as pool:
            got = np.stack(list(pool.map(client_run, range(8))))
        status, metrics, _ = _request(url, "GET", "/metrics")
    assert status == 200
    text = metrics.decode()
    # Batched execution may change float summation order: equal to within float32 rounding.
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    assert _metric(text, "trtq_requests_total") == _metric(text, "trtq_requests_total", code="200") == 1600
    batches = _metric(text, "trtq_batch_size_count")
    assert _metric(text, "trtq_batch_size_sum") == 1600
    assert batches < 1600, "no two requests were ever batched together"
    assert _metric(text, "trtq_batch_size_bucket", le="1.0") < batches


# -- malformed requests -------------------------------------------------------------------

_GOOD = {"name": "input", "datatype": "FP32", "shape": [1, 3, 8, 8], "data": [0.5] * 192}
BAD_REQUESTS = {
    "not json": (b"{inputs: nope", {}),
    "json array": (b"[1, 2]", {}),
    "no inputs": (json.dumps({"outputs": []}).encode(), {}),
    "unknown input": (json.dumps({"inputs": [dict(_GOOD, name="pixels")]}).encode(), {}),
    "input twice": (json.dumps({"inputs": [_GOOD, _GOOD]}).encode(), {}),
    "wrong datatype": (json.dumps({"inputs": [dict(_GOOD, datatype="FP16")]}).encode(), {}),
    "unknown datatype": (json.dumps({"inputs": [dict(_GOOD, datatype="COMPLEX")]}).encode(), {}),
    "wrong shape": (json.dumps({"inputs": [dict(_GOOD, shape=[1, 3, 8, 9])]}).encode(), {}),
    "negative dim": (json.dumps({"inputs": [dict(_GOOD, shape=[-1, 3, 8, 8])]}).encode(), {}),
    "too few values": (json.dumps({"inputs": [dict(_GOOD, data=[0.5] * 191)]}).encode(), {}),
    "string values": (json.dumps({"inputs": [dict(_GOOD, data=["a"] * 192)]}).encode(), {}),
    "ragged data": (json.dumps({"inputs": [dict(_GOOD, data=[[1.0], [1.0, 2.0]])]}).encode(), {}),
    "no data": (json.dumps({"inputs": [{k: v for k, v in _GOOD.items() if k != "data"}]}).encode(), {}),
    "batch over max": (json.dumps({"inputs": [dict(_GOOD, shape=[33, 3, 8, 8], data=[0.5] * 192 * 33)]}).encode(), {}),
    "unknown output": (json.dumps({"inputs": [_GOOD], "outputs": [{"name": "probs"}]}).encode(), {}),
    "binary size wrong": (json.dumps({"inputs": [{**{k: v for k, v in _GOOD.items() if k != "data"},
                                                  "parameters": {"binary_data_size": 100}}]}).encode() + b"\0" * 100,
                          "header"),
    "binary bytes missing": (json.dumps({"inputs": [{**{k: v for k, v in _GOOD.items() if k != "data"},
                                                     "parameters": {"binary_data_size": 768}}]}).encode() + b"\0" * 10,
                             "header"),
    "header length too big": (json.dumps({"inputs": [_GOOD]}).encode(),
                              {"Inference-Header-Content-Length": "999999"}),
    "header length not a number": (json.dumps({"inputs": [_GOOD]}).encode(),
                                   {"Inference-Header-Content-Length": "ten"}),
    "unsupported encoding": (json.dumps({"inputs": [_GOOD]}).encode(), {"Content-Encoding": "br"}),
    "corrupt gzip": (b"\x1f\x8b garbage", {"Content-Encoding": "gzip"}),
}


@pytest.fixture
def server(int8_path):
    served = ServedModel(int8_path, name="tiny", options=ServeOptions(max_request_bytes=1 << 20))
    with running(served) as (url, uv):
        yield url, served


def test_every_malformed_request_gets_400_and_the_server_keeps_serving(server):
    url, _ = server
    for case, (body, headers) in BAD_REQUESTS.items():
        if headers == "header":  # JSON header followed by binary bytes
            header_len = body.index(b"}]}") + 3
            headers = {"Inference-Header-Content-Length": str(header_len)}
        status, data, _ = _request(url, "POST", "/v2/models/tiny/infer", body, headers)
        assert status == 400, (case, status, data)
        message = json.loads(data)["error"]
        assert isinstance(message, str) and len(message) > 10, (case, message)
    status, data, _ = _request(url, "POST", "/v2/models/tiny/infer", _infer_json(np.ones((1, 3, 8, 8), np.float32)))
    assert status == 200 and json.loads(data)["outputs"][0]["shape"] == [1, 4]


def test_size_limit_unknown_model_and_method_errors(server):
    url, _ = server
    big = b"{" + b" " * (2 << 20) + b"}"
    status, data, _ = _request(url, "POST", "/v2/models/tiny/infer", big)
    assert status == 413 and "limit" in json.loads(data)["error"]
    bomb = gzip.compress(b" " * (4 << 20))  # small on the wire, 4 MiB inflated
    status, data, _ = _request(url, "POST", "/v2/models/tiny/infer", bomb, {"Content-Encoding": "gzip"})
    assert status == 413
    x = np.ones((2, 3, 8, 8), np.float32)
    status, data, _ = _request(url, "POST", "/v2/models/tiny/infer", gzip.compress(_infer_json(x)),
                               {"Content-Encoding": "gzip"})
    assert status == 200 and json.loads(data)["outputs"][0]["shape"] == [2, 4]
    status, data, _ = _request(url, "POST", "/v2/models/other/infer", _infer_json(x))
    assert status == 404 and "tiny" in json.loads(data)["error"]
    status, data, _ = _request(url, "GET", "/v2/models/tiny/versions/7")
    assert status == 404
    assert _request(url, "GET", "/v2/models/tiny/versions/1")[0] == 200
    status, data, _ = _request(url, "GET", "/v2/models/tiny/infer")
    assert status == 405 and "error" in json.loads(data)
    assert _request(url, "GET", "/nothing")[0] == 404


def test_overload_gets_503_and_the_server_recovers(int8_path):
    served = ServedModel(int8_path, name="tiny", options=ServeOptions(max_queue=1, max_batch=1))
    gate, started = threading.Event(), threading.Event()
    infer = served.runner.infer

    def slow(feed):
        started.set()
        gate.wait(20)
        return infer(feed)

    served.batcher.close()
    served.batcher = DynamicBatcher(slow, max_batch=1, max_queue=1, on_batch=served.metrics.observe_batch)
    body = _infer_json(np.ones((1, 3, 8, 8), np.float32))

    def wait_for(condition):
        deadline = time.monotonic() + 20
        while not condition():
            assert time.monotonic() < deadline
            time.sleep(0.01)

    with running(served) as (url, _), ThreadPoolExecutor(4) as pool:
        first = pool.submit(_request, url, "POST", "/v2/models/tiny/infer", body)  # runs, blocked
        assert started.wait(20)
        second = pool.submit(_request, url, "POST", "/v2/models/tiny/infer", body)  # waits in the queue
        wait_for(lambda: served.batcher.depth() == 1)
        status, data, _ = _request(url, "POST", "/v2/models/tiny/infer", body)
        assert status == 503 and "try again" in json.loads(data)["error"]
        assert _request(url, "GET", "/v2/health/live")[0] == 200  # the event loop is not blocked
        gate.set()
        assert first.result(20)[0] == 200 and second.result(20)[0] == 200
        assert _request(url, "POST", "/v2/models/tiny/infer", body)[0] == 200


def test_shutdown_finishes_requests_in_flight(int8_path):
    served = ServedModel(int8_path, name="tiny")
    infer = served.runner.infer
    started = threading.Event()

    def slow(feed):
        started.set()
        time.sleep(0.5)
        return infer(feed)

    served.batcher.close()
    served.batcher = DynamicBatcher(slow, max_batch=8)
    body = _infer_json(np.ones((1, 3, 8, 8), np.float32))
    with ThreadPoolExecutor(1) as pool:
        with running(served) as (url, server):
            pending = pool.submit(_request, url, "POST", "/v2/models/tiny/infer", body)
            assert started.wait(10)
            server.should_exit = True  # what SIGTERM does
        status, data, _ = pending.result(20)
    assert status == 200 and json.loads(data)["outputs"][0]["shape"] == [1, 4]
    assert not served.ready
    with pytest.raises(Overloaded):
        served.batcher.submit({"input": np.ones((1, 3, 8, 8), np.float32)})


# -- the batcher alone --------------------------------------------------------------------


def _double(feed):
    return {"y": feed["x"] * 2, "n": np.full(len(feed["x"]), len(feed["x"]))}


def test_batcher_splits_results_back_by_rows():
    seen = []

    def infer(feed):
        seen.append(len(feed["x"]))
        time.sleep(0.01)
        return _double(feed)

    batcher = DynamicBatcher(infer, max_batch=8, max_delay_s=0.05)
    rows = [1, 3, 2, 1, 1, 4, 2, 1]
    xs = [np.arange(r * 2, dtype=np.float32).reshape(r, 2) + 10 * i for i, r in enumerate(rows)]
    futures = [batcher.submit({"x": x}, len(x)) for x in xs]
    results = [f.result(10) for f in futures]
    batcher.close()
    for x, r in zip(xs, results):
        np.testing.assert_array_equal(r["y"], x * 2)
    assert sum(seen) == sum(rows) and max(seen) <= 8 and len(seen) < len(rows)
    assert any(r["n"][0] > len(x) for x, r in zip(xs, results))  # some ran in a merged batch


def test_batcher_keeps_different_shapes_apart_and_in_order():
    batcher = DynamicBatcher(_double, max_batch=8, max_delay_s=0.05)
    a = batcher.submit({"x": np.ones((1, 2), np.float32)})
    b = batcher.submit({"x": np.ones((1, 3), np.float32)})  # other per-sample shape
    c = batcher.submit({"x": np.ones((1, 2), np.float64)})  # other dtype
    assert a.result(5)["y"].shape == (1, 2) and b.result(5)["y"].shape == (1, 3)
    assert c.result(5)["y"].dtype == np.float64
    assert [f.result()["n"][0] for f in (a, b, c)] == [1, 1, 1]
    batcher.close()


def test_batcher_error_reaches_every_request_and_the_worker_survives():
    healthy = threading.Event()

    def infer(feed):
        if not healthy.is_set():
            raise RuntimeError("device lost")
        return _double(feed)

    batcher = DynamicBatcher(infer, max_batch=4, max_delay_s=0.05)
    futures = [batcher.submit({"x": np.ones((1, 2), np.float32)}) for _ in range(3)]
    for f in futures:  # batched together or not, each request gets the runtime's error
        with pytest.raises(RuntimeError, match="device lost"):
            f.result(5)
    healthy.set()
    assert batcher.submit({"x": np.ones((1, 2), np.float32)}).result(5)["y"].tolist() == [[2, 2]]
    batcher.close()


def test_batcher_refuses_when_full_and_drains_on_close():
    gate = threading.Event()

    def infer(feed):
        gate.wait(10)
        return _double(feed)

    batcher = DynamicBatcher(infer, max_batch=1, max_queue=2)
    running_one = batcher.submit({"x": np.ones((1, 2))})
    deadline = time.monotonic() + 10
    while batcher.depth():  # until the worker has taken it (and blocks)
        assert time.monotonic() < deadline
        time.sleep(0.01)
    queued = [batcher.submit({"x": np.ones((1, 2))}) for _ in range(2)]
    with pytest.raises(Overloaded):
        batcher.submit({"x": np.ones((1, 2))})
    threading.Timer(0.2, gate.set).start()
    batcher.close()  # returns once the queued requests are done
    assert all(f.done() and f.result()["y"].shape == (1, 2) for f in [running_one, *queued])
    with pytest.raises(Overloaded, match="shutting down"):
        batcher.submit({"x": np.ones((1, 2))})


def test_unbatched_model_runs_requests_one_by_one():
    seen = []

    def infer(feed):
        seen.append(feed["x"].shape)
        return {"y": feed["x"]}

    batcher = DynamicBatcher(infer, max_batch=8, max_delay_s=0.05, batched=False)
    futures = [batcher.submit({"x": np.ones((1, 2))}) for _ in range(4)]
    [f.result(5) for f in futures]
    batcher.close()
    assert seen == [(1, 2)] * 4


# -- the protocol alone -------------------------------------------------------------------


def test_protocol_binary_and_nested_json_round_trip(cnn_path):
    from trtq.deploy.serving import signature_of

    sig = signature_of(cnn_path)
    x = np.random.default_rng(1).normal(size=(2, 3, 8, 8)).astype(np.float32)
    header = json.dumps({"id": "a", "inputs": [{"name": "input", "datatype": "FP32", "shape": [2, 3, 8, 8],
                                               "parameters": {"binary_data_size": x.nbytes}}],
                         "outputs": [{"name": "logits", "parameters": {"binary_data": True}}]}).encode()
    req = parse_infer_request(header + x.tobytes(), len(header), sig, max_batch=8)
    np.testing.assert_array_equal(req.inputs["input"], x)
    assert req.rows == 2 and req.outputs == [("logits", True)] and req.id == "a"
    nested = json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [2, 3, 8, 8],
                                     "data": x.tolist()}]}).encode()
    req2 = parse_infer_request(nested, None, sig, max_batch=8)
    np.testing.assert_array_equal(req2.inputs["input"], x)
    y = np.arange(8, dtype=np.float32).reshape(2, 4)
    body, hlen = encode_infer_response("m", "1", req, {"logits": y})
    meta = json.loads(body[:hlen])
    assert meta["id"] == "a" and meta["outputs"][0]["parameters"]["binary_data_size"] == y.nbytes
    np.testing.assert_array_equal(np.frombuffer(body[hlen:], np.float32).reshape(2, 4), y)
    body, hlen = encode_infer_response("m", "1", req2, {"logits": y})
    assert hlen is None and json.loads(body)["outputs"][0]["data"] == y.reshape(-1).tolist()
    with pytest.raises(InvalidRequest, match="batch size 9"):
        parse_infer_request(json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [9, 3, 8, 8],
                                                    "data": [0.0] * 9 * 192}]}).encode(), None, sig, max_batch=8)


def test_cli_serve_refuses_bad_input_cleanly(tmp_path, int8_path):
    from click.testing import CliRunner

    from trtq.cli import main

    result = CliRunner().invoke(main, ["serve", str(tmp_path / "missing.onnx")])
    assert result.exit_code == 2 and "does not exist" in result.output
    (tmp_path / "model.txt").write_text("x")
    result = CliRunner().invoke(main, ["serve", str(tmp_path / "model.txt")])
    assert result.exit_code == 2 and "expected an .onnx or .engine" in result.output


def _nested_body(values: int, depth: int = 4) -> bytes:
    """An infer request whose data is a nested list of ``values`` numbers (an oversized body)."""
    inner = ",".join(["0.5"] * 1000)
    group = "[" * (depth - 1) + inner + "]" * (depth - 1)
    data = "[" + ",".join([group] * (values // 1000)) + "]"
    head = '{"inputs":[{"name":"input","datatype":"FP32","shape":[1,3,8,8],"data":'
    return (head + data + "}]}").encode()


def test_oversized_and_deep_bodies_are_refused_without_stalling_health(int8_path):
    """Two large nested-list bodies in flight: refused before they are parsed (413), while
    /v2/health/live keeps answering fast; 100,000-deep nesting is a 400, not a 500."""
    served = ServedModel(int8_path, name="tiny", options=ServeOptions(max_request_bytes=64 << 20))
    body = _nested_body(7_000_000)  # ~28 MB of JSON
    assert len(body) > 25e6
    with running(served) as (url, _):
        results = {}

        def flood(i):
            results[i] = _request(url, "POST", "/v2/models/tiny/infer", body)[0]

        threads = [threading.Thread(target=flood, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        latencies = []
        while any(t.is_alive() for t in threads):
            start = time.perf_counter()
            assert _request(url, "GET", "/v2/health/live")[0] == 200
            latencies.append(time.perf_counter() - start)
            time.sleep(0.01)
        for t in threads:
            t.join()
        assert results == {0: 413, 1: 413}
        assert max(latencies) < 0.25, max(latencies)  # measured: p99 well under 0.1 s (bench/serving.py --flood)
        deep = b'{"inputs":[{"name":"input","datatype":"FP32","shape":[1,3,8,8],"data":' + b"[" * 100_000 \
            + b"]" * 100_000 + b"}]}"
        status, payload, _ = _request(url, "POST", "/v2/models/tiny/infer", deep)
        assert status == 400 and "nested" in payload.decode()
        status, payload, _ = _request(url, "GET", "/metrics")
        text = payload.decode()
        assert 'trtq_http_responses_total{code="413",endpoint="infer",model="tiny"} 2.0' in text
        assert 'trtq_http_responses_total{code="400",endpoint="infer",model="tiny"} 1.0' in text


def test_a_busy_port_is_one_error_line_before_serving(tmp_path, int8_path):
    from click.testing import CliRunner

    from trtq.cli import main

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        result = CliRunner().invoke(main, ["serve", str(int8_path), "--port", str(port)])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        f"error: cannot listen on 127.0.0.1:{port}: Address already in use; is another server running there? "
        "choose another --port"]

"""Load test of `trtq serve`: throughput, latency and batch sizes with and without dynamic batching.

EfficientNet-Lite0 int8 (trtq, minmax calibration) is served by `trtq serve` in its own
process; C client threads (each its own `tritonclient.http` client, as real clients are)
send R requests of one real photo crop each over loopback. Every scenario runs in this
same invocation on the same machine:

* in-process `OrtRunner.infer`, one request at a time, no HTTP: the runtime's own speed;
* `trtq serve --max-batch 1`: the HTTP server without batching (the reference row);
* `trtq serve --max-batch 8 --max-delay-ms D`: dynamic batching.

Each served response is checked against the in-process single-request result. Clients keep
their connections open (tritonclient.http reuses them), so keep-alive handling is exercised.

--flood: while two ~28 MB nested-list JSON bodies (more values than the model takes) are
being refused, poll /v2/health/live every 10 ms; report its latency and the server's RSS
(from /proc: current and peak, against the body size).

    python bench/serving.py [--clients 8] [--requests 200] [--mode qdq-float|ort-int8] [--model M.onnx]
    python bench/serving.py --flood
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import onnx


def build_model(folder: Path, calib_samples: int) -> Path:
    from trtq.calibration import calibrate
    from trtq.models import get_model_spec
    from trtq.quantize import export, fold_batchnorm, quantize

    spec = get_model_spec("efficientnet_lite0")
    calib = spec.calibration_data(calib_samples)
    fp32, _ = export(spec.factory(pretrained=True), calib[:8], input_name="images", output_name="logits")
    fp32 = fold_batchnorm(fp32)
    path = folder / "efficientnet_lite0.int8.onnx"
    onnx.save(quantize(fp32, calibrate(fp32, calib, "minmax", progress=False)), path)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: Path, port: int, extra: list[str]) -> subprocess.Popen:
    import tritonclient.http as th

    proc = subprocess.Popen([sys.executable, "-m", "trtq.cli", "serve", str(model), "--port", str(port),
                             "--name", "m", "--no-access-log", *extra],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    client = th.InferenceServerClient(f"127.0.0.1:{port}")
    deadline = time.monotonic() + 120
    while True:
        try:
            if client.is_model_ready("m"):
                return proc
        except Exception:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"trtq serve did not start: {proc.stderr.read() if proc.stderr else ''}")
        time.sleep(0.2)


def load(port: int, xs: np.ndarray, clients: int, requests: int, input_name: str):
    """Each client sends ``requests`` single-sample requests; returns outputs, latencies, errors, seconds."""
    import tritonclient.http as th

    outputs = np.zeros((clients, requests), dtype=object)
    latencies = np.zeros((clients, requests))
    errors: list[str] = []
    barrier = threading.Barrier(clients + 1)

    def run(k: int) -> None:
        client = th.InferenceServerClient(f"127.0.0.1:{port}", network_timeout=120)
        barrier.wait()
        for i in range(requests):
            x = xs[(k * requests + i) % len(xs)][None]
            inp = th.InferInput(input_name, list(x.shape), "FP32")
            inp.set_data_from_numpy(x)
            t = time.perf_counter()
            try:
                outputs[k, i] = client.infer("m", [inp]).as_numpy("logits")[0]
            except Exception as exc:  # counted, not fatal: the table reports them
                errors.append(str(exc))
                outputs[k, i] = None
            latencies[k, i] = time.perf_counter() - t
        client.close()

    threads = [threading.Thread(target=run, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    return outputs, latencies, errors, time.perf_counter() - start


def batch_histogram(port: int) -> dict[float, float]:
    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    cumulative = {float(s.labels["le"]): s.value for f in text_string_to_metric_families(text)
                  for s in f.samples if s.name == "trtq_batch_size_bucket"}
    hist, previous = {}, 0.0
    for le in sorted(cumulative):
        if cumulative[le] - previous > 0:
            hist[le] = cumulative[le] - previous
        previous = cumulative[le]
    return hist


def _rss_mb(pid: int) -> tuple[float, float]:
    """(current, peak) resident set size of a process, MB."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def flood(model: Path, input_name: str) -> None:
    """Two oversized nested-list bodies against a served model while /v2/health/live is polled."""
    import http.client

    values = 7_000_000
    group = "[[[" + ",".join(["0.5"] * 1000) + "]]]"
    body = ('{"inputs":[{"name":"%s","datatype":"FP32","shape":[1,3,224,224],"data":[' % input_name
            + ",".join([group] * (values // 1000)) + "]}]}").encode()
    port = free_port()
    proc = start_server(model, port, [])
    statuses: list[int] = []

    def post() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        conn.request("POST", "/v2/models/m/infer", body=body)
        statuses.append(conn.getresponse().status)
        conn.close()

    try:
        before = _rss_mb(proc.pid)
        threads = [threading.Thread(target=post) for _ in range(2)]
        for t in threads:
            t.start()
        health = []
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        while any(t.is_alive() for t in threads):
            t0 = time.perf_counter()
            conn.request("GET", "/v2/health/live")
            conn.getresponse().read()
            health.append(time.perf_counter() - t0)
            time.sleep(0.01)
        for t in threads:
            t.join()
        after = _rss_mb(proc.pid)
    finally:
        proc.terminate()
        proc.wait(60)
    ms = np.array(health) * 1e3
    print(f"flood: 2 bodies of {len(body) / 1e6:.1f} MB ({values} values each): answered {sorted(statuses)}")
    print(f"  /v2/health/live during the flood: {len(ms)} polls, p50 {np.percentile(ms, 50):.1f} ms, "
          f"p99 {np.percentile(ms, 99):.1f} ms, max {ms.max():.1f} ms")
    print(f"  server RSS: {before[0]:.0f} MB before, {after[0]:.0f} MB after, peak {after[1]:.0f} MB "
          f"(peak - before = {(after[1] - before[0]) / (len(body) / 1e6):.2f}x one body)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--requests", type=int, default=200, help="per client")
    ap.add_argument("--mode", choices=["qdq-float", "ort-int8"], default="qdq-float")
    ap.add_argument("--max-delay-ms", type=float, default=2.0)
    ap.add_argument("--calib", type=int, default=64, help="calibration crops when building the model")
    ap.add_argument("--model", type=Path, help="an int8 EfficientNet-Lite0 .onnx [default: built here]")
    ap.add_argument("--flood", action="store_true", help="the oversized-body flood instead of the load test")
    args = ap.parse_args()

    from trtq.deploy import OrtRunner
    from trtq.models import get_model_spec

    spec = get_model_spec("efficientnet_lite0")
    xs = spec.evaluation_data(256)
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or build_model(Path(tmp), args.calib)
        if args.flood:
            return flood(model, "images")
        runner = OrtRunner(model, mode=args.mode)
        input_name = runner.inputs[0].name
        total = args.clients * args.requests
        reference = {}
        t = time.perf_counter()
        lat = []
        for i in range(total):
            x = xs[i % len(xs)][None]
            s = time.perf_counter()
            out = runner.infer({input_name: x})["logits"][0]
            lat.append(time.perf_counter() - s)
            reference.setdefault(i % len(xs), out)
        direct_s = time.perf_counter() - t
        runner.close()
        rows = [("in-process OrtRunner, 1 at a time", total / direct_s, np.percentile(lat, 50) * 1e3,
                 np.percentile(lat, 99) * 1e3, 0, "-", "-")]
        for label, extra in [("trtq serve, batching off (max batch 1)", ["--max-batch", "1"]),
                             (f"trtq serve, dynamic batching (max 8, {args.max_delay_ms:g} ms)",
                              ["--max-batch", "8", "--max-delay-ms", str(args.max_delay_ms)])]:  # noqa: E501
            port = free_port()
            proc = start_server(model, port, ["--mode", args.mode, *extra])
            try:
                outputs, latencies, errors, seconds = load(port, xs, args.clients, args.requests, input_name)
                hist = batch_histogram(port)
            finally:
                proc.terminate()
                proc.wait(60)
            diffs = [float(np.abs(outputs[k, i] - reference[(k * args.requests + i) % len(xs)]).max())
                     for k in range(args.clients) for i in range(args.requests) if outputs[k, i] is not None]
            hist_text = " ".join(f"<={int(le)}:{int(n)}" for le, n in hist.items())
            rows.append((label, total / seconds, np.percentile(latencies, 50) * 1e3,
                         np.percentile(latencies, 99) * 1e3, len(errors), f"{max(diffs):.1e}", hist_text))
            if errors:
                print(f"{label}: first error: {errors[0]}", file=sys.stderr)

    base = rows[1][1]
    print(f"EfficientNet-Lite0 int8 ({args.mode}), {args.clients} clients x {args.requests} requests of 1 "
          f"photo crop, loopback, {os.cpu_count()} CPU cores")
    print(f"{'setup':46s} {'req/s':>7s} {'vs no batching':>14s} {'p50 ms':>7s} {'p99 ms':>7s} {'errors':>6s} "
          f"{'max |diff|':>10s}  executed batches (rows<=bucket:count)")
    for label, rps, p50, p99, errs, diff, hist in rows:
        print(f"{label:46s} {rps:7.1f} {rps / base:13.2f}x {p50:7.1f} {p99:7.1f} {errs:6d} {diff:>10s}  {hist}")


if __name__ == "__main__":
    main()

"""``trtq serve``: a KServe v2 (Triton-compatible) HTTP server for one model.

Built on Starlette (ASGI) and served by Uvicorn. The event loop only parses, validates and
encodes; inference runs on the :class:`DynamicBatcher`'s worker threads, so a slow batch
never blocks health checks or metrics.

Endpoints (the ones ``tritonclient.http`` uses)::

    GET  /v2/health/live | /v2/health/ready            server liveness / readiness
    GET  /v2                                          server metadata
    GET  /v2/models/{name}[/versions/{v}]             model metadata
    GET  /v2/models/{name}[/versions/{v}]/ready       model readiness
    GET  /v2/models/{name}[/versions/{v}]/config      model configuration (Triton's JSON form)
    POST /v2/models/{name}[/versions/{v}]/infer       inference (JSON or binary tensors)
    GET  /metrics                                     Prometheus metrics

Errors are ``{"error": "..."}`` with 400 (bad request), 404 (unknown model or version), 413
(body over the size limit), 503 (queue full, or shutting down) or 500 (inference failed).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import socket
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from trtq.core import __version__
from trtq.core.errors import TrtqError, require

from trtq.deploy.serving.triton import DEFAULT_MAX_BATCH, DEFAULT_MAX_DELAY_MS
from trtq.deploy.runner import QdqMode
from trtq.deploy.serving.batcher import BatchStats, DynamicBatcher, Overloaded
from trtq.deploy.serving.stats import InferenceStatistics
from trtq.deploy.serving.protocol import (InvalidRequest, ModelSignature, encode_infer_response, parse_infer_request,
                                     signature_of)

log = logging.getLogger("trtq.serve")

DEFAULT_MAX_REQUEST_BYTES = 64 << 20
#: Request bodies decoded (and responses encoded) at once, off the event loop: bounds the
#: memory a flood of large bodies can take, and keeps the loop free for health checks.
PARSE_THREADS = 2
#: Seconds an idle keep-alive connection stays open.
KEEP_ALIVE_S = 75
_HEADER = "Inference-Header-Content-Length"


@dataclass(frozen=True)
class ServeOptions:
    """How the server batches and what it accepts.

    ``max_batch``: rows per executed batch (and the largest batch one request may carry);
    for an engine it may not exceed its optimization profile's maximum. ``max_delay_ms``:
    how long the oldest request may wait for others. ``max_queue``: waiting requests
    beyond which new ones get 503. ``workers``: threads running batches concurrently.
    """

    max_batch: int | None = None  # None: DEFAULT_MAX_BATCH, or an engine's profile maximum if smaller
    max_delay_ms: float = DEFAULT_MAX_DELAY_MS
    max_queue: int = 256
    workers: int = 1
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    # How a .onnx runs: "onnxruntime" (default: what Triton's ONNX Runtime backend computes,
    # ORT with its default optimizations, int8 kernels for Q/DQ) or "tensorrt-math" (Q/DQ in
    # float, what TensorRT computes); see trtq.deploy.runner.QdqMode.
    mode: str = "onnxruntime"


class ServedModel:
    """A model loaded for serving: its runner, signature, batcher, metrics and statistics.

    :meth:`unload` frees the runtime (the model answers 503 until :meth:`load` reads the file
    from disk again, as Triton's model control does).
    """

    def __init__(self, path: str | os.PathLike, *, name: str | None = None, version: str = "1",
                 options: ServeOptions = ServeOptions(), registry=None) -> None:
        path = Path(path)
        self.path = path
        self.name = name or path.name.split(".")[0]
        self.version = version
        self.options = options
        self.numerics = "tensorrt" if path.suffix.lower() != ".onnx" else (
            "onnxruntime" if QdqMode(options.mode) is QdqMode.ORT_INT8 else "tensorrt-math")
        self.metrics = _Metrics(registry, self.name)
        self.stats = InferenceStatistics()
        self.ready = False
        self.load()

    def load(self) -> None:
        """(Re)read the model file and start serving it."""
        from trtq.deploy.runner import open_runner

        if self.ready:
            self.unload()
        self.signature: ModelSignature = signature_of(self.path)
        self.max_batch = self._max_batch(self.options.max_batch)
        self.runner = (open_runner(self.path, mode=self.options.mode, name=self.name)
                       if self.path.suffix.lower() == ".onnx" else open_runner(self.path))
        self.batcher = DynamicBatcher(self.runner.infer, max_batch=self.max_batch,
                                      max_delay_s=self.options.max_delay_ms / 1000, max_queue=self.options.max_queue,
                                      workers=self.options.workers, batched=self.signature.batched,
                                      on_batch=self._on_batch, name=self.name)
        self.ready = True
        if self.numerics == "onnxruntime":
            self._warn_if_not_tensorrt_math()

    def _warn_if_not_tensorrt_math(self) -> None:
        """On x86 without VNNI, ORT's int8 kernels saturate where TensorRT does not: for a
        TensorRT-style int8 model, say so at startup, with the gap on a probe input."""
        from trtq.deploy.benchmark import synthetic_feed
        from trtq.deploy.runner import OrtRunner
        from trtq.quantize.targets import needs_reduce_range

        if not (needs_reduce_range() and _tensorrt_int8(self.path)):  # the CPU flags first: no file re-read
            return
        feed = synthetic_feed(self.runner, 1, None)
        with OrtRunner(self.path, mode=QdqMode.FLOAT) as exact:
            reference = exact.infer(feed)
        served = self.runner.infer(feed)
        gaps = {n: float(np.max(np.abs(served[n].astype(np.float64) - reference[n]))) for n in reference}
        log.warning("numerics", extra={"fields": {
            "model": self.name, "message": "this CPU has no VNNI: ONNX Runtime's int8 kernels are not TensorRT's "
            "math here (they saturate 16-bit sums); serving what Triton's ONNX Runtime backend would compute. "
            "--mode tensorrt-math serves TensorRT's arithmetic instead", "max_abs_gap_on_probe": gaps}})

    def unload(self) -> None:
        """Stop taking requests, finish the queued ones, free the runtime."""
        self.ready = False
        self.batcher.close()
        self.runner.close()

    def _on_batch(self, stats: BatchStats) -> None:
        self.metrics.observe_batch(stats)
        self.stats.batch(stats.rows, stats.compute_s)

    def _max_batch(self, wanted: int | None) -> int:
        if not self.signature.batched:
            return 1
        if self.signature.platform == "tensorrt_plan":
            from trtq.deploy.engine_info import EngineInfo

            limit = EngineInfo.load(self.path).max_batch
            if wanted is None:
                return DEFAULT_MAX_BATCH if limit is None else min(DEFAULT_MAX_BATCH, limit)
            if limit is not None and wanted > limit:
                raise TrtqError(f"max batch {wanted} exceeds the engine's optimization profile (batch up to "
                                f"{limit}); pass --max-batch {limit} or rebuild with a larger profile")
        return DEFAULT_MAX_BATCH if wanted is None else wanted

    def metadata(self) -> dict:
        """KServe v2 model metadata; ``parameters.numerics`` says how outputs are computed."""
        return {"name": self.name, "versions": [self.version], "platform": self.signature.platform,
                "inputs": [t.to_json() for t in self.signature.inputs],
                "outputs": [t.to_json() for t in self.signature.outputs],
                "parameters": {"numerics": self.numerics}}

    def config(self) -> dict:
        """Triton's model configuration in its JSON form (see :func:`deploy.serving.triton.model_config`),
        with the numerics as a model parameter."""
        from trtq.deploy.serving.triton import model_config

        return model_config(self.name, self.signature, self.max_batch if self.signature.batched else 0,
                            max_queue_delay_us=int(self.options.max_delay_ms * 1000),
                            parameters={"numerics": self.numerics})

    def close(self) -> None:
        """Stop serving for good (the server is shutting down)."""
        if self.ready:
            self.unload()


def _tensorrt_int8(path: Path) -> bool:
    """Whether ``path`` is a TensorRT-style int8 Q/DQ model (int8 zero points, no uint8 ones)."""
    if path.suffix.lower() != ".onnx":
        return False
    from trtq.core.onnx_model import load_model

    proto = load_model(path)
    inits = {t.name: t.data_type for t in proto.graph.initializer}
    points = [inits.get(n.input[2]) for n in proto.graph.node if n.op_type == "QuantizeLinear" and len(n.input) > 2]
    return bool(points) and all(p == onnx.TensorProto.INT8 for p in points)


class _Metrics:
    """Prometheus metrics of one model, in their own registry (one per server)."""

    def __init__(self, registry, model: str) -> None:
        prom = require("prometheus_client", "serve")
        self.registry = registry if registry is not None else prom.CollectorRegistry()
        self.model = model
        buckets = (.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10)
        self.requests = prom.Counter("trtq_requests", "Inference requests by HTTP status code",
                                     ["model", "code"], registry=self.registry)
        self.latency = prom.Histogram("trtq_request_duration_seconds", "Inference request latency (server side)",
                                      ["model"], buckets=buckets, registry=self.registry)
        self.batch_rows = prom.Histogram("trtq_batch_size", "Rows (samples) per executed batch", ["model"],
                                         buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 128),
                                         registry=self.registry)
        self.batch_requests = prom.Histogram("trtq_batch_requests", "Requests merged into one executed batch",
                                             ["model"], buckets=(1, 2, 3, 4, 6, 8, 12, 16, 32, 64),
                                             registry=self.registry)
        self.queue_wait = prom.Histogram("trtq_queue_wait_seconds", "Wait of a batch's oldest request",
                                         ["model"], buckets=buckets, registry=self.registry)
        self.compute = prom.Histogram("trtq_compute_seconds", "Model execution time per batch", ["model"],
                                      buckets=buckets, registry=self.registry)
        self.queue_depth = prom.Gauge("trtq_queue_depth", "Requests waiting to be batched", ["model"],
                                      registry=self.registry)
        self.responses = prom.Counter("trtq_http_responses", "Every HTTP response by endpoint kind and status code "
                                      "(failures before or outside inference included)", ["model", "endpoint", "code"],
                                      registry=self.registry)

    def observe_batch(self, stats: BatchStats) -> None:
        self.batch_rows.labels(self.model).observe(stats.rows)
        self.batch_requests.labels(self.model).observe(stats.requests)
        self.queue_wait.labels(self.model).observe(stats.queue_wait_s)
        self.compute.labels(self.model).observe(stats.compute_s)

    def observe_request(self, code: int, seconds: float) -> None:
        self.requests.labels(self.model, str(code)).inc()
        self.latency.labels(self.model).observe(seconds)


def create_app(model: ServedModel, *, access_log: bool = True):
    """The ASGI application serving ``model`` (closes it on shutdown)."""
    require("starlette", "serve")
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    prom = require("prometheus_client", "serve")
    parse_pool = ThreadPoolExecutor(max_workers=PARSE_THREADS, thread_name_prefix="trtq-parse")

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status)

    def lookup(request: Request) -> ServedModel:
        name = request.path_params["model"]
        version = request.path_params.get("version")
        if name != model.name:
            raise InvalidRequest(f"unknown model '{name}'; this server serves '{model.name}'", 404)
        if version not in (None, "", model.version):
            raise InvalidRequest(f"model '{name}' has no version '{version}'; it has {model.version}", 404)
        return model

    async def live(request: Request) -> Response:
        return Response(status_code=200)

    async def ready(request: Request) -> Response:
        return Response(status_code=200 if model.ready else 503)

    async def server_metadata(request: Request) -> Response:
        return JSONResponse({"name": "trtq", "version": __version__,
                             "extensions": ["binary_tensor_data", "model_repository", "statistics"]})

    async def model_metadata(request: Request) -> Response:
        return JSONResponse(lookup(request).metadata())

    async def model_ready(request: Request) -> Response:
        return Response(status_code=200 if lookup(request).ready else 503)

    async def model_config(request: Request) -> Response:
        return JSONResponse(lookup(request).config())

    async def infer(request: Request) -> Response:
        start = time.perf_counter()
        status = 500
        phases: dict = {}
        try:
            response = await _infer(request, phases)
            status = response.status_code
            return response
        except InvalidRequest as exc:
            status = exc.status
            return error(exc.status, str(exc))
        except Overloaded as exc:
            status = 503
            return error(503, str(exc))
        except Exception as exc:  # the runtime failed: the client learns why, the server goes on
            log.exception("inference failed")
            return error(500, f"inference failed: {exc}")
        finally:
            seconds = time.perf_counter() - start
            model.stats.request(ok=status == 200, total_s=seconds, **phases)
            model.metrics.observe_request(status, seconds)
            model.metrics.queue_depth.labels(model.name).set(model.batcher.depth())
            if access_log:
                log.info("infer", extra={"fields": {"model": model.name, "status": status,
                                                    "ms": round(seconds * 1000, 3),
                                                    "client": request.client.host if request.client else None}})

    async def _infer(request: Request, phases: dict) -> Response:
        served = lookup(request)
        if not served.ready:
            raise Overloaded(f"model '{served.name}' is not loaded (unloaded, or the server is shutting down)")
        started = time.perf_counter()
        limit = served.options.max_request_bytes
        body = await _read_body(request, limit)
        header_length = request.headers.get(_HEADER)
        if header_length is not None:
            try:
                header_length = int(header_length)
            except ValueError:
                raise InvalidRequest(f"{_HEADER} must be an integer, got {header_length!r}") from None
        encoding = request.headers.get("content-encoding", "identity").lower()
        loop = asyncio.get_running_loop()
        # Decoding and encoding bodies run off the event loop, at most PARSE_THREADS at once:
        # health checks and metadata answer while large requests are being parsed.
        parsed_request = await loop.run_in_executor(
            parse_pool, lambda: parse_infer_request(_decompress(body, encoding, limit), header_length,
                                                    served.signature, served.max_batch))
        decoded = time.perf_counter()
        future = served.batcher.submit(parsed_request.inputs, parsed_request.rows)
        outputs = await asyncio.wrap_future(future)
        inferred = time.perf_counter()
        payload, json_size = await loop.run_in_executor(
            parse_pool, encode_infer_response, served.name, served.version, parsed_request, outputs)
        queue_s, compute_s, _ = getattr(future, "timing", (0.0, inferred - decoded, 0))
        phases.update(decode_s=decoded - started, queue_s=queue_s, infer_s=compute_s,
                      encode_s=time.perf_counter() - inferred, rows=parsed_request.rows)
        if json_size is None:
            return Response(payload, media_type="application/json")
        return Response(payload, media_type="application/octet-stream", headers={_HEADER: str(json_size)})

    async def statistics(request: Request) -> Response:
        if "model" not in request.path_params:  # all models: this server has one
            return JSONResponse(model.stats.to_json(model.name, model.version))
        served = lookup(request)
        return JSONResponse(served.stats.to_json(served.name, served.version))

    async def repository_index(request: Request) -> Response:
        state = "READY" if model.ready else "UNAVAILABLE"
        return JSONResponse([{"name": model.name, "version": model.version, "state": state,
                              "reason": "" if model.ready else "unloaded"}])

    async def _control(request: Request, action: str) -> Response:
        name = request.path_params["model"]
        if "/" in name or "\\" in name or name in (".", ".."):
            raise InvalidRequest(f"model name {name!r} is not a name: this server loads only {model.path.name} "
                                 "from its folder")
        if name != model.name:
            raise InvalidRequest(f"unknown model '{name}'; this server serves '{model.name}' ({model.path.name})",
                                 404)
        body = await _read_body(request, 1 << 20)
        try:
            request_body = json.loads(body) if body.strip() else {}
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InvalidRequest(f"the {action} request body is not valid JSON: {exc}") from None
        params = request_body.get("parameters", {}) if isinstance(request_body, dict) else None
        if not isinstance(params, dict):
            raise InvalidRequest(f"the {action} request body must be a JSON object with an optional 'parameters' "
                                 "object")
        if any(str(k).startswith("file:") or k == "config" for k in params):
            raise InvalidRequest("load with file or config overrides is not supported: the server reloads "
                                 f"{model.path.name} from disk")
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, model.load if action == "load" else model.unload)
        log.info(action, extra={"fields": {"model": model.name, "path": str(model.path)}})
        return Response(status_code=200)

    async def load(request: Request) -> Response:
        return await _control(request, "load")

    async def unload(request: Request) -> Response:
        return await _control(request, "unload")

    async def metrics(request: Request) -> Response:
        model.metrics.queue_depth.labels(model.name).set(model.batcher.depth())
        return Response(prom.generate_latest(model.metrics.registry), media_type=prom.CONTENT_TYPE_LATEST)

    async def invalid(request: Request, exc: InvalidRequest) -> Response:
        return error(exc.status, str(exc))

    async def not_found(request: Request, exc) -> Response:
        return error(404, f"no such endpoint: {request.method} {request.url.path}")

    async def not_allowed(request: Request, exc) -> Response:
        return error(405, f"method {request.method} is not allowed on {request.url.path}")

    @contextlib.asynccontextmanager
    async def lifespan(app):
        log.info("serving", extra={"fields": {"model": model.name, "path": str(model.path),
                                              "platform": model.signature.platform, "max_batch": model.max_batch,
                                              "batched": model.signature.batched}})
        try:
            yield
        finally:
            # Uvicorn has finished the in-flight requests by now; drain the batcher.
            await asyncio.get_running_loop().run_in_executor(None, model.close)
            parse_pool.shutdown(wait=False)
            log.info("stopped", extra={"fields": {"model": model.name}})

    prefixes = ["/v2/models/{model}", "/v2/models/{model}/versions/{version}"]
    routes = [Route("/v2/health/live", live), Route("/v2/health/ready", ready), Route("/v2", server_metadata),
              Route("/metrics", metrics), Route("/v2/models/stats", statistics),
              Route("/v2/repository/index", repository_index, methods=["POST"]),
              Route("/v2/repository/models/{model}/load", load, methods=["POST"]),
              Route("/v2/repository/models/{model}/unload", unload, methods=["POST"])]
    for p in prefixes:
        routes += [Route(p, model_metadata), Route(p + "/ready", model_ready), Route(p + "/config", model_config),
                   Route(p + "/infer", infer, methods=["POST"]), Route(p + "/stats", statistics)]
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers={404: not_found, 405: not_allowed,
                                                                        InvalidRequest: invalid})
    return _CountResponses(app, model.metrics)


class _CountResponses:
    """ASGI middleware: counts every HTTP response in ``trtq_http_responses`` (a client error on
    any endpoint, or a 500 from the framework itself, shows up in /metrics)."""

    def __init__(self, app, metrics: _Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        endpoint = ("infer" if path.endswith("/infer") else "health" if path.startswith("/v2/health")
                    else "metrics" if path == "/metrics" else "metadata" if path.startswith("/v2") else "other")
        status = [500]

        async def counting_send(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, counting_send)
        finally:
            self.metrics.responses.labels(self.metrics.model, endpoint, str(status[0])).inc()


async def _read_body(request, limit: int) -> bytearray:
    """The request body as sent, in one buffer grown in place (no second copy); 413 beyond
    ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise InvalidRequest(f"request body of {declared} bytes exceeds the limit of {limit}", 413)
    body = bytearray()
    async for chunk in request.stream():
        if len(body) + len(chunk) > limit:
            raise InvalidRequest(f"request body exceeds the limit of {limit} bytes", 413)
        body += chunk
    return body


def _decompress(body: bytes, encoding: str, limit: int) -> bytes:
    """``body`` decoded from gzip/deflate (or as it is); 413 beyond ``limit`` bytes."""
    if encoding in ("", "identity"):
        return body
    if encoding not in ("gzip", "deflate"):
        raise InvalidRequest(f"Content-Encoding {encoding!r} is not supported (gzip, deflate or none)")
    inflater = zlib.decompressobj(wbits=31 if encoding == "gzip" else 15)
    try:
        data = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise InvalidRequest(f"the body is not valid {encoding} data: {exc}") from None
    if len(data) > limit or inflater.unconsumed_tail:
        raise InvalidRequest(f"decompressed request body exceeds the limit of {limit} bytes", 413)
    return data


class JsonLogFormatter(logging.Formatter):
    """One JSON object per line: UTC time, level, logger, message and the record's ``fields``."""

    converter = time.gmtime

    def format(self, record: logging.LogRecord) -> str:
        entry = {"time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
                 "level": record.levelname.lower(), "logger": record.name, "event": record.getMessage()}
        entry.update(getattr(record, "fields", {}))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (IPv4 or IPv6), or a TrtqError saying why not."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise TrtqError(f"cannot resolve --host {host!r}: {exc.strerror}") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        hint = "; is another server running there? choose another --port" if exc.errno == errno.EADDRINUSE else ""
        raise TrtqError(f"cannot listen on {host}:{port}: {exc.strerror}{hint}") from None
    sock.set_inheritable(True)
    return sock


def serve(model: str | os.PathLike, *, host: str = "127.0.0.1", port: int = 8000, name: str | None = None,
          options: ServeOptions = ServeOptions(), access_log: bool = True, sockets=None,
          graceful_timeout_s: float = 30.0) -> None:
    """Load ``model`` and serve it until SIGINT/SIGTERM; in-flight requests are finished first.

    The port is bound before the model loads: a port in use is one TrtqError, before anything
    is logged as serving.
    """
    uvicorn = require("uvicorn", "serve")
    owned = sockets is None
    if owned:
        sockets = [bind_socket(host, port)]
    try:
        served = ServedModel(model, name=name, options=options)
    except BaseException:
        if owned:
            for sock in sockets:
                sock.close()
        raise
    app = create_app(served, access_log=access_log)
    # Keep-alive longer than clients' pools keep idle connections: a server that closes an idle
    # connection just as a client reuses it is a BrokenPipe on the client (seen at uvicorn's 5 s).
    config = uvicorn.Config(app, host=host, port=port, log_config=None, access_log=False, lifespan="on",
                            timeout_graceful_shutdown=graceful_timeout_s, timeout_keep_alive=KEEP_ALIVE_S)
    uvicorn.Server(config).run(sockets=sockets)

"""``deploy.Engine``: run a TensorRT engine in an inference service (needs an NVIDIA GPU).

Checks before anything touches the GPU: the sidecar (written by ``trtq build``) must exist
and name the installed backend and version (engines are version-locked); on TensorRT-RTX
the engine header is checked with ``IRuntime.get_engine_validity``. Then, per thread, one
execution context and one CUDA stream (the engine is shared), device buffers reused while
shapes fit, pinned host buffers for copies. Arrays exposing ``__cuda_array_interface__``
(PyTorch, CuPy) are used in place as inputs, without copies.

CUDA comes from ``cuda-python`` (``from cuda.bindings import runtime``), extra ``gpu``.
"""

from __future__ import annotations

import ctypes
import json
import os
import threading
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from trtq.core.onnx_model import InputSpec
from trtq.deploy.backend import load_backend
from trtq.deploy.build import _Logger, tensorrt_calls
from trtq.deploy.engine_info import EngineInfo
from trtq.core.errors import BuildError, TrtqError, require

_ONNX_TO_NUMPY = {"float": np.float32, "float16": np.float16, "int8": np.int8, "int32": np.int32,
                  "int64": np.int64, "bool": np.bool_, "uint8": np.uint8, "double": np.float64}


def _check(result, what: str):
    """cuda-python returns ``(err, *values)``; raise on an error, return the values."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise TrtqError(f"CUDA error in {what}: {err}")
    return values[0] if len(values) == 1 else values


class _Buffer:
    """A device buffer and its pinned host twin, grown when a larger tensor comes."""

    def __init__(self, cudart) -> None:
        self.cudart, self.nbytes, self.device, self.host = cudart, 0, None, None

    def ensure(self, nbytes: int) -> None:
        if nbytes <= self.nbytes:
            return
        self.free()
        self.device = _check(self.cudart.cudaMalloc(nbytes), "cudaMalloc")
        self.host = _check(self.cudart.cudaMallocHost(nbytes), "cudaMallocHost")
        self.nbytes = nbytes

    def host_view(self, dtype, shape) -> np.ndarray:
        count = int(np.prod(shape)) if shape else 1
        raw = (ctypes.c_byte * (count * np.dtype(dtype).itemsize)).from_address(int(self.host))
        return np.frombuffer(raw, dtype=dtype, count=count).reshape(shape)

    def free(self) -> None:
        if self.device is not None:
            self.cudart.cudaFree(self.device)
            self.cudart.cudaFreeHost(self.host)
        self.device = self.host = None
        self.nbytes = 0


class _Worker:
    """What one thread owns: an execution context, a stream, buffers."""

    def __init__(self, engine, cudart) -> None:
        self.context = engine.create_execution_context()
        if self.context is None:
            raise BuildError("TensorRT could not create an execution context (out of GPU memory?)")
        self.stream = _check(cudart.cudaStreamCreate(), "cudaStreamCreate")
        self.buffers: dict[str, _Buffer] = {}
        self.cudart = cudart
        self.warm_key = None  # shapes + addresses of the last plain run
        self.graph_key = None  # shapes + addresses the captured CUDA graph was made for
        self.graph = self.graph_exec = None

    def execute(self, key, use_graph: bool) -> bool:
        """Run the context; with ``use_graph``, replay a CUDA graph captured for ``key``.

        A graph is captured on the second run with the same shapes and buffer addresses (the
        first run is a plain one, as TensorRT requires before capture) and replaced when
        either changes.
        """
        cudart = self.cudart
        if not use_graph:
            return self.context.execute_async_v3(self.stream)
        if key != self.graph_key:
            if key != self.warm_key:
                self.warm_key = key
                return self.context.execute_async_v3(self.stream)
            self._drop_graph()
            _check(cudart.cudaStreamBeginCapture(self.stream, cudart.cudaStreamCaptureMode.cudaStreamCaptureModeGlobal),
                   "cudaStreamBeginCapture")
            ok = self.context.execute_async_v3(self.stream)
            self.graph = _check(cudart.cudaStreamEndCapture(self.stream), "cudaStreamEndCapture")
            if not ok:
                return False
            self.graph_exec = _check(cudart.cudaGraphInstantiate(self.graph, 0), "cudaGraphInstantiate")
            self.graph_key = key
        _check(cudart.cudaGraphLaunch(self.graph_exec, self.stream), "cudaGraphLaunch")
        return True

    def _drop_graph(self) -> None:
        if self.graph_exec is not None:
            self.cudart.cudaGraphExecDestroy(self.graph_exec)
        if self.graph is not None:
            self.cudart.cudaGraphDestroy(self.graph)
        self.graph = self.graph_exec = self.graph_key = None

    def close(self) -> None:
        self._drop_graph()
        for b in self.buffers.values():
            b.free()
        self.cudart.cudaStreamDestroy(self.stream)


class Engine:
    """A deserialized TensorRT engine with the runner interface: ``infer(feed) -> outputs``.

    ``cuda_graphs=True`` replays a captured CUDA graph while input shapes and buffers stay
    the same (fixed-shape serving), which removes per-layer launch overhead.
    """

    def __init__(self, path: str | os.PathLike, *, backend: str | None = None, cuda_graphs: bool = False) -> None:
        path = Path(path)
        self.cuda_graphs = cuda_graphs
        if not path.is_file():
            raise BuildError(f"engine {path} does not exist")
        self.name = str(path)
        self.info = EngineInfo.load(path)
        self.info.verify(path)
        self.backend = load_backend(backend or self.info.backend)
        built = (self.info.backend, self.info.backend_version)
        if built != (self.backend.name, self.backend.version):
            raise BuildError(f"engine {path} was built with {built[0]} {built[1]}, but {self.backend.name} "
                             f"{self.backend.version} is installed; rebuild it with trtq build")
        self.inputs = [InputSpec(t.name, np.dtype(_ONNX_TO_NUMPY.get(t.dtype, np.float32)), tuple(t.shape))
                       for t in self.info.inputs]
        self.outputs = [t.name for t in self.info.outputs]
        trt = self.backend.module
        self._logger = _Logger(trt)
        data = path.read_bytes()
        with tensorrt_calls():
            self._runtime = trt.Runtime(self._logger)
            try:
                if self.backend.is_rtx:
                    self._check_rtx_validity(trt, data)
                self._cudart = require("cuda.bindings.runtime", "gpu")
                if _check(self._cudart.cudaGetDeviceCount(), "cudaGetDeviceCount") == 0:
                    raise BuildError("no CUDA device is visible; running an engine needs an NVIDIA GPU")
                self._engine = self._runtime.deserialize_cuda_engine(data)
            except BaseException:
                self._runtime = None  # free it now, not in a later garbage collection
                raise
        if self._engine is None:
            raise BuildError(f"TensorRT could not load {path}: " + ("; ".join(self._logger.errors[-2:]) or "see logs"))
        self._local = threading.local()
        self._workers: list[_Worker] = []
        self._lock = threading.Lock()

    def _check_rtx_validity(self, trt, data: bytes) -> None:
        validity, diagnostics = self._runtime.get_engine_validity(data[: self._runtime.engine_header_size])
        if validity == trt.EngineValidity.INVALID:
            reasons = [n.lower().replace("_", " ") for n, flag in trt.EngineInvalidityDiagnostics.__members__.items()
                       if diagnostics & int(flag)]
            message = f"engine {self.name} cannot run here: " + (
                ", ".join(reasons) if reasons else "no usable GPU (or its driver) was found")
            if "unsupported cc" in reasons:
                built = ", ".join(self.info.compute_capabilities) or "unknown targets"
                message += (f" (built for {built}; {self.backend.name} {self.backend.version} runs only on the "
                            "compute capabilities its ComputeCapability enum lists, which leaves out data-center "
                            "GPUs such as the H100/H200 (9.0): use full TensorRT there, pip install 'trtq[gpu]')")
            raise BuildError(message)

    def _worker(self) -> _Worker:
        worker = getattr(self._local, "worker", None)
        if worker is None:
            with tensorrt_calls():
                worker = _Worker(self._engine, self._cudart)
            self._local.worker = worker
            with self._lock:
                self._workers.append(worker)
        return worker

    def infer(self, feed: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Run one batch; inputs are NumPy arrays or device arrays (``__cuda_array_interface__``)."""
        if self._engine is None:
            raise TrtqError(f"engine {self.name} is closed")
        w, cudart = self._worker(), self._cudart
        h2d, d2h = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        for spec in self.inputs:
            value = feed[spec.name]
            if hasattr(value, "__cuda_array_interface__"):
                cai = value.__cuda_array_interface__
                w.context.set_input_shape(spec.name, tuple(cai["shape"]))
                w.context.set_tensor_address(spec.name, int(cai["data"][0]))
                continue
            arr = np.ascontiguousarray(value, dtype=spec.dtype)
            buf = w.buffers.setdefault(spec.name, _Buffer(cudart))
            buf.ensure(max(arr.nbytes, 1))
            buf.host_view(arr.dtype, arr.shape)[...] = arr
            _check(cudart.cudaMemcpyAsync(buf.device, buf.host, arr.nbytes, h2d, w.stream), "cudaMemcpyAsync")
            w.context.set_input_shape(spec.name, arr.shape)
            w.context.set_tensor_address(spec.name, int(buf.device))
        shapes = {}
        key = []
        for name in self.outputs:
            shape = tuple(w.context.get_tensor_shape(name))
            dtype = np.dtype(self.backend.module.nptype(self._engine.get_tensor_dtype(name)))
            buf = w.buffers.setdefault(name, _Buffer(cudart))
            buf.ensure(max(int(np.prod(shape)) * dtype.itemsize, 1))
            w.context.set_tensor_address(name, int(buf.device))
            shapes[name] = (shape, dtype)
        for spec in self.inputs:
            key.append((spec.name, tuple(w.context.get_tensor_shape(spec.name)), w.context.get_tensor_address(spec.name)))
        key.extend((n, s, int(w.buffers[n].device)) for n, (s, _) in shapes.items())
        if not w.execute(tuple(key), self.cuda_graphs):
            raise TrtqError(f"TensorRT failed to run {self.name}: " + "; ".join(self._logger.errors[-2:]))
        out = {}
        for name, (shape, dtype) in shapes.items():
            buf = w.buffers[name]
            nbytes = int(np.prod(shape)) * dtype.itemsize
            _check(cudart.cudaMemcpyAsync(buf.host, buf.device, nbytes, d2h, w.stream), "cudaMemcpyAsync")
        _check(cudart.cudaStreamSynchronize(w.stream), "cudaStreamSynchronize")
        for name, (shape, dtype) in shapes.items():
            out[name] = w.buffers[name].host_view(dtype, shape).copy()
        return out

    def layer_information(self) -> list[dict]:
        """Per-layer information from TensorRT's engine inspector (name, type, tensor formats).

        TensorRT 10 reports a "Format/Datatype" string per tensor; 11.x splits format and
        data type. Both are passed through as TensorRT writes them.
        """
        trt = self.backend.module
        info = self._engine.create_engine_inspector().get_engine_information(trt.LayerInformationFormat.JSON)
        layers = json.loads(info).get("Layers", [])
        return [layer if isinstance(layer, dict) else {"Name": str(layer)} for layer in layers]

    def close(self) -> None:
        """Free every thread's buffers, streams and contexts, then the engine."""
        with self._lock:
            for worker in self._workers:
                worker.close()
            self._workers.clear()
        self._engine = None

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

"""Build TensorRT engines from trtq's ONNX: one code path for TensorRT 10.x, 11.x and TensorRT-RTX.

The network is strongly typed (the flag is set where the version has it; 11.x and RTX are
strongly typed anyway): precision comes from the ONNX graph — Q/DQ for int8, fp16 tensors
for fp16 — never from builder flags. Every engine gets a JSON sidecar describing it.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import os
import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Mapping

import onnx

from trtq.core.onnx_model import input_specs, load_model, model_sha256
from trtq.deploy.backend import Backend, load_backend
from trtq.deploy.engine_info import BuiltEngine, EngineInfo, EngineTensor
from trtq.deploy.plan import precision_plan
from trtq.core.errors import BuildError
from trtq.core.gpus import FP8_MIN_SM, GPU_TARGETS
from trtq.core.fileio import atomic_write_bytes
from trtq.core.runtime import has_fp8

log = logging.getLogger(__name__)

Shape = tuple[int, ...]


#: Largest batch of an engine's default optimization profile; also trtq serve's and the Triton
#: export's default max batch, so that one number holds from build to deployment.
DEFAULT_MAX_BATCH = 32


@dataclass(frozen=True)
class BuildOptions:
    """How to build an engine.

    ``shapes``: input name -> (min, opt, max) shapes; inputs not given get a profile
    derived from the model, with a dynamic batch axis spanning 1..``max_batch`` (opt =
    ``max_batch``). ``compute_capabilities``: TensorRT-RTX targets (e.g. ``("SM89",)``);
    empty means every SM80-or-newer capability the installed TensorRT-RTX supports (SM89 and newer
    for a model with fp8 layers; see :func:`rtx_targets`). ``gpu``: a GPU generation
    (:data:`GPU_TARGETS`) whose targets the installed TensorRT-RTX knows, used when
    ``compute_capabilities`` is empty. ``timing_cache`` is
    loaded if it exists and saved after the build (not on TensorRT-RTX, where it needs a GPU).
    """

    shapes: Mapping[str, tuple[Shape, Shape, Shape]] = field(default_factory=dict)
    max_batch: int = DEFAULT_MAX_BATCH
    workspace_bytes: int | None = None
    optimization_level: int | None = None
    timing_cache: Path | None = None
    compute_capabilities: tuple[str, ...] = ()
    backend: str | None = None
    progress: bool = True
    gpu: str | None = None


def parse_shapes(spec: str) -> tuple[str, tuple[Shape, Shape, Shape]]:
    """``name:1x3x224x224/8x3x224x224/32x3x224x224`` -> (name, (min, opt, max))."""
    m = re.fullmatch(r"(.+):([\dx]+)/([\dx]+)/([\dx]+)", spec.strip())
    if not m:
        raise BuildError(f"shape spec {spec!r} is not NAME:MIN/OPT/MAX with shapes like 1x3x224x224")
    shapes = tuple(tuple(int(d) for d in s.split("x")) for s in m.groups()[1:])
    return m.group(1), shapes  # type: ignore[return-value]


def trtexec_shapes(min_specs, opt_specs, max_specs) -> dict[str, tuple[Shape, Shape, Shape]]:
    """trtexec's ``--minShapes/--optShapes/--maxShapes`` (``name:1x3x224x224,name2:...``, each
    repeatable) -> name -> (min, opt, max); every input named needs all three."""
    found: list[dict[str, Shape]] = []
    for specs in (min_specs, opt_specs, max_specs):
        shapes: dict[str, Shape] = {}
        for spec in specs:
            for item in filter(None, (s.strip() for s in spec.split(","))):
                m = re.fullmatch(r"(.+):([\dx]+)", item)
                if not m:
                    raise BuildError(f"shape {item!r} is not NAME:DIMS like images:1x3x224x224")
                shapes[m.group(1)] = tuple(int(d) for d in m.group(2).split("x"))
        found.append(shapes)
    names = set().union(*found)
    missing = sorted(f"--{kind}-shapes {n}" for n in names for kind, s in zip(("min", "opt", "max"), found)
                     if n not in s)
    if missing:
        raise BuildError("each input needs a min, opt and max shape; missing: " + ", ".join(missing))
    return {n: (found[0][n], found[1][n], found[2][n]) for n in sorted(names)}


class _Logger:
    """A TensorRT logger that keeps errors for the exception message."""

    def __new__(cls, trt):
        class Logger(trt.ILogger):
            def __init__(self):
                trt.ILogger.__init__(self)
                self.errors: list[str] = []

            def log(self, severity, msg):
                if severity in (trt.ILogger.Severity.ERROR, trt.ILogger.Severity.INTERNAL_ERROR):
                    self.errors.append(msg)  # raised in the BuildError; logged for -v only
                    log.info("TensorRT error: %s", msg)
                elif severity == trt.ILogger.Severity.WARNING:
                    log.warning("TensorRT: %s", msg)
                else:
                    log.debug("TensorRT: %s", msg)

        return Logger()


def _profiles(model: onnx.ModelProto, options: BuildOptions) -> dict[str, tuple[Shape, Shape, Shape]]:
    out = {}
    for spec in input_specs(model):
        if spec.name in options.shapes:
            out[spec.name] = options.shapes[spec.name]
            continue
        dims = list(spec.shape)
        if all(isinstance(d, int) and d > 0 for d in dims):
            continue
        if any(not (isinstance(d, int) and d > 0) for d in dims[1:]):
            raise BuildError(f"input '{spec.name}' has dynamic dims beyond the batch axis {spec.describe()}; "
                             f"give its shapes: --shapes {spec.name}:MIN/OPT/MAX")
        rest = tuple(dims[1:])
        out[spec.name] = ((1, *rest), (options.max_batch, *rest), (options.max_batch, *rest))
    unknown = set(options.shapes) - {s.name for s in input_specs(model)}
    if unknown:
        raise BuildError(f"--shapes names unknown inputs {sorted(unknown)}")
    return out


def _phase_progress():
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    return Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=Console(stderr=True), transient=True)


def _Monitor(trt, progress):
    """A TensorRT ``IProgressMonitor`` that shows each build phase (nested) as a progress bar."""

    class Monitor(trt.IProgressMonitor):
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)
            self.tasks: dict[str, tuple[int, int]] = {}

        def phase_start(self, phase_name, parent_phase, num_steps):
            depth = self.tasks[parent_phase][1] + 1 if parent_phase in self.tasks else 0
            task = progress.add_task("  " * depth + phase_name, total=max(num_steps, 1))
            self.tasks[phase_name] = (task, depth)

        def step_complete(self, phase_name, step):
            if phase_name in self.tasks:
                progress.update(self.tasks[phase_name][0], completed=step + 1)
            return True  # False would cancel the build

        def phase_finish(self, phase_name):
            task = self.tasks.pop(phase_name, None)
            if task is not None:
                progress.remove_task(task[0])

    return Monitor()


def _describe_parser_error(e) -> str:
    """``node 'conv1' (Conv): UNSUPPORTED_NODE: <reason>`` from a TensorRT ParserError."""
    node = e.node_name() or f"#{e.node()}"
    op = e.node_operator()
    code = str(e.code()).rsplit(".", 1)[-1]
    desc = e.desc()
    if desc in ("", "false", "true"):  # an assertion without a message: say where it failed
        desc = f"rejected by {e.func()}"
    return f"node '{node}'" + (f" ({op})" if op else "") + f": {code}: {desc}"


def _parse(trt, model: onnx.ModelProto, logger):
    """Builder, strongly typed network and parser, plus the parser's errors (empty on success)."""
    builder = trt.Builder(logger)
    flags = 0
    if hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    errors = []
    if not parser.parse(model.SerializeToString()):
        errors = [_describe_parser_error(parser.get_error(i)) for i in range(parser.num_errors)]
    return builder, network, parser, errors


def default_compute_capabilities(trt) -> tuple[str, ...]:
    """Every Ampere-or-newer target the installed TensorRT-RTX knows (SM80 and up).

    Turing (SM75) is left out: TensorRT-RTX 1.7 cannot compile fp32 GEMMs for it, so a
    portable default including it fails on ordinary models.
    """
    return tuple(n for n in trt.ComputeCapability.__members__
                 if n.startswith("SM") and n[2:].isdigit() and int(n[2:]) >= 80)


def _sm(cap: str) -> int:
    return int(cap[2:]) if cap.startswith("SM") and cap[2:].isdigit() else 0


def rtx_targets(trt, options: BuildOptions, fp8: bool) -> tuple[str, ...]:
    """The compute capabilities to build for: the requested ones, else those of ``options.gpu``
    that this TensorRT-RTX knows, else every SM80-or-newer one (SM89-or-newer when the model
    has fp8 layers). Requested targets without FP8 Tensor Cores for an fp8 model, or a GPU
    generation with no target here (TensorRT-RTX compiles for the RTX parts: no SM90 or SM100):
    a BuildError naming them."""
    if not options.compute_capabilities and options.gpu is not None:
        if options.gpu not in GPU_TARGETS:
            raise BuildError(f"unknown GPU generation '{options.gpu}': one of {', '.join(GPU_TARGETS)}")
        known = set(trt.ComputeCapability.__members__)
        caps = tuple(c for c in GPU_TARGETS[options.gpu] if c in known)
        if not caps:
            raise BuildError(f"TensorRT-RTX has no target for {options.gpu} GPUs ({', '.join(GPU_TARGETS[options.gpu])}; "
                             f"it knows {', '.join(sorted(k for k in known if k.startswith('SM')))}): build the "
                             "engine on such a GPU with TensorRT (`trtq build MODEL` there)")
        options = replace(options, compute_capabilities=caps)
    if not options.compute_capabilities:
        caps = default_compute_capabilities(trt)
        return tuple(c for c in caps if _sm(c) >= FP8_MIN_SM) if fp8 else caps
    if fp8:
        old = [c for c in options.compute_capabilities if _sm(c) < FP8_MIN_SM]
        if old:
            raise BuildError(f"the model has fp8 layers, which need FP8 Tensor Cores (SM{FP8_MIN_SM}, Ada, or newer); "
                             f"{', '.join(old)} {'has' if len(old) == 1 else 'have'} none: build for SM{FP8_MIN_SM}+ "
                             "targets, or quantize those layers to int8 for older GPUs")
    return options.compute_capabilities


def _configure(trt, backend: Backend, builder, options: BuildOptions, profiles, fp8: bool = False) -> object:
    config = builder.create_builder_config()
    if options.workspace_bytes:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options.workspace_bytes)
    if options.optimization_level is not None:
        config.builder_optimization_level = options.optimization_level
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    if profiles:
        profile = builder.create_optimization_profile()
        for name, (lo, opt, hi) in profiles.items():
            profile.set_shape(name, lo, opt, hi)
        config.add_optimization_profile(profile)
    if backend.is_rtx:
        caps = rtx_targets(trt, options, fp8)
        config.num_compute_capabilities = len(caps)  # must be set before each capability
        for i, cap in enumerate(caps):
            if cap not in trt.ComputeCapability.__members__:
                raise BuildError(f"compute capability '{cap}' is unknown to {backend.name} {backend.version}; "
                                 f"choose from {', '.join(trt.ComputeCapability.__members__)}")
            if not config.set_compute_capability(trt.ComputeCapability.__members__[cap], i):
                raise BuildError(f"{backend.name} refused compute capability {cap}")
    elif options.timing_cache is not None:
        data = options.timing_cache.read_bytes() if options.timing_cache.exists() else b""
        config.set_timing_cache(config.create_timing_cache(data), ignore_mismatch=False)
    return config


@contextlib.contextmanager
def tensorrt_calls():
    """No garbage collection while TensorRT may call back into Python.

    TensorRT calls the Python logger while holding an internal lock. A collection run inside
    that callback can free another TensorRT object (a builder left in a reference cycle by an
    earlier failure), whose destructor then waits for the same lock: a deadlock, seen with
    TensorRT-RTX 1.7 in this test suite.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def build_engine(model: str | os.PathLike | onnx.ModelProto, options: BuildOptions = BuildOptions()) -> BuiltEngine:
    """Build a serialized engine from an ONNX model; return it with its :class:`EngineInfo`
    (``.save(path)`` writes the engine and its sidecar)."""
    proto = load_model(model)
    _check_tensorrt_qdq(proto)
    backend = load_backend(options.backend)
    profiles = _profiles(proto, options)
    with tensorrt_calls():
        engine, caps = _build(backend, proto, options, profiles)
    return BuiltEngine(engine, engine_info(proto, backend, options, profiles, caps).with_engine(engine))


def _check_tensorrt_qdq(model: onnx.ModelProto) -> None:
    """TensorRT takes int8 Q/DQ with zero point 0 only; say so for an ``ort-cpu`` model."""
    inits = {i.name: i for i in model.graph.initializer}
    uint8 = [n.name for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")
             and len(n.input) > 2 and n.input[2] in inits
             and inits[n.input[2]].data_type == onnx.TensorProto.UINT8]
    if uint8:
        raise BuildError(f"the model has {len(uint8)} uint8 Q/DQ nodes (e.g. '{uint8[0]}'): it was written for "
                         "ONNX Runtime's CPU kernels (--target-runtime ort-cpu); TensorRT needs symmetric int8. "
                         "Quantize again with --target-runtime tensorrt")


def _build(backend: Backend, proto: onnx.ModelProto, options: BuildOptions, profiles) -> tuple[bytes, list[str]]:
    trt = backend.module
    logger = _Logger(trt)
    builder = network = parser = config = monitor = None
    try:
        builder, network, parser, errors = _parse(trt, proto, logger)
        if errors:
            raise BuildError(f"{backend.name} {backend.version} cannot parse the ONNX model: " + "; ".join(errors))
        config = _configure(trt, backend, builder, options, profiles, has_fp8(proto))
        if options.progress:
            with _phase_progress() as progress:
                monitor = _Monitor(trt, progress)  # keep alive: TensorRT holds only a reference
                config.progress_monitor = monitor
                serialized = builder.build_serialized_network(network, config)
        else:
            serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            detail = "; ".join(logger.errors[-3:]) or "no error was logged"
            raise BuildError(f"{backend.name} {backend.version} could not build the engine: {detail}")
        if options.timing_cache is not None and not backend.is_rtx:
            atomic_write_bytes(options.timing_cache, bytes(config.get_timing_cache().serialize()))
        caps = []
        if backend.is_rtx:
            caps = [str(config.get_compute_capability(i)).split(".")[-1]
                    for i in range(config.num_compute_capabilities)]
        return bytes(serialized), caps
    finally:
        # Free the TensorRT objects here, not later in a garbage collection (see tensorrt_calls).
        del monitor, config, parser, network, builder


def engine_info(model: onnx.ModelProto, backend: Backend, options: BuildOptions, profiles,
                caps: list[str]) -> EngineInfo:
    """What travels with an engine built from ``model`` (its sidecar)."""
    static = {s.name: s.shape for s in input_specs(model)}
    elem = {vi.name: vi.type.tensor_type for vi in (*model.graph.input, *model.graph.output)}

    def dtype(name: str) -> str:
        return onnx.TensorProto.DataType.Name(elem[name].elem_type).lower()

    def dims(name: str) -> list:
        return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in elem[name].shape.dim]

    inputs = tuple(EngineTensor(n, dtype(n), tuple(dims(n)), profiles.get(n)) for n in static)
    outputs = tuple(EngineTensor(o.name, dtype(o.name), tuple(dims(o.name))) for o in model.graph.output)
    options_json = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(options).items() if k != "progress"}
    options_json = json.loads(json.dumps(options_json))  # as the sidecar stores it (tuples become lists)
    return EngineInfo(backend.name, backend.version, tuple(caps), model_sha256(model), inputs, outputs,
                      precision_plan(model), options_json)

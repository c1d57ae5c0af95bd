"""What travels with an engine: :class:`EngineInfo`, saved as the JSON sidecar ``ENGINE.json``.

An engine file says little about itself without a GPU; its sidecar records the backend and
version it was built with, the target compute capabilities, the source ONNX's SHA-256, the
I/O tensors with their optimization profiles, the per-layer precision plan and the build
options. :class:`BuiltEngine` is what :func:`trtq.deploy.build_engine` returns.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

from trtq.core.errors import BuildError
from trtq.core.fileio import atomic_write_bytes, atomic_write_text

__all__ = ["BuiltEngine", "EngineInfo", "EngineTensor", "SIDECAR_FORMAT", "SIDECAR_VERSION", "save_engine"]

SIDECAR_FORMAT = "trtq.engine"
SIDECAR_VERSION = 1


@dataclass(frozen=True)
class EngineTensor:
    """An engine input or output: ``shape`` with ``None``/names for dynamic dims; inputs with a
    dynamic dim have an optimization ``profile`` (min, opt, max shapes)."""

    name: str
    dtype: str  # ONNX's lower-case name: float, float16, int64...
    shape: tuple
    profile: tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]] | None = None

    def to_json(self) -> dict:
        profile = None if self.profile is None else dict(zip(("min", "opt", "max"), (list(s) for s in self.profile)))
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape), "profile": profile}

    @classmethod
    def from_json(cls, data: dict) -> "EngineTensor":
        p = data.get("profile")
        profile = None if p is None else tuple(tuple(p[k]) for k in ("min", "opt", "max"))
        return cls(data["name"], data["dtype"], tuple(data["shape"]), profile)


@dataclass(frozen=True)
class EngineInfo:
    backend: str  # tensorrt or tensorrt_rtx
    backend_version: str
    compute_capabilities: tuple[str, ...]  # TensorRT-RTX targets (empty: the build machine's GPU)
    onnx_sha256: str
    inputs: tuple[EngineTensor, ...]
    outputs: tuple[EngineTensor, ...]
    precision: dict = field(default_factory=dict)  # compute layer -> int8 | fp16 | fp32
    build_options: dict = field(default_factory=dict)
    engine_sha256: str | None = None  # of the engine file (None in sidecars written before trtq 0.1 recorded it)
    engine_size: int | None = None

    def with_engine(self, engine: bytes) -> "EngineInfo":
        """This info recording ``engine``'s size and SHA-256 (what :meth:`verify` checks)."""
        return replace(self, engine_sha256=hashlib.sha256(engine).hexdigest(), engine_size=len(engine))

    def verify(self, engine_path: str | os.PathLike) -> None:
        """Refuse an engine file that is not the one this sidecar describes (truncated, corrupt,
        replaced): its size and SHA-256 must match."""
        path = Path(engine_path)
        size = path.stat().st_size
        if self.engine_size is not None and size != self.engine_size:
            raise BuildError(f"engine {path} has {size} bytes but its sidecar records {self.engine_size}: the file "
                             "is truncated or was replaced; rebuild it with trtq build")
        if self.engine_sha256 is not None:
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            if digest != self.engine_sha256:
                raise BuildError(f"engine {path} does not match its sidecar (SHA-256 {digest[:12]}..., recorded "
                                 f"{self.engine_sha256[:12]}...): the file is corrupt or was replaced; rebuild it")

    @property
    def max_batch(self) -> int | None:
        """The largest batch every input's profile allows (``None``: no profile)."""
        limits = [t.profile[2][0] for t in self.inputs if t.profile]
        return min(limits) if limits else None

    def to_json(self) -> dict:
        return {"format": SIDECAR_FORMAT, "version": SIDECAR_VERSION, "backend": self.backend,
                "backend_version": self.backend_version, "compute_capabilities": list(self.compute_capabilities),
                "onnx_sha256": self.onnx_sha256, "inputs": [t.to_json() for t in self.inputs],
                "outputs": [{k: v for k, v in t.to_json().items() if k != "profile"} for t in self.outputs],
                "precision": dict(self.precision), "build_options": dict(self.build_options),
                "engine_sha256": self.engine_sha256, "engine_size": self.engine_size}

    @classmethod
    def from_json(cls, data: dict, source: str = "sidecar") -> "EngineInfo":
        if not isinstance(data, dict) or data.get("format") != SIDECAR_FORMAT:
            raise BuildError(f"{source} is not a trtq engine sidecar")
        if data.get("version") != SIDECAR_VERSION:
            raise BuildError(f"{source} has sidecar version {data.get('version')!r}; this trtq reads version "
                             f"{SIDECAR_VERSION}: rebuild the engine with trtq build")
        try:
            return cls(data["backend"], data["backend_version"], tuple(data["compute_capabilities"]),
                       data["onnx_sha256"], tuple(EngineTensor.from_json(t) for t in data["inputs"]),
                       tuple(EngineTensor.from_json(t) for t in data["outputs"]), dict(data["precision"]),
                       dict(data.get("build_options") or {}), data.get("engine_sha256"), data.get("engine_size"))
        except (KeyError, TypeError, ValueError) as exc:
            raise BuildError(f"{source} is not a valid trtq engine sidecar ({type(exc).__name__}: {exc})") from exc

    @classmethod
    def load(cls, engine_path: str | os.PathLike) -> "EngineInfo":
        """The sidecar of ``engine_path`` (``ENGINE.json`` beside it)."""
        meta_path = Path(str(engine_path) + ".json")
        try:
            data = json.loads(meta_path.read_text())
        except FileNotFoundError:
            raise BuildError(f"engine {engine_path} has no sidecar {meta_path.name}; rebuild it with trtq build") \
                from None
        except (OSError, ValueError) as exc:
            raise BuildError(f"sidecar {meta_path} cannot be read: {exc}") from exc
        return cls.from_json(data, str(meta_path))


def save_engine(engine: bytes, info: EngineInfo, path: str | os.PathLike) -> tuple[Path, Path]:
    """Write ``path`` and its sidecar ``path + '.json'`` atomically."""
    path = Path(path)
    meta_path = path.with_name(path.name + ".json")
    atomic_write_bytes(path, engine)
    atomic_write_text(meta_path, json.dumps(info.with_engine(engine).to_json(), indent=1) + "\n")
    return path, meta_path


@dataclass(frozen=True)
class BuiltEngine:
    """A serialized engine and what describes it."""

    engine: bytes = field(repr=False)
    info: EngineInfo

    def save(self, path: str | os.PathLike) -> tuple[Path, Path]:
        """Write the engine and its sidecar (``path + '.json'``) atomically; return both paths."""
        return save_engine(self.engine, self.info, path)

"""``trtq build`` as one call: an engine and its sidecar, the output path checked first."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trtq.core import check_output_file
from trtq.core.errors import OutputError
from trtq.deploy.build import BuildOptions, build_engine
from trtq.deploy.engine_info import EngineInfo

__all__ = ["BuildRun", "run_build"]


@dataclass(frozen=True)
class BuildRun:
    info: EngineInfo
    files: tuple[Path, ...]  # the engine, its sidecar


def run_build(model: Any, out: str | Path | None = None, options: BuildOptions = BuildOptions()) -> BuildRun:
    """Build ``model`` (an ONNX path or ModelProto) into ``out`` (default: the model's path with
    ``.engine``) and ``out + '.json'``. Both paths are checked before the (slow) build."""
    if out is None:
        if not isinstance(model, (str, Path)):
            raise OutputError("give out= (an engine path) when the model is not a file")
        out = Path(model).with_suffix(".engine")
    engine_path = check_output_file(out)
    check_output_file(Path(str(engine_path) + ".json"))
    built = build_engine(model, options)
    return BuildRun(built.info, built.save(engine_path))

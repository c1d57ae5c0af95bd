"""PyTorch → ONNX export in a child process.

The job exports PyTorch modules and Hugging Face folders in a separate Python process
(``python -m trtq.pipeline.export_child REQUEST.json``) so that PyTorch, the module and the
exporter's working memory leave with it: in-process they stayed resident for the rest of the
job (~0.5 GB on all-MiniLM-L6-v2, on top of every later stage's peak). A plain subprocess,
not ``multiprocessing``: a user's script calling the Python API without an
``if __name__ == "__main__"`` guard would be run again by a spawned child.

The request (JSON) names what to export; the sample inputs travel as an ``.npz`` file beside
it, the model comes back as ``model.onnx`` and the parity (or the error, by type and message)
as ``result.json``, all in one temporary folder the parent owns.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import traceback
from dataclasses import asdict
from pathlib import Path
from typing import Mapping

import numpy as np
import onnx

from trtq.core import errors
from trtq.core.errors import ExportError, TrtqError


def export_in_child(request: Mapping, sample: Mapping[str, np.ndarray]) -> tuple[onnx.ModelProto, object]:
    """Run the export the ``request`` describes in a child process; returns ``(proto, parity)``.

    ``request``: ``{"kind": "hf", "folder": ...}`` or ``{"kind": "module", "model": NAME,
    "registered": bool, "checkpoint": PATH|None, "input_name": ..., "output_name": ...}``.
    A :class:`TrtqError` in the child is raised here with the same type and message; anything
    else as :class:`ExportError` naming the child's exception.
    """
    from trtq.quantize.export import ExportParity

    with tempfile.TemporaryDirectory(prefix="trtq-export-") as tmp:
        folder = Path(tmp)
        np.savez(folder / "sample.npz", **sample)
        (folder / "request.json").write_text(json.dumps(dict(request)))
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        proc = subprocess.run([sys.executable, "-m", "trtq.pipeline.export_child", str(folder)], env=env,
                              cwd=os.getcwd(), stdin=subprocess.DEVNULL)
        result_path = folder / "result.json"
        if not result_path.is_file():
            raise ExportError(f"the export process ended without a result (exit code {proc.returncode}); "
                              "it may have run out of memory")
        result = json.loads(result_path.read_text())
        if "error" in result:
            kind, message = result["error"]["type"], result["error"]["message"]
            cls = getattr(errors, kind, None)
            if isinstance(cls, type) and issubclass(cls, TrtqError):
                raise cls(message)
            # The child's traceback rides along as the cause: `-v` shows it.
            raise ExportError(f"exporting failed with {kind}: {message}") from RuntimeError(
                result["error"].get("traceback", ""))
        return onnx.load(str(folder / "model.onnx")), ExportParity(**result["parity"])


def _export(folder: Path) -> None:
    request = json.loads((folder / "request.json").read_text())
    with np.load(folder / "sample.npz", allow_pickle=False) as z:
        sample = {k: z[k] for k in z.files}
    if request["kind"] == "hf":
        from trtq.quantize.hf import export_hf

        proto, parity, _ = export_hf(request["folder"], sample)
    else:
        from trtq.models.registry import get_model_spec, resolve_factory
        from trtq.quantize.export import export, load_checkpoint

        name = request["model"]
        if request["checkpoint"] is not None:
            module = load_checkpoint(request["checkpoint"], resolve_factory(name))
        elif request["registered"]:
            module = get_model_spec(name).factory(pretrained=True)
        else:
            module = resolve_factory(name)()
        proto, parity = export(module, sample["input"], input_name=request["input_name"],
                               output_name=request["output_name"])
    onnx.save(proto, str(folder / "model.onnx"))
    (folder / "result.json").write_text(json.dumps({"parity": asdict(parity)}))


def main(argv: list[str]) -> int:
    folder = Path(argv[0])
    try:
        _export(folder)
    except Exception as exc:  # reported to the parent, which raises it as one clear error
        (folder / "result.json").write_text(json.dumps(
            {"error": {"type": type(exc).__name__, "message": str(exc).strip() or type(exc).__name__,
                       "traceback": traceback.format_exc()}}))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

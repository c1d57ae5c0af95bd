"""The base layer every other part of trtq stands on; it imports nothing else of trtq.

* errors: :class:`TrtqError` and its subclasses, :func:`require` for optional packages;
* atomic file output: :func:`atomic_write_bytes`, :func:`atomic_write_text`, :func:`staging_dir`;
* ONNX model I/O: :func:`load_model` (external data only inside the model's folder),
  :func:`input_specs`, :func:`model_sha256`;
* data: :func:`open_data` (``.npy``/``.npz``/image folder), :func:`load_arrays`,
  :class:`ImageFolderReader`, :func:`iter_batches`;
* progress bars: :func:`progress_bar`;
* the memory budget of passes over data (:mod:`trtq.core.budget`), per-stage time and peak
  memory (:mod:`trtq.core.stageclock`), running the model ahead (:mod:`trtq.core.threads`).
"""

__version__ = "0.1.0"

from trtq.core.errors import (BuildError, CalibrationError, DataError, DependencyError, ExportError, ModelError,
                              OutputError, QuantizationError, TrtqError, require)
from trtq.core.fileio import (atomic_write_bytes, atomic_write_text, check_output_file, check_output_folder,
                              staging_dir)
from trtq.core.onnx_model import InputSpec, check_model, input_specs, load_model, model_sha256, output_names
from trtq.core.progress import progress_bar
from trtq.core.readers import ImageFolderReader, PreprocessSpec, iter_batches, load_arrays, open_data

__all__ = [
    "__version__",
    "BuildError", "CalibrationError", "DataError", "DependencyError", "ExportError", "ImageFolderReader", "InputSpec",
    "ModelError", "OutputError", "PreprocessSpec", "QuantizationError", "TrtqError", "atomic_write_bytes",
    "atomic_write_text", "check_model", "check_output_file", "check_output_folder", "input_specs", "iter_batches", "load_arrays", "load_model", "model_sha256",
    "open_data", "output_names", "progress_bar", "require", "staging_dir",
]

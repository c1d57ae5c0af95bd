"""The one error hierarchy of trtq.

Every error a user can cause derives from :class:`TrtqError`. The CLI turns it into one
line and exit code 2; anything else is a bug and keeps its traceback.
A message says what is wrong, what was received, and what to do.
"""


class TrtqError(Exception):
    """Base of every error caused by input, environment or configuration."""


class ModelError(TrtqError):
    """A model file or module is missing, corrupt, or not what trtq can handle."""


class DataError(TrtqError):
    """Calibration or evaluation data is missing, malformed, or does not fit the model."""


class CalibrationError(TrtqError):
    """Calibration could not produce valid ranges (e.g. non-finite activations)."""


class QuantizationError(TrtqError):
    """The model could not be quantized as asked."""


class ExportError(TrtqError):
    """A PyTorch model could not be exported to ONNX, or the export does not match PyTorch."""


class OutputError(TrtqError):
    """An output location cannot be written."""


class DependencyError(TrtqError):
    """An optional dependency is missing; the message names the extra to install."""


def require(module: str, extra: str):
    """Import ``module`` or raise :class:`DependencyError` naming the pip extra to install."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise DependencyError(
            f"'{module}' is not installed ({exc}); install it with: pip install 'trtq[{extra}]'"
        ) from exc


class BuildError(TrtqError):
    """A TensorRT engine could not be built, or an engine cannot be used here."""

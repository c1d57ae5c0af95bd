"""trtq: post-training int8 quantization and TensorRT deployment.

This package holds only what every layer shares (errors, atomic file output) and the
application layer on top (the ``trtq`` CLI and the end-to-end quantize job). The
library itself lives in the top-level packages ``calibration``, ``quantize``,
``deploy`` and ``models``; dependencies point one way: deploy -> quantize -> calibration.
"""

__version__ = "0.1.0"

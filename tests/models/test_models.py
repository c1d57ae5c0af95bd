import numpy as np
import pytest

from tests.conftest import needs_models, needs_torch


@needs_models
def test_crops_are_deterministic_and_held_out_photos_stay_out():
    from trtq.models import images

    a, b = images.calibration_crops(6, 32), images.calibration_crops(6, 32)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (6, 32, 32, 3) and a.dtype == np.uint8
    assert not (images.evaluation_crops(6, 32) == a).all()
    assert set(images.HELD_OUT_PHOTOS).isdisjoint(images.CALIBRATION_PHOTOS)
    assert set(images.HELD_OUT_PHOTOS) | set(images.CALIBRATION_PHOTOS) <= set(images.photo_paths())


@needs_models
def test_two_evaluation_sets_share_no_photo_with_calibration_or_each_other():
    from trtq.models import images

    sets = (images.CALIBRATION_PHOTOS, images.HELD_OUT_PHOTOS, images.OTHER_PHOTOS)
    assert sum(len(s) for s in sets) == len(set().union(*sets))
    assert set(images.OTHER_PHOTOS) <= set(images.photo_paths())
    other = images.other_crops(4, 32)
    assert other.shape == (4, 32, 32, 3) and not (other == images.held_out_crops(4, 32)).all()


def test_other_sentences_are_not_in_the_calibration_pool():
    from trtq.models import text

    pool = set(text._all_sentences())
    other = text.other_sentences(200)
    assert len(set(other)) == 200 and pool.isdisjoint(other)


def test_sentences_are_the_same_in_every_process():
    # Docstrings rendered by pydoc hold object addresses and os.environ's contents, which
    # differ from run to run: the sentences must not.
    import os
    import subprocess
    import sys

    code = ("from trtq.models import text; print(repr(text.sentences(600)), repr(text.other_sentences(600)))")
    runs = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={**os.environ, "PYTHONHASHSEED": str(seed), f"TRTQ_TEST_{seed}": "x"}).stdout
            for seed in (1, 2)]
    assert runs[0] == runs[1] and "environ(" not in runs[0]


@needs_models
@needs_torch
@pytest.mark.parametrize("photo, classes", [("chelsea", {281, 282, 285}), ("coffee", {967, 968, 504})])
def test_efficientnet_lite0_recognises_photos(photo, classes):
    import torch

    from trtq.core.readers import resize_rgb
    from trtq.models import get_model_spec
    from trtq.models.images import load_photo
    from PIL import Image

    spec = get_model_spec("efficientnet_lite0")
    model = spec.factory(pretrained=True)
    x = spec.preprocess.apply(resize_rgb(Image.fromarray(load_photo(photo)), (224, 224), crop=True))
    with torch.no_grad():
        top5 = set(model(torch.from_numpy(x[None])).topk(5).indices[0].tolist())
    assert top5 & classes, top5


@needs_torch
def test_digits_cnn_is_really_trained():
    import torch

    from trtq.models.digits import TRAIN_SAMPLES, digits_arrays, digits_cnn

    x, y = digits_arrays()
    with torch.no_grad():
        pred = digits_cnn()(torch.from_numpy(x[TRAIN_SAMPLES:])).argmax(1).numpy()
    assert (pred == y[TRAIN_SAMPLES:]).mean() > 0.9

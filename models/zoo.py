"""A zoo of models trtq was not tuned on, built in code, for tests and ``bench/zoo.py``.

Each model is trained briefly (seconds, on the CPU) on structured synthetic data from
:mod:`trtq.models.synthetic`, so its weights and activations have what trained nets have
(outlier channels, saturating sigmoids and softmaxes) and what random weights hide. Each is
exported the way another tool would write it:

=================  =============================================================================
``cnn_b1``         classifier, TorchScript exporter, opset 13, **static batch 1**, BN folded
``cnn_opset11``    same network, opset 11, hard-swish written as ``Add/Clip/Mul/Div``
``cnn_constants``  same network, opset 13, every weight delivered by a ``Constant`` node
``segmenter``      fully convolutional text detector, dynamic H x W, ``ConvTranspose`` and
                   ``Resize`` upsampling, ``Concat`` of multi-scale features, sigmoid map
                   ``[N, 1, H, W]``
``recognizer``     CTC text-line recognizer: conv backbone -> sequence -> transformer block
                   (LayerNorm as ``ReduceMean/Sub/Pow/Sqrt/Div``, attention MatMuls, hard-swish
                   as elementwise ops) -> Linear over a 1000-class vocabulary -> Softmax,
                   output ``[N, T, C]``
``two_io``         two inputs (image, side vector), two outputs (class logits, box)
``subgraphs``      classifier whose middle block sits in an ``If`` branch and whose shared
                   residual block runs in a ``Loop`` body (hand-built ONNX, trained weights)
=================  =============================================================================

``ZOO[name].data(count, seed)`` gives inputs by name; seed 0 is for calibration, seed 1 for
evaluation (other samples of the same distribution). ``metric`` is the task metric that
matters for the model (a ``trtq.deploy.evaluate.METRICS`` name).
"""

from __future__ import annotations

import functools
import io
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from trtq.models import synthetic

VOCAB = 1000  # the recognizer's output classes (blank + glyphs + unused ids, like a real charset)


@dataclass(frozen=True)
class ZooModel:
    name: str
    description: str
    metric: str  # the task metric that matters: top1 | sequence | mask_iou
    build: Callable[[], onnx.ModelProto]
    data: Callable[[int, int], dict[str, np.ndarray]]


def _torch():
    import torch

    return torch


def _train(make, batches: Callable[[int], tuple], loss_fn, steps: int, lr: float = 3e-3, seed: int = 0):
    """``make()`` (a module class) trained by Adam with a cosine schedule; ``batches(step)``
    returns the step's tensors. The module is made after seeding: its initial weights, and so
    the trained model and every figure measured on it, are the same in every process."""
    torch = _torch()
    torch.manual_seed(seed)
    model = make()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.15)
    model.train()
    for step in range(steps):
        loss = loss_fn(model, *batches(step))
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return model.eval()


def _random_rows(size: int, *arrays: np.ndarray) -> Callable[[int], tuple]:
    """``batch(step)``: the same ``size`` random rows (seeded by the step) of each array, as tensors."""
    torch = _torch()
    tensors = [torch.from_numpy(a) for a in arrays]

    def batch(step: int) -> tuple:
        idx = torch.from_numpy(np.random.default_rng(step).integers(0, len(tensors[0]), size))
        return tuple(t[idx] for t in tensors)

    return batch


def _export(module, args: tuple, input_names, output_names, opset: int, dynamic_axes=None) -> onnx.ModelProto:
    """The TorchScript exporter (what most ONNX files in the wild came from), BN folded."""
    torch = _torch()
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, buf, dynamo=False, opset_version=opset, input_names=input_names,
                          output_names=output_names, dynamic_axes=dynamic_axes, do_constant_folding=True)
    model = onnx.load_from_string(buf.getvalue())
    onnx.checker.check_model(model, full_check=True)
    return model


# ---------------------------------------------------------------------------------- classifier
def _hswish(x):
    """Hard-swish as the elementwise ops other exporters write: x * clip(x + 3, 0, 6) / 6."""
    return x * (x + 3).clamp(0, 6) / 6


@functools.lru_cache(maxsize=1)
def _classifier():
    torch = _torch()
    from torch import nn

    class ShapesCNN(nn.Module):
        def __init__(self) -> None:
            super().__init__()

            def cbn(i, o, k=3, s=1, g=1):
                return nn.Sequential(nn.Conv2d(i, o, k, s, k // 2, groups=g, bias=False), nn.BatchNorm2d(o))

            self.stem, self.down = cbn(3, 16), cbn(16, 32, s=2)
            self.dw, self.pw = cbn(32, 32, g=32), cbn(32, 32, k=1)
            self.down2, self.head = cbn(32, 64, s=2), nn.Linear(64, len(synthetic.SHAPE_CLASSES))

        def forward(self, x):
            x = torch.relu(self.stem(x))
            x = _hswish(self.down(x))
            x = x + self.pw(torch.relu(self.dw(x)))
            x = _hswish(self.down2(x))
            return self.head(x.mean((2, 3)))

    x, y, _ = synthetic.shapes(3072, seed=100)
    return _train(ShapesCNN, _random_rows(64, x, y), lambda m, a, b: nn.functional.cross_entropy(m(a), b), steps=300)


def _shapes_data(count: int, seed: int) -> dict[str, np.ndarray]:
    return {"image": synthetic.shapes(count, seed)[0]}


def _cnn(opset: int, static: bool) -> onnx.ModelProto:
    torch = _torch()
    axes = None if static else {"image": {0: "N"}, "logits": {0: "N"}}
    return _export(_classifier(), (torch.zeros(1, 3, 32, 32),), ["image"], ["logits"], opset, axes)


def _with_constant_weights(model: onnx.ModelProto) -> onnx.ModelProto:
    """Every initializer becomes a ``Constant`` node feeding its old name."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    consts = [helper.make_node("Constant", [], [t.name], name=f"const_{t.name}", value=t)
              for t in out.graph.initializer]
    del out.graph.initializer[:]
    nodes = consts + list(out.graph.node)
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    onnx.checker.check_model(out, full_check=True)
    return out


# ---------------------------------------------------------------------------------- segmenter
@functools.lru_cache(maxsize=1)
def _segmenter():
    torch = _torch()
    from torch import nn

    def block(i, o, s=1):
        return nn.Sequential(nn.Conv2d(i, o, 3, s, 1, bias=False), nn.BatchNorm2d(o), nn.ReLU())

    class TextDetector(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.e1, self.e2, self.e3 = block(3, 16, 2), block(16, 32, 2), block(32, 64, 2)
            self.up3 = nn.ConvTranspose2d(64, 32, 2, 2)
            self.d2 = block(64, 32)
            self.d1 = block(48, 16)
            self.out = nn.Conv2d(16, 1, 1)

        def forward(self, x):
            f1 = self.e1(x)
            f2 = self.e2(f1)
            f3 = self.e3(f2)
            d2 = self.d2(torch.cat([self.up3(f3), f2], 1))
            d1 = self.d1(torch.cat([nn.functional.interpolate(d2, scale_factor=2.0, mode="bilinear"), f1], 1))
            up = nn.functional.interpolate(d1, scale_factor=2.0, mode="nearest")
            return torch.sigmoid(self.out(up))

    x, m = synthetic.scenes(1536, seed=100, height=48, width=48)
    return _train(TextDetector, _random_rows(32, x, m),
                  lambda net, a, b: nn.functional.binary_cross_entropy(net(a), b), steps=300)


def _segmenter_onnx() -> onnx.ModelProto:
    torch = _torch()
    axes = {"image": {0: "N", 2: "H", 3: "W"}, "prob": {0: "N", 2: "H", 3: "W"}}
    return _export(_segmenter(), (torch.zeros(1, 3, 64, 64),), ["image"], ["prob"], 13, axes)


def _scene_data(count: int, seed: int) -> dict[str, np.ndarray]:
    return {"image": synthetic.scenes(count, seed, 96, 128)[0]}


# ---------------------------------------------------------------------------------- recognizer
def _layer_norm(x, weight, bias, eps: float = 1e-5):
    """LayerNorm decomposed the way older exporters wrote it."""
    mean = x.mean(-1, keepdim=True)
    d = x - mean
    var = d.pow(2).mean(-1, keepdim=True)
    return d / (var + eps).sqrt() * weight + bias


@functools.lru_cache(maxsize=1)
def _recognizer():
    torch = _torch()
    from torch import nn

    class Recognizer(nn.Module):
        def __init__(self, d: int = 96, heads: int = 4) -> None:
            super().__init__()
            self.d, self.heads = d, heads
            self.backbone = nn.Sequential(
                nn.Conv2d(1, 32, 3, 2, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
                nn.Conv2d(32, 64, 3, 2, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
                nn.Conv2d(64, d, (8, 3), 1, (0, 1), bias=False), nn.BatchNorm2d(d), nn.ReLU())
            self.ln1_w, self.ln1_b = nn.Parameter(torch.ones(d)), nn.Parameter(torch.zeros(d))
            self.ln2_w, self.ln2_b = nn.Parameter(torch.ones(d)), nn.Parameter(torch.zeros(d))
            self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
            self.ff1, self.ff2 = nn.Linear(d, 2 * d), nn.Linear(2 * d, d)
            self.classifier = nn.Linear(d, VOCAB)

        def logits(self, x):
            f = self.backbone(x)  # [N, d, 1, T]
            s = f.flatten(2).transpose(1, 2)  # [N, T, d]
            n, t, d = s.shape
            h = _layer_norm(s, self.ln1_w, self.ln1_b)
            q, k, v = self.qkv(h).reshape(n, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
            att = torch.softmax(q @ k.transpose(-1, -2) / (d // self.heads) ** 0.5, -1)
            s = s + self.proj((att @ v).transpose(1, 2).reshape(n, t, d))
            s = s + self.ff2(_hswish(self.ff1(_layer_norm(s, self.ln2_w, self.ln2_b))))
            return self.classifier(s)

        def forward(self, x):
            return torch.softmax(self.logits(x), -1)

    x, labels = synthetic.text_lines(4096, seed=100)
    xt = torch.from_numpy(x)
    targets = [torch.tensor(lab, dtype=torch.long) for lab in labels]

    def batch(step):
        idx = np.random.default_rng(step).integers(0, len(xt), 32)
        ys = [targets[i] for i in idx]
        return xt[torch.from_numpy(idx)], torch.cat(ys), torch.tensor([len(y) for y in ys])

    def ctc(net, a, flat, lengths):
        logp = torch.log_softmax(net.logits(a), -1).transpose(0, 1)  # [T, N, C]
        steps = torch.full((a.shape[0],), logp.shape[0], dtype=torch.long)
        return nn.functional.ctc_loss(logp, flat, steps, lengths, blank=0, zero_infinity=True)

    return _train(Recognizer, batch, ctc, steps=700, lr=2e-3)


def _recognizer_onnx() -> onnx.ModelProto:
    torch = _torch()
    axes = {"line": {0: "N"}, "probs": {0: "N"}}
    return _export(_recognizer(), (torch.zeros(1, 1, 32, 128),), ["line"], ["probs"], 13, axes)


def _line_data(count: int, seed: int) -> dict[str, np.ndarray]:
    return {"line": synthetic.text_lines(count, seed)[0]}


# ---------------------------------------------------------------------------------- two inputs, two outputs
@functools.lru_cache(maxsize=1)
def _two_io():
    torch = _torch()
    from torch import nn

    class TwoIO(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.features = nn.Sequential(
                nn.Conv2d(3, 16, 3, 1, 1), nn.ReLU(), nn.Conv2d(16, 32, 3, 2, 1), nn.ReLU(),
                nn.Conv2d(32, 48, 3, 2, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
            self.side = nn.Linear(6, 16)
            self.cls, self.box = nn.Linear(64, len(synthetic.SHAPE_CLASSES)), nn.Linear(64, 4)

        def forward(self, image, side):
            h = torch.cat([self.features(image), torch.relu(self.side(side))], 1)
            return self.cls(h), torch.sigmoid(self.box(h))

    x, y, boxes = synthetic.shapes(3072, seed=101)

    def loss(net, a, s, b, box):
        logits, pred = net(a, s)
        return nn.functional.cross_entropy(logits, b) + 10 * nn.functional.mse_loss(pred, box)

    return _train(TwoIO, _random_rows(64, x, _side(x), y, boxes), loss, steps=600)


def _side(images: np.ndarray) -> np.ndarray:
    """The side input: per-channel mean and standard deviation of the image (6 numbers)."""
    return np.concatenate([images.mean((2, 3)), images.std((2, 3))], 1).astype(np.float32)


def _two_io_onnx() -> onnx.ModelProto:
    torch = _torch()
    axes = {k: {0: "N"} for k in ("image", "side", "logits", "box")}
    return _export(_two_io(), (torch.zeros(1, 3, 32, 32), torch.zeros(1, 6)), ["image", "side"],
                   ["logits", "box"], 13, axes)


def _two_io_data(count: int, seed: int) -> dict[str, np.ndarray]:
    x = synthetic.shapes(count, seed)[0]
    return {"image": x, "side": _side(x)}


# ---------------------------------------------------------------------------------- If / Loop
@functools.lru_cache(maxsize=1)
def _looped():
    torch = _torch()
    from torch import nn

    class Looped(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 24, 3, 2, 1), nn.ReLU())
            self.branch = nn.Conv2d(24, 24, 3, 1, 1)
            self.shared = nn.Conv2d(24, 24, 3, 1, 1)
            self.head = nn.Linear(24, len(synthetic.SHAPE_CLASSES))

        def forward(self, x):
            x = self.stem(x)
            x = x + torch.relu(self.branch(x))
            for _ in range(2):
                x = x + torch.relu(self.shared(x))
            return self.head(x.mean((2, 3)))

    x, y, _ = synthetic.shapes(3072, seed=102)
    return _train(Looped, _random_rows(64, x, y), lambda m, a, b: nn.functional.cross_entropy(m(a), b), steps=600)


def _subgraphs_onnx() -> onnx.ModelProto:
    """The trained :class:`Looped` net by hand: the branch block inside ``If`` (taken when the
    stem's mean activation is non-negative, i.e. always; the else branch passes through) and
    the shared block in a two-trip ``Loop`` whose body reads the outer weights."""
    net = _looped()
    w = {k: v.detach().numpy().astype(np.float32) for k, v in net.state_dict().items()}
    f = TensorProto.FLOAT
    then_branch = helper.make_graph(
        [helper.make_node("Conv", ["stem", "branch.weight", "branch.bias"], ["bc"], name="branch_conv",
                          pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["bc"], ["br"], name="branch_relu"),
         helper.make_node("Add", ["stem", "br"], ["then_out"], name="branch_add")],
        "then", [], [helper.make_tensor_value_info("then_out", f, None)])
    else_branch = helper.make_graph([helper.make_node("Identity", ["stem"], ["else_out"], name="pass")],
                                    "else", [], [helper.make_tensor_value_info("else_out", f, None)])
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"], name="body_cond"),
         helper.make_node("Conv", ["v_in", "shared.weight", "shared.bias"], ["sc"], name="shared_conv",
                          pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["sc"], ["sr"], name="shared_relu"),
         helper.make_node("Add", ["v_in", "sr"], ["v_out"], name="shared_add")],
        "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_in", f, None)],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_out", f, None)])
    nodes = [
        helper.make_node("Conv", ["image", "stem.0.weight", "stem.0.bias"], ["sc0"], name="stem_conv",
                         pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Relu", ["sc0"], ["stem"], name="stem_relu"),
        helper.make_node("ReduceMean", ["stem"], ["mean"], name="mean", keepdims=0),
        helper.make_node("GreaterOrEqual", ["mean", "zero"], ["cond"], name="non_negative"),
        helper.make_node("If", ["cond"], ["branched"], name="branch", then_branch=then_branch,
                         else_branch=else_branch),
        helper.make_node("Loop", ["trips", "true", "branched"], ["looped"], name="loop", body=body),
        helper.make_node("GlobalAveragePool", ["looped"], ["gap"], name="gap"),
        helper.make_node("Flatten", ["gap"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "head.weight", "head.bias"], ["logits"], name="head", transB=1),
    ]
    inits = [numpy_helper.from_array(v, k) for k, v in w.items()]
    inits += [numpy_helper.from_array(np.float32(0), "zero"), numpy_helper.from_array(np.int64(2), "trips"),
              numpy_helper.from_array(np.bool_(True), "true")]
    graph = helper.make_graph(
        nodes, "subgraphs", [helper.make_tensor_value_info("image", f, ["N", 3, 32, 32])],
        [helper.make_tensor_value_info("logits", f, ["N", len(synthetic.SHAPE_CLASSES)])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


ZOO: dict[str, ZooModel] = {m.name: m for m in (
    ZooModel("cnn_b1", "shapes classifier, opset 13, static batch 1", "top1",
             lambda: _cnn(13, static=True), _shapes_data),
    ZooModel("cnn_opset11", "shapes classifier, opset 11, hard-swish as Add/Clip/Mul/Div", "top1",
             lambda: _cnn(11, static=False), _shapes_data),
    ZooModel("cnn_constants", "shapes classifier, opset 13, weights in Constant nodes", "top1",
             lambda: _with_constant_weights(_cnn(13, static=False)), _shapes_data),
    ZooModel("segmenter", "text detector, dynamic HxW, ConvTranspose+Resize, sigmoid map", "mask_iou",
             _segmenter_onnx, _scene_data),
    ZooModel("recognizer", "CTC text-line recognizer, transformer block, 1000-class softmax", "sequence",
             _recognizer_onnx, _line_data),
    ZooModel("two_io", "two inputs (image, side vector), two outputs (logits, box)", "top1",
             _two_io_onnx, _two_io_data),
    ZooModel("subgraphs", "classifier with an If branch and a Loop body (hand-built)", "top1",
             _subgraphs_onnx, _shapes_data),
)}


#: The data sets :func:`write_zoo` writes, by seed: calibration, evaluation (what a search may
#: choose on) and a check set nothing chooses on.
DATA_SEEDS = {"calib": 0, "eval": 1, "check": 2}


def write_zoo(folder: str | Path, names: tuple[str, ...] | None = None, samples: int = 128,
              sets: tuple[str, ...] = ("calib", "eval")) -> dict[str, dict[str, Path]]:
    """Write each model as ``NAME.onnx`` and its data sets (``NAME.calib.npz``, seed 0;
    ``NAME.eval.npz``, seed 1; ``NAME.check.npz``, seed 2; see :data:`DATA_SEEDS`) into
    ``folder``; returns ``{name: {"onnx" | set: path}}``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for name in names or tuple(ZOO):
        spec = ZOO[name]
        paths = {"onnx": folder / f"{name}.onnx"}
        onnx.save(spec.build(), paths["onnx"])
        for which in sets:
            paths[which] = folder / f"{name}.{which}.npz"
            np.savez(paths[which], **spec.data(samples, DATA_SEEDS[which]))
        out[name] = paths
    return out


__all__ = ["DATA_SEEDS", "ZOO", "ZooModel", "write_zoo"]

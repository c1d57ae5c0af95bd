"""A tiny CNN for scikit-learn's 8x8 digits: a real trained model small enough for fast tests.

Input ``(N, 1, 8, 8)`` float32, pixel/16 in [0, 1]; output 10 logits. The architecture has
Conv+BN+ReLU, a stride-2 conv, a residual Add and a Linear head, so it exercises every
quantization rule of the CNN path. Training is deterministic and takes a few seconds on CPU.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from torch import nn

TRAIN_SAMPLES = 1400  # the first 1400 of the 1797 digits train; the rest evaluate


class DigitsCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 32, 3, stride=2, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(32)
        self.conv3 = nn.Conv2d(32, 32, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(32)
        self.fc = nn.Linear(32 * 4 * 4, 10)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.bn1(self.conv1(x)))
        x = self.act(self.bn2(self.conv2(x)))
        x = self.act(self.bn3(self.conv3(x)) + x)
        return self.fc(torch.flatten(x, 1))


def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """All 1797 digits as ``(N, 1, 8, 8)`` float32 in [0, 1], and their labels."""
    from sklearn.datasets import load_digits

    d = load_digits()
    return (d.images[:, None] / 16.0).astype(np.float32), d.target.astype(np.int64)


@functools.lru_cache(maxsize=1)
def _trained_state() -> dict:
    x, y = digits_arrays()
    xt, yt = torch.from_numpy(x[:TRAIN_SAMPLES]), torch.from_numpy(y[:TRAIN_SAMPLES])
    gen = torch.Generator().manual_seed(0)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = DigitsCNN()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    with torch.enable_grad():  # callers may be inside torch.no_grad()
        _train(model, opt, xt, yt, gen)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _train(model: nn.Module, opt, xt: torch.Tensor, yt: torch.Tensor, gen: torch.Generator) -> None:
    for _ in range(15):
        order = torch.randperm(len(xt), generator=gen)
        for i in range(0, len(xt), 64):
            idx = order[i:i + 64]
            opt.zero_grad()
            nn.functional.cross_entropy(model(xt[idx]), yt[idx]).backward()
            opt.step()


def digits_cnn(pretrained: bool = True) -> DigitsCNN:
    """The digits CNN in eval mode, trained on first use when ``pretrained`` (cached per process)."""
    model = DigitsCNN()
    if pretrained:
        model.load_state_dict(_trained_state())
    return model.eval()

"""Synthetic but structured data for the model zoo (:mod:`trtq.models.zoo`).

Three generators, each deterministic in its seed, so that calibration (seed 0) and
evaluation (seed 1) draw different samples of the same distribution:

* :func:`shapes`: 32x32 colour images of one of 8 shapes (disk, square, triangle, ring,
  cross, striped and checkered boxes) on a gradient background with noise; the label, and
  the shape's box ``(cx, cy, w, h)`` in [0, 1];
* :func:`scenes`: colour scenes with "text lines" (boxes of dark vertical strokes) among
  distractor blobs; the per-pixel mask of the lines;
* :func:`text_lines`: grey 32xW strips of glyphs from a fixed random alphabet, and the
  glyph ids (1-based; 0 is the CTC blank).

Images are normalized as ``(x - 0.5) / 0.25``, so inputs span about [-2, 2] like a
mean/std-normalized photo.
"""

from __future__ import annotations

import numpy as np

SHAPE_CLASSES = ("disk", "square", "triangle", "ring", "cross", "h_stripes", "v_stripes", "checker")
GLYPHS = 60  # glyphs that occur in text lines
GLYPH_H, GLYPH_W = 20, 7


def _normalize(x: np.ndarray) -> np.ndarray:
    return ((x - 0.5) / 0.25).astype(np.float32)


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A linear colour gradient with pixel noise, HxWx3 in [0, 1]."""
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    angle = rng.uniform(0, 2 * np.pi)
    t = (np.cos(angle) * xx + np.sin(angle) * yy)[..., None]
    a, b = rng.uniform(0.1, 0.9, 3), rng.uniform(0.1, 0.9, 3)
    img = a + (b - a) * t
    return np.clip(img + rng.normal(0, 0.04, img.shape), 0, 1)


def _shape_mask(kind: int, yy: np.ndarray, xx: np.ndarray, cx: float, cy: float, r: float) -> np.ndarray:
    dx, dy = xx - cx, yy - cy
    box = (np.abs(dx) <= r) & (np.abs(dy) <= r)
    name = SHAPE_CLASSES[kind]
    if name == "disk":
        return dx ** 2 + dy ** 2 <= r ** 2
    if name == "square":
        return box
    if name == "triangle":
        return (dy <= r) & (dy >= -r) & (np.abs(dx) <= (dy + r) / 2)
    if name == "ring":
        d2 = dx ** 2 + dy ** 2
        return (d2 <= r ** 2) & (d2 >= (0.55 * r) ** 2)
    if name == "cross":
        return box & ((np.abs(dx) <= r / 3) | (np.abs(dy) <= r / 3))
    period = max(2.0, r / 2)
    if name == "h_stripes":
        return box & ((yy // (period / 2)) % 2 == 0)
    if name == "v_stripes":
        return box & ((xx // (period / 2)) % 2 == 0)
    return box & (((xx // period) + (yy // period)) % 2 == 0)


def shapes(count: int, seed: int, size: int = 32) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``count`` shape images ``(N, 3, size, size)``, labels ``(N,)`` and boxes ``(N, 4)``."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    images = np.empty((count, 3, size, size), np.float32)
    labels = rng.integers(0, len(SHAPE_CLASSES), count)
    boxes = np.empty((count, 4), np.float32)
    for i, kind in enumerate(labels):
        img = _background(rng, size, size)
        r = rng.uniform(0.18, 0.38) * size
        cx, cy = rng.uniform(r, size - r, 2)
        mask = _shape_mask(int(kind), yy, xx, cx, cy, r)
        colour = rng.uniform(0, 1, 3)
        colour = np.where(np.abs(colour - img[mask].mean(0)) < 0.25, 1 - colour, colour)
        img[mask] = np.clip(colour + rng.normal(0, 0.04, (int(mask.sum()), 3)), 0, 1)
        images[i] = _normalize(img).transpose(2, 0, 1)
        boxes[i] = (cx / size, cy / size, 2 * r / size, 2 * r / size)
    return images, labels.astype(np.int64), boxes


def scenes(count: int, seed: int, height: int = 64, width: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """``count`` scenes ``(N, 3, H, W)`` with 1-3 text lines and 0-3 blobs; masks ``(N, 1, H, W)``."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    images = np.empty((count, 3, height, width), np.float32)
    masks = np.zeros((count, 1, height, width), np.float32)
    for i in range(count):
        img = _background(rng, height, width)
        for _ in range(rng.integers(0, 4)):  # distractors: soft blobs
            cx, cy, r = rng.uniform(0, width), rng.uniform(0, height), rng.uniform(3, 10)
            blob = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r ** 2))[..., None]
            img = img * (1 - blob) + rng.uniform(0, 1, 3) * blob
        for _ in range(rng.integers(1, 4)):  # text lines: a light box of dark strokes
            lh = int(rng.integers(5, 11))
            lw = int(rng.integers(16, max(17, width * 3 // 4)))
            top, left = int(rng.integers(0, height - lh)), int(rng.integers(0, width - lw))
            ink = rng.uniform(0, 0.3, 3)
            strokes = rng.random(lw) < 0.45
            region = img[top:top + lh, left:left + lw]
            region[1:-1, strokes] = ink
            masks[i, 0, top:top + lh, left:left + lw] = 1
        images[i] = _normalize(np.clip(img + rng.normal(0, 0.03, img.shape), 0, 1)).transpose(2, 0, 1)
    return images, masks


def glyph_bank(seed: int = 1234) -> np.ndarray:
    """The alphabet: ``GLYPHS`` smooth binary-ish 20x7 glyphs (fixed, independent of data seeds)."""
    rng = np.random.default_rng(seed)
    raw = rng.random((GLYPHS, GLYPH_H // 4, GLYPH_W)) < 0.45
    glyphs = np.repeat(raw, 4, axis=1).astype(np.float32)
    glyphs[:, :, 0] = 0  # a blank column between neighbours
    return glyphs


def text_lines(count: int, seed: int, width: int = 128, max_len: int = 12) -> tuple[np.ndarray, list[list[int]]]:
    """``count`` text-line strips ``(N, 1, 32, width)`` and their glyph ids (1..GLYPHS)."""
    rng = np.random.default_rng(seed)
    bank = glyph_bank()
    images = np.empty((count, 1, 32, width), np.float32)
    labels: list[list[int]] = []
    for i in range(count):
        n = int(rng.integers(3, max_len + 1))
        ids = rng.integers(0, GLYPHS, n)
        paper, ink = rng.uniform(0.6, 1.0), rng.uniform(0.0, 0.35)
        img = np.full((32, width), paper)
        x = int(rng.integers(0, 8))
        top = int(rng.integers(2, 32 - GLYPH_H - 2))
        kept = []
        for g in ids:
            if x + GLYPH_W > width:
                break
            img[top:top + GLYPH_H, x:x + GLYPH_W] -= (paper - ink) * bank[g]
            kept.append(int(g) + 1)
            x += GLYPH_W + int(rng.integers(0, 3))
        img = np.clip(img + rng.normal(0, 0.05, img.shape), 0, 1)
        images[i, 0] = _normalize(img)
        labels.append(kept)
    return images, labels

"""A camera file for Chromium's `--use-file-for-fake-video-capture`: textured, moving content.

Chrome's built-in fake camera (a flat green frame with a rotating pie) is so easy to encode
that its simulcast layers stay far below the bit rates the client asks for (360p ~0.4 Mbit/s
of 0.6, 720p ~0.8 of 1.5). A benchmark of how well a receiver's link is used then measures
the test pattern, not the allocator. This file gives the encoder what a real camera does:
detail at every scale, a slow pan, a moving object and sensor noise, so each layer is
encoded at about the rate its encoding asks for.

Written once per machine as Y4M (I420), cached like the pre-encoded synthetic media.
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

CACHE = Path(os.environ.get("HOINGHI_CACHE", Path.home() / ".cache" / "hoinghi"))


def _texture(width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    """Colour texture with detail from coarse to fine (sum of upscaled noise octaves)."""
    img = np.zeros((height, width, 3), np.float32)
    for scale, weight in ((64, 0.45), (16, 0.3), (4, 0.15), (1, 0.1)):
        small = rng.random((max(2, height // scale), max(2, width // scale), 3), dtype=np.float32)
        img += weight * cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)
    return np.clip(img * 255.0, 0, 255)


def _frame(base: np.ndarray, margin: int, width: int, height: int, i: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """Frame i of n (BGR, uint8) cut from the texture `base`: a slow pan that returns to
    its start (so a loop has no jump), a moving object (a presenter's hand, a page turned)
    and sensor noise (what makes every frame cost bits, as with a real camera)."""
    phase = 2 * np.pi * i / n
    x = int(margin + margin * 0.8 * np.sin(phase))
    y = int(margin + margin * 0.5 * np.sin(2 * phase))
    frame = base[y : y + height, x : x + width].copy()
    cx = int(width * (0.5 + 0.3 * np.cos(phase)))
    cy = int(height * (0.5 + 0.25 * np.sin(phase)))
    cv2.circle(frame, (cx, cy), height // 8, (40.0, 90.0, 200.0), -1)
    frame += rng.normal(0.0, 3.0, frame.shape).astype(np.float32)
    return np.clip(frame, 0, 255).astype(np.uint8)


def textured_y4m(width: int = 1280, height: int = 720, fps: int = 20, seconds: float = 4.0, seed: int = 7) -> Path:
    """Path of the cached Y4M file (written on first use; ~110 MB for the defaults)."""
    path = CACHE / f"camera-textured-{width}x{height}-{fps}fps-{seconds:g}s-{seed}.y4m"
    if path.exists():
        return path
    CACHE.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    margin = 96
    base = _texture(width + 2 * margin, height + 2 * margin, rng)
    frames = int(fps * seconds)
    tmp = path.with_suffix(".part")
    with open(tmp, "wb") as out:
        out.write(f"YUV4MPEG2 W{width} H{height} F{fps}:1 Ip A1:1 C420jpeg\n".encode())
        for i in range(frames):
            bgr = _frame(base, margin, width, height, i, frames, rng)
            out.write(b"FRAME\n")
            out.write(cv2.cvtColor(bgr, cv2.COLOR_BGR2YUV_I420).tobytes())
    tmp.replace(path)
    return path


if __name__ == "__main__":
    print(textured_y4m())

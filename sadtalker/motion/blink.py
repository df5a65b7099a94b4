"""Random eye-blink schedule (upstream ``generate_blink_seq_randomly``).

The audio->expression network takes a per-frame "eye closure" ratio; blinks are 5-frame bumps
(0.5, 0.9, 1.0, 0.9, 0.5) separated by random gaps.  Randomness comes from a caller-owned generator:
``random.Random`` reproduces upstream's ``random.choice`` stream draw for draw, ``numpy.random.Generator`` is
also accepted.
"""

from __future__ import annotations

import random

import numpy as np

BLINK_SHAPE = np.array([0.5, 0.9, 1.0, 0.9, 0.5], dtype=np.float32)
MIN_FRAMES_FOR_BLINKS = 21  # clips of <= 20 frames never blink
MIN_GAP = 10
MAX_GAP = 70  # exclusive upper bound (also capped at half the clip)

BlinkRng = random.Random | np.random.Generator


def _draw_gap(rng: BlinkRng, low: int, high: int) -> int:
    """Uniform integer in [low, high)."""
    if isinstance(rng, random.Random):
        return rng.choice(range(low, high))  # the exact call upstream makes, so seeded streams agree
    return int(rng.integers(low, high))


def generate_blink_ratio(num_frames: int, rng: BlinkRng) -> np.ndarray:
    """Blink ratio per frame, shape (T,), float32 in [0, 1].

    Starting at frame 0, repeatedly skip a random gap in [min(10, T), min(T // 2, 70)) and place a blink,
    until the next blink would not end before the last frame.
    """
    ratio = np.zeros(num_frames, dtype=np.float32)
    if num_frames < MIN_FRAMES_FOR_BLINKS:
        return ratio
    low, high = min(MIN_GAP, num_frames), min(num_frames // 2, MAX_GAP)
    if low >= high:
        # T = 21 gives an empty range, where upstream's random.choice raises; no room for a blink: stay open.
        return ratio
    frame = 0
    while True:
        start = frame + _draw_gap(rng, low, high)
        end = start + len(BLINK_SHAPE)
        if end > num_frames - 1:
            return ratio
        ratio[start:end] = BLINK_SHAPE
        frame = end

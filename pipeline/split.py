"""The train/test split of a subject's frames, which tracking, audio statistics and training all agree on.

Test = the last max(1, floor(N / 11)) frames, train = the frames before them (contiguous, DESIGN section 2).
Audio context reaches a few frames forward, so training must also skip the last train frames whose audio
windows see test audio (:func:`audio_safe_train_frames`).
"""

from __future__ import annotations

from pipeline.io import PipelineError


def train_test_split(n: int) -> tuple[list[int], list[int]]:
    """Contiguous split: test = the last max(1, floor(n / 11)) frames, train = the frames before them."""
    if n < 2:
        raise PipelineError(f"a video of {n} frame(s) cannot be split into train and test frames")
    n_test = max(1, n // 11)
    return list(range(n - n_test)), list(range(n - n_test, n))


def audio_safe_train_frames(train: list[int], test: list[int], reach: int) -> list[int]:
    """Training frames whose audio input -- ``reach`` frames either side -- holds no test frame's audio."""
    first, last = min(test), max(test)
    return [t for t in train if t + reach < first or t - reach > last]

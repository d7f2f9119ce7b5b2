"""Evaluate saved logits out of core with Dask.

A model's logits over a large evaluation set are usually written to disk once
(``np.save``) and read back later. ``np.load(path, mmap_mode="r")`` maps the file without
reading it; ``dask.array.from_array`` cuts the map into row chunks; ls_xp's loss stays lazy
until it is computed, one chunk at a time, so the whole array is never in memory.

    python examples/evaluate_dask.py        # a few seconds on a 2-core CPU
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import dask.array as da
import numpy as np

import ls_xp


def save_logits(directory: Path, rows: int, classes: int = 10) -> tuple[Path, Path]:
    """Stand-in for a model's evaluation run: write logits and labels with ``np.save``."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, classes, size=rows)
    logits = rng.normal(size=(rows, classes)).astype(np.float32)
    logits[np.arange(rows), labels] += 2.0  # a model that is right more often than not
    np.save(directory / "logits.npy", logits)
    np.save(directory / "labels.npy", labels)
    return directory / "logits.npy", directory / "labels.npy"


def evaluate(logits_path: Path, labels_path: Path, chunk_rows: int = 20_000) -> tuple[float, float]:
    """Mean smoothed loss and accuracy of saved logits, chunk by chunk."""
    logits = da.from_array(np.load(logits_path, mmap_mode="r"), chunks=(chunk_rows, -1))
    labels = da.from_array(np.load(labels_path, mmap_mode="r"), chunks=chunk_rows)
    loss = ls_xp.cross_entropy(logits, labels, 0.1)  # lazy: nothing is read yet
    accuracy = (da.argmax(logits, axis=1) == labels).mean()
    value, acc = da.compute(loss, accuracy)  # one pass over the file, chunk by chunk
    print(f"mean loss over {logits.shape[0]} rows in {logits.numblocks[0]} chunks: {float(value):.4f}")
    print(f"accuracy: {float(acc):.3f}")
    return float(value), float(acc)


def main(rows: int = 200_000) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        paths = save_logits(Path(tmp), rows)
        value, _ = evaluate(*paths)
    return value


if __name__ == "__main__":
    main()

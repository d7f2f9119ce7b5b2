"""Evaluate a trained linear classifier out of core with Dask: the logits of a large data
set are never in memory at once; ls_xp's loss stays lazy until computed, chunk by chunk.

    python examples/evaluate_dask.py        # a few seconds on a 2-core CPU
"""

from __future__ import annotations

import dask.array as da
import numpy as np

import ls_xp


def main(rows: int = 200_000) -> float:
    rng = np.random.default_rng(0)
    w = rng.normal(size=(32, 10))  # a "saved model"
    x = da.random.default_rng(1).normal(size=(rows, 32), chunks=(20_000, 32))  # a data set on disk
    logits = x @ w
    labels = da.argmax(logits + da.random.default_rng(2).normal(size=(rows, 10), chunks=(20_000, 10)), axis=1)
    loss = ls_xp.cross_entropy(logits, labels, 0.1)  # lazy: nothing computed yet
    value = float(loss.compute())
    print(f"mean loss over {rows} rows in {logits.numblocks[0]} chunks: {value:.4f}")
    return value


if __name__ == "__main__":
    main()

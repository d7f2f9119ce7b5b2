"""The training scripts in ``examples/`` run and their loss falls."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
NEEDS = {
    "train_numpy.py": "numpy",
    "train_torch.py": "torch",
    "train_torch_lm_head.py": "torch",
    "train_jax.py": "jax",
}


@pytest.mark.parametrize("script", sorted(NEEDS))
def test_example_trains(script, capsys):
    if not (EXAMPLES / script).exists():
        pytest.skip("examples/ is not next to the tests (an installed copy of the tests)")
    if importlib.util.find_spec(NEEDS[script]) is None:
        pytest.skip(f"{NEEDS[script]} is not installed")
    spec = importlib.util.spec_from_file_location(script[:-3], EXAMPLES / script)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    losses = module.main(steps=100)
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert last < 0.6 * first, (first, last)
    assert "loss" in capsys.readouterr().out


def _load(script):
    if not (EXAMPLES / script).exists():
        pytest.skip("examples/ is not next to the tests (an installed copy of the tests)")
    spec = importlib.util.spec_from_file_location(script[:-3], EXAMPLES / script)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.filterwarnings("ignore::UserWarning")  # dask's chunking notes
def test_dask_evaluation_example(tmp_path, capsys):
    pytest.importorskip("dask.array", reason="dask is not installed")
    example = _load("evaluate_dask.py")
    assert 0.0 < example.main(rows=20_000) < 10.0
    # saved logits, read back through a memory map, equal the in-memory evaluation
    logits_path, labels_path = example.save_logits(tmp_path, rows=5_000)
    value, accuracy = example.evaluate(logits_path, labels_path, chunk_rows=1_000)
    import numpy as np

    import ls_xp

    logits, labels = np.load(logits_path), np.load(labels_path)
    assert abs(value - float(ls_xp.cross_entropy(logits, labels, 0.1))) <= 1e-5 * value
    assert accuracy == float((logits.argmax(axis=1) == labels).mean())
    assert "5 chunks" in capsys.readouterr().out


def test_two_frameworks_example_gives_equal_losses():
    pytest.importorskip("torch", reason="torch is not installed")
    pairs = _load("two_frameworks.py").main(steps=30)
    for a, b in pairs:
        assert abs(a - b) <= 1e-12 * abs(a)
    assert pairs[-1][0] < 0.6 * pairs[0][0]

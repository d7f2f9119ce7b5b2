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
def test_dask_evaluation_example():
    pytest.importorskip("dask.array", reason="dask is not installed")
    value = _load("evaluate_dask.py").main(rows=20_000)
    assert 0.0 < value < 10.0


def test_two_frameworks_example_gives_equal_losses():
    pytest.importorskip("torch", reason="torch is not installed")
    pairs = _load("two_frameworks.py").main(steps=30)
    for a, b in pairs:
        assert abs(a - b) <= 1e-12 * abs(a)
    assert pairs[-1][0] < 0.6 * pairs[0][0]

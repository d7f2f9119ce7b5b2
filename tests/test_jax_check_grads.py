"""``jax.test_util.check_grads`` of a loss on NumPy primals with JAX labels closed over
passes, as it does for optax: the rule sees the primals JAX hands it as one library."""

from __future__ import annotations

import numpy as np
import pytest

import ls_xp

jax = pytest.importorskip("jax", reason="jax is not installed")
jnp = jax.numpy


@pytest.mark.parametrize("kw", [{}, {"reduction": "none"}, {"convention": "others", "reduction": "sum"}])
@pytest.mark.parametrize("soft", [False, True])
def test_check_grads_on_numpy_primals(kw, soft):
    from jax.test_util import check_grads

    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 5))
    target = jnp.asarray(rng.dirichlet(np.ones(5), 4)) if soft else jnp.array([0, 1, 2, 3])
    check_grads(lambda a: ls_xp.cross_entropy(a, target, 0.1, **kw), (x,), order=2, modes=["fwd", "rev"])

"""Train a linear classifier with JAX and optax: ``jit(value_and_grad)`` through ls_xp,
with the smoothing factor an argument of the jitted step (so it can be scheduled without
recompiling).

    python examples/train_jax.py            # about 1.5 s on a 2-core CPU
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import ls_xp


def main(steps: int = 200) -> list[float]:
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(10, 32)) * 2
    labels = rng.integers(0, 10, 4096)  # NumPy labels, as a data loader yields them
    inputs = jnp.asarray(centers[labels] + rng.normal(size=(4096, 32)), dtype=jnp.float32)
    params = {"w": jnp.zeros((32, 10)), "b": jnp.zeros(10)}

    def loss_fn(p: dict[str, jax.Array], x: jax.Array, y: np.ndarray, eps: jax.Array) -> jax.Array:
        return ls_xp.cross_entropy(x @ p["w"] + p["b"], y, eps)

    try:  # optax's SGD where it is installed (backends/jax.txt installs it), else the same by hand
        import optax

        opt = optax.sgd(0.1)
        state = opt.init(params)
    except ImportError:
        opt = state = None

    @jax.jit
    def step(p: dict[str, jax.Array], s: object, x: jax.Array, y: jax.Array, eps: jax.Array):  # noqa: ANN202
        loss, grads = jax.value_and_grad(loss_fn)(p, x, y, eps)
        if opt is None:
            return loss, jax.tree_util.tree_map(lambda a, g: a - 0.1 * g, p, grads), s
        updates, s = opt.update(grads, s, p)
        return loss, optax.apply_updates(p, updates), s

    losses = []
    for i in range(steps):
        idx = rng.integers(0, 4096, 256)
        eps = jnp.float32(0.2 if i < steps // 2 else 0.1)  # a schedule: a traced argument
        loss, params, state = step(params, state, inputs[idx], jnp.asarray(labels[idx]), eps)
        losses.append(float(loss))
        if i % 50 == 0 or i == steps - 1:
            print(f"step {i:4d}  loss {float(loss):.4f}  eps {float(eps):.1f}")
    return losses


if __name__ == "__main__":
    main()

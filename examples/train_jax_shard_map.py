"""A vocabulary-sharded softmax head trained inside ``jax.shard_map``.

    python examples/train_jax_shard_map.py      # 2 emulated CPU devices, a few seconds

The head's columns (the classes) are split over the mesh axis ``"tp"``; inside
``shard_map`` each device computes its slice of the logits and
``ls_xp.jax.vocab_parallel_cross_entropy`` gives the exact label-smoothed loss of all
the classes with one ``pmax`` and one ``psum`` of per-row values. ``jax.grad`` through
it leaves each device the gradient of its own columns; nothing of size N x V moves.
"""

from __future__ import annotations

import os

# (emulated devices must be requested before JAX starts; real accelerators need nothing)
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=2")

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from ls_xp.jax import vocab_parallel_cross_entropy

VOCAB, DIM = 512, 32


def main(steps: int = 100) -> list[float]:
    devices = jax.devices()
    mesh = Mesh(
        np.array(devices[: 2 if len(devices) >= 2 else 1]), ("tp",), axis_types=(jax.sharding.AxisType.Auto,)
    )
    rng = np.random.default_rng(0)
    centers = rng.standard_normal((VOCAB, DIM)).astype(np.float32)
    labels = rng.integers(0, VOCAB, 4096)
    inputs = (centers[labels] + 0.5 * rng.standard_normal((4096, DIM))).astype(np.float32)
    head = jax.device_put(jnp.zeros((DIM, VOCAB), jnp.float32), NamedSharding(mesh, P(None, "tp")))

    def local_loss(w_local: jax.Array, h: jax.Array, y: jax.Array) -> jax.Array:
        return vocab_parallel_cross_entropy(h @ w_local, y, 0.1, axis_name="tp")

    loss_fn = jax.shard_map(local_loss, mesh=mesh, in_specs=(P(None, "tp"), P(), P()), out_specs=P())

    @jax.jit
    def step(w: jax.Array, h: jax.Array, y: jax.Array) -> tuple[jax.Array, jax.Array]:
        loss, g = jax.value_and_grad(loss_fn)(w, h, y)
        return w - 2.0 * g, loss

    losses = []
    replicated = NamedSharding(mesh, P())
    for i in range(steps):
        idx = rng.integers(0, 4096, 512)
        h, y = (jax.device_put(jnp.asarray(a), replicated) for a in (inputs[idx], labels[idx]))
        head, loss = step(head, h, y)
        losses.append(float(loss))
        if i % 25 == 0 or i == steps - 1:
            print(f"step {i:4d}  loss {losses[-1]:.4f}  ({mesh.size} devices)")
    return losses


if __name__ == "__main__":
    main()

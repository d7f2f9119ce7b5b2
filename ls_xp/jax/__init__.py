"""JAX: the losses on JAX arrays are differentiable, jittable and vmappable.

``ls_xp.cross_entropy`` and ``kl_divergence`` on JAX arrays are a ``jax.custom_jvp`` rule
whose tangent is the analytic gradient. One rule serves forward mode (``jvp``,
``jacfwd``), reverse mode (``grad``, ``value_and_grad``, ``vjp``, ``jacrev``: JAX
transposes the rule, which is linear in the tangents) and higher orders (``hessian``: the
rule itself is written in differentiable ``jax.numpy`` operations). ``jit`` and ``vmap``
trace straight through it. ``smoothing`` is an input of the rule, so derivatives with
respect to it are analytic too and a traced smoothing works under ``jit``. Under ``jit`` on
a CPU the rule evaluates the logits in rematerialised row blocks (``_blocks``), so that
``jit(value_and_grad)`` holds the logits, the gradient and a few blocks.

``ls_xp.linear_cross_entropy`` on JAX arrays runs its row blocks in ``lax.scan`` inside a
``jax.custom_vjp`` rule, so XLA holds one block of logits at a time, never N x V.

Nothing needs importing from here: the public functions of :mod:`ls_xp` recognise JAX
arrays (and tracers) and route them to this package's adapter (``_adapter``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # (imported lazily at run time: see ``__getattr__``)
    from ls_xp.jax._parallel import vocab_parallel_cross_entropy

__all__ = ["vocab_parallel_cross_entropy"]  # (inside jax.shard_map: ls_xp.jax._parallel)


def __getattr__(name: str) -> Any:
    """``ls_xp.jax.vocab_parallel_cross_entropy``, imported on first use."""
    if name == "vocab_parallel_cross_entropy":
        from ls_xp.jax._parallel import vocab_parallel_cross_entropy

        return vocab_parallel_cross_entropy
    raise AttributeError(f"module 'ls_xp.jax' has no attribute {name!r}")

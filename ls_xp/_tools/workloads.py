"""The workloads of ``ls-xp bench``: the sizes, the peers and how each is set up.

Each ``_setup*`` function builds the inputs of one (backend, implementation) pair and
returns the function to time: loss and gradient with respect to the logits (or, for the
linear workload, to the hidden states and the classifier).

The peers (written here as baselines, or the libraries' own functions):

- numpy: ``numpy-inplace``, a careful hand-written in-place version; ``numpy-dense``, the
  dense smoothed-target version in the style of the blog post "Label Smoothing Cross
  Entropy" (a full target matrix);
- torch: ``torch-native``, ``F.cross_entropy(..., label_smoothing=eps)`` forward + backward;
- jax: ``optax``, ``softmax_cross_entropy(x, smooth_labels(one_hot(y)))`` under
  ``jit(value_and_grad)``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

SIZES: dict[str, tuple[int, int]] = {
    "small": (64, 10),
    "busy": (2048, 32000),
    "medium": (4096, 32000),
    "large": (2048, 131072),
    "wide": (8192, 65536),
    "xlarge": (8192, 131072),
}
# the "linear" workload: hidden (N, D), classifier (V, D); sizes NxDxV
LINEAR_SIZES: dict[str, tuple[int, int, int]] = {
    "linear-small": (512, 64, 4096),
    "linear": (4096, 256, 32768),
}
# the "compiled" workload: torch.compile of Linear(D -> V, no bias) on N rows -> loss,
# forward + backward, ls_xp against F.cross_entropy(label_smoothing) compiled the same way
COMPILED_SIZES: dict[str, tuple[int, int, int]] = {
    "compiled-small": (512, 64, 4096),
    "compiled": (4096, 256, 32000),
}
EPS = 0.1
# the language-model options of the "-options" implementations (issue figures use these)
LLM_OPTIONS: dict[str, Any] = {"z_loss": 1e-4, "softcap": 30.0, "return_aux": True}
DTYPES = ("float32", "bfloat16")

# (backend, implementation) -> module needed
IMPLEMENTATIONS: dict[tuple[str, str], str] = {
    ("numpy", "ls_xp"): "numpy",
    ("numpy", "numpy-inplace"): "numpy",
    ("numpy", "numpy-dense"): "numpy",
    ("torch", "ls_xp"): "torch",
    ("torch", "torch-native"): "torch",
    ("jax", "ls_xp"): "jax",
    ("jax", "optax"): "optax",
}
# the linear workload: ls_xp.linear_cross_entropy against the matmul, then a loss
LINEAR_IMPLEMENTATIONS: dict[tuple[str, str], str] = {
    ("numpy", "ls_xp"): "numpy",
    ("numpy", "unfused-ls_xp"): "numpy",
    ("torch", "ls_xp"): "torch",
    ("torch", "unfused-native"): "torch",
    ("torch", "unfused-ls_xp"): "torch",
    # PyTorch's own fused loss: its reference path (it makes the logits) at eps = 0.1, and
    # its chunked path, which refuses smoothing, at eps = 0 (a pairing that favours it)
    ("torch", "native-linear-ce"): "torch",
    ("torch", "native-linear-ce-chunked-eps0"): "torch",
    # ls_xp at eps = 0 (against that chunked path), and with the language-model options
    # (against the same call without them, and against the unfused path with them)
    ("torch", "ls_xp-eps0"): "torch",
    ("torch", "ls_xp-options"): "torch",
    ("torch", "unfused-ls_xp-options"): "torch",
    ("jax", "ls_xp"): "jax",
    ("jax", "unfused-optax"): "optax",
    ("jax", "unfused-ls_xp"): "jax",
}
COMPILED_IMPLEMENTATIONS: dict[tuple[str, str], str] = {
    ("torch", "torch-compiled-ls_xp"): "torch",
    ("torch", "torch-compiled-native"): "torch",
}


def parse_size(size: str) -> tuple[int, ...]:
    """A named size, ``NxK`` (the loss from logits) or ``NxDxV`` (the linear workload:
    hidden states (N, D) and a classifier (V, D))."""
    if size in SIZES:
        return SIZES[size]
    if size in LINEAR_SIZES:
        return LINEAR_SIZES[size]
    if size in COMPILED_SIZES:
        return COMPILED_SIZES[size]
    try:
        dims = tuple(int(v) for v in size.lower().split("x"))
        if len(dims) not in (2, 3):
            raise ValueError(size)
    except ValueError as exc:
        names = ", ".join([*SIZES, *LINEAR_SIZES, *COMPILED_SIZES])
        raise ValueError(
            f"size must be one of {names}, NxK (e.g. 2048x32000) or NxDxV (e.g. 4096x256x32768), got {size!r}"
        ) from exc
    if min(dims) < 1:
        raise ValueError(f"size must be positive, got {size!r}")
    return dims


def is_linear(size: str) -> bool:
    return len(parse_size(size)) == 3 and not is_compiled(size)


def is_compiled(size: str) -> bool:
    return size in COMPILED_SIZES


# ------------------------------------------------------------------ the measured functions


def _numpy_inplace(x: Any, y: Any) -> tuple[Any, Any]:
    """Hand-written NumPy, in place: the baseline a careful engineer writes."""
    import numpy as np

    n, k = x.shape
    rows = np.arange(n)
    m = x.max(axis=1, keepdims=True)
    g = np.subtract(x, m)
    sum_z = g.sum(axis=1)
    z_y = g[rows, y]
    np.exp(g, out=g)
    se = g.sum(axis=1, keepdims=True)
    lse = np.log(se[:, 0])
    loss = ((1 - EPS) * (lse - z_y) + EPS / k * (k * lse - sum_z)).mean()
    g /= se
    g -= EPS / k
    g[rows, y] -= 1 - EPS
    g /= n
    return loss, g


def _numpy_dense(x: Any, y: Any) -> tuple[Any, Any]:
    """Dense smoothed targets, as in the blog post "Label Smoothing Cross Entropy":
    log_softmax, a full target matrix, their product."""
    import numpy as np

    n, k = x.shape
    z = x - x.max(axis=1, keepdims=True)
    lp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    q = np.full((n, k), EPS / k, dtype=x.dtype)
    q[np.arange(n), y] += 1 - EPS
    loss = -(q * lp).sum(axis=1).mean()
    grad = (np.exp(lp) - q) / n
    return loss, grad


def setup(backend: str, impl: str, dims: tuple[int, ...], dtype: str, device: str) -> Callable[[], Any]:
    import numpy as np

    if len(dims) == 3:
        return _setup_linear(backend, impl, dims, dtype, device)
    n, k = dims

    rng = np.random.default_rng(0)
    x_np = rng.standard_normal((n, k), dtype=np.float32)
    y_np = rng.integers(0, k, n)
    if backend == "numpy":
        if dtype != "float32" or device != "cpu":
            raise ValueError("the NumPy implementations run in float32 on the CPU only")
        import ls_xp

        fn: Callable[[], Any] = {
            "ls_xp": lambda: ls_xp.loss_and_grad(x_np, y_np, EPS),
            "numpy-inplace": lambda: _numpy_inplace(x_np, y_np),
            "numpy-dense": lambda: _numpy_dense(x_np, y_np),
        }[impl]
        return fn
    if backend == "torch":
        return _setup_torch(impl, x_np, y_np, dtype, device)
    return _setup_jax(impl, x_np, y_np, dtype, device)


def _setup_torch(impl: str, x_np: Any, y_np: Any, dtype: str, device: str) -> Callable[[], Any]:
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    x0 = torch.from_numpy(x_np).to(device=device, dtype=getattr(torch, dtype))
    y = torch.from_numpy(y_np).to(device)
    sync = torch.cuda.synchronize if x0.is_cuda else (lambda: None)
    if impl == "ls_xp":
        import ls_xp

        loss_fn: Callable[[Any, Any], Any] = lambda x, t: ls_xp.cross_entropy(x, t, EPS)  # noqa: E731
    else:
        loss_fn = lambda x, t: torch.nn.functional.cross_entropy(x, t, label_smoothing=EPS)  # noqa: E731

    def run() -> Any:
        x = x0.detach().requires_grad_()
        loss = loss_fn(x, y)
        loss.backward()
        sync()
        return loss

    return run


def _setup_jax(impl: str, x_np: Any, y_np: Any, dtype: str, device: str) -> Callable[[], Any]:
    import jax
    import jax.numpy as jnp

    dev = jax.devices(device)[0]
    x = jax.device_put(jnp.asarray(x_np, dtype=getattr(jnp, dtype)), dev)
    y = jax.device_put(jnp.asarray(y_np), dev)
    k = x_np.shape[1]
    if impl == "ls_xp":
        import ls_xp

        f = jax.jit(jax.value_and_grad(lambda a: ls_xp.cross_entropy(a, y, EPS)))
    else:
        import optax

        def plain(a: Any) -> Any:
            labels = optax.smooth_labels(jax.nn.one_hot(y, k, dtype=a.dtype), EPS)
            return optax.softmax_cross_entropy(a, labels).mean()

        f = jax.jit(jax.value_and_grad(plain))

    def run_jax() -> Any:
        out = f(x)
        jax.block_until_ready(out)
        return out

    return run_jax


def _setup_linear(
    backend: str, impl: str, dims: tuple[int, ...], dtype: str, device: str
) -> Callable[[], Any]:
    """Loss and the gradients of hidden states and classifier: fused, or the matmul and
    then a loss on the materialised logits."""
    import numpy as np

    n, d, v = dims
    rng = np.random.default_rng(0)
    h_np = rng.standard_normal((n, d), dtype=np.float32)
    w_np = rng.standard_normal((v, d), dtype=np.float32) / np.float32(np.sqrt(d))
    y_np = rng.integers(0, v, n)
    if backend == "numpy":
        if dtype != "float32" or device != "cpu":
            raise ValueError("the NumPy implementations run in float32 on the CPU only")
        import ls_xp

        def unfused_numpy() -> Any:
            loss, g = ls_xp.loss_and_grad(h_np @ w_np.T, y_np, EPS)
            return loss, g @ w_np, g.T @ h_np

        if impl == "ls_xp":
            return lambda: ls_xp.linear_loss_and_grad(h_np, w_np, y_np, EPS)
        return unfused_numpy
    if backend == "torch":
        return _setup_linear_torch(impl, h_np, w_np, y_np, dtype, device)
    return _setup_linear_jax(impl, h_np, w_np, y_np, dtype, device)


def _setup_linear_torch(
    impl: str, h_np: Any, w_np: Any, y_np: Any, dtype: str, device: str
) -> Callable[[], Any]:
    import torch

    import ls_xp

    torch.set_num_threads(os.cpu_count() or 1)
    if impl.startswith("torch-compiled-"):
        return _compiled_step(impl, h_np, w_np, y_np, dtype, device)
    h0, w0 = (torch.from_numpy(a).to(device=device, dtype=getattr(torch, dtype)) for a in (h_np, w_np))
    y = torch.from_numpy(y_np).to(device)
    sync = torch.cuda.synchronize if h0.is_cuda else (lambda: None)
    f = torch.nn.functional
    loss_fn: Callable[[Any, Any], Any] = {
        "ls_xp": lambda h, w: ls_xp.linear_cross_entropy(h, w, y, EPS),
        "unfused-native": lambda h, w: torch.nn.functional.cross_entropy(h @ w.T, y, label_smoothing=EPS),
        "unfused-ls_xp": lambda h, w: ls_xp.cross_entropy(h @ w.T, y, EPS),
        "native-linear-ce": lambda h, w: f.linear_cross_entropy(h, w, y, label_smoothing=EPS),
        "native-linear-ce-chunked-eps0": lambda h, w: f.linear_cross_entropy(
            h, w, y, options=torch.nn.LinearCrossEntropyOptions()
        ),
        "ls_xp-eps0": lambda h, w: ls_xp.linear_cross_entropy(h, w, y, 0.0),
        "ls_xp-options": lambda h, w: ls_xp.linear_cross_entropy(h, w, y, EPS, **LLM_OPTIONS)[0],
        "unfused-ls_xp-options": lambda h, w: ls_xp.cross_entropy(h @ w.T, y, EPS, **LLM_OPTIONS)[0],
    }[impl]

    def run() -> Any:
        h, w = h0.detach().requires_grad_(), w0.detach().requires_grad_()
        loss = loss_fn(h, w)
        loss.backward()
        sync()
        return loss

    return run


def _setup_linear_jax(
    impl: str, h_np: Any, w_np: Any, y_np: Any, dtype: str, device: str
) -> Callable[[], Any]:
    import jax
    import jax.numpy as jnp

    import ls_xp

    dev = jax.devices(device)[0]
    h, w = (jax.device_put(jnp.asarray(a, dtype=getattr(jnp, dtype)), dev) for a in (h_np, w_np))
    y = jax.device_put(jnp.asarray(y_np), dev)
    v = w_np.shape[0]

    def optax_loss(h: Any, w: Any) -> Any:
        import optax

        labels = optax.smooth_labels(jax.nn.one_hot(y, v, dtype=h.dtype), EPS)
        return optax.softmax_cross_entropy(h @ w.T, labels).mean()

    loss_fn: Callable[[Any, Any], Any] = {
        "ls_xp": lambda h, w: ls_xp.linear_cross_entropy(h, w, y, EPS),
        "unfused-optax": optax_loss,
        "unfused-ls_xp": lambda h, w: ls_xp.cross_entropy(h @ w.T, y, EPS),
    }[impl]
    f = jax.jit(jax.value_and_grad(loss_fn, argnums=(0, 1)))

    def run_jax() -> Any:
        out = f(h, w)
        jax.block_until_ready(out)
        return out

    return run_jax


def _compiled_step(impl: str, h_np: Any, w_np: Any, y_np: Any, dtype: str, device: str) -> Callable[[], Any]:
    """``torch.compile`` of the whole training step's forward, Linear -> loss, the same way for
    both losses (default mode, static shapes); the backward is the compiled graph's. The
    first call (the bench's warm-up, not timed) compiles."""
    import torch

    import ls_xp

    dt = getattr(torch, dtype)
    lin = torch.nn.Linear(w_np.shape[1], w_np.shape[0], bias=False, device=device, dtype=dt)
    with torch.no_grad():
        lin.weight.copy_(torch.from_numpy(w_np))
    h = torch.from_numpy(h_np).to(device=device, dtype=dt)
    y = torch.from_numpy(y_np).to(device)
    sync = torch.cuda.synchronize if h.is_cuda else (lambda: None)

    def forward(x: Any, t: Any) -> Any:
        if impl == "torch-compiled-ls_xp":
            return ls_xp.cross_entropy(lin(x), t, EPS)
        return torch.nn.functional.cross_entropy(lin(x), t, label_smoothing=EPS)

    step = torch.compile(forward, fullgraph=True, dynamic=False)

    def run() -> Any:
        lin.weight.grad = None
        loss = step(h, y)
        loss.backward()
        sync()
        return loss

    return run

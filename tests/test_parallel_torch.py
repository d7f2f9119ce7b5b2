"""Vocabulary-parallel loss on torch.distributed: real gloo processes over 127.0.0.1.

One world per R (2, 3, 4) runs every case inside its ranks and returns the errors
against the unsharded ``ls_xp`` loss and gradient and the collectives each call made
(``torch.distributed.all_reduce``/``all_gather`` wrapped in the ranks); the parent only
compares. Worlds are small (R <= 4, arrays of a few rows) and bounded by a timeout.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is not installed")
dist = pytest.importorskip("torch.distributed", reason="torch.distributed is not available")
if not dist.is_available() or not dist.is_gloo_available():
    pytest.skip("torch.distributed without the gloo backend", allow_module_level=True)

import ls_xp  # noqa: E402
import ls_xp.torch  # noqa: E402
from ls_xp._tools.bench_ranks import run_ranks  # noqa: E402

SIZES = {2: [4, 6], 3: [3, 3, 4], 4: [2, 3, 1, 4]}  # uneven slices of K = 10 classes
TIMEOUT = 240.0
TOL = {"float64": 1e-12, "float32": 1e-5}


# ---------------------------------------------------------------------------- cases


def case_list() -> list[dict[str, Any]]:
    """Every keyword: both conventions, reductions, weights (none, replicated, sharded),
    where, probability targets, log_probs, the KL form, a class axis in the middle."""
    out = []
    grid = itertools.product(
        [0.0, 0.1], ["uniform", "others"], ["mean", "sum", "none"], [None, "rep", "shard"], [False, True]
    )
    for eps, conv, red, w, m in grid:
        out.append(dict(eps=eps, convention=conv, reduction=red, weight=w, where=m))
    for red, w in itertools.product(["mean", "none"], [None, "shard"]):
        out.append(dict(eps=0.1, convention="others", reduction=red, weight=w, where=True, soft=True))
        out.append(
            dict(eps=0.1, convention="uniform", reduction=red, weight=w, where=False, soft=True, kl=True)
        )
        out.append(dict(eps=0.1, convention="others", reduction=red, weight=w, where=True, log_probs=True))
        out.append(dict(eps=0.1, convention="uniform", reduction=red, weight=w, where=False, kl=True))
        out.append(dict(eps=0.2, convention="uniform", reduction=red, weight=w, where=True, axis=1))
    for red in ("mean", "none"):  # several row blocks (chunk_size)
        out.append(dict(eps=0.1, convention="others", reduction=red, weight="shard", where=True, chunk=4))
        out.append(dict(eps=0.1, convention="uniform", reduction=red, weight="rep", where=False, chunk=1))
    for dt in ("float32",):
        out += [dict(c, dtype=dt) for c in out[:24:5]]
    return out


def _data(c: dict[str, Any], k: int) -> dict[str, Any]:
    """The whole problem (the same on every rank: one seed)."""
    rng = np.random.default_rng(7)
    dt = getattr(torch, c.get("dtype", "float64"))
    n = 6
    x = torch.from_numpy(rng.standard_normal((n, k)) * 3).to(dt)
    x[0, 0] = x[0, k - 1] = 9.0  # the row maximum on two ranks
    x[1] = 0.0
    y = torch.from_numpy(rng.integers(0, k, n))
    y[2] = -100
    m = None
    if c.get("where"):
        m = torch.from_numpy(rng.random((n, k)) > 0.3)
        m[:, 0] = m[:, k - 1] = True
        m[3, 1 : k - 1] = False  # every class of the middle ranks masked in one row
        m[torch.arange(n), y.clamp(0, k - 1)] = True
    if c.get("soft"):
        y = torch.from_numpy(rng.dirichlet(np.ones(k), n)).to(dt)
    elif not c.get("log_probs"):
        x[2] = float("inf")  # an ignored row may hold anything
    if c.get("log_probs"):
        x = torch.log_softmax(x if m is None else x.masked_fill(~m, -1e30), -1)
    w = None if c["weight"] is None else torch.from_numpy(rng.random(k) + 0.5).to(dt)
    up = torch.from_numpy(rng.random(n) + 0.5).to(dt)
    if c.get("axis") == 1:  # (2, K, 3) with the classes in the middle
        x = x.reshape(2, 3, k).transpose(1, 2).contiguous()
        y = y.reshape(2, 3)
        m = None if m is None else m.reshape(2, 3, k).transpose(1, 2).contiguous()
        up = up.reshape(2, 3)
    return dict(x=x, y=y, m=m, w=w, up=up)


def _keywords(c: dict[str, Any]) -> dict[str, Any]:
    kw = dict(reduction=c["reduction"], convention=c["convention"], log_probs=c.get("log_probs", False))
    if c.get("axis") == 1:
        kw["axis"] = 1
    if c.get("chunk"):
        kw["chunk_size"] = c["chunk"]
    return kw


class _Count:
    """Wraps torch.distributed's collectives in a rank: (name, elements) per call."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []
        self._orig = {name: getattr(dist, name) for name in ("all_reduce", "all_gather", "broadcast")}
        for name, fn in self._orig.items():
            setattr(dist, name, self._wrap(name, fn))

    def _wrap(self, name: str, fn: Any) -> Any:
        def counted(*args: Any, **kwargs: Any) -> Any:
            t = args[1] if name == "all_gather" else args[0]
            self.calls.append((name, int(t.numel())))
            return fn(*args, **kwargs)

        return counted

    def take(self) -> list[tuple[str, int]]:
        out, self.calls = self.calls, []
        return out


def _rel(a: Any, b: Any) -> float:
    a, b = a.double(), b.double()
    scale = float(b.abs().max()) if b.numel() else 1.0
    return float((a - b).abs().max()) / max(scale, 1e-300) if b.numel() else 0.0


def _one_case(rank: int, sizes: list[int], c: dict[str, Any], count: _Count) -> dict[str, Any]:
    from ls_xp.torch import vocab_parallel_cross_entropy

    k = sum(sizes)
    d = _data(c, k)
    ax = 1 if c.get("axis") == 1 else -1
    lo = sum(sizes[:rank])
    idx = torch.arange(lo, lo + sizes[rank])

    def local(a: Any) -> Any:
        return None if a is None else a.index_select(ax, idx).clone()

    kw = _keywords(c)
    fn = ls_xp.kl_divergence if c.get("kl") else ls_xp.cross_entropy
    xr = d["x"].clone().requires_grad_()
    ref = fn(xr, d["y"], c["eps"], weight=d["w"], where=d["m"], **kw)
    (ref * d["up"]).sum().backward() if c["reduction"] == "none" else ref.backward()

    xl = local(d["x"]).requires_grad_()
    y = local(d["y"]) if c.get("soft") else d["y"]
    w = d["w"] if c["weight"] != "shard" else d["w"].index_select(0, idx)
    count.take()
    if c.get("kl"):
        from ls_xp._validate import options
        from ls_xp.torch._parallel import sharded_loss

        loss = sharded_loss(xl, y, c["eps"], w, local(d["m"]), options(**kw), None, kl=True)
    else:
        loss = vocab_parallel_cross_entropy(xl, y, c["eps"], weight=w, where=local(d["m"]), **kw)
    fwd = count.take()
    (loss * d["up"]).sum().backward() if c["reduction"] == "none" else loss.backward()
    bwd = [call for call in count.take() if call[0] != "all_reduce" or c["reduction"] != "none"]
    assert xl.grad is not None and xr.grad is not None
    return dict(
        loss=_rel(loss.detach(), ref.detach()),
        grad=_rel(xl.grad, xr.grad.index_select(ax, idx)),
        fwd=fwd,
        bwd=bwd,
    )


def _linear_case(rank: int, sizes: list[int], red: str, count: _Count) -> dict[str, Any]:
    """The fused head against the unfused loss of the whole classifier."""
    from ls_xp.torch import vocab_parallel_linear_cross_entropy

    rng = np.random.default_rng(3)
    n, dim, k = 7, 5, sum(sizes)
    h, cls = (torch.from_numpy(rng.standard_normal(s)) for s in ((n, dim), (k, dim)))
    b, w = torch.from_numpy(rng.standard_normal(k)), torch.from_numpy(rng.random(k) + 0.5)
    y = torch.from_numpy(rng.integers(0, k, n))
    y[1] = -100
    up = torch.from_numpy(rng.random(n) + 0.5)
    sl = slice(sum(sizes[:rank]), sum(sizes[: rank + 1]))
    hr, cr, br = (a.clone().requires_grad_() for a in (h, cls, b))
    ref = ls_xp.cross_entropy(hr @ cr.T + br, y, 0.1, weight=w, reduction=red, convention="others")
    (ref * up).sum().backward() if red == "none" else ref.backward()
    hl, cl, bl = (a.clone().requires_grad_() for a in (h, cls[sl], b[sl]))
    count.take()
    loss = vocab_parallel_linear_cross_entropy(
        hl, cl, y, 0.1, bias=bl, weight=w, reduction=red, convention="others", chunk_size=3
    )
    fwd = count.take()
    (loss * up).sum().backward() if red == "none" else loss.backward()
    bwd = count.take()
    errs = [_rel(loss.detach(), ref.detach()), _rel(hl.grad, hr.grad), _rel(cl.grad, cr.grad[sl])]
    return dict(err=max([*errs, _rel(bl.grad, br.grad[sl])]), fwd=fwd, bwd=bwd)


def cases_worker(rank: int, world: int, cases: list[dict[str, Any]]) -> dict[str, Any]:
    from test_parallel_torch_llm import llm_cases  # (the language-model options: that module's tests)

    count = _Count()
    return dict(
        cases=[_one_case(rank, SIZES[world], c, count) for c in cases],
        linear=[_linear_case(rank, SIZES[world], red, count) for red in ("mean", "sum", "none")],
        dtensor=_dtensor_cases(rank, world),
        llm=llm_cases(rank, world, SIZES[world], count),
    )


def _dtensor_cases(rank: int, world: int) -> list[Any]:
    """DTensor logits, Shard(1) (classes, torch.chunk's uneven split) and Shard(0) (rows):
    (what, error, the gradient's placement)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor

    mesh = init_device_mesh("cpu", (world,))
    rng = np.random.default_rng(5)
    x = torch.from_numpy(rng.standard_normal((2 * world, 10)) * 2)
    y = torch.from_numpy(rng.integers(0, 10, 2 * world))
    y[0] = -100
    w = torch.from_numpy(rng.random(10) + 0.5)
    out = []
    placements = [
        (Shard(1), "mean", False), (Shard(1), "none", True), (Shard(0), "mean", False),
        (Shard(0), "sum", False), (Shard(0), "none", False), (Replicate(), "sum", False),
    ]  # fmt: skip
    for place, red, kl in placements:
        fn = ls_xp.kl_divergence if kl else ls_xp.cross_entropy
        xr = x.clone().requires_grad_()
        ref = fn(xr, y, 0.1, weight=w, reduction=red)
        ref.sum().backward()
        dx = distribute_tensor(x.clone(), mesh, [place]).requires_grad_()
        loss = fn(dx, y, 0.1, weight=w, reduction=red)
        loss.sum().backward() if red == "none" else loss.backward()
        full = loss.full_tensor().detach()
        g = dx.grad.full_tensor()
        out.append(
            (str(place), red, max(_rel(full, ref.detach()), _rel(g, xr.grad)), dx.grad.placements[0] == place)
        )
    mod = ls_xp.torch.CrossEntropyLoss(label_smoothing=0.1)
    dx = distribute_tensor(x.clone(), mesh, [Shard(1)]).requires_grad_()
    mod(dx, y).backward()
    out.append(
        ("module", "mean", _rel(mod(dx, y).full_tensor().detach(), ls_xp.cross_entropy(x, y, 0.1)), True)
    )
    loss, grad = ls_xp.loss_and_grad(distribute_tensor(x.clone(), mesh, [Shard(1)]), y, 0.1)
    xr = x.clone().requires_grad_()
    ls_xp.cross_entropy(xr, y, 0.1).backward()
    out.append(("loss_and_grad", "mean", _rel(grad.full_tensor(), xr.grad), grad.placements[0] == Shard(1)))
    # the fused head with a DTensor classifier, Shard(0) (ColwiseParallel's weight)
    h = torch.from_numpy(rng.standard_normal((2 * world, 4)))
    cls = torch.from_numpy(rng.standard_normal((10, 4)))
    hr, cr = h.clone().requires_grad_(), cls.clone().requires_grad_()
    ref = ls_xp.cross_entropy(hr @ cr.T, y, 0.1, weight=w)
    ref.backward()
    hl, dc = h.clone().requires_grad_(), distribute_tensor(cls.clone(), mesh, [Shard(0)]).requires_grad_()
    loss = ls_xp.linear_cross_entropy(hl, dc, y, 0.1, weight=w)
    loss.backward()
    err = max(_rel(loss.full_tensor().detach(), ref.detach()), _rel(hl.grad, hr.grad))
    err = max(err, _rel(dc.grad.full_tensor(), cr.grad))
    out.append(("linear_cross_entropy", "mean", err, dc.grad.placements[0] == Shard(0)))
    return out


@pytest.fixture(scope="module", params=[2, 3, 4], ids=lambda r: f"R={r}")
def world_results(request: pytest.FixtureRequest) -> tuple[int, list[dict[str, Any]], list[Any]]:
    cases = case_list()
    out = run_ranks(request.param, cases_worker, (cases,), timeout=TIMEOUT)
    errors = [f"rank {r}: {res['error']}\n{res['trace']}" for r, res in enumerate(out) if "ok" not in res]
    assert not errors, "\n".join(e for e in errors if "Connection reset" not in e) or errors[0]
    return request.param, cases, [res["ok"] for res in out]


def test_equal_to_the_unsharded_fused_head(world_results):
    """Forward: the checks' all-gather, MAX, SUM; backward: one all-reduce of N x D."""
    world, _, per_rank = world_results
    for r in range(world):
        for got in per_rank[r]["linear"]:
            assert got["err"] <= 1e-12, got
            assert [name for name, _ in got["fwd"]] == ["all_gather", "all_reduce", "all_reduce"]
            assert got["bwd"] == [("all_reduce", 7 * 5)]


def test_dtensor_logits(world_results):
    world, _, per_rank = world_results
    for r in range(world):
        for what, red, err, same_placement in per_rank[r]["dtensor"]:
            assert err <= 1e-12, (what, red, err)
            assert same_placement, (what, "the gradient is not placed like the logits")


def test_equal_to_the_unsharded_loss_and_gradient(world_results):
    world, cases, per_rank = world_results
    per_rank = [p["cases"] for p in per_rank]
    bad = []
    for i, c in enumerate(cases):
        tol = TOL[c.get("dtype", "float64")]
        for r in range(world):
            got = per_rank[r][i]
            if not (got["loss"] <= tol and got["grad"] <= tol):
                bad.append((r, c, got["loss"], got["grad"]))
    assert not bad, bad[:5]


def test_collectives_per_call(world_results):
    """Forward: one all-gather of 6 integers (the checks), at most one MAX (none with
    log-probabilities) and one SUM, each of O(N) elements; backward: none."""
    world, cases, per_rank = world_results
    per_rank = [p["cases"] for p in per_rank]
    for i, c in enumerate(cases):
        n_rows = 6
        for r in range(world):
            fwd, bwd = per_rank[r][i]["fwd"], per_rank[r][i]["bwd"]
            assert [name for name, _ in fwd] == ["all_gather"] + ["all_reduce"] * (
                1 if c.get("log_probs") else 2
            )
            assert fwd[0][1] == 6
            assert all(size <= 8 * n_rows for _, size in fwd[1:]), fwd  # O(N): a few columns, never N x K
            assert bwd == [], bwd


def errors_worker(rank: int, world: int) -> list[str]:
    """Bad calls, each wrong on one rank or on all: every rank must raise, none may hang."""
    from ls_xp.torch import vocab_parallel_cross_entropy as vce

    x = torch.zeros(4, 5, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 1, 2, 3])
    good_where = torch.ones(4, 5, dtype=torch.bool)
    calls = {
        "where on one rank": lambda: vce(x, y, 0.1, where=good_where if rank == 0 else good_where[:, :2]),
        "rows": lambda: vce(torch.zeros(4 + rank, 5), torch.zeros(4 + rank, dtype=torch.int64), 0.1),
        "range": lambda: vce(x, torch.tensor([0, 1, 2, 5 * world]), 0.1),
        "weight": lambda: vce(x, y, 0.1, weight=torch.ones(7)),
        "masked target": lambda: vce(x, y, 0.1, where=good_where.clone().fill_(rank != 0)),
        "smoothing": lambda: vce(x, y, 1.5 if rank == 1 else 0.1),
        "shift on one rank": lambda: vce(x.reshape(2, 2, 5), y.reshape(2, 2), 0.1, shift=2 if rank else 1),
        "shift of probabilities": lambda: vce(x.reshape(2, 2, 5), torch.ones(2, 2, 5) / 5, 0.1, shift=1),
    }
    out = []
    for what, call in calls.items():
        try:
            call()
            out.append(f"{what}: no error")
        except (ValueError, TypeError) as exc:
            out.append(f"{what}: {exc}")
    return out


def test_errors_on_every_rank_without_a_hang():
    out = run_ranks(2, errors_worker, timeout=120.0)
    assert all("ok" in res for res in out), out
    r0, r1 = out[0]["ok"], out[1]["ok"]
    same = ["rank 1 has 5 rows", "outside [0, 10)", "weight has lengths", "masked out by where"]
    soft = "shift with probability targets"
    expect = {0: ["rank(s) [1] rejected", *same, "rank(s) [1] rejected", "rank(s) [1] rejected", soft]}
    expect[1] = ["where must be a boolean mask", *same, "smoothing must be in", "smaller than the sequence"]
    expect[1].append(soft)
    for got, want in ((r0, expect[0]), (r1, expect[1])):
        for line, fragment in zip(got, want, strict=True):
            assert fragment in line, (line, fragment)


def test_tensor_parallel_example_trains_under_torchrun():
    """examples/train_torch_tensor_parallel.py on 2 CPU processes, as its docstring says."""
    import os
    import re
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    from ls_xp._tools.bench_ranks import free_port

    script = Path(__file__).resolve().parents[1] / "examples" / "train_torch_tensor_parallel.py"
    if not script.exists():
        pytest.skip("examples/ is not next to the tests")
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    cmd = [torchrun] if torchrun else [sys.executable, "-m", "torch.distributed.run"]
    cmd += ["--nnodes", "1", "--nproc-per-node", "2", "--master-addr", "127.0.0.1"]
    cmd += ["--master-port", str(free_port()), str(script), "--steps", "40"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    losses = [float(v) for v in re.findall(r"loss (\d+\.\d+)", proc.stdout)]
    assert len(losses) >= 2 and losses[-1] < 0.6 * losses[0], proc.stdout

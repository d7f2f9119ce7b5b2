"""The language-model options (z-loss, softcap, shift, return_aux) of the vocabulary-
parallel loss on torch.distributed: process groups, the fused head and DTensor.

The cases run inside the gloo worlds of :mod:`test_parallel_torch` (one world per R = 2,
3, 4, uneven slices of 10 classes), which call :func:`llm_cases` in every rank; the
tests here read what they found (through that module's fixture, imported). Each case
is compared with the unsharded ``ls_xp`` loss of the whole logits with the same
keywords: the loss, the gradient and every field of the statistics.
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

TOL = {"float64": 1e-12, "float32": 1e-5}
B, T = 2, 3  # (batch, time): N = 6 positions


def llm_case_list() -> list[dict[str, Any]]:
    """Every option on, over reductions, weights and masks; each option alone; probability
    targets, the KL form, row blocks and float32."""
    every = dict(z_loss=1e-2, softcap=3.0, shift=1, aux=True)
    out = []
    for red, w, m in itertools.product(["mean", "sum", "none"], [None, "rep", "shard"], [False, True]):
        conv = "others" if m else "uniform"
        out.append(dict(every, eps=0.1, convention=conv, reduction=red, weight=w, where=m))
    for name, value in every.items():
        out.append({name: value, "eps": 0.1, "convention": "uniform", "reduction": "mean", "weight": "rep"})
    for red, w in itertools.product(["mean", "none"], [None, "shard"]):
        out.append(dict(every, shift=0, eps=0.1, convention="others", reduction=red, weight=w, soft=True))
    out.append(
        dict(every, eps=0.1, convention="uniform", reduction="mean", weight="rep", where=True, kl=True)
    )
    out.append(dict(every, eps=0.0, convention="uniform", reduction="none", weight="shard", chunk=2))
    out.append(dict(every, eps=0.1, convention="others", reduction="mean", weight="rep", where=True, chunk=1))
    out.append(
        dict(every, eps=0.1, convention="others", reduction="none", weight="shard", where=True, lazy=True)
    )
    out += [dict(c, dtype="float32") for c in out[:18:6]]
    return out


def _data(c: dict[str, Any], k: int) -> dict[str, Any]:
    """Logits (B, T, K) with a maximum on two ranks, targets that are the argmax on some
    positions (accuracy hits) and not on others, an ignored position holding inf."""
    rng = np.random.default_rng(11)
    dt = getattr(torch, c.get("dtype", "float64"))
    x = torch.from_numpy(rng.standard_normal((B, T, k)) * 3).to(dt)
    x[0, 0, 0] = x[0, 0, k - 1] = 9.0  # the maximum on the first and the last rank
    scored = torch.from_numpy(rng.integers(0, k, (B, T)))
    scored[0, 0] = k - 1  # the tie's second class: no hit (the first maximum is class 0)
    scored[0, 1], scored[1, 0] = x[0, 1].argmax(), x[1, 0].argmax()  # hits
    scored[0, 2] = -100
    shift = c.get("shift", 0)
    y = scored.clone()
    if shift:
        y[:, 1:] = scored[:, :-1]
        y[:, 0] = 0
        x[:, -1] = float("inf")  # the last position scores nothing
    elif not c.get("soft"):
        x[0, 2] = float("inf")  # an ignored position may hold anything
    m = None
    if c.get("where"):
        m = torch.from_numpy(rng.random((B, T, k)) > 0.3)
        m[..., 0] = m[..., k - 1] = True
        m[0, 1] = m[1, 0] = True  # (the hits stay the argmax)
        for b, t in itertools.product(range(B), range(T)):
            if int(scored[b, t]) >= 0:
                m[b, t, int(scored[b, t])] = True
    if c.get("soft"):
        y = torch.from_numpy(rng.dirichlet(np.ones(k), (B, T))).to(dt)
        y[0, 0] = 0.0
        y[0, 0, 0] = y[0, 0, k - 1] = 0.5  # a tie of the target on two ranks: a hit
        y[1, 1] = torch.nn.functional.one_hot(x[1, 1].argmax(), k).to(dt) * 0.6 + 0.4 / k
    w = None if c["weight"] is None else torch.from_numpy(rng.random(k) + 0.5).to(dt)
    up = torch.from_numpy(rng.random((B, T - shift)) + 0.5).to(dt)
    return dict(x=x, y=y, m=m, w=w, up=up)


def _keywords(c: dict[str, Any]) -> dict[str, Any]:
    kw: dict[str, Any] = dict(reduction=c["reduction"], convention=c["convention"])
    for name in ("z_loss", "softcap", "shift"):
        if c.get(name):
            kw[name] = c[name]
    kw["return_aux"] = bool(c.get("aux"))
    if c.get("chunk"):
        kw["chunk_size"] = c["chunk"]
    if c.get("lazy"):  # values not read: every block guards its ignored rows (the accelerator's way)
        kw["check_values"] = False
    return kw


def _rel(a: Any, b: Any) -> float:
    a, b = torch.as_tensor(a).double(), torch.as_tensor(b).double()
    if not b.numel():
        return 0.0
    if torch.equal(a, b):
        return 0.0
    return float((a - b).abs().max()) / max(float(b.abs().max()), 1e-300)


def _split(out: Any, aux: bool) -> tuple[Any, Any]:
    return out if aux else (out, None)


def _aux_error(got: Any, ref: Any) -> float:
    if ref is None:
        return 0.0 if got is None else 1.0
    full = [a.full_tensor() if hasattr(a, "full_tensor") else a for a in got]
    return max(_rel(g, r) for g, r in zip(full, ref, strict=True))


def _one_case(rank: int, sizes: list[int], c: dict[str, Any], count: Any) -> dict[str, Any]:
    """The process-group loss against the unsharded one: errors and collectives."""
    from ls_xp.torch import vocab_parallel_cross_entropy

    d, kw = _data(c, sum(sizes)), _keywords(c)
    idx = torch.arange(sum(sizes[:rank]), sum(sizes[: rank + 1]))

    def local(a: Any) -> Any:
        return None if a is None else a.index_select(-1, idx).clone()

    fn = ls_xp.kl_divergence if c.get("kl") else ls_xp.cross_entropy
    xr = d["x"].clone().requires_grad_()
    ref, ref_aux = _split(fn(xr, d["y"], c["eps"], weight=d["w"], where=d["m"], **kw), kw["return_aux"])
    (ref * d["up"]).sum().backward() if c["reduction"] == "none" else ref.backward()
    xl = local(d["x"]).requires_grad_()
    y = local(d["y"]) if c.get("soft") else d["y"]
    w = d["w"] if c["weight"] != "shard" else d["w"].index_select(0, idx)
    count.take()
    if c.get("kl"):
        from ls_xp._validate import options
        from ls_xp.torch._parallel import sharded_loss

        opts = options(**kw)
        out = sharded_loss(xl, y, c["eps"], w, local(d["m"]), opts, None, kl=True)
    else:
        out = vocab_parallel_cross_entropy(xl, y, c["eps"], weight=w, where=local(d["m"]), **kw)
    loss, aux = _split(out, kw["return_aux"])
    fwd = count.take()
    (loss * d["up"]).sum().backward() if c["reduction"] == "none" else loss.backward()
    bwd = [call for call in count.take() if call[0] != "all_reduce" or c["reduction"] != "none"]
    assert xl.grad is not None and xr.grad is not None
    return dict(
        loss=_rel(loss.detach(), ref.detach()),
        grad=_rel(xl.grad, xr.grad.index_select(-1, idx)),
        aux=_aux_error(aux, ref_aux),
        hits=None if ref_aux is None or c["reduction"] != "none" else float(ref_aux.accuracy.sum()),
        fwd=fwd,
        bwd=bwd,
    )


def _linear_case(rank: int, sizes: list[int], red: str, count: Any) -> dict[str, Any]:
    """The fused head with every option against the unfused loss of the whole classifier."""
    from ls_xp.torch import vocab_parallel_linear_cross_entropy

    rng = np.random.default_rng(4)
    dim, k = 5, sum(sizes)
    h, cls = (torch.from_numpy(rng.standard_normal(s)) for s in ((B, T + 1, dim), (k, dim)))
    b, w = torch.from_numpy(rng.standard_normal(k)), torch.from_numpy(rng.random(k) + 0.5)
    y = torch.from_numpy(rng.integers(0, k, (B, T + 1)))
    y[0, 1] = -100
    up = torch.from_numpy(rng.random((B, T)) + 0.5)
    kw = dict(reduction=red, convention="others", z_loss=1e-2, softcap=2.0, shift=1, return_aux=True)
    sl = slice(sum(sizes[:rank]), sum(sizes[: rank + 1]))
    hr, cr, br = (a.clone().requires_grad_() for a in (h, cls, b))
    ref, ref_aux = ls_xp.cross_entropy(hr @ cr.T + br, y, 0.1, weight=w, **kw)
    (ref * up).sum().backward() if red == "none" else ref.backward()
    hl, cl, bl = (a.clone().requires_grad_() for a in (h, cls[sl], b[sl]))
    count.take()
    loss, aux = vocab_parallel_linear_cross_entropy(hl, cl, y, 0.1, bias=bl, weight=w, chunk_size=3, **kw)
    fwd = count.take()
    (loss * up).sum().backward() if red == "none" else loss.backward()
    bwd = count.take()
    errs = [_rel(loss.detach(), ref.detach()), _rel(hl.grad, hr.grad), _rel(cl.grad, cr.grad[sl])]
    errs += [_rel(bl.grad, br.grad[sl]), _aux_error(aux, ref_aux)]
    return dict(err=max(errs), fwd=fwd, bwd=bwd, n=B * (T + 1) * dim)


def _dtensor_cases(rank: int, world: int) -> list[Any]:
    """DTensor logits Shard(class axis) with every option (cross_entropy, the module,
    loss_and_grad's values), Replicate(), and the fused head with a Shard(0) classifier:
    (what, error, whether the gradient keeps the placement)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor

    from ls_xp.torch._dtensor import dtensor_values

    mesh = init_device_mesh("cpu", (world,))
    c = dict(eps=0.1, convention="others", reduction="mean", weight="rep", shift=1)
    d = _data(c, 10)
    kw = dict(convention="others", z_loss=1e-2, softcap=3.0, shift=1, return_aux=True)
    out = []
    for place, red in ((Shard(2), "mean"), (Shard(2), "none"), (Replicate(), "sum")):
        xr = d["x"].clone().requires_grad_()
        ref, ref_aux = ls_xp.cross_entropy(xr, d["y"], 0.1, weight=d["w"], reduction=red, **kw)
        ref.sum().backward()
        dx = distribute_tensor(d["x"].clone(), mesh, [place]).requires_grad_()
        loss, aux = ls_xp.cross_entropy(dx, d["y"], 0.1, weight=d["w"], reduction=red, **kw)
        loss.sum().backward() if red == "none" else loss.backward()
        err = max(_rel(loss.full_tensor().detach(), ref.detach()), _rel(dx.grad.full_tensor(), xr.grad))
        out.append((f"{place} {red}", max(err, _aux_error(aux, ref_aux)), dx.grad.placements[0] == place))
    for red in ("mean", "sum", "none"):  # batch-sharded (some ranks hold no row at R > 2)
        xr = d["x"].clone().requires_grad_()
        ref, ref_aux = ls_xp.cross_entropy(xr, d["y"], 0.1, reduction=red, **kw)
        ref.sum().backward()
        dx = distribute_tensor(d["x"].clone(), mesh, [Shard(0)]).requires_grad_()
        loss, aux = ls_xp.cross_entropy(dx, d["y"], 0.1, reduction=red, **kw)
        loss.sum().backward() if red == "none" else loss.backward()
        err = max(_rel(loss.full_tensor().detach(), ref.detach()), _rel(dx.grad.full_tensor(), xr.grad))
        out.append((f"Shard(0) {red}", max(err, _aux_error(aux, ref_aux)), dx.grad.placements[0] == Shard(0)))
    dx = distribute_tensor(d["x"].clone(), mesh, [Shard(0)])
    try:  # two "mean" denominators (total weight, count) for one local gradient: refused
        ls_xp.cross_entropy(dx, d["y"], 0.1, weight=d["w"], z_loss=1e-2)
        refused = False
    except NotImplementedError as exc:
        refused = "z_loss with class weights" in str(exc)
    out.append(("Shard(0) z_loss with weights refused", 0.0 if refused else 1.0, True))
    from ls_xp._validate import options

    opts = options(reduction="mean", **kw)
    dx = distribute_tensor(d["x"].clone(), mesh, [Shard(2)])
    loss, g, aux = dtensor_values(dx, d["y"], 0.1, d["w"], None, opts, with_aux=True)
    (ref, ref_aux), g_ref = ls_xp.loss_and_grad(d["x"], d["y"], 0.1, weight=d["w"], **kw)
    err = max(_rel(loss.full_tensor(), ref), _rel(g.full_tensor(), g_ref), _aux_error(aux, ref_aux))
    out.append(("loss_and_grad values", err, g.placements[0] == Shard(2)))
    rng = np.random.default_rng(6)
    h, cls = torch.from_numpy(rng.standard_normal((B, T, 4))), torch.from_numpy(rng.standard_normal((10, 4)))
    y = d["y"].clamp(0, 9)
    hr, cr = h.clone().requires_grad_(), cls.clone().requires_grad_()
    ref, ref_aux = ls_xp.linear_cross_entropy(hr, cr, y, 0.1, weight=d["w"], **kw)
    ref.backward()
    hl, dc = h.clone().requires_grad_(), distribute_tensor(cls.clone(), mesh, [Shard(0)]).requires_grad_()
    loss, aux = ls_xp.linear_cross_entropy(hl, dc, y, 0.1, weight=d["w"], **kw)
    loss.backward()
    err = max(_rel(loss.full_tensor().detach(), ref.detach()), _rel(hl.grad, hr.grad))
    err = max(err, _rel(dc.grad.full_tensor(), cr.grad), _aux_error(aux, ref_aux))
    out.append(("linear_cross_entropy", err, dc.grad.placements[0] == Shard(0)))
    return out


def llm_cases(rank: int, world: int, sizes: list[int], count: Any) -> dict[str, Any]:
    """Every case of this module in one rank (called by test_parallel_torch's worker)."""
    return dict(
        cases=[_one_case(rank, sizes, c, count) for c in llm_case_list()],
        linear=[_linear_case(rank, sizes, red, count) for red in ("mean", "sum", "none")],
        dtensor=_dtensor_cases(rank, world),
    )


# ---------------------------------------------------------------------------- tests
# (the worlds are test_parallel_torch's: its worker runs llm_cases in every rank)

from test_parallel_torch import world_results  # noqa: E402, F401  (the shared gloo worlds)


def test_llm_options_equal_the_unsharded_loss(world_results):  # noqa: F811
    """Loss, gradient and statistics with z-loss, softcap, shift and return_aux: float64
    within 1e-12, float32 within 1e-5, on every rank of R = 2, 3, 4."""
    world, _, per_rank = world_results
    cases = llm_case_list()
    bad = []
    for r in range(world):
        for c, got in zip(cases, per_rank[r]["llm"]["cases"], strict=True):
            tol = TOL[c.get("dtype", "float64")]
            if max(got["loss"], got["grad"], got["aux"]) > tol:
                bad.append((r, c, got["loss"], got["grad"], got["aux"]))
    assert not bad, bad[:5]
    hits = [got["hits"] for got in per_rank[0]["llm"]["cases"] if got["hits"] is not None]
    assert hits and all(0 < h < B * T - 1 for h in hits), hits  # hits and misses both


def test_llm_options_collectives(world_results):  # noqa: F811
    """With every option on: the checks' all-gather, one MAX, one SUM (O(N) each: a few
    columns, R more for probability targets' accuracy); backward none."""
    world, _, per_rank = world_results
    for r in range(world):
        for got in per_rank[r]["llm"]["cases"]:
            assert [name for name, _ in got["fwd"]] == ["all_gather", "all_reduce", "all_reduce"], got
            assert all(size <= (10 + world) * B * T for _, size in got["fwd"][1:]), got["fwd"]
            assert got["bwd"] == [], got["bwd"]


def test_llm_options_fused_head(world_results):  # noqa: F811
    """The fused head with every option: exact, forward MAX + SUM, backward one N x D."""
    world, _, per_rank = world_results
    for r in range(world):
        for got in per_rank[r]["llm"]["linear"]:
            assert got["err"] <= 1e-12, got
            assert [name for name, _ in got["fwd"]] == ["all_gather", "all_reduce", "all_reduce"]
            assert got["bwd"] == [("all_reduce", got["n"])]


def test_llm_options_dtensor(world_results):  # noqa: F811
    world, _, per_rank = world_results
    for r in range(world):
        for what, err, same_placement in per_rank[r]["llm"]["dtensor"]:
            assert err <= 1e-12, (what, err)
            assert same_placement, (what, "the gradient is not placed like the logits")

"""Named reference cases: the worked examples of the source documents, with exact values.

Each case records its inputs, the parameters of the ls_xp call that reproduces it, the
source it comes from, the values as the source prints them (``None`` where the source
prints none) and the exact values, computed once with mpmath at 60 digits from the
decimal inputs (``ls_xp._tools.exact``) and stored here to 20 significant digits. The test
suite recomputes them.

>>> from ls_xp import reference
>>> reference.get("notebook_mean").exact_values()
1.1826059644443803...
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

__all__ = ["CASES", "ReferenceCase", "get", "names"]

Nested = Any  # a float, or (nested) lists of them


@dataclass(frozen=True)
class ReferenceCase:
    """One worked example.

    ``function`` names the ls_xp function; ``inputs`` holds plain Python data: ``logits``
    (or ``probs``, whose logarithms are passed with ``log_probs=True``) and ``target`` for
    the losses, ``labels`` and ``num_classes`` for the target builders. ``params`` are the
    remaining keyword arguments.
    """

    name: str
    function: str
    inputs: Mapping[str, Any]
    params: Mapping[str, Any]
    source: str
    description: str
    printed: Nested | None
    exact: Nested
    note: str = field(default="")

    def exact_values(self) -> Nested:
        """The stored exact values as Python floats (same nesting as ``exact``)."""
        return _to_float(self.exact)

    def call_args(
        self, xp: ModuleType, dtype: Any = None, device: Any = None
    ) -> tuple[list[Any], dict[str, Any]]:
        """Positional and keyword arguments for ``getattr(ls_xp, self.function)``.

        ``xp`` is any array namespace or a library module (``numpy``, ``torch``,
        ``jax.numpy``, ...), which is wrapped by array-api-compat where needed.
        """
        xp = _namespace(xp)
        index = _index_dtype(xp, device)
        if self.function in ("smooth_labels", "mixup_targets"):
            labels = xp.asarray(self.inputs["labels"], dtype=index, device=device)
            kwargs = dict(self.params)
            kwargs["dtype"] = dtype
            return [labels, self.inputs["num_classes"]], kwargs
        kwargs = dict(self.params)
        if "probs" in self.inputs:
            logs = [[math.log(p) if p > 0 else -math.inf for p in row] for row in self.inputs["probs"]]
            x = xp.asarray(logs, dtype=dtype, device=device)
            kwargs["log_probs"] = True
        else:
            x = xp.asarray(self.inputs["logits"], dtype=dtype, device=device)
        target = self.inputs["target"]
        if isinstance(target[0], list):
            t = xp.asarray(target, dtype=dtype, device=device)
        else:
            t = xp.asarray(target, dtype=index, device=device)
        if "weight" in kwargs:
            kwargs["weight"] = xp.asarray(kwargs["weight"], dtype=dtype, device=device)
        return [x, t], kwargs

    def run(self, xp: ModuleType, dtype: Any = None, device: Any = None) -> Any:
        """Evaluate the case with ls_xp on arrays of namespace ``xp``."""
        import ls_xp

        args, kwargs = self.call_args(xp, dtype, device)
        return getattr(ls_xp, self.function)(*args, **kwargs)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "function": self.function,
            "inputs": dict(self.inputs),
            "params": dict(self.params),
            "source": self.source,
            "description": self.description,
            "printed": self.printed,
            "exact": self.exact,
            "note": self.note,
        }


def _namespace(xp: ModuleType) -> ModuleType:
    """The array-API namespace of a library module (``torch`` -> array-api-compat's torch)."""
    from array_api_compat import array_namespace

    return array_namespace(xp.asarray(0.0))


def _index_dtype(xp: ModuleType, device: Any) -> Any:
    """The device's default integer dtype (int32 where a device has no int64)."""
    import array_api_extra as xpx

    return xpx.default_dtype(xp, "integral", device=device)


def _to_float(v: Nested) -> Nested:
    if isinstance(v, list):
        return [_to_float(u) for u in v]
    return float(v)


_NOTEBOOK_LOGITS = [
    [0.0, 1.0, 2.0],
    [3.0, 4.0, 5.0],
    [6.0, 7.0, 8.0],
    [9.0, 10.0, 11.0],
]
_NOTEBOOK_TARGET = [0, 2, 1, 2]
_LSCE_BLOG = "the blog post '损失函数-Label Smoothing Cross Entropy'"
_TIMM_POST = "the GiantPandaCV post '浅谈LabelSmooth两种实现及推导' (timm's mixup)"
_KL_POST = "the CSDN post 'label smoothing pytorch版本' (Annotated-Transformer-style KL)"
_NOTEBOOK = "the original notebook, cells In [8]-[9]: torch.arange(12.).reshape(4, 3), y = [0, 2, 1, 2]"
_LSCE_BLOG_LOGITS = [[2.0, 1.0, 0.1], [1.5, 2.5, 0.3]]
_NOTEBOOK_PROBS = [[0.3, 0.6, 0.001, 0.001, 0.05, 0.03]]
_KL_EXAMPLE_PROBS = [
    [0.0, 0.2, 0.7, 0.1, 0.0],
    [0.0, 0.9, 0.2, 0.1, 0.0],
    [1.0, 0.2, 0.7, 0.1, 0.0],
]

CASES: tuple[ReferenceCase, ...] = (
    ReferenceCase(
        name="notebook_ce",
        function="cross_entropy",
        inputs={"logits": _NOTEBOOK_LOGITS, "target": _NOTEBOOK_TARGET},
        params={"smoothing": 0.0, "reduction": "mean"},
        source=_NOTEBOOK + "; nn.CrossEntropyLoss()(x, y) and LabelSmoothingCrossEntropy(eps=0)",
        description="plain cross-entropy, mean over 4 rows",
        printed=1.1576,
        exact="1.1576059644443803045",
    ),
    ReferenceCase(
        name="notebook_mean",
        function="cross_entropy",
        inputs={"logits": _NOTEBOOK_LOGITS, "target": _NOTEBOOK_TARGET},
        params={"smoothing": 0.1, "reduction": "mean"},
        source=_NOTEBOOK + "; LabelSmoothingCrossEntropy() (eps=0.1, eps/K)",
        description="uniform smoothing eps=0.1, mean",
        printed=1.1826,
        exact="1.1826059644443803045",
    ),
    ReferenceCase(
        name="notebook_sum",
        function="cross_entropy",
        inputs={"logits": _NOTEBOOK_LOGITS, "target": _NOTEBOOK_TARGET},
        params={"smoothing": 0.1, "reduction": "sum"},
        source=_NOTEBOOK + "; LabelSmoothingCrossEntropy(reduction='sum')",
        description="uniform smoothing eps=0.1, sum",
        printed=4.7304,
        exact="4.7304238577775212179",
    ),
    ReferenceCase(
        name="notebook_none",
        function="cross_entropy",
        inputs={"logits": _NOTEBOOK_LOGITS, "target": _NOTEBOOK_TARGET},
        params={"smoothing": 0.1, "reduction": "none"},
        source=_NOTEBOOK + "; LabelSmoothingCrossEntropy(reduction='none')",
        description="uniform smoothing eps=0.1, per-row losses",
        printed=[2.3076, 0.5076, 1.4076, 0.5076],
        exact=[
            "2.3076059644443803045",
            "0.50760596444438030448",
            "1.4076059644443803045",
            "0.50760596444438030448",
        ],
    ),
    ReferenceCase(
        name="notebook_kl_sum",
        function="kl_divergence",
        inputs={"logits": _NOTEBOOK_LOGITS, "target": _NOTEBOOK_TARGET},
        params={"smoothing": 0.1, "reduction": "sum"},
        source=_NOTEBOOK + f"; loss of {_KL_POST} (KL(q||p), summed) on the notebook's inputs",
        description="KL form: the sum above less the entropy of the smoothed targets",
        printed=None,
        exact="3.5658645024496610323",
    ),
    ReferenceCase(
        name="notebook_smoothed_label",
        function="smooth_labels",
        inputs={"labels": [1], "num_classes": 6},
        params={"smoothing": 0.25, "convention": "others"},
        source="the original notebook, second table: 'Smoothed label(y)' for the class 鸟 (index 1) of 6",
        description="eps/(K-1) convention; the table's 0.75 / 0.05 correspond to eps = 0.25",
        printed=[[0.05, 0.75, 0.05, 0.05, 0.05, 0.05]],
        exact=[["0.05", "0.75", "0.05", "0.05", "0.05", "0.05"]],
    ),
    ReferenceCase(
        name="notebook_table_ce",
        function="cross_entropy",
        inputs={"probs": _NOTEBOOK_PROBS, "target": [1]},
        params={"smoothing": 0.25, "convention": "others", "reduction": "sum"},
        source="the original notebook, tables: predicted probabilities p and the smoothed label of class 1",
        description="-sum_c q_c log p_c for the table's p (log-probability input)",
        printed=None,
        exact="1.4592078944827021507",
        note="the table's probabilities sum to 0.982, not 1; they are used as given",
    ),
    ReferenceCase(
        name="lsce_blog_weighted_others",
        function="cross_entropy",
        inputs={"logits": _LSCE_BLOG_LOGITS, "target": [0, 1]},
        params={
            "smoothing": 0.1,
            "convention": "others",
            "weight": [1.0, 2.0, 1.0],
            "reduction": "none",
        },
        source=f"{_LSCE_BLOG}, LabelSmoothingCrossEntropy(label_smoothing=0.1, class_weights=[1, 2, 1])",
        description="eps/(K-1) convention with class weights, per-row losses",
        printed=None,
        exact=["0.63288151709172515674", "0.90318795624811141278"],
        note="the source reduces with a plain .mean() of these rows (0.76803...), not PyTorch's "
        "weighted mean; ls_xp's reduction='mean' divides by sum w[y] = 3",
    ),
    ReferenceCase(
        name="lsce_blog_torch_native",
        function="cross_entropy",
        inputs={"logits": _LSCE_BLOG_LOGITS, "target": [0, 1]},
        params={"smoothing": 0.1, "reduction": "mean"},
        source=f"{_LSCE_BLOG}, CrossEntropyLoss(weight=None, label_smoothing=0.1) on the same logits",
        description="PyTorch's native label smoothing (eps/K), mean",
        printed=None,
        exact="0.50575745276561272712",
    ),
    ReferenceCase(
        name="timm_mixup_targets",
        function="mixup_targets",
        inputs={"labels": [0, 2, 1], "num_classes": 3},
        params={"lam": 0.7, "smoothing": 0.1},
        source=f"{_TIMM_POST}, timm mixup_target(target, num_classes, lam, smoothing)",
        description="lam * smoothed(y) + (1 - lam) * smoothed(flip(y))",
        printed=None,
        exact=[
            [
                "0.66333333333333333333",
                "0.30333333333333333333",
                "0.033333333333333333333",
            ],
            [
                "0.033333333333333333333",
                "0.033333333333333333333",
                "0.93333333333333333333",
            ],
            [
                "0.30333333333333333333",
                "0.66333333333333333333",
                "0.033333333333333333333",
            ],
        ],
    ),
    ReferenceCase(
        name="timm_soft_ce",
        function="cross_entropy",
        inputs={
            "logits": _NOTEBOOK_LOGITS[:3],
            "target": [
                [0.6633333333333333, 0.30333333333333334, 0.03333333333333333],
                [0.03333333333333333, 0.03333333333333333, 0.9333333333333333],
                [0.30333333333333334, 0.6633333333333333, 0.03333333333333333],
            ],
        },
        params={"smoothing": 0.0, "reduction": "mean"},
        source=f"{_TIMM_POST}, timm SoftTargetCrossEntropy on the mixup targets above",
        description="probability targets (smoothing already applied inside them), mean",
        printed=None,
        exact="1.4076059644443803152",
        note="the targets are the float64 roundings of the mixup targets above",
    ),
    ReferenceCase(
        name="kl_example_smoothed_targets",
        function="smooth_labels",
        inputs={"labels": [2, 0, 3], "num_classes": 5},
        params={"smoothing": 0.1, "convention": "others"},
        source=f"{_KL_POST}, docstring of LabelSmoothing: the printed true distribution",
        description="eps/(K-1) convention, eps = 0.1, K = 5: 0.9 and 0.025",
        printed=[
            [0.025, 0.025, 0.9, 0.025, 0.025],
            [0.9, 0.025, 0.025, 0.025, 0.025],
            [0.025, 0.025, 0.025, 0.9, 0.025],
        ],
        exact=[
            ["0.025", "0.025", "0.9", "0.025", "0.025"],
            ["0.9", "0.025", "0.025", "0.025", "0.025"],
            ["0.025", "0.025", "0.025", "0.9", "0.025"],
        ],
        note="the printed tensor belongs to labels [2, 0, 3]; the docstring's one-hot reads "
        "[2, 0, 1] and the code runs [2, 1, 0]",
    ),
    ReferenceCase(
        name="kl_example_sum",
        function="kl_divergence",
        inputs={"probs": _KL_EXAMPLE_PROBS, "target": [2, 1, 0]},
        params={"smoothing": 0.1, "convention": "others", "reduction": "sum"},
        source=f"{_KL_POST}, __main__: KLDivLoss(size_average=False)(predict.log(), [2, 1, 0])",
        description="KL(q||p) with zero predicted probabilities where q > 0",
        printed=None,
        exact="inf",
        note="every row predicts 0 for a class that the smoothed target gives 0.025: the "
        "divergence is +inf, which the source never prints",
    ),
)

_BY_NAME: dict[str, ReferenceCase] = {case.name: case for case in CASES}


def names() -> list[str]:
    """The names of all reference cases, in table order."""
    return [case.name for case in CASES]


def get(name: str) -> ReferenceCase:
    """The reference case called ``name``."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise KeyError(f"no reference case {name!r}; known: {', '.join(names())}") from None


def compute_exact(case: ReferenceCase, digits: int = 20) -> Nested:
    """Recompute a case's exact values with mpmath (needs the ``mpmath`` package)."""
    import mpmath

    from ls_xp._tools import exact as _exact

    def fmt(v: Any) -> Any:
        if isinstance(v, list):
            return [fmt(u) for u in v]
        if mpmath.isinf(v):
            return "inf" if v > 0 else "-inf"
        return mpmath.nstr(v, digits, min_fixed=-30, max_fixed=30, strip_zeros=True)

    with mpmath.workdps(_exact.DPS):
        dec = _decimal
        if case.function in ("smooth_labels", "mixup_targets"):
            k = case.inputs["num_classes"]
            labels = case.inputs["labels"]
            eps = dec(case.params.get("smoothing", 0.0))
            conv = case.params.get("convention", "uniform")
            q = _exact.smoothed_rows(labels, k, eps, conv)
            if case.function == "mixup_targets":
                lam = dec(case.params.get("lam", 1.0))
                q = [
                    [lam * a + (1 - lam) * b for a, b in zip(r, s, strict=True)]
                    for r, s in zip(q, q[::-1], strict=True)
                ]
            return fmt(q)
        params = dict(case.params)
        eps = dec(params.pop("smoothing", 0.1))
        if "weight" in params:
            params["weight"] = [dec(v) for v in params["weight"]]
        if "probs" in case.inputs:
            x = [[mpmath.log(dec(p)) for p in row] for row in case.inputs["probs"]]
            params["log_probs"] = True
        else:
            x = [[dec(v) for v in row] for row in case.inputs["logits"]]
        target = case.inputs["target"]
        if isinstance(target[0], list):
            target = [[mpmath.mpf(v) for v in row] for row in target]
        loss, _ = _exact.evaluate(x, target, eps, kl=case.function == "kl_divergence", **params)
        return fmt(loss)


def _decimal(v: float) -> Any:
    """The decimal number a source writes, e.g. 0.1 -> exactly 1/10 (not its float)."""
    import mpmath

    return mpmath.mpf(repr(float(v)))

"""The compiled column of ``ls-xp bench``: its workload, its peers and its ratios (timings
stay in the bench itself)."""

from __future__ import annotations

import pytest

from ls_xp._tools import bench, workloads


def test_the_compiled_workload_is_linear_256_to_32000_on_4096_rows():
    assert workloads.parse_size("compiled") == (4096, 256, 32000)
    assert workloads.is_compiled("compiled") and not workloads.is_linear("compiled")
    assert workloads.is_linear("linear") and not workloads.is_compiled("linear")


def test_the_compiled_workload_pairs_ls_xp_with_native_compiled_the_same_way():
    pytest.importorskip("torch")
    impls = bench.available_implementations(["torch"], compiled=True)
    assert impls == [("torch", "torch-compiled-ls_xp"), ("torch", "torch-compiled-native")]


def test_ratios_divide_the_compiled_ls_xp_by_its_peer():
    def run(impl: str, t: float, m: int) -> dict:
        return {"backend": "torch", "impl": impl, "size": "compiled", "time_s": t, "peak_bytes": m}

    runs = [run("torch-compiled-ls_xp", 1.0, 100), run("torch-compiled-native", 2.0, 400)] * 3
    (r,) = bench.ratios(runs)
    assert r["peer"] == "torch-compiled-native"
    assert r["time_ratio"] == 0.5 and r["memory_ratio"] == 0.25


def test_a_compiled_step_runs_and_returns_the_loss():
    torch = pytest.importorskip("torch")
    step = workloads.setup("torch", "torch-compiled-ls_xp", (16, 8, 32), "float32", "cpu")
    native = workloads.setup("torch", "torch-compiled-native", (16, 8, 32), "float32", "cpu")
    torch.testing.assert_close(step(), native())


def test_the_linear_options_and_eps0_are_divided_by_their_own_peers():
    def run(impl: str, t: float) -> dict:
        return {"backend": "torch", "impl": impl, "size": "linear", "time_s": t, "peak_bytes": 100}

    names = ["ls_xp", "ls_xp-options", "unfused-ls_xp-options", "ls_xp-eps0", "native-linear-ce-chunked-eps0"]
    runs = [run(name, t) for name, t in zip(names, (1.0, 1.2, 2.4, 0.5, 2.0), strict=True)]
    got = {(r["ours"], r["peer"]): round(r["time_ratio"], 6) for r in bench.ratios(runs)}
    assert got == {
        ("ls_xp", "native-linear-ce-chunked-eps0"): 0.5,
        ("ls_xp-options", "ls_xp"): 1.2,
        ("ls_xp-options", "unfused-ls_xp-options"): 0.5,
        ("ls_xp-eps0", "native-linear-ce-chunked-eps0"): 0.25,
    }
    report = {"machine": "m", "settings": {}, "results": [], "ratios": bench.ratios(runs)}
    assert "ls_xp-options vs ls_xp" in bench.format_report(report)


def test_the_bench_measures_only_the_implementations_asked_for():
    pytest.importorskip("torch")
    only = ["ls_xp", "ls_xp-options"]
    assert bench.available_implementations(["torch"], linear=True, impls=only) == [
        ("torch", "ls_xp"),
        ("torch", "ls_xp-options"),
    ]
    step = workloads.setup("torch", "ls_xp-options", (16, 8, 32), "float32", "cpu")
    assert step().ndim == 0


def test_the_compiled_workload_reports_inductors_kernels():
    """The warm-up of a compiled step counts the kernels Inductor generated for it (one
    for the forward, one for the backward: the loss fuses into one each), also when the
    compiled code comes from Inductor's cache (the second count)."""
    torch = pytest.importorskip("torch")
    counts = []
    for _ in range(2):
        torch._dynamo.reset()
        step = workloads.setup("torch", "torch-compiled-ls_xp", (16, 8, 32), "float32", "cpu")
        loss, kernels = bench._warm_up_counting_kernels(step)
        assert loss.ndim == 0
        counts.append(kernels)
    assert counts == [2, 2]


def test_the_report_shows_the_kernels_of_both_sides():
    def run(impl: str, kernels: int) -> dict:
        return {
            "backend": "torch", "impl": impl, "size": "compiled", "time_s": 1.0, "peak_bytes": 1,
            "ops": 4, "kernels": kernels,
        }  # fmt: skip

    runs = [run("torch-compiled-ls_xp", 2), run("torch-compiled-native", 3)]
    (r,) = bench.ratios(runs)
    assert (r["kernels"], r["peer_kernels"]) == (2, 3)
    report = {"machine": "m", "settings": {}, "results": [], "ratios": [r]}
    assert "kernels 2 vs 3" in bench.format_report(report)


def test_the_tensor_peak_is_the_largest_rise_of_the_bytes_alive():
    """Allocations count up, frees count down, in time order; the figure is the largest
    rise above an earlier point. A block allocated before any profile has no free event;
    one whose size an earlier profile saw has one, and freeing it first changes nothing."""
    torch = pytest.importorskip("torch")
    from torch.profiler import ProfilerActivity, profile

    from ls_xp._tools import bench_memory

    def call(before: list) -> None:
        a = torch.empty(2_000_000)  # 8 MB
        before.clear()  # 4 MB freed: seen or not, it precedes the rise
        b = torch.empty(3_000_000)  # 12 MB: 20 MB above the lowest point
        del a
        c = torch.empty(500_000)  # 14 MB
        del b, c

    unseen = [torch.empty(1_000_000)]  # allocated before any profile
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as first:
        seen = [torch.empty(1_000_000)]  # its size is known to the profiler from here on
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        call(unseen)
    assert bench_memory.tensor_peak_bytes(first) == 4_000_000
    assert bench_memory.tensor_peak_bytes(prof) == 20_000_000
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        seen.clear()  # a free the profiler reports: the sum goes to -4 MB first
        call([])
    changes = [e.nbytes() for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    assert changes[0] == -4_000_000  # the case is the one meant: the sum starts below zero
    assert bench_memory.tensor_peak_bytes(prof) == 20_000_000


def test_the_compiled_step_holds_no_more_tensor_bytes_than_natives():
    """The tensor peak of one compiled training step (after the warm-up) holds at least the
    logits and the weight's gradient, and ls_xp's is no more than native's (today they are
    equal). The resident peak of the bench can differ by what glibc keeps of the freed
    gradients; this figure cannot."""
    pytest.importorskip("torch")
    peaks = {}
    for impl in ("torch-compiled-ls_xp", "torch-compiled-native"):
        step = workloads.setup("torch", impl, (512, 64, 4096), "float32", "cpu")
        step()
        peaks[impl] = bench._torch_profile(step, "cpu")["tensor_peak_bytes"]
    logits, weight = 512 * 4096 * 4, 4096 * 64 * 4
    assert peaks["torch-compiled-native"] >= logits + weight
    assert peaks["torch-compiled-ls_xp"] <= peaks["torch-compiled-native"]

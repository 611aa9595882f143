"""The benchmark machinery of fastcl.benchmarks.ops works: shapes, byte counts, every impl of
every case computes what the reference computes (a benchmark of a wrong computation is
worthless), wrong impls are caught, and `fastcl bench ops` runs end to end on tiny sizes.

No timing is asserted here (see DESIGN.md: timed assertions do not belong in tests)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from fastcl import cli
from fastcl import ops as fops
from fastcl.benchmarks import ops as B
from fastcl.models import MLP, ReducedResNet18, param_shapes


# ----------------------------------------------------------------------------- shapes
def test_resnet18_reduced_shapes():
    shapes = B.resnet18_reduced_shapes()
    assert len(shapes) == 62  # 20 convolutions, 20 BatchNorms (weight, bias), linear (weight, bias)
    assert sum(math.prod(s) for s in shapes) == 1_109_240
    assert shapes[0] == (20, 3, 3, 3)  # 3x3 stem with nf = 20 maps
    assert shapes[-2:] == ((100, 160), (100,))  # linear head on 8 nf maps, 100 classes
    assert max(s[0] for s in shapes if len(s) == 4) == 160


def test_reduced_resnet18_runs_and_matches_shapes():
    model = ReducedResNet18()
    assert tuple(param_shapes(model)) == B.resnet18_reduced_shapes()
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 100)


def test_mlp_shapes():
    assert B.mlp_shapes() == ((100, 784), (100,), (100, 100), (100,), (10, 100), (10,))
    assert MLP()(torch.randn(3, 1, 28, 28)).shape == (3, 10)


def test_cases():
    full = [c.name for c in B.cases_for(B.OPS["prox_sgd_"], "full")]
    assert full == ["1e5", "1e6", "1e7", "mlp", "resnet18"]
    assert "1e7" not in [c.name for c in B.cases_for(B.OPS["prox_sgd_"], "quick")]
    assert [c.T for c in B.cases_for(B.OPS["trajectory_shift_"], "full")] == [2, 8, 32]
    with pytest.raises(ValueError, match="sizes"):
        B.cases_for(B.OPS["prox_sgd_"], "huge")


# ----------------------------------------------------------------------------- byte counts
def test_bytes_moved_and_footprint():
    c = B.Case("x", ((10,), (2, 5)))  # 20 float32 elements
    assert B.bytes_moved(B.OPS["prox_sgd_"], c) == (4 + 1) * 20 * 4
    assert B.bytes_moved(B.OPS["taylor_importance_"], c) == (3 + 1) * 20 * 4
    assert B.bytes_moved(B.OPS["emcl_meta_step_"], c) == (5 + 3) * 20 * 4
    assert B.footprint(B.OPS["prox_sgd_"], c) == 4 * 20 * 4
    assert B.footprint(B.OPS["emcl_meta_step_"], c) == 5 * 20 * 4
    t = B.Case("x T=3", ((10,), (2, 5)), T=3)
    assert B.bytes_moved(B.OPS["trajectory_shift_"], t) == (2 + 2 * 3) * 20 * 4
    assert B.footprint(B.OPS["trajectory_shift_"], t) == (1 + 3) * 20 * 4
    ring = B.bytes_moved(B.OPS["ring_insert+sample"], B.cases_for(B.OPS["ring_insert+sample"], "tiny")[0])
    assert ring >= (B.BATCH + B.N_SAMPLE) * 2 * B.FEAT * 4


# ----------------------------------------------------------------------------- every impl is right
def _memory_fused_or_reference(op, monkeypatch):
    """Memory ops whose CPU kernel is not built here run the harness on the reference."""
    if op.kind == "memory" and not B.fused_available(op)[0]:
        monkeypatch.setattr(fops, "ring_insert_", fops.reference.ring_insert_)
        monkeypatch.setattr(fops, "ring_sample", fops.reference.ring_sample)
        monkeypatch.setattr(fops, "reservoir_insert_", fops.reference.reservoir_insert_)


EAGER = [(op, case, impl) for op, case, impls in B.plan(sizes="tiny", compile=False) for impl in impls]


@pytest.mark.parametrize("op,case,impl", EAGER, ids=lambda x: getattr(x, "name", str(x)).replace(" ", ""))
def test_impl_matches_reference(op, case, impl, monkeypatch):
    _memory_fused_or_reference(op, monkeypatch)
    base = op.make(case, 0)
    expected = B.expected_state(op, base)
    state = B.clone_state(base)
    B.validate(op, impl, state, op.impls[impl](state), expected)


@pytest.mark.parametrize("opname", ["prox_sgd_", "prox_sgd", "taylor_importance_", "emcl_meta_step_", "trajectory_shift_"])
def test_impls_match_reference_on_real_sizes(opname):
    # The 1e5 case (and ResNet-18 T=2): the benchmark inputs themselves, every eager impl.
    op = B.OPS[opname]
    case = B.cases_for(op, "quick")[0]
    base = op.make(case, 0)
    expected = B.expected_state(op, base)
    for impl in op.impls:
        if impl.startswith("compile"):
            continue
        state = B.clone_state(base)
        B.validate(op, impl, state, op.impls[impl](state), expected)


@pytest.mark.slow
@pytest.mark.parametrize("opname", ["prox_sgd_", "prox_sgd", "taylor_importance_", "emcl_meta_step_", "trajectory_shift_"])
def test_compiled_impls_match_reference(opname):
    op = B.OPS[opname]
    case = B.cases_for(op, "tiny")[-1]  # the list case
    base = op.make(case, 0)
    expected = B.expected_state(op, base)
    try:
        for impl in ("compile", "compile_foreach"):
            torch._dynamo.reset()
            state = B.clone_state(base)
            fn = op.impls[impl](state)
            B.validate(op, impl, state, fn, expected)
            # and a second call runs without error (the timed calls reuse the compiled graph)
            fn()
    finally:
        torch._dynamo.reset()


def test_validate_catches_a_wrong_impl():
    op = B.OPS["prox_sgd_"]
    case = B.cases_for(op, "tiny")[0]
    base = op.make(case, 0)
    expected = B.expected_state(op, base)
    state = B.clone_state(base)

    def wrong():  # lr off by 1%
        fops.reference.prox_sgd_(state["params"], state["grads"], state["anchors"], state["importance"],
                                 B.LR * 1.01, B.PROX)

    with pytest.raises(AssertionError, match="differs from the reference"):
        B.validate(op, "wrong", state, wrong, expected)

    state = B.clone_state(base)
    with pytest.raises(AssertionError, match="differs from the reference"):
        B.validate(op, "noop", state, lambda: None, expected)


def test_memory_validate_catches_a_wrong_insert():
    op = B.OPS["ring_insert+sample"]
    case = B.cases_for(op, "tiny")[0]
    base = op.make(case, 0)
    expected = B.expected_state(op, base)
    state = B.clone_state(base)

    def wrong():  # every example into the wrong task's ring
        B.ring_insert_loop(state["data"], state["counts"], state["x"], state["y"], 0)
        return B.sample_randint(state["data"], state["gen"])

    with pytest.raises(AssertionError, match="differs from the reference"):
        B.validate(op, "wrong", state, wrong, expected)


def test_run_reports_wrong_impls(monkeypatch):
    op = B.OPS["taylor_importance_"]
    monkeypatch.setitem(op.impls, "chain", lambda s: (lambda: s["importance"][0].mul_(2)))
    res = B.run(ops=["taylor_importance_"], sizes="tiny", threads=[1], compile=False, min_run_time=0.001,
                progress=False)
    chain = [r for r in res.rows if r["impl"] == "chain"]
    assert chain and all(r["error"].startswith("WRONG") for r in chain)
    assert all("us" in r for r in res.rows if r["impl"] != "chain")
    assert "WRONG" in B.format_tables(res, markdown=True)


# ----------------------------------------------------------------------------- end to end
def test_cli_bench_ops_quick_tiny(tmp_path, capsys):
    out = tmp_path / "bench.json"
    rc = cli.main(["bench", "ops", "--quick", "--sizes", "tiny", "--threads", "1,2", "--markdown",
                   "--json", str(out)])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    text = captured.out
    assert "| op | case | thr | fused us |" in text
    assert "| prox_sgd_ | tiny | 1 |" in text and "| trajectory_shift_ | tiny-list T=2 | 2 |" in text
    assert "ring_insert+sample" in text
    assert "torch.compile impls skipped" in text
    data = json.loads(out.read_text())
    rows = data["rows"]
    assert data["meta"]["threads"] == [1, 2]
    for opname in ("prox_sgd_", "prox_sgd", "taylor_importance_", "emcl_meta_step_", "trajectory_shift_"):
        for impl in ("fused", "chain", "loop", "foreach"):
            got = [r for r in rows if r["op"] == opname and r["impl"] == impl]
            assert len(got) == 2 * len(B.cases_for(B.OPS[opname], "tiny"))
            for r in got:
                assert "error" not in r, r
                assert r["us"] > 0 and r["gbps"] > 0 and r["pct_copy"] > 0
    assert not [r for r in rows if r.get("error", "").startswith("WRONG")]


def test_cli_rejects_bad_arguments(capsys):
    assert cli.main(["bench", "ops", "--sizes", "tiny", "--threads", "x"]) == 2
    assert cli.main(["bench", "ops", "--sizes", "tiny", "--ops", "nope"]) == 2
    assert "unknown op" in capsys.readouterr().err


def test_cli_bench_ops_device_is_checked(capsys):
    """--device names a device that can run the fused kernels, or the run stops before timing."""
    assert cli.main(["bench", "ops", "--sizes", "tiny", "--device", "mps"]) == 2
    assert "--device must be 'cpu' or 'cuda" in capsys.readouterr().err
    assert cli.main(["bench", "ops", "--sizes", "tiny", "--device", "nonsense:x"]) == 2
    assert "--device" in capsys.readouterr().err
    if not (torch.cuda.is_available() and fops.cuda_built()):
        assert cli.main(["bench", "ops", "--sizes", "tiny", "--device", "cuda"]) == 2
        assert "--device cuda" in capsys.readouterr().err


def test_state_to_cpu_is_identity_and_plan_drops_cpu_only_impls():
    state = B.OPS["reservoir_insert_"].make(B.cases_for(B.OPS["reservoir_insert_"], "tiny")[0], 0)
    assert B.state_to(state, torch.device("cpu")) is state
    on_cpu = {impl for _, _, impls in B.plan(["reservoir_insert_"], "tiny", device="cpu") for impl in impls}
    assert "loop" in on_cpu
    on_cuda = {impl for _, _, impls in B.plan(["reservoir_insert_"], "tiny", device="cuda") for impl in impls}
    assert on_cuda == on_cpu - {"loop"}


def test_time_interleaved_syncs_around_every_timed_block():
    """The clock is read only after ``sync`` (CUDA: torch.cuda.synchronize), warm-up included."""
    events = []
    B.time_interleaved({"f": lambda: events.append("call")}, threads=1, min_run_time=0.001, warmup=2,
                       min_rounds=2, max_rounds=2, sync=lambda: events.append("sync"))
    assert events[:6] == ["sync", "call", "sync", "sync", "call", "sync"]
    # after the warm-up, every block of calls is framed by a sync on each side
    body = events[6:]
    assert body[0] == "sync" and body[-1] == "sync" and body.count("sync") == 4


def test_time_interleaved_measures_and_reports_errors():
    calls = {"a": 0}

    def a():
        calls["a"] += 1

    def boom():
        raise RuntimeError("no kernel")

    out = B.time_interleaved({"a": a, "boom": boom}, threads=1, min_run_time=0.002)
    assert out["a"]["median_s"] > 0 and out["a"]["runs"] >= 5 and calls["a"] >= out["a"]["runs"]
    assert out["a"]["iqr_s"] >= 0 and out["a"]["min_s"] <= out["a"]["median_s"]
    assert "no kernel" in out["boom"]["error"]


def test_validate_out_of_place_checks_result_and_inputs():
    op = B.OPS["prox_sgd"]
    case = B.cases_for(op, "tiny")[-1]
    base = op.make(case, 0)
    expected = B.expected_state(op, base)
    state = B.clone_state(base)
    B.validate(op, "chain", state, op.impls["chain"](state), expected)

    state = B.clone_state(base)

    def writes_its_input():  # right result, but computed in place
        B.prox_chain(state["params"], state["grads"], state["anchors"], state["importance"])
        return [p.clone() for p in state["params"]]

    with pytest.raises(AssertionError, match=r"params\[0\] differs"):
        B.validate(op, "inplace", state, writes_its_input, expected)


def test_learner_benchmark_runs_and_plain_loop_learns():
    """The plain ER-Ring loop of the learner benchmark is a working ER-Ring (it learns), and the
    benchmark runs end to end on a tiny stream."""
    import torch
    from fastcl.benchmarks import learners as bl
    from fastcl.data.streams import permuted_mnist
    from fastcl.models import MLP
    from fastcl.train import evaluate

    stream = permuted_mnist(num_tasks=2, per_task=200, seed=0)
    torch.manual_seed(0)
    model = MLP((784, 64, 10))
    assert bl.plain_er_ring(model, stream) > 0

    class Wrap:
        def predict(self, x, task):
            return model(x)

    assert min(evaluate(Wrap(), stream)) > 0.3
    torch.manual_seed(0)  # the same with replay drawn with replacement
    model = MLP((784, 64, 10))
    assert bl.plain_er_ring(model, stream, replacement=True) > 0
    assert min(evaluate(Wrap(), stream)) > 0.3
    out = bl.run(tasks=2, per_task=30, threads=1, repeats=1, log=lambda s: None)
    assert set(out["seconds"]) == {"plain ER-Ring loop", "fastcl ER-Ring", "fastcl HAL (first order)",
                                   "fastcl HAL (exact)", "plain ER-Ring loop, replay with replacement",
                                   "fastcl ER-Ring, replay with replacement"}


def test_inner_loop_cases_compute_the_reference_steps():
    """Every way of writing the EMCL inner loop in fastcl.benchmarks.meta_learners computes the
    steps of reference.mlp_prox_steps_ (the torch.compile case through its eager step, which is
    what torch.compile compiles)."""
    from fastcl.benchmarks import meta_learners as M
    from fastcl.models import MLP
    from fastcl.ops import reference as R

    torch.manual_seed(0)
    model = MLP((12, 8, 5))
    theta0 = [t.detach().clone() for t in model.parameters()]
    importance = [torch.rand_like(t) for t in theta0]
    x, y = torch.rand(6, 12), torch.randint(0, 5, (6,))
    want = [t.clone() for t in theta0]
    R.mlp_prox_steps_(want, x, y, theta0, importance, 0.15, 3.0)
    eager = {**M.INNER_LOOPS, M.COMPILED: M._out_of_place(lambda: M._torch_step)}
    for name, loop in eager.items():
        got = [t.clone() for t in theta0]
        loop(model, got, x, y, theta0, importance, 0.15, 3.0, [torch.empty_like(t) for t in theta0])
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)

import torch
import torch.nn.functional as F
import pytest

from fastcl.algorithms import AGEM, EWC, AGEMConfig, EWCConfig, Finetune, FinetuneConfig
from fastcl.models import MLP
from fastcl.train import run_stream

from test_learners import _stream


def _model():
    torch.manual_seed(0)
    return MLP((20, 16, 4)).double()


def _double(stream):
    for t in stream:
        t.x_train, t.x_test = t.x_train.double(), t.x_test.double()
    return stream


def test_agem_step_projects_conflicting_gradients():
    s = _double(_stream())
    agem = AGEM(_model(), 4, (20,), AGEMConfig(lr=0.05, per_class=2, num_tasks=3, ref_batch=7))
    agem.memory = type(agem.memory)(3, 4, 2, (20,), dtype=torch.float64)
    for x, y in s[0].batches(10, torch.Generator().manual_seed(0)):
        agem.observe(x, y, 0)
    # task 1 relabels task 0's inputs: its gradient must conflict with the memory's
    x, y = s[0].x_train[:10], (s[0].y_train[:10] + 1) % 4
    state = agem.generator.get_state()
    mx, my, _ = agem.memory.sample(7, tasks=range(1), generator=agem.generator, replacement=False)
    assert mx.shape[0] == 7 and mx.unique(dim=0).shape[0] == 7  # distinct examples (authors' code)
    agem.generator.set_state(state)
    theta = [p.detach().clone().requires_grad_(True) for p in agem.params]
    names = [n for n, _ in agem.model.named_parameters()]
    f = lambda inp: torch.func.functional_call(agem.model, dict(zip(names, theta)), (inp,))
    g = torch.autograd.grad(F.cross_entropy(f(x), y), theta)
    g_ref = torch.autograd.grad(F.cross_entropy(f(mx), my), theta)
    dot = sum((a * b).sum() for a, b in zip(g, g_ref))
    assert dot < 0, "this case must exercise the projection"
    if dot < 0:
        nrm = sum((b * b).sum() for b in g_ref)
        g = [a - dot / nrm * b for a, b in zip(g, g_ref)]
        # the projected gradient no longer conflicts with the memory
        assert sum((a * b).sum() for a, b in zip(g, g_ref)) > -1e-10
    expected = [p - 0.05 * gi for p, gi in zip(theta, g)]
    agem.observe(x, y, 1)
    for p, q in zip(agem.params, expected):
        torch.testing.assert_close(p, q.detach(), rtol=1e-10, atol=1e-12)


def test_ewc_lambda_zero_is_finetune():
    s = _stream()
    torch.manual_seed(0)
    a = EWC(MLP((20, 16, 4)), 4, (20,), EWCConfig(lr=0.05, lam=0.0))
    torch.manual_seed(0)
    b = Finetune(MLP((20, 16, 4)), 4, (20,), FinetuneConfig(lr=0.05))
    run_stream(a, s, progress=False)
    run_stream(b, s, progress=False)
    for p, q in zip(a.params, b.params):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


def test_ewc_penalty_is_the_fisher_quadratic():
    """After task 0, one EWC step equals SGD on loss + lam/2 * sum F (theta - theta*)^2 with F the
    mean per-example squared gradient over task 0's stream (computed here by a plain loop)."""
    s = _double(_stream())
    ewc = EWC(_model(), 4, (20,), EWCConfig(lr=0.05, lam=3.0))
    fisher = [torch.zeros_like(p) for p in ewc.params]
    n = 0
    for x, y in s[0].batches(10, torch.Generator().manual_seed(0)):
        for xi, yi in zip(x, y):
            gi = torch.autograd.grad(F.cross_entropy(ewc.model(xi[None]), yi[None]), ewc.params)
            for f_, g_ in zip(fisher, gi):
                f_.add_(g_.pow(2))
        n += x.shape[0]
        ewc.observe(x, y, 0)
    ewc.end_task(0)
    fisher = [f_ / n for f_ in fisher]
    star = [p.detach().clone() for p in ewc.params]
    x, y = s[1].x_train[:10], s[1].y_train[:10]
    theta = [p.detach().clone().requires_grad_(True) for p in ewc.params]
    names = [n_ for n_, _ in ewc.model.named_parameters()]
    out = torch.func.functional_call(ewc.model, dict(zip(names, theta)), (x,))
    total = F.cross_entropy(out, y) + 1.5 * sum((f_ * (t - s_).pow(2)).sum() for f_, t, s_ in zip(fisher, theta, star))
    g = torch.autograd.grad(total, theta)
    expected = [t - 0.05 * gi for t, gi in zip(theta, g)]
    ewc.observe(x, y, 1)
    for p, q in zip(ewc.params, expected):
        torch.testing.assert_close(p, q.detach(), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("make", [
    lambda: AGEM(MLP((20, 16, 4)), 4, (20,), AGEMConfig(lr=0.05, per_class=2, num_tasks=3)),
    lambda: EWC(MLP((20, 16, 4)), 4, (20,), EWCConfig(lr=0.05)),
])
def test_resume_is_exact(tmp_path, make):
    s = _stream()
    torch.manual_seed(0)
    full = run_stream(make(), s, progress=False, seed=3)
    ck = tmp_path / "ck.pt"
    torch.manual_seed(0)
    run_stream(make(), s, progress=False, seed=3, checkpoint=ck, stop_after=2)
    torch.manual_seed(0)
    resumed = run_stream(make(), s, progress=False, seed=3, checkpoint=ck, resume=True)
    assert (full.acc.values == resumed.acc.values).all()


def test_bad_configs():
    with pytest.raises(ValueError, match="ref_batch"):
        AGEMConfig(ref_batch=0)
    with pytest.raises(ValueError, match="lam"):
        EWCConfig(lam=-1.0)


def test_clone_and_finetune_never_forgets():
    from fastcl.algorithms import CloneAndFinetune, OracleConfig
    s = _stream()
    torch.manual_seed(0)
    res = run_stream(CloneAndFinetune(MLP((20, 16, 4)), 4, (20,), OracleConfig(lr=0.05)), s, progress=False)
    a = res.acc.values
    for j in range(3):
        assert (a[j:, j] == a[j, j]).all()  # each task keeps its own model
    assert res.summary()["forgetting"] == 0.0


def test_multitask_trains_jointly_at_task_end():
    from fastcl.algorithms import Multitask, OracleConfig
    s = _stream()
    torch.manual_seed(0)
    mt = Multitask(MLP((20, 16, 4)), 4, (20,), OracleConfig(lr=0.05))
    before = [p.detach().clone() for p in mt.params]
    for x, y in s[0].batches(10):
        mt.observe(x, y, 0)
    assert all(torch.equal(a, b) for a, b in zip(before, mt.params))  # observe only stores
    res = run_stream(Multitask(MLP((20, 16, 4)), 4, (20,), OracleConfig(lr=0.05)), s, progress=False)
    final = res.acc.values[-1]
    assert final.min() > 0.5  # the joint model serves every task


def test_oracles_resume_exactly(tmp_path):
    from fastcl.algorithms import CloneAndFinetune, Multitask, OracleConfig
    s = _stream()
    for cls in (CloneAndFinetune, Multitask):
        def make():
            torch.manual_seed(0)
            return cls(MLP((20, 16, 4)), 4, (20,), OracleConfig(lr=0.05))
        full = run_stream(make(), s, progress=False, seed=1)
        ck = tmp_path / f"{cls.__name__}.pt"
        run_stream(make(), s, progress=False, seed=1, checkpoint=ck, stop_after=2)
        resumed = run_stream(make(), s, progress=False, seed=1, checkpoint=ck, resume=True)
        assert (full.acc.values == resumed.acc.values).all()

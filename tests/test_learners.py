import pytest
import torch

from fastcl.algorithms import ERConfig, ERRing, Finetune, FinetuneConfig
from fastcl.data.streams import Stream, Task
from fastcl.models import MLP
from fastcl.train import run_stream


def _stream(num_tasks=3, n=60, d=20, classes=4, seed=0, multi_head=False):
    """Linearly separable toy tasks: each task its own random projection of class prototypes."""
    g = torch.Generator().manual_seed(seed)
    protos = torch.randn(classes, d, generator=g) * 3
    tasks = []
    for t in range(num_tasks):
        rot = torch.linalg.qr(torch.randn(d, d, generator=g))[0]
        def make(k):
            y = torch.randint(0, classes, (k,), generator=g)
            x = (protos[y] + torch.randn(k, d, generator=g)) @ rot
            return x, y
        (xtr, ytr), (xte, yte) = make(n), make(40)
        cls = list(range(classes))
        if multi_head:
            ytr, yte = ytr + t * classes, yte + t * classes
            cls = [c + t * classes for c in cls]
        tasks.append(Task(t, xtr, ytr, xte, yte, cls))
    nc = classes * (num_tasks if multi_head else 1)
    return Stream("toy", tasks, nc, (d,), multi_head)


def _er(stream, seed=0, m=2):
    torch.manual_seed(seed)
    tc = [t.classes for t in stream] if stream.multi_head else None
    return ERRing(MLP((20, 32, stream.num_classes)), stream.num_classes, (20,),
                  ERConfig(lr=0.05, per_class=m, num_tasks=len(stream), seed=seed), task_classes=tc)


def test_finetune_learns_a_task():
    s = _stream(num_tasks=1, n=200)
    torch.manual_seed(0)
    learner = Finetune(MLP((20, 32, 4)), 4, (20,), FinetuneConfig(lr=0.05))
    res = run_stream(learner, s, progress=False)
    assert res.acc.values[0, 0] > 0.8


def test_er_replays_only_previous_tasks(monkeypatch):
    s = _stream()
    learner = _er(s)
    seen = []
    orig = learner.memory.sample

    def spy(n, tasks=None, generator=None, **kw):
        seen.append(list(tasks))
        return orig(n, tasks=tasks, generator=generator, **kw)

    monkeypatch.setattr(learner.memory, "sample", spy)
    run_stream(learner, s, progress=False)
    assert seen and all(ts == list(range(max(ts) + 1)) for ts in seen)
    assert {max(ts) for ts in seen} == {0, 1}  # replay from task 1 on, never the current task
    # the memory holds the last m examples per class of each task
    assert len(learner.memory) == 3 * 4 * 2


@pytest.mark.parametrize("multi_head", [False, True])
def test_resume_gives_identical_metrics(tmp_path, multi_head):
    s = _stream(multi_head=multi_head)
    full = run_stream(_er(s), s, progress=False, seed=1)
    ck = tmp_path / "ck.pt"
    run_stream(_er(s), s, progress=False, seed=1, checkpoint=ck, stop_after=1)
    resumed = run_stream(_er(s, seed=0), s, progress=False, seed=1, checkpoint=ck, resume=True)
    assert (full.acc.values == resumed.acc.values).all()
    assert full.losses == resumed.losses


def test_multi_head_masks_other_tasks():
    s = _stream(multi_head=True)
    learner = _er(s)
    logits = learner.predict(s[1].x_test[:5], 1)
    assert torch.isinf(logits[:, :4]).all() and torch.isfinite(logits[:, 4:8]).all()


@pytest.mark.parametrize("kwargs, match", [
    (dict(x=torch.zeros(3, 19)), "x has shape"),
    (dict(y=torch.zeros(3, dtype=torch.int32)), "y must be int64"),
    (dict(y=torch.tensor([0, 1, 4])), r"labels in \[0, 4\)"),
    (dict(x=torch.zeros(3, 20, dtype=torch.int64)), "floating"),
    (dict(task=-1), "task must be"),
])
def test_bad_input(kwargs, match):
    s = _stream()
    learner = _er(s)
    args = dict(x=torch.zeros(3, 20), y=torch.tensor([0, 1, 2]), task=0)
    args.update(kwargs)
    with pytest.raises((ValueError, TypeError), match=match):
        learner.observe(**args)


def test_tasks_must_arrive_in_order():
    s = _stream()
    learner = _er(s)
    learner.observe(s[1].x_train[:10], s[1].y_train[:10], 1)
    with pytest.raises(ValueError, match="in order"):
        learner.observe(s[0].x_train[:10], s[0].y_train[:10], 0)


def test_bad_config():
    with pytest.raises(ValueError, match="per_class"):
        ERConfig(per_class=0)
    with pytest.raises(ValueError, match="lr"):
        ERConfig(lr=-1.0)


# ---------------------------------------------------------------------------- the protocol from outside
def test_single_head_predict_needs_no_task_and_multi_head_says_it_does():
    s = _stream()
    learner = _er(s)
    x = s[0].x_test[:5]
    assert torch.equal(learner.predict(x), learner.predict(x, 0))
    multi = _er(_stream(multi_head=True))
    with pytest.raises(ValueError, match="predict needs task"):
        multi.predict(x)


def test_begin_task_starts_a_task_in_order():
    s = _stream()
    learner = _er(s)
    learner.begin_task(1)
    assert learner.current_task == 1
    learner.observe(s[1].x_train[:10], s[1].y_train[:10], 1)  # the same task: fine
    with pytest.raises(ValueError, match="in order"):
        learner.begin_task(0)
    with pytest.raises(ValueError, match="task must be"):
        learner.begin_task(-1)


def _replay_draws(torch_seed, config_seed=None):
    s = _stream()
    torch.manual_seed(torch_seed)
    learner = ERRing(MLP((20, 32, 4)), 4, (20,), ERConfig(lr=0.05, per_class=2, num_tasks=3, seed=config_seed))
    return learner.seed, torch.randint(0, 10**9, (8,), generator=learner.generator)


def test_seed_left_out_follows_torch_seed():
    """ERConfig() without seed: torch.manual_seed(s) fixes the learner's replay generator, and two
    torch seeds give two replays (not one silent seed 0 for every run)."""
    seed_a, draws_a = _replay_draws(1)
    seed_b, draws_b = _replay_draws(1)
    seed_c, draws_c = _replay_draws(2)
    assert seed_a == seed_b and torch.equal(draws_a, draws_b)
    assert seed_a != seed_c and not torch.equal(draws_a, draws_c)
    # an explicit seed wins over torch's
    assert _replay_draws(1, 5)[0] == _replay_draws(2, 5)[0] == 5
    with pytest.raises(ValueError, match="seed"):
        ERConfig(seed=-1)


def test_er_replays_distinct_examples_by_default_as_the_authors_code():
    """ER-Ring draws its replay batch without replacement (the HAL / A-GEM authors' code):
    distinct stored examples, all of them while fewer than a batch are held;
    replay_replacement=True draws with replacement."""
    s = _stream(num_tasks=2)
    learner = _er(s, m=1)  # task 0 leaves 4 examples (1 per class) in memory
    assert learner.config.replay_replacement is False
    for i in range(0, 60, 10):
        learner.observe(s[0].x_train[i:i + 10], s[0].y_train[i:i + 10], 0)
    for _ in range(20):
        mx, my, mt = learner.replay(1)
        assert mx.shape[0] == 4 and sorted(my.tolist()) == [0, 1, 2, 3] and (mt == 0).all()
    torch.manual_seed(0)
    old = ERRing(MLP((20, 32, 4)), 4, (20,), ERConfig(per_class=1, seed=0, replay_replacement=True))
    for i in range(0, 60, 10):
        old.observe(s[0].x_train[i:i + 10], s[0].y_train[i:i + 10], 0)
    draws = [old.replay(1)[1] for _ in range(20)]
    assert all(d.numel() == 10 for d in draws)  # 10 draws from 4 examples: repeats


@pytest.mark.parametrize("name", ["er-ring", "hal", "agem"])
def test_ring_learners_grow_past_num_tasks(name, tmp_path):
    """config.num_tasks only preallocates: a stream longer than it runs, and resumes exactly."""
    from fastcl.algorithms import AGEM, AGEMConfig, HAL, HALConfig

    s = _stream(num_tasks=4)
    kinds = {"er-ring": (ERRing, ERConfig), "hal": (HAL, HALConfig), "agem": (AGEM, AGEMConfig)}
    cls, cfg = kinds[name]

    def make():
        torch.manual_seed(3)
        return cls(MLP((20, 32, 4)), 4, (20,), cfg(lr=0.05, per_class=1, num_tasks=1, seed=1))

    full = run_stream(make(), s, progress=False, seed=1)
    assert full.acc.values.shape == (4, 4)
    ck = tmp_path / "ck.pt"
    run_stream(make(), s, progress=False, seed=1, checkpoint=ck, stop_after=2)
    resumed = run_stream(make(), s, progress=False, seed=1, checkpoint=ck, resume=True)
    assert (full.acc.values == resumed.acc.values).all()

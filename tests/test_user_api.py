"""The API as a user drives it from outside (issue 13, section 4): fastcl.models.MLP's layout and
seeding, the slow-path warning, configs that refuse settings that do nothing, and a stream of the
user's own tensors."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

import fastcl
from fastcl.algorithms import (AGEMConfig, CloneAndFinetune, EMCL, EMCLConfig, ERConfig, ERRing, HAL, HALConfig,
                               LaMAML, LaMAMLConfig, MAMLConfig, OracleConfig)
from fastcl.algorithms.hal import split_model
from fastcl.algorithms.lamaml import functional_forward, is_plain_mlp, mlp_grads, relu_mlp, why_not_plain_mlp
from fastcl.data import Stream
from fastcl.models import MLP


def _old_mlp(sizes):
    """fastcl's MLP before issue 13: an nn.Flatten first, then Linear / ReLU."""
    layers = [nn.Flatten()]
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def _plain(sizes):
    """The user's plain nn.Sequential of the same layers."""
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


# --------------------------------------------------------------------------- 1. MLP
@pytest.mark.parametrize("sizes", [(20, 4), (20, 16, 4), (784, 100, 100, 10)])
def test_mlp_has_the_plain_sequential_layout(sizes):
    mlp, plain = MLP(sizes), _plain(sizes)
    assert list(mlp.state_dict()) == list(plain.state_dict())
    assert [type(m) for m in mlp] == [type(m) for m in plain]
    plain.load_state_dict(mlp.state_dict())  # strict: the keys are the same
    x = torch.rand(5, sizes[0])
    torch.testing.assert_close(plain(x), mlp(x), rtol=0, atol=0)


@pytest.mark.parametrize("sizes", [(20, 4), (20, 16, 4), (784, 100, 100, 10)])
def test_mlp_default_init_is_the_old_one_bit_for_bit(sizes):
    torch.manual_seed(11)
    old = _old_mlp(sizes)
    after_old = torch.get_rng_state()
    torch.manual_seed(11)
    new = MLP(sizes)
    assert torch.equal(torch.get_rng_state(), after_old)  # same draws from the global generator
    for a, b in zip(old.parameters(), new.parameters()):
        assert torch.equal(a, b)
    x = torch.rand(3, 1, 2, sizes[0] // 2) if sizes[0] % 2 == 0 else torch.rand(3, sizes[0])
    assert torch.equal(old(x), new(x))  # flattens [B, *shape] as nn.Flatten did


def test_mlp_generator_init_leaves_the_global_rng_alone():
    sizes = (30, 20, 5)
    torch.manual_seed(5)
    before = torch.get_rng_state()
    a = MLP(sizes, generator=torch.Generator().manual_seed(3))
    assert torch.equal(torch.get_rng_state(), before)
    b = MLP(sizes, generator=torch.Generator().manual_seed(3))
    c = MLP(sizes, generator=torch.Generator().manual_seed(4))
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not all(torch.equal(p, q) for p, q in zip(a.parameters(), c.parameters()))
    torch.manual_seed(3)  # nn.Linear's own initialisation, from a generator with the same seed
    ref = MLP(sizes)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), ref.parameters()))


def test_mlp_loads_old_state_dicts():
    old = _old_mlp((20, 16, 16, 4))
    state = old.state_dict()
    assert list(state) == ["1.weight", "1.bias", "3.weight", "3.bias", "5.weight", "5.bias"]
    new = MLP((20, 16, 16, 4))
    new.load_state_dict(state)  # strict
    assert list(state) == ["1.weight", "1.bias", "3.weight", "3.bias", "5.weight", "5.bias"]  # caller's dict kept
    x = torch.rand(6, 20)
    assert torch.equal(new(x), old(x))
    # nested (a learner's wrapper, a checkpoint of a bigger module): the prefix is honoured
    outer_old, outer_new = nn.ModuleDict({"net": old}), nn.ModuleDict({"net": MLP((20, 16, 16, 4))})
    outer_new.load_state_dict(outer_old.state_dict())
    assert torch.equal(outer_new["net"](x), old(x))
    # a learner checkpoint written before the change resumes
    learner_old = ERRing(copy.deepcopy(old), 4, (20,), ERConfig(seed=0))
    learner_new = ERRing(MLP((20, 16, 16, 4)), 4, (20,), ERConfig(seed=0))
    learner_new.load_state_dict(learner_old.state_dict())
    assert torch.equal(learner_new.predict(x), learner_old.predict(x))


def test_mlp_rejects_bad_arguments():
    with pytest.raises(ValueError, match="sizes"):
        MLP((784,))
    with pytest.raises(ValueError, match="sizes"):
        MLP((784, 0, 10))
    with pytest.raises(ValueError, match="sizes"):
        MLP((784, 1.5, 10))
    with pytest.raises(TypeError, match="generator"):
        MLP((4, 2), generator=3)


def test_mlp_features_head_and_slices():
    mlp = MLP((12, 8, 3))
    x = torch.rand(4, 3, 4)
    assert isinstance(mlp.head, nn.Linear) and mlp.head is mlp[-1]
    torch.testing.assert_close(mlp.head(mlp.features(x)), mlp(x))
    features, head = split_model(mlp)
    assert head is mlp[-1]
    sub = mlp[:2]
    assert type(sub) is nn.Sequential and len(sub) == 2
    assert is_plain_mlp(mlp) and relu_mlp(mlp)


def test_functional_forward_of_mlp_flattens():
    mlp = MLP((12, 8, 3)).double()
    x = torch.rand(4, 3, 4, dtype=torch.float64)
    names = [n for n, _ in mlp.named_parameters()]
    params = [p.detach() * 2 for p in mlp.parameters()]
    want = torch.func.functional_call(mlp, dict(zip(names, params)), (x,))
    torch.testing.assert_close(functional_forward(mlp, names, params, x), want)


# --------------------------------------------------------------------------- 2. plain models, slow path
def test_plain_user_sequentials_are_fusable():
    for model in (_plain((20, 16, 4)), nn.Sequential(nn.Flatten(), *_plain((20, 16, 4))), _plain((20, 4))):
        assert why_not_plain_mlp(model) is None
    reasons = {
        "Tanh": nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2)),
        "without bias": nn.Sequential(nn.Linear(4, 3, bias=False), nn.ReLU(), nn.Linear(3, 2)),
        "does not sit between": nn.Sequential(nn.ReLU(), nn.Linear(4, 2)),
        "Flatten after a Linear": nn.Sequential(nn.Linear(4, 3), nn.Flatten(), nn.ReLU(), nn.Linear(3, 2)),
        "not an nn.Sequential": nn.Linear(4, 2),
        "end in an nn.Linear": nn.Sequential(nn.Flatten()),
        "not sit between two": nn.Sequential(nn.Linear(4, 3), nn.ReLU()),
    }
    for why, model in reasons.items():
        assert why in why_not_plain_mlp(model), why
        assert not is_plain_mlp(model)
    # a hidden Linear without a ReLU: by-hand gradients yes, the fused ReLU inner loop no
    linear_stack = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    assert is_plain_mlp(linear_stack) and not relu_mlp(linear_stack)


def test_emcl_on_a_users_sequential_takes_the_fast_path_without_warning():
    torch.manual_seed(0)
    user = nn.Sequential(nn.Flatten(), nn.Linear(20, 16), nn.ReLU(), nn.Linear(16, 4))
    with warnings.catch_warnings():
        warnings.simplefilter("error", fastcl.SlowPathWarning)
        emcl = EMCL(user, 4, (1, 4, 5), EMCLConfig(seed=0, glances=1))
        lamaml = LaMAML(copy.deepcopy(user), 4, (1, 4, 5), LaMAMLConfig(seed=0, glances=1, second_order=False))
    assert emcl.by_hand and emcl.fused_inner and lamaml.by_hand
    # and it computes what the fastcl MLP computes (same weights, same batches)
    ref = MLP((20, 16, 4))
    ref[0].load_state_dict(user[1].state_dict())
    ref[2].load_state_dict(user[3].state_dict())
    ref_learner = EMCL(ref, 4, (1, 4, 5), EMCLConfig(seed=0, glances=1))
    g = torch.Generator().manual_seed(1)
    for _ in range(3):
        x, y = torch.rand(10, 1, 4, 5, generator=g), torch.randint(0, 4, (10,), generator=g)
        emcl.observe(x, y, 0)
        ref_learner.observe(x, y, 0)
    torch.testing.assert_close(emcl.predict(x), ref_learner.predict(x))


def test_a_linear_stack_without_relu_does_not_take_the_fused_relu_loop():
    """The fused inner loop puts a ReLU after every hidden Linear: a stack without one must not use it."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.Linear(5, 3)).double()
    learner = EMCL(model, 3, (6,), EMCLConfig(seed=0, glances=1))
    assert learner.by_hand and not learner.fused_inner
    ref = EMCL(copy.deepcopy(model), 3, (6,), EMCLConfig(seed=0, glances=1, fused_inner=False))
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(10, 6, generator=g, dtype=torch.float64), torch.randint(0, 3, (10,), generator=g)
    learner.observe(x, y, 0)
    ref.observe(x, y, 0)
    for a, b in zip(learner.params, ref.params):
        torch.testing.assert_close(a, b)


def test_slow_path_warns_once_per_learner_naming_the_module():
    model = nn.Sequential(nn.Linear(20, 16), nn.Tanh(), nn.Linear(16, 4))
    with pytest.warns(fastcl.SlowPathWarning, match=r"EMCL .*module 1 is a Tanh") as record:
        learner = EMCL(model, 4, (20,), EMCLConfig(seed=0, glances=1))
    assert len([w for w in record if issubclass(w.category, fastcl.SlowPathWarning)]) == 1
    assert issubclass(fastcl.SlowPathWarning, UserWarning)
    with warnings.catch_warnings():  # training issues no more
        warnings.simplefilter("error", fastcl.SlowPathWarning)
        for _ in range(2):
            learner.observe(torch.rand(10, 20), torch.randint(0, 4, (10,)), 0)
    with pytest.warns(fastcl.SlowPathWarning, match="LaMAML .*Conv2d"):
        LaMAML(nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(8, 4)), 4, (1, 4, 4),
               LaMAMLConfig(seed=0, second_order=False))
    with warnings.catch_warnings():  # second-order La-MAML always runs autograd: no fused path to miss
        warnings.simplefilter("error", fastcl.SlowPathWarning)
        LaMAML(copy.deepcopy(model), 4, (20,), LaMAMLConfig(seed=0))


# --------------------------------------------------------------------------- 3. settings that do nothing
@pytest.mark.parametrize("make, field", [
    (lambda: LaMAMLConfig(lr=0.1), "lr"),
    (lambda: EMCLConfig(lr=0.1), "lr"),
    (lambda: AGEMConfig(replay_batch=20), "replay_batch"),
    (lambda: MAMLConfig(inner_steps=2, inner_lrs=(0.1, 0.2), inner_lr=0.5), "inner_lr"),
    (lambda: CloneAndFinetune(MLP((4, 2)), 2, (4,), OracleConfig(batch_size=32)), "batch_size"),
])
def test_settings_that_do_nothing_are_refused_by_name(make, field):
    with pytest.raises(ValueError, match=rf"^{field}"):
        make()


def test_the_same_settings_are_accepted_where_they_act():
    """A setting is refused only where the learner never reads it. Settings read by one variant of
    a learner family (HAL's k under anchors="random", EMCL's replay_batch without a memory) stay
    accepted, so that one ``--set`` applies to every variant of a sweep (``hal,hal-random``)."""
    HALConfig(anchors="random", k=5, finetune_steps=3)
    EMCLConfig(memory_size=0, replay_batch=32)
    AGEMConfig(ref_batch=64)
    MAMLConfig(inner_steps=2, inner_lrs=(0.1, 0.2))
    MAMLConfig(inner_lr=0.5)
    OracleConfig(batch_size=32)  # Multitask's


# --------------------------------------------------------------------------- 4. a stream of one's own tensors
def _tensors(num_tasks=2, n=20, shape=(6,), classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.rand(n, *shape, generator=g), torch.randint(0, classes, (n,), generator=g),
             torch.rand(n // 2, *shape, generator=g), torch.randint(0, classes, (n // 2,), generator=g))
            for _ in range(num_tasks)]


def test_stream_from_tensors_builds_a_stream():
    data = _tensors(num_tasks=3, shape=(1, 2, 3))
    s = Stream.from_tensors(data, name="mine")
    assert s.name == "mine" and len(s) == 3 and s.input_shape == (1, 2, 3) and not s.multi_head
    assert s.num_classes == 1 + max(max(int(t[1].max()), int(t[3].max())) for t in data)
    for t, task in enumerate(s):
        assert task.task_id == t and task.x_train is data[t][0] and torch.equal(task.y_test, data[t][3])
        assert task.classes == list(range(s.num_classes))
    assert Stream.from_tensors(data, num_classes=7).num_classes == 7
    # integer labels of any integer dtype are taken as int64
    s32 = Stream.from_tensors([(x, y.int(), xt, yt.to(torch.uint8)) for x, y, xt, yt in data])
    assert s32[0].y_train.dtype == torch.int64 and s32[0].y_test.dtype == torch.int64


def test_stream_from_tensors_multi_head():
    g = torch.Generator().manual_seed(0)
    data = [(torch.rand(8, 4, generator=g), torch.tensor([2 * t, 2 * t + 1] * 4),
             torch.rand(4, 4, generator=g), torch.tensor([2 * t, 2 * t + 1] * 2)) for t in range(3)]
    s = Stream.from_tensors(data, multi_head=True)
    assert s.multi_head and s.num_classes == 6 and [t.classes for t in s] == [[0, 1], [2, 3], [4, 5]]
    s2 = Stream.from_tensors(data, multi_head=True, task_classes=[[0, 1, 2], [2, 3], [4, 5]])
    assert s2[0].classes == [0, 1, 2]
    with pytest.raises(ValueError, match=r"tasks\[1\]: y_train holds labels \[2, 3\] outside the task's classes"):
        Stream.from_tensors(data, multi_head=True, task_classes=[[0, 1], [0, 1], [4, 5]])


@pytest.mark.parametrize("mutate, error, match", [
    (lambda d: [], ValueError, "tasks must be a non-empty"),
    (lambda d: d[0], TypeError, r"tasks\[0\] must be a tuple"),
    (lambda d: [d[0][:3]], TypeError, r"tasks\[0\] must be a tuple .* of length 3"),
    (lambda d: [(d[0][0].numpy(), *d[0][1:])], TypeError, r"tasks\[0\]: x_train and y_train must be tensors"),
    (lambda d: [(d[0][0].long(), *d[0][1:])], ValueError, r"tasks\[0\]: x_train must be a floating tensor"),
    (lambda d: [d[0], (d[1][0][:, :5], *d[1][1:])], ValueError, r"tasks\[1\]: x_train .* every task needs one input shape"),
    (lambda d: [d[0], (d[1][0].double(), *d[1][1:])], ValueError, r"tasks\[1\]: x_train .* dtype"),
    (lambda d: [(d[0][0], d[0][1].float(), *d[0][2:])], ValueError, r"tasks\[0\]: y_train must hold integer labels"),
    (lambda d: [(d[0][0], d[0][1][:-1], *d[0][2:])], ValueError, r"y_train must hold integer labels of shape \[20\]"),
    (lambda d: [(*d[0][:2], d[0][2][:0], d[0][3][:0])], ValueError, r"tasks\[0\]: the test split is empty"),
    (lambda d: [(d[0][0], d[0][1] - 5, *d[0][2:])], ValueError, r"tasks\[0\]: y_train holds a negative label"),
])
def test_stream_from_tensors_names_what_is_wrong(mutate, error, match):
    with pytest.raises(error, match=match):
        Stream.from_tensors(mutate(_tensors()))


def test_stream_from_tensors_checks_num_classes_and_name():
    with pytest.raises(ValueError, match=r"labels go up to 2, but num_classes=2"):
        Stream.from_tensors(_tensors(), num_classes=2)
    with pytest.raises(ValueError, match="num_classes must be an int"):
        Stream.from_tensors(_tensors(), num_classes=2.0)
    with pytest.raises(ValueError, match="name"):
        Stream.from_tensors(_tensors(), name="")
    with pytest.raises(ValueError, match=r"task_classes has 1 entries for 2 tasks"):
        Stream.from_tensors(_tensors(), task_classes=[[0]])


def test_run_stream_is_public_and_checks_its_arguments():
    from fastcl.train import run_stream
    assert fastcl.run_stream is run_stream
    learner = ERRing(MLP((6, 3)), 3, (6,), ERConfig(seed=0))
    with pytest.raises(TypeError, match=r"stream must be a fastcl.data.Stream .*from_tensors"):
        fastcl.run_stream(learner, _tensors())
    with pytest.raises(TypeError, match="learner must be"):
        fastcl.run_stream(object(), Stream.from_tensors(_tensors()))
    with pytest.raises(AttributeError):
        fastcl.no_such_thing  # noqa: B018


def test_run_stream_calls_begin_task_before_each_task():
    calls = []

    class Recording(ERRing):
        def begin_task(self, task):
            calls.append(("begin", task))
            super().begin_task(task)

        def observe(self, x, y, task):
            if not calls or calls[-1] != ("observe", task):
                calls.append(("observe", task))
            return super().observe(x, y, task)

        def end_task(self, task):
            calls.append(("end", task))
            super().end_task(task)

    stream = Stream.from_tensors(_tensors(num_tasks=2))
    fastcl.run_stream(Recording(MLP((6, 3)), 3, (6,), ERConfig(seed=0)), stream, progress=False)
    assert calls == [("begin", 0), ("observe", 0), ("end", 0), ("begin", 1), ("observe", 1), ("end", 1)]


def test_overrides_of_optional_fields_take_their_annotated_type():
    from fastcl.algorithms import FTMLConfig
    from fastcl.algorithms.overrides import parse_overrides

    # finetune_batch / seed default to None: the annotation (Optional[int]) gives the type
    got = parse_overrides(["finetune_batch=10", "seed=3"], FTMLConfig)
    assert got == {"finetune_batch": 10, "seed": 3} and all(type(v) is int for v in got.values())
    assert FTMLConfig(**got).finetune_batch == 10
    assert parse_overrides(["seed=none"], HALConfig) == {"seed": None}
    with pytest.raises(ValueError, match=r"--set finetune_batch: expects an int .*Optional\[int\].*'x'"):
        parse_overrides(["finetune_batch=x"], FTMLConfig)
    with pytest.raises(ValueError, match=r"--set lam: expects a number"):
        parse_overrides(["lam=none"], HALConfig)  # not Optional: none is not a value


@pytest.mark.parametrize("cfg", ["MAMLConfig", "L2FConfig", "CTSConfig"])
def test_meta_configs_take_no_seed_they_would_not_use(cfg):
    import fastcl.algorithms as A
    from fastcl.algorithms.overrides import parse_overrides

    cls = getattr(A, cfg)
    with pytest.raises(TypeError, match="seed"):  # the learner draws nothing: a seed would do nothing
        cls(seed=0)
    with pytest.raises(ValueError, match=rf"{cfg} has no setting 'seed'"):
        parse_overrides(["seed=1"], cls)

"""HAL, ER-Ring and EMCL trained through the public API on a stream built outside fastcl: the
user's tensors (``Stream.from_tensors``), the user's ``nn.Sequential``, ``fastcl.run_stream`` or the
user's own loop (issue 13, section 4)."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

import fastcl
from fastcl.algorithms import EMCL, HAL, EMCLConfig, ERConfig, ERRing, HALConfig
from fastcl.data import Stream

NUM_TASKS, NUM_CLASSES, SHAPE = 3, 4, (1, 4, 4)


def _user_tensors(seed: int = 0, n_train: int = 200, n_test: int = 60, multi_head: bool = False):
    """An easy stream, built without fastcl: task t's class c is a Gaussian blob around a
    prototype of its own (the tasks share their labels, as in permuted MNIST, unless
    ``multi_head``: then task t uses labels 2t, 2t+1)."""
    g = torch.Generator().manual_seed(seed)
    tasks = []
    for t in range(NUM_TASKS):
        protos = torch.randint(0, 2, (NUM_CLASSES, *SHAPE), generator=g).float()  # binary patterns
        classes = [2 * t, 2 * t + 1] if multi_head else list(range(NUM_CLASSES))

        def split(n):
            k = torch.randint(0, len(classes), (n,), generator=g)
            x = (protos[k] + 0.1 * torch.randn(n, *SHAPE, generator=g)).clamp(0, 1)
            return x, torch.tensor(classes)[k]

        tasks.append((*split(n_train), *split(n_test)))
    return tasks


def _user_model(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, NUM_CLASSES))


LEARNERS = {
    "er-ring": lambda model, s: ERRing(model, s.num_classes, s.input_shape, ERConfig(per_class=3, seed=0)),
    "hal": lambda model, s: HAL(model, s.num_classes, s.input_shape, HALConfig(per_class=3, k=10, seed=0)),
    "emcl": lambda model, s: EMCL(model, s.num_classes, s.input_shape, EMCLConfig(memory_size=40, glances=2, seed=0)),
}


@pytest.fixture(scope="module")
def stream() -> Stream:
    return Stream.from_tensors(_user_tensors(), name="user-blobs")


@pytest.mark.parametrize("name", list(LEARNERS))
def test_learns_the_users_stream_and_fills_its_memory(stream, name):
    with warnings.catch_warnings():
        warnings.simplefilter("error", fastcl.SlowPathWarning)  # the user's Linear/ReLU net is fusable
        learner = LEARNERS[name](_user_model(), stream)
    result = fastcl.run_stream(learner, stream, batch_size=10, seed=0, progress=False)
    acc = result.acc.values
    assert acc.shape == (NUM_TASKS, NUM_TASKS)
    chance = 1 / NUM_CLASSES
    assert acc[0, 0] > 0.9, acc                                  # the first task is learned ...
    assert acc[-1, 0] > 0.8, acc                                 # ... and still known at the end
    assert result.summary()["accuracy"] > chance + 0.3, acc     # final average: well above chance
    if name == "emcl":
        assert learner.by_hand and learner.fused_inner
        assert len(learner.memory) == 40                         # the reservoir is full
        assert learner.memory.n_seen == NUM_TASKS * 200
    else:
        counts = learner.memory.counts[:NUM_TASKS]                # per (task, class): all 3 slots filled
        assert bool((counts.clamp(max=3) == 3).all()) and len(learner.memory) == NUM_TASKS * NUM_CLASSES * 3
    if name == "hal":
        assert int(learner.anchor_mask.sum()) == NUM_TASKS * NUM_CLASSES  # one anchor per class and task
        e = learner.anchor_x[learner.anchor_mask]
        assert float(e.min()) >= 0.0 and float(e.max()) <= 1.0


@pytest.mark.parametrize("name", list(LEARNERS))
def test_state_dict_round_trip_gives_identical_predictions_and_training(stream, name):
    learner = LEARNERS[name](_user_model(), stream)
    for t in range(2):  # the user's own loop
        learner.begin_task(t)
        x, y = stream[t].x_train, stream[t].y_train
        for i in range(0, 60, 10):
            learner.observe(x[i:i + 10], y[i:i + 10], t)
        learner.end_task(t)
    state = copy.deepcopy(learner.state_dict())
    twin = LEARNERS[name](_user_model(seed=5), stream)  # other initial weights: all from the state
    twin.load_state_dict(state)
    x_test = torch.cat([task.x_test for task in stream])
    assert torch.equal(twin.predict(x_test), learner.predict(x_test))
    # the generators and memories came along: the next batches train both alike
    x, y = stream[2].x_train, stream[2].y_train
    for i in range(0, 30, 10):
        assert learner.observe(x[i:i + 10], y[i:i + 10], 2) == twin.observe(x[i:i + 10], y[i:i + 10], 2)
    assert torch.equal(twin.predict(x_test), learner.predict(x_test))


def test_initial_weights_are_the_users(stream):
    """The learner trains the model it is given, from the weights it has."""
    model = _user_model(seed=3)
    start = copy.deepcopy(model.state_dict())
    learner = LEARNERS["er-ring"](model, stream)
    assert learner.model is model
    assert all(torch.equal(p, start[k]) for k, p in model.state_dict().items())
    fastcl.run_stream(learner, Stream.from_tensors(_user_tensors()[:1]), progress=False)
    assert not all(torch.equal(p, start[k]) for k, p in model.state_dict().items())


def test_multi_head_stream_from_tensors():
    s = Stream.from_tensors(_user_tensors(multi_head=True), multi_head=True)
    assert [t.classes for t in s] == [[0, 1], [2, 3], [4, 5]] and s.num_classes == 6
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, s.num_classes))
    learner = HAL(model, s.num_classes, s.input_shape, HALConfig(per_class=2, k=5, seed=0),
                  task_classes=[t.classes for t in s])
    result = fastcl.run_stream(learner, s, progress=False)
    assert result.summary()["accuracy"] > 0.8, result.acc.values  # two labels per head: chance 0.5
    with pytest.raises(ValueError, match="predict needs task"):
        learner.predict(s[0].x_test)
    logits = learner.predict(s[1].x_test, 1)
    assert bool(torch.isinf(logits[:, [0, 1, 4, 5]]).all())       # the other heads are masked


def test_a_model_hal_cannot_split_is_a_clear_error(stream):
    class Opaque(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = _user_model()

        def forward(self, x):
            return self.net(x)

    with pytest.raises(TypeError, match=r"HAL needs the model split into a feature extractor and a classifier"):
        HAL(Opaque(), stream.num_classes, stream.input_shape, HALConfig(seed=0))

    class Mismatched(nn.Module):  # features / head that do not compose to forward
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Flatten(), nn.Linear(16, 32))
            self.head = nn.Linear(32, NUM_CLASSES)

        def features(self, x):
            return self.body(x)

        def forward(self, x):
            return self.head(torch.relu(self.body(x)))

    with pytest.raises(TypeError, match=r"head\(features\(x\)\) != model\(x\)"):
        HAL(Mismatched(), stream.num_classes, stream.input_shape, HALConfig(seed=0))


def test_a_wrong_stream_or_batch_names_the_problem(stream):
    learner = LEARNERS["er-ring"](_user_model(), stream)
    with pytest.raises(TypeError, match="Stream.from_tensors"):
        fastcl.run_stream(learner, _user_tensors())
    with pytest.raises(ValueError, match=r"x has shape \(10, 16\); expected \[B, 1, 4, 4\]"):
        learner.observe(torch.rand(10, 16), torch.zeros(10, dtype=torch.int64), 0)
    with pytest.raises(ValueError, match=r"tasks\[1\]: x_train .* every task needs one input shape"):
        data = _user_tensors()
        data[1] = (data[1][0].flatten(1), *data[1][1:])
        Stream.from_tensors(data)

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fastcl.memory import TaskBuffer


def _batch(n, task, shape=(3,)):
    x = torch.arange(n * 3, dtype=torch.float32).reshape(n, *shape) + 1000 * task
    return x, torch.arange(n) % 10


@settings(max_examples=25)
@given(sizes=st.lists(st.tuples(st.integers(0, 3), st.integers(0, 40)), min_size=1, max_size=12))
def test_holds_everything_per_task_in_arrival_order(sizes):
    buf = TaskBuffer((3,))
    expect: dict[int, list[torch.Tensor]] = {}
    for task, n in sizes:
        x, y = _batch(n, task)
        buf.add(x, y, task)
        if n:
            expect.setdefault(task, []).append(x)
    assert buf.tasks == list(expect)
    assert len(buf) == sum(n for _, n in sizes)
    for task, xs in expect.items():
        x, y = buf.data(task)
        torch.testing.assert_close(x, torch.cat(xs))
        assert buf.size(task) == x.shape[0] == y.shape[0]


def test_sampling_is_uniform_independent_and_seeded():
    buf = TaskBuffer((3,))
    for t in range(3):
        buf.add(*_batch(20, t), task=t)
    tasks = buf.sample_tasks(3000, torch.Generator().manual_seed(0))
    counts = torch.bincount(torch.tensor(tasks), minlength=3)
    assert ((counts - 1000).abs() < 120).all()  # uniform nu^t (3 sigma ~ 77)
    assert set(buf.sample_tasks(200, torch.Generator().manual_seed(1), exclude=2)) == {0, 1}
    g = torch.Generator().manual_seed(3)
    x_tr, _ = buf.sample(1, 10, g)
    x_val, _ = buf.sample(1, 10, g)
    assert not torch.equal(x_tr, x_val)  # independent draws
    assert len({tuple(r.tolist()) for r in x_tr}) == 10  # without replacement when the task holds enough
    data, _ = buf.data(1)
    assert all((data == r).all(1).any() for r in x_tr)  # drawn from D_1 only
    again, _ = buf.sample(1, 10, torch.Generator().manual_seed(3))
    torch.testing.assert_close(again, x_tr)
    small, _ = buf.sample(0, 50, g)  # more than the task holds: with replacement, still 50 rows
    assert small.shape == (50, 3)


def test_state_round_trip_continues_identically():
    buf = TaskBuffer((3,))
    buf.add(*_batch(7, 0), task=0)
    buf.add(*_batch(30, 4), task=4)
    state = buf.state_dict()
    buf.add(*_batch(5, 4), task=4)  # the state is a copy
    other = TaskBuffer((3,))
    other.load_state_dict(state)
    assert other.tasks == [0, 4] and other.size(4) == 30
    buf2 = TaskBuffer((3,))
    buf2.load_state_dict(state)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    for _ in range(3):
        torch.testing.assert_close(other.sample(4, 8, g1), buf2.sample(4, 8, g2))
    other.add(*_batch(2, 9), task=9)
    assert other.tasks == [0, 4, 9]


def test_clear_errors():
    buf = TaskBuffer((3,))
    with pytest.raises(ValueError, match="buffer is empty"):
        buf.sample(0, 5)
    with pytest.raises(ValueError, match="buffer is empty"):
        buf.sample_tasks(1)
    with pytest.raises(ValueError, match=r"expected \[B, 3\]"):
        buf.add(torch.zeros(4, 2), torch.zeros(4, dtype=torch.int64), 0)
    with pytest.raises(TypeError, match="int64"):
        buf.add(torch.zeros(4, 3), torch.zeros(4), 0)
    with pytest.raises(ValueError, match="task must be >= 0"):
        buf.add(torch.zeros(4, 3), torch.zeros(4, dtype=torch.int64), -1)
    buf.add(*_batch(3, 0), task=0)
    with pytest.raises(ValueError, match=r"task 2 holds no data; the buffer holds tasks \[0\]"):
        buf.data(2)
    with pytest.raises(ValueError, match="only task 0, which is excluded"):
        buf.sample_tasks(1, exclude=0)
    with pytest.raises(ValueError, match="n must be >= 1"):
        buf.sample(0, 0)
    with pytest.raises(ValueError, match="this buffer stores"):
        TaskBuffer((4,)).load_state_dict(buf.state_dict())
    bad = buf.state_dict()
    bad["y"] = []
    before = buf.data(0)[0].clone()
    with pytest.raises(ValueError, match="one entry per distinct task"):
        buf.load_state_dict(bad)
    torch.testing.assert_close(buf.data(0)[0], before)  # a rejected state changes nothing

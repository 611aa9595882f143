import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from fastcl import metrics


def _loops(a):
    """The equations written as plain loops (1-based in the papers, 0-based here)."""
    t = len(a)
    acc = sum(a[t - 1][j] for j in range(t)) / t
    if t == 1:
        return acc, 0.0, 0.0
    forget = sum(max(a[l][j] - a[t - 1][j] for l in range(j, t - 1)) for j in range(t - 1)) / (t - 1)
    bwt = sum(a[t - 1][j] - a[j][j] for j in range(t - 1)) / (t - 1)
    return acc, forget, bwt


@given(arrays(np.float64, st.integers(1, 8).map(lambda t: (t, t)), elements=st.floats(0, 1)))
def test_metrics_equal_the_equations(a):
    acc, forget, bwt = _loops(a.tolist())
    assert metrics.average_accuracy(a) == pytest.approx(acc)
    assert metrics.maximum_forgetting(a) == pytest.approx(forget)
    assert metrics.backward_transfer(a) == pytest.approx(bwt)
    assert metrics.learning_accuracy(a) == pytest.approx(np.diag(a).mean())


def test_forgetting_example():
    # task 0 peaks at 0.9 after task 1, ends at 0.5; task 1 ends where it started.
    a = [[0.8, 0.1, 0.1], [0.9, 0.7, 0.1], [0.5, 0.7, 0.6]]
    assert metrics.maximum_forgetting(a) == pytest.approx((0.4 + 0.0) / 2)
    assert metrics.backward_transfer(a) == pytest.approx((-0.3 + 0.0) / 2)
    assert metrics.average_accuracy(a) == pytest.approx(0.6)


def test_skip_first_uses_the_submatrix():
    rng = np.random.default_rng(0)
    a = rng.random((6, 6))
    for k in range(6):
        assert metrics.summarize(a, skip_first=k) == pytest.approx(metrics.summarize(a[k:, k:]))


def test_upper_triangle_is_ignored():
    a = np.tril(np.random.default_rng(1).random((4, 4)))
    b = a.copy()
    b[np.triu_indices(4, 1)] = np.nan
    assert metrics.summarize(a) == pytest.approx(metrics.summarize(b))


@pytest.mark.parametrize("bad, match", [
    (np.zeros((2, 3)), "square"),
    (np.full((2, 2), np.nan), "nan"),
])
def test_bad_matrix(bad, match):
    with pytest.raises(ValueError, match=match):
        metrics.average_accuracy(bad)


def test_bad_skip_first():
    with pytest.raises(ValueError, match="skip_first"):
        metrics.average_accuracy(np.eye(3), skip_first=3)
    with pytest.raises(ValueError, match="skip_first"):
        metrics.average_accuracy(np.eye(3), skip_first=-1)


def test_accuracy_matrix_rows_and_state():
    m = metrics.AccuracyMatrix(3)
    m.add_row([0.9, 0.1, 0.1])
    assert m.summary()["accuracy"] == pytest.approx(0.9)
    m.add_row([0.8, 0.7, 0.2])
    state = m.state_dict()
    m2 = metrics.AccuracyMatrix(3)
    m2.load_state_dict(state)
    m.add_row([0.6, 0.6, 0.5])
    m2.add_row([0.6, 0.6, 0.5])
    assert m.summary() == m2.summary()
    with pytest.raises(ValueError, match="already"):
        m.add_row([0, 0, 0])
    with pytest.raises(ValueError, match="entries"):
        metrics.AccuracyMatrix(2).add_row([0.1])

import os

import pytest
import torch
from hypothesis import HealthCheck, settings

from test_data import _write_mnist_dir

settings.register_profile(
    "dev", max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "ci", max_examples=150, deadline=None, derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))

# ---- every CPU ISA variant of the kernels (csrc/cpu/loops.cpp)
#: Test modules whose ops run the ISA-dispatched CPU loops: each of their tests runs once per
#: vector ISA this CPU supports (avx512, avx2, generic on an AVX-512 machine), the native one
#: first. Not among them: test_memory_ops.py (the memory kernels have no ISA variants) and
#: test_update_ops_errors.py (bad input is refused before any loop runs).
ISA_MODULES = {"test_update_ops", "test_update_ops_torch", "test_mlp_ops"}
#: Hypothesis examples of a property test under a non-native ISA, as a fraction of the profile's.
NON_NATIVE_EXAMPLES = 1 / 3


def _test_isas() -> list[str]:
    """The ISAs the op tests run under: FASTCL_ISA alone when it forces one, else all supported."""
    import fastcl.ops as F
    from fastcl.ops._load import cpu_isa_forced

    if not F.supported_cpu_isas():  # no extension: the references, no ISA
        return []
    return [F.cpu_isa()] if cpu_isa_forced() else F.supported_cpu_isas()


TEST_ISAS = _test_isas()


def pytest_generate_tests(metafunc):
    if metafunc.module.__name__ in ISA_MODULES and TEST_ISAS:
        metafunc.parametrize("cpu_isa", TEST_ISAS, indirect=True)


@pytest.fixture(autouse=True)
def cpu_isa(request):
    """The CPU ISA a test of ISA_MODULES runs under (parametrised; None elsewhere). Property tests
    draw fewer examples under the non-native ISAs; the ISA in force before is restored after."""
    isa = getattr(request, "param", None)
    if isa is None:
        yield None
        return
    import fastcl.ops as F
    from fastcl.ops import _load

    forced_before = _load._FORCED_ISA  # None: the automatic choice
    fn = request.function
    # Hypothesis reads a test's settings from this (internal) attribute when the test is called;
    # should a later version not, the test just draws all its examples.
    hyp = getattr(fn, "_hypothesis_internal_use_settings", None)
    if hyp is not None and isa != TEST_ISAS[0]:
        fewer = min(hyp.max_examples, max(10, int(hyp.max_examples * NON_NATIVE_EXAMPLES)))
        fn._hypothesis_internal_use_settings = settings(hyp, max_examples=fewer)
    F.set_cpu_isa(isa)
    try:
        yield isa
    finally:
        F.set_cpu_isa(forced_before or "auto")
        if hyp is not None:
            fn._hypothesis_internal_use_settings = hyp


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def data_dir(tmp_path):
    """A directory of MNIST IDX files (60 train, 20 test images) the data sources read."""
    d = tmp_path / "mnist"
    d.mkdir()
    _write_mnist_dir(d, n_train=60, n_test=20)
    return d

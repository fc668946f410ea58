# promptkd-edge: `make demo` runs the embedded demo, `make test` the test suite. Both create or reuse .venv.
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test test-fast lint bench clean mutations-native

# The tested set: the package with its training/export/test extras, pinned by constraints.txt (torch 2.14.1 with
# torchvision 0.29.1, ...). A user's `pip install promptkd-edge[...]` takes pyproject.toml's ranges instead.
$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	@touch $(STAMP)

demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/pkd demo --out demo-output

# The TensorRT tests run against the REAL TensorRT 10.3 and 11.4 Python bindings (fetched once from PyPI, with stub
# libraries built by the C compiler) and the ModelOpt tests against the real ModelOpt in its own venv; both are
# prepared once under .cache/test (tests/real_tensorrt.py, tests/modelopt_venv.py); Triton's own ModelConfig schema,
# which the tests parse every written config.pbtxt with, comes from the tritonclient wheel (tests/triton_schema.py).
test: $(STAMP)
	$(BIN)/python tests/real_tensorrt.py
	$(BIN)/python tests/modelopt_venv.py
	$(BIN)/python tests/triton_schema.py
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q
	$(MAKE) --no-print-directory lint

# the inner loop: every test but the slow ones (tests/conftest.py SLOW_MODULES, @pytest.mark.slow); `make test` and CI
# run them all
test-fast: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -m "not slow"

# each mutation of the native library (tests/native/mutations.json) rebuilt and caught by its tests (15 min)
mutations-native: $(STAMP)
	$(BIN)/python tests/native_mutations.py

# the Python (ruff), the shell scripts (shellcheck) and the Dockerfiles (hadolint); the last two from PyPI wheels
lint: $(STAMP)
	$(BIN)/ruff check promptkd_edge tests benchmarks
	$(BIN)/shellcheck .ci/run benchmarks/gpu_check.sh docker/install.sh
	$(BIN)/hadolint docker/Dockerfile.cpu docker/Dockerfile.gpu docker/Dockerfile.jetson

bench: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/distill_throughput.py

clean:
	rm -rf $(VENV) demo-output .pytest_cache .ruff_cache .cache/test

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# make test-gpu: see the target below.
GPU_PYTHON ?=
JAX_CUDA ?= cuda13
GPU_TEST_WORKERS ?= 4

.PHONY: test wheel-check test-gpu demo check lint docs readme-tables clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# The stamp re-installs only when the package metadata changes.
$(VENV)/.dev-installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

# pytest, then every `jaxloss check` case (float64 references, finite differences,
# extremes for each built-in loss; the suite itself runs the command on a few).
test: $(VENV)/.dev-installed
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -n 2 -q
	$(BIN)/jaxloss check

# make wheel-check: python -m build (sdist, and the wheel from it) into a temporary
# folder, twine check --strict, then the wheel installed in a fresh venv outside the
# tree runs jaxloss --version, jaxloss check and the README's examples (.ci/wheel-check).
wheel-check: $(VENV)/.dev-installed
	DEV_PYTHON=$(BIN)/python PYTHON=$(PYTHON) bash .ci/wheel-check

# make test-gpu: ruff, then the whole suite on JAX's default backend, the accelerator:
# JAX_PLATFORMS unset and JAXLOSS_TEST_BACKEND=default (see tests/conftest.py: the
# multi-device tests still run on 4 host CPU devices, and the tests of the CPU's
# memory/time ratios skip). It stops, before pytest, if JAX finds no accelerator.
# - In the venv (default): first installs JAX's own CUDA wheels, "jax[$(JAX_CUDA)]" at
#   the installed jax version, unless they are there (this needs the package index).
# - Offline, on a host whose Python already has CUDA JAX and the test dependencies:
#   make test-gpu GPU_PYTHON=python3
#   uses that Python and no venv (ruff only if that Python has it).
# GPU_TEST_WORKERS (4) pytest-xdist workers share the GPU: its memory is not preallocated.
TEST_GPU_PYTHON = $(if $(GPU_PYTHON),$(GPU_PYTHON),$(BIN)/python)
TEST_GPU_ENV = JAXLOSS_TEST_BACKEND=default \
	XLA_PYTHON_CLIENT_PREALLOCATE=$${XLA_PYTHON_CLIENT_PREALLOCATE:-false} \
	PYTHONPATH="$(CURDIR)$${PYTHONPATH:+:$$PYTHONPATH}"

$(VENV)/.cuda-installed: $(VENV)/.dev-installed
	@version=$$($(BIN)/python -c "import jax; print(jax.__version__)"); \
	plugin=jax-$(JAX_CUDA)-plugin; \
	if [ "$$($(BIN)/python -c "import importlib.metadata as m; print(m.version('$$plugin'))" \
	        2>/dev/null)" = "$$version" ]; then echo "$$plugin $$version is installed"; \
	else $(BIN)/python -m pip install --quiet "jax[$(JAX_CUDA)]==$$version"; fi
	touch $@

test-gpu: $(if $(GPU_PYTHON),,$(VENV)/.cuda-installed)
	@if $(TEST_GPU_PYTHON) -m ruff --version >/dev/null 2>&1; then \
	  echo "$(TEST_GPU_PYTHON) -m ruff check ."; $(TEST_GPU_PYTHON) -m ruff check .; \
	else echo "test-gpu: $(TEST_GPU_PYTHON) has no ruff; lint skipped (make lint)"; fi
	@unset JAX_PLATFORMS; $(TEST_GPU_ENV) $(TEST_GPU_PYTHON) -c "import jax, sys; \
	  print('test-gpu: jax', jax.__version__, 'on', jax.default_backend(), jax.devices()); \
	  sys.exit('test-gpu: JAX found no accelerator' if jax.default_backend() == 'cpu' else 0)"
	unset JAX_PLATFORMS; $(TEST_GPU_ENV) $(TEST_GPU_PYTHON) -m pytest -n $(GPU_TEST_WORKERS) -q

$(VENV)/.demo-installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[demo]"
	touch $@

demo: $(VENV)/.demo-installed
	$(BIN)/jaxloss demo

# ruff on everything, mypy --strict on jaxloss/ (its settings: pyproject.toml).
lint: $(VENV)/.dev-installed
	$(BIN)/ruff check .
	$(BIN)/mypy

# The reference site (mkdocs.yml, docs/), into site/; --strict: a warning (a broken
# reference, a missing docstring) fails the build.
docs: $(VENV)/.dev-installed
	$(BIN)/mkdocs build --strict
	$(BIN)/python docs/check_site.py site

# The README's and the docs pages' loss tables (and the docs' version) are rendered from
# jaxloss/_registry.py (tests/test_registry.py and tests/test_docs.py fail when they differ).
readme-tables: $(VENV)/.dev-installed
	$(BIN)/python -m jaxloss._registry README.md
	$(BIN)/python docs/hooks/site.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache

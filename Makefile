# The two commands of the README: `make demo` (main job on CPU) and `make test`.
# Both create or reuse .venv in the repository and install what they need.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
FMNIST := /usr/share/datasets/fashion-mnist

.PHONY: demo test test-quick test-isa venv system-deps clean

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	touch $@

venv: $(VENV)/.installed

# Fashion-MNIST (real images, MIT licence) comes from Debian's dataset-fashion-mnist package;
# g++ builds the C++ depthwise kernel (mindcv_mnv2/ops) that CPU training uses.
system-deps:
	@pkgs=""; [ -f $(FMNIST)/train-images-idx3-ubyte.gz ] || pkgs="$$pkgs dataset-fashion-mnist"; \
	command -v g++ >/dev/null || pkgs="$$pkgs g++"; \
	if [ -n "$$pkgs" ]; then SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq $$pkgs; fi

demo: venv system-deps
	$(PY) -m mindcv_mnv2.tools.demo

# Two pytest-xdist workers (whole files each): the suite is mostly single-threaded graph compilation.
test: venv system-deps
	$(PY) -m pytest -q -n 2 --dist loadfile tests

# Development loop: everything but the training runs, process launches and bench smoke runs (~3 min).
test-quick: venv system-deps
	$(PY) -m pytest -q -n 2 --dist loadfile tests -m "not slow and not distributed"

# The CPU-dependent tests again as another CPU would run them: MindSpore's oneDNN kernels capped at
# SSE4.1 and the C++ depthwise kernel built for baseline x86-64 (AVX2 / AVX-512 machines differ in
# rounding; results must hold on every one).
test-isa: venv system-deps
	ONEDNN_MAX_CPU_ISA=SSE41 MINDCV_MNV2_MARCH=x86-64 $(PY) -m pytest -q -n 2 --dist loadfile tests -m numerics

clean:
	rm -rf $(VENV) runs data

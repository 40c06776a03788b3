# The two commands of the README:
#   make lab    the lab (five podman containers) and site.yml against it
#   make test   lint, unit and integration tests, every molecule scenario
# Both install what they need first (apt packages, the virtualenv, the image).

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

VENV      := .venv
PYTHON    ?= python3
STAMPS    := .cache/stamps
SCENARIOS := $(notdir $(patsubst %/molecule.yml,%,$(wildcard molecule/*/molecule.yml)))

export CONTAINERS_CONF := $(CURDIR)/lab/containers.conf
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export ANSIBLE_FORCE_COLOR ?= 0
export PY_COLORS ?= 0

.PHONY: help deps lock lab lab-up lab-down test lint pytest molecule bench clean distclean

help:
	@echo "make lab        bring up the lab and run site.yml against it"
	@echo "make test       lint, unit and integration tests, every molecule scenario ($(SCENARIOS))"
	@echo "make molecule SCENARIO=default   one scenario"
	@echo "make lint | pytest | bench | lock | lab-down | clean | distclean"

# --- set-up ---------------------------------------------------------------

$(STAMPS)/host-packages: lab/host-packages.txt
	@mkdir -p $(STAMPS)
	@missing="$$(grep -v '^\s*#' $< | grep -v '^\s*$$' | while read -r p; do \
	    dpkg-query -W -f='$${Status}' "$$p" 2>/dev/null | grep -q 'install ok installed' || echo "$$p"; done)"; \
	if [ -n "$$missing" ]; then \
	  echo "Installing host packages: $$missing"; \
	  apt-get update -qq; \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi
	@touch $@

$(VENV)/.installed: requirements.txt pyproject.toml $(STAMPS)/host-packages
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --disable-pip-version-check -r requirements.txt
	$(VENV)/bin/python -m pip install -q --disable-pip-version-check --no-deps -e .
	@touch $@

deps: $(VENV)/.installed

# The gateway's dependencies, pinned at requirements.txt's versions with their wheels'
# hashes (docs/releases.md); run after a change of requirements.txt, commit the result.
lock: deps
	$(VENV)/bin/python tools/release.py lock

# --- the lab --------------------------------------------------------------

lab-up: deps
	ansible-playbook lab/up.yml

lab: lab-up
	ansible-playbook site.yml

lab-down: deps
	ansible-playbook lab/down.yml

# --- tests ----------------------------------------------------------------

lint: deps
	yamllint --strict .
	ansible-lint --profile production
	ruff check .
	ruff format --check .
	promtool check rules roles/supervision/files/etc/prometheus/rules/halfbridge.rules.yml

# Unit and integration tests (no container: a local camera and real ffmpeg).
# Unit tests on both cores (many start ansible-playbook); integration tests one at a
# time, since they measure real time and CPU.
pytest: deps
	pytest -q -n 2 tests/unit
	pytest -q tests/integration

molecule: deps
	@mkdir -p .cache/molecule
	@for s in $(or $(SCENARIO),$(SCENARIOS)); do \
	  echo "=== molecule scenario $$s"; \
	  rm -f ".cache/molecule/$$s-verify.log"; \
	  molecule test --scenario-name "$$s" || { \
	    status=$$?; \
	    if [ -s ".cache/molecule/$$s-verify.log" ]; then \
	      echo "=== molecule scenario $$s failed; the end of its verify report:"; \
	      tail -n 60 ".cache/molecule/$$s-verify.log"; \
	    fi; \
	    exit $$status; }; \
	done

test: lint pytest molecule

bench: deps
	bench/run

# --- cleaning -------------------------------------------------------------

clean:
	-@test -x $(VENV)/bin/ansible-playbook && $(VENV)/bin/ansible-playbook lab/down.yml >/dev/null
	rm -rf .cache/molecule .pytest_cache .ruff_cache

distclean: clean
	rm -rf $(VENV) .cache
	-podman images --format '{{.Repository}}:{{.Tag}}' | grep '^localhost/halfbridge-lab:' | xargs -r podman rmi -f

# MultinotesAI infrastructure: the two commands a newcomer needs are `make demo` and
# `make test`. Everything else is a piece of those. See README.md.
SHELL := /bin/bash
.DEFAULT_GOAL := help
VENV := .venv
BIN := $(VENV)/bin
PY ?= python3
# Plain logs: CI reads them as text.
export ANSIBLE_FORCE_COLOR := 0
export PY_COLORS := 0
export NO_COLOR := 1
export ANSIBLE_NOCOLOR := 1
export PATH := $(CURDIR)/$(BIN):$(PATH)

HARNESS := $(PY) molecule/_harness/harness.py
ALL_SCENARIOS := $(sort $(patsubst molecule/%/molecule.yml,%,$(wildcard molecule/*/molecule.yml)))
# The controller's dependency audit in `make lint`: the local advisory endpoint (harness.py osv).
OSV_URL ?= http://127.0.0.1:8486/v1/query
PLAYBOOKS := site.yml $(wildcard playbooks/*.yml)

.PHONY: help venv harness harness-engine harness-osv images demo-images lint syntax pytest scenario test test-matrix demo demo-down clean loadtest bench

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(BIN)/.installed: requirements.txt constraints.txt
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements.txt -c constraints.txt
	@touch $@

venv: $(BIN)/.installed ## Create .venv with the pinned controller packages

harness: harness-engine harness-osv ## Start (or reuse) the Docker engine, the apt cache and the local advisory endpoint

harness-engine:
	@$(HARNESS) engine
	@$(HARNESS) cache

# The advisory endpoint runs on the venv's Python (PyYAML, packaging).
harness-osv: venv
	@$(HARNESS) osv

images: harness ## Build the Debian 12/13 test-host images whose recipe changed
	@$(HARNESS) images

# ansible-lint judges task names against ansible-core's own plugins: with the project's
# ansible.legacy.copy/template overrides (plugins/action) on its path it calls their
# canonical name the short one and flags every `ansible.legacy.template` it already accepts
# for the builtin. The overrides take ansible-core's arguments unchanged.
lint: venv ## yamllint, ansible-lint (production profile), secrets scan, pinned collections, collection build, EE context, dependency audit
	yamllint --strict .
	ANSIBLE_ACTION_PLUGINS=$(CURDIR)/.cache/lint-sees-ansible-core-actions ansible-lint
	$(PY) molecule/_harness/check_collections.py
	ansible-galaxy collection build --force --output-path .cache/collection .
	ansible-builder create --file execution-environment.yml --context .cache/ee --output-filename Containerfile
	git ls-files -z | xargs -0 detect-secrets-hook --baseline .secrets.baseline
	@$(HARNESS) osv
	@for f in requirements.txt constraints.txt; do \
	  $(BIN)/python roles/app/files/dependency_audit.py --requirements $$f --osv-url $(OSV_URL) \
	    --allowlist-file audit-allowlist.yml >/dev/null || exit 1; echo "dependency audit ok: $$f"; done

syntax: venv ## Syntax-check every playbook against every inventory
	@set -e; for inv in inventories/*/; do for pb in $(PLAYBOOKS); do \
	  ansible-playbook -i $$inv --syntax-check $$pb >/dev/null; echo "syntax ok: $$pb ($$inv)"; done; done

pytest: venv ## The controller-side tests (repository layout, variables, harness)
	pytest -q molecule/_harness/tests

scenario: venv images ## One Molecule scenario, full sequence: make scenario S=<name>
	@test -n "$(S)" || { echo "usage: make scenario S=<one of: $(ALL_SCENARIOS)>"; exit 2; }
	molecule test -s $(S)

test: venv images ## Everything: lint, syntax, pytest, every scenario; one summary line
	@$(PY) molecule/_harness/testall.py

test-matrix: venv ## Every scenario on both Debian 12 and 13 (see README)
	@MULTINOTES_MATRIX=full $(PY) molecule/_harness/testall.py

# The Debian versions the demo's containers run (demo/containers.yml names their images):
# `make demo` builds only those, not every test image.
DEMO_DEBIAN = $(sort $(shell sed -n 's/^ *image: *multinotes-debian:\([0-9][0-9]*\) *$$/\1/p' demo/containers.yml))

demo-images: harness-engine
	@test -n "$(DEMO_DEBIAN)" || { echo "make demo: demo/containers.yml names no multinotes-debian:<version> image" >&2; exit 1; }
	@MULTINOTES_DEBIAN="$(DEMO_DEBIAN)" $(HARNESS) images

# The venv (pip, from PyPI) with the advisory endpoint on it, and the engine and images (apt,
# debootstrap), need nothing from each other: on a fresh machine they download side by side.
demo: ## Converge the stack into local containers and print the URL
	@$(MAKE) --no-print-directory -j2 --output-sync=target harness-osv demo-images
	ansible-playbook molecule/_harness/create.yml -e @demo/containers.yml
	@mkdir -p .cache/demo
	ansible-playbook -i inventories/local molecule/_harness/ops.yml
	ansible-playbook -i inventories/local site.yml
	ansible-playbook -i inventories/local playbooks/backup.yml
	@umask 077; printf 'backup_restore_identity: %s\n' "$$(docker exec multinotes-demo-ops grep -v '^#' /root/backup.key)" > .cache/demo/restore-key.yml
	ansible-playbook -i inventories/local playbooks/restore.yml --limit db -e @.cache/demo/restore-key.yml -e backup_restore_to=latest
	@rc=0; ansible-playbook -i inventories/local playbooks/launch_check.yml || rc=$$?; \
	  $(PY) molecule/_harness/demo_report.py; exit $$rc

# The address the demo's nginx sees this machine's requests come from: its network's gateway.
DEMO_CLIENT = docker network inspect multinotes-demo -f '{{range .IPAM.Config}}{{.Gateway}}{{end}}'
# nginx's tasks alone (the config reads the package facts): how the capacity run exempts and restores.
NGINX_ONLY = ansible-playbook -i inventories/local playbooks/web.yml --tags nginx_packages,nginx_config

loadtest: venv ## Load test the demo: make loadtest SCENARIO=baseline|stress|spike|endurance|all|capacity (see README, "Load tests")
ifeq ($(SCENARIO),capacity)
	@# The generator exempt from the per-client limits for the run only (README, "Capacity"), then restored.
	$(NGINX_ONLY) -e '{"nginx_limit_exempt_sources": ["'"$$($(DEMO_CLIENT))"'"]}'
	@rc=0; ansible-playbook -i inventories/local playbooks/loadtest.yml -e loadtest_scenario=capacity || rc=$$?; \
	  $(NGINX_ONLY); exit $$rc
else
	ansible-playbook -i inventories/local playbooks/loadtest.yml -e loadtest_scenario=$(or $(SCENARIO),baseline)
endif

bench: venv ## The benchmarks against the demo (not part of make test; replaces the demo container)
	@bash benchmarks/run_all.sh

demo-down: venv ## Remove the demo's containers
	ansible-playbook molecule/_harness/destroy.yml -e @demo/containers.yml

clean: demo-down ## Remove the demo and the venv (images and the apt cache stay)
	rm -rf $(VENV) .cache

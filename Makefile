# The handful of commands. Everything runs from .venv, which `make install` creates.
PY := .venv/bin/python
SERVICES := $(PY) -m scripts.services

.PHONY: install test demo demo-down bench lint model services-up services-down services-status clean sdk-kotlin

install:
	bash scripts/bootstrap.sh

test: install
	$(PY) -m pytest -q

# The Kotlin/JVM client SDK against the real server (also part of `make test` when kotlinc and JUnit 5 are there).
sdk-kotlin: install
	$(PY) -m pytest -q tests/test_client_kotlin.py

lint: install
	.venv/bin/ruff check .
	.venv/bin/mypy roadmon_contract fleet_server edge_agent

demo: install
	$(PY) -m scripts.demo up

demo-down: install
	$(PY) -m scripts.demo down

bench: install
	$(PY) -m bench.run_all

model:
	EXTRAS=edge,lab,server,dev,train bash scripts/bootstrap.sh
	$(PY) -m models.train --all

services-up: install
	$(SERVICES) up

services-down: install
	$(SERVICES) down

services-status: install
	$(SERVICES) status

# Stops the services and deletes their data: the state folder ($$ROADMON_STATE, .state) and a cluster kept under
# /var/tmp when the postgres user cannot reach the checkout.
clean:
	if [ -x $(PY) ]; then $(SERVICES) purge; else rm -rf .state; fi

# Longhaul. `make run` starts the whole stack; `make test` runs the tests. Both install what is missing.
# Generated protobuf code is built here into gen/ (git-ignored), never committed.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
GENERATED := gen/.generated
PROTOS := $(shell find protos -name '*.proto')
VENDORED_PROTOS := $(shell find third_party -name '*.proto')

.PHONY: install run test lint proto clean

install: $(GENERATED)

# Debian packages: redis-server (the run command's fallback Redis, and the tests' own) and nginx
# (the tests put gateway/nginx.conf in front of Envoy). Installed only when missing.
$(VENV)/.system:
	@missing=""; \
	command -v redis-server >/dev/null || missing="$$missing redis-server"; \
	command -v nginx >/dev/null || test -x /usr/sbin/nginx || missing="$$missing nginx-light"; \
	if [ -n "$$missing" ]; then \
		echo "installing$$missing with apt-get"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
		if command -v service >/dev/null; then service nginx stop >/dev/null 2>&1 || true; fi; \
	fi
	@test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	@touch $@

$(INSTALLED): $(VENV)/.system requirements.txt requirements-dev.txt pyproject.toml
	$(PY) -m pip install -q --disable-pip-version-check -r requirements-dev.txt
	@touch $@

# The descriptor set (gen/longhaul.pb) is what Envoy's REST transcoder reads.
$(GENERATED): $(INSTALLED) $(PROTOS) $(VENDORED_PROTOS) Makefile
	rm -rf gen && mkdir -p gen
	$(PY) -m grpc_tools.protoc -Iprotos -Ithird_party/googleapis \
		--python_out=gen --grpc_python_out=gen --pyi_out=gen $(PROTOS)
	# The transcoder prints error details (google.rpc.BadRequest) as JSON only if it knows their type.
	$(PY) -m grpc_tools.protoc -Iprotos -Ithird_party/googleapis \
		--include_imports --descriptor_set_out=gen/longhaul.pb $(PROTOS) google/rpc/error_details.proto
	$(PY) -m pip install -q --disable-pip-version-check --no-deps -e .
	@touch $@

proto: $(GENERATED)

run: install
	$(PY) -m devstack

test: install lint
	$(PY) -m pytest

lint: $(INSTALLED)
	$(VENV)/bin/buf lint

clean:
	rm -rf gen .data .pytest_cache

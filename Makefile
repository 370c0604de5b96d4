# taglock: common tasks. `make test` is the one command that installs what the
# machine lacks and runs every test; CI runs it through .ci/run.

GO      ?= go
BIN     ?= bin
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
# Build tags, e.g. make build GOTAGS=gcs for the embedded registry's Google
# Cloud Storage driver (left out by default: 13 MiB of RSS for everyone).
GOTAGS  ?=
# Extra arguments for `make run`, e.g. make run ARGS='--upstream http://127.0.0.1:5001'
ARGS    ?=

.PHONY: help run build test test-short bench deps

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-11s %s\n", $$1, $$2}'

run: ## serve an immutable registry on 127.0.0.1:5000 (data in ./taglock-data)
	$(GO) run ./cmd/taglock serve $(ARGS)

build: ## build bin/taglock
	$(GO) build -tags "$(GOTAGS)" -ldflags "-X main.version=$(VERSION)" -o $(BIN)/taglock ./cmd/taglock

test: ## install missing tools, then run gofmt, vet, unit, integration and end-to-end tests
	bash scripts/test.sh

test-short: ## unit and in-process integration tests only (no tools, no Docker)
	$(GO) test ./...

bench: ## benchmarks: taglock against the same upstream direct
	bash scripts/bench.sh

deps: ## install the test tools (apt packages, crane, oras, regctl, registry, conformance, helm)
	bash scripts/install-deps.sh

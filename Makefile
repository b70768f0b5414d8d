# Postflow's two commands are `make run` and `make test`; the rest serve
# development. Everything runs with the Go toolchain and the tools pinned in
# go.mod (buf, protoc plugins) and tools/lint/go.mod (golangci-lint).

GO        ?= go
GOTEST    ?= $(GO) test
TESTFLAGS ?= -race -timeout 14m
LINT       = $(GO) tool -modfile=tools/lint/go.mod golangci-lint

.PHONY: run build test deps proto proto-check lint vet fmt clean

run: ## start every role on the embedded NATS, with the mailbox simulator
	$(GO) run ./services/postflow serve

build:
	$(GO) build -o bin/postflow ./services/postflow

test: deps ## install what the tests need, then run every test
	$(GOTEST) $(TESTFLAGS) ./...

# Tests start their own servers; redis-server is the one outside dependency.
deps:
	@command -v redis-server >/dev/null 2>&1 || { \
		echo "redis-server not found: installing it with apt-get"; \
		if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq redis-server >/dev/null; \
	}
	@command -v redis-server >/dev/null 2>&1 || { echo "redis-server still missing: install it (Debian: apt-get install redis-server)"; exit 1; }

proto: ## regenerate the committed protobuf code
	$(GO) tool buf generate

proto-check: proto ## fail if the committed generated code is stale
	git diff --exit-code -- 'proto/*.pb.go'

lint: ## buf lint, buf breaking against main, gofmt, go vet, golangci-lint
	$(GO) tool buf lint
	@if git rev-parse --verify -q main >/dev/null && git cat-file -e main:buf.yaml 2>/dev/null; then \
		$(GO) tool buf breaking --against '.git#branch=main'; fi
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); echo "gofmt needed"; exit 1; }
	$(GO) vet ./...
	$(LINT) run ./...

fmt:
	gofmt -w $$(git ls-files '*.go')

clean:
	rm -rf bin postflow-data

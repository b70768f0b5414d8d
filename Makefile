# Postflow's two commands are `make run` and `make test`; the rest serve
# development. Everything runs with the Go toolchain and the tools pinned in
# go.mod (buf, protoc plugins) and tools/lint/go.mod (golangci-lint).

GO        ?= go
GOTEST    ?= $(GO) test
TESTFLAGS ?= -race -timeout 14m
LINT       = $(GO) tool -modfile=tools/lint/go.mod golangci-lint

.PHONY: run build test deps proto proto-check lint vet fmt clean bench bench-deps

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

# The side-by-side comparison (issue #3): 20,000 messages of 2 KiB through
# Postflow (default sync and sync_interval: always), Postfix and Haraka, then
# Postflow alone at 1,000 msgs/s offered (latency) and with 100 KiB bodies.
# Results: loadtest/results/*.json, *.png, *.pprof and docs/benchmarks.md.
BENCH = $(GO) run ./loadtest --docs docs/benchmarks.md --plot
# Profiles come from a run of their own: sampling costs Postflow about a
# third of its throughput on 2 cores, which would skew the comparison.
bench: bench-deps
	$(BENCH) --compare --messages 20000 --size 2048 --concurrency 64 --out loadtest/results/latest.json
	$(BENCH) --systems postflow --messages 20000 --size 2048 --concurrency 64 --rate 1000 --out loadtest/results/latency.json
	$(BENCH) --systems postflow --messages 10000 --size 102400 --concurrency 64 --out loadtest/results/large.json
	$(GO) run ./loadtest --systems postflow --messages 20000 --size 2048 --concurrency 64 --profile --out loadtest/results/profile.json

bench-deps:
	@command -v gnuplot >/dev/null 2>&1 || { \
		echo "gnuplot not found: installing gnuplot-nox with apt-get"; \
		if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends gnuplot-nox >/dev/null; \
	}

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

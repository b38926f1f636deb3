# Courier build. `make run` starts a node with embedded defaults; `make test`
# runs every test with the race detector; `make check` is what CI runs.

GO        ?= go
BIN       := $(CURDIR)/bin
PROTO_DIR := messages/proto
PROTOS    := $(shell find $(PROTO_DIR) -name '*.proto' | sort)
GOPKGS    := ./...
FUZZTIME  ?= 500000x

export PATH := $(BIN):$(PATH)

.PHONY: build run cluster chaos test check bench proto fuzz tools consul clean vet lint fmt tidy-check proto-check proto-lint release

build:
	$(GO) build -ldflags "-X main.version=$(VERSION)" -o $(BIN)/ ./cmd/...

run: build
	$(BIN)/courier --dev

# Three nodes with different roles on a Consul agent, on loopback, under
# a supervisor that starts again whatever exits (scripts/cluster.sh says
# how to reach them; Ctrl-C stops everything).
cluster:
	@scripts/cluster.sh

# Faults under load against a running `make cluster` (in another
# terminal; STORE=postgres for the shared store), then the exact ledger:
# courier-bench chaos, 10 minutes by default (CHAOS_ARGS="--duration 2m").
chaos: build
	$(BIN)/courier-bench chaos $(CHAOS_ARGS)

# The race detector on everything (the end-to-end tests on Pebble, the
# store's contract on Pebble and PostgreSQL), the end-to-end tests again on
# PostgreSQL, then a short fixed run of the frame decoder's fuzz target
# (make fuzz runs it longer). Tests start a throwaway PostgreSQL of
# Debian's package, installed with apt-get if missing (testkit/postgres.go).
test:
	@# The Consul agent the cluster tests run, built first (minutes on a
	@# fresh clone); without it (offline) they skip, unless CI=true.
	@scripts/consul.sh >/dev/null || [ "$$CI" != true ] || exit 1
	$(GO) test -race -count=1 -timeout 15m $(GOPKGS)
	COURIER_TEST_STORE=postgres $(GO) test -race -count=1 -timeout 15m ./cluster/node/
	# A count, not a duration: go1.26's fuzz coordinator can fail a run
	# with "context deadline exceeded" at a -fuzztime deadline
	# (golang/go#75804, fixed in go1.27); 40,000 inputs take 5-10 s here.
	$(GO) test -run '^$$' -fuzz FuzzParser -fuzztime 40000x ./messages/

# The codec's Go benchmarks, then the standard load set of courier-bench
# against a fresh node (cmd/courier-bench/bench.sh; a few minutes).
bench: build
	$(GO) test -run '^$$' -bench . -benchmem ./messages/... ./cmd/courier-bench/internal/wire/
	BIN=$(BIN) cmd/courier-bench/bench.sh

# Counts, not durations (see test): go1.26's fuzz coordinator can fail a
# run at a -fuzztime deadline. FUZZTIME=2000000x runs longer.
fuzz:
	$(GO) test -run '^$$' -fuzz FuzzParser -fuzztime $(FUZZTIME) ./messages/
	$(GO) test -run '^$$' -fuzz FuzzHeaderRoundTrip -fuzztime 100000x ./messages/

# Generator versions are pinned in tools/go.mod; protoc comes from Debian's
# protobuf-compiler (libprotoc 3.21.12).
tools: $(BIN)/protoc-gen-go $(BIN)/protoc-gen-go-grpc $(BIN)/staticcheck

$(BIN)/protoc-gen-go $(BIN)/protoc-gen-go-grpc $(BIN)/staticcheck: tools/go.mod tools/go.sum
	cd tools && $(GO) build -o $(BIN)/ tool

# The Consul agent of the tests and of `make cluster`: v1.13.9 built from
# the module proxy (tools/consul) once per machine; prints its path.
consul:
	@scripts/consul.sh

proto: $(BIN)/protoc-gen-go $(BIN)/protoc-gen-go-grpc
	@command -v protoc >/dev/null || { echo "protoc missing: apt-get install -y protobuf-compiler"; exit 1; }
	protoc -I $(PROTO_DIR) \
		--go_out=. --go_opt=module=github.com/courier-im/courier \
		--go-grpc_out=. --go-grpc_opt=module=github.com/courier-im/courier \
		$(PROTOS)

check: fmt vet lint tidy-check proto-check proto-lint

fmt:
	@out=$$(find . -name '*.go' ! -name '*.pb.go' ! -path './bin/*' ! -path './.cache/*' -print0 | xargs -0 gofmt -l); \
	if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

vet:
	$(GO) vet $(GOPKGS)

lint: $(BIN)/staticcheck
	$(BIN)/staticcheck $(GOPKGS)

tidy-check:
	@$(GO) mod tidy -diff || { echo "go.mod/go.sum are not tidy: run go mod tidy"; exit 1; }

# Regenerates into a scratch directory and compares with the committed code.
proto-check: $(BIN)/protoc-gen-go $(BIN)/protoc-gen-go-grpc
	@command -v protoc >/dev/null || { echo "protoc missing: apt-get install -y protobuf-compiler"; exit 1; }
	@tmp=$$(mktemp -d); trap 'rm -rf $$tmp' EXIT; \
	protoc -I $(PROTO_DIR) \
		--go_out=$$tmp --go_opt=module=github.com/courier-im/courier \
		--go-grpc_out=$$tmp --go-grpc_opt=module=github.com/courier-im/courier \
		$(PROTOS) || exit 1; \
	for f in $$(cd $$tmp && find . -name '*.go'); do \
		cmp -s $$tmp/$$f $$f || { echo "generated code is stale: $$f (run make proto)"; exit 1; }; \
	done; \
	tracked=$$(git ls-files 'messages/*.pb.go') && [ -n "$$tracked" ] || { echo "git ls-files found no generated files"; exit 1; }; \
	for f in $$tracked; do \
		[ -f $$tmp/$$f ] || { echo "generated file without a .proto: $$f"; exit 1; }; \
	done

# The .proto files' packages and the options of other languages'
# generators (java_package, objc_class_prefix, swift_prefix,
# csharp_namespace, ...), read from the descriptors protoc produced for the
# generated code (which proto-check keeps fresh).
proto-lint:
	$(GO) test -count=1 -run '^TestProtoOptions$$' ./messages/

# Versioned static binaries for Linux servers: dist/courier-VERSION-linux-ARCH.tar.gz
# (courier, courierctl, courier-bench) and SHA256SUMS. `courier version`
# prints VERSION (default: git describe).
VERSION       ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
DIST          ?= $(CURDIR)/dist
RELEASE_ARCHS ?= amd64 arm64
RELEASE_CMDS  ?= ./cmd/courier ./cmd/courierctl ./cmd/courier-bench

release:
	@rm -rf $(DIST) && mkdir -p $(DIST)
	@set -e; for arch in $(RELEASE_ARCHS); do \
		dir=courier-$(VERSION)-linux-$$arch; \
		echo "building $$dir"; \
		CGO_ENABLED=0 GOOS=linux GOARCH=$$arch $(GO) build -trimpath -buildvcs=false \
			-ldflags "-s -w -X main.version=$(VERSION)" -o $(DIST)/$$dir/ $(RELEASE_CMDS); \
		cp README.md deploy/courier.service $(DIST)/$$dir/; \
		tar -C $(DIST) -czf $(DIST)/$$dir.tar.gz $$dir; \
	done
	@cd $(DIST) && sha256sum *.tar.gz > SHA256SUMS && cat SHA256SUMS

clean:
	rm -rf $(BIN) $(DIST)

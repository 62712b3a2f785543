# SPDX-License-Identifier: MIT
# icmplb — build, test and demo. Every target installs what it needs
# (Debian packages, Go modules) itself; `test` and `demo` need root.

SHELL := /bin/bash
GO    ?= go

# The BPF toolchain, set once for bpf2go (see bpf/gen.go).
export BPF2GO_CC     := clang-16
export BPF2GO_STRIP  := llvm-strip-16
export BPF2GO_CFLAGS := -O2 -g -Wall -Werror

VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
BIN     := bin/icmplb
LDFLAGS := -s -w -X main.version=$(VERSION)

# Debian packages: the BPF toolchain, the network tools the tests and the demo
# drive, and Prometheus's promtool/server for the rule and end-to-end checks.
DEBS := clang-16 llvm-16 iproute2 iputils-ping procps util-linux mount ethtool tcpdump \
        prometheus ca-certificates git nftables

.PHONY: all deps build generate check-generate test lint bench fuzz demo clean

all: build

deps:
	@./.ci/install-deps $(DEBS)
	@$(GO) mod download

build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/icmplb

generate: deps
	cd bpf && $(GO) generate ./...

lint:
	$(GO) vet ./...
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	  if [ -n "$$out" ]; then echo "gofmt needed: $$out"; exit 1; fi
	$(GO) tool staticcheck ./...

# Tests include the BPF packet tests, the stale-object check of bpf/ and the
# end-to-end tests in network namespaces: they need root.
test: deps build lint
	ICMPLB_BIN=$(CURDIR)/$(BIN) ICMPLB_REQUIRE_PRIVILEGED=$${CI:-} \
	  $(GO) test -p 1 -count=1 -timeout 12m ./...

# Fuzzes the XDP program through BPF_PROG_TEST_RUN (bpf/fuzz_test.go) for
# FUZZTIME; needs root (fails rather than skips without it). `test` runs only
# the seed corpus. A finding is saved in bpf/testdata/fuzz/FuzzXDP/ and then
# fails `go test ./bpf/` until fixed.
FUZZTIME ?= 2m
fuzz: deps
	ICMPLB_REQUIRE_PRIVILEGED=1 $(GO) test -run '^$$' -fuzz '^FuzzXDP$$' -fuzztime $(FUZZTIME) ./bpf/

# One package at a time: the end-to-end throughput benchmark
# (internal/e2ebench, needs root; docs/testing.md) pins its generator to a
# CPU and must not share the machine with another package's benchmarks.
bench: deps build
	ICMPLB_BIN=$(CURDIR)/$(BIN) $(GO) test -p 1 -timeout 30m -run '^$$' -bench . -benchmem ./...

demo: deps build
	$(GO) run ./cmd/icmplb-demo -bin $(CURDIR)/$(BIN)

clean:
	rm -rf bin

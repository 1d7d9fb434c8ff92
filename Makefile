# tunnel: tunneld (server) and tunnelc (client).
# `make demo` and `make test` are the two commands the README promises.

GO          ?= go
BIN         ?= bin
VERSION     ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
COMMIT      ?= $(shell git rev-parse --short=12 HEAD 2>/dev/null)$(shell git diff --quiet HEAD 2>/dev/null || echo -dirty)
LDFLAGS     := -s -w -X github.com/tunnel-dev/tunnel/internal/cli.Version=$(VERSION) -X github.com/tunnel-dev/tunnel/internal/cli.Commit=$(COMMIT)
STATICCHECK := honnef.co/go/tools/cmd/staticcheck@v0.8.2
# Fault tests sleep through keepalive timeouts; run many at once.
TESTFLAGS   ?= -race -count=1 -parallel 16 -timeout 20m

.PHONY: all build install release test stress fuzz lint demo bench bench-go bench-web bench-wan bench-fleet bench-lfn clean

all: build

build:
	$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/ ./cmd/tunneld ./cmd/tunnelc

# The binaries, the systemd units (ExecStart and config paths rewritten to
# PREFIX and SYSCONFDIR), the example configs (kept if already there) and
# shell completions, under DESTDIR for packagers.
PREFIX     ?= /usr/local
SYSCONFDIR ?= /etc
UNITDIR    ?= $(PREFIX)/lib/systemd/system
install: build
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(UNITDIR) $(DESTDIR)$(SYSCONFDIR)/tunnel \
		$(DESTDIR)$(PREFIX)/share/bash-completion/completions \
		$(DESTDIR)$(PREFIX)/share/zsh/site-functions \
		$(DESTDIR)$(PREFIX)/share/fish/vendor_completions.d
	install -m 0755 $(BIN)/tunneld $(BIN)/tunnelc $(DESTDIR)$(PREFIX)/bin/
	for u in tunneld.service tunnelc.service tunnelc@.service; do \
		sed -e 's|/usr/local/bin/|$(PREFIX)/bin/|g' -e 's|/etc/tunnel/|$(SYSCONFDIR)/tunnel/|g' configs/$$u >$(DESTDIR)$(UNITDIR)/$$u && \
		chmod 0644 $(DESTDIR)$(UNITDIR)/$$u || exit 1; \
	done
	@# Readable by the units' DynamicUser; tokens belong in the units'
	@# EnvironmentFile (read by systemd as root) or a token_file.
	for c in tunneld.toml tunnel.toml; do \
		[ -e $(DESTDIR)$(SYSCONFDIR)/tunnel/$$c ] || install -m 0644 configs/$$c $(DESTDIR)$(SYSCONFDIR)/tunnel/$$c || exit 1; \
	done
	for b in tunneld tunnelc; do \
		$(BIN)/$$b completion bash >$(DESTDIR)$(PREFIX)/share/bash-completion/completions/$$b && \
		$(BIN)/$$b completion zsh >$(DESTDIR)$(PREFIX)/share/zsh/site-functions/_$$b && \
		$(BIN)/$$b completion fish >$(DESTDIR)$(PREFIX)/share/fish/vendor_completions.d/$$b.fish || exit 1; \
	done

# Static binaries for the platforms each daemon runs on (tunnelc also on
# routers, Raspberry Pis, macOS and Windows), named NAME-VERSION-OS-ARCH,
# with SHA256SUMS, in DIST.
DIST          ?= dist
SERVER_TARGETS := linux/amd64 linux/arm64 linux/arm
CLIENT_TARGETS := linux/amd64 linux/arm64 linux/arm darwin/amd64 darwin/arm64 windows/amd64
release:
	rm -rf $(DIST) && mkdir -p $(DIST)
	@set -e; for b in tunneld tunnelc; do \
		targets="$(SERVER_TARGETS)"; [ $$b = tunnelc ] && targets="$(CLIENT_TARGETS)"; \
		for t in $$targets; do \
			os=$${t%/*}; arch=$${t#*/}; ext=; [ $$os = windows ] && ext=.exe; \
			echo "release: $$b $$os/$$arch"; \
			CGO_ENABLED=0 GOOS=$$os GOARCH=$$arch $(GO) build -trimpath -ldflags '$(LDFLAGS)' \
				-o $(DIST)/$$b-$(VERSION)-$$os-$$arch$$ext ./cmd/$$b; \
		done; \
	done
	cd $(DIST) && sha256sum -- * >SHA256SUMS

lint:
	@out=$$(gofmt -l cmd internal examples third_party); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) -C third_party/yamux vet .
	$(GO) run $(STATICCHECK) ./...
	./scripts/check-imports
	@# tunnelc runs on laptops: both daemons must build off Linux.
	GOOS=darwin $(GO) build ./...
	GOOS=windows $(GO) build ./...

# The yamux fork (third_party/yamux) is its own module, tested on its own:
# its tests check the streams' window books from inside the package.
# pebble (Let's Encrypt's ACME test server, for the certificate test) is
# built first, into bin/: built during the tests it took the CPU the
# timing-sensitive fault tests running beside it need.
PEBBLE := github.com/letsencrypt/pebble/v2/cmd/pebble@v2.10.3
test: lint
	./scripts/test-deps
	GOBIN=$(CURDIR)/bin $(GO) install $(PEBBLE)
	PEBBLE=$(CURDIR)/bin/pebble $(GO) test $(TESTFLAGS) ./...
	$(GO) -C third_party/yamux test $(TESTFLAGS) .

# The unit and e2e packages many times over with -race, then the whole
# suite with every core kept busy (scripts/stress says more). STRESS_COUNT
# sets the repeat count.
stress:
	./scripts/stress

# Each fuzz test for FUZZTIME (default 30s): the frame, stream header and
# config decoders. make test runs their seed inputs only; what a run finds
# lands in testdata/fuzz as a new seed.
FUZZTIME ?= 30s
FUZZ := ./internal/protocol:FuzzReadFrame ./internal/protocol:FuzzStreamHeader \
	./internal/config:FuzzParseServer ./internal/config:FuzzParseClient
fuzz:
	@for t in $(FUZZ); do \
		pkg=$${t%%:*}; name=$${t#*:}; \
		echo "fuzz: $$name ($$pkg, $(FUZZTIME))"; \
		$(GO) test -run '^$$' -fuzz "^$$name\$$" -fuzztime $(FUZZTIME) $$pkg || exit 1; \
	done

# Go benchmarks of the hot pieces, then the end-to-end table: the built
# binaries against direct, splice relay and copying relay on loopback, in one
# run, with ratios to relay-copy. ROUNDS=3 for medians; BENCH_TESTS to pick;
# SYSTEMS to add tunnel-tls (the same with a TLS session).
SYSTEMS ?= direct relay relay-copy tunnel
bench: build bench-go bench-web
	./scripts/test-deps iperf3
	SYSTEMS="$(SYSTEMS)" BASELINE=relay-copy ROUNDS=$${ROUNDS:-1} bench/compare.sh

# The session's path capped at 8 Mbit/s in network namespaces (root):
# new connections and echoes timed while bulk saturates it.
bench-wan: build
	$(GO) test -run '^$$' -bench BenchmarkWAN -benchtime 1x -timeout 20m ./internal/fault

bench-fleet: build
	$(GO) test -run '^$$' -bench BenchmarkFleet -benchtime 1x -timeout 30m ./internal/fleet

bench-lfn: build
	$(GO) test -run '^$$' -bench BenchmarkLongFatLink -benchtime 1x -timeout 20m ./internal/e2e

# HTTP requests per second through an http tunnel against a tcp tunnel to
# the same service, keep-alive, 32 connections, in one process.
bench-web:
	$(GO) test -run '^$$' -bench BenchmarkWebTunnel -benchtime 1x -timeout 10m ./internal/e2e

bench-go:
	$(GO) test -run '^$$' -bench . -benchmem -count 1 ./internal/proxy ./internal/mux ./internal/protocol ./internal/rawio

demo: build
	$(GO) run ./examples/demo -bin $(BIN)

clean:
	rm -rf $(BIN)
	$(GO) clean -testcache

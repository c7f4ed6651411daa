# The commands a person types. `make help` lists them.
SHELL := /bin/bash
export PATH := $(CURDIR)/.tools/bin:$(PATH)
CARGO ?= cargo
REGISTRY ?= parley.local
# The images' version: the chart's appVersion, which its default values name (image tags default
# to it). Defined there only; chart-lint checks it is the workspace's version.
VERSION := $(shell sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\} *$$/\1/p' charts/parley-operator/Chart.yaml)
TAG ?= $(VERSION)

.DEFAULT_GOAL := help
.PHONY: help deps build web run run-multi test lint crds chart-lint bench bench-memory bench-heap bench-ab bench-smoke soak fuzz e2e images image-test clean

help: ## List the targets
	@grep -hE '^[a-z][a-z0-9-]*:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

deps: ## Install what the tests need (Debian packages, pinned Helm in .tools/bin); idempotent
	@./scripts/deps.sh

build: ## Build both binaries (release)
	$(CARGO) build --release --workspace

web: ## Build the web client into web/dist (npm ci when package-lock.json changed, then esbuild)
	@./scripts/web-build.sh

run: ## Start a standalone Home Server with the sample users and the web client (Ctrl-C stops it)
	@./scripts/run.sh

run-multi: ## A Front-End in front of two Home Servers on 127.0.0.1, mutual TLS between them (Ctrl-C stops)
	@./scripts/run-multi.sh

test: deps ## Everything CI runs: fmt, clippy, all tests, chart lint
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	@# The operator's scenarios run against a real kube-apiserver and etcd from KUBEBUILDER_ASSETS
	@# (under CI=true a missing set fails them); ../shared/k8s holds the binaries when it is beside us.
	if [ -z "$$KUBEBUILDER_ASSETS" ] && [ -f ../shared/k8s/unpack.sh ]; then \
	  assets=$$(bash ../shared/k8s/unpack.sh target/k8s-assets) && export KUBEBUILDER_ASSETS=$$assets || exit 1; \
	fi; \
	$(CARGO) test --workspace
	@$(MAKE) --no-print-directory chart-lint
	@$(MAKE) --no-print-directory shellcheck

lint: ## cargo fmt --check and clippy -D warnings
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

.PHONY: shellcheck
shellcheck: ## shellcheck every shell script
	shellcheck $$(git ls-files '*.sh') .ci/run

crds: ## Regenerate crds/ from the operator's types
	$(CARGO) run -q -p parley-operator -- crdgen --repo .

chart-lint: ## helm lint and helm template of the operator chart
	@./scripts/chart-lint.sh

bench: ## Benchmarks side by side with Kamailio (not part of test); BASELINE=<git rev> adds that build's Home Server column
	@if [ -x bench/run.sh ]; then ./bench/run.sh; else echo "bench: not built yet"; exit 1; fi

bench-memory: ## Memory (PSS) filled to MEMORY_SIZES (10000,100000,1000000) users with one subscription each; bench/results/memory.json (about 6 minutes)
	@./bench/run.sh --memory-only --memory-sizes $${MEMORY_SIZES:-10000,100000,1000000} --out bench/results --no-markdown

bench-heap: ## Heap profile (heaptrack) of a Home Server filled to USERS (100000) users: the sites holding the most at the peak, in bench/results/heap/sites.txt
	@./bench/heap-profile.sh

bench-ab: ## BASELINE=<rev>: Parley and that revision's fixed-rate rows alternated AB_ROUNDS (5) times; medians in bench/results/ab.json
	@./bench/run.sh --ab $${AB_ROUNDS:-5} --out bench/results --no-markdown

soak: ## SOAK_MINUTES (30) of REGISTER and MESSAGE at about 70% of the highest clean rates; flat memory, no failed call
	@./bench/run.sh --soak $${SOAK_MINUTES:-30} --out bench/results --no-markdown

fuzz: ## Every fuzz target for FUZZ_SECONDS (default 60) each; make test replays the corpus
	@./scripts/fuzz.sh

bench-smoke: ## A few seconds of every benchmark workload (cargo test runs it too)
	@./bench/run.sh --smoke

e2e: ## Against the cluster in KUBECONFIG (one-node cluster or kind; kind is created without one): images, helm install, a domain, SIP
	@./e2e/run.sh

images: ## Server, operator and managed-directory images REGISTRY/parley-*:TAG (TAG: the chart's appVersion; BINARIES=host takes built ones)
	REGISTRY=$(REGISTRY) TAG=$(TAG) VERSION=$(VERSION) ./scripts/build-images.sh

image-test: ## Build the three images (binaries from this host) and run each; starts its own dockerd when none runs
	@command -v dockerd >/dev/null 2>&1 || docker info >/dev/null 2>&1 || ./scripts/apt-install.sh docker.io \
	  || echo "image-test: could not install docker.io"
	@./scripts/apt-install.sh debootstrap sipsak ldap-utils openssl binutils curl \
	  || echo "image-test: could not install the Debian packages it uses"
	TAG=$(TAG) ./e2e/image-test.sh

clean: ## Remove build output and installed tools
	$(CARGO) clean
	rm -rf .tools .parley-demo .parley-demo-multi web/node_modules web/dist

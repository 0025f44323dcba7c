# segment-relay — every target is one line; `make help` lists them.
.DEFAULT_GOAL := help
SHELL := /bin/bash
CARGO ?= cargo
# Partitions of the default topics created by kafka-up (delivery scales up to this many workers).
PARTITIONS ?= 6
export KAFKA_PARTITIONS := $(PARTITIONS)
# Nodes of the local Kafka of kafka-up/-down/-reset: 1 (127.0.0.1:9092, what make test and make
# demo use) or 3 (a cluster on 127.0.0.1:19092,19094,19096, beside the single node).
BROKERS ?= 1

.PHONY: help demo demo-check deploy-check bench chaos test lint build image image-push image-check kafka-up kafka-down kafka-reset kafka-lifecycle-check

help: ## List the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-22s %s\n", $$1, $$2}'

demo: ## The whole system end to end for DEMO_SECONDS (default 60), then a per-destination summary
	deploy/local/demo.sh

test: lint kafka-lifecycle-check build ## Lint, start Kafka, build, run every test (unit, integration, end-to-end, a benchmark smoke, deploy checks with a short demo)
	$(CARGO) test --workspace --locked
	@out=$$($(CARGO) test --locked -q -p segment-relay-e2e --test chaos -- no-such-scenario 2>&1) && { echo "$$out"; echo "FAILED: the chaos harness ran no scenario and passed"; exit 1; }; grep -q "no scenario matches" <<<"$$out" || { echo "$$out"; exit 1; }
	BENCH_SCALE=smoke deploy/bench.sh
	deploy/test-bench-checks.sh
	$(MAKE) deploy-check

bench: ## Every benchmark (micro, delivery alone, destinations per delivery worker, qualifier alone, users and segments per qualifier, end to end on one broker and on three; release build); appends the figures to docs/BENCHMARKS.md
	deploy/bench.sh

# Issues 8 and 18 in one target: the long fault runs with exact accounting, on one broker and on
# three (their short form is part of `cargo test --workspace`), the fuzzers at 200,000 cases,
# the bad-input and security tests.
chaos: build ## Fault runs, long form (~90 min, own broker on 29092, own 3-node cluster on 29192): a partner failing six ways (503 for 10 min), one failing of 20, broker down, slow partner, kill -9, rolling restart; on 3 brokers: leader kill, coordinator kill, rolling restart, SIGSTOP, two down (ledgers in target/chaos-ledger.txt); then long fuzzing (~10 min) and the bad-input and security tests
	CHAOS_SCALE=long $(CARGO) test --locked -p segment-relay-e2e --test chaos -- --nocapture
	FUZZ_CASES=200000 $(CARGO) test --locked -p qualifier -p delivery --lib -- fuzz
	$(CARGO) test --locked -p segment-relay-e2e --test e2e -- secrets tls oauth bad_input lifecycle

demo-check: ## The demo, short and on debug binaries: fails on any contract violation or loss
	DEMO_SECONDS=15 DEMO_PROFILE=debug deploy/local/demo.sh

deploy-check: ## Kubernetes manifests, alert rules, Dockerfile, the image running the system (image-check), and every dashboard query against a short demo run
	deploy/check.sh

image: ## The OCI image localhost/segment-relay:<version> (and :dev) with buildah, from this checkout alone (nothing pulled); prints its size
	deploy/image/build.sh

image-push: ## Push the image make image built to IMAGE_DEST (a podman destination, e.g. docker://registry.example.com/segment-relay:0.1.0)
	deploy/image/push.sh

image-check: ## Build the image, run partner-sim, the qualifier and two delivery workers from it with podman against the local Kafka; every change must arrive, SIGTERM must drain
	deploy/image/check.sh

lint: ## rustfmt and clippy (warnings are errors)
	$(CARGO) fmt --all -- --check && $(CARGO) clippy --workspace --all-targets --locked -- -D warnings

build: ## Build every crate and binary (debug), as the end-to-end tests run them
	$(CARGO) build --workspace --bins --locked

kafka-up: ## Start the local Kafka (idempotent) and create the topics: one node on 127.0.0.1:9092, or BROKERS=3 for a three-node cluster on 19092/19094/19096
	KAFKA_NODES=$(BROKERS) deploy/local/kafka.sh up

kafka-down: ## Stop the local Kafka (BROKERS=3: the cluster); no Java process is left
	KAFKA_NODES=$(BROKERS) deploy/local/kafka.sh down

kafka-reset: ## Stop the local Kafka (BROKERS=3: the cluster) and wipe its data
	KAFKA_NODES=$(BROKERS) deploy/local/kafka.sh reset

kafka-lifecycle-check: ## Check kafka-up twice is a no-op and kafka-down leaves no JVM; leaves Kafka up
	deploy/local/check-lifecycle.sh

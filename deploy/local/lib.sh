# Shared by deploy/local/demo.sh and deploy/bench.sh (source it; set `tag` first): messages,
# the processes a script started (stopped on exit, also on Ctrl-C), readiness, metrics.
# shellcheck shell=bash

say() { echo "$tag: $*"; }
die() { echo "$tag: error: $*" >&2; exit 1; }

pids=()
cleanup() {
  local status=$?
  if ((${#pids[@]})); then
    kill -TERM "${pids[@]}" 2>/dev/null || true
    for _ in $(seq 1 150); do
      local alive=0
      for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
      ((alive)) || break
      sleep 0.1
    done
    kill -KILL "${pids[@]}" 2>/dev/null || true
    wait "${pids[@]}" 2>/dev/null || true
  fi
  # A script's own last chores, once its processes are gone (bench.sh stops its cluster).
  if declare -F after_cleanup >/dev/null; then after_cleanup || true; fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Fails if any of the given TCP ports on 127.0.0.1 is taken.
require_free_ports() {
  for port in "$@"; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      die "port $port is in use (another run still going?); stop it and try again"
    fi
  done
}

# wait_both_hold_partitions TOPIC LOG1 LOG2: waits (up to 60 s) until both delivery workers hold
# partitions of TOPIC after their last rebalance (their JSON logs). Load starts only then: were
# the second worker to join under load, partitions would move mid-run and their new owner
# would send again what was not committed yet (at-least-once). Such a re-send can bring a
# user's older change after a newer one, and these runs' ledgers allow no change out of order;
# moving partitions under load is what the chaos runs and tests/e2e/delivery/recovery.rs check.
wait_both_hold_partitions() {
  local deadline=$((SECONDS + 60)) log
  for log in "$2" "$3"; do
    until holds_partitions "$1" "$log"; do
      ((SECONDS < deadline)) || die "the two delivery workers did not both hold partitions of $1 within 60 s (see $log)"
      sleep 0.2
    done
  done
}
# holds_partitions TOPIC LOG: whether the worker holds partitions of TOPIC after its last
# rebalance (the `owned` field of its last "Partitions assigned/revoked" line).
holds_partitions() {
  local last
  last=$(grep -E "\"message\":\"Partitions (assigned|revoked)\.\".*\"topic\":\"$1\"" "$2" | tail -n 1)
  [[ $last == *'"owned":'* && $last != *'"owned":0,'* && $last != *'"owned":0}'* ]]
}

metrics() { curl -fsS "http://127.0.0.1:$1/metrics" 2>/dev/null || true; }
# Metrics text is read by one parser, the tests' own (`relay-bench metrics`; the semantics are
# defined in crates/testkit/src/scrape.rs): exact names, label matchers in any order, sums over
# every match, histogram quantiles as Prometheus' histogram_quantile, and a selector that matches
# nothing is an error, never 0. Set `bin` (the built binaries) first.
# sum TEXT SELECTOR… [--decimals N] [--absent TEXT]: the sum of the samples each selector
# (`name` or `name{label="value",…}`) matches in TEXT, on one line; whole numbers by default.
sum() { "$bin/relay-bench" metrics sum "${@:2}" <<<"$1"; }
# quantile TEXT Q HISTOGRAM [--since FILE] [--absent TEXT]: the Q-quantile of HISTOGRAM (its name
# without _bucket, and label matchers) in TEXT, in seconds with 3 decimals; ">BOUND" above the
# highest finite bucket, "-" without observations.
quantile() { "$bin/relay-bench" metrics quantile "${@:2}" <<<"$1"; }
# wait_ready ADMIN_PORT PID NAME LOG_DIR: until /readyz answers 200; fails if the process exits.
wait_ready() {
  for _ in $(seq 1 300); do
    curl -fsS "http://127.0.0.1:$1/readyz" >/dev/null 2>&1 && return 0
    kill -0 "$2" 2>/dev/null || die "$3 exited during start-up; see $4/$3.log"
    sleep 0.1
  done
  die "$3 not ready after 30 s; see $4/$3.log"
}
# ledger_until_balanced LEDGER_BIN OUT_FILE DEADLINE ARGS…: runs relay-ledger (output in
# OUT_FILE) until it balances, a failure other than a missing change shows (only a missing
# change can still arrive), or $SECONDS reaches DEADLINE; sets ledger_status (0 balanced,
# 1 not). Dies when the ledger cannot read its inputs: a missing input never reads as zero.
ledger_until_balanced() {
  local ledger=$1 out=$2 deadline=$3
  shift 3
  while true; do
    ledger_status=0
    "$ledger" "$@" >"$out" 2>&1 || ledger_status=$?
    ((ledger_status != 2)) || { cat "$out"; die "the ledger cannot read its inputs (above)"; }
    ((ledger_status == 0)) && return 0
    grep "FAIL:" "$out" | grep -qv "neither delivered" && return 0
    ((SECONDS < deadline)) || return 0
    sleep 2
  done
}

#!/usr/bin/env bash
# Known-bad runs of deploy/bench.sh (issue 12, items 4 and 6): each breaks one benchmark on
# purpose (BENCH_FAULT, the script's test hook) and must fail — exit non-zero with the
# message naming what went wrong — and append nothing to docs/BENCHMARKS.md. `make test` runs
# them after the benchmark smoke.
#
#   deploy/test-bench-checks.sh [stopped-delivery] [failing-partner] [slow-partner] [astray-input]
#                               [invalid-events] [invalid-events-scale] [stopped-delivery-cluster]
#                               [one-replica] [costly-qualifier]
#   (default: the first six)
#
#   stopped-delivery  e2e, both delivery workers stopped: the drain never completes and the
#                     run must say how many changes were missing after how long
#   failing-partner   e2e, partner-sim fails every request with 422 (permanent): every change
#                     is dead-lettered
#   slow-partner      e2e, partner-sim answering in 45–50 ms instead of 1–5: the step must say
#                     what share of delivery's requests took over 40 ms
#   astray-input      e2e-kafka, loadgen producing to a topic no qualifier reads: the run must
#                     say the qualifier processed none of the events sent
#   invalid-events    qualifier alone, 10 invalid events in the fixture
#   invalid-events-scale  qualifier-scale (one point, 2,000 users), the same 10 invalid events
#   stopped-delivery-cluster  e2e-cluster (its three-broker cluster alone), both delivery workers
#                     stopped: as stopped-delivery
#   one-replica       e2e-cluster, its topics created with 1 replica: the read-back of their
#                     metadata must refuse them before any load
#   costly-qualifier  qualifier alone on release binaries, one pass each of this commit's and
#                     33f9f5e's qualifier over 200,000 events, this commit's evaluating 5,000
#                     segments instead of 1,000: the comparison with 33f9f5e must fail
# The two cluster runs start a three-broker cluster each (about a minute per run on 2 cores),
# so `make test` leaves them out; run them after changing e2e-cluster. costly-qualifier builds
# 33f9f5e's qualifier once (minutes) and runs release binaries: `make test` leaves it out too;
# run it after changing the qualifier's comparison.
#
# The runs use BENCH_SCALE=full — the scale at which bench.sh appends figures, so a check that
# let a failed run through would show here — with small sizes, debug binaries and a short
# drain: a few seconds of load each, about 20 s per run.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
tag=test-bench-checks
say() { echo "$tag: $*"; }
die() { echo "$tag: error: $*" >&2; exit 1; }

cases=("$@")
((${#cases[@]})) || cases=(stopped-delivery failing-partner slow-partner astray-input invalid-events invalid-events-scale)
mkdir -p target
results=docs/BENCHMARKS.md
# Result sections are headed "### <title> — <date> — commit <sha> — <machine>".
recorded() { grep -c '^### .* — commit ' "$results" || true; }

for fault in "${cases[@]}"; do
  hook=$fault
  case $fault in
    stopped-delivery-cluster)
      hook=stopped-delivery bench=e2e-cluster expected='End to end on three brokers failed its checks, so nothing is recorded: At 300 events/s: The drain did not complete: [0-9]+ of the [0-9]+ changes routed to partner-sim were still missing after [0-9]+ s\.' ;;
    one-replica)
      bench=e2e-cluster expected='e2e-cluster: the topics of bench-[^ ]+ are not replicated as the cluster run needs \(3 replicas, min\.insync\.replicas=2\): .*replication factor: found 1, expected 3' ;;
    stopped-delivery)
      bench=e2e expected='End to end failed its checks, so nothing is recorded: At 300 events/s: The drain did not complete: [0-9]+ of the [0-9]+ changes routed to partner-sim were still missing after [0-9]+ s\.' ;;
    failing-partner)
      # Dead letters of a permanent failure come after the one retry: some may still be on
      # their way when the short drain ends, hence the optional sentence before.
      bench=e2e expected='End to end failed its checks, so nothing is recorded: At 300 events/s: (The drain did not complete: [^.]*\. )?[0-9]+ of the [0-9]+ changes routed to partner-sim were dead-lettered instead of delivered\.' ;;
    slow-partner)
      bench=e2e expected="End to end failed its checks, so nothing is recorded: At 300 events/s: [0-9.]+ % of delivery's requests took over 40 ms \\(delivery_request_duration_seconds\\), where partner-sim answers in 1–5 ms: the step measured the simulator or the machine\\." ;;
    astray-input)
      bench=e2e-kafka expected='End to end, Kafka input failed its checks, so nothing is recorded: At 300 events/s: The qualifier had processed 0 of the [0-9]+ events sent after a [0-9]+ s drain\.' ;;
    invalid-events)
      bench=qualifier expected='Qualifier alone failed its checks, so nothing is recorded: The qualifier found 10 invalid events' ;;
    invalid-events-scale)
      hook=invalid-events bench=qualifier-scale
      expected='Qualifier: users and segments failed its checks, so nothing is recorded: 2000 users, 1000 segments: 10 events invalid and 0 ignored, but the fixture has neither' ;;
    costly-qualifier)
      bench=qualifier expected="Qualifier alone failed its checks, so nothing is recorded: [0-9.]+× the CPU per million events of 33f9f5e, before issue 16's refactor, run alongside \\(the median of the ratios [0-9. ]+ of 1 pairs\\), more than 10 % over\\." ;;
    *) die "unknown known-bad run '$fault' (stopped-delivery, failing-partner, slow-partner, astray-input, invalid-events, invalid-events-scale, stopped-delivery-cluster, one-replica, costly-qualifier)" ;;
  esac
  log=target/bench-check-$fault.log
  before=$(recorded)
  say "$fault: running deploy/bench.sh $bench with BENCH_FAULT=$hook (must fail)…"
  status=0
  sizes=(BENCH_PROFILE=debug BENCH_EVENTS=2000 BENCH_USERS=2000 BENCH_QUALIFIER_USERS=2000 BENCH_QUALIFIER_SEGMENTS=)
  [[ $fault != costly-qualifier ]] || sizes=(BENCH_PROFILE=release BENCH_EVENTS=200000 BENCH_USERS=20000 BENCH_QUALIFIER_RUNS=1)
  env BENCH_FAULT=$hook BENCH_SCALE=full "${sizes[@]}" \
    BENCH_E2E_RATES=300 BENCH_E2E_SECONDS=3 BENCH_E2E_DRAIN_SECONDS=10 \
    deploy/bench.sh "$bench" >"$log" 2>&1 || status=$?
  message=$(grep -E -m1 "^bench: error: " "$log" || true)
  if ((status == 0)); then
    tail -n 30 "$log" >&2
    die "$fault: deploy/bench.sh $bench passed, but this run is broken on purpose: its checks let a bad run through (log: $log)"
  fi
  if ! grep -Eq "^bench: error: $expected" "$log"; then
    tail -n 30 "$log" >&2
    die "$fault: deploy/bench.sh $bench failed (exit $status), but not with the expected message /$expected/ (log: $log)"
  fi
  if grep -q 'appended to docs/BENCHMARKS.md' "$log" || [[ $(recorded) != "$before" ]]; then
    die "$fault: the failed run appended a result to $results; remove it (log: $log)"
  fi
  say "$fault: failed as intended (exit $status), nothing appended: ${message#bench: error: }"
done
say "all ${#cases[@]} known-bad runs failed as intended"

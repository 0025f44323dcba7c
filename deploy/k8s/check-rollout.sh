#!/usr/bin/env bash
# Checks what a config edit does to running pods, as the README promises (part of make
# deploy-check): an edit of destinations.yaml or segments.yaml changes the ConfigMap the pods
# mount and nothing in their pod templates, so no pod restarts (the services reload the file);
# an edit of the Kafka settings (environment variables, read once at start) changes the pod
# templates, so the pods roll. Renders every overlay with kubectl kustomize on a copy of deploy/.
# Usage: deploy/k8s/check-rollout.sh PYTHON (a python with PyYAML, e.g. .venv-deploy/bin/python)
set -euo pipefail
python=${1:?usage: $0 PYTHON}
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
die() { echo "check-rollout: FAILED: $*" >&2; exit 1; }

# compare BEFORE AFTER EXPECT: EXPECT is "same" (pod templates equal, some ConfigMap differs)
# or "rolled" (pod templates differ).
compare() {
  "$python" - "$@" <<'EOF'
import sys, yaml
before, after, expect = sys.argv[1:]
def load(path):
    docs = [d for d in yaml.safe_load_all(open(path)) if d]
    templates = {f"{d['kind']}/{d['metadata']['name']}": d["spec"]["template"]
                 for d in docs if d["kind"] in ("Deployment", "StatefulSet")}
    maps = {d["metadata"]["name"]: d.get("data") for d in docs if d["kind"] == "ConfigMap"}
    return templates, maps
(t0, m0), (t1, m1) = load(before), load(after)
if not t0 or set(t0) != set(t1):
    sys.exit(f"workloads differ or are missing: {sorted(t0)} vs {sorted(t1)}")
changed = sorted(k for k in t0 if t0[k] != t1[k])
if expect == "same":
    if m0 == m1:
        sys.exit("the edit changed no ConfigMap: it did not reach the cluster at all")
    if changed:
        sys.exit(f"the edit changes the pod template of {', '.join(changed)}: those pods would restart")
elif set(changed) != set(t0):
    sys.exit(f"the edit leaves {', '.join(sorted(set(t0) - set(changed)))} unchanged: those pods would keep the old settings")
EOF
}

for overlay in "$repo"/deploy/k8s/overlays/*/; do
  name=$(basename "$overlay")
  rm -rf "$work/deploy" && cp -r "$repo/deploy" "$work/deploy"
  render() { kubectl kustomize "$work/deploy/k8s/overlays/$name" >"$work/$1.yaml"; }
  render before
  for file in destinations.yaml segments.yaml; do
    echo "# an edit" >>"$work/deploy/k8s/base/$file"
    render after
    compare "$work/before.yaml" "$work/after.yaml" same || die "overlay $name: editing $file"
    cp "$repo/deploy/k8s/base/$file" "$work/deploy/k8s/base/$file"
  done
  sed -i "s/^\( *- \)LOG_FORMAT=.*/\1LOG_FORMAT=text/" "$work/deploy/k8s/base/kustomization.yaml"
  render after
  compare "$work/before.yaml" "$work/after.yaml" rolled || die "overlay $name: editing the Kafka settings"
  echo "check-rollout: overlay $name: a destinations/segments edit restarts no pod; a Kafka settings edit rolls every one"
done

"""Exercises every command of the README's "Deploy to Kubernetes" walkthrough (make deploy-check).

Usage:
  check_walkthrough.py --readme README.md --rendered NAME.yaml... [--run]

The walkthrough is the fenced ```sh block right after the line
`<!-- walkthrough: checked by deploy/check_walkthrough.py -->`. There is no Kubernetes cluster
and no registry where this runs, so each command is exercised as far as it can be without one,
and a command the checker does not know fails the check (so no unchecked command gets in):

- `make TARGET [VAR=VALUE]` runs for real (with --run); `make image-push IMAGE_DEST=docker://…`
  pushes to an OCI archive in a temporary directory instead of the registry;
- `kubectl create namespace N` and `kubectl -n N create secret generic NAME --from-file=KEY=PATH
  --from-literal=KEY=VALUE…` run with `--dry-run=client` (files made up); the namespace must be
  the one the overlays render into, the Secret must be mounted by a rendered workload, and
  every file the rendered config names under its mount path must be one of its keys;
- `kubectl apply -k DIR` must name a kustomization that deploy-check renders and validates
  (a --rendered file named after DIR's last component);
- `kubectl -n N rollout|wait|logs|port-forward|get|describe … KIND/NAME …` must name an object
  that the overlay renders in namespace N.
Exits 1 naming the command and what is wrong. Standard library and PyYAML only.
"""
import argparse
import os
import re
import shlex
import subprocess
import sys
import tempfile

import yaml

MARKER = "<!-- walkthrough: checked by deploy/check_walkthrough.py -->"
KINDS = {
    "statefulset": "StatefulSet",
    "deployment": "Deployment",
    "job": "Job",
    "service": "Service",
    "svc": "Service",
    "scaledobject": "ScaledObject",
    "configmap": "ConfigMap",
    "cm": "ConfigMap",
}


class Failure(Exception):
    pass


def walkthrough_commands(readme_text):
    """The commands of the block after MARKER, continuation lines joined, comments dropped."""
    lines = readme_text.splitlines()
    try:
        start = lines.index(MARKER)
    except ValueError:
        raise Failure(f"the README has no line `{MARKER}`")
    fence = next((i for i in range(start + 1, len(lines)) if lines[i].strip()), None)
    if fence is None or lines[fence].strip() != "```sh":
        raise Failure("the marker must be followed by a ```sh block")
    commands, current = [], ""
    for line in lines[fence + 1:]:
        if line.strip() == "```":
            break
        line = re.sub(r"\s+#.*$", "", line) if not line.lstrip().startswith("#") else ""
        if not line.strip() and not current:
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        commands.append((current + line).strip())
        current = ""
    if not commands:
        raise Failure("the walkthrough block holds no command")
    return commands


class Rendered:
    """The objects deploy-check rendered: <name>.yaml for every kustomization it validated."""

    def __init__(self, files):
        self.objects = {}
        for path in files:
            name = os.path.basename(path)[: -len(".yaml")]
            with open(path) as f:
                self.objects[name] = [d for d in yaml.safe_load_all(f) if d]

    def all(self):
        return [d for docs in self.objects.values() for d in docs]

    def namespaces(self):
        return {d["metadata"].get("namespace") for d in self.all() if d["kind"] != "Namespace"} - {None}

    def find(self, kind, name, namespace):
        return [d for d in self.all()
                if d["kind"] == kind and d["metadata"]["name"] == name
                and d["metadata"].get("namespace") == namespace]

    def secret_mounts(self, secret, namespace):
        """(mount path, workload) of every volume of `secret` mounted in `namespace`."""
        mounts = []
        for d in self.all():
            if d["metadata"].get("namespace") != namespace or "template" not in d.get("spec", {}):
                continue
            pod = d["spec"]["template"]["spec"]
            volumes = {v["name"] for v in pod.get("volumes", [])
                       if v.get("secret", {}).get("secretName") == secret}
            for container in pod.get("containers", []) + pod.get("initContainers", []):
                for mount in container.get("volumeMounts", []):
                    if mount["name"] in volumes:
                        mounts.append((mount["mountPath"], f"{d['kind']}/{d['metadata']['name']}"))
        return mounts

    def text(self, namespace):
        """Every string value of the objects in `namespace` (ConfigMap data, env values)."""
        out = []

        def walk(value):
            if isinstance(value, dict):
                for v in value.values():
                    walk(v)
            elif isinstance(value, list):
                for v in value:
                    walk(v)
            elif isinstance(value, str):
                out.append(value)

        for d in self.all():
            if d["metadata"].get("namespace") == namespace:
                walk(d)
        return "\n".join(out)


def check_secret(argv, namespace, rendered, scratch, run):
    name = argv[3]
    keys = []
    dry = ["kubectl", "-n", namespace, "create", "secret", "generic", name]
    for arg in argv[4:]:
        match = re.fullmatch(r"--from-(file|literal)=([^=]+)=(.*)", arg)
        if not match:
            raise Failure(f"`{arg}`: write --from-file=KEY=PATH or --from-literal=KEY=VALUE, so the key is explicit")
        kind, key, value = match.groups()
        keys.append(key)
        if kind == "file":
            path = os.path.join(scratch, f"{name}-{key}")
            with open(path, "w") as f:
                f.write("made-up\n")
            dry.append(f"--from-file={key}={path}")
        else:
            dry.append(f"--from-literal={key}={value}")
    mounts = rendered.secret_mounts(name, namespace)
    if not mounts:
        raise Failure(f"no rendered workload in namespace {namespace} mounts the Secret `{name}`")
    text = rendered.text(namespace)
    for path, workload in mounts:
        named = set(re.findall(re.escape(path.rstrip("/")) + r"/([A-Za-z0-9._-]+)", text))
        missing = sorted(named - set(keys))
        if missing:
            raise Failure(f"{workload} reads {', '.join(path.rstrip('/') + '/' + m for m in missing)} "
                          f"from the Secret `{name}`, but the command gives it no key {', '.join(missing)}")
    if run:
        subprocess.run(dry + ["--dry-run=client", "-o", "yaml"], check=True, stdout=subprocess.DEVNULL)
    return f"Secret {name}: keys {', '.join(keys)} cover what {', '.join(sorted({w for _, w in mounts}))} read"


def check(command, rendered, scratch, run):
    """Exercises one walkthrough command; returns what was checked, raises Failure."""
    argv = shlex.split(command)
    if argv[0] == "make":
        target, variables = argv[1], dict(a.split("=", 1) for a in argv[2:])
        if target == "image-push":
            destination = variables.get("IMAGE_DEST", "")
            if not destination.startswith("docker://"):
                raise Failure("make image-push needs IMAGE_DEST=docker://REGISTRY/segment-relay:TAG")
            variables["IMAGE_DEST"] = f"oci-archive:{scratch}/segment-relay.tar"
        if run:
            subprocess.run(["make", target] + [f"{k}={v}" for k, v in variables.items()], check=True)
            if target == "image-push" and not os.path.getsize(f"{scratch}/segment-relay.tar"):
                raise Failure("make image-push wrote an empty archive")
        return f"make {target} ran" if run else f"make {target} (not run: no --run)"
    if argv[0] != "kubectl":
        raise Failure("not a command the checker knows (make …, kubectl …): teach deploy/check_walkthrough.py to exercise it")
    namespace = None
    if argv[1] == "-n":
        namespace, argv = argv[2], ["kubectl"] + argv[3:]
    verb = argv[1:3] if len(argv) > 2 else argv[1:]
    if verb == ["create", "namespace"]:
        if argv[3] not in rendered.namespaces():
            raise Failure(f"namespace {argv[3]} is not one the overlays render into ({', '.join(sorted(rendered.namespaces()))})")
        if run:
            subprocess.run(argv + ["--dry-run=client", "-o", "yaml"], check=True, stdout=subprocess.DEVNULL)
        return f"namespace {argv[3]} is an overlay's"
    if argv[1] == "apply" and argv[2] == "-k":
        name = os.path.basename(os.path.normpath(argv[3]))
        if name not in rendered.objects:
            raise Failure(f"{argv[3]} is not a kustomization deploy-check renders and validates")
        return f"{argv[3]} renders and validates ({len(rendered.objects[name])} objects)"
    if namespace is None:
        raise Failure("say the namespace: kubectl -n NAMESPACE …")
    if verb == ["create", "secret"] and argv[3] == "generic":
        return check_secret(argv[1:], namespace, rendered, scratch, run)
    if argv[1] in ("rollout", "wait", "logs", "port-forward", "get", "describe"):
        refs = [a for a in argv[2:] if re.fullmatch(r"[a-z]+/[a-z0-9-]+", a)]
        if not refs:
            raise Failure("name the object as KIND/NAME")
        for ref in refs:
            kind, name = ref.split("/")
            if kind not in KINDS or not rendered.find(KINDS[kind], name, namespace):
                raise Failure(f"{ref} is not rendered in namespace {namespace}")
        return f"{', '.join(refs)} exist in namespace {namespace} (needs a cluster to run)"
    raise Failure("a kubectl command the checker does not know: teach deploy/check_walkthrough.py to exercise it")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--readme", required=True)
    parser.add_argument("--rendered", required=True, nargs="+", help="deploy-check's rendered kustomizations, NAME.yaml each")
    parser.add_argument("--run", action="store_true", help="run the commands that can run here")
    args = parser.parse_args(argv)
    rendered = Rendered(args.rendered)
    failures = 0
    with tempfile.TemporaryDirectory() as scratch:
        try:
            with open(args.readme) as f:
                commands = walkthrough_commands(f.read())
        except Failure as e:
            print(f"FAIL {e}")
            return 1
        for command in commands:
            try:
                print(f"ok   {command}\n     {check(command, rendered, scratch, args.run)}")
            except (Failure, subprocess.CalledProcessError) as e:
                failures += 1
                print(f"FAIL {command}\n     {e}")
    print(f"{len(commands) - failures} of {len(commands)} walkthrough commands checked")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

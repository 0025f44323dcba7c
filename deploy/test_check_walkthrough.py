"""Known-bad walkthroughs that deploy/check_walkthrough.py must fail (run by make deploy-check)."""
import io
import os
import tempfile
import unittest
from contextlib import redirect_stdout

import check_walkthrough

RENDERED = """
apiVersion: v1
kind: ConfigMap
metadata: { name: segment-relay-destinations, namespace: relay }
data:
  destinations.yaml: |
    auth: { hmac: { key_file: /etc/segment-relay/secrets/acme-hmac-key } }
    oauth: { client_secret_file: /etc/segment-relay/secrets/partner2-client-secret }
---
apiVersion: apps/v1
kind: Deployment
metadata: { name: delivery, namespace: relay }
spec:
  template:
    spec:
      containers:
        - name: delivery
          volumeMounts: [{ name: secrets, mountPath: /etc/segment-relay/secrets }]
      volumes: [{ name: secrets, secret: { secretName: destination-secrets } }]
"""

GOOD = """
kubectl create namespace relay
kubectl -n relay create secret generic destination-secrets \\
  --from-file=acme-hmac-key=./acme.key --from-file=partner2-client-secret=./secret
kubectl apply -k deploy/k8s/overlays/prod   # the overlay
kubectl -n relay rollout status deployment/delivery
"""


def run(walkthrough):
    with tempfile.TemporaryDirectory() as directory:
        with open(os.path.join(directory, "prod.yaml"), "w") as f:
            f.write(RENDERED)
        readme = os.path.join(directory, "README.md")
        with open(readme, "w") as f:
            f.write(f"# Deploy\n\n{check_walkthrough.MARKER}\n\n```sh\n{walkthrough}```\n")
        out = io.StringIO()
        with redirect_stdout(out):
            status = check_walkthrough.main(["--readme", readme, "--rendered", os.path.join(directory, "prod.yaml")])
        return status, out.getvalue()


class WalkthroughCheck(unittest.TestCase):
    def test_a_walkthrough_that_matches_the_manifests_passes(self):
        status, out = run(GOOD)
        self.assertEqual(status, 0, out)
        self.assertIn("4 of 4 walkthrough commands checked", out)

    def fails(self, walkthrough, why):
        status, out = run(walkthrough)
        self.assertEqual(status, 1, out)
        self.assertIn(why, out)

    def test_a_secret_without_a_key_the_config_reads_fails(self):
        self.fails(GOOD.replace(" --from-file=partner2-client-secret=./secret", ""),
                   "gives it no key partner2-client-secret")

    def test_a_secret_no_workload_mounts_fails(self):
        self.fails(GOOD.replace("generic destination-secrets", "generic destination-secret"),
                   "mounts the Secret `destination-secret`")

    def test_a_namespace_the_overlays_do_not_use_fails(self):
        self.fails(GOOD.replace("namespace relay", "namespace relay-prod"), "namespace relay-prod is not")

    def test_an_unrendered_kustomization_fails(self):
        self.fails(GOOD.replace("overlays/prod", "overlays/staging"), "is not a kustomization deploy-check renders")

    def test_an_object_the_overlay_does_not_render_fails(self):
        self.fails(GOOD.replace("deployment/delivery", "deployment/qualifier"), "deployment/qualifier is not rendered")

    def test_an_unknown_command_fails(self):
        self.fails(GOOD + "helm install relay ./chart\n", "not a command the checker knows")

    def test_a_push_to_anything_but_a_registry_fails(self):
        self.fails(GOOD + "make image-push IMAGE_DEST=oci-archive:/tmp/x.tar\n", "IMAGE_DEST=docker://")

    def test_a_readme_without_the_marked_block_fails(self):
        with tempfile.TemporaryDirectory() as directory:
            readme = os.path.join(directory, "README.md")
            with open(readme, "w") as f:
                f.write("```sh\nkubectl apply -k x\n```\n")
            out = io.StringIO()
            with redirect_stdout(out):
                status = check_walkthrough.main(["--readme", readme, "--rendered", os.devnull])
        self.assertEqual(status, 1)
        self.assertIn("has no line", out.getvalue())


if __name__ == "__main__":
    unittest.main()

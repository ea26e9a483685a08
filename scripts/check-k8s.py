#!/usr/bin/env python3
"""Cross-checks of deploy/kubernetes that no schema covers (run by DeployFilesTests).

kubernetes-validate checks each built-in resource against the Kubernetes OpenAPI schema; it has
no schema for KEDA's CRDs (ScaledObject, TriggerAuthentication). This script checks what
Stepwise relies on: the worker's termination grace period covers --grace, its probes hit the
metrics port's /readyz and /healthz, the PodDisruptionBudget and the ScaledObject select the
worker Deployment, and the ScaledObject scales on the ready list with the redis scaler, from 0.
Prints one line per failed check and exits 1, or prints "ok" and exits 0.
"""
import sys
from pathlib import Path

import yaml

root = Path(sys.argv[1] if len(sys.argv) > 1 else "deploy/kubernetes")
docs = []
for path in sorted(root.glob("*.yaml")):
    docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
by_kind = {}
for d in docs:
    by_kind.setdefault(d["kind"], []).append(d)
failures = []


def check(ok, message):
    if not ok:
        failures.append(message)


def flag(args, name, default):
    for a in args:
        if a.startswith(name + "="):
            return a.split("=", 1)[1]
    return default


worker = next(d for d in by_kind.get("Deployment", []) if d["metadata"]["name"] == "stepwise-worker")
pod = worker["spec"]["template"]["spec"]
container = pod["containers"][0]
args = container["args"]
check(args[0] == "worker", "the worker container runs `stepwise worker`")
grace = float(flag(args, "--grace", "25"))
check(pod.get("terminationGracePeriodSeconds", 30) >= grace + 5,
      f"terminationGracePeriodSeconds {pod.get('terminationGracePeriodSeconds', 30)} must exceed --grace {grace} by 5 s or more")
listen = flag(args, "--metrics-listen", None)
check(listen is not None, "the worker serves metrics (--metrics-listen)")
port = int(listen.rsplit(":", 1)[1]) if listen else None
ports = {p.get("name"): p["containerPort"] for p in container.get("ports", [])}
check(ports.get("metrics") == port, f"container port 'metrics' is the --metrics-listen port {port}")
for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
    get = container.get(probe, {}).get("httpGet", {})
    check(get.get("path") == path and get.get("port") in ("metrics", port), f"{probe} is GET {path} on the metrics port")
check("replicas" not in worker["spec"], "the worker Deployment leaves replicas to KEDA")
labels = worker["spec"]["selector"]["matchLabels"]

pdbs = by_kind.get("PodDisruptionBudget", [])
check(len(pdbs) == 1, "one PodDisruptionBudget")
for pdb in pdbs:
    check(pdb["spec"]["selector"]["matchLabels"] == labels, "the PodDisruptionBudget selects the worker pods")

scaled = by_kind.get("ScaledObject", [])
check(len(scaled) == 1, "one ScaledObject")
for so in scaled:
    check(so.get("apiVersion") == "keda.sh/v1alpha1", "ScaledObject is keda.sh/v1alpha1")
    spec = so["spec"]
    ref = spec["scaleTargetRef"]
    check(ref.get("kind", "Deployment") == "Deployment" and ref["name"] == "stepwise-worker", "ScaledObject targets the worker Deployment")
    check(spec.get("minReplicaCount") == 0, "ScaledObject scales to zero (minReplicaCount 0)")
    check(spec.get("maxReplicaCount", 100) >= 1, "maxReplicaCount >= 1")
    triggers = spec.get("triggers", [])
    check(len(triggers) == 1 and triggers[0]["type"] == "redis", "one trigger, KEDA's redis scaler")
    meta = triggers[0].get("metadata", {}) if triggers else {}
    check(meta.get("listName") == "sw:ready", "the trigger reads the ready list sw:ready")
    check(str(meta.get("listLength", "")).isdigit() and int(meta["listLength"]) > 0, "listLength is a positive integer (as a string)")
    auth = triggers[0].get("authenticationRef", {}).get("name") if triggers else None
    names = [t["metadata"]["name"] for t in by_kind.get("TriggerAuthentication", [])]
    check(auth in names, f"the trigger's authenticationRef {auth} is defined")

if failures:
    for f in failures:
        print("FAIL:", f)
    sys.exit(1)
print("ok")

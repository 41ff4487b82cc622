"""Generate the Helm chart ``deploy/chart/kubetask`` from the kustomize tree in ``deploy/`` (``kubetask-chart``).

deploy/ stays the one source of truth: the chart's templates are its manifests with a few fields turned
into values (the bridge's image, Dagster's URLs, watched namespaces, replicas, logging, resources, its
health address, probes and host networking, kubetask-system's Pod Security level), the
tenant manifests rendered once per namespace in ``tenants``, and the monitoring manifests behind their
values. With the default values and ``tenants: [X]`` the chart renders exactly ``kubectl kustomize
deploy/`` plus ``deploy/tenant`` in X, besides Helm's own labels (tests/integration/test_chart.py).

The kustomizations use two features only, ``resources`` and ``labels.pairs`` (on metadata.labels), and
this reads those; a kustomization using anything else is refused.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from kubetask.tools.generated import sync

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
DEFAULT_OUT = DEPLOY / "chart" / "kubetask"
VERSION = "0.1.0"
IMAGE = "ghcr.io/kubetask-dagster/kubetask-dagster"
BRIDGE_CONTAINER = "bridge"
HEADER = "# Generated from deploy/ by `python -m kubetask.tools.chartgen`: edit deploy/ and regenerate.\n"
POD_SECURITY = "pod-security.kubernetes.io/enforce"
_KNOWN_KEYS = {"apiVersion", "kind", "resources", "labels"}


def kustomize(directory: Path) -> list[dict[str, Any]]:
    """The objects a kustomization builds, for the subset of kustomize that deploy/ uses."""
    spec = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unknown = set(spec) - _KNOWN_KEYS
    if unknown:
        raise ValueError(f"{directory}/kustomization.yaml uses {sorted(unknown)}, which chartgen does not read")
    objects: list[dict[str, Any]] = []
    for entry in spec.get("resources") or []:
        target = directory / entry
        if target.is_dir():
            objects += kustomize(target)
        else:
            objects += [d for d in yaml.safe_load_all(target.read_text()) if d]
    for label in spec.get("labels") or []:
        if set(label) - {"pairs"}:
            raise ValueError(f"{directory}: only labels.pairs is read")
        for obj in objects:
            obj.setdefault("metadata", {}).setdefault("labels", {}).update(label["pairs"])
    return objects


# --- what the chart's values replace -------------------------------------------------------------


def _env(container: dict[str, Any], name: str) -> dict[str, Any]:
    return next(e for e in container["env"] if e["name"] == name)


_PROBES = ("startupProbe", "livenessProbe", "readinessProbe")


def _parameterize_bridge(deployment: dict[str, Any]) -> dict[str, Any]:
    """Turn the bridge Deployment's settings into sentinels that ``_SENTINELS`` makes template expressions;
    their values in deploy/ are the chart's defaults (returned)."""
    container = next(c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == BRIDGE_CONTAINER)
    if container["image"] != f"{IMAGE}:{VERSION}":
        raise ValueError(f"the bridge image {container['image']} is not {IMAGE}:{VERSION}: update chartgen")
    [bind] = [a for a in container["args"] if a.startswith("--health-bind=")]
    address, port = bind.split("=", 1)[1].rsplit(":", 1)
    defaults = {
        "replicas": deployment["spec"]["replicas"],
        "logLevel": _env(container, "KUBETASK_BRIDGE_LOG_LEVEL")["value"],
        "logFormat": _env(container, "KUBETASK_BRIDGE_LOG_FORMAT")["value"],
        "resources": container["resources"],
        "dagsterUrl": _env(container, "KUBETASK_BRIDGE_DAGSTER_URL")["value"],
        "dagsterUiUrl": _env(container, "KUBETASK_BRIDGE_DAGSTER_UI_URL")["value"],
        "pullPolicy": container["imagePullPolicy"],
        "healthAddress": address,
        "healthPort": int(port),
    }
    pod = deployment["spec"]["template"]
    for key in ("nodeSelector", "tolerations", "hostNetwork"):
        if key in pod["spec"]:
            raise ValueError(f"deploy/'s bridge sets {key}: make it the chart's default")
    pod["spec"]["nodeSelector"] = "__NODE_SELECTOR__"
    pod["spec"]["tolerations"] = "__TOLERATIONS__"
    pod["spec"]["hostNetwork"] = "__HOST_NETWORK__"
    if "annotations" in pod["metadata"]:
        raise ValueError("deploy/'s bridge pod has annotations: make them the chart's default")
    pod["metadata"]["annotations"] = "__POD_ANNOTATIONS__"
    deployment["spec"]["replicas"] = "__REPLICAS__"
    container["image"] = "__IMAGE__"
    container["imagePullPolicy"] = "__PULL_POLICY__"
    container["resources"] = "__RESOURCES__"
    container["args"] = [("--health-bind=__HEALTH_BIND__" if a == bind else a) for a in container["args"]]
    [health] = [p for p in container["ports"] if p["containerPort"] == int(port)]
    health["containerPort"] = "__HEALTH_PORT__"
    for probe in _PROBES:  # values: null drops one (a host-network pod's probes would dial the node's address)
        defaults[probe] = container[probe]
        container[probe] = f"__{probe.upper()}__"
    _env(container, "KUBETASK_BRIDGE_DAGSTER_URL")["value"] = "__DAGSTER_URL__"
    _env(container, "KUBETASK_BRIDGE_DAGSTER_UI_URL")["value"] = "__DAGSTER_UI_URL__"
    _env(container, "KUBETASK_BRIDGE_LOG_LEVEL")["value"] = "__LOG_LEVEL__"
    _env(container, "KUBETASK_BRIDGE_LOG_FORMAT")["value"] = "__LOG_FORMAT__"
    container["env"] += ["__NAMESPACES__", "__EXTRA_ENV__"]
    return defaults


def _values(bridge: dict[str, Any]) -> str:
    """values.yaml: every value with its deploy/ default and what it does."""

    def block(value: Any, indent: int) -> str:
        return "".join(f"{' ' * indent}{line}\n" for line in yaml.safe_dump(value, sort_keys=False).splitlines())

    return (
        HEADER
        + f"""# The CR bridge's image (the project's Dockerfile); the tag defaults to the chart's appVersion.
image:
  repository: {IMAGE}
  tag: ""
  pullPolicy: {bridge["pullPolicy"]}

# Dagster's webserver, from the Dagster Helm release (deploy/dagster/values.yaml): `url` is what the bridge
# calls, `uiUrl` the base of the run links written to status.dagsterRunUrl (default: url).
dagster:
  url: {bridge["dagsterUrl"]}
  uiUrl: "{"" if bridge["dagsterUiUrl"] == bridge["dagsterUrl"] else bridge["dagsterUiUrl"]}"

bridge:
  replicas: {bridge["replicas"]}  # one leader (Lease kubetask-system/kubetask-bridge), the others on standby
  logLevel: {bridge["logLevel"]}
  logFormat: {bridge["logFormat"]}  # json: one object per line; text: for people
  resources:
{block(bridge["resources"], 4)}  nodeSelector: {{}}
  tolerations: []
  podAnnotations: {{}}
  extraEnv: []  # more env vars of the bridge container, e.g. KUBETASK_BRIDGE_WORKERS
  # /metrics, /healthz and /readyz
  healthAddress: {bridge["healthAddress"]}
  healthPort: {bridge["healthPort"]}
  # On the node's network instead of a pod network (a cluster without one, like the local real node):
  # then set healthAddress 127.0.0.1, the probes to null and podSecurity.enforce to privileged.
  hostNetwork: false
  startupProbe:
{block(bridge["startupProbe"], 4)}  livenessProbe:
{block(bridge["livenessProbe"], 4)}  readinessProbe:
{block(bridge["readinessProbe"], 4)}
# The Pod Security level kubetask-system enforces.
podSecurity:
  enforce: {bridge["podSecurity"]}

# Namespaces the bridge watches (empty: all).
watchNamespaces: []

# Tenant namespaces to enable (each must exist): the run workers' rights there, the agents'
# ServiceAccount, the `default` WorkspaceConfig and the agents' NetworkPolicy (deploy/tenant).
tenants: []

crds:
  install: true  # kept on uninstall (helm.sh/resource-policy: keep): deleting a CRD deletes every Task

networkPolicies:
  enabled: true  # enforced only by a CNI that implements NetworkPolicy

metrics:
  serviceMonitor:
    enabled: false  # needs the Prometheus Operator's CRDs
  prometheusRule:
    enabled: false  # the alerts of docs/operations.md
"""
    )


def _block(expression: str) -> Callable[[re.Match[str]], str]:
    """A replacement of ``key: SENTINEL`` by ``key:`` and the expression's YAML, indented under it."""
    return lambda m: f"{m['indent']}{m['key']}:\n{{{{- {expression} | nindent {len(m['indent']) + 2} }}}}"


def _optional_block(value: str) -> Callable[[re.Match[str]], str]:
    """A replacement of ``key: SENTINEL`` by ``key:`` and the value's YAML, only when the value is set."""
    return lambda m: (
        f"{{{{- with {value} }}}}\n{m['indent']}{m['key']}:{{{{- toYaml . | nindent {len(m['indent']) + 2} }}}}\n{{{{- end }}}}"
    )


_SENTINELS: list[tuple[str, str | Callable[[re.Match[str]], str]]] = [
    (r"__REPLICAS__", "{{ .Values.bridge.replicas }}"),
    (r"__TENANT__", "{{ $namespace | quote }}"),
    (
        r"__IMAGE__",
        '{{ printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) | quote }}',
    ),
    (r"__DAGSTER_URL__", "{{ .Values.dagster.url | quote }}"),
    (r"__DAGSTER_UI_URL__", "{{ .Values.dagster.uiUrl | default .Values.dagster.url | quote }}"),
    (r"__LOG_LEVEL__", "{{ .Values.bridge.logLevel | quote }}"),
    (r"__LOG_FORMAT__", "{{ .Values.bridge.logFormat | quote }}"),
    (r"(?P<indent> *)(?P<key>resources): __RESOURCES__", _block("toYaml .Values.bridge.resources")),
    (r"__PULL_POLICY__", "{{ .Values.image.pullPolicy | quote }}"),
    (r"__HEALTH_BIND__", "{{ .Values.bridge.healthAddress }}:{{ .Values.bridge.healthPort }}"),
    (r"__HEALTH_PORT__", "{{ .Values.bridge.healthPort }}"),
    (r"__POD_SECURITY__", "{{ .Values.podSecurity.enforce | quote }}"),
    (
        r"(?P<indent> *)hostNetwork: __HOST_NETWORK__\n",
        lambda m: f"{{{{- if .Values.bridge.hostNetwork }}}}\n{m['indent']}hostNetwork: true\n{{{{- end }}}}\n",
    ),
    *(
        (rf"(?P<indent> *)(?P<key>{probe}): __{probe.upper()}__", _optional_block(f".Values.bridge.{probe}"))
        for probe in _PROBES
    ),
    (r"(?P<indent> *)(?P<key>nodeSelector): __NODE_SELECTOR__", _optional_block(".Values.bridge.nodeSelector")),
    (r"(?P<indent> *)(?P<key>tolerations): __TOLERATIONS__", _optional_block(".Values.bridge.tolerations")),
    (r"(?P<indent> *)(?P<key>annotations): __POD_ANNOTATIONS__", _optional_block(".Values.bridge.podAnnotations")),
    (
        r"(?P<indent> *)- __EXTRA_ENV__",
        lambda m: (
            f"{{{{- with .Values.bridge.extraEnv }}}}{{{{- toYaml . | nindent {len(m['indent'])} }}}}{{{{- end }}}}"
        ),
    ),
    (
        r"(?P<indent> *)- __NAMESPACES__",
        lambda m: (
            "{{- with .Values.watchNamespaces }}\n"
            f"{m['indent']}- name: KUBETASK_BRIDGE_NAMESPACES\n"
            f'{m["indent"]}  value: {{{{ join "," . | quote }}}}\n'
            "{{- end }}"
        ),
    ),
]


def _escape(text: str) -> str:
    """Braces of the manifests themselves (Prometheus' alert templates) reach the output as written."""
    return (
        text.replace("{{", "\0open")
        .replace("}}", "\0close")
        .replace("\0open", '{{ "{{" }}')
        .replace("\0close", '{{ "}}" }}')
    )


def _dump(objects: list[dict[str, Any]]) -> str:
    text = _escape("---\n".join(yaml.safe_dump(o, sort_keys=False, width=1000) for o in objects))
    for pattern, replacement in _SENTINELS:
        text = re.sub(pattern, replacement, text)
    leftover = re.search(r"__[A-Z_]+__", text)
    if leftover:
        raise ValueError(f"sentinel {leftover.group()} has no template expression")
    return text


def _crd_with_keep(crd: dict[str, Any]) -> dict[str, Any]:
    annotations = crd.setdefault("metadata", {}).setdefault("annotations", {})
    annotations["helm.sh/resource-policy"] = "keep"  # uninstalling the chart never deletes the users' Tasks
    return crd


# --- the chart -----------------------------------------------------------------------------------


def chart_files() -> dict[str, str]:
    """Path inside the chart -> text."""
    platform = kustomize(DEPLOY)
    crds = [o for o in platform if o["kind"] == "CustomResourceDefinition"]
    rest = [o for o in platform if o["kind"] != "CustomResourceDefinition"]
    network = [o for o in rest if o["kind"] == "NetworkPolicy"]
    core = [o for o in rest if o["kind"] != "NetworkPolicy"]
    bridge = next(o for o in core if o["kind"] == "Deployment" and o["metadata"]["name"] == "kubetask-bridge")
    defaults = _parameterize_bridge(bridge)
    system = next(
        o for o in core if o["kind"] == "Namespace" and o["metadata"]["name"] == bridge["metadata"]["namespace"]
    )
    defaults["podSecurity"] = system["metadata"]["labels"][POD_SECURITY]
    system["metadata"]["labels"][POD_SECURITY] = "__POD_SECURITY__"
    tenant = kustomize(DEPLOY / "tenant")
    if any("namespace" in o["metadata"] for o in tenant):
        raise ValueError("deploy/tenant objects must carry no namespace: they go wherever they are applied")
    for obj in tenant:
        obj["metadata"]["namespace"] = "__TENANT__"
    tenant_text = _dump(tenant)
    monitoring = kustomize(DEPLOY / "monitoring")
    monitors = [o for o in monitoring if o["kind"] == "ServiceMonitor"]
    rules = [o for o in monitoring if o["kind"] == "PrometheusRule"]
    return {
        "Chart.yaml": yaml.safe_dump(
            {
                "apiVersion": "v2",
                "name": "kubetask",
                "description": "Run AI-agent work declared as Kubernetes custom resources, with Dagster as the engine: "
                "the CRDs, the CR bridge, RBAC, NetworkPolicies and the tenants' defaults.",
                "type": "application",
                "version": VERSION,
                "appVersion": VERSION,
                "kubeVersion": ">=1.30.0-0",
                "home": "https://github.com/kubetask-dagster/kubetask-dagster",
                "keywords": ["ai-agents", "dagster", "operator", "batch"],
            },
            sort_keys=False,
        ),
        "values.yaml": _values(defaults),
        ".helmignore": HEADER + "*.orig\n*~\n.DS_Store\n",
        "templates/NOTES.txt": "kubetask {{ .Chart.AppVersion }} is installed: the CR bridge runs in kubetask-system.\n"
        '{{- if .Values.tenants }}\nTenant namespaces: {{ join ", " .Values.tenants }}.{{ else }}\n'
        "No tenant namespace is enabled yet: set tenants=[team-a] (or kubectl apply -k deploy/tenant -n team-a).{{ end }}\n"
        "Next: install Dagster with deploy/dagster/values.yaml, then `kubectl apply -f` a Task in a tenant namespace.\n",
        "templates/crds.yaml": HEADER
        + "{{- if .Values.crds.install }}\n"
        + _dump([_crd_with_keep(c) for c in crds])
        + "{{- end }}\n",
        "templates/platform.yaml": HEADER + _dump(core),
        "templates/network-policies.yaml": HEADER
        + "{{- if .Values.networkPolicies.enabled }}\n"
        + _dump(network)
        + "{{- end }}\n",
        "templates/tenants.yaml": HEADER
        + "{{- range $namespace := .Values.tenants }}\n---\n"
        + tenant_text
        + "{{- end }}\n",
        "templates/monitoring.yaml": HEADER
        + "{{- if .Values.metrics.serviceMonitor.enabled }}\n"
        + _dump(monitors)
        + "{{- end }}\n{{- if .Values.metrics.prometheusRule.enabled }}\n---\n"
        + _dump(rules)
        + "{{- end }}\n",
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write the Helm chart generated from deploy/.")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--check", action="store_true", help="exit 1 if the chart differs from deploy/")
    args = parser.parse_args(argv)
    files = {args.out / name: text for name, text in chart_files().items()}
    return sync(files, check=args.check, command="kubetask-chart")


if __name__ == "__main__":
    sys.exit(main())

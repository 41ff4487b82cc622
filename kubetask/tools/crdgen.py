"""Generate the CRDs in ``deploy/crds/bases/`` from the pydantic models (``kubetask-crds``)."""

from __future__ import annotations

import argparse
import copy
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from kubetask.api import batch, task, workspace
from kubetask.api.base import GROUP, VERSION, cel
from kubetask.tools.generated import sync

_DROP_KEYS = {"title", "default", "$defs"}
# Above this many possible occurrences of a field in one object, a string rule's CEL cost would
# exceed the API server's budget, so the generator falls back to the rule's OpenAPI pattern.
MAX_CEL_STRING_CARDINALITY = 1000


@dataclass(frozen=True)
class Kind:
    """What a CRD needs beyond the schema of its spec and status."""

    kind: str
    plural: str
    spec: type[BaseModel]
    status: type[BaseModel] | None
    short_names: list[str]
    description: str
    printer_columns: list[dict[str, Any]] = field(default_factory=list)
    root_rules: list[dict[str, str]] = field(default_factory=list)


def _age() -> dict[str, Any]:
    return {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}


KINDS = [
    Kind(
        kind="Task",
        plural="tasks",
        spec=task.TaskSpec,
        status=task.TaskStatus,
        short_names=["ktask"],
        description="One AI-agent run: contexts resolved into files and mounted into a Job, executed by a Dagster run.",
        printer_columns=[
            {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
            {"name": "Job", "type": "string", "jsonPath": ".status.jobName"},
            {"name": "Attempt", "type": "integer", "jsonPath": ".status.attempt"},
            {
                "name": "Reason",
                "type": "string",
                "jsonPath": ".status.conditions[?(@.type=='Ready')].reason",
                "priority": 1,
            },
            {"name": "PR", "type": "string", "jsonPath": ".status.result.pullRequests[0].url"},
            _age(),
        ],
        root_rules=[
            cel(
                f"self.metadata.name.size() <= {task.MAX_TASK_NAME}",
                f"metadata.name must be at most {task.MAX_TASK_NAME} characters so that Job names fit in 63",
            )
        ],
    ),
    Kind(
        kind="WorkspaceConfig",
        plural="workspaceconfigs",
        spec=workspace.WorkspaceConfigSpec,
        status=workspace.WorkspaceConfigStatus,
        short_names=["wsconfig", "wsc"],
        description="How Tasks run: agent image, tools image, credentials, default contexts and pod settings.",
        printer_columns=[
            {"name": "Agent", "type": "string", "jsonPath": ".spec.agentImage"},
            {"name": "Max-Concurrent", "type": "integer", "jsonPath": ".spec.maxConcurrentTasks"},
            {"name": "Running", "type": "integer", "jsonPath": ".status.running"},
            {"name": "Queued", "type": "integer", "jsonPath": ".status.queued"},
            {"name": "Spend", "type": "number", "jsonPath": ".status.spend.costUSD"},
            {"name": "Rate-Limited-Until", "type": "string", "jsonPath": ".status.rateLimitedUntil"},
            _age(),
        ],
    ),
    Kind(
        kind="Batch",
        plural="batches",
        spec=batch.BatchSpec,
        status=batch.BatchStatus,
        short_names=["kbatch"],
        description="A template of Tasks: commonContext plus one variableContexts entry per Task, optionally on a schedule.",
        printer_columns=[
            {"name": "Schedule", "type": "string", "jsonPath": ".spec.schedule.cron"},
            {"name": "Suspend", "type": "boolean", "jsonPath": ".spec.schedule.suspend"},
            {"name": "Last-Schedule", "type": "date", "jsonPath": ".status.lastScheduleTime"},
            _age(),
        ],
        root_rules=[
            cel(
                f"!has(self.spec.schedule) || self.metadata.name.size() <= {batch.MAX_SCHEDULED_BATCH_NAME}",
                f"metadata.name of a Batch with spec.schedule must be at most {batch.MAX_SCHEDULED_BATCH_NAME} characters "
                "so that the names of its BatchRuns, Tasks and Jobs fit",
            )
        ],
    ),
    Kind(
        kind="BatchRun",
        plural="batchruns",
        spec=batch.BatchRunSpec,
        status=batch.BatchRunStatus,
        short_names=["kbatchrun", "kbr"],
        description="One execution of a Batch (by reference or inline): one Task per variableContexts entry, in one Dagster run.",
        printer_columns=[
            {"name": "Batch", "type": "string", "jsonPath": ".spec.batchRef"},
            {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
            {"name": "Completed", "type": "integer", "jsonPath": ".status.progress.completed"},
            {"name": "Total", "type": "integer", "jsonPath": ".status.progress.total"},
            {"name": "Failed", "type": "integer", "jsonPath": ".status.progress.failed"},
            {"name": "PRs", "type": "integer", "jsonPath": ".status.pullRequests"},
            {"name": "Cost", "type": "number", "jsonPath": ".status.usage.costUSD"},
            _age(),
        ],
        root_rules=[
            cel(
                f"self.metadata.name.size() <= {batch.MAX_BATCHRUN_NAME}",
                f"metadata.name must be at most {batch.MAX_BATCHRUN_NAME} characters so that Task and Job names fit in 63",
            )
        ],
    ),
]


def _resolve(node: Any, defs: dict[str, Any]) -> Any:
    """Inline every $ref (the models are not recursive)."""
    if isinstance(node, list):
        return [_resolve(x, defs) for x in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        target = copy.deepcopy(defs[node["$ref"].rsplit("/", 1)[-1]])
        rest = {k: v for k, v in node.items() if k != "$ref"}
        merged = _resolve(target, defs)
        merged.update(_resolve(rest, defs))  # the field's own description wins over the class docstring
        return merged
    return {k: _resolve(v, defs) for k, v in node.items()}


def _structural(node: dict[str, Any], name: str, cardinality: int = 1) -> dict[str, Any]:
    """Turn pydantic's JSON schema of one value into a Kubernetes structural schema."""
    node = dict(node)
    any_of = node.pop("anyOf", None)
    if any_of is not None:
        non_null = [s for s in any_of if s.get("type") != "null"]
        if len(non_null) != 1:
            raise ValueError(f"{name}: only Optional[X] unions are supported, got {any_of}")
        inner = dict(non_null[0])
        inner.update({k: v for k, v in node.items()})
        node = inner
    for key in _DROP_KEYS:
        node.pop(key, None)
    for bound, limit in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if not isinstance(node.get(bound), bool) and bound in node:  # JSON Schema's number; OpenAPI v3's flag
            node[limit], node[bound] = node[bound], True
    untyped = bool(node.get("x-kubernetes-preserve-unknown-fields")) and "oneOf" in node
    if node.get("x-kubernetes-preserve-unknown-fields") and not untyped:
        node.setdefault("type", "object")
        if node.get("additionalProperties") is True:
            del node["additionalProperties"]
    rules = []
    for rule in node.pop("x-kubernetes-validations", []):
        rule = {**rule, "message": rule["message"].replace("{field}", name)}
        pattern = rule.pop("pattern", None)
        if pattern and cardinality > MAX_CEL_STRING_CARDINALITY:
            node["pattern"] = pattern
        else:
            rules.append(rule)
    if rules:
        node["x-kubernetes-validations"] = rules
    if "properties" in node:
        node["properties"] = {k: _structural(v, k, cardinality) for k, v in node["properties"].items()}
    if isinstance(node.get("items"), dict):
        node["items"] = _structural(node["items"], name, cardinality * node.get("maxItems", 1_000_000))
        if "description" in node:
            node["items"].setdefault("description", node["description"])
    if isinstance(node.get("additionalProperties"), dict):
        node["additionalProperties"] = _structural(node["additionalProperties"], name)
    if "enum" in node and "type" not in node:
        node["type"] = "string"
    # A value of several types (a string or an object) keeps no type: its oneOf tells them apart.
    if "type" not in node and not untyped:
        raise ValueError(f"{name}: schema without a type: {node}")
    return node


def model_schema(model: type[BaseModel]) -> dict[str, Any]:
    """Structural OpenAPI v3 schema of one model."""
    raw = model.model_json_schema(by_alias=True, mode="validation")
    return _structural(_resolve(raw, raw.get("$defs", {})), model.__name__)


def crd(kind: Kind) -> dict[str, Any]:
    """The CustomResourceDefinition of one kind."""
    properties: dict[str, Any] = {
        "apiVersion": {"type": "string", "description": "kubetask.io/v1alpha1"},
        "kind": {"type": "string", "description": kind.kind},
        "metadata": {"type": "object"},
        "spec": model_schema(kind.spec),
    }
    if kind.status is not None:
        properties["status"] = model_schema(kind.status)
    root: dict[str, Any] = {
        "type": "object",
        "description": kind.description,
        "required": ["spec"],
        "properties": properties,
    }
    if kind.root_rules:
        root["x-kubernetes-validations"] = kind.root_rules
    version: dict[str, Any] = {
        "name": VERSION,
        "served": True,
        "storage": True,
        "schema": {"openAPIV3Schema": root},
        "additionalPrinterColumns": kind.printer_columns,
    }
    if kind.status is not None:
        version["subresources"] = {"status": {}}
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{kind.plural}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "names": {
                "kind": kind.kind,
                "listKind": f"{kind.kind}List",
                "plural": kind.plural,
                "singular": kind.kind.lower(),
                "shortNames": kind.short_names,
                "categories": ["kubetask"],
            },
            "scope": "Namespaced",
            "versions": [version],
        },
    }


def render(kind: Kind) -> str:
    header = "# Generated by `kubetask-crds` from kubetask/api; do not edit.\n"
    return header + yaml.safe_dump(crd(kind), sort_keys=False, width=120)


def crd_files() -> dict[str, str]:
    """File name -> YAML text of every CRD."""
    return {f"{GROUP}_{k.plural}.yaml": render(k) for k in KINDS}


DEFAULT_OUT = "deploy/crds/bases"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write the kubetask.io CRDs generated from the models.")
    parser.add_argument("--out", action="append", help="output folder, repeatable (default: deploy/crds/bases)")
    parser.add_argument("--check", action="store_true", help="exit 1 if a folder differs from the models")
    args = parser.parse_args(argv)
    files = {Path(folder) / name: text for folder in args.out or [DEFAULT_OUT] for name, text in crd_files().items()}
    return sync(files, check=args.check, command="kubetask-crds")


if __name__ == "__main__":
    sys.exit(main())

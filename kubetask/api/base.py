"""Shared building blocks of the kubetask.io/v1alpha1 models.

Every model serialises to the camelCase JSON the API server stores (``to_k8s``) and reads it back
(``model_validate``). Schema details that only the API server can enforce (CEL rules, preserve-unknown
fields) travel in ``json_schema_extra`` under ``x-kubernetes-*`` keys; ``crdgen`` turns them into the
CRD's structural schema. A ``{field}`` placeholder in a CEL message is replaced by the field's name.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

GROUP = "kubetask.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"


class ApiModel(BaseModel):
    """Base of every spec/status model: camelCase on the wire, unknown fields ignored on read."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")

    def to_k8s(self) -> dict[str, Any]:
        """The JSON the API server stores: camelCase keys, unset fields left out."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


def cel(rule: str, message: str, *, pattern: str | None = None) -> dict[str, str]:
    """One ``x-kubernetes-validations`` entry.

    ``pattern`` is an equivalent OpenAPI pattern for a string rule: where the field repeats too often
    for CEL's cost budget (a Batch's variableContexts), the CRD generator uses it instead.
    """
    return {"rule": rule, "message": message, **({"pattern": pattern} if pattern else {})}


def k8s_extra(*rules: dict[str, str], preserve_unknown: bool = False, **schema: Any) -> dict[str, Any]:
    """``json_schema_extra`` carrying CEL rules and other CRD-only schema keys."""
    extra: dict[str, Any] = dict(schema)
    if rules:
        extra["x-kubernetes-validations"] = list(rules)
    if preserve_unknown:
        extra["x-kubernetes-preserve-unknown-fields"] = True
    return extra


# --- durations ---------------------------------------------------------------------------------

DURATION_PATTERN = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"
_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> timedelta:
    """Parse a Go-style duration (``30s``, ``10m``, ``1h30m``, ``500ms``)."""
    if not re.fullmatch(DURATION_PATTERN, text):
        raise ValueError(f"{text!r} is not a duration such as 30s, 10m or 1h30m")
    return timedelta(seconds=sum(float(n) * _UNIT_SECONDS[u] for n, u in _DURATION_PART.findall(text)))


def _positive_duration(text: str) -> str:
    if parse_duration(text) <= timedelta(0):
        raise ValueError(f"{text!r} must be longer than zero")
    return text


Duration = Annotated[
    str,
    AfterValidator(_positive_duration),
    Field(
        max_length=64,
        json_schema_extra=k8s_extra(
            cel(
                f"self.matches(r'{DURATION_PATTERN}') && duration(self) > duration('0s')",
                "{field} must be a positive duration such as 30s, 10m or 1h30m",
            )
        ),
    ),
]


# --- names -------------------------------------------------------------------------------------

DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"


def _dns_label(text: str) -> str:
    if not re.fullmatch(DNS_LABEL_PATTERN, text) or len(text) > 63:
        raise ValueError(f"{text!r} is not a valid name (lower-case letters, digits and '-', at most 63)")
    return text


ObjectName = Annotated[str, AfterValidator(_dns_label), Field(min_length=1, max_length=253)]


# --- metadata and conditions -------------------------------------------------------------------


class OwnerReference(ApiModel):
    api_version: str
    kind: str
    name: str
    uid: str
    controller: bool | None = None
    block_owner_deletion: bool | None = None

    @classmethod
    def controller_of(cls, kind: str, name: str, uid: str) -> dict[str, Any]:
        """The controller reference to a kubetask.io object: deleting it deletes what it owns, and the
        garbage collector waits for the owned objects (``blockOwnerDeletion``)."""
        return cls(
            api_version=API_VERSION, kind=kind, name=name, uid=uid, controller=True, block_owner_deletion=True
        ).to_k8s()


class ObjectMeta(ApiModel):
    """The parts of ``metadata`` the controllers read; everything else is kept as-is."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="allow")

    name: str | None = None
    generate_name: str | None = None
    namespace: str | None = None
    uid: str | None = None
    generation: int | None = None
    resource_version: str | None = None
    labels: dict[str, str] | None = None
    annotations: dict[str, str] | None = None
    owner_references: list[OwnerReference] | None = None
    creation_timestamp: datetime | None = None
    deletion_timestamp: datetime | None = None


class Condition(ApiModel):
    """A Kubernetes-style condition (``metav1.Condition``)."""

    type: str = Field(description="Condition type, e.g. Ready, Succeeded, Stopped.", max_length=316)
    status: str = Field(
        description='"True", "False" or "Unknown".', json_schema_extra={"enum": ["True", "False", "Unknown"]}
    )
    reason: str = Field("", description="CamelCase reason a program can match on.", max_length=1024)
    message: str = Field("", description="What happened, for a person.", max_length=32768)
    last_transition_time: datetime | None = Field(None, description="When the status last changed.")
    observed_generation: int | None = Field(None, description="The spec generation the condition describes.")


class LocalObjectReference(ApiModel):
    name: str = Field(description="Name of the object in the same namespace.", min_length=1, max_length=253)

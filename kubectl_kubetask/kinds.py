"""The kinds the plugin acts on, how a command line names them, and which one a bare name is."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from kubetask import vocabulary
from kubetask.objects import Obj

from .errors import PluginError, not_found


@dataclass(frozen=True)
class Kind:
    """A kubetask.io kind: its name (``Task``) and its resource (``tasks``)."""

    name: str
    plural: str


TASK = Kind(vocabulary.KIND_TASK, "tasks")
BATCHRUN = Kind(vocabulary.KIND_BATCHRUN, "batchruns")

_SPELLINGS = {
    "task": TASK,
    "tasks": TASK,
    "ktask": TASK,
    "batchrun": BATCHRUN,
    "batchruns": BATCHRUN,
    "kbatchrun": BATCHRUN,
    "kbr": BATCHRUN,
}


def parse_kind(text: str) -> Kind:
    """``task``, ``Task``, ``tasks``, ``ktask``, ``batchrun``, ``kbr``... (kubectl's spellings, any case)."""
    kind = _SPELLINGS.get(text.strip().lower().removesuffix(".kubetask.io"))
    if kind is None:
        raise PluginError(f"unknown kind {text!r}: use task or batchrun")
    return kind


def parse_target(text: str, kind: Kind | None, allowed: Sequence[Kind]) -> tuple[tuple[Kind, ...], str]:
    """The kinds to try, in order, and the name: ``NAME`` tries ``kind`` if given, else every ``allowed``
    kind in turn; ``task/NAME`` or ``batchrun/NAME`` (kubectl's form) names the kind itself."""
    name = text
    if "/" in text:
        prefix, name = text.split("/", 1)
        named = parse_kind(prefix)
        if kind is not None and kind != named:
            raise PluginError(f"{text!r} names a {named.name}, but --kind says {kind.name}")
        kind = named
    if not name:
        raise PluginError(f"no name in {text!r}")
    if kind is not None and kind not in allowed:
        raise PluginError(f"this command acts on {' or '.join(k.name for k in allowed)}, not on a {kind.name}")
    return ((kind,) if kind is not None else tuple(allowed)), name


def detect(
    kinds: Sequence[Kind], name: str, namespace: str, get: Callable[[Kind, str], Obj | None]
) -> tuple[Kind, Obj]:
    """The first of ``kinds`` that has an object ``name`` (``get`` returns None when there is none), with
    that object; ``not_found`` naming every kind tried when none has."""
    for kind in kinds:
        obj = get(kind, name)
        if obj is not None:
            return kind, obj
    raise not_found([k.name for k in kinds], name, namespace)

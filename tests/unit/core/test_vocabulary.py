"""The vocabulary: one parser per annotation, and no other module that spells a kubetask.io/ string or
reads an annotation the controllers honour on its own."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from kubetask import vocabulary

REPO = Path(__file__).resolve().parents[3]
PRODUCTION = [p for package in ("kubetask", "kubetask_dagster", "crd_bridge") for p in (REPO / package).rglob("*.py")]
KEY = re.compile(r"kubetask\.io/[a-z0-9.-]*")  # a label, annotation or tag key (not prose that mentions one)
HONOURED = {vocabulary.STOP, vocabulary.PAUSE, vocabulary.RERUN}


@pytest.mark.parametrize("value", ["true", "True", "TRUE", " true ", "true\n"])
def test_stop_and_pause_accept_true_in_any_case(value):
    annotations = {vocabulary.STOP: value, vocabulary.PAUSE: value}
    assert vocabulary.stop_requested(annotations) and vocabulary.pause_requested(annotations)


@pytest.mark.parametrize("value", ["false", "", "yes", "1", "truee"])
def test_stop_and_pause_refuse_anything_else(value):
    annotations = {vocabulary.STOP: value, vocabulary.PAUSE: value}
    assert not vocabulary.stop_requested(annotations) and not vocabulary.pause_requested(annotations)


def test_absent_annotations_mean_no_request():
    for absent in (None, {}):
        assert not vocabulary.stop_requested(absent) and not vocabulary.pause_requested(absent)
        assert vocabulary.rerun_request(absent) is None


def test_rerun_request_is_the_stripped_value():
    assert vocabulary.rerun_request({vocabulary.RERUN: " failed\n"}) == vocabulary.RERUN_FAILED
    assert vocabulary.rerun_request({vocabulary.RERUN: "all"}) == "all"


def _honoured_key(node: ast.AST) -> str | None:
    """The honoured annotation ``node`` names: ``vocabulary.STOP`` or the literal string."""
    if isinstance(node, ast.Attribute) and node.attr in ("STOP", "PAUSE", "RERUN"):
        return getattr(vocabulary, node.attr)
    if isinstance(node, ast.Constant) and node.value in HONOURED:
        return node.value
    return None


def test_only_the_vocabulary_reads_the_annotations_the_controllers_honour():
    """Writing ``{STOP: "true"}`` is fine; reading it with ``.get(STOP)`` or ``[STOP]`` outside the parsers
    is how the bridge and the ops came to disagree on ``"True"``."""
    readers = []
    for path in PRODUCTION:
        if path == REPO / "kubetask" / "vocabulary.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in ("get", "pop"):
                key = _honoured_key(node.args[0]) if node.args else None
            elif isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load):
                key = _honoured_key(node.slice)
            else:
                continue
            if key:
                readers.append(f"{path.relative_to(REPO)}:{node.lineno} reads {key}")
    assert readers == []


def test_every_kubetask_io_string_is_spelled_in_the_vocabulary_only():
    spelled = []
    for path in PRODUCTION:
        if path == REPO / "kubetask" / "vocabulary.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Constant) and isinstance(node.value, str) and KEY.fullmatch(node.value)
                    and not node.value.startswith("kubetask.io/v1")):  # the API version, in the models
                spelled.append(f"{path.relative_to(REPO)}:{node.lineno} {node.value!r}")
    assert spelled == []

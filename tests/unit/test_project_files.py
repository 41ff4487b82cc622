"""The Python project's own files: licence, metadata, the pinned versions of the image, pre-commit."""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

import yaml

from kubetask.tools import constraints

REPO = Path(__file__).resolve().parents[2]


def test_constraints_pin_the_installed_closure_of_the_images_dependencies():
    text = (REPO / "constraints.txt").read_text()
    assert text == constraints.render(), "constraints.txt is stale: python -m kubetask.tools.constraints"
    pins = dict(line.split("==") for line in text.splitlines() if line and not line.startswith("#"))
    # the engine and its Postgres storage are pinned at the versions installed here, and the project is not
    assert pins["dagster"] == metadata.version("dagster") and "dagster-postgres" in pins
    assert "kubetask-dagster" not in pins and "pytest" not in pins  # the tests' own tools are not the image's
    dockerfile = (REPO / "Dockerfile").read_text()
    assert "--constraint constraints.txt" in dockerfile and re.search(r"^COPY .*constraints\.txt", dockerfile, re.M)


def test_the_closure_follows_extras_and_skips_what_a_marker_excludes():
    pins = constraints.pinned_closure(["dagster-k8s"])
    assert {"dagster", "kubernetes", "urllib3"} <= set(pins)


def test_the_package_declares_its_licence_metadata_and_console_scripts():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["license"] == "Apache-2.0" and "Apache License" in (REPO / "LICENSE").read_text()
    assert {"Homepage", "Issues"} <= set(project["urls"])
    assert project["scripts"]["kubetask-bridge"] == "crd_bridge.__main__:main"
    for package in ("kubetask", "kubetask_dagster", "crd_bridge"):
        assert (REPO / package / "py.typed").exists()
    installed = {e.name: e.value for e in metadata.entry_points(group="console_scripts")}
    assert installed.get("kubetask-bridge") == "crd_bridge.__main__:main"


def test_pre_commit_runs_what_dev_check_runs():
    hooks = yaml.safe_load((REPO / ".pre-commit-config.yaml").read_text())["repos"][0]["hooks"]
    check = (REPO / "dev").read_text().split("cmd_check() {", 1)[1].split("\n}", 1)[0]
    commands = [line.strip().replace('"$PY" ', "python ") for line in check.splitlines()[2:] if line.strip()]
    assert [h["entry"] for h in hooks] == commands

"""deploy/chart/kubetask is generated from deploy/ (kubetask.tools.chartgen) and stays so;
tests/integration/test_chart.py renders and installs it with helm."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from kubetask.tools import chartgen

CHART = Path(__file__).resolve().parents[2] / "deploy" / "chart" / "kubetask"


def test_the_committed_chart_is_what_deploy_generates():
    for name, text in chartgen.chart_files().items():
        assert (CHART / name).read_text() == text, f"{name} is stale: python -m kubetask.tools.chartgen"
    assert chartgen.main(["--check"]) == 0


def test_the_values_defaults_are_deploys_settings():
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    deployment = next(d for d in yaml.safe_load_all((chartgen.DEPLOY / "bridge" / "deployment.yaml").read_text())
                      if d and d["kind"] == "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert values["bridge"]["replicas"] == deployment["spec"]["replicas"]
    assert values["bridge"]["resources"] == container["resources"]
    assert f"{values['image']['repository']}:{yaml.safe_load((CHART / 'Chart.yaml').read_text())['appVersion']}" == container["image"]
    assert values["tenants"] == [] and values["crds"]["install"] is True


def test_only_the_kustomize_features_it_reads_are_accepted(tmp_path):
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump(
        {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization", "resources": [], "namePrefix": "x-"}))
    with pytest.raises(ValueError, match="namePrefix"):
        chartgen.kustomize(tmp_path)


def test_tenant_manifests_render_per_namespace_and_prometheus_braces_survive():
    files = chartgen.chart_files()
    assert files["templates/tenants.yaml"].count("namespace: {{ $namespace | quote }}") == len(
        chartgen.kustomize(chartgen.DEPLOY / "tenant"))
    assert '{{ "{{" }} $labels.namespace {{ "}}" }}' in files["templates/monitoring.yaml"]
    assert "__" not in files["templates/platform.yaml"].replace("__init__", "")

"""The committed CRDs are exactly what the models generate, and have the shape kubectl users rely on."""

from pathlib import Path

import yaml

from kubetask.tools import crdgen

REPO = Path(__file__).resolve().parents[3]
CRDS = REPO / "deploy" / "crds" / "bases"


def test_committed_crds_match_the_models():
    generated = crdgen.crd_files()
    committed = {p.name: p.read_text() for p in CRDS.glob("*.yaml")}
    assert set(committed) == set(generated), "deploy/crds/bases/ has extra or missing files: run kubetask-crds"
    for name, text in generated.items():
        assert committed[name] == text, f"deploy/crds/bases/{name} is stale: run kubetask-crds"


def test_check_mode_detects_drift(tmp_path):
    assert crdgen.main(["--out", str(tmp_path)]) == 0
    assert crdgen.main(["--out", str(tmp_path), "--check"]) == 0
    victim = next(tmp_path.glob("*.yaml"))
    victim.write_text(victim.read_text().replace("maxLength: 1024", "maxLength: 1025", 1))
    assert crdgen.main(["--out", str(tmp_path), "--check"]) == 1


def _walk(schema, path="$"):
    yield path, schema
    for name, sub in schema.get("properties", {}).items():
        yield from _walk(sub, f"{path}.{name}")
    if isinstance(schema.get("items"), dict):
        yield from _walk(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from _walk(schema["additionalProperties"], f"{path}{{}}")


def test_schemas_are_structural_and_documented():
    for kind in crdgen.KINDS:
        doc = crdgen.crd(kind)
        version = doc["spec"]["versions"][0]
        root = version["schema"]["openAPIV3Schema"]
        for path, node in _walk(root):
            if "oneOf" in node:  # a string or an object: untyped, told apart by value validations alone
                assert "type" not in node and node.get("x-kubernetes-preserve-unknown-fields"), path
                assert all(not {"type", "description", "default"} & set(branch) for branch in node["oneOf"]), path
            else:
                assert "type" in node, f"{kind.kind} {path} has no type"
            assert not {"anyOf", "$ref", "allOf"} & node.keys(), f"{kind.kind} {path} is not structural"
            for bound in ("exclusiveMinimum", "exclusiveMaximum"):  # OpenAPI v3: a flag on minimum/maximum
                assert isinstance(node.get(bound, False), bool), f"{kind.kind} {path}: {bound} must be a boolean"
            if path.startswith("$.spec.") and not path.endswith("{}"):
                assert node.get("description"), f"{kind.kind} {path} has no description (kubectl explain)"
        assert doc["spec"]["names"]["categories"] == ["kubetask"]
        assert doc["spec"]["names"]["shortNames"]
        assert ("subresources" in version) == (kind.status is not None)


def test_printer_columns():
    columns = {k.kind: [c["name"] for c in k.printer_columns] for k in crdgen.KINDS}
    assert columns["Task"][:3] == ["Phase", "Job", "Attempt"] and columns["Task"][-1] == "Age"
    assert columns["BatchRun"] == ["Batch", "Phase", "Completed", "Total", "Failed", "PRs", "Cost", "Age"]


def test_cel_messages_name_their_field():
    text = (CRDS / "kubetask.io_tasks.yaml").read_text()
    assert "{field}" not in text
    rules = [r for _, n in _walk(yaml.safe_load(text)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]) for r in n.get("x-kubernetes-validations", [])]
    messages = {r["message"] for r in rules}
    assert any(m.startswith("filePath must be an absolute") for m in messages)
    assert any(m.startswith("timeout must be a positive duration") for m in messages)


def test_api_reference_matches_the_models():
    from kubetask.tools import docgen

    committed = (REPO / "docs" / "api.md").read_text()
    assert committed == docgen.render(), "docs/api.md is stale: run kubetask-api-docs"

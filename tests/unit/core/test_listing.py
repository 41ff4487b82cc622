"""The one paginated list of custom objects, over a fake CustomObjectsApi that pages by ``limit``."""

from kubetask.kube.listing import list_custom_objects


class PagingApi:
    def __init__(self, objects: dict[str, list[str]]):
        self.objects = objects  # namespace -> names
        self.calls: list[tuple] = []

    def _page(self, names: list[str], limit: int, _continue: str | None = None, **kwargs) -> dict:
        start = int(_continue or 0)
        items = [{"metadata": {"name": n}} for n in names[start:start + limit]]
        more = start + limit < len(names)
        return {"items": items, "metadata": {"continue": str(start + limit)} if more else {}}

    def list_namespaced_custom_object(self, group, version, namespace, plural, **kwargs):
        self.calls.append(("ns", namespace, plural, kwargs.get("label_selector"), kwargs.get("_request_timeout")))
        return self._page(self.objects.get(namespace, []), **kwargs)

    def list_cluster_custom_object(self, group, version, plural, **kwargs):
        self.calls.append(("all", None, plural, kwargs.get("label_selector"), kwargs.get("_request_timeout")))
        return self._page([n for names in self.objects.values() for n in names], **kwargs)


def names(items: list[dict]) -> list[str]:
    return [i["metadata"]["name"] for i in items]


def test_follows_continue_tokens_until_the_last_page():
    api = PagingApi({"a": [f"t{i}" for i in range(7)]})
    assert names(list_custom_objects(api, "tasks", ["a"], page_size=3)) == [f"t{i}" for i in range(7)]
    assert len(api.calls) == 3


def test_no_namespaces_lists_cluster_wide_and_named_ones_one_by_one():
    api = PagingApi({"a": ["x"], "b": ["y", "z"]})
    assert names(list_custom_objects(api, "batches")) == ["x", "y", "z"]
    assert [c[0] for c in api.calls] == ["all"]
    api.calls.clear()
    assert names(list_custom_objects(api, "batches", ["b", "a"], label_selector="k=v", timeout=(3, 20))) == ["y", "z", "x"]
    assert api.calls == [("ns", "b", "batches", "k=v", (3, 20)), ("ns", "a", "batches", "k=v", (3, 20))]

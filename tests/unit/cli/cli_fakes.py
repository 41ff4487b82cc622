"""Fakes of the plugin's two edges (the cluster, Dagster) for the unit tests of kubectl_kubetask."""

from __future__ import annotations

import io

from kubectl_kubetask.cluster import LogUnavailable
from kubectl_kubetask.commands import Session
from kubectl_kubetask.errors import dagster_unreachable
from kubetask.domain import kept_logs


def task_obj(name="hello", ns="ns", phase="Completed", attempt=1, **status):
    return {"apiVersion": "kubetask.io/v1alpha1", "kind": "Task",
            "metadata": {"name": name, "namespace": ns, "annotations": {}},
            "status": {"phase": phase, "attempt": attempt, "jobName": f"{name}-job-{attempt}",
                       "dagsterRunId": "run-1", "dagsterRunUrl": "http://127.0.0.1:3999/runs/run-1", **status}}


def batchrun_obj(name="br", ns="ns", phase="Running", progress=None, annotations=None, **status):
    return {"apiVersion": "kubetask.io/v1alpha1", "kind": "BatchRun",
            "metadata": {"name": name, "namespace": ns, "annotations": dict(annotations or {})},
            "status": {"phase": phase, "progress": progress or {"total": 0}, **status}}


class FakeCluster:
    namespace = "ns"
    server = "https://127.0.0.1:6443"

    def __init__(self, objects=None, pods=None, logs=None, jobs=None):
        self.objects = objects or {}  # (kind name, name) -> obj, or a list of objs returned in turn
        self.pod_list = pods or {}  # (task, attempt) -> [pod]
        self.logs = logs or {}  # pod -> text, or an exception
        self.jobs = jobs or {}
        self.annotations: list[tuple[str, str, dict]] = []
        self.reads: list[tuple[str, str]] = []

    def get(self, kind, name):
        self.reads.append((kind.name, name))
        found = self.objects.get((kind.name, name))
        if isinstance(found, list):
            return found.pop(0) if len(found) > 1 else found[0]
        return found

    def annotate(self, kind, name, annotations):
        self.annotations.append((kind.name, name, dict(annotations)))
        return self.objects.get((kind.name, name))

    def job(self, name):
        return self.jobs.get(name)

    def pods(self, task, attempt):
        return self.pod_list.get((task, attempt), [])

    def pod_log(self, pod, container, follow):
        assert container == "agent"
        log = self.logs.get(pod)
        if isinstance(log, Exception):
            raise log
        if log is None:
            raise LogUnavailable("404 Not Found")
        return iter([log[: len(log) // 2], log[len(log) // 2:]])


class FakeDagster:
    """A Dagster whose run ``run-1`` has one compute log holding ``stdout``."""

    def __init__(self, url, stdout="", status="SUCCESS", reachable=True):
        self.url = url
        self.stdout = stdout
        self.status = status
        self.reachable = reachable
        self.asked: list[tuple] = []

    def _check(self):
        if not self.reachable:
            raise dagster_unreachable(self.url, "connection refused")

    def run_status(self, run_id):
        self._check()
        return self.status

    def kept_block(self, ref, namespace, name, attempt):
        self._check()
        self.asked.append((ref.run_id, ref.step_key, namespace, name, attempt))
        return kept_logs.extract(self.stdout, namespace, name, attempt)


class TtyBuffer(io.StringIO):
    def __init__(self, tty=False):
        super().__init__()
        self.tty = tty

    def isatty(self):
        return self.tty


def session(cluster, dagster=None, tty=False, **kw):
    made = []

    def factory(url):
        d = dagster or FakeDagster(url)
        d.url = url
        made.append(d)
        return d

    s = Session(cluster, TtyBuffer(tty), TtyBuffer(), dagster=factory, sleep=lambda _: None, **kw)
    s.made = made
    return s

"""The task flow (``kubetask_dagster/ops/task.py``): ``task_job`` executed in-process against a fake ``Kube``.

The fake keeps Tasks and WorkspaceConfigs in memory, applies status merge patches, records the
ConfigMaps, Secrets, Jobs and Events written, and ends each attempt with a scripted ``PodOutcome``.
"""

from __future__ import annotations

import base64
import copy
import json
import time
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from dagster import DagsterEventType, DagsterInstance

from kubetask import vocabulary
from kubetask.domain import manifests
from kubetask.domain.outcomes import STUCK_WAITING_REASONS, PodOutcome
from kubetask.domain.redact import MASK, last_lines
from kubetask_dagster.jobs import task_job
from kubetask_dagster.kube import Conflict
from kubetask_dagster.resources import KubeResource

NS = "team-a"
UID = "task-uid-1"
CREDENTIAL = "sk-live-0123456789"
CONTEXT_SECRET = "ctx-token-987654321"
STUCK = set(STUCK_WAITING_REASONS.values())


class FakeKube:
    """The ``Kube`` calls of the task ops, in memory."""

    def __init__(self, outcomes: list[PodOutcome] | None = None, log: str = ""):
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.secrets: dict[tuple[str, str], dict[str, str]] = {}
        self.config_maps: dict[tuple[str, str], dict[str, str]] = {}
        self.applied_config_maps: list[dict] = []
        self.applied_secrets: list[dict] = []
        self.jobs: dict[str, dict] = {}  # name -> body
        self.created: list[str] = []
        self.deleted: list[str] = []
        self.job_conditions: dict[str, str] = {}  # name -> "Complete" | "Failed" once its attempt ended
        self.patches: list[dict] = []
        self.events: list[tuple[str, str, bool]] = []
        self.waits: list[dict] = []
        self.pods_ended_waits: list[str] = []  # Jobs whose pods had to end before a slot was freed
        self.outcomes = list(outcomes or [])
        self.fetch_budgets: list[float] = []
        self.log_reads = 0
        self.evictions = 0  # times Kueue evicts a suspended-created Job after admitting it
        self.gates: list[str | None] = []  # the scheduling gate each wait lifts
        self.conflicts = 0  # conditional writes that find the object changed since it was read
        self.log = log

    def add(self, plural: str, obj: dict) -> None:
        obj = copy.deepcopy(obj)
        obj["metadata"].setdefault("resourceVersion", "1")
        self.objects[(plural, obj["metadata"]["namespace"], obj["metadata"]["name"])] = obj

    def task(self, name: str = "t1") -> dict:
        return self.objects[("tasks", NS, name)]

    # custom resources
    def get_custom(self, plural, namespace, name, max_age=0.0):
        obj = self.objects.get((plural, namespace, name))
        return copy.deepcopy(obj) if obj is not None else None

    def patch_status(self, plural, namespace, name, status, resource_version=None):
        obj = self.objects.get((plural, namespace, name))
        if obj is None:
            return None
        meta = obj["metadata"]
        if self.conflicts and resource_version is not None:
            self.conflicts -= 1
            meta["resourceVersion"] = str(int(meta.get("resourceVersion", "1")) + 1)  # someone wrote in between
        if resource_version is not None and resource_version != meta.get("resourceVersion", "1"):
            raise Conflict("changed")
        meta["resourceVersion"] = str(int(meta.get("resourceVersion", "1")) + 1)
        if plural == "tasks":
            self.patches.append(copy.deepcopy(status))
        current = obj.setdefault("status", {})
        for k, v in status.items():
            if v is None:
                current.pop(k, None)
            else:
                current[k] = copy.deepcopy(v)
        return copy.deepcopy(obj)

    def forget(self, plural, namespace, *, name="", label_selector=""):
        pass  # nothing is cached here

    # context readers
    def config_map_data(self, namespace, name):
        return self.config_maps.get((namespace, name))

    def secret_data(self, namespace, name):
        return self.secrets.get((namespace, name))

    def secret_keys(self, namespace, name):
        data = self.secrets.get((namespace, name))
        return None if data is None else sorted(data)

    def fetch(self, url, headers, timeout, max_bytes):
        self.fetch_budgets.append(timeout)
        time.sleep(1.2)  # a slow server
        return "remote content"

    # the attempt's objects
    def apply_config_map(self, body):
        self.applied_config_maps.append(copy.deepcopy(body))
        self.config_maps[(body["metadata"]["namespace"], body["metadata"]["name"])] = dict(body["data"])

    def apply_secret(self, body):
        self.applied_secrets.append(copy.deepcopy(body))
        data = {k: base64.b64decode(v).decode() for k, v in body["data"].items()}
        self.secrets[(body["metadata"]["namespace"], body["metadata"]["name"])] = data

    def get_job(self, namespace, name):
        body = self.jobs.get(name)
        if body is None:
            return None
        cond = self.job_conditions.get(name)
        return SimpleNamespace(
            metadata=SimpleNamespace(name=name, annotations=body["metadata"].get("annotations")),
            status=SimpleNamespace(conditions=[SimpleNamespace(type=cond, status="True")] if cond else []),
        )

    def create_job(self, body):
        name = body["metadata"]["name"]
        self.created.append(name)
        if name in self.jobs:
            return False
        self.jobs[name] = copy.deepcopy(body)
        return True

    def delete_job(self, namespace, name):
        self.deleted.append(name)
        self.jobs.pop(name, None)

    def pod_log_tail(self, namespace, pod, lines=50, container="agent"):
        return self.log

    def pod_log(self, namespace, pod, container="agent", max_bytes=0):
        self.log_reads += 1
        return self.log

    def wait_for_pod_end(self, namespace, job_name, *, label_selector, deadline_seconds, on_running=None,
                         interrupted=lambda: False, no_pod_grace=60.0, on_suspended=None, on_admitted=None, lift_gate=None):
        self.waits.append({"job": job_name, "selector": label_selector, "deadline": deadline_seconds})
        self.gates.append(lift_gate)
        pod = f"{job_name}-pod"
        if self.jobs.get(job_name, {}).get("spec", {}).get("suspend"):  # Kueue admits it (and evicts it once, if asked)
            on_suspended(False)
            on_admitted()
            if self.evictions:
                self.evictions -= 1
                on_running(pod)
                on_suspended(True)
                on_admitted()
        if on_running:
            on_running(pod)
        outcome = self.outcomes.pop(0)
        outcome.pod_name = pod
        if outcome.reason not in STUCK:  # a pod that cannot start leaves its Job running (until its deadline)
            self.job_conditions[job_name] = "Complete" if outcome.succeeded else "Failed"
        return outcome

    def wait_pods_ended(self, namespace, job_name, *, label_selector, timeout):
        self.pods_ended_waits.append(job_name)
        return True

    def emit_event(self, obj, reason, message, *, warning=False):
        self.events.append((reason, message, warning))


def task_obj(name: str = "t1", *, annotations: dict | None = None, status: dict | None = None, **spec) -> dict:
    obj = {
        "apiVersion": "kubetask.io/v1alpha1",
        "kind": "Task",
        "metadata": {"name": name, "namespace": NS, "uid": UID, "generation": 1, "annotations": annotations or {}},
        "spec": {
            "contexts": [
                {"type": "File", "file": {"filePath": "/workspace/task.md", "source": {"inline": "fix the bug"}}},
                {"type": "File", "file": {"filePath": "/workspace/token",
                                          "source": {"secretKeyRef": {"name": "ctx", "key": "token"}}}},
            ],
            **spec,
        },
    }
    if status is not None:
        obj["status"] = status
    return obj


def workspace_obj(name: str = "default", **spec) -> dict:
    return {
        "apiVersion": "kubetask.io/v1alpha1",
        "kind": "WorkspaceConfig",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "serviceAccountName": "agent",
            "credentials": [{"name": "llm", "secretRef": {"name": "llm", "key": "api-key"}, "env": "API_KEY"}],
            **spec,
        },
    }


def fake_kube(*outcomes: PodOutcome, log: str = "", task: dict | None = None, workspace: dict | None = None) -> FakeKube:
    kube = FakeKube(list(outcomes), log)
    kube.add("tasks", task or task_obj())
    if workspace is not False:
        kube.add("workspaceconfigs", workspace or workspace_obj())
    kube.secrets[(NS, "ctx")] = {"token": CONTEXT_SECRET}
    kube.secrets[(NS, "llm")] = {"api-key": CREDENTIAL, "other": "never-given-to-the-agent"}
    return kube


def ok() -> PodOutcome:
    return PodOutcome(True, vocabulary.COMPLETED, "the agent exited with 0", exit_code=0)


def agent_failed(code: int = 1) -> PodOutcome:
    return PodOutcome(False, vocabulary.AGENT_FAILED, f"the agent exited with {code} (Error)", exit_code=code)


@pytest.fixture
def run(monkeypatch):
    """Execute ``task_job`` for Task t1 against ``kube``; returns the result and the instance."""

    def execute(kube: FakeKube, name: str = "t1", uid: str = UID, instance: DagsterInstance | None = None):
        monkeypatch.setattr(KubeResource, "api", property(lambda self: kube))
        instance = instance or DagsterInstance.ephemeral()
        result = task_job.execute_in_process(
            run_config={"ops": {"prepare_task": {"config": {"namespace": NS, "name": name, "uid": uid}}}},
            resources={"kube": KubeResource()},
            instance=instance,
            raise_on_error=False,
        )
        return result, instance

    return execute


def phases(kube: FakeKube) -> list[str | None]:
    return [p.get("phase") for p in kube.patches]


def reason(status: dict) -> str:
    return next(c["reason"] for c in status["conditions"] if c["type"] == vocabulary.SUCCEEDED)


def test_stop_annotation_any_case_stops_without_a_job(run):
    kube = fake_kube(task=task_obj(annotations={vocabulary.STOP: "True"}))
    result, _ = run(kube)
    assert not result.success
    status = kube.task()["status"]
    assert status["phase"] == "Stopped" and reason(status) == vocabulary.STOP_REQUESTED
    assert kube.created == [] and kube.applied_config_maps == [] and kube.applied_secrets == []
    assert kube.waits == []


def test_missing_workspace_config_fails_the_task(run):
    kube = fake_kube(task=task_obj(workspaceConfigRef="gpu"))  # only "default" exists
    result, _ = run(kube)
    assert not result.success
    status = kube.task()["status"]
    assert status["phase"] == "Failed" and reason(status) == vocabulary.WORKSPACE_CONFIG_NOT_FOUND
    assert 'WorkspaceConfig "gpu" not found in namespace "team-a"' in status["message"]
    assert [(r, w) for r, _, w in kube.events] == [(vocabulary.WORKSPACE_CONFIG_NOT_FOUND, True)]
    assert kube.created == []


def test_an_env_credential_on_a_secret_of_several_keys_fails_the_task_before_any_job(run):
    ws = workspace_obj(credentials=[{"secretRef": {"name": "llm"}, "env": {"name": "API_KEY"}}])
    kube = fake_kube(ok(), workspace=ws)  # Secret llm holds api-key and other
    result, _ = run(kube)
    assert not result.success
    status = kube.task()["status"]
    assert status["phase"] == "Failed" and reason(status) == vocabulary.CREDENTIAL_KEY_AMBIGUOUS
    assert 'Secret "llm" holds 2 keys (api-key, other)' in status["message"]
    assert kube.created == [] and kube.waits == []
    assert CREDENTIAL not in str(kube.patches) + str(kube.events)


def test_an_env_credential_on_a_single_key_secret_references_that_key(run):
    ws = workspace_obj(credentials=[{"secretRef": {"name": "one"}, "env": {"name": "API_KEY"}}])
    kube = fake_kube(ok(), workspace=ws)
    kube.secrets[(NS, "one")] = {"token": CREDENTIAL}
    result, _ = run(kube)
    assert result.success
    agent = kube.jobs["t1-job-1"]["spec"]["template"]["spec"]["containers"][0]
    assert {"name": "API_KEY", "valueFrom": {"secretKeyRef": {"name": "one", "key": "token"}}} in agent["env"]
    assert CREDENTIAL not in str(kube.jobs)


def test_a_task_that_no_longer_exists_writes_nothing(run):
    kube = fake_kube()
    result, _ = run(kube, uid="another-uid")  # deleted and recreated under the same name
    assert not result.success
    assert kube.patches == [] and kube.created == [] and kube.events == []


def test_success_writes_running_then_completed_and_one_job(run):
    kube = fake_kube(ok(), task=task_obj(timeout="10m"))
    result, _ = run(kube)
    assert result.success
    assert result.output_for_node("run_agent") == {"attempt": 1, "job": "t1-job-1", "exitCode": 0}
    assert phases(kube) == ["Running", None, "Completed"]  # None: the pod's name once it runs
    running, pod_started, completed = kube.patches
    assert running["attempt"] == 1 and running["jobName"] == "t1-job-1" and running["dagsterRunId"] == result.run_id
    assert pod_started == {"podName": "t1-job-1-pod"}
    status = kube.task()["status"]
    assert status["phase"] == "Completed" and status["exitCode"] == 0 and status["podName"] == "t1-job-1-pod"

    assert kube.created == ["t1-job-1"]
    body = kube.jobs["t1-job-1"]
    assert body["metadata"]["annotations"][vocabulary.DAGSTER_RUN_ID] == result.run_id
    assert body["metadata"]["labels"][vocabulary.LABEL_ATTEMPT] == "1"
    assert kube.waits == [{"job": "t1-job-1", "selector": "kubetask.io/task=t1", "deadline": 660}]

    [config_map] = kube.applied_config_maps
    assert config_map["metadata"]["name"] == "t1-context" and list(config_map["data"].values()) == ["fix the bug"]
    [secret] = kube.applied_secrets
    assert secret["metadata"]["name"] == "t1-context-secret"
    assert CONTEXT_SECRET not in str(config_map)  # the Secret's content stays out of the ConfigMap
    volumes = {v["name"]: v for v in body["spec"]["template"]["spec"]["volumes"]}
    assert volumes[manifests.CONTEXT_VOLUME]["configMap"]["name"] == "t1-context"
    assert [r for r, _, _ in kube.events] == [vocabulary.JOB_CREATED, vocabulary.COMPLETED]


def test_a_failed_attempt_with_retries_left_records_retrying_and_runs_a_second_job(run):
    kube = fake_kube(agent_failed(3), ok(), task=task_obj(retries={"limit": 2, "backoff": {"initialDelay": "1ms"}}))
    result, _ = run(kube)
    assert result.success
    assert kube.created == ["t1-job-1", "t1-job-2"]
    assert phases(kube) == ["Running", None, "Running", "Running", None, "Completed"]
    retrying = kube.patches[2]
    assert reason(retrying) == vocabulary.AGENT_FAILED and retrying["exitCode"] == 3
    assert "attempt 1 failed (AgentFailed: the agent exited with 3 (Error)); retrying in" in retrying["message"]
    assert kube.patches[3]["attempt"] == 2 and kube.patches[3]["jobName"] == "t1-job-2"
    assert kube.patches[3]["exitCode"] is None  # the failed attempt's exit code is cleared
    assert [(r, w) for r, _, w in kube.events] == [
        (vocabulary.JOB_CREATED, False), (vocabulary.RETRYING, True), (vocabulary.JOB_CREATED, False), (vocabulary.COMPLETED, False),
    ]
    assert kube.deleted == []  # the first Job had finished: nothing to supersede
    assert result.output_for_node("run_agent")["attempt"] == 2


def test_a_retry_after_a_pod_that_cannot_start_runs_a_new_job(run):
    stuck = PodOutcome(False, vocabulary.CONTAINER_CONFIG_ERROR, 'CreateContainerConfigError: secret "llm" not found')
    kube = fake_kube(stuck, ok(), task=task_obj(retries={"limit": 1, "backoff": {"initialDelay": "1ms"}}))
    run(kube)
    assert kube.created == ["t1-job-1", "t1-job-2"]
    assert kube.task()["status"]["attempt"] == 2


def test_a_task_failed_for_a_pod_that_cannot_start_deletes_its_job(run):
    stuck = PodOutcome(False, vocabulary.IMAGE_PULL_FAILED, "ImagePullBackOff: not found")
    kube = fake_kube(stuck)
    result, _ = run(kube)
    assert not result.success and kube.task()["status"]["phase"] == "Failed"  # holds today
    assert kube.deleted == ["t1-job-1"]


def test_the_last_failed_attempt_fails_the_task_with_its_exit_code(run):
    kube = fake_kube(agent_failed(2), agent_failed(5), task=task_obj(retries={"limit": 1, "backoff": {"initialDelay": "1ms"}}))
    result, _ = run(kube)
    assert not result.success
    status = kube.task()["status"]
    assert status["phase"] == "Failed" and reason(status) == vocabulary.AGENT_FAILED and status["exitCode"] == 5
    assert status["message"] == "attempt 2: the agent exited with 5 (Error)"
    assert kube.created == ["t1-job-1", "t1-job-2"]


def test_a_deleted_job_is_not_retried(run):
    deleted = PodOutcome(False, vocabulary.JOB_DELETED, "Job t1-job-1 was deleted before its pod finished")
    kube = fake_kube(deleted, task=task_obj(retries={"limit": 3, "backoff": {"initialDelay": "1ms"}}))
    result, _ = run(kube)
    assert not result.success
    assert kube.created == ["t1-job-1"] and reason(kube.task()["status"]) == vocabulary.JOB_DELETED


def test_a_job_left_running_by_a_dead_run_is_superseded(run):
    kube = fake_kube(ok(), task=task_obj(status={"phase": "Running", "attempt": 1, "jobName": "t1-job-1"}))
    kube.jobs["t1-job-1"] = {"metadata": {"name": "t1-job-1", "annotations": {vocabulary.DAGSTER_RUN_ID: "dead-run"}}}
    result, _ = run(kube)
    assert result.success
    assert kube.deleted == ["t1-job-1"] and kube.created == ["t1-job-2"]


def test_the_agent_log_tail_is_redacted_in_metadata_and_logs(run):
    log = f"calling the API with {CREDENTIAL}\nread token {CONTEXT_SECRET}\nother never-given-to-the-agent\nexit 1"
    kube = fake_kube(agent_failed(1), log=log)
    result, instance = run(kube)
    assert not result.success
    [observation] = [
        r.dagster_event.event_specific_data.asset_observation
        for r in instance.all_logs(result.run_id, of_type=DagsterEventType.ASSET_OBSERVATION)
    ]
    tail = observation.metadata["log_tail"].value
    assert tail == f"calling the API with {MASK}\nread token {MASK}\nother never-given-to-the-agent\nexit 1"
    assert observation.partition == "t1" and observation.metadata["exit_code"].value == 1
    everything = " ".join(str(r) for r in instance.all_logs(result.run_id))
    assert f"read token {MASK}" in everything  # the warning with the tail was logged ...
    assert CREDENTIAL not in everything and CONTEXT_SECRET not in everything  # ... redacted, like all the rest
    assert CREDENTIAL not in str(kube.patches) and CREDENTIAL not in str(kube.events)


def test_a_successful_attempts_materialization_carries_the_redacted_tail(run):
    kube = fake_kube(ok(), log=f"done with {CREDENTIAL}")
    result, _ = run(kube)
    [materialization] = result.asset_materializations_for_node("run_agent")
    assert materialization.asset_key.path == ["kubetask", NS, "tasks"] and materialization.partition == "t1"
    assert materialization.metadata["log_tail"].value == f"done with {MASK}"
    assert materialization.metadata["job"].value == "t1-job-1"


def test_the_whole_agent_log_is_kept_redacted_in_the_steps_stdout(run, capfd):
    log = "".join(f"line {i}\n" for i in range(500)) + f"the key is {CREDENTIAL}\n"
    kube = fake_kube(ok(), log=log)
    result, _ = run(kube)
    assert result.success
    out = capfd.readouterr().out
    assert "===== agent log of Task team-a/t1, attempt 1, pod t1-job-1-pod =====" in out
    assert "line 0\n" in out and "line 499\n" in out and f"the key is {MASK}" in out  # all of it, not the tail
    assert CREDENTIAL not in out
    assert kube.task()["status"]["agentLog"] == f"Dagster run {result.run_id}, step run_agent: its stdout (attempt 1)"
    assert kube.log_reads == 1  # the tail in the metadata comes from the same read


def test_the_tail_is_the_last_lines_of_the_log_within_its_byte_cap():
    text = "".join(f"line {i}\n" for i in range(100))
    assert last_lines(text, 3, 1000) == "line 97\nline 98\nline 99\n"
    assert last_lines(text, 3, 16) == "line 98\nline 99\n"  # whole lines only
    assert last_lines("x" * 50, 5, 10) == "" and last_lines(text, 0, 100) == ""


def test_max_concurrent_tasks_holds_a_pool_slot_only_while_the_job_runs(run):
    kube = fake_kube(ok(), workspace=workspace_obj(maxConcurrentTasks=1))
    instance = DagsterInstance.ephemeral()
    pool = "kubetask/team-a/default"
    seen: dict[str, Any] = {}
    wait = kube.wait_for_pod_end

    def wait_and_look(*args, **kwargs):
        info = instance.event_log_storage.get_concurrency_info(pool)
        seen["limit"], seen["claimed"] = info.slot_count, [c.step_key for c in info.claimed_slots]
        return wait(*args, **kwargs)

    kube.wait_for_pod_end = wait_and_look
    ended = kube.wait_pods_ended

    def pods_ended_while_the_slot_is_held(*args, **kwargs):
        seen["held while the pod ends"] = [c.step_key for c in instance.event_log_storage.get_concurrency_info(pool).claimed_slots]
        return ended(*args, **kwargs)

    kube.wait_pods_ended = pods_ended_while_the_slot_is_held
    result, _ = run(kube, instance=instance)
    assert result.success
    assert seen == {"limit": 1, "claimed": ["run_agent"], "held while the pod ends": ["run_agent"]}
    assert kube.pods_ended_waits == ["t1-job-1"]
    assert instance.event_log_storage.get_concurrency_info(pool).claimed_slots == []


def test_a_failed_attempt_releases_its_pool_slot_too(run):
    kube = fake_kube(agent_failed(1), workspace=workspace_obj(maxConcurrentTasks=1))
    instance = DagsterInstance.ephemeral()
    result, _ = run(kube, instance=instance)
    assert not result.success
    assert instance.event_log_storage.get_concurrency_info("kubetask/team-a/default").claimed_slots == []


# --- rate limits ---------------------------------------------------------------------------------


def rate_limited(seconds: float) -> PodOutcome:
    until = (datetime.now(UTC) + timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return PodOutcome(False, vocabulary.AGENT_FAILED, "the agent exited with 75 (Error)", exit_code=75,
                      result_text=json.dumps({"summary": "rate-limited", "rateLimitedUntil": until}))


def test_a_rate_limited_attempt_waits_for_the_reset_without_using_up_a_retry(run):
    # one retry allowed: the rate-limited attempt is not it, so the ordinary failure after it still gets its retry
    kube = fake_kube(rate_limited(1.0), agent_failed(3), ok(),
                     task=task_obj(retries={"limit": 1, "backoff": {"initialDelay": "1ms"}}))
    started = time.monotonic()
    result, _ = run(kube)
    assert result.success, kube.task()["status"]
    assert kube.created == ["t1-job-1", "t1-job-2", "t1-job-3"]
    assert time.monotonic() - started >= 1.0  # it waited for the reset
    waiting = next(p for p in kube.patches if p.get("phase") == "Queued")
    assert reason(waiting) == vocabulary.RATE_LIMITED and waiting["waits"] == 1
    assert "stopped on its provider's rate limit until" in waiting["message"]
    assert vocabulary.RATE_LIMITED in [r for r, _, _ in kube.events]
    # the WorkspaceConfig carries the reset: its other Tasks wait for it too
    assert kube.objects[("workspaceconfigs", NS, "default")]["status"]["rateLimitedUntil"] == waiting["waitingUntil"]
    assert kube.task()["status"]["attempt"] == 3 and "waitingUntil" not in kube.task()["status"]


def test_a_task_of_a_rate_limited_workspace_config_waits_before_its_first_job(run):
    until = (datetime.now(UTC) + timedelta(seconds=1.5)).strftime("%Y-%m-%dT%H:%M:%SZ")
    workspace = workspace_obj()
    workspace["status"] = {"rateLimitedUntil": until}
    kube = fake_kube(ok(), workspace=workspace)
    result, _ = run(kube)
    assert result.success
    assert phases(kube)[0] == "Queued" and reason(kube.patches[0]) == vocabulary.RATE_LIMITED
    assert 'WorkspaceConfig "default" is rate-limited until' in kube.patches[0]["message"]
    assert kube.created == ["t1-job-1"] and kube.task()["status"]["attempt"] == 1


def test_a_reset_beyond_max_rate_limit_wait_fails_the_task(run):
    kube = fake_kube(rate_limited(7200), workspace=workspace_obj(maxRateLimitWait="1m"),
                     task=task_obj(retries={"limit": 3, "backoff": {"initialDelay": "1ms"}}))
    result, _ = run(kube)
    assert not result.success
    status = kube.task()["status"]
    assert status["phase"] == "Failed" and reason(status) == vocabulary.RATE_LIMIT_WAIT_EXCEEDED
    assert "more than maxRateLimitWait (1m)" in status["message"]
    assert kube.created == ["t1-job-1"]


def test_a_start_quota_queues_the_attempt_until_an_earlier_start_leaves_the_window(run):
    workspace = workspace_obj(quota={"maxTaskStarts": 1, "window": "2s"})
    workspace["status"] = {"recentStarts": [datetime.now(UTC).isoformat()]}  # another Task started just now
    kube = fake_kube(ok(), workspace=workspace)
    kube.conflicts = 1  # and a run worker records a start between this one's read and its write
    started = time.monotonic()
    result, _ = run(kube)
    assert result.success
    assert time.monotonic() - started >= 1.5
    waiting = kube.patches[0]
    assert waiting["phase"] == "Queued" and reason(waiting) == vocabulary.QUOTA_EXHAUSTED
    assert 'WorkspaceConfig "default" allows 1 Task starts per 2s' in waiting["message"]
    assert kube.created == ["t1-job-1"] and kube.task()["status"]["attempt"] == 1
    recent = kube.objects[("workspaceconfigs", NS, "default")]["status"]["recentStarts"]
    assert len(recent) == 1 and recent[0] > workspace["status"]["recentStarts"][0]  # its own start replaced the old one


def test_the_remote_files_fetch_time_is_taken_from_the_tasks_timeout(run):
    remote = {"type": "RemoteFile", "remoteFile": {"filePath": "/workspace/remote.md", "url": "https://example.com/a"}}
    kube = fake_kube(ok(), task=task_obj(timeout="8s", contexts=[remote]))
    result, _ = run(kube)
    assert result.success
    assert len(kube.fetch_budgets) == 1 and 7.9 < kube.fetch_budgets[0] <= 8.0  # the Task's timeout, not 10 s
    job = kube.jobs["t1-job-1"]
    assert job["spec"]["activeDeadlineSeconds"] == 6  # 8 s less the fetch's 1.2 s, rounded up


def test_a_spent_workspace_budget_holds_new_tasks_until_the_next_period(run):
    workspace = workspace_obj(budget={"maxCostUSD": 1.0, "period": "4s"})
    left = 4 - time.time() % 4
    if left < 2.5:  # too close to the period's end for the Task to see it spent: take the next one
        time.sleep(left + 0.05)
    period_start = datetime.fromtimestamp(int(time.time()) // 4 * 4, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    workspace["status"] = {"spend": {"periodStart": period_start, "costUSD": 1.5}}
    result_text = json.dumps({"usage": {"inputTokens": 10, "costUSD": 0.25}})
    kube = fake_kube(PodOutcome(True, vocabulary.COMPLETED, "ok", exit_code=0, result_text=result_text), workspace=workspace)
    result, _ = run(kube)
    assert result.success
    waiting = kube.patches[0]
    assert waiting["phase"] == "Queued" and reason(waiting) == vocabulary.BUDGET_EXHAUSTED
    assert "cost $1.5 of $1 in its 4s period" in waiting["message"]
    # the attempt ran in the next period, and its own usage starts that period's spend
    spend = kube.objects[("workspaceconfigs", NS, "default")]["status"]["spend"]
    assert spend["periodStart"] > period_start and spend["costUSD"] == 0.25 and spend["inputTokens"] == 10


def test_a_kueue_queued_job_is_created_suspended_and_the_task_waits_for_admission_then_after_an_eviction(run):
    workspace = workspace_obj(queueName="agents", priorityClassName="batch-low", runtimeClassName="gvisor",
                              jobLabels={"team": "a"}, jobAnnotations={"cost-center": "42"})
    kube = fake_kube(ok(), workspace=workspace)
    kube.evictions = 1
    result, _ = run(kube)
    assert result.success, kube.task()["status"]
    job = kube.jobs["t1-job-1"]
    assert job["spec"]["suspend"] is True and job["metadata"]["labels"][vocabulary.KUEUE_QUEUE_NAME] == "agents"
    assert job["metadata"]["labels"]["team"] == "a" and job["metadata"]["annotations"]["cost-center"] == "42"
    assert job["metadata"]["labels"][vocabulary.LABEL_TASK] == "t1"  # ours are kept
    pod = job["spec"]["template"]["spec"]
    assert (pod["priorityClassName"], pod["runtimeClassName"]) == ("batch-low", "gvisor")
    # Queued until admitted, Running, Queued again after the eviction, Running, Completed: one attempt, one Job
    assert [p.get("phase") for p in kube.patches if p.get("phase")] == [
        "Queued", "Running", "Queued", "Running", "Completed"]
    pending = [p for p in kube.patches if p.get("phase") == "Queued"]
    assert {reason(p) for p in pending} == {vocabulary.ADMISSION_PENDING}
    assert pending[0]["jobName"] == "t1-job-1" and "LocalQueue agents" in pending[0]["message"]
    assert "evicted by Kueue" in pending[1]["message"]
    reasons = [r for r, _, _ in kube.events]
    assert reasons.count(vocabulary.ADMITTED) == 2 and reasons.count(vocabulary.EVICTED) == 1
    assert kube.created == ["t1-job-1"] and kube.task()["status"]["attempt"] == 1


def test_job_labels_may_not_take_the_projects_keys():
    from pydantic import ValidationError

    from kubetask.api import WorkspaceConfig

    for labels in ({"kubetask.io/task": "x"}, {vocabulary.KUEUE_QUEUE_NAME: "q"}):
        with pytest.raises(ValidationError, match="set by kubetask"):
            WorkspaceConfig.model_validate(workspace_obj(jobLabels=labels))


def test_with_kueue_and_max_concurrent_tasks_the_slot_is_taken_at_admission_and_lifts_the_pods_gate(run):
    kube = fake_kube(ok(), workspace=workspace_obj(queueName="agents", maxConcurrentTasks=2))
    kube.evictions = 1
    result, _ = run(kube)
    assert result.success, kube.task()["status"]
    pod = kube.jobs["t1-job-1"]["spec"]["template"]["spec"]
    assert pod["schedulingGates"] == [{"name": vocabulary.SLOT_GATE}]
    assert kube.gates == [vocabulary.SLOT_GATE]
    # freed at the eviction once its pod ended, taken again at the second admission
    assert kube.pods_ended_waits.count("t1-job-1") >= 2
    # without maxConcurrentTasks no gate: Kueue's admission starts the pod
    plain = fake_kube(ok(), workspace=workspace_obj(queueName="agents"))
    assert run(plain)[0].success
    assert "schedulingGates" not in plain.jobs["t1-job-1"]["spec"]["template"]["spec"] and plain.gates == [None]

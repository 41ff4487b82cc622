"""The ops of one Task: prepare its context files, then run one attempt of its agent's Job.

The flow: prepare its context files, then run one attempt.

Shared by ``task_job`` (a standalone Task) and ``batch_job`` (each mapped step of a BatchRun). Both
steps read the Task and its WorkspaceConfig fresh from the API server, write the Task's status
through the status subresource, and record Events. Nothing that passes between steps, nor anything
logged, contains context content: only paths, keys, sizes and hashes.
"""

import math
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from dagster import (
    AssetKey,
    AssetMaterialization,
    AssetObservation,
    Config,
    DagsterExecutionInterruptedError,
    Failure,
    MetadataValue,
    OpExecutionContext,
    Out,
    RetryRequested,
    op,
)

from kubetask import vocabulary
from kubetask.api import GitContext, Task, WorkspaceConfig
from kubetask.api.result import AgentResult
from kubetask.api.workspace import DEFAULT_WORKSPACE_CONFIG
from kubetask.domain import kept_logs, manifests, outcomes, ratelimits, results, status
from kubetask.domain.contexts import ContextFile, aggregate, all_contexts, resolve
from kubetask.domain.credentials import bind_keys
from kubetask.domain.errors import TaskError
from kubetask.domain.outcomes import PodOutcome
from kubetask.domain.redact import KEPT_LOG_MAX_BYTES, LOG_TAIL_MAX_BYTES, Redactor, last_lines
from kubetask_dagster import logs
from kubetask_dagster.execution.executor import step_interrupted
from kubetask_dagster.execution.slots import WorkspaceSlots, pool_key
from kubetask_dagster.kube import Kube, LogUnavailable, WaitInterrupted
from kubetask_dagster.ops import starts
from kubetask_dagster.resources import KubeResource

WORKSPACE_MAX_AGE_SECONDS = 5.0  # concurrent Tasks of one run worker share a read of their WorkspaceConfig
SLOT_HOLD_SECONDS = 120.0  # longer than a pod's default grace period (30 s) and the kubelet's reaction to it
REMOTE_FILE_SECONDS = 10.0  # all of a Task's RemoteFile fetches together, and no more than its timeout
_STDOUT_LOCK = threading.Lock()


class TaskRef(Config):
    """Which Task this run executes (set by the bridge)."""

    namespace: str
    name: str
    uid: str
    generation: int = 1


def task_asset_key(namespace: str) -> AssetKey:
    """One asset per namespace; each Task is a partition of it."""
    return AssetKey(["kubetask", namespace, "tasks"])


class TaskReporter:
    """Writes what happened to a Task where people look: its status, Events and Dagster's log."""

    def __init__(self, context: OpExecutionContext, kube: Kube, task_obj: dict[str, Any]):
        self.context = context
        self.kube = kube
        self.obj = task_obj
        self.ns = task_obj["metadata"]["namespace"]
        self.name = task_obj["metadata"]["name"]

    @property
    def current(self) -> dict[str, Any]:
        return self.obj.get("status") or {}

    def patch(self, patch: dict[str, Any]) -> None:
        """Merge-patch the status, unless it would leave a terminal phase the wrong way."""
        new_phase = patch.get("phase")
        if new_phase and not status.may_transition(self.current.get("phase"), new_phase):
            self.context.log.info(
                f"not moving Task {self.ns}/{self.name} from {self.current.get('phase')} to {new_phase}"
            )
            return
        updated = self.kube.patch_status("tasks", self.ns, self.name, patch)
        if updated is not None:
            self.obj = updated

    def event(self, reason: str, message: str, *, warning: bool = False) -> None:
        """A Kubernetes Event on the Task; warnings also go to Dagster's log.

        Normal events stay out of Dagster's log: every log line is a row written to its event log,
        the bottleneck of a large BatchRun, and the step's materialization already says as much."""
        self.kube.emit_event(self.obj, reason, message, warning=warning)
        if warning:
            self.context.log.warning(f"{reason}: {message}")

    def fail(self, reason: str, message: str, exit_code: int | None = None) -> None:
        self.patch(status.failed(self.current, reason, message, exit_code=exit_code))
        self.event(reason, message, warning=True)

    def failure(self, error: TaskError) -> Failure:
        """Record ``error`` as the Task's failure; the step's ``Failure`` to raise (no retry: bad input stays bad)."""
        self.fail(error.reason, error.message)
        return Failure(description=str(error), allow_retries=False)


def _namespace(task: Task) -> str:
    """The namespace of a Task read from the API server (always set there)."""
    return task.metadata.namespace or ""


def _name(task: Task) -> str:
    return task.metadata.name or ""


def load_task(kube: Kube, ref: TaskRef) -> dict[str, Any]:
    obj = kube.get_custom("tasks", ref.namespace, ref.name)
    if obj is None or obj["metadata"]["uid"] != ref.uid:
        raise Failure(f"Task {ref.namespace}/{ref.name} (uid {ref.uid}) no longer exists", allow_retries=False)
    return obj


def load_workspace(kube: Kube, task: Task) -> WorkspaceConfig:
    name = task.spec.workspace_config_ref or DEFAULT_WORKSPACE_CONFIG
    obj = kube.get_custom("workspaceconfigs", _namespace(task), name, max_age=WORKSPACE_MAX_AGE_SECONDS)
    if obj is None:
        raise TaskError(
            vocabulary.WORKSPACE_CONFIG_NOT_FOUND,
            f'WorkspaceConfig "{name}" not found in namespace "{_namespace(task)}"',
        )
    return WorkspaceConfig.model_validate(obj)


def prepare(
    context: OpExecutionContext, kube: KubeResource, config: TaskRef, task_obj: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Resolve the Task's contexts, aggregate them per filePath and write its ConfigMap and Secret.

    Returns what the attempt needs: the Task's reference, the files' paths, keys and hashes (no
    content) and the Git checkouts. ``task_obj`` is the Task as just read by the caller, if any."""
    api = kube.api
    obj = task_obj or load_task(api, config)
    task = Task.model_validate(obj)
    reporter = TaskReporter(context, api, obj)
    if vocabulary.stop_requested(task.metadata.annotations):
        reporter.patch(
            status.stopped(reporter.current, vocabulary.STOP_REQUESTED, f"{vocabulary.STOP} is set; nothing was run")
        )
        raise Failure(description="the Task carries the stop annotation", allow_retries=False)
    try:
        workspace = load_workspace(api, task)
        timeout = status.effective_timeout_seconds(task.spec, workspace.spec)
        resolution = resolve(
            all_contexts(task, workspace.spec),
            config.namespace,
            api,
            repositories=workspace.spec.repositories,
            secret_header_hosts=workspace.spec.secret_header_hosts,
            remote_timeout=REMOTE_FILE_SECONDS if timeout is None else min(REMOTE_FILE_SECONDS, timeout),
        )
        files = aggregate(resolution.parts)
        config_map, secret = manifests.build_context_objects(task, files)
        if config_map is not None:
            api.apply_config_map(config_map)
        if secret is not None:
            api.apply_secret(secret)
    except TaskError as e:
        raise reporter.failure(e) from None
    described = [f.describe() for f in files]
    context.add_output_metadata(
        {
            "files": MetadataValue.json(described),
            "git": MetadataValue.json([g.to_k8s() for g in resolution.git]),
        }
    )
    return {
        "task": config.model_dump(),
        "files": described,
        "git": [g.to_k8s() for g in resolution.git],
        "remoteSeconds": round(resolution.remote_seconds, 3),
    }


def _files(prepared: dict[str, Any]) -> list[ContextFile]:
    """Mount descriptions for the Job builder (the content already lives in the ConfigMap/Secret)."""
    return [ContextFile(f["filePath"], "", f["sensitive"], f["key"], []) for f in prepared["files"]]


def _next_attempt(api: Kube, task: Task, run_id: str) -> tuple[int, bool]:
    """The attempt to run and whether its Job already exists (a restarted op resumes it).

    An unfinished Job that an earlier run left behind (its worker died) is deleted: this run supersedes it."""
    last = (task.status.attempt if task.status else None) or 0
    if last:
        job = api.get_job(_namespace(task), manifests.job_name(_name(task), last))
        finished = job is not None and any(
            c.status == "True" and c.type in ("Complete", "Failed") for c in job.status.conditions or []
        )
        if job is not None and not finished:
            if (job.metadata.annotations or {}).get(vocabulary.DAGSTER_RUN_ID) == run_id:
                return last, True
            # left running by a run that died (its worker was killed): this rerun supersedes it
            api.delete_job(_namespace(task), job.metadata.name)
    return last + 1, False


def run_attempt(
    context: OpExecutionContext,
    kube: KubeResource,
    prepared: dict[str, Any],
    lineage: tuple[AssetKey, str] | None = None,
    task_obj: dict[str, Any] | None = None,
    stop_check: Callable[[], str | None] | None = None,
) -> dict[str, Any]:
    """Run one attempt: create its Job, wait for the pod to end, record the outcome; retry per the Task.

    ``lineage`` is the asset and partition the outcome is recorded under (default: the namespace's
    task asset, partition = Task name). Raises RetryRequested while the Task's retries last, and
    Failure when the Task failed for good. ``task_obj`` is the Task as just read by the caller, if any.
    ``stop_check`` says why the Task must stop although its run goes on (a pooled Task stopped or
    deleted on its own), or None: the attempt then ends Stopped, its Job deleted, with a ``Failure``."""
    config = TaskRef(**prepared["task"])
    api = kube.api
    obj = task_obj or load_task(api, config)
    task = Task.model_validate(obj)
    reporter = TaskReporter(context, api, obj)
    try:
        workspace = load_workspace(api, task)
    except TaskError as e:
        raise reporter.failure(e) from None

    policy = status.effective_retries(task.spec, None)
    timeout = status.effective_timeout_seconds(task.spec, workspace.spec)
    if timeout is not None and context.retry_number == 0:  # the fetches before this first try took its time
        timeout = max(1, timeout - math.ceil(prepared.get("remoteSeconds", 0.0)))
    attempt, resuming = _next_attempt(api, task, context.run_id)
    logs.bind_attempt(attempt)
    try:
        credentials = bind_keys(
            workspace.spec.credentials or [], config.namespace, lambda name: api.secret_keys(config.namespace, name)
        )
        job = manifests.build_job(
            task,
            workspace.spec.model_copy(update={"credentials": credentials}),
            _files(prepared),
            [_git(g) for g in prepared["git"]],
            attempt=attempt,
            dagster_run_id=context.run_id,
            timeout_seconds=timeout,
            git_image=kube.git_image,
            host_network=kube.agent_host_network,
        )
    except TaskError as e:  # e.g. a context file and a credential mounted at one path, or an ambiguous key
        raise reporter.failure(e) from None
    job_name = job["metadata"]["name"]
    if not resuming:  # a rate limit, the budget or the start quota may hold it (no attempt is spent)
        starts.before_start(context, api, reporter, workspace)
    slots = _workspace_slots(context, task, workspace)
    queue = workspace.spec.queue_name

    interrupted = _interruption(stop_check)

    def take_slot() -> None:
        if slots is not None:
            slots.acquire(
                on_wait=lambda: reporter.patch(
                    status.queued(
                        reporter.current,
                        reason=vocabulary.WORKSPACE_LIMIT,
                        message=f"waiting for one of the {slots.limit} slots of maxConcurrentTasks (Dagster pool {slots.key})",
                    )
                ),
                interrupted=interrupted,
            )

    if not queue:  # with Kueue the slot is taken at admission (the pod waits behind a scheduling gate)
        take_slot()
    try:
        outcome, duration = _run_job(
            context,
            api,
            reporter,
            task,
            job,
            config,
            attempt,
            resuming,
            timeout,
            queue,
            take_slot=take_slot if queue and slots is not None else None,
            free_slot=slots.release if queue and slots is not None else None,
            stop_check=stop_check,
        )
    finally:
        if slots is not None:
            # A stopped attempt's agent runs on through its pod's grace period: it keeps its slot until it ends.
            if not api.wait_pods_ended(
                config.namespace, job_name, label_selector=manifests.watch_selector(task), timeout=SLOT_HOLD_SECONDS
            ):
                context.log.warning(
                    f"the pod of Job {job_name} still runs after {SLOT_HOLD_SECONDS} s; its slot is freed"
                )
            slots.release()
    asset_key, partition = lineage or (task_asset_key(config.namespace), config.name)
    redactor = Redactor.for_task(api, task, workspace)
    log_tail, whole_log = _agent_log(api, kube, task, outcome, redactor)
    kept = _keep_log(context, task, outcome, whole_log, attempt)
    # The result is the agent's own words: it goes through the same redaction as its log.
    parsed = results.parse(redactor.redact(outcome.result_text) if outcome.result_text else None)
    recorded = status.result_recorded(reporter.current, parsed, attempt) | ({"agentLog": kept} if kept else {})
    if recorded:  # one status write for the result and where the log is kept
        reporter.patch(recorded)
    if parsed.result is not None and parsed.result.usage is not None:
        starts.record_spend(context, api, workspace, parsed.result.usage)
    if parsed.problem:
        reporter.event(vocabulary.INVALID_RESULT, f"attempt {attempt}: {parsed.problem}", warning=True)
    if log_tail and not outcome.succeeded:
        context.log.warning(f"last lines of the agent's log ({outcome.pod_name}):\n{log_tail}")
    metadata = {
        **_result_metadata(parsed.result),  # first: what people look for (the pull request, the cost)
        "task": f"{config.namespace}/{config.name}",
        "uid": config.uid,
        "job": job_name,
        "pod": outcome.pod_name or "",
        "attempt": attempt,
        "exit_code": outcome.exit_code if outcome.exit_code is not None else -1,
        "duration_s": round(duration, 3),
        "outcome": outcome.reason,
        "context_sources": MetadataValue.json(prepared["files"]),
        "log_tail": MetadataValue.text(log_tail),  # redacted; in the metadata rather than one more log row
        "kubectl": f"kubectl -n {config.namespace} get task {config.name}; kubectl -n {config.namespace} describe job {job_name}",
    }
    if outcome.succeeded:
        reporter.patch(status.completed(reporter.current, exit_code=outcome.exit_code or 0, pod_name=outcome.pod_name))
        reporter.event(vocabulary.COMPLETED, f"attempt {attempt} completed (Job {job_name})")
        context.log_event(AssetMaterialization(asset_key, partition=partition, metadata=metadata))
        return {"attempt": attempt, "job": job_name, "exitCode": outcome.exit_code}

    context.log_event(AssetObservation(asset_key, partition=partition, metadata=metadata))
    if outcome.reason in outcomes.NEVER_STARTED:
        # The pod waits for a fix (a Secret, an image); once it comes the kubelet would start the agent of
        # an attempt already recorded as failed. The next attempt, if any, gets a Job of its own.
        api.delete_job(config.namespace, job_name)
        reporter.event(vocabulary.JOB_DELETED, f"attempt {attempt}: Job {job_name} deleted, its pod never started")
    reset = ratelimits.reset_of(outcome.exit_code, parsed.result)
    if reset is not None:
        starts.hold_workspace(context, api, workspace, reset)
        starts.wait_for_rate_limit(
            context, reporter, workspace, reset, f"attempt {attempt} stopped on its provider's rate limit"
        )
    waits = status.waits(reporter.current, context.run_id)  # retries that were waits, not attempts
    used = context.retry_number - waits
    if policy is not None and used < policy.limit and outcome.reason != vocabulary.JOB_DELETED:
        delay = status.retry_delay(policy, used + 1)
        message = f"attempt {attempt} failed ({outcome.reason}: {outcome.message}); retrying in {delay:g} s"
        reporter.patch(status.retrying(reporter.current, outcome.reason, message, exit_code=outcome.exit_code))
        reporter.event(vocabulary.RETRYING, message, warning=True)
        raise RetryRequested(max_retries=policy.limit + waits, seconds_to_wait=delay)
    reporter.fail(outcome.reason, f"attempt {attempt}: {outcome.message}", exit_code=outcome.exit_code)
    raise Failure(description=f"{outcome.reason}: {outcome.message}", allow_retries=False)


def _interruption(stop_check: Callable[[], str | None] | None) -> Callable[[], bool]:
    """When a wait of the attempt ends early: the run is terminated, or ``stop_check`` gives a reason."""
    if stop_check is None:
        return step_interrupted
    return lambda: step_interrupted() or stop_check() is not None


def _workspace_slots(context: OpExecutionContext, task: Task, workspace: WorkspaceConfig) -> WorkspaceSlots | None:
    """The step's claim on its WorkspaceConfig's pool, when ``maxConcurrentTasks`` is set."""
    limit = workspace.spec.max_concurrent_tasks
    if not limit:
        return None
    key = pool_key(_namespace(task), workspace.metadata.name or "")
    return WorkspaceSlots(context.instance, key, limit, context.run_id, context.get_step_execution_context().step.key)


def _run_job(
    context: OpExecutionContext,
    api: Kube,
    reporter: TaskReporter,
    task: Task,
    job: dict[str, Any],
    config: TaskRef,
    attempt: int,
    resuming: bool,
    timeout: int | None,
    queue: str | None = None,
    take_slot: Callable[[], None] | None = None,
    free_slot: Callable[[], None] | None = None,
    stop_check: Callable[[], str | None] | None = None,
) -> tuple[PodOutcome, float]:
    """Mark the Task Running (Queued for Kueue's admission with a ``queue``), create its Job (unless
    resuming one) and wait for the pod's end. ``take_slot``/``free_slot``: the maxConcurrentTasks slot of
    a Kueue-queued Job, taken at each admission (then its pod's scheduling gate is lifted) and freed at
    an eviction."""
    job_name = job["metadata"]["name"]

    def mark_running() -> None:
        reporter.patch(
            status.running(reporter.current, job_name=job_name, attempt=attempt, generation=config.generation)
            | {"dagsterRunId": context.run_id}  # a re-execution from Dagster's UI is a new run of the same Task
        )

    def wait_for_admission(evicted: bool) -> None:
        what = "was evicted by Kueue and waits" if evicted else "waits"
        message = f"attempt {attempt}: Job {job_name} {what} for Kueue to admit it (LocalQueue {queue})"
        reporter.patch(
            status.admission_pending(reporter.current, job_name=job_name, attempt=attempt, message=message)
            | {"dagsterRunId": context.run_id}
        )
        if evicted:
            reporter.event(vocabulary.EVICTED, message, warning=True)
            if free_slot is not None:  # once its agent has stopped (its pod's grace period)
                api.wait_pods_ended(
                    config.namespace, job_name, label_selector=manifests.watch_selector(task), timeout=SLOT_HOLD_SECONDS
                )
                free_slot()

    def admitted() -> None:
        if take_slot is not None:
            take_slot()
        mark_running()
        reporter.event(vocabulary.ADMITTED, f"attempt {attempt}: Kueue admitted Job {job_name} (LocalQueue {queue})")

    if queue:
        wait_for_admission(evicted=False)
    else:
        mark_running()
    if not resuming:
        try:
            created = api.create_job(job)
        except TaskError as e:  # the Job's name is taken by someone else's Job
            raise reporter.failure(e) from None
        reporter.event(
            vocabulary.JOB_CREATED, f"attempt {attempt}: Job {job_name}" + ("" if created else " (already existed)")
        )
    started = time.monotonic()
    try:
        outcome = api.wait_for_pod_end(
            config.namespace,
            job_name,
            label_selector=manifests.watch_selector(task),
            deadline_seconds=None if timeout is None else timeout + 60,
            on_running=lambda pod: reporter.patch(status.pod_started(reporter.current, pod_name=pod)),
            interrupted=_interruption(stop_check),
            # the first suspension is the one just written; another one follows an eviction
            on_suspended=(lambda evicted: wait_for_admission(evicted) if evicted else None) if queue else None,
            on_admitted=admitted if queue else None,
            lift_gate=vocabulary.SLOT_GATE if take_slot is not None else None,
        )
    except (DagsterExecutionInterruptedError, WaitInterrupted):
        api.delete_job(config.namespace, job_name)
        why = None if step_interrupted() or stop_check is None else stop_check()
        if why is not None:  # the Task, not its run: the run's other steps go on
            reporter.patch(
                status.stopped(reporter.current, vocabulary.STOP_REQUESTED, f"{why}; Job {job_name} deleted")
            )
            reporter.event(vocabulary.STOP_REQUESTED, f"{why}; Job {job_name} deleted")
            raise Failure(description=f"{why}; Job {job_name} deleted", allow_retries=False) from None
        reporter.patch(
            status.stopped(
                reporter.current, vocabulary.RUN_TERMINATED, f"the Dagster run was terminated; Job {job_name} deleted"
            )
        )
        reporter.event("Stopped", f"the Dagster run was terminated; Job {job_name} deleted")
        raise DagsterExecutionInterruptedError() from None
    return outcome, time.monotonic() - started


def _git(data: dict[str, Any]) -> GitContext:
    return GitContext.model_validate(data)


def _agent_log(
    api: Kube, kube: KubeResource, task: Task, outcome: PodOutcome, redactor: Redactor
) -> tuple[str, str | None]:
    """The agent log's last lines and the whole log (at most KEPT_LOG_MAX_BYTES; None when there is
    none to read), both with every Secret value the Task can see replaced. One read of the log, unless
    it was cut: then its tail is read on its own."""
    if not outcome.pod_name:
        return "", None
    ns, pod = _namespace(task), outcome.pod_name
    try:
        whole = api.pod_log(ns, pod)
    except LogUnavailable as e:
        return f"(log unavailable: {e})", None
    if len(whole.encode()) >= KEPT_LOG_MAX_BYTES:
        tail = api.pod_log_tail(ns, pod, kube.log_tail_lines)
    else:
        tail = last_lines(whole, kube.log_tail_lines, LOG_TAIL_MAX_BYTES)
    return redactor.redact(tail), redactor.redact(whole)


def _keep_log(
    context: OpExecutionContext, task: Task, outcome: PodOutcome, whole: str | None, attempt: int
) -> str | None:
    """Copy the attempt's agent log (redacted) to the step's stdout, which Dagster keeps with the run's
    compute logs after the pod is gone; where it is, for the status."""
    if not whole:
        return None
    step = context.get_step_execution_context().step.key
    header = kept_logs.header(_namespace(task), _name(task), attempt, outcome.pod_name or "")
    truncated = "" if len(whole.encode()) < KEPT_LOG_MAX_BYTES else "\n===== (cut at 1 MiB) =====\n"
    with _STDOUT_LOCK:  # the steps of a BatchRun are threads sharing one stdout
        sys.stdout.write(f"{header}\n{whole.rstrip()}{truncated}\n{kept_logs.END}\n")
        sys.stdout.flush()
    return kept_logs.location(context.run_id, step, attempt)


def _result_metadata(result: AgentResult | None) -> dict[str, Any]:
    """The agent's result as Dagster metadata: its first pull request as a link, its usage, its summary."""
    if result is None:
        return {}
    metadata: dict[str, Any] = {}
    if result.pull_requests:
        metadata["pull_request"] = MetadataValue.url(result.pull_requests[0].url)
    if result.usage is not None:  # input_tokens, output_tokens, cost_usd, model: those it reported
        metadata.update(result.usage.model_dump(exclude_none=True))
    if result.summary:
        metadata["summary"] = MetadataValue.text(result.summary)
    return metadata


# --- the ops of task_job ----------------------------------------------------------------------


@op(out=Out(dict, description="The context files (paths, keys, hashes; no content) and Git checkouts."))
def prepare_task(context: OpExecutionContext, config: TaskRef, kube: KubeResource) -> dict[str, Any]:
    """Resolve the Task's contexts, aggregate them per filePath and write its ConfigMap and Secret."""
    with logs.task_logging(config.namespace, config.name):
        return prepare(context, kube, config)


@op
def run_agent(context: OpExecutionContext, prepared: dict[str, Any], kube: KubeResource) -> dict[str, Any]:
    """Run one attempt of the agent's Job; each retry of this step is one attempt of the Task."""
    with logs.task_logging(prepared["task"]["namespace"], prepared["task"]["name"]):
        return run_attempt(context, kube, prepared)

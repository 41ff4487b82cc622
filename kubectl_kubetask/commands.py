"""What each command does, over the two edges (``cluster.Cluster``, ``dagster.Dagster``) given in a ``Session``.

Each command returns its exit code and raises ``PluginError`` for what it cannot do.
"""

from __future__ import annotations

import time
import webbrowser
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TextIO

from kubetask import objects, vocabulary
from kubetask.domain import kept_logs
from kubetask.domain.manifests import job_name
from kubetask.objects import Obj

from . import render
from .cluster import Cluster, LogUnavailable
from .dagster import ENV_URL, Dagster, base_url
from .errors import PluginError, no_dagster_url, no_log, not_found
from .kinds import BATCHRUN, TASK, Kind, detect, parse_target

AGENT_CONTAINER = "agent"
"""The agent's container in a Task's pod (``kubetask/domain/manifests.py``)."""
OUTCOME_WAIT = 30.0
"""Seconds ``watch`` waits, once the phase is terminal, for the bridge to record the outcome's conditions."""
_NOT_AN_OUTCOME = {
    vocabulary.RUN_SUBMITTED,
    vocabulary.DAGSTER_UNAVAILABLE,
    vocabulary.RERUN_STARTED,
    vocabulary.RUN_ADOPTED,
}


@dataclass
class Session:
    """The edges and streams of one invocation; tests pass fakes."""

    cluster: Cluster
    out: TextIO
    err: TextIO
    dagster_url: str | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    dagster: Callable[[str], Dagster] = Dagster
    sleep: Callable[[float], None] = time.sleep
    open_browser: Callable[[str], bool] = webbrowser.open
    clock: Callable[[], float] = time.monotonic

    @property
    def namespace(self) -> str:
        return self.cluster.namespace

    def find(self, target: str, kind: Kind | None, allowed: tuple[Kind, ...]) -> tuple[Kind, Obj]:
        """The object ``target`` names, trying ``kind`` or each of ``allowed``."""
        kinds, name = parse_target(target, kind, allowed)
        return detect(kinds, name, self.namespace, self.cluster.get)

    def dagster_for(self, obj: Obj) -> Dagster | None:
        """A client of the Dagster that runs ``obj`` (None when no URL is known). A BatchRun's Task has no run
        URL of its own: its BatchRun's is used."""
        run_url = objects.status(obj).get("dagsterRunUrl")
        batch_run = objects.labels_of(obj).get(vocabulary.LABEL_BATCH_RUN)
        if not run_url and batch_run and not (self.dagster_url or self.env.get(ENV_URL)):
            owner = self.cluster.get(BATCHRUN, batch_run)
            run_url = objects.status(owner).get("dagsterRunUrl")
        url = base_url(self.dagster_url, self.env, run_url)
        return self.dagster(url) if url else None


def _say(session: Session, text: str) -> None:
    session.out.write(text + "\n")
    session.out.flush()


def _note(session: Session, text: str) -> None:
    session.err.write(text + "\n")
    session.err.flush()


def _kind_article(kind: Kind, obj: Obj) -> str:
    return f"{kind.name} {objects.name_of(obj)}"


# --- logs ----------------------------------------------------------------------------------------


def logs(session: Session, target: str, *, attempt: int | None, follow: bool) -> int:
    """The agent container's log of an attempt (the last by default) from its pod, else the copy the run's
    step kept in Dagster's compute log."""
    _, task = session.find(target, TASK, (TASK,))
    name, ns = objects.meta(task)["name"], session.namespace
    st = objects.status(task)
    last = st.get("attempt")
    if not last:
        raise no_log(
            name, ns, attempt or 1, f"it has not started an attempt yet (phase {st.get('phase') or 'Pending'})"
        )
    wanted = attempt or int(last)
    if wanted < 1 or wanted > int(last):
        raise PluginError(f"Task '{name}' in namespace '{ns}' has no attempt {wanted} (its last is {last})")
    pods = session.cluster.pods(name, wanted)
    if pods:
        pod = objects.meta(pods[-1])["name"]
        # A finished agent is read to its end, not followed: nothing more will come (and kwok, unlike a
        # kubelet, would hold a follow stream of a finished container open).
        follow = follow and not _agent_finished(pods[-1])
        try:
            chunks = session.cluster.pod_log(pod, AGENT_CONTAINER, follow)
        except LogUnavailable as e:
            why = f"pod {pod} gives no log ({e})"
        else:
            for chunk in chunks:  # as it arrives: with -f, while the agent runs
                session.out.write(chunk)
                session.out.flush()
            return 0
    else:
        why = f"no pod of attempt {wanted} is left"
    return _kept_log(session, task, wanted, why)


def _agent_finished(pod: Obj) -> bool:
    """The pod has ended, or its agent container has terminated."""
    st = objects.status(pod)
    if st.get("phase") in ("Succeeded", "Failed"):
        return True
    agent: Mapping[str, Any] = next(
        (c for c in st.get("containerStatuses") or [] if c.get("name") == AGENT_CONTAINER), {}
    )
    return (agent.get("state") or {}).get("terminated") is not None


def _kept_log(session: Session, task: Obj, attempt: int, why: str) -> int:
    name, ns = objects.meta(task)["name"], session.namespace
    st = objects.status(task)
    ref = kept_logs.parse_agent_log(st.get("agentLog"))
    if ref is None:
        raise no_log(name, ns, attempt, f"{why}, and status.agentLog names no kept copy")
    dagster = session.dagster_for(task)
    if dagster is None:
        raise no_dagster_url(f"the kept log of Task '{name}' ({why})")
    block = dagster.kept_block(ref, ns, name, attempt)
    if block is None:
        raise no_log(
            name,
            ns,
            attempt,
            f"{why}, and the stdout of step {ref.step_key} of Dagster run {ref.run_id} holds no copy of it",
        )
    _note(session, f"(pod gone: the log kept in Dagster run {ref.run_id}, step {ref.step_key}, pod {block.pod})")
    session.out.write(block.text)
    if not block.complete:
        _note(session, "(the kept copy ends here: it was cut before its end line)")
    session.out.flush()
    return 0


# --- stop, pause, resume, rerun ------------------------------------------------------------------


def stop(session: Session, target: str, kind: Kind | None) -> int:
    """``kubetask.io/stop=true`` on a Task or BatchRun (a bare name: a Task, else a BatchRun)."""
    found, obj = session.find(target, kind, (TASK, BATCHRUN))
    phase = objects.phase_of(obj)
    if phase in vocabulary.TASK_TERMINAL | vocabulary.BATCHRUN_TERMINAL:
        _say(session, f"{_kind_article(found, obj)} has already ended ({phase}): nothing to stop")
        return 0
    session.cluster.annotate(found, objects.meta(obj)["name"], {vocabulary.STOP: "true"})
    _say(session, f"{_kind_article(found, obj)}: stop requested ({vocabulary.STOP}=true; it was {phase or 'Pending'})")
    return 0


def pause(session: Session, target: str) -> int:
    """``kubetask.io/pause=true`` on a BatchRun: no new Task starts; running ones finish."""
    _, obj = session.find(target, BATCHRUN, (BATCHRUN,))
    phase = objects.phase_of(obj)
    if phase in vocabulary.BATCHRUN_TERMINAL:
        _say(session, f"BatchRun {objects.name_of(obj)} has already ended ({phase}): nothing to pause")
        return 0
    session.cluster.annotate(BATCHRUN, objects.meta(obj)["name"], {vocabulary.PAUSE: "true"})
    _say(
        session,
        f"BatchRun {objects.name_of(obj)}: paused ({vocabulary.PAUSE}=true); its running Tasks finish, no new one starts",
    )
    return 0


def resume(session: Session, target: str) -> int:
    """Remove ``kubetask.io/pause`` from a BatchRun."""
    _, obj = session.find(target, BATCHRUN, (BATCHRUN,))
    if vocabulary.PAUSE not in objects.annotations_of(obj):
        _say(session, f"BatchRun {objects.name_of(obj)} is not paused (no {vocabulary.PAUSE} annotation)")
        return 0
    session.cluster.annotate(BATCHRUN, objects.meta(obj)["name"], {vocabulary.PAUSE: None})
    _say(session, f"BatchRun {objects.name_of(obj)}: resumed ({vocabulary.PAUSE} removed)")
    return 0


def rerun(session: Session, target: str) -> int:
    """``kubetask.io/rerun=failed`` on a BatchRun: its failed and never-started Tasks run again."""
    _, obj = session.find(target, BATCHRUN, (BATCHRUN,))
    phase = objects.phase_of(obj)
    session.cluster.annotate(BATCHRUN, objects.meta(obj)["name"], {vocabulary.RERUN: vocabulary.RERUN_FAILED})
    _say(
        session,
        f"BatchRun {objects.name_of(obj)}: rerun of its failed Tasks requested ({vocabulary.RERUN}={vocabulary.RERUN_FAILED})",
    )
    if phase not in vocabulary.BATCHRUN_TERMINAL:
        _note(session, f"(it is {phase or 'Pending'}: the bridge takes the request once it has finished)")
    elif phase == "Completed":
        _note(session, "(it Completed: nothing failed, so the bridge will record NothingToRerun)")
    return 0


# --- open, describe --------------------------------------------------------------------------------


def open_run(session: Session, target: str, kind: Kind | None, *, print_only: bool) -> int:
    """Print the Dagster run's URL and, unless ``print_only``, open it in a browser."""
    found, obj = session.find(target, kind, (TASK, BATCHRUN))
    url = objects.status(obj).get("dagsterRunUrl")
    if not url:
        raise PluginError(
            f"{found.name} '{objects.meta(obj)['name']}' has no Dagster run yet (status.dagsterRunUrl is empty)"
        )
    _say(session, url)
    if not print_only and not session.open_browser(url):
        _note(session, "(no browser could be opened; the URL is above)")
    return 0


def describe(session: Session, target: str) -> int:
    """The chain of a Task: its status, its Job, the Job's pod(s), its Dagster run and that run's status."""
    _, task = session.find(target, TASK, (TASK,))
    name = objects.meta(task)["name"]
    st = objects.status(task)
    attempt = st.get("attempt")
    job_of = st.get("jobName") or (job_name(name, int(attempt)) if attempt else None)
    job = session.cluster.job(job_of) if job_of else None
    pods = session.cluster.pods(name, int(attempt)) if attempt else []
    run_id = st.get("dagsterRunId")
    view = render.RunView(run_id, st.get("dagsterRunUrl"))
    if run_id:
        dagster = session.dagster_for(task)
        if dagster is None:
            view = render.RunView(
                run_id, view.url, note="unknown (no Dagster URL: --dagster-url or KUBETASK_DAGSTER_URL)"
            )
        else:
            try:
                status = dagster.run_status(run_id)
                view = render.RunView(run_id, view.url, status or "not found in Dagster")
            except PluginError:
                view = render.RunView(run_id, view.url, note=f"unreachable (Dagster at {dagster.url})")
    session.out.write(render.describe_task(task, job, pods, view))
    session.out.flush()
    return 0


# --- watch -------------------------------------------------------------------------------------------


def _outcome_recorded(obj: Obj) -> bool:
    ready = objects.condition(obj, vocabulary.SUCCEEDED) or {}
    return bool(ready.get("reason")) and ready.get("reason") not in _NOT_AN_OUTCOME


def watch(session: Session, target: str, *, interval: float = 1.0, tty: bool | None = None) -> int:
    """A live progress line of a BatchRun until its phase is terminal, then its outcome; 0 when it Completed.
    On a terminal the line is redrawn in place (``\\r``); elsewhere a line is printed per change."""
    _, obj = session.find(target, BATCHRUN, (BATCHRUN,))
    name = objects.meta(obj)["name"]
    tty = session.out.isatty() if tty is None else tty
    last = None
    drawn = 0
    while True:
        st = objects.status(obj)
        line = render.progress_line(st.get("phase"), st.get("progress"))
        if line != last:
            if tty:
                session.out.write("\r" + line + " " * max(0, drawn - len(line)))
                drawn = len(line)
            else:
                session.out.write(line + "\n")
            session.out.flush()
            last = line
        if st.get("phase") in vocabulary.BATCHRUN_TERMINAL:
            break
        session.sleep(interval)
        obj = _still_there(session, name)
    deadline = session.clock() + OUTCOME_WAIT
    while not _outcome_recorded(obj) and session.clock() < deadline:
        session.sleep(interval)
        obj = _still_there(session, name)
    if tty:
        session.out.write("\n")
    session.out.write("\n".join(render.outcome_lines(obj)) + "\n")
    session.out.flush()
    return 0 if objects.phase_of(obj) == "Completed" else 1


def _still_there(session: Session, name: str) -> Any:
    obj = session.cluster.get(BATCHRUN, name)
    if obj is None:
        raise not_found([BATCHRUN.name], name, session.namespace)
    return obj

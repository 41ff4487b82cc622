"""Pure formatting: the progress bar and line of ``watch``, a BatchRun's outcome, and ``describe``'s chain
Task -> Job -> pod -> Dagster run. Inputs are the raw dicts the API server returns; nothing here reads a
cluster or Dagster."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kubetask import objects, vocabulary
from kubetask.objects import Obj

PROGRESS_FIELDS = ("pending", "queued", "running", "completed", "failed", "stopped")
BAR_WIDTH = 30
# completed, failed, stopped, running fill the bar from the left; what waits (pending, queued) stays "."
_BAR = (("completed", "="), ("failed", "x"), ("stopped", "-"), ("running", ">"))


def _count(progress: Mapping[str, Any] | None, field: str) -> int:
    try:
        return max(0, int((progress or {}).get(field) or 0))
    except (TypeError, ValueError):
        return 0


def progress_bar(progress: Mapping[str, Any] | None, width: int = BAR_WIDTH) -> str:
    """``[====xx->>.....]``: ``=`` completed, ``x`` failed, ``-`` stopped, ``>`` running, ``.`` waiting, in
    proportion to ``total`` (or to the sum of the counts when ``total`` is smaller). A count that is not
    zero gets at least one cell, so a single failure among thousands still shows."""
    counts = [_count(progress, f) for f, _ in _BAR]
    total = max(_count(progress, "total"), sum(_count(progress, f) for f in PROGRESS_FIELDS))
    cells = [0] * len(counts)
    if total:
        exact = [width * n / total for n in counts]
        cells = [max(1, int(e)) if n else 0 for n, e in zip(counts, exact, strict=True)]
        target = min(width, max(round(width * sum(counts) / total), sum(1 for n in counts if n)))
        while sum(cells) < target:  # largest remainder first
            i = max(range(len(cells)), key=lambda j: (exact[j] - cells[j], -j))
            cells[i] += 1
        while sum(cells) > target:  # from the widest, never below one cell
            i = max(range(len(cells)), key=lambda j: (cells[j], -j))
            cells[i] -= 1
    bar = "".join(ch * n for (_, ch), n in zip(_BAR, cells, strict=True))
    return f"[{bar}{'.' * (width - len(bar))}]"


def progress_line(phase: str | None, progress: Mapping[str, Any] | None, width: int = BAR_WIDTH) -> str:
    """One line of ``watch``: phase, bar, finished/total and every count of ``status.progress``."""
    total = _count(progress, "total")
    finished = sum(_count(progress, f) for f in ("completed", "failed", "stopped"))
    counts = "  ".join(f"{f} {_count(progress, f)}" for f in PROGRESS_FIELDS)
    return f"{(phase or 'Pending'):<9} {progress_bar(progress, width)} {finished}/{total}  {counts}"


def _money(value: Any) -> str:
    try:
        return f"${float(value):.4f}".rstrip("0").rstrip(".") if float(value) else "$0"
    except (TypeError, ValueError):
        return "$?"


def usage_text(usage: Mapping[str, Any] | None) -> str | None:
    """``1200 input + 300 output tokens, $0.12`` (and ``, reported by N Tasks`` for a BatchRun's totals)."""
    if not usage:
        return None
    text = f"{usage.get('inputTokens') or 0} input + {usage.get('outputTokens') or 0} output tokens, {_money(usage.get('costUSD') or 0)}"
    if usage.get("tasks") is not None:
        text += f", reported by {usage['tasks']} Task{'s' if usage['tasks'] != 1 else ''}"
    return text


def _condition_text(obj: Mapping[str, Any], type_: str) -> str | None:
    c = objects.condition(obj, type_)
    if c is None:
        return None
    words = [str(c.get("status") or "?"), str(c.get("reason") or "")]
    text = "  ".join(w for w in words if w)
    return f"{text}: {c['message']}" if c.get("message") else text


def outcome_lines(batchrun: Mapping[str, Any]) -> list[str]:
    """How a finished BatchRun ended: phase with its Ready reason and message, the counts, the totals its
    Tasks reported (``status.usage``, ``status.pullRequests``) and the failed Tasks listed."""
    st = objects.status(batchrun)
    ready = objects.condition(batchrun, vocabulary.READY) or {}
    head = f"BatchRun {objects.name_of(batchrun)} {st.get('phase') or 'Pending'}"
    if ready.get("reason"):
        head += f": {ready['reason']}"
    if ready.get("message"):
        head += f": {ready['message']}"
    lines = [head]
    progress = st.get("progress") or {}
    if progress:
        done = ", ".join(f"{_count(progress, f)} {f}" for f in ("completed", "failed", "stopped"))
        lines.append(f"  Tasks: {_count(progress, 'total')} ({done})")
    usage = usage_text(st.get("usage"))
    if usage and (st["usage"].get("tasks") or st["usage"].get("inputTokens") or st["usage"].get("costUSD")):
        lines.append(f"  usage: {usage}")
    if st.get("pullRequests") is not None:
        lines.append(f"  pull requests: {st['pullRequests']}")
    failed = st.get("failedTasks") or []
    if failed:
        listed = ", ".join(f"{f.get('name')} ({f.get('reason')})" for f in failed[:10])
        more = f" and {len(failed) - 10} more" if len(failed) > 10 else ""
        lines.append(f"  failed Tasks: {listed}{more}")
    if st.get("dagsterRunUrl"):
        lines.append(f"  Dagster run: {st['dagsterRunUrl']}")
    return lines


# --- describe ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunView:
    """What ``describe`` knows of the Dagster run: its id and URL, and its status or why it is unknown."""

    run_id: str | None
    url: str | None
    status: str | None = None
    """Dagster's status (``SUCCESS``...); None with ``note`` saying why it is unknown."""
    note: str | None = None


def _row(label: str, value: Any) -> str:
    return f"  {label + ':':<11} {value}"


def container_state(status: Mapping[str, Any]) -> str:
    """``running since T``, ``waiting: Reason (message)``, ``terminated: exit code N (Reason)`` of one
    container status."""
    state = status.get("state") or {}
    if state.get("terminated"):
        t = state["terminated"]
        text = f"terminated: exit code {t.get('exitCode')}"
        if t.get("reason"):
            text += f" ({t['reason']})"
        if t.get("message") and t.get("exitCode") not in (0, None):
            text += f": {str(t['message']).splitlines()[0][:200]}"
        return text
    if state.get("running"):
        return f"running since {state['running'].get('startedAt') or '?'}"
    if state.get("waiting"):
        w = state["waiting"]
        text = f"waiting: {w.get('reason') or '?'}"
        return f"{text} ({str(w['message']).splitlines()[0][:200]})" if w.get("message") else text
    return "not started"


def _result_rows(st: Mapping[str, Any]) -> list[str]:
    rows = []
    result = st.get("result") or {}
    prs = result.get("pullRequests") or []
    if prs:
        rows.append(_row("PR", ", ".join(str(p.get("url")) for p in prs)))
    usage = usage_text(st.get("usage") or result.get("usage"))
    if usage:
        rows.append(_row("cost", usage))
    if result.get("summary"):
        rows.append(_row("summary", str(result["summary"]).splitlines()[0][:200]))
    return rows


def _job_rows(job_name: str | None, job: Mapping[str, Any] | None) -> list[str]:
    if not job_name:
        return ["Job: none yet"]
    if job is None:
        return [f"Job {job_name}: not found (deleted, or not created yet)"]
    st, spec = objects.status(job), objects.spec(job)
    counts = ", ".join(f"{k} {st.get(k) or 0}" for k in ("active", "succeeded", "failed"))
    rows = [f"Job {job_name}", _row("pods", counts), _row("suspended", "yes" if spec.get("suspend") else "no")]
    for c in st.get("conditions") or []:
        if c.get("status") == "True" and c.get("type") in ("Complete", "Failed", "SuccessCriteriaMet", "FailureTarget"):
            rows.append(_row(c["type"], f"{c.get('reason') or ''} {c.get('message') or ''}".strip() or "True"))
            break
    return rows


def _pod_rows(pods: Sequence[Mapping[str, Any]]) -> list[str]:
    if not pods:
        return ["Pod: none (gone, or not created yet)"]
    rows = []
    for pod in pods:
        st, spec = objects.status(pod), objects.spec(pod)
        rows.append(f"Pod {objects.meta(pod).get('name')}")
        node = spec.get("nodeName")
        rows.append(_row("phase", f"{st.get('phase') or '?'}" + (f" on node {node}" if node else " (not scheduled)")))
        for init in st.get("initContainerStatuses") or []:
            terminated = (init.get("state") or {}).get("terminated") or {}
            if terminated.get("exitCode") != 0:  # only the init containers that did not simply succeed
                rows.append(_row(f"init {init.get('name')}", container_state(init)))
        statuses = {c.get("name"): c for c in st.get("containerStatuses") or []}
        agent = statuses.get("agent")
        rows.append(_row("agent", container_state(agent) if agent else "no status yet"))
    return rows


def _run_rows(run: RunView) -> list[str]:
    if not run.run_id:
        return ["Dagster run: none yet"]
    rows = [f"Dagster run {run.run_id}"]
    if run.url:
        rows.append(_row("url", run.url))
    rows.append(_row("status", run.status if run.status else (run.note or "unknown")))
    return rows


def describe_task(task: Obj, job: Obj | None, pods: Sequence[Obj], run: RunView) -> str:
    """``describe``: the Task (phase, attempt, Ready and Succeeded conditions, result), its Job, the Job's
    pod(s) and the Dagster run, each a block of rows."""
    st = objects.status(task)
    attempt = st.get("attempt")
    phase = st.get("phase") or "Pending"
    rows = [f"Task {objects.name_of(task)}", _row("phase", phase + (f" (attempt {attempt})" if attempt else ""))]
    for type_ in (vocabulary.READY, vocabulary.SUCCEEDED):
        text = _condition_text(task, type_)
        if text:
            rows.append(_row(type_, text))
    if st.get("exitCode") is not None:
        rows.append(_row("exit code", st["exitCode"]))
    rows += _result_rows(st)
    if st.get("agentLog"):
        rows.append(_row("kept log", st["agentLog"]))
    rows += _job_rows(st.get("jobName"), job)
    rows += _pod_rows(pods)
    rows += _run_rows(run)
    return "\n".join(rows) + "\n"

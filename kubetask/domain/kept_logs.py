"""The frame of an agent log kept in its Dagster step's stdout (pure): written by the run's ops
(``kubetask_dagster/ops/task.py``), read back by ``kubectl kubetask logs``.

Each attempt's whole redacted log sits between ``header(...)`` and ``END``, and ``status.agentLog`` is
``location(...)``. A BatchRun's steps share one compute log, so a block is chosen by its header, never
by its position.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

HEADER = re.compile(r"^===== agent log of Task (?P<task>[^\s,]+), attempt (?P<attempt>\d+), pod (?P<pod>.*) =====$")
END = "===== end of the agent log ====="
_AGENT_LOG = re.compile(r"^Dagster run (?P<run>\S+), step (?P<step>.+): its stdout \(attempt (?P<attempt>\d+)\)$")


@dataclass(frozen=True)
class KeptLogRef:
    """Where ``status.agentLog`` says the last attempt's log is kept."""

    run_id: str
    step_key: str
    attempt: int


@dataclass(frozen=True)
class KeptBlock:
    """One attempt's kept log: its lines without the frame, and whether the end line was found."""

    task: str
    attempt: int
    pod: str
    text: str
    complete: bool


def parse_agent_log(text: str | None) -> KeptLogRef | None:
    """``status.agentLog`` as (run, step, attempt); None when absent or not in the ops' form."""
    match = _AGENT_LOG.match((text or "").strip())
    if match is None:
        return None
    return KeptLogRef(match["run"], match["step"], int(match["attempt"]))


def header(namespace: str, name: str, attempt: int, pod: str) -> str:
    """The line before an attempt's kept log."""
    return f"===== agent log of Task {namespace}/{name}, attempt {attempt}, pod {pod} ====="


def location(run_id: str, step_key: str, attempt: int) -> str:
    """``status.agentLog``: where the attempt's log is kept (``parse_agent_log`` reads it back)."""
    return f"Dagster run {run_id}, step {step_key}: its stdout (attempt {attempt})"


def _lines(chunks: Iterable[str]) -> Iterable[str]:
    """The lines of text arriving in chunks that may cut a line anywhere (each line keeps its newline)."""
    carry = ""
    for chunk in chunks:
        if not chunk:
            continue
        parts = (carry + chunk).split("\n")
        carry = parts.pop()
        for part in parts:
            yield part + "\n"
    if carry:
        yield carry


def find_block(chunks: Iterable[str], namespace: str, name: str, attempt: int) -> KeptBlock | None:
    """The last block of Task ``namespace/name``'s attempt ``attempt`` in a compute log read in chunks
    (only the matching block is held in memory); None when there is none. A block whose end line never
    came (the run worker died while writing, or the log was cut) is returned with ``complete`` False."""
    wanted = f"{namespace}/{name}"
    found: KeptBlock | None = None
    pod: str | None = None
    body: list[str] = []
    for line in _lines(chunks):
        bare = line.rstrip("\r\n")
        if pod is not None:
            if bare == END:
                found = KeptBlock(wanted, attempt, pod, "".join(body), True)
                pod, body = None, []
            else:
                match = HEADER.match(bare)
                if match is None:
                    body.append(line)
                    continue
                # another header before this block's end: the block was cut; keep what came
                found = KeptBlock(wanted, attempt, pod, "".join(body), False)
                pod, body = None, []
        match = HEADER.match(bare)
        if match is not None and match["task"] == wanted and int(match["attempt"]) == attempt:
            pod, body = match["pod"], []
    if pod is not None:
        found = KeptBlock(wanted, attempt, pod, "".join(body), False)
    return found


def extract(text: str, namespace: str, name: str, attempt: int) -> KeptBlock | None:
    """``find_block`` over one string."""
    return find_block([text], namespace, name, attempt)

"""How a BatchRun ended (kubetask.domain.status.batchrun_outcome): phase x reason x message."""

from __future__ import annotations

from typing import Any

import pytest

from kubetask.domain.status import batchrun_outcome, batchrun_summary


def outcome(
    run_status: str | None,
    tasks: list[tuple[str, str | None, str | None]] | None = None,
    *,
    total: int | None = None,
    current: str | None = "Running",
    ready: dict[str, Any] | None = None,
    stop: bool = False,
    ended: int = 0,
) -> dict[str, Any]:
    return batchrun_outcome(
        "r1",
        run_status,
        current_phase=current,
        ready=ready,
        total=total,
        tasks=tasks or [],
        stop_requested=stop,
        ended_tasks=ended,
    )


def rows(*phases: str) -> list[tuple[str, str | None, str | None]]:
    return [(f"br-task-{i}", p, "AgentFailed" if p == "Failed" else None) for i, p in enumerate(phases)]


def triple(o: dict[str, Any]) -> tuple[str, str, bool]:
    return o["phase"], o["reason"], o["failure_detail"]


# --- the run ended before any Task existed --------------------------------------------------------


@pytest.mark.parametrize(
    "run_status, stop, expected",
    [
        ("FAILURE", False, ("Failed", "RunFailed", True)),
        ("SUCCESS", False, ("Failed", "RunFailed", True)),
        ("CANCELED", False, ("Stopped", "RunCanceled", False)),
        ("CANCELED", True, ("Stopped", "StopRequested", False)),
        ("FAILURE", True, ("Stopped", "StopRequested", False)),
        (None, False, ("Failed", "RunNotFound", False)),
    ],
)
def test_before_any_task(run_status, stop, expected):
    o = outcome(run_status, stop=stop)
    assert triple(o) == expected
    assert o["progress"] is None and o["failedTasks"] is None
    if run_status is None:
        assert o["message"] == "Dagster has no run r1 (was the Dagster instance reset?)"
    else:
        assert o["message"] == f"Dagster run r1 ended ({run_status}) before any Task was created"


def test_before_any_task_an_ops_recorded_failure_stands():
    ready = {"type": "Ready", "status": "False", "reason": "BatchNotFound", "message": 'no Batch "nightly"'}
    o = outcome("FAILURE", current="Failed", ready=ready, stop=True)
    assert triple(o) == ("Failed", "BatchNotFound", False)
    assert o["message"] == 'Dagster run r1 ended (FAILURE): no Batch "nightly"'


@pytest.mark.parametrize("reason", ["RunSubmitted", "DagsterUnavailable", "RerunStarted", "RunAdopted", None])
def test_before_any_task_a_bridge_note_is_no_outcome(reason):
    ready = {"type": "Ready", "status": "False", "reason": reason, "message": "m"}
    assert triple(outcome("FAILURE", current="Failed", ready=ready)) == ("Failed", "RunFailed", True)


def test_before_any_task_a_non_terminal_phase_keeps_no_ready_reason():
    ready = {"type": "Ready", "status": "False", "reason": "BatchNotFound", "message": "m"}
    assert triple(outcome("FAILURE", current="Pending", ready=ready)) == ("Failed", "RunFailed", True)


# --- with Tasks ------------------------------------------------------------------------------------


def test_every_task_completed():
    o = outcome("SUCCESS", rows("Completed", "Completed"), total=2)
    assert triple(o) == ("Completed", "AllTasksCompleted", False)
    assert o["progress"] == {
        "total": 2,
        "pending": 0,
        "queued": 0,
        "running": 0,
        "completed": 2,
        "failed": 0,
        "stopped": 0,
    }
    assert o["failedTasks"] == []
    assert o["message"] == "Dagster run r1 ended (SUCCESS): 2 of 2 Tasks completed, 0 failed, 0 stopped"


def test_failed_tasks_are_listed_and_named_in_the_message():
    o = outcome("FAILURE", rows("Completed", "Failed", "Stopped"), total=4, ended=1)
    assert triple(o) == ("Failed", "TasksFailed", False)
    assert o["failedTasks"] == [{"name": "br-task-1", "reason": "AgentFailed"}]
    assert o["message"] == (
        "Dagster run r1 ended (FAILURE): 1 of 4 Tasks completed, 1 failed, 1 stopped, "
        "1 never created (1 never finished and were marked Stopped, reason RunEnded)"
    )


@pytest.mark.parametrize(
    "run_status, stop, reason",
    [
        ("CANCELED", False, "RunCanceled"),
        ("CANCELED", True, "StopRequested"),
        ("SUCCESS", True, "StopRequested"),
    ],
)
def test_a_stop_or_a_cancel_is_stopped(run_status, stop, reason):
    o = outcome(run_status, rows("Completed", "Stopped"), total=2, stop=stop)
    assert triple(o) == ("Stopped", reason, False)
    assert o["progress"]["stopped"] == 1


def test_an_ops_terminal_phase_stands():
    assert triple(outcome("SUCCESS", rows("Completed", "Failed"), total=2, current="Completed")) == (
        "Completed",
        "AllTasksCompleted",
        False,
    )
    assert triple(outcome("CANCELED", rows("Completed"), total=1, current="Failed")) == ("Failed", "RunFailed", True)


def test_no_failed_task_but_not_all_done_is_the_runs_failure():
    o = outcome("FAILURE", rows("Completed"), total=3)
    assert triple(o) == ("Failed", "RunFailed", True)
    assert o["progress"]["pending"] == 2 and o["message"].endswith(", 2 never created")
    assert triple(outcome(None, rows("Completed"), total=3)) == ("Failed", "RunNotFound", False)
    assert "(not found)" in outcome(None, rows("Completed"), total=3)["message"]


def test_without_a_total_the_tasks_given_are_the_total():
    o = outcome("SUCCESS", rows("Completed", "Completed"), total=None)
    assert o["progress"]["total"] == 2 and o["phase"] == "Completed"


def test_a_spent_budget_is_stopped_with_its_own_reason():
    tasks = [*rows("Completed", "Failed"), ("br-task-2", "Stopped", "BudgetExceeded")]
    o = outcome("SUCCESS", tasks, total=3)
    assert triple(o) == ("Stopped", "BudgetExceeded", False)
    assert o["progress"]["stopped"] == 1 and o["failedTasks"] == [{"name": "br-task-1", "reason": "AgentFailed"}]
    # the op's summary wrote Stopped first: the reason is the budget's still
    assert triple(outcome("SUCCESS", tasks, total=3, current="Stopped"))[1] == "BudgetExceeded"
    # a person's stop is the reason when both happened
    assert triple(outcome("CANCELED", tasks, total=3, stop=True))[1] == "StopRequested"
    # a Task stopped for another reason is no budget
    assert outcome("SUCCESS", rows("Completed", "Stopped"), total=2)["reason"] != "BudgetExceeded"


def test_the_summary_of_a_finished_run_whose_budget_was_spent_is_stopped():
    tasks = [*rows("Completed"), ("br-task-1", "Stopped", "BudgetExceeded")]
    assert batchrun_summary(tasks, 2, paused=False, stopped=False)["phase"] == "Stopped"
    # until every Task is terminal it is running
    assert batchrun_summary([*tasks, ("br-task-2", "Running", None)], 3, paused=False, stopped=False)["phase"] == "Running"

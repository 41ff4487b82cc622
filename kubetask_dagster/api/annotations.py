"""Annotations and labels the controllers honour or write."""

STOP = "kubetask.io/stop"
"""`"true"` on a Task or BatchRun: terminate its Dagster run and stop its Jobs."""

PAUSE = "kubetask.io/pause"
"""`"true"` on a BatchRun: dispatch no new Tasks (running ones finish); remove it to resume."""

RERUN = "kubetask.io/rerun"
"""`"failed"` on a finished BatchRun: re-execute its failed and never-started Tasks; cleared when taken."""

EXECUTED_BY = "kubetask.io/executed-by"
"""On a Task created by a BatchRun's run: the Dagster run that executes it (the bridge leaves it alone)."""

LABEL_TASK = "kubetask.io/task"
LABEL_BATCH = "kubetask.io/batch"
LABEL_BATCH_RUN = "kubetask.io/batch-run"
LABEL_ATTEMPT = "kubetask.io/attempt"
LABEL_APP = "app"
APP = "kubetask"

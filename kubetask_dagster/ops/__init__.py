"""The ops of ``task_job`` (``task``) and ``batch_job`` (``batch``)."""

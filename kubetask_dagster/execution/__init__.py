"""How steps run: the threaded executor and ``maxConcurrentTasks`` as Dagster pools."""

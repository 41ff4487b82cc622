"""kubetask: the core of kubetask-dagster, shared by the bridge and the Dagster code location.

It imports neither Dagster nor kopf (import-linter checks it). From the bottom up: ``api`` (the models),
``vocabulary`` and ``objects`` (every public string; raw-object accessors), ``domain`` (pure functions),
``kube`` (what both processes share with Kubernetes) and ``tools`` (generators of CRDs and API docs).
"""

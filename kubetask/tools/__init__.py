"""Console scripts that generate from the models: ``kubetask-crds`` and ``kubetask-api-docs``."""

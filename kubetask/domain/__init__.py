"""The pure domain: objects in, objects out, no I/O (context resolution reads through the
``ContextReader`` protocol). Unit-tested in ``tests/unit/core``."""

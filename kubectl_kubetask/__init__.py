"""``kubectl kubetask``: a kubectl plugin for Tasks and BatchRuns (logs, stop, pause, resume, rerun, open,
describe, watch)."""

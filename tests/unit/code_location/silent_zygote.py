"""A zygote that takes one request, notes it in $SILENT_ZYGOTE_LOG and dies without answering."""

import os
import sys

print("ready", flush=True)
line = sys.stdin.readline()
with open(os.environ["SILENT_ZYGOTE_LOG"], "a") as log:
    log.write(line)
sys.exit(1)

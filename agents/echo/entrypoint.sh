#!/bin/sh
# Echo agent: print every file under $WORKSPACE_DIR (default /workspace), sorted by path, then exit.
#
#   === Task Content ===
#   --- File: /workspace/task.md ---
#   <content>
#   === Task Completed ===
#
# ECHO_EXIT_CODE (default 0) is the exit status, to demo a failing agent.
set -eu

dir="${WORKSPACE_DIR:-/workspace}"
echo "=== Task Content ==="
if [ -d "$dir" ]; then
  # Regular files and symlinks to files (a whole-ConfigMap mount); not the ..data links such a mount adds.
  find "$dir" \( -type f -o -type l \) ! -path '*/..*' | LC_ALL=C sort | while IFS= read -r file; do
    [ -f "$file" ] || continue
    echo "--- File: $file ---"
    cat "$file"
    # Keep the next header on its own line when a file does not end with a newline.
    if [ -s "$file" ] && [ -n "$(tail -c 1 "$file")" ]; then
      echo
    fi
  done
fi
echo "=== Task Completed ==="
exit "${ECHO_EXIT_CODE:-0}"

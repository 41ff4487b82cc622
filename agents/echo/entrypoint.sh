#!/bin/sh
# Echo agent: print what its Task was given, then exit. POSIX sh, coreutils and findutils only.
#
#   === Task Content ===
#   --- File: /workspace/a.md ---         every regular file under $WORKSPACE_DIR (default /workspace),
#   <content, byte for byte>              sorted by path (LC_ALL=C); a newline is added only after a
#   --- File: /workspace/task.md ---      non-empty file that does not end with one
#   <content>
#   === Credentials ===
#   env GITHUB_TOKEN set                  each name of KUBETASK_CREDENTIAL_ENV (comma-separated):
#   env OTHER unset                       whether it is set, never its value
#   file /creds/key mode 600 owner 10001:10001 readable yes
#                                         each path of KUBETASK_CREDENTIAL_PATHS (comma-separated; a
#                                         directory lists its files); `file <path> missing` if absent
#   === Run: /workspace/.run ===          only when $WORKSPACE_DIR/.run exists: what `sh .run` prints
#   <output>                              (run in $WORKSPACE_DIR, for tests that need an agent to act)
#   === Task Completed ===
#
# Skipped: the `..data` / `..<timestamp>` entries of ConfigMap and Secret volumes (their files are
# printed once, through the key's own link) and the internals of `.git` directories (a checkout's
# working files are printed).
#
# Result: $WORKSPACE_DIR/.result.json, when it exists, is copied to $KUBETASK_RESULT_FILE (the
# container's termination message: kubetask records it as the Task's status.result).
#
# Exit status: the integer in $WORKSPACE_DIR/.exit-code when that file exists (whitespace trimmed;
# anything else than 0-255 exits 2), else the status of .run when it ran, else ECHO_EXIT_CODE
# (default 0).
# ECHO_SLEEP (seconds, default 0), or the number in $WORKSPACE_DIR/.sleep: wait that long before
# printing, for timeout and stop tests. SIGTERM/SIGINT end the agent with 143/130, also while it
# sleeps or .run runs (as PID 1 in a container a signal without a handler would be ignored): at once,
# or after the seconds in $WORKSPACE_DIR/.term-delay.
set -eu

dir="${WORKSPACE_DIR:-/workspace}"
child=""

on_signal() {
  [ -n "$child" ] && kill "$child" 2>/dev/null
  # $WORKSPACE_DIR/.term-delay: an agent that takes this many seconds to shut down (for tests of
  # what runs during a pod's grace period).
  if [ -f "$dir/.term-delay" ]; then sleep "$(tr -d ' \t\r\n' <"$dir/.term-delay")" || true; fi
  exit "$1"
}
trap 'on_signal 143' TERM
trap 'on_signal 130' INT

fail() {
  echo "echo-agent: $*" >&2
  exit 2
}

# The files' printer, run by xargs in one sh per batch of NUL-separated names (already sorted): the
# header, the bytes, and a newline if the content does not end with one. An unreadable file is noted
# on stderr and does not fail the agent.
PRINT_FILES='
  for f; do
    [ -f "$f" ] || continue
    printf -- "--- File: %s ---\n" "$f"
    cat -- "$f" || echo "echo-agent: cannot read $f" >&2
    if [ -s "$f" ] && [ -r "$f" ] && [ "$(tail -c 1 -- "$f" | wc -l)" -eq 0 ]; then echo; fi
  done'

# file_line PATH: mode, owner and readability of PATH (of the target when PATH is a link).
file_line() {
  if [ ! -e "$1" ]; then
    printf 'file %s missing\n' "$1"
    return 0
  fi
  readable=no
  [ -r "$1" ] && readable=yes
  printf 'file %s mode %s owner %s readable %s\n' "$1" "$(stat -L -c '%a' -- "$1")" "$(stat -L -c '%u:%g' -- "$1")" "$readable"
}

# each_item LIST FUNCTION: call FUNCTION with every item of a comma-separated LIST, blanks trimmed,
# empty items dropped.
each_item() {
  saved_ifs=$IFS
  IFS=,
  set -f
  for item in $1; do
    IFS=$saved_ifs
    item="${item#"${item%%[![:space:]]*}"}"
    item="${item%"${item##*[![:space:]]}"}"
    if [ -n "$item" ]; then "$2" "$item"; fi
    IFS=,
  done
  IFS=$saved_ifs
  set +f
}

env_line() {
  # printenv answers for any name Kubernetes allows; its output, the value, goes nowhere.
  if printenv -- "$1" >/dev/null 2>&1; then
    printf 'env %s set\n' "$1"
  else
    printf 'env %s unset\n' "$1"
  fi
}

path_lines() {
  if [ -d "$1" ] && [ -r "$1" ] && [ -x "$1" ]; then
    find "$1" \( -type f -o -type l \) ! -path '*/..*' -print | LC_ALL=C sort | while IFS= read -r file; do
      if [ -f "$file" ]; then file_line "$file"; fi
    done
  else
    file_line "$1"
  fi
}

# in_background CMD...: run CMD and wait for it, so that the TERM trap runs at once (a trap waits for
# the foreground command to end), and give its status.
in_background() {
  "$@" &
  child=$!
  status=0
  wait "$child" || status=$?
  child=""
  return "$status"
}

seconds="${ECHO_SLEEP:-0}"
if [ -f "$dir/.sleep" ]; then
  seconds="$(tr -d ' \t\r\n' <"$dir/.sleep")" || fail "cannot read $dir/.sleep"
fi
case "$seconds" in
  '' | *[!0-9.]* | *.*.* | .) fail "the time to sleep (ECHO_SLEEP or .sleep) must be a number of seconds, not '$seconds'" ;;
esac
if [ "$seconds" != 0 ]; then
  in_background sleep "$seconds" </dev/null
fi

echo "=== Task Content ==="
if [ -d "$dir" ]; then
  # Regular files and links to regular files (the keys of a whole-ConfigMap mount), NUL-separated so
  # that any file name survives.
  find "$dir" -name .git -prune -o \( -type f -o -type l \) ! -path '*/..*' -print0 |
    LC_ALL=C sort -z |
    xargs -0 -r sh -c "$PRINT_FILES" sh
fi

echo "=== Credentials ==="
each_item "${KUBETASK_CREDENTIAL_ENV:-}" env_line
each_item "${KUBETASK_CREDENTIAL_PATHS:-}" path_lines

run_status=""
if [ -f "$dir/.run" ]; then
  printf '=== Run: %s ===\n' "$dir/.run"
  run_status=0
  in_background sh -c 'cd "$1" && exec sh ./.run' sh "$dir" </dev/null || run_status=$?
fi

echo "=== Task Completed ==="
# The result document, when the Task gives one: handed to kubetask through $KUBETASK_RESULT_FILE.
if [ -f "$dir/.result.json" ] && [ -n "${KUBETASK_RESULT_FILE:-}" ]; then
  cat -- "$dir/.result.json" >"$KUBETASK_RESULT_FILE" || echo "echo-agent: cannot write $KUBETASK_RESULT_FILE" >&2
fi
if [ -e "$dir/.exit-code" ]; then
  code="$(tr -d ' \t\r\n' <"$dir/.exit-code")" || fail "cannot read $dir/.exit-code"
  case "$code" in
    '' | *[!0-9]* | ????*) fail "$dir/.exit-code must hold an exit status (0-255), not '$code'" ;;
  esac
  [ "$code" -le 255 ] || fail "$dir/.exit-code must hold an exit status (0-255), not '$code'"
  exit "$code"
fi
[ -n "$run_status" ] && exit "$run_status"
exit "${ECHO_EXIT_CODE:-0}"

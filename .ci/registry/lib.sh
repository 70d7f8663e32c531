# What up and down share. Sourced, from this folder.
# The registry's state: pid file, log, port and its storage. A caller picks another with NOTES_REGISTRY_STATE.
state=${NOTES_REGISTRY_STATE:-${TMPDIR:-/tmp}/notes-registry}
# One line naming the failing step.
fail() { echo "$(basename "$0"): $*" >&2; exit 1; }
# The pid in the pid file is alive and was started with this state folder (a pid alone could have been reused).
running() {
  local pid
  pid=$(cat "$state/registry.pid" 2>/dev/null) || return 1
  grep -qz "^$state/" "/proc/$pid/cmdline" 2>/dev/null
}

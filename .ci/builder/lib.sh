# What up and down share. Sourced, from this folder.
# One builder per machine: its layer cache (root) is kept between runs, so a second CI run rebuilds nothing that did
# not change; the state folder (socket, pid, log, config) is the running daemon's.
cache=${NOTES_RELEASE_CACHE:-/var/cache/notes-release}
root=$cache/buildkitd
state=${NOTES_BUILDER_STATE:-${TMPDIR:-/tmp}/notes-builder}
socket=$state/buildkitd.sock
builder=notes
fail() { echo "$(basename "$0"): $*" >&2; exit 1; }
# The pid in the pid file is alive and runs the binary copied into this state folder (a pid alone could be reused).
running() {
  local pid
  pid=$(cat "$state/buildkitd.pid" 2>/dev/null) || return 1
  grep -qz "^$state/" "/proc/$pid/cmdline" 2>/dev/null
}

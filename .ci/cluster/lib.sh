# What every script here shares: the pinned versions, where the cache and the running cluster's state live, and how
# a process this folder started is recognised. Sourced, from this folder.
. ./versions.sh

# Outside the repository and keyed by version, so a second CI run (or a second clone) reuses the build.
cache=${NOTES_CLUSTER_CACHE:-/var/cache/notes-cluster}/$KUBERNETES_VERSION
bin=$cache/bin
export GOMODCACHE=$cache/gomod GOCACHE=$cache/gocache GOTOOLCHAIN=local
# Writable module files, so `rm -rf` can empty the cache.
export GOFLAGS="-modcacherw ${GOFLAGS:-}"
# The running cluster: certificates, etcd's data, logs, pid files. Removed by down.
state=${NOTES_CLUSTER_STATE:-${TMPDIR:-/tmp}/notes-cluster}

# A pid file alone could name a reused pid, and the binary's path changes when the cache is rebuilt; every process
# started here has the state folder in its arguments, so that is what identifies it.
running() {  # name: the pid in $state/name.pid is alive and was started with this state folder
  local pid
  pid=$(cat "$state/$1.pid" 2>/dev/null) || return 1
  grep -qz "^$state/" "/proc/$pid/cmdline" 2>/dev/null
}

# What every script here shares: the pinned versions, where the cache and the running cluster's state live, and how
# a process this folder started is recognised. Sourced, from this folder.
. ./versions.sh

# Outside the repository and keyed by version, so a second CI run (or a second clone) reuses the build.
cache=${NOTES_CLUSTER_CACHE:-/var/cache/notes-cluster}/$KUBERNETES_VERSION
bin=$cache/bin
export GOMODCACHE=$cache/gomod GOCACHE=$cache/gocache GOTOOLCHAIN=local
# Writable module files, so `rm -rf` can empty the cache.
export GOFLAGS="-modcacherw ${GOFLAGS:-}"
# The running cluster: certificates, etcd's data, logs, pid files, the node's containers. Removed by down.
state=${NOTES_CLUSTER_STATE:-${TMPDIR:-/tmp}/notes-cluster}
kubeconfig=$state/kubeconfig
# The node's name and address: an address on a bridge of its own (the kernel has no dummy interfaces), so nothing
# the cluster serves listens on the machine's real interfaces; the API server and kubelet listen there. Pods get addresses from pod_range on notes-cni0.
node=notes-node
node_address=10.200.0.1
pod_range=10.244.0.0/24
# Service addresses: routed to the node's bridge only, and nowhere once the cluster is down.
service_range=10.96.0.0/16

# A pid file alone could name a reused pid, and the binary's path changes when the cache is rebuilt; every process
# started here has the state folder in its arguments, so that is what identifies it.
running() {  # name: the pid in $state/name.pid is alive and was started with this state folder
  local pid
  pid=$(cat "$state/$1.pid" 2>/dev/null) || return 1
  grep -qz "^$state/" "/proc/$pid/cmdline" 2>/dev/null
}

# One line naming the failing step; what started before it is stopped by the next run or by down.
fail() { echo "$(basename "$0"): $*" >&2; exit 1; }

wait_for() {  # name seconds command...: until command succeeds while process `name` runs, or fail naming it
  local name=$1 deadline=$((SECONDS + $2)); shift 2
  until "$@" >/dev/null 2>&1; do
    running "$name" && [ $SECONDS -lt $deadline ] ||
      fail "$name failed to start: $(tail -n 1 "$state/$name.log" | cut -c1-200) (see $state/$name.log)"
    sleep 1
  done
}

start() {  # name port... -- args...: start a binary detached from this script, its pid in $state/name.pid
  local name=$1 port; shift
  while [ "$1" != -- ]; do
    port=$1; shift
    # Another process on the port would answer the readiness checks in place of ours.
    [ -z "$(ss -Hltn "sport = :$port")" ] || fail "$name cannot start: port $port is taken by another process"
  done
  shift
  setsid "$bin/$name" "$@" >"$state/$name.log" 2>&1 </dev/null &
  echo $! >"$state/$name.pid"
  # setsid becomes the binary in place; while it does, the pid's command line can read empty, and running() would
  # call a process that is starting a dead one. Wait until it is the binary (or gone: wait_for then says so).
  local i
  for i in $(seq 50); do
    grep -qz "^$bin/$name\$" "/proc/$!/cmdline" 2>/dev/null || [ ! -e "/proc/$!" ] && break
    sleep 0.1
  done
}

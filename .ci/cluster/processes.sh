# How up-api and down recognise the processes they own: sourced, after $state is set.
# A pid file alone could name a reused pid, and the binary's path changes when the cache is rebuilt; every process
# started here has the state folder in its arguments, so that is what identifies it.

running() {  # name: the pid in $state/name.pid is alive and was started with this state folder
  local pid
  pid=$(cat "$state/$1.pid" 2>/dev/null) || return 1
  tr '\0' '\n' <"/proc/$pid/cmdline" 2>/dev/null | grep -q "^$state/"
}

"""Waiting for a condition instead of sleeping: a free port to publish on, a poll until something holds, and the
sockets a load leaves in TIME_WAIT."""

import socket
import time
from pathlib import Path

import requests


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until(condition, timeout, what="the condition", interval=0.05, explain=None):
    """Polls `condition` until it returns a true value, which it returns; a refused connection counts as false.

    After `timeout` seconds it raises TimeoutError naming `what`, with what `explain()` says (a container's log)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if result := condition():
                return result
        except requests.RequestException:
            pass
        time.sleep(interval)
    raise TimeoutError(f"{what}: not within {timeout} s" + (f"; {explain()}" if explain else ""))


def tcp_states():
    """(local port, remote port, state) of every IPv4 and IPv6 TCP socket on this host, from /proc/net."""
    rows = []
    for table in ("tcp", "tcp6"):
        for line in Path("/proc/net", table).read_text().splitlines()[1:]:
            local, remote, state = line.split()[1:4]
            rows.append((int(local.rsplit(":", 1)[1], 16), int(remote.rsplit(":", 1)[1], 16), state))
    return rows


TIME_WAIT = "06"  # the kernel's code for the state in /proc/net/tcp


def wait_for_time_wait(limit=1000, timeout=70):
    """Waits until fewer than `limit` sockets are in TIME_WAIT (60 s each on Linux): a load phase that closes a
    connection per request leaves tens of thousands, and the next phase started among them measures a fraction of
    its rate. Returns the seconds waited."""
    start = time.monotonic()
    wait_until(lambda: sum(state == TIME_WAIT for *_, state in tcp_states()) < limit, timeout,
               f"fewer than {limit} sockets in TIME_WAIT", interval=1)
    return time.monotonic() - start


def answers(url):
    """A condition for wait_until: `url` answers 200."""
    return lambda: requests.get(url, timeout=2).status_code == 200

"""Frozen database: every database process stopped with SIGSTOP under load; a client-side bound answers 503 in time."""

import time
from dataclasses import dataclass

from containers import stack
from load import Load
from project import DATABASE_TIMEOUT_SECONDS
from waits import wait_until

from proof.drills.common import OUTAGE_SECONDS, RECOVERY_BOUND_SECONDS, Drill, recovered_since, tally


@dataclass
class Freeze(Drill):
    requests: int  # sent while db was paused
    unavailable: int  # of which 503 with the JSON error body
    other: int  # of which neither that nor a success
    late: int  # answered (or given up) after DATABASE_TIMEOUT_SECONDS + 0.5 s
    slowest: float
    recovery: float  # seconds from SIGCONT to every request succeeding

    title = f"frozen database: every db process stopped for {OUTAGE_SECONDS} s under load"

    def counts(self):
        return (f"{self.requests} requests during it, {self.unavailable} answered 503 JSON, {self.other} anything "
                f"but that or a success, {self.late} slower than {DATABASE_TIMEOUT_SECONDS + 0.5:.1f} s, slowest "
                f"{self.slowest:.2f} s; recovered {self.recovery:.1f} s after SIGCONT")

    def goals(self):
        return {"only 503 JSON or a success during it": self.requests > 0 and self.other == 0,
                f"every answer within {DATABASE_TIMEOUT_SECONDS + 0.5:.1f} s": self.late == 0,
                f"recovered <= {RECOVERY_BOUND_SECONDS} s": self.recovery <= RECOVERY_BOUND_SECONDS}


def signal_every_process(container, name):
    """The server (PID 1) and every backend it forked; `kill -1` from root reaches all but PID 1 and itself."""
    container.kill(signal=f"SIG{name}")
    assert container.exec_run(["sh", "-c", f"kill -{name} -1"], user="root").exit_code == 0


def database_frozen(image):
    """Every db process is stopped (SIGSTOP, as a hung host or a stuck disk would freeze it) for OUTAGE_SECONDS
    under load. Its kernel still accepts and acknowledges connections, so only a client-side bound ends a wait.

    By signals rather than `docker pause`, whose cgroup freezer not every engine has (this machine's does not).
    """
    with stack(image) as notes:
        with Load(notes.url, threads=4, reads=True) as load:
            load.wait_for_acknowledged(50)
            paused = time.monotonic()
            signal_every_process(notes.docker("db"), "STOP")
            time.sleep(OUTAGE_SECONDS)  # the freeze itself, not a wait for something
            signal_every_process(notes.docker("db"), "CONT")
            back = time.monotonic()
            since = wait_until(lambda: recovered_since(load.outcomes, at_least=1), 30, "every request succeeding")
    during = [o for o in load.outcomes if paused <= o.sent < back]
    _, unavailable, other = tally(during)
    durations = [o.done - o.sent for o in during]
    result = Freeze(len(during), unavailable, other, sum(d > DATABASE_TIMEOUT_SECONDS + 0.5 for d in durations),
                    max(durations),
                    max(0.0, since - back))
    print(result)
    return result

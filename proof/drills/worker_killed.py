"""Worker killed: SIGKILL to the gunicorn worker under load, as the OOM killer sends it; only its connections fail and
the master starts a new one."""

import time
from dataclasses import dataclass

from containers import stack
from load import Load
from waits import wait_until

from proof.drills.common import RECOVERY_BOUND_SECONDS, Drill, lost_notes, recovered_since, restarted

WORKERS = ("import os; print(*[p for p in os.listdir('/proc') if p.isdigit() "
           "and open(f'/proc/{p}/stat').read().rsplit(')', 1)[1].split()[1] == '1'])")


@dataclass
class WorkerKilled(Drill):
    connections: int  # the clients' keep-alive connections, each held by the one worker
    in_flight: int  # requests sent before the kill and not yet answered
    failed: int  # requests with no answer or a 5xx
    failed_later: int  # of them, sent once gunicorn ran the new worker
    server_errors: int
    replaced: float  # seconds until gunicorn ran a new worker
    recovery: float  # seconds until every request succeeded again
    restarted: bool  # the container, that is: gunicorn's master (PID 1) exited
    logged: bool  # gunicorn's master said which worker was killed
    lost: int

    title = "worker killed: SIGKILL to the gunicorn worker under load, as the OOM killer sends it"

    def counts(self):
        return (f"{self.failed} requests failed ({self.server_errors} with a 5xx) of the {self.connections} "
                f"connections the worker held, {self.in_flight} requests in flight at the kill; "
                f"{self.failed_later} failed once the new worker was seen running, {self.replaced:.2f} s after the "
                f"kill; every request answered again {self.recovery:.2f} s after it; container "
                f"{'restarted' if self.restarted else 'never restarted'}; the kill "
                f"{'logged' if self.logged else 'not logged'} by gunicorn; {self.lost} acknowledged notes lost")

    def goals(self):
        # A request sent as the worker dies can still go out on a connection it held, before the kernel closes it:
        # those fail too, and none once the new worker runs.
        return {"only requests on the killed worker's connections failed":
                    self.failed <= self.connections and self.failed_later == 0,
                "0 5xx": self.server_errors == 0,
                f"full capacity <= {RECOVERY_BOUND_SECONDS} s, without a container restart":
                    self.recovery <= RECOVERY_BOUND_SECONDS and not self.restarted,
                "0 acknowledged notes lost": self.lost == 0}


def workers(container):
    listed = container.exec_run(["python", "-c", WORKERS])
    assert listed.exit_code == 0, listed.output
    return set(listed.output.decode().split())


def worker_killed(image, clients=8):
    """`clients` write and read; the gunicorn worker (the service runs one, WEB_CONCURRENCY=1) gets SIGKILL, from
    inside the container as its own uid. gunicorn's master, PID 1, starts a new one."""
    with stack(image) as notes:
        container = notes.docker("web")
        first_start = container.attrs["State"]["StartedAt"]
        with Load(notes.url, threads=clients, reads=True) as load:
            load.wait_for_acknowledged(100)
            [victim, *_] = sorted(workers(container))
            # The moment of the kill, on the clock the load uses: CLOCK_MONOTONIC is the host's, in any container.
            kill = container.exec_run(["python", "-c",
                                       f"import os, time; os.kill({victim}, 9); print(time.monotonic())"])
            assert kill.exit_code == 0, kill.output
            killed = float(kill.output)
            wait_until(lambda: workers(container) - {victim}, 30, "a new worker")
            replaced = time.monotonic()
            since = wait_until(lambda: recovered_since(load.outcomes, at_least=1), 30, "every request succeeding")
        lost = len(lost_notes(load, notes.url))
        was_restarted = restarted(notes.docker("web"), first_start)
        logged = f"(pid:{victim}) was sent SIGKILL" in container.logs().decode(errors="replace")
    failed = [o for o in load.outcomes if o.status is None or o.status >= 500]
    result = WorkerKilled(clients, sum(o.sent < killed < o.done for o in load.outcomes), len(failed),
                          sum(o.sent >= replaced for o in failed), sum(bool(o.status) for o in failed),
                          replaced - killed, max(0.0, since - killed), was_restarted, logged, lost)
    print(result)
    return result

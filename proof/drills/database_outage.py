"""Database outage: the database stopped under load; web answers 503 JSON meanwhile, recovers by itself and never
restarts."""

import time
from dataclasses import dataclass

from containers import stack
from load import Load
from project import DATABASE_WAIT_SECONDS
from waits import wait_until

from proof.drills.common import OUTAGE_SECONDS, RECOVERY_BOUND_SECONDS, Drill, recovered_since, restarted, tally


@dataclass
class Outage(Drill):
    requests: int  # sent from the moment db was stopped until it accepted connections again
    unavailable: int  # of which 503 with the JSON error body
    other: int  # of which neither that nor a success: a 500, a hang (no answer in 10 s), a non-JSON 503
    slowest: float
    recovery: float  # seconds from the database accepting connections to the service answering every request
    web_restarted: bool

    title = f"database outage: db stopped for {OUTAGE_SECONDS} s under load"

    def counts(self):
        return (f"{self.requests} requests during it, {self.unavailable} answered 503 JSON, {self.other} anything "
                f"but that or a success, slowest {self.slowest:.2f} s; recovered {self.recovery:.1f} s after db was "
                f"back; web {'restarted' if self.web_restarted else 'never restarted'}")

    def goals(self):
        return {"only 503 JSON or a success during it": self.requests > 0 and self.other == 0,
                f"slowest <= {DATABASE_WAIT_SECONDS + 1:.0f} s": self.slowest <= DATABASE_WAIT_SECONDS + 1,
                f"recovered <= {RECOVERY_BOUND_SECONDS} s": self.recovery <= RECOVERY_BOUND_SECONDS,
                "0 web restarts": not self.web_restarted}


def database_outage(image):
    """db is stopped for OUTAGE_SECONDS under load (writes and reads), then started; web is never restarted.

    Two clients, well below the pool's connections, so that a response's time is the service's and not time spent
    queueing behind the other clients' requests.
    """
    with stack(image) as notes:
        first_start = notes.docker("web").attrs["State"]["StartedAt"]
        with Load(notes.url, threads=2, reads=True) as load:
            load.wait_for_acknowledged(50)
            stopped = time.monotonic()
            notes.docker("db").stop()
            time.sleep(OUTAGE_SECONDS)  # the outage itself, not a wait for something
            notes.docker("db").start()
            wait_until(lambda: notes.db.exec(["pg_isready", "--host=127.0.0.1", "--username=notes"]).exit_code == 0,
                       30, "db accepting connections")
            back = time.monotonic()
            since = wait_until(lambda: recovered_since(load.outcomes, at_least=1), 30, "every request succeeding")
        web_restarted = restarted(notes.docker("web"), first_start)
    during = [o for o in load.outcomes if stopped <= o.sent < back]
    # A request that waits for a connection as the database comes back may succeed: that is no failure.
    _, unavailable, other = tally(during)
    result = Outage(len(during), unavailable, other, max(o.done - o.sent for o in during), max(0.0, since - back),
                    web_restarted)
    print(result)
    return result

"""Locked table: another session holds the notes table in ACCESS EXCLUSIVE mode for 5 s under load. The server
cancels each waiting statement (statement_timeout) before the client's deadline, so every request answers 503 JSON
or succeeds in time and the pool keeps its connections: the same database backends serve web before and after.
"""

import time
from dataclasses import dataclass

from containers import stack
from load import Load
from project import DATABASE_TIMEOUT_SECONDS
from waits import wait_until

from proof.drills.common import Drill, connect_to_db, recovered_since, tally

LOCK_SECONDS = 5
# Every request needing the database answers within DATABASE_TIMEOUT_SECONDS, or 503 (the README's promise); half a
# second for a machine shared with other runs.
LOCKED_BOUND_SECONDS = DATABASE_TIMEOUT_SECONDS + 0.5
FULL_SERVICE_SECONDS = 1


@dataclass
class TableLocked(Drill):
    requests: int  # sent while the lock was held
    unavailable: int  # of which 503 with the JSON error body
    other: int  # of which neither that nor a success
    slowest: float
    before: list  # backend pids of web's connections (pg_stat_activity) before the lock
    after: list  # and once every request succeeded again
    names: set  # the application_name of those connections
    recovery: float  # seconds from the release until every request succeeded

    title = f"locked table: LOCK TABLE notes IN ACCESS EXCLUSIVE MODE held for {LOCK_SECONDS} s under load"

    def counts(self):
        return (f"{self.requests} requests during it, {self.unavailable} answered 503 JSON, {self.other} anything but "
                f"that or a success, slowest {self.slowest:.2f} s; web's backends {self.before} before, {self.after} "
                f"after ({', '.join(sorted(self.names))}); every request succeeding {self.recovery:.2f} s after the "
                f"release")

    def goals(self):
        return {f"every request answered within {LOCKED_BOUND_SECONDS:.1f} s, 503 JSON or a success":
                    self.requests > 0 and self.other == 0 and self.slowest <= LOCKED_BOUND_SECONDS,
                "the pool's connections kept: the same backend pids before and after":
                    bool(self.before) and self.before == self.after,
                f"full service <= {FULL_SERVICE_SECONDS} s after the release": self.recovery <= FULL_SERVICE_SECONDS}


def web_backends(session, notes):
    """(pid, application_name) of each db backend serving web, known by the address web connects from: no copy of
    app.py's application name is needed, and the name is reported beside the pids."""
    address = notes.docker("web").attrs["NetworkSettings"]["Networks"][notes.network.name]["IPAddress"]
    return session.execute("SELECT pid, application_name FROM pg_stat_activity WHERE client_addr = %s::inet "
                           "ORDER BY pid", [address]).fetchall()


def settled(read):
    """A condition for wait_until: what `read()` returns, once two reads in a row agree."""
    reads = []

    def condition():
        reads.append(read())
        return len(reads) > 1 and reads[-1] == reads[-2] and reads[-1]
    return condition


def table_locked(image):
    """Eight clients write and read; another session takes the notes table in ACCESS EXCLUSIVE mode (as a careless
    ALTER TABLE or a manual LOCK would) for LOCK_SECONDS, then commits. Every statement web sends meanwhile waits for
    the lock until its statement_timeout, which the server enforces: the connection goes back to the pool healthy,
    and requests waiting for a connection give up after DATABASE_WAIT_SECONDS. Both answer 503."""
    with stack(image) as notes, connect_to_db(notes) as observer, connect_to_db(notes) as locker:
        with Load(notes.url, threads=8, reads=True) as load:
            load.wait_for_acknowledged(100)
            # The pool grows while requests wait for a connection: its connections are counted once it has stopped.
            before = wait_until(settled(lambda: web_backends(observer, notes)), 30, "web's connections settled",
                                interval=0.5)
            locker.autocommit = False
            locker.execute("LOCK TABLE notes IN ACCESS EXCLUSIVE MODE")
            locked = time.monotonic()
            time.sleep(LOCK_SECONDS)  # the lock itself, not a wait for something
            locker.commit()
            released = time.monotonic()
            since = wait_until(lambda: recovered_since(load.outcomes, at_least=1), 30, "every request succeeding")
            after = web_backends(observer, notes)
    during = [o for o in load.outcomes if locked <= o.sent < released]
    _, unavailable, other = tally(during)
    result = TableLocked(len(during), unavailable, other, max(o.done - o.sent for o in during),
                         [pid for pid, _ in before], [pid for pid, _ in after], {name for _, name in before + after},
                         max(0.0, since - released))
    print(result)
    return result

"""Too many connections: more web replicas than max_connections admits; the starved ones answer 503 JSON and recover
once others go away."""

import time
from contextlib import ExitStack
from dataclasses import dataclass

from containers import migrate, postgres, web
from load import Load
from project import DATABASE_WAIT_SECONDS, GRACEFUL_TIMEOUT
from testcontainers.core.network import Network
from waits import answers, free_port, wait_until

from proof.drills.common import RECOVERY_BOUND_SECONDS, Drill, is_unavailable_json, recovered_since, restarted, tally

# A Postgres that admits this many connections, for one web replica more than that: tests/test_connections.py keeps
# the shipped replicas, workers and pools within max_connections; this is what happens when they are not.
# (4 is the least Postgres starts with: it must exceed the 3 slots reserved for superusers, which the image's
# notes role is, so that role may use all 4.)
MAX_CONNECTIONS = 4
REPLICAS = MAX_CONNECTIONS + 1


@dataclass
class TooManyConnections(Drill):
    requests: int
    succeeded: int
    unavailable: int  # 503 JSON
    other: int  # neither: a 500, no answer within 10 s
    slowest_unavailable: float
    starved: int  # replicas that got no connection at all
    recovery: float  # seconds from the other replicas' removal until a starved one answered every request
    restarted: bool  # that replica

    title = (f"too many connections: {REPLICAS} web replicas, each pooling up to 4 connections, against "
             f"max_connections {MAX_CONNECTIONS}")

    def counts(self):
        return (f"{self.requests} requests, {self.succeeded} succeeded, {self.unavailable} answered 503 JSON (slowest "
                f"{self.slowest_unavailable:.2f} s), {self.other} anything else; {self.starved} replicas without a "
                f"connection; one of them answered every request {self.recovery:.1f} s after the others went away "
                f"and {'restarted' if self.restarted else 'never restarted'}")

    def goals(self):
        return {"requests beyond the pool answer 503 JSON, never 500 or a hang":
                    self.unavailable > 0 and self.other == 0,
                f"each 503 within the pool's {DATABASE_WAIT_SECONDS:.0f} s wait (+1 s)":
                    self.slowest_unavailable <= DATABASE_WAIT_SECONDS + 1,
                f"recovered <= {RECOVERY_BOUND_SECONDS} s once replicas went away, without a restart":
                    self.recovery <= RECOVERY_BOUND_SECONDS and not self.restarted}


def too_many_connections(image):
    """REPLICAS web containers, one client each (writes and reads), against a db that admits MAX_CONNECTIONS: the
    first replicas' pools take every slot and the rest get none. Once each has answered a few requests, every replica
    but one without a connection goes away (removed, as a scale-down or a lost node would), and that one recovers."""
    with Network() as network, ExitStack() as containers:
        containers.enter_context(postgres(network).with_command(f"postgres -c max_connections={MAX_CONNECTIONS}"))
        migrate(image, network)
        replicas = []  # (container, its URL, its client)
        for _ in range(REPLICAS):
            port = free_port()
            replica = containers.enter_context(web(image, network, port)).get_wrapped_container()
            wait_until(answers(f"http://127.0.0.1:{port}/healthz"), 30, "a web replica alive")
            replicas.append((replica, f"http://127.0.0.1:{port}", Load(f"http://127.0.0.1:{port}", threads=1,
                                                                       reads=True)))
        with ExitStack() as clients:
            for _, _, load in replicas:
                clients.enter_context(load)
            wait_until(lambda: all(len(load.outcomes) >= 3 for *_, load in replicas), 60, "3 answers from each")
        starved = [(replica, url) for replica, url, load in replicas
                   if not any(o.status in (200, 201) for o in load.outcomes)]
        assert starved, "every replica got a connection: the drill did not exceed max_connections"
        remaining, url = starved[0]
        remaining.reload()
        first_start = remaining.attrs["State"]["StartedAt"]
        for replica, *_ in replicas:
            if replica is not remaining:
                replica.stop(timeout=GRACEFUL_TIMEOUT)
        gone = time.monotonic()
        with Load(url, threads=1, reads=True) as after:
            since = wait_until(lambda: recovered_since(after.outcomes, at_least=1), 30, "every request succeeding")
        remaining.reload()
        was_restarted = restarted(remaining, first_start)
    outcomes = [o for *_, load in replicas for o in load.outcomes]
    succeeded, unavailable, other = tally(outcomes)
    result = TooManyConnections(len(outcomes), succeeded, unavailable, other,
                                max((o.done - o.sent for o in outcomes if is_unavailable_json(o)), default=0.0),
                                len(starved),
                                max(0.0, since - gone), was_restarted)
    print(result)
    return result

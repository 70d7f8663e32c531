"""What every drill shares: the result class that names its goals (Drill), the bounds the service promises, and the
helpers that judge a load's outcomes. Each drill is a module of its own in this folder; `make drills` runs them all.
"""

import json
import time
from dataclasses import dataclass

import psycopg
import requests
from containers import DB_PASSWORD
from load import stored_notes

# How long each interruption lasts, and how soon after it the service must answer every request again.
OUTAGE_SECONDS = 10
RECOVERY_BOUND_SECONDS = 5
# Past a deadline of the server's, the time a busy machine may take to see a connection answered or closed.
SLACK_SECONDS = 2


class Drill:
    """What a drill counted, one line, and its goals, each met or not. A result class sets `title` and writes
    counts() and goals(); one with several parts (slow clients) gives a row to each in rows()."""

    title = ""

    def counts(self):
        raise NotImplementedError

    def goals(self):
        raise NotImplementedError

    def missed(self):
        return [goal for goal, met in self.goals().items() if not met]

    def rows(self):
        """docs/drills.md's rows: drill, what it counted, its goals, met."""
        missed = self.missed()
        return [[self.title, self.counts(), "; ".join(self.goals()),
                 "yes" if not missed else "**no**: " + "; ".join(missed)]]

    def __str__(self):
        missed = self.missed()
        return f"{self.title}: {self.counts()}; " + (f"MISSED: {'; '.join(missed)}" if missed else "every goal met")


def restarted(container, first_start):
    """Whether `container` (docker-py, reloaded) has stopped or started again since `first_start` (its StartedAt)."""
    state = container.attrs["State"]
    return not state["Running"] or state["StartedAt"] != first_start


def lost_notes(load, url):
    """Acknowledged (201) notes that the service no longer returns."""
    stored = stored_notes(url)
    return {note_id: text for note_id, text in load.acknowledged().items() if stored.get(note_id) != text}


@dataclass
class Durability(Drill):
    how: str
    acknowledged: int
    lost: int
    refused: int  # 503 or no answer during the interruption: never acknowledged, so never promised

    @property
    def title(self):
        return f"durability: {self.how}"

    def counts(self):
        return (f"{self.acknowledged} notes acknowledged with 201, {self.lost} of them lost; {self.refused} requests "
                f"refused or unanswered during the interruption")

    def goals(self):
        return {"every acknowledged note kept": self.acknowledged > 0 and self.lost == 0}


def durability(how, writer, url):
    result = Durability(how, len(writer.acknowledged()), len(lost_notes(writer, url)),
                        sum(o.status != 201 for o in writer.outcomes))
    print(result)
    return result


def is_unavailable_json(outcome):
    try:
        return outcome.status == 503 and json.loads(outcome.body)["error"]["code"] == "service_unavailable"
    except (ValueError, KeyError, TypeError):
        return False


def tally(outcomes):
    """(succeeded, answered 503 JSON, anything else) among `outcomes`: a 500, a hang, a 503 of another shape."""
    succeeded = sum(o.status in (200, 201) for o in outcomes)
    unavailable = sum(map(is_unavailable_json, outcomes))
    return succeeded, unavailable, len(outcomes) - succeeded - unavailable


def recovered_since(outcomes, at_least):
    """When the last run of successes began, if it has lasted `at_least` seconds: every request since succeeded."""
    since = None
    for outcome in sorted(outcomes, key=lambda o: o.sent):
        if outcome.status in (200, 201):
            since = since or outcome.sent
        else:
            since = None
    return since if since and time.monotonic() - since >= at_least else None


def plain_requests(url, stopping, outcomes):
    """GET / back to back until `stopping` is set, each as (sent at, latency s, answered 200)."""
    with requests.Session() as session:
        while not stopping.is_set():
            sent = time.monotonic()
            try:
                ok = session.get(url, timeout=2).status_code == 200
            except requests.RequestException:
                ok = False
            outcomes.append((sent, time.monotonic() - sent, ok))


def p99_ms(latencies):
    """The 99th percentile of `latencies` (seconds), in milliseconds; infinite when there are none."""
    latencies = sorted(latencies)
    return latencies[max(0, -(-len(latencies) * 99 // 100) - 1)] * 1000 if latencies else float("inf")


def connect_to_db(notes):
    """A session of our own on the stack's db, as psql on an operator's machine would open one."""
    return psycopg.connect(host=notes.db.get_container_host_ip(), port=notes.db.get_exposed_port(5432),
                           user=notes.db.username, password=DB_PASSWORD, dbname=notes.db.dbname,
                           application_name="drill", autocommit=True)

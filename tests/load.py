"""A load that records outcomes: threads that post (and read) notes until told to stop, each request's outcome kept,
and the notes the service returns, page by page."""

import itertools
import json
import threading
import time
import uuid
from dataclasses import dataclass, field

import requests
from waits import wait_until


@dataclass
class Outcome:
    sent: float  # time.monotonic() when the request started
    done: float
    status: int | None  # None: no HTTP response at all (refused, reset, timed out)
    body: str
    text: str | None  # the note a POST sent


@dataclass
class Load:
    """Threads that each send one request after another until the `with` block ends, recording every outcome.

    Each thread creates notes with unique texts (POST /api/notes); with `reads`, it alternates them with
    GET /api/notes, so that both the write and the read path meet whatever the drill does to the stack.
    """

    url: str
    threads: int = 4
    reads: bool = False
    timeout: float = 10
    outcomes: list = field(default_factory=list)
    run: str = field(default_factory=lambda: uuid.uuid4().hex[:8])

    def __enter__(self):
        self._stopping = threading.Event()
        self._workers = [threading.Thread(target=self._send, args=(number,)) for number in range(self.threads)]
        for worker in self._workers:
            worker.start()
        return self

    def __exit__(self, *exc_info):
        self._stopping.set()
        for worker in self._workers:
            worker.join()

    def _send(self, thread):
        session = requests.Session()
        for count in itertools.count():
            if self._stopping.is_set():
                return
            text = None
            sent = time.monotonic()
            try:
                if self.reads and count % 2:
                    response = session.get(f"{self.url}/api/notes", params={"limit": 5}, timeout=self.timeout)
                else:
                    text = f"load {self.run} {thread} {count}"
                    response = session.post(f"{self.url}/api/notes", json={"text": text}, timeout=self.timeout)
                status, body = response.status_code, response.text
            except requests.RequestException as error:
                status, body = None, f"{type(error).__name__}: {error}"
            self.outcomes.append(Outcome(sent, time.monotonic(), status, body, text))
            if status is None:
                # A refused connection fails at once: without a pause the threads would spin, taking the CPU
                # that the containers being restarted need.
                self._stopping.wait(0.05)

    def acknowledged(self):
        """{id: text} of every note the service answered 201 for."""
        return {json.loads(o.body)["id"]: o.text for o in list(self.outcomes) if o.status == 201}

    def wait_for_acknowledged(self, count, after=0.0, timeout=30):
        """Waits until `count` notes sent after the monotonic time `after` have been acknowledged."""
        wait_until(lambda: sum(o.status == 201 and o.sent >= after for o in list(self.outcomes)) >= count,
                   timeout, f"{count} acknowledged notes")


def every_note(url):
    """Every note the service returns, page by page, as a list of its JSON objects, newest first."""
    notes, before = [], None
    while True:
        params = {"limit": 100} | ({"before": before} if before else {})
        page = requests.get(f"{url}/api/notes", params=params, timeout=10)
        page.raise_for_status()
        notes += page.json()["notes"]
        before = page.json()["next"]
        if before is None:
            return notes


def stored_notes(url):
    """{id: text} of every note the service returns."""
    return {note["id"]: note["text"] for note in every_note(url)}

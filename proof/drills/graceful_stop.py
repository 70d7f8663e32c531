"""Graceful stop: `docker stop web` under load answers every accepted request and exits 0 within gunicorn's graceful
timeout."""

import time
from dataclasses import dataclass

from containers import stack
from load import Load, stored_notes
from project import GRACEFUL_TIMEOUT
from waits import answers, wait_until

from proof.drills.common import Drill


@dataclass
class GracefulStop(Drill):
    sent_before: int
    answered: int
    cut: int  # accepted (the note is stored) but no response reached the client
    reset_in_queue: int  # no response and nothing stored: still in the listen queue when the workers exited
    server_errors: int
    exit_code: int
    stop_seconds: float

    title = "graceful stop: docker stop web under load"

    def counts(self):
        return (f"{self.sent_before} requests sent before SIGTERM, {self.answered} answered, {self.cut} accepted but "
                f"cut off, {self.server_errors} 5xx, {self.reset_in_queue} reset while still queued, not yet "
                f"accepted; exit code {self.exit_code} after {self.stop_seconds:.1f} s")

    def goals(self):
        return {"requests answered under load": self.answered > 0, "0 accepted requests cut off": self.cut == 0,
                "0 5xx": self.server_errors == 0, "exit code 0": self.exit_code == 0,
                f"stopped within gunicorn's {GRACEFUL_TIMEOUT} s graceful timeout":
                    self.stop_seconds < GRACEFUL_TIMEOUT}


def graceful_stop(image):
    """`docker stop web` while eight writers keep posting; then web is started again to read back what was stored."""
    with stack(image) as notes:
        with Load(notes.url, threads=8) as writer:
            writer.wait_for_acknowledged(200)
            sigterm = time.monotonic()
            # Longer than gunicorn's graceful timeout, as compose.yaml's stop_grace_period is.
            notes.docker("web").stop(timeout=GRACEFUL_TIMEOUT + 10)
            stopped = time.monotonic()
        exit_code = notes.docker("web").attrs["State"]["ExitCode"]
        notes.docker("web").start()
        wait_until(answers(f"{notes.url}/readyz"), 30, "web ready after its restart")
        stored = set(stored_notes(notes.url).values())
    before = [o for o in writer.outcomes if o.sent < sigterm]
    unanswered = [o for o in before if o.status is None]
    cut = sum(o.text in stored for o in unanswered)
    result = GracefulStop(len(before), len(before) - len(unanswered), cut, len(unanswered) - cut,
                          sum(o.status >= 500 for o in before if o.status), exit_code, stopped - sigterm)
    print(result)
    return result

"""Durability: notes acknowledged while the database is killed with SIGKILL, then started, are all kept."""

import time

from containers import stack
from load import Load

from proof.drills.common import durability


def durability_after_db_kill(image):
    """A writer posts notes while the db container is killed with SIGKILL and started again."""
    with stack(image) as notes:
        with Load(notes.url) as writer:
            writer.wait_for_acknowledged(200)
            notes.docker("db").kill(signal="SIGKILL")
            notes.docker("db").start()
            writer.wait_for_acknowledged(200, after=time.monotonic())
        return durability("db killed with SIGKILL mid-stream, then started", writer, notes.url)

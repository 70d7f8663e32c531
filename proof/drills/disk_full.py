"""Disk full: Postgres' data on a small mount, filled under load; writes answer 503 JSON, reads still work, and writes
resume once space is freed, with no restart."""

import time
from dataclasses import dataclass

from containers import postgres, stack
from load import Load
from project import DATABASE_TIMEOUT_SECONDS
from waits import wait_until

from proof.drills.common import (
    RECOVERY_BOUND_SECONDS,
    Drill,
    is_unavailable_json,
    lost_notes,
    recovered_since,
    restarted,
)

PGDATA = "/var/lib/postgresql/data"
# The data's mount: what initdb and the schema take (about 46 MB with one 16 MB WAL segment), and room to spare.
DISK_MB = 80
# Left free by the filler, for the notes to fill: enough for some notes to land, small enough to fill in seconds.
HEADROOM_KB = 256
FULL_SECONDS = 5


@dataclass
class DiskFull(Drill):
    writes: int  # POSTs sent while the disk was full
    refused: int  # of which 503 JSON
    reads: int  # GETs sent meanwhile
    read_ok: int  # of which 200
    other: int  # neither a success nor 503 JSON: a 500, no answer within 10 s
    slowest: float
    lost: int
    recovery: float  # seconds from the filler's removal until every request succeeded
    web_restarted: bool
    db_reinitialized: bool  # Postgres restarted its processes after a crash (a PANIC), though its container ran on

    title = f"disk full: Postgres' data on a size-limited mount ({DISK_MB} MB), full for {FULL_SECONDS} s under load"

    def counts(self):
        return (f"{self.writes} writes while full, {self.refused} answered 503 JSON; {self.read_ok}/{self.reads} "
                f"reads answered 200; {self.other} anything else; slowest {self.slowest:.2f} s; {self.lost} "
                f"acknowledged notes lost; writes back {self.recovery:.2f} s after space was freed; web "
                f"{'restarted' if self.web_restarted else 'never restarted'}, Postgres "
                f"{'crashed and reinitialized' if self.db_reinitialized else 'never crashed'}")

    def goals(self):
        return {"writes answered 503 JSON, never 500 or a hang": self.refused > 0 and self.other == 0,
                "every read answered 200": self.reads > 0 and self.read_ok == self.reads,
                f"every answer within {DATABASE_TIMEOUT_SECONDS + 0.5:.1f} s":
                    self.slowest <= DATABASE_TIMEOUT_SECONDS + 0.5,
                "0 acknowledged notes lost": self.lost == 0,
                f"writes resume <= {RECOVERY_BOUND_SECONDS} s after space is freed, with no restart":
                    self.recovery <= RECOVERY_BOUND_SECONDS and not self.web_restarted and not self.db_reinitialized}


def small_disk(network):
    """Postgres as the stack runs it, its data on a size-limited tmpfs: a small disk that fills in seconds."""
    return postgres(network).with_tmpfs_mount(PGDATA, f"size={DISK_MB}m,uid=999,gid=999,mode=0700")


def disk_full(image):
    """A filler file takes all but HEADROOM_KB of the data's mount, as a runaway log or a forgotten dump would;
    writers then post notes until Postgres cannot extend the table. After FULL_SECONDS the filler is deleted.

    The write-ahead log keeps writing into its preallocated 16 MB segment meanwhile: a disk so full that a new
    segment cannot be created makes Postgres stop and restart, which the outage drill covers.
    """
    with stack(image, database=small_disk) as notes:
        db, first_start = notes.docker("db"), notes.docker("web").attrs["State"]["StartedAt"]
        fill = db.exec_run(["sh", "-c", f'free=$(df -k --output=avail "$PGDATA" | tail -n 1); exec dd '
                           f'if=/dev/zero of="$PGDATA/filler" bs=1k count=$((free - {HEADROOM_KB})) status=none'],
                           user="postgres")
        assert fill.exit_code == 0, fill.output
        with Load(notes.url, threads=2, reads=True) as load:
            wait_until(lambda: any(o.text and is_unavailable_json(o) for o in list(load.outcomes)), 60,
                       "a write refused for a full disk")
            full = time.monotonic()
            time.sleep(FULL_SECONDS)  # the full disk itself, not a wait for something
            assert db.exec_run(["sh", "-c", 'rm "$PGDATA/filler"']).exit_code == 0
            freed = time.monotonic()
            since = wait_until(lambda: recovered_since(load.outcomes, at_least=1), 30, "every request succeeding")
        lost = len(lost_notes(load, notes.url))
        web_restarted = restarted(notes.docker("web"), first_start)
        # What Postgres logs when a crashed process made it restart the others (a PANIC on a failed WAL write).
        reinitialized = "all server processes terminated; reinitializing" in db.logs().decode(errors="replace")
    during = [o for o in load.outcomes if full <= o.sent < freed]
    writes, reads = [o for o in during if o.text], [o for o in during if not o.text]
    refused = sum(map(is_unavailable_json, writes))
    result = DiskFull(len(writes), refused, len(reads), sum(o.status == 200 for o in reads),
                      len(writes) - refused - sum(o.status == 201 for o in writes)
                      + sum(o.status != 200 and not is_unavailable_json(o) for o in reads),
                      max(o.done - o.sent for o in during), lost, max(0.0, since - freed), web_restarted,
                      reinitialized)
    print(result)
    return result

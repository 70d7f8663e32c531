"""Backup under writes: `make backup` mid-stream, then `compose down -v`, `up` and `make restore`: every note
acknowledged before the dump comes back byte for byte."""

import json
import re
import tempfile
import time
from collections import Counter
from dataclasses import dataclass

import requests
from containers import compose_project
from load import Load, every_note

from proof.drills.common import Drill


@dataclass
class BackupUnderWrites(Drill):
    before: int  # notes acknowledged before `make backup` started
    missing: int  # of them, not restored exactly as they were stored (id, text, created_at)
    during: int  # acknowledged while it ran: in the archive or not, depending on when pg_dump took its snapshot
    during_restored: int
    after_restored: int  # acknowledged after it ended, yet restored: the archive would hold what it cannot
    duplicates: int  # texts restored more than once (every text the writer sends is unique)
    archived: int  # the number `make backup` printed
    restored: int  # the number `make restore` printed
    stored: int  # notes the service returned after the restore
    backup_seconds: float
    next_id_fresh: bool  # a note written after the restore got an id above every restored one

    title = "backup under writes: make backup mid-stream, then compose down -v, up, make restore"

    def counts(self):
        return (f"{self.before} notes acknowledged before the dump began, {self.missing} of them missing or changed "
                f"after the restore; {self.during} acknowledged while it ran ({self.backup_seconds:.1f} s), "
                f"{self.during_restored} of them restored; {self.after_restored} acknowledged after it restored; "
                f"{self.duplicates} restored twice; make backup counted {self.archived}, make restore {self.restored}, "
                f"the service returned {self.stored}")

    def goals(self):
        return {"every note acknowledged before the dump restored byte for byte": self.before > 0 and not self.missing,
                "no note twice": self.duplicates == 0,
                "only what the archive holds": self.after_restored == 0,
                "backup, restore and the service count the same notes": self.archived == self.restored == self.stored,
                "new notes continue after the restored ids": self.next_id_fresh}


def backup_under_writes(image):
    """Four writers post notes while `make backup` runs; the stack is then taken down with its volume, brought up
    empty, and `make restore FORCE=1` fills it from the archive. Every note is compared with what the service
    returned for it before the volume went (its JSON: id, text and created_at)."""
    with compose_project(image) as project, tempfile.TemporaryDirectory() as backups:
        with Load(project.url) as writer:
            writer.wait_for_acknowledged(200)
            began = time.monotonic()
            archive, _, archived = project.backup(backups)
            ended = time.monotonic()
            writer.wait_for_acknowledged(50, after=ended)
        before_down = {note["id"]: note for note in every_note(project.url)}
        project.compose("down", "--volumes")
        project.up()
        restored_said = project.make("restore", f"FILE={archive}", "FORCE=1").stdout
        restored = every_note(project.url)
        fresh = requests.post(f"{project.url}/api/notes", json={"text": "after the restore"}, timeout=10)
    by_id = {note["id"]: note for note in restored}
    acknowledged = [o for o in writer.outcomes if o.status == 201]
    before = [json.loads(o.body)["id"] for o in acknowledged if o.done < began]
    during = [json.loads(o.body)["id"] for o in acknowledged if began <= o.done and o.sent < ended]
    after = [json.loads(o.body)["id"] for o in acknowledged if o.sent >= ended]
    texts = Counter(note["text"] for note in restored)
    result = BackupUnderWrites(
        len(before), sum(note_id not in before_down or by_id.get(note_id) != before_down[note_id]
                         for note_id in before), len(during),
        sum(note_id in by_id for note_id in during), sum(note_id in by_id for note_id in after),
        sum(count - 1 for count in texts.values()), archived,
        int(re.search(r"^restored (\d+) notes", restored_said, re.M)[1]), len(restored), ended - began,
        fresh.status_code == 201 and fresh.json()["id"] > max(by_id, default=0))
    print(result)
    return result

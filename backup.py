"""`make backup` and `make restore`: the running stack's database as a pg_dump archive, and back.

    make backup                                  # backups/<project>-<UTC time>.dump; prints path, size, notes
    make restore FILE=backups/notes-20261203T101500Z.dump         # asks first; FORCE=1 does not

Both run PostgreSQL's own tools inside the db container (`docker compose exec db`), so they match the server's
version and need no port and no password: the container's socket trusts its own users, as `make psql` does.
An archive is in pg_dump's custom format: compressed, and checked by pg_restore before it is trusted.

Standard library only: make runs it with the python3 that the Makefile already needs.
"""

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

COMPOSE = shlex.split(os.environ.get("COMPOSE", "docker compose"))
# The user and database come from the db container's own environment (compose.yaml), read by its shell.
PG_DUMP = 'exec pg_dump --username="$POSTGRES_USER" --dbname="$POSTGRES_DB" --format=custom'
# The archive as the SQL script it restores, owners left to whoever restores it; read in full, so any damage shows.
PG_RESTORE_SCRIPT = "exec pg_restore --no-owner --file=-"
# Replaces every object of the schema, not only those in the archive, so that a table added by a later
# migration cannot survive and make the migrate that follows fail; as one transaction, which either happens whole
# or leaves the database as it was. The schema comes back as PostgreSQL creates it (owner and grant).
RESET_SCHEMA = ("DROP SCHEMA public CASCADE;\n"
                "CREATE SCHEMA public AUTHORIZATION pg_database_owner;\n"
                "GRANT USAGE ON SCHEMA public TO PUBLIC;\n")
PSQL = 'exec psql --username="$POSTGRES_USER" --dbname="$POSTGRES_DB" --no-psqlrc --quiet ' \
       "--set ON_ERROR_STOP=1 --single-transaction"
# pg_restore's script holds the notes as `COPY public.notes (...) FROM stdin;`, one line a row, up to `\.`.
NOTES_COPY = re.compile(r"^COPY public\.notes \([^\n]*\) FROM stdin;\n(.*?)^\\\.$", re.M | re.S)


class Refused(Exception):
    """One line for the user: what is wrong and what to do."""


def compose(*arguments, **options):
    return subprocess.run([*COMPOSE, *arguments], **options)


def in_db(script, **options):
    """A shell command in the running db container, without a TTY, so that binary output arrives intact."""
    return compose("exec", "-T", "db", "sh", "-c", script, **options)


def require_running_db():
    running = compose("ps", "--status", "running", "--services", capture_output=True, text=True)
    if "db" not in running.stdout.split():
        raise Refused("db is not running: start the stack with make up")


def notes_in(archive):
    """The number of notes `archive` holds, read through pg_restore in full; Refused if it is not a whole archive
    of this service's database. Returns (notes, the SQL script it restores)."""
    with open(archive, "rb") as source:
        read = in_db(PG_RESTORE_SCRIPT, stdin=source, capture_output=True)
    if read.returncode:
        reason = read.stderr.decode(errors="replace").strip().splitlines()
        raise Refused(f"{archive} is not a whole pg_dump archive ({reason[-1] if reason else 'pg_restore failed'}); "
                      "nothing was changed: pick another file")
    script = read.stdout.decode()
    found = NOTES_COPY.search(script)
    if not found:
        raise Refused(f"{archive} is a pg_dump archive without the notes table, not a backup of this service; "
                      "nothing was changed: pick another file")
    return found[1].count("\n"), script


def backup(directory):
    require_running_db()
    # The Compose project's name (compose.yaml's `name:`, or COMPOSE_PROJECT_NAME) tells two stacks' archives apart.
    name = json.loads(compose("config", "--format", "json", capture_output=True, text=True, check=True).stdout)["name"]
    # Only you may read them: an archive holds every note.
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    directory.chmod(0o700)
    # timezone.utc, not 3.11's datetime.UTC: this runs on the machine's own python3, which may be older.
    archive = directory / f"{name}-{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}.dump"  # noqa: UP017
    if archive.exists():
        raise Refused(f"{archive} exists already: wait a second and run make backup again")
    # Written under a temporary name and renamed once checked: a name ending in .dump is always a whole archive.
    partial = archive.with_name(archive.name + ".partial")
    try:
        with open(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as target:
            dump = in_db(PG_DUMP, stdout=target, stderr=subprocess.PIPE)
        if dump.returncode:
            raise Refused(f"pg_dump failed: {dump.stderr.decode(errors='replace').strip()}")
        notes, _ = notes_in(partial)
        partial.rename(archive)
    finally:
        partial.unlink(missing_ok=True)
    print(f"{archive}: {archive.stat().st_size:,} bytes, {notes} notes")


def confirmed(question):
    print(f"{question} [y/N] ", end="", flush=True)
    try:
        answer = input()
    except EOFError:  # no terminal, as in CI: no answer is a no
        answer = ""
    return answer.strip() in ("y", "Y", "yes", "Yes", "YES")


def restore(archive, assume_yes, directory):
    if not archive.is_file():
        archives = sorted(directory.glob("*.dump"))  # by name, so by time: as the Makefile suggests one
        hint = f", e.g. make restore FILE={archives[-1]}" if archives else f": make backup writes them to {directory}/"
        raise Refused(f"{archive} is not a file: name an archive{hint}")
    require_running_db()
    # Checked before anything is touched: a damaged or foreign file stops here and the notes stay as they are.
    notes, script = notes_in(archive)
    question = f"Replace every note in the running stack's database with the {notes} notes of {archive}?"
    if not assume_yes and not confirmed(question):
        print("nothing restored")
        return
    with tempfile.TemporaryFile() as sql:
        sql.write((RESET_SCHEMA + script).encode())
        sql.seek(0)
        restored = in_db(PSQL, stdin=sql, capture_output=True, text=True)
    if restored.returncode:
        raise Refused(f"the restore failed and was rolled back, so the notes are as they were: "
                      f"{restored.stderr.strip()}")
    # The archive may predate the image's newest migration: bring its schema up to date, as `make up` would.
    if compose("run", "--rm", "migrate").returncode:
        raise Refused(f"restored {notes} notes from {archive}, but migrate failed: see its lines above")
    print(f"restored {notes} notes from {archive}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("backup").add_argument("--into", type=Path, default=Path("backups"))
    restoring = commands.add_parser("restore")
    restoring.add_argument("archive", type=Path)
    restoring.add_argument("--backups", type=Path, default=Path("backups"), help="where to look for one to suggest")
    restoring.add_argument("--yes", action="store_true", help="do not ask first")
    arguments = parser.parse_args()
    try:
        if arguments.command == "backup":
            backup(arguments.into)
        else:
            restore(arguments.archive, arguments.yes, arguments.backups)
    except Refused as refusal:
        sys.exit(f"error: {refusal}")


if __name__ == "__main__":
    main()

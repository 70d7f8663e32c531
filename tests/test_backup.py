"""`make backup` and `make restore` (backup.py) on a Compose stack of their own: the archive is private, named
by UTC time and counted; a restore brings back every note exactly and nothing else; a truncated or foreign file, a
"no", or no answer at all change nothing. tests/test_drills.py takes a backup under writes."""

import os
import re
import stat
import subprocess

import containers
import load
import pytest
import requests
from conftest import REPOSITORY, one_line_error

pytestmark = pytest.mark.docker


@pytest.fixture(scope="module")
def project(images):
    with containers.compose_project(images["slim"]) as project:
        yield project


@pytest.fixture
def backups(tmp_path):
    return tmp_path / "backups"


def add_notes(project, *texts):
    for text in texts:
        assert requests.post(f"{project.url}/api/notes", json={"text": text}, timeout=10).status_code == 201


@pytest.fixture(scope="module")
def archive(project, tmp_path_factory):
    """One whole archive, for the tests that cut it, refuse it or answer no to it."""
    return project.backup(tmp_path_factory.mktemp("archive"))


def psql(project, command):
    return project.compose("exec", "-T", "db", "psql", "--username=notes", "--dbname=notes", "-tAc", command).stdout


def test_backup_writes_a_private_archive_named_by_utc_time_with_its_size_and_notes(project, backups):
    add_notes(project, "backed up", "twice", "and thrice")
    archive, size, notes = project.backup(backups)
    assert re.fullmatch(rf"{re.escape(project.environment['COMPOSE_PROJECT_NAME'])}-\d{{8}}T\d{{6}}Z\.dump",
                        archive.name)
    assert stat.S_IMODE(backups.stat().st_mode) == 0o700 and stat.S_IMODE(archive.stat().st_mode) == 0o600
    assert archive.stat().st_size == size and archive.read_bytes().startswith(b"PGDMP")
    assert notes == len(load.every_note(project.url)) >= 3
    assert [path.name for path in backups.iterdir()] == [archive.name]  # nothing half-written left beside it


def test_restore_brings_back_every_note_byte_for_byte_and_nothing_else_then_migrates(project, backups):
    add_notes(project, "in the archive")
    archive, _, notes = project.backup(backups)
    before = load.every_note(project.url)
    add_notes(project, "written after the backup")
    psql(project, "DELETE FROM notes WHERE id = (SELECT min(id) FROM notes)")
    psql(project, "CREATE TABLE added_after_the_backup (id integer)")
    restored = project.make("restore", f"FILE={archive}", "FORCE=1")
    assert restored.stdout.rstrip().endswith(f"restored {notes} notes from {archive}"), restored.stdout
    assert "the schema is already up to date" in restored.stdout  # migrate ran after it
    assert load.every_note(project.url) == before
    assert psql(project, "SELECT to_regclass('added_after_the_backup')").strip() == ""
    # The identity sequence came back too: a new note gets an id no restored note has.
    created = requests.post(f"{project.url}/api/notes", json={"text": "after the restore"}, timeout=10)
    assert created.json()["id"] > max(note["id"] for note in before)


@pytest.mark.parametrize("keep", [0, 4, 5, 200, 1 / 3, 2 / 3, -2, -1])
def test_a_truncated_archive_is_refused_with_one_line_and_the_notes_stay(project, archive, tmp_path, keep):
    whole, size, _ = archive
    cut = tmp_path / "cut.dump"
    cut.write_bytes(whole.read_bytes()[:int(keep * size) if isinstance(keep, float) else keep])
    before = load.every_note(project.url)
    line = one_line_error(project.make("restore", f"FILE={cut}", "FORCE=1", check=False))
    assert line.startswith(f"error: {cut} is not a whole pg_dump archive") and "nothing was changed" in line
    assert load.every_note(project.url) == before


def test_a_foreign_file_is_refused_with_one_line_and_the_notes_stay(project, backups):
    backups.mkdir()
    # A real archive, of another database: binary output.
    other = project.compose("exec", "-T", "db", "sh", "-c",
                            "createdb --username=notes other && psql --quiet --username=notes --dbname=other "
                            "-c 'CREATE TABLE t (x int)' && pg_dump --username=notes --dbname=other --format=custom; "
                            "dropdb --username=notes other", text=False).stdout
    foreign = {"plain.sql": b"SELECT 1;\n", "random.bin": os.urandom(4096), "empty.dump": b"",
               "other-database.dump": other}
    before = load.every_note(project.url)
    for name, content in foreign.items():
        path = backups / name
        path.write_bytes(content)
        line = one_line_error(project.make("restore", f"FILE={path}", "FORCE=1", check=False))
        assert line.startswith(f"error: {path} ") and "nothing was changed" in line, line
    assert "without the notes table" in line  # the last: a real archive, of another database
    assert load.every_note(project.url) == before


@pytest.mark.parametrize("answer", ["n\n", "\n", ""])
def test_restore_answered_no_or_not_at_all_restores_nothing(project, archive, answer):
    archive, _, notes = archive
    add_notes(project, "kept, since the answer was no")
    before = load.every_note(project.url)
    result = project.make("restore", f"FILE={archive}", answer=answer)
    assert result.stdout.rstrip().endswith(f"the {notes} notes of {archive}? [y/N] nothing restored")
    assert load.every_note(project.url) == before


def test_restore_of_a_file_that_is_not_there_names_the_newest_archive(project, backups):
    archive, _, _ = project.backup(backups)
    line = one_line_error(project.make("restore", f"BACKUP_DIR={backups}", f"FILE={backups}/gone.dump", check=False))
    assert line == f"error: {backups}/gone.dump is not a file: name an archive, e.g. make restore FILE={archive}"


def test_archives_are_ignored_by_git():
    ignored = subprocess.run(["git", "check-ignore", "--quiet", "backups/notes-20261203T101500Z.dump"],
                             cwd=REPOSITORY)
    assert ignored.returncode == 0

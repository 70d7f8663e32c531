"""`make drills`: runs every drill against one image, prints what each counted and writes docs/drills.md.

Usage: make drills   (python -m proof.drills [IMAGE], default the Makefile's IMAGE:slim; PYTHONPATH=.:tests)
"""

import sys
from datetime import UTC, datetime

from project import DEFAULT_VARIANT, IMAGE, POSTGRES_IMAGE, ROOT

from proof.drills import DRILLS
from proof.report import machine, markdown_table, revision


def report(results, image, started):
    table = markdown_table(["drill", "counted", "goals", "met"], [row for result in results for row in result.rows()])
    return f"""# Drills

Written by `make drills` ([proof/drills/](../proof/drills/)) in one run; run it again rather than
editing this file. Each drill breaks the service on purpose and counts what happened; `proof/tests/test_drills.py` runs
the same drills and fails on any goal missed. Figures from one machine: timings vary with what else runs on it.

- Date: {started:%Y-%m-%d %H:%M} UTC
- Revision: {revision()}
- Machine: {machine()}
- Images: {image} (web), {POSTGRES_IMAGE} (db)

{table}
"""


def main():
    image = sys.argv[1] if len(sys.argv) > 1 else f"{IMAGE}:{DEFAULT_VARIANT}"
    started = datetime.now(UTC)
    results = [drill(image) for drill in DRILLS]
    (ROOT / "docs" / "drills.md").write_text(report(results, image, started))
    missed = [f"{result.title}: {goal}" for result in results for goal in result.missed()]
    print(f"\nwritten to docs/drills.md in {(datetime.now(UTC) - started).total_seconds():.0f} s; "
          + (f"{len(missed)} goals missed:\n  " + "\n  ".join(missed) if missed else "every goal met"))
    sys.exit(1 if missed else 0)


if __name__ == "__main__":
    main()

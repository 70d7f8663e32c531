"""What the instruments' documents print about a run: the machine, the revision, and Markdown tables."""

import os
import platform
import subprocess
from pathlib import Path

from project import ROOT


def machine():
    """The machine a run's figures come from, as docs/benchmarks.md and docs/drills.md print it."""
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.machine())
    memory = int(Path("/proc/meminfo").read_text().split()[1]) * 1024
    engine = subprocess.run(["docker", "version", "--format", "{{.Server.Version}}"], check=True, capture_output=True,
                            text=True, timeout=30).stdout.strip()
    return (f"{cpu}, {os.cpu_count()} cores, {memory / 2**30:.1f} GiB, Linux {platform.release()}, "
            f"Docker Engine {engine}")


def revision():
    """The commit checked out, and whether the working tree differs from it outside docs/, which the figures of one
    run (bench, then drills) change without changing what they measure."""
    def git(*arguments):
        return subprocess.run(["git", *arguments], cwd=ROOT, check=True, capture_output=True, text=True).stdout.strip()

    changed = git("status", "--porcelain", "--", ".", ":!docs")
    return git("rev-parse", "--short", "HEAD") + (" with uncommitted changes" if changed else "")


def markdown_table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])

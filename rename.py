"""`make rename NAME=acme-api`: the project's name, changed in every file in one step.

The name lives in two spellings: the image (the Makefile's IMAGE, `notes-web` at first), which is also the OCI title
label, web's PostgreSQL application_name and the make help text; and the project (compose.yaml's `name:`, `notes`
at first), which is the Compose project, the Kubernetes namespace and `part-of` label, the kind cluster in CI, and
the first word of migrate's application_name, of container names and of backup archives. Both become NAME.

Only those places change: `notes` as a word is also the table, the database, its user and the API's path, which keep
it. Run it once in a fresh copy, then `make test`; it can run again later with another name.

Standard library only: make runs it with the python3 that the Makefile already needs.
"""

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
# What git ignores or a tool made: never the project's own text.
SKIPPED = {".git", ".venv", "__pycache__", ".pytest_cache", "build", "backups", "secrets"}
# A name Docker (lower case), Compose and Kubernetes (an RFC 1123 label: a namespace) all accept.
VALID = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")


def current_names(root):
    """(image, project): the Makefile's IMAGE and compose.yaml's `name:`."""
    image = re.search(r"^IMAGE \?= (\S+)$", (root / "Makefile").read_text(), re.M)[1]
    project = re.search(r"^name: (\S+)$", (root / "compose.yaml").read_text(), re.M)[1]
    return image, project


def replacements(image, project, name):
    """(pattern, replacement) pairs, applied in this order to every file."""
    word = r"(?<![\w.])(?<!\w-){}"  # a whole name: not part of a longer one (`:-notes-web` is one)
    project_word = word.format(re.escape(project))
    return [
        # Compose's container names, <project>-<service>-<n>, before the image (notes-web-1 is not the image).
        (re.compile(project_word + r"-(web|migrate|db|prometheus)-(\d+)\b"), rf"{name}-\1-\2"),
        (re.compile(word.format(re.escape(image)) + r"(?![\w])"), name),
        # migrate's application_name, kind's namespace for outside clients, backup archives (<project>-<time>.dump).
        (re.compile(project_word + r"-(migrate|outside)\b"), rf"{name}-\1"),
        (re.compile(project_word + r"-(?=\d{8}T\d{6}Z|\$\(date |<UTC time>)"), f"{name}-"),
        # The project itself, where a name is expected: compose.yaml's `name:`, the namespace, its labels, kubectl's
        # -n, a Service's DNS name, kind's cluster.
        (re.compile(rf"^(name: |\s*namespace: |  name: ){re.escape(project)}$", re.M), rf"\g<1>{name}"),
        (re.compile(rf"(app\.kubernetes\.io/part-of[:=] ?|kubectl -n |kubectl label namespace |cluster_name: |"
                    rf"CLUSTER_CONTEXT: kind-|admit routes from `){re.escape(project)}(?![\w-])"), rf"\g<1>{name}"),
        (re.compile(rf"(?<=\.){re.escape(project)}(?=\.svc\b)"), name),
    ]


def text_files(root):
    for path in sorted(root.rglob("*")):
        if path.is_file() and path.name != Path(__file__).name and not SKIPPED & set(path.relative_to(root).parts):
            try:
                yield path, path.read_text()
            except UnicodeDecodeError:
                continue  # not text


def rename(root, name):
    image, project = current_names(root)
    changed = []
    for path, text in text_files(root):
        new = text
        for pattern, replacement in replacements(image, project, name):
            new = pattern.sub(replacement, new)
        if new != text:
            path.write_text(new)
            changed.append(path.relative_to(root).as_posix())
    return image, project, changed


def main(argv):
    if not argv:
        print("error: NAME is not set: name the project, e.g. make rename NAME=acme-api", file=sys.stderr)
        return 2
    if len(argv) != 1 or not VALID.fullmatch(argv[0]):
        print(f"error: NAME={' '.join(argv)} is not a name: use lower-case letters, digits and inner hyphens, at most "
              "63, e.g. make rename NAME=acme-api", file=sys.stderr)
        return 2
    image, project, changed = rename(ROOT, argv[0])
    print(f"renamed image {image} and project {project} to {argv[0]} in {len(changed)} files: {' '.join(changed)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

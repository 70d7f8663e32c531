"""Lints and scans what ships, offline: `make scan` prints one table per image variant and exits 1 on any finding.

Usage: make scan, or
  PYTHONPATH=.:tests python -m proof.scan.scan [--only CHECK]... [--root DIR] [--image-repository NAME]
    [--output DIR] [VARIANT]...

For each variant (slim, distroless):
  hadolint         its Dockerfile, with .hadolint.yaml
  checkov          its Dockerfile (checkov-dockerfile.yaml here), its rendered overlay (checkov-k8s.yaml here); the
                   default variant's also with each optional component in k8s/components/, since the overlays
                   differ only in the image tag (tests/test_k8s.py)
  yamllint         compose.yaml, k8s/base, its overlay and k8s/components, with .yamllint.yaml
  actionlint       every workflow in .github/workflows (with the default variant only: they are not per variant);
                   the binary .ci/release/build makes, or SKIPPED, said out loud, where it is not built
  sbom             build/sbom/<variant>.cdx.json: the image's Python packages (cyclonedx-py) and Debian packages (dpkg)
  secrets          every layer of `docker save` and the image's history: kingfisher, proof/scan/secret-rules.yaml
  vulnerabilities  trivy or grype, when one is on PATH with a database; otherwise SKIPPED, said out loud
Files are read under --root (default: this repository), so a test can scan a broken copy. The tools come from the
virtual environment running this script (.venv/scan), checkov from .venv/checkov beside it.
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

import yaml
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator
from debian.deb822 import Deb822
from packageurl import PackageURL
from project import DEFAULT_VARIANT, IMAGE, VARIANTS, components, dockerfile, render

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILES = {variant: dockerfile(variant) for variant in VARIANTS}
CHECKS = ("hadolint", "checkov", "yamllint", "actionlint", "sbom", "secrets", "vulnerabilities")
CHECKOV_DOCKERFILE_CONFIG = "proof/scan/checkov-dockerfile.yaml"
CHECKOV_K8S_CONFIG = "proof/scan/checkov-k8s.yaml"
SECRET_RULES = "proof/scan/secret-rules.yaml"
# Files that hold credentials whatever their content; kingfisher judges content only.
SECRET_FILES = (".env", ".git-credentials", ".netrc", ".npmrc", ".pypirc", ".aws/credentials", ".docker/config.json")
# The gate CI applies too: a HIGH or CRITICAL vulnerability that has a fix.
VULNERABILITY_SEVERITIES = "HIGH,CRITICAL"
# The tools' own binaries sit beside this interpreter; checkov has a venv of its own next to this one.
TOOL_DIRECTORIES = [Path(sys.executable).parent, Path(sys.prefix).parent / "checkov" / "bin"]


@dataclass
class Result:
    check: str
    status: str  # pass, FAIL or SKIPPED
    findings: int | None
    detail: str
    report: str = ""  # the tool's own words about each finding, printed above the table


def passed_if(check, findings, detail, report=""):
    return Result(check, "FAIL" if findings else "pass", findings, detail, report)


def tool(name):
    path = os.pathsep.join([*map(str, TOOL_DIRECTORIES), os.environ.get("PATH", "")])
    found = shutil.which(name, path=path)
    if not found:
        raise SystemExit(f"error: {name} is not installed: run make venv (it looked in {path})")
    return found


def run(*command, check=True, **options):
    result = subprocess.run(command, capture_output=True, text=True, **options)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited {result.returncode}:\n{result.stderr}{result.stdout}")
    return result


# ---------------------------------------------------------------------------------------------------------------
# The files: Dockerfile, manifests, YAML, workflows


def hadolint(root, variant):
    dockerfile = DOCKERFILES[variant]
    # The exit code applies .hadolint.yaml's failure-threshold; the JSON lists every finding at any level.
    result = run(tool("hadolint"), "--config", str(root / ".hadolint.yaml"), "--format", "json", dockerfile,
                 cwd=root, check=False)
    findings = json.loads(result.stdout or "[]")
    report = [f"{f['file']}:{f['line']} {f['code']} {f['level']}: {f['message']}" for f in findings]
    ignored = yaml.safe_load((root / ".hadolint.yaml").read_text()).get("ignored", [])
    detail = dockerfile + (f"; .hadolint.yaml ignores {', '.join(ignored)}" if ignored else "")
    # A Dockerfile hadolint cannot parse has no findings, only an exit code and a message.
    return Result("hadolint", "FAIL" if result.returncode else "pass", len(findings), detail,
                  "\n".join([*report, result.stderr.strip()]).strip())


def checkov(root, check, targets, config, label):
    files = [argument for target in targets for argument in ("--file", str(target))]
    result = run(tool("checkov"), "--config-file", str(root / config), *files, "--output", "json", cwd=root,
                 check=False)
    # checkov exits 1 when a check fails; anything else is a crash, and its JSON would be missing.
    if result.returncode not in (0, 1):
        raise RuntimeError(f"checkov crashed on {', '.join(map(str, targets))}:\n{result.stderr}")
    reports = json.loads(result.stdout)
    reports = reports if isinstance(reports, list) else [reports]
    failed = [found for report in reports for found in report.get("results", {}).get("failed_checks", [])]
    if not failed and not any(report.get("results", {}).get("passed_checks") for report in reports):
        # A file checkov could not parse yields no finding at all, which would read as a pass.
        return Result(check, "FAIL", None, label, f"checkov checked nothing in {', '.join(map(str, targets))}")
    # Each finding names the file it is in: for manifests, the rendering (slim+backup.yaml: slim with the backup).
    report = [f"{found['check_id']} {found['check_name']}: {found['resource']} "
              f"({Path(found['file_path']).name}, lines {'-'.join(map(str, found['file_line_range']))})"
              for found in failed]
    skipped = yaml.safe_load((root / config).read_text()).get("skip-check", [])
    detail = label + (f"; {config} skips {', '.join(skipped)}" if skipped else "")
    return passed_if(check, len(failed), detail, "\n".join(report))


def checkov_dockerfile(root, variant):
    dockerfile = DOCKERFILES[variant]
    return checkov(root, "checkov Dockerfile", [root / dockerfile], CHECKOV_DOCKERFILE_CONFIG, dockerfile)


def checkov_k8s(root, variant, workdir):
    """The overlay rendered alone and, for the default variant, with each optional component in k8s/components/, in
    one checkov run."""
    overlay = f"k8s/overlays/{variant}"
    added_ones = components(root) if variant == DEFAULT_VARIANT else ()
    targets = []
    for added in [(), *((component,) for component in added_ones)]:
        rendered = workdir / f"{'+'.join([variant, *added])}.yaml"
        rendered.write_text(render(variant, added, root))
        targets.append(rendered)
    label = f"{overlay} rendered" + (f", alone and with each of {', '.join(added_ones)}" if added_ones else "")
    return checkov(root, "checkov k8s", targets, CHECKOV_K8S_CONFIG, label)


def yamllint(root, variant):
    paths = ["compose.yaml", "k8s/base", f"k8s/overlays/{variant}",
             *(["k8s/components"] if (root / "k8s" / "components").is_dir() else [])]
    # --strict: a warning fails too, as hadolint's does.
    result = run(tool("yamllint"), "--strict", "--config-file", str(root / ".yamllint.yaml"), "--format", "parsable",
                 *paths, cwd=root, check=False)
    if result.returncode not in (0, 1, 2):
        raise RuntimeError(f"yamllint crashed:\n{result.stderr}")
    problems = result.stdout.strip().splitlines()
    return passed_if("yamllint", len(problems), ", ".join(paths), result.stdout.strip() + result.stderr.strip())


def actionlint_binary(root):
    """actionlint on PATH, or where .ci/release/build puts the version .ci/release/versions.sh pins; None if neither."""
    path = os.pathsep.join([*map(str, TOOL_DIRECTORIES), os.environ.get("PATH", "")])
    if found := shutil.which("actionlint", path=path):
        return found
    versions = root / ".ci" / "release" / "versions.sh"
    pinned = re.search(r"^ACTIONLINT_VERSION=(\S+)", versions.read_text(), re.M) if versions.is_file() else None
    if pinned:
        cache = Path(os.environ.get("NOTES_RELEASE_CACHE", "/var/cache/notes-release"))
        built = cache / f"actionlint-{pinned[1]}" / "actionlint"
        if os.access(built, os.X_OK):
            return str(built)
    return None


def actionlint(root):
    workflows = sorted(path.relative_to(root).as_posix() for path in (root / ".github" / "workflows").glob("*.y*ml"))
    binary = actionlint_binary(root)
    if not binary:
        reason = "no actionlint binary: bash .ci/release/build actionlint builds it with Go"
        print(f"actionlint: SKIPPED ({reason})")
        return Result("actionlint", "SKIPPED", None, reason)
    # Without shellcheck and pyflakes, which it would run on `run:` scripts when found on PATH: the same findings on
    # every machine, and neither is installed here.
    result = run(binary, "-no-color", "-shellcheck=", "-pyflakes=", *workflows, cwd=root, check=False)
    # 1: findings; anything else is a failure of the tool itself (2: bad arguments, 3: a fatal error).
    if result.returncode not in (0, 1):
        raise RuntimeError(f"actionlint exited {result.returncode}:\n{result.stderr}{result.stdout}")
    findings = re.findall(r"^\S+:\d+:\d+: ", result.stdout, re.M)
    return passed_if("actionlint", len(findings), ", ".join(workflows), result.stdout.strip())


# ---------------------------------------------------------------------------------------------------------------
# The image: SBOM


def sbom(image, variant, output, workdir):
    """CycloneDX JSON of the image: Python distributions from cyclonedx-py, Debian packages from the dpkg database."""
    filesystem = workdir / "filesystem"
    site_dirs = image_site_dirs(image)
    export_paths(image, filesystem, ["var/lib/dpkg/status", "usr/lib/os-release", "etc/os-release",
                                     *(f"{directory.strip('/')}/" for directory in site_dirs)])
    document = python_sbom([filesystem / directory.strip("/") for directory in site_dirs], workdir)
    python_count = len(document["components"])
    os_release = read_os_release(filesystem)
    distro = f"{os_release.get('ID', 'debian')}-{os_release.get('VERSION_ID', 'unknown')}"
    debs = [deb_component(package, distro) for package in dpkg_packages(filesystem)]
    image_id = run("docker", "image", "inspect", "--format", "{{.Id}}", image).stdout.strip()
    document["metadata"]["component"] = {"type": "container", "bom-ref": image, "name": image, "version": image_id}
    document["components"] += [{"type": "operating-system", "bom-ref": distro, "name": os_release.get("ID", "debian"),
                                "version": os_release.get("VERSION_ID", "unknown"),
                                "description": os_release.get("PRETTY_NAME", "")}, *debs]
    text = json.dumps(document, indent=2) + "\n"
    if error := JsonStrictValidator(SchemaVersion.V1_6).validate_str(text):
        raise RuntimeError(f"the SBOM of {image} is not valid CycloneDX 1.6: {error}")
    output.mkdir(parents=True, exist_ok=True)
    path = output / f"{variant}.cdx.json"
    path.write_text(text)
    detail = f"{python_count} Python and {len(debs)} Debian packages in {path}"
    if not python_count or not debs:
        missing = "Python" if not python_count else "Debian"
        return Result("sbom", "FAIL", None, detail, f"{image}: the SBOM lists no {missing} packages")
    return Result("sbom", "pass", None, detail)


def image_site_dirs(image):
    """The image's own answer to where its Python finds distributions: the site- and dist-packages on sys.path."""
    code = "import json, sys; print(json.dumps(sys.path))"
    path = json.loads(run("docker", "run", "--rm", "--network", "none", "--entrypoint", "python", image, "-c",
                          code).stdout)
    return [entry for entry in path if Path(entry).name in ("site-packages", "dist-packages")]


def export_paths(image, destination, prefixes):
    """Writes the image's regular files under the given prefixes to `destination`, from `docker export`.

    Only regular files and directories are written, so a symlink in the image can never point a write outside.
    """
    container = run("docker", "create", image).stdout.strip()
    try:
        with subprocess.Popen(["docker", "export", container], stdout=subprocess.PIPE) as export:
            with tarfile.open(fileobj=export.stdout, mode="r|") as archive:
                for member in archive:
                    name = member.name.lstrip("./")
                    if member.isfile() and name.startswith(tuple(prefixes)) and ".." not in Path(name).parts:
                        target = destination / name
                        target.parent.mkdir(parents=True, exist_ok=True)
                        target.write_bytes(archive.extractfile(member).read())
    finally:
        run("docker", "rm", container)


def python_sbom(site_dirs, workdir):
    """cyclonedx-py's environment mode, pointed at the image's site-packages.

    It asks an interpreter for its sys.path. This one is a throwaway venv of this host's Python with no packages
    of its own, whose .pth file adds the copied site-packages: the SBOM then lists the image's distributions only.
    """
    venv = workdir / "sbom-venv"
    run(sys.executable, "-m", "venv", "--without-pip", str(venv))
    [own_site] = (venv / "lib").glob("python3*/site-packages")
    (own_site / "image.pth").write_text("".join(f"{directory}\n" for directory in site_dirs if directory.is_dir()))
    out = workdir / "python.cdx.json"
    run(tool("cyclonedx-py"), "environment", "--spec-version", "1.6", "--output-reproducible", "--output-file",
        str(out), str(venv))
    return json.loads(out.read_text())


def dpkg_packages(filesystem):
    """Installed packages: /var/lib/dpkg/status in Debian, one file per package in status.d/ in distroless."""
    dpkg = filesystem / "var/lib/dpkg"
    for database in [dpkg / "status", *sorted((dpkg / "status.d").glob("*"))]:
        if not database.is_file():
            continue
        with database.open(encoding="utf-8") as lines:
            for package in Deb822.iter_paragraphs(lines):
                # A removed package leaves a paragraph ("deinstall ok config-files"); distroless writes no Status.
                installed = package.get("Status", "install ok installed").split()[-1] == "installed"
                if installed and "Package" in package and "Version" in package:
                    yield package


def deb_component(package, distro):
    qualifiers = {"arch": package.get("Architecture", ""), "distro": distro}
    # Debian's security tracker lists vulnerabilities by source package (glibc, not libc6): scanners read this.
    source = package.get("Source", "").split(" ")[0]
    if source and source != package["Package"]:
        qualifiers["upstream"] = source
    purl = PackageURL(type="deb", namespace="debian", name=package["Package"], version=package["Version"],
                      qualifiers={key: value for key, value in qualifiers.items() if value}).to_string()
    return {"type": "library", "bom-ref": purl, "name": package["Package"], "version": package["Version"],
            "purl": purl}


def read_os_release(filesystem):
    for candidate in ("usr/lib/os-release", "etc/os-release"):
        path = filesystem / candidate
        if path.is_file():
            return dict(re.findall(r'^([A-Z_]+)="?(.*?)"?$', path.read_text(), re.M))
    return {}


# ---------------------------------------------------------------------------------------------------------------
# The image: secrets and vulnerabilities


def secrets(root, image, archive, workdir):
    """kingfisher over every layer (a file deleted in a later layer still ships in an earlier one) and the history;
    plus a file-name check for credential files, which kingfisher, judging content, does not make."""
    rules = ["--rules-path", str(root / SECRET_RULES)]
    # Offline: no update check and no live validation of what it finds; --redact keeps secrets out of the log.
    common = ["--no-update-check", "--no-validate", "--redact", "--quiet", "--format", "json", "--confidence", "medium"]
    history = workdir / "history.txt"
    history.write_text(image_history(image))
    findings = []
    for command in ([tool("kingfisher"), "scan", "docker", "--archive", str(archive), *rules, *common],
                    [tool("kingfisher"), "scan", str(history), *rules, *common]):
        result = run(*command, check=False)
        # 0: nothing found; 200 and 205: findings (205 when validated as live).
        if result.returncode not in (0, 200, 205):
            raise RuntimeError(f"kingfisher exited {result.returncode}:\n{result.stderr}")
        for found in json.loads(result.stdout)["findings"]:
            where = found["finding"]["path"].split(" | ")[-1].replace(str(history), "history")
            findings.append(f"{where}:{found['finding']['line']} {found['rule']['id']}")
    layers = layer_files(archive)
    findings += [f"{path} (in layer {', '.join(map(str, numbers))} of {len(layers)}): a credential file"
                 for path, numbers in files_in_layers(layers).items() if is_credential_file(path)]
    return passed_if("secrets", len(findings), f"{len(layers)} layers and the history", "\n".join(findings))


def image_history(image):
    """Each layer's instruction (ARG values used by RUN show up here), the environment and the labels."""
    history = run("docker", "history", "--no-trunc", "--format", "{{.CreatedBy}}", image).stdout
    config = json.loads(run("docker", "image", "inspect", "--format", "{{json .Config}}", image).stdout)
    labels = [f"{key}={value}" for key, value in (config.get("Labels") or {}).items()]
    return "\n".join([history.strip(), *(config.get("Env") or []), *labels]) + "\n"


def layer_files(archive):
    """The file names in each layer of a `docker save` archive, in order from the base up."""
    with tarfile.open(archive) as saved:
        manifest = json.load(saved.extractfile("manifest.json"))
        layers = []
        for layer in manifest[0]["Layers"]:
            with tarfile.open(fileobj=saved.extractfile(layer)) as contents:
                layers.append([member.name.lstrip("./") for member in contents if member.isfile()])
        return layers


def is_credential_file(path):
    return any(path == name or path.endswith(f"/{name}") for name in SECRET_FILES)


def files_in_layers(layers):
    found = {}
    for number, names in enumerate(layers, start=1):
        for name in names:
            found.setdefault(name, []).append(number)
    return found


def vulnerabilities(archive):
    """Runs trivy or grype only with a database already on disk: an empty one would pass everything."""
    trivy, grype = shutil.which("trivy"), shutil.which("grype")
    trivy_cache = Path(os.environ.get("TRIVY_CACHE_DIR", Path.home() / ".cache" / "trivy"))
    if trivy and (trivy_cache / "db" / "trivy.db").is_file():
        result = run(trivy, "image", "--input", str(archive), "--skip-db-update", "--offline-scan", "--quiet",
                     "--scanners", "vuln", "--severity", VULNERABILITY_SEVERITIES, "--ignore-unfixed",
                     "--exit-code", "1", check=False)
        return Result("vulnerabilities", "FAIL" if result.returncode else "pass", None,
                      f"trivy, fixable {VULNERABILITY_SEVERITIES}", result.stdout + result.stderr)
    if grype and run(grype, "db", "status", check=False).returncode == 0:
        result = run(grype, f"docker-archive:{archive}", "--only-fixed", "--fail-on", "high", "--quiet", check=False)
        return Result("vulnerabilities", "FAIL" if result.returncode else "pass", None,
                      f"grype, fixable {VULNERABILITY_SEVERITIES}", result.stdout + result.stderr)
    if trivy:
        reason = f"trivy has no database in {trivy_cache}, and none can be downloaded here"
    elif grype:
        reason = "grype has no database (grype db status fails), and none can be downloaded here"
    else:
        reason = "neither trivy nor grype is on PATH: both are release binaries that download their database"
    print(f"vulnerability scan: SKIPPED ({reason})")
    return Result("vulnerabilities", "SKIPPED", None, reason)


# ---------------------------------------------------------------------------------------------------------------


def scan(variant, root, image, output, only):
    results = []

    def attempt(check, function, *args):
        try:
            results.append(function(*args))
        except (RuntimeError, OSError, ValueError) as error:
            results.append(Result(check, "FAIL", None, "the check itself failed", str(error)))

    if {"sbom", "secrets", "vulnerabilities"} & set(only) and run("docker", "image", "inspect", image,
                                                                     check=False).returncode:
        raise SystemExit(f"error: there is no image {image}: build it first (make build)")
    with tempfile.TemporaryDirectory(prefix=f"scan-{variant}-") as scratch:
        workdir = Path(scratch)
        if "hadolint" in only:
            attempt("hadolint", hadolint, root, variant)
        if "checkov" in only:
            attempt("checkov Dockerfile", checkov_dockerfile, root, variant)
            attempt("checkov k8s", checkov_k8s, root, variant, workdir)
        if "yamllint" in only:
            attempt("yamllint", yamllint, root, variant)
        if "actionlint" in only and variant == DEFAULT_VARIANT:
            attempt("actionlint", actionlint, root)
        if "sbom" in only:
            attempt("sbom", sbom, image, variant, output, workdir)
        if {"secrets", "vulnerabilities"} & set(only):
            archive = workdir / "image.tar"
            run("docker", "save", "--output", str(archive), image)
            if "secrets" in only:
                attempt("secrets", secrets, root, image, archive, workdir)
            if "vulnerabilities" in only:
                attempt("vulnerabilities", vulnerabilities, archive)
    return results


def table(image, results):
    rows = [("check", "result", "findings", "detail")]
    rows += [(r.check, r.status, "-" if r.findings is None else str(r.findings), r.detail) for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = [f"| {a:<{widths[0]}} | {b:<{widths[1]}} | {c:>{widths[2]}} | {d} |" for a, b, c, d in rows]
    lines.insert(1, f"|{'-' * (widths[0] + 2)}|{'-' * (widths[1] + 2)}|{'-' * (widths[2] + 1)}:|---|")
    return f"{image}\n" + "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("variants", nargs="*", metavar="VARIANT", help=f"{' or '.join(DOCKERFILES)} (default: both)")
    parser.add_argument("--only", action="append", choices=CHECKS, help="run only this check (repeatable)")
    parser.add_argument("--root", type=Path, default=ROOT, help="where the Dockerfiles, compose.yaml and k8s/ are")
    parser.add_argument("--image-repository", default=IMAGE, help="images are REPOSITORY:VARIANT")
    parser.add_argument("--output", type=Path, help="the SBOMs' folder (default: ROOT/build/sbom)")
    args = parser.parse_args()
    if unknown := set(args.variants) - DOCKERFILES.keys():
        parser.error(f"unknown variant {', '.join(sorted(unknown))}: choose from {', '.join(DOCKERFILES)}")
    root = args.root.resolve()
    failed = False
    for variant in args.variants or DOCKERFILES:
        image = f"{args.image_repository}:{variant}"
        results = scan(variant, root, image, args.output or root / "build" / "sbom", args.only or CHECKS)
        for result in results:
            if result.status == "FAIL":
                print(f"{image}: {result.check} failed:\n{result.report}\n")
        if results:  # none where --only names a check of the default variant alone
            print(table(image, results) + "\n")
        failed |= any(result.status == "FAIL" for result in results)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()

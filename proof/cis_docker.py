"""The CIS Docker Benchmark's container-runtime checks (section 5) that a running container's own settings decide,
read from `docker inspect`: tests/test_compose.py runs them on a stack, tests/test_cis_docker.py on hand-made input.

Hand-written: docker-bench-security, the benchmark's own script, comes from GitHub only, and no package on PyPI,
Debian or npm runs these checks. The numbers and the conditions follow its tests/5_container_runtime.sh; 5.4 is
stricter (every capability dropped, not only none added). Left out: what the engine, the host's security module or
the image decides, and how people use `docker exec` (5.1-5.3, 5.7, 5.9, 5.19, 5.23, 5.24, 5.28, 5.30).

    python -m proof.cis_docker CONTAINER...     # one line per finding; exit 1 when there is one
"""

import json
import subprocess
import sys

# 5.6: host directories no container should mount.
SENSITIVE_HOST_PATHS = ("/", "/boot", "/dev", "/etc", "/lib", "/proc", "/sys", "/usr")
DOCKER_SOCKETS = ("/var/run/docker.sock", "/run/docker.sock")


def published(inspected):
    """(host IP, host port) of every port the container publishes."""
    ports = inspected.get("NetworkSettings", {}).get("Ports") or {}
    return [(binding["HostIp"], int(binding["HostPort"])) for bindings in ports.values() for binding in bindings or []]


def findings(inspected):
    """Every section-5 check `inspected` (one container's `docker inspect` object) fails, as "5.n what is wrong"."""
    host = inspected["HostConfig"]
    security = [option.replace("=", ":") for option in host.get("SecurityOpt") or []]
    mounts = inspected.get("Mounts") or []
    binds = [mount["Source"].rstrip("/") or "/" for mount in mounts if mount["Type"] == "bind"]
    failed = {
        "5.4 adds capabilities or keeps some (cap_drop: [ALL] drops every one)":
            bool(host.get("CapAdd")) or "ALL" not in (host.get("CapDrop") or []),
        "5.5 is privileged": host.get("Privileged", False),
        "5.6 mounts a sensitive host directory": any(
            path == sensitive or (sensitive != "/" and path.startswith(sensitive + "/"))
            for path in binds for sensitive in SENSITIVE_HOST_PATHS),
        "5.8 publishes a privileged host port (below 1024)": any(port < 1024 for _, port in published(inspected)),
        "5.10 shares the host's network namespace": host.get("NetworkMode") == "host",
        "5.11 has no memory limit": not host.get("Memory"),
        "5.12 has no CPU limit or shares": not host.get("NanoCpus") and not host.get("CpuShares"),
        "5.13 root filesystem is writable": not host.get("ReadonlyRootfs"),
        "5.14 publishes a port on every interface": any(ip in ("", "0.0.0.0", "::") for ip, _ in published(inspected)),
        "5.15 restarts on failure more than 5 times":
            (host.get("RestartPolicy") or {}).get("MaximumRetryCount", 0) > 5,
        "5.16 shares the host's process namespace": host.get("PidMode") == "host",
        "5.17 shares the host's IPC namespace": host.get("IpcMode") == "host",
        "5.18 has host devices": bool(host.get("Devices")),
        "5.20 mounts with shared propagation": any(mount.get("Propagation") in ("shared", "rshared")
                                                   for mount in mounts),
        "5.21 shares the host's UTS namespace": host.get("UTSMode") == "host",
        "5.22 runs without the seccomp profile": "seccomp:unconfined" in security,
        "5.25 runs in a cgroup parent of its own": bool(host.get("CgroupParent")),
        "5.26 may gain privileges (no no-new-privileges)":
            not any(option in ("no-new-privileges", "no-new-privileges:true") for option in security),
        "5.27 has no health check": "Health" not in inspected.get("State", {}),
        "5.29 has no PIDs limit": (host.get("PidsLimit") or 0) <= 0,
        "5.31 shares the host's user namespace": host.get("UsernsMode") == "host",
        "5.32 mounts the Docker socket": any(mount.get("Source") in DOCKER_SOCKETS for mount in mounts),
    }
    return [finding for finding, fails in failed.items() if fails]


def container_findings(containers):
    """{container name: its findings} for each id or name in `containers`, from one `docker inspect`."""
    inspected = json.loads(subprocess.run(["docker", "inspect", *containers], check=True, capture_output=True,
                                          text=True, timeout=60).stdout)
    return {container["Name"].lstrip("/"): findings(container) for container in inspected}


if __name__ == "__main__":
    found = container_findings(sys.argv[1:])
    for name, failed in found.items():
        print("\n".join(f"{name}: {finding}" for finding in failed) or f"{name}: every check passes")
    sys.exit(1 if any(found.values()) else 0)

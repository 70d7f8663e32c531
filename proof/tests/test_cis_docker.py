"""proof/cis_docker.py on hand-made `docker inspect` objects: a container set up as compose.yaml sets up web passes
every check, and each flaw fails the one check that names it; then on a real stack, tests/test_compose.py's."""

import copy

import pytest
from test_compose import stack  # noqa: F401  (compose.yaml up, one variant at a time)

from proof.cis_docker import container_findings, findings

# The fields `docker inspect` shows for compose.yaml's web (Docker Engine 20.10), cut to what the checks read.
HARDENED = {
    "Name": "/notes-web-1",
    "HostConfig": {
        "CapAdd": None, "CapDrop": ["ALL"], "Privileged": False, "NetworkMode": "notes_default",
        "Memory": 268435456, "NanoCpus": 1000000000, "CpuShares": 0, "ReadonlyRootfs": True,
        "RestartPolicy": {"Name": "unless-stopped", "MaximumRetryCount": 0}, "PidMode": "", "IpcMode": "private",
        "UTSMode": "", "SecurityOpt": ["no-new-privileges:true"], "CgroupParent": "", "PidsLimit": 64,
        "UsernsMode": "", "Devices": None,
    },
    "Mounts": [{"Type": "bind", "Source": "/home/me/notes/secrets/db_password.txt",
                "Destination": "/run/secrets/db_password", "RW": False, "Propagation": "rprivate"}],
    "State": {"Running": True, "Health": {"Status": "healthy"}},
    "NetworkSettings": {"Ports": {"8000/tcp": [{"HostIp": "127.0.0.1", "HostPort": "8000"}]}},
}


def test_a_container_hardened_as_compose_yaml_hardens_web_passes_every_check():
    assert findings(HARDENED) == []


def flawed(change):
    container = copy.deepcopy(HARDENED)
    change(container)
    return findings(container)


@pytest.mark.parametrize(("change", "finding"), [
    (lambda c: c["HostConfig"].update(ReadonlyRootfs=False), "5.13 root filesystem is writable"),
    (lambda c: c["HostConfig"].update(CapAdd=["NET_ADMIN"]), "5.4 adds capabilities or keeps some"),
    (lambda c: c["HostConfig"].update(CapDrop=None), "5.4 adds capabilities or keeps some"),
    (lambda c: c["HostConfig"].update(Privileged=True), "5.5 is privileged"),
    (lambda c: c["Mounts"].append({"Type": "bind", "Source": "/etc", "Destination": "/host-etc"}),
     "5.6 mounts a sensitive host directory"),
    (lambda c: c["Mounts"].append({"Type": "bind", "Source": "/", "Destination": "/host"}),
     "5.6 mounts a sensitive host directory"),
    (lambda c: c["NetworkSettings"]["Ports"].update({"80/tcp": [{"HostIp": "127.0.0.1", "HostPort": "80"}]}),
     "5.8 publishes a privileged host port"),
    (lambda c: c["HostConfig"].update(NetworkMode="host"), "5.10 shares the host's network namespace"),
    (lambda c: c["HostConfig"].update(Memory=0), "5.11 has no memory limit"),
    (lambda c: c["HostConfig"].update(NanoCpus=0), "5.12 has no CPU limit or shares"),
    (lambda c: c["NetworkSettings"]["Ports"]["8000/tcp"][0].update(HostIp="0.0.0.0"),
     "5.14 publishes a port on every interface"),
    (lambda c: c["HostConfig"].update(RestartPolicy={"Name": "on-failure", "MaximumRetryCount": 10}),
     "5.15 restarts on failure more than 5 times"),
    (lambda c: c["HostConfig"].update(PidMode="host"), "5.16 shares the host's process namespace"),
    (lambda c: c["HostConfig"].update(IpcMode="host"), "5.17 shares the host's IPC namespace"),
    (lambda c: c["HostConfig"].update(Devices=[{"PathOnHost": "/dev/sda"}]), "5.18 has host devices"),
    (lambda c: c["Mounts"][0].update(Propagation="rshared"), "5.20 mounts with shared propagation"),
    (lambda c: c["HostConfig"].update(UTSMode="host"), "5.21 shares the host's UTS namespace"),
    (lambda c: c["HostConfig"]["SecurityOpt"].append("seccomp=unconfined"), "5.22 runs without the seccomp profile"),
    (lambda c: c["HostConfig"].update(CgroupParent="/custom"), "5.25 runs in a cgroup parent of its own"),
    (lambda c: c["HostConfig"].update(SecurityOpt=[]), "5.26 may gain privileges"),
    (lambda c: c["State"].pop("Health"), "5.27 has no health check"),
    (lambda c: c["HostConfig"].update(PidsLimit=None), "5.29 has no PIDs limit"),
    (lambda c: c["HostConfig"].update(UsernsMode="host"), "5.31 shares the host's user namespace"),
    (lambda c: c["Mounts"].append({"Type": "bind", "Source": "/var/run/docker.sock", "Destination": "/s"}),
     "5.32 mounts the Docker socket"),
])
def test_each_flaw_fails_the_check_that_names_it_and_no_other(change, finding):
    [found] = flawed(change)
    assert found.startswith(finding)


@pytest.mark.docker
def test_every_running_container_passes_the_cis_docker_benchmarks_runtime_checks(stack):  # noqa: F811
    running = {container.Service: container.ID for container in stack.compose.get_containers()}
    assert set(running) == {"db", "web"}  # migrate has exited
    found = container_findings(list(running.values()))
    assert found == {name: [] for name in found}

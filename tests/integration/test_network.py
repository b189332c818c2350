"""Pod networking, end to end: every daemon here runs in a network namespace the test makes,
so its bridges, taps, rules and guest addresses never touch the host's own namespace, and
every packet goes to that namespace's loopback or to addresses inside it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration import images
from tests.integration.conftest import Daemon, DaemonFactory, Hyper, ps_row, wait_for

SERVE = "mkdir -p /www && echo hello from {name} > /www/index.html && exec httpd -f -vv -p 80 -h /www"
SERVE_TIMEOUT = 60.0
"""Seconds for a pod's web server to answer after ``run -d`` returned (a boot is ~2.5 s under TCG)."""
FETCH = """
import sys, urllib.request
try:
    print(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode(), end="")
except Exception as err:
    sys.exit(f"{type(err).__name__}: {err}")
"""


@pytest.fixture
def netd(make_daemon: DaemonFactory) -> Daemon:
    return make_daemon(netns=True)


@pytest.fixture
def nethyper(netd: Daemon) -> Iterator[Hyper]:
    client = Hyper(netd)
    yield client
    client.cleanup()


def fetch(daemon: Daemon, url: str) -> subprocess.CompletedProcess[str]:
    return daemon.in_netns(sys.executable, "-c", FETCH, url)


def serve(hyper: Hyper, name: str, *flags: str) -> None:
    result = hyper("run", "-d", "--name", name, *flags, "busybox", "sh", "-c", SERVE.format(name=name))
    assert result.returncode == 0, result.stderr


def wait_served(daemon: Daemon, url: str, expected: str) -> None:
    wait_for(lambda: fetch(daemon, url).stdout == expected, SERVE_TIMEOUT, f"{url} to answer {expected!r}")


def links(daemon: Daemon) -> list[str]:
    result = daemon.in_netns("ip", "-o", "link", "show")
    assert result.returncode == 0, result.stderr
    return [line.split(":")[1].strip().split("@")[0] for line in result.stdout.splitlines()]


def test_published_port_serves_from_loopback(netd: Daemon, nethyper: Hyper) -> None:
    serve(nethyper, "web", "-p", "8080:80")
    wait_served(netd, "http://127.0.0.1:8080/", "hello from web\n")
    assert nethyper("port", "web").stdout == "80/tcp -> 0.0.0.0:8080\n"
    assert nethyper("port", "web", "80").stdout == "0.0.0.0:8080\n"
    assert "0.0.0.0:8080->80/tcp" in ps_row(nethyper("ps").stdout, "web")
    inspect = json.loads(nethyper("inspect", "web").stdout)[0]
    address = inspect["NetworkSettings"]["IPAddress"]
    assert address.startswith("172.31."), inspect["NetworkSettings"]
    # The pod's own address, from the daemon's namespace, through the bridge.
    assert fetch(netd, f"http://{address}/").stdout == "hello from web\n"


def test_published_port_serves_from_outside(netd: Daemon, nethyper: Hyper, make_daemon: DaemonFactory) -> None:
    """A client in another namespace, over a veth pair between the two: the kernel's DNAT serves it."""
    client = make_daemon.netns()
    veth = ["ip", "link", "add", "hyt-out", "type", "veth", "peer", "name", "hyt-in", "netns", client]
    for argv in (veth, ["ip", "addr", "add", "10.200.0.1/24", "dev", "hyt-out"],
                 ["ip", "link", "set", "hyt-out", "up"]):
        assert netd.in_netns(*argv).returncode == 0
    for argv in (["ip", "addr", "add", "10.200.0.2/24", "dev", "hyt-in"], ["ip", "link", "set", "hyt-in", "up"]):
        subprocess.run(["ip", "netns", "exec", client, *argv], check=True)
    serve(nethyper, "outside", "-p", "8085:80", "--mac-address", "02:42:ac:11:00:99")
    wait_served(netd, "http://127.0.0.1:8085/", "hello from outside\n")
    got = subprocess.run(["ip", "netns", "exec", client, sys.executable, "-c", FETCH, "http://10.200.0.1:8085/"],
                         capture_output=True, text=True, timeout=60, check=False)
    assert got.stdout == "hello from outside\n", got.stderr
    # DNAT, not the proxy: the pod saw the client's own address (httpd -vv logs it).
    logs = nethyper("logs", "outside")
    assert "10.200.0.2" in logs.stdout + logs.stderr
    assert nethyper("inspect", "-f", "{{.NetworkSettings.MacAddress}}", "outside").stdout.strip() == \
        "02:42:ac:11:00:99"


def test_random_host_port_and_publish_all(netd: Daemon, nethyper: Hyper) -> None:
    serve(nethyper, "anyport", "-p", "127.0.0.1::80", "--expose", "81", "-P")
    ports = nethyper("port", "anyport").stdout.splitlines()
    assert len(ports) == 2, ports
    mapped = dict(line.split(" -> ") for line in ports)
    host, _, port = mapped["80/tcp"].rpartition(":")
    assert host == "127.0.0.1" and int(port) > 0
    assert mapped["81/tcp"].startswith("0.0.0.0:")
    wait_served(netd, f"http://127.0.0.1:{port}/", "hello from anyport\n")


UDP_ECHO = r"""
#include <netinet/in.h>
#include <stdlib.h>
#include <sys/socket.h>
int main(int argc, char **argv) {
    int s = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[1]))};
    if (s < 0 || bind(s, (struct sockaddr *)&a, sizeof a) < 0) return 1;
    for (;;) {
        char buf[2048]; struct sockaddr_in p; socklen_t n = sizeof p;
        ssize_t len = recvfrom(s, buf, sizeof buf, 0, (struct sockaddr *)&p, &n);
        if (len > 0) sendto(s, buf, len, 0, (struct sockaddr *)&p, n);
    }
}
"""
UDP_CLIENT = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(2)
s.sendto(b"ping over udp", ("127.0.0.1", int(sys.argv[1])))
print(s.recv(100).decode())
"""


@pytest.fixture
def udp_echo(nethyper: Hyper, tmp_path: Path) -> str:
    """An image holding one static UDP echo server, ``/udpecho PORT``."""
    if shutil.which("gcc") is None:
        pytest.skip("gcc is needed to build the UDP echo server")
    source = tmp_path / "udpecho.c"
    source.write_text(UDP_ECHO)
    subprocess.run(["gcc", "-static", "-O2", "-o", tmp_path / "udpecho", source], check=True)
    rootfs = tmp_path / "rootfs.tar"
    rootfs.write_bytes(images.entries_tar([images.file("udpecho", (tmp_path / "udpecho").read_bytes(), 0o755)]))
    result = nethyper("import", str(rootfs), "udpecho")
    assert result.returncode == 0, result.stderr
    return "udpecho"


def test_udp_port_reaches_the_pod(netd: Daemon, nethyper: Hyper, udp_echo: str) -> None:
    result = nethyper("run", "-d", "--name", "udp", "-p", "5353:53/udp", udp_echo, "/udpecho", "53")
    assert result.returncode == 0, result.stderr
    wait_for(lambda: netd.in_netns(sys.executable, "-c", UDP_CLIENT, "5353").stdout == "ping over udp\n",
             SERVE_TIMEOUT, "the datagram echoed through the published UDP port")


def test_user_network_names_and_isolation(netd: Daemon, nethyper: Hyper) -> None:
    assert nethyper("network", "create", "--subnet", "10.40.0.0/24", "front").returncode == 0
    assert nethyper("network", "create", "back").returncode == 0
    try:
        serve(nethyper, "api", "--network", "front", "--network-alias", "service", "--ip", "10.40.0.77")
        inspect = json.loads(nethyper("inspect", "api").stdout)[0]
        address = inspect["NetworkSettings"]["Networks"]["front"]["IPAddress"]
        assert address == "10.40.0.77"
        network = json.loads(nethyper("network", "inspect", "front").stdout)[0]
        assert network["Containers"][inspect["Id"]]["IPv4Address"] == "10.40.0.77/24"
        wait_served(netd, f"http://{address}/", "hello from api\n")
        for host in ("api", "service", inspect["Id"][:12]):
            got = nethyper("run", "--rm", "--network", "front", "busybox", "wget", "-q", "-O-", f"http://{host}/")
            assert got.stdout == "hello from api\n", (host, got.stderr)
        # Another network neither resolves the name nor reaches the address.
        got = nethyper("run", "--rm", "--network", "back", "busybox", "nslookup", "api")
        assert "hello" not in got.stdout and got.returncode != 0, got.stdout
        got = nethyper("run", "--rm", "--network", "back", "busybox", "wget", "-q", "-T", "3", "-O-",
                       f"http://{address}/")
        assert got.returncode != 0 and "hello" not in got.stdout
        in_use = nethyper("network", "rm", "front")
        assert in_use.returncode != 0 and "active endpoints" in in_use.stderr
    finally:
        nethyper("rm", "-f", "api")
        for name in ("front", "back"):
            nethyper("network", "rm", name)
    listed = nethyper("network", "ls", "--format", "{{.Name}}").stdout.split()
    assert listed == ["bridge", "none", "user"]


def test_network_none_has_only_loopback(nethyper: Hyper) -> None:
    got = nethyper("run", "--rm", "--network", "none", "busybox", "cat", "/proc/net/dev")
    assert got.returncode == 0, got.stderr
    names = [line.split(":")[0].strip() for line in got.stdout.splitlines()[2:]]
    assert names == ["lo"]
    # Loopback works: a server and a client in one pod.
    got = nethyper("run", "--rm", "--network", "none", "busybox", "sh", "-c",
                   "echo hi > /tmp/i; httpd -p 127.0.0.1:80 -h /tmp; wget -q -O- http://localhost/i")
    assert got.stdout == "hi\n", got.stderr


def test_user_mode_network_forwards_a_port(netd: Daemon, nethyper: Hyper) -> None:
    serve(nethyper, "slirp", "--network", "user", "-p", "8081:80")
    wait_served(netd, "http://127.0.0.1:8081/", "hello from slirp\n")
    assert nethyper("port", "slirp").stdout == "80/tcp -> 0.0.0.0:8081\n"
    # No bridge, tap or rule for a user-mode pod.
    assert links(netd) == ["lo"]


def test_hosts_resolv_and_hostname(nethyper: Hyper) -> None:
    got = nethyper("run", "--rm", "-h", "box1", "--dns", "192.0.2.53", "--dns-search", "example.test",
                   "--add-host", "db:192.0.2.10", "busybox", "sh", "-c",
                   "hostname; cat /etc/hostname /etc/resolv.conf /etc/hosts; echo extra >> /etc/hosts")
    assert got.returncode == 0, got.stderr
    out = got.stdout
    assert out.startswith("box1\nbox1\n"), out
    assert "nameserver 192.0.2.53\nsearch example.test\n" in out
    assert "192.0.2.10\tdb\n" in out and "\tbox1\n" in out


def test_bad_input_leaves_nothing(netd: Daemon, nethyper: Hyper) -> None:
    serve(nethyper, "first", "-p", "8082:80")
    taken = nethyper("run", "-d", "--name", "second", "-p", "8082:80", "busybox", "true")
    assert taken.returncode == 125
    assert "port is already allocated" in taken.stderr and len(taken.stderr.splitlines()) == 1, taken.stderr
    assert "running" not in nethyper("inspect", "-f", "{{.State.Status}}", "second").stdout
    assert sum(name.startswith("tap") for name in links(netd)) == 1
    for flags, message in ((["-p", "80:99999"], "invalid port"), (["-p", "80/sctp"], "invalid protocol"),
                           (["--network", "nosuch"], "network nosuch not found"),
                           (["--network", "host"], "--network host is not possible"),
                           (["--network", "none", "-p", "80"], "conflicting options")):
        got = nethyper("run", "--rm", *flags, "busybox", "true")
        assert got.returncode == 125 and message in got.stderr, (flags, got.stderr)
    result = nethyper("network", "create", "--subnet", "10.30.0.0/30", "tiny")
    assert result.returncode == 0, result.stderr
    try:
        result = nethyper("run", "-d", "--name", "fills", "--network", "tiny", "busybox", "sleep", "600")
        assert result.returncode == 0, result.stderr
        full = nethyper("run", "--rm", "--network", "tiny", "busybox", "true")
        assert full.returncode == 125 and "no free address left on network tiny" in full.stderr, full.stderr
    finally:
        nethyper("rm", "-f", "fills")
        nethyper("network", "rm", "tiny")


def test_nothing_left_after_removal_and_restart(netd: Daemon, nethyper: Hyper) -> None:
    nethyper("network", "create", "spare")
    serve(nethyper, "one", "-p", "8083:80")
    serve(nethyper, "two", "--network", "spare")
    assert {"hyper0", f"hyb{json.loads(nethyper('network', 'inspect', 'spare').stdout)[0]['Id'][:12]}"} <= \
        set(links(netd))
    assert netd.in_netns("nft", "list", "table", "ip", "hyper").returncode == 0
    assert nethyper("rm", "-f", "one", "two").returncode == 0
    assert links(netd) == ["lo"]
    assert netd.in_netns("nft", "list", "table", "ip", "hyper").returncode != 0
    # A daemon killed with pods running leaves them; the next one reclaims it all.
    serve(nethyper, "three", "-p", "8084:80")
    assert netd.process is not None
    netd.process.kill()
    netd.process.wait()
    netd.start()
    assert links(netd) == ["lo"]
    assert netd.in_netns("nft", "list", "table", "ip", "hyper").returncode != 0
    assert "hyperd stopped" in nethyper("inspect", "-f", "{{.State.Error}}", "three").stdout
    # The lease of the dead pod is free again: the next pod gets the first address.
    serve(nethyper, "four")
    assert nethyper("inspect", "-f", "{{.NetworkSettings.IPAddress}}", "four").stdout.strip() == "172.31.0.2"
    nethyper("network", "rm", "spare")


def test_missing_nftables_is_named(make_daemon: DaemonFactory) -> None:
    daemon = make_daemon(netns=True, env={"PATH": "/usr/bin:/bin"})
    hyper = Hyper(daemon)
    try:
        got = hyper("run", "--rm", "busybox", "true")
        assert got.returncode == 125 and "apt-get install nftables" in got.stderr, got.stderr
        assert links(daemon) == ["lo"]
        assert hyper("run", "--rm", "--network", "none", "busybox", "true").returncode == 0
    finally:
        hyper.cleanup()


@pytest.mark.skipif(shutil.which("nft") is None, reason="nftables is not installed")
def test_daemon_outside_a_namespace_has_no_default_bridge(hyper: Hyper) -> None:
    """The shared test daemon runs in the host's namespace with --bridge none: no network by default."""
    got = hyper("run", "--rm", "busybox", "cat", "/proc/net/dev")
    assert [line.split(":")[0].strip() for line in got.stdout.splitlines()[2:]] == ["lo"]
    assert "bridge" not in hyper("network", "ls").stdout.split()


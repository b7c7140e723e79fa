"""The virtual multi-node cluster itself (virtual_cluster.sh): what a task on a node sees.

One cluster of three nodes is built for the module (node3 without the shared
directory); the last test builds and removes one of its own and checks that
nothing of it is left on the machine.
"""
import subprocess
import sys
import time

import pytest

import virtual_cluster as virtual

_CONNECT = """
import socket, sys
with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10) as c:
    c.sendall(socket.gethostname().encode())
"""
_ACCEPT = """
import socket, sys
with socket.create_server(("", int(sys.argv[1]))) as s:
    print("listening", flush=True)
    c, (peer, _) = s.accept()
    print(c.recv(100).decode(), peer, flush=True)
"""


@pytest.mark.parametrize("node", ["node1", "node2", "node3"])
def test_each_node_has_its_own_name_and_address(virtual_cluster, node):
    result = virtual_cluster.run(node, ["sh", "-c", "hostname; ip -4 -o addr show dev eth0; getent hosts node1"])
    assert result.returncode == 0, result.stderr
    hostname, addresses, node1 = result.stdout.splitlines()
    assert hostname == node
    assert f"inet {virtual_cluster.address(node)}/24" in addresses
    assert node1.split() == [virtual_cluster.address("node1"), "node1"]


def test_nodes_reach_each_other_by_name_and_nothing_else(virtual_cluster):
    server = subprocess.Popen(virtual_cluster.command("node2", [sys.executable, "-c", _ACCEPT, "7777"]),
                              stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout.readline().strip() == "listening"
        client = virtual_cluster.run("node1", [sys.executable, "-c", _CONNECT, "node2", "7777"])
        assert client.returncode == 0, client.stderr
        assert server.stdout.readline().split() == ["node1", virtual_cluster.address("node1")]
    finally:
        server.kill()
        server.wait()
    # No route leaves the private network: an outside address is unreachable.
    outside = virtual_cluster.run("node1", ["ip", "route", "get", "192.0.2.200"])
    assert outside.returncode != 0 and "unreachable" in outside.stderr


def test_lustre_is_shared_except_on_the_node_local_node(virtual_cluster):
    lustre = virtual_cluster.lustre
    assert virtual_cluster.run("node1", ["sh", "-c", f"echo one > {lustre}/from-node1"]).returncode == 0
    seen_on_node2 = virtual_cluster.run("node2", ["cat", f"{lustre}/from-node1"])
    assert seen_on_node2.stdout == "one\n"
    assert (virtual_cluster.shared / "from-node1").read_text() == "one\n"
    seen_on_node3 = virtual_cluster.run("node3", ["ls", "-A", str(lustre)])
    assert seen_on_node3.returncode == 0 and seen_on_node3.stdout == ""
    assert virtual_cluster.run("node3", ["sh", "-c", f"echo three > {lustre}/from-node3"]).returncode == 0
    assert (virtual_cluster.local("node3") / "from-node3").read_text() == "three\n"
    assert not (virtual_cluster.shared / "from-node3").exists()


def test_the_rsh_agent_runs_a_command_on_another_node_from_inside_a_node(virtual_cluster):
    result = virtual_cluster.run("node1", [str(virtual_cluster.rsh_agent), "node3", "hostname; ls -A "
                                           f"{virtual_cluster.lustre}"])
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == "node3"


def _leftovers(cluster_id, state_dir):
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    mounts = open("/proc/self/mountinfo").read()
    return ([line for line in netns.splitlines() if cluster_id in line]
            + [line for line in links.splitlines() if cluster_id in line]
            + [line for line in mounts.splitlines() if str(state_dir) in line])


def test_down_removes_every_namespace_link_mount_and_process(tmp_path):
    reason = virtual.unavailable_reason()
    if reason:
        pytest.skip(reason)
    cluster = virtual.VirtualCluster(tmp_path / "vc", nodes=2)
    cluster.up()
    cluster_id = cluster._id()
    try:
        assert _leftovers(cluster_id, cluster.state_dir)
        sleeper = subprocess.Popen(cluster.command("node2", ["sleep", "600"]))
        deadline = time.monotonic() + 30
        while len(cluster.node_pids("node2")) < 2:  # The node's anchor and the sleeper.
            assert time.monotonic() < deadline, "the sleeper never started on node2"
            time.sleep(0.1)
    finally:
        cluster.down()
    assert sleeper.wait(timeout=30) != 0
    assert _leftovers(cluster_id, cluster.state_dir) == []
    cluster.down()  # A second down is harmless.


def test_up_refuses_a_state_dir_that_holds_a_cluster(tmp_path):
    reason = virtual.unavailable_reason()
    if reason:
        pytest.skip(reason)
    (tmp_path / "cluster.env").write_text("ID=bwffff\nNODES=1\n")
    result = subprocess.run(["bash", str(virtual.SCRIPT), "up", str(tmp_path)], capture_output=True, text=True)
    assert result.returncode == 2
    assert "already holds a virtual cluster; run down first" in result.stderr

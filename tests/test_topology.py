"""The topology: nodes → racks from a CSV, a pattern on node names or N nodes a rack; every bad
input is an error naming the file and line (or pattern and node), the problem and the fix."""

from __future__ import annotations

import logging

import pytest

from didact_core.config import Settings, SettingsError
from didact_core.errors import DidactError
from didact_core.ingest.simulator import SimulatedCluster
from didact_core.ingest.topology import UNPLACED, Topology, load_topology, rack_names, topology_for

NODES = [f"node{i:04d}" for i in range(6)]


def write(tmp_path, text: str, name: str = "racks.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_a_csv_places_each_node_in_its_rack(tmp_path):
    path = write(tmp_path, "node,rack\n# row A\nnode0000,A\nnode0001, A\n\nnode0002,B\n node0003 ,B\n")
    topo = Topology.from_csv(path)
    assert topo.racks == ["A", "B"] and topo.nodes_in("B") == ["node0002", "node0003"]
    assert topo.frame().to_dict("list") == {"node": NODES[:4], "rack": ["A", "A", "B", "B"]}
    # checked against the nodes the data holds: a node the CSV lacks is an error naming the fix
    assert load_topology(str(path), NODES[:3]).rack_of == {"node0000": "A", "node0001": "A", "node0002": "B"}
    with pytest.raises(DidactError) as e:
        load_topology(str(path), NODES)
    msg = str(e.value)
    assert "'node0004' (and 1 more) of the cluster" in msg and "has no rack" in msg
    assert f"add a line 'node,rack' for node0004, node0005 to {path}" in msg


@pytest.mark.parametrize(
    "text, where, problem, fix",
    [
        ("host,rack\nnode0000,A\n", "line 1", "has the header 'host,rack', not 'node,rack'", "exactly: node,rack"),
        ("", "line 1", "has the header 'nothing'", "exactly: node,rack"),
        ("node,rack\n", "racks.csv", "has a header but no nodes", "one line per node"),
        ("node,rack\nnode0000,A\nnode0001,\n", "line 3", "gives node 'node0001' an empty rack", "rack name"),
        ("node,rack\n,A\n", "line 2", "has an empty node name", "node name before the comma"),
        ("node,rack\nnode0000,A,extra\n", "line 2", "has 3 fields", "one node and its rack per line"),
        ("node,rack\nnode0000,A\nnode0001,A\nnode0000,B\n", "line 4",
         "puts node 'node0000' in rack 'B', but line 2 put it in rack 'A'", "keep line 2 or line 4"),
        ("node,rack\nnode0000,A\nnode0000,A\n", "line 3", "lists node 'node0000' again (first on line 2)",
         "remove line 3"),
    ],
)  # fmt: skip
def test_each_bad_csv_is_a_clear_error(tmp_path, text, where, problem, fix):
    path = write(tmp_path, text)
    with pytest.raises(DidactError) as e:
        Topology.from_csv(path)
    msg = str(e.value)
    assert msg.startswith(f"topology file {path}") and where in msg and problem in msg and fix in msg, msg


def test_a_missing_file_names_the_setting(tmp_path):
    with pytest.raises(DidactError, match=r"topology file .*missing.csv: cannot be read .* DIDACT_TOPOLOGY"):
        load_topology(str(tmp_path / "missing.csv"), NODES)


def test_a_node_the_cluster_does_not_have_is_an_error_naming_its_line(tmp_path):
    path = write(tmp_path, "node,rack\nnode0000,A\nnode0001,A\nnode9999,B\n")
    with pytest.raises(DidactError) as e:
        load_topology(str(path), NODES[:2], exact=True)
    assert f"topology {path} (line 4): names node 'node9999' that the cluster does not have" in str(e.value)
    with pytest.raises(DidactError, match="node9999"):
        SimulatedCluster(nodes_count=2, cpus=1, topology=Topology.from_csv(path))
    # not exact (a real cluster: a node of the CSV is down today): fine
    assert load_topology(str(path), NODES[:2]).racks == ["A"]


def test_a_pattern_on_node_names():
    nodes = ["cn0101", "cn0102", "cn0201", "cn1201"]
    topo = load_topology(r"pattern:^cn(?P<rack>\d\d)\d\d$", nodes)
    assert topo.rack_of == {"cn0101": "01", "cn0102": "01", "cn0201": "02", "cn1201": "12"}
    assert topo.racks == ["01", "02", "12"]  # natural order
    for spec, problem in [
        (r"pattern:^cn(\d\d", "is not a regular expression"),
        (r"pattern:^cn(\d\d)", "has no named group 'rack'"),
        (r"pattern:^cn(?P<rack>0\d)01$", "does not match the topology"),
    ]:
        with pytest.raises(DidactError, match=problem) as e:
            load_topology(spec, nodes)
        assert "pattern" in str(e.value)
    with pytest.raises(DidactError) as e:
        load_topology(r"pattern:^cn(?P<rack>0\d)01$", nodes)
    assert "'cn0102' (and 1 more)" in str(e.value)


def test_n_nodes_a_rack_in_natural_name_order(caplog):
    nodes = ["n10", "n2", "n1", "n3", "n11"]
    topo = load_topology("per_rack:2", nodes)
    assert topo.rack_of == {"n1": "rack-00", "n2": "rack-00", "n3": "rack-01", "n10": "rack-01", "n11": "rack-02"}
    assert rack_names(3) == ["rack-00", "rack-01", "rack-02"] and rack_names(101)[-1] == "rack-100"
    for spec in ("per_rack:0", "per_rack:x"):
        with pytest.raises(DidactError, match="per_rack:16"):
            load_topology(spec, nodes)
    assert load_topology("", nodes).racks == ["rack-00"]  # no topology, not the simulator: one rack
    # a node the topology lacks: an error, or (strict=False) its own rack with a warning
    with pytest.raises(DidactError, match="'n99' of the data"):
        topo.place(["n1", "n99"])
    with caplog.at_level(logging.WARNING):
        assert topo.place(["n1", "n99"], strict=False).rack_of == {"n1": "rack-00", "n99": UNPLACED}
    assert "n99" in caplog.text


def test_settings_name_the_topology_and_the_simulator_uses_it(tmp_path):
    path = write(tmp_path, "node,rack\n" + "".join(f"{n},{'AB'[k % 2]}\n" for k, n in enumerate(NODES)))
    s = Settings(home=str(tmp_path), nodes=6, cpus=1, topology=str(path))
    sim = SimulatedCluster.from_settings(s)
    assert sim.topology.racks == ["A", "B"] and sim.topology.nodes_in("A") == NODES[0::2]
    assert topology_for(s, NODES[:3]).rack_of == {"node0000": "A", "node0001": "B", "node0002": "A"}
    # empty: the simulator's own racks (DIDACT_SIM_NODES_PER_RACK a rack), one rack for Prometheus
    s = Settings(home=str(tmp_path), nodes=6, cpus=1, sim_nodes_per_rack=4)
    assert SimulatedCluster.from_settings(s).topology.rack_of == topology_for(s, NODES).rack_of
    assert topology_for(s, NODES).racks == ["rack-00", "rack-01"]
    assert topology_for(s.replace(source="prometheus"), NODES).racks == ["rack-00"]
    # a CSV that misses one of the simulator's nodes
    with pytest.raises(DidactError, match="'node0006' of the cluster"):
        SimulatedCluster.from_settings(Settings(home=str(tmp_path), nodes=7, cpus=1, topology=str(path)))


def test_bad_topology_and_rate_settings_name_their_variable():
    with pytest.raises(SettingsError) as e:
        Settings.from_env({"DIDACT_TOPOLOGY": r"pattern:node(\d+", "DIDACT_SIM_STRAGGLER_RATE": "1.5",
                           "DIDACT_SIM_NODES_PER_RACK": "0", "DIDACT_SIM_FS_STALLS_PER_DAY": "-1"})  # fmt: skip
    msg = str(e.value)
    for var in ("DIDACT_TOPOLOGY", "DIDACT_SIM_STRAGGLER_RATE", "DIDACT_SIM_NODES_PER_RACK",
                "DIDACT_SIM_FS_STALLS_PER_DAY"):  # fmt: skip
        assert f"set {var} to" in msg, msg
    assert "is not a regular expression" in msg
    with pytest.raises(SettingsError, match="has no named group 'rack'"):
        Settings.from_env({"DIDACT_TOPOLOGY": r"pattern:node(\d+)"})

"""Power readers and profiles, as a user of didact meets them.

- RAPL: a fixture powercap sysfs tree whose counters we move by hand (wrap, reset).
- Redfish: a real sushy-tools emulator serving tests/fixtures/redfish (sushy-static, no
  auth) and the dynamic sushy-emulator with an htpasswd file (auth); the timeout case is
  a local socket that accepts and never answers (the fault, not a BMC).
- NVML: there is no GPU here.  Only the NVML *library* is faked (a stand-in for the
  pynvml module); the reader's code is the real one.
- Profiles: against the simulator's known power model (watts = idle + dynamic × util).
"""

from __future__ import annotations

import datetime as dt
import shutil
import socket
import sys
import threading
import types
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from didact_core.errors import SourceUnavailableError
from didact_core.power import NvmlReader, RaplReader, RedfishReader, counter_to_watts, poll
from didact_core.power.profiles import power_profiles
from didact_core.power.rapl import find_zones
from didact_core.schema import RAW_POWER_COLUMNS
from tests.services import free_port, start_sushy_emulator, start_sushy_static, write_htpasswd

FIXTURES = Path(__file__).parent / "fixtures"


# -- energy counters ---------------------------------------------------------------------


def test_counter_to_watts_wrap_and_reset():
    ts = np.array([0, 1000, 2000, 3000, 4000], dtype=np.int64)
    max_j = 1000.0
    e = np.array([900.0, 950.0, 10.0, 60.0, 5.0])  # +50, wrap (+60), +50, then a drop
    w, wraps, resets = counter_to_watts(ts, e, max_range_j=max_j, max_watts=100.0)
    # the last drop would mean 945 J in 1 s > 100 W: a reset, not a wrap
    assert wraps == 1 and resets == 1
    np.testing.assert_allclose(w[:3], [50.0, 60.0, 50.0])
    assert np.isnan(w[3])
    # without the range, a drop is never guessed to be a wrap
    w, wraps, resets = counter_to_watts(ts, e)
    assert wraps == 0 and resets == 2 and np.isnan(w[1]) and np.isnan(w[3])


# -- local RAPL on a fixture sysfs tree ------------------------------------------------


class FakeClock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def _set(root: Path, zone: str, uj: int) -> None:
    (root / zone / "energy_uj").write_text(f"{uj}\n")


@pytest.fixture
def powercap(tmp_path) -> Path:
    root = tmp_path / "powercap"
    shutil.copytree(FIXTURES / "powercap", root)
    return root


def test_rapl_zones_and_domains(powercap):
    zones = {z.name: z for z in find_zones(powercap)}
    assert set(zones) == {"package-0", "core", "dram", "package-1", "psys"}
    reader = RaplReader(node="n1", root=powercap)
    assert sorted(z.name for z in reader.zones()) == ["dram", "package-0", "package-1"]
    ok, why = reader.available()
    assert ok, why


def test_rapl_watts_wraparound_and_reset(powercap):
    clock = FakeClock()
    reader = RaplReader(node="n1", root=powercap, clock=clock)
    pkg0, dram, pkg1 = "intel-rapl:0", "intel-rapl:0/intel-rapl:0:1", "intel-rapl:1"
    core = "intel-rapl:0/intel-rapl:0:0"
    reader.prime()

    # 2 s: package-0 +100 J, package-1 +80 J, dram +20 J (core moves too but is inside the package)
    clock.t += 2
    _set(powercap, pkg0, 1_000_000_000 + 100_000_000)
    _set(powercap, pkg1, 2_000_000_000 + 80_000_000)
    _set(powercap, dram, 200_000_000 + 20_000_000)
    _set(powercap, core, 400_000_000 + 90_000_000)
    assert reader.sample() == pytest.approx(100.0)

    # package-0 wraps at max_energy_range_uj: 10 J before the top, 30 J after zero → 40 J in 1 s
    max0 = int((powercap / pkg0 / "max_energy_range_uj").read_text())
    _set(powercap, pkg0, max0 - 10_000_000)
    reader.prime()
    clock.t += 1
    _set(powercap, pkg0, 30_000_000)
    assert reader.sample() == pytest.approx(40.0)
    assert reader.wraps == 1 and reader.resets == 0

    # a reset (reboot): the counter restarts near zero; "wrapping" would mean ~260 kW
    _set(powercap, pkg0, 200_000_000_000)
    reader.prime()
    clock.t += 1
    _set(powercap, pkg0, 1_000_000)
    assert np.isnan(reader.sample())
    assert reader.resets == 1

    # recorded samples come back as power rows
    clock.t += 1
    _set(powercap, pkg0, 6_000_000)
    reader.record(pd.Timestamp("2026-01-01T00:00:00Z"))
    df = reader.read()
    assert list(df.columns) == list(RAW_POWER_COLUMNS)
    assert df["watts"].iloc[0] == pytest.approx(5.0) and df["source"].iloc[0] == "rapl"


def test_rapl_not_available_without_powercap(tmp_path):
    ok, why = RaplReader(root=tmp_path / "nope").available()
    assert not ok and "does not exist" in why
    with pytest.raises(SourceUnavailableError, match="RAPL"):
        RaplReader(root=tmp_path / "nope").sample()


def test_prometheus_rapl_counters_become_watts():
    """node exporter's node_rapl_*_joules_total → watts, wraps fixed only with a known range."""
    from didact_core.ingest.prometheus import PrometheusSource
    from didact_core.ingest.prometheus.wire import Series

    src = PrometheusSource("http://127.0.0.1:9")  # never contacted
    ts = np.arange(0, 5000, 1000, dtype=np.int64)
    lab = {"instance": "n1:9100", "index": "0"}
    series = [
        Series(
            {"__name__": "node_rapl_package_joules_total", **lab}, ts, np.array([100, 200, 10, 110, 210.0])
        ),
        Series({"__name__": "node_rapl_dram_joules_total", **lab}, ts, np.array([0, 10, 20, 30, 40.0])),
        Series({"__name__": "node_rapl_core_joules_total", **lab}, ts, np.array([0, 50, 100, 150, 200.0])),
        Series(
            {
                "__name__": "node_hwmon_power_average_watt",
                "instance": "n1:9100",
                "chip": "acpi",
                "sensor": "power1",
            },
            ts,
            np.array([300, 301, 302, 303, 304.0]),
        ),
    ]
    df, info = src.power_frame(series, 0, 10_000)
    rapl = df[df["source"] == "rapl"]
    assert rapl["node"].unique().tolist() == ["n1"]
    assert rapl["watts"].tolist() == [110.0, 110.0, 110.0]  # the wrapped step has no watts
    assert info["rapl_resets"] == 1
    assert df[df["source"] == "hwmon"]["watts"].tolist() == [300, 301, 302, 303, 304]
    src.rapl_max_energy_j = 300.0
    df, info = src.power_frame(series, 0, 10_000)
    assert df[df["source"] == "rapl"]["watts"].tolist() == [110.0, 120.0, 110.0, 110.0]
    assert info["rapl_wraps"] == 1


# -- Redfish against sushy-tools --------------------------------------------------------------


@pytest.mark.slow
def test_redfish_round_trip_static_mockup(tmp_path):
    with start_sushy_static(FIXTURES / "redfish", tmp_path) as bmc:
        reader = RedfishReader(bmc.url, node="node0001", timeout_s=5)
        ok, why = reader.available()
        assert ok, why
        got = reader.readings()
        assert got == {
            "/redfish/v1/Chassis/1": (344.0, "Power"),
            "/redfish/v1/Chassis/2": (512.5, "EnvironmentMetrics"),
        }  # the sled is inside chassis 2
        assert reader.sample() == pytest.approx(856.5)
        assert RedfishReader(bmc.url, chassis=["2-sled"]).sample() == pytest.approx(
            210.0
        )  # PowerSubsystem PSUs
        df = poll([reader], interval_s=0.05, count=3)
        assert len(df) == 3 and (df["watts"] == 856.5).all() and (df["node"] == "node0001").all()
        assert list(df.columns) == list(RAW_POWER_COLUMNS)


@pytest.mark.slow
def test_redfish_auth_failure_against_sushy_emulator(tmp_path):
    htpasswd = write_htpasswd(tmp_path / "htpasswd", "admin", "s3cret")
    with start_sushy_emulator(tmp_path, htpasswd) as emu:
        bad = RedfishReader(emu.url, username="admin", password="wrong", timeout_s=5)
        ok, why = bad.available()
        assert not ok and "authentication refused (HTTP 401)" in why and "DIDACT_REDFISH_PASSWORD" in why
        with pytest.raises(SourceUnavailableError, match="401"):
            bad.sample()
        # right password: authenticated; this emulator has chassis but no power resource
        good = RedfishReader(emu.url, username="admin", password="s3cret", timeout_s=5)
        ok, why = good.available()
        assert not ok and "no chassis has a power reading" in why


@pytest.fixture
def silent_server():
    """A TCP server that accepts connections and never answers (a hung BMC)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    conns = []
    stop = threading.Event()

    def accept():
        srv.settimeout(0.1)
        while not stop.is_set():
            try:
                conns.append(srv.accept()[0])
            except OSError:
                continue

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.getsockname()[1]}"
    stop.set()
    t.join(2)
    for c in conns:
        c.close()
    srv.close()


def test_redfish_timeout_and_unreachable(silent_server):
    slow = RedfishReader(silent_server, timeout_s=0.3)
    with pytest.raises(SourceUnavailableError, match=r"no answer within 0.3s"):
        slow.sample()
    ok, why = slow.available()
    assert not ok and "no answer" in why
    port = free_port()  # nothing listens there
    with pytest.raises(SourceUnavailableError, match="unreachable"):
        RedfishReader(f"http://127.0.0.1:{port}", timeout_s=1).sample()


def test_redfish_from_env():
    readers = RedfishReader.from_env(
        {
            "DIDACT_REDFISH_BMCS": "n1=https://bmc1,n2=http://10.0.0.2:8000",
            "DIDACT_REDFISH_USERNAME": "u",
            "DIDACT_REDFISH_PASSWORD": "p",
            "DIDACT_REDFISH_TLS_VERIFY": "0",
            "DIDACT_REDFISH_TIMEOUT_S": "2",
        }
    )
    assert [(r.node, r.url, r.timeout_s, r.session.verify, r.session.auth) for r in readers] == [
        ("n1", "https://bmc1", 2.0, False, ("u", "p")),
        ("n2", "http://10.0.0.2:8000", 2.0, False, ("u", "p")),
    ]
    assert RedfishReader.from_env({}) == []


# -- NVML ----------------------------------------------------------------------------------------


def _fake_nvml(n_gpus: int | None, missing_library: bool = False):
    """A stand-in for the pynvml *library* module (the reader itself is real)."""
    nv = types.SimpleNamespace()

    class NVMLError(Exception):
        pass

    class NVMLError_LibraryNotFound(NVMLError):
        pass

    nv.NVMLError, nv.NVMLError_LibraryNotFound = NVMLError, NVMLError_LibraryNotFound
    energy = {0: 1_000_000, 1: 5_000_000}

    def init():
        if missing_library:
            raise NVMLError_LibraryNotFound("NVML Shared Library Not Found")

    nv.nvmlInit = init
    nv.nvmlShutdown = lambda: None
    nv.nvmlDeviceGetCount = lambda: n_gpus
    nv.nvmlDeviceGetHandleByIndex = lambda i: i
    nv.nvmlDeviceGetName = lambda h: b"NVIDIA H100 80GB HBM3"
    nv.nvmlDeviceGetPowerUsage = lambda h: 250_000 + 50_000 * h  # mW
    nv.nvmlDeviceGetTotalEnergyConsumption = lambda h: energy[h]  # mJ
    nv.nvmlDeviceGetUtilizationRates = lambda h: types.SimpleNamespace(gpu=87, memory=40)
    nv.nvmlDeviceGetMemoryInfo = lambda h: types.SimpleNamespace(used=10 * 2**30, total=80 * 2**30)
    nv.nvmlDeviceGetEnforcedPowerLimit = lambda h: 700_000
    nv._energy = energy
    return nv


def test_nvml_absent_library_reports_not_available():
    reader = NvmlReader(node="n1", nvml=_fake_nvml(None, missing_library=True))
    ok, why = reader.available()
    assert not ok and "libnvidia-ml.so" in why and "no NVIDIA driver" in why
    with pytest.raises(SourceUnavailableError, match="NVML on n1"):
        reader.sample()
    with pytest.raises(SourceUnavailableError):
        reader.gpu_metrics()


def test_nvml_on_this_host_never_crashes():
    ok, why = NvmlReader().available()  # real pynvml: no GPU on CI machines → (False, reason)
    assert isinstance(ok, bool) and why


def test_nvml_python_package_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml → ImportError
    ok, why = NvmlReader().available()
    assert not ok and "nvidia-ml-py" in why


def test_nvml_no_gpu_and_with_gpus():
    ok, why = NvmlReader(nvml=_fake_nvml(0)).available()
    assert not ok and "no NVIDIA GPU" in why
    clock = FakeClock()
    nv = _fake_nvml(2)
    reader = NvmlReader(node="gpu01", nvml=nv, clock=clock)
    ok, why = reader.available()
    assert ok and "2 NVIDIA GPU(s)" in why
    assert reader.sample() == pytest.approx(250 + 300)  # first call: instantaneous power
    clock.t += 2
    nv._energy[0] += 600_000  # 600 J in 2 s
    nv._energy[1] += 800_000
    assert reader.sample() == pytest.approx(300 + 400)  # energy counter / time
    m = reader.gpu_metrics()
    assert m["util_gpu"].tolist() == [0.87, 0.87] and (m["memory_total_bytes"] == 80 * 2**30).all()


# -- profiles vs the simulator's known power model ----------------------------------------------


def test_power_profile_matches_simulator_power_model():
    from didact_core.data.preprocess import preprocess
    from didact_core.ingest.simulator import DataFaultRates, SimulatedCluster

    sim = SimulatedCluster(nodes_count=6, cpus=4, interval_s=15.0, seed=11, data_faults=DataFaultRates.none())
    block = sim.fetch_day(dt.date(2026, 3, 2))
    ai, _ = preprocess(block.cpu)
    prof = power_profiles(block.power, ai, block.labels, peak_hours=(17, 21), shed_fraction=0.25)

    util = (
        (1.0 - ai["idle"].astype(float) - ai["iowait"].astype(float))
        .groupby([ai["node"].astype(str), ai["ts"]])
        .mean()
    )
    nodes = prof.nodes.set_index("node")
    for i, node in enumerate(sim.nodes()):
        pm = sim.power_model(i)
        u = util.loc[node]
        model_w = pm.idle_watts + pm.dynamic_watts * u.to_numpy()
        # the model's energy over the same samples: equal 15 s steps, first interval has no delta
        model_kwh = model_w.mean() * nodes.loc[node, "covered_s"] / 3.6e6
        assert nodes.loc[node, "energy_kwh"] == pytest.approx(model_kwh, rel=0.01)
        assert nodes.loc[node, "slope_w_per_util"] == pytest.approx(pm.dynamic_watts, rel=0.02)
        assert nodes.loc[node, "intercept_w"] == pytest.approx(pm.idle_watts, rel=0.02)
        assert nodes.loc[node, "r2"] > 0.95
        assert nodes.loc[node, "coverage"] == pytest.approx(1.0)
    # jobs partition the labelled time: their energy adds up to the nodes' energy
    assert prof.jobs["energy_kwh"].sum() == pytest.approx(nodes["energy_kwh"].sum(), rel=1e-9)
    assert set(prof.flavours["label"]) <= set(block.labels["label"]) | {"(unlabelled)"}
    busy = prof.flavours.set_index("label")
    assert busy.loc["mpi_16", "mean_w"] > busy.loc["idle", "mean_w"]
    # load shedding: capped nodes are the top of the order, and they free the target
    shed = prof.shedding
    assert shed["capped"].iloc[0] and not shed["capped"].iloc[shed["capped"].sum() :].any()
    assert prof.summary["cap_saves_w"] >= 0.25 * prof.summary["cluster_peak_hour_w"]
    png = prof.plot_png()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_power_profile_gaps_are_not_bridged():
    ts = pd.date_range("2026-01-01", periods=10, freq="15s", tz="UTC")
    ts = ts.delete([4, 5, 6])  # a 60 s hole
    power = pd.DataFrame({"ts": ts, "node": "n1", "source": "rapl", "watts": 100.0})
    prof = power_profiles(power)
    row = prof.nodes.iloc[0]
    assert row["gaps"] == 1 and row["gap_s"] == 60.0 and row["covered_s"] == 75.0
    assert row["energy_kwh"] == pytest.approx(100.0 * 75 / 3.6e6)
    assert row["energy_kwh_filled"] == pytest.approx(100.0 * 135 / 3.6e6)

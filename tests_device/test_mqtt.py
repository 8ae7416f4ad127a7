"""`meterctl mqtt` against a real broker: Debian's mosquitto on a free local port (with
persistence, as a Home Assistant install runs it), paho-mqtt subscribing, a virtual meter
publishing through host_tools.mqtt.Bridge. The broker is restarted in the middle: the bridge
reconnects, publishes the discovery configs again, and no closed interval is lost."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from host_tools.mqtt import SENSORS, Bridge, Broker, discovery_configs, parse_broker

from .conftest import OwnMeter, give_consent, own_meter

MOSQUITTO = shutil.which("mosquitto") or (
    "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
pytestmark = pytest.mark.skipif(MOSQUITTO is None,
                                reason="needs Debian's mosquitto (make test installs it)")
INTERVAL_S = 3


class Mosquitto:
    def __init__(self, tmp: Path) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        (tmp / "db").mkdir()
        self.conf = tmp / "mosquitto.conf"
        self.conf.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\n"
                             f"persistence true\npersistence_location {tmp / 'db'}/\n")
        self.log = tmp / "mosquitto.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        assert MOSQUITTO is not None
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)],
                                     stdout=self.log.open("ab"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.05)
        raise AssertionError(f"mosquitto did not listen: {self.log.read_text()[-500:]}")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()  # SIGTERM: it saves its persistence file
            self.proc.wait(10)
            self.proc = None


class Subscriber:
    """A persistent-session QoS 1 subscriber, as Home Assistant's MQTT integration is."""

    def __init__(self, port: int) -> None:
        import paho.mqtt.client as paho
        from paho.mqtt.enums import CallbackAPIVersion

        self.messages: list[tuple[str, bytes, bool]] = []
        self.lock = threading.Lock()
        c = paho.Client(CallbackAPIVersion.VERSION2, client_id="test-subscriber",
                        clean_session=False)
        c.reconnect_delay_set(min_delay=1, max_delay=2)
        c.on_connect = lambda cl, *a: cl.subscribe([("homeassistant/#", 1), ("meterctl/#", 1)])
        c.on_message = self._on_message
        c.connect("127.0.0.1", port)
        c.loop_start()
        self.client = c

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        with self.lock:
            self.messages.append((msg.topic, bytes(msg.payload), bool(msg.retain)))

    def payloads(self, topic: str) -> list[Any]:
        with self.lock:
            return [json.loads(p) for t, p, _ in self.messages if t == topic and p[:1] == b"{"]

    def wait_for(self, what: str, pred: Any, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not pred():
            if time.monotonic() > deadline:
                with self.lock:
                    seen = sorted({t for t, _, _ in self.messages})
                raise AssertionError(f"no {what} within {timeout} s; topics seen: {seen}")
            time.sleep(0.2)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture(scope="module")
def meter(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OwnMeter]:
    with own_meter(tmp_path_factory.mktemp("mqtt"), wave={"vrms": 230, "irms": 4, "pf": 1.0},
                   interval_s=INTERVAL_S) as m:
        yield m


def test_broker_addresses_are_parsed_or_refused_in_one_line() -> None:
    assert parse_broker("mqtt://127.0.0.1:1884") == Broker("127.0.0.1", 1884)
    assert parse_broker("broker.lan") == Broker("broker.lan", 1883)
    assert parse_broker("mqtt://u:p@h") == Broker("h", 1883, "u", "p")
    for bad, why in (("http://h", "only mqtt://"), ("mqtt://", "no host"),
                     ("mqtt://h:99999", "port")):
        with pytest.raises(Exception, match=why):
            parse_broker(bad)


def test_discovery_configs_make_an_energy_dashboard_device() -> None:
    cfgs = dict(discovery_configs("123456789012345678"))
    assert len(cfgs) == len(SENSORS)
    energy = cfgs["homeassistant/sensor/meterctl_123456789012345678/energy_import_kwh/config"]
    assert energy["device_class"] == "energy"
    assert energy["state_class"] == "total_increasing"
    assert energy["unit_of_measurement"] == "kWh"
    assert energy["state_topic"] == "meterctl/123456789012345678/state"
    assert energy["device"]["identifiers"] == ["meterctl_123456789012345678"]
    assert len({c["unique_id"] for c in cfgs.values()}) == len(SENSORS)


def test_meter_on_a_real_broker_survives_a_broker_restart(meter: OwnMeter,
                                                          tmp_path: Path) -> None:
    broker = Mosquitto(tmp_path)
    broker.start()
    sub = Subscriber(broker.port)
    said: list[str] = []
    bridge = Bridge(Broker("127.0.0.1", broker.port), [meter.port], meter.keystore,
                    interval_s=1.0, state_path=tmp_path / "mqtt.json", say=said.append)
    mid = str(meter.meter_id)
    state_t, interval_t = f"meterctl/{mid}/state", f"meterctl/{mid}/interval"
    runner = threading.Thread(target=bridge.run, daemon=True)
    try:
        bridge.connect()
        # Without the household's consent the meter refuses the supplier its load profile: the
        # bridge still publishes the live values, says why there are no intervals, and sends none
        bridge.cycle()
        assert bridge.published_states == 1 and bridge.published_intervals == 0, said
        assert any("has not consented" in s for s in said), said
        give_consent(meter.base, meter.index)  # the button held at power-up
        runner.start()
        # discovery: one retained config per sensor, for this meter's device
        sub.wait_for("discovery configs", lambda: len(
            [t for t, _, _ in sub.messages if t.startswith(f"homeassistant/sensor/meterctl_{mid}/")
             ]) >= len(SENSORS))
        cfg = sub.payloads(f"homeassistant/sensor/meterctl_{mid}/energy_import_kwh/config")[-1]
        assert cfg["state_class"] == "total_increasing" and cfg["unit_of_measurement"] == "kWh"
        # state: the meter's live values, id as a string, energy in kWh, what the templates read
        # (the first second's state may precede the meter's first measurement)
        sub.wait_for("a state message with a measurement",
                     lambda: any(p["vrms"] > 0 for p in sub.payloads(state_t)))
        st = sub.payloads(state_t)[-1]
        assert st["meter_id"] == mid and st["port"] == meter.port
        assert 220 < st["vrms"] < 240 and 3.5 < st["irms"] < 4.5, st
        for key, *_ in SENSORS:
            assert isinstance(st[key], int | float), (key, st)
        # closed intervals, then the broker goes away for more than one interval
        sub.wait_for("two closed intervals", lambda: len(sub.payloads(interval_t)) >= 2)
        broker.stop()
        time.sleep(3 * INTERVAL_S)
        published_while_down = bridge.published_intervals
        broker.start()
        first = sub.payloads(interval_t)[0]["seq"]
        # the meter closed about three intervals while the broker was down: every one arrives
        newest = first + len(sub.payloads(interval_t)) + 2
        sub.wait_for("the intervals closed while the broker was down",
                     lambda: {p["seq"] for p in sub.payloads(interval_t)} >= set(
                         range(first, newest + 1)), timeout=90)
        seqs = sorted({p["seq"] for p in sub.payloads(interval_t)})
        assert seqs == list(range(seqs[0], seqs[-1] + 1)), f"an interval is missing: {seqs}"
        assert bridge.published_intervals > published_while_down
        for p in sub.payloads(interval_t):
            assert p["meter_id"] == mid and p["import_kwh"] == p["import_mwh"] / 1e6
        # the configs are published again after the restart (retained in a fresh session)
        n_cfg = len(sub.payloads(f"homeassistant/sensor/meterctl_{mid}/power_w/config"))
        assert n_cfg >= 2, "the discovery configs were not sent again after the restart"
        # the bridge records the broker's ack once it has it: the subscriber may see the
        # message first
        sub.wait_for("the bridge's record of the acked intervals",
                     lambda: _acked(tmp_path / "mqtt.json", mid) >= newest, timeout=10)
    finally:
        bridge.close()
        runner.join(10)
        sub.close()
        broker.stop()


def _acked(state: Path, mid: str) -> int:
    """The last interval the bridge has recorded as acked by the broker, -1 for none yet."""
    try:
        return int(json.loads(state.read_text())["acked"][mid])
    except (OSError, ValueError, KeyError):
        return -1

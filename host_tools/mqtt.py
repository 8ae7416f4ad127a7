"""``meterctl mqtt``: meters on an MQTT broker, with Home Assistant discovery.

Each meter is read over the authenticated WAN protocol (READ, PROFILE) as ``meterctl read``
does, and published:

- ``meterctl/<meter id>/state``: its live values as JSON, every ``interval_s`` (QoS 0: the next
  one replaces a lost one), energy in kWh as well as Wh;
- ``meterctl/<meter id>/interval``: each closed load-profile interval, once, QoS 1. The bridge
  keeps, per meter, the last interval the broker acknowledged (in a small state file), and
  reads the meter's profile from there: an interval closed while the broker was down, or while
  the bridge was stopped, is published when it is back (the meter keeps 192 intervals);
- ``meterctl/<meter id>/availability``: "online" / "offline"; the bridge's own
  ``meterctl/bridge/availability`` is its last will;
- Home Assistant MQTT discovery configs, retained, one device per meter
  (``homeassistant/sensor/meterctl_<id>/<key>/config``), each sensor with device_class and
  state_class; energy is ``total_increasing`` in kWh, so the meter appears on Home Assistant's
  energy dashboard. They are published again on every (re)connection: a broker restarted
  without persistence has lost them.

Meter ids are strings in every payload (a 63-bit id is not safe as a JSON number); times are
epoch seconds in JSON.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from host_tools.headend import wire
from host_tools.headend.client import LinkError, MeterError, MeterLink, open_link
from host_tools.headend.keystore import Keystore, KeystoreError
from host_tools.headend.queries import read_profile
from host_tools.transport.serial import BoardError

# a meter that cannot be read this pass: reported, marked offline, tried again next pass
METER_FAILURES = (LinkError, MeterError, BoardError, KeystoreError, OSError)

DISCOVERY_PREFIX = "homeassistant"
BRIDGE_AVAILABILITY = "meterctl/bridge/availability"

# (key in the state payload, name, device_class, state_class, unit)
SENSORS: tuple[tuple[str, str, str, str, str | None], ...] = (
    ("vrms", "Voltage", "voltage", "measurement", "V"),
    ("irms", "Current", "current", "measurement", "A"),
    ("power_w", "Power", "power", "measurement", "W"),
    ("apparent_va", "Apparent power", "apparent_power", "measurement", "VA"),
    ("pf", "Power factor", "power_factor", "measurement", None),
    ("freq_hz", "Frequency", "frequency", "measurement", "Hz"),
    ("energy_import_kwh", "Energy import", "energy", "total_increasing", "kWh"),
    ("energy_export_kwh", "Energy export", "energy", "total_increasing", "kWh"),
)


class MqttError(Exception):
    """A broker address that cannot be used, or a broker that cannot be reached."""


@dataclass(frozen=True)
class Broker:
    host: str
    port: int
    username: str | None = None
    password: str | None = None


def parse_broker(url: str) -> Broker:
    """``mqtt://[user[:password]@]host[:port]`` (port 1883 by default)."""
    u = urllib.parse.urlsplit(url if "://" in url else "mqtt://" + url)
    if u.scheme != "mqtt":
        raise MqttError(f"broker {url!r}: only mqtt://HOST[:PORT] is supported")
    if not u.hostname:
        raise MqttError(f"broker {url!r}: no host (mqtt://HOST[:PORT])")
    try:
        port = u.port or 1883
    except ValueError:
        raise MqttError(f"broker {url!r}: the port is not a number 1..65535") from None
    return Broker(u.hostname, port, u.username, u.password)


def topic(meter_id: str, what: str) -> str:
    return f"meterctl/{meter_id}/{what}"


def discovery_configs(meter_id: str, board: str = "") -> list[tuple[str, dict[str, Any]]]:
    """Home Assistant MQTT discovery: (config topic, payload) for each sensor of one meter."""
    device = {"identifiers": [f"meterctl_{meter_id}"], "name": f"Meter {meter_id}",
              "manufacturer": "meterctl", "model": f"HASM smart meter ({board or 'LoPA'})"}
    out = []
    for key, name, device_class, state_class, unit in SENSORS:
        cfg: dict[str, Any] = {
            "name": name, "unique_id": f"meterctl_{meter_id}_{key}",
            "object_id": f"meter_{meter_id}_{key}", "device": device,
            "state_topic": topic(meter_id, "state"),
            "value_template": "{{ value_json.%s }}" % key,  # noqa: UP031 - Jinja braces
            "device_class": device_class, "state_class": state_class,
            "availability_topic": topic(meter_id, "availability"),
        }
        if unit is not None:
            cfg["unit_of_measurement"] = unit
        out.append((f"{DISCOVERY_PREFIX}/sensor/meterctl_{meter_id}/{key}/config", cfg))
    return out


def state_payload(meter_id: str, port: str, reading: dict[str, Any]) -> dict[str, Any]:
    """A READ answer as the state message: the meter's own fields, energy also in kWh."""
    out = dict(reading)
    out["meter_id"] = meter_id
    out["port"] = port
    for d in ("import", "export"):
        wh = reading.get(f"energy_{d}_wh")
        if isinstance(wh, int | float):
            out[f"energy_{d}_kwh"] = round(wh / 1000, 3)
    out["time"] = int(time.time())
    return out


def interval_payload(meter_id: str, rec: dict[str, int]) -> dict[str, Any]:
    out: dict[str, Any] = dict(rec)
    out["meter_id"] = meter_id
    out["import_kwh"] = rec["import_mwh"] / 1_000_000
    out["export_kwh"] = rec["export_mwh"] / 1_000_000
    return out


def default_state_path() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "meterctl" / "mqtt.json"


@dataclass
class _Meter:
    port: str
    meter_id: str
    link: MeterLink | None = None
    board: str = ""
    announced: bool = False
    no_consent: bool = False  # the meter refused PROFILE (POLICY): said once, state goes on
    in_flight: set[int] = field(default_factory=set)


class Bridge:
    """Reads ``ports`` (meters provisioned in ``keystore``) and publishes them on ``broker``.
    ``cycle()`` does one pass; ``run()`` repeats it every ``interval_s`` until ``stop()``."""

    def __init__(self, broker: Broker, ports: list[str], keystore: Keystore, *,
                 interval_s: float = 10.0, state_path: Path | None = None,
                 timeout: float = 5.0, client_id: str | None = None,
                 say: Callable[[str], None] = lambda s: None) -> None:
        import paho.mqtt.client as paho
        from paho.mqtt.enums import CallbackAPIVersion

        if not ports:
            raise MqttError("no meters: give --ports a,b,c or --dir FLEET")
        self.broker = broker
        self.keystore = keystore
        self.interval_s = interval_s
        self.timeout = timeout
        self.say = say
        self.state_path = state_path or default_state_path()
        self.meters = [_Meter(p, str(keystore.find(p, None).meter_id)) for p in ports]
        self.acked: dict[str, int] = self._load_acked()
        self.published_states = 0
        self.published_intervals = 0
        # Guards the bookkeeping below and is never held while calling paho: paho calls
        # on_publish with its own callback lock held (from inside publish() for QoS 0, from
        # its network thread for QoS 1), so holding ours across a publish() would deadlock.
        self._lock = threading.Lock()
        self._early: set[int] = set()  # acknowledged before publish() returned their id
        self._mids: dict[int, tuple[str, int]] = {}
        self._stop = threading.Event()
        self._connected = threading.Event()
        c = paho.Client(CallbackAPIVersion.VERSION2,
                        client_id=client_id or f"meterctl-{os.getpid()}")
        if broker.username:
            c.username_pw_set(broker.username, broker.password)
        c.will_set(BRIDGE_AVAILABILITY, "offline", qos=1, retain=True)
        c.reconnect_delay_set(min_delay=1, max_delay=10)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_publish = self._on_publish
        self.client = c

    # -- the broker side ------------------------------------------------------------------
    def connect(self, wait: float = 10.0) -> None:
        try:
            self.client.connect_async(self.broker.host, self.broker.port, keepalive=30)
        except (OSError, ValueError) as e:
            raise MqttError(f"broker {self.broker.host}:{self.broker.port}: {e}") from None
        self.client.loop_start()
        if not self._connected.wait(wait):
            self.client.loop_stop()
            raise MqttError(f"no MQTT broker answers at {self.broker.host}:{self.broker.port} "
                            f"within {wait:.0f} s")

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any,
                    props: Any) -> None:
        if getattr(reason, "is_failure", False):
            self.say(f"broker refused the connection: {reason}")
            return
        for m in self.meters:
            m.announced = False  # a restarted broker may have lost the retained configs
        client.publish(BRIDGE_AVAILABILITY, "online", qos=1, retain=True)
        self._connected.set()
        self.say(f"connected to {self.broker.host}:{self.broker.port}")

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, reason: Any,
                       props: Any) -> None:
        if self._connected.is_set():
            self.say(f"broker gone ({reason}); reconnecting")
        self._connected.clear()

    def _on_publish(self, client: Any, userdata: Any, mid: int, reason: Any,
                    props: Any) -> None:
        with self._lock:
            what = self._mids.pop(mid, None)
            if what is None:
                self._early.add(mid)  # its interval is recorded when publish() returns
                return
            self._acked_locked(*what)

    def _acked_locked(self, meter_id: str, seq: int) -> None:
        m = next(x for x in self.meters if x.meter_id == meter_id)
        m.in_flight.discard(seq)
        # acknowledged up to the oldest interval still in flight
        done = min(m.in_flight) - 1 if m.in_flight else max(seq, self.acked.get(meter_id, -1))
        if done > self.acked.get(meter_id, -1):
            self.acked[meter_id] = done
            self._save_acked()

    def _sent_interval(self, meter_id: str, seq: int, mid: int) -> None:
        with self._lock:
            if mid in self._early:
                self._early.discard(mid)
                self._acked_locked(meter_id, seq)
            else:
                self._mids[mid] = (meter_id, seq)

    def _load_acked(self) -> dict[str, int]:
        try:
            data = json.loads(self.state_path.read_text())
            return {str(k): int(v) for k, v in data.get("acked", {}).items()}
        except (OSError, ValueError, AttributeError):
            return {}

    def _save_acked(self) -> None:
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.state_path.with_name(self.state_path.name + ".tmp")
        tmp.write_text(json.dumps({"acked": self.acked}))
        os.replace(tmp, self.state_path)

    def _publish(self, topic_: str, payload: Any, qos: int = 0, retain: bool = False) -> int:
        data = payload if isinstance(payload, str) else json.dumps(payload)
        return int(self.client.publish(topic_, data, qos=qos, retain=retain).mid)

    # -- the meter side -------------------------------------------------------------------
    def _link(self, m: _Meter) -> MeterLink:
        if m.link is None:
            m.link = open_link(m.port, self.keystore, int(m.meter_id), self.timeout)
            with contextlib.suppress(*METER_FAILURES, KeyError, TypeError):
                m.board = str(m.link.request(wire.K_INFO)["board"])
        return m.link

    def _drop_link(self, m: _Meter) -> None:
        if m.link is not None:
            with contextlib.suppress(Exception):
                m.link.close()
        m.link = None

    def cycle(self) -> None:
        """One pass: every meter's live values and any intervals not yet acknowledged."""
        for m in self.meters:
            if not self.connected:
                return  # nothing is read for a broker that is away: the meter keeps it
            try:
                link = self._link(m)
                reading = link.request(wire.K_READ)
                recs = self._intervals(m, link)
            except METER_FAILURES as e:
                self.say(f"meter {m.meter_id} on {m.port}: {e}")
                self._drop_link(m)
                with contextlib.suppress(Exception):
                    self._publish(topic(m.meter_id, "availability"), "offline", 1, True)
                continue
            if not m.announced:
                m.announced = True
                for t, cfg in discovery_configs(m.meter_id, m.board):
                    self._publish(t, cfg, qos=1, retain=True)
            self._publish(topic(m.meter_id, "availability"), "online", 1, True)
            self._publish(topic(m.meter_id, "state"), state_payload(m.meter_id, m.port, reading))
            self.published_states += 1
            for rec in recs:
                seq = rec["seq"]
                with self._lock:
                    if seq in m.in_flight or seq <= self.acked.get(m.meter_id, -1):
                        continue
                    m.in_flight.add(seq)
                mid = self._publish(topic(m.meter_id, "interval"),
                                    interval_payload(m.meter_id, rec), qos=1)
                self._sent_interval(m.meter_id, seq, mid)
                self.published_intervals += 1

    def _intervals(self, m: _Meter, link: MeterLink) -> list[dict[str, int]]:
        """The closed intervals not yet acknowledged; none while the household has not
        consented to the supplier reading its load profile (the meter answers POLICY: its
        consent is the button held at power-up, docs/SECURITY.md "Roles")."""
        try:
            recs = read_profile(link, self.acked.get(m.meter_id, -1) + 1)
        except MeterError as e:
            if e.code != wire.E_POLICY:
                raise
            if not m.no_consent:
                m.no_consent = True
                self.say(f"meter {m.meter_id} on {m.port}: the household has not consented to "
                         "its load profile being read (PROFILE refused: POLICY); live values "
                         "only, no intervals, until it does (the button held 3 s at power-up)")
            return []
        if m.no_consent:
            m.no_consent = False
            self.say(f"meter {m.meter_id} on {m.port}: consent given; intervals follow")
        return recs

    def run(self) -> None:
        while not self._stop.is_set():
            t0 = time.monotonic()
            self.cycle()
            self._stop.wait(max(0.0, self.interval_s - (time.monotonic() - t0)))

    def stop(self) -> None:
        self._stop.set()

    def close(self) -> None:
        self.stop()
        for m in self.meters:
            self._drop_link(m)
        with contextlib.suppress(Exception):
            if self.connected:
                self.client.publish(BRIDGE_AVAILABILITY, "offline", qos=1,
                                    retain=True).wait_for_publish(2)
            self.client.disconnect()
        self.client.loop_stop()

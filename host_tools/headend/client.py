"""The head-end's side of the WAN link to one meter: authenticated requests over serial.

:class:`MeterLink` sends one command frame per request with the next counter from the
keystore, waits for the response whose ``ref`` is that counter, verifies it (MAC, direction,
a response counter above the last one seen) and decodes it: the answer to a command is only a
frame MAC'd by the meter with ref = the command's counter, and nothing else is taken for it.
A meter that rebooted may have reserved counters above ours: it answers REPLAY with the value
to resync above, and the link retries once from there - a command that changes the meter only
when the REPLAY proves it was not carried out (its counter above the meter's last changing
command), since a REPLAY also answers a genuine command that an attacker replayed after it ran
(docs/SECURITY.md, "The WAN: answers and counters"). Bytes on the wire are counted in both
directions (the bench's system tests report them).
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from typing import Any

import serial

from host_tools.headend import wire
from host_tools.headend.keystore import Keystore, MeterEntry
from host_tools.transport.serial import IN_USE, port_in_use, resolve_port

# A REPL answers Ctrl-B within milliseconds, on a pty or over USB; a running firmware not at
# all, so every link's open costs this much (watch opens one per meter per frame).
REPL_PROBE_S = 0.1
REPL_PROMPT = b">>> "


class LinkError(Exception):
    """The meter did not answer, or answered with something we must not accept."""


class Disconnected(LinkError):
    """The port went away under the link (a cable pulled, a board reset off the bus)."""


class ReplayedResponse(LinkError):
    """An authentic answer under an uplink counter not above the last one accepted."""


class MeterError(Exception):
    """The meter answered with an authenticated ERROR frame."""

    def __init__(self, code: int, detail: wire.ErrorDetail, text: str, ctr: int = 0,
                 changed: int | None = None) -> None:
        super().__init__(text)
        self.code = code
        self.detail = detail
        self.ctr = ctr  # the command's counter
        self.changed = changed  # REPLAY: the meter's last changing command (None: not said)


# Requests that only read: after a disconnect they are sent again (with a new counter) once the
# port is back. Anything that changes the meter is never repeated blindly: it may have been
# carried out before the answer was lost.
RETRY_SAFE = frozenset({wire.K_INFO, wire.K_READ, wire.K_PROFILE, wire.K_LOGS, wire.K_STATS,
                        wire.K_PUBKEY, wire.K_GROUPS, wire.K_CREDIT, wire.K_SWITCH_STATUS})

# Requests whose answers carry personal data, and so travel encrypted.
ENCRYPTED_ANSWERS = ({wire.K_READ, wire.K_PROFILE, wire.K_LOGS} | wire.LOPA_ENC_RESPONSE_KINDS
                     | wire.OFFSWITCH_ENC_RESPONSE_KINDS)


class MeterLink:
    def __init__(self, port: str, entry: MeterEntry, keystore: Keystore,
                 timeout: float = 5.0, role: int | None = None) -> None:
        self.port = resolve_port(port)
        self.entry = entry
        self.keystore = keystore
        # role None: each kind under the role the meter's policy gives it (wire.ROLE_OF_KIND);
        # a role: every request under that role's keys (a tool that is that role alone)
        self.role = role
        self.keys = wire.Keys.derive(entry.meter_id, entry.master)  # the operator's
        self._role_keys: dict[int, wire.Keys] = {}
        self.timeout = timeout
        self.tx_bytes = 0
        self.rx_bytes = 0
        self.ignored: list[bytes] = []  # non-frame lines the meter printed
        self._reader = wire.LineReader(on_text=self._text)
        self._abort = threading.Event()
        self._abort_why = ""
        self.ser = self._open()

    def _open(self) -> serial.Serial:
        # Every read waits at most 50 ms and every write at most `timeout`: nothing here can
        # hang; await_response bounds the whole wait for an answer. A port whose exclusive
        # lock another program holds (mpremote, meterctl flash) is refused before anything is
        # sent. The link takes no lock itself: a test or a tool may keep a link open, idle,
        # while a second one (the CLI) asks the same meter.
        if port_in_use(self.port):
            raise LinkError(IN_USE.format(port=self.port))
        try:
            ser = serial.Serial(self.port, 115200, timeout=0.05, write_timeout=self.timeout)
        except (serial.SerialException, OSError) as e:
            raise LinkError(f"{self.port}: cannot open ({e})") from None
        try:
            self._check_no_repl(ser)
        except BaseException:
            ser.close()
            raise
        return ser

    def _check_no_repl(self, ser: serial.Serial) -> None:
        """Refuse a port where a MicroPython REPL is open (another client, e.g. `mpremote
        exec`, interrupted the firmware and left it there): a frame typed into it would run as
        Python (issue 20: "SyntaxError: invalid syntax"). Ctrl-B makes a friendly REPL print
        its banner and ">>> " again, and a raw one change to the friendly REPL, which does the
        same (shared/runtime/pyexec.c, v1.28.0); the firmware's comm task drops it silently
        (firmware/tasks/comm.py: unlike Ctrl-C and Ctrl-A, no sealed notice)."""
        ser.reset_input_buffer()
        ser.write(b"\x02")
        ser.flush()
        got = b""
        deadline = time.monotonic() + REPL_PROBE_S
        while time.monotonic() < deadline and REPL_PROMPT not in got:
            got += ser.read(256)
        if REPL_PROMPT in got:
            raise LinkError(self._repl_open("no frame was sent"))

    def _repl_open(self, what: str) -> str:
        return (f"{self.port}: a MicroPython REPL is open (left by another client, e.g. "
                f"`mpremote exec`), so the meter firmware is not running; {what}. Restart the "
                f"firmware with `meterctl flash --port {self.port}` (it only soft-resets when "
                "the files are up to date)")

    def reconnect(self, wait: float) -> None:
        """Open the port again once it is back (a board plugged in again keeps its
        /dev/serial/by-id name); LinkError if it is not back within ``wait`` seconds."""
        with contextlib.suppress(Exception):
            self.ser.close()
        deadline = time.monotonic() + wait
        while True:
            try:
                self.ser = self._open()
                self._reader = wire.LineReader(on_text=self._text)
                return
            except LinkError:
                if time.monotonic() >= deadline:
                    raise LinkError(f"{self.port}: the meter was disconnected and its port did "
                                    f"not come back within {wait:g} s") from None
                time.sleep(0.2)

    def _text(self, line: bytes) -> None:
        self.ignored = [*self.ignored, line][-20:]

    def close(self) -> None:
        self.ser.close()

    def abort(self, why: str = "aborted") -> None:
        """From another thread: the request under way ends with Disconnected within one
        50-ms read. (Closing the port instead would free its file descriptor under that
        thread's read or write, and the number can go to a file another thread opens.)"""
        self._abort_why = why
        self._abort.set()

    def _check_abort(self) -> None:
        if self._abort.is_set():
            raise Disconnected(f"{self.port}: {self._abort_why}")

    def __enter__(self) -> MeterLink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- one request -------------------------------------------------------------------
    def role_for(self, kind: int) -> int:
        return wire.role_of(kind) if self.role is None else self.role

    def keys_for(self, role: int) -> wire.Keys:
        """This meter's keys of ``role`` (the operator's: self.keys)."""
        if role == wire.ROLE_OPERATOR:
            return self.keys
        if role not in self._role_keys:
            self._role_keys[role] = wire.Keys.of_role_key(
                self.entry.meter_id, self.entry.role_key(role), role)
        return self._role_keys[role]

    def request(self, kind: int, args: dict[str, Any] | None = None) -> Any:
        """Send a command and return its decoded JSON answer; raise MeterError on ERROR."""
        resp = self._robust(kind, json.dumps(args).encode() if args else b"")
        return json.loads(resp.payload) if resp.payload else None

    def request_raw(self, kind: int, payload: bytes) -> bytes:
        """Send a command with a binary payload (the LoPA kinds) and return the decrypted
        answer payload; raise MeterError on ERROR. Resyncs once on REPLAY, as request()."""
        return self._robust(kind, payload).payload

    def _robust(self, kind: int, body: bytes) -> wire.Frame:
        # A disconnect: read-only requests are sent again once the port is back; the others
        # are not, and the error says that it may have been carried out.
        try:
            return self._resyncing(kind, body)
        except Disconnected as e:
            name = wire.KIND_NAMES.get(kind, hex(kind))
            if kind not in RETRY_SAFE:
                raise Disconnected(f"{e}; {name} was not sent again: it may have been carried "
                                   "out, so check the meter before repeating it") from None
            self.reconnect(self.timeout)
            try:
                return self._resyncing(kind, body)
            except LinkError as e2:
                raise LinkError(f"{e}; reconnected and sent {name} again, but: {e2}") from None

    def _resyncing(self, kind: int, body: bytes) -> wire.Frame:
        try:
            return self._exchange(kind, body)
        except MeterError as e:
            if e.code != wire.E_REPLAY or not isinstance(e.detail, int):
                raise
            if kind not in RETRY_SAFE and (e.changed is None or e.changed >= e.ctr):
                # The meter may have carried this command out: our frame, replayed after it
                # ran, gets the same REPLAY as a counter below the meter's marks. Next time,
                # a counter above them; this command is not sent again.
                self.keystore.next_down_ctr(self.entry.meter_id, e.detail, self.role_for(kind))
                name = wire.KIND_NAMES.get(kind, hex(kind))
                raise MeterError(e.code, e.detail, f"meter {self.entry.meter_id}: {name} "
                                 f"(counter {e.ctr}) answered REPLAY, and the meter's last "
                                 f"command that changes it has counter {e.changed}: it may "
                                 f"have been carried out, so it was not sent again; check the "
                                 f"meter before repeating it", e.ctr, e.changed) from None
            # The meter reserved counters across a reboot: continue above them.
            return self._exchange(kind, body, at_least=e.detail)

    def _exchange(self, kind: int, body: bytes, at_least: int = 0) -> wire.Frame:
        role = self.role_for(kind)
        ctr = self.keystore.next_down_ctr(self.entry.meter_id, at_least, role)
        frame = wire.seal(self.keys_for(role), False, kind, ctr, 0, body)
        self.send_line(wire.to_line(frame))
        resp = self.await_response(ctr, role)
        if resp.kind == wire.K_ERROR:
            code, detail = wire.parse_error(resp.payload)
            raise MeterError(code, detail, f"meter {self.entry.meter_id}: "
                             f"{wire.KIND_NAMES.get(kind, hex(kind))} refused: "
                             f"{wire.describe_error(resp.payload)}", ctr,
                             wire.replay_changed(resp.payload))
        if resp.kind != kind:
            raise LinkError(f"meter {self.entry.meter_id}: answered kind {resp.kind_name} "
                            f"to {wire.KIND_NAMES.get(kind, hex(kind))}")
        if kind in ENCRYPTED_ANSWERS and not resp.encrypted:
            raise LinkError(f"meter {self.entry.meter_id}: personal data sent in clear")
        return resp

    def send_line(self, line: bytes) -> None:
        self._check_abort()
        try:
            self.ser.write(line)
            self.ser.flush()
        except (serial.SerialException, OSError) as e:
            raise Disconnected(f"{self.port}: meter disconnected ({e})") from None
        self.tx_bytes += len(line)

    def await_response(self, ctr: int, role: int = wire.ROLE_OPERATOR) -> wire.Frame:
        """The meter's answer to our command ``ctr`` of ``role``: MAC'd under that role's
        keys (roles count on their own, so only the keys tell two roles' answers apart)."""
        keys = self.keys_for(role)
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            self._check_abort()
            try:
                # What has arrived, or else the first byte as soon as it comes: pyserial's
                # read(n) waits for all n bytes or the timeout, so a fixed size cost every
                # answer the whole 50 ms (docs/BENCH-sim.md, "WAN round trip").
                data = self.ser.read(self.ser.in_waiting or 1)
            except (serial.SerialException, OSError) as e:
                raise Disconnected(f"{self.port}: meter disconnected while waiting for the "
                                   f"answer ({e})") from None
            if not data:
                continue
            self.rx_bytes += len(data)
            for line in self._reader.feed(data):
                try:
                    f = wire.open_frame(keys, True, wire.from_line(line))
                except wire.WireError:
                    continue  # not for us, or forged: ignored as the meter ignores ours
                if f.ref != ctr:
                    continue  # a late answer to an earlier request
                if not self.keystore.accept_up_ctr(self.entry.meter_id, f.ctr):
                    raise ReplayedResponse(f"meter {self.entry.meter_id}: replayed "
                                           f"response (counter {f.ctr})")
                return f
        if any(REPL_PROMPT.strip() in line or b"SyntaxError" in line for line in self.ignored):
            # a REPL opened after this link's check (or too slow to answer it)
            raise LinkError(self._repl_open("a frame reached it"))
        hint = ""
        if self.ignored:
            hint = f"; it printed: {self.ignored[-1][:80].decode(errors='replace')!r}"
        raise LinkError(f"{self.port}: meter {self.entry.meter_id} did not answer within "
                        f"{self.timeout:g} s (is the firmware running?){hint}")


def open_link(port: str, keystore: Keystore, meter_id: int | None = None,
              timeout: float = 5.0, role: int | None = None) -> MeterLink:
    """A link to the meter on ``port`` (the one provisioned there, or ``meter_id``); role: as
    MeterLink's."""
    entry = keystore.find(resolve_port(port), meter_id)
    return MeterLink(port, entry, keystore, timeout, role)

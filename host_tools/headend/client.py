"""The head-end's side of the WAN link to one meter: authenticated requests over serial.

:class:`MeterLink` sends one command frame per request with the next counter from the
keystore, waits for the response whose ``ref`` is that counter, verifies it (MAC, direction,
a response counter above the last one seen) and decodes it. A meter that rebooted may have
reserved counters above ours: it answers REPLAY with the value to resync above, and the link
retries once from there. Bytes on the wire are counted in both directions (the bench's
system tests report them).
"""

from __future__ import annotations

import json
import time
from typing import Any

import serial

from host_tools.headend import wire
from host_tools.headend.keystore import Keystore, MeterEntry
from host_tools.transport.serial import resolve_port


class LinkError(Exception):
    """The meter did not answer, or answered with something we must not accept."""


class MeterError(Exception):
    """The meter answered with an authenticated ERROR frame."""

    def __init__(self, code: int, detail: wire.ErrorDetail, text: str) -> None:
        super().__init__(text)
        self.code = code
        self.detail = detail


# Requests whose answers carry personal data, and so travel encrypted.
ENCRYPTED_ANSWERS = ({wire.K_READ, wire.K_PROFILE, wire.K_LOGS} | wire.LOPA_ENC_RESPONSE_KINDS
                     | wire.OFFSWITCH_ENC_RESPONSE_KINDS)


class MeterLink:
    def __init__(self, port: str, entry: MeterEntry, keystore: Keystore,
                 timeout: float = 5.0) -> None:
        self.port = resolve_port(port)
        self.entry = entry
        self.keystore = keystore
        self.keys = wire.Keys.derive(entry.meter_id, entry.master)
        self.timeout = timeout
        self.tx_bytes = 0
        self.rx_bytes = 0
        self.ignored: list[bytes] = []  # non-frame lines the meter printed
        self._reader = wire.LineReader(on_text=self._text)
        try:
            self.ser = serial.Serial(self.port, 115200, timeout=0.05, write_timeout=timeout)
        except (serial.SerialException, OSError) as e:
            raise LinkError(f"{self.port}: cannot open ({e})") from None

    def _text(self, line: bytes) -> None:
        self.ignored = [*self.ignored, line][-20:]

    def close(self) -> None:
        self.ser.close()

    def __enter__(self) -> MeterLink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- one request -------------------------------------------------------------------
    def request(self, kind: int, args: dict[str, Any] | None = None) -> Any:
        """Send a command and return its decoded JSON answer; raise MeterError on ERROR."""
        body = json.dumps(args).encode() if args else b""
        try:
            return self._request(kind, body)
        except MeterError as e:
            if e.code == wire.E_REPLAY and isinstance(e.detail, int):
                # The meter reserved counters across a reboot: continue above them.
                return self._request(kind, body, at_least=e.detail)
            raise

    def request_raw(self, kind: int, payload: bytes) -> bytes:
        """Send a command with a binary payload (the LoPA kinds) and return the decrypted
        answer payload; raise MeterError on ERROR. Resyncs once on REPLAY, as request()."""
        try:
            return self._exchange(kind, payload).payload
        except MeterError as e:
            if e.code == wire.E_REPLAY and isinstance(e.detail, int):
                return self._exchange(kind, payload, at_least=e.detail).payload
            raise

    def _request(self, kind: int, body: bytes, at_least: int = 0) -> Any:
        resp = self._exchange(kind, body, at_least)
        return json.loads(resp.payload) if resp.payload else None

    def _exchange(self, kind: int, body: bytes, at_least: int = 0) -> wire.Frame:
        ctr = self.keystore.next_down_ctr(self.entry.meter_id, at_least)
        frame = wire.seal(self.keys, False, kind, ctr, 0, body)
        self.send_line(wire.to_line(frame))
        resp = self.await_response(ctr)
        if resp.kind == wire.K_ERROR:
            code, detail = wire.parse_error(resp.payload)
            raise MeterError(code, detail, f"meter {self.entry.meter_id}: "
                             f"{wire.KIND_NAMES.get(kind, hex(kind))} refused: "
                             f"{wire.describe_error(resp.payload)}")
        if resp.kind != kind:
            raise LinkError(f"meter {self.entry.meter_id}: answered kind {resp.kind_name} "
                            f"to {wire.KIND_NAMES.get(kind, hex(kind))}")
        if kind in ENCRYPTED_ANSWERS and not resp.encrypted:
            raise LinkError(f"meter {self.entry.meter_id}: personal data sent in clear")
        return resp

    def send_line(self, line: bytes) -> None:
        try:
            self.ser.write(line)
            self.ser.flush()
        except (serial.SerialException, OSError) as e:
            raise LinkError(f"{self.port}: meter disconnected ({e})") from None
        self.tx_bytes += len(line)

    def await_response(self, ctr: int) -> wire.Frame:
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            try:
                data = self.ser.read(4096)
            except (serial.SerialException, OSError) as e:
                raise LinkError(f"{self.port}: meter disconnected ({e})") from None
            if not data:
                continue
            self.rx_bytes += len(data)
            for line in self._reader.feed(data):
                try:
                    f = wire.open_frame(self.keys, True, wire.from_line(line))
                except wire.WireError:
                    continue  # not for us, or forged: ignored as the meter ignores ours
                if f.ref != ctr:
                    continue  # a late answer to an earlier request
                if not self.keystore.accept_up_ctr(self.entry.meter_id, f.ctr):
                    raise LinkError(f"meter {self.entry.meter_id}: replayed response "
                                    f"(counter {f.ctr})")
                return f
        hint = ""
        if self.ignored:
            hint = f"; it printed: {self.ignored[-1][:80].decode(errors='replace')!r}"
        raise LinkError(f"{self.port}: meter {self.entry.meter_id} did not answer within "
                        f"{self.timeout:g} s (is the firmware running?){hint}")


def open_link(port: str, keystore: Keystore, meter_id: int | None = None,
              timeout: float = 5.0) -> MeterLink:
    """A link to the meter on ``port`` (the one provisioned there, or ``meter_id``)."""
    entry = keystore.find(resolve_port(port), meter_id)
    return MeterLink(port, entry, keystore, timeout)

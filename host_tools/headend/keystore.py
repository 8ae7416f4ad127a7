"""The head-end's keystore: each provisioned meter's id, WAN master key and counters.

Roles (docs/SECURITY.md "Roles"): each meter's entry holds one key per WAN role (operator: the
master; aggregator and supplier: their role keys, firmware/lib/wan.py role_master) and one
command counter per role; the tools send each kind under the role the meter's policy gives it
(wire.ROLE_OF_KIND).

One JSON file, mode 0600, at ``$METERCTL_KEYSTORE`` or
``$XDG_CONFIG_HOME/meterctl/keystore.json`` (default ``~/.config/meterctl/keystore.json``);
``--keystore`` picks another. It holds every meter's master key: a keystore that its group or
others may read or write is refused (chmod 600 fixes it), and no key is ever in a repr, a log
line or an error message. Every change is a locked read-modify-write (``flock`` on a
sibling lock file) and an atomic replace, so concurrent ``meterctl`` processes and power
cuts never lose a counter: a lost command counter could make the head-end reuse one.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from host_tools.headend import wire


def down_ctr_field(role: int) -> str:
    """The entry's field with role ``role``'s last command counter ("down_ctr": the
    operator's, as before roles)."""
    if not 0 <= role < len(wire.ROLE_NAMES):
        raise ValueError(f"unknown role {role}")
    return "down_ctr" if role == wire.ROLE_OPERATOR else f"down_ctr_{wire.ROLE_NAMES[role]}"


class KeystoreError(Exception):
    """The keystore is unreadable, or lacks what was asked for."""


def default_path() -> Path:
    env = os.environ.get("METERCTL_KEYSTORE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "meterctl" / "keystore.json"


@dataclass
class MeterEntry:
    meter_id: int
    master: bytes = field(repr=False)  # secrets never reach a repr, a log or a message
    down_ctr: int = 0  # the last command counter used
    up_ctr: int = 0  # the highest response counter accepted
    port: str = ""  # where it was last seen
    provisioned: str = ""
    os_key: bytes = field(default=b"", repr=False)  # the off-switch's own key, b"" if none
    os_ctr: int = 0  # the last off-switch command counter used
    # the aggregator's and the supplier's keys, by role name (from before roles: derived)
    role_keys: dict[str, bytes] = field(default_factory=dict, repr=False)

    def role_key(self, role: int) -> bytes:
        """The 32-byte key of WAN role ``role`` (wire.ROLE_*) for this meter."""
        if role == wire.ROLE_OPERATOR:
            return self.master
        key = self.role_keys.get(wire.ROLE_NAMES[role])
        return key if key else wire.role_master(self.meter_id, self.master, role)

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "master": self.master.hex(), "down_ctr": self.down_ctr, "up_ctr": self.up_ctr,
            "port": self.port, "provisioned": self.provisioned,
            "role_keys": {r: wire.role_master(self.meter_id, self.master, i).hex()
                          for i, r in enumerate(wire.ROLE_NAMES) if i}}
        d["role_keys"].update({r: k.hex() for r, k in self.role_keys.items()})
        if self.os_key:
            d["os_key"] = self.os_key.hex()
            d["os_ctr"] = self.os_ctr
        return d

    @classmethod
    def from_json(cls, meter_id: int, d: dict[str, Any]) -> MeterEntry:
        return cls(meter_id, bytes.fromhex(d["master"]), int(d.get("down_ctr", 0)),
                   int(d.get("up_ctr", 0)), str(d.get("port", "")), str(d.get("provisioned", "")),
                   bytes.fromhex(d.get("os_key", "")), int(d.get("os_ctr", 0)),
                   {str(r): bytes.fromhex(k) for r, k in d.get("role_keys", {}).items()})


def check_private(path: Path, mode: int) -> None:
    """Refuse a keystore whose group or others have any permission on it."""
    if mode & 0o077:
        raise KeystoreError(f"{path}: its permissions ({stat.filemode(mode)}) let others read "
                            "or change the meters' master keys; refusing to use it. Make it "
                            f"private: chmod 600 {path}")


class Keystore:
    def __init__(self, path: Path | None = None) -> None:
        self.path = (path or default_path()).expanduser()

    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict[str, Any]]:
        """The whole file, locked; changes to the dict are written back atomically."""
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        lock = os.open(str(self.path) + ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            data = self._read()
            before = json.dumps(data, sort_keys=True)
            yield data
            if json.dumps(data, sort_keys=True) != before:
                self._write(data)
        finally:
            os.close(lock)

    def _read(self) -> dict[str, Any]:
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return {"version": 1, "meters": {}}
        except OSError as e:
            raise KeystoreError(f"{self.path}: cannot read ({e.strerror})") from None
        try:
            check_private(self.path, os.fstat(fd).st_mode)
            with os.fdopen(fd, "r") as f:
                fd = -1
                text = f.read()
        except OSError as e:
            raise KeystoreError(f"{self.path}: cannot read ({e.strerror})") from None
        finally:
            if fd >= 0:
                os.close(fd)
        try:
            data = json.loads(text)
            if not isinstance(data, dict) or not isinstance(data.get("meters"), dict):
                raise ValueError("no 'meters' table")
        except ValueError as e:
            raise KeystoreError(f"{self.path}: not a meterctl keystore ({e})") from None
        return data

    def _write(self, data: dict[str, Any]) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, self.path)

    # -- queries -------------------------------------------------------------------
    def meters(self) -> list[MeterEntry]:
        with self._locked() as data:
            return [MeterEntry.from_json(int(k), v) for k, v in data["meters"].items()]

    def get(self, meter_id: int) -> MeterEntry | None:
        with self._locked() as data:
            d = data["meters"].get(str(meter_id))
            return MeterEntry.from_json(meter_id, d) if d else None

    def find(self, port: str | None = None, meter_id: int | None = None) -> MeterEntry:
        """The meter to talk to: by id, else the one last seen on ``port``."""
        if meter_id is not None:
            e = self.get(meter_id)
            if e is None:
                raise KeystoreError(f"meter {meter_id} is not in {self.path}")
            return e
        found = [e for e in self.meters() if port and e.port == port]
        if len(found) == 1:
            return found[0]
        if not found:
            raise KeystoreError(f"no provisioned meter was last seen on {port} (keystore "
                                f"{self.path}); run `meterctl provision --port {port}` or "
                                "pass --meter ID")
        raise KeystoreError(f"several meters were last seen on {port}: "
                            f"{', '.join(str(e.meter_id) for e in found)}; pass --meter ID")

    # -- changes -------------------------------------------------------------------
    def put(self, entry: MeterEntry) -> None:
        with self._locked() as data:
            if entry.port:
                # A port holds one board at a time.
                for k, v in data["meters"].items():
                    if v.get("port") == entry.port and k != str(entry.meter_id):
                        v["port"] = ""
            data["meters"][str(entry.meter_id)] = entry.to_json()

    def next_down_ctr(self, meter_id: int, at_least: int = 0,
                      role: int = wire.ROLE_OPERATOR) -> int:
        """Reserve the next command counter of ``role`` (each role counts on its own, as the
        meter does: strictly increasing, persisted before use)."""
        name = down_ctr_field(role)
        with self._locked() as data:
            d = data["meters"].get(str(meter_id))
            if d is None:
                raise KeystoreError(f"meter {meter_id} is not in {self.path}")
            ctr = max(int(d.get(name, 0)), at_least) + 1
            if ctr > 0xFFFFFFFF:
                raise KeystoreError(f"meter {meter_id}: command counter exhausted; re-provision")
            d[name] = ctr
            return ctr

    def resync_down(self, meter_id: int, reserved: int | list[int]) -> None:
        """Continue each role's counter above what the meter reserved (its counter file's
        "down": one int from before roles, the operator's; else a list by role id)."""
        marks = [reserved] if isinstance(reserved, int) else list(reserved)
        for role, mark in enumerate(marks[:len(wire.ROLE_NAMES)]):
            if int(mark):
                self.next_down_ctr(meter_id, at_least=int(mark), role=role)

    def next_os_ctr(self, meter_id: int, at_least: int = 0) -> int:
        """Reserve the next off-switch command counter (as next_down_ctr, for the off-switch's
        own counter)."""
        with self._locked() as data:
            d = data["meters"].get(str(meter_id))
            if d is None or not d.get("os_key"):
                raise KeystoreError(f"meter {meter_id} has no off-switch key in {self.path}; "
                                    "run `meterctl provision` again")
            ctr = max(int(d.get("os_ctr", 0)), at_least) + 1
            if ctr > 0xFFFFFFFF:
                raise KeystoreError(f"meter {meter_id}: off-switch counter exhausted; "
                                    "re-provision")
            d["os_ctr"] = ctr
            return ctr

    def accept_up_ctr(self, meter_id: int, ctr: int) -> bool:
        """Record a response counter; False if it is not above the last one (a replay)."""
        with self._locked() as data:
            d = data["meters"][str(meter_id)]
            if ctr <= int(d.get("up_ctr", 0)):
                return False
            d["up_ctr"] = ctr
            return True

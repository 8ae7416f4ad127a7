"""The real mpremote (and ampy) against a board: the clients a MicroPython user has."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

from .conftest import mpremote


def test_exec_prints_micropython(port: str) -> None:
    r = mpremote(port, "exec", "import sys; print(sys.implementation.name)")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "micropython"


def test_eval(port: str) -> None:
    r = mpremote(port, "eval", "6 * 7")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "42"


def test_exec_error_reports_traceback(port: str) -> None:
    r = mpremote(port, "exec", "raise ValueError('boom')")
    assert r.returncode != 0
    assert "ValueError: boom" in r.stdout + r.stderr


def test_run_local_script(port: str, tmp_path: Path) -> None:
    script = tmp_path / "hello.py"
    script.write_text("import sys\nprint('ran on', sys.implementation.name, 2 ** 70)\n")
    r = mpremote(port, "run", str(script))
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"ran on micropython {2 ** 70}"


def test_fs_roundtrip(port: str, tmp_path: Path) -> None:
    data = bytes(range(256)) * 40 + b"\x03\x04\r\n\x01tail"  # every byte value, 10 KB
    src = tmp_path / "blob.bin"
    src.write_bytes(data)
    back = tmp_path / "back.bin"
    r = mpremote(port, "fs", "cp", str(src), ":blob.bin", "+", "fs", "ls", "+",
                 "fs", "sha256sum", ":blob.bin", "+", "fs", "cp", ":blob.bin", str(back))
    assert r.returncode == 0, r.stderr
    assert back.read_bytes() == data
    assert hashlib.sha256(data).hexdigest() in r.stdout
    # ls shows the real size (the VM's own VfsPosix would say 0)
    assert any(line.split() == [str(len(data)), "blob.bin"] for line in r.stdout.splitlines())
    r = mpremote(port, "fs", "rm", ":blob.bin", "+", "fs", "ls")
    assert r.returncode == 0, r.stderr
    listing = r.stdout.split("ls :", 1)[1]
    assert "blob.bin" not in listing


def test_soft_reset_clears_state(port: str) -> None:
    r = mpremote(port, "exec", "marker = 123", "+", "soft-reset", "+",
                 "exec", "print('marker' in globals())")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "False"


def test_mount_local_dir(port: str, tmp_path: Path) -> None:
    (tmp_path / "mod_on_host.py").write_text("VALUE = 'from the host'\n")
    r = mpremote(port, "mount", str(tmp_path), "exec",
                 "import os, mod_on_host; print(os.getcwd(), mod_on_host.VALUE)")
    assert r.returncode == 0, r.stderr
    assert "/remote from the host" in r.stdout


def test_ctrl_c_interrupts_raw_paste(port: str) -> None:
    """A busy loop sent by raw-paste is stopped by the next client's Ctrl-C."""
    try:
        mpremote(port, "exec", "while True:\n    pass", timeout=2)
    except subprocess.TimeoutExpired:
        pass
    r = mpremote(port, "exec", "print('alive')", timeout=20)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "alive"


def test_ampy_ls(port: str) -> None:
    mpremote(port, "fs", "touch", ":ampy_probe.txt")
    r = subprocess.run([sys.executable, "-m", "ampy.cli", "--port", port, "ls"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "/ampy_probe.txt" in r.stdout.split()
    mpremote(port, "fs", "rm", ":ampy_probe.txt")

"""MicroPython built-ins that the firmware's pure modules use, for running them on CPython.

The host's tests import firmware/lib modules (the WAN codec, LoPA) on CPython to cross-check them
against independent code. MicroPython's ``cryptolib`` has no CPython counterpart: :func:`install`
registers one, on ``cryptography``, with the calls the firmware makes (AES-128 ECB,
``cryptolib.aes(key, 1).encrypt(src[, dst])``). The meter never loads this module.
"""

from __future__ import annotations

import sys
import types
from typing import Any

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes


class _Aes:
    """``cryptolib.aes(key, 1)``: ECB mode, encryption."""

    def __init__(self, key: bytes, mode: int) -> None:
        if mode != 1:
            raise ValueError("only ECB (mode 1) is provided")
        self._enc = Cipher(algorithms.AES(bytes(key)), modes.ECB()).encryptor()

    def encrypt(self, src: Any, dst: Any = None) -> bytes | None:
        out = self._enc.update(bytes(src))
        if dst is None:
            return out
        dst[:] = out
        return None


def install() -> None:
    """Make ``import cryptolib`` work on CPython (idempotent)."""
    if "cryptolib" not in sys.modules:
        mod = types.ModuleType("cryptolib")
        mod.aes = _Aes  # type: ignore[attr-defined]
        sys.modules["cryptolib"] = mod

"""python -m host_tools.emu COMMAND [--board m0plus|m4|m33|rp2040]

toolchain   apt-get install the cross compiler and QEMU, only what is missing
build       build the board's MicroPython (cached); prints the image's path
run         boot the board under QEMU; prints its pty (mpremote connect PTY) and waits
run-bench   C1-C5, C13/C14, a metrology tick beside Elster's figures (--update-doc docs/BENCH.md)
summary     one table from run-bench --json files: ours, Elster's, the limit, both ratios
c6          the whole meter's CPU share (C6) on the emulated M0+: --seconds 60 --members 50
x25519      one X25519 (RFC 7748 vector) in instructions or cycles, machine code and pure Python
heap32      heap bytes of firmware modules and objects, 32-bit board vs the 64-bit virtual board
gen-x25519  regenerate firmware/lib/x25519_thumb.py and x25519_v7m.py (ARMv6-M, ARMv7E-M)
            from host_tools/emu/x25519_gen.py and x25519_v7m_gen.py
"""

from __future__ import annotations

import argparse
import sys
import time

from host_tools.emu.build import BOARDS


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "run-bench":
        from host_tools.emu.bench import main as bench_main

        return bench_main(argv[1:])
    if argv and argv[0] == "x25519":
        from host_tools.emu.bench import x25519_main

        return x25519_main(argv[1:])
    if argv and argv[0] == "summary":
        from host_tools.emu.summary import main as summary_main

        return summary_main(argv[1:])
    if argv and argv[0] == "c6":
        from host_tools.emu.c6 import main as c6_main

        return c6_main(argv[1:])
    if argv and argv[0] == "heap32":
        from host_tools.emu.heap32 import main as heap32_main

        return heap32_main(argv[1:])
    ap = argparse.ArgumentParser(prog="python -m host_tools.emu")
    ap.add_argument("command", choices=["toolchain", "build", "run", "gen-x25519", "run-bench",
                                        "x25519"])
    ap.add_argument("--board", default="m0plus", choices=list(BOARDS))
    args = ap.parse_args(argv)
    from host_tools.emu.build import EmuError

    try:
        if args.command == "toolchain":
            from host_tools.emu.build import ensure_toolchain

            ensure_toolchain()
        elif args.command == "build":
            from host_tools.emu.build import build

            print(build(args.board))
        elif args.command == "gen-x25519":
            from host_tools.emu import x25519_gen, x25519_v7m_gen

            for gen in (x25519_gen, x25519_v7m_gen):
                n = gen.generate()
                print(f"wrote {gen.OUT} ({n} bytes of machine code)")
        else:
            import signal

            from host_tools.emu.run import Emulator

            # SIGTERM ends like Ctrl-C: through the with block, which stops QEMU.
            signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
            with Emulator(args.board, quiet=False) as emu:
                print(f"{emu.spec.label}: UART on {emu.port} (mpremote connect {emu.port}); "
                      "Ctrl-C stops it", flush=True)
                while emu.proc is not None and emu.proc.poll() is None:
                    time.sleep(0.5)
    except EmuError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())

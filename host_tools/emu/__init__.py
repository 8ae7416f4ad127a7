"""Emulated Cortex-M boards: MicroPython's VM built for the target's instruction set from
registry packages (build), run under QEMU with its UART on a pty (run), and the firmware's
timed code measured on them in emulated instructions (bench)."""

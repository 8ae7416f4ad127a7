# Emulated Cortex-M3: ARMv7-M without the DSP extension or an FPU, run on QEMU's Cortex-M3
# model (machine "mps2-an385"). Not a target of this project: it is the core that reports
# armv7em like a Cortex-M4 without FPU but has no UMAAL, so the tests check on it that
# x25519.py leaves the UMAAL code alone.
CFLAGS_CPU = -mcpu=cortex-m3 -mfloat-abi=soft
BOARD_SRC_C = hal_mps2.c
LDSCRIPT = mps2.ld

# Emulated Cortex-M33 (RP2350 class, the Pico 2): ARMv8-M Mainline with the DSP extension and
# the single-precision FPU, run on QEMU's Cortex-M33 model (machine "mps2-an505"), in the
# Secure state it resets into.
CFLAGS_CPU = -mcpu=cortex-m33 -mfpu=fpv5-sp-d16 -mfloat-abi=hard
BOARD_SRC_C = hal_an505.c
LDSCRIPT = an505.ld

# Emulated Cortex-M0+ (RP2040 class): ARMv6-M code, run on QEMU's Cortex-M0 model
# (machine "microbit", an nRF51 with its RAM and flash enlarged).
CFLAGS_CPU = -mcpu=cortex-m0plus -mfloat-abi=soft
BOARD_SRC_C = hal_nrf51.c
LDSCRIPT = nrf51.ld

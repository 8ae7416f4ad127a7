# Emulated RP2040 under rp2040js (an RP2040 model that counts Cortex-M0+ cycles): the same
# ARMv6-M code as emulated_m0plus, linked for the RP2040's XIP flash and 264 KB SRAM, with
# its PL011 UART0 and microsecond timer.
CFLAGS_CPU = -mcpu=cortex-m0plus -mfloat-abi=soft
BOARD_SRC_C = hal_rp2040.c
LDSCRIPT = rp2040.ld

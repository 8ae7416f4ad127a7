# Emulated Cortex-M4F (STM32F4 class): ARMv7E-M code with the single-precision FPU, run on
# QEMU's Cortex-M4 model (machine "mps2-an386").
CFLAGS_CPU = -mcpu=cortex-m4 -mfpu=fpv4-sp-d16 -mfloat-abi=hard
BOARD_SRC_C = hal_mps2.c
LDSCRIPT = mps2.ld

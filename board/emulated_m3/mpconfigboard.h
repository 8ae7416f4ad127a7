// Emulated Cortex-M3 (ARMv7-M, no DSP, no FPU: sys.implementation._mpy says armv7em), for the
// tests of x25519.py's choice of code only; converted at 25 MHz, the AN385's clock.
#define MICROPY_HW_BOARD_NAME   "emulated Cortex-M3 (QEMU mps2-an385, zero-wait flash)"
#define MICROPY_HW_CPU_NAME     "ARMv7-M"
#define MICROPY_HW_NOMINAL_HZ   (25000000)
#define MICROPY_EMIT_THUMB_ARMV7M       (1)
#define MICROPY_FLOAT_IMPL              (MICROPY_FLOAT_IMPL_FLOAT)

// CMSDK APB timer on the 25 MHz system clock: 40 ns of virtual time per count.
#define HAL_TIMER_NS_NUM        (40u)
#define HAL_TIMER_NS_DEN        (1u)

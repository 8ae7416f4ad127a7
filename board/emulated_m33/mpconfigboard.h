// Emulated Cortex-M33: the RP2350's instruction set (ARMv8-M Mainline + DSP + FPv5-SP, so
// sys.implementation._mpy says armv7emsp, as on a Pico 2), converted at 150 MHz (the RP2350's
// nominal clock), with a 192 KB heap.
#define MICROPY_HW_BOARD_NAME   "emulated Cortex-M33 (QEMU mps2-an505, zero-wait flash)"
#define MICROPY_HW_CPU_NAME     "ARMv8-M"
#define MICROPY_HW_NOMINAL_HZ   (150000000)
#define MICROPY_EMIT_THUMB_ARMV7M       (1)
#define MICROPY_EMIT_INLINE_THUMB_FLOAT (1)

// The IoTKit's CMSDK APB timer runs on the AN505's 20 MHz main clock: 50 ns of virtual time
// per count.
#define HAL_TIMER_NS_NUM        (50u)
#define HAL_TIMER_NS_DEN        (1u)

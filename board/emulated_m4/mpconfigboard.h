// Emulated Cortex-M4F: the STM32F4's instruction set (ARMv7E-M + FPv4-SP), converted at
// 168 MHz (STM32F405, the Pyboard v1.1), with a 192 KB heap.
#define MICROPY_HW_BOARD_NAME   "emulated Cortex-M4F (QEMU mps2-an386, zero-wait flash)"
#define MICROPY_HW_CPU_NAME     "ARMv7E-M"
#define MICROPY_HW_NOMINAL_HZ   (168000000)
#define MICROPY_EMIT_THUMB_ARMV7M       (1)
#define MICROPY_EMIT_INLINE_THUMB_FLOAT (1)

// CMSDK APB timer on the 25 MHz system clock: 40 ns of virtual time per count.
#define HAL_TIMER_NS_NUM        (40u)
#define HAL_TIMER_NS_DEN        (1u)

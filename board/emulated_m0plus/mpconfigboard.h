// Emulated Cortex-M0+: the RP2040's instruction set (ARMv6-M), its nominal clock and a
// 192 KB heap. QEMU runs it on its Cortex-M0 model (same ISA as the M0+).
#define MICROPY_HW_BOARD_NAME   "emulated Cortex-M0+ (QEMU cortex-m0, zero-wait flash)"
#define MICROPY_HW_CPU_NAME     "ARMv6-M"
#define MICROPY_HW_NOMINAL_HZ   (125000000)

// nRF51 TIMER0 at 16 MHz: 62.5 ns of virtual time per count.
#define HAL_TIMER_NS_NUM        (125u)
#define HAL_TIMER_NS_DEN        (2u)

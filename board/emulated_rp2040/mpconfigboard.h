// Emulated RP2040 (rp2040js cycle model at 125 MHz): cycles, not instructions, are counted.
#define MICROPY_HW_BOARD_NAME   "emulated RP2040 (rp2040js cycle model, zero-wait flash)"
#define MICROPY_HW_CPU_NAME     "ARMv6-M"
#define MICROPY_HW_NOMINAL_HZ   (125000000)

// The RP2040 timer counts microseconds of simulated time (125 cycles at 125 MHz).
#define HAL_TIMER_NS_NUM        (1000u)
#define HAL_TIMER_NS_DEN        (1u)
// emu.count() unit: one cycle at 125 MHz is 8 ns.
#define EMU_COUNT_NS            (8u)
#define EMU_COUNT_UNIT          "cycles"

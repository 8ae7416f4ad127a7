#ifndef EMU_MPHALPORT_H
#define EMU_MPHALPORT_H

#include <stdint.h>
#include "py/mpconfig.h"

// Virtual time since boot in nanoseconds: exactly the count of guest instructions
// executed, under `qemu-system-arm -icount shift=0` (to the timer's resolution).
uint64_t emu_time_ns(void);

// The timer's 64-bit count (HAL_TIMER_NS_NUM / HAL_TIMER_NS_DEN ns each).
uint64_t emu_timer_count(void);

static inline mp_uint_t mp_hal_ticks_ms(void) {
    return (mp_uint_t)(emu_time_ns() / 1000000u);
}
#if (1000u * HAL_TIMER_NS_DEN) % HAL_TIMER_NS_NUM == 0
// A whole number of counts a microsecond (the M0+ board's 16, the RP2040's 1): ticks_us is
// the count shifted (for a power of two), as cheap as a Pico's time_us_32() (ports/rp2/
// mphalport.h, v1.28.0): the whole meter calls it at every step (host_tools/emu/c6.py), and a
// 64-bit software division by 1000 cost the M0+ about 880 instructions a call
static inline mp_uint_t mp_hal_ticks_us(void) {
    return (mp_uint_t)(emu_timer_count() / ((1000u * HAL_TIMER_NS_DEN) / HAL_TIMER_NS_NUM));
}
#else
static inline mp_uint_t mp_hal_ticks_us(void) {
    return (mp_uint_t)(emu_time_ns() / 1000u);
}
#endif
// "CPU ticks": emulated instructions (low 32 bits).
static inline mp_uint_t mp_hal_ticks_cpu(void) {
    return (mp_uint_t)emu_time_ns();
}
static inline uint64_t mp_hal_time_ns(void) {
    return emu_time_ns();
}
void mp_hal_delay_ms(mp_uint_t ms);
void mp_hal_delay_us(mp_uint_t us);
#include "shared/runtime/interrupt_char.h"

// No pins: this also keeps py/mphal.h from needing extmod/virtpin.h.
#define mp_hal_pin_obj_t void *

#endif

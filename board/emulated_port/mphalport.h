#ifndef EMU_MPHALPORT_H
#define EMU_MPHALPORT_H

#include <stdint.h>
#include "py/mpconfig.h"

// Virtual time since boot in nanoseconds: exactly the count of guest instructions
// executed, under `qemu-system-arm -icount shift=0` (to the timer's resolution).
uint64_t emu_time_ns(void);

static inline mp_uint_t mp_hal_ticks_ms(void) {
    return (mp_uint_t)(emu_time_ns() / 1000000u);
}
static inline mp_uint_t mp_hal_ticks_us(void) {
    return (mp_uint_t)(emu_time_ns() / 1000u);
}
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

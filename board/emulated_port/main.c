// The emulated boards' MicroPython: reset handler, the REPL loop (friendly and raw REPL,
// raw-paste, soft reset, as shared/runtime/pyexec gives every port), the GC roots, and
// imports from the RAM filesystem (ramfs.c).
#include <stdint.h>
#include <string.h>

#include "py/builtin.h"
#include "py/compile.h"
#include "py/gc.h"
#include "py/lexer.h"
#include "py/mperrno.h"
#include "py/mphal.h"
#include "py/reader.h"
#include "py/runtime.h"
#include "py/stackctrl.h"
#include "py/stream.h"
#include "shared/readline/readline.h"
#include "shared/runtime/gchelper.h"
#include "shared/runtime/pyexec.h"
#include "hal.h"
#include "ramfs.h"

extern uint32_t _estack, _sstack, _sidata, _sdata, _edata, _sbss, _ebss, _sheap, _eheap;

// --- time: a 64-bit count of virtual nanoseconds from the board's 32-bit timer ---------

static uint32_t time_last_raw;
static uint64_t time_ticks;

uint64_t emu_timer_count(void) {
    uint32_t raw = hal_timer_raw();
    time_ticks += (uint32_t)(raw - time_last_raw);
    time_last_raw = raw;
    return time_ticks;
}

uint64_t emu_time_ns(void) {
    return emu_timer_count() * HAL_TIMER_NS_NUM / HAL_TIMER_NS_DEN;
}

// A board that can sleep until its timer reaches a time (hal_nrf51.c: WFI until a compare
// interrupt) overrides this; QEMU (`-icount sleep=off`) then moves virtual time on to the
// deadline at once. The default busy-waits: virtual time advances with instructions only.
__attribute__((weak)) void hal_wait_ns(uint32_t ns) {
    (void)ns;
}

void mp_hal_delay_us(mp_uint_t us) {
    uint64_t end = emu_time_ns() + (uint64_t)us * 1000u;
    uint64_t now;
    while ((now = emu_time_ns()) < end) {
        mp_handle_pending(true);
        uint64_t left = end - now;
        hal_wait_ns(left > 10000000u ? 10000000u : (uint32_t)left);  // 10 ms at most
    }
}

void mp_hal_delay_ms(mp_uint_t ms) {
    mp_hal_delay_us(ms * 1000u);
}

// --- stdio over the board's UART ---------------------------------------------------------

int mp_hal_stdin_rx_chr(void) {
    while (!hal_uart_rx_ready()) {
    }
    return hal_uart_rx();
}

mp_uint_t mp_hal_stdout_tx_strn(const char *str, size_t len) {
    for (size_t i = 0; i < len; i++) {
        hal_uart_tx((uint8_t)str[i]);
    }
    return len;
}

uintptr_t mp_hal_stdio_poll(uintptr_t poll_flags) {
    uintptr_t ret = 0;
    if ((poll_flags & MP_STREAM_POLL_RD) && hal_uart_rx_ready()) {
        ret |= MP_STREAM_POLL_RD;
    }
    if (poll_flags & MP_STREAM_POLL_WR) {
        ret |= MP_STREAM_POLL_WR;
    }
    return ret;
}

// --- the REPL loop ------------------------------------------------------------------------

int main(void) {
    hal_init();
    ramfs_init();
    mp_stack_set_top(&_estack);
    mp_stack_set_limit((char *)&_estack - (char *)&_sstack - 1024);

soft_reset:
    gc_init(&_sheap, &_eheap);
    mp_init();
    readline_init0();
    for (;;) {
        if (pyexec_mode_kind == PYEXEC_MODE_RAW_REPL) {
            if (pyexec_raw_repl() != 0) {
                break;
            }
        } else {
            if (pyexec_friendly_repl() != 0) {
                break;
            }
        }
    }
    mp_printf(&mp_plat_print, "MPY: soft reboot\n");
    gc_sweep_all();
    mp_deinit();
    goto soft_reset;
    return 0;
}

void gc_collect(void) {
    gc_collect_start();
    gc_helper_collect_regs_and_stack();
    gc_collect_end();
}

void nlr_jump_fail(void *val) {
    mp_hal_stdout_tx_strn("FATAL: uncaught NLR\r\n", 21);
    emu_exit(1);
}

void NORETURN __fatal_error(const char *msg) {
    mp_hal_stdout_tx_strn(msg, strlen(msg));
    emu_exit(1);
}

void MP_WEAK __assert_func(const char *file, int line, const char *func, const char *expr) {
    mp_printf(&mp_plat_print, "Assertion '%s' failed, at file %s:%d\n", expr, file, line);
    __fatal_error("Assertion failed");
}

// --- imports from the RAM filesystem --------------------------------------------------

mp_import_stat_t mp_import_stat(const char *path) {
    return ramfs_stat(path);
}

void mp_reader_new_file(mp_reader_t *reader, qstr filename) {
    const ramfs_entry_t *f = ramfs_find(qstr_str(filename));
    if (f == NULL) {
        mp_raise_OSError(MP_ENOENT);
    }
    // Files stay put until replaced (like flash), so the reader may point into them.
    mp_reader_new_mem(reader, ramfs_data(f), f->len, MP_READER_IS_ROM);
}

mp_lexer_t *mp_lexer_new_from_file(qstr filename) {
    mp_reader_t reader;
    mp_reader_new_file(&reader, filename);
    return mp_lexer_new(filename, reader);
}

// --- semihosting exit (QEMU -semihosting) ---------------------------------------------

void emu_exit(int code) {
    // SYS_EXIT_EXTENDED (0x20): ADP_Stopped_ApplicationExit and the exit code.
    uint32_t block[2] = {0x20026, (uint32_t)code};
    register uint32_t r0 __asm__("r0") = 0x20;
    register uint32_t r1 __asm__("r1") = (uint32_t)block;
    __asm__ volatile ("bkpt 0xab" : "+r" (r0) : "r" (r1) : "memory");
    for (;;) {
    }
}

// --- reset --------------------------------------------------------------------------------

// The core loads SP from the vector table; copy .data, clear .bss, then run.
void Reset_Handler(void) __attribute__((noreturn));
void Reset_Handler(void) {
    for (uint32_t *src = &_sidata, *dest = &_sdata; dest < &_edata;) {
        *dest++ = *src++;
    }
    for (uint32_t *dest = &_sbss; dest < &_ebss;) {
        *dest++ = 0;
    }
    #if defined(__ARM_FP)
    // Enable the FPU (CP10, CP11 full access) before any float instruction runs.
    *((volatile uint32_t *)0xe000ed88) |= (0xfu << 20);
    __asm__ volatile ("dsb\n isb");
    #endif
    main();
    for (;;) {
    }
}

static void Fault_Handler(void) {
    mp_hal_stdout_tx_strn("\r\nFATAL: hard fault\r\n", 21);
    emu_exit(2);
}

static void Default_Handler(void) {
    for (;;) {
    }
}

// The external interrupts (the M0+'s 32): a board that enables one handles it here.
void hal_irq(void) __attribute__((weak, alias("Default_Handler")));

const uint32_t isr_vector[] __attribute__((section(".isr_vector"), used)) = {
    (uint32_t)&_estack,
    (uint32_t)&Reset_Handler,
    (uint32_t)&Default_Handler, // NMI
    (uint32_t)&Fault_Handler, // HardFault
    (uint32_t)&Fault_Handler, // MemManage
    (uint32_t)&Fault_Handler, // BusFault
    (uint32_t)&Fault_Handler, // UsageFault
    0, 0, 0, 0,
    (uint32_t)&Default_Handler, // SVC
    (uint32_t)&Default_Handler, // DebugMon
    0,
    (uint32_t)&Default_Handler, // PendSV
    (uint32_t)&Default_Handler, // SysTick
    #define IRQ4 (uint32_t)&hal_irq, (uint32_t)&hal_irq, (uint32_t)&hal_irq, (uint32_t)&hal_irq
    IRQ4, IRQ4, IRQ4, IRQ4, IRQ4, IRQ4, IRQ4, IRQ4, // IRQ 0-31
};

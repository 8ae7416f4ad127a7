// MicroPython configuration of the emulated boards: the rp2 port's choices (ROM level,
// emitters, MPZ, single-precision float, computed goto) on MicroPython's core alone
// (the registry sdist has py/ and shared/, no extmod: time, os, hashlib and machine are
// small modules of this port).
#include <stdint.h>
#include <alloca.h>

#include "mpconfigboard.h"

#define MICROPY_CONFIG_ROM_LEVEL                (MICROPY_CONFIG_ROM_LEVEL_EXTRA_FEATURES)

// Emitters, as the real ports enable them: native and viper (-march=armv6m on the
// Cortex-M0+, armv7emsp on the M4) and the inline assembler (@micropython.asm_thumb).
#define MICROPY_PERSISTENT_CODE_LOAD            (1)
#define MICROPY_EMIT_THUMB                      (1)
#define MICROPY_EMIT_INLINE_THUMB               (1)
#ifndef MICROPY_EMIT_THUMB_ARMV7M
#define MICROPY_EMIT_THUMB_ARMV7M               (0)
#endif
#ifndef MICROPY_EMIT_INLINE_THUMB_FLOAT
#define MICROPY_EMIT_INLINE_THUMB_FLOAT         (0)
#endif
#define MICROPY_MAKE_POINTER_CALLABLE(p)        ((void *)((mp_uint_t)(p) | 1))

#define MICROPY_OPT_COMPUTED_GOTO               (1)
#define MICROPY_ENABLE_GC                       (1)
#define MICROPY_GC_STACK_ENTRY_TYPE             uint16_t
#define MICROPY_ALLOC_PATH_MAX                  (128)
#define MICROPY_QSTR_BYTES_IN_HASH              (1)
#define MICROPY_STACK_CHECK_MARGIN              (256)
#define MICROPY_ENABLE_EMERGENCY_EXCEPTION_BUF  (1)
#define MICROPY_LONGINT_IMPL                    (MICROPY_LONGINT_IMPL_MPZ)
#ifndef MICROPY_FLOAT_IMPL
#define MICROPY_FLOAT_IMPL                      (MICROPY_FLOAT_IMPL_FLOAT)
#endif
#define MICROPY_USE_INTERNAL_ERRNO              (1)
#define MICROPY_KBD_EXCEPTION                   (1)
#define MICROPY_HELPER_REPL                     (1)
#define MICROPY_ENABLE_EXTERNAL_IMPORT          (1)
#define MICROPY_READER_VFS                      (0)
#define MICROPY_HAS_FILE_READER                 (1) // ramfs.c: mp_reader_new_file
#define MICROPY_VFS                             (0)
#define MICROPY_PY_SYS_PLATFORM                 "emulated"
#define MICROPY_PY_SYS_STDFILES                 (1)
#define MICROPY_PY_THREAD                       (0)
#define MICROPY_PY_BUILTINS_HELP                (0)
#define MICROPY_EPOCH_IS_1970                   (1)

#define MICROPY_HW_MCU_NAME                     MICROPY_HW_CPU_NAME

#define MP_SSIZE_MAX (0x7fffffff)
typedef intptr_t mp_int_t; // must be pointer size
typedef uintptr_t mp_uint_t; // must be pointer size
typedef long mp_off_t;

#define MP_STATE_PORT MP_STATE_VM

// extmod is not in the sdist: keep py/ from referring to its modules.
#define MICROPY_PY_UCTYPES                      (0)

// What emu.count() counts: QEMU boards count instructions (1 ns of virtual time each under
// -icount shift=0); the rp2040js board counts cycles (8 ns at 125 MHz).
#ifndef EMU_COUNT_NS
#define EMU_COUNT_NS                            (1u)
#define EMU_COUNT_UNIT                          "instructions"
#endif

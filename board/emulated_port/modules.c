// The port's small modules: time, os, machine (freq only) and emu (the emulator's
// instruction clock, the RAM filesystem, exit). MicroPython's own versions live in extmod,
// which the registry sdist does not ship.
#include <string.h>

#include "py/mperrno.h"
#include "py/mphal.h"
#include "py/objstr.h"
#include "py/runtime.h"
#include "py/smallint.h"
#include "ramfs.h"

// --- time -----------------------------------------------------------------------------------

#define TICKS_PERIOD (MP_SMALL_INT_POSITIVE_MASK + 1)
#define TICKS_MAX (TICKS_PERIOD - 1)
#define TICKS_HALFPERIOD (TICKS_PERIOD / 2)

static mp_obj_t time_ticks_ms(void) {
    return MP_OBJ_NEW_SMALL_INT(mp_hal_ticks_ms() & TICKS_MAX);
}
static MP_DEFINE_CONST_FUN_OBJ_0(time_ticks_ms_obj, time_ticks_ms);

static mp_obj_t time_ticks_us(void) {
    return MP_OBJ_NEW_SMALL_INT(mp_hal_ticks_us() & TICKS_MAX);
}
static MP_DEFINE_CONST_FUN_OBJ_0(time_ticks_us_obj, time_ticks_us);

static mp_obj_t time_ticks_cpu(void) {
    return MP_OBJ_NEW_SMALL_INT(mp_hal_ticks_cpu() & TICKS_MAX);
}
static MP_DEFINE_CONST_FUN_OBJ_0(time_ticks_cpu_obj, time_ticks_cpu);

static mp_obj_t time_ticks_diff(mp_obj_t end_in, mp_obj_t start_in) {
    mp_uint_t start = MP_OBJ_SMALL_INT_VALUE(start_in);
    mp_uint_t end = MP_OBJ_SMALL_INT_VALUE(end_in);
    mp_int_t diff = ((end - start + TICKS_HALFPERIOD) & TICKS_MAX) - TICKS_HALFPERIOD;
    return MP_OBJ_NEW_SMALL_INT(diff);
}
static MP_DEFINE_CONST_FUN_OBJ_2(time_ticks_diff_obj, time_ticks_diff);

static mp_obj_t time_ticks_add(mp_obj_t ticks_in, mp_obj_t delta_in) {
    mp_uint_t ticks = MP_OBJ_SMALL_INT_VALUE(ticks_in);
    mp_uint_t delta = mp_obj_get_int(delta_in);
    return MP_OBJ_NEW_SMALL_INT((ticks + delta) & TICKS_MAX);
}
static MP_DEFINE_CONST_FUN_OBJ_2(time_ticks_add_obj, time_ticks_add);

static mp_obj_t time_sleep_ms(mp_obj_t arg) {
    mp_int_t ms = mp_obj_get_int(arg);
    if (ms > 0) {
        mp_hal_delay_ms(ms);
    }
    return mp_const_none;
}
static MP_DEFINE_CONST_FUN_OBJ_1(time_sleep_ms_obj, time_sleep_ms);

static mp_obj_t time_sleep_us(mp_obj_t arg) {
    mp_int_t us = mp_obj_get_int(arg);
    if (us > 0) {
        mp_hal_delay_us(us);
    }
    return mp_const_none;
}
static MP_DEFINE_CONST_FUN_OBJ_1(time_sleep_us_obj, time_sleep_us);

static mp_obj_t time_sleep(mp_obj_t arg) {
    mp_hal_delay_ms((mp_uint_t)(mp_obj_get_float(arg) * 1000));
    return mp_const_none;
}
static MP_DEFINE_CONST_FUN_OBJ_1(time_sleep_obj, time_sleep);

static mp_obj_t time_time(void) {
    // No RTC: seconds of emulated time since power-on.
    return mp_obj_new_int_from_ull(emu_time_ns() / 1000000000u);
}
static MP_DEFINE_CONST_FUN_OBJ_0(time_time_obj, time_time);

static mp_obj_t time_time_ns(void) {
    return mp_obj_new_int_from_ull(emu_time_ns());
}
static MP_DEFINE_CONST_FUN_OBJ_0(time_time_ns_obj, time_time_ns);

static const mp_rom_map_elem_t time_globals_table[] = {
    { MP_ROM_QSTR(MP_QSTR___name__), MP_ROM_QSTR(MP_QSTR_time) },
    { MP_ROM_QSTR(MP_QSTR_ticks_ms), MP_ROM_PTR(&time_ticks_ms_obj) },
    { MP_ROM_QSTR(MP_QSTR_ticks_us), MP_ROM_PTR(&time_ticks_us_obj) },
    { MP_ROM_QSTR(MP_QSTR_ticks_cpu), MP_ROM_PTR(&time_ticks_cpu_obj) },
    { MP_ROM_QSTR(MP_QSTR_ticks_diff), MP_ROM_PTR(&time_ticks_diff_obj) },
    { MP_ROM_QSTR(MP_QSTR_ticks_add), MP_ROM_PTR(&time_ticks_add_obj) },
    { MP_ROM_QSTR(MP_QSTR_sleep), MP_ROM_PTR(&time_sleep_obj) },
    { MP_ROM_QSTR(MP_QSTR_sleep_ms), MP_ROM_PTR(&time_sleep_ms_obj) },
    { MP_ROM_QSTR(MP_QSTR_sleep_us), MP_ROM_PTR(&time_sleep_us_obj) },
    { MP_ROM_QSTR(MP_QSTR_time), MP_ROM_PTR(&time_time_obj) },
    { MP_ROM_QSTR(MP_QSTR_time_ns), MP_ROM_PTR(&time_time_ns_obj) },
};
static MP_DEFINE_CONST_DICT(time_globals, time_globals_table);

const mp_obj_module_t emu_time_module = {
    .base = { &mp_type_module },
    .globals = (mp_obj_dict_t *)&time_globals,
};
MP_REGISTER_MODULE(MP_QSTR_time, emu_time_module);

// --- os ---------------------------------------------------------------------------------------

// os.urandom is a DETERMINISTIC generator (xorshift32 from a fixed seed at power-on), so
// that emulated runs repeat exactly. It is for timing only: never for real keys.
static uint32_t prng_state = 0x2545f491;

static mp_obj_t os_urandom(mp_obj_t num) {
    mp_int_t n = mp_obj_get_int(num);
    vstr_t vstr;
    vstr_init_len(&vstr, n);
    for (mp_int_t i = 0; i < n; i++) {
        uint32_t x = prng_state;
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        prng_state = x;
        vstr.buf[i] = (char)(x >> 24);
    }
    return mp_obj_new_bytes_from_vstr(&vstr);
}
static MP_DEFINE_CONST_FUN_OBJ_1(os_urandom_obj, os_urandom);

static mp_obj_t os_listdir(size_t n_args, const mp_obj_t *args) {
    // os.listdir() and os.listdir("/"): every file's whole name (what mpremote and the
    // benches read); os.listdir(dir): the names directly in dir, as a flash filesystem gives
    // them (tasks/dc_rare.py finds its group files so)
    const char *dir = n_args > 0 ? mp_obj_str_get_str(args[0]) : "";
    while (dir[0] == '/' || (dir[0] == '.' && dir[1] == '/')) {
        dir += dir[0] == '/' ? 1 : 2;
    }
    size_t n = strlen(dir);
    while (n > 0 && dir[n - 1] == '/') {
        n--;
    }
    mp_obj_t list = mp_obj_new_list(0, NULL);
    for (size_t i = 0; i < ramfs_count(); i++) {
        const char *name = ramfs_entry(i)->name;
        if (n > 0) {
            if (strncmp(name, dir, n) != 0 || name[n] != '/') {
                continue;
            }
            name += n + 1;
            const char *slash = strchr(name, '/');
            mp_obj_t item = mp_obj_new_str(name, slash ? (size_t)(slash - name) : strlen(name));
            mp_obj_t *items;
            size_t len;
            mp_obj_list_get(list, &len, &items);
            bool seen = false;
            for (size_t k = 0; k < len && !seen; k++) {
                seen = mp_obj_equal(items[k], item);
            }
            if (!seen) {
                mp_obj_list_append(list, item);
            }
            continue;
        }
        mp_obj_list_append(list, mp_obj_new_str(name, strlen(name)));
    }
    return list;
}
static MP_DEFINE_CONST_FUN_OBJ_VAR_BETWEEN(os_listdir_obj, 0, 1, os_listdir);

static mp_obj_t os_remove(mp_obj_t path) {
    if (ramfs_remove(mp_obj_str_get_str(path)) != 0) {
        mp_raise_OSError(MP_ENOENT);
    }
    return mp_const_none;
}
static MP_DEFINE_CONST_FUN_OBJ_1(os_remove_obj, os_remove);

static mp_obj_t os_rename(mp_obj_t from, mp_obj_t to) {
    if (ramfs_rename(mp_obj_str_get_str(from), mp_obj_str_get_str(to)) != 0) {
        mp_raise_OSError(MP_ENOENT);
    }
    return mp_const_none;
}
static MP_DEFINE_CONST_FUN_OBJ_2(os_rename_obj, os_rename);

// os.mkdir: directories are the files' name prefixes (ramfs_stat), so there is nothing to
// make; EEXIST where one is there, as on a flash filesystem.
static mp_obj_t os_mkdir(mp_obj_t path) {
    if (ramfs_stat(mp_obj_str_get_str(path)) != MP_IMPORT_STAT_NO_EXIST) {
        mp_raise_OSError(MP_EEXIST);
    }
    return mp_const_none;
}
static MP_DEFINE_CONST_FUN_OBJ_1(os_mkdir_obj, os_mkdir);

// os.stat: (mode, 0, 0, 0, 0, 0, size, 0, 0, 0) as mpremote's `cp` asks for it.
static mp_obj_t os_stat(mp_obj_t path_in) {
    const char *path = mp_obj_str_get_str(path_in);
    mp_import_stat_t st = ramfs_stat(path);
    if (st == MP_IMPORT_STAT_NO_EXIST) {
        mp_raise_OSError(MP_ENOENT);
    }
    const ramfs_entry_t *f = ramfs_find(path);
    mp_obj_t t[10];
    for (int i = 0; i < 10; i++) {
        t[i] = MP_OBJ_NEW_SMALL_INT(0);
    }
    t[0] = MP_OBJ_NEW_SMALL_INT(st == MP_IMPORT_STAT_DIR ? 0x4000 : 0x8000);
    t[6] = mp_obj_new_int_from_uint(f != NULL ? f->len : 0);
    return mp_obj_new_tuple(10, t);
}
static MP_DEFINE_CONST_FUN_OBJ_1(os_stat_obj, os_stat);

static const mp_rom_map_elem_t os_globals_table[] = {
    { MP_ROM_QSTR(MP_QSTR_stat), MP_ROM_PTR(&os_stat_obj) },
    { MP_ROM_QSTR(MP_QSTR___name__), MP_ROM_QSTR(MP_QSTR_os) },
    { MP_ROM_QSTR(MP_QSTR_urandom), MP_ROM_PTR(&os_urandom_obj) },
    { MP_ROM_QSTR(MP_QSTR_listdir), MP_ROM_PTR(&os_listdir_obj) },
    { MP_ROM_QSTR(MP_QSTR_remove), MP_ROM_PTR(&os_remove_obj) },
    { MP_ROM_QSTR(MP_QSTR_rename), MP_ROM_PTR(&os_rename_obj) },
    { MP_ROM_QSTR(MP_QSTR_mkdir), MP_ROM_PTR(&os_mkdir_obj) },
};
static MP_DEFINE_CONST_DICT(os_globals, os_globals_table);

const mp_obj_module_t emu_os_module = {
    .base = { &mp_type_module },
    .globals = (mp_obj_dict_t *)&os_globals,
};
MP_REGISTER_MODULE(MP_QSTR_os, emu_os_module);

// --- machine: only freq(), the board's nominal clock ----------------------------------------

static mp_obj_t machine_freq(void) {
    return mp_obj_new_int_from_uint(MICROPY_HW_NOMINAL_HZ);
}
static MP_DEFINE_CONST_FUN_OBJ_0(machine_freq_obj, machine_freq);

static const mp_rom_map_elem_t machine_globals_table[] = {
    { MP_ROM_QSTR(MP_QSTR___name__), MP_ROM_QSTR(MP_QSTR_machine) },
    { MP_ROM_QSTR(MP_QSTR_freq), MP_ROM_PTR(&machine_freq_obj) },
};
static MP_DEFINE_CONST_DICT(machine_globals, machine_globals_table);

const mp_obj_module_t emu_machine_module = {
    .base = { &mp_type_module },
    .globals = (mp_obj_dict_t *)&machine_globals,
};
MP_REGISTER_MODULE(MP_QSTR_machine, emu_machine_module);

// --- emu --------------------------------------------------------------------------------------

// Virtual nanoseconds since power-on, to the timer's resolution (HAL_TIMER_NS_NUM /
// HAL_TIMER_NS_DEN ns): guest instructions under QEMU's -icount shift=0.
static mp_obj_t emu_insns(void) {
    return mp_obj_new_int_from_ull(emu_time_ns());
}
static MP_DEFINE_CONST_FUN_OBJ_0(emu_insns_obj, emu_insns);

// The board's unit of work since power-on: instructions (QEMU) or cycles (rp2040js); see
// emu.UNIT.
static mp_obj_t emu_count(void) {
    return mp_obj_new_int_from_ull(emu_time_ns() / EMU_COUNT_NS);
}
static MP_DEFINE_CONST_FUN_OBJ_0(emu_count_obj, emu_count);

static mp_obj_t emu_put(mp_obj_t path, mp_obj_t data) {
    mp_buffer_info_t bufinfo;
    mp_get_buffer_raise(data, &bufinfo, MP_BUFFER_READ);
    ramfs_put(mp_obj_str_get_str(path), bufinfo.buf, bufinfo.len);
    return mp_const_none;
}
static MP_DEFINE_CONST_FUN_OBJ_2(emu_put_obj, emu_put);

static mp_obj_t emu_files(void) {
    mp_obj_t list = mp_obj_new_list(0, NULL);
    for (size_t i = 0; i < ramfs_count(); i++) {
        const ramfs_entry_t *f = ramfs_entry(i);
        mp_obj_t t[2] = {mp_obj_new_str(f->name, strlen(f->name)), mp_obj_new_int_from_uint(f->len)};
        mp_obj_list_append(list, mp_obj_new_tuple(2, t));
    }
    return list;
}
static MP_DEFINE_CONST_FUN_OBJ_0(emu_files_obj, emu_files);

static mp_obj_t emu_clear(void) {
    while (ramfs_count() > 0) {
        ramfs_remove(ramfs_entry(0)->name);
    }
    return mp_const_none;
}
static MP_DEFINE_CONST_FUN_OBJ_0(emu_clear_obj, emu_clear);

static mp_obj_t emu_fs_free(void) {
    return mp_obj_new_int_from_uint(ramfs_free());
}
static MP_DEFINE_CONST_FUN_OBJ_0(emu_fs_free_obj, emu_fs_free);

static mp_obj_t emu_exit_(size_t n_args, const mp_obj_t *args) {
    emu_exit(n_args > 0 ? mp_obj_get_int(args[0]) : 0);
}
static MP_DEFINE_CONST_FUN_OBJ_VAR_BETWEEN(emu_exit_obj, 0, 1, emu_exit_);

static MP_DEFINE_STR_OBJ(emu_board_obj, MICROPY_HW_BOARD_NAME);
static MP_DEFINE_STR_OBJ(emu_unit_obj, EMU_COUNT_UNIT);

static const mp_rom_map_elem_t emu_globals_table[] = {
    { MP_ROM_QSTR(MP_QSTR___name__), MP_ROM_QSTR(MP_QSTR_emu) },
    { MP_ROM_QSTR(MP_QSTR_BOARD), MP_ROM_PTR(&emu_board_obj) },
    { MP_ROM_QSTR(MP_QSTR_NOMINAL_HZ), MP_ROM_INT(MICROPY_HW_NOMINAL_HZ) },
    { MP_ROM_QSTR(MP_QSTR_RESOLUTION_NS), MP_ROM_INT((HAL_TIMER_NS_NUM + HAL_TIMER_NS_DEN - 1) / HAL_TIMER_NS_DEN) },
    { MP_ROM_QSTR(MP_QSTR_COUNT_NS), MP_ROM_INT(EMU_COUNT_NS) },
    { MP_ROM_QSTR(MP_QSTR_UNIT), MP_ROM_PTR(&emu_unit_obj) },
    { MP_ROM_QSTR(MP_QSTR_insns), MP_ROM_PTR(&emu_insns_obj) },
    { MP_ROM_QSTR(MP_QSTR_count), MP_ROM_PTR(&emu_count_obj) },
    { MP_ROM_QSTR(MP_QSTR_put), MP_ROM_PTR(&emu_put_obj) },
    { MP_ROM_QSTR(MP_QSTR_files), MP_ROM_PTR(&emu_files_obj) },
    { MP_ROM_QSTR(MP_QSTR_clear), MP_ROM_PTR(&emu_clear_obj) },
    { MP_ROM_QSTR(MP_QSTR_fs_free), MP_ROM_PTR(&emu_fs_free_obj) },
    { MP_ROM_QSTR(MP_QSTR_exit), MP_ROM_PTR(&emu_exit_obj) },
};
static MP_DEFINE_CONST_DICT(emu_globals, emu_globals_table);

const mp_obj_module_t emu_module = {
    .base = { &mp_type_module },
    .globals = (mp_obj_dict_t *)&emu_globals,
};
MP_REGISTER_MODULE(MP_QSTR_emu, emu_module);

// RAM filesystem (see ramfs.h) and the builtin open() on it.
#include <string.h>

#include "py/mperrno.h"
#include "py/objstr.h"
#include "py/runtime.h"
#include "py/stream.h"
#include "ramfs.h"

extern uint8_t _sramfs[], _eramfs[];

static ramfs_entry_t ramfs_files[RAMFS_MAX_FILES];
static size_t ramfs_n;
static size_t ramfs_used;

// A filesystem image that the host loaded into the arena before power-on (QEMU's generic
// loader, host_tools/emu/run.py `preload`): "EMUFS1" + 2 zero bytes, the file count u32, then
// for each file its name (RAMFS_NAME_MAX bytes, NUL-padded) and length u32, then the files'
// bytes, each padded to 4. Taken in at power-on, so that a whole firmware needs no upload over
// the UART (about 1,500 characters a second on a loaded host).
static const char preload_magic[8] = "EMUFS1\0";

static void ramfs_preload(void) {
    if (memcmp(_sramfs, preload_magic, 8) != 0) {
        return;
    }
    uint32_t n;
    memcpy(&n, _sramfs + 8, 4);
    size_t head = 12 + (size_t)n * (RAMFS_NAME_MAX + 4);
    if (n > RAMFS_MAX_FILES || head > (size_t)(_eramfs - _sramfs)) {
        memset(_sramfs, 0, 8);
        return;
    }
    // the table first (it is overwritten by the data's move), then the data to offset 0
    size_t used = 0;
    for (uint32_t i = 0; i < n; i++) {
        const uint8_t *e = _sramfs + 12 + i * (RAMFS_NAME_MAX + 4);
        memcpy(ramfs_files[i].name, e, RAMFS_NAME_MAX);
        ramfs_files[i].name[RAMFS_NAME_MAX - 1] = 0;
        memcpy(&ramfs_files[i].len, e + RAMFS_NAME_MAX, 4);
        ramfs_files[i].off = used;
        used += (ramfs_files[i].len + 3) & ~3u;
    }
    if (head + used > (size_t)(_eramfs - _sramfs)) {
        memset(_sramfs, 0, 8);
        return;
    }
    memmove(_sramfs, _sramfs + head, used);
    ramfs_n = n;
    ramfs_used = used;
}

void ramfs_init(void) {
    // Not cleared by a soft reset: only by power-on (.bss) or emu.clear(). main() calls this
    // once, at power-on.
    ramfs_preload();
}

static const char *norm(const char *path) {
    while (path[0] == '/' || (path[0] == '.' && path[1] == '/')) {
        path += path[0] == '/' ? 1 : 2;
    }
    return path;
}

const ramfs_entry_t *ramfs_find(const char *path) {
    path = norm(path);
    for (size_t i = 0; i < ramfs_n; i++) {
        if (strcmp(ramfs_files[i].name, path) == 0) {
            return &ramfs_files[i];
        }
    }
    return NULL;
}

const uint8_t *ramfs_data(const ramfs_entry_t *f) {
    return _sramfs + f->off;
}

mp_import_stat_t ramfs_stat(const char *path) {
    path = norm(path);
    if (ramfs_find(path) != NULL) {
        return MP_IMPORT_STAT_FILE;
    }
    size_t n = strlen(path);
    if (n == 0) {
        return MP_IMPORT_STAT_DIR;
    }
    for (size_t i = 0; i < ramfs_n; i++) {
        if (strncmp(ramfs_files[i].name, path, n) == 0 && ramfs_files[i].name[n] == '/') {
            return MP_IMPORT_STAT_DIR;
        }
    }
    return MP_IMPORT_STAT_NO_EXIST;
}

int ramfs_rename(const char *from, const char *to) {
    to = norm(to);
    if (strlen(to) >= RAMFS_NAME_MAX || to[0] == 0 || ramfs_find(from) == NULL) {
        return -1;
    }
    if (strcmp(norm(from), to) != 0) {
        ramfs_remove(to);  // replaces it, as os.rename does on littlefs and FAT in MicroPython
    }
    strcpy(((ramfs_entry_t *)ramfs_find(from))->name, to);
    return 0;
}

int ramfs_remove(const char *path) {
    const ramfs_entry_t *f = ramfs_find(path);
    if (f == NULL) {
        return -1;
    }
    size_t i = f - ramfs_files;
    uint32_t off = f->off, len = (f->len + 3) & ~3u;
    memmove(_sramfs + off, _sramfs + off + len, ramfs_used - off - len);
    ramfs_used -= len;
    memmove(&ramfs_files[i], &ramfs_files[i + 1], (ramfs_n - i - 1) * sizeof(ramfs_entry_t));
    ramfs_n--;
    for (size_t j = 0; j < ramfs_n; j++) {
        if (ramfs_files[j].off > off) {
            ramfs_files[j].off -= len;
        }
    }
    return 0;
}

void ramfs_put(const char *path, const uint8_t *data, size_t len) {
    path = norm(path);
    if (strlen(path) >= RAMFS_NAME_MAX || path[0] == 0) {
        mp_raise_OSError(MP_EINVAL);
    }
    ramfs_remove(path);
    if (ramfs_n >= RAMFS_MAX_FILES || len > (size_t)(_eramfs - _sramfs) - ramfs_used) {
        mp_raise_OSError(MP_ENOSPC);
    }
    ramfs_entry_t *f = &ramfs_files[ramfs_n++];
    strcpy(f->name, path);
    f->off = ramfs_used;
    f->len = len;
    memcpy(_sramfs + ramfs_used, data, len);
    ramfs_used += (len + 3) & ~3u;
}

size_t ramfs_count(void) {
    return ramfs_n;
}

const ramfs_entry_t *ramfs_entry(size_t i) {
    return &ramfs_files[i];
}

size_t ramfs_free(void) {
    return (size_t)(_eramfs - _sramfs) - ramfs_used;
}

// --- open(): read a whole file, or write one that is committed on close ---------------------

typedef struct {
    mp_obj_base_t base;
    char name[RAMFS_NAME_MAX];
    vstr_t buf; // what is written, until close
    size_t pos; // read position
    bool writing; // "w" or "r+": what is written is committed on close
    bool plus; // "r+": read and written in place at pos
    bool binary;
    bool closed;
} ramfs_file_t;

static mp_uint_t file_read(mp_obj_t self_in, void *buf, mp_uint_t size, int *errcode) {
    ramfs_file_t *self = MP_OBJ_TO_PTR(self_in);
    const ramfs_entry_t *f = ramfs_find(self->name);
    if (self->closed || (self->writing && !self->plus) || f == NULL) {
        *errcode = MP_EBADF;
        return MP_STREAM_ERROR;
    }
    size_t n = self->pos < f->len ? f->len - self->pos : 0;
    if (n > size) {
        n = size;
    }
    memcpy(buf, ramfs_data(f) + self->pos, n);
    self->pos += n;
    return n;
}

static mp_uint_t file_write(mp_obj_t self_in, const void *buf, mp_uint_t size, int *errcode) {
    ramfs_file_t *self = MP_OBJ_TO_PTR(self_in);
    if (self->closed || !self->writing) {
        *errcode = MP_EBADF;
        return MP_STREAM_ERROR;
    }
    if (self->plus) {
        // "r+": in place, in the arena, as a flash filesystem writes a block (lib/ringlog.py
        // writes a record so); no copy of the file in the heap
        const ramfs_entry_t *f = ramfs_find(self->name);
        if (f == NULL) {
            *errcode = MP_EBADF;
            return MP_STREAM_ERROR;
        }
        if (self->pos + size <= f->len) {
            memcpy((uint8_t *)ramfs_data(f) + self->pos, buf, size);
        } else {  // it grows: a new copy (rare: the firmware's rings are made whole)
            vstr_t v;
            vstr_init(&v, self->pos + size);
            vstr_add_strn(&v, (const char *)ramfs_data(f), f->len);
            if (self->pos > v.len) {
                size_t gap = self->pos - v.len;
                memset(vstr_add_len(&v, gap), 0, gap);
            }
            v.len = self->pos;
            vstr_add_strn(&v, buf, size);
            ramfs_put(self->name, (const uint8_t *)v.buf, v.len);
            vstr_clear(&v);
        }
        self->pos += size;
        return size;
    }
    vstr_add_strn(&self->buf, buf, size);
    self->pos += size;
    return size;
}

static mp_uint_t file_ioctl(mp_obj_t self_in, mp_uint_t request, uintptr_t arg, int *errcode) {
    ramfs_file_t *self = MP_OBJ_TO_PTR(self_in);
    if (request == MP_STREAM_CLOSE) {
        if (!self->closed && self->writing && !self->plus) {
            ramfs_put(self->name, (const uint8_t *)self->buf.buf, self->buf.len);
            vstr_clear(&self->buf);
        }
        self->closed = true;
        return 0;
    }
    if (request == MP_STREAM_FLUSH) {
        return 0;
    }
    if (request == MP_STREAM_SEEK && !self->closed) {
        // "r+" files (lib/ringlog.py writes a record in place) and reads
        struct mp_stream_seek_t *s = (struct mp_stream_seek_t *)arg;
        const ramfs_entry_t *f = ramfs_find(self->name);
        size_t len = self->writing && !self->plus ? self->buf.len : (f != NULL ? f->len : 0);
        mp_off_t base = s->whence == MP_SEEK_SET ? 0 : s->whence == MP_SEEK_CUR
            ? (mp_off_t)self->pos : (mp_off_t)len;
        if (base + s->offset < 0) {
            *errcode = MP_EINVAL;
            return MP_STREAM_ERROR;
        }
        self->pos = (size_t)(base + s->offset);
        s->offset = self->pos;
        return 0;
    }
    *errcode = MP_EINVAL;
    return MP_STREAM_ERROR;
}

static const mp_rom_map_elem_t file_locals_dict_table[] = {
    { MP_ROM_QSTR(MP_QSTR_read), MP_ROM_PTR(&mp_stream_read_obj) },
    { MP_ROM_QSTR(MP_QSTR_readinto), MP_ROM_PTR(&mp_stream_readinto_obj) },
    { MP_ROM_QSTR(MP_QSTR_readline), MP_ROM_PTR(&mp_stream_unbuffered_readline_obj) },
    { MP_ROM_QSTR(MP_QSTR_write), MP_ROM_PTR(&mp_stream_write_obj) },
    { MP_ROM_QSTR(MP_QSTR_flush), MP_ROM_PTR(&mp_stream_flush_obj) },
    { MP_ROM_QSTR(MP_QSTR_seek), MP_ROM_PTR(&mp_stream_seek_obj) },
    { MP_ROM_QSTR(MP_QSTR_tell), MP_ROM_PTR(&mp_stream_tell_obj) },
    { MP_ROM_QSTR(MP_QSTR_close), MP_ROM_PTR(&mp_stream_close_obj) },
    { MP_ROM_QSTR(MP_QSTR___enter__), MP_ROM_PTR(&mp_identity_obj) },
    { MP_ROM_QSTR(MP_QSTR___exit__), MP_ROM_PTR(&mp_stream___exit___obj) },
};
static MP_DEFINE_CONST_DICT(file_locals_dict, file_locals_dict_table);

static const mp_stream_p_t file_stream_p = {
    .read = file_read,
    .write = file_write,
    .ioctl = file_ioctl,
};

static const mp_stream_p_t textfile_stream_p = {
    .read = file_read,
    .write = file_write,
    .ioctl = file_ioctl,
    .is_text = true,
};

static MP_DEFINE_CONST_OBJ_TYPE(
    ramfs_file_type, MP_QSTR_FileIO, MP_TYPE_FLAG_ITER_IS_STREAM,
    protocol, &file_stream_p,
    locals_dict, &file_locals_dict
    );

static MP_DEFINE_CONST_OBJ_TYPE(
    ramfs_textfile_type, MP_QSTR_TextIOWrapper, MP_TYPE_FLAG_ITER_IS_STREAM,
    protocol, &textfile_stream_p,
    locals_dict, &file_locals_dict
    );

mp_obj_t mp_builtin_open(size_t n_args, const mp_obj_t *args, mp_map_t *kwargs) {
    const char *path = norm(mp_obj_str_get_str(args[0]));
    const char *mode = "r";
    if (n_args > 1) {
        mode = mp_obj_str_get_str(args[1]);
    } else {
        mp_map_elem_t *e = mp_map_lookup(kwargs, MP_OBJ_NEW_QSTR(MP_QSTR_mode), MP_MAP_LOOKUP);
        if (e != NULL) {
            mode = mp_obj_str_get_str(e->value);
        }
    }
    bool binary = strchr(mode, 'b') != NULL;
    bool plus = strchr(mode, '+') != NULL && strchr(mode, 'r') != NULL;
    bool writing = strchr(mode, 'w') != NULL || plus;
    if (strchr(mode, 'a') != NULL || (strchr(mode, '+') != NULL && !plus)) {
        mp_raise_OSError(MP_EINVAL);
    }
    if (strlen(path) >= RAMFS_NAME_MAX) {
        mp_raise_OSError(MP_EINVAL);
    }
    const ramfs_entry_t *f = ramfs_find(path);
    if ((!writing || plus) && f == NULL) {
        mp_raise_OSError(MP_ENOENT);
    }
    ramfs_file_t *o = mp_obj_malloc(ramfs_file_t, binary ? &ramfs_file_type : &ramfs_textfile_type);
    strcpy(o->name, path);
    o->pos = 0;
    o->writing = writing;
    o->plus = plus;
    o->binary = binary;
    o->closed = false;
    vstr_init(&o->buf, writing && !plus ? 256 : 0);
    return MP_OBJ_FROM_PTR(o);
}
MP_DEFINE_CONST_FUN_OBJ_KW(mp_builtin_open_obj, 1, mp_builtin_open);

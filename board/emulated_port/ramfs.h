// A small RAM filesystem that stands in for the board's flash filesystem: files put there
// (by open(name, "wb") as mpremote does, or emu.put) survive soft resets, live outside the
// Python heap as files in flash do, and are what `import` finds.
#ifndef EMU_RAMFS_H
#define EMU_RAMFS_H

#include <stddef.h>
#include <stdint.h>
#include "py/builtin.h"

#define RAMFS_NAME_MAX (48)
// Enough for the whole firmware as .mpy files with its data (host_tools/emu/c6.py)
#ifndef RAMFS_MAX_FILES
#define RAMFS_MAX_FILES (160)
#endif

typedef struct {
    char name[RAMFS_NAME_MAX];
    uint32_t off;
    uint32_t len;
} ramfs_entry_t;

void ramfs_init(void);
const ramfs_entry_t *ramfs_find(const char *path);
const uint8_t *ramfs_data(const ramfs_entry_t *f);
mp_import_stat_t ramfs_stat(const char *path);
// Raises OSError(ENOSPC) when the arena or the table is full.
void ramfs_put(const char *path, const uint8_t *data, size_t len);
int ramfs_remove(const char *path);
// The file's name changes (one that had `to`'s name is replaced); -1: no such file
int ramfs_rename(const char *from, const char *to);
size_t ramfs_count(void);
const ramfs_entry_t *ramfs_entry(size_t i);
size_t ramfs_free(void);
void emu_exit(int code) __attribute__((noreturn));

#endif

/*
 * A read-only file system inside the module's own memory.
 *
 * Envoy gives a Wasm module no host file system, and older proxies import
 * only a handful of WASI functions.  CPython's import system, however, is
 * file based.  So the WASI file functions that wasi-libc calls are defined
 * here, over an image the build pipeline writes into linear memory before
 * pre-initialisation (see meshext_preinit in shim.c).  Defining the
 * `__imported_wasi_snapshot_preview1_*` symbols makes wasm-ld resolve them
 * to these definitions instead of emitting imports; zig's libc implements
 * close() directly on the import, so close() is defined here too.
 *
 * Image layout (little endian, written by meshext.sdk.builder.fsimage):
 *   "MXFS" u32 version u32 count
 *   count x { u32 path_offset, u32 path_length, u32 data_offset,
 *             u32 data_length, u32 kind }          sorted by path
 *   ... all paths, then all file contents; offsets relative to the image start.
 * Paths are absolute without the leading slash; the root is "".
 *
 * After pre-initialisation the build moves most file contents out of
 * memory into the module's passive data segment 0 (fsimage.detach): such a
 * file's kind becomes MXFS_KIND_SEGMENT_FILE, its data offset an offset
 * into that segment, and reads copy from it (segment.c).  V8 keeps a
 * passive segment once, in the module's bytes, where contents in linear
 * memory would be one copy per VM.  The segment is never dropped: a file
 * may be read again.
 *
 * fd 1 and 2 go to proxy_log, line by line (Envoy's own log).
 */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <wasi/api.h>

#include "memfs.h"
#include "segment.h"
#include "proxy_wasm.h"

#define MXFS_KIND_FILE 0
#define MXFS_KIND_DIR 1
#define MXFS_KIND_SEGMENT_FILE 2
#define MXFS_HEADER_SIZE 12
#define ROOT_FD 3
#define FIRST_FREE_FD 4
#define MAX_FDS 64

typedef struct {
    uint32_t path_offset, path_length, data_offset, data_length, kind;
} mxfs_entry;

static uint8_t *image;
static mxfs_entry *entries;
static uint32_t entry_count;

typedef struct {
    int in_use;
    int32_t entry; /* index into entries; -1 is the root directory */
    uint64_t offset;
} open_file;

/* The root directory is open from the start: wasi-libc may look for preopens
 * (in a constructor) before the image is mounted. */
static open_file fds[MAX_FDS] = {[ROOT_FD] = {.in_use = 1, .entry = -1}};

void meshext_memfs_mount(uint8_t *data, uint32_t size) {
    if (size < MXFS_HEADER_SIZE || memcmp(data, "MXFS", 4) != 0) return;
    image = data;
    memcpy(&entry_count, data + 8, 4);
    entries = (mxfs_entry *)(data + MXFS_HEADER_SIZE);
}

/* Copy `size` bytes of an entry's data, from `offset` on, to `destination`. */
static void copy_file_data(const mxfs_entry *entry, uint32_t offset, void *destination, uint32_t size) {
    if (entry->kind == MXFS_KIND_SEGMENT_FILE) meshext_copy_from_segment(destination, entry->data_offset + offset, size);
    else memcpy(destination, image + entry->data_offset + offset, size);
}

static const char *entry_path(int32_t index, uint32_t *length) {
    if (index < 0) { *length = 0; return ""; }
    *length = entries[index].path_length;
    return (const char *)image + entries[index].path_offset;
}

static int compare_path(const char *a, uint32_t a_len, const char *b, uint32_t b_len) {
    uint32_t n = a_len < b_len ? a_len : b_len;
    int c = memcmp(a, b, n);
    if (c) return c;
    return (a_len > b_len) - (a_len < b_len);
}

/* Binary search; -1 for the root, -2 when absent. */
static int32_t lookup(const char *path, uint32_t length) {
    if (length == 0) return -1;
    int32_t low = 0, high = (int32_t)entry_count - 1;
    while (low <= high) {
        int32_t mid = (low + high) / 2;
        uint32_t mid_len;
        const char *mid_path = entry_path(mid, &mid_len);
        int c = compare_path(path, length, mid_path, mid_len);
        if (c == 0) return mid;
        if (c < 0) high = mid - 1; else low = mid + 1;
    }
    return -2;
}

/* Join a directory's path and a relative path, folding "." and "..". */
static int resolve(int32_t dir_fd, const char *relative, uint32_t relative_len, char *out, uint32_t *out_len) {
    if (dir_fd < 0 || dir_fd >= MAX_FDS || !fds[dir_fd].in_use) return __WASI_ERRNO_BADF;
    uint32_t base_len;
    const char *base = entry_path(fds[dir_fd].entry, &base_len);
    if (base_len + relative_len + 2 > 1024) return __WASI_ERRNO_NAMETOOLONG;
    uint32_t n = 0;
    memcpy(out, base, base_len);
    n = base_len;
    uint32_t i = 0;
    while (i < relative_len) {
        uint32_t j = i;
        while (j < relative_len && relative[j] != '/') j++;
        uint32_t part = j - i;
        if (part == 0 || (part == 1 && relative[i] == '.')) {
            /* skip */
        } else if (part == 2 && relative[i] == '.' && relative[i + 1] == '.') {
            while (n > 0 && out[n - 1] != '/') n--;
            if (n > 0) n--;
        } else {
            if (n > 0) out[n++] = '/';
            memcpy(out + n, relative + i, part);
            n += part;
        }
        i = j + 1;
    }
    *out_len = n;
    return 0;
}

static void fill_filestat(int32_t index, __wasi_filestat_t *stat) {
    memset(stat, 0, sizeof *stat);
    stat->ino = (uint64_t)(index + 2);
    stat->nlink = 1;
    if (index < 0 || entries[index].kind == MXFS_KIND_DIR) {
        stat->filetype = __WASI_FILETYPE_DIRECTORY;
    } else {
        stat->filetype = __WASI_FILETYPE_REGULAR_FILE;
        stat->size = entries[index].data_length;
    }
}

static int32_t is_dir(int32_t index) { return index < 0 || entries[index].kind == MXFS_KIND_DIR; }

#define WASI_FN(name) int32_t __imported_wasi_snapshot_preview1_##name

WASI_FN(fd_prestat_get)(int32_t fd, int32_t out) {
    if (fd != ROOT_FD) return __WASI_ERRNO_BADF;
    __wasi_prestat_t *prestat = (__wasi_prestat_t *)out;
    prestat->tag = __WASI_PREOPENTYPE_DIR;
    prestat->u.dir.pr_name_len = 1;
    return 0;
}

WASI_FN(fd_prestat_dir_name)(int32_t fd, int32_t path, int32_t length) {
    if (fd != ROOT_FD) return __WASI_ERRNO_BADF;
    if (length < 1) return __WASI_ERRNO_NAMETOOLONG;
    *(char *)path = '/';
    return 0;
}

WASI_FN(path_open)(int32_t dir_fd, int32_t dirflags, int32_t path, int32_t path_len, int32_t oflags,
                   int64_t rights_base, int64_t rights_inheriting, int32_t fdflags, int32_t fd_out) {
    (void)dirflags; (void)rights_inheriting; (void)fdflags;
    char full[1024];
    uint32_t full_len;
    int err = resolve(dir_fd, (const char *)path, (uint32_t)path_len, full, &full_len);
    if (err) return err;
    if (oflags & (__WASI_OFLAGS_CREAT | __WASI_OFLAGS_TRUNC)) return __WASI_ERRNO_ROFS;
    if (rights_base & (__WASI_RIGHTS_FD_WRITE | __WASI_RIGHTS_FD_ALLOCATE | __WASI_RIGHTS_FD_FILESTAT_SET_SIZE))
        return __WASI_ERRNO_ROFS;
    int32_t index = lookup(full, full_len);
    if (index == -2) return __WASI_ERRNO_NOENT;
    if ((oflags & __WASI_OFLAGS_DIRECTORY) && !is_dir(index)) return __WASI_ERRNO_NOTDIR;
    for (int fd = FIRST_FREE_FD; fd < MAX_FDS; fd++) {
        if (!fds[fd].in_use) {
            fds[fd].in_use = 1;
            fds[fd].entry = index;
            fds[fd].offset = 0;
            *(int32_t *)fd_out = fd;
            return 0;
        }
    }
    return __WASI_ERRNO_NFILE;
}

static open_file *file_for(int32_t fd) {
    if (fd < FIRST_FREE_FD || fd >= MAX_FDS || !fds[fd].in_use) return NULL;
    return &fds[fd];
}

static int32_t read_at(open_file *file, uint64_t offset, int32_t iovs, int32_t iovs_len, uint32_t *total) {
    if (is_dir(file->entry)) return __WASI_ERRNO_ISDIR;
    const mxfs_entry *entry = &entries[file->entry];
    const __wasi_iovec_t *vec = (const __wasi_iovec_t *)iovs;
    *total = 0;
    for (int32_t i = 0; i < iovs_len; i++) {
        uint64_t left = offset < entry->data_length ? entry->data_length - offset : 0;
        uint32_t n = vec[i].buf_len < left ? vec[i].buf_len : (uint32_t)left;
        if (n) copy_file_data(entry, (uint32_t)offset, vec[i].buf, n);
        offset += n;
        *total += n;
        if (n < vec[i].buf_len) break;
    }
    return 0;
}

WASI_FN(fd_read)(int32_t fd, int32_t iovs, int32_t iovs_len, int32_t nread) {
    open_file *file = file_for(fd);
    if (!file) return __WASI_ERRNO_BADF;
    uint32_t total;
    int32_t err = read_at(file, file->offset, iovs, iovs_len, &total);
    if (err) return err;
    file->offset += total;
    *(uint32_t *)nread = total;
    return 0;
}

WASI_FN(fd_pread)(int32_t fd, int32_t iovs, int32_t iovs_len, int64_t offset, int32_t nread) {
    open_file *file = file_for(fd);
    if (!file) return __WASI_ERRNO_BADF;
    uint32_t total;
    int32_t err = read_at(file, (uint64_t)offset, iovs, iovs_len, &total);
    if (err) return err;
    *(uint32_t *)nread = total;
    return 0;
}

WASI_FN(fd_seek)(int32_t fd, int64_t delta, int32_t whence, int32_t new_offset) {
    open_file *file = file_for(fd);
    if (!file) return fd >= 0 && fd <= 2 ? __WASI_ERRNO_SPIPE : __WASI_ERRNO_BADF;
    int64_t size = is_dir(file->entry) ? 0 : entries[file->entry].data_length;
    int64_t base = whence == __WASI_WHENCE_SET ? 0 : whence == __WASI_WHENCE_CUR ? (int64_t)file->offset : size;
    if (base + delta < 0) return __WASI_ERRNO_INVAL;
    file->offset = (uint64_t)(base + delta);
    *(uint64_t *)new_offset = file->offset;
    return 0;
}

WASI_FN(fd_tell)(int32_t fd, int32_t offset) {
    open_file *file = file_for(fd);
    if (!file) return __WASI_ERRNO_BADF;
    *(uint64_t *)offset = file->offset;
    return 0;
}

int close(int fd) {
    open_file *file = file_for(fd);
    if (!file) {
        errno = __WASI_ERRNO_BADF;
        return -1;
    }
    file->in_use = 0;
    return 0;
}

WASI_FN(fd_close)(int32_t fd) { return close(fd) == 0 ? 0 : __WASI_ERRNO_BADF; }

WASI_FN(fd_filestat_get)(int32_t fd, int32_t out) {
    if (fd >= 0 && fd <= 2) {
        memset((void *)out, 0, sizeof(__wasi_filestat_t));
        ((__wasi_filestat_t *)out)->filetype = __WASI_FILETYPE_CHARACTER_DEVICE;
        return 0;
    }
    if (fd < 0 || fd >= MAX_FDS || !fds[fd].in_use) return __WASI_ERRNO_BADF;
    fill_filestat(fds[fd].entry, (__wasi_filestat_t *)out);
    return 0;
}

WASI_FN(path_filestat_get)(int32_t dir_fd, int32_t flags, int32_t path, int32_t path_len, int32_t out) {
    (void)flags;
    char full[1024];
    uint32_t full_len;
    int err = resolve(dir_fd, (const char *)path, (uint32_t)path_len, full, &full_len);
    if (err) return err;
    int32_t index = lookup(full, full_len);
    if (index == -2) return __WASI_ERRNO_NOENT;
    fill_filestat(index, (__wasi_filestat_t *)out);
    return 0;
}

WASI_FN(fd_fdstat_get)(int32_t fd, int32_t out) {
    __wasi_fdstat_t *stat = (__wasi_fdstat_t *)out;
    memset(stat, 0, sizeof *stat);
    const uint64_t read_rights = __WASI_RIGHTS_FD_READ | __WASI_RIGHTS_FD_SEEK | __WASI_RIGHTS_FD_TELL |
                                 __WASI_RIGHTS_FD_FILESTAT_GET | __WASI_RIGHTS_FD_READDIR |
                                 __WASI_RIGHTS_PATH_OPEN | __WASI_RIGHTS_PATH_FILESTAT_GET;
    if (fd >= 0 && fd <= 2) {
        stat->fs_filetype = __WASI_FILETYPE_CHARACTER_DEVICE;
        stat->fs_rights_base = fd == 0 ? __WASI_RIGHTS_FD_READ : __WASI_RIGHTS_FD_WRITE;
        return 0;
    }
    if (fd < 0 || fd >= MAX_FDS || !fds[fd].in_use) return __WASI_ERRNO_BADF;
    stat->fs_filetype = is_dir(fds[fd].entry) ? __WASI_FILETYPE_DIRECTORY : __WASI_FILETYPE_REGULAR_FILE;
    stat->fs_rights_base = read_rights;
    stat->fs_rights_inheriting = read_rights;
    return 0;
}

WASI_FN(fd_readdir)(int32_t fd, int32_t buf, int32_t buf_len, int64_t cookie, int32_t used) {
    open_file *dir = fd == ROOT_FD ? &fds[ROOT_FD] : file_for(fd);
    if (!dir || !dir->in_use) return __WASI_ERRNO_BADF;
    if (!is_dir(dir->entry)) return __WASI_ERRNO_NOTDIR;
    uint32_t prefix_len;
    const char *prefix = entry_path(dir->entry, &prefix_len);
    uint32_t written = 0;
    uint64_t position = 0;
    /* Children are the entries directly below the directory: "prefix/name". */
    for (uint32_t i = 0; i < entry_count && written < (uint32_t)buf_len; i++) {
        uint32_t len;
        const char *path = entry_path((int32_t)i, &len);
        uint32_t start = prefix_len ? prefix_len + 1 : 0;
        if (len <= start || (prefix_len && (memcmp(path, prefix, prefix_len) != 0 || path[prefix_len] != '/')))
            continue;
        if (memchr(path + start, '/', len - start)) continue;
        if (position++ < (uint64_t)cookie) continue;
        __wasi_dirent_t dirent = {
            .d_next = position,
            .d_ino = i + 2,
            .d_namlen = len - start,
            .d_type = entries[i].kind == MXFS_KIND_DIR ? __WASI_FILETYPE_DIRECTORY : __WASI_FILETYPE_REGULAR_FILE,
        };
        /* A truncated last entry tells wasi-libc to grow its buffer. */
        uint32_t room = (uint32_t)buf_len - written;
        uint32_t n = room < sizeof dirent ? room : sizeof dirent;
        memcpy((char *)buf + written, &dirent, n);
        written += n;
        room = (uint32_t)buf_len - written;
        n = room < dirent.d_namlen ? room : dirent.d_namlen;
        memcpy((char *)buf + written, path + start, n);
        written += n;
    }
    *(uint32_t *)used = written;
    return 0;
}

/* stdout/stderr become Envoy log lines (info / error); partial lines wait for '\n'. */
static char line_buffers[2][1024];
static uint32_t line_lengths[2];

static void flush_line(int which) {
    if (line_lengths[which] == 0) return;
    proxy_log(which == 0 ? PROXY_LOG_INFO : PROXY_LOG_ERROR, line_buffers[which], line_lengths[which]);
    line_lengths[which] = 0;
}

WASI_FN(fd_write)(int32_t fd, int32_t iovs, int32_t iovs_len, int32_t nwritten) {
    if (fd != 1 && fd != 2) return __WASI_ERRNO_BADF;
    int which = fd - 1;
    const __wasi_ciovec_t *vec = (const __wasi_ciovec_t *)iovs;
    uint32_t total = 0;
    for (int32_t i = 0; i < iovs_len; i++) {
        for (uint32_t k = 0; k < vec[i].buf_len; k++) {
            char c = (char)vec[i].buf[k];
            if (c == '\n') {
                flush_line(which);
            } else {
                if (line_lengths[which] == sizeof line_buffers[which]) flush_line(which);
                line_buffers[which][line_lengths[which]++] = c;
            }
        }
        total += vec[i].buf_len;
    }
    *(uint32_t *)nwritten = total;
    return 0;
}

/* Everything that would change the file system, or that has no meaning in a proxy. */
#define REFUSE(name, errno_value, ...) \
    WASI_FN(name)(__VA_ARGS__) { return errno_value; }

REFUSE(fd_pwrite, __WASI_ERRNO_BADF, int32_t a, int32_t b, int32_t c, int64_t d, int32_t e)
REFUSE(fd_advise, 0, int32_t a, int64_t b, int64_t c, int32_t d)
REFUSE(fd_datasync, 0, int32_t a)
REFUSE(fd_sync, 0, int32_t a)
REFUSE(fd_fdstat_set_flags, __WASI_ERRNO_NOTSUP, int32_t a, int32_t b)
REFUSE(fd_filestat_set_size, __WASI_ERRNO_ROFS, int32_t a, int64_t b)
REFUSE(fd_filestat_set_times, __WASI_ERRNO_ROFS, int32_t a, int64_t b, int64_t c, int32_t d)
REFUSE(path_create_directory, __WASI_ERRNO_ROFS, int32_t a, int32_t b, int32_t c)
REFUSE(path_filestat_set_times, __WASI_ERRNO_ROFS, int32_t a, int32_t b, int32_t c, int32_t d, int64_t e, int64_t f, int32_t g)
REFUSE(path_link, __WASI_ERRNO_ROFS, int32_t a, int32_t b, int32_t c, int32_t d, int32_t e, int32_t f, int32_t g)
REFUSE(path_readlink, __WASI_ERRNO_INVAL, int32_t a, int32_t b, int32_t c, int32_t d, int32_t e, int32_t f)
REFUSE(path_remove_directory, __WASI_ERRNO_ROFS, int32_t a, int32_t b, int32_t c)
REFUSE(path_rename, __WASI_ERRNO_ROFS, int32_t a, int32_t b, int32_t c, int32_t d, int32_t e, int32_t f)
REFUSE(path_symlink, __WASI_ERRNO_ROFS, int32_t a, int32_t b, int32_t c, int32_t d, int32_t e)
REFUSE(path_unlink_file, __WASI_ERRNO_ROFS, int32_t a, int32_t b, int32_t c)
REFUSE(poll_oneoff, __WASI_ERRNO_NOTSUP, int32_t a, int32_t b, int32_t c, int32_t d)
REFUSE(sched_yield, 0, void)
REFUSE(sock_accept, __WASI_ERRNO_NOTSUP, int32_t a, int32_t b, int32_t c)
REFUSE(sock_recv, __WASI_ERRNO_NOTSUP, int32_t a, int32_t b, int32_t c, int32_t d, int32_t e, int32_t f)
REFUSE(sock_send, __WASI_ERRNO_NOTSUP, int32_t a, int32_t b, int32_t c, int32_t d, int32_t e)
REFUSE(sock_shutdown, __WASI_ERRNO_NOTSUP, int32_t a, int32_t b)

WASI_FN(clock_res_get)(int32_t clock, int32_t out) {
    (void)clock;
    *(uint64_t *)out = 1000; /* Envoy's clock: microsecond resolution */
    return 0;
}

/*
 * Build time: a module imported before the snapshot never reads its file
 * again, so its bytes are zeroed and left out of the snapshot (and of the
 * passive segment the other files' data go to).
 */
int meshext_memfs_forget(const char *path, uint32_t length) {
    if (length > 0 && path[0] == '/') {
        path++;
        length--;
    }
    int32_t index = lookup(path, length);
    if (index < 0 || entries[index].kind != MXFS_KIND_FILE) return -1;
    memset(image + entries[index].data_offset, 0, entries[index].data_length);
    entries[index].data_length = 0;
    return 0;
}

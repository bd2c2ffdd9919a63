/*
 * `_meshext_host`: the Proxy-Wasm host functions as a built-in Python module.
 *
 * Two parts.  Module functions (log, get_headers, http_call, ...) each
 * convert Python arguments, call one `proxy_*` import and convert the answer
 * back; the SDK's Python modules (the .py files of sdk/) build the filter API on them.
 * The types HeaderMap and Body are the C bases of meshext.sdk.HeaderMap and
 * Body: their methods run on every request, so they are whole API methods in
 * C, not wrappers.  Strings cross as UTF-8; header values that are not valid
 * UTF-8 come back with surrogate escapes so they round-trip.  A status other
 * than OK raises meshext.sdk.HostError(function, status); "not found" answers
 * of getters are None instead.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "structmember.h"

#include "memfs.h"
#include "proxy_wasm.h"
#include "shim.h"

static PyObject *HostError; /* meshext.sdk.errors.HostError */

static PyObject *host_error(const char *function, proxy_status status) {
    PyObject *args = Py_BuildValue("(sI)", function, status);
    if (args) {
        PyErr_SetObject(HostError, args);
        Py_DECREF(args);
    }
    return NULL;
}

/* str (UTF-8) or bytes-like; the view stays valid while `object` lives. */
static int text_arg(PyObject *object, const char **data, Py_ssize_t *size) {
    if (PyUnicode_Check(object)) {
        *data = PyUnicode_AsUTF8AndSize(object, size);
        return *data ? 0 : -1;
    }
    if (PyBytes_Check(object)) {
        *data = PyBytes_AS_STRING(object);
        *size = PyBytes_GET_SIZE(object);
        return 0;
    }
    if (PyByteArray_Check(object)) {
        *data = PyByteArray_AS_STRING(object);
        *size = PyByteArray_GET_SIZE(object);
        return 0;
    }
    PyErr_Format(PyExc_TypeError, "expected str or bytes, got %.100s", Py_TYPE(object)->tp_name);
    return -1;
}

static PyObject *decode_text(const char *data, size_t size) {
    return PyUnicode_DecodeUTF8(data ? data : "", (Py_ssize_t)size, "surrogateescape");
}

/* Host-allocated answers arrive through proxy_on_memory_allocate (malloc). */
static PyObject *take_bytes(char *data, size_t size) {
    PyObject *result = PyBytes_FromStringAndSize(data ? data : "", (Py_ssize_t)size);
    free(data);
    return result;
}

static PyObject *take_text(char *data, size_t size) {
    PyObject *result = decode_text(data, size);
    free(data);
    return result;
}

#define CHECK_NARGS(n, name)                                                          \
    if (nargs != (n)) {                                                               \
        PyErr_Format(PyExc_TypeError, name "() takes %d arguments (%zd given)", (n), nargs); \
        return NULL;                                                                  \
    }

static long long_arg(PyObject *object) { return PyLong_AsLong(object); }

/* ---- logging, time, lifecycle ---- */

static PyObject *h_log(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    CHECK_NARGS(2, "log");
    const char *message;
    Py_ssize_t size;
    long level = long_arg(args[0]);
    if (level == -1 && PyErr_Occurred()) return NULL;
    if (text_arg(args[1], &message, &size) < 0) return NULL;
    proxy_log((uint32_t)level, message, (size_t)size);
    Py_RETURN_NONE;
}

static PyObject *h_get_log_level(PyObject *self, PyObject *unused) {
    uint32_t level = 0;
    proxy_status status = proxy_get_log_level(&level);
    if (status != PROXY_OK) return host_error("proxy_get_log_level", status);
    return PyLong_FromUnsignedLong(level);
}

static PyObject *h_current_time_ns(PyObject *self, PyObject *unused) {
    uint64_t nanos = 0;
    proxy_status status = proxy_get_current_time_nanoseconds(&nanos);
    if (status != PROXY_OK) return host_error("proxy_get_current_time_nanoseconds", status);
    return PyLong_FromUnsignedLongLong(nanos);
}

static PyObject *h_set_tick_period(PyObject *self, PyObject *arg) {
    long millis = PyLong_AsLong(arg);
    if (millis == -1 && PyErr_Occurred()) return NULL;
    proxy_status status = proxy_set_tick_period_milliseconds((uint32_t)millis);
    if (status != PROXY_OK) return host_error("proxy_set_tick_period_milliseconds", status);
    Py_RETURN_NONE;
}

static PyObject *h_set_effective_context(PyObject *self, PyObject *arg) {
    long context_id = PyLong_AsLong(arg);
    if (context_id == -1 && PyErr_Occurred()) return NULL;
    proxy_status status = proxy_set_effective_context((uint32_t)context_id);
    if (status != PROXY_OK) return host_error("proxy_set_effective_context", status);
    meshext_effective_context((uint32_t)context_id);
    Py_RETURN_NONE;
}

static PyObject *h_done(PyObject *self, PyObject *unused) {
    proxy_status status = proxy_done();
    if (status != PROXY_OK) return host_error("proxy_done", status);
    Py_RETURN_NONE;
}

/* ---- buffers ---- */

/* Up to `max_size` bytes of `buffer` from `start`; b"" when absent or empty. */
static PyObject *buffer_bytes(uint32_t buffer, size_t start, size_t max_size) {
    char *data = NULL;
    size_t size = 0;
    proxy_status status = proxy_get_buffer_bytes(buffer, start, max_size, &data, &size);
    if (status == PROXY_NOT_FOUND || status == PROXY_EMPTY) return PyBytes_FromStringAndSize("", 0);
    if (status != PROXY_OK) return host_error("proxy_get_buffer_bytes", status);
    return take_bytes(data, size);
}

/* The buffer's length in *size (0 when absent); -1 with an exception. */
static int buffer_length(uint32_t buffer, size_t *size) {
    uint32_t unused = 0;
    *size = 0;
    proxy_status status = proxy_get_buffer_status(buffer, size, &unused);
    if (status == PROXY_NOT_FOUND) {
        *size = 0;
        return 0;
    }
    if (status != PROXY_OK) {
        host_error("proxy_get_buffer_status", status);
        return -1;
    }
    return 0;
}

static PyObject *write_buffer(uint32_t buffer, size_t start, size_t length, PyObject *data) {
    const char *bytes;
    Py_ssize_t size;
    if (text_arg(data, &bytes, &size) < 0) return NULL;
    proxy_status status = proxy_set_buffer_bytes(buffer, start, length, bytes, (size_t)size);
    if (status != PROXY_OK) return host_error("proxy_set_buffer_bytes", status);
    Py_RETURN_NONE;
}

static PyObject *h_get_buffer(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    CHECK_NARGS(3, "get_buffer");
    long buffer = long_arg(args[0]), start = long_arg(args[1]), max_size = long_arg(args[2]);
    if (PyErr_Occurred()) return NULL;
    return buffer_bytes((uint32_t)buffer, (size_t)start, (size_t)max_size);
}

/* ---- header maps ---- */

/* Serialised pairs: u32 count, count x (u32 key_len, u32 value_len), then "key\0value\0"... */
static int serialize_pairs(PyObject *pairs, char **out, size_t *out_size) {
    PyObject *sequence = PySequence_Fast(pairs, "headers must be a sequence of (name, value) pairs");
    if (!sequence) return -1;
    Py_ssize_t count = PySequence_Fast_GET_SIZE(sequence);
    PyObject **items = PySequence_Fast_ITEMS(sequence);
    const char **keys = PyMem_Calloc((size_t)count * 2 + 1, sizeof(char *));
    Py_ssize_t *sizes = PyMem_Calloc((size_t)count * 2 + 1, sizeof(Py_ssize_t));
    size_t total = 4 + 8 * (size_t)count;
    int result = -1;
    if (!keys || !sizes) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *pair = items[i];
        if (!PyTuple_Check(pair) && !PyList_Check(pair)) {
            PyErr_SetString(PyExc_TypeError, "each header must be a (name, value) pair");
            goto done;
        }
        if (PySequence_Size(pair) != 2) {
            PyErr_SetString(PyExc_ValueError, "each header must be a (name, value) pair");
            goto done;
        }
        PyObject *name = PySequence_Fast_GET_ITEM(pair, 0), *value = PySequence_Fast_GET_ITEM(pair, 1);
        if (text_arg(name, &keys[2 * i], &sizes[2 * i]) < 0) goto done;
        if (text_arg(value, &keys[2 * i + 1], &sizes[2 * i + 1]) < 0) goto done;
        total += (size_t)sizes[2 * i] + (size_t)sizes[2 * i + 1] + 2;
    }
    char *buffer = malloc(total);
    if (!buffer) {
        PyErr_NoMemory();
        goto done;
    }
    uint32_t n = (uint32_t)count;
    memcpy(buffer, &n, 4);
    char *cursor = buffer + 4 + 8 * (size_t)count;
    for (Py_ssize_t i = 0; i < 2 * count; i++) {
        uint32_t length = (uint32_t)sizes[i];
        memcpy(buffer + 4 + 4 * (size_t)i, &length, 4);
        memcpy(cursor, keys[i], length);
        cursor += length;
        *cursor++ = '\0';
    }
    *out = buffer;
    *out_size = total;
    result = 0;
done:
    PyMem_Free(keys);
    PyMem_Free(sizes);
    Py_DECREF(sequence);
    return result;
}

/* A reader of Proxy-Wasm's serialized header map: u32 count, then count (u32 key size, u32 value size),
 * then each key and each value followed by a NUL.  A malformed answer reads as its well-formed start. */
typedef struct {
    const char *sizes, *cursor, *end;
    uint32_t left;
} pair_reader;

static void pairs_open(pair_reader *reader, const char *data, size_t size) {
    uint32_t count = 0;
    if (data && size >= 4) memcpy(&count, data, 4);
    if ((size_t)count * 8 + 4 > size) count = 0;
    if (!count) {  /* nothing to read, and no arithmetic on a NULL answer */
        *reader = (pair_reader){0};
        return;
    }
    *reader = (pair_reader){.sizes = data + 4, .cursor = data + 4 + 8 * (size_t)count, .end = data + size,
                            .left = count};
}

/* The next pair, or 0 at the end (or where the answer stops being well formed). */
static int pairs_next(pair_reader *reader, const char **key, uint32_t *key_size, const char **value,
                      uint32_t *value_size) {
    if (!reader->left) return 0;
    memcpy(key_size, reader->sizes, 4);
    memcpy(value_size, reader->sizes + 4, 4);
    if ((size_t)(reader->end - reader->cursor) < (size_t)*key_size + *value_size + 2) {
        reader->left = 0;
        return 0;
    }
    *key = reader->cursor;
    *value = reader->cursor + *key_size + 1;
    reader->cursor = *value + *value_size + 1;
    reader->sizes += 8;
    reader->left--;
    return 1;
}

static PyObject *parse_pairs(const char *data, size_t size) {
    pair_reader reader;
    pairs_open(&reader, data, size);
    PyObject *list = PyList_New(reader.left);
    if (!list) return NULL;
    const char *key, *value;
    uint32_t key_size, value_size;
    Py_ssize_t parsed = 0;
    while (pairs_next(&reader, &key, &key_size, &value, &value_size)) {
        PyObject *key_text = decode_text(key, key_size);
        PyObject *value_text = key_text ? decode_text(value, value_size) : NULL;
        PyObject *pair = value_text ? PyTuple_Pack(2, key_text, value_text) : NULL;
        Py_XDECREF(key_text);
        Py_XDECREF(value_text);
        if (!pair) {
            Py_DECREF(list);
            return NULL;
        }
        PyList_SET_ITEM(list, parsed++, pair);
    }
    if (parsed < PyList_GET_SIZE(list) && PyList_SetSlice(list, parsed, PyList_GET_SIZE(list), NULL) < 0) {
        Py_DECREF(list);
        return NULL;
    }
    return list;
}

/* The value of `name` in `map`: a new str, None (new reference) when absent, NULL on error. */
static PyObject *header_value(uint32_t map, PyObject *name) {
    const char *key;
    Py_ssize_t key_size;
    if (text_arg(name, &key, &key_size) < 0) return NULL;
    char *value = NULL;
    size_t value_size = 0;
    proxy_status status = proxy_get_header_map_value(map, key, (size_t)key_size, &value, &value_size);
    if (status == PROXY_NOT_FOUND) Py_RETURN_NONE;
    if (status != PROXY_OK) return host_error("proxy_get_header_map_value", status);
    return take_text(value, value_size);
}

static PyObject *h_get_headers(PyObject *self, PyObject *arg) {
    long map = PyLong_AsLong(arg);
    if (map == -1 && PyErr_Occurred()) return NULL;
    char *data = NULL;
    size_t size = 0;
    proxy_status status = proxy_get_header_map_pairs((uint32_t)map, &data, &size);
    if (status == PROXY_NOT_FOUND) return PyList_New(0);
    if (status != PROXY_OK) return host_error("proxy_get_header_map_pairs", status);
    PyObject *result = parse_pairs(data, size);
    free(data);
    return result;
}

static PyObject *h_set_headers(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    CHECK_NARGS(2, "set_headers");
    long map = long_arg(args[0]);
    if (map == -1 && PyErr_Occurred()) return NULL;
    char *data;
    size_t size;
    if (serialize_pairs(args[1], &data, &size) < 0) return NULL;
    proxy_status status = proxy_set_header_map_pairs((uint32_t)map, data, size);
    free(data);
    if (status != PROXY_OK) return host_error("proxy_set_header_map_pairs", status);
    Py_RETURN_NONE;
}

typedef proxy_status (*header_write_fn)(uint32_t, const char *, size_t, const char *, size_t);

static PyObject *write_header(uint32_t map, PyObject *name, PyObject *value, header_write_fn fn, const char *what) {
    const char *key, *text;
    Py_ssize_t key_size, text_size;
    if (text_arg(name, &key, &key_size) < 0 || text_arg(value, &text, &text_size) < 0) return NULL;
    proxy_status status = fn(map, key, (size_t)key_size, text, (size_t)text_size);
    if (status != PROXY_OK) return host_error(what, status);
    Py_RETURN_NONE;
}

static PyObject *remove_header(uint32_t map, PyObject *name) {
    const char *key;
    Py_ssize_t key_size;
    if (text_arg(name, &key, &key_size) < 0) return NULL;
    proxy_status status = proxy_remove_header_map_value(map, key, (size_t)key_size);
    if (status != PROXY_OK && status != PROXY_NOT_FOUND) return host_error("proxy_remove_header_map_value", status);
    Py_RETURN_NONE;
}

/*
 * ---- HeaderMap: the C base of meshext.sdk.HeaderMap ----
 *
 * A filter's `headers.get(":path")` or `headers.add(...)` is one call into
 * C here, instead of a Python method frame plus a module lookup plus the
 * host call: per request that is most of the SDK's own cost.  messages.py
 * subclasses this type and keeps the rest of the API (items, get_all, ...)
 * in Python.
 */
/* HeaderMap and Body objects hold the number of one Proxy-Wasm map or buffer. */
typedef struct {
    PyObject_HEAD
    uint32_t number; /* a MapType or a BufferType */
} HostObject;

#define NUMBER_OF(self) (((HostObject *)(self))->number)

static PyTypeObject HeaderMapType;

/* HeaderMap(map_type) or Body(buffer_type). */
static PyObject *host_object_new(PyTypeObject *type, PyObject *args, PyObject *kwargs) {
    static char *map_names[] = {"map_type", NULL}, *buffer_names[] = {"buffer_type", NULL};
    int is_map = PyType_IsSubtype(type, &HeaderMapType);
    PyObject *number;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, is_map ? "O:HeaderMap" : "O:Body",
                                     is_map ? map_names : buffer_names, &number))
        return NULL;
    long value = PyLong_AsLong(number);
    if (value == -1 && PyErr_Occurred()) return NULL;
    PyObject *self = type->tp_alloc(type, 0);
    if (self) NUMBER_OF(self) = (uint32_t)value;
    return self;
}

/*
 * Positional-or-keyword arguments for METH_FASTCALL | METH_KEYWORDS methods
 * (`headers.get(name, default="")` must keep working).  Fills out[0..count)
 * (NULL where not given) and checks the first `required` are there.
 */
static int method_args(const char *method, const char *const *names, Py_ssize_t count, Py_ssize_t required,
                       PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames, PyObject **out) {
    if (nargs > count) {
        PyErr_Format(PyExc_TypeError, "%s() takes at most %zd arguments (%zd given)", method, count, nargs);
        return -1;
    }
    for (Py_ssize_t i = 0; i < count; i++) out[i] = i < nargs ? args[i] : NULL;
    Py_ssize_t keywords = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    for (Py_ssize_t k = 0; k < keywords; k++) {
        PyObject *keyword = PyTuple_GET_ITEM(kwnames, k);
        Py_ssize_t i = 0;
        while (i < count && PyUnicode_CompareWithASCIIString(keyword, names[i]) != 0) i++;
        if (i == count || out[i]) {
            PyErr_Format(PyExc_TypeError, "%s() got %s argument '%U'", method,
                         i == count ? "an unexpected keyword" : "multiple values for", keyword);
            return -1;
        }
        out[i] = args[nargs + k];
    }
    for (Py_ssize_t i = 0; i < required; i++) {
        if (!out[i]) {
            PyErr_Format(PyExc_TypeError, "%s() missing required argument '%s'", method, names[i]);
            return -1;
        }
    }
    return 0;
}

static PyObject *header_map_get(PyObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames) {
    static const char *const names[] = {"name", "default"};
    PyObject *given[2];
    if (method_args("get", names, 2, 1, args, nargs, kwnames, given) < 0) return NULL;
    PyObject *value = header_value(NUMBER_OF(self), given[0]);
    if (value == Py_None && given[1]) {
        Py_DECREF(value);
        return Py_NewRef(given[1]);
    }
    return value;
}

/*
 * headers.get_many(names): the first value of each name, from one host call for the whole map.  A filter that
 * reads several headers per request (3scale's route and credentials read six) saves a host call per extra
 * header, and the Python of building a dict of the whole map to pick a few.  Names compare as Envoy's lookup
 * does: ASCII case-insensitively (Envoy's names are lower case).
 */
static PyObject *header_map_get_many(PyObject *self, PyObject *names) {
    if (!PyTuple_Check(names)) {
        PyErr_Format(PyExc_TypeError, "get_many() takes a tuple of header names, got %.100s",
                     Py_TYPE(names)->tp_name);
        return NULL;
    }
    Py_ssize_t wanted = PyTuple_GET_SIZE(names);
    const char **name_data = PyMem_New(const char *, wanted + 1);
    Py_ssize_t *name_size = PyMem_New(Py_ssize_t, wanted + 1);
    PyObject *values = name_data && name_size ? PyTuple_New(wanted) : PyErr_NoMemory();  /* items start NULL */
    char *data = NULL;
    size_t size = 0;
    for (Py_ssize_t i = 0; values && i < wanted; i++) {
        if (text_arg(PyTuple_GET_ITEM(names, i), &name_data[i], &name_size[i]) < 0) Py_CLEAR(values);
    }
    if (values) {
        proxy_status status = proxy_get_header_map_pairs(NUMBER_OF(self), &data, &size);
        if (status != PROXY_OK && status != PROXY_NOT_FOUND) {
            Py_DECREF(values);
            values = host_error("proxy_get_header_map_pairs", status);
        }
    }
    if (!values) {
        PyMem_Free(name_data);
        PyMem_Free(name_size);
        return NULL;
    }
    pair_reader reader;
    pairs_open(&reader, data, size);
    const char *key, *value;
    uint32_t key_size, value_size;
    while (pairs_next(&reader, &key, &key_size, &value, &value_size)) {
        for (Py_ssize_t i = 0; i < wanted; i++) {
            if (PyTuple_GET_ITEM(values, i) || (size_t)name_size[i] != key_size ||
                strncasecmp(name_data[i], key, key_size) != 0)
                continue;
            PyObject *text = decode_text(value, value_size);
            if (!text) {
                Py_CLEAR(values);
                goto done;
            }
            PyTuple_SET_ITEM(values, i, text);
        }
    }
done:
    free(data);
    PyMem_Free(name_data);
    PyMem_Free(name_size);
    if (!values) return NULL;
    for (Py_ssize_t i = 0; i < wanted; i++) {
        if (!PyTuple_GET_ITEM(values, i)) PyTuple_SET_ITEM(values, i, Py_NewRef(Py_None));
    }
    return values;
}

static PyObject *header_map_subscript(PyObject *self, PyObject *name) {
    PyObject *value = header_value(NUMBER_OF(self), name);
    if (value == Py_None) {
        Py_DECREF(value);
        PyErr_SetObject(PyExc_KeyError, name);
        return NULL;
    }
    return value;
}

static int header_map_contains(PyObject *self, PyObject *name) {
    if (!PyUnicode_Check(name)) return 0;
    PyObject *value = header_value(NUMBER_OF(self), name);
    if (!value) return -1;
    Py_DECREF(value);
    return value != Py_None;
}

static PyObject *header_map_write(PyObject *self, const char *method, header_write_fn fn, const char *what,
                                  PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames) {
    static const char *const names[] = {"name", "value"};
    PyObject *given[2];
    if (method_args(method, names, 2, 2, args, nargs, kwnames, given) < 0) return NULL;
    return write_header(NUMBER_OF(self), given[0], given[1], fn, what);
}

static PyObject *header_map_add(PyObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames) {
    return header_map_write(self, "add", proxy_add_header_map_value, "proxy_add_header_map_value", args, nargs,
                            kwnames);
}

static PyObject *header_map_set(PyObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames) {
    return header_map_write(self, "set", proxy_replace_header_map_value, "proxy_replace_header_map_value", args,
                            nargs, kwnames);
}

static PyObject *header_map_remove(PyObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames) {
    static const char *const names[] = {"name"};
    PyObject *given[1];
    if (method_args("remove", names, 1, 1, args, nargs, kwnames, given) < 0) return NULL;
    return remove_header(NUMBER_OF(self), given[0]);
}

/* headers[name] = value replaces (like set); del headers[name] removes. */
static int header_map_assign(PyObject *self, PyObject *name, PyObject *value) {
    PyObject *result = value ? write_header(NUMBER_OF(self), name, value, proxy_replace_header_map_value,
                                            "proxy_replace_header_map_value")
                             : remove_header(NUMBER_OF(self), name);
    if (!result) return -1;
    Py_DECREF(result);
    return 0;
}

#define KEYWORDS(name) (PyCFunction)(void (*)(void))header_map_##name, METH_FASTCALL | METH_KEYWORDS

static PyMethodDef header_map_methods[] = {
    {"get", KEYWORDS(get),
     "get($self, name, default=None)\n--\n\n"
     "The first value of ``name`` (``get_all`` has every one), or ``default``."},
    {"get_many", (PyCFunction)header_map_get_many, METH_O,
     "get_many($self, names)\n--\n\n"
     "The first value of each of ``names`` (a tuple), None where absent: one host call for the whole map."},
    {"add", KEYWORDS(add),
     "add($self, name, value)\n--\n\nAppend a header line (keeps existing values of ``name``)."},
    {"set", KEYWORDS(set),
     "set($self, name, value)\n--\n\nReplace all values of ``name`` with ``value`` (adds it if absent)."},
    {"remove", KEYWORDS(remove),
     "remove($self, name)\n--\n\nRemove every value of ``name``; absent names are fine."},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef header_map_members[] = {
    {"map_type", T_UINT, offsetof(HostObject, number), READONLY, "The Proxy-Wasm map type (MapType)."},
    {NULL, 0, 0, 0, NULL},
};

static PyMappingMethods header_map_mapping = {
    .mp_subscript = header_map_subscript,
    .mp_ass_subscript = header_map_assign,
};

static PySequenceMethods header_map_sequence = {
    .sq_contains = header_map_contains,
};

static PyTypeObject HeaderMapType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "_meshext_host.HeaderMap",
    .tp_basicsize = sizeof(HostObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_doc = "Header operations on one Proxy-Wasm map (base of meshext.sdk.HeaderMap).",
    .tp_new = host_object_new,
    .tp_methods = header_map_methods,
    .tp_members = header_map_members,
    .tp_as_mapping = &header_map_mapping,
    .tp_as_sequence = &header_map_sequence,
};

/*
 * ---- Body: the C base of meshext.sdk.Body ----
 *
 * Same reason as HeaderMap: body filters call these on every chunk.
 */
static PyObject *body_size(PyObject *self, PyObject *unused) {
    size_t size;
    if (buffer_length(NUMBER_OF(self), &size) < 0) return NULL;
    return PyLong_FromSize_t(size);
}

static PyObject *body_read(PyObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames) {
    static const char *const names[] = {"start", "size"};
    PyObject *given[2];
    if (method_args("read", names, 2, 0, args, nargs, kwnames, given) < 0) return NULL;
    long start = given[0] ? PyLong_AsLong(given[0]) : 0;
    if (start == -1 && PyErr_Occurred()) return NULL;
    long long size;
    if (given[1] && given[1] != Py_None) {
        size = PyLong_AsLong(given[1]);
        if (size == -1 && PyErr_Occurred()) return NULL;
    } else {
        size_t length;
        if (buffer_length(NUMBER_OF(self), &length) < 0) return NULL;
        size = (long long)length - start;  /* the rest of the buffer */
        if (size < 0) size = 0;
    }
    return buffer_bytes(NUMBER_OF(self), (size_t)start, (size_t)size);
}

/* The one `data` argument of replace/append/prepend. */
static PyObject *data_arg(const char *method, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames) {
    static const char *const names[] = {"data"};
    PyObject *given[1];
    return method_args(method, names, 1, 1, args, nargs, kwnames, given) < 0 ? NULL : given[0];
}

static PyObject *body_replace(PyObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames) {
    PyObject *data = data_arg("replace", args, nargs, kwnames);
    size_t length;
    if (!data || buffer_length(NUMBER_OF(self), &length) < 0) return NULL;
    /* At least 1: Envoy reads start 0 with length 0 as a prepend, not a replace. */
    return write_buffer(NUMBER_OF(self), 0, length > 1 ? length : 1, data);
}

static PyObject *body_append(PyObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames) {
    PyObject *data = data_arg("append", args, nargs, kwnames);
    size_t length;
    if (!data || buffer_length(NUMBER_OF(self), &length) < 0) return NULL;
    return write_buffer(NUMBER_OF(self), length, 0, data);
}

static PyObject *body_prepend(PyObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames) {
    PyObject *data = data_arg("prepend", args, nargs, kwnames);
    return data ? write_buffer(NUMBER_OF(self), 0, 0, data) : NULL;
}

#define BODY_KEYWORDS(name) (PyCFunction)(void (*)(void))body_##name, METH_FASTCALL | METH_KEYWORDS

static PyMethodDef body_methods[] = {
    {"size", body_size, METH_NOARGS, "size($self)\n--\n\nHow many bytes the buffer holds."},
    {"read", BODY_KEYWORDS(read),
     "read($self, start=0, size=None)\n--\n\n``size`` bytes from ``start`` (default: to the end)."},
    {"replace", BODY_KEYWORDS(replace),
     "replace($self, data)\n--\n\nReplace the whole buffer (Envoy fixes ``content-length`` when it can)."},
    {"append", BODY_KEYWORDS(append), "append($self, data)\n--\n\nAdd ``data`` at the end."},
    {"prepend", BODY_KEYWORDS(prepend), "prepend($self, data)\n--\n\nAdd ``data`` at the start."},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef body_members[] = {
    {"buffer_type", T_UINT, offsetof(HostObject, number), READONLY, "The Proxy-Wasm buffer type (BufferType)."},
    {NULL, 0, 0, 0, NULL},
};

static PyTypeObject BodyType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "_meshext_host.Body",
    .tp_basicsize = sizeof(HostObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_doc = "Operations on one Proxy-Wasm buffer (base of meshext.sdk.Body).",
    .tp_new = host_object_new,
    .tp_methods = body_methods,
    .tp_members = body_members,
};

/* ---- streams and local replies ---- */

static PyObject *h_continue_stream(PyObject *self, PyObject *arg) {
    long stream = PyLong_AsLong(arg);
    if (stream == -1 && PyErr_Occurred()) return NULL;
    proxy_status status = proxy_continue_stream((uint32_t)stream);
    if (status != PROXY_OK) return host_error("proxy_continue_stream", status);
    meshext_stream_continued((uint32_t)stream);
    Py_RETURN_NONE;
}

static PyObject *h_close_stream(PyObject *self, PyObject *arg) {
    long stream = PyLong_AsLong(arg);
    if (stream == -1 && PyErr_Occurred()) return NULL;
    proxy_status status = proxy_close_stream((uint32_t)stream);
    if (status != PROXY_OK) return host_error("proxy_close_stream", status);
    Py_RETURN_NONE;
}

static PyObject *h_get_status(PyObject *self, PyObject *unused) {
    uint32_t code = 0;
    char *message = NULL;
    size_t size = 0;
    proxy_status status = proxy_get_status(&code, &message, &size);
    if (status != PROXY_OK) return host_error("proxy_get_status", status);
    PyObject *text = take_text(message, size);
    if (!text) return NULL;
    return Py_BuildValue("(IN)", code, text);
}

static PyObject *h_send_local_response(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    CHECK_NARGS(5, "send_local_response");
    long code = long_arg(args[0]);
    long grpc_status = long_arg(args[4]);
    if (PyErr_Occurred()) return NULL;
    const char *details, *body;
    Py_ssize_t details_size, body_size;
    if (text_arg(args[1], &details, &details_size) < 0 || text_arg(args[2], &body, &body_size) < 0) return NULL;
    char *headers;
    size_t headers_size;
    if (serialize_pairs(args[3], &headers, &headers_size) < 0) return NULL;
    proxy_status status = proxy_send_local_response((uint32_t)code, details, (size_t)details_size, body,
                                                    (size_t)body_size, headers, headers_size, (int32_t)grpc_status);
    free(headers);
    if (status != PROXY_OK) return host_error("proxy_send_local_response", status);
    Py_RETURN_NONE;
}

/* ---- properties ---- */

static PyObject *h_get_property(PyObject *self, PyObject *arg) {
    const char *path;
    Py_ssize_t path_size;
    if (text_arg(arg, &path, &path_size) < 0) return NULL;
    char *value = NULL;
    size_t value_size = 0;
    proxy_status status = proxy_get_property(path, (size_t)path_size, &value, &value_size);
    if (status == PROXY_NOT_FOUND) Py_RETURN_NONE;
    if (status != PROXY_OK) return host_error("proxy_get_property", status);
    return take_bytes(value, value_size);
}

static PyObject *h_set_property(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    CHECK_NARGS(2, "set_property");
    const char *path, *value;
    Py_ssize_t path_size, value_size;
    if (text_arg(args[0], &path, &path_size) < 0 || text_arg(args[1], &value, &value_size) < 0) return NULL;
    proxy_status status = proxy_set_property(path, (size_t)path_size, value, (size_t)value_size);
    if (status != PROXY_OK) return host_error("proxy_set_property", status);
    Py_RETURN_NONE;
}

/* ---- metrics ---- */

static PyObject *h_define_metric(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    CHECK_NARGS(2, "define_metric");
    long type = long_arg(args[0]);
    if (type == -1 && PyErr_Occurred()) return NULL;
    const char *name;
    Py_ssize_t name_size;
    if (text_arg(args[1], &name, &name_size) < 0) return NULL;
    uint32_t metric_id = 0;
    proxy_status status = proxy_define_metric((uint32_t)type, name, (size_t)name_size, &metric_id);
    if (status != PROXY_OK) return host_error("proxy_define_metric", status);
    return PyLong_FromUnsignedLong(metric_id);
}

static PyObject *h_increment_metric(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    CHECK_NARGS(2, "increment_metric");
    long metric_id = long_arg(args[0]);
    long long delta = PyLong_AsLongLong(args[1]);
    if (PyErr_Occurred()) return NULL;
    proxy_status status = proxy_increment_metric((uint32_t)metric_id, delta);
    if (status != PROXY_OK) return host_error("proxy_increment_metric", status);
    Py_RETURN_NONE;
}

static PyObject *h_record_metric(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    CHECK_NARGS(2, "record_metric");
    long metric_id = long_arg(args[0]);
    unsigned long long value = PyLong_AsUnsignedLongLong(args[1]);
    if (PyErr_Occurred()) return NULL;
    proxy_status status = proxy_record_metric((uint32_t)metric_id, value);
    if (status != PROXY_OK) return host_error("proxy_record_metric", status);
    Py_RETURN_NONE;
}

static PyObject *h_get_metric(PyObject *self, PyObject *arg) {
    long metric_id = PyLong_AsLong(arg);
    if (metric_id == -1 && PyErr_Occurred()) return NULL;
    uint64_t value = 0;
    proxy_status status = proxy_get_metric((uint32_t)metric_id, &value);
    if (status != PROXY_OK) return host_error("proxy_get_metric", status);
    return PyLong_FromUnsignedLongLong(value);
}

/* ---- shared data and queues ---- */

static PyObject *h_get_shared_data(PyObject *self, PyObject *arg) {
    const char *key;
    Py_ssize_t key_size;
    if (text_arg(arg, &key, &key_size) < 0) return NULL;
    char *value = NULL;
    size_t value_size = 0;
    uint32_t cas = 0;
    proxy_status status = proxy_get_shared_data(key, (size_t)key_size, &value, &value_size, &cas);
    if (status == PROXY_NOT_FOUND) Py_RETURN_NONE;
    if (status != PROXY_OK) return host_error("proxy_get_shared_data", status);
    PyObject *bytes = take_bytes(value, value_size);
    if (!bytes) return NULL;
    return Py_BuildValue("(NI)", bytes, cas);
}

/* Returns the status so that callers can tell a CAS mismatch from success. */
static PyObject *h_set_shared_data(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    CHECK_NARGS(3, "set_shared_data");
    const char *key, *value;
    Py_ssize_t key_size, value_size;
    if (text_arg(args[0], &key, &key_size) < 0 || text_arg(args[1], &value, &value_size) < 0) return NULL;
    unsigned long cas = PyLong_AsUnsignedLong(args[2]);
    if (PyErr_Occurred()) return NULL;
    proxy_status status = proxy_set_shared_data(key, (size_t)key_size, value, (size_t)value_size, (uint32_t)cas);
    if (status != PROXY_OK && status != PROXY_CAS_MISMATCH) return host_error("proxy_set_shared_data", status);
    return PyLong_FromUnsignedLong(status);
}

static PyObject *h_register_shared_queue(PyObject *self, PyObject *arg) {
    const char *name;
    Py_ssize_t name_size;
    if (text_arg(arg, &name, &name_size) < 0) return NULL;
    uint32_t queue_id = 0;
    proxy_status status = proxy_register_shared_queue(name, (size_t)name_size, &queue_id);
    if (status != PROXY_OK) return host_error("proxy_register_shared_queue", status);
    return PyLong_FromUnsignedLong(queue_id);
}

static PyObject *h_resolve_shared_queue(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    CHECK_NARGS(2, "resolve_shared_queue");
    const char *vm_id, *name;
    Py_ssize_t vm_id_size, name_size;
    if (text_arg(args[0], &vm_id, &vm_id_size) < 0 || text_arg(args[1], &name, &name_size) < 0) return NULL;
    uint32_t queue_id = 0;
    proxy_status status = proxy_resolve_shared_queue(vm_id, (size_t)vm_id_size, name, (size_t)name_size, &queue_id);
    if (status == PROXY_NOT_FOUND) Py_RETURN_NONE;
    if (status != PROXY_OK) return host_error("proxy_resolve_shared_queue", status);
    return PyLong_FromUnsignedLong(queue_id);
}

static PyObject *h_enqueue_shared_queue(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    CHECK_NARGS(2, "enqueue_shared_queue");
    long queue_id = long_arg(args[0]);
    if (queue_id == -1 && PyErr_Occurred()) return NULL;
    const char *value;
    Py_ssize_t value_size;
    if (text_arg(args[1], &value, &value_size) < 0) return NULL;
    proxy_status status = proxy_enqueue_shared_queue((uint32_t)queue_id, value, (size_t)value_size);
    if (status != PROXY_OK) return host_error("proxy_enqueue_shared_queue", status);
    Py_RETURN_NONE;
}

static PyObject *h_dequeue_shared_queue(PyObject *self, PyObject *arg) {
    long queue_id = PyLong_AsLong(arg);
    if (queue_id == -1 && PyErr_Occurred()) return NULL;
    char *value = NULL;
    size_t value_size = 0;
    proxy_status status = proxy_dequeue_shared_queue((uint32_t)queue_id, &value, &value_size);
    if (status == PROXY_EMPTY) Py_RETURN_NONE;
    if (status != PROXY_OK) return host_error("proxy_dequeue_shared_queue", status);
    return take_bytes(value, value_size);
}

/* ---- HTTP and gRPC callouts ---- */

static PyObject *h_http_call(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    CHECK_NARGS(5, "http_call");
    const char *upstream, *body;
    Py_ssize_t upstream_size, body_size;
    if (text_arg(args[0], &upstream, &upstream_size) < 0 || text_arg(args[2], &body, &body_size) < 0) return NULL;
    long timeout = long_arg(args[4]);
    if (timeout == -1 && PyErr_Occurred()) return NULL;
    char *headers = NULL, *trailers = NULL;
    size_t headers_size, trailers_size;
    if (serialize_pairs(args[1], &headers, &headers_size) < 0) return NULL;
    if (serialize_pairs(args[3], &trailers, &trailers_size) < 0) {
        free(headers);
        return NULL;
    }
    uint32_t token = 0;
    proxy_status status = proxy_http_call(upstream, (size_t)upstream_size, headers, headers_size, body,
                                          (size_t)body_size, trailers, trailers_size, (uint32_t)timeout, &token);
    free(headers);
    free(trailers);
    if (status != PROXY_OK) return host_error("proxy_http_call", status);
    return PyLong_FromUnsignedLong(token);
}

static PyObject *h_grpc_call(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    CHECK_NARGS(6, "grpc_call");
    const char *upstream, *service, *method, *message;
    Py_ssize_t upstream_size, service_size, method_size, message_size;
    if (text_arg(args[0], &upstream, &upstream_size) < 0 || text_arg(args[1], &service, &service_size) < 0 ||
        text_arg(args[2], &method, &method_size) < 0 || text_arg(args[4], &message, &message_size) < 0)
        return NULL;
    long timeout = long_arg(args[5]);
    if (timeout == -1 && PyErr_Occurred()) return NULL;
    char *metadata;
    size_t metadata_size;
    if (serialize_pairs(args[3], &metadata, &metadata_size) < 0) return NULL;
    uint32_t token = 0;
    proxy_status status = proxy_grpc_call(upstream, (size_t)upstream_size, service, (size_t)service_size, method,
                                          (size_t)method_size, metadata, metadata_size, message, (size_t)message_size,
                                          (uint32_t)timeout, &token);
    free(metadata);
    if (status != PROXY_OK) return host_error("proxy_grpc_call", status);
    return PyLong_FromUnsignedLong(token);
}

static PyObject *h_grpc_stream(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    CHECK_NARGS(4, "grpc_stream");
    const char *upstream, *service, *method;
    Py_ssize_t upstream_size, service_size, method_size;
    if (text_arg(args[0], &upstream, &upstream_size) < 0 || text_arg(args[1], &service, &service_size) < 0 ||
        text_arg(args[2], &method, &method_size) < 0)
        return NULL;
    char *metadata;
    size_t metadata_size;
    if (serialize_pairs(args[3], &metadata, &metadata_size) < 0) return NULL;
    uint32_t token = 0;
    proxy_status status = proxy_grpc_stream(upstream, (size_t)upstream_size, service, (size_t)service_size, method,
                                            (size_t)method_size, metadata, metadata_size, &token);
    free(metadata);
    if (status != PROXY_OK) return host_error("proxy_grpc_stream", status);
    return PyLong_FromUnsignedLong(token);
}

static PyObject *h_grpc_send(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    CHECK_NARGS(3, "grpc_send");
    long token = long_arg(args[0]);
    int end_stream = PyObject_IsTrue(args[2]);
    if (PyErr_Occurred()) return NULL;
    const char *message;
    Py_ssize_t message_size;
    if (text_arg(args[1], &message, &message_size) < 0) return NULL;
    proxy_status status = proxy_grpc_send((uint32_t)token, message, (size_t)message_size, (uint32_t)end_stream);
    if (status != PROXY_OK) return host_error("proxy_grpc_send", status);
    Py_RETURN_NONE;
}

static PyObject *h_grpc_cancel(PyObject *self, PyObject *arg) {
    long token = PyLong_AsLong(arg);
    if (token == -1 && PyErr_Occurred()) return NULL;
    proxy_status status = proxy_grpc_cancel((uint32_t)token);
    if (status != PROXY_OK) return host_error("proxy_grpc_cancel", status);
    Py_RETURN_NONE;
}

static PyObject *h_grpc_close(PyObject *self, PyObject *arg) {
    long token = PyLong_AsLong(arg);
    if (token == -1 && PyErr_Occurred()) return NULL;
    proxy_status status = proxy_grpc_close((uint32_t)token);
    if (status != PROXY_OK) return host_error("proxy_grpc_close", status);
    Py_RETURN_NONE;
}

static PyObject *h_call_foreign_function(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    CHECK_NARGS(2, "call_foreign_function");
    const char *name, *arguments;
    Py_ssize_t name_size, arguments_size;
    if (text_arg(args[0], &name, &name_size) < 0 || text_arg(args[1], &arguments, &arguments_size) < 0) return NULL;
    char *results = NULL;
    size_t results_size = 0;
    proxy_status status =
        proxy_call_foreign_function(name, (size_t)name_size, arguments, (size_t)arguments_size, &results, &results_size);
    if (status != PROXY_OK) return host_error("proxy_call_foreign_function", status);
    return take_bytes(results, results_size);
}

/*
 * Build time only: give a metaclass type's own attribute lookup.  For enums
 * in 3.11, EnumType.__getattr__ routes every `Action.CONTINUE` through a
 * bound method-wrapper of type.__getattribute__ (about as costly as the rest
 * of a small callback); when every member sits in the class dict the plain
 * lookup answers the same.  _dispatch.preinit checks that before calling.
 */
static PyObject *h_plain_class_lookup(PyObject *self, PyObject *arg) {
    if (!PyType_Check(arg) || !PyType_IsSubtype((PyTypeObject *)arg, &PyType_Type)) {
        PyErr_SetString(PyExc_TypeError, "plain_class_lookup() takes a metaclass");
        return NULL;
    }
    ((PyTypeObject *)arg)->tp_getattro = PyType_Type.tp_getattro;
    Py_RETURN_NONE;
}

/* After filter code raised (meshext.sdk._dispatch.handle_error): see meshext_stop_calls. */
static PyObject *h_stop_calls(PyObject *self, PyObject *arg) {
    long context_id = PyLong_AsLong(arg);
    if (context_id == -1 && PyErr_Occurred()) return NULL;
    meshext_stop_calls((uint32_t)context_id);
    Py_RETURN_NONE;
}

/* A callout's callback failed open (meshext.sdk._dispatch): see meshext_resume_paused. */
static PyObject *h_resume_paused(PyObject *self, PyObject *arg) {
    long context_id = PyLong_AsLong(arg);
    if (context_id == -1 && PyErr_Occurred()) return NULL;
    meshext_resume_paused((uint32_t)context_id);
    Py_RETURN_NONE;
}

/* Build time only (see meshext_memfs_forget). */
static PyObject *h_forget_file(PyObject *self, PyObject *arg) {
    const char *path;
    Py_ssize_t size;
    if (text_arg(arg, &path, &size) < 0) return NULL;
    return PyBool_FromLong(meshext_memfs_forget(path, (uint32_t)size) == 0);
}

#define FAST(name) {#name, (PyCFunction)(void (*)(void))h_##name, METH_FASTCALL, NULL}
#define ONE(name) {#name, (PyCFunction)h_##name, METH_O, NULL}
#define NONE(name) {#name, (PyCFunction)h_##name, METH_NOARGS, NULL}

static PyMethodDef host_methods[] = {
    FAST(log), NONE(get_log_level), NONE(current_time_ns), ONE(set_tick_period), ONE(set_effective_context),
    NONE(done), FAST(get_buffer), ONE(get_headers), FAST(set_headers), ONE(continue_stream),
    ONE(close_stream), NONE(get_status), FAST(send_local_response), ONE(get_property), FAST(set_property),
    FAST(define_metric), FAST(increment_metric), FAST(record_metric), ONE(get_metric), ONE(get_shared_data),
    FAST(set_shared_data), ONE(register_shared_queue), FAST(resolve_shared_queue), FAST(enqueue_shared_queue),
    ONE(dequeue_shared_queue), FAST(http_call), FAST(grpc_call), FAST(grpc_stream), FAST(grpc_send),
    ONE(grpc_cancel), ONE(grpc_close), FAST(call_foreign_function), ONE(stop_calls), ONE(resume_paused), ONE(forget_file),
    ONE(plain_class_lookup),
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef host_module = {
    PyModuleDef_HEAD_INIT, "_meshext_host", "Proxy-Wasm host functions (see meshext.sdk).", -1, host_methods,
};

PyObject *PyInit__meshext_host(void) {
    /* The exception is the SDK's Python class (one base for all SDK errors);
       meshext.sdk.errors imports nothing that needs this module. */
    if (!HostError) {
        PyObject *errors = PyImport_ImportModule("meshext.sdk.errors");
        HostError = errors ? PyObject_GetAttrString(errors, "HostError") : NULL;
        Py_XDECREF(errors);
        if (!HostError) return NULL;
    }
    PyObject *module = PyModule_Create(&host_module);
    if (!module) return NULL;
    if (PyModule_AddType(module, &HeaderMapType) < 0 || PyModule_AddType(module, &BodyType) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}

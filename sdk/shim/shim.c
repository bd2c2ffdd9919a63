/*
 * The Proxy-Wasm side of a meshext module: exports the `proxy_on_*`
 * callbacks Envoy calls and forwards them to Python objects.
 *
 * Contexts mirror proxy-wasm-rust-sdk: one RootContext per plugin
 * (context_create with parent 0), and per HTTP stream or TCP connection a
 * child created from its root.  The hot path stays in C: a callback the
 * filter class does not override returns CONTINUE without entering Python,
 * a child's Python object is only created when a callback it overrides
 * first fires, and a finished child that nothing can tell from a new object
 * serves the next stream (park_child).  Everything else (errors, fail
 * policy, callouts, VM start) is Python in sdk/_dispatch.py.
 *
 * The per-stream callbacks come from one table, meshext.sdk.contexts.
 * STREAM_CALLBACKS: `meshext build` generates stream_callbacks.h from it
 * (sdk/builder/shim.py) with their bit numbers (CB_*), method names and
 * exports.
 *
 * The interpreter is started and the filter imported by meshext_preinit at
 * build time; the build pipeline snapshots memory and globals afterwards,
 * so Envoy never runs the interpreter start-up.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdlib.h>
#include <string.h>

#include "structmember.h"

#include "memfs.h"
#include "proxy_wasm.h"
#include "shim.h"

#define EXPORT(name) __attribute__((export_name(#name)))

enum { KIND_ROOT = 1, KIND_CHILD = 2 };

/* The kind of a child context (the `stream` argument of child_callback). */
enum { CHILD_HTTP = 0, CHILD_TCP = 1 };

/* How a stream callback's ABI arguments become Python arguments. */
enum { ARGS_NONE, ARGS_END, ARGS_SIZE_END, ARGS_PEER };

/* The `holds` of a callback whose answer holds no direction (on_downstream_close...). */
enum { HOLDS_NOTHING = -1 };

/* ---- exports: HTTP and TCP stream callbacks (generated), CB_* bits and method names ---- */

/* What every generated export calls (below). */
static uint32_t child_callback(uint32_t context_id, int bit, int stream, int holds, int kind, uint32_t size,
                               uint32_t end);

#include "stream_callbacks.h"

typedef struct {
    uint32_t id;       /* 0 marks a free slot */
    uint32_t root_id;  /* for children */
    uint32_t mask;     /* overridden callbacks, one bit per CB_* (roots: of their children's classes) */
    uint8_t kind;
    uint8_t stream;    /* children: CHILD_TCP once known to be a TCP stream */
    uint8_t failed;    /* children: filter code raised; none of it is called again (meshext_stop_calls) */
    uint8_t paused;    /* children: a bit per PROXY_STREAM_* whose last callback paused it, not resumed since */
    PyObject *object;  /* NULL until created */
    /* roots: child classes that can be made without running Python code
       (no custom __init__ or new_*_context), else NULL */
    PyObject *fast_http, *fast_stream;
    /* roots: a finished child of each kind kept for the next stream (park_child) */
    PyObject *spare_http, *spare_stream;
    /* roots: (name, value) str pairs every response of their HTTP children gets
       (response_headers_to_add), or NULL */
    PyObject *response_headers;
} context_slot;

static context_slot *slots;
static uint32_t slot_capacity, slot_count;

/* Where child contexts keep `root` and `context_id`: slots of
   meshext.sdk.contexts._CalloutMixin, whose instance size is context_size. */
static Py_ssize_t root_offset, context_id_offset, context_size;

/* Declared in CPython's internal headers (3.11): no attribute set on `object`. */
extern int _PyObject_IsInstanceDictEmpty(PyObject *object);

static PyObject *dispatch;          /* meshext.sdk._dispatch */
static PyObject *pending_callouts;  /* meshext.sdk.callouts.pending (token -> call) */
static PyObject *empty_tuple;
/* Interned callback method names, indexed by CB_* bit (the mask has 32 bits). */
static PyObject *method_names[32];
static PyObject *str_create_root, *str_children, *str_create_child, *str_handle_error, *str_vm_start, *str_configure,
    *str_on_tick, *str_on_queue_ready, *str_http_call_response, *str_grpc_initial_metadata, *str_grpc_message,
    *str_grpc_trailing_metadata, *str_grpc_close, *str_delete_context, *str_foreign_function;

/* ---- context table: open addressing, linear probing, backward-shift delete ---- */

static uint32_t slot_index(uint32_t id) { return (id * 2654435761u) & (slot_capacity - 1); }

static context_slot *find_slot(uint32_t id) {
    if (!slots) return NULL;
    for (uint32_t i = slot_index(id);; i = (i + 1) & (slot_capacity - 1)) {
        if (slots[i].id == id) return &slots[i];
        if (slots[i].id == 0) return NULL;
    }
}

static context_slot *insert_slot(uint32_t id);

static void grow_slots(void) {
    context_slot *old = slots;
    uint32_t old_capacity = slot_capacity;
    slot_capacity = slot_capacity ? slot_capacity * 2 : 64;
    slots = calloc(slot_capacity, sizeof *slots);
    slot_count = 0;
    for (uint32_t i = 0; i < old_capacity; i++) {
        if (old[i].id) *insert_slot(old[i].id) = old[i];
    }
    free(old);
}

static context_slot *insert_slot(uint32_t id) {
    if ((slot_count + 1) * 2 > slot_capacity) grow_slots();
    uint32_t i = slot_index(id);
    while (slots[i].id != 0 && slots[i].id != id) i = (i + 1) & (slot_capacity - 1);
    if (slots[i].id == 0) slot_count++;
    memset(&slots[i], 0, sizeof slots[i]);
    slots[i].id = id;
    return &slots[i];
}

static void remove_slot(context_slot *slot) {
    uint32_t i = (uint32_t)(slot - slots);
    slots[i].id = 0;
    slot_count--;
    for (uint32_t j = (i + 1) & (slot_capacity - 1); slots[j].id; j = (j + 1) & (slot_capacity - 1)) {
        uint32_t home = slot_index(slots[j].id);
        /* Move j back into the hole at i unless its home lies cyclically in (i, j]. */
        if ((j > i && (home <= i || home > j)) || (j < i && (home <= i && home > j))) {
            slots[i] = slots[j];
            slots[j].id = 0;
            i = j;
        }
    }
}

/* ---- calling into Python ---- */

/* An exception escaped filter code: _dispatch logs it and applies the fail policy. */
static uint32_t handle_error(PyObject *context, const char *callback) {
    PyObject *type, *exception, *traceback;
    PyErr_Fetch(&type, &exception, &traceback);
    PyErr_NormalizeException(&type, &exception, &traceback);
    if (exception && traceback) PyException_SetTraceback(exception, traceback);
    Py_XDECREF(type);
    Py_XDECREF(traceback);
    PyObject *name = PyUnicode_FromString(callback);
    PyObject *args[] = {dispatch, context ? context : Py_None, name, exception ? exception : Py_None};
    PyObject *result = name ? PyObject_VectorcallMethod(str_handle_error, args, 4, NULL) : NULL;
    Py_XDECREF(name);
    Py_XDECREF(exception);
    uint32_t action = 0;
    if (result) {
        action = (uint32_t)PyLong_AsUnsignedLong(result);
        Py_DECREF(result);
    }
    if (PyErr_Occurred()) {
        /* The error handler itself failed: keep traffic flowing and say so. */
        PyErr_Clear();
        static const char message[] = "meshext: the error handler failed; continuing";
        proxy_log(PROXY_LOG_CRITICAL, message, sizeof message - 1);
        action = 0;
    }
    return action;
}

/* A callback's answer (None is CONTINUE) as an action; consumes `result`; -1 with an exception set. */
static int64_t action_value(PyObject *result) {
    if (!result) return -1;
    long value = result == Py_None ? 0 : PyLong_AsLong(result);
    Py_DECREF(result);
    return value == -1 && PyErr_Occurred() ? -1 : (uint32_t)value;
}

static uint32_t action_of(PyObject *result, PyObject *context, const char *callback) {
    int64_t action = action_value(result);
    return action < 0 ? handle_error(context, callback) : (uint32_t)action;
}

static PyObject *call_dispatch(PyObject *name, PyObject **args, size_t nargs) {
    args[0] = dispatch;
    return PyObject_VectorcallMethod(name, args, nargs, NULL);
}

/* A new Python int; NULL with an exception set if that fails. */
static PyObject *new_int(uint32_t value) { return PyLong_FromUnsignedLong(value); }

/* Writes a child's `root` or `context_id` slot; steals `value`. */
static void set_slot(PyObject *object, Py_ssize_t offset, PyObject *value) {
    PyObject **field = (PyObject **)((char *)object + offset);
    Py_XSETREF(*field, value);
}

/* The per-request object without a Python call: the root's spare (see
   park_child) or tp_new, then its two slots written directly. */
static PyObject *fast_child(context_slot *root, int stream, uint32_t context_id) {
    PyObject **spare = stream ? &root->spare_stream : &root->spare_http;
    PyTypeObject *cls = (PyTypeObject *)(stream ? root->fast_stream : root->fast_http);
    PyObject *id = new_int(context_id);
    if (!id) return NULL;
    PyObject *object = *spare ? *spare : cls->tp_new(cls, empty_tuple, NULL);
    *spare = NULL;
    if (!object) {
        Py_DECREF(id);
        return NULL;
    }
    set_slot(object, root_offset, Py_NewRef(root->object));
    set_slot(object, context_id_offset, id);
    return object;
}

/*
 * A finished child becomes its root's spare for the next stream when nothing
 * could tell it from a new object: only the shim holds it, its class is
 * still the one the shim makes, with no __del__ and no slots of its own, and
 * it has no weak references and no attributes.  Returns 1 if it was kept.
 */
static int park_child(uint32_t root_id, int stream, PyObject *object) {
    context_slot *root = find_slot(root_id);
    if (!root) return 0;
    PyObject **spare = stream ? &root->spare_stream : &root->spare_http;
    PyTypeObject *type = Py_TYPE(object);
    if (*spare || (PyObject *)type != (stream ? root->fast_stream : root->fast_http) || Py_REFCNT(object) != 1 ||
        type->tp_finalize || type->tp_del || type->tp_basicsize != context_size ||
        *PyObject_GET_WEAKREFS_LISTPTR(object) || !_PyObject_IsInstanceDictEmpty(object))
        return 0;
    *spare = object;
    return 1;
}

static PyObject *child_object(context_slot *slot, int stream) {
    if (slot->object) return slot->object;
    context_slot *root = find_slot(slot->root_id);
    if (!root || !root->object) return NULL;
    slot->stream = (uint8_t)stream;
    if (stream ? root->fast_stream : root->fast_http) {
        slot->object = fast_child(root, stream, slot->id);
    } else {
        PyObject *id = new_int(slot->id);
        PyObject *args[] = {NULL, root->object, id, stream ? Py_True : Py_False};
        slot->object = id ? call_dispatch(str_create_child, args, 4) : NULL;
        Py_XDECREF(id);
    }
    if (!slot->object) {
        /* Set first: handle_error may make Envoy call this context again. */
        slot->failed = 1;
        handle_error(root->object, stream ? "new_stream_context" : "new_http_context");
    }
    return slot->object;
}

static uint32_t root_mask(context_slot *slot) {
    context_slot *root = find_slot(slot->root_id);
    return root ? root->mask : 0;
}

/*
 * Calls `bit`'s method on a child context, creating the object on first use.
 * Python arguments are only built once the filter is known to override the
 * callback: the common case (not overridden) allocates nothing.  A context
 * whose code raised before gets CONTINUE without a call (see
 * _dispatch.handle_error).
 */
static uint32_t slot_callback(context_slot *slot, int bit, int stream, int kind, uint32_t size, uint32_t end) {
    if (!slot || slot->failed || !(root_mask(slot) & (1u << bit))) return 0;
    PyObject *object = child_object(slot, stream);
    if (!object) return 0;
    PyObject *args[3] = {object, NULL, NULL};
    size_t nargs = 1;
    if (kind == ARGS_END) {
        args[nargs++] = end ? Py_True : Py_False;
    } else if (kind == ARGS_SIZE_END || kind == ARGS_PEER) {
        if (!(args[nargs++] = new_int(size))) return handle_error(object, "argument conversion");
        if (kind == ARGS_SIZE_END) args[nargs++] = end ? Py_True : Py_False;
    }
    PyObject *result = PyObject_VectorcallMethod(method_names[bit], args, nargs, NULL);
    if (kind == ARGS_SIZE_END || kind == ARGS_PEER) Py_DECREF(args[1]);
    int64_t action = action_value(result);
    /* The callback's name is only needed for the error report. */
    return action < 0 ? handle_error(object, PyUnicode_AsUTF8(method_names[bit])) : (uint32_t)action;
}

/* The context whose code runs now: Envoy's callback, or a callout answer (meshext_effective_context). */
static uint32_t current_context;

/* A child's response_headers_to_add, set before its on_response_headers (if any) runs: no Python runs for them. */
static void add_response_headers(context_slot *slot) {
    context_slot *root = slot && !slot->failed ? find_slot(slot->root_id) : NULL;
    PyObject *pairs = root ? root->response_headers : NULL;
    for (Py_ssize_t i = 0; pairs && i < PyTuple_GET_SIZE(pairs); i++) {
        PyObject *pair = PyTuple_GET_ITEM(pairs, i);
        Py_ssize_t name_size, value_size;
        const char *name = PyUnicode_AsUTF8AndSize(PyTuple_GET_ITEM(pair, 0), &name_size);
        const char *value = PyUnicode_AsUTF8AndSize(PyTuple_GET_ITEM(pair, 1), &value_size);
        /* _dispatch.children checked they are str; a refusal (the response already went) leaves nothing to do */
        if (name && value)
            proxy_replace_header_map_value(PROXY_MAP_HTTP_RESPONSE_HEADERS, name, (size_t)name_size, value,
                                           (size_t)value_size);
        else
            PyErr_Clear();
    }
}

/*
 * Every stream callback, overridden or not, passes here.  `holds` is the
 * direction (PROXY_STREAM_*) Envoy holds when it answers PAUSE: remembered
 * for meshext_resume_paused, which needs it when a callout's callback fails
 * open.
 */
static uint32_t child_callback(uint32_t context_id, int bit, int stream, int holds, int kind, uint32_t size,
                               uint32_t end) {
    current_context = context_id;
    if (bit == CB_ON_RESPONSE_HEADERS) add_response_headers(find_slot(context_id));
    uint32_t action = slot_callback(find_slot(context_id), bit, stream, kind, size, end);
    /* Found again: filter code may have created contexts, which can move the table. */
    context_slot *slot = holds == HOLDS_NOTHING ? NULL : find_slot(context_id);
    if (slot) {
        if (action) slot->paused |= (uint8_t)(1u << holds);
        else slot->paused &= (uint8_t)~(1u << holds);
    }
    return action;
}

void meshext_stop_calls(uint32_t context_id) {
    context_slot *slot = find_slot(context_id);
    if (slot && slot->kind == KIND_CHILD) slot->failed = 1;
}

void meshext_effective_context(uint32_t context_id) { current_context = context_id; }

void meshext_stream_continued(uint32_t direction) {
    context_slot *slot = find_slot(current_context);
    if (slot && direction < 8) slot->paused &= (uint8_t)~(1u << direction);
}

void meshext_resume_paused(uint32_t context_id) {
    context_slot *slot = find_slot(context_id);
    if (!slot || slot->kind != KIND_CHILD) return;
    uint8_t paused = slot->paused;
    slot->paused = 0;
    for (uint32_t direction = 0; direction < 8; direction++) {
        /* A stream Envoy has already ended refuses; nothing is left to resume then. */
        if (paused & (1u << direction)) proxy_continue_stream(direction);
    }
}

/* ---- exports: ABI, memory ---- */

EXPORT(proxy_abi_version_0_2_1) void proxy_abi_version_0_2_1(void) {}

EXPORT(proxy_on_memory_allocate) void *proxy_on_memory_allocate(size_t size) { return malloc(size); }

/* ---- exports: root context ---- */

/*
 * What _dispatch.children answers of a root: the callback mask of its
 * children and the child classes the shim may make itself (None: ask
 * Python).  Spares of the previous classes are dropped: they must not serve
 * a stream of the new ones.
 */
static void set_children(context_slot *slot, PyObject *answer) {
    slot->mask = (uint32_t)PyLong_AsUnsignedLong(PyTuple_GET_ITEM(answer, 0));
    PyObject *fast_http = PyTuple_GET_ITEM(answer, 1), *fast_stream = PyTuple_GET_ITEM(answer, 2);
    Py_XSETREF(slot->fast_http, fast_http == Py_None ? NULL : Py_NewRef(fast_http));
    Py_XSETREF(slot->fast_stream, fast_stream == Py_None ? NULL : Py_NewRef(fast_stream));
    Py_CLEAR(slot->spare_http);
    Py_CLEAR(slot->spare_stream);
    PyObject *headers = PyTuple_GET_ITEM(answer, 3);
    Py_XSETREF(slot->response_headers, PyTuple_GET_SIZE(headers) ? Py_NewRef(headers) : NULL);
}

EXPORT(proxy_on_context_create) void proxy_on_context_create(uint32_t context_id, uint32_t parent_id) {
    if (!dispatch) return;
    context_slot *slot = insert_slot(context_id);
    if (parent_id != 0) {
        slot->kind = KIND_CHILD;
        slot->root_id = parent_id;
        return;
    }
    slot->kind = KIND_ROOT;
    PyObject *id = new_int(context_id);
    PyObject *args[] = {NULL, id};
    PyObject *root = id ? call_dispatch(str_create_root, args, 2) : NULL;
    Py_XDECREF(id);
    if (!root) {
        handle_error(NULL, "create_root");
        return;
    }
    /* No callbacks and no classes yet (mask 0): Envoy starts no stream on a
       root before its configuration is accepted, and proxy_on_configure then
       asks _dispatch.children. */
    find_slot(context_id)->object = root;
}

static PyObject *read_buffer(uint32_t buffer, size_t size) {
    char *data = NULL;
    size_t got = 0;
    if (size == 0 || proxy_get_buffer_bytes(buffer, 0, size, &data, &got) != PROXY_OK) return PyBytes_FromStringAndSize("", 0);
    PyObject *bytes = PyBytes_FromStringAndSize(data, (Py_ssize_t)got);
    free(data);
    return bytes;
}

static uint32_t root_call(uint32_t root_id, PyObject *method, PyObject *arg1, PyObject *arg2, int nargs, const char *what) {
    context_slot *slot = find_slot(root_id);
    if (!slot || !slot->object) {
        Py_XDECREF(arg1);
        Py_XDECREF(arg2);
        return 0;
    }
    PyObject *args[] = {NULL, slot->object, arg1, arg2};
    PyObject *result = call_dispatch(method, args, (size_t)nargs + 2);
    Py_XDECREF(arg1);
    Py_XDECREF(arg2);
    return action_of(result, slot->object, what);
}

EXPORT(proxy_on_vm_start) uint32_t proxy_on_vm_start(uint32_t root_id, size_t size) {
    return root_call(root_id, str_vm_start, read_buffer(PROXY_BUFFER_VM_CONFIGURATION, size), NULL, 1, "on_vm_start");
}

EXPORT(proxy_on_configure) uint32_t proxy_on_configure(uint32_t root_id, size_t size) {
    uint32_t accepted = root_call(root_id, str_configure, read_buffer(PROXY_BUFFER_PLUGIN_CONFIGURATION, size),
                                  NULL, 1, "on_configure");
    context_slot *slot = find_slot(root_id);
    if (!accepted || !slot || !slot->object) return accepted;
    /* The root may have chosen its context classes for this configuration. */
    PyObject *args[] = {NULL, slot->object};
    PyObject *answer = call_dispatch(str_children, args, 2);
    if (!answer) return handle_error(slot->object, "children");
    set_children(slot, answer);
    Py_DECREF(answer);
    return accepted;
}

EXPORT(proxy_on_tick) void proxy_on_tick(uint32_t root_id) { root_call(root_id, str_on_tick, NULL, NULL, 0, "on_tick"); }

EXPORT(proxy_on_queue_ready) void proxy_on_queue_ready(uint32_t root_id, uint32_t queue_id) {
    root_call(root_id, str_on_queue_ready, new_int(queue_id), NULL, 1, "on_queue_ready");
}

EXPORT(proxy_on_foreign_function) void proxy_on_foreign_function(uint32_t root_id, uint32_t function_id, size_t size) {
    root_call(root_id, str_foreign_function, new_int(function_id),
              read_buffer(PROXY_BUFFER_FOREIGN_FUNCTION_ARGUMENTS, size), 2, "on_foreign_function");
}

/* ---- exports: end of a context ---- */

/* Written here, not generated: they serve both kinds of child (known from
   the slot), and roots hear on_done too. */

EXPORT(proxy_on_log) void proxy_on_log(uint32_t id) {
    context_slot *slot = find_slot(id);
    if (slot && slot->kind == KIND_CHILD) slot_callback(slot, CB_ON_LOG, slot->stream, ARGS_NONE, 0, 0);
}

EXPORT(proxy_on_done) uint32_t proxy_on_done(uint32_t id) {
    context_slot *slot = find_slot(id);
    /* Roots always hear on_done (RootContext.on_done may answer False to finish
       later with proxy_done()); children only when their class overrides it. */
    if (!slot || !slot->object ||
        (slot->kind == KIND_CHILD && (slot->failed || !(root_mask(slot) & (1u << CB_ON_DONE)))))
        return 1;
    PyObject *args[] = {slot->object};
    PyObject *result = PyObject_VectorcallMethod(method_names[CB_ON_DONE], args, 1, NULL);
    if (!result) {
        handle_error(slot->object, "on_done");
        return 1;
    }
    int done = result == Py_None || PyObject_IsTrue(result);
    Py_DECREF(result);
    return (uint32_t)(done != 0);
}

EXPORT(proxy_on_delete) void proxy_on_delete(uint32_t id) {
    context_slot *slot = find_slot(id);
    if (!slot) return;
    PyObject *object = slot->object;
    uint32_t root_id = slot->root_id;
    int child = slot->kind == KIND_CHILD, stream = slot->stream;
    Py_XDECREF(slot->fast_http);
    Py_XDECREF(slot->fast_stream);
    Py_XDECREF(slot->spare_http);
    Py_XDECREF(slot->spare_stream);
    Py_XDECREF(slot->response_headers);
    remove_slot(slot);
    if (object && PyDict_GET_SIZE(pending_callouts) > 0) {
        /* Forget pending callouts of this context (their responses would find no one). */
        PyObject *context_id = new_int(id);
        PyObject *args[] = {NULL, context_id};
        PyObject *result = context_id ? call_dispatch(str_delete_context, args, 2) : NULL;
        Py_XDECREF(context_id);
        if (!result) PyErr_Clear();
        Py_XDECREF(result);
    }
    if (object && child && park_child(root_id, stream, object)) return;
    Py_XDECREF(object);
}

/* ---- exports: callouts (routed by token in Python) ---- */

static void callout(PyObject *method, uint32_t token, uint32_t a, uint32_t b, uint32_t c, int nargs, const char *what) {
    if (!dispatch) return;
    PyObject *args[] = {NULL, new_int(token), new_int(a), new_int(b), new_int(c)};
    PyObject *result = call_dispatch(method, args, (size_t)nargs + 1);
    for (int i = 1; i < 5; i++) Py_XDECREF(args[i]);
    if (!result) handle_error(NULL, what);
    Py_XDECREF(result);
}

EXPORT(proxy_on_http_call_response)
void proxy_on_http_call_response(uint32_t root_id, uint32_t token, size_t headers, size_t body_size, size_t trailers) {
    callout(str_http_call_response, token, headers, body_size, trailers, 4, "on_http_call_response");
}
EXPORT(proxy_on_grpc_receive_initial_metadata)
void proxy_on_grpc_receive_initial_metadata(uint32_t root_id, uint32_t token, size_t elements) {
    callout(str_grpc_initial_metadata, token, elements, 0, 0, 2, "on_grpc_initial_metadata");
}
EXPORT(proxy_on_grpc_receive) void proxy_on_grpc_receive(uint32_t root_id, uint32_t token, size_t size) {
    callout(str_grpc_message, token, size, 0, 0, 2, "on_grpc_message");
}
EXPORT(proxy_on_grpc_receive_trailing_metadata)
void proxy_on_grpc_receive_trailing_metadata(uint32_t root_id, uint32_t token, size_t elements) {
    callout(str_grpc_trailing_metadata, token, elements, 0, 0, 2, "on_grpc_trailing_metadata");
}
EXPORT(proxy_on_grpc_close) void proxy_on_grpc_close(uint32_t root_id, uint32_t token, uint32_t status_code) {
    callout(str_grpc_close, token, status_code, 0, 0, 2, "on_grpc_close");
}

/* ---- build time: start the interpreter and import the filter ---- */

extern PyObject *PyInit__meshext_host(void);

static int intern_names(void) {
    for (int bit = 0; bit < CALLBACK_COUNT; bit++) {
        if (!(method_names[bit] = PyUnicode_InternFromString(callback_methods[bit]))) return -1;
    }
    struct { PyObject **slot; const char *text; } names[] = {
        {&str_create_root, "create_root"}, {&str_create_child, "create_child"},
        {&str_handle_error, "handle_error"}, {&str_vm_start, "vm_start"}, {&str_configure, "configure"},
        {&str_children, "children"},
        {&str_on_tick, "tick"}, {&str_on_queue_ready, "queue_ready"},
        {&str_http_call_response, "http_call_response"}, {&str_grpc_initial_metadata, "grpc_initial_metadata"},
        {&str_grpc_message, "grpc_message"}, {&str_grpc_trailing_metadata, "grpc_trailing_metadata"},
        {&str_grpc_close, "grpc_close"}, {&str_delete_context, "delete_context"},
        {&str_foreign_function, "foreign_function"},
    };
    for (size_t i = 0; i < sizeof names / sizeof *names; i++) {
        if (!(*names[i].slot = PyUnicode_InternFromString(names[i].text))) return -1;
    }
    return 0;
}

/* Fills root_offset, context_id_offset and context_size from _CalloutMixin. */
static int find_context_layout(void) {
    PyObject *contexts = PyImport_ImportModule("meshext.sdk.contexts");
    PyObject *base = contexts ? PyObject_GetAttrString(contexts, "_CalloutMixin") : NULL;
    PyObject *root = base ? PyObject_GetAttrString(base, "root") : NULL;
    PyObject *context_id = base ? PyObject_GetAttrString(base, "context_id") : NULL;
    int found = root && context_id && Py_IS_TYPE(root, &PyMemberDescr_Type) &&
                Py_IS_TYPE(context_id, &PyMemberDescr_Type);
    if (found) {
        root_offset = ((PyMemberDescrObject *)root)->d_member->offset;
        context_id_offset = ((PyMemberDescrObject *)context_id)->d_member->offset;
        context_size = ((PyTypeObject *)base)->tp_basicsize;
    } else if (!PyErr_Occurred()) {
        PyErr_SetString(PyExc_TypeError, "meshext.sdk.contexts._CalloutMixin must keep root and context_id in slots");
    }
    Py_XDECREF(contexts);
    Py_XDECREF(base);
    Py_XDECREF(root);
    Py_XDECREF(context_id);
    return found ? 0 : -1;
}

/*
 * `meshext build` prunes code that cannot run after pre-initialisation
 * (sdk/builder/prune.py) and points the ways into it here: each returns 0
 * (NULL) with a Python exception set, which every caller already handles.
 * SyntaxError because stdlib code that parses optionally (traceback's caret
 * positions) catches exactly that; ImportError so `try: import _c_module`
 * falls back to pure Python.
 */
EXPORT(meshext_no_compiler) int meshext_no_compiler(void) {
    PyErr_SetString(PyExc_SyntaxError,
                    "meshext modules carry no Python compiler at run time (eval/exec/compile of source text, "
                    "dataclass or namedtuple creation in a callback); fix: do that at import time");
    return 0;
}

EXPORT(meshext_no_module) int meshext_no_module(void) {
    PyErr_SetString(PyExc_ImportError,
                    "meshext build left this C module out: nothing in the filter's files imports it; "
                    "fix: import it in the filter (a plain `import` statement) so the build keeps it");
    return 0;
}

/*
 * Called once by `meshext build` (never by Envoy) with the file-system image
 * already in memory.  Returns 0 on success; on failure the Python traceback
 * has gone to stderr (proxy_log at error level).
 */
EXPORT(meshext_preinit) int32_t meshext_preinit(uint8_t *image, uint32_t image_size) {
    meshext_memfs_mount(image, image_size);

    PyConfig config;
    PyConfig_InitIsolatedConfig(&config);
    config.site_import = 0;
    config.write_bytecode = 0;
    config.install_signal_handlers = 0;
    config.buffered_stdio = 0;
    config.module_search_paths_set = 1;
    PyStatus status = PyConfig_SetString(&config, &config.home, L"/");
    if (!PyStatus_Exception(status)) status = PyConfig_SetString(&config, &config.program_name, L"meshext");
    if (!PyStatus_Exception(status)) status = PyConfig_SetString(&config, &config.stdio_encoding, L"utf-8");
    if (!PyStatus_Exception(status)) status = PyWideStringList_Append(&config.module_search_paths, L"/app");
    if (!PyStatus_Exception(status)) status = PyWideStringList_Append(&config.module_search_paths, L"/lib/python3.11");
    if (!PyStatus_Exception(status)) status = Py_InitializeFromConfig(&config);
    PyConfig_Clear(&config);
    if (PyStatus_Exception(status)) {
        const char *message = status.err_msg ? status.err_msg : "Python start-up failed";
        proxy_log(PROXY_LOG_CRITICAL, message, strlen(message));
        return 1;
    }
    if (intern_names() < 0) goto failed;
    dispatch = PyImport_ImportModule("meshext.sdk._dispatch");
    if (!dispatch) goto failed;
    PyObject *callouts = PyImport_ImportModule("meshext.sdk.callouts");
    if (!callouts) goto failed;
    pending_callouts = PyObject_GetAttrString(callouts, "pending");
    Py_DECREF(callouts);
    if (!pending_callouts || !PyDict_Check(pending_callouts)) goto failed;
    empty_tuple = PyTuple_New(0);
    if (!empty_tuple || find_context_layout() < 0) goto failed;
    PyObject *result = PyObject_CallMethod(dispatch, "preinit", NULL);
    if (!result) goto failed;
    Py_DECREF(result);
    return 0;
failed:
    PyErr_Print();
    return 2;
}

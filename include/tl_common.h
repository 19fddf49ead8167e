/* tl_common.h - the one small header every tonio_loop source includes.
 *
 * It holds the module state (types and the few stdlib objects cached at
 * import) and tiny helpers. Each concept (loop, handle, timer, ...) has its
 * own header; nothing concept-specific belongs here.
 */
#ifndef TL_COMMON_H
#define TL_COMMON_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stddef.h>
#include <stdint.h>
#include <stdatomic.h>
#include <string.h>

#if PY_VERSION_HEX < 0x030B0000
#error "tonio_loop needs CPython 3.11 or newer"
#endif

#define TL_UNUSED(x) ((void)(x))
/* keeps a cold path out of its caller, so the hot one stays a few instructions */
#define TL_NOINLINE __attribute__((noinline))
#define TL_INLINE inline __attribute__((always_inline))
#define TL_LIKELY(x) __builtin_expect(!!(x), 1)
#define TL_UNLIKELY(x) __builtin_expect(!!(x), 0)

/* Free lists are plain arrays guarded by the GIL; a free-threaded build
 * relies on mimalloc instead. */
#ifdef Py_GIL_DISABLED
#define TL_FREELIST_MAX 0
#else
#define TL_FREELIST_MAX 2048
#endif

typedef struct tl_state {
    /* our types */
    PyTypeObject *loop_type;
    PyTypeObject *handle_type;
    PyTypeObject *timer_handle_type;
    PyTypeObject *event_type;
    PyTypeObject *future_type;
    PyTypeObject *future_iter_type;
    PyTypeObject *task_type;
    PyTypeObject *worker_key_type;   /* tl_dispatch.h */
    PyTypeObject *coromethod_type;   /* tl_coromethod.h */

    /* stdlib callables, fetched once at import (the C accelerated ones when
     * asyncio has them) */
    PyObject *events_module;         /* asyncio.events: _set_running_loop is
                                        looked up on use, so a swap for the
                                        pure-Python one is seen */
    PyObject *str_set_running_loop;
    PyObject *get_running_loop;      /* asyncio.events._get_running_loop */
    PyObject *get_asyncgen_hooks;    /* sys.get_asyncgen_hooks */
    PyObject *set_asyncgen_hooks;    /* sys.set_asyncgen_hooks */
    PyObject *format_callback_source; /* asyncio.format_helpers */
    PyObject *extract_stack;         /* asyncio.format_helpers.extract_stack */
    PyObject *base_events;           /* module: logger and _format_handle are
                                        looked up on use, so mocks apply */
    PyObject *isfuture;              /* asyncio.futures.isfuture */
    PyObject *ensure_future;         /* asyncio.tasks.ensure_future */
    PyObject *coroutines_module;     /* asyncio.coroutines: _is_debug_mode is
                                        looked up on use, so mocks apply */
    PyObject *set_wakeup_fd;         /* signal.set_wakeup_fd */
    PyObject *run_until_complete_cb; /* base_events._run_until_complete_cb */
    PyObject *future_cls;            /* what create_future() makes */
    PyObject *task_cls;              /* what create_task() makes */
    PyObject *base_event_loop_cls;   /* asyncio.BaseEventLoop, for borrowing */
    PyObject *iscoroutine;           /* asyncio.coroutines.iscoroutine */
    PyObject *iscoroutinefunction;   /* asyncio.coroutines.iscoroutinefunction */
    PyObject *valid_signals;         /* signal.valid_signals */
    PyObject *signal_signal;         /* signal.signal */
    PyObject *signal_siginterrupt;   /* signal.siginterrupt */
    PyObject *sighandler_noop;       /* asyncio.unix_events._sighandler_noop */
    PyObject *default_int_handler;   /* signal.default_int_handler */
    PyObject *sig_dfl;               /* signal.SIG_DFL */
    PyObject *str_call_exception_handler;
    PyObject *str_add_done_callback;
    PyObject *str_remove_done_callback;
    PyObject *str_log_destroy_pending;
    PyObject *str_asyncgen_firstiter_hook;
    PyObject *str_asyncgen_finalizer_hook;

    /* futures and tasks (future.c, task.c) */
    PyObject *fast_loop_type;        /* last Loop subclass seen to keep our
                                        call_soon (tl_loop_if_fast) */
    PyTypeObject *asyncio_future_type; /* _asyncio.Future: our Future's base */
    PyTypeObject *asyncio_task_type; /* _asyncio.Task: our Task's base */
    PyTypeObject *native_step_type;  /* _asyncio's TaskStepMethWrapper, once seen
                                        (borrowed: asyncio's lives on) */
    PyObject *cancelled_error;       /* asyncio.CancelledError */
    PyObject *invalid_state_error;   /* asyncio.InvalidStateError */
    PyObject *get_event_loop;        /* what Future() uses without loop= */
    PyObject *future_repr;           /* base_futures._future_repr */
    PyObject *task_repr;             /* base_tasks._task_repr */
    PyObject *task_get_stack;        /* base_tasks._task_get_stack */
    PyObject *task_print_stack;      /* base_tasks._task_print_stack */
    PyObject *coro_types;            /* set: types iscoroutine() accepted */
    PyObject *enter_task;            /* asyncio.tasks._enter_task (C) */
    PyObject *leave_task;            /* asyncio.tasks._leave_task (C) */
    PyObject *swap_current_task;     /* 3.12+ asyncio.tasks._swap_current_task */
    PyObject *register_eager_task;   /* 3.12+ */
    PyObject *unregister_eager_task; /* 3.12+ */
    PyObject *current_tasks;         /* asyncio.tasks._current_tasks (dict),
                                        up to 3.13 */
    PyObject *register_task;         /* 3.14+: _asyncio._register_task */
    PyObject *awaited_by_descr;      /* 3.14+: _asyncio.Future._asyncio_awaited_by */
    PyObject *add_awaited_by;        /* 3.14+: futures.future_add_to_awaited_by */
    PyObject *discard_awaited_by;    /* 3.14+: ...future_discard_from_awaited_by */
    PyObject *unregister_task;       /* 3.14+: _asyncio._unregister_task */
    PyObject *all_tasks_data;        /* the .data set of asyncio's WeakSet of
                                        tasks (_scheduled_tasks / _all_tasks) */
    PyObject *all_tasks_iterating;   /* its ._iterating set */
    PyObject *all_tasks_pending;     /* its ._pending_removals list */
    PyObject *context_kwnames;       /* ("context",) */
    PyObject *str_call_soon;
    PyObject *str_cancel;
    PyObject *str_throw;
    PyObject *str_result;
    PyObject *str_get_loop;
    PyObject *str_get_debug;
    PyObject *str_is_running;
    PyObject *str_asyncio_future_blocking;
    PyObject *str_loop_attr;         /* "_loop" */
    PyObject *str_PENDING;
    PyObject *str_CANCELLED;
    PyObject *str_FINISHED;
    _Atomic uint64_t task_name_counter;

    /* streams, servers and socket operations (tl_stream.h, tl_sock.h) */
    PyTypeObject *socket_transport_type;
    PyTypeObject *read_pipe_type;
    PyTypeObject *write_pipe_type;
    PyTypeObject *datagram_transport_type;
    PyTypeObject *listener_type;
    PyTypeObject *sockop_type;
    PyObject *buffered_protocol_cls; /* asyncio.BufferedProtocol */
    PyObject *transport_socket_cls;  /* asyncio.trsock.TransportSocket */
    PyObject *socket_cls;            /* socket.socket */
    PyObject *ssl_socket_cls;        /* ssl.SSLSocket, or None without ssl */
    PyObject *sendfile_unavailable;  /* asyncio SendfileNotAvailableError */
    PyObject *logger;                /* asyncio's logger */
    PyObject *str_data_received;
    PyObject *str_get_buffer;
    PyObject *str_buffer_updated;
    PyObject *str_eof_received;
    PyObject *str_connection_made;
    PyObject *str_connection_lost;
    PyObject *str_pause_writing;
    PyObject *str_resume_writing;
    PyObject *str_set_result;
    PyObject *str_set_exception;
    PyObject *str_cancelled;
    PyObject *str_done;
    PyObject *str_create_future;
    PyObject *str_fileno;
    PyObject *str_close;
    PyObject *str_attach;
    PyObject *str_detach;
    PyObject *str_datagram_received;
    PyObject *str_error_received;
    int server_attach_takes_transport;  /* Server._attach(transport), 3.13 */

    /* TLS (tl_tls.h): the transport type, the hook our streams feed it
     * through, and the ssl objects it caches */
    PyTypeObject *tls_type;
    const struct tl_stream_sink *tls_sink;
    struct tl_tls_state *tls;

    /* free lists (see TL_FREELIST_MAX) */
    PyObject *handle_free[TL_FREELIST_MAX ? TL_FREELIST_MAX : 1];
    int handle_nfree;
    PyObject *timer_free[TL_FREELIST_MAX ? TL_FREELIST_MAX : 1];
    int timer_nfree;
    PyObject *future_iter_free[TL_FREELIST_MAX ? TL_FREELIST_MAX : 1];
    int future_iter_nfree;
    void *callback_free[TL_FREELIST_MAX ? TL_FREELIST_MAX : 1];
    int callback_nfree;
} tl_state;

extern PyModuleDef tl_module_def;

/* A dealloc's weak references. Free-threaded, another thread may be freeing
 * a weak reference to the object at this moment (a WeakSet entry): the list
 * is read under its lock by the call, never by a plain test first. */
#ifdef Py_GIL_DISABLED
#define TL_CLEAR_WEAKREFS(obj, list) PyObject_ClearWeakRefs((PyObject *)(obj))
#else
#define TL_CLEAR_WEAKREFS(obj, list)             \
    do {                                         \
        if ((list) != NULL)                      \
            PyObject_ClearWeakRefs((PyObject *)(obj)); \
    } while (0)
#endif

static inline tl_state *tl_state_of_module(PyObject *module)
{
    return (tl_state *)PyModule_GetState(module);
}

static inline tl_state *tl_state_of_type(PyTypeObject *tp)
{
    PyObject *mod = PyType_GetModuleByDef(tp, &tl_module_def);
    return mod ? tl_state_of_module(mod) : NULL;
}

/* module.name, imported now; NULL with an exception on failure. */
PyObject *tl_import_attr(const char *module, const char *name);

/* obj.<name> and obj.<name>(*Py_BuildValue(fmt, ...)) for a C name, through
 * the interned str of that name. Use them, not PyObject_GetAttrString and
 * PyObject_CallMethod, on anything that runs per loop, connection or call:
 * those make a new str per call, and CPython's type attribute cache (3.11 to
 * 3.13) keeps a strong reference to the name of each lookup in the slot the
 * name's address picks, so each call can leave a string behind (up to 4096,
 * the cache's size) and never hits the cache. A format that builds one value
 * passes it as the one argument, as PyObject_CallMethod does. */
PyObject *tl_getattr(PyObject *obj, const char *name);
PyObject *tl_call_method(PyObject *obj, const char *name, const char *fmt, ...);

/* One table of a type's methods (or attributes) from several, joined once
 * per process (the result is never freed; NULL when out of memory). tables
 * ends with NULL; a name an earlier table has is taken from it. */
PyMethodDef *tl_join_methods(PyMethodDef *const *tables);
PyGetSetDef *tl_join_getset(PyGetSetDef *const *tables);

/* Monotonic seconds, the same clock as time.monotonic(). */
double tl_monotonic(void);

#if PY_VERSION_HEX < 0x030D0000
#define Py_IsFinalizing() _Py_IsFinalizing()
#endif

/* The last dotted part of a type's name, as __name__ shows it. */
static inline const char *tl_type_name(PyTypeObject *tp)
{
    const char *dot = strrchr(tp->tp_name, '.');
    return dot ? dot + 1 : tp->tp_name;
}

/* 3.12 added the single-object exception API; keep one spelling. */
#if PY_VERSION_HEX < 0x030C0000
#include "structmember.h"
#define Py_T_PYSSIZET T_PYSSIZET
#define Py_T_DOUBLE T_DOUBLE
#define Py_T_BOOL T_BOOL
#define Py_T_INT T_INT
#define Py_T_OBJECT_EX T_OBJECT_EX
#define Py_READONLY READONLY
static inline PyObject *PyErr_GetRaisedException(void)
{
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    if (type == NULL)
        return NULL;
    PyErr_NormalizeException(&type, &value, &tb);
    if (tb != NULL) {
        PyException_SetTraceback(value, tb);
        Py_DECREF(tb);
    }
    Py_DECREF(type);
    return value;
}

static inline void PyErr_SetRaisedException(PyObject *exc)
{
    if (exc == NULL) {
        PyErr_Restore(NULL, NULL, NULL);
        return;
    }
    PyErr_Restore(Py_NewRef((PyObject *)Py_TYPE(exc)), exc,
                  PyException_GetTraceback(exc));
}
#endif

#endif

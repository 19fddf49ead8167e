/* tl_handle.h - Handle: one scheduled callback with its arguments and context.
 *
 * Loop.call_soon() returns one; TimerHandle (tl_timer.h) extends it with a
 * deadline. Arguments are kept inline for the common short calls, so the
 * call path allocates nothing but the handle (which comes off a free list).
 */
#ifndef TL_HANDLE_H
#define TL_HANDLE_H

#include "tl_common.h"
#include "tl_lock.h"

struct tl_loop;

#define TL_HANDLE_INLINE_ARGS 3

typedef struct tl_handle {
    PyObject_HEAD
    struct tl_loop *loop;       /* strong reference */
    PyObject *callback;         /* NULL once cancelled or run */
    PyObject *context;          /* contextvars.Context (or a look-alike) */
    PyObject *argtuple;         /* arguments when more than the inline ones */
    Py_ssize_t nargs;
    /* argv[0] is scratch space so vectorcall may prepend `self` for bound
     * methods (PY_VECTORCALL_ARGUMENTS_OFFSET) without allocating. */
    PyObject *argv[1 + TL_HANDLE_INLINE_ARGS];
    PyObject *source_traceback; /* list of frames, debug mode only */
    PyObject *repr;             /* frozen repr of a cancelled debug handle */
    PyObject *weakreflist;
    PyObject *home;             /* threaded loops: the Task that scheduled it
                                   (tl_task.h), or NULL */
    char cancelled;
    char is_timer;
    int io_fd;                  /* add_reader/add_writer's fd (threaded loops) */
#if PY_VERSION_HEX >= 0x030E0000
    /* 3.14's call_soon_threadsafe() handle (asyncio's _ThreadSafeHandle):
     * cancel() and cancelled() from another thread wait while the callback
     * runs. A reentrant lock: the callback may cancel its own handle. */
    char threadsafe;
    int run_depth;
    _Atomic unsigned long run_owner;
    tl_mutex run_lock;
#endif
} tl_handle;

extern PyType_Spec tl_handle_spec;

/* Fill a freshly allocated handle; steals nothing. context may be NULL or
 * Py_None for "copy the current one". Returns -1 with an exception set. */
int tl_handle_init(tl_handle *h, struct tl_loop *loop, PyObject *callback,
                   PyObject *const *args, Py_ssize_t nargs, PyObject *context);

/* 3.14+: make h call_soon_threadsafe()'s kind (see threadsafe above). */
void tl_handle_make_threadsafe(tl_handle *h);

/* A new Handle for call_soon(); NULL on error. */
tl_handle *tl_handle_new(struct tl_loop *loop, PyObject *callback,
                         PyObject *const *args, Py_ssize_t nargs,
                         PyObject *context);

/* Run the callback in its context. Errors go to the loop's exception
 * handler; only SystemExit and KeyboardInterrupt come back as -1. */
int tl_handle_run(tl_handle *h);

/* Report the current exception as a failure of this handle's callback
 * ("Exception in callback ...", with the handle in the context), as the
 * loop does for a failed Handle. Clears it; -1 (exception kept) for
 * SystemExit/KeyboardInterrupt or when the report itself failed. */
int tl_handle_report_error(tl_handle *h, PyObject *callback, PyObject *args);

/* The callback's arguments as a new tuple. */
PyObject *tl_handle_args(tl_handle *h);

/* Drop callback, arguments and context (after a run or a cancel). */
void tl_handle_clear_call(tl_handle *h);

/* Shared by Handle and TimerHandle: GC support and the free list. */
int tl_handle_traverse(tl_handle *h, visitproc visit, void *arg);

/* The GC and queued handles. A handle that only the loop's queues hold is
 * not tracked by the GC: the loop traverses what it refers to instead
 * (tl_loop_visit_queued). Most handles die as soon as they ran, so they never
 * cost the collector a visit. When a queue lets go of a handle that someone
 * else still holds, tl_loop_unqueue() starts tracking it, so cycles through
 * it stay collectable. */
int tl_handle_traverse_contents(tl_handle *h, visitproc visit, void *arg);
void tl_handle_clear_refs(tl_handle *h);
PyObject *tl_handle_repr_with(tl_handle *h, PyObject *when);

/* TimerHandle's dealloc: Handle's, with its own free list. */
void tl_timer_handle_dealloc(PyObject *t);

/* The Python-visible members, shared with TimerHandle. */
extern PyMethodDef tl_handle_methods[];
extern PyGetSetDef tl_handle_getset[];

#endif

/* tl_future.h - tonio_loop.Future: asyncio's Future on the Event/Waiter core.
 *
 * The Event is the done flag and the list of everything waiting: done
 * callbacks (with their contexts), Tasks of ours that await the future
 * (queued directly, no callback object), thread wakers. Setting the future
 * claims the Event, publishes the result, then fires it; each waiter is
 * scheduled on the loop (call_soon semantics), never run inline.
 *
 * On one of our loops scheduling is C (a Handle or a task step pushed on the
 * ready queue); on any other loop it goes through loop.call_soon().
 *
 * Threads: the done flag and the waiter list are safe from any thread (the
 * Event). The rest of the Python API is, as asyncio's, meant for the loop's
 * thread; without the GIL (Py_GIL_DISABLED) it relies on that too, the
 * waiter tags are atomic and the free lists are off (tl_common.h).
 */
#ifndef TL_FUTURE_H
#define TL_FUTURE_H

#include "tl_event.h"

struct tl_loop;

enum { TL_FUT_PENDING = 0, TL_FUT_CANCELLED = 1, TL_FUT_FINISHED = 2 };

typedef struct tl_future {
    PyObject_HEAD
    tl_event ev;
    tl_state *st;
    PyObject *loop;             /* NULL until __init__ ran */
    struct tl_loop *tloop;      /* == loop when it is ours and keeps our
                                   call_soon: scheduling stays in C */
    PyObject *result;
    PyObject *exception;
    PyObject *exception_tb;
    PyObject *cancel_msg;
    PyObject *cancelled_exc;    /* the CancelledError a task's coroutine raised */
    PyObject *source_tb;        /* debug mode: where it was created */
    PyObject *dict;
    PyObject *weakreflist;
#ifdef Py_GIL_DISABLED
    _Atomic uint32_t cb_seq;    /* tags waiters in the order they came */
#else
    uint32_t cb_seq;
#endif
    atomic_uchar state;         /* TL_FUT_*, written after the value */
    _Atomic uint8_t log_tb;     /* log "exception was never retrieved"; cancel()
                                   clears it from any thread */
    _Atomic uint8_t blocking;   /* _asyncio_future_blocking: relaxed (asyncio's
                                   isfuture() reads it from any thread) */
    uint8_t finalized;          /* our finalizer already ran */
} tl_future;

extern PyType_Spec tl_future_spec;
extern PyType_Spec tl_future_iter_spec;

static inline int tl_future_blocking(tl_future *fut)
{
    return atomic_load_explicit(&fut->blocking, memory_order_relaxed);
}

static inline void tl_future_set_blocking(tl_future *fut, int on)
{
    atomic_store_explicit(&fut->blocking, (uint8_t)on, memory_order_relaxed);
}

static inline int tl_future_state(tl_future *fut)
{
    return atomic_load_explicit(&fut->state, memory_order_acquire);
}

/* Exactly our Future or Task (subclasses may override methods, so they take
 * the generic path, as asyncio's C Task does). */
static inline int tl_future_check_exact(tl_state *st, PyObject *op)
{
    return Py_IS_TYPE(op, st->future_type) || Py_IS_TYPE(op, st->task_type);
}

static inline int tl_future_check(tl_state *st, PyObject *op)
{
    return PyObject_TypeCheck(op, st->future_type);
}

/* The loop when it is one of ours that schedules from C, else NULL. */
struct tl_loop *tl_loop_if_fast(tl_state *st, PyObject *loop);

/* loop.create_future(): a new Future on `loop`. */
PyObject *tl_future_new(struct tl_loop *loop);

/* Future.__init__(loop=loop); loop NULL or None takes the current loop. */
int tl_future_init(tl_future *fut, PyObject *loop);

/* The state changes; -1 with an exception set on error. cancel returns 1
 * when it cancelled, 0 when the future was already done. */
int tl_future_set_result(tl_future *fut, PyObject *result);
int tl_future_set_exception(tl_future *fut, PyObject *exc);
int tl_future_cancel(tl_future *fut, PyObject *msg);

/* The CancelledError to raise for a cancelled future (new reference). */
PyObject *tl_future_make_cancelled_error(tl_future *fut);

/* CancelledError(msg), or CancelledError() when msg is NULL. */
PyObject *tl_cancelled_error_new(tl_state *st, PyObject *msg);

/* For a done future: 0 and *result set (a new reference), or 1 and *result
 * the exception to throw (new reference; a cancelled future's
 * CancelledError included). Marks the exception retrieved. -1 on error. */
int tl_future_outcome(tl_future *fut, PyObject **result);

/* Run fn(*args) soon on `loop` in `ctx` (NULL: a copy of the current
 * context): loop.call_soon(fn, *args, context=ctx), in C for our loops. */
int tl_call_soon(tl_state *st, PyObject *loop, struct tl_loop *tloop,
                 PyObject *fn, PyObject *const *args, Py_ssize_t nargs,
                 PyObject *ctx);

/* Queue one of our Tasks on the future (tl_task.h owns the waiter); 1 when
 * the future is done already (not queued). */
int tl_future_add_task_waiter(tl_future *fut, tl_waiter *w);

/* cancel(msg=None)'s arguments, shared by Future and Task. */
int tl_parse_cancel_args(PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames,
                         PyObject **msg);

/* The truth of a value assigned to a boolean attribute; deleting one is an
 * AttributeError, as in asyncio. -1 on error. */
int tl_attr_truth(PyObject *v);

/* TypeError for an unexpected keyword, worded as the running Python does. */
void tl_kwarg_error(const char *fname, PyObject *key);

/* Shared with Task's finalizer: log "exception was never retrieved". */
void tl_future_finalize(tl_future *fut);
int tl_future_traverse(tl_future *fut, visitproc visit, void *arg);
int tl_future_clear(tl_future *fut);

#endif

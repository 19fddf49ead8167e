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
 *
 * Future is a subclass of asyncio's C Future (_asyncio.Future) and Task of
 * asyncio's C Task, so isinstance() holds for the libraries that branch on
 * it (anyio decides whether to cancel a task by it). asyncio's part of the
 * object comes first and stays as tp_alloc left it, zeroed: a Future that
 * asyncio's own methods see as "not initialized". Every method and
 * attribute is ours and shadows asyncio's; asyncio's C code reaches the
 * zeroed part only through the few functions that accept subclasses (its
 * task registry and call graph on 3.14+, its instance dict and weak
 * references), and those find valid, empty fields. Our fields start after
 * asyncio's Task part in both types, so the code below never asks which of
 * the two it holds (a Future pays asyncio Task's extra bytes for that).
 */
#ifndef TL_FUTURE_H
#define TL_FUTURE_H

#include "tl_event.h"

struct tl_loop;

enum { TL_FUT_PENDING = 0, TL_FUT_CANCELLED = 1, TL_FUT_FINISHED = 2 };

/* The sizes of asyncio's Future and Task objects in the interpreter the
 * extension is built for (setup.py); module.c refuses to load into one where
 * they are larger. */
#if !defined(TL_ASYNCIO_FUTURE_SIZE) || !defined(TL_ASYNCIO_TASK_SIZE)
#error "build with setup.py: it defines TL_ASYNCIO_FUTURE_SIZE and TL_ASYNCIO_TASK_SIZE"
#endif

typedef union {
    PyObject ob;
    char bytes[TL_ASYNCIO_TASK_SIZE];
} tl_asyncio_part;

/* What few futures and tasks need, out of line: every pending task would
 * otherwise carry these pointers (memory per task is a published figure). */
typedef struct tl_future_extra {
    PyObject *cancel_msg;       /* cancel(msg)'s msg */
    PyObject *cancelled_exc;    /* the CancelledError a task's coroutine raised */
    PyObject *source_tb;        /* debug mode: where it was created */
    PyObject *step_exc;         /* Task: what its next step throws in */
} tl_future_extra;

typedef struct tl_future {
    tl_asyncio_part base;       /* asyncio's fields: zeroed, see above */
    tl_event ev;
    tl_state *st;
    PyObject *loop;             /* NULL until __init__ ran */
    PyObject *exception;
    union {
        PyObject *result;       /* while exception is NULL */
        PyObject *exception_tb; /* once it is set: its traceback then */
    };
    _Atomic(tl_future_extra *) extra;   /* NULL until needed */
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
    uint8_t fast;               /* loop is ours and keeps our call_soon:
                                   scheduling stays in C (tl_future_tloop) */
} tl_future;

/* The loop when it schedules from C (tl_loop_if_fast), else NULL. */
static inline struct tl_loop *tl_future_tloop(tl_future *fut)
{
    return fut->fast ? (struct tl_loop *)fut->loop : NULL;
}

static inline tl_future_extra *tl_future_extra_peek(tl_future *fut)
{
    return atomic_load_explicit(&fut->extra, memory_order_acquire);
}

/* One of the out-of-line fields, NULL when there is none. */
#define TL_FUTURE_EXTRA(fut, field)                                           \
    (tl_future_extra_peek(fut) ? tl_future_extra_peek(fut)->field : NULL)

/* The out-of-line fields, made on first use (from any thread: the first
 * one made wins). NULL with MemoryError. */
tl_future_extra *tl_future_extra_get(tl_future *fut);

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

/* The loop when it is one of ours that schedules from C, else NULL. */
struct tl_loop *tl_loop_if_fast(tl_state *st, PyObject *loop);

/* loop.create_future(): a new Future on `loop`. */
PyObject *tl_future_new(struct tl_loop *loop);

/* Python's __init__ on an initialized future: a RuntimeError from 3.15 on
 * (asyncio's), 0 before (the future starts afresh). */
int tl_future_refuse_reinit(tl_future *fut);

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

/* What a future asks the task layer (task.c registers it when the module
 * is made, so futures need not know tasks): about a waiter of kind
 * TL_WAITER_TASK, the task that owns it and its context (borrowed, the
 * context may be NULL); a task's wake-up callable, what asyncio shows in
 * a future's _callbacks (new reference); the task whose step this thread
 * runs (new reference or NULL: a threaded loop's callback keeps it as its
 * home). */
typedef struct tl_task_hooks {
    PyObject *(*waiter_task)(tl_waiter *w);
    PyObject *(*waiter_context)(tl_waiter *w);
    PyObject *(*wakeup_method)(PyObject *task);
    PyObject *(*running_ref)(void);
} tl_task_hooks;

void tl_future_set_task_hooks(const tl_task_hooks *hooks);

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

/* Our fields only (Task's traverse and clear call them too). */
int tl_future_traverse(tl_future *fut, visitproc visit, void *arg);
int tl_future_clear(tl_future *fut);

/* asyncio's part of the object (`ours`: our type's dealloc, which tells
 * where asyncio's type is in the object's bases): visited and cleared with
 * our fields, and torn down last by asyncio's own dealloc, which also drops
 * the weak references and the dict and frees the object. */
int tl_asyncio_part_traverse(PyObject *self, destructor ours, visitproc visit, void *arg);
int tl_asyncio_part_clear(PyObject *self, destructor ours);
void tl_asyncio_part_dealloc(PyObject *self, destructor ours);

/* The Future's API, which Task offers too (asyncio's Task is no subclass of
 * our Future, so it does not inherit them): the methods and attributes
 * (NULL-terminated) and await. */
extern PyMethodDef tl_future_methods[];
extern PyGetSetDef tl_future_getset[];
PyObject *tl_future_await(tl_future *fut);

#endif

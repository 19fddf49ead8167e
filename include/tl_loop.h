/* tl_loop.h - the Loop: a ready queue, a timer heap and one libev loop.
 *
 * One iteration (tl_loop_run_once) mirrors asyncio's _run_once: poll for I/O
 * (zero timeout when callbacks are ready, else until the first timer), move
 * due timers to the ready queue, then run exactly the callbacks that were
 * ready when the run began.
 */
#ifndef TL_LOOP_H
#define TL_LOOP_H

#include "tl_common.h"
#include "tl_lock.h"
#include "tl_ev.h"

#include "tl_io.h"
#include "tl_timer.h"

struct tl_loop;

/* An entry of the ready queue: a C function and the object it runs on. The
 * queue owns one reference to obj. Python callbacks are Handles run by
 * tl_handle_ready_fn; internal work (task steps, future callbacks) gets its
 * own function and needs no Handle. Returning -1 stops the loop with the
 * exception set (only SystemExit/KeyboardInterrupt should do that). */
typedef int (*tl_ready_fn)(struct tl_loop *loop, PyObject *obj);

typedef struct {
    tl_ready_fn fn;
    PyObject *obj;
} tl_ready_item;

typedef struct {
    tl_ready_item *items;
    size_t head;    /* index of the first item */
    size_t len;
    size_t cap;     /* a power of two, or 0 */
} tl_ready;

/* Double the ring (it keeps its items); -1 with MemoryError set. */
int tl_ready_grow(tl_ready *q);
/* The same with the first allocation's size (a power of two) */
int tl_ready_grow_from(tl_ready *q, size_t first_cap);

/* Append; steals the reference to obj (also on error). */
static inline int tl_ready_push(tl_ready *q, tl_ready_fn fn, PyObject *obj)
{
    if (TL_UNLIKELY(q->len == q->cap) && tl_ready_grow(q) < 0) {
        Py_DECREF(obj);
        return -1;
    }
    tl_ready_item *it = &q->items[(q->head + q->len) & (q->cap - 1)];
    it->fn = fn;
    it->obj = obj;
    q->len++;
    return 0;
}

/* Take the first item; the queue must not be empty. */
static inline tl_ready_item tl_ready_pop(tl_ready *q)
{
    tl_ready_item it = q->items[q->head];
    q->head = (q->head + 1) & (q->cap - 1);
    q->len--;
    return it;
}

/* Drop every item and the ring's memory. */
void tl_ready_clear(tl_ready *q);

struct tl_dispatch;
/* Something that keeps libev watchers on the loop (a transport, a pending
 * socket operation) links itself here while they are active: close() tells
 * each one to let go before it destroys the libev loop. */
typedef struct tl_loop_link {
    struct tl_loop_link *prev, *next;
    void (*on_loop_close)(struct tl_loop_link *link);
} tl_loop_link;

typedef struct tl_loop {
    PyObject_HEAD
    PyObject *dict;
    PyObject *weakreflist;
    tl_state *st;

    struct ev_loop *ev;
    ev_async wakeup;            /* call_soon_threadsafe from other threads */
    ev_timer timer;             /* armed for the earliest TimerHandle */

    tl_ready ready;
    tl_timer_heap timers;
    tl_io_table io;

    unsigned long thread_id;    /* the running thread, 0 when not running */
    PyThreadState *tstate;      /* saved while the poll blocks */
    PyObject *pending_exc;      /* raised inside a libev callback */
    PyObject *exception_handler;
    PyObject *task_factory;
    PyObject *current_handle;   /* debug mode: the handle being run */
    PyObject *old_agen_hooks;

    tl_loop_link links;         /* sentinel of the tl_loop_link ring */
    char *read_buf;             /* transports read here (tl_stream.h) */
    PyObject *read_spare;       /* a bytes object to read into again */

    int signal_fds[2];          /* set_wakeup_fd socketpair, -1 when unused */
    ev_io signal_io;
    PyObject *signal_handlers;  /* add_signal_handler(): signal number -> Handle */

    struct tl_loop *fork_prev;  /* the registry of live loops (tl_fork.h) */
    struct tl_loop *fork_next;
    char fork_registered;
    char signal_forked;         /* forked child still holding the wakeup fd */

    _Atomic char closed;        /* close() on one thread, is_closed() and
                                   call_soon_threadsafe() on any (asyncio's
                                   _chain_future checks it from executor
                                   threads) */
    char stopping;
    _Atomic char debug;         /* set_debug() from any thread, read by workers */
    char poll_blocking;         /* the current poll may sleep: drop the GIL */
    char poll_had_events;       /* set by the last poll when watchers fired */
    char io_behind;             /* this poll started with callbacks ready: the
                                   I/O it reports queues behind them, as in
                                   asyncio (tl_loop_io_behind) */
    char poll_quiet;            /* the last poll found nothing */
    char initialized;           /* __init__ went through: only such a loop
                                   warns when it is dropped unclosed */
    char time_by_type;          /* a subclass defines its own time() */
    char time_overridden;       /* that, or an instance attribute `time`
                                   (a test's mock): the scheduler asks it */
    double last_poll;           /* tl_monotonic() of the last poll */
    char signal_wakeup_set;     /* our socketpair is the process wakeup fd */
    _Atomic double unthrottled_until;   /* call_soon_threadsafe() producers
                                   skip waiting until then: the loop was
                                   found stuck (loop.c) */

#ifdef Py_GIL_DISABLED
    PyMutex inbox_lock;         /* guards inbox */
    tl_ready inbox;             /* call_soon_threadsafe from other threads */
#endif

    /* Threads (tl_dispatch.h). A loop is "shared" when threads other than
     * the one running it may touch libev, the fd table and the timer heap:
     * with worker threads, and always without the GIL. Those go through
     * ev_mutex then (tl_loop_ev_lock); the running loop holds it except while
     * it sleeps in the poll, as libev's manual recommends for threads. */
    struct tl_dispatch *dispatch;   /* NULL: the classic single thread */
    char shared;
    tl_mutex ev_mutex;
    _Atomic unsigned long ev_owner; /* thread holding ev_mutex, 0: none */
} tl_loop;

/* ev_mutex is held by another thread: wait for it (loop.c). */
void tl_loop_ev_lock_wait(tl_loop *loop);

/* Take ev_mutex unless this thread holds it already or the loop is not
 * shared; 1 when taken (hand it to tl_loop_ev_unlock). */
static inline int tl_loop_ev_lock(tl_loop *loop)
{
    if (TL_LIKELY(!loop->shared))
        return 0;
    unsigned long me = PyThread_get_thread_ident();
    if (atomic_load_explicit(&loop->ev_owner, memory_order_relaxed) == me)
        return 0;
    if (TL_UNLIKELY(!tl_mutex_trylock(&loop->ev_mutex)))
        tl_loop_ev_lock_wait(loop);
    atomic_store_explicit(&loop->ev_owner, me, memory_order_relaxed);
    return 1;
}

static inline void tl_loop_ev_unlock(tl_loop *loop, int locked)
{
    if (locked) {
        atomic_store_explicit(&loop->ev_owner, 0, memory_order_relaxed);
        tl_mutex_unlock(&loop->ev_mutex);
    }
}

/* After a change to watchers or timers made from another thread than the one
 * running the loop: wake it so its poll takes notice. */
void tl_loop_ev_changed(tl_loop *loop);

/* Start an I/O watcher, from any thread that holds the loop lock. It is
 * bound to the file its fd names now, not at the next poll (tl_ev_register):
 * -1 with errno EBADF when the fd is not open; libev then reports EV_ERROR
 * to the watcher unless the caller takes the event back (ev_clear_pending). */
static inline int tl_loop_io_start(tl_loop *loop, ev_io *w)
{
    ev_io_start(loop->ev, w);
    int rc = tl_ev_register(loop->ev, w);
    if (TL_UNLIKELY(loop->shared))
        tl_loop_ev_changed(loop);
    return rc;
}


/* Method wrappers that hold the loop lock around a transport's or a socket
 * operation's method: with worker threads they run beside the loop thread's
 * I/O callbacks. Nothing but two predictable branches without workers. */
#define TL_LOCKED_METHOD(name, fn, T, loop_of, params, args)                  \
    /* out of line: GCC saves every register up front otherwise */           \
    static TL_NOINLINE PyObject *name##_shared params                         \
    {                                                                         \
        tl_loop *lk_loop_ = (loop_of);                                        \
        int lk_ = tl_loop_ev_lock(lk_loop_);                                  \
        PyObject *lk_r_ = fn args;                                            \
        tl_loop_ev_unlock(lk_loop_, lk_);                                     \
        return lk_r_;                                                         \
    }                                                                         \
    static PyObject *name params                                              \
    {                                                                         \
        tl_loop *lk_loop_ = (loop_of);                                        \
        if (TL_LIKELY(lk_loop_ == NULL || !lk_loop_->shared))                 \
            return fn args;     /* a tail call: nothing added */              \
        return name##_shared args;                                            \
    }
#define TL_LOCKED_NOARGS(name, fn, T, loop_of)                                \
    TL_LOCKED_METHOD(name, fn, T, loop_of, (T *self, PyObject *unused), (self, unused))
#define TL_LOCKED_O(name, fn, T, loop_of)                                     \
    TL_LOCKED_METHOD(name, fn, T, loop_of, (T *self, PyObject *arg), (self, arg))
#define TL_LOCKED_FASTCALL(name, fn, T, loop_of)                              \
    TL_LOCKED_METHOD(name, fn, T, loop_of,                                    \
                     (T *self, PyObject *const *args, Py_ssize_t nargs),      \
                     (self, args, nargs))
#define TL_LOCKED_FASTCALL_KW(name, fn, T, loop_of)                           \
    TL_LOCKED_METHOD(name, fn, T, loop_of,                                    \
                     (T *self, PyObject *const *args, Py_ssize_t nargsf,      \
                      PyObject *kwnames),                                     \
                     (self, args, nargsf, kwnames))
#define TL_LOCKED_VARARGS_KW(name, fn, T, loop_of)                            \
    TL_LOCKED_METHOD(name, fn, T, loop_of, (T *self, PyObject *args, PyObject *kwds), \
                     (self, args, kwds))

/* The Loop type's spec, with the method tables of every file joined. */
PyType_Spec *tl_loop_spec_ready(void);

/* Run fn(*args) soon on `loop` in `ctx` (NULL: a copy of the current
 * context): loop.call_soon(fn, *args, context=ctx), in C for our loops. */
int tl_call_soon(tl_state *st, PyObject *loop, struct tl_loop *tloop,
                 PyObject *fn, PyObject *const *args, Py_ssize_t nargs,
                 PyObject *ctx);

/* Append to the ready queue; steals the reference to obj (also on error). */
int tl_loop_push_ready(tl_loop *loop, tl_ready_fn fn, PyObject *obj);

/* asyncio queues what a poll reports behind the callbacks that were ready
 * before it; a transport or socket operation handles its I/O inline, in
 * the poll, only when that order cannot be told apart: the poll started
 * with nothing ready (1 = queue instead). Classic loops only: a threaded
 * loop's I/O goes to its strands anyway. */
static inline int tl_loop_io_behind(tl_loop *loop)
{
    return loop->io_behind;
}

/* The same from any thread: wakes the loop when it sleeps in the poll. */
int tl_loop_push_ready_threadsafe(tl_loop *loop, tl_ready_fn fn, PyObject *obj);

/* Drop a queue's reference to obj (see tl_handle_traverse_contents). */
void tl_loop_unqueue(PyObject *obj);

/* GC traversal of an object a queue holds. */
int tl_loop_visit_queued(PyObject *obj, visitproc visit, void *arg);

/* Run one ready item as the loop does (debug mode: timed, slow ones logged). */
int tl_loop_run_ready(tl_loop *loop, tl_ready_item it);

/* The ready_fn that runs a Handle. */
int tl_handle_ready_fn(tl_loop *loop, PyObject *obj);

/* The ready_fn for handle-like objects not of our type: obj._run(). */
int tl_ready_call_run(tl_loop *loop, PyObject *obj);

/* Checks with asyncio's messages; -1 with RuntimeError set when they fail. */
int tl_loop_check_closed(tl_loop *loop);
int tl_loop_check_thread(tl_loop *loop);
/* Debug-mode callback check (asyncio's _check_callback). */
int tl_loop_check_callback(tl_loop *loop, PyObject *callback, const char *method);

/* Remember an exception raised inside a libev callback and stop polling; the
 * loop raises it once ev_run returns. Call with the exception set. */
void tl_loop_defer_error(tl_loop *loop);

/* Debug mode: did a callback that took dt seconds run longer than
 * loop.slow_callback_duration? 1, 0, or -1 with an exception set. */
int tl_loop_is_slow(tl_loop *loop, double dt);

/* asyncio.events._set_running_loop(running) for this thread (the loop, or
 * None); -1 with an exception set. */
int tl_loop_set_running(tl_loop *loop, PyObject *running);

/* Outside a poll (a ready item that ran libev-style code): raise what such
 * code deferred, -1; 0 when nothing waits. */
int tl_loop_raise_deferred(tl_loop *loop);

/* loop.call_exception_handler(context); consumes nothing. Returns -1 only
 * when the handler itself raised SystemExit or KeyboardInterrupt. */
int tl_loop_report(tl_loop *loop, PyObject *context);

/* Report the current exception as asyncio does for a failed callback:
 * {'message': message, 'exception': exc, **extra} (extra may be NULL).
 * Clears the error; returns -1 (error kept) for SystemExit and
 * KeyboardInterrupt. */
int tl_loop_report_exception(tl_loop *loop, PyObject *message, PyObject *extra);

/* Arguments of call_soon-like methods: `first` (or none), callback, *args,
 * and only the keyword `context` (stored in *context, NULL if absent). */
int tl_parse_callback_args(const char *fname, const char *first,
                           PyObject *const *args, Py_ssize_t nargs,
                           PyObject *kwnames, PyObject **context);

double tl_loop_time_overridden(tl_loop *loop);

/* The loop's clock as its scheduler reads it: asyncio's reads self.time(),
 * so a subclass's time() or a `loop.time = mock` moves our timers too. */
static inline double tl_loop_time(tl_loop *loop)
{
    return TL_LIKELY(!loop->time_overridden) ? tl_monotonic() : tl_loop_time_overridden(loop);
}

/* Link/unlink a watcher owner (see tl_loop_link). */
void tl_loop_link_add(tl_loop *loop, tl_loop_link *link);
void tl_loop_link_remove(tl_loop_link *link);

/* Method tables that other files add to the Loop type. */
extern PyMethodDef tl_loop_core_methods[];

#endif

/* stream_threads.c - the threaded side of transports: the strand their
 * protocol callbacks run on, the inbox that hands what the loop thread read
 * to data_received() on workers, the home task they never run beside, and
 * write() without the loop lock. The core (stream.c) reaches all of it
 * through tl_stream_threaded (tl_stream_threads.h), and only on loops that
 * other threads call into.
 */
#include <errno.h>

#include "tl_stream_threads.h"
#include "tl_task.h"

/* The strand item (tl_ready_fn) that runs step(t) with its locks */
#define STEP_FN(name, step)                                         \
    static int name(tl_loop *loop, PyObject *obj)                   \
    {                                                               \
        TL_UNUSED(loop);                                            \
        return tl_stream_run_step((tl_stream *)obj, step);          \
    }

/* ---- the strand ---------------------------------------------------------- */

/* The strand's item on the workers: what is queued for this transport, with
 * the worker marked as the one running its callbacks. */
static int stream_strand_ready(tl_loop *loop, PyObject *obj)
{
    tl_stream *t = (tl_stream *)obj;
    tl_strand *adopting = tl_strand_adopting(&t->strand);
    atomic_store_explicit(&t->cb_thread, PyThread_get_thread_ident(), memory_order_relaxed);
    int rc = tl_strand_run(loop, &t->strand, stream_strand_ready, obj);
    atomic_store_explicit(&t->cb_thread, 0, memory_order_relaxed);
    tl_strand_adopting(adopting);
    return rc;
}

/* A strand item's locks: the home task's step lock (tl_dispatch.h), then
 * the loop lock, and the home must still be the home once both are held (a
 * task that resumed reading while the item waited for the loop lock is the
 * one it must keep apart from). */
static int stream_lock_homed(tl_stream *t)
{
    for (;;) {
        PyObject *home = tl_strand_home_ref(&t->strand);
        int entered = home != NULL ? tl_task_home_enter(home, &t->home_saved) : 0;
        int locked = tl_loop_ev_lock(t->loop);
        PyObject *now = tl_strand_home_ref(&t->strand);
        Py_XDECREF(now);
        if (now == home) {
            t->home_held = home;
            t->home_entered = (uint8_t)entered;
            return locked;
        }
        tl_loop_ev_unlock(t->loop, locked);
        if (home != NULL) {
            tl_task_home_leave(home, t->home_saved, entered);
            Py_DECREF(home);
        }
    }
}

static void stream_unlock_homed(tl_stream *t, int locked)
{
    PyObject *home = t->home_held;
    t->home_held = NULL;
    tl_loop_ev_unlock(t->loop, locked);
    if (home != NULL) {
        tl_task_home_leave(home, t->home_saved, t->home_entered);
        if (tl_future_state((tl_future *)home) != TL_FUT_PENDING)
            tl_strand_drop_home(&t->strand, home);  /* no steps left to keep apart */
        Py_DECREF(home);
    }
}

/* Has the home changed since the item took its lock? (a task its callback
 * created, or one that resumed reading while data_received() ran) */
static int stream_home_moved(tl_stream *t)
{
    PyObject *now = tl_strand_home_ref(&t->strand);
    Py_XDECREF(now);
    return now != t->home_held;
}

/* The task running here (a step or a callback it scheduled) becomes the
 * transport's home: it paused or resumed the transport. */
static void stream_home_here(tl_stream *t)
{
    PyObject *task = tl_task_running_ref();
    if (task != NULL) {
        tl_strand_set_home(&t->strand, task);
        Py_DECREF(task);
    }
}

/* Does this thread run the transport's home task (or is there none)? Its
 * protocol must not be called beside that task's steps. */
static int stream_home_is_here(tl_stream *t)
{
    PyObject *home = tl_strand_home_ref(&t->strand);
    if (home == NULL)
        return 1;
    PyObject *me = tl_task_running_ref();
    int here = me == home;
    Py_XDECREF(me);
    Py_DECREF(home);
    return here;
}

/* Queue fn(t) on the transport's strand (in order, one at a time, on
 * workers). Takes its own reference to t. */
static int stream_push(tl_stream *t, tl_ready_fn fn)
{
    Py_INCREF(t);
    return tl_strand_push(t->loop, &t->strand, stream_strand_ready, (PyObject *)t, fn,
                          (PyObject *)t);
}

/* Only the worker running data_received() may call the protocol meanwhile */
static int stream_in_strand(tl_stream *t)
{
    return atomic_load_explicit(&t->cb_thread, memory_order_relaxed) ==
           PyThread_get_thread_ident();
}

/* ---- data_received() on workers ----------------------------------------
 * The loop thread reads (the poll is level-triggered: it must), the bytes
 * wait in the transport's inbox, and one item on its strand hands them to
 * data_received() in order, without the loop lock: that is the protocol
 * code that runs in parallel. The reader keeps going unless the inbox holds
 * more than TL_INBOX_MAX bytes: then it waits for the protocol. */

#define TL_INBOX_MAX (256 * 1024)

static int stream_deliver_soon(tl_stream *t);

/* The EOF on the transport's strand (stream_eof_read) */
static int eof_step(tl_stream *t)
{
    if (t->lost_scheduled || t->protocol == NULL)
        return 0;
    if (t->inbox.len > 0 || (t->paused && t->sink == NULL && !t->buffered)) {
        /* read before the protocol paused reading (asyncio would not have
         * read it yet): the EOF waits for resume_reading(), behind the
         * bytes still in the inbox (stream_deliver_step). TLS and buffered
         * reads go to the protocol as they come (no inbox): their EOF too. */
        t->eof_waiting = 1;
        return 0;
    }
    int rc = tl_stream_on_eof(t);
    tl_stream_hold_update(t);
    return rc;
}

STEP_FN(eof_fn, eof_step)


static int stream_deliver_step(tl_stream *t)
{
    tl_loop *loop = t->loop;
    int rc = 0;
    /* Everything read reaches the protocol before the EOF or error that
     * followed it (they queue behind), except once reading paused (it
     * waits for resume_reading) or the protocol's side closed the
     * transport: asyncio's protocol hears nothing after close()/abort(). */
    while (rc == 0 && t->inbox.len && !t->paused && !t->user_closed && t->protocol != NULL &&
           !stream_home_moved(t)) {
        PyObject *data = tl_ready_pop(&t->inbox).obj;
        t->inbox_size -= PyBytes_GET_SIZE(data);
        PyObject *proto = Py_NewRef(t->protocol);
        PyObject *stack[3] = {NULL, proto, data};
        t->in_data_received = 1;
        tl_loop_ev_unlock(loop, 1);
        PyObject *r = PyObject_VectorcallMethod(loop->st->str_data_received, stack + 1,
                                                2 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
        Py_DECREF(data);
        tl_loop_ev_lock(loop);
        t->in_data_received = 0;
        rc = tl_stream_data_received_done(t, proto, r);
        Py_DECREF(proto);
    }
    t->inbox_queued = 0;
    if (t->inbox_full && t->inbox_size < TL_INBOX_MAX / 2) {
        t->inbox_full = 0;
        tl_stream_start_reading(t);
    }
    if (rc == 0 && stream_home_moved(t))
        return stream_deliver_soon(t);      /* the rest beside the new home */
    if (rc == 0 && t->eof_waiting && t->inbox.len == 0 && !t->paused) {
        t->eof_waiting = 0;
        rc = eof_step(t);
    }
    return rc;
}

STEP_FN(stream_deliver_fn, stream_deliver_step)

/* Queue the inbox's delivery on the strand unless it is queued already */
static int stream_deliver_soon(tl_stream *t)
{
    if (t->inbox_queued || (t->inbox.len == 0 && !t->eof_waiting))
        return 0;
    t->inbox_queued = 1;
    return stream_push(t, stream_deliver_fn);
}

static int stream_inbox_put(tl_stream *t, PyObject *data)
{
    if (t->inbox.cap == 0 && tl_ready_grow_from(&t->inbox, 4) < 0) {
        Py_DECREF(data);
        return tl_stream_fatal_error(t, t->ops->read_error);
    }
    t->inbox_size += PyBytes_GET_SIZE(data);
    if (tl_ready_push(&t->inbox, NULL, data) < 0 || stream_deliver_soon(t) < 0)
        return tl_stream_fatal_error(t, t->ops->read_error);
    if (t->inbox_size > TL_INBOX_MAX) {
        tl_stream_watch(t, &t->rio, 0);
        t->inbox_full = 1;
    }
    return 0;
}

/* A protocol that reads for itself (datagram_received(), BufferedProtocol's
 * get_buffer(), TLS) is called from the transport's strand like the others,
 * beside no step of its home task: the loop thread only hands the readiness
 * over, and the strand reads and then watches again. */
static int strand_read_step(tl_stream *t)
{
    t->read_queued = 0;
    if (t->conn_lost || !tl_stream_is_reading(t) || t->protocol == NULL)
        return 0;           /* resume_reading() watches again */
    int rc = t->read(t);
    tl_stream_start_reading(t);
    return rc;
}

STEP_FN(strand_read_fn, strand_read_step)


static int stream_read_ready(tl_stream *t)
{
    if (t->reader_calls_protocol && !tl_dispatch_on_worker(t->loop)) {
        tl_stream_watch(t, &t->rio, 0);
        if (t->read_queued)
            return 0;
        t->read_queued = 1;
        return stream_push(t, strand_read_fn) < 0 ? tl_stream_fatal_error(t, t->ops->read_error)
                                                  : 0;
    }
    return t->read(t);
}

/* the loop thread read it: the EOF comes after the data_received() calls
 * still waiting on the strand */
static int stream_eof_read(tl_stream *t)
{
    t->eof_read = 1;
    tl_stream_watch(t, &t->rio, 0);
    return stream_push(t, eof_fn) < 0 ? tl_stream_fatal_error(t, t->ops->read_error) : 0;
}

/* tonio_loop/_threaded.py: asyncio's StreamReader made safe to feed here
 * while a task reads it on another worker */
static void stream_made(tl_stream *t)
{
    PyObject *r = tl_call_method((PyObject *)t->loop, "_thread_safe_protocol", "O", t->protocol);
    if (r == NULL)
        PyErr_WriteUnraisable((PyObject *)t);
    Py_XDECREF(r);
}

/* ---- write() ---------------------------------------------------------------- */

/* Before the write side or the fd changes, and before the write buffer is
 * read: waits for a send in flight, and (taking wlock even when the fast
 * path is off) sees what a fast write that sent in part has buffered. */
static void wfast_off(tl_stream *t)
{
    tl_mutex_lock(&t->wlock);
    atomic_store_explicit(&t->wfast, 0, memory_order_relaxed);
    tl_mutex_unlock(&t->wlock);
}

/* With the loop lock, after a write or a flush: is the write side idle? */
static void wfast_update(tl_stream *t)
{
    tl_mutex_lock(&t->wlock);
    uint8_t idle = (t->ops->rules & TL_RULES_SELECTOR_SOCKET) && t->is_socket && t->fd >= 0 &&
                   t->wq_len == 0 && !ev_is_active(&t->wio) && !t->closing && !t->eof &&
                   !t->conn_lost && !t->lost_scheduled && t->empty_waiter == NULL;
    atomic_store_explicit(&t->wfast, idle, memory_order_relaxed);
    tl_mutex_unlock(&t->wlock);
}

/* Shared loops: the part of write() that ran under wlock alone (the write
 * side was idle) left n bytes of data unsent (-1: the send failed with
 * errno): the rest is buffered already; with the loop lock now, watch for
 * room, or fail the transport. */
static int stream_write_fast_rest(tl_stream *t, ssize_t n)
{
    int err = errno;
    int locked = tl_loop_ev_lock(t->loop);
    int rc = 0;
    Py_INCREF(t);
    if (n < 0) {
        errno = err;
        rc = tl_stream_write_failed(t);
    } else if (t->wq_len && !t->conn_lost) {
        /* close() meanwhile waits for this flush; abort() emptied it */
        rc = tl_stream_start_flush(t);
        if (rc == 0) {
            rc = tl_stream_maybe_pause_protocol(t);
        } else if (!ev_is_active(&t->wio)) {
            /* a closed loop: asyncio's write() raises before it buffers
             * (add_writer refuses), and so does the slow path: drop the rest */
            tl_mutex_lock(&t->wlock);
            tl_stream_wq_clear(t);
            tl_mutex_unlock(&t->wlock);
            wfast_update(t);
        }
    }
    Py_DECREF(t);
    tl_loop_ev_unlock(t->loop, locked);
    return rc;
}

/* write(bytes) while the write side is idle: send under wlock, without the
 * loop lock (workers writing their responses while the loop thread reads).
 * 0 when that state was gone: take the locked path. */
static int stream_write_fast(tl_stream *t, PyObject *data, PyObject **result)
{
    Py_ssize_t len = PyBytes_GET_SIZE(data);
    tl_mutex_lock(&t->wlock);
    if (!atomic_load_explicit(&t->wfast, memory_order_relaxed)) {
        tl_mutex_unlock(&t->wlock);
        return 0;
    }
    ssize_t n = tl_stream_send(t, PyBytes_AS_STRING(data), (size_t)len);
    if (n == len) {
        tl_mutex_unlock(&t->wlock);
        *result = Py_NewRef(Py_None);
        return 1;
    }
    /* busy from here: what is left is buffered before anyone can send
     * behind it (no allocation: data is kept as it is) */
    int err = errno;
    atomic_store_explicit(&t->wfast, 0, memory_order_relaxed);
    if (n < 0 && tl_stream_would_block(err))
        n = 0;
    int rc = 0;
    if (n >= 0) {
        Py_buffer view = {.buf = PyBytes_AS_STRING(data), .len = len};
        rc = tl_stream_wq_append(t, data, &view, n);
    }
    tl_mutex_unlock(&t->wlock);
    errno = err;
    if (rc == 0)
        rc = stream_write_fast_rest(t, n);
    *result = rc < 0 ? NULL : Py_NewRef(Py_None);
    return 1;
}

/* write() (bytes_write) and writelines() on a shared loop: the loop lock,
 * the write side's fast path off meanwhile, and on again if it is idle
 * after; fn is the core's. */
static PyObject *stream_write_shared(tl_stream *t, PyObject *arg,
                                     PyObject *(*fn)(tl_stream *, PyObject *), int bytes_write)
{
    PyObject *r;
    if (bytes_write && PyBytes_CheckExact(arg) && PyBytes_GET_SIZE(arg) &&
        atomic_load_explicit(&t->wfast, memory_order_relaxed) && stream_write_fast(t, arg, &r))
        return r;
    int locked = tl_loop_ev_lock(t->loop);
    wfast_off(t);
    r = fn(t, arg);
    wfast_update(t);
    tl_loop_ev_unlock(t->loop, locked);
    return r;
}


/* The write buffer's size, also while a fast write is buffering its rest */
static Py_ssize_t stream_wq_size(tl_stream *t)
{
    tl_mutex_lock(&t->wlock);
    Py_ssize_t n = t->wsize;
    tl_mutex_unlock(&t->wlock);
    return n;
}

static int stream_traverse(tl_stream *t, visitproc visit, void *arg)
{
    return tl_strand_traverse(&t->strand, visit, arg);
}

static void stream_clear(tl_stream *t)
{
    tl_strand_clear(&t->strand);
    tl_ready_clear(&t->inbox);
    t->inbox_size = 0;
}

const tl_stream_mt tl_stream_threaded = {
    .push = stream_push,
    .lock = stream_lock_homed,
    .unlock = stream_unlock_homed,
    .read_ready = stream_read_ready,
    .data_read = stream_inbox_put,
    .eof_read = stream_eof_read,
    .resume = stream_deliver_soon,
    .home_here = stream_home_here,
    .home_is_here = stream_home_is_here,
    .in_strand = stream_in_strand,
    .made = stream_made,
    .write = stream_write_shared,
    .wfast_off = wfast_off,
    .wfast_update = wfast_update,
    .wq_size = stream_wq_size,
    .traverse = stream_traverse,
    .clear = stream_clear,
};

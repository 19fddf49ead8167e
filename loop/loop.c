/* loop.c - the Loop type: ready queue, one iteration, run_forever and the
 * scheduling entry points (call_soon, call_soon_threadsafe, create_task).
 *
 * Everything here follows asyncio.base_events.BaseEventLoop; the cold parts
 * that asyncio writes in Python (executors, async generator shutdown, the
 * default exception handler) are borrowed from it by tonio_loop/_loop.py.
 */
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <time.h>

#include "tl_loop.h"
#include "tl_handle.h"
#include "tl_signal.h"
#include "tl_future.h"
#include "tl_task.h"
#include "tl_fork.h"
#include "tl_dispatch.h"
#include "tl_stream.h"
#include "tl_server.h"
#include "tl_sock.h"
#include "tl_pipe.h"
#include "tl_dns.h"
#include "tl_connect.h"
#include "tl_tls.h"

/* asyncio's MAXIMUM_SELECT_TIMEOUT: never sleep longer than a day at once */
#define TL_MAX_POLL_TIMEOUT (24.0 * 3600.0)

/* While callbacks keep the loop busy and the last poll found nothing, skip
 * the zero-timeout poll (a system call) for up to this long. I/O readiness
 * is then noticed at most this late; a loop with I/O going on polls on every
 * iteration, as asyncio does. */
#define TL_QUIET_POLL_INTERVAL 50e-6

double tl_monotonic(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Once or twice an iteration (timers due, poll timeout), call_later(): an
 * error is reported and the monotonic clock stands in. */
double tl_loop_time_overridden(tl_loop *loop)
{
    PyObject *exc = PyErr_GetRaisedException();
    PyObject *r = PyObject_CallMethod((PyObject *)loop, "time", NULL);
    double t = r != NULL ? PyFloat_AsDouble(r) : -1.0;
    Py_XDECREF(r);
    if (t == -1.0 && PyErr_Occurred()) {
        PyErr_WriteUnraisable((PyObject *)loop);
        t = tl_monotonic();
    }
    PyErr_SetRaisedException(exc);
    return t;
}

static int loop_type_overrides_time(PyTypeObject *tp, tl_state *st)
{
    PyObject *ours = PyObject_GetAttrString((PyObject *)st->loop_type, "time");
    PyObject *theirs = ours ? PyObject_GetAttrString((PyObject *)tp, "time") : NULL;
    int r = theirs == NULL ? -1 : ours != theirs;
    Py_XDECREF(ours);
    Py_XDECREF(theirs);
    return r;
}

static int loop_setattro(tl_loop *loop, PyObject *name, PyObject *value)
{
    if (PyObject_GenericSetAttr((PyObject *)loop, name, value) < 0)
        return -1;
    if (PyUnicode_Check(name) && PyUnicode_CompareWithASCIIString(name, "time") == 0)
        loop->time_overridden = value != NULL || loop->time_by_type;
    return 0;
}

/* ---- the ready queue: a ring buffer of (fn, obj) ----------------------- */

int tl_ready_grow(tl_ready *q)
{
    return tl_ready_grow_from(q, 256);
}

int tl_ready_grow_from(tl_ready *q, size_t first_cap)
{
    size_t cap = q->cap ? q->cap * 2 : first_cap;
    tl_ready_item *items = PyMem_RawMalloc(cap * sizeof(*items));
    if (items == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    for (size_t i = 0; i < q->len; i++)
        items[i] = q->items[(q->head + i) & (q->cap - 1)];
    PyMem_RawFree(q->items);
    q->items = items;
    q->head = 0;
    q->cap = cap;
    return 0;
}

#define ready_push tl_ready_push
#define ready_pop tl_ready_pop

void tl_loop_unqueue(PyObject *obj)
{
#ifndef Py_GIL_DISABLED
    if (Py_REFCNT(obj) > 1 && PyObject_IS_GC(obj) && !PyObject_GC_IsTracked(obj))
        PyObject_GC_Track(obj);
#endif
    Py_DECREF(obj);
}

int tl_loop_visit_queued(PyObject *obj, visitproc visit, void *arg)
{
    if (!PyObject_GC_IsTracked(obj)) {
        tl_state *st = PyType_GetModuleState(Py_TYPE(obj));
        if (st != NULL && PyObject_TypeCheck(obj, st->handle_type))
            return tl_handle_traverse_contents((tl_handle *)obj, visit, arg);
    }
    Py_VISIT(obj);
    return 0;
}

/* A loop that is not running may be dropped without being closed: what its
 * queue holds must be visible to the collector then, so cycles through it
 * (a queued task whose coroutine refers to the loop) stay collectable.
 * Handles are the exception: the loop traverses their contents itself. */
static void ready_track_queued(tl_loop *loop)
{
#ifndef Py_GIL_DISABLED
    tl_ready *q = &loop->ready;
    for (size_t i = 0; i < q->len; i++) {
        PyObject *obj = q->items[(q->head + i) & (q->cap - 1)].obj;
        if (PyObject_IS_GC(obj) && !PyObject_GC_IsTracked(obj) &&
            !PyObject_TypeCheck(obj, loop->st->handle_type))
            PyObject_GC_Track(obj);
    }
#else
    (void)loop;
#endif
}

void tl_ready_clear(tl_ready *q)
{
    while (q->len) {
        tl_ready_item it = ready_pop(q);
        tl_loop_unqueue(it.obj);
    }
    PyMem_RawFree(q->items);
    q->items = NULL;
    q->cap = 0;
    q->head = 0;
}

#define ready_clear tl_ready_clear

#ifdef Py_GIL_DISABLED
/* call_soon() on a loop that does not run: behind what threadsafe callers
 * left in the inbox meanwhile (call_soon_threadsafe() from the thread about
 * to run it keeps its place between two call_soon()). */
static int loop_push_idle(tl_loop *loop, tl_ready_fn fn, PyObject *obj)
{
    PyMutex_Lock(&loop->inbox_lock);
    int rc = ready_push(loop->inbox.len ? &loop->inbox : &loop->ready, fn, obj);
    PyMutex_Unlock(&loop->inbox_lock);
    return rc;
}
#endif

int tl_loop_push_ready(tl_loop *loop, tl_ready_fn fn, PyObject *obj)
{
    if (TL_UNLIKELY(loop->dispatch != NULL))
        return tl_dispatch_push_callback(loop, fn, obj);
#ifdef Py_GIL_DISABLED
    if (TL_UNLIKELY(loop->thread_id == 0))
        return loop_push_idle(loop, fn, obj);
#endif
    return ready_push(&loop->ready, fn, obj);
}

void tl_loop_ev_changed(tl_loop *loop)
{
    unsigned long running = loop->thread_id;
    if (running != 0 && running != PyThread_get_thread_ident() && loop->ev != NULL)
        ev_async_send(loop->ev, &loop->wakeup);
}

#ifdef Py_GIL_DISABLED
/* Without the GIL another thread may not touch the ready queue: its calls
 * wait in the inbox until the loop thread moves them over. */
static int inbox_drain(tl_loop *loop)
{
    PyMutex_Lock(&loop->inbox_lock);
    int rc = 0;
    while (loop->inbox.len && rc == 0) {
        tl_ready_item it = ready_pop(&loop->inbox);
        rc = ready_push(&loop->ready, it.fn, it.obj);
    }
    PyMutex_Unlock(&loop->inbox_lock);
    return rc;
}
#endif

/* ---- checks ------------------------------------------------------------ */

int tl_loop_check_closed(tl_loop *loop)
{
    if (TL_UNLIKELY(loop->closed)) {
        PyErr_SetString(PyExc_RuntimeError, "Event loop is closed");
        return -1;
    }
    return 0;
}

int tl_loop_check_thread(tl_loop *loop)
{
    if (loop->thread_id == 0 || loop->thread_id == PyThread_get_thread_ident())
        return 0;
    if (loop->dispatch != NULL && tl_dispatch_on_worker(loop))
        return 0;
    PyErr_SetString(PyExc_RuntimeError,
                    "Non-thread-safe operation invoked on an event loop other "
                    "than the current one");
    return -1;
}

int tl_loop_check_callback(tl_loop *loop, PyObject *callback, const char *method)
{
    PyObject *r = tl_call_method((PyObject *)loop, "_check_callback", "Os",
                                      callback, method);
    if (r == NULL)
        return -1;
    Py_DECREF(r);
    return 0;
}

static int loop_check_running(tl_loop *loop)
{
    if (loop->thread_id != 0) {
        PyErr_SetString(PyExc_RuntimeError, "This event loop is already running");
        return -1;
    }
    PyObject *running = PyObject_CallNoArgs(loop->st->get_running_loop);
    if (running == NULL)
        return -1;
    int other = running != Py_None;
    Py_DECREF(running);
    if (other) {
        PyErr_SetString(PyExc_RuntimeError,
                        "Cannot run the event loop while another loop is running");
        return -1;
    }
    return 0;
}

int tl_parse_callback_args(const char *fname, const char *first,
                           PyObject *const *args, Py_ssize_t nargs,
                           PyObject *kwnames, PyObject **context)
{
    Py_ssize_t need = first ? 2 : 1;
    if (nargs < need) {
        const char *missing = (first && nargs == 0) ? first : "callback";
        PyErr_Format(PyExc_TypeError,
                     "%s() missing %zd required positional argument%s: '%s'%s",
                     fname, need - nargs, need - nargs > 1 ? "s" : "", missing,
                     need - nargs > 1 ? " and 'callback'" : "");
        return -1;
    }
    *context = NULL;
    if (kwnames == NULL)
        return 0;
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(kwnames); i++) {
        PyObject *key = PyTuple_GET_ITEM(kwnames, i);
        if (!PyUnicode_Check(key) || PyUnicode_CompareWithASCIIString(key, "context") != 0) {
            PyErr_Format(PyExc_TypeError,
                         "%s() got an unexpected keyword argument '%S'", fname, key);
            return -1;
        }
        *context = args[nargs + i];
    }
    return 0;
}

/* ---- error reporting --------------------------------------------------- */

int tl_loop_report(tl_loop *loop, PyObject *context)
{
    PyObject *r = PyObject_CallMethodOneArg((PyObject *)loop,
                                            loop->st->str_call_exception_handler,
                                            context);
    if (r == NULL)
        return -1;
    Py_DECREF(r);
    return 0;
}

int tl_loop_report_exception(tl_loop *loop, PyObject *message, PyObject *extra)
{
    if (PyErr_ExceptionMatches(PyExc_SystemExit) ||
        PyErr_ExceptionMatches(PyExc_KeyboardInterrupt))
        return -1;
    PyObject *exc = PyErr_GetRaisedException();
    PyObject *context = PyDict_New();
    int rc = -1;
    if (context == NULL ||
        PyDict_SetItemString(context, "message", message) < 0 ||
        PyDict_SetItemString(context, "exception", exc) < 0 ||
        (extra != NULL && PyDict_Update(context, extra) < 0))
        goto done;
    rc = tl_loop_report(loop, context);
done:
    Py_XDECREF(context);
    Py_DECREF(exc);
    return rc;
}

int tl_loop_is_slow(tl_loop *loop, double dt)
{
    /* a plain attribute, as on asyncio's loop: whatever was set is compared
     * as asyncio compares it (a str raises TypeError there too) */
    static const char name[] = "slow_callback_duration";
    PyObject *limit = tl_getattr((PyObject *)loop, name);
    PyObject *took = limit ? PyFloat_FromDouble(dt) : NULL;
    int slow = took ? PyObject_RichCompareBool(took, limit, Py_GE) : -1;
    Py_XDECREF(took);
    Py_XDECREF(limit);
    return slow;
}

int tl_loop_set_running(tl_loop *loop, PyObject *running)
{
    /* asyncio.events._set_running_loop as it is now: CPython's own tests
     * swap in the pure-Python one, and its get_event_loop() then looks
     * there (asyncio's loop calls the module global too) */
    PyObject *args[2] = {loop->st->events_module, running};
    PyObject *r = PyObject_VectorcallMethod(loop->st->str_set_running_loop, args,
                                            2, NULL);
    if (r == NULL)
        return -1;
    Py_DECREF(r);
    return 0;
}

int tl_loop_raise_deferred(tl_loop *loop)
{
    PyObject *exc = loop->pending_exc;
    if (TL_LIKELY(exc == NULL))
        return 0;
    loop->pending_exc = NULL;
    PyErr_SetRaisedException(exc);
    return -1;
}

void tl_loop_defer_error(tl_loop *loop)
{
    PyObject *exc = PyErr_GetRaisedException();
    if (loop->pending_exc == NULL) {
        loop->pending_exc = exc;
    } else {
        /* a second error while the first waits: keep the first, like a
         * Python `except` clause that raised again would chain it */
        Py_XDECREF(exc);
    }
    if (loop->ev != NULL)
        ev_break(loop->ev, EVBREAK_ONE);
}

/* ---- libev glue -------------------------------------------------------- */

/* Drop the GIL only around a poll that may sleep: a zero-timeout poll is
 * cheaper than the GIL round trip. */
static void loop_release_cb(struct ev_loop *ev)
{
    tl_loop *loop = ev_userdata(ev);
    if (loop->poll_blocking)
        loop->tstate = PyEval_SaveThread();
}

static void loop_acquire_cb(struct ev_loop *ev)
{
    tl_loop *loop = ev_userdata(ev);
    if (loop->tstate != NULL) {
        PyThreadState *ts = loop->tstate;
        loop->tstate = NULL;
        PyEval_RestoreThread(ts);
    }
}

/* A shared loop's: other threads may change watchers while it sleeps
 * (tl_loop.h: ev_mutex). Separate from the plain ones so that a loop of
 * one thread pays nothing for them. */
static void loop_release_shared_cb(struct ev_loop *ev)
{
    tl_loop *loop = ev_userdata(ev);
    atomic_store_explicit(&loop->ev_owner, 0, memory_order_relaxed);
    tl_mutex_unlock(&loop->ev_mutex);
    tl_dispatch_publish_held(loop);
    loop_release_cb(ev);
}

static void loop_acquire_shared_cb(struct ev_loop *ev)
{
    tl_loop *loop = ev_userdata(ev);
    loop_acquire_cb(ev);
    tl_mutex_lock(&loop->ev_mutex);
    atomic_store_explicit(&loop->ev_owner, PyThread_get_thread_ident(), memory_order_relaxed);
}

static void loop_set_release_cbs(tl_loop *loop)
{
    if (loop->shared)
        ev_set_loop_release_cb(loop->ev, loop_release_shared_cb, loop_acquire_shared_cb);
    else
        ev_set_loop_release_cb(loop->ev, loop_release_cb, loop_acquire_cb);
}

static void loop_wakeup_cb(struct ev_loop *ev, ev_async *w, int revents)
{
    /* its only job was to end the poll */
    TL_UNUSED(ev);
    TL_UNUSED(w);
    TL_UNUSED(revents);
}

static void loop_timer_cb(struct ev_loop *ev, ev_timer *w, int revents)
{
    TL_UNUSED(ev);
    TL_UNUSED(w);
    TL_UNUSED(revents);
}

/* ---- one iteration ----------------------------------------------------- */

static void loop_invoke_pending_cb(struct ev_loop *ev)
{
    tl_loop *loop = ev_userdata(ev);
    if (ev_pending_count(ev))
        loop->poll_had_events = 1;
    ev_invoke_pending(ev);
}

/* The poll may sleep until the first timer is due (at most
 * TL_MAX_POLL_TIMEOUT) */
static void loop_arm_poll_timer(tl_loop *loop, double timeout)
{
    if (timeout > TL_MAX_POLL_TIMEOUT)
        timeout = TL_MAX_POLL_TIMEOUT;
    /* libev measures the timer from its cached clock */
    ev_now_update(loop->ev);
    ev_timer_stop(loop->ev, &loop->timer);
    ev_timer_set(&loop->timer, timeout, 0.0);
    ev_timer_start(loop->ev, &loop->timer);
}

static int loop_poll(tl_loop *loop)
{
    int flags = EVRUN_NOWAIT;
    loop->poll_blocking = 0;
    if (loop->ready.len != 0 || loop->stopping) {
        double now = tl_monotonic();
        /* a stopping loop polls: asyncio's stop() promises one last look at
         * I/O (a loop driven one iteration at a time sees it at once) */
        if (loop->poll_quiet && !loop->stopping &&
            now - loop->last_poll < TL_QUIET_POLL_INTERVAL)
            return PyErr_CheckSignals();
        loop->last_poll = now;
    } else {
        if (loop->timers.len == 0) {
            flags = EVRUN_ONCE;
        } else {
            double timeout = tl_timer_heap_next(&loop->timers) - tl_loop_time(loop);
            if (timeout > 0) {
                loop_arm_poll_timer(loop, timeout);
                flags = EVRUN_ONCE;
            }
        }
        loop->poll_blocking = flags == EVRUN_ONCE;
    }
    loop->poll_had_events = 0;
    loop->io_behind = loop->ready.len != 0;
    ev_run(loop->ev, flags);
    loop->io_behind = 0;
    loop->poll_blocking = 0;
    loop->poll_quiet = !loop->poll_had_events;
    if (flags == EVRUN_ONCE)
        loop->last_poll = tl_monotonic();
    if (loop->pending_exc != NULL) {
        PyObject *exc = loop->pending_exc;
        loop->pending_exc = NULL;
        PyErr_SetRaisedException(exc);
        return -1;
    }
    /* a signal that interrupted the poll runs its Python handler now */
    return PyErr_CheckSignals();
}

/* One poll of a threaded loop, on its thread, ev_mutex held: sleep (when
 * `block`) until I/O, a timer, a signal or a wake-up from a worker; queue
 * what fired for the workers. */
static int loop_poll_threads(tl_loop *loop, int block)
{
    int flags = EVRUN_NOWAIT;
    if (block) {
        flags = EVRUN_ONCE;
        if (loop->timers.len) {
            double timeout = tl_timer_heap_next(&loop->timers) - tl_loop_time(loop);
            if (timeout <= 0)
                flags = EVRUN_NOWAIT;
            else
                loop_arm_poll_timer(loop, timeout);
        }
    }
    loop->poll_blocking = flags == EVRUN_ONCE;
    ev_run(loop->ev, flags);
    loop->poll_blocking = 0;
    if (loop->pending_exc != NULL) {
        PyObject *exc = loop->pending_exc;
        loop->pending_exc = NULL;
        PyErr_SetRaisedException(exc);
        return -1;
    }
    if (loop->timers.len && tl_timer_heap_expire(loop, tl_loop_time(loop)) < 0)
        return -1;
    return PyErr_CheckSignals();
}

static int loop_run_ready_debug(tl_loop *loop, tl_ready_item it)
{
    int is_handle = PyObject_TypeCheck(it.obj, loop->st->handle_type);
    /* with workers several callbacks run at once: no single current one */
    int track = loop->dispatch == NULL;
    if (track)
        Py_XSETREF(loop->current_handle, Py_NewRef(is_handle ? it.obj : Py_None));
    double t0 = tl_monotonic();
    int rc = it.fn(loop, it.obj);
    double dt = tl_monotonic() - t0;
    if (track)
        Py_CLEAR(loop->current_handle);
    if (rc < 0)
        return rc;
    int slow = tl_loop_is_slow(loop, dt);
    if (slow <= 0)
        return slow;
    PyObject *what;
    if (is_handle) {
        PyObject *fmt = tl_getattr(loop->st->base_events, "_format_handle");
        what = fmt ? PyObject_CallOneArg(fmt, it.obj) : NULL;
        Py_XDECREF(fmt);
    } else {
        what = PyObject_Repr(it.obj);
    }
    PyObject *logger = what ? tl_getattr(loop->st->base_events, "logger") : NULL;
    PyObject *r = logger ? tl_call_method(logger, "warning", "sOd",
                                               "Executing %s took %.3f seconds",
                                               what, dt) : NULL;
    Py_XDECREF(what);
    Py_XDECREF(logger);
    if (r == NULL)
        return -1;
    Py_DECREF(r);
    return 0;
}

int tl_loop_run_ready(tl_loop *loop, tl_ready_item it)
{
    return TL_UNLIKELY(loop->debug) ? loop_run_ready_debug(loop, it) : it.fn(loop, it.obj);
}

static int loop_run_once(tl_loop *loop)
{
    int locked = tl_loop_ev_lock(loop);
    int rc = loop_poll(loop);
#ifdef Py_GIL_DISABLED
    if (rc == 0)
        rc = inbox_drain(loop);
#endif
    if (rc == 0 && loop->timers.len)
        rc = tl_timer_heap_expire(loop, tl_loop_time(loop));
    tl_loop_ev_unlock(loop, locked);
    if (rc < 0)
        return -1;
    /* Run what is ready now; callbacks scheduled by these wait for the next
     * iteration, after another poll (asyncio's rule). */
    size_t ntodo = loop->ready.len;
    while (ntodo-- && loop->ready.len) {
        tl_ready_item it = ready_pop(&loop->ready);
        int rc = TL_UNLIKELY(loop->debug) ? loop_run_ready_debug(loop, it)
                                          : it.fn(loop, it.obj);
        tl_loop_unqueue(it.obj);
        if (TL_UNLIKELY(rc < 0))
            return -1;
    }
    return 0;
}

/* ---- coroutine origin tracking (debug mode) ---------------------------- */

static int loop_set_origin_tracking(tl_loop *loop, int enabled)
{
    PyObject *r = tl_call_method((PyObject *)loop,
                                      "_set_coroutine_origin_tracking", "O",
                                      enabled ? Py_True : Py_False);
    if (r == NULL)
        return -1;
    Py_DECREF(r);
    return 0;
}

/* ---- run_forever and friends ------------------------------------------- */

static PyObject *loop_run_forever_setup(tl_loop *loop, PyObject *Py_UNUSED(ignored))
{
    tl_state *st = loop->st;
    if (tl_loop_check_closed(loop) < 0 || loop_check_running(loop) < 0)
        return NULL;
    if (loop_set_origin_tracking(loop, loop->debug) < 0)
        return NULL;
    PyObject *hooks = PyObject_CallNoArgs(st->get_asyncgen_hooks);
    if (hooks == NULL)
        return NULL;
    Py_XSETREF(loop->old_agen_hooks, hooks);
    loop->thread_id = PyThread_get_thread_ident();

    PyObject *firstiter = PyObject_GetAttr((PyObject *)loop, st->str_asyncgen_firstiter_hook);
    PyObject *finalizer = firstiter ? PyObject_GetAttr((PyObject *)loop, st->str_asyncgen_finalizer_hook) : NULL;
    PyObject *kw = finalizer ? Py_BuildValue("{sOsO}", "firstiter", firstiter,
                                             "finalizer", finalizer) : NULL;
    PyObject *noargs = kw ? PyTuple_New(0) : NULL;
    PyObject *r = noargs ? PyObject_Call(st->set_asyncgen_hooks, noargs, kw) : NULL;
    Py_XDECREF(firstiter);
    Py_XDECREF(finalizer);
    Py_XDECREF(kw);
    Py_XDECREF(noargs);
    if (r == NULL)
        return NULL;
    Py_DECREF(r);

    if (tl_loop_set_running(loop, (PyObject *)loop) < 0)
        return NULL;
    /* the first iteration of a run polls, whatever the last run's did: a
     * loop driven one iteration at a time (call_soon(stop); run_forever())
     * sees I/O in every one, as asyncio's stop() promises */
    loop->poll_quiet = 0;
    if (tl_signal_attach(loop) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *loop_run_forever_cleanup(tl_loop *loop, PyObject *Py_UNUSED(ignored))
{
    tl_state *st = loop->st;
    /* An exception on its way out of run_forever must survive the cleanup;
     * a cleanup failure only shows when nothing else is being raised. */
    PyObject *exc = PyErr_GetRaisedException();
    int failed = 0;
    loop->stopping = 0;
    loop->thread_id = 0;
    ready_track_queued(loop);
    tl_signal_detach(loop);
    failed |= tl_loop_set_running(loop, Py_None) < 0;
    if (failed && exc) PyErr_Clear();
    failed |= loop_set_origin_tracking(loop, 0) < 0;
    PyObject *r;
    if (failed && exc) PyErr_Clear();
    if (loop->old_agen_hooks != NULL) {
        PyObject *hooks = loop->old_agen_hooks;
        loop->old_agen_hooks = NULL;
        r = PyObject_Call(st->set_asyncgen_hooks, hooks, NULL);
        Py_DECREF(hooks);
        failed |= r == NULL;
        Py_XDECREF(r);
        if (failed && exc) PyErr_Clear();
    }
    if (exc != NULL) {
        PyErr_SetRaisedException(exc);
        return NULL;
    }
    if (failed)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *loop_run_forever(tl_loop *loop, PyObject *Py_UNUSED(ignored));

static PyObject *loop_run_once_py(tl_loop *loop, PyObject *Py_UNUSED(ignored))
{
    if (loop->dispatch != NULL) {
        /* the workers run on their own: one iteration is one run with
         * stop() requested up front */
        loop->stopping = 1;
        return loop_run_forever(loop, NULL);
    }
    int rc = loop_run_once(loop);
    if (!loop->thread_id)
        ready_track_queued(loop);
    if (rc < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *loop_run_forever(tl_loop *loop, PyObject *Py_UNUSED(ignored))
{
    PyObject *r = loop_run_forever_setup(loop, NULL);
    if (r == NULL)
        return NULL;
    Py_DECREF(r);
    int rc;
    if (loop->dispatch != NULL) {
        int locked = tl_loop_ev_lock(loop);
        rc = tl_dispatch_run(loop, loop_poll_threads);
        tl_loop_ev_unlock(loop, locked);
    } else {
        for (;;) {
            rc = loop_run_once(loop);
            if (rc < 0 || loop->stopping)
                break;
        }
    }
    r = loop_run_forever_cleanup(loop, NULL);
    if (rc < 0) {
        Py_XDECREF(r);
        return NULL;
    }
    return r;
}

static PyObject *loop_run_until_complete(tl_loop *loop, PyObject *future)
{
    tl_state *st = loop->st;
    if (tl_loop_check_closed(loop) < 0 || loop_check_running(loop) < 0)
        return NULL;
    PyObject *isf = PyObject_CallOneArg(st->isfuture, future);
    if (isf == NULL)
        return NULL;
    int is_future = PyObject_IsTrue(isf);
    Py_DECREF(isf);
    if (is_future < 0)
        return NULL;
    int new_task = !is_future;


    PyObject *kw = Py_BuildValue("{sO}", "loop", (PyObject *)loop);
    PyObject *argt = kw ? PyTuple_Pack(1, future) : NULL;
    PyObject *fut = argt ? PyObject_Call(st->ensure_future, argt, kw) : NULL;
    Py_XDECREF(kw);
    Py_XDECREF(argt);
    if (fut == NULL)
        return NULL;
    if (new_task && PyObject_SetAttr(fut, st->str_log_destroy_pending, Py_False) < 0)
        goto fail;

    PyObject *r = PyObject_CallMethodOneArg(fut, st->str_add_done_callback,
                                            st->run_until_complete_cb);
    if (r == NULL)
        goto fail;
    Py_DECREF(r);

    r = loop_run_forever(loop, NULL);
    if (r == NULL) {
        PyObject *exc = PyErr_GetRaisedException();
        if (new_task) {
            /* The coroutine raised a BaseException: retrieve it so the task
             * does not log it, the caller never saw the task. */
            PyObject *done = tl_call_method(fut, "done", NULL);
            int is_done = done ? PyObject_IsTrue(done) : -1;
            Py_XDECREF(done);
            PyObject *canc = is_done > 0 ? tl_call_method(fut, "cancelled", NULL) : NULL;
            if (canc != NULL && !PyObject_IsTrue(canc)) {
                PyObject *e = tl_call_method(fut, "exception", NULL);
                Py_XDECREF(e);
            }
            Py_XDECREF(canc);
            PyErr_Clear();
        }
        r = PyObject_CallMethodOneArg(fut, st->str_remove_done_callback,
                                      st->run_until_complete_cb);
        Py_XDECREF(r);
        PyErr_Clear();
        PyErr_SetRaisedException(exc);
        goto fail;
    }
    Py_DECREF(r);
    r = PyObject_CallMethodOneArg(fut, st->str_remove_done_callback,
                                  st->run_until_complete_cb);
    if (r == NULL)
        goto fail;
    Py_DECREF(r);

    PyObject *done = tl_call_method(fut, "done", NULL);
    if (done == NULL)
        goto fail;
    int is_done = PyObject_IsTrue(done);
    Py_DECREF(done);
    if (is_done < 0)
        goto fail;
    if (!is_done) {
        PyErr_SetString(PyExc_RuntimeError, "Event loop stopped before Future completed.");
        goto fail;
    }
    r = tl_call_method(fut, "result", NULL);
    Py_DECREF(fut);
    return r;
fail:
    Py_DECREF(fut);
    return NULL;
}

static PyObject *loop_stop(tl_loop *loop, PyObject *Py_UNUSED(ignored))
{
    loop->stopping = 1;
    if (loop->dispatch != NULL)
        tl_dispatch_stop(loop);
    Py_RETURN_NONE;
}

static PyObject *loop_is_running(tl_loop *loop, PyObject *Py_UNUSED(ignored))
{
#if PY_VERSION_HEX >= 0x030C0000 && PY_VERSION_HEX < 0x030E0000
    if (TL_UNLIKELY(loop->dispatch != NULL))
        tl_dispatch_alone_rest_of_item(loop);   /* an eager asyncio.Task may follow */
#endif
    return PyBool_FromLong(loop->thread_id != 0);
}

static PyObject *loop_is_closed(tl_loop *loop, PyObject *Py_UNUSED(ignored))
{
    return PyBool_FromLong(loop->closed);
}

/* The one door to a loop's ready queue for the layers below it (futures,
 * tasks): ours in C, any other loop through its call_soon(). */
int tl_call_soon(tl_state *st, PyObject *loop, tl_loop *tloop, PyObject *fn,
                 PyObject *const *args, Py_ssize_t nargs, PyObject *ctx)
{
    if (tloop != NULL) {
        if (tl_loop_check_closed(tloop) < 0)
            return -1;
        tl_handle *h = tl_handle_new(tloop, fn, args, nargs, ctx);
        if (h == NULL)
            return -1;
        return tl_loop_push_ready_threadsafe(tloop, tl_handle_ready_fn, (PyObject *)h);
    }
    PyObject *argv[5];
    assert(nargs <= 2);
    argv[0] = loop;
    argv[1] = fn;
    for (Py_ssize_t i = 0; i < nargs; i++)
        argv[2 + i] = args[i];
    size_t n = 2 + (size_t)nargs;
    PyObject *kwnames = NULL;
    if (ctx != NULL) {
        argv[n] = ctx;
        kwnames = st->context_kwnames;
    }
    PyObject *r = PyObject_VectorcallMethod(st->str_call_soon, argv, n, kwnames);
    if (r == NULL)
        return -1;
    Py_DECREF(r);
    return 0;
}

/* A worker inside an item does not count as running while it waits (an
 * item that runs alone may hold the lock: dispatch.c). */
void tl_loop_ev_lock_wait(tl_loop *loop)
{
    if (loop->dispatch != NULL)
        tl_dispatch_lock_in_item(&loop->ev_mutex);
    else
        tl_mutex_lock(&loop->ev_mutex);
}

void tl_loop_link_add(tl_loop *loop, tl_loop_link *link)
{
    link->next = &loop->links;
    link->prev = loop->links.prev;
    loop->links.prev->next = link;
    loop->links.prev = link;
}

void tl_loop_link_remove(tl_loop_link *link)
{
    if (link->next == NULL)
        return;
    link->prev->next = link->next;
    link->next->prev = link->prev;
    link->next = link->prev = NULL;
}

static void loop_free_ev(tl_loop *loop)
{
    tl_dispatch_destroy(loop);
    /* Owners of watchers let go while libev is still alive; each one may
     * drop the last reference to itself, so take them one at a time. */
    while (loop->links.next != NULL && loop->links.next != &loop->links) {
        tl_loop_link *link = loop->links.next;
        tl_loop_link_remove(link);
        link->on_loop_close(link);
    }
    PyMem_Free(loop->read_buf);
    loop->read_buf = NULL;
    Py_CLEAR(loop->read_spare);
    ready_clear(&loop->ready);
#ifdef Py_GIL_DISABLED
    ready_clear(&loop->inbox);
#endif
    tl_timer_heap_clear(&loop->timers);
    tl_io_table_clear(loop);
    tl_signal_close(loop);
    tl_fork_unregister(loop);
    if (loop->ev != NULL) {
        ev_async_stop(loop->ev, &loop->wakeup);
        ev_timer_stop(loop->ev, &loop->timer);
        ev_loop_destroy(loop->ev);
        loop->ev = NULL;
    }
}

static int loop_shutdown_executor(tl_loop *loop)
{
    /* asyncio: close() shuts the default executor down without waiting */
    if (PyObject_SetAttrString((PyObject *)loop, "_executor_shutdown_called", Py_True) < 0)
        return -1;
    PyObject *executor = tl_getattr((PyObject *)loop, "_default_executor");
    if (executor == NULL) {
        if (!PyErr_ExceptionMatches(PyExc_AttributeError))
            return -1;
        PyErr_Clear();
        return 0;
    }
    int rc = 0;
    if (executor != Py_None) {
        rc = PyObject_SetAttrString((PyObject *)loop, "_default_executor", Py_None);
        if (rc == 0) {
            PyObject *kw = Py_BuildValue("{sO}", "wait", Py_False);
            PyObject *noargs = kw ? PyTuple_New(0) : NULL;
            PyObject *shutdown = noargs ? tl_getattr(executor, "shutdown") : NULL;
            PyObject *r = shutdown ? PyObject_Call(shutdown, noargs, kw) : NULL;
            rc = r ? 0 : -1;
            Py_XDECREF(r);
            Py_XDECREF(shutdown);
            Py_XDECREF(noargs);
            Py_XDECREF(kw);
        }
    }
    Py_DECREF(executor);
    return rc;
}

static PyObject *loop_close(tl_loop *loop, PyObject *Py_UNUSED(ignored))
{
    if (loop->thread_id != 0) {
        PyErr_SetString(PyExc_RuntimeError, "Cannot close a running event loop");
        return NULL;
    }
    if (loop->closed)
        Py_RETURN_NONE;
    if (loop->debug) {
        PyObject *logger = tl_getattr(loop->st->base_events, "logger");
        PyObject *r = logger ? tl_call_method(logger, "debug", "sO", "Close %r",
                                                   (PyObject *)loop) : NULL;
        Py_XDECREF(logger);
        if (r == NULL)
            return NULL;
        Py_DECREF(r);
    }
    loop->closed = 1;
    if (tl_signal_remove_all(loop) < 0)
        return NULL;
    loop_free_ev(loop);
    if (loop_shutdown_executor(loop) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *loop_time(tl_loop *loop, PyObject *Py_UNUSED(ignored))
{
    TL_UNUSED(loop);
    return PyFloat_FromDouble(tl_monotonic());    /* an override's super().time() */
}

static PyObject *loop_get_debug(tl_loop *loop, PyObject *Py_UNUSED(ignored))
{
    return PyBool_FromLong(loop->debug);
}

static PyObject *loop_call_soon_threadsafe_impl(tl_loop *loop, PyObject *callback,
                                                PyObject *const *args, Py_ssize_t nargs,
                                                PyObject *context);

static PyObject *loop_set_debug(tl_loop *loop, PyObject *enabled)
{
    int on = PyObject_IsTrue(enabled);
    if (on < 0)
        return NULL;
    loop->debug = (char)on;
    if (loop->thread_id != 0) {
        PyObject *cb = tl_getattr((PyObject *)loop, "_set_coroutine_origin_tracking");
        if (cb == NULL)
            return NULL;
        PyObject *h = loop_call_soon_threadsafe_impl(loop, cb, &enabled, 1, NULL);
        Py_DECREF(cb);
        if (h == NULL)
            return NULL;
        Py_DECREF(h);
    }
    Py_RETURN_NONE;
}

/* ---- scheduling -------------------------------------------------------- */

static PyObject *loop_call_soon(tl_loop *loop, PyObject *const *args,
                                Py_ssize_t nargsf, PyObject *kwnames)
{
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    PyObject *context;
    if (tl_parse_callback_args("call_soon", NULL, args, nargs, kwnames, &context) < 0 ||
        tl_loop_check_closed(loop) < 0)
        return NULL;
    if (TL_UNLIKELY(loop->debug) &&
        (tl_loop_check_thread(loop) < 0 ||
         tl_loop_check_callback(loop, args[0], "call_soon") < 0))
        return NULL;
    tl_handle *h = tl_handle_new(loop, args[0], args + 1, nargs - 1, context);
    if (h == NULL)
        return NULL;
    int rc = tl_loop_push_ready(loop, tl_handle_ready_fn, Py_NewRef(h));
    if (rc < 0) {
        Py_DECREF(h);
        return NULL;
    }
    return (PyObject *)h;
}

/* ---- call_soon_threadsafe under a flood -------------------------------- */

/* Other threads may schedule callbacks faster than the loop runs them (any
 * number of producers, one loop thread). Unchecked, the queue grows without
 * end, and so does each iteration, which runs what was queued when it began:
 * a timer or an I/O event then waits behind millions of callbacks. So a
 * producer that finds TL_BACKLOG_HIGH callbacks waiting while the loop runs
 * waits, without the GIL, until the loop has taken them down to
 * TL_BACKLOG_LOW: memory stays bounded, an iteration never runs much more
 * than TL_BACKLOG_HIGH of them, so timers and I/O come around on time, and
 * the producers run at the loop's pace. A loop that takes none for
 * TL_BACKLOG_PATIENCE is stuck (a callback waits for the producer itself):
 * producers then go on unthrottled for a while, as asyncio's would, rather
 * than hang. The loop's own thread and its workers are never held up. */
#define TL_BACKLOG_HIGH 1024
#define TL_BACKLOG_LOW 512
#define TL_BACKLOG_PATIENCE 0.05
#define TL_BACKLOG_UNTHROTTLED 0.1

/* Callbacks waiting to run, read from any thread, GIL or not. */
static size_t loop_backlog(tl_loop *loop)
{
    if (loop->dispatch != NULL)
        return tl_dispatch_backlog(loop);
#ifdef Py_GIL_DISABLED
    PyMutex_Lock(&loop->inbox_lock);
    size_t n = loop->inbox.len;
    PyMutex_Unlock(&loop->inbox_lock);
    return n;
#else
    /* the GIL guards the queue; a waiter without it only peeks */
    return __atomic_load_n(&loop->ready.len, __ATOMIC_RELAXED);
#endif
}

static int loop_runs_elsewhere(tl_loop *loop)
{
    unsigned long running = __atomic_load_n(&loop->thread_id, __ATOMIC_RELAXED);
    return running != 0 && running != PyThread_get_thread_ident() &&
           !atomic_load_explicit(&loop->closed, memory_order_relaxed);
}

static TL_NOINLINE void loop_wait_for_backlog(tl_loop *loop, size_t backlog)
{
    if (!loop_runs_elsewhere(loop) || (loop->dispatch && tl_dispatch_on_worker(loop)))
        return;
    double now = tl_monotonic();
    if (now < atomic_load_explicit(&loop->unthrottled_until, memory_order_relaxed))
        return;
    double since = now;
    size_t least = backlog;
    Py_BEGIN_ALLOW_THREADS
    struct timespec nap = {0, 100 * 1000};
    for (;;) {
        nanosleep(&nap, NULL);
        size_t n = loop_backlog(loop);
        now = tl_monotonic();
        if (n <= TL_BACKLOG_LOW || !loop_runs_elsewhere(loop))
            break;
        if (n < least) {
            least = n;
            since = now;
        } else if (now - since > TL_BACKLOG_PATIENCE) {
            atomic_store_explicit(&loop->unthrottled_until, now + TL_BACKLOG_UNTHROTTLED,
                                  memory_order_relaxed);
            break;
        }
    }
    Py_END_ALLOW_THREADS
}

static inline void loop_throttle_producer(tl_loop *loop)
{
    size_t backlog = loop_backlog(loop);
    if (TL_UNLIKELY(backlog >= TL_BACKLOG_HIGH))
        loop_wait_for_backlog(loop, backlog);
}

static PyObject *loop_call_soon_threadsafe_impl(tl_loop *loop, PyObject *callback,
                                                PyObject *const *args, Py_ssize_t nargs,
                                                PyObject *context)
{
    if (tl_loop_check_closed(loop) < 0)
        return NULL;
    if (TL_UNLIKELY(loop->debug) &&
        tl_loop_check_callback(loop, callback, "call_soon_threadsafe") < 0)
        return NULL;
    loop_throttle_producer(loop);
    tl_handle *h = tl_handle_new(loop, callback, args, nargs, context);
    if (h == NULL)
        return NULL;
    tl_handle_make_threadsafe(h);
    if (tl_loop_push_ready_threadsafe(loop, tl_handle_ready_fn, Py_NewRef(h)) < 0) {
        Py_DECREF(h);
        return NULL;
    }
    return (PyObject *)h;
}

int tl_loop_push_ready_threadsafe(tl_loop *loop, tl_ready_fn fn, PyObject *obj)
{
    if (loop->dispatch != NULL)
        return tl_dispatch_push_callback(loop, fn, obj);
    int own_thread = loop->thread_id == PyThread_get_thread_ident();
    int rc;
#ifdef Py_GIL_DISABLED
    if (!own_thread) {
        PyMutex_Lock(&loop->inbox_lock);
        rc = ready_push(&loop->inbox, fn, obj);
        PyMutex_Unlock(&loop->inbox_lock);
    } else
#endif
    rc = ready_push(&loop->ready, fn, obj);
    if (rc < 0)
        return -1;
    /* The loop thread is never asleep while it runs this. libev writes to
     * its wakeup fd only when the loop is really blocked in the poll. */
    if (!own_thread && loop->ev != NULL)
        ev_async_send(loop->ev, &loop->wakeup);
    return 0;
}

static PyObject *loop_call_soon_threadsafe(tl_loop *loop, PyObject *const *args,
                                           Py_ssize_t nargsf, PyObject *kwnames)
{
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    PyObject *context;
    if (tl_parse_callback_args("call_soon_threadsafe", NULL, args, nargs, kwnames,
                               &context) < 0)
        return NULL;
    return loop_call_soon_threadsafe_impl(loop, args[0], args + 1, nargs - 1, context);
}

static PyObject *loop_create_future(tl_loop *loop, PyObject *Py_UNUSED(ignored))
{
    return tl_future_new(loop);
}

static PyObject *loop_create_task(tl_loop *loop, PyObject *const *args,
                                  Py_ssize_t nargsf, PyObject *kwnames)
{
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    if (tl_loop_check_closed(loop) < 0)
        return NULL;
    if (loop->task_factory != NULL) {
        /* the factory protocol differs between Python versions: let the
         * running asyncio's own create_task speak it */
        PyObject *meth = tl_getattr(loop->st->base_event_loop_cls, "create_task");
        if (meth == NULL)
            return NULL;
        Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
        PyObject **argv = PyMem_Malloc((size_t)(nargs + nkw + 1) * sizeof(PyObject *));
        if (argv == NULL) {
            Py_DECREF(meth);
            return PyErr_NoMemory();
        }
        argv[0] = (PyObject *)loop;
        for (Py_ssize_t i = 0; i < nargs + nkw; i++)
            argv[1 + i] = args[i];
        PyObject *r = PyObject_Vectorcall(meth, argv, (size_t)nargs + 1, kwnames);
        PyMem_Free(argv);
        Py_DECREF(meth);
        return r;
    }
    if (nargs != 1) {
        PyErr_Format(PyExc_TypeError,
                     "create_task() takes 1 positional argument but %zd were given", nargs);
        return NULL;
    }
    /* Task(coro, loop=self, name=..., context=...), straight to C; 3.14's
     * create_task also passes eager_start on to the Task */
    PyObject *name = NULL, *context = NULL;
    int eager_start = 0;
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    for (Py_ssize_t i = 0; i < nkw; i++) {
        PyObject *key = PyTuple_GET_ITEM(kwnames, i);
        PyObject *value = args[nargs + i];
        if (PyUnicode_Check(key) && PyUnicode_CompareWithASCIIString(key, "name") == 0) {
            name = value;
        } else if (PyUnicode_Check(key) &&
                   PyUnicode_CompareWithASCIIString(key, "context") == 0) {
            context = value;
#if PY_VERSION_HEX >= 0x030E0000
        } else if (PyUnicode_Check(key) &&
                   PyUnicode_CompareWithASCIIString(key, "eager_start") == 0) {
            eager_start = PyObject_IsTrue(value);
            if (eager_start < 0)
                return NULL;
#endif
        } else {
            PyErr_Format(PyExc_TypeError,
                         "create_task() got an unexpected keyword argument '%S'", key);
            return NULL;
        }
    }
    return tl_task_new(loop, args[0], name, context, eager_start);
}

static PyObject *loop_set_task_factory(tl_loop *loop, PyObject *factory)
{
    if (factory != Py_None && !PyCallable_Check(factory)) {
        PyErr_SetString(PyExc_TypeError, "task factory must be a callable or None");
        return NULL;
    }
    Py_XSETREF(loop->task_factory, factory == Py_None ? NULL : Py_NewRef(factory));
    Py_RETURN_NONE;
}

static PyObject *loop_get_task_factory(tl_loop *loop, PyObject *Py_UNUSED(ignored))
{
    return Py_NewRef(loop->task_factory ? loop->task_factory : Py_None);
}

static PyObject *loop_set_exception_handler(tl_loop *loop, PyObject *handler)
{
    if (handler != Py_None && !PyCallable_Check(handler)) {
        PyErr_Format(PyExc_TypeError,
                     "A callable object or None is expected, got %R", handler);
        return NULL;
    }
    Py_XSETREF(loop->exception_handler, handler == Py_None ? NULL : Py_NewRef(handler));
    Py_RETURN_NONE;
}

static PyObject *loop_get_exception_handler(tl_loop *loop, PyObject *Py_UNUSED(ignored))
{
    return Py_NewRef(loop->exception_handler ? loop->exception_handler : Py_None);
}

static PyObject *loop_check_closed_py(tl_loop *loop, PyObject *Py_UNUSED(ignored))
{
    if (tl_loop_check_closed(loop) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *loop_check_thread_py(tl_loop *loop, PyObject *Py_UNUSED(ignored))
{
    if (tl_loop_check_thread(loop) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *loop_check_running_py(tl_loop *loop, PyObject *Py_UNUSED(ignored))
{
    if (loop_check_running(loop) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *loop_repr(tl_loop *loop)
{
    return PyUnicode_FromFormat("<%s running=%s closed=%s debug=%s>",
                                tl_type_name(Py_TYPE(loop)),
                                loop->thread_id ? "True" : "False",
                                loop->closed ? "True" : "False",
                                loop->debug ? "True" : "False");
}

/* The loop lock from Python, for the asyncio objects that transports call
 * from the loop thread and tasks call from workers (asyncio.Server). */
static PyObject *loop_lock_acquire(tl_loop *loop, PyObject *Py_UNUSED(ignored))
{
    return PyBool_FromLong(loop->dispatch != NULL && tl_loop_ev_lock(loop));
}

static PyObject *loop_lock_release(tl_loop *loop, PyObject *taken)
{
    if (PyObject_IsTrue(taken) > 0)
        tl_loop_ev_unlock(loop, 1);
    Py_RETURN_NONE;
}

PyMethodDef tl_loop_core_methods[] = {
    {"_lock_acquire", (PyCFunction)loop_lock_acquire, METH_NOARGS,
     "Take the loop lock unless this thread holds it (threaded loops); True if taken."},
    {"_lock_release", (PyCFunction)loop_lock_release, METH_O,
     "Give back what _lock_acquire() took."},
    {"run_forever", (PyCFunction)loop_run_forever, METH_NOARGS,
     "Run until stop() is called."},
    {"run_until_complete", (PyCFunction)loop_run_until_complete, METH_O,
     "Run until the future (or coroutine) is done and return its result."},
    {"_run_forever_setup", (PyCFunction)loop_run_forever_setup, METH_NOARGS, NULL},
    {"_run_forever_cleanup", (PyCFunction)loop_run_forever_cleanup, METH_NOARGS, NULL},
    {"_run_once", (PyCFunction)loop_run_once_py, METH_NOARGS, NULL},
    {"stop", (PyCFunction)loop_stop, METH_NOARGS,
     "Stop after the current iteration; scheduled callbacks still run."},
    {"close", (PyCFunction)loop_close, METH_NOARGS,
     "Close the loop: drop pending callbacks and release its resources."},
    {"is_running", (PyCFunction)loop_is_running, METH_NOARGS, NULL},
    {"is_closed", (PyCFunction)loop_is_closed, METH_NOARGS, NULL},
    {"time", (PyCFunction)loop_time, METH_NOARGS,
     "The loop's clock: time.monotonic(), in seconds."},
    {"get_debug", (PyCFunction)loop_get_debug, METH_NOARGS, NULL},
    {"set_debug", (PyCFunction)loop_set_debug, METH_O, NULL},
    {"call_soon", (PyCFunction)(void (*)(void))loop_call_soon,
     METH_FASTCALL | METH_KEYWORDS,
     "call_soon(callback, *args, context=None)\n--\n\n"
     "Arrange for callback(*args) to be called soon, in FIFO order."},
    {"call_soon_threadsafe", (PyCFunction)(void (*)(void))loop_call_soon_threadsafe,
     METH_FASTCALL | METH_KEYWORDS,
     "call_soon_threadsafe(callback, *args, context=None)\n--\n\n"
     "Like call_soon(), callable from any thread."},
    {"create_future", (PyCFunction)loop_create_future, METH_NOARGS, NULL},
    {"create_task", (PyCFunction)(void (*)(void))loop_create_task,
     METH_FASTCALL | METH_KEYWORDS, NULL},
    {"set_task_factory", (PyCFunction)loop_set_task_factory, METH_O, NULL},
    {"get_task_factory", (PyCFunction)loop_get_task_factory, METH_NOARGS, NULL},
    {"set_exception_handler", (PyCFunction)loop_set_exception_handler, METH_O, NULL},
    {"get_exception_handler", (PyCFunction)loop_get_exception_handler, METH_NOARGS, NULL},
    {"_check_closed", (PyCFunction)loop_check_closed_py, METH_NOARGS, NULL},
    {"_check_thread", (PyCFunction)loop_check_thread_py, METH_NOARGS, NULL},
    {"_check_running", (PyCFunction)loop_check_running_py, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

/* ---- attributes asyncio's borrowed Python code reads ------------------- */

static PyObject *get_debug_attr(tl_loop *loop, void *c)
{
    TL_UNUSED(c);
    return PyBool_FromLong(loop->debug);
}

static int set_debug_attr(tl_loop *loop, PyObject *v, void *c)
{
    TL_UNUSED(c);
    int on = v ? PyObject_IsTrue(v) : 0;
    if (on < 0)
        return -1;
    loop->debug = (char)on;
    return 0;
}

static PyObject *get_stopping(tl_loop *loop, void *c)
{
    TL_UNUSED(c);
    return PyBool_FromLong(loop->stopping);
}

static int set_stopping(tl_loop *loop, PyObject *v, void *c)
{
    TL_UNUSED(c);
    int on = v ? PyObject_IsTrue(v) : 0;
    if (on < 0)
        return -1;
    loop->stopping = (char)on;
    return 0;
}

static PyObject *get_closed(tl_loop *loop, void *c)
{
    TL_UNUSED(c);
    return PyBool_FromLong(loop->closed);
}

static PyObject *get_thread_id(tl_loop *loop, void *c)
{
    TL_UNUSED(c);
    if (loop->thread_id == 0)
        Py_RETURN_NONE;
    return PyLong_FromUnsignedLong(loop->thread_id);
}

static PyObject *get_current_handle(tl_loop *loop, void *c)
{
    TL_UNUSED(c);
    return Py_NewRef(loop->current_handle ? loop->current_handle : Py_None);
}

static int set_current_handle(tl_loop *loop, PyObject *v, void *c)
{
    TL_UNUSED(c);
    Py_XSETREF(loop->current_handle, (v == NULL || v == Py_None) ? NULL : Py_NewRef(v));
    return 0;
}

static int set_exception_handler_attr(tl_loop *loop, PyObject *v, void *c)
{
    TL_UNUSED(c);
    Py_XSETREF(loop->exception_handler, (v == NULL || v == Py_None) ? NULL : Py_NewRef(v));
    return 0;
}

static int set_task_factory_attr(tl_loop *loop, PyObject *v, void *c)
{
    TL_UNUSED(c);
    Py_XSETREF(loop->task_factory, (v == NULL || v == Py_None) ? NULL : Py_NewRef(v));
    return 0;
}

static PyObject *get_threads(tl_loop *loop, void *c)
{
    TL_UNUSED(c);
    return PyLong_FromLong(tl_dispatch_nthreads(loop));
}

static PyGetSetDef loop_getset[] = {
    {"threads", (getter)get_threads, NULL,
     "How many worker threads run the loop's callbacks and tasks (0: none, the\n"
     "classic single-threaded loop).", NULL},
    {"_debug", (getter)get_debug_attr, (setter)set_debug_attr, NULL, NULL},
    {"_stopping", (getter)get_stopping, (setter)set_stopping, NULL, NULL},
    {"_closed", (getter)get_closed, NULL, NULL, NULL},
    {"_thread_id", (getter)get_thread_id, NULL, NULL, NULL},
    {"_current_handle", (getter)get_current_handle, (setter)set_current_handle, NULL, NULL},
    {"_exception_handler", (getter)loop_get_exception_handler,
     (setter)set_exception_handler_attr, NULL, NULL},
    {"_task_factory", (getter)loop_get_task_factory, (setter)set_task_factory_attr, NULL, NULL},
    {"_signal_handlers", (getter)tl_signal_get_handlers, NULL, NULL, NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMemberDef loop_members[] = {
    {"__dictoffset__", Py_T_PYSSIZET, offsetof(tl_loop, dict), Py_READONLY, NULL},
    {"__weaklistoffset__", Py_T_PYSSIZET, offsetof(tl_loop, weakreflist), Py_READONLY, NULL},
    {NULL, 0, 0, 0, NULL},
};

/* ---- the type ---------------------------------------------------------- */

static int loop_ev_init(tl_loop *loop)
{
    /* never the default loop (it owns SIGCHLD); never touch the signal mask */
    loop->ev = ev_loop_new(EVFLAG_AUTO | EVFLAG_NOSIGMASK);
    if (loop->ev == NULL) {
        PyErr_SetString(PyExc_OSError, "libev could not create an event loop");
        return -1;
    }
    ev_set_userdata(loop->ev, loop);
    loop_set_release_cbs(loop);
    ev_set_invoke_pending_cb(loop->ev, loop_invoke_pending_cb);
    ev_async_init(&loop->wakeup, loop_wakeup_cb);
    ev_async_start(loop->ev, &loop->wakeup);
    ev_timer_init(&loop->timer, loop_timer_cb, 0.0, 0.0);
    return tl_fork_register(loop);
}

static PyObject *loop_new(PyTypeObject *tp, PyObject *args, PyObject *kwds)
{
    TL_UNUSED(args);
    TL_UNUSED(kwds);
    tl_state *st = tl_state_of_type(tp);
    if (st == NULL)
        return NULL;
    tl_loop *loop = (tl_loop *)tp->tp_alloc(tp, 0);
    if (loop == NULL)
        return NULL;
    loop->st = st;
    loop->signal_fds[0] = loop->signal_fds[1] = -1;
    int by_type = loop_type_overrides_time(tp, st);
    if (by_type < 0) {
        Py_DECREF(loop);
        return NULL;
    }
    loop->time_by_type = loop->time_overridden = (char)by_type;
#ifdef Py_GIL_DISABLED
    loop->shared = 1;   /* any thread may call in, none is held back */
#endif
    loop->links.next = loop->links.prev = &loop->links;
    if (loop_ev_init(loop) < 0) {
        Py_DECREF(loop);
        return NULL;
    }
    PyObject *dbg = tl_call_method(st->coroutines_module, "_is_debug_mode", NULL);
    int on = dbg ? PyObject_IsTrue(dbg) : -1;
    Py_XDECREF(dbg);
    if (on < 0) {
        Py_DECREF(loop);
        return NULL;
    }
    loop->debug = (char)on;
    return (PyObject *)loop;
}

static int loop_init_threads(tl_loop *loop, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"threads", NULL};
    PyObject *threads = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|$O:Loop", kwlist, &threads))
        return -1;
    if (threads == NULL || threads == Py_None)
        return 0;
    if (!PyLong_Check(threads) || PyBool_Check(threads)) {
        PyErr_Format(PyExc_TypeError, "threads must be an int, not %s",
                     Py_TYPE(threads)->tp_name);
        return -1;
    }
    int overflow;
    long n = PyLong_AsLongAndOverflow(threads, &overflow);
    if (n == -1 && PyErr_Occurred())
        return -1;
    if (overflow || n < 0 || n > INT_MAX) {
        PyErr_Format(PyExc_ValueError, "threads must be >= 0, got %R", threads);
        return -1;
    }
    if (n == tl_dispatch_nthreads(loop))
        return 0;
    if (loop->dispatch != NULL || loop->thread_id != 0 || loop->closed) {
        PyErr_SetString(PyExc_RuntimeError,
                        "the number of threads of a loop is fixed when it is made");
        return -1;
    }
    if (tl_dispatch_create(loop, (int)n) < 0)
        return -1;
    loop->shared = 1;
    if (loop->ev != NULL)
        loop_set_release_cbs(loop);
    return 0;
}

/* A loop whose __init__ failed (a wrong argument) was never the caller's:
 * dropping it is not a leak to warn about. */
static int loop_init(tl_loop *loop, PyObject *args, PyObject *kwds)
{
    if (loop_init_threads(loop, args, kwds) < 0)
        return -1;
    loop->initialized = 1;
    return 0;
}

static int loop_traverse(tl_loop *loop, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(loop));
    Py_VISIT(loop->dict);
    Py_VISIT(loop->pending_exc);
    Py_VISIT(loop->exception_handler);
    Py_VISIT(loop->task_factory);
    Py_VISIT(loop->current_handle);
    Py_VISIT(loop->old_agen_hooks);
    Py_VISIT(loop->signal_handlers);
    for (size_t i = 0; i < loop->ready.len; i++) {
        PyObject *obj = loop->ready.items[(loop->ready.head + i) & (loop->ready.cap - 1)].obj;
        int r = tl_loop_visit_queued(obj, visit, arg);
        if (r)
            return r;
    }
    if (tl_timer_heap_traverse(&loop->timers, visit, arg))
        return -1;
    if (tl_dispatch_traverse(loop, visit, arg))
        return -1;
    return tl_io_table_traverse(&loop->io, visit, arg);
}

static int loop_clear(tl_loop *loop)
{
    Py_CLEAR(loop->dict);
    Py_CLEAR(loop->pending_exc);
    Py_CLEAR(loop->exception_handler);
    Py_CLEAR(loop->task_factory);
    Py_CLEAR(loop->current_handle);
    Py_CLEAR(loop->old_agen_hooks);
    Py_CLEAR(loop->signal_handlers);
    ready_clear(&loop->ready);
    tl_dispatch_clear(loop);
    tl_timer_heap_clear(&loop->timers);
    tl_io_table_clear(loop);
    return 0;
}

static void loop_finalize(tl_loop *loop)
{
    if (loop->closed || loop->ev == NULL)
        return;
    PyObject *exc = PyErr_GetRaisedException();
    if (loop->initialized &&
        PyErr_ResourceWarning((PyObject *)loop, 1, "unclosed event loop %R",
                              (PyObject *)loop) < 0)
        PyErr_WriteUnraisable((PyObject *)loop);
    if (loop->thread_id == 0) {
        /* a subclass's close() may need what its own __init__ never set */
        PyObject *r = loop->initialized ? tl_call_method((PyObject *)loop, "close", NULL)
                                        : loop_close(loop, NULL);
        if (r == NULL)
            PyErr_WriteUnraisable((PyObject *)loop);
        Py_XDECREF(r);
    }
    PyErr_SetRaisedException(exc);
}

static void loop_dealloc(tl_loop *loop)
{
    PyTypeObject *tp = Py_TYPE(loop);
    if (PyObject_CallFinalizerFromDealloc((PyObject *)loop) < 0)
        return;
    PyObject_GC_UnTrack(loop);
    TL_CLEAR_WEAKREFS(loop, loop->weakreflist);
    loop_clear(loop);
    loop_free_ev(loop);
    tp->tp_free(loop);
    Py_DECREF(tp);
}

/* The Loop's methods come from several files (timers, I/O, ...): join their
 * tables once per process. */
static PyMethodDef *loop_all_methods;
static pthread_once_t loop_methods_once = PTHREAD_ONCE_INIT;

static void loop_join_methods(void)
{
    PyMethodDef *const tables[] = {tl_loop_core_methods, tl_timer_loop_methods,
                                   tl_io_loop_methods, tl_signal_loop_methods,
                                   tl_socket_loop_methods, tl_server_loop_methods,
                                   tl_sock_loop_methods, tl_sendfile_loop_methods,
                                   tl_pipe_loop_methods, tl_dns_loop_methods,
                                   tl_connect_loop_methods, tl_tls_loop_methods,
                                   tl_dgram_loop_methods, NULL};
    loop_all_methods = tl_join_methods(tables);
}

static PyType_Slot loop_slots[] = {
    {Py_tp_new, loop_new},
    {Py_tp_init, loop_init},
    {Py_tp_setattro, loop_setattro},
    {Py_tp_dealloc, loop_dealloc},
    {Py_tp_finalize, loop_finalize},
    {Py_tp_traverse, loop_traverse},
    {Py_tp_clear, loop_clear},
    {Py_tp_repr, loop_repr},
    {Py_tp_getset, loop_getset},
    {Py_tp_members, loop_members},
    {Py_tp_methods, NULL},  /* filled in by tl_loop_spec_ready() */
    {Py_tp_doc, "The C core of tonio_loop.Loop: an asyncio event loop over libev."},
    {0, NULL},
};

static PyType_Spec loop_spec = {
    .name = "tonio_loop._core.Loop",
    .basicsize = sizeof(tl_loop),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_BASETYPE,
    .slots = loop_slots,
};

static void loop_spec_fill(void)
{
    loop_join_methods();
    for (PyType_Slot *s = loop_slots; s->slot; s++)
        if (s->slot == Py_tp_methods)
            s->pfunc = loop_all_methods;
}

PyType_Spec *tl_loop_spec_ready(void)
{
    pthread_once(&loop_methods_once, loop_spec_fill);
    if (loop_all_methods == NULL) {
        PyErr_NoMemory();
        return NULL;
    }
    return &loop_spec;
}

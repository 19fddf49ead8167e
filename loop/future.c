/* future.c - tonio_loop.Future (see tl_future.h).
 *
 * Semantics, error messages and reprs follow the Future that asyncio really
 * uses: the C one in the _asyncio module of the running Python (its
 * behaviour checked on 3.11, 3.12 and 3.13). The repr is asyncio's own
 * Python code (base_futures._future_repr), fed by the same private
 * attributes (_state, _result, _callbacks, ...).
 */
#include "tl_future.h"
#include "tl_handle.h"
#include "tl_loop.h"

/* the task layer, registered when the module is made (tl_future.h) */
static const tl_task_hooks *task_hooks;

void tl_future_set_task_hooks(const tl_task_hooks *hooks)
{
    task_hooks = hooks;
}

#define NOT_INITIALIZED "Future object is not initialized."

static int ensure_alive(tl_future *fut)
{
    if (TL_UNLIKELY(fut->loop == NULL)) {
        PyErr_SetString(PyExc_RuntimeError, NOT_INITIALIZED);
        return -1;
    }
    return 0;
}

static tl_state *future_state(tl_future *fut)
{
    if (fut->st == NULL)
        fut->st = tl_state_of_type(Py_TYPE(fut));
    return fut->st;
}

void tl_kwarg_error(const char *fname, PyObject *key)
{
#if PY_VERSION_HEX >= 0x030D0000
    PyErr_Format(PyExc_TypeError, "%s() got an unexpected keyword argument '%S'",
                 fname, key);
#else
    PyErr_Format(PyExc_TypeError, "'%S' is an invalid keyword argument for %s()",
                 key, fname);
#endif
}

/* ---- which loops schedule from C --------------------------------------- */

/* An instance whose call_soon was patched (frameworks and tests do) */
static int call_soon_patched(tl_state *st, tl_loop *loop)
{
    if (loop->dict == NULL)
        return 0;
    PyObject *v = PyDict_GetItemWithError(loop->dict, st->str_call_soon);
    if (v == NULL && PyErr_Occurred())
        PyErr_Clear();
    return v != NULL;
}

/* Decided when a future or task is made: a patch applied later is not seen
 * by the futures that exist by then. */
tl_loop *tl_loop_if_fast(tl_state *st, PyObject *loop)
{
    PyTypeObject *tp = Py_TYPE(loop);
    if ((PyObject *)tp == st->fast_loop_type)
        return call_soon_patched(st, (tl_loop *)loop) ? NULL : (tl_loop *)loop;
    if (!PyObject_TypeCheck(loop, st->loop_type))
        return NULL;
    /* A subclass that overrides call_soon gets every scheduling through it,
     * as asyncio's Future would do. */
    PyObject *mine = PyObject_GetAttr((PyObject *)st->loop_type, st->str_call_soon);
    PyObject *theirs = mine ? PyObject_GetAttr((PyObject *)tp, st->str_call_soon) : NULL;
    int same = theirs != NULL && mine == theirs;
    Py_XDECREF(mine);
    Py_XDECREF(theirs);
    if (PyErr_Occurred())
        PyErr_Clear();
    if (!same)
        return NULL;
#ifndef Py_GIL_DISABLED
    /* module state is shared by every thread: without the GIL this cache
     * would race, so there each check looks the method up */
    Py_XSETREF(st->fast_loop_type, Py_NewRef((PyObject *)tp));
#endif
    return call_soon_patched(st, (tl_loop *)loop) ? NULL : (tl_loop *)loop;
}

/* ---- done callbacks: Waiters that carry (fn, context) ------------------- */

typedef struct {
    tl_waiter w;
    PyObject *fn;
    PyObject *ctx;
    PyObject *home;             /* threaded loops: the task that added it */
} callback_node;

static int callback_wake(tl_waiter *w, PyObject *source);

static callback_node *callback_new(tl_state *st, tl_future *fut, PyObject *fn, PyObject *ctx)
{
    callback_node *n = NULL;
#if TL_FREELIST_MAX
    if (st->callback_nfree > 0)
        n = st->callback_free[--st->callback_nfree];
#else
    TL_UNUSED(st);
#endif
    if (n == NULL) {
        n = PyMem_Malloc(sizeof(*n));
        if (n == NULL) {
            PyErr_NoMemory();
            return NULL;
        }
    }
    tl_waiter_init(&n->w, TL_WAITER_CALLBACK, callback_wake);
    n->fn = Py_NewRef(fn);
    n->ctx = Py_NewRef(ctx);
    tl_loop *tloop = tl_future_tloop(fut);
    n->home = tloop != NULL && TL_UNLIKELY(tloop->dispatch != NULL) ? task_hooks->running_ref()
                                                                     : NULL;
    return n;
}

static void callback_free(tl_state *st, callback_node *n)
{
    PyObject *fn = n->fn, *ctx = n->ctx, *home = n->home;
#if TL_FREELIST_MAX
    if (st->callback_nfree < TL_FREELIST_MAX)
        st->callback_free[st->callback_nfree++] = n;
    else
#endif
        PyMem_Free(n);
    TL_UNUSED(st);
    /* last: these may run arbitrary code */
    Py_DECREF(fn);
    Py_DECREF(ctx);
    Py_XDECREF(home);
}

static int callback_wake(tl_waiter *w, PyObject *source)
{
    callback_node *n = (callback_node *)w;
    tl_future *fut = (tl_future *)source;
    tl_loop *tloop = tl_future_tloop(fut);
    int rc;
    if (n->home != NULL) {
        /* scheduled for the task that added it, not the one completing it */
        tl_handle *h = tl_loop_check_closed(tloop) < 0
                           ? NULL : tl_handle_new(tloop, n->fn, &source, 1, n->ctx);
        if (h != NULL) {
            Py_XSETREF(h->home, Py_NewRef(n->home));
            rc = tl_loop_push_ready_threadsafe(tloop, tl_handle_ready_fn, (PyObject *)h);
        } else {
            rc = -1;
        }
    } else {
        rc = tl_call_soon(fut->st, fut->loop, tloop, n->fn, &source, 1, n->ctx);
    }
    callback_free(fut->st, n);
    return rc;
}

/* A waiter taken off the list without being woken (reset, clear). */
static void waiter_dispose(tl_state *st, tl_waiter *w, PyObject *source)
{
    switch (w->kind) {
    case TL_WAITER_CALLBACK:
        callback_free(st, (callback_node *)w);
        break;
    case TL_WAITER_TASK:
        Py_DECREF(task_hooks->waiter_task(w));
        break;
    default:
        /* a waiting thread must not sleep forever: let it go */
        if (w->wake(w, source) < 0)
            PyErr_WriteUnraisable(source);
        break;
    }
}

static void dispose_chain(tl_state *st, tl_waiter *w, PyObject *source)
{
    while (w != NULL) {
        tl_waiter *next = w->next;
        w->prev = w->next = NULL;
        waiter_dispose(st, w, source);
        w = next;
    }
}

/* Tags waiters in arrival order (remove_done_callback matches on them).
 * Like asyncio's Future, the Python API is not meant for concurrent use;
 * without the GIL the tag still must not repeat. */
static inline uint32_t future_next_seq(tl_future *fut)
{
#ifdef Py_GIL_DISABLED
    return atomic_fetch_add_explicit(&fut->cb_seq, 1, memory_order_relaxed) + 1;
#else
    return ++fut->cb_seq;
#endif
}

static int future_add_callback(tl_future *fut, PyObject *fn, PyObject *ctx)
{
    tl_state *st = fut->st;
    if (tl_event_is_set(&fut->ev)) {
        PyObject *src = (PyObject *)fut;
        return tl_call_soon(st, fut->loop, tl_future_tloop(fut), fn, &src, 1,
                            ctx == Py_None ? NULL : ctx);
    }
    PyObject *own_ctx = NULL;
    if (ctx == NULL || ctx == Py_None) {
        own_ctx = PyContext_CopyCurrent();
        if (own_ctx == NULL)
            return -1;
        ctx = own_ctx;
    }
    callback_node *n = callback_new(st, fut, fn, ctx);
    Py_XDECREF(own_ctx);
    if (n == NULL)
        return -1;
    n->w.seq = future_next_seq(fut);
    if (tl_event_add(&fut->ev, &n->w) == 1)
        return callback_wake(&n->w, (PyObject *)fut);
    return 0;
}

int tl_future_add_task_waiter(tl_future *fut, tl_waiter *w)
{
    w->seq = future_next_seq(fut);
    return tl_event_add(&fut->ev, w);
}

/* What is queued, in order: pairs (seq, object) with new references; the
 * object is the callback, or the Task for a task waiter. Taken under the
 * lock without calling Python; the caller works on the copy. */
typedef struct {
    uint32_t seq;
    uint8_t kind;
    PyObject *obj;
    PyObject *ctx;
} snapshot_item;

static snapshot_item *future_snapshot(tl_future *fut, Py_ssize_t *count)
{
    snapshot_item *items = NULL;
    Py_ssize_t cap = 0;
    for (;;) {
        Py_ssize_t n = 0;
        tl_spin_lock(&fut->ev.lock);
        for (tl_waiter *w = fut->ev.head; w != NULL; w = w->next)
            if (w->kind == TL_WAITER_CALLBACK || w->kind == TL_WAITER_TASK)
                n++;
        if (n <= cap) {
            n = 0;
            for (tl_waiter *w = fut->ev.head; w != NULL; w = w->next) {
                snapshot_item *it = &items[n];
                it->seq = w->seq;
                it->kind = w->kind;
                if (w->kind == TL_WAITER_CALLBACK) {
                    it->obj = Py_NewRef(((callback_node *)w)->fn);
                    it->ctx = Py_NewRef(((callback_node *)w)->ctx);
                } else if (w->kind == TL_WAITER_TASK) {
                    it->obj = Py_NewRef(task_hooks->waiter_task(w));
                    it->ctx = Py_XNewRef(task_hooks->waiter_context(w));
                } else {
                    continue;
                }
                n++;
            }
            tl_spin_unlock(&fut->ev.lock);
            *count = n;
            if (items == NULL) {
                /* nothing queued: a non-NULL empty result */
                items = PyMem_Malloc(sizeof(*items));
                if (items == NULL)
                    PyErr_NoMemory();
            }
            return items;
        }
        tl_spin_unlock(&fut->ev.lock);
        PyMem_Free(items);
        cap = n + 4;
        items = PyMem_Malloc((size_t)cap * sizeof(*items));
        if (items == NULL) {
            PyErr_NoMemory();
            return NULL;
        }
    }
}

static void snapshot_free(snapshot_item *items, Py_ssize_t n)
{
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_DECREF(items[i].obj);
        Py_XDECREF(items[i].ctx);
    }
    PyMem_Free(items);
}

/* The callable asyncio would show for a queued waiter. */
static PyObject *snapshot_callable(snapshot_item *it)
{
    if (it->kind == TL_WAITER_TASK)
        return task_hooks->wakeup_method(it->obj);
    return Py_NewRef(it->obj);
}

/* ---- the state changes ------------------------------------------------- */

static int invalid_state(tl_future *fut)
{
    PyErr_SetString(fut->st->invalid_state_error, "invalid state");
    return -1;
}

int tl_future_set_result(tl_future *fut, PyObject *result)
{
    if (!tl_event_claim(&fut->ev))
        return invalid_state(fut);
    Py_XSETREF(fut->result, Py_NewRef(result));
    atomic_store_explicit(&fut->state, TL_FUT_FINISHED, memory_order_release);
    return tl_event_fire(&fut->ev, (PyObject *)fut);
}

int tl_future_set_exception(tl_future *fut, PyObject *exc)
{
    if (tl_event_is_claimed(&fut->ev))
        return invalid_state(fut);
    PyObject *val;
    if (PyExceptionClass_Check(exc)) {
        val = PyObject_CallNoArgs(exc);
        if (val == NULL)
            return -1;
        if (tl_event_is_claimed(&fut->ev)) {
            Py_DECREF(val);
            return invalid_state(fut);
        }
    } else {
        val = Py_NewRef(exc);
    }
    if (!PyExceptionInstance_Check(val)) {
        Py_DECREF(val);
        PyErr_SetString(PyExc_TypeError, "invalid exception object");
        return -1;
    }
#if PY_VERSION_HEX >= 0x030D0000
    if (PyErr_GivenExceptionMatches(val, PyExc_StopIteration)) {
        PyObject *err = PyObject_CallFunction(
            PyExc_RuntimeError, "s",
            "StopIteration interacts badly with generators and cannot be "
            "raised into a Future");
        if (err == NULL) {
            Py_DECREF(val);
            return -1;
        }
        PyException_SetCause(err, Py_NewRef(val));
        PyException_SetContext(err, Py_NewRef(val));
        Py_SETREF(val, err);
    }
#else
    if (Py_IS_TYPE(val, (PyTypeObject *)PyExc_StopIteration)) {
        Py_DECREF(val);
        PyErr_SetString(PyExc_TypeError,
                        "StopIteration interacts badly with generators and "
                        "cannot be raised into a Future");
        return -1;
    }
#endif
    if (!tl_event_claim(&fut->ev)) {
        Py_DECREF(val);
        return invalid_state(fut);
    }
    Py_XSETREF(fut->exception_tb, PyException_GetTraceback(val));
    Py_XSETREF(fut->exception, val);
    atomic_store_explicit(&fut->log_tb, 1, memory_order_relaxed);
    atomic_store_explicit(&fut->state, TL_FUT_FINISHED, memory_order_release);
    return tl_event_fire(&fut->ev, (PyObject *)fut);
}

int tl_future_cancel(tl_future *fut, PyObject *msg)
{
    atomic_store_explicit(&fut->log_tb, 0, memory_order_relaxed);
    if (msg == Py_None)
        msg = NULL;
    tl_future_extra *x = msg != NULL ? tl_future_extra_get(fut) : tl_future_extra_peek(fut);
    if (msg != NULL && x == NULL)
        return -1;
    if (!tl_event_claim(&fut->ev))
        return 0;
    if (x != NULL)
        Py_XSETREF(x->cancel_msg, Py_XNewRef(msg));
    atomic_store_explicit(&fut->state, TL_FUT_CANCELLED, memory_order_release);
    return tl_event_fire(&fut->ev, (PyObject *)fut) < 0 ? -1 : 1;
}

PyObject *tl_future_make_cancelled_error(tl_future *fut)
{
    tl_state *st = future_state(fut);
    if (st == NULL)
        return NULL;
    tl_future_extra *x = tl_future_extra_peek(fut);
    if (x != NULL && x->cancelled_exc != NULL) {
        /* the CancelledError the coroutine raised, once */
        PyObject *exc = x->cancelled_exc;
        x->cancelled_exc = NULL;
        return exc;
    }
    return tl_cancelled_error_new(st, x != NULL ? x->cancel_msg : NULL);
}

PyObject *tl_cancelled_error_new(tl_state *st, PyObject *msg)
{
    if (msg == NULL)
        return PyObject_CallNoArgs(st->cancelled_error);
    return PyObject_CallOneArg(st->cancelled_error, msg);
}

int tl_future_outcome(tl_future *fut, PyObject **result)
{
    int state = tl_future_state(fut);
    if (state == TL_FUT_CANCELLED) {
        *result = tl_future_make_cancelled_error(fut);
        return *result ? 1 : -1;
    }
    if (state != TL_FUT_FINISHED) {
        PyErr_SetString(future_state(fut)->invalid_state_error, "Result is not set.");
        return -1;
    }
    atomic_store_explicit(&fut->log_tb, 0, memory_order_relaxed);
    if (fut->exception != NULL) {
        if (PyException_SetTraceback(fut->exception,
                                     fut->exception_tb ? fut->exception_tb : Py_None) < 0)
            return -1;
        *result = Py_NewRef(fut->exception);
        return 1;
    }
    *result = Py_NewRef(fut->result ? fut->result : Py_None);
    return 0;
}

/* ---- creation ----------------------------------------------------------- */

static int loop_get_debug(tl_state *st, PyObject *loop, tl_loop *tloop)
{
    if (tloop != NULL)
        return tloop->debug;
    PyObject *r = PyObject_CallMethodNoArgs(loop, st->str_get_debug);
    if (r == NULL)
        return -1;
    int on = PyObject_IsTrue(r);
    Py_DECREF(r);
    return on;
}

static PyObject *extract_stack(tl_state *st)
{
    PyFrameObject *frame = PyEval_GetFrame();
    if (frame == NULL)
        return PyObject_CallNoArgs(st->extract_stack);
    return PyObject_CallOneArg(st->extract_stack, (PyObject *)frame);
}

/* Debug mode: where the future was made (_source_traceback). */
static int future_remember_source(tl_future *fut)
{
    tl_future_extra *x = tl_future_extra_get(fut);
    if (x == NULL)
        return -1;
    Py_XSETREF(x->source_tb, extract_stack(fut->st));
    return x->source_tb != NULL ? 0 : -1;
}

tl_future_extra *tl_future_extra_get(tl_future *fut)
{
    tl_future_extra *x = tl_future_extra_peek(fut);
    if (TL_LIKELY(x != NULL))
        return x;
    x = PyMem_Calloc(1, sizeof(*x));
    if (x == NULL) {
        PyErr_NoMemory();
        return NULL;
    }
    tl_future_extra *found = NULL;
    if (!atomic_compare_exchange_strong_explicit(&fut->extra, &found, x, memory_order_acq_rel,
                                                 memory_order_acquire)) {
        PyMem_Free(x);      /* another thread made it first */
        return found;
    }
    return x;
}

/* Detached first, released after: the releases may run any code. */
static void future_extra_clear(tl_future *fut)
{
    tl_future_extra *x = atomic_exchange_explicit(&fut->extra, NULL, memory_order_acq_rel);
    if (x == NULL)
        return;
    tl_future_extra copy = *x;
    PyMem_Free(x);
    Py_XDECREF(copy.cancel_msg);
    Py_XDECREF(copy.cancelled_exc);
    Py_XDECREF(copy.source_tb);
    Py_XDECREF(copy.step_exc);
}

/* The outcome's fields (result, or exception and its traceback). */
static void future_outcome_clear(tl_future *fut)
{
    Py_CLEAR(fut->result);      /* or exception_tb: the same slot */
    Py_CLEAR(fut->exception);
}

/* Drop everything __init__ set (it may run again on the same object). */
static void future_reset(tl_future *fut)
{
    tl_waiter *chain = tl_event_reset(&fut->ev);
    dispose_chain(fut->st, chain, (PyObject *)fut);
    fut->fast = 0;
    Py_CLEAR(fut->loop);
    future_outcome_clear(fut);
    future_extra_clear(fut);
    atomic_store_explicit(&fut->state, TL_FUT_PENDING, memory_order_release);
    atomic_store_explicit(&fut->log_tb, 0, memory_order_relaxed);
    tl_future_set_blocking(fut, 0);
}

int tl_future_init(tl_future *fut, PyObject *loop)
{
    tl_state *st = future_state(fut);
    if (st == NULL)
        return -1;
    if (fut->loop != NULL)
        future_reset(fut);
    if (loop == NULL || loop == Py_None) {
        loop = PyObject_CallNoArgs(st->get_event_loop);
        if (loop == NULL)
            return -1;
    } else {
        Py_INCREF(loop);
    }
    fut->loop = loop;
    fut->fast = tl_loop_if_fast(st, loop) != NULL;
    int debug = loop_get_debug(st, loop, tl_future_tloop(fut));
    if (debug < 0)
        return -1;
    return debug ? future_remember_source(fut) : 0;
}

PyObject *tl_future_new(tl_loop *loop)
{
    tl_state *st = loop->st;
    PyTypeObject *tp = st->future_type;
    tl_future *fut = (tl_future *)tp->tp_alloc(tp, 0);
    if (fut == NULL)
        return NULL;
    tl_event_init(&fut->ev);
    fut->st = st;
    fut->loop = Py_NewRef((PyObject *)loop);
    fut->fast = tl_loop_if_fast(st, (PyObject *)loop) != NULL;
    if (TL_UNLIKELY(loop->debug) && future_remember_source(fut) < 0) {
        Py_DECREF(fut);
        return NULL;
    }
    return (PyObject *)fut;
}

static PyObject *future_tp_new(PyTypeObject *tp, PyObject *args, PyObject *kwds)
{
    TL_UNUSED(args);
    TL_UNUSED(kwds);
    tl_state *st = tl_state_of_type(tp);
    if (st == NULL)
        return NULL;
    tl_future *fut = (tl_future *)tp->tp_alloc(tp, 0);
    if (fut == NULL)
        return NULL;
    tl_event_init(&fut->ev);
    fut->st = st;
    return (PyObject *)fut;
}

int tl_future_refuse_reinit(tl_future *fut)
{
#if PY_VERSION_HEX >= 0x030F0000
    /* asyncio 3.15 refuses a second __init__; before, it started afresh */
    if (fut->loop != NULL) {
        PyErr_Format(PyExc_RuntimeError, "%T object is already initialized", (PyObject *)fut);
        return -1;
    }
#else
    TL_UNUSED(fut);
#endif
    return 0;
}

static int future_tp_init(tl_future *fut, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"loop", NULL};
    PyObject *loop = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|$O:Future", kwlist, &loop) ||
        tl_future_refuse_reinit(fut) < 0)
        return -1;
    return tl_future_init(fut, loop);
}

/* ---- Python methods ---------------------------------------------------- */

static PyObject *future_result(tl_future *fut, PyObject *Py_UNUSED(ignored))
{
    if (fut->loop == NULL) {
        PyErr_SetString(future_state(fut)->invalid_state_error, NOT_INITIALIZED);
        return NULL;
    }
    PyObject *r;
    int kind = tl_future_outcome(fut, &r);
    if (kind < 0)
        return NULL;
    if (kind == 1) {
        PyErr_SetObject((PyObject *)Py_TYPE(r), r);
        Py_DECREF(r);
        return NULL;
    }
    return r;
}

static PyObject *future_exception(tl_future *fut, PyObject *Py_UNUSED(ignored))
{
    tl_state *st = future_state(fut);
    if (fut->loop == NULL) {
        PyErr_SetString(st->invalid_state_error, NOT_INITIALIZED);
        return NULL;
    }
    int state = tl_future_state(fut);
    if (state == TL_FUT_CANCELLED) {
        PyObject *exc = tl_future_make_cancelled_error(fut);
        if (exc != NULL) {
            PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
            Py_DECREF(exc);
        }
        return NULL;
    }
    if (state != TL_FUT_FINISHED) {
        PyErr_SetString(st->invalid_state_error, "Exception is not set.");
        return NULL;
    }
    atomic_store_explicit(&fut->log_tb, 0, memory_order_relaxed);
    return Py_NewRef(fut->exception ? fut->exception : Py_None);
}

static PyObject *future_set_result_py(tl_future *fut, PyObject *result)
{
    if (ensure_alive(fut) < 0 || tl_future_set_result(fut, result) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *future_set_exception_py(tl_future *fut, PyObject *exc)
{
    if (ensure_alive(fut) < 0 || tl_future_set_exception(fut, exc) < 0)
        return NULL;
    Py_RETURN_NONE;
}

int tl_parse_cancel_args(PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames,
                         PyObject **msg)
{
    *msg = Py_None;
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    if (nargs + nkw > 1) {
        PyErr_Format(PyExc_TypeError, "cancel() takes at most 1 argument (%zd given)",
                     nargs + nkw);
        return -1;
    }
    if (nkw == 1) {
        PyObject *key = PyTuple_GET_ITEM(kwnames, 0);
        if (!PyUnicode_Check(key) || PyUnicode_CompareWithASCIIString(key, "msg") != 0) {
            tl_kwarg_error("cancel", key);
            return -1;
        }
    }
    if (nargs + nkw == 1)
        *msg = args[0];
    return 0;
}

static PyObject *future_cancel_py(tl_future *fut, PyObject *const *args,
                                  Py_ssize_t nargs, PyObject *kwnames)
{
    PyObject *msg;
    if (tl_parse_cancel_args(args, nargs, kwnames, &msg) < 0 || ensure_alive(fut) < 0)
        return NULL;
    int r = tl_future_cancel(fut, msg);
    if (r < 0)
        return NULL;
    return PyBool_FromLong(r);
}

static PyObject *future_cancelled(tl_future *fut, PyObject *Py_UNUSED(ignored))
{
    return PyBool_FromLong(fut->loop != NULL && tl_future_state(fut) == TL_FUT_CANCELLED);
}

static PyObject *future_done(tl_future *fut, PyObject *Py_UNUSED(ignored))
{
    return PyBool_FromLong(fut->loop != NULL && tl_future_state(fut) != TL_FUT_PENDING);
}

static PyObject *future_get_loop(tl_future *fut, PyObject *Py_UNUSED(ignored))
{
    if (ensure_alive(fut) < 0)
        return NULL;
    return Py_NewRef(fut->loop);
}

static PyObject *future_add_done_callback_py(tl_future *fut, PyObject *const *args,
                                             Py_ssize_t nargs, PyObject *kwnames)
{
    PyObject *ctx = NULL;
    if (nargs != 1) {
        PyErr_Format(PyExc_TypeError,
                     "add_done_callback() takes exactly 1 positional argument (%zd given)",
                     nargs);
        return NULL;
    }
    if (kwnames != NULL) {
        for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(kwnames); i++) {
            PyObject *key = PyTuple_GET_ITEM(kwnames, i);
            if (!PyUnicode_Check(key) ||
                PyUnicode_CompareWithASCIIString(key, "context") != 0) {
                tl_kwarg_error("add_done_callback", key);
                return NULL;
            }
            ctx = args[nargs + i];
        }
    }
    if (fut->loop == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "uninitialized Future object");
        return NULL;
    }
    if (future_add_callback(fut, args[0], ctx) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *future_remove_done_callback(tl_future *fut, PyObject *fn)
{
    if (ensure_alive(fut) < 0)
        return NULL;
    Py_ssize_t n;
    snapshot_item *items = future_snapshot(fut, &n);
    if (items == NULL)
        return NULL;
    /* Compare outside the lock (== may run Python, even touch this very
     * future); then drop the matching waiters that are still queued. */
    Py_ssize_t matched = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *cb = snapshot_callable(&items[i]);
        int eq = cb ? PyObject_RichCompareBool(cb, fn, Py_EQ) : -1;
        Py_XDECREF(cb);
        if (eq < 0) {
            snapshot_free(items, n);
            return NULL;
        }
        if (eq)
            items[matched++].seq = items[i].seq;
    }
    tl_waiter *removed = NULL;
    Py_ssize_t count = 0;
    if (matched) {
        Py_ssize_t k = 0;
        tl_spin_lock(&fut->ev.lock);
        tl_waiter *w = fut->ev.head;
        while (w != NULL && k < matched) {
            tl_waiter *next = w->next;
            /* queue order is seq order: walk both in step */
            while (k < matched && items[k].seq < w->seq)
                k++;
            if (k < matched && items[k].seq == w->seq &&
                (w->kind == TL_WAITER_CALLBACK || w->kind == TL_WAITER_TASK)) {
                if (w->prev != NULL)
                    w->prev->next = w->next;
                else
                    fut->ev.head = w->next;
                if (w->next != NULL)
                    w->next->prev = w->prev;
                else
                    fut->ev.tail = w->prev;
                w->linked = 0;
                w->prev = NULL;
                w->next = removed;
                removed = w;
                count++;
                k++;
            }
            w = next;
        }
        tl_spin_unlock(&fut->ev.lock);
    }
    snapshot_free(items, n);
    dispose_chain(fut->st, removed, (PyObject *)fut);
    return PyLong_FromSsize_t(count);
}

static PyObject *future_make_cancelled_error_py(tl_future *fut, PyObject *Py_UNUSED(ignored))
{
    return tl_future_make_cancelled_error(fut);
}

/* ---- await / iter: the FutureIter ------------------------------------- */

typedef struct {
    PyObject_HEAD
    tl_future *future;
} future_iter;

static PyObject *future_iter_new(tl_future *fut)
{
    tl_state *st = future_state(fut);
    if (st == NULL)
        return NULL;
    future_iter *it = NULL;
#if TL_FREELIST_MAX
    if (st->future_iter_nfree > 0) {
        it = (future_iter *)st->future_iter_free[--st->future_iter_nfree];
        PyObject_Init((PyObject *)it, st->future_iter_type);
    }
#endif
    if (it == NULL) {
        it = PyObject_GC_New(future_iter, st->future_iter_type);
        if (it == NULL)
            return NULL;
    }
    it->future = (tl_future *)Py_NewRef((PyObject *)fut);
    PyObject_GC_Track(it);
    return (PyObject *)it;
}

PyObject *tl_future_await(tl_future *fut)
{
    if (ensure_alive(fut) < 0)
        return NULL;
    return future_iter_new(fut);
}

static PySendResult future_iter_am_send(future_iter *it, PyObject *arg, PyObject **result)
{
    TL_UNUSED(arg);     /* asyncio: the value sent in does not matter */
    tl_future *fut = it->future;
    *result = NULL;
    if (fut == NULL) {
        /* exhausted, like a finished generator */
        *result = Py_NewRef(Py_None);
        return PYGEN_RETURN;
    }
    if (tl_future_state(fut) == TL_FUT_PENDING) {
        if (!tl_future_blocking(fut)) {
            tl_future_set_blocking(fut, 1);
            *result = Py_NewRef((PyObject *)fut);
            return PYGEN_NEXT;
        }
        PyErr_SetString(PyExc_RuntimeError, "await wasn't used with future");
        return PYGEN_ERROR;
    }
    it->future = NULL;
    PyObject *r = future_result(fut, NULL);
    Py_DECREF(fut);
    if (r == NULL)
        return PYGEN_ERROR;
    *result = r;
    return PYGEN_RETURN;
}

static PyObject *future_iter_next(future_iter *it)
{
    PyObject *result;
    if (it->future == NULL)
        return NULL;    /* exhausted: plain end of iteration */
    switch (future_iter_am_send(it, Py_None, &result)) {
    case PYGEN_NEXT:
        return result;
    case PYGEN_RETURN: {
        /* StopIteration(result), even when result is a tuple */
        PyObject *stop = PyObject_CallOneArg(PyExc_StopIteration, result);
        Py_DECREF(result);
        if (stop != NULL) {
            PyErr_SetObject(PyExc_StopIteration, stop);
            Py_DECREF(stop);
        }
        return NULL;
    }
    default:
        return NULL;
    }
}

static PyObject *future_iter_send(future_iter *it, PyObject *unused)
{
    TL_UNUSED(unused);
    PyObject *r = future_iter_next(it);
    if (r == NULL && !PyErr_Occurred())
        PyErr_SetNone(PyExc_StopIteration);
    return r;
}

static PyObject *future_iter_throw(future_iter *it, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs < 1 || nargs > 3) {
        if (nargs < 1)
            PyErr_Format(PyExc_TypeError, "throw expected at least 1 argument, got %zd", nargs);
        else
            PyErr_Format(PyExc_TypeError, "throw expected at most 3 arguments, got %zd", nargs);
        return NULL;
    }
#if PY_VERSION_HEX >= 0x030C0000
    if (nargs > 1 &&
        PyErr_WarnEx(PyExc_DeprecationWarning,
                     "the (type, exc, tb) signature of throw() is deprecated, "
                     "use the single-arg signature instead.", 1) < 0)
        return NULL;
#endif
    PyObject *type = args[0];
    PyObject *val = nargs >= 2 ? args[1] : NULL;
    PyObject *tb = nargs == 3 ? args[2] : NULL;
    if (val == Py_None)
        val = NULL;
    if (tb == Py_None) {
        tb = NULL;
    } else if (tb != NULL && !PyTraceBack_Check(tb)) {
        PyErr_SetString(PyExc_TypeError, "throw() third argument must be a traceback");
        return NULL;
    }
    PyObject *exc;
    if (PyExceptionClass_Check(type)) {
        if (val != NULL && PyObject_TypeCheck(val, (PyTypeObject *)type)) {
            exc = Py_NewRef(val);
        } else if (val == NULL) {
            exc = PyObject_CallNoArgs(type);
        } else if (PyTuple_Check(val)) {
            exc = PyObject_Call(type, val, NULL);
        } else {
            exc = PyObject_CallOneArg(type, val);
        }
        if (exc == NULL)
            return NULL;
        if (!PyExceptionInstance_Check(exc)) {
            PyErr_Format(PyExc_TypeError,
                         "calling %R should have returned an instance of "
                         "BaseException, not %s", type, Py_TYPE(exc)->tp_name);
            Py_DECREF(exc);
            return NULL;
        }
    } else if (PyExceptionInstance_Check(type)) {
        if (val != NULL) {
            PyErr_SetString(PyExc_TypeError,
                            "instance exception may not have a separate value");
            return NULL;
        }
        exc = Py_NewRef(type);
    } else {
        PyErr_SetString(PyExc_TypeError,
                        "exceptions must be classes deriving BaseException or "
                        "instances of such a class");
        return NULL;
    }
    if (tb != NULL && PyException_SetTraceback(exc, tb) < 0) {
        Py_DECREF(exc);
        return NULL;
    }
    Py_CLEAR(it->future);
    PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
    Py_DECREF(exc);
    return NULL;
}

static PyObject *future_iter_close(future_iter *it, PyObject *Py_UNUSED(ignored))
{
    Py_CLEAR(it->future);
    Py_RETURN_NONE;
}

static int future_iter_traverse(future_iter *it, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(it));
    Py_VISIT(it->future);
    return 0;
}

static int future_iter_clear(future_iter *it)
{
    Py_CLEAR(it->future);
    return 0;
}

static void future_iter_dealloc(future_iter *it)
{
    PyTypeObject *tp = Py_TYPE(it);
    PyObject_GC_UnTrack(it);
    Py_CLEAR(it->future);
#if TL_FREELIST_MAX
    tl_state *st = PyType_GetModuleState(tp);
    if (st != NULL && st->future_iter_nfree < TL_FREELIST_MAX) {
        st->future_iter_free[st->future_iter_nfree++] = (PyObject *)it;
        Py_DECREF(tp);
        return;
    }
#endif
    PyObject_GC_Del(it);
    Py_DECREF(tp);
}

static PyMethodDef future_iter_methods[] = {
    {"send", (PyCFunction)future_iter_send, METH_O, NULL},
    {"throw", (PyCFunction)(void (*)(void))future_iter_throw, METH_FASTCALL, NULL},
    {"close", (PyCFunction)future_iter_close, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot future_iter_slots[] = {
    {Py_tp_dealloc, future_iter_dealloc},
    {Py_tp_traverse, future_iter_traverse},
    {Py_tp_clear, future_iter_clear},
    {Py_tp_iter, PyObject_SelfIter},
    {Py_tp_iternext, future_iter_next},
    {Py_am_send, future_iter_am_send},
    {Py_tp_methods, future_iter_methods},
    {0, NULL},
};

PyType_Spec tl_future_iter_spec = {
    .name = "tonio_loop._core.FutureIter",
    .basicsize = sizeof(future_iter),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_IMMUTABLETYPE |
             Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = future_iter_slots,
};

/* ---- attributes -------------------------------------------------------- */

static PyObject *get_blocking(tl_future *fut, void *c)
{
    TL_UNUSED(c);
    return PyBool_FromLong(tl_future_blocking(fut));
}

int tl_attr_truth(PyObject *v)
{
    if (v == NULL) {
        PyErr_SetString(PyExc_AttributeError, "cannot delete attribute");
        return -1;
    }
    return PyObject_IsTrue(v);
}

static int set_blocking(tl_future *fut, PyObject *v, void *c)
{
    TL_UNUSED(c);
    int on = tl_attr_truth(v);
    if (on < 0)
        return -1;
    tl_future_set_blocking(fut, on);
    return 0;
}

static PyObject *get_log_traceback(tl_future *fut, void *c)
{
    TL_UNUSED(c);
    if (ensure_alive(fut) < 0)
        return NULL;
    return PyBool_FromLong(atomic_load_explicit(&fut->log_tb, memory_order_relaxed));
}

static int set_log_traceback(tl_future *fut, PyObject *v, void *c)
{
    TL_UNUSED(c);
    int on = tl_attr_truth(v);
    if (on < 0)
        return -1;
    if (on) {
        PyErr_SetString(PyExc_ValueError, "_log_traceback can only be set to False");
        return -1;
    }
    atomic_store_explicit(&fut->log_tb, 0, memory_order_relaxed);
    return 0;
}

static PyObject *get_loop_attr(tl_future *fut, void *c)
{
    TL_UNUSED(c);
    return Py_NewRef(fut->loop ? fut->loop : Py_None);
}

static PyObject *get_callbacks(tl_future *fut, void *c)
{
    TL_UNUSED(c);
    if (ensure_alive(fut) < 0)
        return NULL;
    Py_ssize_t n;
    snapshot_item *items = future_snapshot(fut, &n);
    if (items == NULL)
        return NULL;
    PyObject *list = NULL;
    if (n == 0) {
        list = Py_NewRef(Py_None);
        goto done;
    }
    list = PyList_New(n);
    if (list == NULL)
        goto done;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *cb = snapshot_callable(&items[i]);
        PyObject *pair = cb ? PyTuple_Pack(2, cb, items[i].ctx ? items[i].ctx : Py_None) : NULL;
        Py_XDECREF(cb);
        if (pair == NULL) {
            Py_CLEAR(list);
            goto done;
        }
        PyList_SET_ITEM(list, i, pair);
    }
done:
    snapshot_free(items, n);
    return list;
}

static PyObject *get_result_attr(tl_future *fut, void *c)
{
    TL_UNUSED(c);
    if (ensure_alive(fut) < 0)
        return NULL;
    PyObject *r = fut->exception == NULL ? fut->result : NULL;
    return Py_NewRef(r ? r : Py_None);
}

static PyObject *get_exception_attr(tl_future *fut, void *c)
{
    TL_UNUSED(c);
    if (ensure_alive(fut) < 0)
        return NULL;
    return Py_NewRef(fut->exception ? fut->exception : Py_None);
}

static PyObject *get_source_traceback(tl_future *fut, void *c)
{
    TL_UNUSED(c);
    PyObject *tb = TL_FUTURE_EXTRA(fut, source_tb);
    return Py_NewRef(tb ? tb : Py_None);
}

static PyObject *get_cancel_message(tl_future *fut, void *c)
{
    TL_UNUSED(c);
    PyObject *msg = TL_FUTURE_EXTRA(fut, cancel_msg);
    return Py_NewRef(msg ? msg : Py_None);
}

static int set_cancel_message(tl_future *fut, PyObject *v, void *c)
{
    TL_UNUSED(c);
    if (v == NULL) {
        PyErr_SetString(PyExc_AttributeError, "cannot delete attribute");
        return -1;
    }
    tl_future_extra *x = v == Py_None ? tl_future_extra_peek(fut) : tl_future_extra_get(fut);
    if (x == NULL)
        return v == Py_None ? 0 : -1;
    Py_XSETREF(x->cancel_msg, v == Py_None ? NULL : Py_NewRef(v));
    return 0;
}

static PyObject *get_state(tl_future *fut, void *c)
{
    TL_UNUSED(c);
    if (ensure_alive(fut) < 0)
        return NULL;
    tl_state *st = fut->st;
    switch (tl_future_state(fut)) {
    case TL_FUT_CANCELLED:
        return Py_NewRef(st->str_CANCELLED);
    case TL_FUT_FINISHED:
        return Py_NewRef(st->str_FINISHED);
    default:
        return Py_NewRef(st->str_PENDING);
    }
}

#if PY_VERSION_HEX >= 0x030E0000
/* 3.14's call graph (asyncio.capture_call_graph): the tasks awaiting this
 * future. asyncio's own record, in its part of the object, holds what its
 * code added (its Tasks awaiting ours, gather(), TaskGroup, and
 * future_add_to_awaited_by() calls); our tasks waiting on this future are
 * Waiters on its Event and are not recorded twice: they are taken from the
 * waiter list when asked, so awaiting costs nothing more. */
static PyObject *get_awaited_by(tl_future *fut, void *c)
{
    TL_UNUSED(c);
    tl_state *st = fut->st;
    PyObject *descr = st->awaited_by_descr;
    PyObject *recorded = Py_TYPE(descr)->tp_descr_get(descr, (PyObject *)fut,
                                                      (PyObject *)Py_TYPE(fut));
    if (recorded == NULL)
        return NULL;
    Py_ssize_t n;
    snapshot_item *items = future_snapshot(fut, &n);
    if (items == NULL) {
        Py_DECREF(recorded);
        return NULL;
    }
    PyObject *all = NULL;
    int tasks = 0;
    for (Py_ssize_t i = 0; i < n; i++)
        tasks += items[i].kind == TL_WAITER_TASK;
    if (tasks == 0) {
        all = Py_NewRef(recorded);
        goto done;
    }
    all = PySet_New(recorded != Py_None ? recorded : NULL);
    for (Py_ssize_t i = 0; all != NULL && i < n; i++)
        if (items[i].kind == TL_WAITER_TASK && PySet_Add(all, items[i].obj) < 0)
            Py_CLEAR(all);
    if (all != NULL)
        Py_SETREF(all, PyFrozenSet_New(all));
done:
    snapshot_free(items, n);
    Py_DECREF(recorded);
    return all;
}
#endif

PyGetSetDef tl_future_getset[] = {
    {"_asyncio_future_blocking", (getter)get_blocking, (setter)set_blocking, NULL, NULL},
    {"_log_traceback", (getter)get_log_traceback, (setter)set_log_traceback, NULL, NULL},
    {"_loop", (getter)get_loop_attr, NULL, NULL, NULL},
    {"_callbacks", (getter)get_callbacks, NULL, NULL, NULL},
    {"_result", (getter)get_result_attr, NULL, NULL, NULL},
    {"_exception", (getter)get_exception_attr, NULL, NULL, NULL},
    {"_source_traceback", (getter)get_source_traceback, NULL, NULL, NULL},
    {"_cancel_message", (getter)get_cancel_message, (setter)set_cancel_message, NULL, NULL},
    {"_state", (getter)get_state, NULL, NULL, NULL},
#if PY_VERSION_HEX >= 0x030E0000
    {"_asyncio_awaited_by", (getter)get_awaited_by, NULL, NULL, NULL},
#endif
    {NULL, NULL, NULL, NULL, NULL},
};

PyMethodDef tl_future_methods[] = {
    {"result", (PyCFunction)future_result, METH_NOARGS,
     "Return the result this future represents.\n\n"
     "If the future has been cancelled, raises CancelledError.  If the\n"
     "future's result isn't yet available, raises InvalidStateError.  If\n"
     "the future is done and has an exception set, this exception is raised."},
    {"exception", (PyCFunction)future_exception, METH_NOARGS,
     "Return the exception that was set on this future.\n\n"
     "The exception (or None if no exception was set) is returned only if\n"
     "the future is done.  If the future has been cancelled, raises\n"
     "CancelledError.  If the future isn't done yet, raises\n"
     "InvalidStateError."},
    {"set_result", (PyCFunction)future_set_result_py, METH_O,
     "Mark the future done and set its result.\n\n"
     "If the future is already done when this method is called, raises\n"
     "InvalidStateError."},
    {"set_exception", (PyCFunction)future_set_exception_py, METH_O,
     "Mark the future done and set an exception.\n\n"
     "If the future is already done when this method is called, raises\n"
     "InvalidStateError."},
    {"add_done_callback", (PyCFunction)(void (*)(void))future_add_done_callback_py,
     METH_FASTCALL | METH_KEYWORDS,
     "add_done_callback($self, fn, /, *, context=None)\n--\n\n"
     "Add a callback to be run when the future becomes done.\n\n"
     "The callback is called with a single argument - the future object. If\n"
     "the future is already done when this is called, the callback is\n"
     "scheduled with call_soon."},
    {"remove_done_callback", (PyCFunction)future_remove_done_callback, METH_O,
     "Remove all instances of a callback from the \"call when done\" list.\n\n"
     "Returns the number of callbacks removed."},
    {"cancel", (PyCFunction)(void (*)(void))future_cancel_py, METH_FASTCALL | METH_KEYWORDS,
     "cancel($self, /, msg=None)\n--\n\n"
     "Cancel the future and schedule callbacks.\n\n"
     "If the future is already done or cancelled, return False.  Otherwise,\n"
     "change the future's state to cancelled, schedule the callbacks and\n"
     "return True."},
    {"cancelled", (PyCFunction)future_cancelled, METH_NOARGS,
     "Return True if the future was cancelled."},
    {"done", (PyCFunction)future_done, METH_NOARGS,
     "Return True if the future is done.\n\n"
     "Done means either that a result / exception are available, or that the\n"
     "future was cancelled."},
    {"get_loop", (PyCFunction)future_get_loop, METH_NOARGS,
     "Return the event loop the Future is bound to."},
    {"_make_cancelled_error", (PyCFunction)future_make_cancelled_error_py, METH_NOARGS,
     "Create the CancelledError to raise if the Future is cancelled.\n\n"
     "This should only be called once when handling a cancellation since\n"
     "it erases the context exception value."},
    {"__class_getitem__", Py_GenericAlias, METH_O | METH_CLASS,
     "See PEP 585"},
    {NULL, NULL, 0, NULL},
};

/* ---- life cycle -------------------------------------------------------- */

void tl_future_finalize(tl_future *fut)
{
    if (!atomic_load_explicit(&fut->log_tb, memory_order_relaxed) || fut->loop == NULL ||
        fut->exception == NULL)
        return;
    atomic_store_explicit(&fut->log_tb, 0, memory_order_relaxed);
    PyObject *exc = PyErr_GetRaisedException();
    PyObject *message = PyUnicode_FromFormat("%s exception was never retrieved",
                                             tl_type_name(Py_TYPE(fut)));
    PyObject *context = message ? PyDict_New() : NULL;
    if (context == NULL ||
        PyDict_SetItemString(context, "message", message) < 0 ||
        PyDict_SetItemString(context, "exception", fut->exception) < 0 ||
        PyDict_SetItemString(context, "future", (PyObject *)fut) < 0 ||
        (TL_FUTURE_EXTRA(fut, source_tb) != NULL &&
         PyDict_SetItemString(context, "source_traceback",
                              TL_FUTURE_EXTRA(fut, source_tb)) < 0)) {
        PyErr_WriteUnraisable((PyObject *)fut);
    } else {
        PyObject *r = PyObject_CallMethodOneArg(fut->loop, fut->st->str_call_exception_handler,
                                                context);
        if (r == NULL)
            PyErr_WriteUnraisable(fut->loop);
        Py_XDECREF(r);
    }
    Py_XDECREF(message);
    Py_XDECREF(context);
    PyErr_SetRaisedException(exc);
}

int tl_future_traverse(tl_future *fut, visitproc visit, void *arg)
{
    Py_VISIT(fut->loop);
    Py_VISIT(fut->result);      /* or exception_tb */
    Py_VISIT(fut->exception);
    tl_future_extra *x = tl_future_extra_peek(fut);
    if (x != NULL) {
        Py_VISIT(x->cancel_msg);
        Py_VISIT(x->cancelled_exc);
        Py_VISIT(x->source_tb);
        Py_VISIT(x->step_exc);
    }
    /* the collector runs with the world stopped: no lock needed */
    for (tl_waiter *w = fut->ev.head; w != NULL; w = w->next) {
        if (w->kind == TL_WAITER_CALLBACK) {
            Py_VISIT(((callback_node *)w)->fn);
            Py_VISIT(((callback_node *)w)->ctx);
            Py_VISIT(((callback_node *)w)->home);
        } else if (w->kind == TL_WAITER_TASK) {
            Py_VISIT(task_hooks->waiter_task(w));
        }
    }
    return 0;
}

int tl_future_clear(tl_future *fut)
{
    tl_waiter *chain = tl_event_reset(&fut->ev);
    if (fut->st != NULL)
        dispose_chain(fut->st, chain, (PyObject *)fut);
    fut->fast = 0;
    Py_CLEAR(fut->loop);
    future_outcome_clear(fut);
    future_extra_clear(fut);
    return 0;
}

/* asyncio's part of our objects (tl_future.h): what asyncio's own code may
 * have stored there, and the instance dict, which lives in it. Found from
 * the object's type (the base of our type, whose dealloc is `ours`), not
 * from the module state, which may be cleared before the last object dies. */
static PyTypeObject *asyncio_part_type(PyObject *self, destructor ours)
{
    PyTypeObject *tp = Py_TYPE(self);
    while (tp->tp_dealloc != ours)
        tp = tp->tp_base;
    return tp->tp_base;
}

int tl_asyncio_part_traverse(PyObject *self, destructor ours, visitproc visit, void *arg)
{
#if PY_VERSION_HEX < 0x030C0000
    /* asyncio's types are static here: their traverse does not visit the
     * type, and ours is a heap type */
    Py_VISIT(Py_TYPE(self));
#endif
    return asyncio_part_type(self, ours)->tp_traverse(self, visit, arg);
}

int tl_asyncio_part_clear(PyObject *self, destructor ours)
{
    return asyncio_part_type(self, ours)->tp_clear(self);
}

void tl_asyncio_part_dealloc(PyObject *self, destructor ours)
{
    /* our finalizer already ran (asyncio's dealloc does not run it again),
     * our fields are cleared: asyncio's dealloc clears its own, the weak
     * references and the dict, and frees the object */
    PyTypeObject *base = asyncio_part_type(self, ours);
#if PY_VERSION_HEX < 0x030C0000
    PyTypeObject *tp = Py_TYPE(self);
    base->tp_dealloc(self);
    Py_DECREF(tp);      /* a static type's dealloc leaves the heap type to us */
#else
    base->tp_dealloc(self);
#endif
}

static void future_dealloc(tl_future *fut);

static int future_traverse(tl_future *fut, visitproc visit, void *arg)
{
    int rc = tl_future_traverse(fut, visit, arg);
    if (rc != 0)
        return rc;
    return tl_asyncio_part_traverse((PyObject *)fut, (destructor)future_dealloc, visit, arg);
}

static int future_clear(tl_future *fut)
{
    tl_future_clear(fut);
    return tl_asyncio_part_clear((PyObject *)fut, (destructor)future_dealloc);
}

static void future_dealloc(tl_future *fut)
{
    if (PyObject_CallFinalizerFromDealloc((PyObject *)fut) < 0)
        return;     /* resurrected */
    PyObject_GC_UnTrack(fut);
    PyObject_ClearWeakRefs((PyObject *)fut);
    tl_future_clear(fut);
    tl_asyncio_part_dealloc((PyObject *)fut, (destructor)future_dealloc);
}

static PyObject *future_repr(tl_future *fut)
{
    tl_state *st = future_state(fut);
    if (st == NULL)
        return NULL;
    return PyObject_CallOneArg(st->future_repr, (PyObject *)fut);
}

static PyType_Slot future_slots[] = {
    {Py_tp_new, future_tp_new},
    {Py_tp_init, future_tp_init},
    {Py_tp_dealloc, future_dealloc},
    {Py_tp_finalize, tl_future_finalize},
    {Py_tp_traverse, future_traverse},
    {Py_tp_clear, future_clear},
    {Py_tp_repr, future_repr},
    {Py_tp_iter, tl_future_await},
    {Py_am_await, tl_future_await},
    {Py_tp_methods, tl_future_methods},
    {Py_tp_getset, tl_future_getset},
    {Py_tp_doc,
     "Future(*, loop=None)\n--\n\n"
     "asyncio's Future, in C on tonio_loop's Event/Waiter core.\n\n"
     "Callbacks added with add_done_callback() are always scheduled with the\n"
     "loop's call_soon() semantics, never run inline."},
    {0, NULL},
};

PyType_Spec tl_future_spec = {
    .name = "tonio_loop._core.Future",
    .basicsize = sizeof(tl_future),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_BASETYPE,
    .slots = future_slots,
};

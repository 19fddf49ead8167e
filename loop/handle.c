/* handle.c - Handle: a callback, its arguments and its contextvars context,
 * as returned by call_soon(). Semantics and reprs follow asyncio.events.Handle.
 */
#include "tl_handle.h"
#include "tl_loop.h"
#include "tl_timer.h"
#include "tl_lock.h"
#include "tl_task.h"

static tl_handle *handle_alloc(tl_state *st)
{
    PyTypeObject *tp = st->handle_type;
    tl_handle *h = NULL;
#if TL_FREELIST_MAX
    if (st->handle_nfree > 0) {
        h = (tl_handle *)st->handle_free[--st->handle_nfree];
        PyObject_Init((PyObject *)h, tp);
    }
#endif
    if (h == NULL) {
        h = PyObject_GC_New(tl_handle, tp);
        if (h == NULL)
            return NULL;
    }
    h->loop = NULL;
    h->callback = NULL;
    h->context = NULL;
    h->argtuple = NULL;
    h->nargs = 0;
    for (int i = 0; i <= TL_HANDLE_INLINE_ARGS; i++)
        h->argv[i] = NULL;
    h->source_traceback = NULL;
    h->repr = NULL;
    h->weakreflist = NULL;
    h->home = NULL;
    h->cancelled = 0;
    h->is_timer = 0;
    return h;
}

static PyObject *handle_extract_stack(tl_loop *loop)
{
    PyFrameObject *frame = PyEval_GetFrame();
    if (frame == NULL)
        return PyObject_CallNoArgs(loop->st->extract_stack);
    return PyObject_CallOneArg(loop->st->extract_stack, (PyObject *)frame);
}

int tl_handle_init(tl_handle *h, tl_loop *loop, PyObject *callback,
                   PyObject *const *args, Py_ssize_t nargs, PyObject *context)
{
    h->loop = (tl_loop *)Py_NewRef((PyObject *)loop);
    h->callback = Py_NewRef(callback);
#if PY_VERSION_HEX >= 0x030E0000
    h->threadsafe = 0;      /* Handle and TimerHandle alike, fresh or reused */
#endif
    h->home = TL_UNLIKELY(loop->dispatch != NULL) ? tl_task_running_ref() : NULL;
    if (context == NULL || context == Py_None) {
        h->context = PyContext_CopyCurrent();
        if (h->context == NULL)
            return -1;
    } else {
        h->context = Py_NewRef(context);
    }
    h->nargs = nargs;
    if (nargs <= TL_HANDLE_INLINE_ARGS) {
        for (Py_ssize_t i = 0; i < nargs; i++)
            h->argv[1 + i] = Py_NewRef(args[i]);
    } else {
        h->argtuple = PyTuple_New(nargs);
        if (h->argtuple == NULL)
            return -1;
        for (Py_ssize_t i = 0; i < nargs; i++)
            PyTuple_SET_ITEM(h->argtuple, i, Py_NewRef(args[i]));
    }
    if (TL_UNLIKELY(loop->debug)) {
        h->source_traceback = handle_extract_stack(loop);
        if (h->source_traceback == NULL)
            return -1;
    }
    return 0;
}

tl_handle *tl_handle_new(tl_loop *loop, PyObject *callback,
                         PyObject *const *args, Py_ssize_t nargs,
                         PyObject *context)
{
    tl_handle *h = handle_alloc(loop->st);
    if (h == NULL)
        return NULL;
    if (tl_handle_init(h, loop, callback, args, nargs, context) < 0) {
        Py_DECREF(h);
        return NULL;
    }
    /* not tracked while queued: see tl_handle_traverse_contents */
#ifdef Py_GIL_DISABLED
    PyObject_GC_Track(h);   /* reference counts are not exact enough there */
#endif
    return h;
}

PyObject *tl_handle_args(tl_handle *h)
{
    if (h->argtuple != NULL)
        return Py_NewRef(h->argtuple);
    PyObject *t = PyTuple_New(h->nargs);
    if (t == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < h->nargs; i++)
        PyTuple_SET_ITEM(t, i, Py_NewRef(h->argv[1 + i]));
    return t;
}

void tl_handle_clear_call(tl_handle *h)
{
    Py_CLEAR(h->callback);
    Py_CLEAR(h->argtuple);
    for (Py_ssize_t i = 1; i <= TL_HANDLE_INLINE_ARGS; i++)
        Py_CLEAR(h->argv[i]);
}

void tl_handle_clear_refs(tl_handle *h)
{
    tl_handle_clear_call(h);
    Py_CLEAR(h->context);
    Py_CLEAR(h->source_traceback);
    Py_CLEAR(h->repr);
    Py_CLEAR(h->loop);
    Py_CLEAR(h->home);
}

int tl_handle_traverse(tl_handle *h, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(h));
    return tl_handle_traverse_contents(h, visit, arg);
}

int tl_handle_traverse_contents(tl_handle *h, visitproc visit, void *arg)
{
    Py_VISIT(h->loop);
    Py_VISIT(h->callback);
    Py_VISIT(h->context);
    Py_VISIT(h->argtuple);
    if (h->argtuple == NULL)
        for (Py_ssize_t i = 1; i <= h->nargs; i++)
            Py_VISIT(h->argv[i]);
    Py_VISIT(h->source_traceback);
    Py_VISIT(h->home);
    return 0;
}

/* ---- running ---------------------------------------------------------- */

static PyObject *format_callback(tl_loop *loop, PyObject *callback, PyObject *args)
{
#if PY_VERSION_HEX >= 0x030D0000
    PyObject *argv[3] = {callback, args, loop->debug ? Py_True : Py_False};
    PyObject *kwnames = Py_BuildValue("(s)", "debug");
    if (kwnames == NULL)
        return NULL;
    PyObject *r = PyObject_Vectorcall(loop->st->format_callback_source, argv, 2, kwnames);
    Py_DECREF(kwnames);
    return r;
#else
    return PyObject_CallFunctionObjArgs(loop->st->format_callback_source,
                                        callback, args, NULL);
#endif
}

int tl_handle_report_error(tl_handle *h, PyObject *callback, PyObject *args)
{
    if (PyErr_ExceptionMatches(PyExc_SystemExit) ||
        PyErr_ExceptionMatches(PyExc_KeyboardInterrupt))
        return -1;
    PyObject *exc = PyErr_GetRaisedException();
    PyObject *extra = NULL, *message = NULL;
    PyObject *source = format_callback(h->loop, callback, args);
    if (source == NULL)
        goto fail;
    message = PyUnicode_FromFormat("Exception in callback %U", source);
    Py_DECREF(source);
    if (message == NULL)
        goto fail;
    extra = PyDict_New();
    if (extra == NULL || PyDict_SetItemString(extra, "handle", (PyObject *)h) < 0)
        goto fail;
    if (h->source_traceback != NULL &&
        PyDict_SetItemString(extra, "source_traceback", h->source_traceback) < 0)
        goto fail;
    PyErr_SetRaisedException(exc);
    int r = tl_loop_report_exception(h->loop, message, extra);
    Py_DECREF(message);
    Py_DECREF(extra);
    return r;
fail:
    /* Formatting the report failed: like asyncio, that error escapes. */
    Py_XDECREF(message);
    Py_XDECREF(extra);
    Py_DECREF(exc);
    return -1;
}

#if PY_VERSION_HEX >= 0x030E0000
void tl_handle_make_threadsafe(tl_handle *h)
{
    h->threadsafe = 1;
    h->run_depth = 0;
    atomic_store_explicit(&h->run_owner, 0, memory_order_relaxed);
    memset(&h->run_lock, 0, sizeof(h->run_lock));
}

static void handle_ts_lock(tl_handle *h)
{
    unsigned long me = PyThread_get_thread_ident();
    if (atomic_load_explicit(&h->run_owner, memory_order_relaxed) != me) {
        tl_mutex_lock(&h->run_lock);   /* waits with the GIL let go */
        atomic_store_explicit(&h->run_owner, me, memory_order_relaxed);
    }
    h->run_depth++;
}

static void handle_ts_unlock(tl_handle *h)
{
    if (--h->run_depth == 0) {
        atomic_store_explicit(&h->run_owner, 0, memory_order_relaxed);
        tl_mutex_unlock(&h->run_lock);
    }
}

#define HANDLE_TS_LOCK(h) int ts_ = (h)->threadsafe; if (TL_UNLIKELY(ts_)) handle_ts_lock(h)
#define HANDLE_TS_UNLOCK(h) if (TL_UNLIKELY(ts_)) handle_ts_unlock(h)
#else
void tl_handle_make_threadsafe(tl_handle *h)
{
    TL_UNUSED(h);
}

#define HANDLE_TS_LOCK(h) (void)0
#define HANDLE_TS_UNLOCK(h) (void)0
#endif

static int handle_run(tl_handle *h);

int tl_handle_run(tl_handle *h)
{
    HANDLE_TS_LOCK(h);
    int rc = handle_run(h);
    HANDLE_TS_UNLOCK(h);
    return rc;
}

static int handle_run(tl_handle *h)
{
    /* The callback may cancel its own handle, which drops these references:
     * hold our own for the duration of the call. cancel() may come from
     * another thread (a worker, a free-threaded caller): take them together
     * with the check, in the handle's critical section. */
    PyObject *stack[1 + TL_HANDLE_INLINE_ARGS];
    PyObject *callback = NULL, *argtuple = NULL, *context = NULL;
    Py_ssize_t nargs = 0;
    Py_BEGIN_CRITICAL_SECTION(h);
    if (!h->cancelled && h->callback != NULL) {
        callback = Py_NewRef(h->callback);
        argtuple = Py_XNewRef(h->argtuple);
        nargs = h->nargs;
        if (argtuple == NULL)
            for (Py_ssize_t i = 1; i <= nargs; i++)
                stack[i] = Py_NewRef(h->argv[i]);
        context = Py_NewRef(h->context);
    }
    Py_END_CRITICAL_SECTION();
    if (callback == NULL)
        return 0;
    PyObject *const *argv;
    if (argtuple != NULL) {
        argv = &PyTuple_GET_ITEM(argtuple, 0);
    } else {
        stack[0] = NULL;
        argv = stack + 1;
    }
#if PY_VERSION_HEX < 0x030E0000
    /* threaded loops: an asyncio-native task's step runs alone (dispatch.c) */
    int alone = 0;
    if (TL_UNLIKELY(h->loop->dispatch != NULL) && tl_task_native_callback(h->loop->st, callback))
        alone = tl_dispatch_native_begin(h->loop);
#endif
    /* threaded loops: never beside the steps of the task that scheduled it */
    PyObject *home = h->home;
    tl_task *saved = NULL;
    int locked = 0;
    if (TL_UNLIKELY(home != NULL)) {
        Py_INCREF(home);
        locked = tl_task_home_enter(home, &saved);
    }
    PyObject *res;
    if (TL_LIKELY(PyContext_CheckExact(context))) {
        if (PyContext_Enter(context) < 0) {
            res = NULL;
        } else {
            size_t nargsf = (size_t)nargs;
            if (argtuple == NULL)
                nargsf |= PY_VECTORCALL_ARGUMENTS_OFFSET;
            res = PyObject_Vectorcall(callback, argv, nargsf, NULL);
            if (TL_LIKELY(res != NULL)) {
                if (PyContext_Exit(context) < 0)
                    Py_CLEAR(res);
            } else {
                /* leave the context without losing the callback's error */
                PyObject *exc = PyErr_GetRaisedException();
                PyContext_Exit(context);
                PyErr_SetRaisedException(exc);
            }
        }
    } else {
        /* asyncio calls context.run(); keep that for look-alike objects */
        PyObject *all = PyTuple_New(1 + nargs);
        if (all == NULL) {
            res = NULL;
        } else {
            PyTuple_SET_ITEM(all, 0, Py_NewRef(callback));
            for (Py_ssize_t i = 0; i < nargs; i++)
                PyTuple_SET_ITEM(all, 1 + i, Py_NewRef(argv[i]));
            PyObject *run = tl_getattr(context, "run");
            res = run ? PyObject_Call(run, all, NULL) : NULL;
            Py_XDECREF(run);
            Py_DECREF(all);
        }
    }
    int rc = 0;
    if (res != NULL) {
        Py_DECREF(res);
    } else {
        PyObject *args = argtuple ? Py_NewRef(argtuple) : PyTuple_New(nargs);
        if (args == NULL) {
            rc = -1;
        } else {
            if (argtuple == NULL)
                for (Py_ssize_t i = 0; i < nargs; i++)
                    PyTuple_SET_ITEM(args, i, Py_NewRef(argv[i]));
            rc = tl_handle_report_error(h, callback, args);
            Py_DECREF(args);
        }
    }
    if (home != NULL) {
        tl_task_home_leave(home, saved, locked);
        Py_DECREF(home);
    }
#if PY_VERSION_HEX < 0x030E0000
    if (alone)
        tl_dispatch_native_end(h->loop);
#endif
    Py_DECREF(context);
    if (argtuple == NULL)
        for (Py_ssize_t i = 1; i <= nargs; i++)
            Py_DECREF(stack[i]);
    Py_XDECREF(argtuple);
    Py_DECREF(callback);
    return rc;
}

int tl_handle_ready_fn(tl_loop *loop, PyObject *obj)
{
    TL_UNUSED(loop);
    return tl_handle_run((tl_handle *)obj);
}

int tl_ready_call_run(tl_loop *loop, PyObject *obj)
{
    PyObject *r = tl_call_method(obj, "_run", NULL);
    if (r != NULL) {
        Py_DECREF(r);
        return 0;
    }
    PyObject *msg = PyUnicode_FromString("Exception in callback");
    if (msg == NULL)
        return -1;
    int rc = tl_loop_report_exception(loop, msg, NULL);
    Py_DECREF(msg);
    return rc;
}

/* ---- Python API ------------------------------------------------------- */

PyObject *tl_handle_repr_with(tl_handle *h, PyObject *when)
{
    if (h->repr != NULL)
        return Py_NewRef(h->repr);
    PyObject *info = PyList_New(0), *s = NULL, *result = NULL;
    if (info == NULL)
        return NULL;
    s = PyUnicode_FromString(tl_type_name(Py_TYPE(h)));
    if (s == NULL || PyList_Append(info, s) < 0)
        goto done;
    Py_CLEAR(s);
    if (h->cancelled) {
        s = PyUnicode_FromString("cancelled");
        if (s == NULL || PyList_Append(info, s) < 0)
            goto done;
        Py_CLEAR(s);
    }
    if (when != NULL) {
        s = PyUnicode_FromFormat("when=%S", when);
        if (s == NULL || PyList_Append(info, s) < 0)
            goto done;
        Py_CLEAR(s);
    }
    if (h->callback != NULL && h->loop != NULL) {
        PyObject *args = tl_handle_args(h);
        if (args == NULL)
            goto done;
        s = format_callback(h->loop, h->callback, args);
        Py_DECREF(args);
        if (s == NULL || PyList_Append(info, s) < 0)
            goto done;
        Py_CLEAR(s);
    }
    if (h->source_traceback != NULL && PyObject_IsTrue(h->source_traceback)) {
        Py_ssize_t n = PyObject_Length(h->source_traceback);
        PyObject *frame = n > 0 ? PySequence_GetItem(h->source_traceback, n - 1) : NULL;
        if (frame == NULL)
            goto done;
        PyObject *file = PySequence_GetItem(frame, 0);
        PyObject *line = file ? PySequence_GetItem(frame, 1) : NULL;
        Py_DECREF(frame);
        if (line != NULL)
            s = PyUnicode_FromFormat("created at %S:%S", file, line);
        Py_XDECREF(file);
        Py_XDECREF(line);
        if (s == NULL || PyList_Append(info, s) < 0)
            goto done;
        Py_CLEAR(s);
    }
    PyObject *sep = PyUnicode_FromString(" ");
    if (sep == NULL)
        goto done;
    PyObject *joined = PyUnicode_Join(sep, info);
    Py_DECREF(sep);
    if (joined != NULL) {
        result = PyUnicode_FromFormat("<%U>", joined);
        Py_DECREF(joined);
    }
done:
    Py_XDECREF(s);
    Py_DECREF(info);
    return result;
}

static PyObject *handle_repr(tl_handle *h)
{
    return tl_handle_repr_with(h, NULL);
}

static PyObject *handle_cancel_locked(tl_handle *h);

static PyObject *handle_cancel(tl_handle *h, PyObject *Py_UNUSED(ignored))
{
    HANDLE_TS_LOCK(h);
    PyObject *r = handle_cancel_locked(h);
    HANDLE_TS_UNLOCK(h);
    return r;
}

static PyObject *handle_cancel_locked(tl_handle *h)
{
    if (h->cancelled)
        Py_RETURN_NONE;
    if (h->is_timer)
        tl_timer_unschedule((tl_timer_handle *)h);
    Py_BEGIN_CRITICAL_SECTION(h);
    h->cancelled = 1;
    Py_END_CRITICAL_SECTION();
    if (h->loop != NULL && h->loop->debug) {
        /* keep callback and arguments visible in "Executing ..." warnings */
        PyObject *r = PyObject_Repr((PyObject *)h);
        if (r == NULL)
            return NULL;
        Py_XSETREF(h->repr, r);
    }
    /* the references go after the section: their finalizers may run code */
    PyObject *drop[2 + TL_HANDLE_INLINE_ARGS] = {NULL};
    Py_BEGIN_CRITICAL_SECTION(h);
    drop[0] = h->callback;
    drop[1] = h->argtuple;
    for (Py_ssize_t i = 1; i <= TL_HANDLE_INLINE_ARGS; i++) {
        drop[1 + i] = h->argv[i];
        h->argv[i] = NULL;
    }
    h->callback = NULL;
    h->argtuple = NULL;
    Py_END_CRITICAL_SECTION();
    for (size_t i = 0; i < sizeof(drop) / sizeof(drop[0]); i++)
        Py_XDECREF(drop[i]);
    Py_RETURN_NONE;
}

static PyObject *handle_cancelled(tl_handle *h, PyObject *Py_UNUSED(ignored))
{
    HANDLE_TS_LOCK(h);
    int cancelled = h->cancelled;
    HANDLE_TS_UNLOCK(h);
    return PyBool_FromLong(cancelled);
}

static PyObject *handle_get_context(tl_handle *h, PyObject *Py_UNUSED(ignored))
{
    return Py_NewRef(h->context ? h->context : Py_None);
}

static PyObject *handle_py_run(tl_handle *h, PyObject *Py_UNUSED(ignored))
{
    if (h->callback == NULL || h->cancelled)
        Py_RETURN_NONE;
    if (tl_handle_run(h) < 0)
        return NULL;
    Py_RETURN_NONE;
}

PyMethodDef tl_handle_methods[] = {
    {"cancel", (PyCFunction)handle_cancel, METH_NOARGS, NULL},
    {"cancelled", (PyCFunction)handle_cancelled, METH_NOARGS, NULL},
    {"get_context", (PyCFunction)handle_get_context, METH_NOARGS, NULL},
    {"_run", (PyCFunction)handle_py_run, METH_NOARGS, NULL},
    {"__class_getitem__", Py_GenericAlias, METH_O | METH_CLASS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyObject *get_callback(tl_handle *h, void *c)
{
    TL_UNUSED(c);
    return Py_NewRef(h->callback ? h->callback : Py_None);
}

static PyObject *get_args(tl_handle *h, void *c)
{
    TL_UNUSED(c);
    if (h->callback == NULL)
        Py_RETURN_NONE;
    return tl_handle_args(h);
}

static PyObject *get_cancelled(tl_handle *h, void *c)
{
    TL_UNUSED(c);
    return PyBool_FromLong(h->cancelled);
}

static PyObject *get_loop(tl_handle *h, void *c)
{
    TL_UNUSED(c);
    return Py_NewRef(h->loop ? (PyObject *)h->loop : Py_None);
}

static PyObject *get_source_traceback(tl_handle *h, void *c)
{
    TL_UNUSED(c);
    return Py_NewRef(h->source_traceback ? h->source_traceback : Py_None);
}

static PyObject *get_repr(tl_handle *h, void *c)
{
    TL_UNUSED(c);
    return Py_NewRef(h->repr ? h->repr : Py_None);
}

PyGetSetDef tl_handle_getset[] = {
    {"_callback", (getter)get_callback, NULL, NULL, NULL},
    {"_args", (getter)get_args, NULL, NULL, NULL},
    {"_cancelled", (getter)get_cancelled, NULL, NULL, NULL},
    {"_loop", (getter)get_loop, NULL, NULL, NULL},
    {"_source_traceback", (getter)get_source_traceback, NULL, NULL, NULL},
    {"_repr", (getter)get_repr, NULL, NULL, NULL},
    {"_context", (getter)handle_get_context, NULL, NULL, NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static int handle_clear(tl_handle *h)
{
    tl_handle_clear_refs(h);
    return 0;
}

/* Handle's and TimerHandle's dealloc: an object of the exact type goes back
 * to that type's free list while it has room. */
static inline void handle_dealloc_kind(tl_handle *h, int timer)
{
    PyTypeObject *tp = Py_TYPE(h);
    PyObject_GC_UnTrack(h);
    TL_CLEAR_WEAKREFS(h, h->weakreflist);
#if TL_FREELIST_MAX
    /* the loop knows the module state; asking the type costs more */
    tl_state *st = h->loop ? h->loop->st : PyType_GetModuleState(tp);
#endif
    tl_handle_clear_refs(h);
#if TL_FREELIST_MAX
    if (st != NULL) {
        PyObject **free = timer ? st->timer_free : st->handle_free;
        int *nfree = timer ? &st->timer_nfree : &st->handle_nfree;
        if (tp == (timer ? st->timer_handle_type : st->handle_type) && *nfree < TL_FREELIST_MAX) {
            free[(*nfree)++] = (PyObject *)h;
            Py_DECREF(tp);
            return;
        }
    }
#else
    TL_UNUSED(timer);
#endif
    tp->tp_free(h);
    Py_DECREF(tp);
}

static void handle_dealloc(tl_handle *h)
{
    handle_dealloc_kind(h, 0);
}

void tl_timer_handle_dealloc(PyObject *t)
{
    handle_dealloc_kind((tl_handle *)t, 1);
}

static PyMemberDef handle_members[] = {
    {"__weaklistoffset__", Py_T_PYSSIZET, offsetof(tl_handle, weakreflist), Py_READONLY, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyType_Slot handle_slots[] = {
    {Py_tp_dealloc, handle_dealloc},
    {Py_tp_traverse, tl_handle_traverse},
    {Py_tp_clear, handle_clear},
    {Py_tp_repr, handle_repr},
    {Py_tp_methods, tl_handle_methods},
    {Py_tp_getset, tl_handle_getset},
    {Py_tp_members, handle_members},
    {Py_tp_doc, "Object returned by callback registration methods."},
    {0, NULL},
};

PyType_Spec tl_handle_spec = {
    .name = "tonio_loop._core.Handle",
    .basicsize = sizeof(tl_handle),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_BASETYPE |
             Py_TPFLAGS_DISALLOW_INSTANTIATION | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = handle_slots,
};

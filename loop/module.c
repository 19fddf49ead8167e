/* module.c - tonio_loop._core: multi-phase init (PEP 489) with module state,
 * so each interpreter gets its own types and cached stdlib objects.
 */
#include "tl_common.h"
#include "tl_loop.h"
#include "tl_handle.h"
#include "tl_timer.h"
#include "tl_event.h"
#include "tl_future.h"
#include "tl_task.h"
#include "tl_fork.h"
#include "tl_dispatch.h"
#include "tl_stream.h"
#include "tl_server.h"
#include "tl_sock.h"
#include "tl_tls.h"
#include "tl_coromethod.h"

PyObject *tl_getattr(PyObject *obj, const char *name)
{
    PyObject *s = PyUnicode_InternFromString(name);
    if (s == NULL)
        return NULL;
    PyObject *attr = PyObject_GetAttr(obj, s);
    Py_DECREF(s);
    return attr;
}

PyObject *tl_import_attr(const char *module, const char *name)
{
    PyObject *mod = PyImport_ImportModule(module);
    if (mod == NULL)
        return NULL;
    PyObject *attr = tl_getattr(mod, name);
    Py_DECREF(mod);
    return attr;
}

PyObject *tl_call_method(PyObject *obj, const char *name, const char *fmt, ...)
{
    PyObject *meth = tl_getattr(obj, name);
    if (meth == NULL)
        return NULL;
    PyObject *args;
    if (fmt == NULL || *fmt == '\0') {
        args = PyTuple_New(0);
    } else {
        va_list va;
        va_start(va, fmt);
        args = Py_VaBuildValue(fmt, va);
        va_end(va);
        if (args != NULL && !PyTuple_Check(args))
            Py_SETREF(args, PyTuple_Pack(1, args));
    }
    PyObject *r = args ? PyObject_Call(meth, args, NULL) : NULL;
    Py_XDECREF(args);
    Py_DECREF(meth);
    return r;
}

/* The joins count, then copy; an entry whose name an earlier table took is
 * left out, so a type can override what it borrows. */
#define TL_JOIN(T, NAME)                                                      \
    size_t n = 0;                                                             \
    for (T *const *t = tables; *t; t++)                                       \
        for (const T *e = *t; e->NAME; e++)                                   \
            n++;                                                              \
    T *all = calloc(n + 1, sizeof(T));                                        \
    if (all == NULL)                                                          \
        return NULL;                                                          \
    n = 0;                                                                    \
    for (T *const *t = tables; *t; t++)                                       \
        for (const T *e = *t; e->NAME; e++) {                                 \
            size_t k = 0;                                                     \
            while (k < n && strcmp(all[k].NAME, e->NAME) != 0)                \
                k++;                                                          \
            if (k == n)                                                       \
                all[n++] = *e;                                                \
        }                                                                     \
    return all

PyMethodDef *tl_join_methods(PyMethodDef *const *tables)
{
    TL_JOIN(PyMethodDef, ml_name);
}

PyGetSetDef *tl_join_getset(PyGetSetDef *const *tables)
{
    TL_JOIN(PyGetSetDef, name);
}
#undef TL_JOIN

/* An AttributeError from the stdlib at import: a Python whose asyncio
 * changed under us. Said as an ImportError naming what is missing. */
static void tl_missing_stdlib(const char *module, const char *name)
{
    PyObject *exc = PyErr_GetRaisedException();
    PyErr_Format(PyExc_ImportError,
                 "tonio_loop needs %s.%s, which this Python (%s) does not have as "
                 "tonio_loop expects: a tonio_loop for this Python is needed",
                 module, name, Py_GetVersion());
    PyObject *imp = PyErr_GetRaisedException();
    PyException_SetCause(imp, exc);
    PyErr_SetRaisedException(imp);
}

static int add_type(PyObject *module, PyTypeObject **slot, PyType_Spec *spec,
                    PyObject *base)
{
    *slot = (PyTypeObject *)PyType_FromModuleAndSpec(module, spec, base);
    if (*slot == NULL)
        return -1;
    return PyModule_AddType(module, *slot);
}

static int intern(PyObject **slot, const char *s)
{
    *slot = PyUnicode_InternFromString(s);
    return *slot ? 0 : -1;
}

#if PY_VERSION_HEX >= 0x030E0000
/* 3.14+: asyncio.all_tasks() walks asyncio's per-thread lists of its own
 * tasks, which _asyncio._register_task() links any subclass of its Task
 * into (see task_register in task.c). */
static int init_task_registry(tl_state *st)
{
    st->register_task = tl_import_attr("_asyncio", "_register_task");
    st->unregister_task = st->register_task ? tl_import_attr("_asyncio", "_unregister_task")
                                            : NULL;
    /* the call graph (future.c: _asyncio_awaited_by) */
    st->add_awaited_by = st->unregister_task
                             ? tl_import_attr("asyncio.futures", "future_add_to_awaited_by")
                             : NULL;
    st->discard_awaited_by = st->add_awaited_by
                                 ? tl_import_attr("asyncio.futures",
                                                  "future_discard_from_awaited_by")
                                 : NULL;
    st->awaited_by_descr = st->discard_awaited_by
                               ? PyObject_GetAttrString((PyObject *)st->asyncio_future_type,
                                                        "_asyncio_awaited_by")
                               : NULL;
    return st->awaited_by_descr != NULL ? 0 : -1;
}
#else
/* asyncio.all_tasks() iterates a WeakSet (tasks._scheduled_tasks; 3.11:
 * tasks._all_tasks); our tasks put their entries straight into the set it
 * iterates (see task_register in task.c). */
static int init_task_registry(tl_state *st)
{
    PyObject *tasks = PyImport_ImportModule("asyncio.tasks");
    if (tasks == NULL)
        return -1;
    PyObject *ws = PyObject_GetAttrString(tasks, "_scheduled_tasks");
    if (ws == NULL && PyErr_ExceptionMatches(PyExc_AttributeError)) {
        PyErr_Clear();
        ws = PyObject_GetAttrString(tasks, "_all_tasks");
    }
    Py_DECREF(tasks);
    if (ws == NULL)
        return -1;
    st->all_tasks_data = PyObject_GetAttrString(ws, "data");
    st->all_tasks_iterating = PyObject_GetAttrString(ws, "_iterating");
    st->all_tasks_pending = PyObject_GetAttrString(ws, "_pending_removals");
    Py_DECREF(ws);
    if (st->all_tasks_data == NULL || st->all_tasks_iterating == NULL ||
        st->all_tasks_pending == NULL)
        return -1;
    if (!PySet_Check(st->all_tasks_data) || !PySet_Check(st->all_tasks_iterating) ||
        !PyList_Check(st->all_tasks_pending)) {
        PyErr_SetString(PyExc_ImportError,
                        "asyncio's task registry is not the WeakSet tonio_loop knows");
        return -1;
    }
    return 0;
}
#endif

/* asyncio's C Future and Task, the bases of ours: their objects must fit in
 * the part of ours set aside for them (tl_future.h), whose size comes from
 * the interpreter the extension was built for. */
static int init_asyncio_bases(tl_state *st)
{
    PyObject *fut = tl_import_attr("_asyncio", "Future");
    PyObject *task = fut ? tl_import_attr("_asyncio", "Task") : NULL;
    if (task == NULL) {
        Py_XDECREF(fut);
        return -1;
    }
    st->asyncio_future_type = (PyTypeObject *)fut;
    st->asyncio_task_type = (PyTypeObject *)task;
    if (!PyType_Check(fut) || !PyType_Check(task) ||
        !PyType_HasFeature((PyTypeObject *)fut, Py_TPFLAGS_BASETYPE) ||
        !PyType_HasFeature((PyTypeObject *)task, Py_TPFLAGS_BASETYPE)) {
        PyErr_SetString(PyExc_ImportError,
                        "tonio_loop needs asyncio's C Future and Task (_asyncio) as base classes");
        return -1;
    }
    Py_ssize_t fsize = st->asyncio_future_type->tp_basicsize;
    Py_ssize_t tsize = st->asyncio_task_type->tp_basicsize;
    if (fsize > TL_ASYNCIO_FUTURE_SIZE || tsize > TL_ASYNCIO_TASK_SIZE) {
        PyErr_Format(PyExc_ImportError,
                     "tonio_loop was built for a Python whose asyncio Future and Task "
                     "objects take %d and %d bytes; this one's take %zd and %zd: "
                     "rebuild tonio_loop for this interpreter",
                     TL_ASYNCIO_FUTURE_SIZE, TL_ASYNCIO_TASK_SIZE, fsize, tsize);
        return -1;
    }
    return tl_task_find_name_slot(st->asyncio_task_type);
}

static int core_exec(PyObject *module)
{
    tl_state *st = tl_state_of_module(module);
    PyType_Spec *loop_spec = tl_loop_spec_ready();
    PyType_Spec *task_spec = tl_task_spec_ready();
    if (loop_spec == NULL || task_spec == NULL || init_asyncio_bases(st) < 0 ||
        add_type(module, &st->loop_type, loop_spec, NULL) < 0 ||
        add_type(module, &st->handle_type, &tl_handle_spec, NULL) < 0 ||
        add_type(module, &st->timer_handle_type, &tl_timer_handle_spec,
                 (PyObject *)st->handle_type) < 0 ||
        add_type(module, &st->event_type, &tl_event_spec, NULL) < 0 ||
        add_type(module, &st->future_type, &tl_future_spec,
                 (PyObject *)st->asyncio_future_type) < 0 ||
        add_type(module, &st->future_iter_type, &tl_future_iter_spec, NULL) < 0 ||
        add_type(module, &st->task_type, task_spec, (PyObject *)st->asyncio_task_type) < 0 ||
        add_type(module, &st->worker_key_type, &tl_worker_key_spec, NULL) < 0 ||
        add_type(module, &st->coromethod_type, &tl_coromethod_spec, NULL) < 0)
        return -1;
    /* what create_future()/create_task() make: ours */
    st->future_cls = Py_NewRef((PyObject *)st->future_type);
    st->task_cls = Py_NewRef((PyObject *)st->task_type);

    struct { PyObject **slot; const char *module, *name; } imports[] = {
        {&st->events_module, "asyncio", "events"},
        {&st->get_running_loop, "asyncio.events", "_get_running_loop"},
        {&st->get_asyncgen_hooks, "sys", "get_asyncgen_hooks"},
        {&st->set_asyncgen_hooks, "sys", "set_asyncgen_hooks"},
        {&st->format_callback_source, "asyncio.format_helpers", "_format_callback_source"},
        {&st->extract_stack, "asyncio.format_helpers", "extract_stack"},
        {&st->isfuture, "asyncio.futures", "isfuture"},
        {&st->ensure_future, "asyncio.tasks", "ensure_future"},
        {&st->coroutines_module, "asyncio", "coroutines"},
        {&st->set_wakeup_fd, "signal", "set_wakeup_fd"},
        {&st->run_until_complete_cb, "asyncio.base_events", "_run_until_complete_cb"},
        {&st->cancelled_error, "asyncio.exceptions", "CancelledError"},
        {&st->invalid_state_error, "asyncio.exceptions", "InvalidStateError"},
#if PY_VERSION_HEX >= 0x030C0000
        {&st->get_event_loop, "asyncio.events", "get_event_loop"},
        {&st->swap_current_task, "asyncio.tasks", "_swap_current_task"},
        {&st->register_eager_task, "asyncio.tasks", "_register_eager_task"},
        {&st->unregister_eager_task, "asyncio.tasks", "_unregister_eager_task"},
#else
        {&st->get_event_loop, "asyncio.events", "_get_event_loop"},
#endif
        {&st->future_repr, "asyncio.base_futures", "_future_repr"},
        {&st->task_repr, "asyncio.base_tasks", "_task_repr"},
        {&st->task_get_stack, "asyncio.base_tasks", "_task_get_stack"},
        {&st->task_print_stack, "asyncio.base_tasks", "_task_print_stack"},
        {&st->enter_task, "asyncio.tasks", "_enter_task"},
        {&st->leave_task, "asyncio.tasks", "_leave_task"},
#if PY_VERSION_HEX < 0x030E0000
        {&st->current_tasks, "asyncio.tasks", "_current_tasks"},
#endif
        {&st->base_event_loop_cls, "asyncio.base_events", "BaseEventLoop"},
        {&st->iscoroutine, "asyncio.coroutines", "iscoroutine"},
#if PY_VERSION_HEX >= 0x030E0000
        /* the public one warns from 3.14; asyncio's own code calls this */
        {&st->iscoroutinefunction, "asyncio.coroutines", "_iscoroutinefunction"},
#else
        {&st->iscoroutinefunction, "asyncio.coroutines", "iscoroutinefunction"},
#endif
        {&st->valid_signals, "signal", "valid_signals"},
        {&st->signal_signal, "signal", "signal"},
        {&st->signal_siginterrupt, "signal", "siginterrupt"},
        {&st->sighandler_noop, "asyncio.unix_events", "_sighandler_noop"},
        {&st->default_int_handler, "signal", "default_int_handler"},
        {&st->sig_dfl, "signal", "SIG_DFL"},
    };
    for (size_t i = 0; i < sizeof(imports) / sizeof(imports[0]); i++) {
        *imports[i].slot = tl_import_attr(imports[i].module, imports[i].name);
        if (*imports[i].slot == NULL) {
            if (PyErr_ExceptionMatches(PyExc_AttributeError))
                tl_missing_stdlib(imports[i].module, imports[i].name);
            return -1;
        }
    }
    st->base_events = PyImport_ImportModule("asyncio.base_events");
    if (st->base_events == NULL)
        return -1;
    if (init_task_registry(st) < 0) {
        if (PyErr_ExceptionMatches(PyExc_AttributeError))
            tl_missing_stdlib("asyncio", "task registry");
        return -1;
    }
    st->coro_types = PySet_New(NULL);
    st->context_kwnames = Py_BuildValue("(s)", "context");
    if (st->coro_types == NULL || st->context_kwnames == NULL)
        return -1;

    if (intern(&st->str_call_exception_handler, "call_exception_handler") < 0 ||
        intern(&st->str_add_done_callback, "add_done_callback") < 0 ||
        intern(&st->str_remove_done_callback, "remove_done_callback") < 0 ||
        intern(&st->str_log_destroy_pending, "_log_destroy_pending") < 0 ||
        intern(&st->str_asyncgen_firstiter_hook, "_asyncgen_firstiter_hook") < 0 ||
        intern(&st->str_asyncgen_finalizer_hook, "_asyncgen_finalizer_hook") < 0 ||
        intern(&st->str_call_soon, "call_soon") < 0 ||
        intern(&st->str_set_running_loop, "_set_running_loop") < 0 ||
        intern(&st->str_cancel, "cancel") < 0 ||
        intern(&st->str_throw, "throw") < 0 ||
        intern(&st->str_result, "result") < 0 ||
        intern(&st->str_get_loop, "get_loop") < 0 ||
        intern(&st->str_get_debug, "get_debug") < 0 ||
        intern(&st->str_is_running, "is_running") < 0 ||
        intern(&st->str_asyncio_future_blocking, "_asyncio_future_blocking") < 0 ||
        intern(&st->str_loop_attr, "_loop") < 0 ||
        intern(&st->str_PENDING, "PENDING") < 0 ||
        intern(&st->str_CANCELLED, "CANCELLED") < 0 ||
        intern(&st->str_FINISHED, "FINISHED") < 0)
        return -1;

    if (tl_stream_init_module(module, st) < 0 || tl_socket_init_module(module, st) < 0 ||
        tl_pipe_init_module(module, st) < 0 || tl_dgram_init_module(module, st) < 0 ||
        tl_server_init_module(module, st) < 0 ||
        tl_sock_init_module(module, st) < 0 || tl_tls_init_module(module, st) < 0)
        return -1;

    return PyModule_AddIntConstant(module, "EV_VERSION",
                                   ev_version_major() * 100 + ev_version_minor());
}

#define TL_STATE_OBJECTS(X)                                                   \
    X(loop_type) X(handle_type) X(timer_handle_type)                          \
    X(event_type) X(future_type) X(future_iter_type) X(task_type)             \
    X(asyncio_future_type) X(asyncio_task_type)                               \
    X(worker_key_type) X(coromethod_type)                                     \
    X(fast_loop_type) X(cancelled_error) X(invalid_state_error)               \
    X(get_event_loop) X(future_repr) X(task_repr) X(task_get_stack)           \
    X(task_print_stack) X(coro_types) X(enter_task)                           \
    X(leave_task) X(swap_current_task) X(register_eager_task)                 \
    X(unregister_eager_task) X(current_tasks) X(all_tasks_data)               \
    X(register_task) X(unregister_task) X(awaited_by_descr) X(add_awaited_by)  \
    X(discard_awaited_by)                                                     \
    X(all_tasks_iterating) X(all_tasks_pending) X(context_kwnames)            \
    X(str_call_soon) X(str_cancel) X(str_throw) X(str_result)                 \
    X(str_get_loop) X(str_get_debug) X(str_is_running)                        \
    X(str_asyncio_future_blocking) X(str_loop_attr) X(str_PENDING)            \
    X(str_CANCELLED) X(str_FINISHED)                                          \
    X(events_module) X(str_set_running_loop) X(get_running_loop)               \
    X(get_asyncgen_hooks)                                                     \
    X(set_asyncgen_hooks) X(format_callback_source) X(extract_stack)           \
    X(base_events) X(isfuture) X(ensure_future) X(coroutines_module)           \
    X(set_wakeup_fd) X(run_until_complete_cb) X(future_cls) X(task_cls)        \
    X(base_event_loop_cls) X(iscoroutine) X(iscoroutinefunction)               \
    X(valid_signals) X(signal_signal) X(signal_siginterrupt)                   \
    X(sighandler_noop) X(default_int_handler) X(sig_dfl)                       \
    X(str_call_exception_handler)                                              \
    X(str_add_done_callback) X(str_remove_done_callback)                       \
    X(str_log_destroy_pending) X(str_asyncgen_firstiter_hook)                  \
    X(str_asyncgen_finalizer_hook)                                             \
    X(socket_transport_type) X(read_pipe_type) X(write_pipe_type)              \
    X(listener_type) X(sockop_type) X(buffered_protocol_cls)                    \
    X(transport_socket_cls) X(socket_cls) X(ssl_socket_cls)                     \
    X(sendfile_unavailable) X(logger) X(str_data_received) X(str_get_buffer)    \
    X(str_buffer_updated) X(str_eof_received) X(str_connection_made)            \
    X(str_connection_lost) X(str_pause_writing) X(str_resume_writing)           \
    X(str_set_result) X(str_set_exception) X(str_cancelled) X(str_done)         \
    X(str_create_future) X(str_fileno) X(str_close)               \
    X(str_attach) X(str_detach) X(tls_type)                                   \
    X(datagram_transport_type) X(str_datagram_received) X(str_error_received)

static int core_traverse(PyObject *module, visitproc visit, void *arg)
{
    tl_state *st = tl_state_of_module(module);
    if (st == NULL)
        return 0;
#define X(f) Py_VISIT(st->f);
    TL_STATE_OBJECTS(X)
#undef X
    return tl_tls_traverse_state(st, visit, arg);
}

static void free_list_drain(PyObject **items, int *n)
{
    while (*n > 0)
        PyObject_GC_Del(items[--*n]);
}

static int core_clear(PyObject *module)
{
    tl_state *st = tl_state_of_module(module);
    if (st == NULL)
        return 0;
    free_list_drain(st->handle_free, &st->handle_nfree);
    free_list_drain(st->timer_free, &st->timer_nfree);
    free_list_drain(st->future_iter_free, &st->future_iter_nfree);
    while (st->callback_nfree > 0)
        PyMem_Free(st->callback_free[--st->callback_nfree]);
#define X(f) Py_CLEAR(st->f);
    TL_STATE_OBJECTS(X)
#undef X
    tl_tls_clear_state(st);
    return 0;
}

static void core_free(void *module)
{
    core_clear((PyObject *)module);
}

static PyMethodDef core_functions[] = {
    {"_after_fork_child", tl_fork_after_child, METH_NOARGS,
     "Called in a forked child (os.register_at_fork) to release the signal "
     "wakeup fd inherited from the parent's loops."},
    {NULL, NULL, 0, NULL},
};

static PyModuleDef_Slot core_slots[] = {
    {Py_mod_exec, core_exec},
#if PY_VERSION_HEX >= 0x030C0000
    {Py_mod_multiple_interpreters, Py_MOD_PER_INTERPRETER_GIL_SUPPORTED},
#endif
#if PY_VERSION_HEX >= 0x030D0000
    {Py_mod_gil, Py_MOD_GIL_NOT_USED},
#endif
    {0, NULL},
};

PyModuleDef tl_module_def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "tonio_loop._core",
    .m_doc = "The C core of tonio_loop: an asyncio event loop over libev.",
    .m_size = sizeof(tl_state),
    .m_slots = core_slots,
    .m_methods = core_functions,
    .m_traverse = core_traverse,
    .m_clear = core_clear,
    .m_free = core_free,
};

PyMODINIT_FUNC PyInit__core(void)
{
    return PyModuleDef_Init(&tl_module_def);
}

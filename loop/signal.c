/* signal.c - signals, the way asyncio's Unix loop handles them.
 *
 * Python's own C signal handler records a signal and writes its number to
 * the process "wakeup fd". The loop owns that fd (the write end of a
 * socketpair it watches) while it has signal handlers, and also while it runs
 * on the main thread when nobody else holds it. Either way a signal ends the
 * poll: the loop queues the add_signal_handler() callbacks for the numbers it
 * reads, then runs PyErr_CheckSignals() so Python-level handlers - Ctrl-C's
 * KeyboardInterrupt included - run at once, even from a long sleep. libev's
 * own signal watchers are never used: they would replace Python's handlers.
 */
#include <errno.h>
#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

#include "tl_signal.h"
#include "tl_loop.h"
#include "tl_dispatch.h"
#include "tl_handle.h"

/* asyncio's _handle_signal: queue the handler's callback. */
static int signal_dispatch(tl_loop *loop, PyObject *sig)
{
    if (loop->signal_handlers == NULL)
        return 0;
    PyObject *h = PyDict_GetItemWithError(loop->signal_handlers, sig);
    if (h == NULL)
        return PyErr_Occurred() ? -1 : 0;    /* a race with removal */
    /* the table is visible as loop._signal_handlers: anything may be there */
    int ours = PyObject_TypeCheck(h, loop->st->handle_type);
    int cancelled;
    if (ours) {
        cancelled = ((tl_handle *)h)->cancelled;
    } else {
        PyObject *c = tl_getattr(h, "_cancelled");
        cancelled = c ? PyObject_IsTrue(c) : -1;
        Py_XDECREF(c);
        if (cancelled < 0)
            return -1;
    }
    if (cancelled) {
        PyObject *r = tl_call_method((PyObject *)loop, "remove_signal_handler", "O", sig);
        Py_XDECREF(r);
        return r ? 0 : -1;
    }
    return tl_loop_push_ready(loop, ours ? tl_handle_ready_fn : tl_ready_call_run, Py_NewRef(h));
}

static void signal_io_cb(struct ev_loop *ev, ev_io *w, int revents)
{
    TL_UNUSED(ev);
    TL_UNUSED(revents);
    tl_loop *loop = (tl_loop *)((char *)w - offsetof(tl_loop, signal_io));
    unsigned char buf[256];
    ssize_t n;
    while ((n = recv(loop->signal_fds[0], buf, sizeof(buf), 0)) > 0) {
        for (ssize_t i = 0; i < n; i++) {
            if (buf[i] == 0)
                continue;
            PyObject *sig = PyLong_FromLong(buf[i]);
            int rc = sig ? signal_dispatch(loop, sig) : -1;
            Py_XDECREF(sig);
            if (rc < 0) {
                tl_loop_defer_error(loop);
                return;
            }
        }
    }
    if (PyErr_CheckSignals() < 0)
        tl_loop_defer_error(loop);
}

static int signal_open(tl_loop *loop)
{
    if (loop->signal_fds[0] >= 0)
        return 0;
    int fds[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, fds) < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    loop->signal_fds[0] = fds[0];
    loop->signal_fds[1] = fds[1];
    ev_io_init(&loop->signal_io, signal_io_cb, fds[0], EV_READ);
    ev_io_start(loop->ev, &loop->signal_io);
    return 0;
}

/* signal.set_wakeup_fd(fd, warn_on_full_buffer=False); the old fd in *old */
static int set_wakeup_fd(tl_loop *loop, int fd, int *old)
{
    PyObject *kw = Py_BuildValue("{sO}", "warn_on_full_buffer", Py_False);
    PyObject *args = kw ? Py_BuildValue("(i)", fd) : NULL;
    PyObject *r = args ? PyObject_Call(loop->st->set_wakeup_fd, args, kw) : NULL;
    Py_XDECREF(kw);
    Py_XDECREF(args);
    if (r == NULL)
        return -1;
    int prev = (int)PyLong_AsLong(r);
    Py_DECREF(r);
    if (prev == -1 && PyErr_Occurred())
        return -1;
    if (old != NULL)
        *old = prev;
    return 0;
}

/* Give the wakeup fd back, unless it changed hands meanwhile. */
static void signal_release_wakeup(tl_loop *loop)
{
    if (!loop->signal_wakeup_set)
        return;
    loop->signal_wakeup_set = 0;
    PyObject *exc = PyErr_GetRaisedException();
    int prev;
    if (set_wakeup_fd(loop, -1, &prev) == 0 && prev != loop->signal_fds[1]) {
        if (set_wakeup_fd(loop, prev, NULL) < 0)
            PyErr_Clear();
    }
    PyErr_Clear();
    PyErr_SetRaisedException(exc);
}

static Py_ssize_t signal_handler_count(tl_loop *loop)
{
    return loop->signal_handlers ? PyDict_GET_SIZE(loop->signal_handlers) : 0;
}

int tl_signal_attach(tl_loop *loop)
{
    if (loop->signal_wakeup_set || loop->ev == NULL)
        return 0;
    if (signal_open(loop) < 0)
        return -1;
    int old;
    if (set_wakeup_fd(loop, loop->signal_fds[1], &old) < 0) {
        /* not the main thread of the main interpreter: signals are not
         * delivered here anyway */
        if (PyErr_ExceptionMatches(PyExc_ValueError)) {
            PyErr_Clear();
            return 0;
        }
        return -1;
    }
    if (old != -1) {
        /* someone else (the application, another loop) holds the wakeup
         * fd: leave it to them; the poll still ends on EINTR */
        return set_wakeup_fd(loop, old, NULL);
    }
    loop->signal_wakeup_set = 1;
    return 0;
}

void tl_signal_detach(tl_loop *loop)
{
    /* signal handlers keep the wakeup fd for as long as they exist */
    if (signal_handler_count(loop) == 0)
        signal_release_wakeup(loop);
}

void tl_signal_close(tl_loop *loop)
{
    signal_release_wakeup(loop);
    if (loop->ev != NULL && loop->signal_fds[0] >= 0)
        ev_io_stop(loop->ev, &loop->signal_io);
    for (int i = 0; i < 2; i++) {
        if (loop->signal_fds[i] >= 0) {
            close(loop->signal_fds[i]);
            loop->signal_fds[i] = -1;
        }
    }
}

/* ---- add_signal_handler / remove_signal_handler ------------------------ */

/* asyncio's _check_signal */
static int signal_check(tl_loop *loop, PyObject *sig)
{
    if (!PyLong_Check(sig)) {
        PyErr_Format(PyExc_TypeError, "sig must be an int, not %R", sig);
        return -1;
    }
    PyObject *valid = PyObject_CallNoArgs(loop->st->valid_signals);
    if (valid == NULL)
        return -1;
    int ok = PySequence_Contains(valid, sig);
    Py_DECREF(valid);
    if (ok < 0)
        return -1;
    if (!ok) {
        PyErr_Format(PyExc_ValueError, "invalid signal number %S", sig);
        return -1;
    }
    return 0;
}

static int is_coroutine_like(tl_loop *loop, PyObject *callback)
{
    PyObject *funcs[2] = {loop->st->iscoroutine, loop->st->iscoroutinefunction};
    for (int i = 0; i < 2; i++) {
        PyObject *r = PyObject_CallOneArg(funcs[i], callback);
        int yes = r ? PyObject_IsTrue(r) : -1;
        Py_XDECREF(r);
        if (yes != 0)
            return yes;
    }
    return 0;
}

/* signal.signal(sig, handler) and, for the no-op, siginterrupt(sig, False) */
static int install_python_handler(tl_loop *loop, PyObject *sig, PyObject *handler)
{
    PyObject *r = PyObject_CallFunctionObjArgs(loop->st->signal_signal, sig, handler, NULL);
    if (r == NULL)
        return -1;
    Py_DECREF(r);
    if (handler != loop->st->sighandler_noop)
        return 0;
    r = PyObject_CallFunctionObjArgs(loop->st->signal_siginterrupt, sig, Py_False, NULL);
    Py_XDECREF(r);
    return r ? 0 : -1;
}

/* OSError(EINVAL) from signal.signal() means "cannot be caught" */
static void signal_translate_error(PyObject *sig)
{
    if (!PyErr_ExceptionMatches(PyExc_OSError))
        return;
    PyObject *exc = PyErr_GetRaisedException();
    PyObject *eno = tl_getattr(exc, "errno");
    long e = eno && PyLong_Check(eno) ? PyLong_AsLong(eno) : 0;
    Py_XDECREF(eno);
    PyErr_Clear();
    if (e == EINVAL) {
        Py_DECREF(exc);
        PyErr_Format(PyExc_RuntimeError, "sig %S cannot be caught", sig);
    } else {
        PyErr_SetRaisedException(exc);
    }
}

static PyObject *loop_add_signal_handler(tl_loop *loop, PyObject *const *args,
                                         Py_ssize_t nargs)
{
    if (nargs < 2) {
        PyErr_Format(PyExc_TypeError,
                     "add_signal_handler() missing required argument '%s'",
                     nargs == 0 ? "sig" : "callback");
        return NULL;
    }
    PyObject *sig = args[0], *callback = args[1];
    int coro = is_coroutine_like(loop, callback);
    if (coro < 0)
        return NULL;
    if (coro) {
        PyErr_SetString(PyExc_TypeError,
                        "coroutines cannot be used with add_signal_handler()");
        return NULL;
    }
    if (signal_check(loop, sig) < 0 || tl_loop_check_closed(loop) < 0 ||
        signal_open(loop) < 0)
        return NULL;
    /* set_wakeup_fd() refuses other threads: that keeps a loop running in
     * another thread from adding a signal handler, as in asyncio */
    if (set_wakeup_fd(loop, loop->signal_fds[1], NULL) < 0) {
        if (PyErr_ExceptionMatches(PyExc_ValueError) || PyErr_ExceptionMatches(PyExc_OSError)) {
            PyObject *exc = PyErr_GetRaisedException();
            PyObject *msg = PyObject_Str(exc);
            Py_DECREF(exc);
            if (msg != NULL) {
                PyErr_SetObject(PyExc_RuntimeError, msg);
                Py_DECREF(msg);
            }
        }
        return NULL;
    }
    loop->signal_wakeup_set = 1;

    tl_handle *h = tl_handle_new(loop, callback, args + 2, nargs - 2, NULL);
    if (h == NULL)
        return NULL;
    if (!PyObject_GC_IsTracked((PyObject *)h))
        PyObject_GC_Track(h);   /* held by the handler table */
    if (loop->signal_handlers == NULL && (loop->signal_handlers = PyDict_New()) == NULL) {
        Py_DECREF(h);
        return NULL;
    }
    int rc = PyDict_SetItem(loop->signal_handlers, sig, (PyObject *)h);
    Py_DECREF(h);
    if (rc < 0)
        return NULL;
    if (install_python_handler(loop, sig, loop->st->sighandler_noop) < 0) {
        PyObject *exc = PyErr_GetRaisedException();
        if (PyDict_DelItem(loop->signal_handlers, sig) < 0)
            PyErr_Clear();
        if (signal_handler_count(loop) == 0 && loop->thread_id == 0)
            signal_release_wakeup(loop);
        PyErr_SetRaisedException(exc);
        signal_translate_error(sig);
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *loop_remove_signal_handler(tl_loop *loop, PyObject *sig)
{
    if (signal_check(loop, sig) < 0)
        return NULL;
    if (loop->signal_handlers == NULL)
        Py_RETURN_FALSE;
    PyObject *h = PyDict_GetItemWithError(loop->signal_handlers, sig);
    if (h == NULL) {
        if (PyErr_Occurred())
            return NULL;
        Py_RETURN_FALSE;
    }
    if (PyDict_DelItem(loop->signal_handlers, sig) < 0)
        return NULL;
    long signum = PyLong_AsLong(sig);
    PyObject *handler = signum == SIGINT ? loop->st->default_int_handler : loop->st->sig_dfl;
    if (install_python_handler(loop, sig, handler) < 0) {
        signal_translate_error(sig);
        return NULL;
    }
    /* the running loop keeps the fd for Ctrl-C; it gives it back when it
     * stops */
    if (signal_handler_count(loop) == 0 && loop->thread_id == 0)
        signal_release_wakeup(loop);
    Py_RETURN_TRUE;
}

int tl_signal_remove_all(tl_loop *loop)
{
    if (signal_handler_count(loop) == 0)
        return 0;
    if (Py_IsFinalizing()) {
        Py_CLEAR(loop->signal_handlers);
        return PyErr_ResourceWarning((PyObject *)loop, 1,
                                     "Closing the loop %R on interpreter shutdown stage, "
                                     "skipping signal handlers removal", (PyObject *)loop);
    }
    PyObject *keys = PyDict_Keys(loop->signal_handlers);
    if (keys == NULL)
        return -1;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(keys); i++) {
        /* through the method, as asyncio's close() does */
        PyObject *r = tl_call_method((PyObject *)loop, "remove_signal_handler", "O",
                                          PyList_GET_ITEM(keys, i));
        if (r == NULL) {
            Py_DECREF(keys);
            return -1;
        }
        Py_DECREF(r);
    }
    Py_DECREF(keys);
    return 0;
}

static PyObject *loop_handle_signal(tl_loop *loop, PyObject *sig)
{
    if (signal_dispatch(loop, sig) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *loop_check_signal(tl_loop *loop, PyObject *sig)
{
    if (signal_check(loop, sig) < 0)
        return NULL;
    Py_RETURN_NONE;
}

PyObject *tl_signal_get_handlers(tl_loop *loop, void *c)
{
    TL_UNUSED(c);
    if (loop->signal_handlers == NULL && (loop->signal_handlers = PyDict_New()) == NULL)
        return NULL;
    return Py_NewRef(loop->signal_handlers);
}

/* Signals belong to the main thread, which runs the loop: from a worker of a
 * threaded loop (where main() runs) the call goes over to it. */
static PyObject *add_signal_handler_on_loop(tl_loop *loop, PyObject *argtuple)
{
    return loop_add_signal_handler(loop, &PyTuple_GET_ITEM(argtuple, 0),
                                   PyTuple_GET_SIZE(argtuple));
}

static PyObject *loop_add_signal_handler_any(tl_loop *loop, PyObject *const *args,
                                             Py_ssize_t nargs)
{
    if (TL_LIKELY(loop->dispatch == NULL))
        return loop_add_signal_handler(loop, args, nargs);
    PyObject *argtuple = PyTuple_New(nargs);
    if (argtuple == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < nargs; i++)
        PyTuple_SET_ITEM(argtuple, i, Py_NewRef(args[i]));
    PyObject *r = tl_dispatch_call_on_loop(loop, add_signal_handler_on_loop, argtuple);
    Py_DECREF(argtuple);
    return r;
}

static PyObject *loop_remove_signal_handler_any(tl_loop *loop, PyObject *sig)
{
    if (TL_LIKELY(loop->dispatch == NULL))
        return loop_remove_signal_handler(loop, sig);
    return tl_dispatch_call_on_loop(loop, loop_remove_signal_handler, sig);
}

PyMethodDef tl_signal_loop_methods[] = {
    {"add_signal_handler", (PyCFunction)(void (*)(void))loop_add_signal_handler_any, METH_FASTCALL,
     "add_signal_handler(sig, callback, *args)\n--\n\n"
     "Run callback(*args) as a loop callback whenever signal sig arrives."},
    {"remove_signal_handler", (PyCFunction)loop_remove_signal_handler_any, METH_O,
     "Remove the handler of sig; True if there was one."},
    {"_handle_signal", (PyCFunction)loop_handle_signal, METH_O, NULL},
    {"_check_signal", (PyCFunction)loop_check_signal, METH_O, NULL},
    {NULL, NULL, 0, NULL},
};

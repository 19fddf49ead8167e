/* sock.c - loop.sock_recv(), sock_sendall() and the rest of asyncio's
 * low-level socket API, as SockOp awaitables (see tl_sock.h).
 *
 * Each kind below mirrors one pair of asyncio's selector_events methods:
 * sock_recv + _sock_recv, sock_sendall + _sock_sendall, ... An exact
 * socket.socket gets the system call directly; anything else (subclasses,
 * look-alikes) gets its own methods called, as asyncio calls them.
 */
#include <errno.h>
#include <sys/socket.h>
#include <unistd.h>

#include "tl_sock.h"
#include "tl_io.h"
#include "tl_stream.h"

#define TL_RECV_SHARED_MAX (256 * 1024)     /* the loop's read buffer */

enum { OP_NEW, OP_RUNNING, OP_WAITING, OP_DONE };

int tl_sockop_would_block(int err)
{
    return err == EAGAIN || err == EWOULDBLOCK || err == EINTR || err == EINPROGRESS;
}

/* ---- life cycle -------------------------------------------------------- */

static void sockop_io_cb(struct ev_loop *ev, ev_io *w, int revents);

static void sockop_on_loop_close(tl_loop_link *link)
{
    tl_sockop *op = (tl_sockop *)((char *)link - offsetof(tl_sockop, link));
    tl_io_queue_leave(op->loop, &op->wait, 0);     /* a pending event too */
    if (op->held) {
        op->held = 0;
        Py_DECREF(op);
    }
}

tl_sockop *tl_sockop_new(tl_loop *loop, const tl_sockop_kind *kind, PyObject *sock)
{
    tl_sockop *op = PyObject_GC_New(tl_sockop, loop->st->sockop_type);
    if (op == NULL)
        return NULL;
    memset((char *)op + sizeof(PyObject), 0, sizeof(*op) - sizeof(PyObject));
    op->kind = kind;
    op->loop = (tl_loop *)Py_NewRef((PyObject *)loop);
    op->sock = Py_NewRef(sock);
    op->fd = -1;
    op->file_fd = -1;
    op->state = OP_NEW;
    op->link.on_loop_close = sockop_on_loop_close;
    ev_init(&op->wait.io, sockop_io_cb);
    PyObject_GC_Track(op);
    return op;
}

/* Stop waiting; drops the watcher's reference (the caller holds one).
 * pass_on: the fd's readiness was reported and this operation is done with
 * it; the next one waiting for the fd tries as well. */
static void sockop_unwatch_passing(tl_sockop *op, int pass_on)
{
    tl_io_queue_leave(op->loop, &op->wait, pass_on);
    if (op->held) {
        op->held = 0;
        tl_loop_link_remove(&op->link);
        Py_DECREF(op);
    }
}

static void sockop_unwatch(tl_sockop *op)
{
    sockop_unwatch_passing(op, 0);
}

static void sockop_release(tl_sockop *op)
{
    Py_CLEAR(op->fut_iter);
    Py_CLEAR(op->fut);
    Py_CLEAR(op->made[0]);
    Py_CLEAR(op->made[1]);
    if (op->has_view) {
        op->has_view = 0;
        PyBuffer_Release(&op->view);
    }
    Py_CLEAR(op->arg);
    Py_CLEAR(op->arg2);
}

/* The operation is over: nothing is watched or held any more. */
static void sockop_finish(tl_sockop *op)
{
    sockop_unwatch(op);
    sockop_release(op);
    op->state = OP_DONE;
}

static void sockop_call_abandoned(tl_sockop *op)
{
    if (op->kind->abandoned != NULL) {
        PyObject *exc = PyErr_GetRaisedException();
        op->kind->abandoned(op);
        PyErr_SetRaisedException(exc);
    }
}

/* Given up while waiting (cancelled, closed, thrown into). */
static void sockop_abandon(tl_sockop *op)
{
    if (op->state != OP_WAITING)
        return;
    sockop_unwatch(op);
    sockop_call_abandoned(op);
    /* nobody else awaits it; a closed loop could not even schedule the
     * cancellation's callbacks */
    if (op->fut != NULL && !op->loop->closed) {
        PyObject *exc = PyErr_GetRaisedException();
        PyObject *r = PyObject_CallMethodNoArgs(op->fut, op->loop->st->str_cancel);
        if (r == NULL)
            PyErr_WriteUnraisable((PyObject *)op);
        Py_XDECREF(r);
        PyErr_SetRaisedException(exc);
    }
}

static int sockop_traverse(tl_sockop *op, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(op));
    Py_VISIT((PyObject *)op->loop);
    Py_VISIT(op->sock);
    Py_VISIT(op->arg);
    Py_VISIT(op->arg2);
    Py_VISIT(op->fut);
    Py_VISIT(op->fut_iter);
    Py_VISIT(op->made[0]);
    Py_VISIT(op->made[1]);
    return 0;
}

static int sockop_clear(tl_sockop *op)
{
    sockop_release(op);
    Py_CLEAR(op->sock);
    return 0;
}

static void sockop_finalize(tl_sockop *op)
{
    if (op->state == OP_WAITING) {
        sockop_abandon(op);
        sockop_finish(op);
    }
}

static void sockop_dealloc(tl_sockop *op)
{
    PyTypeObject *tp = Py_TYPE(op);
    if (PyObject_CallFinalizerFromDealloc((PyObject *)op) < 0)
        return;
    PyObject_GC_UnTrack(op);
    sockop_clear(op);
    Py_CLEAR(op->loop);
    tp->tp_free(op);
    Py_DECREF(tp);
}

/* ---- running --------------------------------------------------------------- */

static int sockop_fetch_fd(tl_sockop *op)
{
    if (op->fd >= 0)
        return 0;
    PyObject *fd = PyObject_CallMethodNoArgs(op->sock, op->loop->st->str_fileno);
    if (fd == NULL)
        return -1;
    long v = PyLong_AsLong(fd);
    Py_DECREF(fd);
    if (v == -1 && PyErr_Occurred())
        return -1;
    if (v < 0 || v > INT32_MAX) {
        /* closed (by another task, between the attempt and the wait):
         * asyncio's selector refuses the registration so */
        PyErr_Format(PyExc_ValueError, "Invalid file descriptor: %ld", v);
        return -1;
    }
    op->fd = (int)v;
    return 0;
}

/* base_events._check_ssl_socket() and the debug-mode blocking check */
static int sockop_check_socket(tl_sockop *op)
{
    tl_state *st = op->loop->st;
    PyObject *sock = op->sock;
    op->direct = Py_IS_TYPE(sock, (PyTypeObject *)st->socket_cls);
    if (!op->direct && st->ssl_socket_cls != Py_None) {
        int is_ssl = PyObject_IsInstance(sock, st->ssl_socket_cls);
        if (is_ssl < 0)
            return -1;
        if (is_ssl) {
            PyErr_SetString(PyExc_TypeError, "Socket cannot be of type SSLSocket");
            return -1;
        }
    }
    if (TL_UNLIKELY(op->loop->debug)) {
        PyObject *timeout = tl_call_method(sock, "gettimeout", NULL);
        PyObject *zero = timeout ? PyLong_FromLong(0) : NULL;
        int blocking = zero ? PyObject_RichCompareBool(timeout, zero, Py_NE) : -1;
        Py_XDECREF(timeout);
        Py_XDECREF(zero);
        if (blocking < 0)
            return -1;
        if (blocking) {
            PyErr_SetString(PyExc_ValueError, "the socket must be non-blocking");
            return -1;
        }
    }
    return op->direct ? sockop_fetch_fd(op) : 0;
}

static int sockop_start_wait(tl_sockop *op)
{
    tl_loop *loop = op->loop;
    if (tl_loop_check_closed(loop) < 0 || sockop_fetch_fd(op) < 0)
        return -1;
    PyObject *fut = PyObject_CallMethodNoArgs((PyObject *)loop, loop->st->str_create_future);
    if (fut == NULL)
        return -1;
    op->fut = fut;
    if (tl_io_ensure_no_transport(loop, op->sock, op->fd) < 0)
        return -1;
    PyAsyncMethods *am = Py_TYPE(fut)->tp_as_async;
    op->fut_iter = (am && am->am_await) ? am->am_await(fut)
                                        : tl_call_method(fut, "__await__", NULL);
    if (op->fut_iter == NULL)
        return -1;
    ev_io_set(&op->wait.io, op->fd, op->kind->events);
    /* closed under us: OSError, as asyncio's add_reader() raises */
    if (tl_io_queue_join(loop, &op->wait) < 0)
        return -1;
    op->held = 1;
    Py_INCREF(op);
    tl_loop_link_add(loop, &op->link);
    op->state = OP_WAITING;
    return 0;
}

/* Await `fut` (stolen) through its own __await__, no watcher involved. */
static int sockop_await_future(tl_sockop *op, PyObject *fut)
{
    Py_CLEAR(op->fut_iter);
    Py_XSETREF(op->fut, fut);
    PyAsyncMethods *am = Py_TYPE(fut)->tp_as_async;
    op->fut_iter = (am && am->am_await) ? am->am_await(fut)
                                        : tl_call_method(fut, "__await__", NULL);
    if (op->fut_iter == NULL)
        return -1;
    op->state = OP_WAITING;
    return 0;
}

static PySendResult sockop_forward(tl_sockop *op, PyObject *arg, PyObject **result)
{
    for (;;) {
        PySendResult r = PyIter_Send(op->fut_iter, arg, result);
        if (r == PYGEN_NEXT)
            return r;
        if (r == PYGEN_ERROR || op->kind->then == NULL) {
            if (r == PYGEN_ERROR)
                sockop_call_abandoned(op);
            sockop_finish(op);
            return r;
        }
        /* the next stage, in the awaiting task's context */
        sockop_unwatch(op);
        PyObject *value = *result;
        *result = NULL;
        int t = op->kind->then(op, value, result);
        if (t == 2) {
            PyObject *fut = *result;
            *result = NULL;
            if (sockop_await_future(op, fut) == 0) {
                arg = Py_None;
                continue;
            }
            t = -1;
        }
        if (t != 1)
            sockop_call_abandoned(op);
        sockop_finish(op);
        return t == 1 ? PYGEN_RETURN : PYGEN_ERROR;
    }
}

static PySendResult sockop_am_send_unlocked(tl_sockop *op, PyObject *arg, PyObject **result)
{
    *result = NULL;
    if (op->state == OP_WAITING)
        return sockop_forward(op, arg, result);
    if (op->state != OP_NEW) {
        PyErr_SetString(PyExc_RuntimeError,
                        op->state == OP_RUNNING ? "coroutine already executing"
                                                : "cannot reuse already awaited coroutine");
        return PYGEN_ERROR;
    }
    if (arg != Py_None) {
        PyErr_SetString(PyExc_TypeError,
                        "can't send non-None value to a just-started coroutine");
        return PYGEN_ERROR;
    }
    op->state = OP_RUNNING;
    if (op->kind->checks_socket && sockop_check_socket(op) < 0)
        goto error;
    int r = op->kind->attempt(op, result);
    if (r == 1) {
        sockop_finish(op);
        return PYGEN_RETURN;
    }
    if (r == 2) {
        PyObject *fut = *result;
        *result = NULL;
        if (sockop_await_future(op, fut) < 0)
            goto error;
        return sockop_forward(op, Py_None, result);
    }
    if (r < 0 || sockop_start_wait(op) < 0)
        goto error;
    return sockop_forward(op, Py_None, result);
error:
    sockop_call_abandoned(op);
    if (op->fut != NULL) {
        /* the wait could not start: nobody will ever see this future */
        PyObject *exc = PyErr_GetRaisedException();
        PyObject *c = PyObject_CallMethodNoArgs(op->fut, op->loop->st->str_cancel);
        Py_XDECREF(c);
        PyErr_Clear();
        PyErr_SetRaisedException(exc);
    }
    sockop_finish(op);
    *result = NULL;
    return PYGEN_ERROR;
}

/* The operation's fd was closed under it: OSError(EBADF), as the system
 * call would have said. */
static void sockop_fail_closed(tl_sockop *op)
{
    Py_INCREF(op);
    sockop_unwatch(op);
    PyObject *d = PyObject_CallMethodNoArgs(op->fut, op->loop->st->str_done);
    int done = d ? PyObject_IsTrue(d) : -1;
    Py_XDECREF(d);
    PyObject *res = NULL;
    if (done == 0) {

        PyObject *exc = PyObject_CallFunction(PyExc_OSError, "is", EBADF, strerror(EBADF));
        res = exc ? PyObject_CallMethodOneArg(op->fut, op->loop->st->str_set_exception, exc)
                  : NULL;
        Py_XDECREF(exc);
    }
    if (done < 0 || (done == 0 && res == NULL))
        PyErr_WriteUnraisable((PyObject *)op);
    Py_XDECREF(res);
    Py_DECREF(op);
}

static void sockop_ready(tl_sockop *op);

/* The poll reported the fd while callbacks queued before it wait
 * (tl_loop_io_behind): the attempt comes after them, as asyncio's reader
 * handle does; a cancel among them leaves the data (or the connection to
 * accept) for the next caller. The operation may be over by then. */
static int sockop_ready_later(tl_loop *loop, PyObject *obj)
{
    tl_sockop *op = (tl_sockop *)obj;
    if (ev_is_active(&op->wait.io))
        sockop_ready(op);
    return tl_loop_raise_deferred(loop);
}

static void sockop_io_cb(struct ev_loop *ev, ev_io *w, int revents)
{
    TL_UNUSED(ev);
    tl_sockop *op = (tl_sockop *)((char *)w - offsetof(tl_sockop, wait.io));
    if (TL_UNLIKELY(revents & EV_ERROR)) {
        /* libev dropped the fd: closed, found when a watcher of the same
         * number was registered. No attempt: the number may name another
         * file by now, whose data is not ours */
        sockop_fail_closed(op);
        return;
    }
    if (TL_UNLIKELY(tl_loop_io_behind(op->loop))) {
        if (tl_loop_push_ready(op->loop, sockop_ready_later, Py_NewRef((PyObject *)op)) < 0)
            tl_loop_defer_error(op->loop);
        return;
    }
    sockop_ready(op);
}

static void sockop_ready(tl_sockop *op)
{
    tl_state *st = op->loop->st;
    Py_INCREF(op);
    op->waited = 1;
    /* cancelled meanwhile: leave the data for whoever reads next */
    PyObject *d = PyObject_CallMethodNoArgs(op->fut, st->str_done);
    int done = d ? PyObject_IsTrue(d) : -1;
    Py_XDECREF(d);
    if (done != 0) {
        if (done < 0)
            PyErr_WriteUnraisable((PyObject *)op);
        sockop_unwatch_passing(op, 1);
        goto out;
    }
    PyObject *value = NULL;
    int r = op->kind->attempt(op, &value);
    if (r == 0)
        goto out;
    sockop_unwatch_passing(op, 1);
    PyObject *res;
    if (r > 0) {
        res = PyObject_CallMethodOneArg(op->fut, st->str_set_result, value);
        Py_DECREF(value);
    } else if (PyErr_ExceptionMatches(PyExc_SystemExit) ||
               PyErr_ExceptionMatches(PyExc_KeyboardInterrupt)) {
        tl_loop_defer_error(op->loop);
        goto out;
    } else {
        PyObject *exc = PyErr_GetRaisedException();
        res = PyObject_CallMethodOneArg(op->fut, st->str_set_exception, exc);
        Py_DECREF(exc);
    }
    if (res == NULL)
        PyErr_WriteUnraisable((PyObject *)op);
    Py_XDECREF(res);
out:
    Py_DECREF(op);
}

/* ---- the coroutine protocol -------------------------------------------------- */

/* Steps run in tasks, on workers of a threaded loop: under the loop lock. */
static PySendResult sockop_am_send(tl_sockop *op, PyObject *arg, PyObject **result)
{
    tl_loop *loop = op->loop;
    int locked = loop != NULL ? tl_loop_ev_lock(loop) : 0;
    PySendResult r = sockop_am_send_unlocked(op, arg, result);
    if (locked)
        tl_loop_ev_unlock(loop, locked);
    return r;
}

static PyObject *result_to_stop(PySendResult r, PyObject *value)
{
    if (r == PYGEN_NEXT)
        return value;
    if (r == PYGEN_RETURN) {
        if (value == Py_None) {
            PyErr_SetNone(PyExc_StopIteration);
        } else {
            PyObject *exc = PyObject_CallOneArg(PyExc_StopIteration, value);
            if (exc != NULL) {
                PyErr_SetObject(PyExc_StopIteration, exc);
                Py_DECREF(exc);
            }
        }
        Py_DECREF(value);
    }
    return NULL;
}

static PyObject *sockop_iternext(tl_sockop *op)
{
    PyObject *value;
    PySendResult r = sockop_am_send(op, Py_None, &value);
    if (r == PYGEN_RETURN && value == Py_None) {
        /* tp_iternext may end without StopIteration set */
        Py_DECREF(value);
        return NULL;
    }
    return result_to_stop(r, value);
}

static PyObject *sockop_send(tl_sockop *op, PyObject *arg)
{
    PyObject *value;
    PySendResult r = sockop_am_send(op, arg, &value);
    return result_to_stop(r, value);
}

static PyObject *sockop_throw(tl_sockop *op, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs < 1 || nargs > 3) {
        PyErr_Format(PyExc_TypeError, "throw expected at least 1 argument, got %zd", nargs);
        return NULL;
    }
    if (op->state == OP_WAITING && op->fut_iter != NULL) {
        PyObject *meth = tl_getattr(op->fut_iter, "throw");
        PyObject *r = meth ? PyObject_Vectorcall(meth, args, (size_t)nargs, NULL) : NULL;
        Py_XDECREF(meth);
        if (r != NULL)
            return r;
        sockop_abandon(op);
        sockop_finish(op);
        return NULL;
    }
    sockop_finish(op);
    PyObject *typ = args[0];
    PyObject *val = nargs > 1 && args[1] != Py_None ? args[1] : NULL;
    if (PyExceptionInstance_Check(typ)) {
        PyErr_SetObject((PyObject *)Py_TYPE(typ), typ);
    } else if (PyExceptionClass_Check(typ)) {
        PyErr_SetObject(typ, val);
    } else {
        PyErr_Format(PyExc_TypeError,
                     "exceptions must be classes or instances deriving from "
                     "BaseException, not %s", Py_TYPE(typ)->tp_name);
    }
    return NULL;
}

static PyObject *sockop_close(tl_sockop *op, PyObject *Py_UNUSED(ignored))
{
    sockop_abandon(op);
    sockop_finish(op);
    Py_RETURN_NONE;
}

static PyObject *sockop_await(tl_sockop *op)
{
    return Py_NewRef(op);
}

static PyObject *sockop_repr(tl_sockop *op)
{
    static const char *states[] = {"created", "running", "waiting", "done"};
    return PyUnicode_FromFormat("<%s %s fd=%d>", op->kind->qualname, states[op->state], op->fd);
}

static PyObject *sockop_get_qualname(tl_sockop *op, void *c)
{
    TL_UNUSED(c);
    return PyUnicode_FromString(op->kind->qualname);
}

static PyObject *sockop_get_name(tl_sockop *op, void *c)
{
    TL_UNUSED(c);
    const char *dot = strrchr(op->kind->qualname, '.');
    return PyUnicode_FromString(dot ? dot + 1 : op->kind->qualname);
}

static PyObject *sockop_get_running(tl_sockop *op, void *c)
{
    TL_UNUSED(c);
    return PyBool_FromLong(op->state == OP_RUNNING);
}

static PyObject *sockop_get_await(tl_sockop *op, void *c)
{
    TL_UNUSED(c);
    return Py_NewRef(op->fut ? op->fut : Py_None);
}

static PyGetSetDef sockop_getset[] = {
    {"__qualname__", (getter)sockop_get_qualname, NULL, NULL, NULL},
    {"__name__", (getter)sockop_get_name, NULL, NULL, NULL},
    {"cr_running", (getter)sockop_get_running, NULL, NULL, NULL},
    {"cr_await", (getter)sockop_get_await, NULL, NULL, NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

TL_LOCKED_FASTCALL(sockop_throw_locked, sockop_throw, tl_sockop, self->loop)
TL_LOCKED_NOARGS(sockop_close_locked, sockop_close, tl_sockop, self->loop)

static PyMethodDef sockop_methods[] = {
    {"send", (PyCFunction)sockop_send, METH_O, NULL},
    {"throw", (PyCFunction)(void (*)(void))sockop_throw_locked, METH_FASTCALL, NULL},
    {"close", (PyCFunction)sockop_close_locked, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot sockop_slots[] = {
    {Py_tp_dealloc, sockop_dealloc},
    {Py_tp_finalize, sockop_finalize},
    {Py_tp_traverse, sockop_traverse},
    {Py_tp_clear, sockop_clear},
    {Py_tp_repr, sockop_repr},
    {Py_tp_iter, PyObject_SelfIter},
    {Py_tp_iternext, sockop_iternext},
    {Py_tp_methods, sockop_methods},
    {Py_tp_getset, sockop_getset},
    {Py_am_await, sockop_await},
    {Py_am_send, sockop_am_send},
    {Py_tp_doc, "A pending low-level socket operation of the loop (a coroutine)."},
    {0, NULL},
};

static PyType_Spec sockop_spec = {
    .name = "tonio_loop._core.SockOp",
    .basicsize = sizeof(tl_sockop),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = sockop_slots,
};

/* ---- the operations ------------------------------------------------------------ */

/* asyncio calls the socket's own method: try it, "would block" is 0 */
int tl_sockop_call_attempt(PyObject *r, PyObject **result)
{
    if (r != NULL) {
        *result = r;
        return 1;
    }
    if (PyErr_ExceptionMatches(PyExc_BlockingIOError) ||
        PyErr_ExceptionMatches(PyExc_InterruptedError)) {
        PyErr_Clear();
        return 0;
    }
    return -1;
}

static int syscall_failed(void)
{
    if (tl_sockop_would_block(errno))
        return 0;
    PyErr_SetFromErrno(PyExc_OSError);
    return -1;
}

/* sock.recv(n) */
static int recv_attempt(tl_sockop *op, PyObject **result)
{
    if (!op->direct)
        return tl_sockop_call_attempt(tl_call_method(op->sock, "recv", "(O)", op->arg), result);
    Py_ssize_t n = PyNumber_AsSsize_t(op->arg, PyExc_OverflowError);
    if (n == -1 && PyErr_Occurred())
        return -1;
    if (n < 0) {
        PyErr_SetString(PyExc_ValueError, "negative buffersize in recv");
        return -1;
    }
    if (n == 0) {
        /* socket.recv(0): b'' at once, data or not */
        *result = PyBytes_FromStringAndSize(NULL, 0);
        return *result ? 1 : -1;
    }
    if (n > TL_RECV_SHARED_MAX) {
        /* more than the loop's buffer: socket.recv's own way */
        PyObject *bytes = PyBytes_FromStringAndSize(NULL, n);
        if (bytes == NULL)
            return -1;
        ssize_t got = recv(op->fd, PyBytes_AS_STRING(bytes), (size_t)n, MSG_DONTWAIT);
        if (got < 0) {
            Py_DECREF(bytes);
            return syscall_failed();
        }
        if (got != n && _PyBytes_Resize(&bytes, got) < 0)
            return -1;
        *result = bytes;
        return 1;
    }
    /* an operation has no history to size a direct read by */
    int32_t last = 0;
    ssize_t got = tl_read_bytes(op->loop, op->fd, n, 1, &last, result);
    if (got == -2)
        return -1;
    if (got < 0)
        return syscall_failed();
    if (got == 0)
        *result = PyBytes_FromStringAndSize(NULL, 0);
    return *result ? 1 : -1;
}

/* sock.recv_into(buf) */
static int recv_into_attempt(tl_sockop *op, PyObject **result)
{
    if (op->direct && !op->has_view) {
        if (PyObject_GetBuffer(op->arg, &op->view, PyBUF_WRITABLE) < 0) {
            PyErr_Clear();     /* let the socket say what is wrong with it */
            op->direct = 0;
        } else {
            op->has_view = 1;
        }
    }
    if (!op->direct)
        return tl_sockop_call_attempt(tl_call_method(op->sock, "recv_into", "(O)", op->arg), result);
    if (op->view.len == 0) {
        *result = PyLong_FromLong(0);   /* an empty buffer: 0 at once */
        return *result ? 1 : -1;
    }
    ssize_t got = recv(op->fd, op->view.buf, (size_t)op->view.len, MSG_DONTWAIT);
    if (got < 0)
        return syscall_failed();
    *result = PyLong_FromSsize_t(got);
    return *result ? 1 : -1;
}

/* sock.recvfrom(bufsize) */
static int recvfrom_attempt(tl_sockop *op, PyObject **result)
{
    return tl_sockop_call_attempt(tl_call_method(op->sock, "recvfrom", "(O)", op->arg), result);
}

/* sock.recvfrom_into(buf, nbytes or len(buf)) */
static int recvfrom_into_attempt(tl_sockop *op, PyObject **result)
{
    int given = PyObject_IsTrue(op->arg2);
    if (given < 0)
        return -1;
    if (!given) {
        Py_ssize_t n = PyObject_Size(op->arg);
        if (n < 0)
            return -1;
        Py_SETREF(op->arg2, PyLong_FromSsize_t(n));
        if (op->arg2 == NULL)
            return -1;
    }
    return tl_sockop_call_attempt(tl_call_method(op->sock, "recvfrom_into", "OO", op->arg, op->arg2),
                        result);
}

/* sock.send(data) until all of it went */
static int sendall_attempt(tl_sockop *op, PyObject **result)
{
    if (op->direct && !op->has_view) {
        if (PyObject_GetBuffer(op->arg, &op->view, PyBUF_SIMPLE) < 0) {
            PyErr_Clear();
            op->direct = 0;
        } else {
            op->has_view = 1;
        }
    }
    if (op->direct) {
        while (op->pos < op->view.len) {
            ssize_t n = send(op->fd, (char *)op->view.buf + op->pos,
                             (size_t)(op->view.len - op->pos), MSG_DONTWAIT | MSG_NOSIGNAL);
            if (n < 0)
                return syscall_failed();
            op->pos += n;
        }
        *result = Py_NewRef(Py_None);
        return 1;
    }
    /* asyncio: sock.send(data), then sock.send(memoryview(data)[pos:]) */
    for (;;) {
        PyObject *chunk;
        if (op->pos == 0) {
            chunk = Py_NewRef(op->arg);
        } else {
            if (op->arg2 == NULL && (op->arg2 = PyMemoryView_FromObject(op->arg)) == NULL)
                return -1;
            chunk = PySequence_GetSlice(op->arg2, op->pos, PY_SSIZE_T_MAX);
            if (chunk == NULL)
                return -1;
        }
        Py_ssize_t len = PyObject_Size(chunk);
        PyObject *sent = len < 0 ? NULL : tl_call_method(op->sock, "send", "(O)", chunk);
        Py_DECREF(chunk);
        if (len < 0)
            return -1;
        int r = tl_sockop_call_attempt(sent, &sent);
        if (r <= 0)
            return r;
        Py_ssize_t n = PyLong_AsSsize_t(sent);
        Py_DECREF(sent);
        if (n == -1 && PyErr_Occurred())
            return -1;
        op->pos += n;
        if (n >= len) {
            *result = Py_NewRef(Py_None);
            return 1;
        }
    }
}

/* sock.sendto(data, address) */
static int sendto_attempt(tl_sockop *op, PyObject **result)
{
    return tl_sockop_call_attempt(tl_call_method(op->sock, "sendto", "OO", op->arg, op->arg2), result);
}

/* conn, address = sock.accept(); conn.setblocking(False) */
static int accept_attempt(tl_sockop *op, PyObject **result)
{
    PyObject *pair = NULL;
    int r = tl_sockop_call_attempt(tl_call_method(op->sock, "accept", NULL), &pair);
    if (r <= 0)
        return r;
    if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2) {
        *result = pair;     /* a look-alike's own idea of a result */
        return 1;
    }
    PyObject *nb = tl_call_method(PyTuple_GET_ITEM(pair, 0), "setblocking", "(O)", Py_False);
    if (nb == NULL) {
        Py_DECREF(pair);
        return -1;
    }
    Py_DECREF(nb);
    *result = pair;
    return 1;
}

/* sock.connect(address); once writable, SO_ERROR says how it went */
static int connect_attempt(tl_sockop *op, PyObject **result)
{
    if (!op->waited) {
        PyObject *r = NULL;
        int rc = tl_sockop_call_attempt(tl_call_method(op->sock, "connect", "(O)", op->arg), &r);
        if (rc > 0) {
            Py_DECREF(r);
            *result = Py_NewRef(Py_None);
        }
        return rc;
    }
    return tl_sockop_connect_status(op, op->arg, result);
}

int tl_sockop_connect_status(tl_sockop *op, PyObject *address, PyObject **result)
{
    int err = 0;
    socklen_t len = sizeof(err);
    if (getsockopt(op->fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
        return syscall_failed();
    if (err != 0) {
        /* selector_events._sock_connect_cb's message */
        PyObject *where = PyObject_Str(address);
        PyObject *msg = where ? PyUnicode_FromFormat("Connect call failed %U", where) : NULL;
        PyObject *exc = msg ? PyObject_CallFunction(PyExc_OSError, "iO", err, msg) : NULL;
        Py_XDECREF(where);
        Py_XDECREF(msg);
        if (exc != NULL) {
            PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
            Py_DECREF(exc);
        }
        return -1;
    }
    *result = Py_NewRef(Py_None);
    return 1;
}

static const tl_sockop_kind recv_kind = {
    .qualname = "Loop.sock_recv",
    .events = EV_READ,
    .checks_socket = 1,
    .attempt = recv_attempt,
};
static const tl_sockop_kind recv_into_kind = {
    .qualname = "Loop.sock_recv_into",
    .events = EV_READ,
    .checks_socket = 1,
    .attempt = recv_into_attempt,
};
static const tl_sockop_kind recvfrom_kind = {
    .qualname = "Loop.sock_recvfrom",
    .events = EV_READ,
    .checks_socket = 1,
    .attempt = recvfrom_attempt,
};
static const tl_sockop_kind recvfrom_into_kind = {
    .qualname = "Loop.sock_recvfrom_into",
    .events = EV_READ,
    .checks_socket = 1,
    .attempt = recvfrom_into_attempt,
};
static const tl_sockop_kind sendall_kind = {
    .qualname = "Loop.sock_sendall",
    .events = EV_WRITE,
    .checks_socket = 1,
    .attempt = sendall_attempt,
};
static const tl_sockop_kind sendto_kind = {
    .qualname = "Loop.sock_sendto",
    .events = EV_WRITE,
    .checks_socket = 1,
    .attempt = sendto_attempt,
};
static const tl_sockop_kind accept_kind = {
    .qualname = "Loop.sock_accept",
    .events = EV_READ,
    .checks_socket = 1,
    .attempt = accept_attempt,
};
static const tl_sockop_kind connect_kind = {
    .qualname = "Loop.sock_connect",
    .events = EV_WRITE,
    .checks_socket = 0,
    .attempt = connect_attempt,
};

/* ---- the Loop methods ------------------------------------------------------------ */

/* Positional-or-keyword arguments the way a Python def takes them. */
static int parse_args(const char *fname, const char *const *names, int nreq, int nmax,
                      PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames,
                      PyObject **out)
{
    if (nargs > nmax) {
        PyErr_Format(PyExc_TypeError, "%s() takes %d positional arguments but %zd were given",
                     fname, nmax + 1, nargs + 1);
        return -1;
    }
    for (int i = 0; i < nmax; i++)
        out[i] = i < nargs ? args[i] : NULL;
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    for (Py_ssize_t k = 0; k < nkw; k++) {
        PyObject *key = PyTuple_GET_ITEM(kwnames, k);
        int which = -1;
        for (int i = 0; i < nmax; i++)
            if (PyUnicode_CompareWithASCIIString(key, names[i]) == 0)
                which = i;
        if (which < 0) {
            PyErr_Format(PyExc_TypeError, "%s() got an unexpected keyword argument '%S'",
                         fname, key);
            return -1;
        }
        if (out[which] != NULL) {
            PyErr_Format(PyExc_TypeError, "%s() got multiple values for argument '%s'",
                         fname, names[which]);
            return -1;
        }
        out[which] = args[nargs + k];
    }
    for (int i = 0; i < nreq; i++) {
        if (out[i] == NULL) {
            PyErr_Format(PyExc_TypeError, "%s() missing required argument: '%s'", fname,
                         names[i]);
            return -1;
        }
    }
    return 0;
}

static PyObject *make_op(tl_loop *loop, const tl_sockop_kind *kind, PyObject *sock,
                         PyObject *arg, PyObject *arg2)
{
    tl_sockop *op = tl_sockop_new(loop, kind, sock);
    if (op == NULL)
        return NULL;
    op->arg = Py_XNewRef(arg);
    op->arg2 = Py_XNewRef(arg2);
    return (PyObject *)op;
}

#define SOCK_METHOD(fn, pyname, kind, nreq, ...)                                        \
    static PyObject *fn(tl_loop *loop, PyObject *const *args, Py_ssize_t nargsf,        \
                        PyObject *kwnames)                                              \
    {                                                                                   \
        static const char *const names[] = {__VA_ARGS__};                               \
        PyObject *a[3] = {NULL, NULL, NULL};                                            \
        int nmax = (int)(sizeof(names) / sizeof(names[0]));                             \
        Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);                                  \
        if (TL_LIKELY(kwnames == NULL && nargs == nmax)) {                              \
            for (int i = 0; i < nmax; i++)                                              \
                a[i] = args[i];                                                         \
        } else if (parse_args(pyname, names, nreq, nmax, args, nargs, kwnames, a) < 0) { \
            return NULL;                                                                \
        }                                                                               \
        return make_op(loop, &kind, a[0], a[1], a[2]);                                  \
    }

SOCK_METHOD(loop_sock_recv, "sock_recv", recv_kind, 2, "sock", "n")
SOCK_METHOD(loop_sock_recv_into, "sock_recv_into", recv_into_kind, 2, "sock", "buf")
SOCK_METHOD(loop_sock_recvfrom, "sock_recvfrom", recvfrom_kind, 2, "sock", "bufsize")
SOCK_METHOD(loop_sock_sendall, "sock_sendall", sendall_kind, 2, "sock", "data")
SOCK_METHOD(loop_sock_accept, "sock_accept", accept_kind, 1, "sock")
SOCK_METHOD(loop_sock_connect_op, "_sock_connect", connect_kind, 2, "sock", "address")

static PyObject *loop_sock_recvfrom_into(tl_loop *loop, PyObject *const *args,
                                         Py_ssize_t nargsf, PyObject *kwnames)
{
    static const char *const names[] = {"sock", "buf", "nbytes"};
    PyObject *a[3];
    if (parse_args("sock_recvfrom_into", names, 2, 3, args, PyVectorcall_NARGS(nargsf),
                   kwnames, a) < 0)
        return NULL;
    PyObject *zero = NULL;
    if (a[2] == NULL)
        a[2] = zero = PyLong_FromLong(0);
    PyObject *op = a[2] ? make_op(loop, &recvfrom_into_kind, a[0], a[1], a[2]) : NULL;
    Py_XDECREF(zero);
    return op;
}

static PyObject *loop_sock_sendto(tl_loop *loop, PyObject *const *args, Py_ssize_t nargsf,
                                  PyObject *kwnames)
{
    static const char *const names[] = {"sock", "data", "address"};
    PyObject *a[3];
    if (parse_args("sock_sendto", names, 3, 3, args, PyVectorcall_NARGS(nargsf), kwnames, a) < 0)
        return NULL;
    return make_op(loop, &sendto_kind, a[0], a[1], a[2]);
}

#define SOCK_ENTRY(name, fn, doc) \
    {name, (PyCFunction)(void (*)(void))fn, METH_FASTCALL | METH_KEYWORDS, doc}

PyMethodDef tl_sock_loop_methods[] = {
    SOCK_ENTRY("sock_recv", loop_sock_recv,
               "sock_recv(sock, n)\n--\n\nReceive up to n bytes from sock (a coroutine)."),
    SOCK_ENTRY("sock_recv_into", loop_sock_recv_into,
               "sock_recv_into(sock, buf)\n--\n\nReceive data from sock into buf."),
    SOCK_ENTRY("sock_recvfrom", loop_sock_recvfrom,
               "sock_recvfrom(sock, bufsize)\n--\n\nReceive a datagram from sock."),
    SOCK_ENTRY("sock_recvfrom_into", loop_sock_recvfrom_into,
               "sock_recvfrom_into(sock, buf, nbytes=0)\n--\n\nReceive a datagram into buf."),
    SOCK_ENTRY("sock_sendall", loop_sock_sendall,
               "sock_sendall(sock, data)\n--\n\nSend all of data to sock."),
    SOCK_ENTRY("sock_sendto", loop_sock_sendto,
               "sock_sendto(sock, data, address)\n--\n\nSend a datagram to address."),
    SOCK_ENTRY("sock_accept", loop_sock_accept,
               "sock_accept(sock)\n--\n\nAccept a connection: (conn, address)."),
    SOCK_ENTRY("_sock_connect", loop_sock_connect_op, NULL),
    {NULL, NULL, 0, NULL},
};

int tl_sock_init_module(PyObject *module, tl_state *st)
{
    st->sockop_type = (PyTypeObject *)PyType_FromModuleAndSpec(module, &sockop_spec, NULL);
    if (st->sockop_type == NULL)
        return -1;
    /* so asyncio.iscoroutine() and create_task() take it */
    PyObject *abc = PyImport_ImportModule("collections.abc");
    PyObject *coro = abc ? tl_getattr(abc, "Coroutine") : NULL;
    Py_XDECREF(abc);
    PyObject *r = coro ? tl_call_method(coro, "register", "(O)",
                                             (PyObject *)st->sockop_type) : NULL;
    Py_XDECREF(coro);
    if (r == NULL)
        return -1;
    Py_DECREF(r);
    return PyModule_AddType(module, st->sockop_type);
}

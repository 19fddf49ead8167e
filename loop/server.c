/* server.c - accepting connections for asyncio.Server.
 *
 * asyncio's Server object (base_events.Server) drives serving through two
 * loop methods: _start_serving(protocol_factory, sock, ...) and
 * _stop_serving(sock). Ours registers a Listener as the reader of the
 * listening socket (like asyncio's _accept_connection handle, so
 * _remove_reader stops it); when the socket is readable it accepts up to
 * `backlog` connections in C and makes each one's protocol and transport on
 * the spot: no task and no future per connection.
 */
#include <errno.h>
#include <sys/socket.h>
#include <unistd.h>

#include "tl_stream.h"
#include "tl_io.h"
#include "tl_sockaddr.h"
#include "tl_tls.h"

#define TL_ACCEPT_RETRY_DELAY 1.0   /* asyncio.constants.ACCEPT_RETRY_DELAY */

typedef struct {
    PyObject_HEAD
    tl_loop *loop;
    PyObject *protocol_factory;
    PyObject *sock;
    PyObject *sslcontext;
    PyObject *server;
    PyObject *handshake_timeout;
    PyObject *shutdown_timeout;
    PyObject *context;      /* 3.15's Server context: each connection runs in
                               a copy of it; NULL: the listener's own */
    int fd;
    int backlog;
    int starved;            /* accept() ran out of fds: said so already */
} tl_listener;

static int listener_traverse(tl_listener *l, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(l));
    Py_VISIT((PyObject *)l->loop);
    Py_VISIT(l->protocol_factory);
    Py_VISIT(l->sock);
    Py_VISIT(l->sslcontext);
    Py_VISIT(l->server);
    Py_VISIT(l->handshake_timeout);
    Py_VISIT(l->shutdown_timeout);
    Py_VISIT(l->context);
    return 0;
}

static int listener_clear(tl_listener *l)
{
    Py_CLEAR(l->loop);
    Py_CLEAR(l->protocol_factory);
    Py_CLEAR(l->sock);
    Py_CLEAR(l->sslcontext);
    Py_CLEAR(l->server);
    Py_CLEAR(l->handshake_timeout);
    Py_CLEAR(l->shutdown_timeout);
    Py_CLEAR(l->context);
    return 0;
}

static void listener_dealloc(tl_listener *l)
{
    PyTypeObject *tp = Py_TYPE(l);
    PyObject_GC_UnTrack(l);
    listener_clear(l);
    tp->tp_free(l);
    Py_DECREF(tp);
}

static PyObject *listener_repr(tl_listener *l)
{
    return PyUnicode_FromFormat("<Listener fd=%d server=%R>", l->fd,
                                l->server ? l->server : Py_None);
}

/* The server in debug mode says what happened (asyncio logs the same). */
static void listener_debug_accept(tl_listener *l, const struct sockaddr *sa, socklen_t sl, int fd)
{
    PyObject *exc = PyErr_GetRaisedException();
    PyObject *addr = tl_sockaddr_to_py(sa, sl);
    PyObject *r = addr ? tl_call_method(l->loop->st->logger, "debug", "sOOi",
                                             "%r got a new connection from %r: fd=%d",
                                             l->server, addr, fd) : NULL;
    if (r == NULL)
        PyErr_WriteUnraisable((PyObject *)l);
    Py_XDECREF(r);
    Py_XDECREF(addr);
    PyErr_SetRaisedException(exc);
}

/* asyncio only reports a connection it could not set up in debug mode. */
static int listener_setup_failed(tl_listener *l, PyObject *protocol)
{
    if (PyErr_ExceptionMatches(PyExc_SystemExit) ||
        PyErr_ExceptionMatches(PyExc_KeyboardInterrupt))
        return -1;
    if (!l->loop->debug) {
        PyErr_Clear();
        return 0;
    }
    PyObject *extra = NULL;
    if (protocol != NULL) {
        extra = Py_BuildValue("{sO}", "protocol", protocol);
        if (extra == NULL)
            return -1;
    }
    PyObject *msg = PyUnicode_FromString("Error on transport creation for incoming connection");
    int rc = msg ? tl_loop_report_exception(l->loop, msg, extra) : -1;
    Py_XDECREF(msg);
    Py_XDECREF(extra);
    return rc;
}

/* The connection's protocol and transport, made now; with TLS, the TLS
 * transport over the socket transport (what asyncio's _accept_connection2
 * makes in a task, without the task). */
static int listener_accept_here(tl_listener *l, int fd, const struct sockaddr *sa,
                                socklen_t sl, int tls);

/* asyncio 3.15 runs each connection (its protocol factory, its transport's
 * callbacks) in a copy of the Server's context. */
static int listener_accept(tl_listener *l, int fd, const struct sockaddr *sa, socklen_t sl,
                           int tls)
{
    if (l->context == NULL)
        return listener_accept_here(l, fd, sa, sl, tls);
    PyObject *ctx = PyContext_Copy(l->context);
    if (ctx == NULL || PyContext_Enter(ctx) < 0) {
        Py_XDECREF(ctx);
        close(fd);
        return -1;
    }
    int rc = listener_accept_here(l, fd, sa, sl, tls);
    PyObject *exc = rc < 0 ? PyErr_GetRaisedException() : NULL;
    if (PyContext_Exit(ctx) < 0)
        rc = -1;
    else if (exc != NULL)
        PyErr_SetRaisedException(exc);
    Py_DECREF(ctx);
    return rc;
}

static int listener_accept_here(tl_listener *l, int fd, const struct sockaddr *sa,
                                socklen_t sl, int tls)
{
    PyObject *protocol = PyObject_CallNoArgs(l->protocol_factory);
    if (protocol == NULL) {
        close(fd);
        return listener_setup_failed(l, NULL);
    }
    PyObject *proto = protocol;     /* what the socket transport talks to */
    if (tls) {
        proto = tl_tls_new(l->loop, protocol, l->sslcontext, NULL, 1, NULL, 1,
                           l->handshake_timeout, l->shutdown_timeout, 1);
        if (proto == NULL) {
            close(fd);
            int rc = listener_setup_failed(l, protocol);
            Py_DECREF(protocol);
            return rc;
        }
    }
    PyObject *t = tl_socket_transport_new(l->loop, fd, NULL, proto, NULL, NULL, l->server,
                                       sa, sl);
    if (tls)
        Py_DECREF(proto);
    if (t == NULL) {
        close(fd);
        int rc = listener_setup_failed(l, protocol);
        Py_DECREF(protocol);
        return rc;
    }
    /* the ready queue, then the reader, keep it alive */
    Py_DECREF(t);
    Py_DECREF(protocol);
    return 0;
}

/* Out of fds (or memory): asyncio stops accepting for a second and tries
 * again. It would also report the error up to `backlog` times per wake-up;
 * we say so once per outage. */
static PyObject *listener_starved(tl_listener *l, int err)
{
    tl_loop *loop = l->loop;
    if (!l->starved) {
        l->starved = 1;
        errno = err;
        PyErr_SetFromErrno(PyExc_OSError);
        PyObject *exc = PyErr_GetRaisedException();
        PyObject *view = PyObject_CallOneArg(loop->st->transport_socket_cls, l->sock);
        PyObject *ctx = view ? Py_BuildValue("{sssOsO}", "message",
                                             "socket.accept() out of system resource",
                                             "exception", exc, "socket", view) : NULL;
        Py_XDECREF(view);
        Py_DECREF(exc);
        if (ctx == NULL)
            return NULL;
        int rc = tl_loop_report(loop, ctx);
        Py_DECREF(ctx);
        if (rc < 0)
            return NULL;
    }
    PyObject *fd = PyLong_FromLong(l->fd);
    PyObject *r = fd ? tl_call_method((PyObject *)loop, "_remove_reader", "(O)", fd) : NULL;
    Py_XDECREF(fd);
    if (r == NULL)
        return NULL;
    Py_DECREF(r);
    PyObject *retry = tl_getattr((PyObject *)l, "_retry");
    r = retry ? tl_call_method((PyObject *)loop, "call_later", "dO",
                                    TL_ACCEPT_RETRY_DELAY, retry) : NULL;
    Py_XDECREF(retry);
    if (r == NULL)
        return NULL;
    Py_DECREF(r);
    Py_RETURN_NONE;
}

/* Serve again after a starved accept(), unless the server closed meanwhile. */
static PyObject *listener_retry(tl_listener *l, PyObject *Py_UNUSED(ignored))
{
    if (l->loop->closed)
        Py_RETURN_NONE;
    PyObject *fdobj = PyObject_CallMethodNoArgs(l->sock, l->loop->st->str_fileno);
    if (fdobj == NULL)
        return NULL;
    long fd = PyLong_AsLong(fdobj);
    PyObject *r = NULL;
    if (fd == l->fd)
        r = tl_call_method((PyObject *)l->loop, "_add_reader", "OO", fdobj, (PyObject *)l);
    Py_DECREF(fdobj);
    if (fd != l->fd)
        Py_RETURN_NONE;
    if (r == NULL)
        return NULL;
    Py_DECREF(r);
    Py_RETURN_NONE;
}

static PyObject *listener_call_unlocked(tl_listener *l, PyObject *args, PyObject *kwds)
{
    if (PyTuple_GET_SIZE(args) || (kwds && PyDict_GET_SIZE(kwds))) {
        PyErr_SetString(PyExc_TypeError, "Listener() takes no arguments");
        return NULL;
    }
    int tls = l->sslcontext != Py_None ? PyObject_IsTrue(l->sslcontext) : 0;
    if (tls < 0)
        return NULL;
    for (int i = 0; i < l->backlog; i++) {
        struct sockaddr_storage ss;
        socklen_t sl = sizeof(ss);
        int fd = accept4(l->fd, (struct sockaddr *)&ss, &sl, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            int err = errno;
            if (err == EAGAIN || err == EWOULDBLOCK || err == EINTR || err == ECONNABORTED)
                Py_RETURN_NONE;
            if (err == EMFILE || err == ENFILE || err == ENOBUFS || err == ENOMEM)
                return listener_starved(l, err);
            errno = err;
            /* the handle reports it, as asyncio's raise does */
            return PyErr_SetFromErrno(PyExc_OSError);
        }
        l->starved = 0;
        if (TL_UNLIKELY(l->loop->debug))
            listener_debug_accept(l, (struct sockaddr *)&ss, sl, fd);
        int rc = listener_accept(l, fd, (struct sockaddr *)&ss, sl, tls);
        if (rc < 0)
            return NULL;
    }
    Py_RETURN_NONE;
}

/* The accept callback runs on a worker of a threaded loop: it makes
 * transports, so it holds the loop lock (tl_loop.h). */
TL_LOCKED_VARARGS_KW(listener_call, listener_call_unlocked, tl_listener, self->loop)
TL_LOCKED_NOARGS(listener_retry_locked, listener_retry, tl_listener, self->loop)

static PyMethodDef listener_methods[] = {
    {"_retry", (PyCFunction)listener_retry_locked, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot listener_slots[] = {
    {Py_tp_dealloc, listener_dealloc},
    {Py_tp_traverse, listener_traverse},
    {Py_tp_clear, listener_clear},
    {Py_tp_repr, listener_repr},
    {Py_tp_call, listener_call},
    {Py_tp_methods, listener_methods},
    {Py_tp_doc, "Accepts the connections of one listening socket of an asyncio.Server."},
    {0, NULL},
};

static PyType_Spec listener_spec = {
    .name = "tonio_loop._core.Listener",
    .basicsize = sizeof(tl_listener),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = listener_slots,
};

/* loop._start_serving(protocol_factory, sock, sslcontext=None, server=None,
 *                     backlog=100, ssl_handshake_timeout=..., ssl_shutdown_timeout=...,
 *                     context=None)   (context: 3.15's Server passes its own) */
static PyObject *loop_start_serving(tl_loop *loop, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"protocol_factory", "sock", "sslcontext", "server", "backlog",
                             "ssl_handshake_timeout", "ssl_shutdown_timeout", "context", NULL};
    PyObject *factory, *sock, *sslcontext = Py_None, *server = Py_None;
    PyObject *hs = NULL, *sd = NULL, *context = Py_None;
    int backlog = 100;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OO|OOiOOO:_start_serving", kwlist, &factory,
                                     &sock, &sslcontext, &server, &backlog, &hs, &sd,
                                     &context))
        return NULL;
    if (context != Py_None && !PyContext_CheckExact(context)) {
        PyErr_Format(PyExc_TypeError, "context must be a contextvars.Context, not %.100s",
                     Py_TYPE(context)->tp_name);
        return NULL;
    }
    int fd = tl_io_fileobj_to_fd(sock);
    if (fd < 0)
        return NULL;
    tl_listener *l = PyObject_GC_New(tl_listener, loop->st->listener_type);
    if (l == NULL)
        return NULL;
    l->loop = (tl_loop *)Py_NewRef((PyObject *)loop);
    l->protocol_factory = Py_NewRef(factory);
    l->sock = Py_NewRef(sock);
    l->sslcontext = Py_NewRef(sslcontext);
    l->server = Py_NewRef(server);
    l->handshake_timeout = hs ? Py_NewRef(hs) : PyFloat_FromDouble(60.0);
    l->shutdown_timeout = sd ? Py_NewRef(sd) : PyFloat_FromDouble(30.0);
    l->context = context != Py_None ? Py_NewRef(context) : NULL;
    l->fd = fd;
    l->backlog = backlog;
    l->starved = 0;
    PyObject_GC_Track(l);
    if (l->handshake_timeout == NULL || l->shutdown_timeout == NULL) {
        Py_DECREF(l);
        return NULL;
    }
    PyObject *r = tl_call_method((PyObject *)loop, "_add_reader", "iO", fd, (PyObject *)l);
    Py_DECREF(l);
    if (r == NULL)
        return NULL;
    Py_DECREF(r);
    Py_RETURN_NONE;
}

int tl_server_init_module(PyObject *module, tl_state *st)
{
    st->listener_type = (PyTypeObject *)PyType_FromModuleAndSpec(module, &listener_spec, NULL);
    if (st->listener_type == NULL)
        return -1;
    return PyModule_AddType(module, st->listener_type);
}

/* workers of a threaded loop call it too (tl_loop.h) */
TL_LOCKED_VARARGS_KW(loop_start_serving_locked, loop_start_serving, tl_loop, self)

PyMethodDef tl_server_loop_methods[] = {
    {"_start_serving", (PyCFunction)(void (*)(void))loop_start_serving_locked,
     METH_VARARGS | METH_KEYWORDS,
     "Accept connections on a listening socket for an asyncio.Server."},
    {NULL, NULL, 0, NULL},
};

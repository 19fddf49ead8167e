/* connect.c - loop.create_connection() to a numeric address, in C.
 *
 * Most connections are made to an address that needs no resolver and with
 * none of create_connection's options: for those, one SockOp of several
 * stages does what asyncio's create_connection, _connect_sock and
 * _create_connection_transport do, without their five coroutines and the
 * Python socket object: socket(), connect(), wait for writability, then in
 * the caller's task make the protocol and the transport and wait for
 * connection_made(). Everything else - names, several addresses, local_addr,
 * sock=, happy eyeballs, TLS, debug mode - goes to asyncio's own code
 * (Loop._create_connection_general), so the two agree on every argument
 * and message.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include "tl_sock.h"
#include "tl_stream.h"

enum { CONN_CONNECTING, CONN_MADE };

/* host (a numeric str) and port into a sockaddr; 0 when not numeric */
static socklen_t numeric_sockaddr(PyObject *host, long port, struct sockaddr_storage *ss)
{
    Py_ssize_t n;
    const char *s = PyUnicode_AsUTF8AndSize(host, &n);
    if (s == NULL) {
        PyErr_Clear();
        return 0;
    }
    if ((size_t)n != strlen(s))
        return 0;
    memset(ss, 0, sizeof(*ss));
    struct sockaddr_in *a4 = (struct sockaddr_in *)ss;
    if (inet_pton(AF_INET, s, &a4->sin_addr) == 1) {
        a4->sin_family = AF_INET;
        a4->sin_port = htons((uint16_t)port);
        return sizeof(*a4);
    }
    struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)ss;
    if (inet_pton(AF_INET6, s, &a6->sin6_addr) == 1) {
        a6->sin6_family = AF_INET6;
        a6->sin6_port = htons((uint16_t)port);
        return sizeof(*a6);
    }
    return 0;
}

/* Connected: the protocol and the transport, made in the caller's task as
 * _create_connection_transport makes them; then wait for connection_made. */
static int conn_made(tl_sockop *op, PyObject **result)
{
    tl_loop *loop = op->loop;
    PyObject *protocol = PyObject_CallNoArgs(op->arg);
    if (protocol == NULL)
        return -1;
    PyObject *waiter = PyObject_CallMethodNoArgs((PyObject *)loop, loop->st->str_create_future);
    if (waiter == NULL) {
        Py_DECREF(protocol);
        return -1;
    }
    PyObject *t = tl_socket_transport_new(loop, op->fd, NULL, protocol, waiter, NULL, NULL, NULL,
                                          0);
    if (t == NULL) {
        Py_DECREF(protocol);
        Py_DECREF(waiter);
        return -1;
    }
    op->fd = -1;    /* the transport's now */
    op->made[0] = t;
    op->made[1] = protocol;
    op->stage = CONN_MADE;
    *result = waiter;
    return 2;
}

static int conn_attempt(tl_sockop *op, PyObject **result)
{
    if (op->waited) {
        /* writable: SO_ERROR says how it went; the task goes on in
         * conn_then */
        return tl_sockop_connect_status(op, op->arg2, result);
    }
    struct sockaddr_storage ss;
    PyObject *host = PyTuple_GET_ITEM(op->arg2, 0);
    long port = PyLong_AsLong(PyTuple_GET_ITEM(op->arg2, 1));
    socklen_t sl = numeric_sockaddr(host, port, &ss);
    int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, IPPROTO_TCP);
    if (fd < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    op->fd = fd;
    if (connect(fd, (struct sockaddr *)&ss, sl) == 0)
        return conn_made(op, result);
    if (errno == EINPROGRESS || errno == EINTR)
        return 0;
    PyErr_SetFromErrno(PyExc_OSError);
    return -1;
}

static int conn_then(tl_sockop *op, PyObject *value, PyObject **result)
{
    Py_DECREF(value);
    if (op->stage == CONN_CONNECTING)
        return conn_made(op, result);
    *result = PyTuple_Pack(2, op->made[0], op->made[1]);
    return *result ? 1 : -1;
}

/* failed or cancelled: close what was made (asyncio closes the socket, or
 * the transport once there is one) */
static void conn_abandoned(tl_sockop *op)
{
    if (op->stage == CONN_CONNECTING && op->fd >= 0) {
        close(op->fd);
        op->fd = -1;
    } else if (op->stage == CONN_MADE && op->made[0] != NULL && !op->loop->closed) {
        PyObject *r = PyObject_CallMethodNoArgs(op->made[0], op->loop->st->str_close);
        if (r == NULL)
            PyErr_WriteUnraisable(op->made[0]);
        Py_XDECREF(r);
    }
}

static const tl_sockop_kind connect_kind = {
    .qualname = "Loop.create_connection",
    .events = EV_WRITE,
    .checks_socket = 0,
    .attempt = conn_attempt,
    .abandoned = conn_abandoned,
    .then = conn_then,
};

/* A keyword the fast path can ignore: a default value. */
static int default_keyword(PyObject *key, PyObject *value, int *family, int *proto)
{
    static const char *const none_ok[] = {
        "ssl", "sock", "local_addr", "server_hostname", "ssl_handshake_timeout",
        "ssl_shutdown_timeout", "happy_eyeballs_delay", "interleave", NULL};
    if (PyUnicode_CompareWithASCIIString(key, "family") == 0 ||
        PyUnicode_CompareWithASCIIString(key, "proto") == 0) {
        if (!PyLong_CheckExact(value))
            return 0;
        int v = (int)PyLong_AsLong(value);
        if (v == -1 && PyErr_Occurred()) {
            PyErr_Clear();
            return 0;
        }
        *(PyUnicode_CompareWithASCIIString(key, "family") == 0 ? family : proto) = v;
        return 1;
    }
    if (PyUnicode_CompareWithASCIIString(key, "flags") == 0)
        return PyLong_CheckExact(value);    /* only getaddrinfo reads them */
#if PY_VERSION_HEX >= 0x030C0000
    if (PyUnicode_CompareWithASCIIString(key, "all_errors") == 0)
        return value == Py_False;
#endif
    for (const char *const *k = none_ok; *k; k++) {
        if (PyUnicode_CompareWithASCIIString(key, *k) == 0)
            return value == Py_None || (value == Py_False && strcmp(*k, "ssl") == 0);
    }
    return 0;
}

/* The fast path applies: (protocol_factory, numeric host, port) and only
 * default keywords, outside debug mode. */
static int fast_path(tl_loop *loop, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    if (loop->debug || nargs != 3 || !PyUnicode_CheckExact(args[1]) ||
        !PyLong_CheckExact(args[2]))
        return 0;
    long port = PyLong_AsLong(args[2]);
    if (port <= 0 || port > 65535) {
        PyErr_Clear();
        return 0;
    }
    int family = 0, proto = 0;
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    for (Py_ssize_t i = 0; i < nkw; i++)
        if (!default_keyword(PyTuple_GET_ITEM(kwnames, i), args[nargs + i], &family, &proto))
            return 0;
    struct sockaddr_storage ss;
    if (numeric_sockaddr(args[1], port, &ss) == 0)
        return 0;
    return (family == 0 || family == ss.ss_family) && (proto == 0 || proto == IPPROTO_TCP);
}

/* loop.create_connection(protocol_factory, host=None, port=None, *, ...) */
static PyObject *loop_create_connection(tl_loop *loop, PyObject *const *args, Py_ssize_t nargsf,
                                        PyObject *kwnames)
{
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    if (fast_path(loop, args, nargs, kwnames)) {
        tl_sockop *op = tl_sockop_new(loop, &connect_kind, Py_None);
        if (op == NULL)
            return NULL;
        /* the address as asyncio's _ipaddr_info() spells it in messages */
        struct sockaddr_storage ss;
        numeric_sockaddr(args[1], PyLong_AsLong(args[2]), &ss);
        op->arg = Py_NewRef(args[0]);
        op->arg2 = ss.ss_family == AF_INET6 ? Py_BuildValue("(OOii)", args[1], args[2], 0, 0)
                                            : PyTuple_Pack(2, args[1], args[2]);
        op->stage = CONN_CONNECTING;
        if (op->arg2 == NULL) {
            Py_DECREF(op);
            return NULL;
        }
        return (PyObject *)op;
    }
    PyObject *general = tl_getattr((PyObject *)loop, "_create_connection_general");
    if (general == NULL)
        return NULL;
    PyObject *r = PyObject_Vectorcall(general, args, nargsf, kwnames);
    Py_DECREF(general);
    return r;
}

PyMethodDef tl_connect_loop_methods[] = {
    {"create_connection", (PyCFunction)(void (*)(void))loop_create_connection,
     METH_FASTCALL | METH_KEYWORDS,
     "create_connection(protocol_factory, host=None, port=None, *, ssl=None, family=0,\n"
     "                  proto=0, flags=0, sock=None, local_addr=None, server_hostname=None,\n"
     "                  ssl_handshake_timeout=None, ssl_shutdown_timeout=None,\n"
     "                  happy_eyeballs_delay=None, interleave=None, all_errors=False)\n"
     "--\n\nConnect to a TCP server; a coroutine returning (transport, protocol)."},
    {NULL, NULL, 0, NULL},
};

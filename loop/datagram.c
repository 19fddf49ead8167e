/* datagram.c - the datagram transport kind: asyncio's
 * _SelectorDatagramTransport, its reading (recvfrom -> datagram_received,
 * errors -> error_received), sendto(), its type and constructor; the life
 * cycle (connection_made, close, abort, connection_lost, flow control) is
 * stream.c's, reached through this kind's ops.
 *
 * Fast paths: an exact socket.socket gets the system calls directly
 * (anything else has its own methods called, as asyncio calls them);
 * sendto() sends at once and buffers only what the kernel refused; the
 * address last received from or sent to is kept with its kernel form, so an
 * echo (sendto(data, addr) with the addr datagram_received() got) converts
 * nothing, and a steady peer's address object is made once.
 * create_datagram_endpoint() itself is asyncio's own code (tonio_loop/_loop.py).
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include "tl_stream.h"
#include "tl_io.h"
#include "tl_sockaddr.h"
#include "tl_sock.h"

/* asyncio 3.13 counts 8 bytes of header per buffered datagram */
#if PY_VERSION_HEX >= 0x030D0000
#define TL_DGRAM_HEADER 8
#else
#define TL_DGRAM_HEADER 0
#endif

/* Datagrams read per wake-up at most: a flood is drained in fewer polls,
 * and other transports still get their turn. */
#define TL_DGRAM_READS 8

typedef struct tl_dgram {
    PyObject *address;          /* asyncio's _address, NULL for none */
    PyObject *cache_obj;        /* an address object and its kernel form */
    struct sockaddr_storage cache_sa;
    socklen_t cache_len;
    int family;
    uint8_t has_address;        /* `if self._address:` */
    uint8_t connected;          /* extra['peername'] was true: send() */
    uint8_t direct;             /* an exact socket.socket */
} tl_dgram;

#define DGRAM(t) ((tl_dgram *)(t)->kind_state)

static inline int is_exit_exception(void)
{
    return PyErr_ExceptionMatches(PyExc_SystemExit) ||
           PyErr_ExceptionMatches(PyExc_KeyboardInterrupt);
}

/* ---- state ------------------------------------------------------------------- */

static int dgram_init(tl_stream *t, PyObject *address)
{
    tl_dgram *d = PyMem_Calloc(1, sizeof(*d));
    if (d == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    t->kind_state = d;
    d->address = (address && address != Py_None) ? Py_NewRef(address) : NULL;
    int has = d->address ? PyObject_IsTrue(d->address) : 0;
    if (has < 0)
        return -1;
    d->has_address = (uint8_t)has;
    d->direct = t->fileobj != NULL &&
                Py_IS_TYPE(t->fileobj, (PyTypeObject *)t->loop->st->socket_cls);
    struct sockaddr_storage ss;
    socklen_t sl = sizeof(ss);
    d->family = getsockname(t->fd, (struct sockaddr *)&ss, &sl) == 0 ? ss.ss_family : AF_UNSPEC;
    /* `if self._extra['peername']:` decides between send() and sendto() */
    PyObject *peer = tl_call_method((PyObject *)t, "get_extra_info", "s", "peername");
    int connected = peer ? PyObject_IsTrue(peer) : -1;
    Py_XDECREF(peer);
    if (connected < 0)
        return -1;
    d->connected = (uint8_t)connected;
    return 0;
}

static int dgram_traverse(tl_stream *t, visitproc visit, void *arg)
{
    Py_VISIT(DGRAM(t)->address);
    Py_VISIT(DGRAM(t)->cache_obj);
    return 0;
}

static void dgram_clear(tl_stream *t)
{
    Py_CLEAR(DGRAM(t)->address);
    Py_CLEAR(DGRAM(t)->cache_obj);
}

static void dgram_free(tl_stream *t)
{
    dgram_clear(t);
    PyMem_Free(t->kind_state);
    t->kind_state = NULL;
}

static PyObject *dgram_get_address(tl_stream *t, void *closure)
{
    TL_UNUSED(closure);
    PyObject *a = DGRAM(t) ? DGRAM(t)->address : NULL;
    return Py_NewRef(a ? a : Py_None);
}

static void cache_set(tl_dgram *d, PyObject *obj, const void *sa, socklen_t len)
{
    if (len > sizeof(d->cache_sa))
        return;
    Py_XSETREF(d->cache_obj, Py_NewRef(obj));
    memcpy(&d->cache_sa, sa, len);
    d->cache_len = len;
}

/* ---- reading ------------------------------------------------------------------- */

/* What the socket's recvfrom() raised: OSError goes to error_received()
 * (the transport stays open), anything else is fatal. The error is set. */
static int read_failed(tl_stream *t)
{
    if (PyErr_ExceptionMatches(PyExc_BlockingIOError) ||
        PyErr_ExceptionMatches(PyExc_InterruptedError)) {
        PyErr_Clear();
        return 0;
    }
    if (!PyErr_ExceptionMatches(PyExc_OSError))
        return tl_stream_fatal_error(t, "Fatal read error on datagram transport");
    PyObject *exc = PyErr_GetRaisedException();
    PyObject *proto = Py_NewRef(t->protocol ? t->protocol : Py_None);
    PyObject *r = tl_stream_call_protocol(t, t->loop->st->str_error_received, exc);
    Py_DECREF(exc);
    int rc = 0;
    if (r == NULL)
        rc = tl_stream_report_callback_error(t, proto, "error_received");
    Py_XDECREF(r);
    Py_DECREF(proto);
    return rc;
}

/* One recvfrom(): 1 got (*data, *addr), 0 nothing (would block or handled),
 * -1 error set. */
static int recv_direct(tl_stream *t, PyObject **data, PyObject **addr)
{
    tl_dgram *d = DGRAM(t);
    char *buf = tl_stream_read_buffer(t->loop);
    if (buf == NULL)
        return -1;
    struct sockaddr_storage ss;
    socklen_t sl;
    ssize_t n;
    do {
        sl = sizeof(ss);
        n = recvfrom(t->fd, buf, TL_STREAM_READ_MAX, 0, (struct sockaddr *)&ss, &sl);
    } while (n < 0 && errno == EINTR);
    if (n < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            return 0;
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    if (d->cache_obj != NULL && sl == d->cache_len && memcmp(&ss, &d->cache_sa, sl) == 0) {
        *addr = Py_NewRef(d->cache_obj);
    } else {
        *addr = tl_sockaddr_to_py((struct sockaddr *)&ss, sl);
        if (*addr == NULL)
            return -1;
        if (sl > 0)
            cache_set(d, *addr, &ss, sl);
    }
    *data = PyBytes_FromStringAndSize(buf, n);
    if (*data == NULL) {
        Py_CLEAR(*addr);
        return -1;
    }
    return 1;
}

/* data, addr = self._sock.recvfrom(self.max_size) on a socket look-alike:
 * whatever goes wrong, unpacking included, is the socket's error */
static int recv_method(tl_stream *t, PyObject **data, PyObject **addr)
{
    PyObject *r = tl_call_method(t->fileobj, "recvfrom", "i", TL_STREAM_READ_MAX);
    if (r == NULL)
        return -1;
    PyObject *seq = PySequence_Fast(r, "cannot unpack non-iterable object");
    Py_DECREF(r);
    if (seq == NULL)
        return -1;
    if (PySequence_Fast_GET_SIZE(seq) != 2) {
        PyErr_Format(PyExc_ValueError, "%s values to unpack (expected 2, got %zd)",
                     PySequence_Fast_GET_SIZE(seq) > 2 ? "too many" : "not enough",
                     PySequence_Fast_GET_SIZE(seq));
        Py_DECREF(seq);
        return -1;
    }
    *data = Py_NewRef(PySequence_Fast_GET_ITEM(seq, 0));
    *addr = Py_NewRef(PySequence_Fast_GET_ITEM(seq, 1));
    Py_DECREF(seq);
    return 1;
}

static int dgram_read_ready(tl_stream *t)
{
    tl_state *st = t->loop->st;
    for (int i = 0; i < TL_DGRAM_READS; i++) {
        if (t->conn_lost || t->closing || t->paused || t->protocol == NULL)
            return 0;
        PyObject *data = NULL, *addr = NULL;
        int got = DGRAM(t)->direct ? recv_direct(t, &data, &addr) : recv_method(t, &data, &addr);
        if (got <= 0)
            return got == 0 ? 0 : read_failed(t);
        PyObject *proto = Py_NewRef(t->protocol);
        PyObject *r = tl_stream_call_protocol2(t, st->str_datagram_received, data, addr);
        Py_DECREF(data);
        Py_DECREF(addr);
        int rc = 0;
        if (r == NULL)
            rc = tl_stream_report_callback_error(t, proto, "datagram_received");
        Py_XDECREF(r);
        Py_DECREF(proto);
        if (rc < 0 || !DGRAM(t)->direct)
            return rc;
    }
    return 0;
}

/* ---- sending ---------------------------------------------------------------------- */

/* The kernel form of a numeric (host, port) tuple for the socket's family,
 * as the socket module would make it; 0 when the address needs Python's
 * own conversion (names, scopes, odd types: its errors are asyncio's). */
static socklen_t numeric_sockaddr(tl_dgram *d, PyObject *addr, struct sockaddr_storage *ss)
{
    if (!PyTuple_CheckExact(addr))
        return 0;
    Py_ssize_t n = PyTuple_GET_SIZE(addr);
    if (n < 2 || n > (d->family == AF_INET6 ? 4 : 2))
        return 0;
    PyObject *host = PyTuple_GET_ITEM(addr, 0), *port = PyTuple_GET_ITEM(addr, 1);
    if (!PyUnicode_CheckExact(host) || !PyLong_CheckExact(port))
        return 0;
    Py_ssize_t hlen;
    const char *h = PyUnicode_AsUTF8AndSize(host, &hlen);
    if (h == NULL) {
        PyErr_Clear();
        return 0;
    }
    long p = PyLong_AsLong(port);
    if (p < 0 || p > 65535 || (size_t)hlen != strlen(h)) {
        PyErr_Clear();
        return 0;
    }
    memset(ss, 0, sizeof(*ss));
    if (d->family == AF_INET) {
        struct sockaddr_in *a = (struct sockaddr_in *)ss;
        if (inet_pton(AF_INET, h, &a->sin_addr) != 1)
            return 0;
        a->sin_family = AF_INET;
        a->sin_port = htons((uint16_t)p);
        return sizeof(*a);
    }
    if (d->family == AF_INET6) {
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)ss;
        unsigned long flow = 0, scope = 0;
        if (n > 2) {
            PyObject *f = PyTuple_GET_ITEM(addr, 2);
            flow = PyLong_CheckExact(f) ? PyLong_AsUnsignedLong(f) : (unsigned long)-1;
            if (flow > 0xfffff) {
                PyErr_Clear();
                return 0;
            }
        }
        if (n > 3) {
            PyObject *sc = PyTuple_GET_ITEM(addr, 3);
            scope = PyLong_CheckExact(sc) ? PyLong_AsUnsignedLong(sc) : (unsigned long)-1;
            if (scope > 0xffffffffUL) {
                PyErr_Clear();
                return 0;
            }
        }
        if (inet_pton(AF_INET6, h, &a->sin6_addr) != 1)
            return 0;
        a->sin6_family = AF_INET6;
        a->sin6_port = htons((uint16_t)p);
        a->sin6_flowinfo = htonl((uint32_t)flow);
        a->sin6_scope_id = (uint32_t)scope;
        return sizeof(*a);
    }
    return 0;
}

/* Send one datagram now: 1 sent, 0 would block, -1 error set (the
 * socket's exception, as its send()/sendto() would raise it). */
static int send_one(tl_stream *t, PyObject *data, const void *buf, Py_ssize_t len,
                    PyObject *addr)
{
    tl_dgram *d = DGRAM(t);
    if (t->fileobj == NULL) {
        /* asyncio's _sock is None once connection_lost() ran */
        PyErr_Format(PyExc_AttributeError, "'NoneType' object has no attribute '%s'",
                     d->connected ? "send" : "sendto");
        return -1;
    }
    if (d->direct) {
        const struct sockaddr *sa = NULL;
        socklen_t salen = 0;
        struct sockaddr_storage ss;
        if (!d->connected) {
            if (addr == d->cache_obj && addr != NULL) {
                sa = (const struct sockaddr *)&d->cache_sa;
                salen = d->cache_len;
            } else if ((salen = numeric_sockaddr(d, addr, &ss)) > 0) {
                sa = (const struct sockaddr *)&ss;
                cache_set(d, addr, &ss, salen);
            }
        }
        if (d->connected || sa != NULL) {
            ssize_t n;
            do {
                n = sa ? sendto(t->fd, buf, (size_t)len, 0, sa, salen)
                       : send(t->fd, buf, (size_t)len, 0);
            } while (n < 0 && errno == EINTR);
            if (n >= 0)
                return 1;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return 0;
            PyErr_SetFromErrno(PyExc_OSError);
            return -1;
        }
    }
    PyObject *sent;
    int rc = tl_sockop_call_attempt(d->connected
                                        ? tl_call_method(t->fileobj, "send", "O", data)
                                        : tl_call_method(t->fileobj, "sendto", "OO", data, addr),
                                    &sent);
    if (rc == 1)
        Py_DECREF(sent);
    return rc;
}

/* The send failed (error set): OSError goes to error_received(), whose own
 * exception is the caller's (*raised set); anything else is fatal. */
static int send_failed(tl_stream *t, int *raised)
{
    *raised = 0;
    if (!PyErr_ExceptionMatches(PyExc_OSError) || is_exit_exception())
        return tl_stream_fatal_error(t, "Fatal write error on datagram transport");
    PyObject *exc = PyErr_GetRaisedException();
    PyObject *r = tl_stream_call_protocol(t, t->loop->st->str_error_received, exc);
    Py_DECREF(exc);
    if (r == NULL) {
        *raised = 1;
        return -1;
    }
    Py_DECREF(r);
    return 0;
}

static Py_ssize_t data_len(PyObject *data, Py_ssize_t nbytes)
{
    /* len(data): a memoryview counts items, not bytes */
    return PyMemoryView_Check(data) ? PyObject_Size(data) : nbytes;
}

static int dgram_write_ready(tl_stream *t)
{
    while (t->wq_len) {
        PyObject *item = tl_stream_wq_peek(t);
        PyObject *data = PyTuple_GET_ITEM(item, 0), *addr = PyTuple_GET_ITEM(item, 1);
        Py_INCREF(item);
        int sent = send_one(t, data, PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data), addr);
        if (sent == 0) {
            Py_DECREF(item);
            return 0;
        }
        t->wsize -= PyBytes_GET_SIZE(data) + TL_DGRAM_HEADER;
        tl_stream_wq_drop(t);
        if (sent < 0) {
            PyObject *proto = Py_NewRef(t->protocol ? t->protocol : Py_None);
            int raised, rc = send_failed(t, &raised);
            if (raised)
                rc = tl_stream_report_callback_error(t, proto, "error_received");
            Py_DECREF(proto);
            Py_DECREF(item);
            return rc;
        }
        Py_DECREF(item);
    }
    if (tl_stream_maybe_resume_protocol(t) < 0)     /* may append to the buffer */
        return -1;
    if (t->wq_len == 0) {
        tl_stream_watch(t, &t->wio, 0);
        if (t->closing)
            return tl_stream_call_connection_lost(t, NULL);
    }
    return 0;
}

static int parse_sendto(PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames,
                        PyObject **data, PyObject **addr)
{
    *data = nargs > 0 ? args[0] : NULL;
    *addr = nargs > 1 ? args[1] : Py_None;
    if (nargs > 2) {
        PyErr_Format(PyExc_TypeError,
                     "sendto() takes from 2 to 3 positional arguments but %zd were given",
                     nargs + 1);
        return -1;
    }
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    for (Py_ssize_t i = 0; i < nkw; i++) {
        PyObject *k = PyTuple_GET_ITEM(kwnames, i);
        PyObject **slot = NULL;
        int taken = 0;
        if (PyUnicode_CompareWithASCIIString(k, "data") == 0) {
            slot = data;
            taken = nargs > 0;
        } else if (PyUnicode_CompareWithASCIIString(k, "addr") == 0) {
            slot = addr;
            taken = nargs > 1;
        }
        if (slot == NULL || taken) {
            PyErr_Format(PyExc_TypeError,
                         slot ? "sendto() got multiple values for argument '%S'"
                              : "sendto() got an unexpected keyword argument '%S'", k);
            return -1;
        }
        *slot = args[nargs + i];
    }
    if (*data == NULL) {
        PyErr_SetString(PyExc_TypeError,
                        "sendto() missing 1 required positional argument: 'data'");
        return -1;
    }
    return 0;
}

/* sendto(data, addr=None), selector_events._SelectorDatagramTransport's */
static PyObject *dgram_sendto(tl_stream *t, PyObject *const *args, Py_ssize_t nargs,
                          PyObject *kwnames)
{
    PyObject *data, *addr;
    if (parse_sendto(args, nargs, kwnames, &data, &addr) < 0)
        return NULL;
    if (!PyBytes_Check(data) && !PyByteArray_Check(data) && !PyMemoryView_Check(data)) {
        PyErr_Format(PyExc_TypeError, "data argument must be a bytes-like object, not '%.200s'",
                     tl_type_name(Py_TYPE(data)));
        return NULL;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(data, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    PyObject *result = NULL;
    Py_INCREF(t);
#if PY_VERSION_HEX < 0x030D0000
    if (view.len == 0)      /* only 3.13 sends empty datagrams */
        goto done;
#endif
    tl_dgram *d = DGRAM(t);
    if (d->has_address) {
        int ok = addr == Py_None || addr == d->address;
        if (!ok && (ok = PyObject_RichCompareBool(Py_None, addr, Py_EQ)) == 0)
            ok = PyObject_RichCompareBool(d->address, addr, Py_EQ);
        if (ok < 0)
            goto fail;
        if (!ok) {
            PyErr_Format(PyExc_ValueError, "Invalid address: must be None or %S", d->address);
            goto fail;
        }
        addr = d->address;
        if (t->conn_lost) {
            tl_stream_warn_lost_writes(t);
            goto done;
        }
    }
    if (t->wq_len == 0) {
        int sent = send_one(t, data, view.buf, view.len, addr);
        if (sent > 0)
            goto done;
        if (sent < 0) {
            int raised;
            if (send_failed(t, &raised) < 0)
                goto fail;
            goto done;
        }
        if (tl_loop_check_closed(t->loop) < 0)
            goto fail;
        tl_stream_watch(t, &t->wio, 1);
    }
    /* buffer an immutable copy */
    PyObject *copy = PyBytes_CheckExact(data) ? Py_NewRef(data)
                                              : PyBytes_FromStringAndSize(view.buf, view.len);
    if (copy == NULL)
        goto fail;
    Py_ssize_t len = data_len(data, view.len);
    PyObject *item = len < 0 ? NULL : PyTuple_Pack(2, copy, addr);
    Py_DECREF(copy);
    if (item == NULL || tl_stream_wq_push(t, item) < 0)
        goto fail;
    t->wsize += len + TL_DGRAM_HEADER;
    if (tl_stream_maybe_pause_protocol(t) < 0)
        goto fail;
done:
    result = Py_NewRef(Py_None);
fail:
    PyBuffer_Release(&view);
    Py_DECREF(t);
    return result;
}

/* ---- the kind ------------------------------------------------------------------ */

static const tl_stream_ops dgram_ops = {
    .read_error = "Fatal read error on datagram transport",
    .write_error = "Fatal write error on datagram transport",
    .rules = TL_RULES_SELECTOR,
    .read_ready = dgram_read_ready,
    .write_ready = dgram_write_ready,
    .read_calls_protocol = 1,
    .traverse = dgram_traverse,
    .clear = dgram_clear,
    .free = dgram_free,
};

PyObject *tl_datagram_transport_new(tl_loop *loop, PyObject *sock, PyObject *protocol,
                                    PyObject *address, PyObject *waiter, PyObject *extra)
{
    int fd = tl_io_fileobj_to_fd(sock);
    if (fd < 0)
        return NULL;
    int family;
    tl_stream *t = tl_stream_selector_new(loop, loop->st->datagram_transport_type, &dgram_ops,
                                          fd, sock, protocol, waiter, extra, NULL, 0, &family);
    if (t == NULL)
        return NULL;
    if (dgram_init(t, address) < 0) {
        tl_stream_abandon(t);
        return NULL;
    }
    return tl_stream_start(t, NULL);
}

/* ---- the loop's factory ---------------------------------------------------------- */

/* loop._make_datagram_transport(sock, protocol, address=None, waiter=None,
 * extra=None) */
static PyObject *loop_make_datagram_transport(tl_loop *loop, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"sock", "protocol", "address", "waiter", "extra", NULL};
    PyObject *sock, *protocol, *address = Py_None, *waiter = Py_None, *extra = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OO|OOO:_make_datagram_transport", kwlist,
                                     &sock, &protocol, &address, &waiter, &extra))
        return NULL;
    return tl_datagram_transport_new(loop, sock, protocol, address, waiter, extra);
}

/* workers of a threaded loop call it too (tl_loop.h) */
TL_LOCKED_VARARGS_KW(loop_make_datagram_transport_locked, loop_make_datagram_transport, tl_loop,
                     self)

PyMethodDef tl_dgram_loop_methods[] = {
    {"_make_datagram_transport", (PyCFunction)(void (*)(void))loop_make_datagram_transport_locked,
     METH_VARARGS | METH_KEYWORDS,
     "_make_datagram_transport(sock, protocol, address=None, waiter=None, extra=None)\n--\n\n"
     "A transport for a non-blocking datagram socket."},
    {NULL, NULL, 0, NULL},
};

/* ---- the type ------------------------------------------------------------------ */

TL_LOCKED_FASTCALL_KW(dgram_sendto_locked, dgram_sendto, tl_stream, self->loop)

static PyMethodDef dgram_own_methods[] = {
    {"sendto", (PyCFunction)(void (*)(void))dgram_sendto_locked, METH_FASTCALL | METH_KEYWORDS,
     "Send data to addr (the connected peer by default); buffers only what the kernel "
     "refuses."},
    {NULL, NULL, 0, NULL},
};

static PyMethodDef *const dgram_methods[] = {
    dgram_own_methods, tl_stream_methods_close, tl_stream_methods_abort,
    tl_stream_methods_reading, tl_stream_methods_write_buffer, tl_stream_methods_extra,
    tl_stream_methods_force_close, NULL,
};

static PyGetSetDef dgram_getset[] = {
    {"_sock", (getter)tl_stream_get_sock, NULL, NULL, NULL},
    {"_loop", (getter)tl_stream_get_loop, NULL, NULL, NULL},
    TL_STREAM_OBJECT_OR_NONE("_protocol", protocol),
    {"_address", (getter)dgram_get_address, NULL, NULL, NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMemberDef dgram_members[] = {
    TL_STREAM_STATE_MEMBERS,
    {"_sock_fd", Py_T_INT, offsetof(tl_stream, fd), Py_READONLY, NULL},
    {"_buffer_size", Py_T_PYSSIZET, offsetof(tl_stream, wsize), Py_READONLY, NULL},
    {NULL, 0, 0, 0, NULL},
};

static tl_stream_type dgram_type = {
    .name = "tonio_loop._core.DatagramTransport",
    .doc = "A UDP or Unix datagram socket transport (asyncio's _SelectorDatagramTransport).",
    /* asyncio 3.11's own lacks the DatagramTransport base (added in 3.12);
     * isinstance(t, DatagramTransport) holds on every version */
    .bases = "_FlowControlMixin DatagramTransport",
    .methods = dgram_methods,
    .getset = dgram_getset,
    .members = dgram_members,
};

int tl_dgram_init_module(PyObject *module, tl_state *st)
{
    return tl_stream_add_type(module, &st->datagram_transport_type, &dgram_type);
}

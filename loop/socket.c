/* socket.c - the socket transport kind: asyncio's _SelectorSocketTransport
 * on a connected TCP or Unix stream socket (accepted by a server, connected
 * by create_connection(), wrapped by _make_socket_transport()).
 *
 * The stream core (stream.c) does the work under this kind's rules; here
 * are what is the socket's own: its ops, its Python type and attributes,
 * and its constructor (TCP_NODELAY on IP sockets).
 */
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include "tl_stream.h"
#include "tl_io.h"

static const tl_stream_ops socket_ops = {
    .read_error = "Fatal read error on socket transport",
    .write_error = "Fatal write error on socket transport",
    .rules = TL_RULES_SELECTOR | TL_RULES_SELECTOR_SOCKET,
};

PyObject *tl_socket_transport_new(tl_loop *loop, int fd, PyObject *sock, PyObject *protocol,
                                  PyObject *waiter, PyObject *extra, PyObject *server,
                                  const struct sockaddr *peer, socklen_t peer_len)
{
    int family;
    tl_stream *t = tl_stream_selector_new(loop, loop->st->socket_transport_type, &socket_ops,
                                          fd, sock, protocol, waiter, extra, peer, peer_len,
                                          &family);
    if (t == NULL)
        return NULL;
    if (family == AF_INET || family == AF_INET6) {
        /* small writes go out at once, without waiting for ACKs */
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    }
    return tl_stream_start(t, server);
}

/* loop._make_socket_transport(sock, protocol, waiter=None, *, extra=None,
 * server=None, context=None) */
static PyObject *loop_make_socket_transport(tl_loop *loop, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"sock", "protocol", "waiter", "extra", "server", "context", NULL};
    PyObject *sock, *protocol, *waiter = Py_None, *extra = Py_None, *server = Py_None;
    PyObject *context = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OO|O$OOO:_make_socket_transport", kwlist,
                                     &sock, &protocol, &waiter, &extra, &server, &context))
        return NULL;
    int fd = tl_stream_check_context(context) < 0 ? -1 : tl_io_fileobj_to_fd(sock);
    if (fd < 0 || tl_io_ensure_no_transport(loop, sock, fd) < 0)
        return NULL;
    PyObject *t = tl_socket_transport_new(loop, fd, sock, protocol, waiter, extra, server, NULL,
                                          0);
    if (t != NULL)
        tl_stream_use_context(t, context);
    return t;
}

/* workers of a threaded loop call it too (tl_loop.h) */
TL_LOCKED_VARARGS_KW(loop_make_socket_transport_locked, loop_make_socket_transport, tl_loop, self)

PyMethodDef tl_socket_loop_methods[] = {
    {"_make_socket_transport", (PyCFunction)(void (*)(void))loop_make_socket_transport_locked,
     METH_VARARGS | METH_KEYWORDS,
     "_make_socket_transport(sock, protocol, waiter=None, *, extra=None, server=None, "
     "context=None)\n--\n\n"
     "A transport for a connected, non-blocking stream socket."},
    {NULL, NULL, 0, NULL},
};

/* ---- the type ------------------------------------------------------------ */

static PyGetSetDef socket_getset[] = {
    {"_sock", (getter)tl_stream_get_sock, NULL, NULL, NULL},
    {"_loop", (getter)tl_stream_get_loop, NULL, NULL, NULL},
    TL_STREAM_OBJECT_OR_NONE("_protocol", protocol),
    TL_STREAM_OBJECT_OR_NONE("_server", server),
    TL_STREAM_OBJECT_OR_NONE("_empty_waiter", empty_waiter),
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMemberDef socket_members[] = {
    TL_STREAM_STATE_MEMBERS,
    {"_sock_fd", Py_T_INT, offsetof(tl_stream, fd), Py_READONLY, NULL},
    {"_eof", Py_T_BOOL, offsetof(tl_stream, eof), Py_READONLY, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyMethodDef *const socket_methods[] = {
    tl_stream_methods_write, tl_stream_methods_writelines, tl_stream_methods_write_eof,
    tl_stream_methods_close, tl_stream_methods_abort, tl_stream_methods_reading,
    tl_stream_methods_write_buffer, tl_stream_methods_extra, tl_stream_methods_force_close,
    tl_stream_methods_sendfile, NULL,
};

static tl_stream_type socket_type = {
    .name = "tonio_loop._core.SocketTransport",
    .doc = "A TCP or Unix stream socket transport (asyncio's _SelectorSocketTransport).",
    .bases = "_FlowControlMixin",
    .methods = socket_methods,
    .getset = socket_getset,
    .members = socket_members,
};

int tl_socket_init_module(PyObject *module, tl_state *st)
{
    return tl_stream_add_type(module, &st->socket_transport_type, &socket_type);
}

/* pipe.c - the pipe transport kinds: asyncio's _UnixReadPipeTransport and
 * _UnixWritePipeTransport on a pipe, FIFO, tty or socket, as
 * loop.connect_read_pipe()/connect_write_pipe() and subprocesses make them.
 *
 * The stream core (stream.c) does the work under these kinds' rules; here
 * are what is the pipes' own: their ops (a write pipe's read side only
 * tells that the reader went away), types and constructor. C code
 * (subprocesses) calls tl_pipe_transport_new() directly on an fd.
 */
#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>

#include "tl_pipe.h"
#include "tl_stream.h"
#include "tl_io.h"

/* The read end went away (asyncio's _UnixWritePipeTransport._read_ready) */
static int write_pipe_read_ready(tl_stream *t)
{
    tl_stream_debug_log(t, "info", "%r was closed by peer");
    if (t->wsize) {
        PyErr_SetNone(PyExc_BrokenPipeError);
        PyObject *exc = PyErr_GetRaisedException();
        int rc = tl_stream_force_close(t, exc);
        Py_DECREF(exc);
        return rc;
    }
    return tl_stream_force_close(t, NULL);
}

static const tl_stream_ops read_pipe_ops = {
    .read_error = "Fatal read error on pipe transport",
    .write_error = "Fatal write error on pipe transport",
    .rules = TL_RULES_UNIX_READ_PIPE,
};

static const tl_stream_ops write_pipe_ops = {
    .read_error = "Fatal read error on pipe transport",
    .write_error = "Fatal write error on pipe transport",
    .rules = TL_RULES_UNIX_WRITE_PIPE,
    .read_ready = write_pipe_read_ready,
};

PyObject *tl_pipe_transport_new(tl_loop *loop, int fd, PyObject *fileobj, PyObject *protocol,
                                PyObject *waiter, PyObject *extra, int writable)
{
    tl_state *st = loop->st;
    struct stat sb;
    if (fstat(fd, &sb) < 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    int is_char = S_ISCHR(sb.st_mode), is_fifo = S_ISFIFO(sb.st_mode);
    int is_sock = S_ISSOCK(sb.st_mode);
    if (!(is_char || is_fifo || is_sock)) {
        PyErr_SetString(PyExc_ValueError,
                        writable ? "Pipe transport is only for pipes, sockets and character devices"
                                 : "Pipe transport is for pipes/sockets only.");
        return NULL;
    }
    PyObject *pipe_extra = extra && extra != Py_None ? PyDict_Copy(extra) : PyDict_New();
    if (pipe_extra == NULL ||
        PyDict_SetItemString(pipe_extra, "pipe", fileobj ? fileobj : Py_None) < 0) {
        Py_XDECREF(pipe_extra);
        return NULL;
    }
    tl_stream *t = tl_stream_alloc(loop, writable ? st->write_pipe_type : st->read_pipe_type,
                                   writable ? &write_pipe_ops : &read_pipe_ops, fd, fileobj,
                                   protocol, waiter, pipe_extra);
    Py_DECREF(pipe_extra);
    if (t == NULL)
        return NULL;
    /* on AIX only sockets tell the writer that the reader went away */
    t->watch_close = writable && (is_sock || is_fifo);
    int flags = fcntl(fd, F_GETFL);
    if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        goto fail;
    }
    return tl_stream_start(t, NULL);
fail:
    tl_stream_abandon(t);
    return NULL;
}

static PyObject *make_pipe_transport(tl_loop *loop, PyObject *args, PyObject *kwds,
                                     int writable)
{
    static char *kwlist[] = {"pipe", "protocol", "waiter", "extra", NULL};
    PyObject *pipe, *protocol, *waiter = Py_None, *extra = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwds,
                                     writable ? "OO|OO:_make_write_pipe_transport"
                                              : "OO|OO:_make_read_pipe_transport",
                                     kwlist, &pipe, &protocol, &waiter, &extra))
        return NULL;
    PyObject *fdobj = tl_call_method(pipe, "fileno", NULL);
    if (fdobj == NULL)
        return NULL;
    long fd = PyLong_AsLong(fdobj);
    Py_DECREF(fdobj);
    if (fd == -1 && PyErr_Occurred())
        return NULL;
    return tl_pipe_transport_new(loop, (int)fd, pipe, protocol, waiter, extra, writable);
}

static PyObject *loop_make_read_pipe_transport(tl_loop *loop, PyObject *args, PyObject *kwds)
{
    return make_pipe_transport(loop, args, kwds, 0);
}

static PyObject *loop_make_write_pipe_transport(tl_loop *loop, PyObject *args, PyObject *kwds)
{
    return make_pipe_transport(loop, args, kwds, 1);
}

/* workers of a threaded loop call them too (tl_loop.h) */
TL_LOCKED_VARARGS_KW(loop_make_read_pipe_transport_locked, loop_make_read_pipe_transport, tl_loop,
                     self)
TL_LOCKED_VARARGS_KW(loop_make_write_pipe_transport_locked, loop_make_write_pipe_transport,
                     tl_loop, self)

PyMethodDef tl_pipe_loop_methods[] = {
    {"_make_read_pipe_transport", (PyCFunction)(void (*)(void))loop_make_read_pipe_transport_locked,
     METH_VARARGS | METH_KEYWORDS,
     "_make_read_pipe_transport(pipe, protocol, waiter=None, extra=None)\n--\n\n"
     "A transport reading the pipe (or FIFO, tty, socket) for protocol."},
    {"_make_write_pipe_transport", (PyCFunction)(void (*)(void))loop_make_write_pipe_transport_locked,
     METH_VARARGS | METH_KEYWORDS,
     "_make_write_pipe_transport(pipe, protocol, waiter=None, extra=None)\n--\n\n"
     "A transport writing to the pipe (or FIFO, tty, socket) for protocol."},
    {NULL, NULL, 0, NULL},
};

/* ---- the types ----------------------------------------------------------- */

static PyObject *get_pipe(tl_stream *t, void *c)
{
    TL_UNUSED(c);
    if (t->lost_done || t->fileobj == NULL)
        Py_RETURN_NONE;
    return Py_NewRef(t->fileobj);
}

static int set_pipe(tl_stream *t, PyObject *v, void *c)
{
    TL_UNUSED(c);
    if (v != NULL && v != Py_None) {
        PyErr_SetString(PyExc_AttributeError, "_pipe can only be cleared");
        return -1;
    }
    /* the owner closed it already: forget it without closing again */
    Py_CLEAR(t->fileobj);
    t->lost_done = 1;
    return 0;
}

static PyGetSetDef pipe_getset[] = {
    {"_pipe", (getter)get_pipe, (setter)set_pipe, NULL, NULL},
    {"_loop", (getter)tl_stream_get_loop, NULL, NULL, NULL},
    TL_STREAM_OBJECT_OR_NONE("_protocol", protocol),
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMemberDef pipe_members[] = {
    TL_STREAM_STATE_MEMBERS,
    {"_fileno", Py_T_INT, offsetof(tl_stream, fd), Py_READONLY, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyMethodDef *const read_pipe_methods[] = {
    tl_stream_methods_close, tl_stream_methods_reading, tl_stream_methods_extra, NULL,
};

static PyMethodDef *const write_pipe_methods[] = {
    tl_stream_methods_write, tl_stream_methods_write_eof, tl_stream_methods_close,
    tl_stream_methods_abort, tl_stream_methods_write_buffer, tl_stream_methods_extra, NULL,
};

static tl_stream_type read_pipe_type = {
    .name = "tonio_loop._core.ReadPipeTransport",
    .doc = "The read end of a pipe, FIFO, tty or socket (asyncio's _UnixReadPipeTransport).",
    .bases = "ReadTransport",
    .methods = read_pipe_methods,
    .getset = pipe_getset,
    .members = pipe_members,
};

static tl_stream_type write_pipe_type = {
    .name = "tonio_loop._core.WritePipeTransport",
    .doc = "The write end of a pipe, FIFO, tty or socket (asyncio's _UnixWritePipeTransport).",
    .bases = "_FlowControlMixin",
    .methods = write_pipe_methods,
    .getset = pipe_getset,
    .members = pipe_members,
};

int tl_pipe_init_module(PyObject *module, tl_state *st)
{
    if (tl_stream_add_type(module, &st->read_pipe_type, &read_pipe_type) < 0)
        return -1;
    return tl_stream_add_type(module, &st->write_pipe_type, &write_pipe_type);
}

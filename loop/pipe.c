/* pipe.c - loop.connect_read_pipe()/connect_write_pipe() transports.
 *
 * A pipe is a one-directional stream: the transports are tl_stream's read
 * and write pipe kinds (stream.c), made here the way asyncio's
 * _UnixSelectorEventLoop._make_read_pipe_transport() and
 * _make_write_pipe_transport() make them. C code (subprocesses) calls
 * tl_pipe_transport_new() directly on an fd.
 */
#include "tl_pipe.h"
#include "tl_stream.h"
#include "tl_io.h"

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

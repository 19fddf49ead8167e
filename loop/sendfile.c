/* sendfile.c - zero-copy sock_sendfile(): sendfile(2) from a regular file to
 * a stream socket, waiting for writability whenever the socket is full.
 *
 * asyncio's unix_events._sock_sendfile_native_impl as a SockOp kind: the
 * same results, the same errors (SendfileNotAvailableError when nothing
 * could be sent, so the caller falls back to read/send), and the file
 * position left after the last byte sent, whatever happened. The checks and
 * the fallback stay in Python (tonio_loop/_loop.py), borrowed from asyncio.
 */
#include <errno.h>
#include <stdint.h>
#include <sys/sendfile.h>
#include <unistd.h>

#include "tl_sock.h"

/* _sock_sendfile_update_filepos: 3.14 puts the file at offset + sent even
 * when nothing was sent (an offset at the end of the file) */
static void sendfile_update_filepos(tl_sockop *op)
{
#if PY_VERSION_HEX < 0x030E0000
    if (op->total == 0)
        return;
#endif
    lseek(op->file_fd, (off_t)op->offset, SEEK_SET);
}

static int sendfile_attempt(tl_sockop *op, PyObject **result)
{
    for (;;) {
        long long blocksize = op->pos;
        if (op->count) {
            blocksize = op->count - op->total;
            if (blocksize <= 0)
                break;
        }
        if (blocksize > (long long)(PY_SSIZE_T_MAX / 2 + 1))
            blocksize = (long long)(PY_SSIZE_T_MAX / 2 + 1);
        off_t off = (off_t)op->offset;
        ssize_t sent = sendfile(op->fd, op->file_fd, &off, (size_t)blocksize);
        if (sent < 0) {
            int err = errno;
            if (tl_sockop_would_block(err))
                return 0;
            errno = err;
            PyErr_SetFromErrno(PyExc_OSError);
            if (op->waited && err == ENOTCONN) {
                /* closed under us: the same error on every platform */
                PyObject *cause = PyErr_GetRaisedException();
                PyObject *exc = PyObject_CallFunction(PyExc_ConnectionError, "si",
                                                      "socket is not connected", ENOTCONN);
                if (exc != NULL) {
                    PyException_SetCause(exc, cause);
                    PyErr_SetRaisedException(exc);
                } else {
                    Py_DECREF(cause);
                }
            }
            if (op->total == 0) {
                /* nothing went: not a file sendfile() can read, fall back */
                PyObject *context = PyErr_GetRaisedException();
                PyErr_SetString(op->loop->st->sendfile_unavailable, "os.sendfile call failed");
                PyObject *exc = PyErr_GetRaisedException();
                PyException_SetContext(exc, context);
                PyErr_SetRaisedException(exc);
            }
            sendfile_update_filepos(op);
            return -1;
        }
        if (sent == 0)
            break;      /* end of file */
        op->offset += sent;
        op->total += sent;
    }
    sendfile_update_filepos(op);
    *result = PyLong_FromLongLong(op->total);
    return *result ? 1 : -1;
}

static const tl_sockop_kind sendfile_kind = {
    .qualname = "Loop._sock_sendfile_native",
    .events = EV_WRITE,
    .checks_socket = 0,
    .attempt = sendfile_attempt,
    .abandoned = sendfile_update_filepos,
};

/* loop._sock_sendfile_op(sock, fileno, offset, count, blocksize): the wait
 * of _sock_sendfile_native once asyncio's checks passed (count 0: to EOF). */
static PyObject *loop_sock_sendfile_op(tl_loop *loop, PyObject *args)
{
    PyObject *sock;
    int file_fd;
    long long offset, count, blocksize;
    if (!PyArg_ParseTuple(args, "OiLLL:_sock_sendfile_op", &sock, &file_fd, &offset, &count,
                          &blocksize))
        return NULL;
    tl_sockop *op = tl_sockop_new(loop, &sendfile_kind, sock);
    if (op == NULL)
        return NULL;
    PyObject *fd = tl_call_method(sock, "fileno", NULL);
    long v = fd ? PyLong_AsLong(fd) : -1;
    Py_XDECREF(fd);
    if (v == -1 && PyErr_Occurred()) {
        Py_DECREF(op);
        return NULL;
    }
    op->fd = (int)v;
    op->file_fd = file_fd;
    op->offset = offset;
    op->count = count;
    op->pos = (Py_ssize_t)blocksize;
    return (PyObject *)op;
}

PyMethodDef tl_sendfile_loop_methods[] = {
    {"_sock_sendfile_op", (PyCFunction)loop_sock_sendfile_op, METH_VARARGS, NULL},
    {NULL, NULL, 0, NULL},
};

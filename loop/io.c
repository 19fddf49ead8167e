/* io.c - add_reader/add_writer and the loop's fd table.
 *
 * As in asyncio's selector loop, a ready fd does not run its callback from
 * inside the poll: it queues the registered Handle on the ready queue, and
 * the callback runs with the other ready callbacks of the iteration.
 */
#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>

#include "tl_io.h"
#include "tl_loop.h"
#include "tl_handle.h"

static tl_io_watch *io_lookup(tl_loop *loop, int fd)
{
    if (fd < 0 || fd >= loop->io.cap)
        return NULL;
    return loop->io.slots[fd];
}

static void io_cb(struct ev_loop *ev, ev_io *w, int revents);

static tl_io_watch *io_get_or_create(tl_loop *loop, int fd)
{
    tl_io_table *t = &loop->io;
    if (fd >= t->cap) {
        int cap = t->cap ? t->cap : 64;
        while (cap <= fd)
            cap *= 2;
        tl_io_watch **slots = PyMem_Realloc(t->slots, (size_t)cap * sizeof(*slots));
        if (slots == NULL) {
            PyErr_NoMemory();
            return NULL;
        }
        for (int i = t->cap; i < cap; i++)
            slots[i] = NULL;
        t->slots = slots;
        t->cap = cap;
    }
    tl_io_watch *iw = t->slots[fd];
    if (iw == NULL) {
        iw = PyMem_Calloc(1, sizeof(*iw));
        if (iw == NULL) {
            PyErr_NoMemory();
            return NULL;
        }
        iw->loop = loop;
        iw->fd = fd;
        ev_io_init(&iw->io, io_cb, fd, 0);
        t->slots[fd] = iw;
    }
    return iw;
}

/* Once nothing uses the slot, let go of the file object. The slot stays for
 * the fd number's next user (loop.close() frees it): a socket's operations
 * come and go thousands of times a second, each would allocate it again. */
static void io_release(tl_io_watch *iw)
{
    if (iw->reader != NULL || iw->writer != NULL || iw->owner != NULL ||
        iw->first[0] != NULL || iw->first[1] != NULL)
        return;
    Py_CLEAR(iw->fileobj);
}

/* Bring the ev_io in line with the reader/writer registered; let go of the
 * file object once nothing uses the slot (io_release). The fd is registered
 * with epoll at once, as asyncio's selector does: -1 (errno EBADF) when it
 * is not open any more, and the ev_io is left stopped. */
static int io_update(tl_loop *loop, tl_io_watch *iw)
{
    int events = (iw->reader ? EV_READ : 0) | (iw->writer ? EV_WRITE : 0);
    int watched = events & ~iw->busy;
    int rc = 0;
    if (loop->ev != NULL) {
        /* also when libev stopped it itself (EV_ERROR): the slot may be
         * freed below, its pending event must go */
        ev_io_stop(loop->ev, &iw->io);
        if (watched) {
            /* ev_io_set also makes libev re-register the fd with the kernel,
             * which matters when the fd number was closed and reused */
            ev_io_set(&iw->io, iw->fd, watched);
            ev_io_start(loop->ev, &iw->io);
            rc = tl_ev_register(loop->ev, &iw->io);
            if (rc < 0)
                ev_clear_pending(loop->ev, &iw->io);
        }
    }
    io_release(iw);
    return rc;
}

/* Threaded loops: a reader's or writer's callback ran on a worker; watch
 * the fd again for it, unless it was removed or replaced meanwhile. */
static int io_done(tl_loop *loop, PyObject *obj, int event)
{
    int rc = tl_handle_ready_fn(loop, obj);
    PyObject *exc = rc < 0 ? PyErr_GetRaisedException() : NULL;
    int locked = tl_loop_ev_lock(loop);
    tl_io_watch *iw = io_lookup(loop, ((tl_handle *)obj)->io_fd);
    int changed = 0;
    if (iw != NULL && (iw->busy & event) &&
        (event == EV_READ ? iw->reader : iw->writer) == obj) {
        iw->busy &= ~event;
        io_update(loop, iw);
        changed = 1;
    }
    tl_loop_ev_unlock(loop, locked);
    if (changed)
        tl_loop_ev_changed(loop);
    if (exc != NULL)
        PyErr_SetRaisedException(exc);
    return rc;
}

static int io_reader_done_fn(tl_loop *loop, PyObject *obj)
{
    return io_done(loop, obj, EV_READ);
}

static int io_writer_done_fn(tl_loop *loop, PyObject *obj)
{
    return io_done(loop, obj, EV_WRITE);
}

/* Queue a ready fd's handle. */
static int io_push(tl_loop *loop, tl_io_watch *iw, tl_handle *h, int event)
{
    if (TL_LIKELY(loop->dispatch == NULL))
        return tl_loop_push_ready(loop, tl_handle_ready_fn, Py_NewRef(h));
    iw->busy |= event;
    io_update(loop, iw);
    return tl_loop_push_ready(loop, event == EV_READ ? io_reader_done_fn : io_writer_done_fn,
                              Py_NewRef(h));
}

static void io_cb(struct ev_loop *ev, ev_io *w, int revents)
{
    TL_UNUSED(ev);
    tl_io_watch *iw = (tl_io_watch *)w;
    tl_loop *loop = iw->loop;
    int fd = iw->fd;
    if (revents & EV_ERROR)
        return;     /* libev stopped the watcher: the fd went bad */
    if ((revents & EV_READ) && iw->reader != NULL) {
        tl_handle *h = (tl_handle *)iw->reader;
        if (h->cancelled) {
            Py_CLEAR(iw->reader);
            io_update(loop, iw);
            iw = io_lookup(loop, fd);
        } else if (io_push(loop, iw, h, EV_READ) < 0) {
            tl_loop_defer_error(loop);
            return;
        }
    }
    if (iw != NULL && (revents & EV_WRITE) && iw->writer != NULL) {
        tl_handle *h = (tl_handle *)iw->writer;
        if (h->cancelled) {
            Py_CLEAR(iw->writer);
            io_update(loop, iw);
        } else if (io_push(loop, iw, h, EV_WRITE) < 0) {
            tl_loop_defer_error(loop);
        }
    }
}

/* ---- lines of operations waiting for an fd ----------------------------- */

static int queued_line(const tl_io_queued *q)
{
    return (q->io.events & EV_WRITE) ? 1 : 0;
}

/* Take q out of its line; the file object goes when nothing else uses the
 * slot (io_release). */
static void queue_unlink(tl_io_watch *iw, tl_io_queued *q)
{
    int line = queued_line(q);
    if (q->prev != NULL)
        q->prev->next = q->next;
    else
        iw->first[line] = q->next;
    if (q->next != NULL)
        q->next->prev = q->prev;
    else
        iw->last[line] = q->prev;
    q->prev = q->next = NULL;
    q->in_line = 0;
    io_release(iw);
}

int tl_io_queue_join(tl_loop *loop, tl_io_queued *q)
{
    tl_io_watch *iw = io_get_or_create(loop, q->io.fd);
    if (iw == NULL)
        return -1;
    int line = queued_line(q);
    q->next = NULL;
    q->prev = iw->last[line];
    q->in_line = 1;
    iw->last[line] = q;
    if (q->prev != NULL) {
        q->prev->next = q;
        return 0;
    }
    iw->first[line] = q;
    if (tl_loop_io_start(loop, &q->io) == 0)
        return 0;
    int err = errno;
    ev_clear_pending(loop->ev, &q->io);
    queue_unlink(iw, q);
    errno = err;
    PyErr_SetFromErrno(PyExc_OSError);
    return -1;
}

void tl_io_queue_leave_line(tl_loop *loop, tl_io_queued *q, int pass_on)
{
    tl_io_watch *iw = io_lookup(loop, q->io.fd);
    tl_io_queued *next = q->prev == NULL ? q->next : NULL;
    /* also when libev stopped it itself (EV_ERROR): its event is pending */
    ev_io_stop(loop->ev, &q->io);
    queue_unlink(iw, q);
    /* an fd gone bad leaves EV_ERROR pending for next, which fails so */
    if (next != NULL && tl_loop_io_start(loop, &next->io) == 0 && pass_on)
        ev_feed_event(loop->ev, &next->io, next->io.events & (EV_READ | EV_WRITE));
}

/* loop.close(): whoever is in a line finds itself out of it. */
static void queue_clear(tl_loop *loop, tl_io_watch *iw)
{
    for (int line = 0; line < 2; line++) {
        tl_io_queued *q = iw->first[line];
        while (q != NULL) {
            tl_io_queued *next = q->next;
            if (loop->ev != NULL)
                ev_io_stop(loop->ev, &q->io);
            q->prev = q->next = NULL;
            q->in_line = 0;
            q = next;
        }
        iw->first[line] = iw->last[line] = NULL;
    }
}

/* The fd a file object was registered under when it cannot tell any more
 * (closed: fileno() is -1), as asyncio's selector finds it; -1 if none. */
static int io_fd_registered_as(tl_loop *loop, PyObject *fileobj)
{
    for (int fd = 0; fd < loop->io.cap; fd++) {
        tl_io_watch *iw = loop->io.slots[fd];
        if (iw != NULL && iw->fileobj == fileobj)
            return fd;
    }
    return -1;
}

int tl_io_fileobj_to_fd(PyObject *fileobj)
{
    long fd;
    if (PyLong_Check(fileobj)) {
        int overflow;
        fd = PyLong_AsLongAndOverflow(fileobj, &overflow);
        if (overflow > 0)
            goto too_large;
        if (overflow < 0)
            fd = -1;
        else if (fd == -1 && PyErr_Occurred())
            return -1;
    } else {
        PyObject *r = tl_call_method(fileobj, "fileno", NULL);
        if (r == NULL || !PyLong_Check(r)) {
            Py_XDECREF(r);
            PyErr_Clear();
            PyErr_Format(PyExc_ValueError, "Invalid file object: %R", fileobj);
            return -1;
        }
        fd = PyLong_AsLong(r);
        Py_DECREF(r);
        if (fd == -1 && PyErr_Occurred())
            return -1;
    }
    if (fd < 0) {
        PyErr_Format(PyExc_ValueError, "Invalid file descriptor: %ld", fd);
        return -1;
    }
    if (fd > INT32_MAX)
        goto too_large;
    return (int)fd;
too_large:
    /* no such fd can be open; asyncio's epoll says so as it registers */
    PyErr_SetString(PyExc_OverflowError, "Python int too large to convert to C int");
    return -1;
}

/* asyncio._ensure_fd_no_transport */
int tl_io_ensure_no_transport(tl_loop *loop, PyObject *fileobj, int fd)
{
    int locked = tl_loop_ev_lock(loop);
    tl_io_watch *iw = io_lookup(loop, fd);
    PyObject *owner = iw != NULL ? Py_XNewRef(iw->owner) : NULL;
    tl_loop_ev_unlock(loop, locked);
    if (owner == NULL)
        return 0;
    int rc = -1;
    PyObject *closing = tl_call_method(owner, "is_closing", NULL);
    int is_closing = closing ? PyObject_IsTrue(closing) : -1;
    Py_XDECREF(closing);
    if (is_closing == 0)
        PyErr_Format(PyExc_RuntimeError,
                     "File descriptor %R is used by transport %R", fileobj, owner);
    else if (is_closing > 0)
        rc = 0;
    Py_DECREF(owner);
    return rc;
}

/* epoll refuses what cannot be polled; asyncio's selector raises that
 * OSError from add_reader, so check before libev quietly copes. */
static int io_check_pollable(int fd)
{
    struct stat sb;
    if (fstat(fd, &sb) < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    if (S_ISREG(sb.st_mode) || S_ISDIR(sb.st_mode)) {
        errno = EPERM;
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    return 0;
}

static PyObject *io_add(tl_loop *loop, PyObject *const *args, Py_ssize_t nargs,
                        const char *name, int writing, int check_transport)
{
    if (nargs < 2) {
        PyErr_Format(PyExc_TypeError, "%s() missing required argument '%s'", name,
                     nargs == 0 ? "fd" : "callback");
        return NULL;
    }
    int fd = tl_io_fileobj_to_fd(args[0]);
    if (fd < 0)
        return NULL;
    if (check_transport && tl_io_ensure_no_transport(loop, args[0], fd) < 0)
        return NULL;
    if (tl_loop_check_closed(loop) < 0 || io_check_pollable(fd) < 0)
        return NULL;
    tl_handle *h = tl_handle_new(loop, args[1], args + 2, nargs - 2, NULL);
    if (h == NULL)
        return NULL;
    /* held by the fd table, which visits it like any object */
    if (!PyObject_GC_IsTracked((PyObject *)h))
        PyObject_GC_Track(h);
    int locked = tl_loop_ev_lock(loop);
    tl_io_watch *iw = io_get_or_create(loop, fd);
    PyObject *old = NULL;
    int closed = 0;
    if (iw != NULL) {
        if (iw->fileobj == NULL)
            iw->fileobj = Py_NewRef(args[0]);
        PyObject **slot = writing ? &iw->writer : &iw->reader;
        old = *slot;
        *slot = Py_NewRef(h);
        h->io_fd = fd;
        iw->busy &= ~(writing ? EV_WRITE : EV_READ);   /* a new one: watch */
        if (io_update(loop, iw) < 0) {
            /* closed since the check above (another thread): not added */
            *slot = old;
            old = NULL;
            io_release(iw);
            closed = 1;
            Py_DECREF(h);
        }
    }
    tl_loop_ev_unlock(loop, locked);
    if (iw == NULL || closed) {
        if (closed) {
            errno = EBADF;
            PyErr_SetFromErrno(PyExc_OSError);
        }
        Py_DECREF(h);
        return NULL;
    }
    tl_loop_ev_changed(loop);
    if (old != NULL) {
        /* asyncio cancels the handle it replaces */
        PyObject *r = tl_call_method(old, "cancel", NULL);
        Py_DECREF(old);
        if (r == NULL) {
            Py_DECREF(h);
            return NULL;
        }
        Py_DECREF(r);
    }
    return (PyObject *)h;
}

static PyObject *io_remove(tl_loop *loop, PyObject *fileobj, int writing, int check_transport)
{
    int fd = tl_io_fileobj_to_fd(fileobj);
    if (fd < 0 && PyErr_ExceptionMatches(PyExc_OverflowError)) {
        PyErr_Clear();          /* beyond any fd: nothing registered there */
        Py_RETURN_FALSE;
    }
    if (fd < 0) {
        /* a file object closed since it was added: found by identity */
        if (PyLong_Check(fileobj) || !PyErr_ExceptionMatches(PyExc_ValueError))
            return NULL;
        int locked = tl_loop_ev_lock(loop);
        fd = io_fd_registered_as(loop, fileobj);
        tl_loop_ev_unlock(loop, locked);
        if (fd < 0)
            return NULL;
        PyErr_Clear();
    } else if (check_transport && tl_io_ensure_no_transport(loop, fileobj, fd) < 0) {
        return NULL;
    }
    if (loop->closed)
        Py_RETURN_FALSE;
    int locked = tl_loop_ev_lock(loop);
    tl_io_watch *iw = io_lookup(loop, fd);
    PyObject *old = NULL, *other = NULL;
    int closed = 0;
    if (iw != NULL) {
        PyObject **slot = writing ? &iw->writer : &iw->reader;
        old = *slot;
        *slot = NULL;
        iw->busy &= ~(writing ? EV_WRITE : EV_READ);
        if (io_update(loop, iw) < 0) {
            /* the fd is closed and the other direction still watched: as
             * asyncio's selector, whose epoll.modify() fails then, the whole
             * registration goes and the call raises */
            PyObject **rest = writing ? &iw->reader : &iw->writer;
            other = *rest;
            *rest = NULL;
            io_release(iw);
            closed = 1;
        }
    }
    tl_loop_ev_unlock(loop, locked);
    if (closed) {
        Py_XDECREF(old);
        Py_XDECREF(other);
        errno = EBADF;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    if (old == NULL)
        Py_RETURN_FALSE;
    tl_loop_ev_changed(loop);
    PyObject *r = tl_call_method(old, "cancel", NULL);
    Py_DECREF(old);
    if (r == NULL)
        return NULL;
    Py_DECREF(r);
    Py_RETURN_TRUE;
}

static PyObject *drop_result(PyObject *h)
{
    if (h == NULL)
        return NULL;
    Py_DECREF(h);
    Py_RETURN_NONE;
}

static PyObject *loop_add_reader(tl_loop *loop, PyObject *const *args, Py_ssize_t nargs)
{
    return drop_result(io_add(loop, args, nargs, "add_reader", 0, 1));
}

static PyObject *loop_add_writer(tl_loop *loop, PyObject *const *args, Py_ssize_t nargs)
{
    return drop_result(io_add(loop, args, nargs, "add_writer", 1, 1));
}

static PyObject *loop_add_reader_internal(tl_loop *loop, PyObject *const *args, Py_ssize_t nargs)
{
    return io_add(loop, args, nargs, "_add_reader", 0, 0);
}

static PyObject *loop_add_writer_internal(tl_loop *loop, PyObject *const *args, Py_ssize_t nargs)
{
    return io_add(loop, args, nargs, "_add_writer", 1, 0);
}

static PyObject *loop_remove_reader(tl_loop *loop, PyObject *fd)
{
    return io_remove(loop, fd, 0, 1);
}

static PyObject *loop_remove_writer(tl_loop *loop, PyObject *fd)
{
    return io_remove(loop, fd, 1, 1);
}

static PyObject *loop_remove_reader_internal(tl_loop *loop, PyObject *fd)
{
    return io_remove(loop, fd, 0, 0);
}

static PyObject *loop_remove_writer_internal(tl_loop *loop, PyObject *fd)
{
    return io_remove(loop, fd, 1, 0);
}

PyMethodDef tl_io_loop_methods[] = {
    {"add_reader", (PyCFunction)(void (*)(void))loop_add_reader, METH_FASTCALL,
     "add_reader(fd, callback, *args)\n--\n\n"
     "Call callback(*args) whenever fd is readable."},
    {"remove_reader", (PyCFunction)loop_remove_reader, METH_O,
     "Stop watching fd for reading; True if it was watched."},
    {"add_writer", (PyCFunction)(void (*)(void))loop_add_writer, METH_FASTCALL,
     "add_writer(fd, callback, *args)\n--\n\n"
     "Call callback(*args) whenever fd is writable."},
    {"remove_writer", (PyCFunction)loop_remove_writer, METH_O,
     "Stop watching fd for writing; True if it was watched."},
    {"_add_reader", (PyCFunction)(void (*)(void))loop_add_reader_internal, METH_FASTCALL, NULL},
    {"_add_writer", (PyCFunction)(void (*)(void))loop_add_writer_internal, METH_FASTCALL, NULL},
    {"_remove_reader", (PyCFunction)loop_remove_reader_internal, METH_O, NULL},
    {"_remove_writer", (PyCFunction)loop_remove_writer_internal, METH_O, NULL},
    {NULL, NULL, 0, NULL},
};

int tl_io_set_owner(tl_loop *loop, int fd, PyObject *owner)
{
    int locked = tl_loop_ev_lock(loop);
    int rc = 0;
    if (owner == NULL) {
        tl_io_watch *iw = io_lookup(loop, fd);
        if (iw != NULL) {
            iw->owner = NULL;
            io_update(loop, iw);
        }
    } else {
        tl_io_watch *iw = io_get_or_create(loop, fd);
        if (iw == NULL)
            rc = -1;
        else
            iw->owner = owner;
    }
    tl_loop_ev_unlock(loop, locked);
    return rc;
}

void tl_io_table_clear(tl_loop *loop)
{
    tl_io_table *t = &loop->io;
    for (int fd = 0; fd < t->cap; fd++) {
        tl_io_watch *iw = t->slots[fd];
        if (iw == NULL)
            continue;
        t->slots[fd] = NULL;
        if (loop->ev != NULL)
            ev_io_stop(loop->ev, &iw->io);
        queue_clear(loop, iw);
        Py_CLEAR(iw->reader);
        Py_CLEAR(iw->writer);
        Py_CLEAR(iw->fileobj);
        PyMem_Free(iw);
    }
    PyMem_Free(t->slots);
    t->slots = NULL;
    t->cap = 0;
}

int tl_io_table_traverse(tl_io_table *t, visitproc visit, void *arg)
{
    for (int fd = 0; fd < t->cap; fd++) {
        tl_io_watch *iw = t->slots[fd];
        if (iw != NULL) {
            Py_VISIT(iw->reader);
            Py_VISIT(iw->writer);
            Py_VISIT(iw->fileobj);
        }
    }
    return 0;
}

/* stream.c - the fd transport core: what socket, pipe and datagram
 * transports share (reading, the write ring, flow control, closing, the
 * protocol's callbacks, extra info, their Python type's plumbing).
 *
 * Semantics follow asyncio's selector_events._SelectorSocketTransport and
 * unix_events._UnixReadPipeTransport/_UnixWritePipeTransport line by line
 * (same checks in the same order, same messages); where those classes
 * differ the code asks the rules of the class the kind mirrors
 * (t->ops->rules). A kind's file (socket.c, pipe.c, datagram.c) brings its
 * ops, its type and its constructor; nothing here calls into one.
 * See tl_stream.h and docs/design.md.
 */
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include "tl_stream.h"
#include "tl_stream_threads.h"
#include "tl_io.h"
#include "tl_sockaddr.h"
#include "tl_task.h"

#define TL_READ_MAX TL_STREAM_READ_MAX  /* asyncio's max_size */
#define TL_IOV_MAX 64                   /* buffers per writev/sendmsg */
#define TL_CONNLOST_LOG_THRESHOLD 5     /* LOG_THRESHOLD_FOR_CONNLOST_WRITES */

#define STREAM_OF(w, field) \
    ((tl_stream *)((char *)(w) - offsetof(tl_stream, field)))

static int stream_read_ready(tl_stream *t);
static int stream_write_ready(tl_stream *t);
static int stream_force_close(tl_stream *t, PyObject *exc);
static int stream_close_impl(tl_stream *t);
static int run_in_context(tl_stream *t, int (*step)(tl_stream *));

/* The queue item (tl_ready_fn) that runs step(t) through run_in_context */
#define STREAM_STEP_FN(name, step)                                  \
    static int name(tl_loop *loop, PyObject *obj)                   \
    {                                                               \
        TL_UNUSED(loop);                                            \
        return run_in_context((tl_stream *)obj, step);              \
    }

/* socket and datagram transports: asyncio's _SelectorTransport */
static inline int is_selector(tl_stream *t)
{
    return t->ops->rules & TL_RULES_SELECTOR;
}

static inline int is_exit_exception(void)
{
    return PyErr_ExceptionMatches(PyExc_SystemExit) ||
           PyErr_ExceptionMatches(PyExc_KeyboardInterrupt);
}

/* ---- watchers and the self-reference ---------------------------------- */

/* Hold a reference to ourselves while a watcher is active (asyncio's
 * selector holds the transport's handles the same way). Dropping it may
 * free the transport: every entry point holds its own reference. */
/* A watcher libev stopped itself (EV_ERROR: the fd went bad) still has its
 * event pending: the transport must outlive that too. */
static inline int watch_busy(ev_io *w)
{
    return ev_is_active(w) || ev_is_pending(w);
}

static void stream_hold_update(tl_stream *t)
{
    int active = watch_busy(&t->rio) || watch_busy(&t->wio);
    if (active && !t->held) {
        t->held = 1;
        Py_INCREF(t);
        tl_loop_link_add(t->loop, &t->link);
    } else if (!active && t->held) {
        t->held = 0;
        tl_loop_link_remove(&t->link);
        Py_DECREF(t);
    }
}

static void watch_start(tl_stream *t, ev_io *w)
{
    /* a full inbox restarts the reader once it drained */
    if (ev_is_active(w) || t->loop->ev == NULL || (w == &t->rio && t->inbox_full))
        return;
    tl_loop_io_start(t->loop, w);
    stream_hold_update(t);
}

static void watch_stop(tl_stream *t, ev_io *w)
{
    if (w == &t->rio)
        t->inbox_full = 0;  /* reading stops for good: no restart */
    /* also after libev stopped it itself (EV_ERROR: the fd went bad): a
     * stop takes back the pending event too */
    if (t->loop->ev != NULL)
        ev_io_stop(t->loop->ev, w);
    stream_hold_update(t);
}

/* ---- the threaded side's doors (tl_stream_threads.h) ------------------- */

static inline void wfast_off(tl_stream *t)
{
    if (TL_UNLIKELY(t->mt != NULL))
        t->mt->wfast_off(t);
}

static inline void wfast_update(tl_stream *t)
{
    if (TL_UNLIKELY(t->mt != NULL))
        t->mt->wfast_update(t);
}

/* The task running here (a step or a callback it scheduled) becomes the
 * transport's home on a threaded loop: it paused or resumed the transport. */
static inline void stream_home_here(tl_stream *t)
{
    if (TL_UNLIKELY(t->loop->dispatch != NULL))
        t->mt->home_here(t);
}

/* Does this thread run the transport's home task (or is there none)? Its
 * protocol must not be called beside that task's steps. */
static inline int stream_home_is_here(tl_stream *t)
{
    return TL_LIKELY(t->loop->dispatch == NULL) || t->mt->home_is_here(t);
}

/* May the protocol be called right here (the loop lock held)? Its other
 * callbacks run with the lock too, all but data_received() on a threaded
 * loop: while that runs, only the worker running it may call the protocol;
 * others (a task writing from another worker, the loop thread flushing)
 * queue the call on the transport's strand, behind it. */
static inline int stream_in_strand(tl_stream *t)
{
    return TL_LIKELY(!t->in_data_received) || t->mt->in_strand(t);
}

/* asyncio's _add_reader/_add_writer refuse once the loop is closed */
static int stream_check_loop(tl_stream *t)
{
    return tl_loop_check_closed(t->loop);
}

static void stream_on_loop_close(tl_loop_link *link)
{
    tl_stream *t = (tl_stream *)((char *)link - offsetof(tl_stream, link));
    /* already unlinked by the loop; a stop also takes back a pending event */
    ev_io_stop(t->loop->ev, &t->rio);
    ev_io_stop(t->loop->ev, &t->wio);
    if (t->held) {
        t->held = 0;
        Py_DECREF(t);
    }
}

/* The reader runs once connection_made() did and while reading is wanted. */
static void stream_start_reading(tl_stream *t)
{
    /* (after an EOF a threaded loop's reader never starts again: the EOF
     * may wait in the strand, and a second one would be read) */
    if (t->made && tl_stream_is_reading(t) && !(t->ops->rules & TL_RULES_UNIX_WRITE_PIPE) &&
        !t->eof_read)
        watch_start(t, &t->rio);
}

/* Queue fn(t) where the protocol's callbacks run: the ready queue, or on a
 * threaded loop the transport's strand (in order, one at a time, on
 * workers). Takes its own reference to t. */
static int stream_push(tl_stream *t, tl_ready_fn fn)
{
    if (TL_UNLIKELY(t->loop->dispatch != NULL))
        return t->mt->push(t, fn);
    Py_INCREF(t);
    return tl_loop_push_ready(t->loop, fn, (PyObject *)t);
}

/* ---- calling the protocol ---------------------------------------------- */

/* protocol.<name>(*args): a new reference or NULL with the error set */
static PyObject *call_protocol(tl_stream *t, PyObject *name, PyObject *arg)
{
    if (TL_UNLIKELY(t->protocol == NULL))   /* connection_lost() ran */
        Py_RETURN_NONE;
    PyObject *stack[3] = {NULL, t->protocol, arg};
    size_t n = (arg ? 2 : 1) | PY_VECTORCALL_ARGUMENTS_OFFSET;
    return PyObject_VectorcallMethod(name, stack + 1, n, NULL);
}

static void log_message(tl_stream *t, const char *level, const char *fmt,
                        PyObject *exc)
{
    PyObject *saved = PyErr_GetRaisedException();
    PyObject *meth = tl_getattr(t->loop->st->logger, level);
    PyObject *args = meth ? Py_BuildValue("(sO)", fmt, (PyObject *)t) : NULL;
    PyObject *kw = (args && exc) ? Py_BuildValue("{sO}", "exc_info", exc) : NULL;
    PyObject *r = (args && (kw || !exc)) ? PyObject_Call(meth, args, kw) : NULL;
    if (r == NULL)
        PyErr_WriteUnraisable((PyObject *)t);
    Py_XDECREF(r);
    Py_XDECREF(kw);
    Py_XDECREF(args);
    Py_XDECREF(meth);
    PyErr_SetRaisedException(saved);
}

/* logger.debug(fmt, self) in debug mode, asyncio's progress messages */
static void debug_log(tl_stream *t, const char *level, const char *fmt)
{
    if (TL_UNLIKELY(t->loop->debug))
        log_message(t, level, fmt, NULL);
}

/* loop.call_exception_handler({'message', 'exception', 'transport',
 * 'protocol'}). Consumes exc. -1 only when the handler raised SystemExit or
 * KeyboardInterrupt (set). */
static int stream_report(tl_stream *t, const char *message, PyObject *exc)
{
    PyObject *ctx = Py_BuildValue("{sssOsOsO}", "message", message, "exception", exc,
                                  "transport", (PyObject *)t, "protocol",
                                  t->protocol ? t->protocol : Py_None);
    Py_DECREF(exc);
    if (ctx == NULL)
        return is_exit_exception() ? -1 : (PyErr_WriteUnraisable((PyObject *)t), 0);
    int rc = tl_loop_report(t->loop, ctx);
    Py_DECREF(ctx);
    if (rc < 0 && !is_exit_exception()) {
        PyErr_WriteUnraisable((PyObject *)t);
        rc = 0;
    }
    return rc;
}

/* A protocol callback raised where asyncio has no handler of its own around
 * it: its Handle would report it, so report it the same way. Returns -1
 * (error kept) for SystemExit/KeyboardInterrupt. */
static int report_callback_error(tl_stream *t, PyObject *proto, const char *method)
{
    if (is_exit_exception())
        return -1;
    PyObject *exc = PyErr_GetRaisedException();
    char msg[256];
    PyOS_snprintf(msg, sizeof(msg), "Exception in callback %.100s.%.50s()",
                  tl_type_name(Py_TYPE(proto)), method);
    return stream_report(t, msg, exc);
}

/* asyncio's _fatal_error(exc, message) with the current exception: OSErrors
 * (peers reset connections all the time) are only logged in debug mode,
 * anything else goes to the exception handler; then the transport closes
 * with exc. Returns -1 (error set) for SystemExit/KeyboardInterrupt. */
static int stream_fatal(tl_stream *t, const char *message, int loud)
{
    if (is_exit_exception())
        return -1;
    PyObject *exc = PyErr_GetRaisedException();
    int quiet = !loud && PyErr_GivenExceptionMatches(exc, PyExc_OSError);
    if (quiet && (t->ops->rules & TL_RULES_UNIX_READ_PIPE)) {
        /* a pty's reader gets EIO when the other side closes: only that
         * stays quiet on read pipes */
        PyObject *eno = tl_getattr(exc, "errno");
        quiet = eno != NULL && PyLong_Check(eno) && PyLong_AsLong(eno) == EIO;
        Py_XDECREF(eno);
        PyErr_Clear();
    }
    int rc = 0;
    if (quiet) {
        if (TL_UNLIKELY(t->loop->debug)) {
            char fmt[200];
            PyOS_snprintf(fmt, sizeof(fmt), "%%r: %s", message);
            log_message(t, "debug", fmt, exc);
        }
    } else {
        rc = stream_report(t, message, Py_NewRef(exc));
    }
    if (stream_force_close(t, exc) < 0)
        rc = -1;
    Py_DECREF(exc);
    return rc;
}

static int stream_fatal_error(tl_stream *t, const char *message)
{
    return stream_fatal(t, message, 0);
}

static int stream_fatal_errno(tl_stream *t, const char *message)
{
    PyErr_SetFromErrno(PyExc_OSError);
    return stream_fatal_error(t, message);
}

/* ---- entering the protocol's context from libev callbacks -------------- */

/* 1: entered, 0: not (none, or on a threaded loop a worker is in it, in
 * data_received(): a context is entered by one thread at a time, and the
 * loop thread then calls no protocol code), -1: failed */
static int stream_enter(tl_stream *t)
{
    if (t->context == NULL || t->in_data_received)
        return 0;
    if (PyContext_Enter(t->context) < 0) {
        tl_loop_defer_error(t->loop);
        return -1;
    }
    return 1;
}

static void stream_exit(tl_stream *t, int entered, int rc)
{
    if (rc < 0)
        tl_loop_defer_error(t->loop);   /* SystemExit/KeyboardInterrupt */
    if (entered && PyContext_Exit(t->context) < 0)
        tl_loop_defer_error(t->loop);
}

/* Run one libev-driven step in the protocol's context. In debug mode a
 * slow one is logged the way asyncio logs a slow handle (its I/O callbacks
 * are handles there). */
static void stream_step(tl_stream *t, int (*step)(tl_stream *), const char *what)
{
    Py_INCREF(t);
    double t0 = TL_UNLIKELY(t->loop->debug) ? tl_monotonic() : 0.0;
    int entered = stream_enter(t);
    if (entered >= 0)
        stream_exit(t, entered, step(t));
    stream_hold_update(t);     /* libev stops a watcher whose fd went bad */
    if (TL_UNLIKELY(t->loop->debug)) {
        double dt = tl_monotonic() - t0;
        PyObject *exc = PyErr_GetRaisedException();
        int slow = tl_loop_is_slow(t->loop, dt);
        if (slow < 0)
            tl_loop_defer_error(t->loop);
        if (slow > 0) {
            PyObject *r = tl_call_method(t->loop->st->logger, "warning", "sOsd",
                                              "Executing <%r.%s()> took %.3f seconds",
                                              (PyObject *)t, what, dt);
            if (r == NULL)
                PyErr_WriteUnraisable((PyObject *)t);
            Py_XDECREF(r);
        }
        PyErr_SetRaisedException(exc);
    }
    Py_DECREF(t);
}

/* EV_ERROR: libev found the fd closed when it registered it (someone
 * closed the transport's fd under it) and stopped the watcher. No read or
 * write: the number may name another file by now. The error goes to the
 * exception handler even though it is an OSError (asyncio reports it there:
 * its add_reader() fails in a callback), and the transport closes. */
static int stream_fd_closed(tl_stream *t, const char *message)
{
    errno = EBADF;
    PyErr_SetFromErrno(PyExc_OSError);
    return stream_fatal(t, message, 1);
}

static int stream_read_fd_closed(tl_stream *t)
{
    return stream_fd_closed(t, t->ops->read_error);
}

static int stream_write_fd_closed(tl_stream *t)
{
    return stream_fd_closed(t, t->ops->write_error);
}

/* The poll reported the fd while callbacks queued before it wait
 * (tl_loop_io_behind): its turn comes after them, as asyncio's reader and
 * writer handles' do. By then reading or writing may have stopped. */
static int stream_read_later(tl_loop *loop, PyObject *obj)
{
    tl_stream *t = (tl_stream *)obj;
    if (ev_is_active(&t->rio))
        stream_step(t, stream_read_ready, "_read_ready");
    return tl_loop_raise_deferred(loop);
}

static int stream_write_later(tl_loop *loop, PyObject *obj)
{
    tl_stream *t = (tl_stream *)obj;
    if (ev_is_active(&t->wio))
        stream_step(t, stream_write_ready, "_write_ready");
    return tl_loop_raise_deferred(loop);
}

static void stream_io_later(tl_stream *t, tl_ready_fn fn)
{
    if (tl_loop_push_ready(t->loop, fn, Py_NewRef((PyObject *)t)) < 0)
        tl_loop_defer_error(t->loop);
}

static void stream_rio_cb(struct ev_loop *ev, ev_io *w, int revents)
{
    TL_UNUSED(ev);
    tl_stream *t = STREAM_OF(w, rio);
    if (TL_UNLIKELY(revents & EV_ERROR))
        stream_step(t, stream_read_fd_closed, "_read_ready");
    else if (TL_UNLIKELY(tl_loop_io_behind(t->loop)))
        stream_io_later(t, stream_read_later);
    else
        stream_step(t, stream_read_ready, "_read_ready");
}

static void stream_wio_cb(struct ev_loop *ev, ev_io *w, int revents)
{
    TL_UNUSED(ev);
    tl_stream *t = STREAM_OF(w, wio);
    if (TL_UNLIKELY(revents & EV_ERROR))
        stream_step(t, stream_write_fd_closed, "_write_ready");
    else if (TL_UNLIKELY(tl_loop_io_behind(t->loop)))
        stream_io_later(t, stream_write_later);
    else
        stream_step(t, stream_write_ready, "_write_ready");
}

/* ---- reading ------------------------------------------------------------ */

static char *loop_read_buffer(tl_loop *loop)
{
    if (TL_UNLIKELY(loop->read_buf == NULL)) {
        loop->read_buf = PyMem_Malloc(TL_READ_MAX);
        if (loop->read_buf == NULL)
            PyErr_NoMemory();
    }
    return loop->read_buf;
}

/* Reads land in a bytes object of about the size the previous read had
 * (readv: the object first, the loop's buffer for whatever does not fit), so
 * a steady stream of similar messages is read without copying. Small or
 * first reads go through the loop's buffer and are copied out. Objects stay
 * below the malloc mmap threshold. */
#define TL_DIRECT_READ_MIN 2048
#define TL_DIRECT_READ_MAX (120 * 1024)

/* A bytes object that data_received() let go of (nobody else holds it) is
 * kept for the next read: a steady exchange then neither allocates nor
 * frees per message. Not with free threading, where a reference count of
 * one proves nothing about other threads. */
#if !defined(Py_GIL_DISABLED) && PY_VERSION_HEX < 0x030F0000
#define TL_RECYCLE_BYTES 1
#else
#define TL_RECYCLE_BYTES 0
#endif

#if TL_RECYCLE_BYTES
/* The recycled object gets new contents: forget a hash computed for the
 * old ones (the field is deprecated for extensions, not gone). */
static inline void bytes_forget_hash(PyObject *b)
{
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
    ((PyBytesObject *)b)->ob_shash = -1;
#pragma GCC diagnostic pop
}
#endif

void tl_read_recycle(tl_loop *loop, PyObject *data)
{
#if TL_RECYCLE_BYTES
    /* sizes 0 and 1 may be the interpreter's shared singletons */
    if (Py_REFCNT(data) == 1 && PyBytes_CheckExact(data) && PyBytes_GET_SIZE(data) > 1 &&
        PyBytes_GET_SIZE(data) <= TL_DIRECT_READ_MAX) {
        /* keep the larger one: a shrunk spare must not stay too small */
        PyObject *spare = loop->read_spare;
        if (spare == NULL || PyBytes_GET_SIZE(spare) < PyBytes_GET_SIZE(data)) {
            loop->read_spare = data;
            data = spare;
            if (data == NULL)
                return;
        }
    }
#else
    TL_UNUSED(loop);
#endif
    Py_DECREF(data);
}

static inline ssize_t readv_fd(int fd, struct iovec *iov, int cnt, int use_recv)
{
    if (cnt == 1)       /* read/recv take the kernel's shorter way */
        return use_recv ? recv(fd, iov[0].iov_base, iov[0].iov_len, MSG_DONTWAIT)
                        : read(fd, iov[0].iov_base, iov[0].iov_len);
    if (!use_recv)
        return readv(fd, iov, cnt);
    struct msghdr msg;
    memset(&msg, 0, sizeof(msg));
    msg.msg_iov = iov;
    msg.msg_iovlen = (size_t)cnt;
    return recvmsg(fd, &msg, MSG_DONTWAIT);
}

ssize_t tl_read_bytes(tl_loop *loop, int fd, Py_ssize_t max, int use_recv, int32_t *last,
                      PyObject **out)
{
    char *buf = loop_read_buffer(loop);
    if (buf == NULL)
        return -2;
    if (max > TL_READ_MAX)
        max = TL_READ_MAX;
    PyObject *bytes = NULL;
    Py_ssize_t guess = 0;
    if (*last >= TL_DIRECT_READ_MIN && max >= TL_DIRECT_READ_MIN) {
        /* room for the same again, rounded up to whole pages */
        guess = ((Py_ssize_t)*last + 4095) & ~(Py_ssize_t)4095;
        if (guess > TL_DIRECT_READ_MAX)
            guess = TL_DIRECT_READ_MAX;
        if (guess > max)
            guess = max;
    }
#if TL_RECYCLE_BYTES
    PyObject *spare = loop->read_spare;
    /* it will do when it holds what came last time */
    if (spare != NULL && PyBytes_GET_SIZE(spare) <= max &&
        PyBytes_GET_SIZE(spare) >= (guess ? *last : 0)) {
        loop->read_spare = NULL;
        bytes = spare;
        guess = PyBytes_GET_SIZE(spare);
        bytes_forget_hash(bytes);
    }
#endif
    if (bytes == NULL && guess > 0) {
        bytes = PyBytes_FromStringAndSize(NULL, guess);
        if (bytes == NULL)
            return -2;
    }
    struct iovec iov[2];
    int cnt = 0;
    if (bytes != NULL) {
        iov[cnt].iov_base = PyBytes_AS_STRING(bytes);
        iov[cnt++].iov_len = (size_t)guess;
    }
    if (max > guess) {
        iov[cnt].iov_base = buf;
        iov[cnt++].iov_len = (size_t)(max - guess);
    }
    ssize_t n = readv_fd(fd, iov, cnt, use_recv);
    if (n <= 0) {
        int err = errno;
        if (bytes != NULL)
            tl_read_recycle(loop, bytes);
        errno = err;
        *last = 0;
        return n;
    }
    *last = (int32_t)n;
    if (bytes == NULL) {
        *out = PyBytes_FromStringAndSize(buf, n);
        return *out ? n : -2;
    }
    if (n <= guess) {
        if (n < guess && _PyBytes_Resize(&bytes, n) < 0)
            return -2;
        *out = bytes;
        return n;
    }
    /* more came than guessed: join the two parts */
    PyObject *joined = PyBytes_FromStringAndSize(NULL, n);
    if (joined != NULL) {
        memcpy(PyBytes_AS_STRING(joined), PyBytes_AS_STRING(bytes), (size_t)guess);
        memcpy(PyBytes_AS_STRING(joined) + guess, buf, (size_t)(n - guess));
    }
    tl_read_recycle(loop, bytes);
    *out = joined;
    return joined ? n : -2;
}


static int eof_then_lost_fn(tl_loop *loop, PyObject *obj);

static int stream_on_eof(tl_stream *t)
{
    if (TL_UNLIKELY(t->loop->dispatch != NULL) && !tl_dispatch_on_worker(t->loop))
        return t->mt->eof_read(t);     /* behind the data still on the strand */
    if (t->ops->rules & TL_RULES_UNIX_READ_PIPE) {
        /* _UnixReadPipeTransport: eof_received() and connection_lost(None)
         * on the next iteration; the return value does not matter */
        debug_log(t, "info", "%r was closed by peer");
        t->closing = 1;
        t->lost_scheduled = 1;
        watch_stop(t, &t->rio);
        return stream_push(t, eof_then_lost_fn) < 0
                   ? stream_fatal_error(t, t->ops->read_error) : 0;
    }
    debug_log(t, "debug", "%r received EOF");
    PyObject *r = call_protocol(t, t->loop->st->str_eof_received, NULL);
    if (r == NULL)
        return stream_fatal_error(t, "Fatal error: protocol.eof_received() call failed.");
    int keep_open = PyObject_IsTrue(r);
    Py_DECREF(r);
    if (keep_open < 0)
        return stream_fatal_error(t, "Fatal error: protocol.eof_received() call failed.");
    if (keep_open) {
        /* the protocol may still write, but there is nothing more to read */
        watch_stop(t, &t->rio);
        return 0;
    }
    return stream_close_impl(t);
}

static int stream_read_into_protocol(tl_stream *t)
{
    if (t->conn_lost)
        return 0;
    tl_state *st = t->loop->st;
    PyObject *minus_one = PyLong_FromLong(-1);
    PyObject *buf = minus_one ? call_protocol(t, st->str_get_buffer, minus_one) : NULL;
    Py_XDECREF(minus_one);
    if (buf == NULL)
        return stream_fatal_error(t, "Fatal error: protocol.get_buffer() call failed.");
    Py_ssize_t size = PyObject_Size(buf);
    if (size <= 0) {
        Py_DECREF(buf);
        if (size == 0)
            PyErr_SetString(PyExc_RuntimeError, "get_buffer() returned an empty buffer");
        return stream_fatal_error(t, "Fatal error: protocol.get_buffer() call failed.");
    }
    Py_buffer view;
    if (PyObject_GetBuffer(buf, &view, PyBUF_WRITABLE) < 0) {
        Py_DECREF(buf);
        return stream_fatal_error(t, t->ops->read_error);
    }
    ssize_t n = read(t->fd, view.buf, (size_t)view.len);
    int err = errno;
    PyBuffer_Release(&view);
    Py_DECREF(buf);
    if (n < 0) {
        if (tl_stream_would_block(err))
            return 0;
        errno = err;
        return stream_fatal_errno(t, t->ops->read_error);
    }
    if (n == 0)
        return stream_on_eof(t);
    PyObject *nbytes = PyLong_FromSsize_t(n);
    PyObject *r = nbytes ? call_protocol(t, st->str_buffer_updated, nbytes) : NULL;
    Py_XDECREF(nbytes);
    if (r == NULL)
        return stream_fatal_error(t, "Fatal error: protocol.buffer_updated() call failed.");
    Py_DECREF(r);
    return 0;
}

/* A protocol written in C reads what came without a Python call. */
static int stream_read_into_sink(tl_stream *t)
{
    if (t->conn_lost)
        return 0;
    char *buf = loop_read_buffer(t->loop);
    if (buf == NULL)
        return stream_fatal_error(t, t->ops->read_error);
    ssize_t n = read(t->fd, buf, TL_READ_MAX);
    if (n < 0) {
        if (tl_stream_would_block(errno))
            return 0;
        return stream_fatal_errno(t, t->ops->read_error);
    }
    if (n == 0)
        return stream_on_eof(t);
    if (t->sink->received(t->protocol, buf, n) < 0)
        return stream_fatal_error(t, "Fatal error: protocol.buffer_updated() call failed.");
    return 0;
}

/* What data_received() returned (r, stolen; NULL: it raised) */
static int data_received_done(tl_stream *t, PyObject *proto, PyObject *r)
{
    if (r != NULL) {
        Py_DECREF(r);
        return 0;
    }
    if (t->ops->rules & TL_RULES_SELECTOR_SOCKET)
        return stream_fatal_error(t, "Fatal error: protocol.data_received() call failed.");
    /* a read pipe lets the error escape to its handle: reported, and the
     * transport stays open */
    return report_callback_error(t, proto, "data_received");
}

static int stream_read_ready(tl_stream *t)
{
    if (TL_UNLIKELY(t->loop->dispatch != NULL))
        return t->mt->read_ready(t);   /* maybe on the strand */
    return t->read(t);
}

/* The stream's own reader: bytes to data_received() */
static int stream_read_data(tl_stream *t)
{
    if (t->conn_lost)
        return 0;
    PyObject *data = NULL;
    ssize_t n = tl_read_bytes(t->loop, t->fd, TL_READ_MAX, 0, &t->last_read, &data);
    if (n < 0) {
        if (n == -1) {
            if (tl_stream_would_block(errno))
                return 0;
            PyErr_SetFromErrno(PyExc_OSError);
        }
        return stream_fatal_error(t, t->ops->read_error);
    }
    if (n == 0)
        return stream_on_eof(t);
    if (TL_UNLIKELY(t->loop->dispatch != NULL))
        return t->mt->data_read(t, data);  /* the inbox, for the strand */
    PyObject *proto = Py_NewRef(t->protocol);
    PyObject *r = call_protocol(t, t->loop->st->str_data_received, data);
    tl_read_recycle(t->loop, data);
    int rc = data_received_done(t, proto, r);
    Py_DECREF(proto);
    return rc;
}

/* ---- the write buffer ---------------------------------------------------- */

/* Append to the ring (grown as needed); the caller keeps the size. */
static int wq_push_item(tl_stream *t, PyObject *item)
{
    if (t->wq_len == t->wq_cap) {
        uint32_t cap = t->wq_cap ? t->wq_cap * 2 : 4;
        PyObject **items = PyMem_Malloc(cap * sizeof(PyObject *));
        if (items == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        for (uint32_t i = 0; i < t->wq_len; i++)
            items[i] = t->wq[(t->wq_head + i) & (t->wq_cap - 1)];
        PyMem_Free(t->wq);
        t->wq = items;
        t->wq_head = 0;
        t->wq_cap = cap;
    }
    t->wq[(t->wq_head + t->wq_len) & (t->wq_cap - 1)] = item;
    t->wq_len++;
    return 0;
}

static int wq_push(tl_stream *t, PyObject *bytes)
{
    if (wq_push_item(t, bytes) < 0)
        return -1;
    t->wsize += PyBytes_GET_SIZE(bytes) - (t->wq_len == 1 ? t->wq_off : 0);
    return 0;
}

static void wq_clear(tl_stream *t)
{
    while (t->wq_len) {
        Py_DECREF(t->wq[t->wq_head]);
        t->wq_head = (t->wq_head + 1) & (t->wq_cap - 1);
        t->wq_len--;
    }
    PyMem_Free(t->wq);
    t->wq = NULL;
    t->wq_cap = t->wq_head = 0;
    t->wq_off = 0;
    t->wsize = 0;
}

/* Drop the n bytes the kernel took from the front. */
static void wq_consume(tl_stream *t, Py_ssize_t n)
{
    t->wsize -= n;
    while (n > 0) {
        PyObject *b = t->wq[t->wq_head];
        Py_ssize_t left = PyBytes_GET_SIZE(b) - t->wq_off;
        if (n < left) {
            t->wq_off += n;
            return;
        }
        n -= left;
        Py_DECREF(b);
        t->wq_head = (t->wq_head + 1) & (t->wq_cap - 1);
        t->wq_len--;
        t->wq_off = 0;
    }
    if (t->wq_len == 0)
        wq_clear(t);    /* give the ring's memory back to an idle transport */
}

/* Buffer view[off:], keeping bytes objects as they are and copying what
 * the caller could still change. */
static int wq_append(tl_stream *t, PyObject *data, const Py_buffer *view, Py_ssize_t off)
{
    PyObject *b;
    if (PyBytes_CheckExact(data) && (off == 0 || t->wq_len == 0)) {
        b = Py_NewRef(data);
        if (t->wq_len == 0)
            t->wq_off = off;
    } else {
        b = PyBytes_FromStringAndSize((const char *)view->buf + off, view->len - off);
        if (b == NULL)
            return -1;
    }
    if (wq_push(t, b) < 0) {
        Py_DECREF(b);
        return -1;
    }
    return 0;
}

static ssize_t fd_send(tl_stream *t, const void *buf, size_t len)
{
    if (t->is_socket)
        return send(t->fd, buf, len, MSG_NOSIGNAL);
    return write(t->fd, buf, len);
}

static ssize_t fd_sendv(tl_stream *t, struct iovec *iov, int cnt)
{
    if (t->is_socket) {
        struct msghdr msg;
        memset(&msg, 0, sizeof(msg));
        msg.msg_iov = iov;
        msg.msg_iovlen = (size_t)cnt;
        return sendmsg(t->fd, &msg, MSG_NOSIGNAL);
    }
    return writev(t->fd, iov, cnt);
}

/* ---- flow control (transports._FlowControlMixin) ------------------------ */

static int call_flow_control_now(tl_stream *t, PyObject *name, const char *failed);

static int pause_writing_step(tl_stream *t)
{
    return call_flow_control_now(t, t->loop->st->str_pause_writing,
                                 "protocol.pause_writing() failed");
}

static int resume_writing_step(tl_stream *t)
{
    return call_flow_control_now(t, t->loop->st->str_resume_writing,
                                 "protocol.resume_writing() failed");
}

STREAM_STEP_FN(pause_writing_fn, pause_writing_step)

STREAM_STEP_FN(resume_writing_fn, resume_writing_step)

/* protocol.pause_writing()/resume_writing(): right away from the write()
 * or flush that decided it, as asyncio does, or on a threaded loop from the
 * transport's strand when that is not where we are */
static int call_flow_control(tl_stream *t, PyObject *name, const char *failed)
{
    if (TL_LIKELY(stream_in_strand(t)) && stream_home_is_here(t))
        return call_flow_control_now(t, name, failed);
    return stream_push(t, name == t->loop->st->str_pause_writing ? pause_writing_fn
                                                                  : resume_writing_fn);
}

/* a failure is reported */
static int call_flow_control_now(tl_stream *t, PyObject *name, const char *failed)
{
    PyObject *r = call_protocol(t, name, NULL);
    if (r != NULL) {
        Py_DECREF(r);
        return 0;
    }
    if (is_exit_exception())
        return -1;
    return stream_report(t, failed, PyErr_GetRaisedException());
}

static int stream_maybe_pause_protocol(tl_stream *t)
{
    if (t->wsize <= t->high_water || t->protocol_paused)
        return 0;
    t->protocol_paused = 1;
    stream_home_here(t);        /* the writer waits for resume_writing() */
    return call_flow_control(t, t->loop->st->str_pause_writing,
                             "protocol.pause_writing() failed");
}

static int stream_maybe_resume_protocol(tl_stream *t)
{
    if (!t->protocol_paused || t->wsize > t->low_water)
        return 0;
    t->protocol_paused = 0;
    return call_flow_control(t, t->loop->st->str_resume_writing,
                             "protocol.resume_writing() failed");
}

/* A limit as a byte count. asyncio compares sizes with whatever number it
 * was given: for whole-byte sizes a float's floor compares the same (and an
 * infinite one never pauses). */
static Py_ssize_t flow_limit(PyObject *v)
{
    if (PyFloat_Check(v)) {
        double d = PyFloat_AS_DOUBLE(v);
        return d >= (double)PY_SSIZE_T_MAX ? PY_SSIZE_T_MAX : (Py_ssize_t)d;
    }
    return PyNumber_AsSsize_t(v, NULL);
}

int tl_flow_limits(PyObject *high, PyObject *low, long default_kb, Py_ssize_t *hi,
                   Py_ssize_t *lo)
{
    /* transports._FlowControlMixin._set_write_buffer_limits and
     * sslproto.add_flowcontrol_defaults */
    PyObject *four = PyLong_FromLong(4);
    if (four == NULL)
        return -1;
    PyObject *h, *l;
    if (high == NULL || high == Py_None)
        h = (low == NULL || low == Py_None) ? PyLong_FromLong(default_kb * 1024)
                                            : PyNumber_Multiply(four, low);
    else
        h = Py_NewRef(high);
    l = h == NULL ? NULL
                  : (low == NULL || low == Py_None) ? PyNumber_FloorDivide(h, four)
                                                    : Py_NewRef(low);
    Py_DECREF(four);
    if (l == NULL) {
        Py_XDECREF(h);
        return -1;
    }
    PyObject *zero = PyLong_FromLong(0);
    int ok1 = zero ? PyObject_RichCompareBool(h, l, Py_GE) : -1;
    int ok2 = ok1 > 0 ? PyObject_RichCompareBool(l, zero, Py_GE) : ok1;
    Py_XDECREF(zero);
    if (ok2 <= 0) {
        if (ok2 == 0)
            PyErr_Format(PyExc_ValueError, "high (%R) must be >= low (%R) must be >= 0", h, l);
        Py_DECREF(h);
        Py_DECREF(l);
        return -1;
    }
    Py_ssize_t hv = flow_limit(h);
    Py_ssize_t lv = flow_limit(l);
    Py_DECREF(h);
    Py_DECREF(l);
    if ((hv == -1 || lv == -1) && PyErr_Occurred())
        return -1;
    *hi = hv;
    *lo = lv;
    return 0;
}

static PyObject *stream_set_write_buffer_limits(tl_stream *t, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"high", "low", NULL};
    PyObject *high = Py_None, *low = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|OO:set_write_buffer_limits", kwlist,
                                     &high, &low))
        return NULL;
    if (tl_flow_limits(high, low, 64, &t->high_water, &t->low_water) < 0)
        return NULL;
    wfast_off(t);   /* sees the buffer as it is */
    if (stream_maybe_pause_protocol(t) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *stream_get_write_buffer_limits(tl_stream *t, PyObject *Py_UNUSED(ignored))
{
    return Py_BuildValue("nn", t->low_water, t->high_water);
}

/* The write buffer's size, also while a fast write is buffering its rest */
static Py_ssize_t wq_size(tl_stream *t)
{
    if (TL_LIKELY(t->mt == NULL))
        return t->wsize;
    return t->mt->wq_size(t);
}

static PyObject *stream_get_write_buffer_size(tl_stream *t, PyObject *Py_UNUSED(ignored))
{
    return PyLong_FromSsize_t(wq_size(t));
}

/* ---- writing --------------------------------------------------------------- */

static int set_future_result(tl_state *st, PyObject *fut, PyObject *value)
{
    PyObject *r = PyObject_CallMethodOneArg(fut, st->str_set_result, value);
    Py_XDECREF(r);
    return r ? 0 : -1;
}

static int set_future_exception(tl_state *st, PyObject *fut, PyObject *exc)
{
    PyObject *r = PyObject_CallMethodOneArg(fut, st->str_set_exception, exc);
    Py_XDECREF(r);
    return r ? 0 : -1;
}

static int call_connection_lost(tl_stream *t, PyObject *exc);

static int connection_lost_fn(tl_loop *loop, PyObject *obj);

/* close() waited for the buffer to empty: connection_lost(None) now, as
 * asyncio's _write_ready does, or from the strand of a threaded loop. */
static int stream_lost_after_flush(tl_stream *t)
{
    if (stream_in_strand(t))
        return call_connection_lost(t, NULL);
    if (t->lost_scheduled)
        return 0;
    t->lost_scheduled = 1;
    Py_CLEAR(t->lost_exc);
    return stream_push(t, connection_lost_fn);
}

/* The buffer emptied (or the flush failed with exc): what asyncio's
 * _write_ready does after the send. */
static int stream_write_done(tl_stream *t)
{
    tl_state *st = t->loop->st;
    if (!(t->ops->rules & TL_RULES_SELECTOR_SOCKET)) {
        watch_stop(t, &t->wio);
        if (stream_maybe_resume_protocol(t) < 0)
            return -1;
        if (t->closing) {
            watch_stop(t, &t->rio);
            return stream_lost_after_flush(t);
        }
        return 0;
    }
    if (stream_maybe_resume_protocol(t) < 0)    /* may append to the buffer */
        return -1;
    if (t->wsize)
        return 0;
    watch_stop(t, &t->wio);
    if (t->empty_waiter != NULL && set_future_result(st, t->empty_waiter, Py_None) < 0)
        return report_callback_error(t, t->protocol ? t->protocol : Py_None, "_write_ready");
    if (t->closing)
        return stream_lost_after_flush(t);
    if (t->eof && shutdown(t->fd, SHUT_WR) < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        return report_callback_error(t, t->protocol ? t->protocol : Py_None, "_write_ready");
    }
    wfast_update(t);
    return 0;
}

static int stream_write_ready(tl_stream *t)
{
    if (t->ops->write_ready != NULL)
        return t->ops->write_ready(t);
    if (t->conn_lost && (t->ops->rules & TL_RULES_SELECTOR_SOCKET))
        return 0;
    if (t->wq_len == 0) {
        watch_stop(t, &t->wio);
        return 0;
    }
    struct iovec iov[TL_IOV_MAX];
    int cnt = 0;
    for (uint32_t i = 0; i < t->wq_len && cnt < TL_IOV_MAX; i++) {
        PyObject *b = t->wq[(t->wq_head + i) & (t->wq_cap - 1)];
        Py_ssize_t off = i == 0 ? t->wq_off : 0;
        iov[cnt].iov_base = PyBytes_AS_STRING(b) + off;
        iov[cnt].iov_len = (size_t)(PyBytes_GET_SIZE(b) - off);
        cnt++;
    }
    ssize_t n = cnt == 1 ? fd_send(t, iov[0].iov_base, iov[0].iov_len) : fd_sendv(t, iov, cnt);
    if (n < 0) {
        if (tl_stream_would_block(errno))
            return 0;
        PyErr_SetFromErrno(PyExc_OSError);
        watch_stop(t, &t->wio);
        wq_clear(t);
        if (!(t->ops->rules & TL_RULES_SELECTOR_SOCKET))
            t->conn_lost++;
        PyObject *exc = PyErr_GetRaisedException();
        PyErr_SetRaisedException(Py_NewRef(exc));
        int rc = stream_fatal_error(t, t->ops->write_error);
        if (rc == 0 && t->empty_waiter != NULL &&
            set_future_exception(t->loop->st, t->empty_waiter, exc) < 0)
            rc = report_callback_error(t, Py_None, "_write_ready");
        Py_DECREF(exc);
        return rc;
    }
    wq_consume(t, n);
    if (!(t->ops->rules & TL_RULES_SELECTOR_SOCKET) && t->wsize)
        return 0;
    return stream_write_done(t);
}

static int check_bytes_like(tl_stream *t, PyObject *data)
{
    if (PyBytes_Check(data) || PyByteArray_Check(data) || PyMemoryView_Check(data))
        return 0;
    if (t->ops->rules & TL_RULES_SELECTOR_SOCKET) {
        PyErr_Format(PyExc_TypeError,
#if PY_VERSION_HEX >= 0x030E0000
                     "data argument must be a bytes, bytearray, or memoryview object, "
                     "not '%.200s'",
#else
                     "data argument must be a bytes-like object, not '%.200s'",
#endif
                     tl_type_name(Py_TYPE(data)));
    } else {
        /* _UnixWritePipeTransport asserts it */
        PyObject *r = PyObject_Repr(data);
        if (r != NULL)
            PyErr_SetObject(PyExc_AssertionError, r);
        Py_XDECREF(r);
    }
    return -1;
}

static void warn_lost_writes(tl_stream *t)
{
    if (t->conn_lost >= TL_CONNLOST_LOG_THRESHOLD) {
        const char *msg = is_selector(t)
            ? "socket.send() raised exception."
            : "pipe closed by peer or os.write(pipe, data) raised exception.";
        PyObject *r = tl_call_method(t->loop->st->logger, "warning", "s", msg);
        if (r == NULL)
            PyErr_WriteUnraisable((PyObject *)t);
        Py_XDECREF(r);
    }
    t->conn_lost++;
}

/* A send failed with errno (not EAGAIN): asyncio's _fatal_error. */
static int stream_write_failed(tl_stream *t)
{
    PyErr_SetFromErrno(PyExc_OSError);
    if (!(t->ops->rules & TL_RULES_SELECTOR_SOCKET))
        t->conn_lost++;
    return stream_fatal_error(t, t->ops->write_error);
}

/* Something is buffered: watch for room to flush it (asyncio's
 * add_writer, which a closed loop refuses). */
static int stream_start_flush(tl_stream *t)
{
    if (stream_check_loop(t) < 0)
        return -1;
    watch_start(t, &t->wio);
    return 0;
}

/* After the checks: send now, buffer what the kernel refused. */
static PyObject *stream_write_data(tl_stream *t, PyObject *data, Py_buffer *view)
{
    Py_ssize_t n = 0;
    if (t->wq_len == 0) {
        n = fd_send(t, view->buf, (size_t)view->len);
        if (n < 0) {
            if (!tl_stream_would_block(errno))
                return stream_write_failed(t) < 0 ? NULL : Py_NewRef(Py_None);
            n = 0;
        }
        if (n == view->len)
            Py_RETURN_NONE;
        if (stream_start_flush(t) < 0)
            return NULL;
    }
    if (wq_append(t, data, view, n) < 0)
        return NULL;
    if (stream_maybe_pause_protocol(t) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *stream_write(tl_stream *t, PyObject *data)
{
    if (check_bytes_like(t, data) < 0)
        return NULL;
    if (t->ops->rules & TL_RULES_SELECTOR_SOCKET) {
        if (t->eof) {
            PyErr_SetString(PyExc_RuntimeError, "Cannot call write() after write_eof()");
            return NULL;
        }
        if (t->empty_waiter != NULL) {
            PyErr_SetString(PyExc_RuntimeError, "unable to write; sendfile is in progress");
            return NULL;
        }
    }
    Py_buffer view;
    PyObject *copy = NULL;
    if (!PyBytes_CheckExact(data) && PyObject_GetBuffer(data, &view, PyBUF_SIMPLE) < 0) {
        /* a strided memoryview: asyncio's write() takes it (its
         * socket.send() then fails and the transport dies); it goes out as
         * the bytes it shows */
        if (!PyMemoryView_Check(data) || !PyErr_ExceptionMatches(PyExc_BufferError))
            return NULL;
        PyErr_Clear();
        data = copy = PyBytes_FromObject(data);
        if (copy == NULL)
            return NULL;
    }
    if (PyBytes_CheckExact(data)) {
        /* the common case needs no buffer protocol round trip */
        view.buf = PyBytes_AS_STRING(data);
        view.len = PyBytes_GET_SIZE(data);
        view.obj = NULL;
    }
    PyObject *r;
    if (view.len == 0) {
        r = Py_NewRef(Py_None);
    } else if (t->conn_lost || (t->closing && (t->ops->rules & TL_RULES_UNIX_WRITE_PIPE))) {
        warn_lost_writes(t);
        r = Py_NewRef(Py_None);
    } else {
        Py_INCREF(t);
        r = stream_write_data(t, data, &view);
        Py_DECREF(t);
    }
    PyBuffer_Release(&view);
    Py_XDECREF(copy);
    return r;
}

/* Socket transports gather the pieces into one sendmsg (asyncio 3.12+). */
static PyObject *stream_writelines(tl_stream *t, PyObject *lines)
{
    if (t->eof) {
        PyErr_SetString(PyExc_RuntimeError,
#if PY_VERSION_HEX >= 0x030C0000
                        "Cannot call writelines() after write_eof()"
#else
                        "Cannot call write() after write_eof()"
#endif
        );
        return NULL;
    }
    if (t->empty_waiter != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "unable to writelines; sendfile is in progress");
        return NULL;
    }
    PyObject *seq = PySequence_Fast(lines, "writelines() argument must be iterable");
    if (seq == NULL)
        return NULL;
    Py_ssize_t count = PySequence_Fast_GET_SIZE(seq);
    PyObject **items = PySequence_Fast_ITEMS(seq);
    /* take everything as bytes first: a bad item fails the whole call */
    PyObject *pieces = PyList_New(0);
    if (pieces == NULL)
        goto fail;
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *b = PyBytes_CheckExact(items[i]) ? Py_NewRef(items[i])
                                                    : PyBytes_FromObject(items[i]);
        if (b == NULL)
            goto fail;
        int rc = PyBytes_GET_SIZE(b) ? PyList_Append(pieces, b) : 0;
        Py_DECREF(b);
        if (rc < 0)
            goto fail;
    }
    Py_DECREF(seq);
    seq = NULL;
    if (PyList_GET_SIZE(pieces) == 0)
        goto done;
    if (t->conn_lost) {
        warn_lost_writes(t);
        goto done;
    }
    Py_INCREF(t);
    int was_empty = t->wq_len == 0;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(pieces); i++) {
        PyObject *b = Py_NewRef(PyList_GET_ITEM(pieces, i));
        if (wq_push(t, b) < 0) {
            Py_DECREF(b);
            Py_DECREF(t);
            goto fail;
        }
    }
    int rc = 0;
    if (was_empty) {
        /* try now; the writer watcher takes over what is left */
        rc = stream_write_ready(t);
        if (rc == 0 && t->wsize)
            rc = stream_start_flush(t);
    }
    if (rc == 0 && t->wsize)
        rc = stream_maybe_pause_protocol(t);
    Py_DECREF(t);
    if (rc < 0)
        goto fail;
done:
    Py_DECREF(pieces);
    Py_RETURN_NONE;
fail:
    Py_XDECREF(seq);
    Py_XDECREF(pieces);
    return NULL;
}

static PyObject *stream_write_eof(tl_stream *t, PyObject *Py_UNUSED(ignored))
{
    if (t->ops->rules & TL_RULES_UNIX_WRITE_PIPE) {
        if (t->closing)
            Py_RETURN_NONE;
        t->closing = 1;
        if (t->wq_len == 0) {
            Py_INCREF(t);
            watch_stop(t, &t->rio);
            int rc = stream_force_close(t, NULL);
            Py_DECREF(t);
            if (rc < 0)
                return NULL;
        }
        Py_RETURN_NONE;
    }
    if (t->closing || t->eof)
        Py_RETURN_NONE;
    wfast_off(t);
    t->eof = 1;
    if (t->wq_len == 0 && shutdown(t->fd, SHUT_WR) < 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    Py_RETURN_NONE;
}

static PyObject *stream_can_write_eof(tl_stream *t, PyObject *Py_UNUSED(ignored))
{
    TL_UNUSED(t);
    Py_RETURN_TRUE;
}

/* ---- closing ------------------------------------------------------------------ */


/* Schedule connection_lost(exc) once (asyncio's _force_close/_close). */
static int stream_force_close(tl_stream *t, PyObject *exc)
{
    if (t->lost_scheduled)
        return 0;
    if (is_selector(t) && t->conn_lost)
        return 0;
    if (stream_check_loop(t) < 0)   /* asyncio's call_soon refuses */
        return -1;
    wfast_off(t);
    t->lost_scheduled = 1;
    if (t->wq_len) {
        wq_clear(t);
        watch_stop(t, &t->wio);
    }
    t->closing = 1;
    watch_stop(t, &t->rio);
    t->conn_lost++;
    Py_XSETREF(t->lost_exc, Py_XNewRef(exc));
    return stream_push(t, connection_lost_fn);
}

/* close(): stop reading; connection_lost(None) once the buffer is flushed */
static int stream_close_impl(tl_stream *t)
{
    if (t->ops->rules & TL_RULES_UNIX_WRITE_PIPE) {
        if (t->lost_done || t->closing)
            return 0;
        PyObject *r = stream_write_eof(t, NULL);
        Py_XDECREF(r);
        return r ? 0 : -1;
    }
    if (t->closing)
        return 0;
    wfast_off(t);
    t->closing = 1;
    watch_stop(t, &t->rio);
    if (t->wq_len == 0)
        return stream_force_close(t, NULL);
    return 0;
}

static PyObject *stream_close(tl_stream *t, PyObject *Py_UNUSED(ignored))
{
    t->user_closed = 1;
    Py_INCREF(t);
    int rc = stream_close_impl(t);
    Py_DECREF(t);
    if (rc < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *stream_abort(tl_stream *t, PyObject *Py_UNUSED(ignored))
{
    t->user_closed = 1;
    Py_INCREF(t);
    int rc = stream_force_close(t, NULL);
    Py_DECREF(t);
    if (rc < 0)
        return NULL;
    Py_RETURN_NONE;
}

/* _force_close(exc): what SSLProtocol calls on fatal errors */
static PyObject *stream_force_close_py(tl_stream *t, PyObject *exc)
{
    Py_INCREF(t);
    int rc = stream_force_close(t, exc == Py_None ? NULL : exc);
    Py_DECREF(t);
    if (rc < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *stream_is_closing(tl_stream *t, PyObject *Py_UNUSED(ignored))
{
    return PyBool_FromLong(t->closing);
}

/* Close the fd (through its socket or file object when there is one). */
static int stream_close_fd(tl_stream *t)
{
    int rc = 0;
    if (is_selector(t))
        tl_io_set_owner(t->loop, t->fd, NULL);
    if (t->fileobj != NULL) {
        PyObject *f = t->fileobj;
        t->fileobj = NULL;
        PyObject *r = PyObject_CallMethodNoArgs(f, t->loop->st->str_close);
        Py_DECREF(f);
        if (r == NULL)
            rc = -1;
        Py_XDECREF(r);
    } else if (t->fd >= 0) {
        wfast_off(t);
        close(t->fd);
    }
    t->lost_done = 1;
    return rc;
}

static PyObject *call_server(tl_stream *t, PyObject *server, PyObject *name)
{
    if (t->loop->st->server_attach_takes_transport)
        return PyObject_CallMethodOneArg(server, name, (PyObject *)t);
    return PyObject_CallMethodNoArgs(server, name);
}

/* asyncio's _call_connection_lost: tell the protocol, then close the fd and
 * let go of everything whatever it did. Returns -1 only for
 * SystemExit/KeyboardInterrupt. */
static int call_connection_lost(tl_stream *t, PyObject *exc)
{
    if (t->lost_done)
        return 0;
    t->lost_scheduled = 1;
    tl_state *st = t->loop->st;
    /* our own reference: connection_lost() may set another protocol */
    PyObject *proto = Py_XNewRef(t->protocol);
    PyObject *err = NULL;
    if (proto != NULL) {
        PyObject *r = call_protocol(t, st->str_connection_lost, exc ? exc : Py_None);
        if (r == NULL)
            err = PyErr_GetRaisedException();
        Py_XDECREF(r);
    }
    if (stream_close_fd(t) < 0 && err == NULL)
        err = PyErr_GetRaisedException();
    Py_CLEAR(t->protocol);
    PyObject *server = t->server;
    t->server = NULL;
    if (server != NULL) {
        PyObject *r = call_server(t, server, st->str_detach);
        if (r == NULL && err == NULL)
            err = PyErr_GetRaisedException();
        PyErr_Clear();
        Py_XDECREF(r);
        Py_DECREF(server);
    }
    if (t->empty_waiter != NULL && err == NULL) {
        PyObject *cexc = PyObject_CallFunction(PyExc_ConnectionError, "s",
                                               "Connection is closed by peer");
        if (cexc == NULL || set_future_exception(st, t->empty_waiter, cexc) < 0)
            err = PyErr_GetRaisedException();
        Py_XDECREF(cexc);
    }
    int rc = 0;
    if (err != NULL) {
        PyErr_SetRaisedException(err);
        rc = report_callback_error(t, proto ? proto : Py_None, "connection_lost");
    }
    Py_XDECREF(proto);
    return rc;
}

/* ---- the ready-queue steps ---------------------------------------------------- */

/* A queued step in the protocol's context; on a threaded loop (a worker,
 * the transport's strand) with the loop lock held. */
static int run_in_context(tl_stream *t, int (*step)(tl_stream *))
{
    int locked = TL_LIKELY(t->loop->dispatch == NULL) ? tl_loop_ev_lock(t->loop)
                                                      : t->mt->lock(t);
    PyObject *ctx = t->context;
    int rc = -1;
    if (ctx == NULL) {  /* cleared by the GC */
        rc = step(t);
    } else {
        Py_INCREF(ctx);
        if (PyContext_Enter(ctx) == 0) {
            rc = step(t);
            if (PyContext_Exit(ctx) < 0)
                rc = -1;
        }
        Py_DECREF(ctx);
    }
    if (TL_LIKELY(t->loop->dispatch == NULL))
        tl_loop_ev_unlock(t->loop, locked);
    else
        t->mt->unlock(t, locked);
    return rc;
}

static int lost_step(tl_stream *t)
{
    PyObject *exc = t->lost_exc;
    t->lost_exc = NULL;
    int rc = call_connection_lost(t, exc);
    Py_XDECREF(exc);
    return rc;
}

STREAM_STEP_FN(connection_lost_fn, lost_step)

/* Call protocol.<name>(arg); report what it raises. A SystemExit or
 * KeyboardInterrupt is kept in *pending (the first one wins) so the steps
 * after it still run, as asyncio's separate handles would. */
static void call_step(tl_stream *t, PyObject *name, PyObject *arg, const char *what,
                      PyObject **pending)
{
    if (t->protocol == NULL)
        return;
    PyObject *proto = Py_NewRef(t->protocol);
    PyObject *r = call_protocol(t, name, arg);
    if (r == NULL && report_callback_error(t, proto, what) < 0) {
        PyObject *exc = PyErr_GetRaisedException();
        if (*pending == NULL)
            *pending = exc;
        else
            Py_DECREF(exc);
    }
    Py_XDECREF(r);
    Py_DECREF(proto);
}

static int finish_steps(PyObject *pending, int rc)
{
    if (pending != NULL) {
        if (rc < 0)
            PyErr_Clear();
        PyErr_SetRaisedException(pending);
        return -1;
    }
    return rc;
}

static int eof_then_lost_step(tl_stream *t)
{
    PyObject *pending = NULL;
    call_step(t, t->loop->st->str_eof_received, NULL, "eof_received", &pending);
    return finish_steps(pending, call_connection_lost(t, NULL));
}

STREAM_STEP_FN(eof_then_lost_fn, eof_then_lost_step)

/* connection_made(), then the reader, then the waiter: the three call_soon
 * of asyncio's constructors, in their order. */
static int made_step(tl_stream *t)
{
    tl_state *st = t->loop->st;
    PyObject *pending = NULL;
    t->made = 1;
    if (TL_UNLIKELY(t->loop->dispatch != NULL) && t->protocol != NULL) {
        t->mt->made(t);
    }
    call_step(t, st->str_connection_made, (PyObject *)t, "connection_made", &pending);
    if (!t->lost_scheduled) {
        if (t->ops->rules & TL_RULES_UNIX_WRITE_PIPE) {
            if (t->watch_close)
                watch_start(t, &t->rio);
        } else {
            stream_start_reading(t);
        }
    }
    PyObject *waiter = t->waiter;
    t->waiter = NULL;
    int rc = 0;
    if (waiter != NULL) {
        /* futures._set_result_unless_cancelled */
        PyObject *c = PyObject_CallMethodNoArgs(waiter, st->str_cancelled);
        int cancelled = c ? PyObject_IsTrue(c) : -1;
        Py_XDECREF(c);
        if (cancelled == 0 && set_future_result(st, waiter, Py_None) < 0)
            cancelled = -1;
        if (cancelled < 0 && report_callback_error(t, waiter, "set_result") < 0)
            rc = -1;
        Py_DECREF(waiter);
    }
    return finish_steps(pending, rc);
}

STREAM_STEP_FN(made_fn, made_step)

/* ---- reading control ------------------------------------------------------------ */

static PyObject *stream_is_reading_py(tl_stream *t, PyObject *Py_UNUSED(ignored))
{
    return PyBool_FromLong(tl_stream_is_reading(t));
}

static PyObject *stream_pause_reading(tl_stream *t, PyObject *Py_UNUSED(ignored))
{
    stream_home_here(t);
    if (!tl_stream_is_reading(t))
        Py_RETURN_NONE;
    t->paused = 1;
    Py_INCREF(t);
    watch_stop(t, &t->rio);
    debug_log(t, "debug", "%r pauses reading");
    Py_DECREF(t);
    Py_RETURN_NONE;
}

static PyObject *stream_resume_reading(tl_stream *t, PyObject *Py_UNUSED(ignored))
{
    stream_home_here(t);
    if (t->closing || !t->paused)
        Py_RETURN_NONE;
    if (stream_check_loop(t) < 0)
        return NULL;
    t->paused = 0;
    stream_start_reading(t);
    if (TL_UNLIKELY(t->loop->dispatch != NULL) && t->mt->resume(t) < 0)
        return NULL;    /* what waited in the inbox */
    debug_log(t, "debug", "%r resumes reading");
    Py_RETURN_NONE;
}

/* ---- protocol ---------------------------------------------------------------- */

/* The reader is chosen here, once: the kind's own, or the stream's into a
 * C protocol (TLS), a BufferedProtocol's buffer, or bytes. */
static int stream_set_protocol_impl(tl_stream *t, PyObject *protocol)
{
    if (t->ops->read_ready != NULL) {
        t->read = t->ops->read_ready;
        t->reader_calls_protocol = t->ops->read_calls_protocol;
    } else {
        tl_state *st = t->loop->st;
        t->sink = (st->tls_type != NULL && Py_IS_TYPE(protocol, st->tls_type)) ? st->tls_sink
                                                                                : NULL;
        int b = t->sink ? 1 : PyObject_IsInstance(protocol, st->buffered_protocol_cls);
        if (b < 0)
            return -1;
        t->buffered = (uint8_t)b;
        t->read = t->sink ? stream_read_into_sink
                          : b ? stream_read_into_protocol : stream_read_data;
        t->reader_calls_protocol = (uint8_t)b;   /* into a buffer or a C protocol */
    }
    Py_XSETREF(t->protocol, Py_NewRef(protocol));
    return 0;
}

static PyObject *stream_set_protocol(tl_stream *t, PyObject *protocol)
{
    if (stream_set_protocol_impl(t, protocol) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *stream_get_protocol(tl_stream *t, PyObject *Py_UNUSED(ignored))
{
    return Py_NewRef(t->protocol ? t->protocol : Py_None);
}

/* ---- extra info ------------------------------------------------------------- */

/* The socket object: the one we were given, or one made now around an
 * accepted fd (it then owns the fd and closes it for us). */
static PyObject *stream_socket_object(tl_stream *t)
{
    if (t->fileobj != NULL)
        return Py_NewRef(t->fileobj);
    if (t->lost_done || !is_selector(t))
        Py_RETURN_NONE;
    PyObject *kw = Py_BuildValue("{si}", "fileno", t->fd);
    PyObject *noargs = kw ? PyTuple_New(0) : NULL;
    PyObject *sock = noargs ? PyObject_Call(t->loop->st->socket_cls, noargs, kw) : NULL;
    Py_XDECREF(kw);
    Py_XDECREF(noargs);
    if (sock == NULL)
        return NULL;
    t->fileobj = Py_NewRef(sock);
    return sock;
}

static PyObject *stream_socket_view(tl_stream *t)
{
    if (t->sock_view != NULL)
        return Py_NewRef(t->sock_view);
    PyObject *sock = stream_socket_object(t);
    if (sock == NULL || sock == Py_None)
        return sock;
    t->sock_view = PyObject_CallOneArg(t->loop->st->transport_socket_cls, sock);
    Py_DECREF(sock);
    return Py_XNewRef(t->sock_view);
}

int tl_parse_extra_info_args(PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames,
                             PyObject **name_out, PyObject **default_out)
{
    static const char *const names[] = {"name", "default", NULL};
    PyObject *name = NULL, *dflt = Py_None;
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    if (nargs > 2) {
        PyErr_Format(PyExc_TypeError,
                     "get_extra_info() takes from 2 to 3 positional arguments but %zd were given",
                     nargs + 1);
        return -1;
    }
    if (nargs > 0)
        name = args[0];
    if (nargs > 1)
        dflt = args[1];
    for (Py_ssize_t i = 0; i < nkw; i++) {
        PyObject *k = PyTuple_GET_ITEM(kwnames, i);
        int which = -1;
        for (int j = 0; names[j]; j++)
            if (PyUnicode_CompareWithASCIIString(k, names[j]) == 0)
                which = j;
        if (which < 0 || (which == 0 && nargs > 0) || (which == 1 && nargs > 1)) {
            PyErr_Format(PyExc_TypeError,
                         which < 0 ? "get_extra_info() got an unexpected keyword argument '%S'"
                                   : "get_extra_info() got multiple values for argument '%S'",
                         k);
            return -1;
        }
        if (which == 0)
            name = args[nargs + i];
        else
            dflt = args[nargs + i];
    }
    if (name == NULL) {
        PyErr_SetString(PyExc_TypeError,
                        "get_extra_info() missing 1 required positional argument: 'name'");
        return -1;
    }
    /* asyncio looks it up in a dict: an unhashable name is a TypeError
     * there, even where our extras are made on demand */
    if (!PyUnicode_CheckExact(name) && PyObject_Hash(name) == -1)
        return -1;
    *name_out = name;
    *default_out = dflt;
    return 0;
}

static PyObject *stream_get_extra_info(tl_stream *t, PyObject *const *args, Py_ssize_t nargs,
                                       PyObject *kwnames)
{
    PyObject *name, *dflt;
    if (tl_parse_extra_info_args(args, nargs, kwnames, &name, &dflt) < 0)
        return NULL;
    if (t->extra != NULL) {
        PyObject *v = PyDict_GetItemWithError(t->extra, name);
        if (v != NULL)
            return Py_NewRef(v);
        if (PyErr_Occurred())
            return NULL;
    }
    if (PyUnicode_Check(name)) {
        if (is_selector(t)) {
            if (PyUnicode_CompareWithASCIIString(name, "socket") == 0) {
                PyObject *v = stream_socket_view(t);
                if (v != Py_None)
                    return v;
                Py_XDECREF(v);
                return v == NULL ? NULL : Py_NewRef(dflt);
            }
            if (t->addrs != NULL) {
                tl_sockaddrs *a = t->addrs;
                if (PyUnicode_CompareWithASCIIString(name, "sockname") == 0)
                    return tl_sockaddr_to_py((struct sockaddr *)a->data, a->sock_len);
                if (PyUnicode_CompareWithASCIIString(name, "peername") == 0)
                    return tl_sockaddr_to_py((struct sockaddr *)(a->data + a->sock_len),
                                             a->peer_len);
            }
        }
    }
    return Py_NewRef(dflt);
}

/* ---- sendfile support (loop.sendfile() on this transport) ----------------- */

static PyObject *stream_make_empty_waiter(tl_stream *t, PyObject *Py_UNUSED(ignored))
{
    if (t->empty_waiter != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Empty waiter is already set");
        return NULL;
    }
    PyObject *fut = PyObject_CallMethodNoArgs((PyObject *)t->loop, t->loop->st->str_create_future);
    if (fut == NULL)
        return NULL;
    wfast_off(t);
    if (t->wq_len == 0 && set_future_result(t->loop->st, fut, Py_None) < 0) {
        Py_DECREF(fut);
        return NULL;
    }
    t->empty_waiter = Py_NewRef(fut);
    return fut;
}

static PyObject *stream_reset_empty_waiter(tl_stream *t, PyObject *Py_UNUSED(ignored))
{
    Py_CLEAR(t->empty_waiter);
    wfast_update(t);    /* sendfile is over: writes may skip the loop lock again */
    Py_RETURN_NONE;
}

/* While loop.sendfile() runs sock_sendfile() on our socket the fd is not
 * ours (asyncio takes the transport out of loop._transports). */
static PyObject *stream_release_fd(tl_stream *t, PyObject *Py_UNUSED(ignored))
{
    tl_io_set_owner(t->loop, t->fd, NULL);
    Py_RETURN_NONE;
}

static PyObject *stream_reclaim_fd(tl_stream *t, PyObject *Py_UNUSED(ignored))
{
    if (!t->lost_done && tl_io_set_owner(t->loop, t->fd, (PyObject *)t) < 0)
        return NULL;
    Py_RETURN_NONE;
}

/* ---- repr ---------------------------------------------------------------------- */

static PyObject *stream_repr(tl_stream *t)
{
    const char *name = tl_type_name(Py_TYPE(t));
    const char *state = t->lost_done ? " closed" : (t->closing ? " closing" : "");
    int alive = !t->lost_done && t->loop->ev != NULL;
    if (is_selector(t)) {
        if (!alive)
            return PyUnicode_FromFormat("<%s%s fd=%d>", name, state, t->fd);
        return PyUnicode_FromFormat("<%s%s fd=%d read=%s write=<%s, bufsize=%zd>>", name,
                                    state, t->fd, ev_is_active(&t->rio) ? "polling" : "idle",
                                    ev_is_active(&t->wio) ? "polling" : "idle", wq_size(t));
    }
    if (t->lost_done)
        return PyUnicode_FromFormat("<%s%s fd=%d closed>", name, state, t->fd);
    if (!alive)
        return PyUnicode_FromFormat("<%s%s fd=%d open>", name, state, t->fd);
    if (t->ops->rules & TL_RULES_UNIX_READ_PIPE)
        return PyUnicode_FromFormat("<%s%s fd=%d %s>", name, state, t->fd,
                                    ev_is_active(&t->rio) ? "polling" : "idle");
    return PyUnicode_FromFormat("<%s%s fd=%d %s bufsize=%zd>", name, state, t->fd,
                                ev_is_active(&t->wio) ? "polling" : "idle", wq_size(t));
}

/* ---- attributes asyncio's own code and tests read (tl_stream.h) ------------ */

PyObject *tl_stream_get_sock(tl_stream *t, void *c)
{
    TL_UNUSED(c);
    if (t->lost_done)
        Py_RETURN_NONE;
    return stream_socket_object(t);
}

PyObject *tl_stream_get_loop(tl_stream *t, void *c)
{
    TL_UNUSED(c);
    if (t->lost_done)
        Py_RETURN_NONE;
    return Py_NewRef((PyObject *)t->loop);
}

PyObject *tl_stream_get_object_or_none(tl_stream *t, void *offset)
{
    PyObject *v = *(PyObject **)((char *)t + (Py_ssize_t)offset);
    return Py_NewRef(v ? v : Py_None);
}

/* ---- life cycle ---------------------------------------------------------------- */

static int stream_traverse(tl_stream *t, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(t));
    Py_VISIT(t->extra);
    Py_VISIT(t->dict);
    Py_VISIT((PyObject *)t->loop);
    Py_VISIT(t->protocol);
    Py_VISIT(t->context);
    Py_VISIT(t->fileobj);
    Py_VISIT(t->server);
    Py_VISIT(t->sock_view);
    Py_VISIT(t->waiter);
    Py_VISIT(t->empty_waiter);
    Py_VISIT(t->lost_exc);
    int r = t->mt != NULL ? t->mt->traverse(t, visit, arg) : 0;
    if (r)
        return r;
    return t->ops->traverse != NULL ? t->ops->traverse(t, visit, arg) : 0;
}

static int stream_clear(tl_stream *t)
{
    Py_CLEAR(t->context);   /* a context variable may hold the transport */
    Py_CLEAR(t->extra);
    Py_CLEAR(t->dict);
    Py_CLEAR(t->protocol);
    Py_CLEAR(t->server);
    Py_CLEAR(t->sock_view);
    Py_CLEAR(t->waiter);
    Py_CLEAR(t->empty_waiter);
    Py_CLEAR(t->lost_exc);
    if (t->mt != NULL)
        t->mt->clear(t);
    if (t->ops->clear != NULL)
        t->ops->clear(t);
    return 0;
}

/* asyncio's __del__: an open transport nobody closed warns and closes its fd */
static void stream_finalize(tl_stream *t)
{
    if (t->lost_done || t->loop == NULL)
        return;
    PyObject *exc = PyErr_GetRaisedException();
    if (PyErr_ResourceWarning((PyObject *)t, 1, "unclosed transport %R", (PyObject *)t) < 0)
        PyErr_WriteUnraisable((PyObject *)t);
    if (stream_close_fd(t) < 0)
        PyErr_WriteUnraisable((PyObject *)t);
    if (t->server != NULL && t->loop->st->server_attach_takes_transport) {
        PyObject *server = t->server;
        t->server = NULL;
        PyObject *r = call_server(t, server, t->loop->st->str_detach);
        if (r == NULL)
            PyErr_WriteUnraisable((PyObject *)t);
        Py_XDECREF(r);
        Py_DECREF(server);
    }
    PyErr_SetRaisedException(exc);
}

static void stream_dealloc(tl_stream *t)
{
    PyTypeObject *tp = Py_TYPE(t);
    if (PyObject_CallFinalizerFromDealloc((PyObject *)t) < 0)
        return;
    PyObject_GC_UnTrack(t);
    TL_CLEAR_WEAKREFS(t, t->weakreflist);
    stream_clear(t);
    wq_clear(t);
    PyMem_Free(t->addrs);
    if (t->ops->free != NULL)
        t->ops->free(t);
    if (t->fileobj != NULL) {
        /* a socket object we made around an accepted fd owns it */
        Py_CLEAR(t->fileobj);
    }
    Py_CLEAR(t->context);
    Py_CLEAR(t->loop);
    tp->tp_free(t);
    Py_DECREF(tp);
}

tl_stream *tl_stream_alloc(tl_loop *loop, PyTypeObject *tp, const tl_stream_ops *ops, int fd,
                           PyObject *fileobj, PyObject *protocol, PyObject *waiter,
                           PyObject *extra)
{
    tl_stream *t = (tl_stream *)tp->tp_alloc(tp, 0);
    if (t == NULL)
        return NULL;
    t->loop = (tl_loop *)Py_NewRef((PyObject *)loop);
    t->ops = ops;
    t->mt = loop->shared ? &tl_stream_threaded : NULL;
    t->fd = fd;
    t->high_water = 64 * 1024;
    t->low_water = 16 * 1024;
    t->link.on_loop_close = stream_on_loop_close;
    ev_io_init(&t->rio, stream_rio_cb, fd, EV_READ);
    ev_io_init(&t->wio, stream_wio_cb, fd, EV_WRITE);
    t->context = PyContext_CopyCurrent();
    if (t->context == NULL || stream_set_protocol_impl(t, protocol) < 0) {
        t->lost_done = 1;   /* the caller keeps the fd */
        Py_DECREF(t);
        return NULL;
    }
    t->fileobj = Py_XNewRef(fileobj);
    t->waiter = (waiter && waiter != Py_None) ? Py_NewRef(waiter) : NULL;
    t->extra = (extra && extra != Py_None) ? Py_NewRef(extra) : NULL;
    return t;
}

/* connection_made() on the next iteration */
static int stream_schedule_made(tl_stream *t)
{
    /* asyncio's transports schedule protocol.connection_made when they are
     * made: a protocol without one is an AttributeError for their maker */
    PyObject *made = PyObject_GetAttr(t->protocol, t->loop->st->str_connection_made);
    if (made == NULL)
        return -1;
    Py_DECREF(made);
    return stream_push(t, made_fn);
}

/* ---- socket transports ------------------------------------------------------------ */

static int sock_addresses(tl_stream *t, const struct sockaddr *peer, socklen_t peer_len)
{
    struct sockaddr_storage ss;
    socklen_t sl = sizeof(ss);
    if (getsockname(t->fd, (struct sockaddr *)&ss, &sl) < 0)
        sl = 0;
    struct sockaddr_storage ps;
    if (peer == NULL) {
        peer_len = sizeof(ps);
        if (getpeername(t->fd, (struct sockaddr *)&ps, &peer_len) < 0)
            peer_len = 0;
        peer = (struct sockaddr *)&ps;
    }
    tl_sockaddrs *a = PyMem_Malloc(sizeof(*a) + sl + peer_len);
    if (a == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    a->sock_len = sl;
    a->peer_len = peer_len;
    memcpy(a->data, &ss, sl);
    memcpy(a->data + sl, peer, peer_len);
    t->addrs = a;
    return sl ? ((struct sockaddr *)&ss)->sa_family : 0;
}

/* asyncio sockname/peername in its extra dict, computed as it does */
static int sock_extra_from_object(tl_stream *t, PyObject *sock)
{
    PyObject *extra = t->extra ? PyDict_Copy(t->extra) : PyDict_New();
    if (extra == NULL)
        return -1;
    Py_XSETREF(t->extra, extra);
    PyObject *view = stream_socket_view(t);
    if (view == NULL || PyDict_SetItemString(extra, "socket", view) < 0) {
        Py_XDECREF(view);
        return -1;
    }
    Py_DECREF(view);
    const char *keys[2] = {"sockname", "peername"};
    const char *meths[2] = {"getsockname", "getpeername"};
    for (int i = 0; i < 2; i++) {
        PyObject *key = PyUnicode_FromString(keys[i]);
        if (key == NULL)
            return -1;
        int present = i == 1 ? PyDict_Contains(extra, key) : 0;
        if (present) {
            Py_DECREF(key);
            if (present < 0)
                return -1;
            continue;
        }
        PyObject *v = tl_call_method(sock, meths[i], NULL);
        if (v == NULL) {
            if (!PyErr_ExceptionMatches(PyExc_OSError)) {
                Py_DECREF(key);
                return -1;
            }
            PyErr_Clear();
            v = Py_NewRef(Py_None);
        }
        int rc = PyDict_SetItem(extra, key, v);
        Py_DECREF(key);
        Py_DECREF(v);
        if (rc < 0)
            return -1;
    }
    return 0;
}

/* asyncio's _SelectorTransport.__init__ for a socket or datagram kind: the
 * addresses and the extra info; the kind's own set-up comes next, then
 * tl_stream_start(). */
tl_stream *tl_stream_selector_new(tl_loop *loop, PyTypeObject *tp, const tl_stream_ops *ops,
                                  int fd, PyObject *sock, PyObject *protocol, PyObject *waiter,
                                  PyObject *extra, const struct sockaddr *peer,
                                  socklen_t peer_len, int *family)
{
    tl_stream *t = tl_stream_alloc(loop, tp, ops, fd, sock, protocol, waiter, extra);
    if (t == NULL)
        return NULL;
    t->is_socket = 1;
    /* the kernel's addresses, converted on request; families whose
     * Python form we do not build ourselves ask the socket object */
    *family = sock_addresses(t, peer, peer_len);
    if (*family < 0)
        goto fail;
    if (sock != NULL && *family != AF_INET && *family != AF_INET6 && *family != AF_UNIX) {
        PyMem_Free(t->addrs);
        t->addrs = NULL;
        if (sock_extra_from_object(t, sock) < 0)
            goto fail;
    } else if (t->extra != NULL && (PyDict_GetItemString(t->extra, "socket") ||
                                    PyDict_GetItemString(t->extra, "sockname"))) {
        /* asyncio sets these two over whatever the creator passed */
        PyObject *copy = PyDict_Copy(t->extra);
        if (copy == NULL)
            goto fail;
        if (PyDict_DelItemString(copy, "socket") < 0)
            PyErr_Clear();      /* absent */
        if (PyDict_DelItemString(copy, "sockname") < 0)
            PyErr_Clear();
        Py_SETREF(t->extra, copy);
    }
    return t;
fail:
    tl_stream_abandon(t);
    return NULL;
}

PyObject *tl_stream_start(tl_stream *t, PyObject *server)
{
    if (server != NULL && server != Py_None) {
        t->server = Py_NewRef(server);
        PyObject *r = call_server(t, server, t->loop->st->str_attach);
        if (r == NULL)
            goto fail;
        Py_DECREF(r);
    }
    if ((t->is_socket && tl_io_set_owner(t->loop, t->fd, (PyObject *)t) < 0) ||
        stream_schedule_made(t) < 0)
        goto fail;
    return (PyObject *)t;
fail:
    tl_stream_abandon(t);
    return NULL;
}

void tl_stream_abandon(tl_stream *t)
{
    tl_state *st = t->loop->st;
    if (t->is_socket)
        tl_io_set_owner(t->loop, t->fd, NULL);
    Py_CLEAR(t->fileobj);
    t->lost_done = 1;
    if (t->server != NULL && st->server_attach_takes_transport) {
        PyObject *exc = PyErr_GetRaisedException();
        PyObject *r = call_server(t, t->server, st->str_detach);
        Py_XDECREF(r);
        PyErr_SetRaisedException(exc);
    }
    Py_DECREF(t);
}

int tl_stream_check_context(PyObject *context)
{
    if (context == NULL || context == Py_None || PyContext_CheckExact(context))
        return 0;
    PyErr_Format(PyExc_TypeError, "context must be a contextvars.Context, not %.100s",
                 Py_TYPE(context)->tp_name);
    return -1;
}

void tl_stream_use_context(PyObject *transport, PyObject *context)
{
    if (context != NULL && context != Py_None)
        Py_XSETREF(((tl_stream *)transport)->context, Py_NewRef(context));
}

/* ---- types ------------------------------------------------------------------------- */


/* Entry points that workers of a threaded loop may call (tl_loop.h). */
/* Entry points that workers of a threaded loop may call (tl_loop.h). */
static PyObject *stream_write_locked(tl_stream *t, PyObject *data)
{
    if (TL_LIKELY(t->mt == NULL))
        return stream_write(t, data);
    return t->mt->write(t, data, stream_write, 1);
}

static PyObject *stream_writelines_locked(tl_stream *t, PyObject *lines)
{
    if (TL_LIKELY(t->mt == NULL))
        return stream_writelines(t, lines);
    return t->mt->write(t, lines, stream_writelines, 0);
}
TL_LOCKED_NOARGS(stream_write_eof_locked, stream_write_eof, tl_stream, self->loop)
TL_LOCKED_NOARGS(stream_close_locked, stream_close, tl_stream, self->loop)
TL_LOCKED_NOARGS(stream_abort_locked, stream_abort, tl_stream, self->loop)
TL_LOCKED_NOARGS(stream_pause_reading_locked, stream_pause_reading, tl_stream, self->loop)
TL_LOCKED_NOARGS(stream_resume_reading_locked, stream_resume_reading, tl_stream, self->loop)
TL_LOCKED_VARARGS_KW(stream_set_write_buffer_limits_locked, stream_set_write_buffer_limits,
                     tl_stream, self->loop)
TL_LOCKED_NOARGS(stream_get_write_buffer_size_locked, stream_get_write_buffer_size, tl_stream,
                 self->loop)
TL_LOCKED_O(stream_set_protocol_locked, stream_set_protocol, tl_stream, self->loop)
TL_LOCKED_O(stream_force_close_py_locked, stream_force_close_py, tl_stream, self->loop)
TL_LOCKED_NOARGS(stream_make_empty_waiter_locked, stream_make_empty_waiter, tl_stream,
                 self->loop)
TL_LOCKED_NOARGS(stream_reset_empty_waiter_locked, stream_reset_empty_waiter, tl_stream,
                 self->loop)
TL_LOCKED_NOARGS(stream_release_fd_locked, stream_release_fd, tl_stream, self->loop)
TL_LOCKED_NOARGS(stream_reclaim_fd_locked, stream_reclaim_fd, tl_stream, self->loop)
/* repr reads the fd, the state flags and the watchers, which a close or the
 * loop thread's I/O changes meanwhile */
TL_LOCKED_METHOD(stream_repr_locked, stream_repr, tl_stream, self->loop, (tl_stream *self),
                 (self))

#define M_NOARGS(name, fn) {name, (PyCFunction)(fn), METH_NOARGS, NULL}

/* The method groups a kind's type joins (tl_stream.h) */
PyMethodDef tl_stream_methods_write[] = {
    {"write", (PyCFunction)stream_write_locked, METH_O,
     "Write data; buffers what the kernel refuses."},
    {NULL, NULL, 0, NULL},
};

PyMethodDef tl_stream_methods_writelines[] = {
    {"writelines", (PyCFunction)stream_writelines_locked, METH_O, NULL},
    {NULL, NULL, 0, NULL},
};

PyMethodDef tl_stream_methods_write_eof[] = {
    M_NOARGS("write_eof", stream_write_eof_locked),
    M_NOARGS("can_write_eof", stream_can_write_eof),
    {NULL, NULL, 0, NULL},
};

PyMethodDef tl_stream_methods_close[] = {
    M_NOARGS("close", stream_close_locked),
    M_NOARGS("is_closing", stream_is_closing),
    {NULL, NULL, 0, NULL},
};

PyMethodDef tl_stream_methods_abort[] = {
    M_NOARGS("abort", stream_abort_locked),
    {NULL, NULL, 0, NULL},
};

PyMethodDef tl_stream_methods_reading[] = {
    M_NOARGS("is_reading", stream_is_reading_py),
    M_NOARGS("pause_reading", stream_pause_reading_locked),
    M_NOARGS("resume_reading", stream_resume_reading_locked),
    {NULL, NULL, 0, NULL},
};

PyMethodDef tl_stream_methods_write_buffer[] = {
    {"set_write_buffer_limits",
     (PyCFunction)(void (*)(void))stream_set_write_buffer_limits_locked,
     METH_VARARGS | METH_KEYWORDS, NULL},
    M_NOARGS("get_write_buffer_limits", stream_get_write_buffer_limits),
    M_NOARGS("get_write_buffer_size", stream_get_write_buffer_size_locked),
    {NULL, NULL, 0, NULL},
};

PyMethodDef tl_stream_methods_extra[] = {
    {"get_extra_info", (PyCFunction)(void (*)(void))stream_get_extra_info,
     METH_FASTCALL | METH_KEYWORDS, NULL},
    {"set_protocol", (PyCFunction)stream_set_protocol_locked, METH_O, NULL},
    M_NOARGS("get_protocol", stream_get_protocol),
    {NULL, NULL, 0, NULL},
};

PyMethodDef tl_stream_methods_force_close[] = {
    {"_force_close", (PyCFunction)stream_force_close_py_locked, METH_O, NULL},
    {NULL, NULL, 0, NULL},
};

PyMethodDef tl_stream_methods_sendfile[] = {
    M_NOARGS("_make_empty_waiter", stream_make_empty_waiter_locked),
    M_NOARGS("_reset_empty_waiter", stream_reset_empty_waiter_locked),
    M_NOARGS("_release_fd", stream_release_fd_locked),
    M_NOARGS("_reclaim_fd", stream_reclaim_fd_locked),
    {NULL, NULL, 0, NULL},
};

#define STREAM_FLAGS (Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC)

/* def->bases: one class of asyncio.transports, or two separated by a space */
static PyObject *stream_type_bases(const char *bases)
{
    char first[64];
    const char *space = strchr(bases, ' ');
    size_t n = space ? (size_t)(space - bases) : strlen(bases);
    PyOS_snprintf(first, sizeof(first), "%.*s", (int)n, bases);
    PyObject *base = tl_import_attr("asyncio.transports", first);
    if (base != NULL && space != NULL) {
        PyObject *second = tl_import_attr("asyncio.transports", space + 1);
        Py_SETREF(base, second ? PyTuple_Pack(2, base, second) : NULL);
        Py_XDECREF(second);
    }
    return base;
}

/* A kind's method tables are joined once per process (the type keeps the
 * joined table); module inits of several interpreters may race for it. */
static pthread_mutex_t type_join_lock = PTHREAD_MUTEX_INITIALIZER;

int tl_stream_add_type(PyObject *module, PyTypeObject **slot, tl_stream_type *def)
{
    pthread_mutex_lock(&type_join_lock);
    if (def->joined == NULL)
        def->joined = tl_join_methods(def->methods);
    pthread_mutex_unlock(&type_join_lock);
    if (def->joined == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    PyType_Slot slots[] = {
        {Py_tp_dealloc, stream_dealloc},
        {Py_tp_finalize, stream_finalize},
        {Py_tp_traverse, stream_traverse},
        {Py_tp_clear, stream_clear},
        {Py_tp_repr, stream_repr_locked},
        {Py_tp_methods, def->joined},
        {Py_tp_getset, def->getset},
        {Py_tp_members, def->members},
        {Py_tp_doc, (void *)def->doc},
        {0, NULL},
    };
    PyType_Spec spec = {def->name, sizeof(tl_stream), 0, STREAM_FLAGS, slots};
    PyObject *base = stream_type_bases(def->bases);
    if (base == NULL)
        return -1;
    *slot = (PyTypeObject *)PyType_FromModuleAndSpec(module, &spec, base);
    Py_DECREF(base);
    if (*slot == NULL)
        return -1;
    /* asyncio's transports are documented with these */
    PyObject *v = PyLong_FromLong(TL_READ_MAX);
    int rc = v ? PyObject_SetAttrString((PyObject *)*slot, "max_size", v) : -1;
    Py_XDECREF(v);
    if (rc < 0)
        return -1;
    return PyModule_AddType(module, *slot);
}

int tl_stream_init_module(PyObject *module, tl_state *st)
{
    TL_UNUSED(module);
    struct { PyObject **slot; const char *module, *name; } imports[] = {
        {&st->buffered_protocol_cls, "asyncio.protocols", "BufferedProtocol"},
        {&st->transport_socket_cls, "asyncio.trsock", "TransportSocket"},
        {&st->socket_cls, "socket", "socket"},
        {&st->sendfile_unavailable, "asyncio.exceptions", "SendfileNotAvailableError"},
        {&st->logger, "asyncio.log", "logger"},
    };
    for (size_t i = 0; i < sizeof(imports) / sizeof(imports[0]); i++) {
        *imports[i].slot = tl_import_attr(imports[i].module, imports[i].name);
        if (*imports[i].slot == NULL)
            return -1;
    }
    st->ssl_socket_cls = tl_import_attr("ssl", "SSLSocket");
    if (st->ssl_socket_cls == NULL) {
        if (!PyErr_ExceptionMatches(PyExc_ImportError))
            return -1;
        PyErr_Clear();
        st->ssl_socket_cls = Py_NewRef(Py_None);
    }

    struct { PyObject **slot; const char *s; } strings[] = {
        {&st->str_data_received, "data_received"},
        {&st->str_get_buffer, "get_buffer"},
        {&st->str_buffer_updated, "buffer_updated"},
        {&st->str_eof_received, "eof_received"},
        {&st->str_connection_made, "connection_made"},
        {&st->str_connection_lost, "connection_lost"},
        {&st->str_pause_writing, "pause_writing"},
        {&st->str_resume_writing, "resume_writing"},
        {&st->str_set_result, "set_result"},
        {&st->str_set_exception, "set_exception"},
        {&st->str_cancelled, "cancelled"},
        {&st->str_done, "done"},
        {&st->str_create_future, "create_future"},
        {&st->str_fileno, "fileno"},
        {&st->str_close, "close"},
        {&st->str_attach, "_attach"},
        {&st->str_detach, "_detach"},
        {&st->str_datagram_received, "datagram_received"},
        {&st->str_error_received, "error_received"},
    };
    for (size_t i = 0; i < sizeof(strings) / sizeof(strings[0]); i++) {
        *strings[i].slot = PyUnicode_InternFromString(strings[i].s);
        if (*strings[i].slot == NULL)
            return -1;
    }

    /* asyncio.Server._attach() learnt its transport argument in 3.13 */
    PyObject *attach = tl_import_attr("asyncio.base_events", "Server");
    PyObject *fn = attach ? tl_getattr(attach, "_attach") : NULL;
    PyObject *code = fn ? tl_getattr(fn, "__code__") : NULL;
    PyObject *argc = code ? tl_getattr(code, "co_argcount") : NULL;
    Py_XDECREF(attach);
    Py_XDECREF(fn);
    Py_XDECREF(code);
    if (argc == NULL)
        return -1;
    st->server_attach_takes_transport = PyLong_AsLong(argc) >= 2;
    Py_DECREF(argc);
    return 0;
}

/* ---- for the threaded side (tl_stream_threads.h) ------------------------------ */

int tl_stream_run_step(tl_stream *t, int (*step)(tl_stream *))
{
    return run_in_context(t, step);
}

int tl_stream_data_received_done(tl_stream *t, PyObject *proto, PyObject *r)
{
    return data_received_done(t, proto, r);
}

void tl_stream_start_reading(tl_stream *t)
{
    stream_start_reading(t);
}

int tl_stream_on_eof(tl_stream *t)
{
    return stream_on_eof(t);
}

void tl_stream_hold_update(tl_stream *t)
{
    stream_hold_update(t);
}

ssize_t tl_stream_send(tl_stream *t, const void *buf, size_t len)
{
    return fd_send(t, buf, len);
}

int tl_stream_wq_append(tl_stream *t, PyObject *data, const Py_buffer *view, Py_ssize_t off)
{
    return wq_append(t, data, view, off);
}

void tl_stream_wq_clear(tl_stream *t)
{
    wq_clear(t);
}

int tl_stream_write_failed(tl_stream *t)
{
    return stream_write_failed(t);
}

int tl_stream_start_flush(tl_stream *t)
{
    return stream_start_flush(t);
}

/* ---- for the kinds outside this file (tl_stream.h) ----------------------------- */

int tl_stream_force_close(tl_stream *t, PyObject *exc)
{
    return stream_force_close(t, exc);
}

void tl_stream_debug_log(tl_stream *t, const char *level, const char *fmt)
{
    debug_log(t, level, fmt);
}

void tl_stream_home_here(tl_state *st, PyObject *transport)
{
    if (transport != NULL && PyObject_TypeCheck(transport, st->socket_transport_type))
        stream_home_here((tl_stream *)transport);
}

PyObject *tl_stream_call_protocol(tl_stream *t, PyObject *name, PyObject *arg)
{
    return call_protocol(t, name, arg);
}

PyObject *tl_stream_call_protocol2(tl_stream *t, PyObject *name, PyObject *a, PyObject *b)
{
    if (TL_UNLIKELY(t->protocol == NULL))
        Py_RETURN_NONE;
    PyObject *stack[4] = {NULL, t->protocol, a, b};
    return PyObject_VectorcallMethod(name, stack + 1, 3 | PY_VECTORCALL_ARGUMENTS_OFFSET,
                                     NULL);
}

int tl_stream_fatal_error(tl_stream *t, const char *message)
{
    return stream_fatal_error(t, message);
}

int tl_stream_report_callback_error(tl_stream *t, PyObject *proto, const char *method)
{
    return report_callback_error(t, proto, method);
}

void tl_stream_watch(tl_stream *t, ev_io *w, int on)
{
    if (on)
        watch_start(t, w);
    else
        watch_stop(t, w);
}

int tl_stream_maybe_pause_protocol(tl_stream *t)
{
    return stream_maybe_pause_protocol(t);
}

int tl_stream_maybe_resume_protocol(tl_stream *t)
{
    return stream_maybe_resume_protocol(t);
}

void tl_stream_warn_lost_writes(tl_stream *t)
{
    warn_lost_writes(t);
}

int tl_stream_call_connection_lost(tl_stream *t, PyObject *exc)
{
    return call_connection_lost(t, exc);
}

int tl_stream_wq_push(tl_stream *t, PyObject *item)
{
    Py_ssize_t wsize = t->wsize;
    /* wq_push counts bytes objects; the caller counts its items itself */
    if (wq_push_item(t, item) < 0) {
        Py_DECREF(item);
        return -1;
    }
    t->wsize = wsize;
    return 0;
}

void tl_stream_wq_drop(tl_stream *t)
{
    Py_DECREF(t->wq[t->wq_head]);
    t->wq_head = (t->wq_head + 1) & (t->wq_cap - 1);
    if (--t->wq_len == 0) {
        Py_ssize_t wsize = t->wsize;
        wq_clear(t);    /* give the ring's memory back to an idle transport */
        t->wsize = wsize;
    }
}

char *tl_stream_read_buffer(tl_loop *loop)
{
    return loop_read_buffer(loop);
}

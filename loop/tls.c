/* tls.c - TLS over a stream transport: asyncio's sslproto.py in C.
 *
 * Each function below is the sslproto.SSLProtocol (or _SSLProtocolTransport)
 * method of the same name, with the same checks in the same order; see
 * tl_tls.h for the design. Where 3.11's sslproto differs from 3.12+ we
 * follow 3.12+ (3.11's _SSLProtocolTransport._force_close() calls _abort()
 * with an argument it does not take: a TypeError, fixed in 3.12).
 *
 * Deviations, each on purpose:
 * - reads stop when neither the incoming BIO nor the SSL object holds
 *   anything, instead of ending on an SSLWantReadError (same outcome, no
 *   exception object per read);
 * - the handshake's last flight is flushed even when the application
 *   paused reading in connection_made() (asyncio leaves it in the outgoing
 *   BIO until the next write, so the peer's handshake may never finish);
 * - a BufferedProtocol buffer is filled through its buffer protocol, not
 *   by slicing it (asyncio's buf[offset:] copies a bytearray and loses the
 *   data read into the copy).
 *
 * Threads: on a threaded loop an SSL transport's engine and its
 * application protocol run on the underlying transport's strand, one item
 * at a time, like every protocol callback (tl_stream.h); _ssl releases the
 * GIL inside SSL calls, so the scratch buffer object (rawbuf) is per
 * connection, never shared.
 */
#include "tl_tls.h"
#include "tl_stream.h"
#include "tl_io.h"

#define TL_TLS_MAX_SIZE (256 * 1024)        /* SSLProtocol.max_size */
/* Room for one more TLS record than the BIO holds: OpenSSL may have kept a
 * partial record from the previous read (16 KiB of plaintext at most). */
#define TL_TLS_RECORD_SLACK (16 * 1024 + 512)

enum { ST_UNWRAPPED, ST_DO_HANDSHAKE, ST_WRAPPED, ST_FLUSHING, ST_SHUTDOWN };
static const char *const state_names[] = {"UNWRAPPED", "DO_HANDSHAKE", "WRAPPED", "FLUSHING",
                                          "SHUTDOWN"};

enum { APP_INIT, APP_CON_MADE, APP_EOF, APP_CON_LOST };

/* the SSL object's operations: _ssl._SSLSocket's method, or the ssl.SSLObject
 * method of the same meaning */
enum {
    OP_READ,
    OP_WRITE,
    OP_DO_HANDSHAKE,
    OP_SHUTDOWN,
    OP_GETPEERCERT,
    OP_CIPHER,
    OP_COMPRESSION,
    OP_PENDING,
    OP_COUNT
};
static const char *const op_sslsocket_names[OP_COUNT] = {
    "read", "write", "do_handshake", "shutdown", "getpeercert", "cipher", "compression",
    "pending"};
static const char *const op_sslobject_names[OP_COUNT] = {
    "read", "write", "do_handshake", "unwrap", "getpeercert", "cipher", "compression",
    "pending"};

typedef struct tl_tls_state {
    int available;                  /* the ssl module imported */
    PyObject *ssl_error;            /* ssl.SSLError */
    PyObject *want_read_error;      /* ssl.SSLWantReadError */
    PyObject *syscall_error;        /* ssl.SSLSyscallError */
    PyObject *certificate_error;    /* ssl.CertificateError */
    PyObject *memory_bio;           /* ssl.MemoryBIO */
    PyObject *bio_write;            /* MemoryBIO.write (method descriptor) */
    PyObject *bio_read;             /* MemoryBIO.read */
    PyObject *bio_pending;          /* MemoryBIO.pending (getset descriptor) */
    PyObject *sslobject_cls;        /* ssl.SSLObject */
    PyObject *sslsocket_type;       /* _ssl._SSLSocket */
    PyObject *ops[OP_COUNT];        /* _SSLSocket's methods */
    PyObject *op_names[OP_COUNT];   /* SSLObject's method names */
    PyObject *create_transport_context;   /* sslproto._create_transport_context */
    PyObject *handshake_timeout;    /* constants.SSL_HANDSHAKE_TIMEOUT */
    PyObject *shutdown_timeout;     /* constants.SSL_SHUTDOWN_TIMEOUT */
    PyTypeObject *rawbuf_type;
    PyObject *str_write, *str_close, *str_force_close, *str_pause_reading,
        *str_resume_reading, *str_get_extra_info, *str_call_soon, *str_call_later,
        *str_cancel, *str_wrap_bio, *str_sslobj, *str_server_side, *str_server_hostname,
        *str_get_buffer, *str_buffer_updated, *str_check_hs, *str_check_sd, *str_do_read,
        *str_resume, *str_sslcontext, *str_peercert, *str_cipher, *str_compression,
        *str_ssl_object, *str_debug, *str_warning, *str_join;
    long connlost_threshold;        /* constants.LOG_THRESHOLD_FOR_CONNLOST_WRITES */
    long read_high_kb, write_high_kb;
} tl_tls_state;

#define TLS_STATE_OBJECTS(X)                                                              \
    X(ssl_error) X(want_read_error) X(syscall_error) X(certificate_error) X(memory_bio)   \
    X(bio_write) X(bio_read) X(bio_pending) X(sslobject_cls) X(sslsocket_type)            \
    X(create_transport_context) X(handshake_timeout) X(shutdown_timeout) X(str_write)    \
    X(str_close) X(str_force_close) X(str_pause_reading) X(str_resume_reading)           \
    X(str_get_extra_info) X(str_call_soon) X(str_call_later) X(str_cancel)               \
    X(str_wrap_bio) X(str_sslobj) X(str_server_side) X(str_server_hostname)              \
    X(str_get_buffer) X(str_buffer_updated) X(str_check_hs) X(str_check_sd)              \
    X(str_do_read) X(str_resume) X(str_sslcontext) X(str_peercert) X(str_cipher)         \
    X(str_compression) X(str_ssl_object) X(str_debug) X(str_warning) X(str_join)

/* A writable buffer over memory we name: how the SSL object reads into and
 * writes from our memory without a memoryview per call. */
typedef struct {
    PyObject_HEAD
    char *ptr;
    Py_ssize_t len;
} tl_rawbuf;

typedef struct tl_tls {
    PyObject_HEAD
    PyObject *extra;                /* BaseTransport._extra: the TLS extra info */
    PyObject *flow_slots[4];        /* transports._FlowControlMixin's slots, unused */
    PyObject *dict;
    PyObject *weakreflist;
    tl_loop *loop;
    tl_tls_state *T;
    PyObject *app_protocol;         /* NULL once connection_lost() ran */
    PyObject *app_get_buffer;       /* a BufferedProtocol's bound methods */
    PyObject *app_buffer_updated;
    PyObject *sslcontext;
    PyObject *server_hostname;      /* NULL: None */
    PyObject *sslobj;               /* the ssl.SSLObject */
    PyObject *engine;               /* its _ssl._SSLSocket (fast path), or NULL */
    PyObject *incoming;             /* ssl.MemoryBIO */
    PyObject *outgoing;
    tl_rawbuf *raw;
    PyObject *transport;            /* the transport below, NULL when none */
    PyObject *waiter;
    PyObject *hs_timer;             /* TimerHandles */
    PyObject *sd_timer;
    PyObject *hs_timeout;           /* the timeouts as given (messages show them) */
    PyObject *sd_timeout;
    PyObject *backlog;              /* list of plaintext not yet written */
    PyObject *py_buffer;            /* get_buffer() for foreign transports */
    Py_ssize_t backlog_head;        /* first item of backlog still pending */
    Py_ssize_t backlog_size;        /* _write_buffer_size */
    Py_ssize_t in_high, in_low, out_high, out_low;
    double hs_start;
    int conn_lost;
    uint8_t state;
    uint8_t app_state;
    uint8_t server_side;
    uint8_t app_is_buffer;
    uint8_t closed;                 /* the app transport's _closed */
    uint8_t has_app_transport;      /* _app_transport is not None */
    uint8_t ssl_writing_paused;
    uint8_t app_reading_paused;
    uint8_t ssl_reading_paused;
    uint8_t eof_received;
    uint8_t app_writing_paused;
    uint8_t close_notify;           /* the engine returned b'' (the peer's close_notify) */
    uint8_t accepting;              /* made by a server: no waiter, see tl_tls_new */
} tl_tls;

static inline int is_exit_exception(void)
{
    return PyErr_ExceptionMatches(PyExc_SystemExit) ||
           PyErr_ExceptionMatches(PyExc_KeyboardInterrupt);
}

/* ---- the SSL object and the BIOs ------------------------------------------ */

/* engine.<op>(args...): a new reference or NULL with the error set */
static PyObject *engine_call(tl_tls *s, int op, PyObject *a1, PyObject *a2, size_t nargs)
{
    PyObject *args[3];
    args[1] = a1;
    args[2] = a2;
    if (s->engine != NULL) {
        args[0] = s->engine;
        return PyObject_Vectorcall(s->T->ops[op], args, nargs + 1, NULL);
    }
    args[0] = s->sslobj;
    return PyObject_VectorcallMethod(s->T->op_names[op], args, nargs + 1, NULL);
}

/* The error is one of asyncio's SSLAgainErrors (want read, syscall). */
static int again_error(tl_tls *s)
{
    return PyErr_ExceptionMatches(s->T->want_read_error) ||
           PyErr_ExceptionMatches(s->T->syscall_error);
}

static Py_ssize_t bio_pending(tl_tls *s, PyObject *bio)
{
    PyObject *d = s->T->bio_pending;
    PyObject *v = Py_TYPE(d)->tp_descr_get(d, bio, (PyObject *)Py_TYPE(bio));
    if (v == NULL)
        return -1;
    Py_ssize_t n = PyLong_AsSsize_t(v);
    Py_DECREF(v);
    return n;
}

/* incoming.write(data[:n]) */
static int bio_feed(tl_tls *s, const char *data, Py_ssize_t n)
{
    s->raw->ptr = (char *)data;
    s->raw->len = n;
    PyObject *args[2] = {s->incoming, (PyObject *)s->raw};
    PyObject *r = PyObject_Vectorcall(s->T->bio_write, args, 2, NULL);
    s->raw->ptr = NULL;
    s->raw->len = 0;
    Py_XDECREF(r);
    return r ? 0 : -1;
}

/* engine.read(room, <buffer at ptr>): the count, 0 at close_notify, -2 for
 * SSLAgainErrors (cleared), -1 for another error */
static Py_ssize_t engine_read_into(tl_tls *s, char *ptr, Py_ssize_t room)
{
    PyObject *size = PyLong_FromSsize_t(room);
    if (size == NULL)
        return -1;
    s->raw->ptr = ptr;
    s->raw->len = room;
    PyObject *r = engine_call(s, OP_READ, size, (PyObject *)s->raw, 2);
    s->raw->ptr = NULL;
    s->raw->len = 0;
    Py_DECREF(size);
    if (r == NULL) {
        if (again_error(s)) {
            PyErr_Clear();
            return -2;
        }
        return -1;
    }
    Py_ssize_t n = PyLong_AsSsize_t(r);
    Py_DECREF(r);
    if (n == 0)
        s->close_notify = 1;
    return n;
}

/* 1 when a read may give data (or the close_notify again), 0 when it would
 * only raise SSLWantReadError: nothing in the incoming BIO, nothing
 * decrypted in the SSL object (OpenSSL reads one record at a time, so no
 * whole record waits inside it). */
static int engine_has_input(tl_tls *s)
{
    if (s->close_notify)
        return 1;
    Py_ssize_t n = bio_pending(s, s->incoming);
    if (n != 0)
        return n < 0 ? -1 : 1;
    PyObject *r = engine_call(s, OP_PENDING, NULL, NULL, 0);
    if (r == NULL)
        return -1;
    n = PyLong_AsSsize_t(r);
    Py_DECREF(r);
    return n < 0 ? (PyErr_Occurred() ? -1 : 0) : n > 0;
}

/* ---- calls into the loop, the transport and the application --------------- */

static PyObject *method_of(PyObject *obj, PyObject *name)
{
    return PyObject_GetAttr(obj, name);
}

/* loop.call_soon(callback[, arg]) */
static int call_soon(tl_tls *s, PyObject *callback, PyObject *arg)
{
    PyObject *r = PyObject_CallMethodObjArgs((PyObject *)s->loop, s->T->str_call_soon, callback,
                                             arg, NULL);
    Py_XDECREF(r);
    return r ? 0 : -1;
}

/* loop.call_soon(self.<name>) */
static int call_soon_self(tl_tls *s, PyObject *name)
{
    PyObject *m = method_of((PyObject *)s, name);
    if (m == NULL)
        return -1;
    int rc = call_soon(s, m, NULL);
    Py_DECREF(m);
    return rc;
}

/* loop.call_later(delay, self.<name>) */
static PyObject *call_later_self(tl_tls *s, PyObject *delay, PyObject *name)
{
    PyObject *m = method_of((PyObject *)s, name);
    if (m == NULL)
        return NULL;
    PyObject *h = PyObject_CallMethodObjArgs((PyObject *)s->loop, s->T->str_call_later, delay,
                                             m, NULL);
    Py_DECREF(m);
    return h;
}

static int cancel_timer(tl_tls *s, PyObject **slot)
{
    PyObject *h = *slot;
    if (h == NULL)
        return 0;
    *slot = NULL;
    PyObject *r = PyObject_CallMethodNoArgs(h, s->T->str_cancel);
    Py_DECREF(h);
    Py_XDECREF(r);
    return r ? 0 : -1;
}

/* transport.<name>([arg]) */
static int transport_call(tl_tls *s, PyObject *name, PyObject *arg)
{
    if (s->transport == NULL) {
        PyErr_Format(PyExc_AttributeError, "'NoneType' object has no attribute '%U'", name);
        return -1;
    }
    PyObject *tr = Py_NewRef(s->transport);
    PyObject *args[2] = {tr, arg};
    PyObject *r = PyObject_VectorcallMethod(name, args, arg ? 2 : 1, NULL);
    Py_DECREF(tr);
    Py_XDECREF(r);
    return r ? 0 : -1;
}

/* app_protocol.<name>([arg]): a new reference. `name` is one of the
 * interned strings of the module state: a name made per call (what
 * PyObject_CallMethod does with a C string) ends up held by CPython's type
 * attribute cache, one string per slot it lands in, up to 4096 of them. */
static PyObject *app_call(tl_tls *s, PyObject *name, PyObject *arg)
{
    if (s->app_protocol == NULL) {
        PyErr_Format(PyExc_AttributeError, "'NoneType' object has no attribute '%U'", name);
        return NULL;
    }
    PyObject *proto = Py_NewRef(s->app_protocol);
    PyObject *args[2] = {proto, arg};
    PyObject *r = PyObject_VectorcallMethod(name, args, arg ? 2 : 1, NULL);
    Py_DECREF(proto);
    return r;
}

/* logger.<level>(fmt, self[, arg]) */
static int log_self(tl_tls *s, PyObject *level, const char *fmt, PyObject *arg,
                    PyObject *exc_info)
{
    PyObject *logger = s->loop->st->logger;
    PyObject *meth = PyObject_GetAttr(logger, level);
    if (meth == NULL)
        return -1;
    PyObject *args = arg ? Py_BuildValue("(sOO)", fmt, (PyObject *)s, arg)
                         : Py_BuildValue("(sO)", fmt, (PyObject *)s);
    PyObject *kw = (args && exc_info) ? Py_BuildValue("{sO}", "exc_info", exc_info) : NULL;
    PyObject *r = (args && (kw || !exc_info)) ? PyObject_Call(meth, args, kw) : NULL;
    Py_XDECREF(kw);
    Py_XDECREF(args);
    Py_DECREF(meth);
    Py_XDECREF(r);
    return r ? 0 : -1;
}

static int log_warning(tl_tls *s, const char *msg)
{
    PyObject *text = PyUnicode_FromString(msg);
    if (text == NULL)
        return -1;
    PyObject *args[2] = {s->loop->st->logger, text};
    PyObject *r = PyObject_VectorcallMethod(s->T->str_warning, args, 2, NULL);
    Py_DECREF(text);
    Py_XDECREF(r);
    return r ? 0 : -1;
}

static int report(tl_tls *s, const char *message, PyObject *exc, PyObject *transport)
{
    PyObject *ctx = Py_BuildValue("{sssOsOsO}", "message", message, "exception", exc,
                                  "transport", transport ? transport : Py_None, "protocol",
                                  (PyObject *)s);
    if (ctx == NULL)
        return -1;
    int rc = tl_loop_report(s->loop, ctx);
    Py_DECREF(ctx);
    return rc;
}

/* ---- state -------------------------------------------------------------------- */

static int set_state(tl_tls *s, int new_state)
{
    int allowed = new_state == ST_UNWRAPPED ||
                  (s->state == ST_UNWRAPPED && new_state == ST_DO_HANDSHAKE) ||
                  (s->state == ST_DO_HANDSHAKE && new_state == ST_WRAPPED) ||
                  (s->state == ST_WRAPPED && new_state == ST_FLUSHING) ||
                  (s->state == ST_FLUSHING && new_state == ST_SHUTDOWN);
    if (!allowed) {
        PyErr_Format(PyExc_RuntimeError,
                     "cannot switch state from SSLProtocolState.%s to SSLProtocolState.%s",
                     state_names[s->state], state_names[new_state]);
        return -1;
    }
    s->state = (uint8_t)new_state;
    return 0;
}

static int fatal_error(tl_tls *s, PyObject *exc, const char *message);

/* The current exception, when it is an Exception, goes to _fatal_error()
 * (asyncio's `except Exception as ex: self._fatal_error(ex, message)`). */
static int catch_fatal(tl_tls *s, const char *message)
{
    if (!PyErr_ExceptionMatches(PyExc_Exception))
        return -1;
    PyObject *exc = PyErr_GetRaisedException();
    int rc = fatal_error(s, exc, message);
    Py_DECREF(exc);
    return rc;
}

/* _wakeup_waiter(exc) */
static int wakeup_waiter(tl_tls *s, PyObject *exc)
{
    tl_state *st = s->loop->st;
    if (s->waiter == NULL) {
        if (s->accepting && exc != NULL) {
            /* what _accept_connection2 does when `await waiter` raises:
             * close the transport; say why in debug mode */
            s->accepting = 0;
            s->closed = 1;
            if (s->loop->debug) {
                PyObject *ctx = Py_BuildValue(
                    "{sssOsOsO}", "message",
                    "Error on transport creation for incoming connection", "exception", exc,
                    "protocol", s->app_protocol ? s->app_protocol : Py_None, "transport",
                    (PyObject *)s);
                if (ctx == NULL)
                    return -1;
                int rc = tl_loop_report(s->loop, ctx);
                Py_DECREF(ctx);
                return rc;
            }
        }
        s->accepting = 0;
        return 0;
    }
    PyObject *waiter = s->waiter;
    s->waiter = NULL;
    PyObject *c = PyObject_CallMethodNoArgs(waiter, st->str_cancelled);
    int cancelled = c ? PyObject_IsTrue(c) : -1;
    Py_XDECREF(c);
    PyObject *r = NULL;
    if (cancelled == 0)
        r = PyObject_CallMethodOneArg(waiter, exc ? st->str_set_exception : st->str_set_result,
                                      exc ? exc : Py_None);
    Py_DECREF(waiter);
    if (cancelled < 0 || (cancelled == 0 && r == NULL))
        return -1;
    Py_XDECREF(r);
    return 0;
}

static void set_app_protocol_refs(tl_tls *s)
{
    Py_CLEAR(s->app_get_buffer);
    Py_CLEAR(s->app_buffer_updated);
    s->app_is_buffer = 0;
}

/* _set_app_protocol(app_protocol) */
static int set_app_protocol(tl_tls *s, PyObject *app_protocol)
{
    PyObject *gb = NULL, *bu = NULL;
    int is_buffer = 0;
    PyObject *probe = NULL;
#if PY_VERSION_HEX >= 0x030D0000
    int has = PyObject_GetOptionalAttr(app_protocol, s->T->str_get_buffer, &probe);
#else
    int has = _PyObject_LookupAttr(app_protocol, s->T->str_get_buffer, &probe);
#endif
    Py_XDECREF(probe);
    if (has < 0)
        return -1;
    if (has) {
        is_buffer = PyObject_IsInstance(app_protocol, s->loop->st->buffered_protocol_cls);
        if (is_buffer < 0)
            return -1;
    }
    if (is_buffer) {
        gb = PyObject_GetAttr(app_protocol, s->T->str_get_buffer);
        bu = gb ? PyObject_GetAttr(app_protocol, s->T->str_buffer_updated) : NULL;
        if (bu == NULL) {
            Py_XDECREF(gb);
            return -1;
        }
    }
    Py_XSETREF(s->app_protocol, Py_NewRef(app_protocol));
    set_app_protocol_refs(s);
    s->app_get_buffer = gb;
    s->app_buffer_updated = bu;
    s->app_is_buffer = (uint8_t)is_buffer;
    return 0;
}

/* ---- handshake --------------------------------------------------------------------- */

static int do_read(tl_tls *s);
static int process_outgoing(tl_tls *s);
static int tls_abort(tl_tls *s, PyObject *exc);

static int on_handshake_complete(tl_tls *s, PyObject *handshake_exc)
{
    if (cancel_timer(s, &s->hs_timer) < 0)
        return -1;
    PyObject *peercert = NULL;
    PyObject *exc = NULL;
    if (handshake_exc == NULL) {
        if (set_state(s, ST_WRAPPED) == 0)
            peercert = engine_call(s, OP_GETPEERCERT, NULL, NULL, 0);
        if (peercert == NULL) {
            if (!PyErr_ExceptionMatches(PyExc_Exception))
                return -1;
            exc = PyErr_GetRaisedException();
        }
    } else {
        exc = Py_NewRef(handshake_exc);
    }
    if (exc != NULL) {
        int rc = set_state(s, ST_UNWRAPPED);
        int is_cert = PyObject_IsInstance(exc, s->T->certificate_error);
        if (is_cert < 0)
            rc = -1;
        const char *msg = is_cert > 0 ? "SSL handshake failed on verifying the certificate"
                                      : "SSL handshake failed";
        if (rc == 0)
            rc = fatal_error(s, exc, msg);
        if (rc == 0)
            rc = wakeup_waiter(s, exc);
        Py_DECREF(exc);
        return rc;
    }
    if (s->loop->debug) {
        double dt = tl_loop_time(s->loop) - s->hs_start;
        PyObject *ms = PyFloat_FromDouble(dt * 1e3);
        int rc = ms ? log_self(s, s->T->str_debug, "%r: SSL handshake took %.1f ms", ms, NULL) : -1;
        Py_XDECREF(ms);
        if (rc < 0) {
            Py_DECREF(peercert);
            return -1;
        }
    }
    /* extra info that becomes available after the handshake */
    PyObject *cipher = engine_call(s, OP_CIPHER, NULL, NULL, 0);
    PyObject *compression = cipher ? engine_call(s, OP_COMPRESSION, NULL, NULL, 0) : NULL;
    int rc = compression ? 0 : -1;
    if (rc == 0)
        rc = PyDict_SetItem(s->extra, s->T->str_peercert, peercert);
    if (rc == 0)
        rc = PyDict_SetItem(s->extra, s->T->str_cipher, cipher);
    if (rc == 0)
        rc = PyDict_SetItem(s->extra, s->T->str_compression, compression);
    if (rc == 0)
        rc = PyDict_SetItem(s->extra, s->T->str_ssl_object, s->sslobj);
    Py_DECREF(peercert);
    Py_XDECREF(cipher);
    Py_XDECREF(compression);
    if (rc < 0)
        return -1;
    if (s->app_state == APP_INIT) {
        s->app_state = APP_CON_MADE;
        PyObject *r = app_call(s, s->loop->st->str_connection_made, (PyObject *)s);
        if (r == NULL)
            return -1;
        Py_DECREF(r);
    }
    if (wakeup_waiter(s, NULL) < 0)
        return -1;
    if (s->app_reading_paused && s->state == ST_WRAPPED) {
        /* the handshake's last flight goes out even when reading is paused */
        if (process_outgoing(s) < 0)
            return catch_fatal(s, "Fatal error on SSL protocol");
    }
    return do_read(s);
}

/* One step of the engine's handshake or shutdown, as asyncio's
 * _do_handshake/_do_shutdown take it: 1 when the engine is done with it;
 * 0 when it is not done, with *rc the result of what came instead: the
 * engine waits for the peer (what it wrote goes out) or it failed with an
 * SSL error, which complete(s, exc) takes; -1 on any other error. */
static int engine_step(tl_tls *s, int op, int (*complete)(tl_tls *, PyObject *), int *rc)
{
    PyObject *r = engine_call(s, op, NULL, NULL, 0);
    if (r != NULL) {
        Py_DECREF(r);
        return 1;
    }
    if (again_error(s)) {
        PyErr_Clear();
        *rc = process_outgoing(s);
        return 0;
    }
    if (PyErr_ExceptionMatches(s->T->ssl_error)) {
        PyObject *exc = PyErr_GetRaisedException();
        *rc = complete(s, exc);
        Py_DECREF(exc);
        return 0;
    }
    return -1;
}

static int do_handshake(tl_tls *s)
{
    int rc = 0;
    int done = engine_step(s, OP_DO_HANDSHAKE, on_handshake_complete, &rc);
    if (done <= 0)
        return done < 0 ? -1 : rc;
    return on_handshake_complete(s, NULL);
}

static int start_handshake(tl_tls *s)
{
    if (s->loop->debug) {
        if (log_self(s, s->T->str_debug, "%r starts SSL handshake", NULL, NULL) < 0)
            return -1;
        s->hs_start = tl_loop_time(s->loop);
    }
    if (set_state(s, ST_DO_HANDSHAKE) < 0)
        return -1;
    PyObject *h = call_later_self(s, s->hs_timeout, s->T->str_check_hs);
    if (h == NULL)
        return -1;
    Py_XSETREF(s->hs_timer, h);
    return do_handshake(s);
}

/* ---- shutdown ------------------------------------------------------------------------- */

static int call_eof_received(tl_tls *s);

static int on_shutdown_complete(tl_tls *s, PyObject *shutdown_exc)
{
#if PY_VERSION_HEX >= 0x030E0000
    /* 3.14: the raw transport's close() flushes first, which a peer that
     * does not read can hold up for ever: the timeout stays (or starts, when
     * the peer began the shutdown) until connection_lost() */
    if (shutdown_exc == NULL && s->sd_timer == NULL) {
        PyObject *h = call_later_self(s, s->sd_timeout, s->T->str_check_sd);
        if (h == NULL)
            return -1;
        s->sd_timer = h;
    }
    if (shutdown_exc != NULL && cancel_timer(s, &s->sd_timer) < 0)
        return -1;
#else
    if (cancel_timer(s, &s->sd_timer) < 0)
        return -1;
#endif
    if (shutdown_exc != NULL)
        return fatal_error(s, shutdown_exc, "Fatal error on transport");
    if (s->transport == NULL) {
        PyErr_SetString(PyExc_AttributeError, "'NoneType' object has no attribute 'close'");
        return -1;
    }
    PyObject *close = method_of(s->transport, s->T->str_close);
    if (close == NULL)
        return -1;
    int rc = call_soon(s, close, NULL);
    Py_DECREF(close);
    return rc;
}

static int do_shutdown(tl_tls *s)
{
    if (!s->eof_received) {
        int rc = 0;
        int done = engine_step(s, OP_SHUTDOWN, on_shutdown_complete, &rc);
        if (done <= 0)
            return done < 0 ? -1 : rc;
    }
    if (process_outgoing(s) < 0 || call_eof_received(s) < 0)
        return -1;
    return on_shutdown_complete(s, NULL);
}

static int do_flush(tl_tls *s)
{
    if (do_read(s) < 0 || set_state(s, ST_SHUTDOWN) < 0)
        return -1;
    return do_shutdown(s);
}

static int start_shutdown(tl_tls *s)
{
    if (s->state == ST_FLUSHING || s->state == ST_SHUTDOWN || s->state == ST_UNWRAPPED)
        return 0;
    if (s->has_app_transport)
        s->closed = 1;
    if (s->state == ST_DO_HANDSHAKE)
        return tls_abort(s, NULL);
    if (set_state(s, ST_FLUSHING) < 0)
        return -1;
    PyObject *h = call_later_self(s, s->sd_timeout, s->T->str_check_sd);
    if (h == NULL)
        return -1;
    Py_XSETREF(s->sd_timer, h);
    return do_flush(s);
}

/* _abort(exc) */
static int tls_abort(tl_tls *s, PyObject *exc)
{
    if (set_state(s, ST_UNWRAPPED) < 0)
        return -1;
    if (s->transport != NULL)
        return transport_call(s, s->T->str_force_close, exc ? exc : Py_None);
    return 0;
}

/* ---- writing ----------------------------------------------------------------------------- */

static int control_app_writing(tl_tls *s);

static Py_ssize_t backlog_len(tl_tls *s)
{
    return s->backlog ? PyList_GET_SIZE(s->backlog) - s->backlog_head : 0;
}

static void backlog_clear(tl_tls *s)
{
    Py_CLEAR(s->backlog);
    s->backlog_head = 0;
    s->backlog_size = 0;
}

static int backlog_append(tl_tls *s, PyObject *data)
{
    Py_ssize_t n = PyBytes_CheckExact(data) ? PyBytes_GET_SIZE(data) : PyObject_Length(data);
    if (n < 0)
        return -1;
    if (s->backlog == NULL && (s->backlog = PyList_New(0)) == NULL)
        return -1;
    if (PyList_Append(s->backlog, data) < 0)
        return -1;
    s->backlog_size += n;
    return 0;
}

/* sslobj.write(data): the count written, -2 for SSLAgainErrors (cleared) */
static Py_ssize_t engine_write(tl_tls *s, PyObject *data)
{
    PyObject *r = engine_call(s, OP_WRITE, data, NULL, 1);
    if (r == NULL) {
        if (again_error(s)) {
            PyErr_Clear();
            return -2;
        }
        return -1;
    }
    Py_ssize_t n = PyLong_AsSsize_t(r);
    Py_DECREF(r);
    return n;
}

/* the outgoing ciphertext to the transport */
static int process_outgoing(tl_tls *s)
{
    if (!s->ssl_writing_paused) {
        PyObject *args[1] = {s->outgoing};
        PyObject *data = PyObject_Vectorcall(s->T->bio_read, args, 1, NULL);
        if (data == NULL)
            return -1;
        int rc = 0;
        if (PyBytes_GET_SIZE(data))
            rc = transport_call(s, s->T->str_write, data);
        Py_DECREF(data);
        if (rc < 0)
            return -1;
    }
    return control_app_writing(s);
}

static int do_write(tl_tls *s)
{
    while (backlog_len(s) > 0) {
        PyObject *data = Py_NewRef(PyList_GET_ITEM(s->backlog, s->backlog_head));
        Py_ssize_t count = engine_write(s, data);
        if (count == -2) {
            Py_DECREF(data);
            break;
        }
        Py_ssize_t len = count < 0 ? -1
                         : PyBytes_CheckExact(data) ? PyBytes_GET_SIZE(data)
                                                    : PyObject_Length(data);
        if (len < 0) {
            Py_DECREF(data);
            return -1;
        }
        if (count < len) {
            PyObject *rest = PySequence_GetSlice(data, count, PY_SSIZE_T_MAX);
            Py_DECREF(data);
            if (rest == NULL)
                return -1;
            PyList_SetItem(s->backlog, s->backlog_head, rest);
            s->backlog_size -= count;
        } else {
            Py_DECREF(data);
            s->backlog_head++;
            s->backlog_size -= len;
            if (s->backlog_head == PyList_GET_SIZE(s->backlog)) {
                Py_CLEAR(s->backlog);
                s->backlog_head = 0;
            }
        }
    }
    return process_outgoing(s);
}

/* _write_appdata(list_of_data); `one` is a single item (write()) or NULL to
 * iterate `items` */
static int write_appdata(tl_tls *s, PyObject *one, PyObject *items)
{
    if (s->state == ST_FLUSHING || s->state == ST_SHUTDOWN || s->state == ST_UNWRAPPED) {
        if (s->conn_lost >= s->T->connlost_threshold && log_warning(s, "SSL connection is closed") < 0)
            return -1;
        s->conn_lost++;
        return 0;
    }
    if (one != NULL && s->state == ST_WRAPPED && backlog_len(s) == 0) {
        /* the common case: straight to the SSL object, nothing buffered */
        Py_ssize_t count = engine_write(s, one);
        if (count >= 0) {
            Py_ssize_t len = PyBytes_CheckExact(one) ? PyBytes_GET_SIZE(one) : PyObject_Length(one);
            if (len < 0)
                return -1;
            if (count < len) {
                PyObject *rest = PySequence_GetSlice(one, count, PY_SSIZE_T_MAX);
                if (rest == NULL || backlog_append(s, rest) < 0) {
                    Py_XDECREF(rest);
                    return -1;
                }
                Py_DECREF(rest);
            }
        } else if (count == -2) {
            if (backlog_append(s, one) < 0)
                return -1;
        } else {
            return catch_fatal(s, "Fatal error on SSL protocol");
        }
        if (process_outgoing(s) < 0)
            return catch_fatal(s, "Fatal error on SSL protocol");
        return 0;
    }
    if (one != NULL) {
        if (backlog_append(s, one) < 0)
            return -1;
    } else {
        PyObject *it = PyObject_GetIter(items);
        if (it == NULL)
            return -1;
        PyObject *data;
        while ((data = PyIter_Next(it)) != NULL) {
            int rc = backlog_append(s, data);
            Py_DECREF(data);
            if (rc < 0) {
                Py_DECREF(it);
                return -1;
            }
        }
        Py_DECREF(it);
        if (PyErr_Occurred())
            return -1;
    }
    if (s->state == ST_WRAPPED && do_write(s) < 0)
        return catch_fatal(s, "Fatal error on SSL protocol");
    return 0;
}

/* ---- reading --------------------------------------------------------------------------- */

static int do_read_buffered(tl_tls *s)
{
    Py_ssize_t offset = 0, count = 1;
    Py_ssize_t pending = bio_pending(s, s->incoming);
    if (pending < 0)
        return -1;
    PyObject *size = PyLong_FromSsize_t(pending);
    PyObject *buf = size ? PyObject_CallOneArg(s->app_get_buffer, size) : NULL;
    Py_XDECREF(size);
    if (buf == NULL)
        return -1;
    Py_buffer view;
    if (PyObject_GetBuffer(buf, &view, PyBUF_WRITABLE) < 0) {
        Py_DECREF(buf);
        return -1;
    }
    Py_ssize_t wants = view.len;
    int more = engine_has_input(s);
    if (more > 0) {
        count = engine_read_into(s, view.buf, wants);
        if (count > 0) {
            offset = count;
            while (offset < wants) {
                more = engine_has_input(s);
                if (more <= 0)
                    break;
                count = engine_read_into(s, (char *)view.buf + offset, wants - offset);
                if (count > 0)
                    offset += count;
                else
                    break;
            }
            if (offset >= wants && call_soon_self(s, s->T->str_do_read) < 0)
                count = -1;
        }
    }
    PyBuffer_Release(&view);
    Py_DECREF(buf);
    if (more < 0 || count == -1)
        return -1;
    if (offset > 0) {
        PyObject *n = PyLong_FromSsize_t(offset);
        PyObject *r = n ? PyObject_CallOneArg(s->app_buffer_updated, n) : NULL;
        Py_XDECREF(n);
        if (r == NULL)
            return -1;
        Py_DECREF(r);
    }
    if (count == 0) {
        /* close_notify */
        if (call_eof_received(s) < 0 || start_shutdown(s) < 0)
            return -1;
    }
    return 0;
}

/* Decrypt into bytes objects sized after what the BIO holds; several only
 * when more than max_size came. */
static int do_read_copied(tl_tls *s)
{
    PyObject *buf = NULL, *parts = NULL;
    Py_ssize_t cap = 0, len = 0;
    int eof = 0;
    for (;;) {
        int more = engine_has_input(s);
        if (more <= 0) {
            if (more < 0)
                goto error;
            break;
        }
        if (len == cap) {
            if (buf != NULL) {
                if (parts == NULL && (parts = PyList_New(0)) == NULL)
                    goto error;
                if (PyList_Append(parts, buf) < 0)
                    goto error;
                Py_CLEAR(buf);
            }
            Py_ssize_t pending = bio_pending(s, s->incoming);
            if (pending < 0)
                goto error;
            cap = pending + TL_TLS_RECORD_SLACK;
            if (cap > TL_TLS_MAX_SIZE)
                cap = TL_TLS_MAX_SIZE;
            len = 0;
            buf = PyBytes_FromStringAndSize(NULL, cap);
            if (buf == NULL)
                goto error;
        }
        Py_ssize_t n = engine_read_into(s, PyBytes_AS_STRING(buf) + len, cap - len);
        if (n == -2)
            break;
        if (n < 0)
            goto error;
        if (n == 0) {
            eof = 1;
            break;
        }
        len += n;
    }
    PyObject *data = NULL;
    if (buf != NULL) {
        if (len < cap && _PyBytes_Resize(&buf, len) < 0)
            goto error;
        if (parts == NULL) {
            data = buf;
            buf = NULL;
            if (len == 0)
                Py_CLEAR(data);
        } else {
            if (len > 0 && PyList_Append(parts, buf) < 0)
                goto error;
            Py_CLEAR(buf);
            PyObject *empty = PyBytes_FromStringAndSize(NULL, 0);
            PyObject *args[2] = {empty, parts};
            data = empty ? PyObject_VectorcallMethod(s->T->str_join, args, 2, NULL) : NULL;
            Py_XDECREF(empty);
            Py_CLEAR(parts);
            if (data == NULL)
                goto error;
        }
    }
    if (data != NULL) {
        PyObject *r = app_call(s, s->loop->st->str_data_received, data);
        tl_read_recycle(s->loop, data);
        if (r == NULL)
            return -1;
        Py_DECREF(r);
    }
    if (eof) {
        /* close_notify */
        if (call_eof_received(s) < 0 || start_shutdown(s) < 0)
            return -1;
    }
    return 0;
error:
    Py_XDECREF(buf);
    Py_XDECREF(parts);
    return -1;
}

static int control_ssl_reading(tl_tls *s);

static int do_read(tl_tls *s)
{
    if (s->state != ST_WRAPPED && s->state != ST_FLUSHING)
        return 0;
    Py_INCREF(s);
    int rc = 0;
    if (!s->app_reading_paused) {
        rc = s->app_is_buffer ? do_read_buffered(s) : do_read_copied(s);
        if (rc == 0)
            rc = backlog_len(s) ? do_write(s) : process_outgoing(s);
    }
    if (rc == 0)
        rc = control_ssl_reading(s);
    if (rc < 0)
        rc = catch_fatal(s, "Fatal error on SSL protocol");
    Py_DECREF(s);
    return rc;
}

static int call_eof_received(tl_tls *s)
{
    if (s->app_state != APP_CON_MADE)
        return 0;
    s->app_state = APP_EOF;
    PyObject *r = app_call(s, s->loop->st->str_eof_received, NULL);
    int keep_open = r ? PyObject_IsTrue(r) : -1;
    Py_XDECREF(r);
    if (keep_open > 0)
        return log_warning(s, "returning true from eof_received() has no effect when using ssl");
    if (keep_open == 0)
        return 0;
    if (is_exit_exception())
        return -1;
    PyObject *exc = PyErr_GetRaisedException();
    int rc = fatal_error(s, exc, "Error calling eof_received()");
    Py_DECREF(exc);
    return rc;
}

/* ---- flow control ---------------------------------------------------------------------------- */

static Py_ssize_t get_write_buffer_size(tl_tls *s)
{
    Py_ssize_t n = bio_pending(s, s->outgoing);
    return n < 0 ? -1 : n + s->backlog_size;
}

static int call_app_flow(tl_tls *s, PyObject *name, const char *failed)
{
    if (name == s->loop->st->str_pause_writing)
        tl_stream_home_here(s->loop->st, s->transport);  /* the writer waits for resume */
    PyObject *r = app_call(s, name, NULL);
    if (r != NULL) {
        Py_DECREF(r);
        return 0;
    }
    if (is_exit_exception())
        return -1;
    PyObject *exc = PyErr_GetRaisedException();
    int rc = report(s, failed, exc, s->has_app_transport ? (PyObject *)s : NULL);
    Py_DECREF(exc);
    return rc;
}

static int control_app_writing(tl_tls *s)
{
    Py_ssize_t size = get_write_buffer_size(s);
    if (size < 0)
        return -1;
    if (size >= s->out_high && !s->app_writing_paused) {
        s->app_writing_paused = 1;
        return call_app_flow(s, s->loop->st->str_pause_writing, "protocol.pause_writing() failed");
    }
    if (size <= s->out_low && s->app_writing_paused) {
        s->app_writing_paused = 0;
        return call_app_flow(s, s->loop->st->str_resume_writing, "protocol.resume_writing() failed");
    }
    return 0;
}

static int control_ssl_reading(tl_tls *s)
{
    Py_ssize_t size = bio_pending(s, s->incoming);
    if (size < 0)
        return -1;
    if (size >= s->in_high && !s->ssl_reading_paused) {
        s->ssl_reading_paused = 1;
        return transport_call(s, s->T->str_pause_reading, NULL);
    }
    if (size <= s->in_low && s->ssl_reading_paused) {
        s->ssl_reading_paused = 0;
        return transport_call(s, s->T->str_resume_reading, NULL);
    }
    return 0;
}

/* _fatal_error(exc, message) */
static int fatal_error(tl_tls *s, PyObject *exc, const char *message)
{
    if (s->transport != NULL && transport_call(s, s->T->str_force_close, exc) < 0)
        return -1;
    int is_os = PyObject_IsInstance(exc, PyExc_OSError);
    if (is_os < 0)
        return -1;
    if (is_os) {
        if (s->loop->debug) {
            PyObject *msg = PyUnicode_FromString(message);
            int rc = msg ? log_self(s, s->T->str_debug, "%r: %s", msg, exc) : -1;
            Py_XDECREF(msg);
            return rc;
        }
        return 0;
    }
    int cancelled = PyObject_IsInstance(exc, s->loop->st->cancelled_error);
    if (cancelled)
        return cancelled < 0 ? -1 : 0;
    return report(s, message, exc, s->transport);
}

/* ---- the incoming side: what the transport below calls ----------------------------------- */

/* buffer_updated()'s work once the ciphertext is in the incoming BIO */
static int on_ciphertext(tl_tls *s)
{
    switch (s->state) {
    case ST_DO_HANDSHAKE:
        return do_handshake(s);
    case ST_WRAPPED:
        return do_read(s);
    case ST_FLUSHING:
        return do_flush(s);
    case ST_SHUTDOWN:
        return do_shutdown(s);
    default:
        return 0;
    }
}

/* the stream sink (tl_stream.h): the stream read `n` bytes at `data` */
static int tls_sink_received(PyObject *protocol, const char *data, Py_ssize_t n)
{
    tl_tls *s = (tl_tls *)protocol;
    Py_INCREF(s);
    int rc = bio_feed(s, data, n);
    if (rc == 0)
        rc = on_ciphertext(s);
    Py_DECREF(s);
    return rc;
}

static const tl_stream_sink tls_sink = {tls_sink_received};

/* step(s) with s kept alive across it (callbacks may drop the last other
 * reference): None, or NULL with the error set */
static PyObject *held_step(tl_tls *s, int (*step)(tl_tls *))
{
    Py_INCREF(s);
    int rc = step(s);
    Py_DECREF(s);
    if (rc < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *tls_connection_made(tl_tls *s, PyObject *transport)
{
    Py_XSETREF(s->transport, Py_NewRef(transport));
    return held_step(s, start_handshake);
}

static PyObject *tls_connection_lost(tl_tls *s, PyObject *exc)
{
    Py_INCREF(s);
    int rc = 0;
    backlog_clear(s);
    PyObject *args[1] = {s->outgoing};
    PyObject *r = PyObject_Vectorcall(s->T->bio_read, args, 1, NULL);
    if (r == NULL)
        goto done;
    Py_DECREF(r);
    s->conn_lost++;
    if (s->has_app_transport)
        s->closed = 1;
    if (s->state != ST_DO_HANDSHAKE &&
        (s->app_state == APP_CON_MADE || s->app_state == APP_EOF) && s->app_protocol) {
        s->app_state = APP_CON_LOST;
        PyObject *lost = PyObject_GetAttr(s->app_protocol, s->loop->st->str_connection_lost);
        rc = lost ? call_soon(s, lost, exc) : -1;
        Py_XDECREF(lost);
        if (rc < 0)
            goto done;
    }
    if ((rc = set_state(s, ST_UNWRAPPED)) < 0)
        goto done;
    Py_CLEAR(s->transport);
    s->has_app_transport = 0;
    Py_CLEAR(s->app_protocol);
    set_app_protocol_refs(s);
    if ((rc = wakeup_waiter(s, exc == Py_None ? NULL : exc)) < 0)
        goto done;
    if ((rc = cancel_timer(s, &s->sd_timer)) < 0)
        goto done;
    rc = cancel_timer(s, &s->hs_timer);
done:
    Py_DECREF(s);
    if (rc < 0 || r == NULL)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *tls_get_buffer(tl_tls *s, PyObject *arg)
{
    Py_ssize_t want = PyNumber_AsSsize_t(arg, PyExc_OverflowError);
    if (want == -1 && PyErr_Occurred())
        return NULL;
    if (want <= 0 || want > TL_TLS_MAX_SIZE)
        want = TL_TLS_MAX_SIZE;
    if (s->py_buffer == NULL || PyByteArray_GET_SIZE(s->py_buffer) < want) {
        PyObject *b = PyByteArray_FromStringAndSize(NULL, want);
        if (b == NULL)
            return NULL;
        Py_XSETREF(s->py_buffer, b);
    }
    return PyMemoryView_FromObject(s->py_buffer);
}

static PyObject *tls_buffer_updated(tl_tls *s, PyObject *arg)
{
    Py_ssize_t n = PyNumber_AsSsize_t(arg, PyExc_OverflowError);
    if (n == -1 && PyErr_Occurred())
        return NULL;
    if (s->py_buffer == NULL || n < 0 || n > PyByteArray_GET_SIZE(s->py_buffer)) {
        PyErr_SetString(PyExc_ValueError, "buffer_updated(): no such bytes in the buffer");
        return NULL;
    }
    Py_INCREF(s);
    PyObject *keep = Py_NewRef(s->py_buffer);
    int rc = tls_sink_received((PyObject *)s, PyByteArray_AS_STRING(keep), n);
    Py_DECREF(keep);
    Py_DECREF(s);
    if (rc < 0)
        return NULL;
    Py_RETURN_NONE;
}

/* transports that do not read into buffers hand over bytes */
static PyObject *tls_data_received(tl_tls *s, PyObject *data)
{
    Py_buffer view;
    if (PyObject_GetBuffer(data, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    int rc = tls_sink_received((PyObject *)s, view.buf, view.len);
    PyBuffer_Release(&view);
    if (rc < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *tls_eof_received(tl_tls *s, PyObject *Py_UNUSED(ignored))
{
    s->eof_received = 1;
    Py_INCREF(s);
    int rc = 0;
    PyObject *result = Py_None;
    if (s->loop->debug)
        rc = log_self(s, s->T->str_debug, "%r received EOF", NULL, NULL);
    if (rc == 0) {
        switch (s->state) {
        case ST_DO_HANDSHAKE: {
            PyObject *exc = PyObject_CallNoArgs(PyExc_ConnectionResetError);
            rc = exc ? on_handshake_complete(s, exc) : -1;
            Py_XDECREF(exc);
            break;
        }
        case ST_WRAPPED:
            rc = set_state(s, ST_FLUSHING);
            if (rc == 0) {
                if (s->app_reading_paused)
                    result = Py_True;
                else
                    rc = do_flush(s);
            }
            break;
        case ST_FLUSHING:
            rc = do_write(s);
            if (rc == 0)
                rc = set_state(s, ST_SHUTDOWN);
            if (rc == 0)
                rc = do_shutdown(s);
            break;
        case ST_SHUTDOWN:
            rc = do_shutdown(s);
            break;
        default:
            break;
        }
    }
    if (rc < 0 && PyErr_ExceptionMatches(PyExc_Exception) && s->transport != NULL) {
        /* except Exception: self._transport.close(); raise */
        PyObject *exc = PyErr_GetRaisedException();
        if (transport_call(s, s->T->str_close, NULL) == 0)
            PyErr_SetRaisedException(exc);
        else
            Py_DECREF(exc);
    }
    Py_DECREF(s);
    if (rc < 0)
        return NULL;
    return Py_NewRef(result);
}

static PyObject *tls_pause_writing(tl_tls *s, PyObject *Py_UNUSED(ignored))
{
    if (s->ssl_writing_paused) {
        PyErr_SetNone(PyExc_AssertionError);
        return NULL;
    }
    s->ssl_writing_paused = 1;
    Py_RETURN_NONE;
}

static PyObject *tls_resume_writing(tl_tls *s, PyObject *Py_UNUSED(ignored))
{
    if (!s->ssl_writing_paused) {
        PyErr_SetNone(PyExc_AssertionError);
        return NULL;
    }
    s->ssl_writing_paused = 0;
    return held_step(s, process_outgoing);
}

/* ---- callbacks the loop runs (call_soon / call_later) ------------------------------------- */

static PyObject *tls_check_handshake_timeout(tl_tls *s, PyObject *Py_UNUSED(ignored))
{
    if (s->state != ST_DO_HANDSHAKE)
        Py_RETURN_NONE;
    PyObject *exc = PyUnicode_FromFormat("SSL handshake is taking longer than %S seconds: "
                                         "aborting the connection", s->hs_timeout);
    PyObject *err = exc ? PyObject_CallOneArg(PyExc_ConnectionAbortedError, exc) : NULL;
    Py_XDECREF(exc);
    if (err == NULL)
        return NULL;
    Py_INCREF(s);
    int rc = fatal_error(s, err, "Fatal error on transport");
    Py_DECREF(s);
    Py_DECREF(err);
    if (rc < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *tls_check_shutdown_timeout(tl_tls *s, PyObject *Py_UNUSED(ignored))
{
    if (s->state != ST_FLUSHING && s->state != ST_SHUTDOWN)
        Py_RETURN_NONE;
    PyObject *err = PyObject_CallFunction(PyExc_TimeoutError, "s", "SSL shutdown timed out");
    if (err == NULL)
        return NULL;
    int rc = transport_call(s, s->T->str_force_close, err);
    Py_DECREF(err);
    if (rc < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *tls_do_read_py(tl_tls *s, PyObject *Py_UNUSED(ignored))
{
    return held_step(s, do_read);
}

static int resume_step(tl_tls *s)
{
    if (s->state == ST_WRAPPED)
        return do_read(s);
    if (s->state == ST_FLUSHING)
        return do_flush(s);
    if (s->state == ST_SHUTDOWN)
        return do_shutdown(s);
    return 0;
}

/* resume_reading()'s deferred part */
static PyObject *tls_resume(tl_tls *s, PyObject *Py_UNUSED(ignored))
{
    return held_step(s, resume_step);
}

/* ---- the application's transport ------------------------------------------------------------ */

static PyObject *tls_get_extra_info(tl_tls *s, PyObject *const *args, Py_ssize_t nargs,
                                    PyObject *kwnames)
{
    PyObject *name, *dflt;
    if (tl_parse_extra_info_args(args, nargs, kwnames, &name, &dflt) < 0)
        return NULL;
    PyObject *v = PyDict_GetItemWithError(s->extra, name);
    if (v != NULL)
        return Py_NewRef(v);
    if (PyErr_Occurred())
        return NULL;
    if (s->transport != NULL) {
        PyObject *tr = Py_NewRef(s->transport);
        PyObject *cargs[3] = {tr, name, dflt};
        PyObject *r = PyObject_VectorcallMethod(s->T->str_get_extra_info, cargs, 3, NULL);
        Py_DECREF(tr);
        return r;
    }
    return Py_NewRef(dflt);
}

static PyObject *tls_set_protocol(tl_tls *s, PyObject *protocol)
{
    if (set_app_protocol(s, protocol) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *tls_get_protocol(tl_tls *s, PyObject *Py_UNUSED(ignored))
{
    return Py_NewRef(s->app_protocol ? s->app_protocol : Py_None);
}

static PyObject *tls_is_closing(tl_tls *s, PyObject *Py_UNUSED(ignored))
{
    return PyBool_FromLong(s->closed);
}

static PyObject *tls_close(tl_tls *s, PyObject *Py_UNUSED(ignored))
{
    if (s->closed)
        Py_RETURN_NONE;
    s->closed = 1;
    return held_step(s, start_shutdown);
}

static PyObject *tls_is_reading(tl_tls *s, PyObject *Py_UNUSED(ignored))
{
    return PyBool_FromLong(!s->app_reading_paused);
}

static PyObject *tls_pause_reading(tl_tls *s, PyObject *Py_UNUSED(ignored))
{
    tl_stream_home_here(s->loop->st, s->transport);
    s->app_reading_paused = 1;
    Py_RETURN_NONE;
}

static PyObject *tls_resume_reading(tl_tls *s, PyObject *Py_UNUSED(ignored))
{
    tl_stream_home_here(s->loop->st, s->transport);
    if (s->app_reading_paused) {
        s->app_reading_paused = 0;
        if (call_soon_self(s, s->T->str_resume) < 0)
            return NULL;
    }
    Py_RETURN_NONE;
}

static int parse_limits(PyObject *args, PyObject *kwds, const char *fmt, PyObject **high,
                        PyObject **low)
{
    static char *kwlist[] = {"high", "low", NULL};
    *high = *low = Py_None;
    return PyArg_ParseTupleAndKeywords(args, kwds, fmt, kwlist, high, low) ? 0 : -1;
}

static PyObject *tls_set_write_buffer_limits(tl_tls *s, PyObject *args, PyObject *kwds)
{
    PyObject *high, *low;
    if (parse_limits(args, kwds, "|OO:set_write_buffer_limits", &high, &low) < 0 ||
        tl_flow_limits(high, low, s->T->write_high_kb, &s->out_high, &s->out_low) < 0 ||
        control_app_writing(s) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *tls_set_read_buffer_limits(tl_tls *s, PyObject *args, PyObject *kwds)
{
    PyObject *high, *low;
    if (parse_limits(args, kwds, "|OO:set_read_buffer_limits", &high, &low) < 0 ||
        tl_flow_limits(high, low, s->T->read_high_kb, &s->in_high, &s->in_low) < 0 ||
        control_ssl_reading(s) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *tls_get_write_buffer_limits(tl_tls *s, PyObject *Py_UNUSED(ignored))
{
    return Py_BuildValue("nn", s->out_low, s->out_high);
}

static PyObject *tls_get_read_buffer_limits(tl_tls *s, PyObject *Py_UNUSED(ignored))
{
    return Py_BuildValue("nn", s->in_low, s->in_high);
}

static PyObject *tls_get_write_buffer_size(tl_tls *s, PyObject *Py_UNUSED(ignored))
{
    Py_ssize_t n = get_write_buffer_size(s);
    return n < 0 ? NULL : PyLong_FromSsize_t(n);
}

static PyObject *tls_get_read_buffer_size(tl_tls *s, PyObject *Py_UNUSED(ignored))
{
    Py_ssize_t n = bio_pending(s, s->incoming);
    return n < 0 ? NULL : PyLong_FromSsize_t(n);
}

static PyObject *tls_write(tl_tls *s, PyObject *data)
{
    if (!PyBytes_Check(data) && !PyByteArray_Check(data) && !PyMemoryView_Check(data)) {
        PyErr_Format(PyExc_TypeError, "data: expecting a bytes-like instance, got %s",
                     tl_type_name(Py_TYPE(data)));
        return NULL;
    }
    int empty = PyObject_Not(data);
    if (empty)
        return empty < 0 ? NULL : Py_NewRef(Py_None);
    Py_INCREF(s);
    int rc = write_appdata(s, data, NULL);
    Py_DECREF(s);
    if (rc < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *tls_writelines(tl_tls *s, PyObject *items)
{
    Py_INCREF(s);
    int rc = write_appdata(s, NULL, items);
    Py_DECREF(s);
    if (rc < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *tls_write_eof(tl_tls *s, PyObject *Py_UNUSED(ignored))
{
    TL_UNUSED(s);
    PyErr_SetNone(PyExc_NotImplementedError);
    return NULL;
}

static PyObject *tls_can_write_eof(tl_tls *s, PyObject *Py_UNUSED(ignored))
{
    TL_UNUSED(s);
    Py_RETURN_FALSE;
}

static PyObject *tls_force_close(tl_tls *s, PyObject *exc)
{
    s->closed = 1;
    Py_INCREF(s);
    int rc = tls_abort(s, exc == Py_None ? NULL : exc);
    Py_DECREF(s);
    if (rc < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *tls_abort_py(tl_tls *s, PyObject *Py_UNUSED(ignored))
{
    return tls_force_close(s, Py_None);
}

static PyObject *tls_test_append_write_backlog(tl_tls *s, PyObject *data)
{
    if (backlog_append(s, data) < 0)
        return NULL;
    Py_RETURN_NONE;
}

/* ---- attributes asyncio's code and tests read ------------------------------------------------ */

static PyObject *get_self(tl_tls *s, void *c)
{
    TL_UNUSED(c);
    return Py_NewRef((PyObject *)s);
}

static PyObject *get_app_transport(tl_tls *s, void *c)
{
    TL_UNUSED(c);
    return Py_NewRef(s->has_app_transport ? (PyObject *)s : Py_None);
}

static PyObject *get_loop(tl_tls *s, void *c)
{
    TL_UNUSED(c);
    return Py_NewRef((PyObject *)s->loop);
}

static PyObject *get_protocol_paused(tl_tls *s, void *c)
{
    TL_UNUSED(c);
    return PyBool_FromLong(s->app_writing_paused);
}

static PyObject *get_state(tl_tls *s, void *c)
{
    TL_UNUSED(c);
    return PyUnicode_FromString(state_names[s->state]);
}

static PyObject *get_object_or_none(tl_tls *s, void *offset)
{
    PyObject *v = *(PyObject **)((char *)s + (Py_ssize_t)offset);
    return Py_NewRef(v ? v : Py_None);
}

#define OBJECT_OR_NONE(name, field) \
    {name, (getter)get_object_or_none, NULL, NULL, (void *)offsetof(tl_tls, field)}

static PyGetSetDef tls_getset[] = {
    {"_ssl_protocol", (getter)get_self, NULL, "the SSLProtocol side: this object", NULL},
    {"_app_transport", (getter)get_app_transport, NULL, NULL, NULL},
    {"_loop", (getter)get_loop, NULL, NULL, NULL},
    {"_protocol_paused", (getter)get_protocol_paused, NULL, NULL, NULL},
    {"_state", (getter)get_state, NULL, "the SSLProtocolState's name", NULL},
    OBJECT_OR_NONE("_app_protocol", app_protocol),
    OBJECT_OR_NONE("_transport", transport),
    OBJECT_OR_NONE("_sslobj", sslobj),
    OBJECT_OR_NONE("_sslcontext", sslcontext),
    OBJECT_OR_NONE("_incoming", incoming),
    OBJECT_OR_NONE("_outgoing", outgoing),
    OBJECT_OR_NONE("_waiter", waiter),
    OBJECT_OR_NONE("_ssl_handshake_timeout", hs_timeout),
    OBJECT_OR_NONE("_ssl_shutdown_timeout", sd_timeout),
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMemberDef tls_members[] = {
    {"_extra", Py_T_OBJECT_EX, offsetof(tl_tls, extra), Py_READONLY, NULL},
    {"_closed", Py_T_BOOL, offsetof(tl_tls, closed), Py_READONLY, NULL},
    {"_conn_lost", Py_T_INT, offsetof(tl_tls, conn_lost), Py_READONLY, NULL},
    {"_server_side", Py_T_BOOL, offsetof(tl_tls, server_side), Py_READONLY, NULL},
    {"_app_reading_paused", Py_T_BOOL, offsetof(tl_tls, app_reading_paused), Py_READONLY, NULL},
    {"_ssl_writing_paused", Py_T_BOOL, offsetof(tl_tls, ssl_writing_paused), Py_READONLY, NULL},
    {"_ssl_reading_paused", Py_T_BOOL, offsetof(tl_tls, ssl_reading_paused), Py_READONLY, NULL},
    {"_write_buffer_size", Py_T_PYSSIZET, offsetof(tl_tls, backlog_size), Py_READONLY, NULL},
    {"_incoming_high_water", Py_T_PYSSIZET, offsetof(tl_tls, in_high), Py_READONLY, NULL},
    {"_incoming_low_water", Py_T_PYSSIZET, offsetof(tl_tls, in_low), Py_READONLY, NULL},
    {"_outgoing_high_water", Py_T_PYSSIZET, offsetof(tl_tls, out_high), Py_READONLY, NULL},
    {"_outgoing_low_water", Py_T_PYSSIZET, offsetof(tl_tls, out_low), Py_READONLY, NULL},
    {"__dictoffset__", Py_T_PYSSIZET, offsetof(tl_tls, dict), Py_READONLY, NULL},
    {"__weaklistoffset__", Py_T_PYSSIZET, offsetof(tl_tls, weakreflist), Py_READONLY, NULL},
    {NULL, 0, 0, 0, NULL},
};

/* With worker threads the methods below run beside the loop thread, which
 * feeds ciphertext in (tls_sink_received) with the loop lock held: each
 * holds the loop lock too, as the stream transports' methods do
 * (tl_loop.h). The callbacks scheduled with call_soon / call_later
 * (_do_read, _resume, the timeouts) run on a worker as well. The lock is
 * taken again by nothing but the same thread (tl_loop_ev_lock), so a
 * method that calls another (or the transport below) is fine. Getters of
 * a single field need no lock. */
#define TLS_LOCKED_NOARGS(fn) TL_LOCKED_NOARGS(fn##_locked, fn, tl_tls, self->loop)
#define TLS_LOCKED_O(fn) TL_LOCKED_O(fn##_locked, fn, tl_tls, self->loop)
#define TLS_LOCKED_KW(fn) TL_LOCKED_VARARGS_KW(fn##_locked, fn, tl_tls, self->loop)
TLS_LOCKED_O(tls_set_protocol)
TLS_LOCKED_NOARGS(tls_close)
TLS_LOCKED_NOARGS(tls_pause_reading)
TLS_LOCKED_NOARGS(tls_resume_reading)
TLS_LOCKED_KW(tls_set_write_buffer_limits)
TLS_LOCKED_NOARGS(tls_get_write_buffer_size)
TLS_LOCKED_KW(tls_set_read_buffer_limits)
TLS_LOCKED_NOARGS(tls_get_read_buffer_size)
TLS_LOCKED_O(tls_write)
TLS_LOCKED_O(tls_writelines)
TLS_LOCKED_NOARGS(tls_abort_py)
TLS_LOCKED_O(tls_force_close)
TLS_LOCKED_O(tls_test_append_write_backlog)
TLS_LOCKED_O(tls_connection_made)
TLS_LOCKED_O(tls_connection_lost)
TLS_LOCKED_O(tls_get_buffer)
TLS_LOCKED_O(tls_buffer_updated)
TLS_LOCKED_O(tls_data_received)
TLS_LOCKED_NOARGS(tls_eof_received)
TLS_LOCKED_NOARGS(tls_pause_writing)
TLS_LOCKED_NOARGS(tls_resume_writing)
TLS_LOCKED_NOARGS(tls_check_handshake_timeout)
TLS_LOCKED_NOARGS(tls_check_shutdown_timeout)
TLS_LOCKED_NOARGS(tls_do_read_py)
TLS_LOCKED_NOARGS(tls_resume)

#define M_NOARGS(name, fn) {name, (PyCFunction)(fn##_locked), METH_NOARGS, NULL}
#define M_O(name, fn) {name, (PyCFunction)(fn##_locked), METH_O, NULL}
#define M_KW(name, fn) {name, (PyCFunction)(void (*)(void))(fn##_locked), METH_VARARGS | METH_KEYWORDS, NULL}
#define M_NOARGS_UNLOCKED(name, fn) {name, (PyCFunction)(fn), METH_NOARGS, NULL}

static PyMethodDef tls_methods[] = {
    /* the transport the application sees */
    {"get_extra_info", (PyCFunction)(void (*)(void))tls_get_extra_info,
     METH_FASTCALL | METH_KEYWORDS, NULL},
    M_O("set_protocol", tls_set_protocol),
    M_NOARGS_UNLOCKED("get_protocol", tls_get_protocol),
    M_NOARGS_UNLOCKED("is_closing", tls_is_closing),
    M_NOARGS("close", tls_close),
    M_NOARGS_UNLOCKED("is_reading", tls_is_reading),
    M_NOARGS("pause_reading", tls_pause_reading),
    M_NOARGS("resume_reading", tls_resume_reading),
    M_KW("set_write_buffer_limits", tls_set_write_buffer_limits),
    M_NOARGS_UNLOCKED("get_write_buffer_limits", tls_get_write_buffer_limits),
    M_NOARGS("get_write_buffer_size", tls_get_write_buffer_size),
    M_KW("set_read_buffer_limits", tls_set_read_buffer_limits),
    M_NOARGS_UNLOCKED("get_read_buffer_limits", tls_get_read_buffer_limits),
    M_NOARGS("get_read_buffer_size", tls_get_read_buffer_size),
    M_O("write", tls_write),
    M_O("writelines", tls_writelines),
    M_NOARGS_UNLOCKED("write_eof", tls_write_eof),
    M_NOARGS_UNLOCKED("can_write_eof", tls_can_write_eof),
    M_NOARGS("abort", tls_abort_py),
    M_O("_force_close", tls_force_close),
    M_O("_test__append_write_backlog", tls_test_append_write_backlog),
    /* the protocol the transport below sees */
    M_O("connection_made", tls_connection_made),
    M_O("connection_lost", tls_connection_lost),
    M_O("get_buffer", tls_get_buffer),
    M_O("buffer_updated", tls_buffer_updated),
    M_O("data_received", tls_data_received),
    M_NOARGS("eof_received", tls_eof_received),
    M_NOARGS("pause_writing", tls_pause_writing),
    M_NOARGS("resume_writing", tls_resume_writing),
    /* what the loop calls back */
    M_NOARGS("_check_handshake_timeout", tls_check_handshake_timeout),
    M_NOARGS("_check_shutdown_timeout", tls_check_shutdown_timeout),
    M_NOARGS("_do_read", tls_do_read_py),
    M_NOARGS("_resume", tls_resume),
    {NULL, NULL, 0, NULL},
};

/* ---- life cycle ------------------------------------------------------------------------------- */

#define TLS_OBJECTS(X)                                                                    \
    X(extra) X(dict) X(app_protocol) X(app_get_buffer) X(app_buffer_updated) X(sslcontext) \
    X(server_hostname) X(sslobj) X(engine) X(incoming) X(outgoing) X(transport) X(waiter)  \
    X(hs_timer) X(sd_timer) X(hs_timeout) X(sd_timeout) X(backlog) X(py_buffer)

static int tls_traverse(tl_tls *s, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(s));
    Py_VISIT((PyObject *)s->loop);
    Py_VISIT((PyObject *)s->raw);
#define X(f) Py_VISIT(s->f);
    TLS_OBJECTS(X)
#undef X
    return 0;
}

static int tls_clear(tl_tls *s)
{
#define X(f) Py_CLEAR(s->f);
    TLS_OBJECTS(X)
#undef X
    s->backlog_head = 0;
    return 0;
}

/* _SSLProtocolTransport.__del__ */
static void tls_finalize(tl_tls *s)
{
    if (s->closed || s->loop == NULL)
        return;
    s->closed = 1;
    PyObject *exc = PyErr_GetRaisedException();
    if (PyErr_ResourceWarning((PyObject *)s, 1, "unclosed transport %R", (PyObject *)s) < 0)
        PyErr_WriteUnraisable((PyObject *)s);
    PyErr_SetRaisedException(exc);
}

static void tls_dealloc(tl_tls *s)
{
    PyTypeObject *tp = Py_TYPE(s);
    if (PyObject_CallFinalizerFromDealloc((PyObject *)s) < 0)
        return;
    PyObject_GC_UnTrack(s);
    TL_CLEAR_WEAKREFS(s, s->weakreflist);
    tls_clear(s);
    Py_CLEAR(s->raw);
    Py_CLEAR(s->loop);
    tp->tp_free(s);
    Py_DECREF(tp);
}

static PyObject *make_bio(tl_tls_state *T)
{
    return PyObject_CallNoArgs(T->memory_bio);
}

/* A timeout argument: None -> the default, else > 0 (asyncio's checks). */
static PyObject *check_timeout(PyObject *value, PyObject *dflt, const char *name)
{
    if (value == NULL || value == Py_None)
        return Py_NewRef(dflt);
    PyObject *zero = PyLong_FromLong(0);
    int bad = zero ? PyObject_RichCompareBool(value, zero, Py_LE) : -1;
    Py_XDECREF(zero);
    if (bad < 0)
        return NULL;
    if (bad) {
        PyErr_Format(PyExc_ValueError, "%s should be a positive number, got %S", name, value);
        return NULL;
    }
    return Py_NewRef(value);
}

PyObject *tl_tls_new(tl_loop *loop, PyObject *app_protocol, PyObject *sslcontext,
                     PyObject *waiter, int server_side, PyObject *server_hostname,
                     int call_connection_made, PyObject *handshake_timeout,
                     PyObject *shutdown_timeout, int accepting)
{
    tl_state *st = loop->st;
    tl_tls_state *T = st->tls;
    if (T == NULL || !T->available) {
        PyErr_SetString(PyExc_RuntimeError, "stdlib ssl module not available");
        return NULL;
    }
    PyObject *hs = check_timeout(handshake_timeout, T->handshake_timeout, "ssl_handshake_timeout");
    if (hs == NULL)
        return NULL;
    PyObject *sd = check_timeout(shutdown_timeout, T->shutdown_timeout, "ssl_shutdown_timeout");
    if (sd == NULL) {
        Py_DECREF(hs);
        return NULL;
    }
    tl_tls *s = (tl_tls *)st->tls_type->tp_alloc(st->tls_type, 0);
    if (s == NULL) {
        Py_DECREF(hs);
        Py_DECREF(sd);
        return NULL;
    }
    s->loop = (tl_loop *)Py_NewRef((PyObject *)loop);
    s->T = T;
    s->hs_timeout = hs;
    s->sd_timeout = sd;
    s->closed = 1;      /* quiet until it is a transport someone holds */
    s->has_app_transport = 1;
    s->server_side = (uint8_t)(server_side != 0);
    s->app_state = call_connection_made ? APP_INIT : APP_CON_MADE;
    s->state = ST_UNWRAPPED;

    PyObject *ctx = NULL;
    int empty = (sslcontext == NULL || sslcontext == Py_None) ? 1 : PyObject_Not(sslcontext);
    if (empty < 0)
        goto fail;
    if (empty) {
        ctx = PyObject_CallFunction(T->create_transport_context, "OO",
                                    server_side ? Py_True : Py_False,
                                    server_hostname ? server_hostname : Py_None);
        if (ctx == NULL)
            goto fail;
    } else {
        ctx = Py_NewRef(sslcontext);
    }
    s->sslcontext = ctx;
    if (server_hostname != NULL && server_hostname != Py_None && !server_side) {
        int truth = PyObject_IsTrue(server_hostname);
        if (truth < 0)
            goto fail;
        if (truth)
            s->server_hostname = Py_NewRef(server_hostname);
    }
    s->extra = PyDict_New();
    if (s->extra == NULL || PyDict_SetItem(s->extra, T->str_sslcontext, ctx) < 0)
        goto fail;
    if (waiter != NULL && waiter != Py_None)
        s->waiter = Py_NewRef(waiter);
    if (set_app_protocol(s, app_protocol) < 0)
        goto fail;
    s->raw = PyObject_New(tl_rawbuf, T->rawbuf_type);
    if (s->raw == NULL)
        goto fail;
    s->raw->ptr = NULL;
    s->raw->len = 0;
    s->incoming = make_bio(T);
    s->outgoing = s->incoming ? make_bio(T) : NULL;
    if (s->outgoing == NULL)
        goto fail;
    {
        PyObject *args[3] = {ctx, s->incoming, s->outgoing};
        PyObject *kwv[2] = {s->server_side ? Py_True : Py_False,
                            s->server_hostname ? s->server_hostname : Py_None};
        PyObject *kwnames = PyTuple_Pack(2, T->str_server_side, T->str_server_hostname);
        if (kwnames == NULL)
            goto fail;
        PyObject *all[5] = {args[0], args[1], args[2], kwv[0], kwv[1]};
        s->sslobj = PyObject_VectorcallMethod(T->str_wrap_bio, all, 3, kwnames);
        Py_DECREF(kwnames);
        if (s->sslobj == NULL)
            goto fail;
    }
    /* the fast path: a plain ssl.SSLObject wrapping the _ssl object */
    if ((PyObject *)Py_TYPE(s->sslobj) == T->sslobject_cls) {
        PyObject *eng = PyObject_GetAttr(s->sslobj, T->str_sslobj);
        if (eng == NULL)
            goto fail;
        if ((PyObject *)Py_TYPE(eng) == T->sslsocket_type)
            s->engine = eng;
        else
            Py_DECREF(eng);
    }
    if (tl_flow_limits(NULL, NULL, T->read_high_kb, &s->in_high, &s->in_low) < 0 ||
        tl_flow_limits(NULL, NULL, T->write_high_kb, &s->out_high, &s->out_low) < 0)
        goto fail;
    s->closed = 0;
    s->accepting = (uint8_t)(accepting && s->waiter == NULL);
    return (PyObject *)s;
fail:
    Py_DECREF(s);
    return NULL;
}

/* SSLTransport(loop, app_protocol, sslcontext, waiter, server_side=False,
 *              server_hostname=None, call_connection_made=True,
 *              ssl_handshake_timeout=None, ssl_shutdown_timeout=None) */
static PyObject *tls_new(PyTypeObject *tp, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"loop", "app_protocol", "sslcontext", "waiter", "server_side",
                             "server_hostname", "call_connection_made", "ssl_handshake_timeout",
                             "ssl_shutdown_timeout", NULL};
    PyObject *loop, *proto, *ctx, *waiter, *hostname = Py_None, *hs = Py_None, *sd = Py_None;
    int server_side = 0, call_cm = 1;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOOO|pOp$OO:SSLTransport", kwlist, &loop,
                                     &proto, &ctx, &waiter, &server_side, &hostname, &call_cm,
                                     &hs, &sd))
        return NULL;
    tl_state *st = tl_state_of_type(tp);
    if (st == NULL)
        return NULL;
    if (!PyObject_TypeCheck(loop, st->loop_type)) {
        PyErr_Format(PyExc_TypeError, "SSLTransport needs a tonio_loop loop, not %R", loop);
        return NULL;
    }
    return tl_tls_new((tl_loop *)loop, proto, ctx, waiter, server_side, hostname, call_cm, hs,
                      sd, 0);
}

/* tp_new did the work: the inherited _FlowControlMixin.__init__ would
 * reject our arguments */
static int tls_init(PyObject *self, PyObject *args, PyObject *kwds)
{
    TL_UNUSED(self);
    TL_UNUSED(args);
    TL_UNUSED(kwds);
    return 0;
}

static PyType_Slot tls_slots[] = {
    {Py_tp_new, tls_new},
    {Py_tp_init, tls_init},
    {Py_tp_dealloc, tls_dealloc},
    {Py_tp_finalize, tls_finalize},
    {Py_tp_traverse, tls_traverse},
    {Py_tp_clear, tls_clear},
    {Py_tp_methods, tls_methods},
    {Py_tp_getset, tls_getset},
    {Py_tp_members, tls_members},
    {Py_tp_doc, "A TLS transport over another transport (asyncio's SSLProtocol and "
                "_SSLProtocolTransport in one object)."},
    {0, NULL},
};

static PyType_Spec tls_spec = {"tonio_loop._core.SSLTransport", sizeof(tl_tls), 0,
                               Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC, tls_slots};

static int rawbuf_getbuffer(tl_rawbuf *b, Py_buffer *view, int flags)
{
    return PyBuffer_FillInfo(view, (PyObject *)b, b->ptr, b->len, 0, flags);
}

static void rawbuf_dealloc(tl_rawbuf *b)
{
    PyTypeObject *tp = Py_TYPE(b);
    PyObject_Free(b);
    Py_DECREF(tp);
}

static PyType_Slot rawbuf_slots[] = {
    {Py_bf_getbuffer, rawbuf_getbuffer},
    {Py_tp_dealloc, rawbuf_dealloc},
    {0, NULL},
};

static PyType_Spec rawbuf_spec = {"tonio_loop._core._RawBuffer", sizeof(tl_rawbuf), 0,
                                  Py_TPFLAGS_DEFAULT | Py_TPFLAGS_DISALLOW_INSTANTIATION,
                                  rawbuf_slots};

/* ---- the loop's method ---------------------------------------------------------------------- */

/* loop._make_ssl_transport(rawsock, protocol, sslcontext, waiter=None, *,
 *     server_side=False, server_hostname=None, extra=None, server=None,
 *     ssl_handshake_timeout=..., ssl_shutdown_timeout=..., context=None) */
static PyObject *loop_make_ssl_transport(tl_loop *loop, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"rawsock", "protocol", "sslcontext", "waiter", "server_side",
                             "server_hostname", "extra", "server", "ssl_handshake_timeout",
                             "ssl_shutdown_timeout", "context", NULL};
    PyObject *sock, *proto, *ctx, *waiter = Py_None, *hostname = Py_None, *extra = Py_None,
                                  *server = Py_None, *hs = NULL, *sd = NULL;
    PyObject *context = Py_None;
    int server_side = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOO|O$pOOOOOO:_make_ssl_transport", kwlist,
                                     &sock, &proto, &ctx, &waiter, &server_side, &hostname,
                                     &extra, &server, &hs, &sd, &context))
        return NULL;
    int fd = tl_stream_check_context(context) < 0 ? -1 : tl_io_fileobj_to_fd(sock);
    if (fd < 0 || tl_io_ensure_no_transport(loop, sock, fd) < 0)
        return NULL;
    PyObject *tls = tl_tls_new(loop, proto, ctx, waiter, server_side, hostname, 1, hs, sd, 0);
    if (tls == NULL)
        return NULL;
    PyObject *t = tl_socket_transport_new(loop, fd, sock, tls, NULL, extra, server, NULL, 0);
    if (t == NULL) {
        Py_DECREF(tls);
        return NULL;
    }
    tl_stream_use_context(t, context);
    Py_DECREF(t);
    return tls;
}

TL_LOCKED_VARARGS_KW(loop_make_ssl_transport_locked, loop_make_ssl_transport, tl_loop, self)

PyMethodDef tl_tls_loop_methods[] = {
    {"_make_ssl_transport", (PyCFunction)(void (*)(void))loop_make_ssl_transport_locked,
     METH_VARARGS | METH_KEYWORDS,
     "_make_ssl_transport(rawsock, protocol, sslcontext, waiter=None, *, server_side=False,\n"
     "                    server_hostname=None, extra=None, server=None,\n"
     "                    ssl_handshake_timeout=60.0, ssl_shutdown_timeout=30.0)\n--\n\n"
     "A TLS transport over a new socket transport on rawsock."},
    {NULL, NULL, 0, NULL},
};

/* ---- module state ---------------------------------------------------------------------------- */

static int import_ssl(tl_tls_state *T)
{
    PyObject *ssl = PyImport_ImportModule("ssl");
    if (ssl == NULL) {
        if (PyErr_ExceptionMatches(PyExc_ImportError)) {
            PyErr_Clear();
            return 0;
        }
        return -1;
    }
    struct { PyObject **slot; const char *name; } names[] = {
        {&T->ssl_error, "SSLError"},
        {&T->want_read_error, "SSLWantReadError"},
        {&T->syscall_error, "SSLSyscallError"},
        {&T->certificate_error, "CertificateError"},
        {&T->memory_bio, "MemoryBIO"},
        {&T->sslobject_cls, "SSLObject"},
    };
    int rc = 0;
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]) && rc == 0; i++) {
        *names[i].slot = PyObject_GetAttrString(ssl, names[i].name);
        if (*names[i].slot == NULL)
            rc = -1;
    }
    Py_DECREF(ssl);
    if (rc < 0)
        return -1;
    T->bio_write = PyObject_GetAttrString(T->memory_bio, "write");
    T->bio_read = T->bio_write ? PyObject_GetAttrString(T->memory_bio, "read") : NULL;
    T->bio_pending = T->bio_read ? PyObject_GetAttrString(T->memory_bio, "pending") : NULL;
    T->sslsocket_type = T->bio_pending ? tl_import_attr("_ssl", "_SSLSocket") : NULL;
    if (T->sslsocket_type == NULL)
        return -1;
    if (Py_TYPE(T->bio_pending)->tp_descr_get == NULL) {
        PyErr_SetString(PyExc_ImportError, "ssl.MemoryBIO.pending is not a descriptor");
        return -1;
    }
    for (int op = 0; op < OP_COUNT; op++) {
        T->ops[op] = PyObject_GetAttrString(T->sslsocket_type, op_sslsocket_names[op]);
        T->op_names[op] = PyUnicode_InternFromString(op_sslobject_names[op]);
        if (T->ops[op] == NULL || T->op_names[op] == NULL)
            return -1;
    }
    T->available = 1;
    return 0;
}

static long constant(const char *name)
{
    PyObject *v = tl_import_attr("asyncio.constants", name);
    long n = v ? PyLong_AsLong(v) : -1;
    Py_XDECREF(v);
    return n;
}

int tl_tls_init_module(PyObject *module, tl_state *st)
{
    tl_tls_state *T = PyMem_Calloc(1, sizeof(*T));
    if (T == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    st->tls = T;
    PyObject *base = tl_import_attr("asyncio.transports", "_FlowControlMixin");
    if (base == NULL)
        return -1;
    st->tls_type = (PyTypeObject *)PyType_FromModuleAndSpec(module, &tls_spec, base);
    Py_DECREF(base);
    if (st->tls_type == NULL || PyModule_AddType(module, st->tls_type) < 0)
        return -1;
    st->tls_sink = &tls_sink;
    T->rawbuf_type = (PyTypeObject *)PyType_FromModuleAndSpec(module, &rawbuf_spec, NULL);
    if (T->rawbuf_type == NULL)
        return -1;
    /* asyncio's transports are documented with these */
    if (PyObject_SetAttrString((PyObject *)st->tls_type, "_start_tls_compatible", Py_True) < 0)
        return -1;
    PyObject *mode = tl_import_attr("asyncio.constants", "_SendfileMode");
    PyObject *fallback = mode ? PyObject_GetAttrString(mode, "FALLBACK") : NULL;
    Py_XDECREF(mode);
    if (fallback == NULL)
        return -1;
    int rc = PyObject_SetAttrString((PyObject *)st->tls_type, "_sendfile_compatible", fallback);
    Py_DECREF(fallback);
    if (rc < 0)
        return -1;

    if (import_ssl(T) < 0)
        return -1;
    T->create_transport_context = tl_import_attr("asyncio.sslproto", "_create_transport_context");
    T->handshake_timeout = tl_import_attr("asyncio.constants", "SSL_HANDSHAKE_TIMEOUT");
    T->shutdown_timeout = tl_import_attr("asyncio.constants", "SSL_SHUTDOWN_TIMEOUT");
    if (T->create_transport_context == NULL || T->handshake_timeout == NULL ||
        T->shutdown_timeout == NULL)
        return -1;
    T->connlost_threshold = constant("LOG_THRESHOLD_FOR_CONNLOST_WRITES");
    T->read_high_kb = constant("FLOW_CONTROL_HIGH_WATER_SSL_READ");
    T->write_high_kb = constant("FLOW_CONTROL_HIGH_WATER_SSL_WRITE");
    if (PyErr_Occurred())
        return -1;

    struct { PyObject **slot; const char *s; } strings[] = {
        {&T->str_write, "write"},
        {&T->str_close, "close"},
        {&T->str_force_close, "_force_close"},
        {&T->str_pause_reading, "pause_reading"},
        {&T->str_resume_reading, "resume_reading"},
        {&T->str_get_extra_info, "get_extra_info"},
        {&T->str_call_soon, "call_soon"},
        {&T->str_call_later, "call_later"},
        {&T->str_cancel, "cancel"},
        {&T->str_wrap_bio, "wrap_bio"},
        {&T->str_sslobj, "_sslobj"},
        {&T->str_server_side, "server_side"},
        {&T->str_server_hostname, "server_hostname"},
        {&T->str_get_buffer, "get_buffer"},
        {&T->str_buffer_updated, "buffer_updated"},
        {&T->str_check_hs, "_check_handshake_timeout"},
        {&T->str_check_sd, "_check_shutdown_timeout"},
        {&T->str_do_read, "_do_read"},
        {&T->str_resume, "_resume"},
        {&T->str_sslcontext, "sslcontext"},
        {&T->str_peercert, "peercert"},
        {&T->str_cipher, "cipher"},
        {&T->str_compression, "compression"},
        {&T->str_ssl_object, "ssl_object"},
        {&T->str_debug, "debug"},
        {&T->str_warning, "warning"},
        {&T->str_join, "join"},
    };
    for (size_t i = 0; i < sizeof(strings) / sizeof(strings[0]); i++) {
        *strings[i].slot = PyUnicode_InternFromString(strings[i].s);
        if (*strings[i].slot == NULL)
            return -1;
    }
    return 0;
}

int tl_tls_traverse_state(tl_state *st, visitproc visit, void *arg)
{
    tl_tls_state *T = st->tls;
    if (T == NULL)
        return 0;
#define X(f) Py_VISIT(T->f);
    TLS_STATE_OBJECTS(X)
#undef X
    for (int op = 0; op < OP_COUNT; op++) {
        Py_VISIT(T->ops[op]);
        Py_VISIT(T->op_names[op]);
    }
    Py_VISIT((PyObject *)T->rawbuf_type);
    return 0;
}

void tl_tls_clear_state(tl_state *st)
{
    tl_tls_state *T = st->tls;
    if (T == NULL)
        return;
#define X(f) Py_CLEAR(T->f);
    TLS_STATE_OBJECTS(X)
#undef X
    for (int op = 0; op < OP_COUNT; op++) {
        Py_CLEAR(T->ops[op]);
        Py_CLEAR(T->op_names[op]);
    }
    Py_CLEAR(T->rawbuf_type);
    PyMem_Free(T);
    st->tls = NULL;
}

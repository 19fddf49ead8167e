/* tl_stream.h - the fd transport core under every transport kind: a
 * connected socket (TCP or Unix: socket.c), one end of a pipe (pipes, FIFOs,
 * ttys, ptys, socketpairs: pipe.c), a datagram socket (datagram.c).
 *
 * A pipe is a one-directional stream and a datagram socket a stream of
 * messages, so the kinds share one struct and one implementation of
 * reading, the write buffer, flow control and the close/abort/
 * connection_lost life cycle (stream.c). A kind brings a const ops table
 * (tl_stream_ops): its readiness handlers where it reads or writes for
 * itself, its own state's life cycle, its error wording, and which of
 * asyncio's transport classes it mirrors where those differ (the rules);
 * its file also holds its Python type (tl_stream_add_type) and
 * constructor. How to add one: docs/design.md, "Adding a transport".
 *
 * How it works:
 * - the transport owns two ev_io watchers on its fd; protocol callbacks run
 *   from them inside the contextvars context captured when the transport
 *   was made (docs/design.md, "Protocol callbacks and contextvars");
 * - write() sends at once and buffers only what the kernel refused; the
 *   buffer is a ring of bytes objects flushed with one writev/sendmsg; the
 *   writer watcher runs only while the buffer is not empty;
 * - reads go into the loop's one read buffer and are sliced to bytes, or
 *   straight into a BufferedProtocol's buffer;
 * - the reader watcher is stopped while reading is paused (libev is
 *   level-triggered).
 * While a watcher is active the transport holds a reference to itself (as
 * asyncio's selector holds its handles) and sits on the loop's link ring,
 * so loop.close() can let go of it.
 *
 * On a threaded loop (threads=N) any worker may call a transport's methods:
 * write() of bytes sends under the transport's own lock (wlock) while
 * nothing is buffered (wfast), everything else under the loop lock; what
 * the loop thread reads waits in the transport's inbox, and its protocol
 * callbacks run on the transport's strand on a worker, never beside a step
 * of its home task (README, "Worker threads"). That side is
 * stream_threads.c, reached through t->mt (tl_stream_threads.h).
 */
#ifndef TL_STREAM_H
#define TL_STREAM_H

#include "tl_common.h"
#include "tl_loop.h"
#include "tl_dispatch.h"
#include <sys/socket.h>

struct tl_stream;

/* Where asyncio's transport classes differ, the stream follows the rules
 * of the class a kind mirrors (its ops say which). */
enum {
    /* _SelectorTransport (sockets, datagrams): its repr and extra info, an
     * OSError is a quiet fatal error, close() once the connection is lost */
    TL_RULES_SELECTOR = 1 << 0,
    /* _SelectorSocketTransport: write() refuses after write_eof() and
     * during sendfile, write_eof() shuts the write side once the buffer is
     * sent, a failed send leaves conn_lost alone, a failing data_received()
     * is a fatal error; lock-free write() on threaded loops */
    TL_RULES_SELECTOR_SOCKET = 1 << 1,
    /* _UnixReadPipeTransport: the EOF closes the transport, only EIO is a
     * quiet fatal error */
    TL_RULES_UNIX_READ_PIPE = 1 << 2,
    /* _UnixWritePipeTransport: close() is write_eof(), writes after it are
     * dropped, a failed write counts as a lost connection, the read side
     * only tells that the reader went away */
    TL_RULES_UNIX_WRITE_PIPE = 1 << 3,
};

/* What a transport kind brings to the stream core (each kind's file has
 * its table; stream.c calls nothing else of theirs). */
typedef struct tl_stream_ops {
    const char *read_error;     /* asyncio's _fatal_error wording */
    const char *write_error;
    unsigned rules;             /* TL_RULES_* */
    /* readiness, where the kind reads or writes for itself (datagrams,
     * the write pipe's peer-close check); NULL: the stream's own, which
     * moves bytes to data_received() and from the write ring */
    int (*read_ready)(struct tl_stream *t);
    int (*write_ready)(struct tl_stream *t);
    uint8_t read_calls_protocol; /* read_ready does: threaded loops run it
                                    on the transport's strand */
    /* the kind's own state (kind_state), any of them NULL */
    int (*traverse)(struct tl_stream *t, visitproc visit, void *arg);
    void (*clear)(struct tl_stream *t);
    void (*free)(struct tl_stream *t);
} tl_stream_ops;

/* sockname and peername as the kernel gave them, converted on request */
typedef struct tl_sockaddrs {
    socklen_t sock_len;     /* 0: unknown */
    socklen_t peer_len;
    unsigned char data[];   /* sock_len bytes, then peer_len bytes */
} tl_sockaddrs;

/* A protocol written in C that takes what the stream reads without a
 * Python call per read: the TLS layer (tl_tls.h). The stream reads into the
 * loop's read buffer and hands the bytes over; errors, EOF and everything
 * else go through the protocol's methods as usual. received() returns -1
 * with an exception set when it failed (the stream then fails as a
 * BufferedProtocol's failing buffer_updated() makes it fail). */
typedef struct tl_stream_sink {
    int (*received)(PyObject *protocol, const char *data, Py_ssize_t n);
} tl_stream_sink;

typedef struct tl_stream {
    PyObject_HEAD
    PyObject *extra;            /* asyncio.BaseTransport's `_extra` slot: the
                                   extra dict given by the creator, or NULL */
    PyObject *flow_slots[4];    /* transports._FlowControlMixin's slots
                                   (_loop, ...): the layout of the base
                                   class, unused (getters below answer) */
    PyObject *dict;
    PyObject *weakreflist;
    struct tl_loop *loop;
    PyObject *protocol;         /* NULL once connection_lost() ran */
    PyObject *context;          /* protocol callbacks run in it */
    PyObject *fileobj;          /* socket or file object closed with the
                                   transport; NULL: the transport owns fd */
    PyObject *server;           /* asyncio.Server of an accepted connection */
    PyObject *sock_view;        /* TransportSocket, made on first request */
    PyObject *waiter;           /* told once connection_made() ran */
    PyObject *empty_waiter;     /* sendfile: done when the buffer empties */
    PyObject *lost_exc;         /* argument of the scheduled connection_lost */
    tl_sockaddrs *addrs;        /* accepted sockets: addresses, raw */
    const tl_stream_sink *sink; /* the protocol reads through C (or NULL) */
    const tl_stream_ops *ops;   /* its kind */
    const struct tl_stream_mt *mt;  /* the threaded side (tl_stream_threads.h):
                                       NULL on a classic loop */
    int (*read)(struct tl_stream *t);   /* its reader, chosen with the protocol */
    void *kind_state;           /* the kind's own (datagrams: queue, peer) */
    tl_loop_link link;          /* on the loop's ring while held */
    /* Threaded loops (tl_dispatch.h): the protocol's callbacks run on
     * workers, in this FIFO, one at a time; cb_thread is the worker running
     * them now (0: none). The loop thread reads; what it read waits in
     * inbox (bytes, in order; inbox_size bytes) for data_received(). */
    tl_strand strand;
    _Atomic unsigned long cb_thread;
    tl_ready inbox;
    Py_ssize_t inbox_size;
    ev_io rio;                  /* reading (write pipes: peer-close check) */
    ev_io wio;                  /* flushing the write buffer */
    PyObject **wq;              /* ring of bytes objects not yet sent
                                   (datagrams: (bytes, address) tuples) */
    Py_ssize_t wq_off;          /* bytes of wq[head] already sent */
    Py_ssize_t wsize;           /* bytes buffered */
    Py_ssize_t high_water;
    Py_ssize_t low_water;
    uint32_t wq_head, wq_len, wq_cap;
    int fd;
    int conn_lost;              /* asyncio's counter (warns after 5 writes) */
    int32_t last_read;          /* size of the last read (tl_read_bytes) */
    uint8_t closing;
    uint8_t paused;             /* pause_reading() */
    uint8_t eof;                /* write_eof() on a socket */
    uint8_t protocol_paused;    /* pause_writing() was called */
    uint8_t buffered;           /* the protocol is a BufferedProtocol */
    uint8_t held;               /* holds a reference to itself */
    uint8_t made;               /* connection_made() ran */
    uint8_t lost_scheduled;     /* connection_lost() is queued or ran */
    uint8_t lost_done;          /* connection_lost() ran, fd closed */
    uint8_t is_socket;          /* fd is a socket: send() with MSG_NOSIGNAL */
    uint8_t watch_close;        /* write pipe: read readiness = peer closed */
    uint8_t inbox_queued;       /* its delivery is on the strand */
    uint8_t read_queued;        /* a read for the protocol is (stream_threads.c) */
    uint8_t reader_calls_protocol;  /* not bytes to data_received(): a threaded
                                       loop reads on the strand */
    uint8_t home_entered;       /* home_held: its step lock taken by us */
    PyObject *home_held;        /* the home task the running strand item holds */
    struct tl_task *home_saved; /* what tl_task_home_enter() replaced */
    uint8_t inbox_full;         /* the reader waits for the inbox to drain */
    uint8_t in_data_received;   /* a worker runs it without the loop lock */
    uint8_t eof_waiting;        /* the EOF waits for the inbox (reading paused) */
    uint8_t eof_read;           /* threaded loops: the loop thread read the EOF */
    uint8_t user_closed;        /* close() or abort() was called */
    /* Shared loops: while the write side is idle (nothing buffered, no
     * write watcher, not closing, no EOF or sendfile) write() sends under
     * wlock alone, without the loop lock. Turned on only under the loop
     * lock, by the code that found the write side idle; turned off (under
     * wlock too, which waits for a send in flight) before anything changes
     * that (stream_threads.c: wfast_off, wfast_update). */
    _Atomic uint8_t wfast;
    tl_mutex wlock;
} tl_stream;

/* A new socket transport on a connected, non-blocking socket, as
 * loop._make_socket_transport() makes it: connection_made() and then the
 * reader start on the next iteration, then `waiter` (may be NULL) gets None.
 * `sock` is the socket object to close at the end, or NULL when the
 * transport owns `fd` (accepted connections; `peer` then holds the peer's
 * address). `extra` (may be NULL) is the creator's extra dict; `server`
 * (may be NULL) the asyncio.Server to attach to. NULL with an exception on
 * failure; the caller still owns `fd` then. */
PyObject *tl_socket_transport_new(struct tl_loop *loop, int fd, PyObject *sock,
                               PyObject *protocol, PyObject *waiter,
                               PyObject *extra, PyObject *server,
                               const struct sockaddr *peer, socklen_t peer_len);

/* asyncio 3.15's context= of _make_socket_transport/_make_ssl_transport:
 * check it (None or a contextvars.Context; -1 with TypeError), before the
 * transport is made; then, right after it is made and before any callback
 * ran, use it: the protocol callbacks run in that very context (None: in
 * the copy of the current one the transport took). */
int tl_stream_check_context(PyObject *context);
void tl_stream_use_context(PyObject *transport, PyObject *context);

/* A new pipe transport on fd, as loop.connect_read_pipe() /
 * connect_write_pipe() make them (usable from C: subprocess pipes).
 * `fileobj` (may be NULL) is the file object closed with the transport and
 * shown as extra 'pipe'; with NULL the transport owns fd and closes it
 * itself. fd must be a pipe, FIFO, socket or character device
 * (ValueError otherwise, asyncio's message); it is made non-blocking.
 * connection_made() runs on the next iteration, then `waiter` (may be NULL)
 * gets None. `extra` may be NULL. NULL with an exception on failure; the
 * caller still owns fd then. */
PyObject *tl_pipe_transport_new(struct tl_loop *loop, int fd, PyObject *fileobj,
                                PyObject *protocol, PyObject *waiter,
                                PyObject *extra, int writable);

/* Read up to `max` bytes from fd into a new bytes object (*out). After a
 * read of some size on the same fd (*last, kept by the caller) the next one
 * goes straight into an object of about that size, the loop's read buffer
 * taking any excess; small reads go through the loop's buffer and are
 * copied out. Returns the count
 * read (0: end of file, *out untouched), -1 with errno set, or -2 with a
 * Python exception set. use_recv: recv(MSG_DONTWAIT) instead of read(). */
ssize_t tl_read_bytes(struct tl_loop *loop, int fd, Py_ssize_t max, int use_recv,
                      int32_t *last, PyObject **out);

/* Done with a bytes object tl_read_bytes() made: kept for the next read
 * when nothing else holds it, released otherwise. Steals data. */
void tl_read_recycle(struct tl_loop *loop, PyObject *data);

/* get_extra_info(name, default=None)'s arguments, checked as Python checks
 * them; -1 with TypeError set. */
int tl_parse_extra_info_args(PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames,
                             PyObject **name, PyObject **dflt);

/* Write buffer limits from set_write_buffer_limits(high, low) arguments
 * (NULL or None: the default, high = default_kb KiB), checked with
 * asyncio's message. -1 with an exception set. */
int tl_flow_limits(PyObject *high, PyObject *low, long default_kb, Py_ssize_t *hi,
                   Py_ssize_t *lo);
/* A new datagram transport on a non-blocking datagram socket, as
 * loop._make_datagram_transport() makes it: connection_made() and then the
 * reader start on the next iteration, then `waiter` (may be NULL) gets
 * None. `address` (NULL or None: none) is the peer sendto() defaults to and
 * insists on. The socket object is closed with the transport. NULL with an
 * exception on failure; the caller still owns the socket then. */
PyObject *tl_datagram_transport_new(struct tl_loop *loop, PyObject *sock, PyObject *protocol,
                                    PyObject *address, PyObject *waiter, PyObject *extra);

/* ---- for the kinds' files and the layers above (TLS): the core's services ----
 * The life cycle (connection_made, close, abort, connection_lost, flow
 * control, errors) is stream.c's; a kind brings what its ops say. */

/* Threaded loops: the task running here becomes the home (tl_dispatch.h)
 * of `transport` when that is a socket transport: a TLS transport above it
 * was paused or resumed. */
void tl_stream_home_here(tl_state *st, PyObject *transport);

/* protocol.<name>(arg) (arg may be NULL): a new reference, or NULL with the
 * error set. None once connection_lost() ran. */
PyObject *tl_stream_call_protocol(tl_stream *t, PyObject *name, PyObject *arg);
PyObject *tl_stream_call_protocol2(tl_stream *t, PyObject *name, PyObject *a, PyObject *b);
/* asyncio's _fatal_error(exc, message) with the current exception. */
int tl_stream_fatal_error(tl_stream *t, const char *message);
/* A protocol callback raised: reported as its handle would report it. */
int tl_stream_report_callback_error(tl_stream *t, PyObject *proto, const char *method);
/* Start (on) or stop a watcher of t, keeping the self-reference right. */
void tl_stream_watch(tl_stream *t, ev_io *w, int on);
int tl_stream_maybe_pause_protocol(tl_stream *t);
int tl_stream_maybe_resume_protocol(tl_stream *t);
/* A write after the connection was lost: counted, logged after a few. */
void tl_stream_warn_lost_writes(tl_stream *t);
int tl_stream_call_connection_lost(tl_stream *t, PyObject *exc);
/* The loop's read buffer (TL_STREAM_READ_MAX bytes); NULL with
 * MemoryError. */
#define TL_STREAM_READ_MAX (256 * 1024)
char *tl_stream_read_buffer(struct tl_loop *loop);
/* The write ring as a queue of objects, without wsize accounting. */
int tl_stream_wq_push(tl_stream *t, PyObject *item);   /* steals item */
void tl_stream_wq_drop(tl_stream *t);                   /* drops the head */
static inline PyObject *tl_stream_wq_peek(tl_stream *t)
{
    return t->wq[t->wq_head];
}

/* ---- for the kinds' files: making a transport ----------------------------
 * tl_stream_alloc() makes the stream part (the kind's ops, the protocol:
 * its reader is chosen then), or tl_stream_selector_new() for a socket kind
 * (asyncio's _SelectorTransport: addresses and extra info too, *family
 * set). The kind then sets up its own state, and tl_stream_start() attaches
 * the server (may be NULL), takes the fd and queues connection_made().
 * Both return NULL with an exception on failure, and so does start, which
 * has let go of t then; tl_stream_abandon() lets go of one made but not
 * started. The caller still owns fd and fileobj after a failure. */
tl_stream *tl_stream_alloc(struct tl_loop *loop, PyTypeObject *tp, const tl_stream_ops *ops,
                           int fd, PyObject *fileobj, PyObject *protocol, PyObject *waiter,
                           PyObject *extra);
tl_stream *tl_stream_selector_new(struct tl_loop *loop, PyTypeObject *tp,
                                  const tl_stream_ops *ops, int fd, PyObject *sock,
                                  PyObject *protocol, PyObject *waiter, PyObject *extra,
                                  const struct sockaddr *peer, socklen_t peer_len,
                                  int *family);
PyObject *tl_stream_start(tl_stream *t, PyObject *server);
void tl_stream_abandon(tl_stream *t);

/* asyncio's _force_close(exc) (exc may be NULL) and its debug-mode log line
 * (fmt has one %r for the transport). */
int tl_stream_force_close(tl_stream *t, PyObject *exc);
void tl_stream_debug_log(tl_stream *t, const char *level, const char *fmt);

/* ---- for the kinds' files: their Python type ------------------------------ */

/* The method groups a type joins: asyncio's transports have different
 * subsets (a read pipe has no write(), a datagram transport has sendto()). */
extern PyMethodDef tl_stream_methods_write[];       /* write */
extern PyMethodDef tl_stream_methods_writelines[];
extern PyMethodDef tl_stream_methods_write_eof[];   /* write_eof, can_write_eof */
extern PyMethodDef tl_stream_methods_close[];       /* close, is_closing */
extern PyMethodDef tl_stream_methods_abort[];
extern PyMethodDef tl_stream_methods_reading[];     /* is_reading, pause/resume */
extern PyMethodDef tl_stream_methods_write_buffer[]; /* limits, size */
extern PyMethodDef tl_stream_methods_extra[];       /* get_extra_info, protocol */
extern PyMethodDef tl_stream_methods_force_close[]; /* _force_close */
extern PyMethodDef tl_stream_methods_sendfile[];    /* loop.sendfile()'s private calls */

/* Getters for the attributes asyncio's code and tests read */
PyObject *tl_stream_get_sock(tl_stream *t, void *closure);     /* _sock */
PyObject *tl_stream_get_loop(tl_stream *t, void *closure);     /* _loop */
PyObject *tl_stream_get_object_or_none(tl_stream *t, void *offset);
#define TL_STREAM_OBJECT_OR_NONE(name, field)                                   \
    {name, (getter)tl_stream_get_object_or_none, NULL, NULL,                   \
     (void *)offsetof(tl_stream, field)}

/* the state asyncio's transports keep in attributes, read-only */
#define TL_STREAM_STATE_MEMBERS                                                         \
    {"_extra", Py_T_OBJECT_EX, offsetof(tl_stream, extra), 0, NULL},                   \
    {"_closing", Py_T_BOOL, offsetof(tl_stream, closing), Py_READONLY, NULL},          \
    {"_paused", Py_T_BOOL, offsetof(tl_stream, paused), Py_READONLY, NULL},            \
    {"_conn_lost", Py_T_INT, offsetof(tl_stream, conn_lost), Py_READONLY, NULL},       \
    {"_protocol_paused", Py_T_BOOL, offsetof(tl_stream, protocol_paused), Py_READONLY, \
     NULL},                                                                            \
    {"_high_water", Py_T_PYSSIZET, offsetof(tl_stream, high_water), Py_READONLY, NULL}, \
    {"_low_water", Py_T_PYSSIZET, offsetof(tl_stream, low_water), Py_READONLY, NULL},   \
    {"__dictoffset__", Py_T_PYSSIZET, offsetof(tl_stream, dict), Py_READONLY, NULL},    \
    {"__weaklistoffset__", Py_T_PYSSIZET, offsetof(tl_stream, weakreflist), Py_READONLY, \
     NULL}

/* A kind's type: bases are asyncio.transports classes (one, or two
 * separated by a space), methods a NULL-ended list of tables to join
 * (joined stays with the type). */
typedef struct tl_stream_type {
    const char *name;
    const char *doc;
    const char *bases;
    PyMethodDef *const *methods;
    PyGetSetDef *getset;
    PyMemberDef *members;
    PyMethodDef *joined;
} tl_stream_type;

int tl_stream_add_type(PyObject *module, PyTypeObject **slot, tl_stream_type *def);

/* The stdlib objects and names the transports use. */
int tl_stream_init_module(PyObject *module, tl_state *st);

/* Each kind's type, and the loop methods that make one. */
int tl_socket_init_module(PyObject *module, tl_state *st);     /* socket.c */
int tl_pipe_init_module(PyObject *module, tl_state *st);       /* pipe.c */
int tl_dgram_init_module(PyObject *module, tl_state *st);      /* datagram.c */
extern PyMethodDef tl_socket_loop_methods[];
extern PyMethodDef tl_dgram_loop_methods[];

#endif

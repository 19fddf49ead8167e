/* tl_stream.h - the fd transport core: a connected socket (TCP or Unix) or
 * one end of a pipe (pipes, FIFOs, ttys, ptys, socketpairs).
 *
 * A pipe is a one-directional stream, so all three kinds share one struct
 * and one implementation of reading, the write buffer, flow control and the
 * close/abort/connection_lost life cycle; only the few places where asyncio's
 * _SelectorSocketTransport, _UnixReadPipeTransport and
 * _UnixWritePipeTransport differ look at the kind.
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
 * of its home task (README, "Worker threads").
 */
#ifndef TL_STREAM_H
#define TL_STREAM_H

#include "tl_common.h"
#include "tl_loop.h"
#include "tl_dispatch.h"
#include <sys/socket.h>

typedef enum {
    TL_STREAM_SOCKET = 0,   /* both directions: asyncio's socket transport */
    TL_STREAM_READ_PIPE,    /* asyncio's _UnixReadPipeTransport */
    TL_STREAM_WRITE_PIPE,   /* asyncio's _UnixWritePipeTransport */
    TL_STREAM_DATAGRAM,     /* asyncio's _SelectorDatagramTransport
                               (datagram.c: reading and sendto) */
} tl_stream_kind;

struct tl_dgram;

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
    struct tl_dgram *dgram;     /* datagram transports: their own state */
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
    uint8_t kind;
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
    uint8_t read_queued;        /* a read for the protocol is (stream.c) */
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
     * that (stream.c: wfast_off, wfast_update). */
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
PyObject *tl_stream_new_socket(struct tl_loop *loop, int fd, PyObject *sock,
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

/* ---- for the kinds implemented outside stream.c (datagram.c) ----------
 * The life cycle (connection_made, close, abort, connection_lost, flow
 * control, errors) is stream.c's; a kind brings its reading and writing. */

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

/* datagram.c: the datagram kind's reading, writing and state */
int tl_dgram_read_ready(tl_stream *t);
int tl_dgram_write_ready(tl_stream *t);
int tl_dgram_init(tl_stream *t, PyObject *address);
int tl_dgram_traverse(tl_stream *t, visitproc visit, void *arg);
void tl_dgram_clear(tl_stream *t);
void tl_dgram_free(tl_stream *t);
PyObject *tl_dgram_sendto(tl_stream *t, PyObject *const *args, Py_ssize_t nargs,
                          PyObject *kwnames);
PyObject *tl_dgram_get_address(tl_stream *t, void *closure);

/* Type creation and the stdlib objects the transports use. */
int tl_stream_init_module(PyObject *module, tl_state *st);

extern PyMethodDef tl_stream_loop_methods[];
extern PyMethodDef tl_dgram_loop_methods[];   /* datagram.c */

#endif

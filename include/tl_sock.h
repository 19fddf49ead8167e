/* tl_sock.h - the loop's low-level socket API (sock_recv, sock_sendall, ...)
 * as awaitables written in C.
 *
 * asyncio's sock_* methods are coroutines: try the call, and only when it
 * would block, register a reader/writer and await a future. A SockOp does
 * the same without a Python frame: it is its own coroutine (send/throw/
 * close/__await__, and the am_send slot Task uses), tries the operation on
 * the first send, and only when that would block creates a future with
 * loop.create_future(), waits in the fd's line (tl_io.h) and yields the future (through
 * the future's own __await__, so any Future implementation works). The
 * watcher callback retries the operation and completes the future.
 *
 * Each operation is a kind: a try function and what it waits for. sendfile.c
 * adds one. An operation of several stages (connect.c's create_connection)
 * may also wait for a future of its own: its try function or its `then`
 * hook hands one back, and `then` runs, in the awaiting task's context,
 * with each such future's result.
 */
#ifndef TL_SOCK_H
#define TL_SOCK_H

#include "tl_common.h"
#include "tl_loop.h"

typedef struct tl_sockop tl_sockop;

typedef struct tl_sockop_kind {
    const char *qualname;   /* shown in task reprs: "Loop.sock_recv" */
    int events;             /* EV_READ or EV_WRITE */
    int checks_socket;      /* first send: asyncio's SSL and debug checks,
                               and fd = sock.fileno() */
    /* Try once: 1 done (*result set, new ref), 0 would block (wait for
     * `events`), 2 await the future in *result (new ref), -1 error. */
    int (*attempt)(tl_sockop *op, PyObject **result);
    /* The wait ended without a result (cancelled, closed, failed); may be
     * NULL. */
    void (*abandoned)(tl_sockop *op);
    /* A wait finished with `value` (stolen): as attempt's returns, minus 0.
     * NULL: the value is the operation's result. */
    int (*then)(tl_sockop *op, PyObject *value, PyObject **result);
} tl_sockop_kind;

struct tl_sockop {
    PyObject_HEAD
    const tl_sockop_kind *kind;
    tl_loop *loop;
    PyObject *sock;
    PyObject *arg;          /* the operation's data, buffer or size */
    PyObject *arg2;         /* address, or a second argument */
    PyObject *fut;          /* while waiting */
    PyObject *made[2];      /* what a multi-stage operation built so far */
    PyObject *fut_iter;     /* fut.__await__() */
    Py_buffer view;         /* held while has_view */
    Py_ssize_t pos;         /* progress (sendall) or a size */
    long long offset, count, total;   /* sendfile */
    tl_io_queued wait;      /* in the fd's line while waiting for it */
    tl_loop_link link;
    int fd;
    int file_fd;
    uint8_t state;
    uint8_t has_view;
    uint8_t held;
    uint8_t waited;         /* went through the watcher at least once */
    uint8_t direct;         /* an exact socket.socket: syscalls, no methods */
    uint8_t stage;          /* a multi-stage operation's progress */
};

/* A new operation of `kind` on `sock`; the caller fills in the rest. */
tl_sockop *tl_sockop_new(tl_loop *loop, const tl_sockop_kind *kind, PyObject *sock);

/* A non-blocking connect on op->fd became writable: 1 and None when it
 * succeeded, 0 to wait more, -1 with asyncio's "Connect call failed
 * <address>" OSError. */
int tl_sockop_connect_status(tl_sockop *op, PyObject *address, PyObject **result);

/* 1 when errno means "try again later", with no exception set. */
int tl_sockop_would_block(int err);

/* The result of a call of the socket's own Python method (r, NULL on
 * error): 1 with *result set, 0 when it would block (error cleared), -1 with
 * the error set. */
int tl_sockop_call_attempt(PyObject *r, PyObject **result);

int tl_sock_init_module(PyObject *module, tl_state *st);

extern PyMethodDef tl_sock_loop_methods[];
extern PyMethodDef tl_sendfile_loop_methods[];   /* sendfile.c */

#endif

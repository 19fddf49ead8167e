/* tl_stream_threads.h - the threaded side of transports (stream_threads.c),
 * between it and the core (stream.c) only.
 *
 * A loop that other threads call into (threads=N; any loop of a
 * free-threaded build) gives its transports t->mt = &tl_stream_threaded;
 * the core reaches everything below through it, behind one test each
 * (t->mt for the write side's lock-free path, the loop's dispatch for the
 * strand). A classic loop's transports have t->mt == NULL and none of it
 * runs.
 *
 * - the strand: protocol callbacks run on workers, one at a time, in order,
 *   never beside a step of the transport's home task (tl_dispatch.h);
 * - the inbox: what the loop thread read waits there for data_received(),
 *   which runs on the strand without the loop lock;
 * - the lock-free write: write(bytes) while the write side is idle sends
 *   under the transport's wlock alone (tl_stream.h: wfast).
 */
#ifndef TL_STREAM_THREADS_H
#define TL_STREAM_THREADS_H

#include "tl_stream.h"

typedef struct tl_stream_mt {
    /* strand loops (dispatch): */
    int (*push)(tl_stream *t, tl_ready_fn fn);      /* fn(t) on the strand; takes a ref */
    int (*lock)(tl_stream *t);                      /* a strand item's locks (run_in_context) */
    void (*unlock)(tl_stream *t, int locked);
    int (*read_ready)(tl_stream *t);                /* the reader, or hand it to the strand */
    int (*data_read)(tl_stream *t, PyObject *data); /* bytes for the inbox; steals data */
    int (*eof_read)(tl_stream *t);                  /* the loop thread read the EOF */
    int (*resume)(tl_stream *t);                    /* resume_reading(): what waited */
    void (*home_here)(tl_stream *t);                /* the running task becomes the home */
    int (*home_is_here)(tl_stream *t);              /* this thread runs the home (or none) */
    int (*in_strand)(tl_stream *t);                 /* ... during data_received() */
    void (*made)(tl_stream *t);                     /* before connection_made() */
    /* every shared loop: */
    PyObject *(*write)(tl_stream *t, PyObject *arg, PyObject *(*fn)(tl_stream *, PyObject *),
                       int bytes_write);
    void (*wfast_off)(tl_stream *t);
    void (*wfast_update)(tl_stream *t);
    Py_ssize_t (*wq_size)(tl_stream *t);
    int (*traverse)(tl_stream *t, visitproc visit, void *arg);
    void (*clear)(tl_stream *t);
} tl_stream_mt;

extern const tl_stream_mt tl_stream_threaded;

/* ---- the core's side, for stream_threads.c ---------------------------------- */

static inline int tl_stream_would_block(int err)
{
    return err == EAGAIN || err == EWOULDBLOCK || err == EINTR;
}

static inline int tl_stream_is_reading(tl_stream *t)
{
    return !t->closing && !t->paused;
}

/* step(t) in the protocol's context, with the locks a strand item takes */
int tl_stream_run_step(tl_stream *t, int (*step)(tl_stream *));
int tl_stream_data_received_done(tl_stream *t, PyObject *proto, PyObject *r);
void tl_stream_start_reading(tl_stream *t);
int tl_stream_on_eof(tl_stream *t);
void tl_stream_hold_update(tl_stream *t);
ssize_t tl_stream_send(tl_stream *t, const void *buf, size_t len);
int tl_stream_wq_append(tl_stream *t, PyObject *data, const Py_buffer *view, Py_ssize_t off);
void tl_stream_wq_clear(tl_stream *t);
int tl_stream_write_failed(tl_stream *t);
int tl_stream_start_flush(tl_stream *t);

#endif

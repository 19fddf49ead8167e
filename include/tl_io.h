/* tl_io.h - the loop's file descriptor table: add_reader/add_writer watchers
 * and which transport owns an fd.
 *
 * Indexed by fd (descriptors are small integers), so a lookup is one load.
 * A watched fd has one ev_io whose interest is the union of its reader and
 * writer; like asyncio, a ready fd queues its Handle on the ready queue.
 *
 * Operations that wait for an fd (sock_recv and friends) wait in line, one
 * line per fd and direction, and only the first in line has its ev_io
 * started: libev keeps an fd's watchers in a list it scans to stop one and to
 * compute the fd's interest, so N watchers on one fd would make N operations
 * cost N squared, and wake all N for one datagram. Joining, leaving and
 * moving up are O(1).
 */
#ifndef TL_IO_H
#define TL_IO_H

#include "tl_common.h"
#include "tl_ev.h"

struct tl_loop;

/* One operation in an fd's line; embedded in the operation. io's fd, events
 * (EV_READ or EV_WRITE) and callback are the operation's: the callback runs
 * when the fd is ready and the operation is first in line. */
typedef struct tl_io_queued {
    ev_io io;
    struct tl_io_queued *prev;
    struct tl_io_queued *next;
    int in_line;
} tl_io_queued;

typedef struct tl_io_watch {
    ev_io io;
    struct tl_loop *loop;       /* borrowed: the loop owns the table */
    int fd;
    PyObject *reader;           /* Handle or NULL */
    PyObject *writer;           /* Handle or NULL */
    PyObject *fileobj;          /* what the first add_reader/add_writer got:
                                   remove_* find a closed one by identity */
    PyObject *owner;            /* transport using the fd (borrowed), NULL */
    int busy;                   /* threaded loops: EV_READ/EV_WRITE whose
                                   callback is queued or running; not
                                   watched meanwhile (level-triggered fds
                                   would queue it again and again) */
    tl_io_queued *first[2];     /* the lines: [0] EV_READ, [1] EV_WRITE */
    tl_io_queued *last[2];
} tl_io_watch;

typedef struct {
    tl_io_watch **slots;
    int cap;
} tl_io_table;

/* Record that a transport owns fd (it then refuses add_reader and friends
 * as asyncio does), or clear it with owner == NULL. */
int tl_io_set_owner(struct tl_loop *loop, int fd, PyObject *owner);

/* asyncio's _ensure_fd_no_transport(): RuntimeError when a transport that
 * is not closing owns fd. */
int tl_io_ensure_no_transport(struct tl_loop *loop, PyObject *fileobj, int fd);

/* Join the line for q->io's fd and events (set by ev_io_set) at its end.
 * -1 with errno set when the fd is not open (EBADF) or memory ran out; q is
 * then out of line with nothing pending. */
int tl_io_queue_join(struct tl_loop *loop, tl_io_queued *q);

/* Leave the line (done, cancelled, failed); nothing when not in it. The next
 * in line is watched; with pass_on (q just used a readiness the poll
 * reported), it also tries in this iteration, so a backlog of connections or
 * datagrams serves its line at the pace asyncio's would. */
void tl_io_queue_leave_line(struct tl_loop *loop, tl_io_queued *q, int pass_on);

static inline void tl_io_queue_leave(struct tl_loop *loop, tl_io_queued *q, int pass_on)
{
    if (q->in_line)
        tl_io_queue_leave_line(loop, q, pass_on);
}

/* Stop every watcher and free the table (loop.close()). */
void tl_io_table_clear(struct tl_loop *loop);
int tl_io_table_traverse(tl_io_table *t, visitproc visit, void *arg);

/* fd from an int or an object with fileno(), asyncio's rules. -1 on error. */
int tl_io_fileobj_to_fd(PyObject *fileobj);

extern PyMethodDef tl_io_loop_methods[];

#endif

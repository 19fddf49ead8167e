/* tl_io.h - the loop's file descriptor table: add_reader/add_writer watchers
 * and which transport owns an fd.
 *
 * Indexed by fd (descriptors are small integers), so a lookup is one load.
 * A watched fd has one ev_io whose interest is the union of its reader and
 * writer; like asyncio, a ready fd queues its Handle on the ready queue.
 */
#ifndef TL_IO_H
#define TL_IO_H

#include "tl_common.h"
#include "tl_ev.h"

struct tl_loop;

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

/* Stop every watcher and free the table (loop.close()). */
void tl_io_table_clear(struct tl_loop *loop);
int tl_io_table_traverse(tl_io_table *t, visitproc visit, void *arg);

/* fd from an int or an object with fileno(), asyncio's rules. -1 on error. */
int tl_io_fileobj_to_fd(PyObject *fileobj);

extern PyMethodDef tl_io_loop_methods[];

#endif

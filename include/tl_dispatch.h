/* tl_dispatch.h - multi-threaded dispatch: Loop(threads=N).
 *
 * The thread that runs the loop keeps libev (I/O, timers, signals) and
 * sleeps in the poll; ready work runs on N worker threads:
 *
 *   - each worker has a local run queue (Go's runq: a 256-slot ring the
 *     owner fills at the tail and anyone takes from the head with a
 *     compare-and-swap); work a worker schedules goes there;
 *   - work from any other thread (I/O and timer wake-ups from the loop
 *     thread, call_soon_threadsafe) goes to the global injector queue;
 *   - a worker with nothing to do steals half of another's queue, or a batch
 *     of the injector; at most one worker searches at a time, the others
 *     park; whoever queues work wakes a parked worker only when nobody
 *     searches (no thundering herd);
 *   - strands keep order where asyncio promises it: a strand runs its items
 *     one at a time in FIFO order, on whichever worker picks it up. Plain
 *     callbacks (call_soon, timers, add_reader callbacks, done callbacks,
 *     signal handlers) share the loop's strand, so they keep asyncio's
 *     order and never run concurrently with each other; each transport has
 *     its own strand for its protocol callbacks; a Task is its own strand
 *     (tl_task.h: an atomic scheduled/running state).
 *
 * stop() lets what is queued at that moment start (asyncio's iteration runs
 * what was ready when it began: a task created before call_soon(stop) takes
 * its step), then closes the gate: nothing new starts, what runs finishes,
 * the workers park, run_forever() returns; what was queued since runs when
 * the loop runs again. While the loop runs, workers see it as their running
 * loop and have its async generator hooks; current_task() works there
 * (module state key per worker). Between runs they hold nothing of it, so a
 * loop dropped without close() is freed, its workers with it.
 */
#ifndef TL_DISPATCH_H
#define TL_DISPATCH_H

#include "tl_loop.h"

/* A serial queue of work items, run in order, one at a time. Embedded in its
 * owner (the loop, a transport); `run` is the owner's item function that
 * calls tl_strand_run(). */
typedef struct tl_strand {
    tl_mutex lock;
    uint8_t scheduled;          /* its run item is queued or running */
    tl_ready q;
    PyObject *home;             /* under lock: a transport's home task (below) */
} tl_strand;

/* Queue fn(obj) on the strand; steals the reference to obj. Schedules the
 * strand (as run(owner)) when it was idle. */
int tl_strand_push(tl_loop *loop, tl_strand *s, tl_ready_fn run, PyObject *owner,
                   tl_ready_fn fn, PyObject *obj);

/* The body of a strand's run item: runs the items queued when it started,
 * then queues itself again if more came. -1 (exception set) only for what
 * must stop the loop (SystemExit, KeyboardInterrupt). */
int tl_strand_run(tl_loop *loop, tl_strand *s, tl_ready_fn run, PyObject *owner);

void tl_strand_clear(tl_strand *s);

/* A transport's home task: the task its protocol callbacks never run beside
 * (the transport's run item holds the task's step lock, tl_task.h), so that
 * what the protocol shares with the task consuming it (an asyncio.Event that
 * data_received() sets and the task waits on, a buffer both touch) behaves
 * as on asyncio's one thread. The home is the last task that one of the
 * strand's items created, or that paused or resumed the transport's reading
 * or paused its writing. */
PyObject *tl_strand_home_ref(tl_strand *s);
void tl_strand_set_home(tl_strand *s, PyObject *task);
/* Drop the home if it is still `task` (a finished task) */
void tl_strand_drop_home(tl_strand *s, PyObject *task);
/* While the strand's items run on this thread, the tasks they create become
 * its home (tl_strand_adopt); returns the strand it replaces. */
tl_strand *tl_strand_adopting(tl_strand *s);
void tl_strand_adopt(PyObject *task);
int tl_strand_traverse(tl_strand *s, visitproc visit, void *arg);

/* One object's work items when at most one is pending at a time (a Task:
 * asyncio schedules its next step only once the current one is over), run
 * never on two threads at once. An item pushed while the previous one still
 * runs (a task woken by another worker before its step has returned) waits
 * and is queued by the running one when it finishes. Cheaper than a strand:
 * no lock, no queue, two words in the owner. */
typedef struct tl_serial {
    _Atomic uint8_t state;      /* TL_SERIAL_* */
    _Atomic(tl_ready_fn) fn;    /* the item queued (or running) */
    _Atomic(tl_ready_fn) next;  /* the item waiting for the running one */
} tl_serial;

enum { TL_SERIAL_IDLE, TL_SERIAL_QUEUED, TL_SERIAL_RUNNING, TL_SERIAL_PENDING };

/* Queue fn(obj) for s's owner obj, as the item run(obj) (the owner's item
 * function, which calls tl_serial_run); steals the reference to obj. -1
 * with RuntimeError when an item is already waiting (asyncio never does). */
int tl_serial_push(tl_loop *loop, tl_serial *s, tl_ready_fn run, tl_ready_fn fn,
                   PyObject *obj);

/* The body of the owner's item function `run`: runs s's item, then queues
 * the one that came meanwhile, if any. */
int tl_serial_run(tl_loop *loop, tl_serial *s, tl_ready_fn run, PyObject *obj);

/* Run something of the owner's outside the queue (a Task's eager first
 * step, on the thread that created it) as if it were its item: hold() before,
 * release() after, which queues what was pushed meanwhile (as run(obj)). */
static inline void tl_serial_hold(tl_serial *s)
{
    atomic_store_explicit(&s->state, TL_SERIAL_RUNNING, memory_order_release);
}

void tl_serial_release(tl_loop *loop, tl_serial *s, tl_ready_fn run, PyObject *obj);

/* Loop(threads=n): the dispatcher, no threads yet (they start with the
 * first run). -1 with an exception set. */
int tl_dispatch_create(tl_loop *loop, int nthreads);

/* loop.close(): stop the workers, wait for them, drop what is queued. */
void tl_dispatch_destroy(tl_loop *loop);

int tl_dispatch_nthreads(tl_loop *loop);

/* Run fn(obj) on some worker; steals obj. From any thread. */
int tl_dispatch_push(tl_loop *loop, tl_ready_fn fn, PyObject *obj);

/* The loop thread, having let the loop lock go: hand the workers what it
 * queued while it held the lock (tl_dispatch_push holds it back there). */
void tl_dispatch_publish_held(tl_loop *loop);

/* Plain callbacks: the loop's strand. */
int tl_dispatch_push_callback(tl_loop *loop, tl_ready_fn fn, PyObject *obj);

/* 1 when the item this worker runs has pushed onto the loop's strand: a
 * task's next step queued now goes behind those callbacks (tl_task). */
int tl_dispatch_item_queued_callback(tl_loop *loop);

/* run_forever()'s body on the loop thread: poll, fire timers, keep the
 * workers going until stop() or an error. `poll` is one poll of the loop
 * (blocking when `block`); returns -1 with the exception that stopped it. */
int tl_dispatch_run(tl_loop *loop, int (*poll)(tl_loop *loop, int block));

/* stop(): close the gate now, or (not running yet) after the first batch. */
void tl_dispatch_stop(tl_loop *loop);

/* The current thread is one of this loop's workers. */
int tl_dispatch_on_worker(tl_loop *loop);

/* Callbacks waiting in the loop's strand (call_soon_threadsafe's backlog),
 * from any thread. */
size_t tl_dispatch_backlog(tl_loop *loop);

#if PY_VERSION_HEX < 0x030E0000
/* An asyncio-native task's step (asyncio.Task, not ours) is about to run:
 * on a worker, wait until no other worker runs an item and hold the others
 * off (dispatch.c says why). 1: done, call tl_dispatch_native_end() after
 * the step; 0: not on a worker, nothing to end. */
int tl_dispatch_native_begin(tl_loop *loop);
void tl_dispatch_native_end(tl_loop *loop);
#endif
#if PY_VERSION_HEX >= 0x030C0000 && PY_VERSION_HEX < 0x030E0000
/* loop.is_running() was asked on a worker: the rest of its item runs alone,
 * as an eager asyncio.Task's first step may follow (dispatch.c). */
void tl_dispatch_alone_rest_of_item(tl_loop *loop);
#endif

/* Take m (a task's step lock, the loop lock) from any thread. Inside an
 * item the wait does not count as running, and m is never held while a
 * lone step runs on another worker (it may want m: it is let go, and taken
 * again after). */
void tl_dispatch_lock_in_item(tl_mutex *m);

/* The key under which current_task() finds the task a worker of this loop
 * runs (borrowed), or NULL on any other thread. */
PyObject *tl_dispatch_task_key(tl_loop *loop);

/* Around the dict updates of tl_task.h's enter/leave: while set, a worker's
 * key compares equal only to itself. */
void tl_dispatch_key_private(int on);

/* Call fn(loop, arg) on the loop's thread and wait for it (what only that
 * thread may do: signal handlers). Runs fn at once on that thread or when
 * the loop is not running. New reference, or NULL with the exception. */
PyObject *tl_dispatch_call_on_loop(tl_loop *loop, PyObject *(*fn)(tl_loop *, PyObject *),
                                   PyObject *arg);

int tl_dispatch_traverse(tl_loop *loop, visitproc visit, void *arg);
void tl_dispatch_clear(tl_loop *loop);

/* A forked child: the workers did not come along. */
void tl_dispatch_fork_child(tl_loop *loop);

/* The module's worker-key type. */
extern PyType_Spec tl_worker_key_spec;

#endif

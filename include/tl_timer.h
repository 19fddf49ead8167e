/* tl_timer.h - TimerHandle and the loop's timer heap.
 *
 * A binary min-heap ordered by (deadline, insertion order): timers due at the
 * same time fire in the order they were scheduled. Each TimerHandle knows its
 * slot, so cancel() removes it at once instead of leaving a tombstone.
 */
#ifndef TL_TIMER_H
#define TL_TIMER_H

#include "tl_handle.h"

typedef struct tl_timer_handle {
    tl_handle base;
    double when;
    double key;         /* `when`; a NaN one goes after the timers before it */
    uint64_t seq;
    Py_ssize_t slot;    /* index in the heap, -1 when not scheduled */
    char when_is_int;   /* call_at() got an int: when() gives an int back,
                           as asyncio's TimerHandle keeps what it got */
} tl_timer_handle;

typedef struct {
    tl_timer_handle **items;    /* each holds a strong reference */
    Py_ssize_t len;
    Py_ssize_t cap;
    uint64_t seq;
} tl_timer_heap;

extern PyType_Spec tl_timer_handle_spec;

struct tl_loop;

/* Schedule callback at `when` (loop time); NULL on error. */
tl_timer_handle *tl_timer_schedule(struct tl_loop *loop, double when,
                                   PyObject *callback, PyObject *const *args,
                                   Py_ssize_t nargs, PyObject *context);

/* Take a timer out of its heap (cancel); no-op if not scheduled. */
void tl_timer_unschedule(tl_timer_handle *t);

/* Move every timer due by `now` to the ready queue. */
int tl_timer_heap_expire(struct tl_loop *loop, double now);

/* Deadline of the earliest timer, or -1 when there is none. */
double tl_timer_heap_next(tl_timer_heap *heap);

/* Drop every timer (loop.close()). */
void tl_timer_heap_clear(tl_timer_heap *heap);

int tl_timer_heap_traverse(tl_timer_heap *heap, visitproc visit, void *arg);

extern PyMethodDef tl_timer_loop_methods[];

#endif

/* tl_event.h - Event and Waiter: the core that Future and Task stand on.
 *
 * An Event is a flag that is set once plus an intrusive doubly-linked list of
 * Waiters. Setting is two steps so a value can be published in between:
 *
 *   tl_event_claim()  compare-and-swap clear -> claimed: exactly one caller
 *                     wins (a Future stores its result after winning);
 *   tl_event_fire()   marks the event set, detaches the whole list under the
 *                     lock and wakes every waiter in the order they came.
 *
 * tl_event_add() checks the flag under the same lock, so a waiter is either
 * queued before the list is detached (and woken by the setter) or sees the
 * event set (and the caller wakes it): no wake-up is lost, none is doubled.
 * A waiter added between claim and fire is queued and woken by fire.
 *
 * The lock is a one-byte spinlock held only for a few pointer updates, never
 * across a call into Python or an allocation, so it is safe from any thread,
 * with or without the GIL. Waking happens outside the lock: a waiter's wake
 * function only schedules (a task step, a callback Handle) or signals a
 * thread; it never runs user code inline.
 */
#ifndef TL_EVENT_H
#define TL_EVENT_H

#include "tl_common.h"
#include <stdatomic.h>

typedef struct tl_waiter tl_waiter;

/* Called once for a waiter taken off the list by a setter (or found the event
 * already set when added). `source` is the object that owns the Event (the
 * Future), borrowed. The Event never touches the waiter again. Returns -1
 * with an exception set when scheduling the wake-up failed. */
typedef int (*tl_wake_fn)(tl_waiter *w, PyObject *source);

/* What a waiter is; owners use it to find their own kinds in the list. */
enum {
    TL_WAITER_TASK = 1,         /* a Task to resume (tl_task.h) */
    TL_WAITER_CALLBACK,         /* a done-callback with its context */
    TL_WAITER_WAKER,            /* a thread or another loop to signal */
};

struct tl_waiter {
    tl_waiter *prev;
    tl_waiter *next;
    tl_wake_fn wake;
    uint32_t seq;               /* owner's tag (Future: callback order) */
    uint8_t kind;
    uint8_t linked;             /* on an Event's list right now */
    uint8_t after_callback;     /* tl_event_fire: a done callback came before it */
};

typedef struct {
    atomic_uchar held;
} tl_spinlock;

enum { TL_EVENT_CLEAR = 0, TL_EVENT_CLAIMED = 1, TL_EVENT_SET = 2 };

typedef struct tl_event {
    atomic_uchar state;         /* TL_EVENT_* */
    tl_spinlock lock;           /* guards head/tail and the waiters' links */
    tl_waiter *head;
    tl_waiter *tail;
} tl_event;

void tl_spin_lock(tl_spinlock *l);

static inline void tl_spin_unlock(tl_spinlock *l)
{
    atomic_store_explicit(&l->held, 0, memory_order_release);
}

static inline void tl_event_init(tl_event *ev)
{
    atomic_init(&ev->state, TL_EVENT_CLEAR);
    atomic_init(&ev->lock.held, 0);
    ev->head = ev->tail = NULL;
}

static inline void tl_waiter_init(tl_waiter *w, int kind, tl_wake_fn wake)
{
    w->prev = w->next = NULL;
    w->wake = wake;
    w->seq = 0;
    w->kind = (uint8_t)kind;
    w->linked = 0;
    w->after_callback = 0;
}

/* 1 once tl_event_fire() ran. */
static inline int tl_event_is_set(tl_event *ev)
{
    return atomic_load_explicit(&ev->state, memory_order_acquire) == TL_EVENT_SET;
}

/* 1 once someone claimed the event (it is set or about to be). */
static inline int tl_event_is_claimed(tl_event *ev)
{
    return atomic_load_explicit(&ev->state, memory_order_acquire) != TL_EVENT_CLEAR;
}

/* The right to set the event: 1 for exactly one caller, 0 for the others. */
static inline int tl_event_claim(tl_event *ev)
{
    unsigned char expected = TL_EVENT_CLEAR;
    return atomic_compare_exchange_strong_explicit(
        &ev->state, &expected, TL_EVENT_CLAIMED,
        memory_order_acq_rel, memory_order_acquire);
}

/* After a successful claim: mark the event set and wake every waiter, in the
 * order they were added. All are woken even if one fails; returns -1 (the
 * first error set) if any wake failed. */
int tl_event_fire(tl_event *ev, PyObject *source);

/* claim + fire: 1 when this call set the event, 0 when it was already
 * claimed, -1 when a wake failed. */
int tl_event_set(tl_event *ev, PyObject *source);

/* Queue a waiter: 0 when queued, 1 when the event is already set (the waiter
 * is then not queued; the caller decides whether to wake it). */
int tl_event_add(tl_event *ev, tl_waiter *w);

/* Take a queued waiter off the list in O(1): 1 when removed, 0 when it was
 * not queued any more (a setter detached it and will wake it, or did). */
int tl_event_remove(tl_event *ev, tl_waiter *w);

/* Detach every queued waiter without waking them, and clear the flag: for
 * owners that reset (Future.__init__ called again) or die. Returns the
 * detached chain (follow ->next); the caller disposes of each waiter. Not
 * for use while other threads may still add waiters. */
tl_waiter *tl_event_reset(tl_event *ev);

/* Block the calling thread (the GIL released) until the event is set or
 * `timeout` seconds pass (timeout < 0: no limit). 1 when set, 0 on timeout,
 * -1 with an exception set when a signal handler raised (Ctrl-C). A waiter
 * that gives up leaves the list in O(1). */
int tl_event_wait_thread(tl_event *ev, double timeout);

extern PyType_Spec tl_event_spec;

#endif

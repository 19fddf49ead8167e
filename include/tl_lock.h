/* tl_lock.h - the short-held mutex that guards state shared between threads
 * (the multi-threaded dispatcher's queues, the timer heap of a threaded loop).
 *
 * Held only for a few pointer updates, never across a call into Python, a
 * Py_DECREF that may run a finalizer, or anything that could wait for the
 * collector - except the loop lock (tl_loop.h: ev_mutex), which the loop
 * thread holds while it runs I/O callbacks and workers hold around
 * transport methods; waiting for it therefore always lets the GIL go. On 3.13+ it is CPython's PyMutex: one byte, one atomic
 * operation when free, and a waiter parks with its thread state detached, so
 * a free-threaded stop-the-world pause never waits for it (and the GIL is
 * released while it waits). 3.11 and 3.12 always have the GIL: a spin lock
 * that lets the GIL go while it waits, since the loop lock's holder may be
 * waiting for the GIL itself.
 */
#ifndef TL_LOCK_H
#define TL_LOCK_H

#include "tl_common.h"

#if PY_VERSION_HEX >= 0x030D0000
typedef PyMutex tl_mutex;

static inline void tl_mutex_lock(tl_mutex *m) { PyMutex_Lock(m); }
static inline void tl_mutex_unlock(tl_mutex *m) { PyMutex_Unlock(m); }

/* What PyMutex_Lock's own inline fast path does (cpython/lock.h: bit 0 is
 * "locked"); 1 when taken. */
static inline int tl_mutex_trylock(tl_mutex *m)
{
    uint8_t unlocked = 0;
    return __atomic_compare_exchange_n(&m->_bits, &unlocked, 1, 0, __ATOMIC_ACQUIRE,
                                       __ATOMIC_RELAXED);
}
#else
#include <sched.h>

typedef struct {
    atomic_uchar held;
} tl_mutex;

/* Contended: the holder may be waiting for the GIL we hold (a worker in
 * transport.write() while the loop thread wakes up): wait without it. */
static inline void tl_mutex_lock_slow(tl_mutex *m)
{
    PyThreadState *ts = PyGILState_Check() ? PyEval_SaveThread() : NULL;
    while (atomic_exchange_explicit(&m->held, 1, memory_order_acquire))
        sched_yield();
    if (ts != NULL)
        PyEval_RestoreThread(ts);
}

static inline int tl_mutex_trylock(tl_mutex *m)
{
    return !atomic_exchange_explicit(&m->held, 1, memory_order_acquire);
}

static inline void tl_mutex_lock(tl_mutex *m)
{
    if (TL_UNLIKELY(!tl_mutex_trylock(m)))
        tl_mutex_lock_slow(m);
}

static inline void tl_mutex_unlock(tl_mutex *m)
{
    atomic_store_explicit(&m->held, 0, memory_order_release);
}
#endif

/* A lock that a forked child inherits from a thread that does not exist
 * there: forget it. */
static inline void tl_mutex_reinit(tl_mutex *m)
{
    memset(m, 0, sizeof(*m));
}

/* Critical sections on an object (free-threaded builds); nothing where the
 * GIL already serializes (3.13 defines them empty there, older versions do
 * not have them). */
#ifndef Py_BEGIN_CRITICAL_SECTION
#define Py_BEGIN_CRITICAL_SECTION(op) {
#define Py_END_CRITICAL_SECTION() }
#endif

#endif

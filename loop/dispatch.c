/* dispatch.c - worker threads for Loop(threads=N) (see tl_dispatch.h).
 *
 * The scheduler is Go's: per-worker bounded run queues that the owner
 * fills at the tail and anyone empties from the head with a compare-and-
 * swap, a mutex-guarded global injector, batch stealing, parked idle
 * workers, at most one searching worker, and a "wake one only when nobody
 * searches" rule for whoever queues work. Every shared field is an atomic
 * or sits under a tl_mutex, so the same code is correct with the GIL and
 * without it.
 */
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdlib.h>
#include <time.h>
#ifdef __linux__
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

#include "tl_dispatch.h"

/* ThreadSanitizer does not model atomic_thread_fence (GCC says so, -Wtsan).
 * The two fences here (notify, worker_idle) pair up between atomics only: no
 * plain memory relies on them, so a TSan build keeps them and loses no check. */
#if defined(__SANITIZE_THREAD__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wtsan"
#endif

#define TL_RUNQ 256                 /* slots of a worker's run queue */
#define TL_DEFER 32                 /* strand items a running item may hold back */
#define TL_MAX_THREADS 256

enum { GATE_OPEN = 0, GATE_CLOSED = 1, GATE_EXIT = 2 };

/* ---- parking: one token per worker ------------------------------------- */

typedef struct {
    _Atomic uint32_t token;
#ifndef __linux__
    pthread_mutex_t mutex;
    pthread_cond_t cond;
#endif
} tl_parker;

static void parker_init(tl_parker *p)
{
    atomic_init(&p->token, 0);
#ifndef __linux__
    pthread_mutex_init(&p->mutex, NULL);
    pthread_cond_init(&p->cond, NULL);
#endif
}

static void parker_destroy(tl_parker *p)
{
#ifndef __linux__
    pthread_mutex_destroy(&p->mutex);
    pthread_cond_destroy(&p->cond);
#else
    TL_UNUSED(p);
#endif
}

/* Give the token; wakes the owner if it sleeps. Any thread, no thread
 * state needed. */
static void parker_unpark(tl_parker *p)
{
#ifdef __linux__
    if (atomic_exchange_explicit(&p->token, 1, memory_order_release) == 0)
        syscall(SYS_futex, &p->token, FUTEX_WAKE_PRIVATE, 1, NULL, NULL, 0);
#else
    pthread_mutex_lock(&p->mutex);
    atomic_store_explicit(&p->token, 1, memory_order_release);
    pthread_cond_signal(&p->cond);
    pthread_mutex_unlock(&p->mutex);
#endif
}

/* Sleep until the token is there and take it. Call detached (without the
 * GIL, or with the thread state detached without it). */
static void parker_park(tl_parker *p)
{
#ifdef __linux__
    while (atomic_exchange_explicit(&p->token, 0, memory_order_acquire) == 0)
        syscall(SYS_futex, &p->token, FUTEX_WAIT_PRIVATE, 0, NULL, NULL, 0);
#else
    pthread_mutex_lock(&p->mutex);
    while (atomic_exchange_explicit(&p->token, 0, memory_order_acquire) == 0)
        pthread_cond_wait(&p->cond, &p->mutex);
    pthread_mutex_unlock(&p->mutex);
#endif
}

/* ---- workers and the dispatcher ---------------------------------------- */

typedef struct {
    _Atomic(tl_ready_fn) fn;
    _Atomic(PyObject *) obj;
} tl_slot;

/* A strand item held back by the worker that queued it (tl_worker.defer). */
typedef struct {
    tl_strand *s;
    tl_ready_fn run;
    PyObject *owner;            /* strong: the strand lives in it */
    tl_ready_fn fn;
    PyObject *obj;
} tl_deferred;

typedef struct tl_worker {
    /* the run queue: head moves by compare-and-swap (owner and thieves),
     * tail is written by the owner only; separate cache lines */
    _Alignas(64) _Atomic uint32_t head;
    _Alignas(64) _Atomic uint32_t tail;
    _Alignas(64) tl_slot q[TL_RUNQ];
    tl_parker parker;
    struct tl_dispatch *d;
    PyObject *key;              /* current_task() key (worker_key) */
    pthread_t thread;
    int index;
    uint8_t has_thread;
    _Atomic uint8_t entered;    /* sees the loop as running (worker_enter) */
    uint8_t idle;               /* on the idle stack (d->idle_lock) */
    _Atomic uint8_t searching;  /* woken to search (counted in nsearching) */
    uint32_t rng;               /* where to start stealing */
    uint32_t tick;              /* items run: every 61st looks at the injector first */
    char debug;                 /* the loop's debug mode as last applied */
    /* While an item runs, what it schedules here is held back (slots
     * written up to held_tail, tail not moved) until it returns: a task
     * step that creates tasks or queues callbacks finishes before any of
     * them starts, as on asyncio's single thread (asyncio.gather() adds its
     * done callbacks to the children it just created, and only then makes
     * the future they report to). Owner only. */
    uint8_t holding;
    uint32_t held_tail;
    /* 3.11-3.13: inside an item, as seen by an asyncio-native task's step
     * that must run alone (tl_dispatch_native_begin) */
    _Atomic uint8_t in_item;
    uint8_t alone;              /* it is the one that runs alone */
    uint8_t alone_item;         /* ... until its item ends (is_running()) */
    /* The same for strand items: queued when the item returns, those of one
     * strand at once. A task's done callbacks (a TaskGroup's, then the
     * user's) thus land in one batch of the loop's strand: the task woken by
     * the first does not start before the second has run, as in asyncio's
     * FIFO (one by one, the strand could start between the two and publish
     * the wake-up first). */
    uint32_t ndefer;
    tl_deferred defer[TL_DEFER];
    uint8_t queued_callback;    /* this item pushed onto the loop's strand */
} tl_worker;

typedef struct tl_rpc {
    struct tl_rpc *next;
    PyObject *(*fn)(tl_loop *, PyObject *);
    PyObject *arg;
    PyObject *result;
    PyObject *exc;
    _Atomic int done;
    tl_parker parker;
} tl_rpc;

typedef struct tl_dispatch {
    tl_loop *loop;              /* borrowed: the loop owns the dispatcher */
    PyInterpreterState *interp;
    int nworkers;
    tl_worker **workers;
    uint8_t started;            /* the threads exist */
    /* After stop(): how many more items may start before the gate closes
     * (the work queued when it was called: asyncio's iteration runs what
     * was ready when it began); -1 when no stop is pending */
    _Atomic int stop_budget;
    _Atomic int gate;           /* GATE_* */
    _Atomic int nbusy;          /* started workers that are not parked */
    _Atomic int nentered;       /* workers that see the loop as running */
    _Atomic int nsearching;     /* workers looking for work (0 or 1) */
    _Atomic int nidle;          /* workers on the idle stack */
    _Atomic int native_alone;   /* an asyncio-native task's step runs alone */
    tl_mutex idle_lock;
    tl_worker **idle;           /* the idle stack */
    int nidle_stack;

    tl_mutex inj_lock;          /* the injector */
    tl_ready inj;
    _Atomic size_t inj_len;
    /* what the loop thread queues while it holds the loop lock (the I/O
     * and timers of one poll): published when it lets the lock go, so that
     * the workers it wakes do not queue up on the lock it still holds */
    tl_ready held;

    tl_strand strand;           /* the loop's callbacks */

    tl_mutex err_lock;
    PyObject *error;            /* what stopped the workers */

    tl_mutex rpc_lock;
    tl_rpc *rpc_head;
    tl_rpc *rpc_tail;
} tl_dispatch;

/* current_task()'s key for one worker (see the end of this file) */
typedef struct {
    PyObject_HEAD
    tl_loop *loop;              /* borrowed; compared by address only */
    tl_worker *worker;
    Py_hash_t hash;
} worker_key;

/* The worker running on this thread, if any. initial-exec: a plain
 * thread-pointer load (a few bytes of the static TLS reserve). */
static _Thread_local tl_worker *tl_self __attribute__((tls_model("initial-exec")));
static _Thread_local int tl_key_private __attribute__((tls_model("initial-exec")));
/* The dispatcher whose loop this thread runs (tl_dispatch_run) */
static _Thread_local tl_dispatch *tl_polling __attribute__((tls_model("initial-exec")));

int tl_dispatch_nthreads(tl_loop *loop)
{
    return loop->dispatch ? loop->dispatch->nworkers : 0;
}

size_t tl_dispatch_backlog(tl_loop *loop)
{
    tl_strand *s = &loop->dispatch->strand;
    tl_mutex_lock(&s->lock);
    size_t n = s->q.len;
    tl_mutex_unlock(&s->lock);
    return n;
}

int tl_dispatch_on_worker(tl_loop *loop)
{
    tl_worker *w = tl_self;
    return w != NULL && loop->dispatch != NULL && w->d == loop->dispatch;
}

static void wake_loop_thread(tl_dispatch *d)
{
    tl_loop *loop = d->loop;
    if (loop->ev != NULL)
        ev_async_send(loop->ev, &loop->wakeup);
}

/* ---- a worker's run queue (Go's runq) ---------------------------------- */

static inline void slot_store(tl_slot *s, tl_ready_fn fn, PyObject *obj)
{
    atomic_store_explicit(&s->fn, fn, memory_order_relaxed);
    atomic_store_explicit(&s->obj, obj, memory_order_relaxed);
}

static inline tl_ready_item slot_load(tl_slot *s)
{
    tl_ready_item it;
    it.fn = atomic_load_explicit(&s->fn, memory_order_relaxed);
    it.obj = atomic_load_explicit(&s->obj, memory_order_relaxed);
    return it;
}

static int injector_put_many(tl_dispatch *d, tl_ready_item *items, size_t n);

/* Move half of a full queue plus the new item to the injector; 0 when the
 * queue changed meanwhile (try again). */
static int runq_put_slow(tl_worker *w, tl_ready_fn fn, PyObject *obj, uint32_t h, uint32_t t)
{
    tl_ready_item batch[TL_RUNQ / 2 + 1];
    uint32_t n = (t - h) / 2;
    for (uint32_t i = 0; i < n; i++)
        batch[i] = slot_load(&w->q[(h + i) % TL_RUNQ]);
    if (!atomic_compare_exchange_strong_explicit(&w->head, &h, h + n, memory_order_acq_rel,
                                                 memory_order_relaxed))
        return 0;
    batch[n].fn = fn;
    batch[n].obj = obj;
    injector_put_many(w->d, batch, n + 1);
    return 1;
}

/* Owner only: make what the item just run scheduled visible. */
static inline int runq_publish(tl_worker *w)
{
    uint32_t t = atomic_load_explicit(&w->tail, memory_order_relaxed);
    if (w->held_tail == t)
        return 0;
    atomic_store_explicit(&w->tail, w->held_tail, memory_order_release);
    return 1;
}

/* Owner only. */
static void runq_put(tl_worker *w, tl_ready_fn fn, PyObject *obj)
{
    if (w->holding) {
        uint32_t h = atomic_load_explicit(&w->head, memory_order_acquire);
        uint32_t t = w->held_tail;
        if (t - h < TL_RUNQ) {
            slot_store(&w->q[t % TL_RUNQ], fn, obj);
            w->held_tail = t + 1;
            return;
        }
        runq_publish(w);        /* full: the slow path below moves half out */
    }
    for (;;) {
        uint32_t h = atomic_load_explicit(&w->head, memory_order_acquire);
        uint32_t t = atomic_load_explicit(&w->tail, memory_order_relaxed);
        if (t - h < TL_RUNQ) {
            slot_store(&w->q[t % TL_RUNQ], fn, obj);
            atomic_store_explicit(&w->tail, t + 1, memory_order_release);
            break;
        }
        if (runq_put_slow(w, fn, obj, h, t))
            break;
    }
    w->held_tail = atomic_load_explicit(&w->tail, memory_order_relaxed);
}

/* Owner only. */
static int runq_get(tl_worker *w, tl_ready_item *out)
{
    for (;;) {
        uint32_t h = atomic_load_explicit(&w->head, memory_order_acquire);
        uint32_t t = atomic_load_explicit(&w->tail, memory_order_relaxed);
        if (t == h)
            return 0;
        tl_ready_item it = slot_load(&w->q[h % TL_RUNQ]);
        if (atomic_compare_exchange_strong_explicit(&w->head, &h, h + 1, memory_order_acq_rel,
                                                     memory_order_relaxed)) {
            *out = it;
            return 1;
        }
    }
}

static inline uint32_t runq_len(tl_worker *w)
{
    uint32_t h = atomic_load_explicit(&w->head, memory_order_acquire);
    uint32_t t = atomic_load_explicit(&w->tail, memory_order_acquire);
    return t - h;
}

/* Take half of victim's queue into w's (empty) queue; returns how many. */
static uint32_t runq_grab(tl_worker *w, tl_worker *victim)
{
    uint32_t t = atomic_load_explicit(&w->tail, memory_order_relaxed);
    for (;;) {
        uint32_t h = atomic_load_explicit(&victim->head, memory_order_acquire);
        uint32_t vt = atomic_load_explicit(&victim->tail, memory_order_acquire);
        uint32_t n = vt - h;
        n = n - n / 2;
        if (n == 0)
            return 0;
        if (n > TL_RUNQ / 2)
            continue;   /* read head and tail at different times: again */
        for (uint32_t i = 0; i < n; i++) {
            tl_ready_item it = slot_load(&victim->q[(h + i) % TL_RUNQ]);
            slot_store(&w->q[(t + i) % TL_RUNQ], it.fn, it.obj);
        }
        if (atomic_compare_exchange_strong_explicit(&victim->head, &h, h + n,
                                                     memory_order_acq_rel, memory_order_relaxed))
            return n;
    }
}

/* ---- the injector ------------------------------------------------------ */

static int injector_reserve(tl_dispatch *d, size_t n)
{
    while (d->inj.cap - d->inj.len < n) {
        if (tl_ready_grow(&d->inj) < 0)
            return -1;
    }
    return 0;
}

static int injector_put_many(tl_dispatch *d, tl_ready_item *items, size_t n)
{
    tl_mutex_lock(&d->inj_lock);
    if (injector_reserve(d, n) < 0) {
        tl_mutex_unlock(&d->inj_lock);
        /* nowhere to keep them: they are lost, say so loudly */
        PyErr_WriteUnraisable((PyObject *)d->loop);
        for (size_t i = 0; i < n; i++)
            tl_loop_unqueue(items[i].obj);
        return -1;
    }
    for (size_t i = 0; i < n; i++)
        tl_ready_push(&d->inj, items[i].fn, items[i].obj);
    atomic_store_explicit(&d->inj_len, d->inj.len, memory_order_release);
    tl_mutex_unlock(&d->inj_lock);
    return 0;
}

/* One item for w, and (`share`) a share of the rest into w's queue, as
 * much as fits. */
static int injector_take(tl_worker *w, tl_ready_item *out, int share_rest)
{
    tl_dispatch *d = w->d;
    if (atomic_load_explicit(&d->inj_len, memory_order_acquire) == 0)
        return 0;
    tl_mutex_lock(&d->inj_lock);
    size_t n = d->inj.len;
    if (n == 0) {
        tl_mutex_unlock(&d->inj_lock);
        return 0;
    }
    *out = tl_ready_pop(&d->inj);
    size_t share = share_rest ? n / (size_t)d->nworkers : 0;
    if (share > TL_RUNQ / 2)
        share = TL_RUNQ / 2;
    if (share > n - 1)
        share = n - 1;
    size_t room = TL_RUNQ - runq_len(w);
    if (share > room)
        share = room;
    uint32_t t = atomic_load_explicit(&w->tail, memory_order_relaxed);
    for (size_t i = 0; i < share; i++) {
        tl_ready_item it = tl_ready_pop(&d->inj);
        slot_store(&w->q[(t + i) % TL_RUNQ], it.fn, it.obj);
    }
    atomic_store_explicit(&w->tail, t + (uint32_t)share, memory_order_release);
    atomic_store_explicit(&d->inj_len, d->inj.len, memory_order_release);
    tl_mutex_unlock(&d->inj_lock);
    return 1;
}

/* ---- waking and parking ------------------------------------------------ */

static int work_visible(tl_dispatch *d)
{
    if (atomic_load_explicit(&d->inj_len, memory_order_acquire))
        return 1;
    for (int i = 0; i < d->nworkers; i++)
        if (runq_len(d->workers[i]))
            return 1;
    return 0;
}

/* Someone queued work: get a parked worker searching, unless one searches
 * already (it will find the work, and wake the next one if there is more). */
static void wake_one(tl_dispatch *d)
{
    int zero = 0;
    if (!atomic_compare_exchange_strong(&d->nsearching, &zero, 1))
        return;
    tl_worker *w = NULL;
    tl_mutex_lock(&d->idle_lock);
    if (d->nidle_stack > 0) {
        w = d->idle[--d->nidle_stack];
        w->idle = 0;
        atomic_fetch_sub(&d->nidle, 1);
    }
    tl_mutex_unlock(&d->idle_lock);
    if (w == NULL) {
        atomic_fetch_sub(&d->nsearching, 1);
        return;
    }
    atomic_store_explicit(&w->searching, 1, memory_order_relaxed);
    parker_unpark(&w->parker);
}

static void notify(tl_dispatch *d)
{
    /* pairs with the fence in worker_idle: either we see the idle worker,
     * or it sees our work */
    atomic_thread_fence(memory_order_seq_cst);
    if (atomic_load_explicit(&d->nsearching, memory_order_relaxed) == 0 &&
        atomic_load_explicit(&d->nidle, memory_order_relaxed) > 0 &&
        atomic_load_explicit(&d->gate, memory_order_relaxed) == GATE_OPEN)
        wake_one(d);
}

static void idle_remove(tl_dispatch *d, tl_worker *w)
{
    tl_mutex_lock(&d->idle_lock);
    if (w->idle) {
        for (int i = 0; i < d->nidle_stack; i++) {
            if (d->idle[i] == w) {
                d->idle[i] = d->idle[--d->nidle_stack];
                break;
            }
        }
        w->idle = 0;
        atomic_fetch_sub(&d->nidle, 1);
    }
    tl_mutex_unlock(&d->idle_lock);
}

/* Sleep until unparked, detached from the interpreter. */
static void worker_sleep(tl_worker *w)
{
    tl_dispatch *d = w->d;
    if (atomic_fetch_sub(&d->nbusy, 1) == 1 &&
        atomic_load(&d->gate) != GATE_OPEN)
        wake_loop_thread(d);    /* the last one: the loop may return */
    Py_BEGIN_ALLOW_THREADS
    parker_park(&w->parker);
    Py_END_ALLOW_THREADS
    atomic_fetch_add(&d->nbusy, 1);
}

static void end_search(tl_worker *w)
{
    if (atomic_exchange_explicit(&w->searching, 0, memory_order_relaxed))
        atomic_fetch_sub(&w->d->nsearching, 1);
}

/* Nothing found: go on the idle stack, look once more, sleep. */
static void worker_idle(tl_worker *w)
{
    tl_dispatch *d = w->d;
    tl_mutex_lock(&d->idle_lock);
    d->idle[d->nidle_stack++] = w;
    w->idle = 1;
    atomic_fetch_add(&d->nidle, 1);
    tl_mutex_unlock(&d->idle_lock);
    end_search(w);
    atomic_thread_fence(memory_order_seq_cst);
    if (work_visible(d) && atomic_load(&d->gate) == GATE_OPEN) {
        tl_mutex_lock(&d->idle_lock);
        int still = w->idle;
        tl_mutex_unlock(&d->idle_lock);
        if (still) {
            idle_remove(d, w);
            /* work seen but not taken (a race with its owner): let the
             * others run before looking again, never spin on the GIL */
            Py_BEGIN_ALLOW_THREADS
            sched_yield();
            Py_END_ALLOW_THREADS
            return;
        }
        /* a waker took us off the stack: its token is on the way */
    }
    worker_sleep(w);
    idle_remove(d, w);     /* woken by a broadcast rather than a waker */
}

/* ---- running work ------------------------------------------------------- */

static void dispatch_fail(tl_dispatch *d)
{
    PyObject *exc = PyErr_GetRaisedException();
    tl_mutex_lock(&d->err_lock);
    PyObject *keep = d->error == NULL ? exc : NULL;
    if (keep != NULL)
        d->error = keep;
    tl_mutex_unlock(&d->err_lock);
    if (keep == NULL)
        Py_XDECREF(exc);
    atomic_store(&d->gate, GATE_CLOSED);
    wake_loop_thread(d);
}

static void strand_flush(tl_worker *w);

/* The end of a strand's or a serial's item: what it queued on strands lands
 * now, before its owner may run again on another worker, whose pushes must
 * come after these (run_item's flush would be too late: a pipe's
 * data_received() calls call_soon in order, and two batches' calls swapped
 * places, as two steps' of a task could). */
static void flush_before_release(tl_loop *loop, int rc)
{
    tl_worker *w = tl_self;
    if (w == NULL || w->ndefer == 0 || w->d != loop->dispatch)
        return;
    PyObject *exc = rc < 0 ? PyErr_GetRaisedException() : NULL;
    strand_flush(w);
    if (exc != NULL)
        PyErr_SetRaisedException(exc);
}

/* ---- asyncio's own tasks, 3.11-3.13 ------------------------------------
 *
 * Up to 3.13 asyncio keeps the current task in a dict keyed by the loop.
 * Our tasks file themselves under their worker's key (the end of this
 * file), but an asyncio-native Task (asyncio.Task(coro, loop=loop): aiohttp
 * makes them) enters under the loop object itself, and every other
 * worker's current_task() then finds that entry by identity, before its
 * own. So a native task's step runs alone: it waits until no other worker
 * is inside an item, and none starts one until it is done. Items check in
 * with a flag of their own (no shared counter to bounce between cores);
 * the seq_cst pair (the item's flag, then native_alone; native_alone, then
 * the flags) makes one of the two sides see the other. 3.14 keeps the
 * current task per thread: none of this there. */
#if PY_VERSION_HEX < 0x030E0000
static void nap_without_gil(void)
{
    struct timespec ts = {0, 20 * 1000};
    nanosleep(&ts, NULL);
}

/* Until the lone step is over; the caller does not count as inside an item. */
static void wait_alone_over(tl_dispatch *d)
{
    Py_BEGIN_ALLOW_THREADS
    while (atomic_load(&d->native_alone))
        nap_without_gil();
    Py_END_ALLOW_THREADS
}

/* The loop lock, when this worker holds it: let go of it, 1. */
static int loop_lock_drop(tl_loop *loop)
{
    if (!loop->shared || atomic_load_explicit(&loop->ev_owner, memory_order_relaxed) !=
                             PyThread_get_thread_ident())
        return 0;
    tl_loop_ev_unlock(loop, 1);
    return 1;
}

static void loop_lock_take(tl_loop *loop)
{
    tl_mutex_lock(&loop->ev_mutex);
    atomic_store_explicit(&loop->ev_owner, PyThread_get_thread_ident(), memory_order_relaxed);
}

/* Another worker's step runs alone, or is about to: it waits for this one to
 * leave its item, and it may want the loop lock, which this item may hold
 * (a strand's connection_made() holds it when aiohttp starts an eager
 * asyncio task there, and asks loop.is_running() while a task step on
 * another worker does the same: the one that lost the race waited holding
 * the lock the winner's transport.write() wanted). So the lock goes for the
 * wait and is taken back out of the item, as tl_dispatch_lock_in_item does. */
static TL_NOINLINE void item_wait_alone(tl_worker *w)
{
    tl_loop *loop = w->d->loop;
    int held = loop_lock_drop(loop);
    for (;;) {
        atomic_store(&w->in_item, 0);
        wait_alone_over(w->d);
        if (held)
            loop_lock_take(loop);
        atomic_store(&w->in_item, 1);
        if (!atomic_load(&w->d->native_alone))
            return;
        if (held)
            tl_loop_ev_unlock(loop, 1);
    }
}

static inline void item_check_in(tl_worker *w)
{
    atomic_store(&w->in_item, 1);
    if (TL_UNLIKELY(atomic_load(&w->d->native_alone)))
        item_wait_alone(w);
}

static inline void item_check_out(tl_worker *w)
{
    atomic_store_explicit(&w->in_item, 0, memory_order_release);
}

int tl_dispatch_native_begin(tl_loop *loop)
{
    tl_worker *w = tl_self;
    tl_dispatch *d = loop->dispatch;
    if (w == NULL || d == NULL || w->d != d || w->alone)
        return 0;               /* not on a worker, or alone already (Handle._run() by hand) */
    int zero = 0;
    while (!atomic_compare_exchange_strong(&d->native_alone, &zero, 1)) {
        zero = 0;
        item_wait_alone(w);     /* another one runs alone: after it */
    }
    w->alone = 1;
    Py_BEGIN_ALLOW_THREADS
    for (int i = 0; i < d->nworkers; i++) {
        tl_worker *v = d->workers[i];
        while (v != w && atomic_load(&v->in_item))
            nap_without_gil();
    }
    Py_END_ALLOW_THREADS
    return 1;
}

void tl_dispatch_native_end(tl_loop *loop)
{
    tl_self->alone = 0;
    atomic_store(&loop->dispatch->native_alone, 0);
}

#if PY_VERSION_HEX >= 0x030C0000
/* asyncio's Task(coro, loop=loop, eager_start=True) asks loop.is_running()
 * and then runs its first step at once, inside whatever item made it
 * (aiohttp's connection_made), entered under the loop object like any
 * native step but outside a step of its own that handle.c would see. Our
 * tasks start eagerly without asking. */
void tl_dispatch_alone_rest_of_item(tl_loop *loop)
{
    tl_worker *w = tl_self;
    if (w != NULL && atomic_load_explicit(&w->in_item, memory_order_relaxed) &&
        tl_dispatch_native_begin(loop))
        w->alone_item = 1;
}
#endif

static inline void item_alone_end(tl_worker *w)
{
    if (TL_UNLIKELY(w->alone_item)) {
        w->alone_item = 0;
        tl_dispatch_native_end(w->d->loop);
    }
}

/* A worker blocked inside its item (on a lock, on the loop thread) is not
 * running it: an item that runs alone need not wait for it, and may hold
 * the very lock it waits for. pause: 1 when it was inside an item. resume:
 * 0 when a lone step runs elsewhere now; let go of what the wait took,
 * wait_alone_over(), try again (never wait holding what the lone step may
 * want). */
static int item_pause(tl_worker *w)
{
    if (w == NULL || !atomic_load_explicit(&w->in_item, memory_order_relaxed))
        return 0;
    atomic_store(&w->in_item, 0);
    return 1;
}

static int item_resume(tl_worker *w, int paused)
{
    if (!paused)
        return 1;
    atomic_store(&w->in_item, 1);
    if (TL_LIKELY(!atomic_load(&w->d->native_alone)) || w->alone)
        return 1;
    atomic_store(&w->in_item, 0);
    return 0;
}

void tl_dispatch_lock_in_item(tl_mutex *m)
{
    tl_worker *w = tl_self;
    /* once: after a try that let go, the worker is still out of its item
     * (asking again would find it out and leave it out for the rest of the
     * item, where a lone step would then not wait for it) */
    int paused = item_pause(w);
    for (;;) {
        tl_mutex_lock(m);
        if (item_resume(w, paused))
            return;
        tl_mutex_unlock(m);
        /* a step lock's waiter may hold the loop lock: item_wait_alone */
        int held = loop_lock_drop(w->d->loop);
        wait_alone_over(w->d);
        if (held)
            loop_lock_take(w->d->loop);
    }
}
#else
static inline void item_check_in(tl_worker *w)
{
    TL_UNUSED(w);
}

static inline void item_check_out(tl_worker *w)
{
    TL_UNUSED(w);
}

static inline void item_alone_end(tl_worker *w)
{
    TL_UNUSED(w);
}

static int item_pause(tl_worker *w)
{
    TL_UNUSED(w);
    return 0;
}

static int item_resume(tl_worker *w, int paused)
{
    TL_UNUSED(w);
    TL_UNUSED(paused);
    return 1;
}

static void wait_alone_over(tl_dispatch *d)
{
    TL_UNUSED(d);
}

void tl_dispatch_lock_in_item(tl_mutex *m)
{
    tl_mutex_lock(m);
}
#endif

static inline void run_item(tl_worker *w, tl_ready_item it)
{
    tl_loop *loop = w->d->loop;
    item_check_in(w);
    w->held_tail = atomic_load_explicit(&w->tail, memory_order_relaxed);
    w->holding = 1;
    w->queued_callback = 0;
    int rc = it.fn(loop, it.obj);
    flush_before_release(loop, rc);     /* what is left of its strand pushes */
    w->holding = 0;
    if (runq_publish(w))
        notify(w->d);
    tl_loop_unqueue(it.obj);
    item_alone_end(w);
    item_check_out(w);
    if (TL_UNLIKELY(rc < 0))
        dispatch_fail(w->d);
}

static int steal(tl_worker *w, tl_ready_item *out)
{
    tl_dispatch *d = w->d;
    int n = d->nworkers;
    w->rng = w->rng * 1103515245u + 12345u;
    int start = (int)((w->rng >> 16) % (uint32_t)n);
    for (int k = 0; k < n; k++) {
        tl_worker *victim = d->workers[(start + k) % n];
        if (victim == w)
            continue;
        uint32_t got = runq_grab(w, victim);
        if (got == 0)
            continue;
        /* run the last one now, publish the others */
        uint32_t t = atomic_load_explicit(&w->tail, memory_order_relaxed);
        *out = slot_load(&w->q[(t + got - 1) % TL_RUNQ]);
        atomic_store_explicit(&w->tail, t + got - 1, memory_order_release);
        return 1;
    }
    return 0;
}

/* Debug mode tracks where coroutines were made, a per-thread setting
 * (asyncio's _set_coroutine_origin_tracking): follow the loop's. */
static void worker_sync_debug(tl_worker *w)
{
    char debug = w->d->loop->debug;
    w->debug = debug;
    PyObject *depth = NULL;
    if (debug) {
        PyObject *constants = PyImport_ImportModule("asyncio.constants");
        depth = constants ? PyObject_GetAttrString(constants, "DEBUG_STACK_DEPTH") : NULL;
        Py_XDECREF(constants);
    } else {
        depth = PyLong_FromLong(0);
    }
    PyObject *sys = depth ? PyImport_ImportModule("sys") : NULL;
    PyObject *r = sys ? PyObject_CallMethod(sys, "set_coroutine_origin_tracking_depth", "O",
                                            depth) : NULL;
    Py_XDECREF(sys);
    Py_XDECREF(depth);
    if (r == NULL)
        PyErr_WriteUnraisable((PyObject *)w->d->loop);
    Py_XDECREF(r);
}

/* ---- the per-thread view of the loop ------------------------------------ */

/* While the loop runs, workers see it as running (get_running_loop(),
 * current_task()) and finalize async generators through it, as its own
 * thread does. Between runs they hold nothing of it: a loop dropped without
 * close() is then freed, its workers with it (the thread state would keep it
 * alive otherwise, where the collector cannot see). */
static int worker_set_view(tl_worker *w, PyObject *running, PyObject *firstiter,
                           PyObject *finalizer)
{
    tl_state *st = w->d->loop->st;
    if (tl_loop_set_running(w->d->loop, running) < 0)
        return -1;
    PyObject *args[2] = {firstiter, finalizer};
    PyObject *r = PyObject_Vectorcall(st->set_asyncgen_hooks, args, 2, NULL);
    Py_XDECREF(r);
    return r != NULL ? 0 : -1;
}

static void worker_enter(tl_worker *w)
{
    tl_loop *loop = w->d->loop;
    tl_state *st = loop->st;
    atomic_fetch_add(&w->d->nentered, 1);
    atomic_store_explicit(&w->entered, 1, memory_order_relaxed);
    PyObject *firstiter = PyObject_GetAttr((PyObject *)loop, st->str_asyncgen_firstiter_hook);
    PyObject *finalizer = firstiter ? PyObject_GetAttr((PyObject *)loop,
                                                       st->str_asyncgen_finalizer_hook) : NULL;
    if (finalizer == NULL ||
        worker_set_view(w, (PyObject *)loop, firstiter, finalizer) < 0)
        PyErr_WriteUnraisable((PyObject *)loop);
    Py_XDECREF(firstiter);
    Py_XDECREF(finalizer);
}

/* Before the worker parks (nbusy): the loop thread waits for both counts. */
static void worker_leave(tl_worker *w)
{
    tl_dispatch *d = w->d;
    if (worker_set_view(w, Py_None, Py_None, Py_None) < 0)
        PyErr_WriteUnraisable((PyObject *)d->loop);
    atomic_store_explicit(&w->entered, 0, memory_order_relaxed);
    if (atomic_fetch_sub(&d->nentered, 1) == 1)
        wake_loop_thread(d);
}

/* ---- stopping ------------------------------------------------------------ */

static void gate_close(tl_dispatch *d)
{
    atomic_store(&d->gate, GATE_CLOSED);
    wake_loop_thread(d);
}

/* Items queued and not started: the injector's, the workers' and the loop
 * thread's unpublished ones. A snapshot; the queues move meanwhile. */
static int queued_count(tl_dispatch *d)
{
    size_t n = atomic_load(&d->inj_len) + d->held.len;
    for (int i = 0; i < d->nworkers; i++)
        n += runq_len(d->workers[i]);
    return n > INT_MAX ? INT_MAX : (int)n;
}

/* stop(): what is queued now still runs (each loop strand item runs its
 * batch), what it schedules waits for the next run; what runs finishes. */
static void stop_after_queued(tl_dispatch *d)
{
    int n = queued_count(d);
    if (n == 0)
        gate_close(d);
    else
        atomic_store(&d->stop_budget, n);
}

/* A worker starts an item while a stop is pending: the last one budgeted
 * closes the gate. */
static void stop_budget_take(tl_dispatch *d)
{
    if (atomic_fetch_sub(&d->stop_budget, 1) == 1)
        gate_close(d);
}

static void worker_loop(tl_worker *w)
{
    tl_dispatch *d = w->d;
    tl_ready_item it;
    for (;;) {
        int gate = atomic_load_explicit(&d->gate, memory_order_acquire);
        if (gate != GATE_OPEN) {
            end_search(w);
            if (atomic_load_explicit(&w->entered, memory_order_relaxed))
                worker_leave(w);
            if (gate == GATE_EXIT)
                return;
            worker_sleep(w);
            continue;
        }
        if (TL_UNLIKELY(!atomic_load_explicit(&w->entered, memory_order_relaxed)))
            worker_enter(w);
        if (TL_UNLIKELY(w->debug != d->loop->debug))
            worker_sync_debug(w);
        /* Go's fairness rule: now and then the injector goes first, or a
         * worker whose tasks keep rescheduling themselves would leave the
         * loop thread's wake-ups there forever */
        int found = (++w->tick % 61 == 0 && injector_take(w, &it, 0)) || runq_get(w, &it) ||
                    injector_take(w, &it, 1);
        if (found) {
            if (TL_UNLIKELY(atomic_load_explicit(&d->stop_budget, memory_order_relaxed) >= 0))
                stop_budget_take(d);
            if (atomic_load_explicit(&w->searching, memory_order_relaxed)) {
                /* woken to search and found: the next idle one may look */
                end_search(w);
                if (runq_len(w) || atomic_load(&d->inj_len))
                    notify(d);
            }
            run_item(w, it);
            continue;
        }
        int searching = atomic_load_explicit(&w->searching, memory_order_relaxed);
        if (!searching) {
            int zero = 0;
            searching = atomic_compare_exchange_strong(&d->nsearching, &zero, 1);
            if (searching)
                atomic_store_explicit(&w->searching, 1, memory_order_relaxed);
        }
        /* Not the searcher: still take what is in sight rather than idle
         * beside it (the searcher may be busy waiting for the GIL). */
        if (searching || work_visible(d)) {
            int found = steal(w, &it) || injector_take(w, &it, 1);
            end_search(w);
            if (found) {
                if (TL_UNLIKELY(atomic_load_explicit(&d->stop_budget,
                                                     memory_order_relaxed) >= 0))
                    stop_budget_take(d);
                /* more where that came from: let another one look */
                if (runq_len(w) || atomic_load(&d->inj_len))
                    notify(d);
                run_item(w, it);
                continue;
            }
        }
        if (TL_UNLIKELY(atomic_load(&d->stop_budget) >= 0)) {
            /* stopping, and what was queued ran elsewhere */
            gate_close(d);
            continue;
        }
        worker_idle(w);
    }
}

static void *worker_main(void *arg)
{
    tl_worker *w = arg;
    tl_dispatch *d = w->d;
#ifdef __linux__
    char name[16];
    snprintf(name, sizeof(name), "tonio-w%d", w->index);
    pthread_setname_np(pthread_self(), name);
#endif
    PyThreadState *ts = PyThreadState_New(d->interp);
    if (ts == NULL)
        return NULL;
    PyEval_RestoreThread(ts);
    tl_self = w;
    worker_loop(w);
    tl_self = NULL;
    atomic_fetch_sub(&d->nbusy, 1);
    PyThreadState_Clear(ts);
    PyThreadState_DeleteCurrent();
    return NULL;
}

/* ---- public: scheduling ------------------------------------------------- */

/* Room for one more held item; without it the item is published at once. */
static int held_room(tl_dispatch *d)
{
    if (d->held.len < d->held.cap)
        return 1;
    PyObject *pending = PyErr_GetRaisedException();  /* the caller's, kept */
    int ok = tl_ready_grow_from(&d->held, 64) == 0;
    if (!ok)
        PyErr_Clear();
    PyErr_SetRaisedException(pending);
    return ok;
}

int tl_dispatch_push(tl_loop *loop, tl_ready_fn fn, PyObject *obj)
{
    tl_dispatch *d = loop->dispatch;
    tl_worker *w = tl_self;
    if (w != NULL && w->d == d) {
        runq_put(w, fn, obj);
        if (w->holding)
            return 0;           /* run_item() publishes and notifies */
    } else if (tl_polling == d && held_room(d)) {
        tl_ready_push(&d->held, fn, obj);
        return 0;               /* tl_dispatch_publish_held() */
    } else {
        tl_ready_item it = {fn, obj};
        if (injector_put_many(d, &it, 1) < 0)
            return -1;
    }
    notify(d);
    return 0;
}

void tl_dispatch_publish_held(tl_loop *loop)
{
    tl_dispatch *d = loop->dispatch;
    if (d == NULL || d->held.len == 0)
        return;
    tl_ready_item batch[64];
    while (d->held.len) {
        size_t n = 0;
        while (n < 64 && d->held.len)
            batch[n++] = tl_ready_pop(&d->held);
        injector_put_many(d, batch, n);   /* on failure it said so, loudly */
    }
    notify(d);
}

/* Append items[0..n) to s, scheduling it (as run(owner)) when it was idle.
 * Steals the references to the items' objects. */
static int strand_append(tl_loop *loop, tl_strand *s, tl_ready_fn run, PyObject *owner,
                         const tl_deferred *items, size_t n)
{
    size_t pushed = 0;
    tl_mutex_lock(&s->lock);
    for (; pushed < n; pushed++) {
        /* a transport's strand rarely holds more than a few items */
        if (s->q.len == s->q.cap && tl_ready_grow_from(&s->q, 4) < 0)
            break;
        tl_ready_push(&s->q, items[pushed].fn, items[pushed].obj);
    }
    int schedule = pushed > 0 && !s->scheduled;
    if (schedule)
        s->scheduled = 1;
    tl_mutex_unlock(&s->lock);
    int rc = pushed < n ? -1 : 0;
    for (size_t i = pushed; i < n; i++)
        Py_DECREF(items[i].obj);
    if (schedule && tl_dispatch_push(loop, run, Py_NewRef(owner)) < 0)
        rc = -1;
    return rc;
}

/* Queue what the worker's running item held back, in order, each strand's
 * consecutive items at once. */
static void strand_flush(tl_worker *w)
{
    tl_loop *loop = w->d->loop;
    tl_deferred items[TL_DEFER];
    /* a copy: what a release below runs (a finalizer's call_soon) defers anew */
    while (w->ndefer > 0) {
        uint32_t n = w->ndefer;
        memcpy(items, w->defer, n * sizeof(items[0]));
        w->ndefer = 0;
        for (uint32_t i = 0; i < n;) {
            uint32_t j = i + 1;
            while (j < n && items[j].s == items[i].s)
                j++;
            PyObject *owner = items[i].owner;
            if (strand_append(loop, items[i].s, items[i].run, owner, &items[i], j - i) < 0)
                PyErr_WriteUnraisable(owner);
            for (uint32_t k = i; k < j; k++)
                Py_DECREF(items[k].owner);
            i = j;
        }
    }
}

int tl_strand_push(tl_loop *loop, tl_strand *s, tl_ready_fn run, PyObject *owner,
                   tl_ready_fn fn, PyObject *obj)
{
    tl_worker *w = tl_self;
    if (w != NULL && s == &loop->dispatch->strand)
        w->queued_callback = 1;
    if (w != NULL && w->holding && w->d == loop->dispatch) {
        if (w->ndefer == TL_DEFER)
            strand_flush(w);        /* order kept; only the batching is lost */
        w->defer[w->ndefer++] = (tl_deferred){s, run, Py_NewRef(owner), fn, obj};
        return 0;
    }
    tl_deferred item = {s, run, owner, fn, obj};
    return strand_append(loop, s, run, owner, &item, 1);
}

int tl_strand_run(tl_loop *loop, tl_strand *s, tl_ready_fn run, PyObject *owner)
{
    tl_mutex_lock(&s->lock);
    size_t n = s->q.len;
    tl_mutex_unlock(&s->lock);
    int rc = 0;
    while (n-- > 0) {
        tl_mutex_lock(&s->lock);
        if (s->q.len == 0) {
            tl_mutex_unlock(&s->lock);
            break;
        }
        tl_ready_item it = tl_ready_pop(&s->q);
        tl_mutex_unlock(&s->lock);
        rc = tl_loop_run_ready(loop, it);
        tl_loop_unqueue(it.obj);
        if (rc < 0)
            break;
    }
    flush_before_release(loop, rc);
    tl_mutex_lock(&s->lock);
    int again = s->q.len > 0;
    if (!again)
        s->scheduled = 0;
    tl_mutex_unlock(&s->lock);
    if (again) {
        /* behind what the others queued meanwhile */
        PyObject *exc = rc < 0 ? PyErr_GetRaisedException() : NULL;
        if (tl_dispatch_push(loop, run, Py_NewRef(owner)) < 0)
            PyErr_WriteUnraisable(owner);
        if (exc != NULL)
            PyErr_SetRaisedException(exc);
    }
    return rc;
}

int tl_serial_push(tl_loop *loop, tl_serial *s, tl_ready_fn run, tl_ready_fn fn,
                   PyObject *obj)
{
    for (;;) {
        uint8_t st = atomic_load_explicit(&s->state, memory_order_acquire);
        if (st == TL_SERIAL_IDLE) {
            atomic_store_explicit(&s->fn, fn, memory_order_relaxed);
            if (atomic_compare_exchange_weak_explicit(&s->state, &st, TL_SERIAL_QUEUED,
                                                      memory_order_acq_rel,
                                                      memory_order_acquire))
                return tl_dispatch_push(loop, run, obj);
        } else if (st == TL_SERIAL_RUNNING) {
            /* the running item queues it when it is done (our reference
             * goes with it) */
            atomic_store_explicit(&s->next, fn, memory_order_relaxed);
            if (atomic_compare_exchange_weak_explicit(&s->state, &st, TL_SERIAL_PENDING,
                                                      memory_order_acq_rel,
                                                      memory_order_acquire))
                return 0;
        } else {
            Py_DECREF(obj);
            PyErr_Format(PyExc_RuntimeError, "%R was scheduled twice", obj);
            return -1;
        }
    }
}

int tl_serial_run(tl_loop *loop, tl_serial *s, tl_ready_fn run, PyObject *obj)
{
    tl_serial_hold(s);
    tl_ready_fn fn = atomic_load_explicit(&s->fn, memory_order_relaxed);
    tl_ready_item it = {fn, obj};
    int rc = tl_loop_run_ready(loop, it);
    PyObject *exc = rc < 0 ? PyErr_GetRaisedException() : NULL;
    tl_serial_release(loop, s, run, obj);
    if (exc != NULL)
        PyErr_SetRaisedException(exc);
    return rc;
}

void tl_serial_release(tl_loop *loop, tl_serial *s, tl_ready_fn run, PyObject *obj)
{
    flush_before_release(loop, 0);     /* (callers hold their error aside) */
    uint8_t st = TL_SERIAL_RUNNING;
    if (atomic_compare_exchange_strong_explicit(&s->state, &st, TL_SERIAL_IDLE,
                                                memory_order_acq_rel, memory_order_acquire))
        return;
    /* woken while it ran: now it may go (the waker's reference with it) */
    atomic_store_explicit(&s->fn, atomic_load_explicit(&s->next, memory_order_relaxed),
                          memory_order_relaxed);
    atomic_store_explicit(&s->state, TL_SERIAL_QUEUED, memory_order_release);
    if (tl_dispatch_push(loop, run, obj) < 0)
        PyErr_WriteUnraisable(obj);
}

void tl_strand_clear(tl_strand *s)
{
    tl_ready q = s->q;
    s->q = (tl_ready){0};
    s->scheduled = 0;
    tl_ready_clear(&q);
    tl_strand_set_home(s, NULL);
}

/* The home is a weak reference (a task's basic one, which it has anyway:
 * tl_task.c's registry), so a transport keeps no finished task alive, nor
 * what that task returned. */
static PyObject *home_get(PyObject *ref)
{
    if (ref == NULL)
        return NULL;
#if PY_VERSION_HEX >= 0x030D0000
    PyObject *task;
    if (PyWeakref_GetRef(ref, &task) < 0) {
        PyErr_Clear();
        return NULL;
    }
    return task;
#else
    PyObject *task = PyWeakref_GetObject(ref);
    return task == Py_None ? NULL : Py_NewRef(task);
#endif
}

PyObject *tl_strand_home_ref(tl_strand *s)
{
    tl_mutex_lock(&s->lock);
    PyObject *ref = Py_XNewRef(s->home);
    tl_mutex_unlock(&s->lock);
    PyObject *task = home_get(ref);
    Py_XDECREF(ref);
    return task;
}

static void home_swap(tl_strand *s, PyObject *ref, PyObject *expected)
{
    tl_mutex_lock(&s->lock);
    PyObject *old = s->home;
    if (expected == NULL || old == expected)
        s->home = ref;
    else
        old = ref;
    tl_mutex_unlock(&s->lock);
    Py_XDECREF(old);            /* outside the lock */
}

void tl_strand_set_home(tl_strand *s, PyObject *task)
{
    PyObject *ref = NULL;
    if (task != NULL && (ref = PyWeakref_NewRef(task, NULL)) == NULL) {
        PyErr_WriteUnraisable(task);    /* a lost home costs only the guarantee */
        return;
    }
    home_swap(s, ref, NULL);
}

void tl_strand_drop_home(tl_strand *s, PyObject *task)
{
    PyObject *ref = PyWeakref_NewRef(task, NULL);  /* the one it holds, if the same task */
    if (ref == NULL) {
        PyErr_Clear();
        return;
    }
    home_swap(s, NULL, ref);
    Py_DECREF(ref);
}

static _Thread_local tl_strand *strand_adopting;

tl_strand *tl_strand_adopting(tl_strand *s)
{
    tl_strand *prev = strand_adopting;
    strand_adopting = s;
    return prev;
}

void tl_strand_adopt(PyObject *task)
{
    if (strand_adopting != NULL)
        tl_strand_set_home(strand_adopting, task);
}

int tl_strand_traverse(tl_strand *s, visitproc visit, void *arg)
{
    Py_VISIT(s->home);
    for (size_t i = 0; i < s->q.len; i++) {
        int r = tl_loop_visit_queued(s->q.items[(s->q.head + i) & (s->q.cap - 1)].obj,
                                     visit, arg);
        if (r)
            return r;
    }
    return 0;
}

static int loop_strand_run(tl_loop *loop, PyObject *obj)
{
    return tl_strand_run(loop, &loop->dispatch->strand, loop_strand_run, obj);
}

int tl_dispatch_push_callback(tl_loop *loop, tl_ready_fn fn, PyObject *obj)
{
    return tl_strand_push(loop, &loop->dispatch->strand, loop_strand_run, (PyObject *)loop,
                          fn, obj);
}

int tl_dispatch_item_queued_callback(tl_loop *loop)
{
    tl_worker *w = tl_self;
    return w != NULL && w->d == loop->dispatch && w->queued_callback;
}

void tl_dispatch_stop(tl_loop *loop)
{
    if (loop->thread_id != 0)
        stop_after_queued(loop->dispatch);
}

/* ---- the loop thread ---------------------------------------------------- */

static void serve_rpcs(tl_dispatch *d)
{
    for (;;) {
        tl_mutex_lock(&d->rpc_lock);
        tl_rpc *r = d->rpc_head;
        if (r != NULL) {
            d->rpc_head = r->next;
            if (d->rpc_head == NULL)
                d->rpc_tail = NULL;
        }
        tl_mutex_unlock(&d->rpc_lock);
        if (r == NULL)
            return;
        r->result = r->fn(d->loop, r->arg);
        if (r->result == NULL)
            r->exc = PyErr_GetRaisedException();
        atomic_store_explicit(&r->done, 1, memory_order_release);
        parker_unpark(&r->parker);
    }
}

PyObject *tl_dispatch_call_on_loop(tl_loop *loop, PyObject *(*fn)(tl_loop *, PyObject *),
                                   PyObject *arg)
{
    tl_dispatch *d = loop->dispatch;
    if (d == NULL || loop->thread_id == 0 || loop->thread_id == PyThread_get_thread_ident())
        return fn(loop, arg);
    tl_rpc r = {.fn = fn, .arg = arg};
    parker_init(&r.parker);
    tl_mutex_lock(&d->rpc_lock);
    if (d->rpc_tail != NULL)
        d->rpc_tail->next = &r;
    else
        d->rpc_head = &r;
    d->rpc_tail = &r;
    tl_mutex_unlock(&d->rpc_lock);
    wake_loop_thread(d);
    tl_worker *w = tl_self;
    int paused = item_pause(w);     /* the loop thread may want the loop lock a lone item holds */
    Py_BEGIN_ALLOW_THREADS
    while (!atomic_load_explicit(&r.done, memory_order_acquire))
        parker_park(&r.parker);
    Py_END_ALLOW_THREADS
    while (!item_resume(w, paused))
        wait_alone_over(w->d);
    parker_destroy(&r.parker);
    if (r.result == NULL)
        PyErr_SetRaisedException(r.exc);
    return r.result;
}

static int start_workers(tl_dispatch *d)
{
    d->interp = PyInterpreterState_Get();
    for (int i = 0; i < d->nworkers; i++) {
        tl_worker *w = d->workers[i];
        if (w->has_thread)
            continue;
        atomic_fetch_add(&d->nbusy, 1);
        int err = pthread_create(&w->thread, NULL, worker_main, w);
        if (err != 0) {
            atomic_fetch_sub(&d->nbusy, 1);
            errno = err;
            PyErr_SetFromErrno(PyExc_RuntimeError);
            return -1;
        }
        w->has_thread = 1;
    }
    d->started = 1;
    return 0;
}

static void wake_all(tl_dispatch *d)
{
    for (int i = 0; i < d->nworkers; i++)
        parker_unpark(&d->workers[i]->parker);
}

static void wake_entered(tl_dispatch *d)
{
    for (int i = 0; i < d->nworkers; i++)
        if (atomic_load_explicit(&d->workers[i]->entered, memory_order_relaxed))
            parker_unpark(&d->workers[i]->parker);
}

int tl_dispatch_run(tl_loop *loop, int (*poll)(tl_loop *loop, int block))
{
    tl_dispatch *d = loop->dispatch;
    int rc = 0;
    if (!d->started && start_workers(d) < 0)
        return -1;
    tl_polling = d;
    /* asyncio's order: poll once, then run what is ready */
    if (poll(loop, 0) < 0) {
        rc = -1;
        goto out;
    }
    serve_rpcs(d);
    tl_dispatch_publish_held(loop);
    if (loop->stopping) {
        /* stop() before run_forever(): what is queued, then out */
        if (queued_count(d) == 0)
            goto quiesce;
        stop_after_queued(d);
    }
    atomic_store(&d->gate, GATE_OPEN);
    wake_all(d);
    while (atomic_load(&d->gate) == GATE_OPEN) {
        rc = poll(loop, 1);
        serve_rpcs(d);
        if (rc < 0) {
            /* a signal handler raised (Ctrl-C) on this thread */
            atomic_store(&d->gate, GATE_CLOSED);
            break;
        }
    }
quiesce:
    atomic_store(&d->gate, GATE_CLOSED);
    atomic_store(&d->stop_budget, -1);
    /* the workers finish what they run, let go of the loop and park; the
     * last one wakes us (the idle ones wake to let go) */
    wake_entered(d);
    while (atomic_load(&d->nbusy) > 0 || atomic_load(&d->nentered) > 0) {
        PyObject *exc = rc < 0 ? PyErr_GetRaisedException() : NULL;
        if (poll(loop, 1) < 0)
            PyErr_Clear();  /* keep the first error; later ones wait */
        serve_rpcs(d);
        if (exc != NULL)
            PyErr_SetRaisedException(exc);
    }
    tl_mutex_lock(&d->err_lock);
    PyObject *error = d->error;
    d->error = NULL;
    tl_mutex_unlock(&d->err_lock);
    if (error != NULL) {
        if (rc < 0)
            Py_DECREF(error);   /* ours came first */
        else
            PyErr_SetRaisedException(error);
        rc = -1;
    }
out:
    /* what the last poll queued runs when the loop runs again */
    tl_polling = NULL;
    tl_dispatch_publish_held(loop);
    return rc;
}

/* ---- life cycle ---------------------------------------------------------- */

int tl_dispatch_create(tl_loop *loop, int nthreads)
{
    if (nthreads > TL_MAX_THREADS) {
        PyErr_Format(PyExc_ValueError, "threads must be at most %d, got %d",
                     TL_MAX_THREADS, nthreads);
        return -1;
    }
    tl_dispatch *d = PyMem_RawCalloc(1, sizeof(*d));
    if (d == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    d->loop = loop;
    d->nworkers = nthreads;
    atomic_init(&d->gate, GATE_CLOSED);
    atomic_init(&d->stop_budget, -1);
    d->workers = PyMem_RawCalloc((size_t)nthreads, sizeof(tl_worker *));
    d->idle = PyMem_RawCalloc((size_t)nthreads, sizeof(tl_worker *));
    if (d->workers == NULL || d->idle == NULL)
        goto nomem;
    Py_hash_t hash = PyObject_Hash((PyObject *)loop);
    if (hash == -1)
        goto fail;
    for (int i = 0; i < nthreads; i++) {
        tl_worker *w;
        if (posix_memalign((void **)&w, 64, sizeof(*w)) != 0)
            goto nomem;
        memset(w, 0, sizeof(*w));
        d->workers[i] = w;
        w->d = d;
        w->index = i;
        w->rng = (uint32_t)i * 2654435761u + 1;
        parker_init(&w->parker);
        PyTypeObject *tp = loop->st->worker_key_type;
        worker_key *key = (worker_key *)tp->tp_alloc(tp, 0);
        if (key == NULL)
            goto fail;
        key->loop = loop;
        key->worker = w;
        key->hash = hash;
        w->key = (PyObject *)key;
    }
    loop->dispatch = d;
    return 0;
nomem:
    PyErr_NoMemory();
fail:
    loop->dispatch = d;
    tl_dispatch_destroy(loop);
    return -1;
}

static void dispatch_drop_queued(tl_dispatch *d)
{
    for (int i = 0; i < d->nworkers; i++) {
        tl_worker *w = d->workers[i];
        tl_ready_item it;
        while (w != NULL && runq_get(w, &it))
            tl_loop_unqueue(it.obj);
    }
    tl_ready q = d->inj;
    d->inj = (tl_ready){0};
    atomic_store(&d->inj_len, 0);
    tl_ready_clear(&q);
    tl_ready_clear(&d->held);
    tl_strand_clear(&d->strand);
}

void tl_dispatch_destroy(tl_loop *loop)
{
    tl_dispatch *d = loop->dispatch;
    if (d == NULL)
        return;
    if (d->started) {
        atomic_store(&d->gate, GATE_EXIT);
        wake_all(d);
        if (!Py_IsFinalizing()) {
            /* the workers need the interpreter to leave */
            Py_BEGIN_ALLOW_THREADS
            for (int i = 0; i < d->nworkers; i++)
                if (d->workers[i]->has_thread)
                    pthread_join(d->workers[i]->thread, NULL);
            Py_END_ALLOW_THREADS
        } else {
            /* interpreter shutdown: they never get it back; leave them */
            for (int i = 0; i < d->nworkers; i++)
                if (d->workers[i]->has_thread)
                    pthread_detach(d->workers[i]->thread);
            loop->dispatch = NULL;
            return;
        }
    }
    loop->dispatch = NULL;
    dispatch_drop_queued(d);
    for (int i = 0; i < d->nworkers; i++) {
        tl_worker *w = d->workers ? d->workers[i] : NULL;
        if (w == NULL)
            continue;
        Py_XDECREF(w->key);
        parker_destroy(&w->parker);
        free(w);
    }
    Py_CLEAR(d->error);
    PyMem_RawFree(d->workers);
    PyMem_RawFree(d->idle);
    PyMem_RawFree(d);
}

int tl_dispatch_traverse(tl_loop *loop, visitproc visit, void *arg)
{
    tl_dispatch *d = loop->dispatch;
    if (d == NULL)
        return 0;
    /* the collector runs with the world stopped (or the GIL held): the
     * queues hold still */
    for (int i = 0; i < d->nworkers; i++) {
        tl_worker *w = d->workers[i];
        uint32_t h = atomic_load(&w->head), t = atomic_load(&w->tail);
        for (uint32_t k = h; k != t; k++) {
            int r = tl_loop_visit_queued(slot_load(&w->q[k % TL_RUNQ]).obj, visit, arg);
            if (r)
                return r;
        }
    }
    for (size_t i = 0; i < d->inj.len; i++) {
        int r = tl_loop_visit_queued(d->inj.items[(d->inj.head + i) & (d->inj.cap - 1)].obj,
                                     visit, arg);
        if (r)
            return r;
    }
    Py_VISIT(d->error);
    return tl_strand_traverse(&d->strand, visit, arg);
}

void tl_dispatch_clear(tl_loop *loop)
{
    tl_dispatch *d = loop->dispatch;
    if (d != NULL && !d->started)
        dispatch_drop_queued(d);
}

void tl_dispatch_fork_child(tl_loop *loop)
{
    tl_dispatch *d = loop->dispatch;
    if (d == NULL)
        return;
    /* what the workers had queued stays queued; new workers start on the
     * next run */
    d->started = 0;
    atomic_store(&d->gate, GATE_CLOSED);
    atomic_store(&d->nbusy, 0);
    atomic_store(&d->nentered, 0);
    atomic_store(&d->stop_budget, -1);
    for (int i = 0; i < d->nworkers; i++)
        atomic_store(&d->workers[i]->entered, 0);
    atomic_store(&d->nsearching, 0);
    atomic_store(&d->nidle, 0);
    d->nidle_stack = 0;
    d->rpc_head = d->rpc_tail = NULL;
    tl_mutex_reinit(&d->idle_lock);
    tl_mutex_reinit(&d->inj_lock);
    tl_mutex_reinit(&d->err_lock);
    tl_mutex_reinit(&d->rpc_lock);
    tl_mutex_reinit(&d->strand.lock);
    for (int i = 0; i < d->nworkers; i++) {
        tl_worker *w = d->workers[i];
        w->has_thread = 0;
        w->idle = 0;
        atomic_store(&w->searching, 0);
        parker_init(&w->parker);
    }
    tl_self = NULL;
}

/* ---- current_task() on workers ------------------------------------------ */

/* asyncio (3.11-3.13) keeps the current task in a dict keyed by the loop:
 * current_task(loop) is _current_tasks.get(loop). Workers run tasks of one
 * loop side by side, so each files its task under its own key: an object
 * with the loop's hash that equals the loop only on its worker's thread.
 * A lookup by the loop on a worker thus finds that worker's task. */
PyObject *tl_dispatch_task_key(tl_loop *loop)
{
    tl_worker *w = tl_self;
    if (w == NULL || w->d != loop->dispatch || loop->dispatch == NULL)
        return NULL;
    return w->key;
}

void tl_dispatch_key_private(int on)
{
    tl_key_private = on;
}

static Py_hash_t worker_key_hash(worker_key *k)
{
    return k->hash;
}

static PyObject *worker_key_richcompare(worker_key *k, PyObject *other, int op)
{
    if (op == Py_EQ && other == (PyObject *)k->loop && tl_self == k->worker && !tl_key_private)
        Py_RETURN_TRUE;
    Py_RETURN_NOTIMPLEMENTED;
}

static PyObject *worker_key_repr(worker_key *k)
{
    return PyUnicode_FromFormat("<worker %d of loop at %p>", k->worker->index, (void *)k->loop);
}

static void worker_key_dealloc(worker_key *k)
{
    PyTypeObject *tp = Py_TYPE(k);
    tp->tp_free(k);
    Py_DECREF(tp);
}

static PyType_Slot worker_key_slots[] = {
    {Py_tp_dealloc, worker_key_dealloc},
    {Py_tp_hash, worker_key_hash},
    {Py_tp_richcompare, worker_key_richcompare},
    {Py_tp_repr, worker_key_repr},
    {Py_tp_doc, "The key of a worker thread's entry in asyncio's current tasks."},
    {0, NULL},
};

PyType_Spec tl_worker_key_spec = {
    .name = "tonio_loop._core.WorkerKey",
    .basicsize = sizeof(worker_key),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_IMMUTABLETYPE | Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = worker_key_slots,
};

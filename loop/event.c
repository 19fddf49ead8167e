/* event.c - Event and Waiter (see tl_event.h), a thread waker, and the small
 * Python-visible Event type that lets tests drive the core from threads.
 */
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <time.h>

#include "tl_event.h"

void tl_spin_lock(tl_spinlock *l)
{
    for (;;) {
        if (!atomic_exchange_explicit(&l->held, 1, memory_order_acquire))
            return;
        /* Holders never block inside: yield until it looks free. */
        while (atomic_load_explicit(&l->held, memory_order_relaxed))
            sched_yield();
    }
}

static void list_append(tl_event *ev, tl_waiter *w)
{
    w->next = NULL;
    w->prev = ev->tail;
    if (ev->tail != NULL)
        ev->tail->next = w;
    else
        ev->head = w;
    ev->tail = w;
    w->linked = 1;
}

static void list_unlink(tl_event *ev, tl_waiter *w)
{
    if (w->prev != NULL)
        w->prev->next = w->next;
    else
        ev->head = w->next;
    if (w->next != NULL)
        w->next->prev = w->prev;
    else
        ev->tail = w->prev;
    w->prev = w->next = NULL;
    w->linked = 0;
}

/* Take the whole list; the waiters keep their ->next chain. */
static tl_waiter *list_detach(tl_event *ev)
{
    tl_waiter *head = ev->head;
    for (tl_waiter *w = head; w != NULL; w = w->next)
        w->linked = 0;
    ev->head = ev->tail = NULL;
    return head;
}

int tl_event_fire(tl_event *ev, PyObject *source)
{
    tl_spin_lock(&ev->lock);
    atomic_store_explicit(&ev->state, TL_EVENT_SET, memory_order_release);
    tl_waiter *w = list_detach(ev);
    tl_spin_unlock(&ev->lock);

    int rc = 0;
    PyObject *first_error = NULL;
    uint8_t after_callback = 0;
    while (w != NULL) {
        /* the wake function may free the waiter: read the link first */
        tl_waiter *next = w->next;
        w->prev = w->next = NULL;
        w->after_callback = after_callback;
        after_callback |= w->kind == TL_WAITER_CALLBACK;
        if (w->wake(w, source) < 0) {
            rc = -1;
            if (first_error == NULL)
                first_error = PyErr_GetRaisedException();
            else
                PyErr_Clear();
        }
        w = next;
    }
    if (first_error != NULL)
        PyErr_SetRaisedException(first_error);
    return rc;
}

int tl_event_set(tl_event *ev, PyObject *source)
{
    if (!tl_event_claim(ev))
        return 0;
    return tl_event_fire(ev, source) < 0 ? -1 : 1;
}

int tl_event_add(tl_event *ev, tl_waiter *w)
{
    tl_spin_lock(&ev->lock);
    if (atomic_load_explicit(&ev->state, memory_order_acquire) == TL_EVENT_SET) {
        tl_spin_unlock(&ev->lock);
        return 1;
    }
    list_append(ev, w);
    tl_spin_unlock(&ev->lock);
    return 0;
}

int tl_event_remove(tl_event *ev, tl_waiter *w)
{
    tl_spin_lock(&ev->lock);
    int linked = w->linked;
    if (linked)
        list_unlink(ev, w);
    tl_spin_unlock(&ev->lock);
    return linked;
}

tl_waiter *tl_event_reset(tl_event *ev)
{
    tl_spin_lock(&ev->lock);
    tl_waiter *w = list_detach(ev);
    atomic_store_explicit(&ev->state, TL_EVENT_CLEAR, memory_order_release);
    tl_spin_unlock(&ev->lock);
    return w;
}

/* ---- a waiting thread -------------------------------------------------- */

typedef struct {
    tl_waiter w;
    pthread_mutex_t mutex;
    pthread_cond_t cond;
    int woken;
} thread_waker;

static int thread_wake(tl_waiter *w, PyObject *source)
{
    TL_UNUSED(source);
    thread_waker *tw = (thread_waker *)w;
    /* The waiting thread may return (and its stack frame go) as soon as it
     * sees `woken`; POSIX makes destroying a mutex right after another
     * thread unlocked it safe, so this is the last touch. */
    pthread_mutex_lock(&tw->mutex);
    tw->woken = 1;
    pthread_cond_signal(&tw->cond);
    pthread_mutex_unlock(&tw->mutex);
    return 0;
}

/* Sleep without the GIL until woken or `seconds` pass; 1 when woken. */
static int thread_waker_sleep(thread_waker *tw, double seconds)
{
    struct timespec deadline;
    clock_gettime(CLOCK_MONOTONIC, &deadline);
    double whole = (double)(time_t)seconds;
    deadline.tv_sec += (time_t)whole;
    deadline.tv_nsec += (long)((seconds - whole) * 1e9);
    if (deadline.tv_nsec >= 1000000000L) {
        deadline.tv_sec += 1;
        deadline.tv_nsec -= 1000000000L;
    }
    int woken;
    Py_BEGIN_ALLOW_THREADS
    pthread_mutex_lock(&tw->mutex);
    while (!tw->woken &&
           pthread_cond_timedwait(&tw->cond, &tw->mutex, &deadline) != ETIMEDOUT)
        ;
    woken = tw->woken;
    pthread_mutex_unlock(&tw->mutex);
    Py_END_ALLOW_THREADS
    return woken;
}

/* Signal handlers get to run at least this often while a thread waits. */
#define TL_WAIT_SLICE 0.05

int tl_event_wait_thread(tl_event *ev, double timeout)
{
    if (tl_event_is_set(ev))
        return 1;
    thread_waker tw;
    tl_waiter_init(&tw.w, TL_WAITER_WAKER, thread_wake);
    tw.woken = 0;
    pthread_condattr_t attr;
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_cond_init(&tw.cond, &attr);
    pthread_condattr_destroy(&attr);
    pthread_mutex_init(&tw.mutex, NULL);

    int rc = 1;
    if (tl_event_add(ev, &tw.w) == 0) {
        double deadline = timeout >= 0 ? tl_monotonic() + timeout : -1.0;
        for (;;) {
            double slice = TL_WAIT_SLICE;
            if (deadline >= 0) {
                double left = deadline - tl_monotonic();
                slice = left < slice ? (left > 0 ? left : 0) : slice;
            }
            if (thread_waker_sleep(&tw, slice))
                break;
            if (deadline >= 0 && tl_monotonic() >= deadline) {
                rc = 0;
                break;
            }
            /* Ctrl-C (in the main thread) interrupts a wait, as it does
             * threading.Event.wait() */
            if (PyErr_CheckSignals() < 0) {
                rc = -1;
                break;
            }
        }
        if (rc <= 0 && !tl_event_remove(ev, &tw.w)) {
            /* a setter detached us before we could leave: its wake-up is
             * on the way and must find this frame still here */
            Py_BEGIN_ALLOW_THREADS
            pthread_mutex_lock(&tw.mutex);
            while (!tw.woken)
                pthread_cond_wait(&tw.cond, &tw.mutex);
            pthread_mutex_unlock(&tw.mutex);
            Py_END_ALLOW_THREADS
            if (rc == 0)
                rc = 1;
        }
    }
    pthread_mutex_destroy(&tw.mutex);
    pthread_cond_destroy(&tw.cond);
    return rc;
}

/* ---- tonio_loop._core.Event -------------------------------------------- */

/* A bare Event for tests and diagnostics: set() from any thread, wait() from
 * any thread. It is the same core a Future uses, without the Future. */
typedef struct {
    PyObject_HEAD
    tl_event ev;
} event_object;

static PyObject *event_new(PyTypeObject *tp, PyObject *args, PyObject *kwds)
{
    if (PyTuple_GET_SIZE(args) != 0 || (kwds != NULL && PyDict_GET_SIZE(kwds) != 0)) {
        PyErr_SetString(PyExc_TypeError, "Event() takes no arguments");
        return NULL;
    }
    event_object *self = (event_object *)tp->tp_alloc(tp, 0);
    if (self != NULL)
        tl_event_init(&self->ev);
    return (PyObject *)self;
}

static PyObject *event_set(event_object *self, PyObject *Py_UNUSED(ignored))
{
    int r = tl_event_set(&self->ev, (PyObject *)self);
    if (r < 0)
        return NULL;
    return PyBool_FromLong(r);
}

static PyObject *event_is_set(event_object *self, PyObject *Py_UNUSED(ignored))
{
    return PyBool_FromLong(tl_event_is_set(&self->ev));
}

static PyObject *event_wait(event_object *self, PyObject *const *args,
                            Py_ssize_t nargs, PyObject *kwnames)
{
    if (kwnames != NULL && PyTuple_GET_SIZE(kwnames)) {
        PyErr_SetString(PyExc_TypeError, "wait() takes no keyword arguments");
        return NULL;
    }
    if (nargs > 1) {
        PyErr_Format(PyExc_TypeError, "wait() takes at most 1 argument (%zd given)", nargs);
        return NULL;
    }
    double timeout = -1.0;
    if (nargs == 1 && args[0] != Py_None) {
        timeout = PyFloat_AsDouble(args[0]);
        if (timeout == -1.0 && PyErr_Occurred())
            return NULL;
        if (timeout < 0)
            timeout = 0;
    }
    int r = tl_event_wait_thread(&self->ev, timeout);
    if (r < 0)
        return NULL;
    return PyBool_FromLong(r);
}

static PyObject *event_waiters(event_object *self, PyObject *Py_UNUSED(ignored))
{
    Py_ssize_t n = 0;
    tl_spin_lock(&self->ev.lock);
    for (tl_waiter *w = self->ev.head; w != NULL; w = w->next)
        n++;
    tl_spin_unlock(&self->ev.lock);
    return PyLong_FromSsize_t(n);
}

static void event_dealloc(event_object *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    /* only thread waiters can be queued, and they hold no reference: a
     * waiting thread keeps the object alive through its wait() call */
    tp->tp_free(self);
    Py_DECREF(tp);
}

static PyMethodDef event_methods[] = {
    {"set", (PyCFunction)event_set, METH_NOARGS,
     "Set the flag and wake every waiter; True if this call set it."},
    {"is_set", (PyCFunction)event_is_set, METH_NOARGS, NULL},
    {"wait", (PyCFunction)(void (*)(void))event_wait, METH_FASTCALL | METH_KEYWORDS,
     "wait(timeout=None)\n--\n\n"
     "Block this thread (the GIL released) until set; False on timeout."},
    {"_waiters", (PyCFunction)event_waiters, METH_NOARGS,
     "How many waiters are queued right now."},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot event_slots[] = {
    {Py_tp_new, event_new},
    {Py_tp_dealloc, event_dealloc},
    {Py_tp_methods, event_methods},
    {Py_tp_doc,
     "Event()\n--\n\n"
     "The once-set flag with a waiter list that Future and Task are built on,\n"
     "exposed for tests and diagnostics: set() and wait() work from any thread.\n"
     "Internal API: not part of tonio_loop's public interface."},
    {0, NULL},
};

PyType_Spec tl_event_spec = {
    .name = "tonio_loop._core.Event",
    .basicsize = sizeof(event_object),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = event_slots,
};

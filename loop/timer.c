/* timer.c - TimerHandle, the loop's timer heap, call_later() and call_at().
 *
 * asyncio keeps cancelled timers in its heap and sweeps them later; here each
 * timer knows its slot, so cancel() takes it out at once and a heap of
 * pending timers never holds dead entries.
 */
#include <math.h>

#include "tl_timer.h"
#include "tl_loop.h"

/* ---- the heap --------------------------------------------------------- */

static inline int timer_before(tl_timer_handle *a, tl_timer_handle *b)
{
    return a->key < b->key || (a->key == b->key && a->seq < b->seq);
}

/* A timer's slot is read without the lock by cancel() (a fired timer needs
 * no lock): relaxed atomic accesses, plain moves on every machine. */
static inline void slot_set(tl_timer_handle *t, Py_ssize_t i)
{
    __atomic_store_n(&t->slot, i, __ATOMIC_RELAXED);
}

static inline Py_ssize_t slot_get(tl_timer_handle *t)
{
    return __atomic_load_n(&t->slot, __ATOMIC_RELAXED);
}

static inline void heap_set(tl_timer_heap *heap, Py_ssize_t i, tl_timer_handle *t)
{
    heap->items[i] = t;
    slot_set(t, i);
}

static void heap_sift_up(tl_timer_heap *heap, Py_ssize_t i)
{
    tl_timer_handle *t = heap->items[i];
    while (i > 0) {
        Py_ssize_t parent = (i - 1) / 2;
        if (!timer_before(t, heap->items[parent]))
            break;
        heap_set(heap, i, heap->items[parent]);
        i = parent;
    }
    heap_set(heap, i, t);
}

static void heap_sift_down(tl_timer_heap *heap, Py_ssize_t i)
{
    tl_timer_handle *t = heap->items[i];
    Py_ssize_t n = heap->len;
    for (;;) {
        Py_ssize_t child = 2 * i + 1;
        if (child >= n)
            break;
        if (child + 1 < n && timer_before(heap->items[child + 1], heap->items[child]))
            child++;
        if (!timer_before(heap->items[child], t))
            break;
        heap_set(heap, i, heap->items[child]);
        i = child;
    }
    heap_set(heap, i, t);
}

static int heap_push(tl_timer_heap *heap, tl_timer_handle *t)
{
    if (heap->len == heap->cap) {
        Py_ssize_t cap = heap->cap ? heap->cap * 2 : 64;
        tl_timer_handle **items = PyMem_Realloc(heap->items, (size_t)cap * sizeof(*items));
        if (items == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        heap->items = items;
        heap->cap = cap;
    }
    Py_INCREF(t);
    heap->items[heap->len] = t;
    slot_set(t, heap->len++);
    heap_sift_up(heap, heap->len - 1);
    return 0;
}

/* Remove the timer at slot i; the caller takes over the heap's reference. */
static tl_timer_handle *heap_take(tl_timer_heap *heap, Py_ssize_t i)
{
    tl_timer_handle *t = heap->items[i];
    tl_timer_handle *last = heap->items[--heap->len];
    slot_set(t, -1);
    if (last != t) {
        heap_set(heap, i, last);
        if (i > 0 && timer_before(last, heap->items[(i - 1) / 2]))
            heap_sift_up(heap, i);
        else
            heap_sift_down(heap, i);
    }
    return t;
}

double tl_timer_heap_next(tl_timer_heap *heap)
{
    return heap->len ? heap->items[0]->key : -1.0;
}

int tl_timer_heap_expire(tl_loop *loop, double now)
{
    tl_timer_heap *heap = &loop->timers;
    while (heap->len && heap->items[0]->key <= now) {
        tl_timer_handle *t = heap_take(heap, 0);
        if (tl_loop_push_ready(loop, tl_handle_ready_fn, (PyObject *)t) < 0)
            return -1;
    }
    return 0;
}

void tl_timer_heap_clear(tl_timer_heap *heap)
{
    while (heap->len) {
        tl_timer_handle *t = heap_take(heap, heap->len - 1);
        tl_loop_unqueue((PyObject *)t);
    }
    PyMem_Free(heap->items);
    heap->items = NULL;
    heap->cap = 0;
}

int tl_timer_heap_traverse(tl_timer_heap *heap, visitproc visit, void *arg)
{
    for (Py_ssize_t i = 0; i < heap->len; i++) {
        int r = tl_loop_visit_queued((PyObject *)heap->items[i], visit, arg);
        if (r)
            return r;
    }
    return 0;
}

void tl_timer_unschedule(tl_timer_handle *t)
{
    tl_loop *loop = t->base.loop;
    if (slot_get(t) < 0 || loop == NULL)
        return;
    int locked = tl_loop_ev_lock(loop);
    Py_ssize_t slot = slot_get(t);
    tl_timer_handle *taken = slot >= 0 ? heap_take(&loop->timers, slot) : NULL;
    tl_loop_ev_unlock(loop, locked);
    if (taken != NULL)
        tl_loop_unqueue((PyObject *)taken);
}

/* ---- TimerHandle ------------------------------------------------------ */

static tl_timer_handle *timer_alloc(tl_state *st)
{
    tl_timer_handle *t = NULL;
#if TL_FREELIST_MAX
    if (st->timer_nfree > 0) {
        t = (tl_timer_handle *)st->timer_free[--st->timer_nfree];
        PyObject_Init((PyObject *)t, st->timer_handle_type);
    }
#endif
    if (t == NULL) {
        t = PyObject_GC_New(tl_timer_handle, st->timer_handle_type);
        if (t == NULL)
            return NULL;
    }
    tl_handle *h = &t->base;
    h->loop = NULL;
    h->callback = NULL;
    h->context = NULL;
    h->argtuple = NULL;
    h->nargs = 0;
    for (int i = 0; i <= TL_HANDLE_INLINE_ARGS; i++)
        h->argv[i] = NULL;
    h->source_traceback = NULL;
    h->repr = NULL;
    h->weakreflist = NULL;
    h->cancelled = 0;
    h->is_timer = 1;
    t->slot = -1;
    t->when_is_int = 0;
    return t;
}

/* Where a NaN deadline goes. asyncio's heap compares with `<`, false both
 * ways for NaN: pushed, such a timer stays where it lands, at the bottom,
 * and fires once the timers that were above it are gone. So it fires at
 * once in an empty heap, but after wait_for()'s timeout, scheduled before
 * it, in wait_for(sleep(nan), t). The same here: after every timer already
 * scheduled (in time order, then by arrival). A scan, for a deadline no
 * program means to set. */
static double nan_key(tl_timer_heap *heap)
{
    double key = -INFINITY;
    for (Py_ssize_t i = 0; i < heap->len; i++)
        if (heap->items[i]->key > key)
            key = heap->items[i]->key;
    return key;
}

tl_timer_handle *tl_timer_schedule(tl_loop *loop, double when,
                                   PyObject *callback, PyObject *const *args,
                                   Py_ssize_t nargs, PyObject *context)
{
    tl_timer_handle *t = timer_alloc(loop->st);
    if (t == NULL)
        return NULL;
    t->when = when;
    t->key = when;
    if (tl_handle_init(&t->base, loop, callback, args, nargs, context) < 0) {
        Py_DECREF(t);
        return NULL;
    }
    int locked = tl_loop_ev_lock(loop);
    if (TL_UNLIKELY(isnan(when)))
        t->key = nan_key(&loop->timers);
    t->seq = loop->timers.seq++;
    int rc = heap_push(&loop->timers, t);
    int first = rc == 0 && t->slot == 0;
    tl_loop_ev_unlock(loop, locked);
    if (rc < 0) {
        Py_DECREF(t);
        return NULL;
    }
    /* a new earliest deadline from another thread: re-arm the poll */
    if (TL_UNLIKELY(loop->shared) && first)
        tl_loop_ev_changed(loop);
    /* not tracked while in the heap: see tl_handle_traverse_contents */
#ifdef Py_GIL_DISABLED
    PyObject_GC_Track(t);   /* reference counts are not exact enough there */
#endif
    return t;
}

static PyObject *timer_repr(tl_timer_handle *t)
{
    PyObject *when = PyFloat_FromDouble(t->when);
    if (when == NULL)
        return NULL;
    PyObject *r = tl_handle_repr_with(&t->base, when);
    Py_DECREF(when);
    return r;
}

static Py_hash_t timer_hash(tl_timer_handle *t)
{
    return _Py_HashDouble((PyObject *)t, t->when);
}

static PyObject *timer_richcompare(PyObject *a, PyObject *b, int op)
{
    tl_state *st = PyType_GetModuleState(Py_TYPE(a));
    if (st == NULL || !PyObject_TypeCheck(b, st->timer_handle_type))
        Py_RETURN_NOTIMPLEMENTED;
    tl_timer_handle *x = (tl_timer_handle *)a, *y = (tl_timer_handle *)b;
    int eq = 0;
    if (op == Py_EQ || op == Py_NE || op == Py_LE || op == Py_GE) {
        /* asyncio: same deadline, callback, arguments and state */
        if (x->when == y->when && x->base.cancelled == y->base.cancelled) {
            PyObject *cx = x->base.callback ? x->base.callback : Py_None;
            PyObject *cy = y->base.callback ? y->base.callback : Py_None;
            eq = PyObject_RichCompareBool(cx, cy, Py_EQ);
            if (eq < 0)
                return NULL;
            if (eq) {
                PyObject *ax = x->base.callback ? tl_handle_args(&x->base) : Py_NewRef(Py_None);
                PyObject *ay = y->base.callback ? tl_handle_args(&y->base) : Py_NewRef(Py_None);
                eq = (ax && ay) ? PyObject_RichCompareBool(ax, ay, Py_EQ) : -1;
                Py_XDECREF(ax);
                Py_XDECREF(ay);
                if (eq < 0)
                    return NULL;
            }
        }
    }
    switch (op) {
    case Py_EQ: return PyBool_FromLong(eq);
    case Py_NE: return PyBool_FromLong(!eq);
    case Py_LT: return PyBool_FromLong(x->when < y->when);
    case Py_GT: return PyBool_FromLong(x->when > y->when);
    case Py_LE: return PyBool_FromLong(x->when < y->when || eq);
    case Py_GE: return PyBool_FromLong(x->when > y->when || eq);
    }
    Py_RETURN_NOTIMPLEMENTED;
}

static PyObject *timer_when(tl_timer_handle *t, PyObject *Py_UNUSED(ignored))
{
    if (TL_UNLIKELY(t->when_is_int))
        return PyLong_FromDouble(t->when);
    return PyFloat_FromDouble(t->when);
}

static PyObject *timer_get_scheduled(tl_timer_handle *t, void *c)
{
    TL_UNUSED(c);
    return PyBool_FromLong(slot_get(t) >= 0);
}

static PyMethodDef timer_methods[] = {
    {"when", (PyCFunction)timer_when, METH_NOARGS,
     "Return the scheduled time, on the loop.time() clock."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef timer_getset[] = {
    {"_when", (getter)timer_when, NULL, NULL, NULL},
    {"_scheduled", (getter)timer_get_scheduled, NULL, NULL, NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static int timer_clear(tl_timer_handle *t)
{
    tl_handle_clear_refs(&t->base);
    return 0;
}

static PyType_Slot timer_slots[] = {
    {Py_tp_dealloc, tl_timer_handle_dealloc},
    {Py_tp_traverse, tl_handle_traverse},
    {Py_tp_clear, timer_clear},
    {Py_tp_repr, timer_repr},
    {Py_tp_hash, timer_hash},
    {Py_tp_richcompare, timer_richcompare},
    {Py_tp_methods, timer_methods},
    {Py_tp_getset, timer_getset},
    {Py_tp_doc, "Object returned by timed callback registration methods."},
    {0, NULL},
};

PyType_Spec tl_timer_handle_spec = {
    .name = "tonio_loop._core.TimerHandle",
    .basicsize = sizeof(tl_timer_handle),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_BASETYPE |
             Py_TPFLAGS_DISALLOW_INSTANTIATION | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = timer_slots,
};

/* ---- Loop.call_later / Loop.call_at ----------------------------------- */

/* asyncio computes `loop.time() + delay` in Python; do the same for
 * anything that is not a plain int or float so errors and exotic numbers
 * behave alike. */
static int delay_to_when(PyObject *delay, double now, double *when)
{
    if (PyFloat_CheckExact(delay)) {
        *when = now + PyFloat_AS_DOUBLE(delay);
        return 0;
    }
    if (PyLong_CheckExact(delay)) {
        double d = PyLong_AsDouble(delay);
        if (d == -1.0 && PyErr_Occurred())
            return -1;
        *when = now + d;
        return 0;
    }
    PyObject *pnow = PyFloat_FromDouble(now);
    if (pnow == NULL)
        return -1;
    PyObject *sum = PyNumber_Add(pnow, delay);
    Py_DECREF(pnow);
    if (sum == NULL)
        return -1;
    *when = PyFloat_AsDouble(sum);
    Py_DECREF(sum);
    return (*when == -1.0 && PyErr_Occurred()) ? -1 : 0;
}

static PyObject *loop_call_at_impl(tl_loop *loop, double when, PyObject *callback,
                                   PyObject *const *args, Py_ssize_t nargs,
                                   PyObject *context)
{
    if (tl_loop_check_closed(loop) < 0)
        return NULL;
    if (TL_UNLIKELY(loop->debug) &&
        (tl_loop_check_thread(loop) < 0 ||
         tl_loop_check_callback(loop, callback, "call_at") < 0))
        return NULL;
    return (PyObject *)tl_timer_schedule(loop, when, callback, args, nargs, context);
}

static PyObject *loop_call_later(tl_loop *loop, PyObject *const *args,
                                 Py_ssize_t nargsf, PyObject *kwnames)
{
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    PyObject *context = NULL;
    if (tl_parse_callback_args("call_later", "delay", args, nargs, kwnames, &context) < 0)
        return NULL;
    if (args[0] == Py_None) {
        PyErr_SetString(PyExc_TypeError, "delay must not be None");
        return NULL;
    }
    double when;
    if (delay_to_when(args[0], tl_loop_time(loop), &when) < 0)
        return NULL;
    return loop_call_at_impl(loop, when, args[1], args + 2, nargs - 2, context);
}

static PyObject *loop_call_at(tl_loop *loop, PyObject *const *args,
                              Py_ssize_t nargsf, PyObject *kwnames)
{
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    PyObject *context = NULL;
    if (tl_parse_callback_args("call_at", "when", args, nargs, kwnames, &context) < 0)
        return NULL;
    if (args[0] == Py_None) {
        PyErr_SetString(PyExc_TypeError, "when cannot be None");
        return NULL;
    }
    double when = PyFloat_AsDouble(args[0]);
    if (when == -1.0 && PyErr_Occurred())
        return NULL;
    PyObject *t = loop_call_at_impl(loop, when, args[1], args + 2, nargs - 2, context);
    if (t != NULL && PyLong_CheckExact(args[0]) && when == floor(when) &&
        fabs(when) <= 9007199254740992.0)   /* 2**53: the int comes back exact */
        ((tl_timer_handle *)t)->when_is_int = 1;
    return t;
}

PyMethodDef tl_timer_loop_methods[] = {
    {"call_later", (PyCFunction)(void (*)(void))loop_call_later,
     METH_FASTCALL | METH_KEYWORDS,
     "call_later(delay, callback, *args, context=None)\n--\n\n"
     "Arrange for callback(*args) to be called after delay seconds."},
    {"call_at", (PyCFunction)(void (*)(void))loop_call_at,
     METH_FASTCALL | METH_KEYWORDS,
     "call_at(when, callback, *args, context=None)\n--\n\n"
     "Like call_later(), with an absolute time on the loop.time() clock."},
    {NULL, NULL, 0, NULL},
};

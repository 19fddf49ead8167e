/* task.c - tonio_loop.Task (see tl_task.h).
 *
 * The step logic mirrors asyncio's C Task (_asyncio.Task) of the running
 * Python: same states, same messages, same order of checks. What differs is
 * how the next step is reached: on our loops a task waiting on one of our
 * futures is a Waiter on that future's Event and its wake-up is a C function
 * on the ready queue; a bare yield puts the next step straight on the ready
 * queue. Other loops and other futures get asyncio's call_soon /
 * add_done_callback protocol, so a Task runs on any loop.
 */
#include <string.h>

#include "tl_task.h"
#include "tl_handle.h"
#include "tl_loop.h"
#include "tl_dispatch.h"

#include <pthread.h>

static int task_step(tl_task *task, PyObject *exc);
static int task_step_ready(tl_loop *loop, PyObject *obj);
static int task_wakeup_ready(tl_loop *loop, PyObject *obj);
static int task_cancel(tl_task *task, PyObject *msg);

static PyObject *task_wakeup_py(tl_task *task, PyObject *fut);
static PyObject *task_step_py(tl_task *task, PyObject *const *args, Py_ssize_t nargs);

/* What asyncio shows as the task's callbacks: bound to the task, named as
 * asyncio's C Task names them (repr: "Task.task_wakeup()"). */
static PyMethodDef task_wakeup_def = {
    "task_wakeup", (PyCFunction)task_wakeup_py, METH_O, NULL};
static PyMethodDef task_step_def = {
    "task_step", (PyCFunction)(void (*)(void))task_step_py, METH_FASTCALL, NULL};

PyObject *tl_task_wakeup_method(tl_task *task)
{
    return PyCFunction_New(&task_wakeup_def, (PyObject *)task);
}

static int getattr_optional(PyObject *obj, PyObject *name, PyObject **result)
{
#if PY_VERSION_HEX >= 0x030D0000
    return PyObject_GetOptionalAttr(obj, name, result);
#else
    *result = PyObject_GetAttr(obj, name);
    if (*result != NULL)
        return 1;
    if (!PyErr_ExceptionMatches(PyExc_AttributeError))
        return -1;
    PyErr_Clear();
    return 0;
#endif
}

/* ---- asyncio's bookkeeping: all_tasks(), current_task() ---------------- */

#if PY_VERSION_HEX >= 0x030E0000
/* 3.14+: asyncio keeps its tasks in per-thread linked lists, through a node
 * in its Task's fields, and _asyncio._register_task() links any subclass of
 * its Task there: ours through the part of the object that is asyncio's
 * (tl_future.h). all_tasks() walks the lists and asks a subclass's done()
 * and get_loop(). A task leaves when it finishes, as asyncio's own do; one
 * that dies pending is unlinked by asyncio's dealloc at the end of ours. */
static int task_register(tl_task *task)
{
    if (task->registered)
        return 0;
    PyObject *r = PyObject_CallOneArg(task->fut.st->register_task, (PyObject *)task);
    if (r == NULL)
        return -1;
    Py_DECREF(r);
    task->registered = 1;
    return 0;
}

static void task_unregister(tl_task *task)
{
    if (!task->registered)
        return;
    task->registered = 0;
    PyObject *exc = PyErr_GetRaisedException();
    PyObject *r = PyObject_CallOneArg(task->fut.st->unregister_task, (PyObject *)task);
    if (r == NULL)
        PyErr_WriteUnraisable((PyObject *)task);
    Py_XDECREF(r);
    PyErr_SetRaisedException(exc);
}

/* A task being freed: asyncio's dealloc unlinks it (no call into Python
 * with an object whose count is zero). */
static void task_forget_registration(tl_task *task)
{
    task->registered = 0;
}
#else
/* asyncio.all_tasks() lists the live entries of asyncio's WeakSet of tasks
 * (tasks._scheduled_tasks, 3.11: tasks._all_tasks). WeakSet.add() runs
 * Python code and gives each entry a Python callback that runs again when
 * the task dies; instead the entry goes straight into the set the WeakSet
 * iterates (its .data), as a plain weak reference, and the task takes it out
 * itself when it finishes (or dies pending). Same view for all_tasks(), a
 * fraction of the cost (see bench/workloads/tasks.py). The task keeps its
 * entry to take it out: asking for its weak reference again would not do,
 * the collector clears those of a task that dies in a cycle before it is
 * freed. */
static int task_register(tl_task *task)
{
    if (task->registry_ref != NULL)
        return 0;
    PyObject *ref = PyWeakref_NewRef((PyObject *)task, NULL);
    if (ref == NULL)
        return -1;
    /* Without a callback a weak reference holds no strong reference, so it
     * can be part of no cycle: the collector need not walk a million of
     * them (weak references to dying objects are found from the referent's
     * list, not by tracking the reference). */
    if (PyObject_GC_IsTracked(ref) && Py_REFCNT(ref) == 1)
        PyObject_GC_UnTrack(ref);
    if (PySet_Add(task->fut.st->all_tasks_data, ref) < 0) {
        Py_DECREF(ref);
        return -1;
    }
    task->registry_ref = ref;
    return 0;
}

static void task_unregister(tl_task *task)
{
    PyObject *ref = task->registry_ref;
    if (ref == NULL)
        return;
    task->registry_ref = NULL;
    tl_state *st = task->fut.st;
    PyObject *exc = PyErr_GetRaisedException();
    int rc;
    if (PySet_GET_SIZE(st->all_tasks_iterating) > 0) {
        /* someone iterates the WeakSet right now: it drops the entry
         * afterwards (WeakSet._commit_removals), as for its own entries */
        rc = PyList_Append(st->all_tasks_pending, ref);
    } else {
        rc = PySet_Discard(st->all_tasks_data, ref);
    }
    if (rc < 0)
        PyErr_WriteUnraisable((PyObject *)task);
    Py_DECREF(ref);
    PyErr_SetRaisedException(exc);
}

static void task_forget_registration(tl_task *task)
{
    task_unregister(task);
}
#endif

/* current_task() bookkeeping around each step. Up to 3.13 it is a dict
 * {loop: task} (tasks._current_tasks, the one asyncio's C functions use):
 * updating it here is what _asyncio._enter_task does, without the call and
 * argument parsing (a sixth of a sleep(0) step otherwise). From 3.14 the
 * current task lives in the thread state, reachable only through asyncio's
 * own functions. */
/* The key of this thread's entry: the loop, or on a worker of a threaded
 * loop that worker's own key, which equals the loop only on its thread
 * (tl_dispatch.h), so current_task() finds what the caller's thread runs.
 * From 3.14 the current task is per thread anyway. */
static inline PyObject *task_key(tl_task *task)
{
#if PY_VERSION_HEX < 0x030E0000
    tl_loop *tloop = tl_future_tloop(&task->fut);
    if (TL_UNLIKELY(tloop != NULL && tloop->dispatch != NULL)) {
        PyObject *key = tl_dispatch_task_key(tloop);
        if (key != NULL)
            return key;
    }
#endif
    return task->fut.loop;
}

#if PY_VERSION_HEX < 0x030E0000
static int enter_task(tl_task *task)
{
    tl_state *st = task->fut.st;
    PyObject *key = task_key(task);
    int private = key != task->fut.loop;
    if (private)
        tl_dispatch_key_private(1);
    /* one lookup: insert unless this thread's key already has a task.
     * The dict is shared by every loop and thread of the interpreter (on a
     * free-threaded build they change it meanwhile), so only the identity of
     * what the key holds tells; the same task entered twice would show up
     * at leave_task, which finds no entry for the inner step's exit. */
    PyObject *current = PyDict_SetDefault(st->current_tasks, key, (PyObject *)task);
    int inserted = current == (PyObject *)task;
    if (private)
        tl_dispatch_key_private(0);
    if (current == NULL)
        return -1;
    if (inserted)
        return 0;
    Py_INCREF(current);
    PyErr_Format(PyExc_RuntimeError,
                 "Cannot enter into task %R while another task %R is being executed.",
                 (PyObject *)task, current);
    Py_DECREF(current);
    return -1;
}

/* Pops the loop's entry (one lookup); puts back one that is not ours. */
static int leave_task(tl_task *task)
{
    tl_state *st = task->fut.st;
    PyObject *key = task_key(task);
    int private = key != task->fut.loop;
    if (private)
        tl_dispatch_key_private(1);
    PyObject *current;
    int rc = 0;
#if PY_VERSION_HEX >= 0x030D0000
    if (PyDict_Pop(st->current_tasks, key, &current) < 0)
        rc = -1;
#else
    current = _PyDict_Pop(st->current_tasks, key, Py_None);
    if (current == NULL)
        rc = -1;
    else if (current == Py_None)
        Py_CLEAR(current);
#endif
    if (rc == 0 && current != (PyObject *)task && current != NULL &&
        PyDict_SetItem(st->current_tasks, key, current) < 0)
        rc = -1;
    if (private)
        tl_dispatch_key_private(0);
    if (rc < 0) {
        Py_XDECREF(current);
        return -1;
    }
    if (current == (PyObject *)task) {
        Py_DECREF(current);
        return 0;
    }
    PyErr_Format(PyExc_RuntimeError,
                 "Leaving task %R does not match the current task %R.",
                 (PyObject *)task, current ? current : Py_None);
    Py_XDECREF(current);
    return -1;
}
#else
static int call2(PyObject *fn, PyObject *a, PyObject *b)
{
    PyObject *args[2] = {a, b};
    PyObject *r = PyObject_Vectorcall(fn, args, 2, NULL);
    if (r == NULL)
        return -1;
    Py_DECREF(r);
    return 0;
}

static int enter_task(tl_task *task)
{
    return call2(task->fut.st->enter_task, task->fut.loop, (PyObject *)task);
}

static int leave_task(tl_task *task)
{
    return call2(task->fut.st->leave_task, task->fut.loop, (PyObject *)task);
}
#endif

/* ---- scheduling the next step ------------------------------------------ */

/* Threaded loops: the task whose step (or homed callback) this thread runs
 * (tl_task.h). */
static _Thread_local tl_task *task_running;

PyObject *tl_task_running_ref(void)
{
    return Py_XNewRef((PyObject *)task_running);
}

int tl_task_home_enter(PyObject *home, tl_task **saved)
{
    tl_task *task = (tl_task *)home;
    *saved = task_running;
    if (task == task_running)
        return 0;               /* its own step runs it (Handle._run() by hand) */
    tl_dispatch_lock_in_item(&task->mt->step_lock);
    task_running = task;
    return 1;
}

void tl_task_home_leave(PyObject *home, tl_task *saved, int locked)
{
    task_running = saved;
    if (locked)
        tl_mutex_unlock(&((tl_task *)home)->mt->step_lock);
}

/* A threaded loop's item for a task: its step, never on two threads at once,
 * nor beside a callback it scheduled. */
static int task_serial_ready(tl_loop *loop, PyObject *obj)
{
    tl_task *saved;
    int locked = tl_task_home_enter(obj, &saved);
    int rc = tl_serial_run(loop, &((tl_task *)obj)->mt->serial, task_serial_ready, obj);
    tl_task_home_leave(obj, saved, locked);
    return rc;
}

/* Queue fn(task); takes a new reference (threadsafe: the one the caller
 * holds, from the future's waiter list). */
static inline int task_push(tl_loop *loop, tl_ready_fn fn, tl_task *task, int threadsafe)
{
    PyObject *obj = (PyObject *)task;
    if (!threadsafe)
        Py_INCREF(obj);
    if (TL_UNLIKELY(loop->dispatch != NULL))
        return tl_serial_push(loop, &task->mt->serial, task_serial_ready, fn, obj);
    return threadsafe ? tl_loop_push_ready_threadsafe(loop, fn, obj)
                      : tl_loop_push_ready(loop, fn, obj);
}

/* ---- asyncio's own tasks on our loop ------------------------------------ */

#if PY_VERSION_HEX < 0x030E0000
int tl_task_native_callback(tl_state *st, PyObject *cb)
{
    PyTypeObject *tp = Py_TYPE(cb);
    if (tp == st->native_step_type)
        return 1;
    if (PyCFunction_Check(cb)) {
        /* its wake-up: a C method bound to the task */
        PyObject *self = PyCFunction_GET_SELF(cb);
        return self != NULL && PyObject_TypeCheck(self, st->asyncio_task_type) &&
               !PyObject_TypeCheck(self, st->task_type);
    }
    /* its step: an object of a type _asyncio does not export */
    if (st->native_step_type == NULL && strstr(tp->tp_name, "TaskStepMethWrapper") != NULL) {
        st->native_step_type = tp;
        return 1;
    }
    return 0;
}
#endif

/* ---- cancel() beside a running step ------------------------------------ */

/* On a threaded loop cancel() may come from any thread while the task's step
 * runs on a worker. asyncio's cancel() reads fut_waiter and otherwise sets
 * must_cancel; the step clears fut_waiter and takes must_cancel when it
 * starts, and sets fut_waiter and passes must_cancel on to it when the
 * coroutine yields. Each side does its part under cancel_lock, so one of the
 * two always sees the other: cancel() finds the new waiter, or the step
 * finds must_cancel (without it, a cancel() landing between the step's
 * look at must_cancel and its new fut_waiter was lost: the task slept on).
 * Classic loops run both on the loop's thread: no lock. */
static inline int task_shared(tl_task *task)
{
    tl_loop *tloop = tl_future_tloop(&task->fut);
    return tloop != NULL && tloop->dispatch != NULL;
}

static inline void task_lock(tl_task *task, int shared)
{
    if (shared)
        tl_spin_lock(&task->mt->cancel_lock);
}

static inline void task_unlock(tl_task *task, int shared)
{
    if (shared)
        tl_spin_unlock(&task->mt->cancel_lock);
}

/* fut_waiter = waiter (stolen); the old one is released outside the lock. */
static TL_NOINLINE void task_set_waiter_shared(tl_task *task, PyObject *waiter)
{
    task_lock(task, 1);
    PyObject *old = task->fut_waiter;
    task->fut_waiter = waiter;
    task_unlock(task, 1);
    Py_XDECREF(old);
}

static TL_INLINE void task_set_waiter(tl_task *task, PyObject *waiter)
{
    if (TL_LIKELY(!task_shared(task)))
        Py_XSETREF(task->fut_waiter, waiter);
    else
        task_set_waiter_shared(task, waiter);
}

/* Take must_cancel (and a reference to its message in *msg). finishing:
 * the coroutine is over, a cancel() from now on finds the task done. */
static TL_NOINLINE int task_take_cancel_shared(tl_task *task, PyObject **msg, int finishing)
{
    task_lock(task, 1);
    int must = task->must_cancel;
    task->must_cancel = 0;
    *msg = must ? Py_XNewRef(TL_FUTURE_EXTRA(&task->fut, cancel_msg)) : NULL;
    if (finishing)
        task->finishing = 1;
    task_unlock(task, 1);
    return must;
}

static TL_INLINE int task_take_cancel(tl_task *task, PyObject **msg, int finishing)
{
    if (TL_UNLIKELY(task_shared(task)))
        return task_take_cancel_shared(task, msg, finishing);
    *msg = NULL;
    if (TL_LIKELY(!task->must_cancel))
        return 0;
    task->must_cancel = 0;
    *msg = Py_XNewRef(TL_FUTURE_EXTRA(&task->fut, cancel_msg));
    return 1;
}

/* waiter.cancel(msg): 1, 0 when it was done already, -1. */
static int task_cancel_waiter(tl_task *task, PyObject *waiter, PyObject *msg)
{
    tl_state *st = task->fut.st;
    if (Py_IS_TYPE(waiter, st->task_type))
        return task_cancel((tl_task *)waiter, msg);
    if (Py_IS_TYPE(waiter, st->future_type))
        return tl_future_cancel((tl_future *)waiter, msg);
    PyObject *res = PyObject_CallMethodOneArg(waiter, st->str_cancel, msg ? msg : Py_None);
    int r = res ? PyObject_IsTrue(res) : -1;
    Py_XDECREF(res);
    return r;
}

/* A cancel() that came while the step ran goes to what the task now waits
 * on (asyncio: "if self._must_cancel: if self._fut_waiter.cancel(msg=...):
 * self._must_cancel = False"). */
static int task_pass_cancel(tl_task *task, PyObject *waiter)
{
    int shared = task_shared(task);
    if (TL_LIKELY(!shared) && TL_LIKELY(!task->must_cancel))
        return 0;
    task_lock(task, shared);
    int must = task->must_cancel;
    PyObject *msg = must ? Py_XNewRef(TL_FUTURE_EXTRA(&task->fut, cancel_msg)) : NULL;
    task_unlock(task, shared);
    if (!must)
        return 0;
    int r = task_cancel_waiter(task, waiter, msg);
    Py_XDECREF(msg);
    if (r > 0) {
        task_lock(task, shared);
        task->must_cancel = 0;
        task_unlock(task, shared);
    }
    return r < 0 ? -1 : 0;
}

/* What the next step throws in (NULL: nothing); out of line, it is rare. */
static int task_set_step_exc(tl_task *task, PyObject *exc)
{
    tl_future_extra *x = exc != NULL ? tl_future_extra_get(&task->fut)
                                     : tl_future_extra_peek(&task->fut);
    if (x == NULL)
        return exc != NULL ? -1 : 0;
    Py_XSETREF(x->step_exc, Py_XNewRef(exc));
    return 0;
}

static PyObject *task_take_step_exc(tl_task *task)
{
    tl_future_extra *x = tl_future_extra_peek(&task->fut);
    if (TL_LIKELY(x == NULL))
        return NULL;
    PyObject *exc = x->step_exc;
    x->step_exc = NULL;
    return exc;
}

/* A threaded loop's next step that came behind callbacks its step queued:
 * from the loop's strand, after them. */
static int task_step_behind_ready(tl_loop *loop, PyObject *obj)
{
    return task_push(loop, task_step_ready, (tl_task *)obj, 0);
}

/* call_soon(step, exc) in the task's context. */
static int task_schedule_step(tl_task *task, PyObject *exc)
{
    tl_future *f = &task->fut;
    tl_loop *tloop = tl_future_tloop(f);
    if (tloop != NULL) {
        if (tl_loop_check_closed(tloop) < 0 || task_set_step_exc(task, exc) < 0)
            return -1;
#ifndef Py_GIL_DISABLED
        /* A task waiting in a running loop's ready queue is alive by that
         * queue: the collector need not visit it (with a million tasks
         * gathered, full collections were half the run). tl_loop_unqueue()
         * tracks it again after its step, and a loop that stops running
         * tracks what is still queued (tl_loop_track_queued). Threaded
         * loops keep it tracked: their queues are the workers'. */
        if (tloop->thread_id && tloop->dispatch == NULL &&
            PyObject_GC_IsTracked((PyObject *)task))
            PyObject_GC_UnTrack(task);
#endif
        /* asyncio's FIFO runs what this step queued with call_soon before
         * its next step; on a threaded loop those wait on the loop's strand
         * (behind others, maybe for this task's step lock) while a worker
         * could start the step at once: so it goes there too, behind them
         * (anyio's cancel scope with a deadline in the past cancels at the
         * first checkpoint through such a callback) */
        if (TL_UNLIKELY(tloop->dispatch != NULL) && tl_dispatch_item_queued_callback(tloop)) {
            Py_INCREF(task);
            return tl_dispatch_push_callback(tloop, task_step_behind_ready, (PyObject *)task);
        }
        return task_push(tloop, task_step_ready, task, 0);
    }
    PyObject *step = PyCFunction_New(&task_step_def, (PyObject *)task);
    if (step == NULL)
        return -1;
    int rc = tl_call_soon(f->st, f->loop, NULL, step, exc ? &exc : NULL, exc ? 1 : 0,
                          task->context);
    Py_DECREF(step);
    return rc;
}

/* The step after this one raises RuntimeError(message) in the coroutine. */
static int task_error_soon(tl_task *task, const char *format, ...)
{
    va_list vargs;
    va_start(vargs, format);
    PyObject *msg = PyUnicode_FromFormatV(format, vargs);
    va_end(vargs);
    if (msg == NULL)
        return -1;
    PyObject *exc = PyObject_CallOneArg(PyExc_RuntimeError, msg);
    Py_DECREF(msg);
    if (exc == NULL)
        return -1;
    int rc = task_schedule_step(task, exc);
    Py_DECREF(exc);
    return rc;
}

/* A threaded loop's wake-up that came behind done callbacks of the same
 * future: from the loop's strand, after them. */
static int task_wake_behind_ready(tl_loop *loop, PyObject *obj)
{
    return task_push(loop, task_wakeup_ready, (tl_task *)obj, 0);
}

int tl_task_waiter_wake(tl_waiter *w, PyObject *source)
{
    /* the reference the future's list held now belongs to us */
    tl_task *task = tl_task_of_waiter(w);
    tl_future *f = &task->fut;
    tl_loop *tloop = tl_future_tloop(f);
    if (tloop != NULL) {
        if (tl_loop_check_closed(tloop) < 0) {
            Py_DECREF(task);
            return -1;
        }
        /* asyncio runs the future's done callbacks added before the task
         * began to wait (asyncpg's _on_waiter_completed) before its step;
         * on a threaded loop they run on the loop's strand, so the wake-up
         * goes there too, behind them */
        uint8_t behind = w->after_callback;
        w->after_callback = 0;
        if (TL_UNLIKELY(behind) && tloop->dispatch != NULL)
            return tl_dispatch_push_callback(tloop, task_wake_behind_ready, (PyObject *)task);
        /* a future may be set from any thread: wake the loop if it sleeps */
        return task_push(tloop, task_wakeup_ready, task, 1);
    }
    PyObject *wakeup = tl_task_wakeup_method(task);
    int rc = wakeup ? tl_call_soon(f->st, f->loop, NULL, wakeup, &source, 1, task->context) : -1;
    Py_XDECREF(wakeup);
    Py_DECREF(task);
    return rc;
}

/* ---- the step ---------------------------------------------------------- */

static void task_finished(tl_task *task)
{
    task_unregister(task);
}

/* asyncio's checks on a yielded future, in asyncio's order: 0 when the task
 * may wait on it, 1 when the next step raises instead, -1 on error. */
static int task_refuse_yield(tl_task *task, PyObject *result, int same_loop, int blocking)
{
    int rc;
    if (!same_loop)
        rc = task_error_soon(task, "Task %R got Future %R attached to a different loop",
                             (PyObject *)task, result);
    else if (!blocking)
        rc = task_error_soon(task, "yield was used instead of yield from in task %R with %R",
                             (PyObject *)task, result);
    else if (result == (PyObject *)task)
        rc = task_error_soon(task, "Task cannot await on itself: %R", (PyObject *)task);
    else
        return 0;
    return rc < 0 ? -1 : 1;
}

/* Wait for `result`, a future of someone else's: result.add_done_callback(
 * wakeup, context=...). */
/* 3.14's call graph: a future of someone else's records the task that
 * awaits it, as asyncio's Task does (our own futures need no record:
 * future.c's _asyncio_awaited_by). */
static int task_awaited_by(tl_task *task, PyObject *fut, int add)
{
#if PY_VERSION_HEX >= 0x030E0000
    tl_state *st = task->fut.st;
    PyObject *args[2] = {fut, (PyObject *)task};
    PyObject *r = PyObject_Vectorcall(add ? st->add_awaited_by : st->discard_awaited_by,
                                      args, 2, NULL);
    if (r == NULL)
        return -1;
    Py_DECREF(r);
#else
    TL_UNUSED(task);
    TL_UNUSED(fut);
    TL_UNUSED(add);
#endif
    return 0;
}

static int task_watch_foreign(tl_task *task, PyObject *result)
{
    tl_state *st = task->fut.st;
    if (task_awaited_by(task, result, 1) < 0)
        return -1;
    PyObject *wakeup = tl_task_wakeup_method(task);
    if (wakeup == NULL)
        return -1;
    PyObject *argv[3] = {result, wakeup, task->context};
    PyObject *r = PyObject_VectorcallMethod(st->str_add_done_callback, argv, 2,
                                            st->context_kwnames);
    Py_DECREF(wakeup);
    if (r == NULL)
        return -1;
    Py_DECREF(r);
    return 0;
}

static int task_report_error(tl_task *task, PyMethodDef *def, PyObject *arg);

/* task_watch_foreign() on a threaded loop's strand (see task_handle_yield).
 * The task waits for the wake-up this sets up, so its fut_waiter holds
 * still. */
static int task_watch_foreign_ready(tl_loop *loop, PyObject *obj)
{
    TL_UNUSED(loop);
    tl_task *task = (tl_task *)obj;
    PyObject *result = task->fut_waiter;
    if (result == NULL)
        return 0;
    Py_INCREF(result);
    int rc = task_watch_foreign(task, result);
    if (rc == 0)
        rc = task_pass_cancel(task, result);
    Py_DECREF(result);
    if (rc == 0)
        return 0;
    /* as a failed step: reported, the task left waiting */
    task_set_waiter(task, NULL);
    return task_report_error(task, &task_step_def, NULL);
}

/* Where the yielded value says to go next (asyncio's
 * task_step_handle_result_impl). Steals `result`. */
static int task_handle_yield(tl_task *task, PyObject *result)
{
    tl_state *st = task->fut.st;
    PyObject *loop = task->fut.loop;
    int rc;

    if (tl_future_check_exact(st, result)) {
        tl_future *fut = (tl_future *)result;
        rc = task_refuse_yield(task, result, fut->loop == loop, tl_future_blocking(fut));
        if (rc != 0) {
            Py_DECREF(result);
            return rc < 0 ? -1 : 0;
        }
        tl_future_set_blocking(fut, 0);
        /* wait as a Waiter of the future: the list owns a reference */
        Py_INCREF(task);
        task_set_waiter(task, result);
        if (tl_future_add_task_waiter(fut, &task->waiter) == 1 &&
            tl_task_waiter_wake(&task->waiter, result) < 0)
            return -1;
        return task_pass_cancel(task, result);
    }

    if (result == Py_None) {
        /* a bare yield gives up one loop iteration (asyncio.sleep(0)) */
        Py_DECREF(result);
        return task_schedule_step(task, NULL);
    }

    PyObject *o;
    if (getattr_optional(result, st->str_asyncio_future_blocking, &o) < 0) {
        Py_DECREF(result);
        return -1;
    }
    if (o != NULL && o != Py_None) {
        /* a future of someone else's: asyncio's protocol */
        int blocking = PyObject_IsTrue(o);
        Py_DECREF(o);
        if (blocking < 0) {
            Py_DECREF(result);
            return -1;
        }
        PyObject *oloop;
        PyObject *getloop;
        int has = getattr_optional(result, st->str_get_loop, &getloop);
        if (has < 0) {
            oloop = NULL;
        } else if (has) {
            oloop = PyObject_CallNoArgs(getloop);
            Py_DECREF(getloop);
        } else {
            oloop = PyObject_GetAttr(result, st->str_loop_attr);
        }
        if (oloop == NULL) {
            Py_DECREF(result);
            return -1;
        }
        Py_DECREF(oloop);
        rc = task_refuse_yield(task, result, oloop == loop, blocking);
        if (rc != 0) {
            Py_DECREF(result);
            return rc < 0 ? -1 : 0;
        }
        if (PyObject_SetAttr(result, st->str_asyncio_future_blocking, Py_False) < 0) {
            Py_DECREF(result);
            return -1;
        }
        tl_loop *tloop = tl_future_tloop(&task->fut);
        if (tloop != NULL && tloop->dispatch != NULL) {
            /* Worker threads: asyncio's own futures are not thread-safe, and
             * what completes this one (gather()'s outer future: its
             * children's done callbacks) runs on the loop's strand. Watch
             * it from there too, in line with them: from this worker, the
             * wake-up could be lost to a set_result() running beside. */
            task_set_waiter(task, result);
            return tl_loop_push_ready(tloop, task_watch_foreign_ready, Py_NewRef(task));
        }
        if (task_watch_foreign(task, result) < 0) {
            Py_DECREF(result);
            return -1;
        }
        task->fut_waiter = result;
        return task_pass_cancel(task, result);
    }
    Py_XDECREF(o);

    if (PyGen_Check(result)) {
        rc = task_error_soon(task,
                             "yield was used instead of yield from for generator in task %R with %R",
                             (PyObject *)task, result);
    } else {
        rc = task_error_soon(task, "Task got bad yield: %R", result);
    }
    Py_DECREF(result);
    return rc;
}

/* One step of the coroutine, without enter/leave (asyncio's
 * task_step_impl). 0, or -1 with an exception set: an internal error, or a
 * KeyboardInterrupt/SystemExit from the coroutine (also stored on the task). */
static int task_step_impl(tl_task *task, PyObject *exc)
{
    tl_state *st = task->fut.st;
    if (tl_future_state(&task->fut) != TL_FUT_PENDING) {
        PyErr_Format(st->invalid_state_error, "_step(): already done: %R %R",
                     (PyObject *)task, exc ? exc : Py_None);
        return -1;
    }
    PyObject *own_exc = NULL;
    PyObject *msg;
    if (task_take_cancel(task, &msg, 0)) {
        int is_cancel = exc != NULL ? PyObject_IsInstance(exc, st->cancelled_error) : 0;
        if (is_cancel == 0)
            exc = own_exc = tl_cancelled_error_new(st, msg);
        Py_XDECREF(msg);
        if (is_cancel < 0 || exc == NULL)
            return -1;
    }
    task_set_waiter(task, NULL);

    PyObject *coro = task->coro;
    if (coro == NULL) {
        Py_XDECREF(own_exc);
        PyErr_SetString(PyExc_RuntimeError, "uninitialized Task object");
        return -1;
    }
    Py_INCREF(coro);
    PyObject *result = NULL;
    PySendResult status;
    if (exc == NULL) {
        status = PyIter_Send(coro, Py_None, &result);
    } else {
        result = PyObject_CallMethodOneArg(coro, st->str_throw, exc);
        if (result != NULL) {
            status = PYGEN_NEXT;
        } else if (PyErr_ExceptionMatches(PyExc_StopIteration)) {
            PyObject *stop = PyErr_GetRaisedException();
            PyObject *value = ((PyStopIterationObject *)stop)->value;
            result = Py_NewRef(value ? value : Py_None);
            Py_DECREF(stop);
            status = PYGEN_RETURN;
        } else {
            status = PYGEN_ERROR;
        }
    }
    Py_DECREF(coro);
    Py_XDECREF(own_exc);

    if (status == PYGEN_NEXT)
        return task_handle_yield(task, result);

    int rc;
    int must = task_take_cancel(task, &msg, 1);
    if (status == PYGEN_RETURN) {
        if (must) {
            /* cancelled right before the coroutine returned */
            rc = tl_future_cancel(&task->fut, msg) < 0 ? -1 : 0;
        } else {
            rc = tl_future_set_result(&task->fut, result);
        }
        Py_XDECREF(msg);
        Py_DECREF(result);
        task_finished(task);
        return rc;
    }
    Py_XDECREF(msg);

    if (PyErr_ExceptionMatches(st->cancelled_error)) {
        /* kept so that result() re-raises this very exception */
        tl_future_extra *x = tl_future_extra_get(&task->fut);
        if (x == NULL) {
            task_finished(task);
            return -1;
        }
        Py_XSETREF(x->cancelled_exc, PyErr_GetRaisedException());
        rc = tl_future_cancel(&task->fut, NULL) < 0 ? -1 : 0;
        task_finished(task);
        return rc;
    }
    PyObject *error = PyErr_GetRaisedException();
    if (tl_future_set_exception(&task->fut, error) < 0) {
        Py_DECREF(error);
        task_finished(task);
        return -1;
    }
    task_finished(task);
    if (PyErr_GivenExceptionMatches(error, PyExc_KeyboardInterrupt) ||
        PyErr_GivenExceptionMatches(error, PyExc_SystemExit)) {
        PyErr_SetRaisedException(error);
        return -1;
    }
    Py_DECREF(error);
    return 0;
}

/* enter_task + step + leave_task (asyncio's task_step). */
static int task_step(tl_task *task, PyObject *exc)
{
    if (enter_task(task) < 0)
        return -1;
    int rc = task_step_impl(task, exc);
    PyObject *error = rc < 0 ? PyErr_GetRaisedException() : NULL;
    if (leave_task(task) < 0) {
        if (error == NULL)
            return -1;
        PyObject *later = PyErr_GetRaisedException();
        PyException_SetContext(later, error);
        PyErr_SetRaisedException(later);
        return -1;
    }
    if (error != NULL)
        PyErr_SetRaisedException(error);
    return rc;
}

/* The exception to throw into the coroutine after waiting on `fut`, or NULL
 * to send None; -1 when getting it failed. */
static int task_outcome_of(tl_task *task, PyObject *fut, PyObject **exc)
{
    *exc = NULL;
    if (tl_future_check_exact(task->fut.st, fut)) {
        PyObject *r;
        int kind = tl_future_outcome((tl_future *)fut, &r);
        if (kind == 0) {
            Py_DECREF(r);
        } else if (kind == 1) {
            *exc = r;
        } else {
            *exc = PyErr_GetRaisedException();
        }
        return 0;
    }
    PyObject *r = PyObject_CallMethodNoArgs(fut, task->fut.st->str_result);
    if (r != NULL)
        Py_DECREF(r);
    else
        *exc = PyErr_GetRaisedException();
    return 0;
}

/* ---- running from the ready queue -------------------------------------- */

/* A failed step on our loop is reported as asyncio reports a failed
 * callback: "Exception in callback Task.task_step(...)" with a Handle. */
static int task_report_error(tl_task *task, PyMethodDef *def, PyObject *arg)
{
    if (PyErr_ExceptionMatches(PyExc_SystemExit) ||
        PyErr_ExceptionMatches(PyExc_KeyboardInterrupt))
        return -1;
    PyObject *exc = PyErr_GetRaisedException();
    PyObject *fn = PyCFunction_New(def, (PyObject *)task);
    PyObject *args = fn ? (arg ? PyTuple_Pack(1, arg) : PyTuple_New(0)) : NULL;
    tl_handle *h = args ? tl_handle_new(tl_future_tloop(&task->fut), fn,
                                        &PyTuple_GET_ITEM(args, 0), PyTuple_GET_SIZE(args),
                                        task->context)
                        : NULL;
    int rc = -1;
    if (h != NULL) {
        /* never queued, and the exception handler may keep it */
        if (!PyObject_GC_IsTracked((PyObject *)h))
            PyObject_GC_Track(h);
        PyErr_SetRaisedException(exc);
        exc = NULL;
        rc = tl_handle_report_error(h, fn, args);
    }
    Py_XDECREF(exc);
    Py_XDECREF((PyObject *)h);
    Py_XDECREF(args);
    Py_XDECREF(fn);
    return rc;
}

/* Run a step inside the task's context, as the Handle asyncio would have
 * scheduled does. */
static int task_run(tl_task *task, PyObject *exc, PyMethodDef *def, PyObject *arg)
{
    PyObject *ctx = task->context;
    int rc;
    if (TL_LIKELY(ctx != NULL && PyContext_CheckExact(ctx))) {
        Py_INCREF(ctx);
        rc = PyContext_Enter(ctx);
        if (rc == 0) {
            rc = task_step(task, exc);
            PyObject *error = rc < 0 ? PyErr_GetRaisedException() : NULL;
            if (PyContext_Exit(ctx) < 0) {
                Py_XDECREF(error);
                rc = -1;
            } else if (error != NULL) {
                PyErr_SetRaisedException(error);
            }
        }
        Py_DECREF(ctx);
    } else {
        /* a look-alike context object: asyncio calls its run() */
        PyObject *fn = PyCFunction_New(def, (PyObject *)task);
        PyObject *r = fn ? (arg ? tl_call_method(ctx, "run", "OO", fn, arg)
                                : tl_call_method(ctx, "run", "O", fn))
                         : NULL;
        Py_XDECREF(fn);
        rc = r ? 0 : -1;
        Py_XDECREF(r);
    }
    if (rc < 0)
        return task_report_error(task, def, arg);
    return 0;
}

static int task_step_ready(tl_loop *loop, PyObject *obj)
{
    TL_UNUSED(loop);
    tl_task *task = (tl_task *)obj;
    PyObject *exc = task_take_step_exc(task);
    int rc = task_run(task, exc, &task_step_def, exc);
    Py_XDECREF(exc);
    return rc;
}

static int task_wakeup_ready(tl_loop *loop, PyObject *obj)
{
    TL_UNUSED(loop);
    tl_task *task = (tl_task *)obj;
    PyObject *fut = task->fut_waiter;
    PyObject *exc = NULL;
    if (fut != NULL) {
        Py_INCREF(fut);
        task_outcome_of(task, fut, &exc);
    }
    int rc = task_run(task, exc, &task_wakeup_def, fut ? fut : Py_None);
    Py_XDECREF(exc);
    Py_XDECREF(fut);
    return rc;
}

/* The callables other loops and other futures call. */
static PyObject *task_wakeup_py(tl_task *task, PyObject *fut)
{
    if (!tl_future_check_exact(task->fut.st, fut) && task_awaited_by(task, fut, 0) < 0)
        return NULL;
    PyObject *exc;
    task_outcome_of(task, fut, &exc);
    tl_loop *tloop = tl_future_tloop(&task->fut);
    /* Worker threads: asyncio steps the task right here, in the callback;
     * here the step goes through the task's serial queue, or it could run
     * beside a step of the same task on another worker */
    int rc = tloop != NULL && tloop->dispatch != NULL ? task_schedule_step(task, exc)
                                                      : task_step(task, exc);
    Py_XDECREF(exc);
    if (rc < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *task_step_py(tl_task *task, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs > 1) {
        PyErr_Format(PyExc_TypeError, "task_step() takes at most 1 argument (%zd given)", nargs);
        return NULL;
    }
    PyObject *exc = nargs == 1 && args[0] != Py_None ? args[0] : NULL;
    if (task_step(task, exc) < 0)
        return NULL;
    Py_RETURN_NONE;
}

/* ---- eager start (3.12+) ------------------------------------------------ */

#if PY_VERSION_HEX >= 0x030C0000
/* asyncio's _swap_current_task(key, task): the task current before (new
 * ref), NULL on error. */
static PyObject *task_swap_current(tl_state *st, PyObject *key, int private, PyObject *task)
{
    PyObject *argv[2] = {key, task};
    if (private)
        tl_dispatch_key_private(1);
    PyObject *prev = PyObject_Vectorcall(st->swap_current_task, argv, 2, NULL);
    if (private)
        tl_dispatch_key_private(0);
    return prev;
}

static int task_eager_start(tl_task *task)
{
    tl_state *st = task->fut.st;
    PyObject *loop = task->fut.loop;
    PyObject *key = task_key(task);
    int private = key != loop;
    /* the context first: one the caller is already inside (ctx.run) is a
     * RuntimeError before anything else changed, so the loop's current task
     * stays as it was (gh-157301) */
    if (PyContext_Enter(task->context) < 0)
        return -1;
    PyObject *prev = task_swap_current(st, key, private, (PyObject *)task);
    PyObject *r = prev ? PyObject_CallOneArg(st->register_eager_task, (PyObject *)task) : NULL;
    if (r == NULL) {
        PyObject *exc = PyErr_GetRaisedException();
        if (prev != NULL) {
            Py_XDECREF(task_swap_current(st, key, private, prev));
            Py_DECREF(prev);
            PyErr_Clear();
        }
        PyContext_Exit(task->context);
        PyErr_SetRaisedException(exc);
        return -1;
    }
    Py_DECREF(r);
    /* a wake-up from another worker waits until this step is over, and so
     * do the callbacks it schedules */
    int shared = task_shared(task);
    tl_task *saved = NULL;
    int locked = 0;
    if (shared) {
        tl_serial_hold(&task->mt->serial);
        locked = tl_task_home_enter((PyObject *)task, &saved);
    }
    int retval = task_step_impl(task, NULL);
    PyObject *error = retval < 0 ? PyErr_GetRaisedException() : NULL;

    PyObject *cur = task_swap_current(st, key, private, prev);
    Py_DECREF(prev);
    if (cur == NULL) {
        retval = -1;
        if (error == NULL)
            error = PyErr_GetRaisedException();
        else
            PyErr_Clear();
    }
    Py_XDECREF(cur);
    r = PyObject_CallOneArg(st->unregister_eager_task, (PyObject *)task);
    if (r == NULL) {
        retval = -1;
        if (error == NULL)
            error = PyErr_GetRaisedException();
        else
            PyErr_Clear();
    }
    Py_XDECREF(r);
    if (PyContext_Exit(task->context) < 0) {
        retval = -1;
        if (error == NULL)
            error = PyErr_GetRaisedException();
        else
            PyErr_Clear();
    }
    if (tl_future_state(&task->fut) == TL_FUT_PENDING) {
        if (task_register(task) < 0) {
            retval = -1;
            if (error == NULL)
                error = PyErr_GetRaisedException();
            else
                PyErr_Clear();
        }
    } else {
        /* done in one go: the coroutine is not needed any more */
        Py_CLEAR(task->coro);
    }
    if (shared) {
        tl_task_home_leave((PyObject *)task, saved, locked);
        tl_serial_release(tl_future_tloop(&task->fut), &task->mt->serial, task_serial_ready,
                          (PyObject *)task);
    }
    if (error != NULL)
        PyErr_SetRaisedException(error);
    return retval;
}
#endif

/* ---- creation ----------------------------------------------------------- */

static int task_is_coroutine(tl_state *st, PyObject *coro)
{
    if (PyCoro_CheckExact(coro))
        return 1;
    /* asyncio.coroutines.iscoroutine(), remembered per type when true (as
     * asyncio's C Task does: the answer depends only on the type) */
    int known = PySet_Contains(st->coro_types, (PyObject *)Py_TYPE(coro));
    if (known != 0)
        return known;
    PyObject *r = PyObject_CallOneArg(st->iscoroutine, coro);
    if (r == NULL)
        return -1;
    int is = PyObject_IsTrue(r);
    Py_DECREF(r);
    if (is > 0 && PySet_GET_SIZE(st->coro_types) < 100 &&
        PySet_Add(st->coro_types, (PyObject *)Py_TYPE(coro)) < 0)
        return -1;
    return is;
}

/* Undo what a previous __init__ left behind before it runs again. */
static void task_reset(tl_task *task)
{
    if (task->waiter.linked && task->fut_waiter != NULL &&
        tl_future_check_exact(task->fut.st, task->fut_waiter) &&
        tl_event_remove(&((tl_future *)task->fut_waiter)->ev, &task->waiter))
        Py_DECREF(task);    /* the reference the list held */
    task_unregister(task);
    Py_CLEAR(task->coro);
    Py_CLEAR(task->context);
    Py_CLEAR(*tl_task_name_slot(task));
    Py_CLEAR(task->fut_waiter);
}

static int task_init(tl_task *task, PyObject *coro, PyObject *loop, PyObject *name,
                     PyObject *context, int eager_start)
{
    if (task->fut.loop != NULL)
        task_reset(task);
    if (tl_future_init(&task->fut, loop) < 0)
        return -1;
    if (task_shared(task) && task->mt == NULL) {
        task->mt = PyMem_Calloc(1, sizeof(tl_task_mt));
        if (task->mt == NULL) {
            task->fut.fast = 0;     /* nothing may take the locks it lacks */
            PyErr_NoMemory();
            return -1;
        }
    }
    tl_state *st = task->fut.st;
    task->must_cancel = 0;
    task->finishing = 0;
    task->log_destroy_pending = 1;
    task->num_cancels_requested = 0;
    int is_coro = task_is_coroutine(st, coro);
    if (is_coro < 0)
        return -1;
    if (!is_coro) {
        /* the task never ran: do not log it as pending when it dies */
        task->log_destroy_pending = 0;
        PyErr_Format(PyExc_TypeError, "a coroutine was expected, got %R", coro);
        return -1;
    }
    if (context == NULL || context == Py_None) {
        task->context = PyContext_CopyCurrent();
        if (task->context == NULL)
            return -1;
    } else {
#if PY_VERSION_HEX >= 0x030F0000
        /* 3.15 takes nothing but a Context (before, a look-alike's run()) */
        if (!PyContext_CheckExact(context)) {
            task->log_destroy_pending = 0;
            PyErr_Format(PyExc_TypeError, "a contextvars.Context was expected, got %T",
                         context);
            return -1;
        }
#endif
        task->context = Py_NewRef(context);
    }
    PyObject **name_slot = tl_task_name_slot(task);
    if (name == NULL || name == Py_None) {
        uint64_t number = atomic_fetch_add_explicit(&st->task_name_counter, 1,
                                                    memory_order_relaxed) + 1;
#if PY_VERSION_HEX < 0x030E0000
        task->name_id = number;
#else
        *name_slot = PyLong_FromUnsignedLongLong(number);
        if (*name_slot == NULL)
            return -1;
#endif
    } else if (PyUnicode_CheckExact(name)) {
        *name_slot = Py_NewRef(name);
    } else {
        *name_slot = PyObject_Str(name);
        if (*name_slot == NULL)
            return -1;
    }
    task->coro = Py_NewRef(coro);
    if (task_shared(task) && tl_dispatch_on_worker(tl_future_tloop(&task->fut)))
        tl_strand_adopt((PyObject *)task);     /* created by a protocol callback */

#if PY_VERSION_HEX >= 0x030C0000
    if (eager_start) {
        int running;
        tl_loop *tloop = tl_future_tloop(&task->fut);
        if (tloop != NULL) {
            running = tloop->thread_id != 0;
        } else {
            PyObject *r = PyObject_CallMethodNoArgs(task->fut.loop, st->str_is_running);
            running = r ? PyObject_IsTrue(r) : -1;
            Py_XDECREF(r);
        }
        if (running < 0)
            return -1;
        if (running)
            return task_eager_start(task);
    }
#else
    TL_UNUSED(eager_start);
#endif
    /* registered before its first step is queued (asyncio does it after):
     * on a threaded loop that step may run, and finish, on another worker
     * before this returns, and unregistering must find the entry */
    if (task_register(task) < 0)
        return -1;
    if (task_schedule_step(task, NULL) < 0) {
        task_unregister(task);
        return -1;
    }
    return 0;
}

PyObject *tl_task_new(tl_loop *loop, PyObject *coro, PyObject *name, PyObject *context,
                      int eager_start)
{
    tl_state *st = loop->st;
    PyTypeObject *tp = st->task_type;
    tl_task *task = (tl_task *)tp->tp_alloc(tp, 0);
    if (task == NULL)
        return NULL;
    tl_event_init(&task->fut.ev);
    tl_waiter_init(&task->waiter, TL_WAITER_TASK, tl_task_waiter_wake);
    task->fut.st = st;
    if (task_init(task, coro, (PyObject *)loop, name, context, eager_start) < 0) {
        Py_DECREF(task);
        return NULL;
    }
    return (PyObject *)task;
}

static PyObject *task_tp_new(PyTypeObject *tp, PyObject *args, PyObject *kwds)
{
    TL_UNUSED(args);
    TL_UNUSED(kwds);
    tl_state *st = tl_state_of_type(tp);
    if (st == NULL)
        return NULL;
    tl_task *task = (tl_task *)tp->tp_alloc(tp, 0);
    if (task == NULL)
        return NULL;
    tl_event_init(&task->fut.ev);
    tl_waiter_init(&task->waiter, TL_WAITER_TASK, tl_task_waiter_wake);
    task->fut.st = st;
    return (PyObject *)task;
}

static int task_tp_init(tl_task *task, PyObject *args, PyObject *kwds)
{
    PyObject *coro, *loop = Py_None, *name = Py_None, *context = Py_None;
    int eager_start = 0;
#if PY_VERSION_HEX >= 0x030C0000
    static char *kwlist[] = {"coro", "loop", "name", "context", "eager_start", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O|$OOOp:Task", kwlist, &coro, &loop,
                                     &name, &context, &eager_start))
        return -1;
#else
    static char *kwlist[] = {"coro", "loop", "name", "context", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O|$OOO:Task", kwlist, &coro, &loop,
                                     &name, &context))
        return -1;
#endif
    if (tl_future_refuse_reinit(&task->fut) < 0)
        return -1;
    return task_init(task, coro, loop, name, context, eager_start);
}

/* ---- Python methods ---------------------------------------------------- */

static int task_cancel(tl_task *task, PyObject *msg)
{
    atomic_store_explicit(&task->fut.log_tb, 0, memory_order_relaxed);
    if (tl_future_state(&task->fut) != TL_FUT_PENDING)
        return 0;
    if (msg == Py_None)
        msg = NULL;
    /* where the message goes, made before the lock is taken */
    tl_future_extra *x = msg != NULL ? tl_future_extra_get(&task->fut)
                                     : tl_future_extra_peek(&task->fut);
    if (msg != NULL && x == NULL)
        return -1;
    int shared = task_shared(task);
    task_lock(task, shared);
    if (task->finishing) {
        task_unlock(task, shared);
        return 0;
    }
    task->num_cancels_requested += 1;
    /* (asyncio keeps "if num_cancels_requested > 1: return False"
     * commented out; so do we) */
    PyObject *waiter = Py_XNewRef(task->fut_waiter);
    PyObject *was_done = NULL;  /* released with the lock let go */
    while (waiter != NULL) {
        task_unlock(task, shared);
        Py_CLEAR(was_done);
        int r = task_cancel_waiter(task, waiter, msg);
        if (r != 0) {
            Py_DECREF(waiter);
            return r;
        }
        /* It was done: the step that comes raises. Unless, on a threaded
         * loop, that step has run meanwhile and the task waits on
         * something new (cancel that), or is over. */
        task_lock(task, shared);
        PyObject *now = task->fut_waiter;
        if (!shared || now == waiter || now == NULL)
            break;
        was_done = waiter;
        waiter = Py_NewRef(now);
    }
    if (task->finishing) {
        task->num_cancels_requested -= 1;
        task_unlock(task, shared);
        Py_XDECREF(waiter);
        Py_XDECREF(was_done);
        return 0;
    }
    task->must_cancel = 1;
    PyObject *old_msg = NULL;
    if (x != NULL) {
        old_msg = x->cancel_msg;
        x->cancel_msg = Py_XNewRef(msg);
    }
    task_unlock(task, shared);
    Py_XDECREF(old_msg);
    Py_XDECREF(waiter);
    Py_XDECREF(was_done);
    return 1;
}

static PyObject *task_cancel_py(tl_task *task, PyObject *const *args, Py_ssize_t nargs,
                                PyObject *kwnames)
{
    PyObject *msg;
    if (tl_parse_cancel_args(args, nargs, kwnames, &msg) < 0)
        return NULL;
    int r = task_cancel(task, msg);
    if (r < 0)
        return NULL;
    return PyBool_FromLong(r);
}

static PyObject *task_cancelling(tl_task *task, PyObject *Py_UNUSED(ignored))
{
    return PyLong_FromLong(task->num_cancels_requested);
}

static PyObject *task_uncancel(tl_task *task, PyObject *Py_UNUSED(ignored))
{
    int shared = task_shared(task);
    task_lock(task, shared);
    if (task->num_cancels_requested > 0) {
        task->num_cancels_requested -= 1;
#if PY_VERSION_HEX >= 0x030D0000
        if (task->num_cancels_requested == 0)
            task->must_cancel = 0;
#endif
    }
    int left = task->num_cancels_requested;
    task_unlock(task, shared);
    return PyLong_FromLong(left);
}

static PyObject *task_get_name(tl_task *task, PyObject *Py_UNUSED(ignored))
{
    PyObject **slot = tl_task_name_slot(task);
#if PY_VERSION_HEX < 0x030E0000
    if (*slot == NULL) {
        if (task->name_id == 0)
            Py_RETURN_NONE;     /* never initialized */
        *slot = PyUnicode_FromFormat("Task-%llu", (unsigned long long)task->name_id);
        if (*slot == NULL)
            return NULL;
    }
#else
    if (*slot == NULL)
        Py_RETURN_NONE;         /* never initialized */
    if (PyLong_CheckExact(*slot)) {
        PyObject *name = PyUnicode_FromFormat("Task-%S", *slot);
        if (name == NULL)
            return NULL;
        Py_SETREF(*slot, name);
    }
#endif
    return Py_NewRef(*slot);
}

static PyObject *task_set_name(tl_task *task, PyObject *value)
{
    PyObject *name = PyUnicode_CheckExact(value) ? Py_NewRef(value) : PyObject_Str(value);
    if (name == NULL)
        return NULL;
    Py_XSETREF(*tl_task_name_slot(task), name);
    Py_RETURN_NONE;
}

static PyObject *task_get_coro(tl_task *task, PyObject *Py_UNUSED(ignored))
{
    return Py_NewRef(task->coro ? task->coro : Py_None);
}

#if PY_VERSION_HEX >= 0x030C0000
static PyObject *task_get_context(tl_task *task, PyObject *Py_UNUSED(ignored))
{
    return Py_NewRef(task->context ? task->context : Py_None);
}
#endif

static int parse_kwonly(const char *fname, PyObject *const *args, Py_ssize_t nargs,
                        PyObject *kwnames, const char *const *names, PyObject **values)
{
    if (nargs > 0) {
        PyErr_Format(PyExc_TypeError, "%s() takes no positional arguments", fname);
        return -1;
    }
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    for (Py_ssize_t i = 0; i < nkw; i++) {
        PyObject *key = PyTuple_GET_ITEM(kwnames, i);
        int found = 0;
        for (int j = 0; names[j] != NULL; j++) {
            if (PyUnicode_Check(key) && PyUnicode_CompareWithASCIIString(key, names[j]) == 0) {
                values[j] = args[i];
                found = 1;
                break;
            }
        }
        if (!found) {
            tl_kwarg_error(fname, key);
            return -1;
        }
    }
    return 0;
}

static PyObject *task_get_stack(tl_task *task, PyObject *const *args, Py_ssize_t nargs,
                                PyObject *kwnames)
{
    static const char *const names[] = {"limit", NULL};
    PyObject *values[1] = {Py_None};
    if (parse_kwonly("get_stack", args, nargs, kwnames, names, values) < 0)
        return NULL;
    return PyObject_CallFunctionObjArgs(task->fut.st->task_get_stack, (PyObject *)task,
                                        values[0], NULL);
}

static PyObject *task_print_stack(tl_task *task, PyObject *const *args, Py_ssize_t nargs,
                                  PyObject *kwnames)
{
    static const char *const names[] = {"limit", "file", NULL};
    PyObject *values[2] = {Py_None, Py_None};
    if (parse_kwonly("print_stack", args, nargs, kwnames, names, values) < 0)
        return NULL;
    return PyObject_CallFunctionObjArgs(task->fut.st->task_print_stack, (PyObject *)task,
                                        values[0], values[1], NULL);
}

static PyObject *task_set_result(tl_task *task, PyObject *result)
{
    TL_UNUSED(task);
    TL_UNUSED(result);
    PyErr_SetString(PyExc_RuntimeError, "Task does not support set_result operation");
    return NULL;
}

static PyObject *task_set_exception(tl_task *task, PyObject *exc)
{
    TL_UNUSED(task);
    TL_UNUSED(exc);
    PyErr_SetString(PyExc_RuntimeError, "Task does not support set_exception operation");
    return NULL;
}

static PyMethodDef task_methods[] = {
    {"cancel", (PyCFunction)(void (*)(void))task_cancel_py, METH_FASTCALL | METH_KEYWORDS,
     "cancel($self, /, msg=None)\n--\n\n"
     "Request that this task cancel itself.\n\n"
     "This arranges for a CancelledError to be thrown into the\n"
     "wrapped coroutine on the next cycle through the event loop.\n"
     "The coroutine then has a chance to clean up or even deny\n"
     "the request using try/except/finally.\n\n"
     "This also increases the task's count of cancellation requests."},
    {"cancelling", (PyCFunction)task_cancelling, METH_NOARGS,
     "Return the count of the task's cancellation requests."},
    {"uncancel", (PyCFunction)task_uncancel, METH_NOARGS,
     "Decrement the task's count of cancellation requests.\n\n"
     "Returns the remaining number of cancellation requests."},
    {"get_name", (PyCFunction)task_get_name, METH_NOARGS, NULL},
    {"set_name", (PyCFunction)task_set_name, METH_O, NULL},
    {"get_coro", (PyCFunction)task_get_coro, METH_NOARGS, NULL},
#if PY_VERSION_HEX >= 0x030C0000
    {"get_context", (PyCFunction)task_get_context, METH_NOARGS, NULL},
#endif
    {"get_stack", (PyCFunction)(void (*)(void))task_get_stack, METH_FASTCALL | METH_KEYWORDS,
     "get_stack($self, /, *, limit=None)\n--\n\n"
     "Return the list of stack frames for this task's coroutine."},
    {"print_stack", (PyCFunction)(void (*)(void))task_print_stack,
     METH_FASTCALL | METH_KEYWORDS,
     "print_stack($self, /, *, limit=None, file=None)\n--\n\n"
     "Print the stack or traceback for this task's coroutine."},
    {"set_result", (PyCFunction)task_set_result, METH_O, NULL},
    {"set_exception", (PyCFunction)task_set_exception, METH_O, NULL},
    {"__class_getitem__", Py_GenericAlias, METH_O | METH_CLASS, "See PEP 585"},
    {NULL, NULL, 0, NULL},
};

static PyObject *get_coro_attr(tl_task *task, void *c)
{
    TL_UNUSED(c);
    return Py_NewRef(task->coro ? task->coro : Py_None);
}

static PyObject *get_fut_waiter(tl_task *task, void *c)
{
    TL_UNUSED(c);
    /* the task's step replaces it (and drops the old one) on another worker */
    int shared = task_shared(task);
    task_lock(task, shared);
    PyObject *w = Py_NewRef(task->fut_waiter ? task->fut_waiter : Py_None);
    task_unlock(task, shared);
    return w;
}

static PyObject *get_must_cancel(tl_task *task, void *c)
{
    TL_UNUSED(c);
    return PyBool_FromLong(task->must_cancel);
}

static PyObject *get_log_destroy_pending(tl_task *task, void *c)
{
    TL_UNUSED(c);
    return PyBool_FromLong(task->log_destroy_pending);
}

static int set_log_destroy_pending(tl_task *task, PyObject *v, void *c)
{
    TL_UNUSED(c);
    int on = tl_attr_truth(v);
    if (on < 0)
        return -1;
    task->log_destroy_pending = (uint8_t)on;
    return 0;
}

static PyGetSetDef task_getset[] = {
    {"_coro", (getter)get_coro_attr, NULL, NULL, NULL},
    {"_fut_waiter", (getter)get_fut_waiter, NULL, NULL, NULL},
    {"_must_cancel", (getter)get_must_cancel, NULL, NULL, NULL},
    {"_log_destroy_pending", (getter)get_log_destroy_pending,
     (setter)set_log_destroy_pending, NULL, NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

/* ---- life cycle -------------------------------------------------------- */

static void task_finalize(tl_task *task)
{
    tl_future *f = &task->fut;
    if (f->loop != NULL && tl_future_state(f) == TL_FUT_PENDING && task->log_destroy_pending) {
        PyObject *exc = PyErr_GetRaisedException();
        PyObject *message = PyUnicode_FromString("Task was destroyed but it is pending!");
        PyObject *context = message ? PyDict_New() : NULL;
        if (context == NULL ||
            PyDict_SetItemString(context, "task", (PyObject *)task) < 0 ||
            PyDict_SetItemString(context, "message", message) < 0 ||
            (TL_FUTURE_EXTRA(f, source_tb) != NULL &&
             PyDict_SetItemString(context, "source_traceback",
                                  TL_FUTURE_EXTRA(f, source_tb)) < 0)) {
            PyErr_WriteUnraisable((PyObject *)task);
        } else {
            PyObject *r = PyObject_CallMethodOneArg(f->loop, f->st->str_call_exception_handler,
                                                    context);
            if (r == NULL)
                PyErr_WriteUnraisable(f->loop);
            Py_XDECREF(r);
        }
        Py_XDECREF(context);
        Py_XDECREF(message);
        PyErr_SetRaisedException(exc);
    }
    tl_future_finalize(f);
}

static void task_dealloc(tl_task *task);

static int task_traverse(tl_task *task, visitproc visit, void *arg)
{
    Py_VISIT(task->coro);
    Py_VISIT(task->context);
    Py_VISIT(task->fut_waiter);
    int rc = tl_future_traverse(&task->fut, visit, arg);
    if (rc != 0)
        return rc;
    return tl_asyncio_part_traverse((PyObject *)task, (destructor)task_dealloc, visit, arg);
}

/* Our fields only. */
static void task_clear_own(tl_task *task)
{
    Py_CLEAR(task->coro);
    Py_CLEAR(task->context);
    Py_CLEAR(task->fut_waiter);
    tl_future_clear(&task->fut);
}

static int task_clear(tl_task *task)
{
    task_clear_own(task);
    return tl_asyncio_part_clear((PyObject *)task, (destructor)task_dealloc);
}

static void task_dealloc(tl_task *task)
{
    if (PyObject_CallFinalizerFromDealloc((PyObject *)task) < 0)
        return;     /* resurrected */
    PyObject_GC_UnTrack(task);
    task_forget_registration(task);
    PyObject_ClearWeakRefs((PyObject *)task);
    task_clear_own(task);
    PyMem_Free(task->mt);
    tl_asyncio_part_dealloc((PyObject *)task, (destructor)task_dealloc);
}

static PyObject *task_repr(tl_task *task)
{
    return PyObject_CallOneArg(task->fut.st->task_repr, (PyObject *)task);
}

static PyType_Slot task_slots[] = {
    {Py_tp_new, task_tp_new},
    {Py_tp_init, task_tp_init},
    {Py_tp_dealloc, task_dealloc},
    {Py_tp_finalize, task_finalize},
    {Py_tp_traverse, task_traverse},
    {Py_tp_clear, task_clear},
    {Py_tp_repr, task_repr},
    {Py_tp_iter, tl_future_await},
    {Py_am_await, tl_future_await},
    {Py_tp_methods, NULL},      /* task_spec_fill(): Task's, then Future's */
    {Py_tp_getset, NULL},
    {Py_tp_doc,
     "Task(coro, *, loop=None, name=None, context=None, eager_start=False)\n--\n\n"
     "A coroutine wrapped in a Future."},
    {0, NULL},
};

static PyType_Spec task_spec = {
    .name = "tonio_loop._core.Task",
    .basicsize = sizeof(tl_task),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_BASETYPE,
    .slots = task_slots,
};

Py_ssize_t tl_task_name_offset;

int tl_task_find_name_slot(PyTypeObject *asyncio_task)
{
    PyObject *args = PyTuple_New(0);
    PyObject *probe = args ? asyncio_task->tp_new(asyncio_task, args, NULL) : NULL;
    PyObject *mark = PyUnicode_FromString("tonio_loop: where asyncio keeps a task's name");
    PyObject *r = probe && mark ? tl_call_method((PyObject *)asyncio_task, "set_name", "OO",
                                                 probe, mark)
                                : NULL;
    PyObject *back = r ? tl_call_method((PyObject *)asyncio_task, "get_name", "O", probe) : NULL;
    int found = 0;
    if (back != NULL) {
        const size_t step = sizeof(PyObject *);
        for (size_t off = sizeof(PyObject); off + step <= (size_t)asyncio_task->tp_basicsize;
             off += step) {
            if (*(PyObject **)((char *)probe + off) == mark) {
                tl_task_name_offset = (Py_ssize_t)off;
                found++;
            }
        }
    }
    int ok = found == 1 && back == mark;
    Py_XDECREF(back);
    Py_XDECREF(r);
    Py_XDECREF(probe);
    Py_XDECREF(mark);
    Py_XDECREF(args);
    if (PyErr_Occurred())
        return -1;
    if (!ok) {
        PyErr_SetString(PyExc_ImportError,
                        "tonio_loop cannot find where asyncio's Task keeps its name "
                        "(asyncio.Task.set_name changed)");
        return -1;
    }
    return 0;
}

/* Task derives from asyncio's Task, not from our Future: it takes the
 * Future's methods and attributes into its own tables, where its own come
 * first, so nothing of asyncio's (which would read asyncio's empty fields)
 * shows through. */
static pthread_once_t task_spec_once = PTHREAD_ONCE_INIT;
static PyMethodDef *task_all_methods;
static PyGetSetDef *task_all_getset;

/* ---- what futures ask of tasks (tl_future.h) ---------------------------- */

static PyObject *hook_waiter_task(tl_waiter *w)
{
    return (PyObject *)tl_task_of_waiter(w);
}

static PyObject *hook_waiter_context(tl_waiter *w)
{
    return tl_task_of_waiter(w)->context;
}

static PyObject *hook_wakeup_method(PyObject *task)
{
    return tl_task_wakeup_method((tl_task *)task);
}

static const tl_task_hooks task_hooks = {
    .waiter_task = hook_waiter_task,
    .waiter_context = hook_waiter_context,
    .wakeup_method = hook_wakeup_method,
    .running_ref = tl_task_running_ref,
};

static void task_spec_fill(void)
{
    tl_future_set_task_hooks(&task_hooks);
    PyMethodDef *const methods[] = {task_methods, tl_future_methods, NULL};
    PyGetSetDef *const getset[] = {task_getset, tl_future_getset, NULL};
    task_all_methods = tl_join_methods(methods);
    task_all_getset = tl_join_getset(getset);
    for (PyType_Slot *s = task_slots; s->slot; s++) {
        if (s->slot == Py_tp_methods)
            s->pfunc = task_all_methods;
        else if (s->slot == Py_tp_getset)
            s->pfunc = task_all_getset;
    }
}

PyType_Spec *tl_task_spec_ready(void)
{
    pthread_once(&task_spec_once, task_spec_fill);
    if (task_all_methods == NULL || task_all_getset == NULL) {
        PyErr_NoMemory();
        return NULL;
    }
    return &task_spec;
}

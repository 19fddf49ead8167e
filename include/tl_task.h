/* tl_task.h - tonio_loop.Task: a coroutine driven by C, on the Future core.
 *
 * A step sends into the coroutine (PyIter_Send) inside the task's context.
 * What the coroutine yields decides what happens next:
 *   - one of our Futures/Tasks: the task queues its own embedded Waiter on
 *     that future's Event; when it fires, the ready queue gets
 *     (task_wakeup_fn, task): no bound method, no Handle, no callback;
 *   - any other future (asyncio.isfuture): add_done_callback(task_wakeup,
 *     context=ctx), as asyncio does;
 *   - None (a bare yield, e.g. asyncio.sleep(0)): the next step goes
 *     straight back on the ready queue;
 *   - anything else: the step after gets a RuntimeError, with asyncio's
 *     messages.
 * On a loop that is not ours the same happens through loop.call_soon().
 */
#ifndef TL_TASK_H
#define TL_TASK_H

#include "tl_future.h"
#include "tl_dispatch.h"

/* Threaded loops only: a task's steps run on workers (tl_dispatch.h), one at
 * a time, and cancel() may come from any thread. Made with the task on such
 * a loop; classic loops' tasks carry none. */
typedef struct tl_task_mt {
    tl_serial serial;           /* one step at a time */
    tl_mutex step_lock;         /* held by each step and by the callbacks it
                                   scheduled (home tasks) */
    /* cancel() beside a running step: must_cancel, fut_waiter, the cancel
     * message, finishing and num_cancels_requested change under it (task.c) */
    tl_spinlock cancel_lock;
} tl_task_mt;

typedef struct tl_task {
    tl_future fut;
    tl_waiter waiter;           /* queued on the awaited Future of ours;
                                   while queued, the list owns a reference
                                   to the task */
    PyObject *coro;
    PyObject *context;
    PyObject *fut_waiter;
#if PY_VERSION_HEX < 0x030E0000
    PyObject *registry_ref;     /* our entry in asyncio's set of tasks */
#endif
    tl_task_mt *mt;             /* threaded loops only */
#if PY_VERSION_HEX < 0x030E0000
    uint64_t name_id;           /* unnamed: "Task-<name_id>", made on demand */
#endif
    int num_cancels_requested;
    uint8_t must_cancel;
    uint8_t finishing;          /* the last step is settling the outcome */
    uint8_t log_destroy_pending;
#if PY_VERSION_HEX >= 0x030E0000
    uint8_t registered;         /* in asyncio's task lists (task.c) */
#endif
} tl_task;

/* The name is kept where asyncio's Task keeps its own, in asyncio's part of
 * the object (tl_future.h): asyncio's get_name() and its introspection from
 * outside the process (3.14's `python -m asyncio ps`) read it there. Its
 * offset is found at import (tl_task_find_name_slot): asyncio's set_name()
 * is asked to write a probe object's name and the probe searched for it.
 * The slot holds a str, or NULL until an unnamed task is asked for its name
 * (up to 3.13), or the task's number as an int (3.14+, as asyncio's Task
 * does; its introspection needs a name object for every task). asyncio's
 * traverse and clear of its part cover it. */
extern Py_ssize_t tl_task_name_offset;

static inline PyObject **tl_task_name_slot(tl_task *task)
{
    return (PyObject **)((char *)task + tl_task_name_offset);
}

/* -1 with ImportError when asyncio's Task does not keep its name as
 * expected. */
int tl_task_find_name_slot(PyTypeObject *asyncio_task);

/* The Task type's spec, its tables joined on first use (NULL: no memory). */
PyType_Spec *tl_task_spec_ready(void);

struct tl_loop;

/* loop.create_task() without a task factory: Task(coro, loop=loop,
 * name=name, context=context, eager_start=eager_start). name and context
 * may be NULL. */
PyObject *tl_task_new(struct tl_loop *loop, PyObject *coro, PyObject *name,
                      PyObject *context, int eager_start);

/* Wake the task that owns waiter `w` (the Event detached it). */
int tl_task_waiter_wake(tl_waiter *w, PyObject *source);

/* The task's wakeup callable (what asyncio shows in a future's _callbacks). */
PyObject *tl_task_wakeup_method(tl_task *task);

/* Threaded loops: a callback scheduled by a task (call_soon, call_later,
 * add_reader, or add_done_callback on any future) never runs beside that
 * task's steps: it keeps the task as its "home" and holds the task's
 * step_lock while it runs. asyncio's own helpers rely on it: TaskGroup's
 * _on_task_done (a child's done callback, added by the parent) and the
 * parent's __aexit__ share state unlocked, as do asyncio.timeout()'s timer
 * and the task inside it. */

/* The task whose step (or homed callback) this thread runs, as a new
 * reference; NULL on any other thread. */
PyObject *tl_task_running_ref(void);

/* Around a homed callback: *saved keeps what enter() replaced; enter()
 * returns whether it took the lock (not when this thread holds it). */
#if PY_VERSION_HEX < 0x030E0000
/* cb is an asyncio-native Task's step or wake-up, as asyncio's C code
 * schedules them (tl_dispatch_native_begin says why that matters). */
int tl_task_native_callback(tl_state *st, PyObject *cb);
#endif

int tl_task_home_enter(PyObject *home, tl_task **saved);
void tl_task_home_leave(PyObject *home, tl_task *saved, int locked);

static inline tl_task *tl_task_of_waiter(tl_waiter *w)
{
    return (tl_task *)((char *)w - offsetof(tl_task, waiter));
}

#endif

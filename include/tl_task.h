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

typedef struct tl_task {
    tl_future fut;
    tl_waiter waiter;           /* queued on the awaited Future of ours;
                                   while queued, the list owns a reference
                                   to the task */
    PyObject *coro;
    PyObject *context;
    PyObject *name;             /* NULL: "Task-<name_id>", made on demand */
    PyObject *fut_waiter;
    PyObject *step_exc;         /* what the scheduled step throws in */
    PyObject *registry_ref;     /* our entry in asyncio's set of tasks */
    tl_serial serial;           /* threaded loops: one step at a time */
    tl_mutex step_lock;         /* threaded loops: held by each step and by
                                   the callbacks it scheduled (home tasks) */
    uint64_t name_id;
    int num_cancels_requested;
    /* Threaded loops: cancel() may come from any thread while a step runs
     * on a worker. must_cancel, fut_waiter, cancel_msg, finishing and
     * num_cancels_requested change under this lock there (task.c). */
    tl_spinlock cancel_lock;
    uint8_t must_cancel;
    uint8_t finishing;          /* the last step is settling the outcome */
    uint8_t log_destroy_pending;
} tl_task;

extern PyType_Spec tl_task_spec;

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
int tl_task_home_enter(PyObject *home, tl_task **saved);
void tl_task_home_leave(PyObject *home, tl_task *saved, int locked);

static inline tl_task *tl_task_of_waiter(tl_waiter *w)
{
    return (tl_task *)((char *)w - offsetof(tl_task, waiter));
}

#endif

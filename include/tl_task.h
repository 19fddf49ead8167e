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
    uint64_t name_id;
    int num_cancels_requested;
    uint8_t must_cancel;
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

static inline tl_task *tl_task_of_waiter(tl_waiter *w)
{
    return (tl_task *)((char *)w - offsetof(tl_task, waiter));
}

#endif

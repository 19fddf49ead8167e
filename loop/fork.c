/* fork.c - the registry of live loops and what a forked child does to them.
 * See tl_fork.h.
 */
#include <pthread.h>
#include <signal.h>

#include "tl_fork.h"
#include "tl_loop.h"

/* Process-wide: a fork affects every interpreter's loops alike. */
static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;
static tl_loop *registry_head;
static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;

/* The registry lock is held across fork() so the child never inherits it
 * locked by a thread that does not exist there. */
static void fork_prepare(void)
{
    pthread_mutex_lock(&registry_lock);
}

static void fork_parent(void)
{
    pthread_mutex_unlock(&registry_lock);
}

static void fork_child(void)
{
    for (tl_loop *loop = registry_head; loop != NULL; loop = loop->fork_next) {
        if (loop->ev != NULL)
            ev_loop_fork(loop->ev);
        if (loop->signal_wakeup_set)
            loop->signal_forked = 1;
    }
    pthread_mutex_unlock(&registry_lock);
}

/* os.register_at_fork(after_in_child=...): with the GIL, in the child. The
 * wakeup fd is a socketpair shared with the parent: the child's signals must
 * not land in the parent's loop, so the child lets go of it (asyncio resets
 * it in the child too). */
PyObject *tl_fork_after_child(PyObject *module, PyObject *Py_UNUSED(ignored))
{
    tl_state *st = tl_state_of_module(module);
    int reset = 0;
    pthread_mutex_lock(&registry_lock);
    for (tl_loop *loop = registry_head; loop != NULL; loop = loop->fork_next) {
        if (loop->signal_forked && loop->st == st) {
            loop->signal_forked = 0;
            loop->signal_wakeup_set = 0;
            reset = 1;
        }
    }
    pthread_mutex_unlock(&registry_lock);
    if (reset) {
        PyObject *r = PyObject_CallFunction(st->set_wakeup_fd, "i", -1);
        if (r == NULL)
            return NULL;
        Py_DECREF(r);
    }
    Py_RETURN_NONE;
}

static void fork_install(void)
{
    pthread_atfork(fork_prepare, fork_parent, fork_child);
}

int tl_fork_register(tl_loop *loop)
{
    pthread_once(&atfork_once, fork_install);
    pthread_mutex_lock(&registry_lock);
    loop->fork_prev = NULL;
    loop->fork_next = registry_head;
    if (registry_head != NULL)
        registry_head->fork_prev = loop;
    registry_head = loop;
    loop->fork_registered = 1;
    pthread_mutex_unlock(&registry_lock);
    return 0;
}

void tl_fork_unregister(tl_loop *loop)
{
    if (!loop->fork_registered)
        return;
    pthread_mutex_lock(&registry_lock);
    if (loop->fork_prev != NULL)
        loop->fork_prev->fork_next = loop->fork_next;
    else
        registry_head = loop->fork_next;
    if (loop->fork_next != NULL)
        loop->fork_next->fork_prev = loop->fork_prev;
    loop->fork_prev = loop->fork_next = NULL;
    loop->fork_registered = 0;
    pthread_mutex_unlock(&registry_lock);
}

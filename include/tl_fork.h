/* tl_fork.h - loops survive os.fork().
 *
 * A forked child shares the parent's epoll instance: if it kept using (or
 * just closed) an inherited loop, its epoll_ctl calls would rewrite the
 * parent's interest set. Every live loop is on a registry; in the child
 * ev_loop_fork() makes each one rebuild its kernel state before its next
 * poll, so the child can use, close or forget inherited loops and make new
 * ones while the parent carries on untouched.
 */
#ifndef TL_FORK_H
#define TL_FORK_H

struct tl_loop;

#include "tl_common.h"

int tl_fork_register(struct tl_loop *loop);
void tl_fork_unregister(struct tl_loop *loop);

/* _core._after_fork_child, registered with os.register_at_fork */
PyObject *tl_fork_after_child(PyObject *module, PyObject *ignored);

#endif

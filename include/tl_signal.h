/* tl_signal.h - add_signal_handler() and the signal wakeup fd (see signal.c).
 */
#ifndef TL_SIGNAL_H
#define TL_SIGNAL_H

#include "tl_common.h"

struct tl_loop;

/* Around run_forever: claim the process wakeup fd when this is the main
 * thread and nobody else holds it; give it back afterwards. */
int tl_signal_attach(struct tl_loop *loop);
void tl_signal_detach(struct tl_loop *loop);

/* Close the socketpair (loop.close()). */
void tl_signal_close(struct tl_loop *loop);

/* Remove every add_signal_handler() handler (loop.close()). */
int tl_signal_remove_all(struct tl_loop *loop);

/* loop._signal_handlers: the dict of signal number -> Handle */
PyObject *tl_signal_get_handlers(struct tl_loop *loop, void *closure);

extern PyMethodDef tl_signal_loop_methods[];

#endif

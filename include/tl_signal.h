/* tl_signal.h - signals reach the loop the way asyncio arranges it: Python's
 * C-level handler writes the signal number to a wakeup fd (a socketpair the
 * loop watches), the poll returns, and the loop runs PyErr_CheckSignals() so
 * Python handlers - KeyboardInterrupt for Ctrl-C included - run promptly even
 * while the loop was asleep. libev's own signal watchers are never used: they
 * would replace Python's handlers.
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

#endif

/* tl_ev.h - libev as tonio_loop builds it.
 *
 * libev is compiled into the extension (vendor/libev, by loop/ev.c) with the
 * options below; they change the layout of libev's structures, so every
 * file includes this header, never ev.h. What tonio_loop uses: one loop per
 * Loop, ev_io, ev_timer and ev_async watchers, the epoll backend, eventfd
 * for ev_async, the monotonic clock. Nothing else is compiled: no signal or
 * child watchers (they would take SIGCHLD and signal handlers from Python),
 * no other backends, one priority (ev_invoke_pending walks one queue).
 *
 * TONIO_SYSTEM_LIBEV (setup.py: TONIO_SYSTEM_LIBEV=1) builds against the
 * system's libev instead, with its own options.
 */
#ifndef TL_EV_H
#define TL_EV_H

#ifdef TONIO_SYSTEM_LIBEV
#include <ev.h>
#else
#define EV_STANDALONE 1         /* no config.h: the options are all here */
#define EV_COMPAT3 0
#define EV_VERIFY 0
#define EV_MULTIPLICITY 1
#define EV_MINPRI 0
#define EV_MAXPRI 0

#define EV_USE_EPOLL 1
#define EV_USE_SELECT 0
#define EV_USE_POLL 0
#define EV_USE_KQUEUE 0
#define EV_USE_PORT 0
#define EV_USE_LINUXAIO 0
#define EV_USE_IOURING 0
#define EV_USE_INOTIFY 0
#define EV_USE_SIGNALFD 0
#define EV_USE_TIMERFD 0
#define EV_USE_EVENTFD 1
#define EV_USE_MONOTONIC 1
#define EV_USE_REALTIME 0
#define EV_USE_CLOCK_SYSCALL 0
#define EV_USE_NANOSLEEP 1
#define EV_USE_FLOOR 0
#define EV_USE_4HEAP 1
#define EV_HEAP_CACHE_AT 1

#define EV_ASYNC_ENABLE 1
#define EV_PERIODIC_ENABLE 0
#define EV_SIGNAL_ENABLE 0
#define EV_CHILD_ENABLE 0
#define EV_STAT_ENABLE 0
#define EV_IDLE_ENABLE 0
#define EV_PREPARE_ENABLE 0
#define EV_CHECK_ENABLE 0
#define EV_EMBED_ENABLE 0
#define EV_FORK_ENABLE 0
#define EV_CLEANUP_ENABLE 0
#define EV_WALK_ENABLE 0

#include "ev.h"
#endif

/* Hand libev's queued fd changes (watchers started or stopped since the last
 * poll) to the kernel now, not at the next poll: the started watcher `w` is
 * then bound to the file its fd names at this moment, as asyncio's selector
 * is when add_reader() returns (loop/libev.c). When w's fd is not open libev
 * stops w, with EV_ERROR pending for it, and this returns -1 (errno EBADF).
 * With the system's libev there is no way in: it returns 0, and libev
 * registers at the next poll as it always does. */
int tl_ev_register(struct ev_loop *loop, ev_io *w);

#endif

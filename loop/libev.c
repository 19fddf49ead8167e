/* libev.c - libev 4.33, compiled into the extension (vendor/libev).
 *
 * The options are tl_ev.h's. NDEBUG: none of libev's assert()s may abort
 * the process; the one a closed fd used to hit in epoll_ctl becomes what
 * libev does without it, stopping the fd's watchers and reporting EV_ERROR
 * to them. Built from the system's libev (TONIO_SYSTEM_LIBEV), this file only
 * has tl_ev_register(), which then cannot reach libev's internals.
 */
#include "tl_ev.h"

#ifndef TONIO_SYSTEM_LIBEV

#define NDEBUG 1
#include "ev.c"     /* from vendor/libev, a system include directory */

int tl_ev_register(struct ev_loop *loop, ev_io *w)
{
    /* fd_reify() is libev's own step before each poll: the changes queued
     * by ev_io_start/stop go to epoll; an fd epoll refuses as closed has its
     * watchers stopped (fd_kill), with EV_ERROR pending for them. */
    fd_reify(loop);
    if (ev_is_active(w))
        return 0;
    errno = EBADF;
    return -1;
}

#else

int tl_ev_register(struct ev_loop *loop, ev_io *w)
{
    (void)loop;
    (void)w;
    return 0;
}

#endif

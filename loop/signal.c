/* signal.c - wake the poll for signals and run their Python handlers.
 *
 * Python's own C signal handler records the signal and writes its number to
 * the wakeup fd. While a loop runs on the main thread it owns that fd (the
 * write end of a socketpair it watches), so a signal always ends the poll and
 * PyErr_CheckSignals() runs the Python handler - Ctrl-C raises
 * KeyboardInterrupt out of run_forever() at once, even from a long sleep.
 */
#include <errno.h>
#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

#include "tl_signal.h"
#include "tl_loop.h"

static void signal_io_cb(struct ev_loop *ev, ev_io *w, int revents)
{
    TL_UNUSED(ev);
    TL_UNUSED(revents);
    tl_loop *loop = (tl_loop *)((char *)w - offsetof(tl_loop, signal_io));
    char buf[256];
    while (recv(loop->signal_fds[0], buf, sizeof(buf), 0) > 0)
        ;
    if (PyErr_CheckSignals() < 0)
        tl_loop_defer_error(loop);
}

static int signal_open(tl_loop *loop)
{
    if (loop->signal_fds[0] >= 0)
        return 0;
    int fds[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, fds) < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    loop->signal_fds[0] = fds[0];
    loop->signal_fds[1] = fds[1];
    ev_io_init(&loop->signal_io, signal_io_cb, fds[0], EV_READ);
    return 0;
}

static int set_wakeup_fd(tl_loop *loop, int fd, int *old)
{
    PyObject *kw = Py_BuildValue("{sO}", "warn_on_full_buffer", Py_False);
    PyObject *args = kw ? Py_BuildValue("(i)", fd) : NULL;
    PyObject *r = args ? PyObject_Call(loop->st->set_wakeup_fd, args, kw) : NULL;
    Py_XDECREF(kw);
    Py_XDECREF(args);
    if (r == NULL)
        return -1;
    *old = (int)PyLong_AsLong(r);
    Py_DECREF(r);
    return (*old == -1 && PyErr_Occurred()) ? -1 : 0;
}

int tl_signal_attach(tl_loop *loop)
{
    if (loop->signal_attached || loop->ev == NULL)
        return 0;
    if (signal_open(loop) < 0)
        return -1;
    int old;
    if (set_wakeup_fd(loop, loop->signal_fds[1], &old) < 0) {
        /* not the main thread (of the main interpreter): signals are not
         * delivered here anyway */
        if (PyErr_ExceptionMatches(PyExc_ValueError)) {
            PyErr_Clear();
            return 0;
        }
        return -1;
    }
    if (old != -1) {
        /* someone else (an application, another loop) holds the wakeup fd:
         * leave it to them; the poll still ends on EINTR */
        int ours;
        return set_wakeup_fd(loop, old, &ours);
    }
    loop->signal_attached = 1;
    ev_io_start(loop->ev, &loop->signal_io);
    return 0;
}

void tl_signal_detach(tl_loop *loop)
{
    if (!loop->signal_attached)
        return;
    loop->signal_attached = 0;
    if (loop->ev != NULL)
        ev_io_stop(loop->ev, &loop->signal_io);
    PyObject *exc = PyErr_GetRaisedException();
    int prev;
    if (set_wakeup_fd(loop, -1, &prev) == 0 && prev != loop->signal_fds[1]) {
        /* it changed hands while we ran: put the new owner back */
        int ours;
        if (set_wakeup_fd(loop, prev, &ours) < 0)
            PyErr_Clear();
    }
    PyErr_Clear();
    PyErr_SetRaisedException(exc);
}

void tl_signal_close(tl_loop *loop)
{
    tl_signal_detach(loop);
    for (int i = 0; i < 2; i++) {
        if (loop->signal_fds[i] >= 0) {
            close(loop->signal_fds[i]);
            loop->signal_fds[i] = -1;
        }
    }
}

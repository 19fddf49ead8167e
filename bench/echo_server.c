/* echo_server.c - the physical floor for the echo benchmarks: a plain,
 * single-threaded epoll echo server with nothing but system calls in it.
 *
 *   echo_server [--port P] [--cpu C]
 *
 * Listens on 127.0.0.1:P (0: any free port), prints "PORT <n>" on stdout once
 * it accepts connections, and echoes every byte back until SIGTERM or SIGINT.
 * It writes at once and keeps only what the kernel refused (waiting for
 * EPOLLOUT, and not reading that connection meanwhile), which is the
 * behaviour the loops under test are measured against.
 *
 * Built by the benchmark runner (bench/net.py) with the system cc.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "pin.h"

#define BUF_SIZE (256 * 1024)
#define MAX_EVENTS 256

typedef struct conn {
    int fd;
    char *pending;      /* bytes the kernel did not take yet */
    size_t pending_len;
    size_t pending_off;
} conn;

static volatile sig_atomic_t stop;

static void on_signal(int sig)
{
    (void)sig;
    stop = 1;
}

static void die(const char *what)
{
    perror(what);
    exit(1);
}

static void conn_close(int ep, conn *c)
{
    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    free(c->pending);
    free(c);
}

/* Write what we can; keep the rest and wait for EPOLLOUT. Returns -1 when the
 * connection is gone. */
static int conn_send(int ep, conn *c, const char *data, size_t len)
{
    while (len > 0) {
        ssize_t n = send(c->fd, data, len, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno != EAGAIN)
                return -1;
            c->pending = malloc(len);
            if (c->pending == NULL)
                die("malloc");
            memcpy(c->pending, data, len);
            c->pending_len = len;
            c->pending_off = 0;
            struct epoll_event ev = {.events = EPOLLOUT, .data.ptr = c};
            if (epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev) < 0)
                die("epoll_ctl");
            return 0;
        }
        data += n;
        len -= (size_t)n;
    }
    return 0;
}

static int conn_flush(int ep, conn *c)
{
    while (c->pending_off < c->pending_len) {
        ssize_t n = send(c->fd, c->pending + c->pending_off,
                         c->pending_len - c->pending_off, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return errno == EAGAIN ? 0 : -1;
        }
        c->pending_off += (size_t)n;
    }
    free(c->pending);
    c->pending = NULL;
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
    if (epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev) < 0)
        die("epoll_ctl");
    return 0;
}

int main(int argc, char **argv)
{
    int port = 0, cpu = -1;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--port") && i + 1 < argc)
            port = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--cpu") && i + 1 < argc)
            cpu = atoi(argv[++i]);
        else {
            fprintf(stderr, "usage: %s [--port P] [--cpu C]\n", argv[0]);
            return 2;
        }
    }
    pin_to_cpu(cpu);
    signal(SIGTERM, on_signal);
    signal(SIGINT, on_signal);

    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (lfd < 0)
        die("socket");
    int one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    struct sockaddr_in addr = {.sin_family = AF_INET,
                               .sin_port = htons((uint16_t)port),
                               .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (bind(lfd, (struct sockaddr *)&addr, sizeof(addr)) < 0)
        die("bind");
    if (listen(lfd, 1024) < 0)
        die("listen");
    socklen_t alen = sizeof(addr);
    if (getsockname(lfd, (struct sockaddr *)&addr, &alen) < 0)
        die("getsockname");

    int ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0)
        die("epoll_create1");
    struct epoll_event lev = {.events = EPOLLIN, .data.ptr = NULL};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &lev) < 0)
        die("epoll_ctl");
    printf("PORT %d\n", ntohs(addr.sin_port));
    fflush(stdout);

    char *buf = malloc(BUF_SIZE);
    if (buf == NULL)
        die("malloc");
    struct epoll_event events[MAX_EVENTS];
    while (!stop) {
        int n = epoll_wait(ep, events, MAX_EVENTS, -1);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            die("epoll_wait");
        }
        for (int i = 0; i < n; i++) {
            conn *c = events[i].data.ptr;
            if (c == NULL) {
                for (;;) {
                    int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
                    if (fd < 0)
                        break;
                    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
                    conn *nc = calloc(1, sizeof(*nc));
                    if (nc == NULL)
                        die("calloc");
                    nc->fd = fd;
                    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = nc};
                    if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) < 0)
                        die("epoll_ctl");
                }
                continue;
            }
            if (c->pending != NULL) {
                if (conn_flush(ep, c) < 0)
                    conn_close(ep, c);
                continue;
            }
            ssize_t got = recv(c->fd, buf, BUF_SIZE, 0);
            if (got < 0 && (errno == EAGAIN || errno == EINTR))
                continue;
            if (got <= 0 || conn_send(ep, c, buf, (size_t)got) < 0)
                conn_close(ep, c);
        }
    }
    close(ep);
    close(lfd);
    free(buf);
    return 0;
}

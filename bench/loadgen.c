/* loadgen.c - the client side of the network benchmarks: a single-threaded
 * epoll load generator, pinned to its own CPU so that it does not compete
 * with the server under test.
 *
 *   loadgen --port P [--mode echo|http|udp] [--conns N] [--size S]
 *           [--warmup SECONDS] [--duration SECONDS] [--cpu C] [--path /]
 *           [--requests N]
 *
 * Each of N connections to 127.0.0.1:P runs one request at a time:
 *   echo  sends S bytes and waits until the same S bytes came back;
 *   http  sends "GET PATH HTTP/1.1" (keep-alive) and reads one response,
 *         framed by its Content-Length;
 *   udp   sends one S-byte datagram from a connected UDP socket and waits
 *         for one datagram of S bytes back (a datagram lost on the way is
 *         sent again after RESEND_MS, and counted).
 * After the warm-up it prints "START", measures for the duration, prints
 * "END" (or, with --requests, once N requests were measured: a fixed amount
 * of work, for instruction counts), then one line of JSON: requests, seconds, requests per second and
 * the latency distribution in microseconds. Lines are flushed at once: the
 * runner reads the server's CPU time when START and END arrive. Exit status
 * 1 (with "error" in the JSON) when the server misbehaves.
 *
 * Built by the benchmark runner (bench/net.py) with the system cc.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "latency.h"
#include "pin.h"

#define RECV_CHUNK (256 * 1024)
#define HTTP_BUF 65536
#define RESEND_MS 200

enum mode { MODE_ECHO, MODE_HTTP, MODE_UDP };

typedef struct conn {
    int fd;
    size_t sent;            /* bytes of the current request sent */
    size_t received;        /* echo: bytes back; http: bytes in buf */
    int want_out;           /* EPOLLOUT armed */
    uint64_t started_ns;
    char *buf;              /* http: the response being read */
} conn;

static enum mode mode = MODE_ECHO;
static const char *request;
static size_t request_len;

static void fail(const char *what)
{
    if (error == NULL)
        error = what;
}

static int arm(int ep, conn *c, int want_out)
{
    if (c->want_out == want_out)
        return 0;
    struct epoll_event ev = {.events = EPOLLIN | (want_out ? EPOLLOUT : 0), .data.ptr = c};
    c->want_out = want_out;
    return epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
}

/* Send the rest of the current request; arm EPOLLOUT if the kernel is full. */
static int conn_send(int ep, conn *c)
{
    while (c->sent < request_len) {
        ssize_t n = send(c->fd, request + c->sent, request_len - c->sent, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN)
                return arm(ep, c, 1);
            fail(mode == MODE_UDP ? "send failed: is the server there?"
                                  : "send failed: the server closed the connection");
            return -1;
        }
        c->sent += (size_t)n;
    }
    return arm(ep, c, 0);
}

static int conn_start(int ep, conn *c)
{
    c->sent = 0;
    c->received = 0;
    c->started_ns = now_ns();
    return conn_send(ep, c);
}

/* The length of a complete HTTP response at the start of buf, or 0. */
static size_t http_response_len(conn *c)
{
    c->buf[c->received] = '\0';
    char *end = strstr(c->buf, "\r\n\r\n");
    if (end == NULL)
        return 0;
    size_t header_len = (size_t)(end - c->buf) + 4;
    size_t body = 0;
    int framed = 0;
    for (char *line = strstr(c->buf, "\r\n"); line && line < end; line = strstr(line + 2, "\r\n")) {
        if (!strncasecmp(line + 2, "content-length:", 15)) {
            body = strtoul(line + 2 + 15, NULL, 10);
            framed = 1;
        } else if (!strncasecmp(line + 2, "transfer-encoding:", 18)) {
            fail("chunked responses are not supported");
            return 0;
        }
    }
    if (!framed) {
        fail("response without Content-Length");
        return 0;
    }
    return c->received >= header_len + body ? header_len + body : 0;
}

/* Read until the answer is complete or the socket is empty. A complete
 * answer starts the next request and returns without another recv(): nothing
 * more can be there before the server has the request (epoll is level-
 * triggered, so whatever is there anyway is reported again), and on a small
 * machine the generator's syscalls are CPU the server does not get. */
static int conn_read(int ep, conn *c, char *scratch)
{
    for (;;) {
        ssize_t n;
        if (mode != MODE_HTTP) {
            n = recv(c->fd, scratch, RECV_CHUNK, 0);
        } else {
            if (c->received >= HTTP_BUF - 1) {
                fail("response larger than 64 KiB");
                return -1;
            }
            n = recv(c->fd, c->buf + c->received, HTTP_BUF - 1 - c->received, 0);
        }
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN)
                return 0;
            fail("recv failed");
            return -1;
        }
        if (mode == MODE_UDP) {
            if ((size_t)n != request_len) {
                fail("the server sent back a datagram of another size");
                return -1;
            }
            record_latency(c->started_ns);
            return conn_start(ep, c);
        }
        if (n == 0) {
            fail("the server closed a connection");
            return -1;
        }
        c->received += (size_t)n;
        if (mode == MODE_ECHO) {
            if (c->received > request_len) {
                fail("the server sent more bytes than it was sent");
                return -1;
            }
            if (c->received == request_len && c->sent == request_len) {
                record_latency(c->started_ns);
                return conn_start(ep, c);
            }
        } else {
            size_t len = http_response_len(c);
            if (error)
                return -1;
            if (len) {
                if (len != c->received) {
                    fail("bytes after the response (pipelining is not used)");
                    return -1;
                }
                record_latency(c->started_ns);
                return conn_start(ep, c);
            }
        }
    }
}

int main(int argc, char **argv)
{
    int port = 0, nconns = 10, cpu = -1;
    size_t size = 1024;
    double warmup = 0.5, duration = 2.0;
    unsigned long long max_requests = 0;     /* 0: until the duration is over */
    const char *path = "/";
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (v == NULL)
            goto usage;
        if (!strcmp(a, "--port"))
            port = atoi(v);
        else if (!strcmp(a, "--mode") && !strcmp(v, "echo"))
            mode = MODE_ECHO;
        else if (!strcmp(a, "--mode") && !strcmp(v, "http"))
            mode = MODE_HTTP;
        else if (!strcmp(a, "--mode") && !strcmp(v, "udp"))
            mode = MODE_UDP;
        else if (!strcmp(a, "--conns"))
            nconns = atoi(v);
        else if (!strcmp(a, "--size"))
            size = strtoul(v, NULL, 10);
        else if (!strcmp(a, "--warmup"))
            warmup = atof(v);
        else if (!strcmp(a, "--duration"))
            duration = atof(v);
        else if (!strcmp(a, "--cpu"))
            cpu = atoi(v);
        else if (!strcmp(a, "--path"))
            path = v;
        else if (!strcmp(a, "--requests"))
            max_requests = strtoull(v, NULL, 10);
        else
            goto usage;
        i++;
    }
    if (port <= 0 || nconns <= 0 || size == 0 || duration <= 0)
        goto usage;
    pin_to_cpu(cpu);

    if (mode != MODE_HTTP) {
        char *msg = malloc(size);
        if (msg == NULL)
            return 1;
        for (size_t i = 0; i < size; i++)
            msg[i] = (char)('a' + i % 26);
        request = msg;
        request_len = size;
    } else {
        static char req[1024];
        int n = snprintf(req, sizeof(req),
                         "GET %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUser-Agent: tonio-loadgen\r\n"
                         "Accept: */*\r\n\r\n", path, port);
        if (n <= 0 || (size_t)n >= sizeof(req))
            goto usage;
        request = req;
        request_len = (size_t)n;
        size = request_len;
    }

    int ep = epoll_create1(EPOLL_CLOEXEC);
    conn *conns = calloc((size_t)nconns, sizeof(conn));
    char *scratch = malloc(RECV_CHUNK);
    if (ep < 0 || conns == NULL || scratch == NULL)
        return 1;
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                               .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    int one = 1;
    for (int i = 0; i < nconns; i++) {
        conn *c = &conns[i];
        c->fd = socket(AF_INET, (mode == MODE_UDP ? SOCK_DGRAM : SOCK_STREAM) | SOCK_CLOEXEC, 0);
        if (c->fd < 0 || connect(c->fd, (struct sockaddr *)&addr, sizeof(addr)) < 0) {
            fail("could not connect");
            print_result(0, nconns, size);
            return 1;
        }
        if (mode != MODE_UDP)
            setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        int flags = fcntl(c->fd, F_GETFL);
        if (flags < 0 || fcntl(c->fd, F_SETFL, flags | O_NONBLOCK) < 0)
            return 1;
        if (mode == MODE_HTTP && (c->buf = malloc(HTTP_BUF)) == NULL)
            return 1;
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
        if (epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev) < 0)
            return 1;
    }

    uint64_t t0 = now_ns();
    uint64_t start_at = t0 + (uint64_t)(warmup * 1e9);
    uint64_t end_at = start_at + (uint64_t)(duration * 1e9);
    uint64_t measured_from = t0;
    if (warmup <= 0)
        window_start();
    for (int i = 0; i < nconns && !error; i++)
        conn_start(ep, &conns[i]);

    struct epoll_event events[256];
    while (!error) {
        uint64_t now = now_ns();
        if (!measuring && now >= start_at) {
            measured_from = now;
            /* the window is the full duration from here, even when this
             * process was not scheduled for a while after the warm-up */
            end_at = now + (uint64_t)(duration * 1e9);
            window_start();
        }
        if (now >= end_at || (max_requests && measuring && completed >= max_requests))
            break;
        uint64_t next = measuring ? end_at : start_at;
        int timeout_ms = (int)((next - now) / 1000000u) + 1;
        if (mode == MODE_UDP) {
            /* datagrams may be dropped: send again what got no answer */
            for (int i = 0; i < nconns && !error; i++) {
                if (now - conns[i].started_ns >= RESEND_MS * 1000000ull) {
                    resent++;
                    conn_start(ep, &conns[i]);
                }
            }
            if (timeout_ms > RESEND_MS)
                timeout_ms = RESEND_MS;
        }
        int n = epoll_wait(ep, events, 256, timeout_ms);
        if (n < 0 && errno != EINTR) {
            fail("epoll_wait failed");
            break;
        }
        for (int i = 0; i < n && !error; i++) {
            conn *c = events[i].data.ptr;
            if (events[i].events & EPOLLOUT && conn_send(ep, c) < 0)
                break;
            if (events[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR) && conn_read(ep, c, scratch) < 0)
                break;
        }
    }
    double seconds = (double)(now_ns() - measured_from) / 1e9;
    window_end();
    print_result(seconds, nconns, size);
    for (int i = 0; i < nconns; i++) {
        close(conns[i].fd);
        free(conns[i].buf);
    }
    close(ep);
    return error ? 1 : 0;
usage:
    fprintf(stderr,
            "usage: %s --port P [--mode echo|http|udp] [--conns N] [--size S] "
            "[--warmup SECONDS] [--duration SECONDS] [--cpu C] [--path /] "
            "[--requests N]\n", argv[0]);
    return 2;
}

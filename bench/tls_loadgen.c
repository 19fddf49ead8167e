/* tls_loadgen.c - the client side of the TLS benchmarks: loadgen.c's echo
 * load over TLS (OpenSSL), single-threaded epoll, pinned to its own CPU.
 *
 *   tls_loadgen --port P [--mode echo|handshake] [--conns N] [--size S]
 *               [--warmup SECONDS] [--duration SECONDS] [--cpu C]
 *
 *   echo       N TLS connections, each sending S bytes and waiting until
 *              the same S bytes came back, one request at a time;
 *   handshake  N connections at a time, each connecting, completing a TLS
 *              handshake, sending close_notify and closing: one request
 *              per handshake.
 *
 * The certificate is not verified (the load is what is measured, not the
 * PKI); TLS 1.3 unless the server only speaks 1.2. Output as loadgen.c:
 * "START", "END", then one line of JSON.
 *
 * Built by the benchmark runner (bench/net.py) with the system cc, linked
 * with -lssl -lcrypto.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "latency.h"
#include "pin.h"

#define RECV_CHUNK (256 * 1024)

enum mode { MODE_ECHO, MODE_HANDSHAKE };

typedef struct conn {
    int fd;
    SSL *ssl;
    int handshaken;
    size_t sent;
    size_t received;
    uint32_t events;        /* what epoll watches */
    uint64_t started_ns;
} conn;

static enum mode mode = MODE_ECHO;
static SSL_CTX *ctx;
static struct sockaddr_in addr;
static char *request;
static size_t request_len;
static char error_buf[256];

static void fail(const char *what)
{
    if (error != NULL)
        return;
    unsigned long e = ERR_get_error();
    if (e) {
        snprintf(error_buf, sizeof(error_buf), "%s: %s", what, ERR_reason_error_string(e));
        error = error_buf;
    } else {
        error = what;
    }
}

static int watch(int ep, conn *c, uint32_t events)
{
    if (c->events == events)
        return 0;
    struct epoll_event ev = {.events = events, .data.ptr = c};
    c->events = events;
    return epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
}

/* a new TCP connection and SSL object for c */
static int conn_open(int ep, conn *c)
{
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (c->fd < 0)
        return -1;
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (connect(c->fd, (struct sockaddr *)&addr, sizeof(addr)) < 0 && errno != EINPROGRESS) {
        fail("could not connect");
        return -1;
    }
    c->ssl = SSL_new(ctx);
    if (c->ssl == NULL || !SSL_set_fd(c->ssl, c->fd)) {
        fail("SSL_new");
        return -1;
    }
    SSL_set_connect_state(c->ssl);
    c->handshaken = 0;
    c->sent = c->received = 0;
    c->started_ns = now_ns();
    c->events = EPOLLIN | EPOLLOUT;
    struct epoll_event ev = {.events = c->events, .data.ptr = c};
    return epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev);
}

static void conn_close(conn *c)
{
    if (c->ssl) {
        SSL_shutdown(c->ssl);   /* our close_notify; no wait for theirs */
        SSL_free(c->ssl);
        c->ssl = NULL;
    }
    if (c->fd >= 0) {
        close(c->fd);
        c->fd = -1;
    }
}

/* 0: wait for the events now watched; -1: failed */
/* 1: the call would block (the SSL_ERROR_WANT_* it gave in *err), 0: it
 * failed (reported) */
static int would_block(conn *c, int r, const char *what, int *err)
{
    *err = SSL_get_error(c->ssl, r);
    if (*err == SSL_ERROR_WANT_READ || *err == SSL_ERROR_WANT_WRITE)
        return 1;
    fail(*err == SSL_ERROR_ZERO_RETURN ? "the server closed a connection" : what);
    return 0;
}

/* Everything c can do now: handshake, then write the rest of the request
 * and read what came back, both as far as they go (reading while a write
 * waits keeps a server that echoes as it reads from stalling on us). */
static int conn_step(int ep, conn *c, char *scratch)
{
    for (;;) {
        int err;
        if (!c->handshaken) {
            int r = SSL_do_handshake(c->ssl);
            if (r != 1) {
                if (!would_block(c, r, "handshake failed", &err))
                    return -1;
                return watch(ep, c, err == SSL_ERROR_WANT_WRITE ? EPOLLIN | EPOLLOUT : EPOLLIN);
            }
            c->handshaken = 1;
            if (mode == MODE_HANDSHAKE) {
                record_latency(c->started_ns);
                conn_close(c);
                if (conn_open(ep, c) < 0)
                    return -1;
                continue;
            }
            c->started_ns = now_ns();
        }
        int progressed = 0, write_blocked = 0;
        if (c->sent < request_len) {
            size_t written = 0;
            int r = SSL_write_ex(c->ssl, request + c->sent, request_len - c->sent, &written);
            if (r > 0) {
                c->sent += written;
                progressed = 1;
            } else if (!would_block(c, r, "SSL_write failed", &err)) {
                return -1;
            } else {
                write_blocked = err == SSL_ERROR_WANT_WRITE;
            }
        }
        size_t got = 0;
        int r = SSL_read_ex(c->ssl, scratch, RECV_CHUNK, &got);
        if (r > 0) {
            progressed = 1;
            c->received += got;
            if (c->received > request_len) {
                fail("the server sent more bytes than it was sent");
                return -1;
            }
            if (c->received == request_len) {
                /* the next request starts on the next round of epoll (level
                 * triggered), so one fast connection cannot keep the client
                 * from the others and from its clock */
                record_latency(c->started_ns);
                c->sent = c->received = 0;
                c->started_ns = now_ns();
                return watch(ep, c, EPOLLIN | EPOLLOUT);
            }
        } else if (!would_block(c, r, "SSL_read failed", &err)) {
            return -1;
        }
        if (!progressed)
            return watch(ep, c, write_blocked ? EPOLLIN | EPOLLOUT : EPOLLIN);
    }
}

int main(int argc, char **argv)
{
    int port = 0, nconns = 10, cpu = -1;
    size_t size = 1024;
    double warmup = 0.5, duration = 2.0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (v == NULL)
            goto usage;
        if (!strcmp(a, "--port"))
            port = atoi(v);
        else if (!strcmp(a, "--mode") && (!strcmp(v, "echo") || !strcmp(v, "handshake")))
            mode = !strcmp(v, "handshake") ? MODE_HANDSHAKE : MODE_ECHO;
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
        else
            goto usage;
        i++;
    }
    if (port <= 0 || nconns <= 0 || size == 0 || duration <= 0)
        goto usage;
    pin_to_cpu(cpu);

    ctx = SSL_CTX_new(TLS_client_method());
    if (ctx == NULL)
        return 1;
    SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
    SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);  /* full handshakes */

    request = malloc(size);
    if (request == NULL)
        return 1;
    for (size_t i = 0; i < size; i++)
        request[i] = (char)('a' + i % 26);
    request_len = mode == MODE_ECHO ? size : 0;
    addr = (struct sockaddr_in){.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                                .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};

    int ep = epoll_create1(EPOLL_CLOEXEC);
    conn *conns = calloc((size_t)nconns, sizeof(conn));
    char *scratch = malloc(RECV_CHUNK);
    if (ep < 0 || conns == NULL || scratch == NULL)
        return 1;

    uint64_t t0 = now_ns();
    uint64_t start_at = t0 + (uint64_t)(warmup * 1e9);
    uint64_t end_at = start_at + (uint64_t)(duration * 1e9);
    uint64_t measured_from = t0;
    if (warmup <= 0)
        window_start();
    for (int i = 0; i < nconns && !error; i++) {
        conns[i].fd = -1;
        if (conn_open(ep, &conns[i]) < 0) {
            fail("could not connect");
            print_result(0, nconns, size);
            return 1;
        }
    }

    struct epoll_event events[256];
    while (!error) {
        uint64_t now = now_ns();
        if (!measuring && now >= start_at) {
            measured_from = now;
            window_start();
        }
        if (now >= end_at)
            break;
        uint64_t next = measuring ? end_at : start_at;
        int timeout_ms = (int)((next - now) / 1000000u) + 1;
        int n = epoll_wait(ep, events, 256, timeout_ms);
        if (n < 0 && errno != EINTR) {
            fail("epoll_wait failed");
            break;
        }
        for (int i = 0; i < n && !error; i++)
            if (conn_step(ep, events[i].data.ptr, scratch) < 0)
                break;
    }
    double seconds = (double)(now_ns() - measured_from) / 1e9;
    window_end();
    print_result(seconds, nconns, mode == MODE_ECHO ? size : 0);
    for (int i = 0; i < nconns; i++)
        conn_close(&conns[i]);
    close(ep);
    SSL_CTX_free(ctx);
    return error ? 1 : 0;
usage:
    fprintf(stderr,
            "usage: %s --port P [--mode echo|handshake] [--conns N] [--size S] "
            "[--warmup SECONDS] [--duration SECONDS] [--cpu C]\n", argv[0]);
    return 2;
}

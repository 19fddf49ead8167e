/* latency.h - shared by the bench's load generators (loadgen.c,
 * tls_loadgen.c): the clock, the latency histogram of the measured window,
 * the first error, and the JSON result line the runner reads. */
#ifndef BENCH_LATENCY_H
#define BENCH_LATENCY_H

#include <stdint.h>
#include <stdio.h>
#include <sys/resource.h>
#include <time.h>

#define HIST_US 100000          /* 1 us buckets up to 100 ms, then one more */

static uint64_t hist[HIST_US + 1];
static uint64_t completed, lat_sum_us, lat_max_us;
static uint64_t resent;         /* udp: datagrams sent again after a loss */
static int measuring;           /* inside the measured window */
static const char *error;       /* the first failure, reported in the JSON */
static double cpu_start, cpu_window;    /* this process's CPU seconds */

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static double cpu_seconds(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_stime.tv_sec +
           ((double)ru.ru_utime.tv_usec + (double)ru.ru_stime.tv_usec) / 1e6;
}

/* The measured window opens: the runner reads the server's CPU time on
 * "START", we read ours, so that the result says what the load itself cost
 * (on a small machine the generator's CPU is taken from the server's). */
static void window_start(void)
{
    measuring = 1;
    cpu_start = cpu_seconds();
    printf("START\n");
    fflush(stdout);
}

static void window_end(void)
{
    cpu_window = cpu_seconds() - cpu_start;
    printf("END\n");
}

/* One request done, started at started_ns (counted inside the window only). */
static void record_latency(uint64_t started_ns)
{
    if (!measuring)
        return;
    uint64_t us = (now_ns() - started_ns) / 1000u;
    hist[us < HIST_US ? us : HIST_US]++;
    completed++;
    lat_sum_us += us;
    if (us > lat_max_us)
        lat_max_us = us;
}

static void print_result(double seconds, int nconns, size_t size)
{
    double pct[3] = {0.50, 0.90, 0.99};
    uint64_t at[3] = {0, 0, 0};
    for (int k = 0; k < 3; k++) {
        uint64_t rank = (uint64_t)(pct[k] * (double)completed);
        uint64_t seen = 0;
        for (int i = 0; i <= HIST_US; i++) {
            seen += hist[i];
            if (seen > rank) {
                at[k] = (uint64_t)i;
                break;
            }
        }
    }
    printf("{\"requests\": %llu, \"seconds\": %.6f, \"rps\": %.1f, \"conns\": %d, "
           "\"size\": %zu, \"latency_us\": {\"mean\": %.1f, \"p50\": %llu, "
           "\"p90\": %llu, \"p99\": %llu, \"max\": %llu}",
           (unsigned long long)completed, seconds,
           seconds > 0 ? (double)completed / seconds : 0.0, nconns, size,
           completed ? (double)lat_sum_us / (double)completed : 0.0,
           (unsigned long long)at[0], (unsigned long long)at[1],
           (unsigned long long)at[2], (unsigned long long)lat_max_us);
    if (completed)
        printf(", \"cpu_us_per_req\": %.2f", cpu_window * 1e6 / (double)completed);
    if (resent)
        printf(", \"resent\": %llu", (unsigned long long)resent);
    if (error)
        printf(", \"error\": \"%s\"", error);
    printf("}\n");
    fflush(stdout);
}

#endif

/* Throughput of the C API: blocking dreamos_bridge_route and
 * dreamos_bridge_route_async, to a C echo handler and to the library's Rust
 * echo, printed beside a direct C function call (the floor) measured in the
 * same run. Numbers only, no assertions: run it with `make bench-c`. */
#define _POSIX_C_SOURCE 200809L

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "dreamos_bridge.h"

#define PAYLOAD "{\"city\": \"Paris\", \"units\": \"metric\", \"n\": 42}"

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* The C echo handler: what a minimal real handler does (copy the input). */
static dreamos_status c_echo(void *user_data, const char *message_json, char **reply_json_out) {
    (void)user_data;
    size_t n = strlen(message_json) + 1;
    char *reply = malloc(n);
    if (reply == NULL) return DREAMOS_INTERNAL;
    memcpy(reply, message_json, n);
    *reply_json_out = reply;
    return DREAMOS_OK;
}

/* Called through a volatile pointer so the compiler cannot inline it away. */
static dreamos_status (*volatile direct_fn)(void *, const char *, char **) = c_echo;

struct result {
    const char *name;
    long ops;
    double seconds;
};

static struct result bench_direct(long n) {
    double t0 = now_s();
    for (long i = 0; i < n; i++) {
        char *reply = NULL;
        direct_fn(NULL, PAYLOAD, &reply);
        free(reply);
    }
    return (struct result){"direct C call (floor)", n, now_s() - t0};
}

static struct result bench_route(dreamos_bridge *b, const char *dest, const char *name, long n) {
    long ok = 0;
    double t0 = now_s();
    for (long i = 0; i < n; i++) {
        char *reply = NULL;
        if (dreamos_bridge_route(b, NULL, dest, PAYLOAD, 10000, &reply) == DREAMOS_OK) ok++;
        dreamos_string_free(reply);
    }
    double dt = now_s() - t0;
    if (ok != n) fprintf(stderr, "%s: %ld of %ld failed: %s\n", name, n - ok, n, dreamos_last_error_message());
    return (struct result){name, n, dt};
}

struct waiter {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    atomic_long done;
    atomic_long failed;
    long target;
};

static void on_done(void *user_data, dreamos_status status, const char *reply) {
    struct waiter *w = user_data;
    (void)reply;
    if (status != DREAMOS_OK) atomic_fetch_add(&w->failed, 1);
    if (atomic_fetch_add(&w->done, 1) + 1 == w->target) {
        pthread_mutex_lock(&w->lock);
        pthread_cond_signal(&w->cond);
        pthread_mutex_unlock(&w->lock);
    }
}

/* Submit n calls, at most `window` outstanding, and wait for all completions. */
static struct result bench_async(dreamos_bridge *b, const char *dest, const char *name, long n, long window) {
    struct waiter w = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0, n};
    double t0 = now_s();
    for (long i = 0; i < n; i++) {
        while (i - atomic_load(&w.done) >= window) {
            struct timespec ts = {0, 20000};
            nanosleep(&ts, NULL);
        }
        if (dreamos_bridge_route_async(b, NULL, dest, PAYLOAD, 30000, on_done, &w) != DREAMOS_OK) {
            atomic_fetch_add(&w.failed, 1);
            on_done(&w, DREAMOS_INTERNAL, NULL);
        }
    }
    pthread_mutex_lock(&w.lock);
    while (atomic_load(&w.done) < n) pthread_cond_wait(&w.cond, &w.lock);
    pthread_mutex_unlock(&w.lock);
    double dt = now_s() - t0;
    if (atomic_load(&w.failed)) fprintf(stderr, "%s: %ld failed\n", name, atomic_load(&w.failed));
    return (struct result){name, n, dt};
}

int main(int argc, char **argv) {
    long n = argc > 1 ? atol(argv[1]) : 20000;
    dreamos_bridge *b = NULL;
    if (dreamos_bridge_new(NULL, &b) != DREAMOS_OK || dreamos_bridge_initialize(b) != DREAMOS_OK ||
        dreamos_bridge_register_route(b, "bench.c_echo", c_echo, NULL) != DREAMOS_OK ||
        dreamos_bridge_register_echo(b, "bench.rust_echo") != DREAMOS_OK) {
        fprintf(stderr, "setup failed: %s\n", dreamos_last_error_message());
        return 1;
    }
    /* Warm up: threads, allocator, route caches. */
    bench_route(b, "bench.c_echo", "warm-up", 500);
    bench_async(b, "bench.rust_echo", "warm-up", 500, 256);

    struct result r[6];
    r[0] = bench_direct(n * 50);
    r[1] = bench_route(b, "bench.rust_echo", "route, Rust echo", n);
    r[2] = bench_route(b, "bench.c_echo", "route, C echo handler", n);
    r[3] = bench_async(b, "bench.rust_echo", "route_async, Rust echo", n, 1024);
    r[4] = bench_async(b, "bench.c_echo", "route_async, C echo handler", n, 1024);
    r[5] = bench_async(b, "bench.c_echo", "route_async, C echo, 1 in flight", n / 4, 1);

    double floor_us = r[0].seconds / (double)r[0].ops * 1e6;
    printf("dreamos-bridge %s C API throughput (payload %zu bytes, %ld calls per row)\n", dreamos_version(),
           strlen(PAYLOAD), n);
    printf("%-36s %14s %12s %14s\n", "case", "calls/s", "us/call", "x direct call");
    for (int i = 0; i < 6; i++) {
        double per = r[i].seconds / (double)r[i].ops;
        printf("%-36s %14.0f %12.3f %14.1f\n", r[i].name, 1.0 / per, per * 1e6, per * 1e6 / floor_us);
    }
    dreamos_bridge_free(b);
    return 0;
}

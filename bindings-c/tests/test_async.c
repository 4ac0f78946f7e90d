/* Asynchronous completions from bridge threads, concurrency, and calls back
 * into the library from handlers and callbacks. */
#define _POSIX_C_SOURCE 200809L

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "check.h"

#define N_ASYNC 2000

static pthread_t main_thread;

/* ---- a counter that completions bump, waited on with a condition variable */

struct tally {
    pthread_mutex_t lock;
    pthread_cond_t done;
    atomic_int completed;
    atomic_int ok;
    atomic_int wrong_reply;
    atomic_int on_main_thread;
    int target;
};

static void tally_init(struct tally *t, int target) {
    pthread_mutex_init(&t->lock, NULL);
    pthread_cond_init(&t->done, NULL);
    atomic_init(&t->completed, 0);
    atomic_init(&t->ok, 0);
    atomic_init(&t->wrong_reply, 0);
    atomic_init(&t->on_main_thread, 0);
    t->target = target;
}

static void tally_destroy(struct tally *t) {
    pthread_cond_destroy(&t->done);
    pthread_mutex_destroy(&t->lock);
}

/* Wait until `target` completions arrived or 60 s passed; true if all arrived. */
static bool tally_wait(struct tally *t) {
    struct timespec deadline;
    clock_gettime(CLOCK_REALTIME, &deadline);
    deadline.tv_sec += 60;
    pthread_mutex_lock(&t->lock);
    int rc = 0;
    while (atomic_load(&t->completed) < t->target && rc != ETIMEDOUT) {
        rc = pthread_cond_timedwait(&t->done, &t->lock, &deadline);
    }
    pthread_mutex_unlock(&t->lock);
    return atomic_load(&t->completed) == t->target;
}

static void count_completion(void *user_data, dreamos_status status, const char *reply) {
    struct tally *t = user_data;
    if (pthread_equal(pthread_self(), main_thread)) atomic_fetch_add(&t->on_main_thread, 1);
    if (status == DREAMOS_OK) atomic_fetch_add(&t->ok, 1);
    if (reply == NULL || strstr(reply, "\"n\":") == NULL) atomic_fetch_add(&t->wrong_reply, 1);
    pthread_mutex_lock(&t->lock);
    if (atomic_fetch_add(&t->completed, 1) + 1 == t->target) pthread_cond_signal(&t->done);
    pthread_mutex_unlock(&t->lock);
}

/* ---- handlers ------------------------------------------------------------- */

static atomic_int handler_calls;
static atomic_int handler_on_main_thread;

static dreamos_status echo_handler(void *user_data, const char *message_json, char **reply_json_out) {
    (void)user_data;
    atomic_fetch_add(&handler_calls, 1);
    if (pthread_equal(pthread_self(), main_thread)) atomic_fetch_add(&handler_on_main_thread, 1);
    *reply_json_out = strdup(message_json);
    return DREAMOS_OK;
}

/* A handler that routes to another route, blocking, from a bridge thread. */
static dreamos_status relay_handler(void *user_data, const char *message_json, char **reply_json_out) {
    dreamos_bridge *b = user_data;
    (void)message_json;
    char *inner = NULL;
    dreamos_status s = dreamos_bridge_route(b, NULL, "rust.echo", "{\"n\": \"relayed\"}", 5000, &inner);
    if (s != DREAMOS_OK) {
        *reply_json_out = strdup(dreamos_last_error_message());
        return s;
    }
    size_t len = strlen(inner) + 16;
    char *out = malloc(len);
    if (out) snprintf(out, len, "{\"inner\":%s}", inner);
    dreamos_string_free(inner);
    *reply_json_out = out;
    return out ? DREAMOS_OK : DREAMOS_INTERNAL;
}

/* A completion callback that makes a blocking call from a bridge thread. */
struct nested {
    dreamos_bridge *b;
    atomic_int status;
    atomic_int done;
    char reply[128];
};

static void nested_completion(void *user_data, dreamos_status status, const char *reply) {
    struct nested *n = user_data;
    (void)reply;
    if (status != DREAMOS_OK) {
        atomic_store(&n->status, (int)status);
        atomic_store(&n->done, 1);
        return;
    }
    char *inner = NULL;
    dreamos_status s = dreamos_bridge_route(n->b, NULL, "c.echo", "{\"n\": \"nested\"}", 5000, &inner);
    if (s == DREAMOS_OK) {
        snprintf(n->reply, sizeof n->reply, "%.*s", (int)sizeof n->reply - 1, inner);
        dreamos_string_free(inner);
    }
    atomic_store(&n->status, (int)s);
    atomic_store(&n->done, 1);
}

static void sleep_ms(long ms) {
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* ---- tests ----------------------------------------------------------------- */

static void run_async_batch(dreamos_bridge *b, const char *destination) {
    struct tally t;
    tally_init(&t, N_ASYNC);
    char payload[64];
    int submitted = 0;
    for (int i = 0; i < N_ASYNC; i++) {
        snprintf(payload, sizeof payload, "{\"n\": %d}", i);
        if (dreamos_bridge_route_async(b, NULL, destination, payload, 30000, count_completion, &t) == DREAMOS_OK) {
            submitted++;
        }
    }
    CHECK(submitted == N_ASYNC);
    CHECK(tally_wait(&t));
    CHECK(atomic_load(&t.completed) == N_ASYNC);
    CHECK(atomic_load(&t.ok) == N_ASYNC);
    CHECK(atomic_load(&t.wrong_reply) == 0);
    CHECK(atomic_load(&t.on_main_thread) == 0);
    /* Exactly once: nothing more arrives later. */
    sleep_ms(50);
    CHECK(atomic_load(&t.completed) == N_ASYNC);
    tally_destroy(&t);
}

static void test_many_async_completions(void) {
    dreamos_bridge *b = NULL;
    CHECK_STATUS(dreamos_bridge_new(NULL, &b), DREAMOS_OK);
    CHECK_STATUS(dreamos_bridge_initialize(b), DREAMOS_OK);
    CHECK_STATUS(dreamos_bridge_register_route(b, "c.echo", echo_handler, NULL), DREAMOS_OK);
    CHECK_STATUS(dreamos_bridge_register_echo(b, "rust.echo"), DREAMOS_OK);

    atomic_store(&handler_calls, 0);
    run_async_batch(b, "c.echo");
    CHECK(atomic_load(&handler_calls) == N_ASYNC);
    CHECK(atomic_load(&handler_on_main_thread) == 0);
    run_async_batch(b, "rust.echo");

    /* Errors arrive through the callback too, once each. */
    struct tally t;
    tally_init(&t, 100);
    for (int i = 0; i < 100; i++) {
        CHECK_STATUS(dreamos_bridge_route_async(b, NULL, "no.such.route", "{\"n\": 1}", 0, count_completion, &t),
                     DREAMOS_OK);
    }
    CHECK(tally_wait(&t));
    CHECK(atomic_load(&t.ok) == 0);
    CHECK(atomic_load(&t.wrong_reply) == 100); /* the text is the error message */
    tally_destroy(&t);
    dreamos_bridge_free(b);
}

static void test_reentrant_calls(void) {
    dreamos_bridge *b = NULL;
    CHECK_STATUS(dreamos_bridge_new(NULL, &b), DREAMOS_OK);
    CHECK_STATUS(dreamos_bridge_initialize(b), DREAMOS_OK);
    CHECK_STATUS(dreamos_bridge_register_route(b, "c.echo", echo_handler, NULL), DREAMOS_OK);
    CHECK_STATUS(dreamos_bridge_register_echo(b, "rust.echo"), DREAMOS_OK);
    CHECK_STATUS(dreamos_bridge_register_route(b, "c.relay", relay_handler, b), DREAMOS_OK);

    /* A C handler making a blocking call. */
    char *reply = NULL;
    CHECK_STATUS(dreamos_bridge_route(b, NULL, "c.relay", "{}", 10000, &reply), DREAMOS_OK);
    CHECK(reply && strcmp(reply, "{\"inner\":{\"n\":\"relayed\"}}") == 0);
    dreamos_string_free(reply);

    /* Many at once: more relays than the runtime has threads. */
    struct tally t;
    tally_init(&t, 64);
    for (int i = 0; i < 64; i++) {
        CHECK_STATUS(dreamos_bridge_route_async(b, NULL, "c.relay", "{}", 30000, count_completion, &t), DREAMOS_OK);
    }
    CHECK(tally_wait(&t));
    CHECK(atomic_load(&t.ok) == 64);
    tally_destroy(&t);

    /* Completion callbacks (on worker threads) making blocking calls. */
    struct nested n[8];
    for (int i = 0; i < 8; i++) {
        n[i].b = b;
        atomic_init(&n[i].status, -1);
        atomic_init(&n[i].done, 0);
        n[i].reply[0] = '\0';
        CHECK_STATUS(dreamos_bridge_route_async(b, NULL, "rust.echo", "{}", 0, nested_completion, &n[i]), DREAMOS_OK);
    }
    for (int i = 0; i < 8; i++) {
        for (int w = 0; w < 30000 && !atomic_load(&n[i].done); w++) sleep_ms(1);
        CHECK(atomic_load(&n[i].status) == DREAMOS_OK);
        CHECK_CONTAINS(n[i].reply, "\"nested\"");
    }
    dreamos_bridge_free(b);
}

/* Freeing a bridge with calls in flight: every callback has run when free returns. */
static atomic_int gate_open;

static dreamos_status gated_handler(void *user_data, const char *message_json, char **reply_json_out) {
    (void)user_data;
    (void)message_json;
    for (int i = 0; i < 200 && !atomic_load(&gate_open); i++) sleep_ms(1);
    *reply_json_out = strdup("{\"n\": \"late\"}");
    return DREAMOS_OK;
}

static void test_free_with_calls_in_flight(void) {
    dreamos_bridge *b = NULL;
    CHECK_STATUS(dreamos_bridge_new("bridge:\n  shutdown_grace: 50ms\n", &b), DREAMOS_OK);
    CHECK_STATUS(dreamos_bridge_initialize(b), DREAMOS_OK);
    CHECK_STATUS(dreamos_bridge_register_route(b, "c.gated", gated_handler, NULL), DREAMOS_OK);
    struct tally t;
    tally_init(&t, 32);
    for (int i = 0; i < 32; i++) {
        CHECK_STATUS(dreamos_bridge_route_async(b, NULL, "c.gated", "{}", 30000, count_completion, &t), DREAMOS_OK);
    }
    dreamos_bridge_free(b);
    /* No waiting here: free already waited for every callback. */
    CHECK(atomic_load(&t.completed) == 32);
    tally_destroy(&t);
    atomic_store(&gate_open, 1);
}

/* dreamos_bridge_free in a child forked while a call was pending returns at
 * once (the handle is leaked there) instead of waiting forever for a call
 * whose thread stayed in the parent. */
static atomic_int fork_handler_started;
static atomic_int fork_gate_open;

static dreamos_status fork_slow_handler(void *user_data, const char *message_json, char **reply_json_out) {
    (void)user_data;
    (void)message_json;
    atomic_store(&fork_handler_started, 1);
    for (int i = 0; i < 30000 && !atomic_load(&fork_gate_open); i++) sleep_ms(1);
    *reply_json_out = strdup("{\"n\": \"late\"}");
    return DREAMOS_OK;
}

static void test_free_in_forked_child_does_not_hang(void) {
    dreamos_bridge *b = NULL;
    CHECK_STATUS(dreamos_bridge_new(NULL, &b), DREAMOS_OK);
    CHECK_STATUS(dreamos_bridge_initialize(b), DREAMOS_OK);
    CHECK_STATUS(dreamos_bridge_register_route(b, "c.forkslow", fork_slow_handler, NULL), DREAMOS_OK);
    struct tally t;
    tally_init(&t, 1);
    CHECK_STATUS(dreamos_bridge_route_async(b, NULL, "c.forkslow", "{}", 60000, count_completion, &t), DREAMOS_OK);
    for (int i = 0; i < 10000 && !atomic_load(&fork_handler_started); i++) sleep_ms(1);
    CHECK(atomic_load(&fork_handler_started));
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        dreamos_bridge_free(b);
        _exit(0); /* skip exit handlers (and leak checks) in the child */
    }
    CHECK(pid > 0);
    /* Generous: the child has nothing to wait for, so it exits at once unless it hangs. */
    int wstatus = 0;
    pid_t waited = 0;
    for (int i = 0; i < 3000 && waited == 0; i++) {
        waited = waitpid(pid, &wstatus, WNOHANG);
        if (waited == 0) sleep_ms(10);
    }
    if (waited == 0) {
        fprintf(stderr, "dreamos_bridge_free hung in the forked child\n");
        kill(pid, SIGKILL);
        waitpid(pid, &wstatus, 0);
        CHECK(!"dreamos_bridge_free returned in the forked child");
    } else {
        CHECK(waited == pid && WIFEXITED(wstatus) && WEXITSTATUS(wstatus) == 0);
    }
    /* The parent's call still completes normally. */
    atomic_store(&fork_gate_open, 1);
    CHECK(tally_wait(&t));
    CHECK(atomic_load(&t.ok) == 1);
    tally_destroy(&t);
    dreamos_bridge_free(b);
}

int main(void) {
    main_thread = pthread_self();
    test_many_async_completions();
    test_reentrant_calls();
    test_free_with_calls_in_flight();
    test_free_in_forked_child_does_not_hang();
    return finish();
}

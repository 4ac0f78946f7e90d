/* Every function of the C API, each status by its real cause, and bad input:
 * NULL pointers, invalid UTF-8, malformed JSON, bad subjects, config errors. */
#define _POSIX_C_SOURCE 200809L

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "check.h"

static void sleep_ms(long ms) {
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* ---- C handlers ---------------------------------------------------------- */

static atomic_int echo_calls;

/* Replies with the message it received (a JSON object). */
static dreamos_status echo_handler(void *user_data, const char *message_json, char **reply_json_out) {
    atomic_fetch_add(&echo_calls, 1);
    if (user_data != (void *)&echo_calls) return DREAMOS_INTERNAL;
    *reply_json_out = strdup(message_json);
    return *reply_json_out ? DREAMOS_OK : DREAMOS_INTERNAL;
}

/* Fails with a message. */
static dreamos_status failing_handler(void *user_data, const char *message_json, char **reply_json_out) {
    (void)user_data;
    (void)message_json;
    *reply_json_out = strdup("the widget is broken: check the input");
    return DREAMOS_HANDLER_ERROR;
}

/* Fails with a status but no message. */
static dreamos_status silent_failing_handler(void *user_data, const char *message_json, char **reply_json_out) {
    (void)user_data;
    (void)message_json;
    (void)reply_json_out;
    return DREAMOS_FORBIDDEN;
}

/* Succeeds with text that is not JSON. */
static dreamos_status bad_json_handler(void *user_data, const char *message_json, char **reply_json_out) {
    (void)user_data;
    (void)message_json;
    *reply_json_out = strdup("{not json");
    return DREAMOS_OK;
}

/* Succeeds with no reply (NULL means null). */
static dreamos_status null_reply_handler(void *user_data, const char *message_json, char **reply_json_out) {
    (void)user_data;
    (void)message_json;
    (void)reply_json_out;
    return DREAMOS_OK;
}

/* Blocks until released: a slow handler for timeout and queue tests. */
struct gate {
    atomic_int entered;
    atomic_int released;
};

static dreamos_status slow_handler(void *user_data, const char *message_json, char **reply_json_out) {
    struct gate *g = user_data;
    (void)message_json;
    atomic_fetch_add(&g->entered, 1);
    for (int i = 0; i < 30000 && !atomic_load(&g->released); i++) sleep_ms(1);
    *reply_json_out = strdup("\"slow done\"");
    return DREAMOS_OK;
}

/* ---- completion callback used for queue and shutdown tests ---------------- */

struct completion {
    atomic_int calls;
    atomic_int last_status;
};

static void on_complete(void *user_data, dreamos_status status, const char *text) {
    struct completion *c = user_data;
    (void)text;
    atomic_store(&c->last_status, (int)status);
    atomic_fetch_add(&c->calls, 1);
}

static void wait_for(atomic_int *counter, int want) {
    for (int i = 0; i < 30000 && atomic_load(counter) < want; i++) sleep_ms(1);
}

static dreamos_bridge *started(const char *yaml) {
    dreamos_bridge *b = NULL;
    CHECK_STATUS(dreamos_bridge_new(yaml, &b), DREAMOS_OK);
    CHECK(b != NULL);
    CHECK_STATUS(dreamos_bridge_initialize(b), DREAMOS_OK);
    return b;
}

/* ---- tests --------------------------------------------------------------- */

static void test_status_names_and_version(void) {
    CHECK(strcmp(dreamos_status_name(DREAMOS_OK), "OK") == 0);
    CHECK(strcmp(dreamos_status_name(DREAMOS_RATE_LIMITED), "RATE_LIMITED") == 0);
    CHECK(strcmp(dreamos_status_name(DREAMOS_NULL_PARAMETER), "NULL_PARAMETER") == 0);
    CHECK(strcmp(dreamos_status_name(DREAMOS_PANIC), "PANIC") == 0);
    CHECK(strcmp(dreamos_status_name(-1), "UNKNOWN") == 0);
    CHECK(strcmp(dreamos_status_name(999), "UNKNOWN") == 0);
    CHECK(strlen(dreamos_version()) >= 5);
    CHECK(dreamos_last_error_message() != NULL);
}

static void test_lifecycle_and_echo(void) {
    dreamos_bridge *b = NULL;
    CHECK_STATUS(dreamos_bridge_new(NULL, &b), DREAMOS_OK);
    CHECK_STATUS(dreamos_bridge_register_route(b, "c.echo", echo_handler, &echo_calls), DREAMOS_OK);

    char *reply = NULL;
    /* Not initialized yet: SHUTDOWN, and the out-pointer is untouched. */
    CHECK_STATUS(dreamos_bridge_route(b, NULL, "c.echo", "{}", 0, &reply), DREAMOS_SHUTDOWN);
    CHECK(reply == NULL);
    CHECK_ERROR_MENTIONS("initialize");

    CHECK_STATUS(dreamos_bridge_initialize(b), DREAMOS_OK);
    CHECK_STATUS(dreamos_bridge_initialize(b), DREAMOS_OK); /* idempotent */
    CHECK(strcmp(dreamos_last_error_message(), "") == 0);

    CHECK_STATUS(dreamos_bridge_route(b, NULL, "c.echo", "{\"x\": 1, \"s\": \"h\\u00e9\"}", 0, &reply), DREAMOS_OK);
    CHECK_CONTAINS(reply, "\"destination\":\"c.echo\"");
    CHECK_CONTAINS(reply, "\"payload\":{\"x\":1,\"s\":\"h\xc3\xa9\"}");
    CHECK_CONTAINS(reply, "\"id\":\"");
    CHECK_CONTAINS(reply, "\"headers\":{}");
    CHECK_CONTAINS(reply, "\"source\":null");
    dreamos_string_free(reply);
    CHECK(atomic_load(&echo_calls) == 1);

    /* The Rust-side echo replies with the payload itself. */
    CHECK_STATUS(dreamos_bridge_register_echo(b, "rust.echo"), DREAMOS_OK);
    reply = NULL;
    CHECK_STATUS(dreamos_bridge_route(b, NULL, "rust.echo", "[1, 2, {\"a\": null}]", 1000, &reply), DREAMOS_OK);
    CHECK(reply && strcmp(reply, "[1,2,{\"a\":null}]") == 0);
    dreamos_string_free(reply);

    /* Wildcards route to the most specific pattern. */
    CHECK_STATUS(dreamos_bridge_register_route(b, "agents.*", echo_handler, &echo_calls), DREAMOS_OK);
    reply = NULL;
    CHECK_STATUS(dreamos_bridge_route(b, NULL, "agents.planner", "null", 0, &reply), DREAMOS_OK);
    CHECK_CONTAINS(reply, "\"destination\":\"agents.planner\"");
    dreamos_string_free(reply);

    /* Publish: an id now, delivery in the background. */
    int before = atomic_load(&echo_calls);
    char *id = NULL;
    CHECK_STATUS(dreamos_bridge_publish(b, NULL, "c.echo", "{\"event\": true}", &id), DREAMOS_OK);
    CHECK(id != NULL && strlen(id) == 36);
    dreamos_string_free(id);
    wait_for(&echo_calls, before + 1);
    CHECK(atomic_load(&echo_calls) == before + 1);

    /* Unregister: the route is gone. */
    CHECK_STATUS(dreamos_bridge_unregister_route(b, "agents.*"), DREAMOS_OK);
    CHECK_STATUS(dreamos_bridge_unregister_route(b, "agents.*"), DREAMOS_ROUTE_NOT_FOUND);
    reply = NULL;
    CHECK_STATUS(dreamos_bridge_route(b, NULL, "agents.planner", "null", 0, &reply), DREAMOS_ROUTE_NOT_FOUND);
    CHECK(reply == NULL);
    CHECK_ERROR_MENTIONS("agents.planner");

    /* Observability. */
    char *text = NULL;
    CHECK_STATUS(dreamos_bridge_metrics_json(b, &text), DREAMOS_OK);
    CHECK(text != NULL && text[0] == '{');
    CHECK_CONTAINS(text, "\"c.echo\":{\"accepted\":");   /* per-route counters */
    CHECK_CONTAINS(text, "\"ROUTE_NOT_FOUND\":1");         /* the unregistered route above */
    dreamos_string_free(text);
    text = NULL;
    CHECK_STATUS(dreamos_bridge_metrics_text(b, &text), DREAMOS_OK);
    CHECK_CONTAINS(text, "# TYPE dreamos_bridge_messages_accepted_total");
    dreamos_string_free(text);
    text = NULL;
    CHECK_STATUS(dreamos_bridge_health_json(b, &text), DREAMOS_OK);
    CHECK_CONTAINS(text, "\"status\":\"up\"");
    dreamos_string_free(text);

    /* Security off: everything is allowed. */
    bool allowed = false;
    CHECK_STATUS(dreamos_bridge_authorize(b, "any-token", "c.echo", &allowed), DREAMOS_OK);
    CHECK(allowed);

    /* Shutdown: then SHUTDOWN for every call, health down, no restart. */
    CHECK_STATUS(dreamos_bridge_shutdown(b), DREAMOS_OK);
    CHECK_STATUS(dreamos_bridge_shutdown(b), DREAMOS_OK);
    reply = NULL;
    CHECK_STATUS(dreamos_bridge_route(b, NULL, "c.echo", "{}", 0, &reply), DREAMOS_SHUTDOWN);
    CHECK(reply == NULL);
    CHECK_STATUS(dreamos_bridge_publish(b, NULL, "c.echo", "{}", &id), DREAMOS_SHUTDOWN);
    CHECK_STATUS(dreamos_bridge_initialize(b), DREAMOS_SHUTDOWN);
    text = NULL;
    CHECK_STATUS(dreamos_bridge_health_json(b, &text), DREAMOS_OK);
    CHECK_CONTAINS(text, "\"status\":\"down\"");
    dreamos_string_free(text);
    struct completion c = {0, -1};
    CHECK_STATUS(dreamos_bridge_route_async(b, NULL, "c.echo", "{}", 0, on_complete, &c), DREAMOS_OK);
    wait_for(&c.calls, 1);
    CHECK(atomic_load(&c.calls) == 1 && atomic_load(&c.last_status) == DREAMOS_SHUTDOWN);
    dreamos_bridge_free(b);
}

static void test_config_errors(void) {
    dreamos_bridge *b = NULL;
    CHECK_STATUS(dreamos_bridge_new("bridge:\n  max_connections: many\n", &b), DREAMOS_CONFIG);
    CHECK(b == NULL);
    CHECK_ERROR_MENTIONS("bridge.max_connections");
    CHECK_STATUS(dreamos_bridge_new("bridge:\n  max_conections: 5\n", &b), DREAMOS_CONFIG);
    CHECK_ERROR_MENTIONS("max_conections");
    CHECK_STATUS(dreamos_bridge_new("routes:\n  - pattern: a..b\n", &b), DREAMOS_CONFIG);
    CHECK_ERROR_MENTIONS("routes[0].pattern");
    CHECK_STATUS(dreamos_bridge_new("bridge: [unclosed\n", &b), DREAMOS_CONFIG);
    CHECK_ERROR_MENTIONS("YAML");
    CHECK_STATUS(dreamos_bridge_new("bridge:\n  host: \"\xff\xfe\"\n", &b), DREAMOS_CONFIG);
    CHECK_ERROR_MENTIONS("UTF-8");
    CHECK(b == NULL);

    /* From a file: a good one, a bad one, a missing one. */
    char path[] = "/tmp/dreamos-c-test-XXXXXX";
    int fd = mkstemp(path);
    CHECK(fd >= 0);
    const char *yaml = "bridge:\n  request_timeout: 2s\nmonitoring:\n  log_level: INFO\n";
    CHECK(write(fd, yaml, strlen(yaml)) == (ssize_t)strlen(yaml));
    close(fd);
    CHECK_STATUS(dreamos_bridge_from_file(path, &b), DREAMOS_OK);
    CHECK(b != NULL);
    dreamos_bridge_free(b);
    b = NULL;

    FILE *f = fopen(path, "w");
    CHECK(f != NULL);
    if (f) {
        fputs("monitoring:\n  alert_threshold: 3\n", f);
        fclose(f);
    }
    CHECK_STATUS(dreamos_bridge_from_file(path, &b), DREAMOS_CONFIG);
    CHECK_ERROR_MENTIONS("monitoring.alert_threshold");
    CHECK_ERROR_MENTIONS(path);
    unlink(path);
    CHECK_STATUS(dreamos_bridge_from_file(path, &b), DREAMOS_CONFIG);
    CHECK_ERROR_MENTIONS("cannot read");
    CHECK(b == NULL);
}

static void test_invalid_messages(void) {
    dreamos_bridge *b = started(NULL);
    CHECK_STATUS(dreamos_bridge_register_route(b, "c.echo", echo_handler, &echo_calls), DREAMOS_OK);
    char *reply = NULL;
    const char *bad_subjects[] = {"", "bad..subject", "has space", "trailing.", "wild.*", "tail.>", "a.b\tc"};
    for (size_t i = 0; i < sizeof bad_subjects / sizeof bad_subjects[0]; i++) {
        CHECK_STATUS(dreamos_bridge_route(b, NULL, bad_subjects[i], "{}", 0, &reply), DREAMOS_INVALID_MESSAGE);
    }
    CHECK_ERROR_MENTIONS("a.b");
    CHECK_STATUS(dreamos_bridge_route(b, NULL, "c.echo", "{\"x\": ", 0, &reply), DREAMOS_INVALID_MESSAGE);
    CHECK_ERROR_MENTIONS("payload_json");
    CHECK_ERROR_MENTIONS("JSON");
    CHECK_STATUS(dreamos_bridge_route(b, NULL, "c.echo", "", 0, &reply), DREAMOS_INVALID_MESSAGE);
    CHECK_STATUS(dreamos_bridge_route(b, NULL, "c.\xff\xfe", "{}", 0, &reply), DREAMOS_INVALID_MESSAGE);
    CHECK_ERROR_MENTIONS("UTF-8");
    CHECK_STATUS(dreamos_bridge_route(b, NULL, "c.echo", "\"\xc3\x28\"", 0, &reply), DREAMOS_INVALID_MESSAGE);
    CHECK_ERROR_MENTIONS("UTF-8");
    CHECK_STATUS(dreamos_bridge_publish(b, NULL, "c.echo", "{,}", &reply), DREAMOS_INVALID_MESSAGE);
    CHECK_STATUS(dreamos_bridge_register_route(b, "a.>.b", echo_handler, NULL), DREAMOS_INVALID_MESSAGE);
    CHECK_STATUS(dreamos_bridge_register_route(b, "bad\xff", echo_handler, NULL), DREAMOS_INVALID_MESSAGE);
    CHECK_STATUS(dreamos_bridge_register_echo(b, ""), DREAMOS_INVALID_MESSAGE);
    /* Too deep a payload (limits.max_json_depth defaults to 64). */
    char deep[300];
    memset(deep, '[', 100);
    memset(deep + 100, ']', 100);
    deep[200] = '\0';
    CHECK_STATUS(dreamos_bridge_route(b, NULL, "c.echo", deep, 0, &reply), DREAMOS_INVALID_MESSAGE);
    CHECK_ERROR_MENTIONS("depth");
    CHECK(reply == NULL);
    /* Async: argument errors come back at once and the callback never runs. */
    struct completion c = {0, -1};
    CHECK_STATUS(dreamos_bridge_route_async(b, NULL, "c.echo", "{", 0, on_complete, &c), DREAMOS_INVALID_MESSAGE);
    /* Engine errors come through the callback. */
    CHECK_STATUS(dreamos_bridge_route_async(b, NULL, "bad..subject", "{}", 0, on_complete, &c), DREAMOS_OK);
    wait_for(&c.calls, 1);
    CHECK(atomic_load(&c.last_status) == DREAMOS_INVALID_MESSAGE);
    CHECK(atomic_load(&c.calls) == 1);
    /* The bridge still works. */
    CHECK_STATUS(dreamos_bridge_route(b, NULL, "c.echo", "{}", 0, &reply), DREAMOS_OK);
    dreamos_string_free(reply);
    dreamos_bridge_free(b);
}

static void test_handler_errors(void) {
    dreamos_bridge *b = started(NULL);
    char *reply = NULL;
    CHECK_STATUS(dreamos_bridge_register_route(b, "c.fail", failing_handler, NULL), DREAMOS_OK);
    CHECK_STATUS(dreamos_bridge_route(b, NULL, "c.fail", "{}", 0, &reply), DREAMOS_HANDLER_ERROR);
    CHECK(strcmp(dreamos_last_error_message(), "the widget is broken: check the input") == 0);
    CHECK_STATUS(dreamos_bridge_register_route(b, "c.silent", silent_failing_handler, NULL), DREAMOS_OK);
    CHECK_STATUS(dreamos_bridge_route(b, NULL, "c.silent", "{}", 0, &reply), DREAMOS_HANDLER_ERROR);
    CHECK_ERROR_MENTIONS("FORBIDDEN");
    CHECK_STATUS(dreamos_bridge_register_route(b, "c.badjson", bad_json_handler, NULL), DREAMOS_OK);
    CHECK_STATUS(dreamos_bridge_route(b, NULL, "c.badjson", "{}", 0, &reply), DREAMOS_HANDLER_ERROR);
    CHECK_ERROR_MENTIONS("not valid JSON");
    CHECK(reply == NULL);
    CHECK_STATUS(dreamos_bridge_register_route(b, "c.null", null_reply_handler, NULL), DREAMOS_OK);
    CHECK_STATUS(dreamos_bridge_route(b, NULL, "c.null", "{}", 0, &reply), DREAMOS_OK);
    CHECK(reply && strcmp(reply, "null") == 0);
    dreamos_string_free(reply);
    /* Replacing a route: the new handler serves it. */
    CHECK_STATUS(dreamos_bridge_register_route(b, "c.fail", null_reply_handler, NULL), DREAMOS_OK);
    reply = NULL;
    CHECK_STATUS(dreamos_bridge_route(b, NULL, "c.fail", "{}", 0, &reply), DREAMOS_OK);
    dreamos_string_free(reply);
    dreamos_bridge_free(b);
}

static void test_timeout(void) {
    dreamos_bridge *b = started(NULL);
    struct gate g = {0, 0};
    CHECK_STATUS(dreamos_bridge_register_route(b, "c.slow", slow_handler, &g), DREAMOS_OK);
    char *reply = NULL;
    CHECK_STATUS(dreamos_bridge_route(b, NULL, "c.slow", "{}", 100, &reply), DREAMOS_TIMEOUT);
    CHECK(reply == NULL);
    CHECK_ERROR_MENTIONS("c.slow");
    CHECK(atomic_load(&g.entered) == 1);
    atomic_store(&g.released, 1);
    /* The handler still finishes (its late reply is discarded); free waits for it. */
    CHECK_STATUS(dreamos_bridge_route(b, NULL, "c.slow", "{}", 0, &reply), DREAMOS_OK);
    CHECK(reply && strcmp(reply, "\"slow done\"") == 0);
    dreamos_string_free(reply);
    dreamos_bridge_free(b);
}

static void test_queue_full(void) {
    dreamos_bridge *b = started("routes:\n  - pattern: c.queue\n    max_concurrency: 1\n    queue_size: 1\n");
    struct gate g = {0, 0};
    CHECK_STATUS(dreamos_bridge_register_route(b, "c.queue", slow_handler, &g), DREAMOS_OK);
    struct completion first = {0, -1}, second = {0, -1};
    /* First call: running (holds the only slot). */
    CHECK_STATUS(dreamos_bridge_route_async(b, NULL, "c.queue", "1", 20000, on_complete, &first), DREAMOS_OK);
    wait_for(&g.entered, 1);
    CHECK(atomic_load(&g.entered) == 1);
    /* Second call: waits in the one-place queue. */
    CHECK_STATUS(dreamos_bridge_route_async(b, NULL, "c.queue", "2", 20000, on_complete, &second), DREAMOS_OK);
    /* Third call: no room. Until the second call has taken the queue's place
     * the third may take it and time out in the queue instead; retry. */
    char *reply = NULL;
    dreamos_status s = DREAMOS_OK;
    for (int i = 0; i < 100; i++) {
        s = dreamos_bridge_route(b, NULL, "c.queue", "3", 50, &reply);
        if (s == DREAMOS_QUEUE_FULL) break;
        CHECK(s == DREAMOS_TIMEOUT);
    }
    CHECK_STATUS(s, DREAMOS_QUEUE_FULL);
    CHECK_ERROR_MENTIONS("queue");
    CHECK(reply == NULL);
    atomic_store(&g.released, 1);
    wait_for(&first.calls, 1);
    wait_for(&second.calls, 1);
    CHECK(atomic_load(&first.last_status) == DREAMOS_OK);
    CHECK(atomic_load(&second.last_status) == DREAMOS_OK);
    dreamos_bridge_free(b);
}

static void test_rate_limited(void) {
    dreamos_bridge *b = started(
        "bridge:\n  rate_limit_mode: reject\n"
        "routes:\n  - pattern: c.limited\n    rate_limit: 1/min\n    burst: 1\n");
    CHECK_STATUS(dreamos_bridge_register_echo(b, "c.limited"), DREAMOS_OK);
    char *reply = NULL;
    CHECK_STATUS(dreamos_bridge_route(b, NULL, "c.limited", "1", 0, &reply), DREAMOS_OK);
    dreamos_string_free(reply);
    reply = NULL;
    CHECK_STATUS(dreamos_bridge_route(b, NULL, "c.limited", "2", 0, &reply), DREAMOS_RATE_LIMITED);
    CHECK_ERROR_MENTIONS("retry after");
    CHECK(reply == NULL);
    dreamos_bridge_free(b);
}

static void test_unauthenticated(void) {
    dreamos_bridge *b = started("security:\n  auth_type: token\n");
    CHECK_STATUS(dreamos_bridge_register_echo(b, "c.secure"), DREAMOS_OK);
    char *reply = NULL;
    CHECK_STATUS(dreamos_bridge_route(b, NULL, "c.secure", "{}", 0, &reply), DREAMOS_UNAUTHENTICATED);
    CHECK_ERROR_MENTIONS("token");
    CHECK_STATUS(dreamos_bridge_route(b, "not-a-token", "c.secure", "{}", 0, &reply), DREAMOS_UNAUTHENTICATED);
    CHECK_STATUS(dreamos_bridge_publish(b, NULL, "c.secure", "{}", &reply), DREAMOS_UNAUTHENTICATED);
    CHECK(reply == NULL);
    CHECK_STATUS(dreamos_bridge_authenticate(b, "{\"api_key\": \"dk_wrong\"}", &reply), DREAMOS_UNAUTHENTICATED);
    CHECK_STATUS(dreamos_bridge_authenticate(b, "[1]", &reply), DREAMOS_UNAUTHENTICATED);
    CHECK_STATUS(dreamos_bridge_authenticate(b, "{\"api_key\":", &reply), DREAMOS_INVALID_MESSAGE);
    CHECK(reply == NULL);
    bool allowed = true;
    CHECK_STATUS(dreamos_bridge_authorize(b, "not-a-token", "c.secure", &allowed), DREAMOS_UNAUTHENTICATED);
    CHECK(allowed == true); /* untouched on failure */
    dreamos_bridge_free(b);
}

static void test_null_parameters(void) {
    dreamos_bridge *b = started(NULL);
    char *s = NULL;
    bool allowed = false;
    CHECK_STATUS(dreamos_bridge_new(NULL, NULL), DREAMOS_NULL_PARAMETER);
    CHECK_ERROR_MENTIONS("out");
    CHECK_STATUS(dreamos_bridge_from_file(NULL, &b), DREAMOS_NULL_PARAMETER);
    CHECK_STATUS(dreamos_bridge_from_file("/tmp/x.yaml", NULL), DREAMOS_NULL_PARAMETER);
    CHECK_STATUS(dreamos_bridge_initialize(NULL), DREAMOS_NULL_PARAMETER);
    CHECK_STATUS(dreamos_bridge_shutdown(NULL), DREAMOS_NULL_PARAMETER);

    CHECK_STATUS(dreamos_bridge_authenticate(NULL, "{}", &s), DREAMOS_NULL_PARAMETER);
    CHECK_STATUS(dreamos_bridge_authenticate(b, NULL, &s), DREAMOS_NULL_PARAMETER);
    CHECK_STATUS(dreamos_bridge_authenticate(b, "{}", NULL), DREAMOS_NULL_PARAMETER);
    CHECK_STATUS(dreamos_bridge_authorize(NULL, "t", "r", &allowed), DREAMOS_NULL_PARAMETER);
    CHECK_STATUS(dreamos_bridge_authorize(b, NULL, "r", &allowed), DREAMOS_NULL_PARAMETER);
    CHECK_STATUS(dreamos_bridge_authorize(b, "t", NULL, &allowed), DREAMOS_NULL_PARAMETER);
    CHECK_STATUS(dreamos_bridge_authorize(b, "t", "r", NULL), DREAMOS_NULL_PARAMETER);

    CHECK_STATUS(dreamos_bridge_route(NULL, NULL, "a.b", "{}", 0, &s), DREAMOS_NULL_PARAMETER);
    CHECK_STATUS(dreamos_bridge_route(b, NULL, NULL, "{}", 0, &s), DREAMOS_NULL_PARAMETER);
    CHECK_ERROR_MENTIONS("destination");
    CHECK_STATUS(dreamos_bridge_route(b, NULL, "a.b", NULL, 0, &s), DREAMOS_NULL_PARAMETER);
    CHECK_ERROR_MENTIONS("payload_json");
    CHECK_STATUS(dreamos_bridge_route(b, NULL, "a.b", "{}", 0, NULL), DREAMOS_NULL_PARAMETER);

    struct completion c = {0, -1};
    CHECK_STATUS(dreamos_bridge_route_async(NULL, NULL, "a.b", "{}", 0, on_complete, &c), DREAMOS_NULL_PARAMETER);
    CHECK_STATUS(dreamos_bridge_route_async(b, NULL, NULL, "{}", 0, on_complete, &c), DREAMOS_NULL_PARAMETER);
    CHECK_STATUS(dreamos_bridge_route_async(b, NULL, "a.b", NULL, 0, on_complete, &c), DREAMOS_NULL_PARAMETER);
    CHECK_STATUS(dreamos_bridge_route_async(b, NULL, "a.b", "{}", 0, NULL, &c), DREAMOS_NULL_PARAMETER);
    CHECK_ERROR_MENTIONS("cb");

    CHECK_STATUS(dreamos_bridge_publish(NULL, NULL, "a.b", "{}", &s), DREAMOS_NULL_PARAMETER);
    CHECK_STATUS(dreamos_bridge_publish(b, NULL, NULL, "{}", &s), DREAMOS_NULL_PARAMETER);
    CHECK_STATUS(dreamos_bridge_publish(b, NULL, "a.b", NULL, &s), DREAMOS_NULL_PARAMETER);
    CHECK_STATUS(dreamos_bridge_publish(b, NULL, "a.b", "{}", NULL), DREAMOS_NULL_PARAMETER);

    CHECK_STATUS(dreamos_bridge_register_route(NULL, "a.b", echo_handler, NULL), DREAMOS_NULL_PARAMETER);
    CHECK_STATUS(dreamos_bridge_register_route(b, NULL, echo_handler, NULL), DREAMOS_NULL_PARAMETER);
    CHECK_STATUS(dreamos_bridge_register_route(b, "a.b", NULL, NULL), DREAMOS_NULL_PARAMETER);
    CHECK_ERROR_MENTIONS("handler");
    CHECK_STATUS(dreamos_bridge_unregister_route(NULL, "a.b"), DREAMOS_NULL_PARAMETER);
    CHECK_STATUS(dreamos_bridge_unregister_route(b, NULL), DREAMOS_NULL_PARAMETER);
    CHECK_STATUS(dreamos_bridge_register_echo(NULL, "a.b"), DREAMOS_NULL_PARAMETER);
    CHECK_STATUS(dreamos_bridge_register_echo(b, NULL), DREAMOS_NULL_PARAMETER);

    CHECK_STATUS(dreamos_bridge_metrics_json(NULL, &s), DREAMOS_NULL_PARAMETER);
    CHECK_STATUS(dreamos_bridge_metrics_json(b, NULL), DREAMOS_NULL_PARAMETER);
    CHECK_STATUS(dreamos_bridge_metrics_text(NULL, &s), DREAMOS_NULL_PARAMETER);
    CHECK_STATUS(dreamos_bridge_metrics_text(b, NULL), DREAMOS_NULL_PARAMETER);
    CHECK_STATUS(dreamos_bridge_health_json(NULL, &s), DREAMOS_NULL_PARAMETER);
    CHECK_STATUS(dreamos_bridge_health_json(b, NULL), DREAMOS_NULL_PARAMETER);
    CHECK(s == NULL);
    CHECK(atomic_load(&c.calls) == 0);

    /* _free(NULL) is a no-op. */
    dreamos_bridge_free(NULL);
    dreamos_string_free(NULL);
    CHECK(1);
    dreamos_bridge_free(b);
}

/* After fork() the child has no runtime threads: a clear error, never a hang. */
static void test_fork_child_fails_clearly(void) {
    dreamos_bridge *b = started(NULL);
    CHECK_STATUS(dreamos_bridge_register_echo(b, "c.echo"), DREAMOS_OK);
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        char *reply = NULL;
        dreamos_status s = dreamos_bridge_route(b, NULL, "c.echo", "{}", 1000, &reply);
        int ok = s == DREAMOS_INTERNAL && reply == NULL && strstr(dreamos_last_error_message(), "fork") != NULL;
        _exit(ok ? 0 : 1); /* skip exit handlers (and leak checks) in the child */
    }
    CHECK(pid > 0);
    int wstatus = 0;
    CHECK(waitpid(pid, &wstatus, 0) == pid);
    CHECK(WIFEXITED(wstatus) && WEXITSTATUS(wstatus) == 0);
    /* The parent's bridge is unaffected. */
    char *reply = NULL;
    CHECK_STATUS(dreamos_bridge_route(b, NULL, "c.echo", "{}", 0, &reply), DREAMOS_OK);
    dreamos_string_free(reply);
    dreamos_bridge_free(b);
}

int main(void) {
    test_status_names_and_version();
    test_lifecycle_and_echo();
    test_config_errors();
    test_invalid_messages();
    test_handler_errors();
    test_timeout();
    test_queue_full();
    test_rate_limited();
    test_unauthenticated();
    test_null_parameters();
    test_fork_child_fails_clearly();
    return finish();
}

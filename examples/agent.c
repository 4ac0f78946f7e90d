/* A Dream.OS agent in C: embeds the bridge, serves one route with a C
 * handler, calls it blocking and asynchronously, publishes an event, and
 * prints what the bridge recorded.
 *
 * Build and run from the repository root (after `cargo build -p dreamos-bridge-c`):
 *
 *   gcc -std=c11 examples/agent.c -Ibindings-c/include -Ltarget/debug -ldreamos_bridge \
 *       -Wl,-rpath,$PWD/target/debug -o target/agent && target/agent
 *
 * or with pkg-config (`make c-pkgconfig` writes target/debug/dreamos_bridge.pc):
 *
 *   gcc -std=c11 examples/agent.c $(PKG_CONFIG_PATH=target/debug pkg-config --cflags --libs dreamos_bridge) \
 *       -o target/agent && target/agent
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <threads.h>

#include "dreamos_bridge.h"

/* Embedded configuration: no file needed. NULL would mean the defaults. */
static const char *CONFIG =
    "bridge:\n"
    "  request_timeout: 5s\n"
    "routes:\n"
    "  - pattern: agents.summarize\n"
    "    max_concurrency: 8\n"
    "    queue_size: 64\n";

/* The handler: runs on a bridge thread, maybe several at once. It gets the
 * whole message as JSON and returns a reply allocated with malloc (the
 * bridge frees it). */
static dreamos_status summarize(void *user_data, const char *message_json, char **reply_json_out) {
    const char *agent_name = user_data;
    size_t len = strlen(message_json) + 128;
    char *reply = malloc(len);
    if (reply == NULL) return DREAMOS_INTERNAL;
    snprintf(reply, len, "{\"summarized_by\": \"%s\", \"input_bytes\": %zu}", agent_name, strlen(message_json));
    *reply_json_out = reply;
    return DREAMOS_OK;
}

/* Completion of the asynchronous call: copy the reply, wake main. */
struct pending {
    mtx_t lock;
    cnd_t done;
    int finished;
    dreamos_status status;
    char reply[256];
};

static void on_reply(void *user_data, dreamos_status status, const char *reply_json_or_error) {
    struct pending *p = user_data;
    mtx_lock(&p->lock);
    p->status = status;
    snprintf(p->reply, sizeof p->reply, "%s", reply_json_or_error); /* valid only during the callback */
    p->finished = 1;
    cnd_signal(&p->done);
    mtx_unlock(&p->lock);
}

static int fail(const char *what, dreamos_status s) {
    fprintf(stderr, "%s failed: %s: %s\n", what, dreamos_status_name((int)s), dreamos_last_error_message());
    return 1;
}

int main(void) {
    dreamos_bridge *bridge = NULL;
    dreamos_status s = dreamos_bridge_new(CONFIG, &bridge);
    if (s != DREAMOS_OK) return fail("dreamos_bridge_new", s);

    static char agent_name[] = "c-agent";
    if ((s = dreamos_bridge_register_route(bridge, "agents.summarize", summarize, agent_name)) != DREAMOS_OK ||
        (s = dreamos_bridge_initialize(bridge)) != DREAMOS_OK) {
        dreamos_bridge_free(bridge);
        return fail("setup", s);
    }
    printf("dreamos-bridge %s\n", dreamos_version());

    /* 1. Blocking request/reply (0: the configured timeout). */
    char *reply = NULL;
    s = dreamos_bridge_route(bridge, NULL, "agents.summarize", "{\"text\": \"The weather in Paris is mild.\"}", 0, &reply);
    if (s != DREAMOS_OK) {
        dreamos_bridge_free(bridge);
        return fail("route", s);
    }
    printf("route reply:       %s\n", reply);
    dreamos_string_free(reply);

    /* 2. Asynchronous request/reply: the callback runs on a bridge thread. */
    struct pending p = {.finished = 0};
    mtx_init(&p.lock, mtx_plain);
    cnd_init(&p.done);
    s = dreamos_bridge_route_async(bridge, NULL, "agents.summarize", "{\"text\": \"async\"}", 2000, on_reply, &p);
    if (s == DREAMOS_OK) {
        mtx_lock(&p.lock);
        while (!p.finished) cnd_wait(&p.done, &p.lock);
        mtx_unlock(&p.lock);
        printf("async reply:       %s (%s)\n", p.reply, dreamos_status_name((int)p.status));
    }
    cnd_destroy(&p.done);
    mtx_destroy(&p.lock);

    /* 3. A typed error: no route. */
    reply = NULL;
    s = dreamos_bridge_route(bridge, NULL, "agents.unknown", "{}", 0, &reply);
    printf("unknown route:     %s: %s\n", dreamos_status_name((int)s), dreamos_last_error_message());

    /* 4. Fire-and-forget. */
    char *id = NULL;
    if (dreamos_bridge_publish(bridge, NULL, "agents.summarize", "{\"text\": \"event\"}", &id) == DREAMOS_OK) {
        printf("published message: %s\n", id);
        dreamos_string_free(id);
    }

    /* 5. What the bridge recorded. */
    char *json = NULL;
    if (dreamos_bridge_metrics_json(bridge, &json) == DREAMOS_OK) {
        printf("metrics:           %s\n", json);
        dreamos_string_free(json);
    }
    json = NULL;
    if (dreamos_bridge_health_json(bridge, &json) == DREAMOS_OK) {
        printf("health:            %s\n", json);
        dreamos_string_free(json);
    }

    dreamos_bridge_free(bridge); /* graceful shutdown, then release */
    return 0;
}

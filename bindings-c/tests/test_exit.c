/* dreamos_bridge_free from an atexit handler, where C++ static destructors
 * also run: the C library has already destroyed the main thread's
 * thread-locals there. free must still shut down and wait for the running
 * handler (its user_data is freed next), without a panic. */
#define _POSIX_C_SOURCE 200809L

#include <stdatomic.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#include "check.h"

static dreamos_bridge *bridge;
static atomic_int *handler_done;

static void sleep_ms(long ms) {
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* Takes a while, then writes to its user_data. */
static dreamos_status slow_handler(void *user_data, const char *message_json, char **reply_json_out) {
    (void)message_json;
    (void)reply_json_out;
    sleep_ms(300);
    atomic_store((atomic_int *)user_data, 1);
    return DREAMOS_OK;
}

static void at_exit(void) {
    dreamos_bridge_free(bridge);
    CHECK(atomic_load(handler_done) == 1);
    free(handler_done);
    /* A bridge can still be made and freed here. (Calls that make messages
     * need thread-locals of their own and fail with DREAMOS_PANIC at exit.) */
    dreamos_bridge *b2 = NULL;
    CHECK_STATUS(dreamos_bridge_new(NULL, &b2), DREAMOS_OK);
    CHECK_STATUS(dreamos_bridge_initialize(b2), DREAMOS_OK);
    dreamos_bridge_free(b2);
    /* The exit status is the checks' verdict (_exit does not flush stdio). */
    int status = finish();
    fflush(stdout);
    _exit(status);
}

int main(void) {
    handler_done = calloc(1, sizeof *handler_done);
    CHECK(handler_done != NULL);
    CHECK_STATUS(dreamos_bridge_new(NULL, &bridge), DREAMOS_OK);
    CHECK_STATUS(dreamos_bridge_initialize(bridge), DREAMOS_OK);
    CHECK_STATUS(dreamos_bridge_register_route(bridge, "exit.slow", slow_handler, handler_done), DREAMOS_OK);
    char *id = NULL;
    CHECK_STATUS(dreamos_bridge_publish(bridge, NULL, "exit.slow", "{}", &id), DREAMOS_OK);
    dreamos_string_free(id);
    sleep_ms(50); /* the handler is running */
    CHECK(atexit(at_exit) == 0);
    return 0;
}

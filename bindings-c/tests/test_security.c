/* Tokens through the C API: authenticate with an API key, authorize, route
 * with the token, FORBIDDEN on a denied destination, and the per-principal
 * rate limit (security.rate_limit). */
#define _POSIX_C_SOURCE 200809L
#include <stdbool.h>
#include <stdlib.h>

#include "check.h"

/* The API key "dk_test_c_agent" is stored only as its SHA-256. */
static const char *CONFIG =
    "bridge:\n"
    "  rate_limit_mode: reject\n"
    "security:\n"
    "  auth_type: token\n"
    "  token_expiry: 600\n"
    "  signing_keys:\n"
    "    - id: k1\n"
    "      secret: 0123456789abcdef0123456789abcdef-c-tests\n"
    "  api_keys:\n"
    "    - principal: c-agent\n"
    "      sha256: d447775bfbcd653c9b463c2b32d60cabf082432a62676d92baf761e31426f220\n"
    "      roles: [agent]\n"
    "  roles:\n"
    "    agent:\n"
    "      route: [\"agents.*\"]\n"
    "      publish: [\"events.>\"]\n"
    "      deny: [\"agents.secret\"]\n";

static const char *LIMITED_CONFIG =
    "bridge:\n"
    "  rate_limit_mode: reject\n"
    "security:\n"
    "  auth_type: token\n"
    "  rate_limit: 1/min\n"
    "  rate_limit_burst: 1\n"
    "  api_keys:\n"
    "    - principal: c-agent\n"
    "      sha256: d447775bfbcd653c9b463c2b32d60cabf082432a62676d92baf761e31426f220\n"
    "      roles: [agent]\n"
    "  roles:\n"
    "    agent:\n"
    "      route: [\"agents.*\"]\n";

static dreamos_status whoami_handler(void *user_data, const char *message_json, char **reply_json_out) {
    (void)user_data;
    *reply_json_out = strdup(message_json);
    return DREAMOS_OK;
}

static void test_tokens(void) {
    dreamos_bridge *b = NULL;
    CHECK_STATUS(dreamos_bridge_new(CONFIG, &b), DREAMOS_OK);
    CHECK_STATUS(dreamos_bridge_initialize(b), DREAMOS_OK);
    CHECK_STATUS(dreamos_bridge_register_route(b, "agents.*", whoami_handler, NULL), DREAMOS_OK);
    CHECK_STATUS(dreamos_bridge_register_echo(b, "events.audit"), DREAMOS_OK);

    char *token = NULL;
    CHECK_STATUS(dreamos_bridge_authenticate(b, "{\"api_key\": \"dk_wrong_key\"}", &token), DREAMOS_UNAUTHENTICATED);
    CHECK(token == NULL);
    CHECK_STATUS(dreamos_bridge_authenticate(b, "{\"api_key\": \"dk_test_c_agent\"}", &token), DREAMOS_OK);
    CHECK(token != NULL);
    if (token == NULL) {
        dreamos_bridge_free(b);
        return;
    }

    bool allowed = false;
    CHECK_STATUS(dreamos_bridge_authorize(b, token, "agents.planner", &allowed), DREAMOS_OK);
    CHECK(allowed);
    CHECK_STATUS(dreamos_bridge_authorize(b, token, "agents.secret", &allowed), DREAMOS_OK);
    CHECK(!allowed);
    CHECK_STATUS(dreamos_bridge_authorize(b, token, "services.weather.current", &allowed), DREAMOS_OK);
    CHECK(!allowed);

    /* The handler sees the authenticated principal as the message's source. */
    char *reply = NULL;
    CHECK_STATUS(dreamos_bridge_route(b, token, "agents.planner", "{}", 0, &reply), DREAMOS_OK);
    CHECK_CONTAINS(reply, "\"source\":\"c-agent\"");
    dreamos_string_free(reply);

    reply = NULL;
    CHECK_STATUS(dreamos_bridge_route(b, token, "agents.secret", "{}", 0, &reply), DREAMOS_FORBIDDEN);
    CHECK(reply == NULL);
    CHECK_STATUS(dreamos_bridge_route(b, NULL, "agents.planner", "{}", 0, &reply), DREAMOS_UNAUTHENTICATED);

    char *id = NULL;
    CHECK_STATUS(dreamos_bridge_publish(b, token, "events.audit", "{\"what\": \"login\"}", &id), DREAMOS_OK);
    dreamos_string_free(id);
    id = NULL;
    CHECK_STATUS(dreamos_bridge_publish(b, token, "agents.planner", "{}", &id), DREAMOS_FORBIDDEN);
    CHECK(id == NULL);

    dreamos_string_free(token);
    dreamos_bridge_free(b);
}

static void test_principal_rate_limit(void) {
    dreamos_bridge *b = NULL;
    CHECK_STATUS(dreamos_bridge_new(LIMITED_CONFIG, &b), DREAMOS_OK);
    CHECK_STATUS(dreamos_bridge_initialize(b), DREAMOS_OK);
    CHECK_STATUS(dreamos_bridge_register_echo(b, "agents.echo"), DREAMOS_OK);
    char *token = NULL;
    CHECK_STATUS(dreamos_bridge_authenticate(b, "{\"api_key\": \"dk_test_c_agent\"}", &token), DREAMOS_OK);
    char *reply = NULL;
    CHECK_STATUS(dreamos_bridge_route(b, token, "agents.echo", "1", 0, &reply), DREAMOS_OK);
    dreamos_string_free(reply);
    reply = NULL;
    CHECK_STATUS(dreamos_bridge_route(b, token, "agents.echo", "2", 0, &reply), DREAMOS_RATE_LIMITED);
    CHECK_ERROR_MENTIONS("security.rate_limit");
    CHECK(reply == NULL);
    dreamos_string_free(token);
    dreamos_bridge_free(b);
}

int main(void) {
    test_tokens();
    test_principal_rate_limit();
    return finish();
}

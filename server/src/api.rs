//! The HTTP API: request parsing, bearer tokens, admin checks, and the
//! router. Each handler converts the request and calls the bridge; the
//! flow itself (validation, auth, limits, delivery) is the core's.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use std::future::poll_fn;
use std::pin::Pin;

use axum::Router;
use axum::body::{Bytes, HttpBody};
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use dreamos_bridge::{Action, BridgeError, BridgeManager, CallOptions, Credentials, ErrorCode, Message, Payload};
use serde_json::{Value, json};
use tower_http::cors::{AllowOrigin, CorsLayer};
use uuid::Uuid;

use crate::error::ApiError;
use crate::signing;
use crate::state::{AppState, ServerOptions};
use crate::ws::payload_from_json;

type ApiResult<T> = Result<T, ApiError>;

/// The OpenAPI 3.1 document served at `/openapi.json`.
pub const OPENAPI: &str = include_str!("../assets/openapi.json");
const DASHBOARD_HTML: &str = include_str!("../assets/dashboard/index.html");
const DASHBOARD_JS: &str = include_str!("../assets/dashboard/app.js");
const DASHBOARD_CSS: &str = include_str!("../assets/dashboard/app.css");

/// Every route of the router as (method, path), for the OpenAPI check.
pub const ROUTES: &[(&str, &str)] = &[
    ("get", "/health"),
    ("get", "/metrics"),
    ("get", "/openapi.json"),
    ("post", "/v1/auth/token"),
    ("post", "/v1/route"),
    ("post", "/v1/publish"),
    ("get", "/v1/connect"),
    ("post", "/v1/admin/revoke"),
    ("get", "/v1/admin/metrics.json"),
    ("get", "/v1/admin/dead-letters"),
    ("post", "/v1/admin/dead-letters/{id}/replay"),
    ("get", "/dashboard"),
    ("get", "/dashboard/app.js"),
    ("get", "/dashboard/app.css"),
];

/// Admin resources, checked with `authorize(token, Action::Admin, resource)`.
pub mod resources {
    /// `GET /metrics`, `GET /v1/admin/metrics.json`.
    pub const METRICS: &str = "admin.metrics";
    /// `POST /v1/admin/revoke`.
    pub const TOKENS: &str = "admin.tokens";
    /// `GET /v1/admin/dead-letters`.
    pub const DEAD_LETTERS: &str = "admin.dead-letters";
    /// `POST /v1/admin/dead-letters/{id}/replay`.
    pub const REPLAY: &str = "admin.dead-letters.replay";
}

/// The application router (without the connection-level limits).
///
/// Request bodies are read by the handlers themselves ([`read_body`]: the
/// size limit and the body read timeout), not by router layers: a layer's
/// timer is armed and disarmed for every body frame, and the handlers that
/// take no body would pay for the layers too.
pub fn router(state: Arc<AppState>) -> Router {
    let router = Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics_text))
        .route("/openapi.json", get(openapi))
        .route("/v1/auth/token", post(auth_token))
        .route("/v1/route", post(route))
        .route("/v1/publish", post(publish))
        .route("/v1/connect", get(crate::ws::connect))
        .route("/v1/admin/revoke", post(revoke))
        .route("/v1/admin/metrics.json", get(metrics_json))
        .route("/v1/admin/dead-letters", get(dead_letters))
        .route("/v1/admin/dead-letters/{id}/replay", post(replay))
        .route("/dashboard", get(|| async { Html(DASHBOARD_HTML) }))
        .route("/dashboard/app.js", get(|| async { static_file("text/javascript; charset=utf-8", DASHBOARD_JS) }))
        .route("/dashboard/app.css", get(|| async { static_file("text/css; charset=utf-8", DASHBOARD_CSS) }))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed);
    // Without allowed origins there is nothing for CORS to allow: a browser
    // refuses the cross-origin call without the layer just as it does with
    // an empty list, and no request pays for the layer's `Vary` headers.
    let router = if state.options.allowed_origins.is_empty() {
        router
    } else {
        router.layer(cors_layer(&state.options.allowed_origins))
    };
    router.with_state(state)
}

fn static_file(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

/// CORS: only the exact origins of `security.allowed_origins`; none if empty.
fn cors_layer(origins: &[String]) -> CorsLayer {
    let list: Vec<HeaderValue> = origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()).collect();
    CorsLayer::new()
        .allow_origin(AllowOrigin::list(list))
        .allow_methods([Method::GET, Method::POST])
        .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE, HeaderName::from_static(signing::HEADER)])
        .expose_headers([header::RETRY_AFTER])
        .max_age(Duration::from_secs(600))
}

async fn not_found() -> ApiError {
    ApiError::with_status(
        BridgeError::new(ErrorCode::RouteNotFound, "no such endpoint: see /openapi.json for the API"),
        StatusCode::NOT_FOUND,
    )
}

async fn method_not_allowed() -> ApiError {
    ApiError::with_status(
        BridgeError::invalid("method not allowed on this endpoint: see /openapi.json"),
        StatusCode::METHOD_NOT_ALLOWED,
    )
}

/// The bearer token of the request, if any.
fn bearer(headers: &HeaderMap) -> ApiResult<Option<String>> {
    let Some(v) = headers.get(header::AUTHORIZATION) else { return Ok(None) };
    let v = v.to_str().map_err(|_| BridgeError::unauthenticated("the Authorization header is not ASCII"))?;
    match v.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() => {
            Ok(Some(token.trim().to_string()))
        }
        _ => {
            Err(BridgeError::unauthenticated("expected `Authorization: Bearer <token>` (get one from /v1/auth/token)")
                .into())
        }
    }
}

/// The request body as JSON; an oversize body is 413, bad JSON 400.
async fn json_body(
    body: impl HttpBody<Data = Bytes, Error = axum::Error> + Unpin,
    options: &ServerOptions,
) -> ApiResult<Value> {
    let bytes = read_body(body, options).await?;
    serde_json::from_slice(&bytes).map_err(|e| ApiError::invalid(format!("the request body is not valid JSON: {e}")))
}

/// Read a request body within the server's limits: over
/// `options.body_limit` bytes is 413, a body that has not fully arrived
/// `options.body_read_timeout` after the handler started reading it is 400.
///
/// The timer is only armed when the body is not already there on the first
/// poll (`tokio::time::timeout` polls the read before its deadline), and
/// one body that arrives in one piece is used as is, without a copy.
pub(crate) async fn read_body<B>(body: B, options: &ServerOptions) -> ApiResult<Bytes>
where
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    let wait = options.body_read_timeout;
    match tokio::time::timeout(wait, collect_body(body, options.body_limit)).await {
        Ok(read) => read,
        Err(_) => Err(ApiError::invalid(format!(
            "the request body did not arrive within {} s of the request head: send it without pauses",
            wait.as_secs_f64()
        ))),
    }
}

/// All data frames of `body` (trailers are ignored), at most `limit` bytes.
async fn collect_body<B>(mut body: B, limit: usize) -> ApiResult<Bytes>
where
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    let mut first: Option<Bytes> = None;
    let mut joined: Vec<u8> = Vec::new();
    let mut len = 0usize;
    while let Some(frame) = poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
        let frame = frame.map_err(|e| ApiError::invalid(format!("could not read the request body: {e}")))?;
        let Ok(data) = frame.into_data() else { continue };
        len = len.saturating_add(data.len());
        if len > limit {
            return Err(ApiError::with_status(
                BridgeError::invalid(
                    "the request body is larger than the limit (limits.max_payload_bytes plus 64 KiB)",
                ),
                StatusCode::PAYLOAD_TOO_LARGE,
            ));
        }
        if first.is_none() && joined.is_empty() {
            first = Some(data);
        } else {
            if let Some(f) = first.take() {
                joined.extend_from_slice(&f);
            }
            joined.extend_from_slice(&data);
        }
    }
    Ok(match first {
        Some(only) => only,
        None => Bytes::from(joined),
    })
}

/// Admin endpoints need security on and a token whose roles grant `admin` on `resource`.
fn require_admin(state: &AppState, headers: &HeaderMap, resource: &str) -> ApiResult<()> {
    let bridge = state.bridge();
    if !bridge.config().security_enabled() {
        return Err(BridgeError::forbidden(
            "admin endpoints need the admin role, and this server runs without `security`: configure API keys and roles",
        )
        .into());
    }
    let token = bearer(headers)?.ok_or_else(|| {
        BridgeError::unauthenticated(
            "admin endpoints need `Authorization: Bearer <token>` of a principal with the admin role",
        )
    })?;
    match bridge.authorize(&token, Action::Admin, resource) {
        Ok(true) => Ok(()),
        Ok(false) => Err(BridgeError::forbidden(format!("this principal lacks the admin role for {resource}")).into()),
        Err(e) => Err(e.into()),
    }
}

async fn health(State(state): State<Arc<AppState>>) -> Response {
    let report = state.bridge().health().await;
    let status = match report.status {
        dreamos_bridge::metrics::HealthStatus::Down => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::OK,
    };
    (status, axum::Json(report)).into_response()
}

async fn openapi() -> Response {
    static_file("application/json", OPENAPI)
}

async fn metrics_text(State(state): State<Arc<AppState>>, headers: HeaderMap) -> ApiResult<Response> {
    require_admin(&state, &headers, resources::METRICS)?;
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], state.bridge().metrics_text())
        .into_response())
}

async fn metrics_json(State(state): State<Arc<AppState>>, headers: HeaderMap) -> ApiResult<Response> {
    require_admin(&state, &headers, resources::METRICS)?;
    Ok(axum::Json(state.bridge().metrics()).into_response())
}

async fn auth_token(State(state): State<Arc<AppState>>, req: Request) -> ApiResult<Response> {
    let creds = json_body(req.into_body(), &state.options).await?;
    let creds = Credentials::from_json(&creds)?;
    let token = state.bridge().authenticate(&creds)?;
    Ok(axum::Json(json!({
        "token": token.value,
        "principal": token.principal,
        "roles": token.roles,
        "expires_at": token.expires_at,
    }))
    .into_response())
}

/// The body of `/v1/route` and `/v1/publish`, read in one pass into its
/// fields (no intermediate map of keys to pick apart); `id` is borrowed from
/// the request bytes. Unknown and duplicate fields are refused.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct MessageBody<'a> {
    #[serde(default, borrow)]
    id: Option<Cow<'a, str>>,
    #[serde(default)]
    destination: Option<String>,
    #[serde(default)]
    payload: Option<Value>,
    #[serde(default)]
    headers: Option<serde_json::Map<String, Value>>,
    #[serde(default)]
    timeout: Option<f64>,
    #[serde(default)]
    priority: Option<i64>,
}

/// What a message body looks like, for errors.
const MESSAGE_SHAPE: &str = "expected a JSON object {\"destination\": subject string, \"payload\": any JSON, \
     \"id\"?: UUID string, \"headers\"?: object of strings, \"timeout\"?: seconds, \"priority\"?: integer}";

/// A `/v1/route` or `/v1/publish` body as a message and call options, its
/// signature checked (see [`crate::signing`]).
fn message_request(bridge: &BridgeManager, headers: &HeaderMap, bytes: &[u8]) -> ApiResult<(Message, CallOptions)> {
    let token = bearer(headers)?;
    let body: MessageBody = serde_json::from_slice(bytes).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => {
            ApiError::invalid(format!("the body is not a valid message ({e}): {MESSAGE_SHAPE}"))
        }
        _ => ApiError::invalid(format!("the request body is not valid JSON: {e}")),
    })?;
    let Some(destination) = body.destination else {
        return Err(ApiError::invalid("`destination` (a subject string) is required"));
    };
    let mut msg = Message::new(destination, payload_from_json(body.payload.unwrap_or(Value::Null)));
    // A client-chosen id: a signed message needs one, because the MAC covers it.
    let body_had_id = body.id.is_some();
    if let Some(id) = body.id {
        msg.id = Uuid::parse_str(&id)
            .map_err(|_| ApiError::invalid(format!("`id` {id:?} is not a UUID (hyphenated, as signed)")))?;
    }
    for (k, v) in body.headers.unwrap_or_default() {
        let Value::String(v) = v else {
            return Err(ApiError::invalid(format!("header {k:?} must be a string")));
        };
        msg.headers.push((k, v));
    }
    let timeout = match body.timeout {
        None => None,
        Some(t) if t.is_finite() && t > 0.0 && t < 86_400.0 => Some(Duration::from_secs_f64(t)),
        Some(_) => return Err(ApiError::invalid("`timeout` must be a number of seconds above 0")),
    };
    if let Some(p) = body.priority {
        msg.priority = i32::try_from(p).map_err(|_| ApiError::invalid("`priority` must be an integer"))?;
    }
    let signature = match headers.get(signing::HEADER) {
        None => None,
        Some(v) => Some(v.to_str().map_err(|_| {
            BridgeError::unauthenticated(
                "the X-Bridge-Signature header is not ASCII: expected v1,kid=..,ts=..,nonce=..,mac=..",
            )
        })?),
    };
    if signature.is_some() && !body_had_id {
        return Err(BridgeError::unauthenticated(
            "a signed message must carry the `id` it was signed with (the MAC covers it): add \"id\" to the body",
        )
        .into());
    }
    signing::check(bridge, &msg, signature, "the X-Bridge-Signature header")?;
    Ok((msg, CallOptions { token, timeout }))
}

/// `{"payload": <reply>}`, written straight from the reply (no JSON tree
/// built around it, no copy of the payload).
fn reply_response(reply: &Payload) -> Response {
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(b"{\"payload\":");
    let written = match reply {
        Payload::Json(v) => serde_json::to_writer(&mut out, v),
        Payload::Bytes(_) => serde_json::to_writer(&mut out, &reply.to_json()),
    };
    if let Err(e) = written {
        return ApiError::new(BridgeError::internal(format!("the reply could not be serialized: {e}"))).into_response();
    }
    out.push(b'}');
    let mut resp = Response::new(axum::body::Body::from(out));
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// The message of a `/v1/route` or `/v1/publish` request (body read within
/// its limits, signature checked) and the bridge in force to hand it to.
async fn read_message<B>(
    state: &AppState,
    req: axum::http::Request<B>,
) -> ApiResult<(BridgeManager, Message, CallOptions)>
where
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    let (parts, body) = req.into_parts();
    let bytes = read_body(body, &state.options).await?;
    let bridge = state.bridge();
    let (msg, opts) = message_request(&bridge, &parts.headers, &bytes)?;
    Ok((bridge, msg, opts))
}

async fn route(State(state): State<Arc<AppState>>, req: Request) -> Response {
    route_request(&state, req).await
}

/// `POST /v1/route`: the message in the body routed, its reply as
/// `{"payload": ...}`. Generic over the body so the listener can call it
/// without the router (see [`crate::dispatch`]).
pub(crate) async fn route_request<B>(state: &AppState, req: axum::http::Request<B>) -> Response
where
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    let result = async {
        let (bridge, msg, opts) = read_message(state, req).await?;
        // Boxed once here: the delivery future is large, and unboxed it would
        // be copied into every future wrapped around this one.
        let reply = Box::pin(bridge.route(msg, opts)).await?;
        Ok::<_, ApiError>(reply_response(&reply))
    };
    result.await.unwrap_or_else(IntoResponse::into_response)
}

async fn publish(State(state): State<Arc<AppState>>, req: Request) -> Response {
    publish_request(&state, req).await
}

/// `POST /v1/publish`: the message in the body published, 202 with its id.
pub(crate) async fn publish_request<B>(state: &AppState, req: axum::http::Request<B>) -> Response
where
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    let result = async {
        let (bridge, msg, opts) = read_message(state, req).await?;
        let id = bridge.publish(msg, opts).await?;
        Ok::<_, ApiError>((StatusCode::ACCEPTED, axum::Json(json!({ "id": id.to_string() }))).into_response())
    };
    result.await.unwrap_or_else(IntoResponse::into_response)
}

async fn revoke(State(state): State<Arc<AppState>>, req: Request) -> ApiResult<Response> {
    let (parts, body) = req.into_parts();
    require_admin(&state, &parts.headers, resources::TOKENS)?;
    let body = json_body(body, &state.options).await?;
    let token = body
        .get("token")
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::invalid("expected {\"token\": \"<the token to revoke>\"}"))?;
    state.bridge().revoke(token)?;
    Ok(axum::Json(json!({ "revoked": true })).into_response())
}

async fn dead_letters(State(state): State<Arc<AppState>>, headers: HeaderMap) -> ApiResult<Response> {
    require_admin(&state, &headers, resources::DEAD_LETTERS)?;
    let list: Vec<Value> = state
        .bridge()
        .dead_letters()
        .into_iter()
        .map(|d| {
            json!({
                "id": d.id.to_string(),
                "message": d.message.to_json(),
                "error": d.error,
                "attempts": d.attempts,
                "failed_at": d.failed_at,
            })
        })
        .collect();
    Ok(axum::Json(json!({ "dead_letters": list })).into_response())
}

async fn replay(State(state): State<Arc<AppState>>, headers: HeaderMap, Path(id): Path<String>) -> ApiResult<Response> {
    require_admin(&state, &headers, resources::REPLAY)?;
    let id = Uuid::parse_str(&id).map_err(|_| ApiError::invalid(format!("{id:?} is not a dead-letter id (a UUID)")))?;
    // Its own task: an admin whose connection drops mid-delivery does not
    // cancel the replay they asked for (a cancelled one would put the letter
    // back, but the service may already have it).
    let bridge = state.bridge();
    match tokio::spawn(async move { bridge.replay(id).await }).await {
        Ok(outcome) => outcome?,
        Err(e) => return Err(ApiError::new(BridgeError::internal(format!("the replay task failed: {e}")))),
    }
    Ok(axum::Json(json!({ "replayed": id.to_string() })).into_response())
}

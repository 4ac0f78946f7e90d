//! The service each connection runs: `POST /v1/route` and `POST /v1/publish`
//! go straight to their handlers, every other request through the axum
//! router.
//!
//! These two endpoints are the hot path (every message an HTTP agent sends),
//! and for them the router only adds work: matching the path, inserting the
//! matched path and URL parameters into the request's extensions, boxing the
//! request body, and the extractor plumbing around the handler. The handlers
//! themselves are the router's ([`crate::api`]), so both ways give the same
//! answers; the only router layer, CORS, exists when
//! `security.allowed_origins` is set, and then every request goes through
//! the router so that CORS applies to these two endpoints as well.
//!
//! It also carries the connection's slot (`bridge.max_connections`) to
//! `GET /v1/connect`: hyper considers a connection done once it is
//! upgraded, so the WebSocket session must hold the slot itself.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use axum::Router;
use axum::http::{Method, Request};
use axum::response::Response;
use futures_util::future::Either;
use hyper::body::Incoming;
use tokio::sync::OwnedSemaphorePermit;
use tower::Service;

use crate::api;
use crate::state::AppState;

/// A request answered without the router.
type Direct = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

/// The connection slot a WebSocket session holds for its life (a request
/// extension of `GET /v1/connect`).
#[derive(Clone)]
pub struct ConnectionSlot {
    /// Released when the last holder (connection or session) is gone.
    _permit: Arc<OwnedSemaphorePermit>,
}

/// The HTTP service of one connection (cheap to clone: a few `Arc`s).
#[derive(Clone)]
pub struct ApiService {
    router: Router,
    state: Arc<AppState>,
    /// Whether the two message endpoints may skip the router (no CORS layer).
    direct: bool,
    /// The connection's slot, handed to a WebSocket upgrade.
    slot: Option<ConnectionSlot>,
}

impl ApiService {
    /// The service for `state`, around its `router` ([`api::router`]).
    pub fn new(state: Arc<AppState>, router: Router) -> Self {
        let direct = state.options.allowed_origins.is_empty();
        ApiService { router, state, direct, slot: None }
    }

    /// This service for one connection holding `slot` of the connection limit.
    pub fn with_slot(mut self, slot: Arc<OwnedSemaphorePermit>) -> Self {
        self.slot = Some(ConnectionSlot { _permit: slot });
        self
    }
}

impl hyper::service::Service<Request<Incoming>> for ApiService {
    type Response = Response;
    type Error = Infallible;
    type Future = Either<Direct, <Router as Service<Request<Incoming>>>::Future>;

    fn call(&self, mut req: Request<Incoming>) -> Self::Future {
        if self.direct && req.method() == Method::POST {
            let state = self.state.clone();
            match req.uri().path() {
                "/v1/route" => return Either::Left(Box::pin(async move { Ok(api::route_request(&state, req).await) })),
                "/v1/publish" => {
                    return Either::Left(Box::pin(async move { Ok(api::publish_request(&state, req).await) }));
                }
                _ => {}
            }
        }
        if let Some(slot) = &self.slot
            && req.uri().path() == "/v1/connect"
        {
            req.extensions_mut().insert(slot.clone());
        }
        // The router is always ready (axum documents `poll_ready` as such),
        // so it is called without waiting for readiness.
        Either::Right(self.router.clone().call(req))
    }
}

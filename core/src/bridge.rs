//! BridgeManager: the lifecycle and the message flow, top to bottom.
//!
//! Every `route` and `publish` goes through the stages of DESIGN.md
//! section 3, each one call below:
//!
//! 1. validate   — [`message::validate`]
//! 2. authenticate — [`SecurityManager::verify`]
//! 3. authorize  — [`SecurityManager::authorize`]
//! 4. resolve    — the route table ([`RouteTable`])
//! 5. admit      — rate limits ([`Gcra`]) and the route's queue ([`AdmissionQueue`])
//! 6. deliver    — an in-process [`Handler`], or [`ConnectionManager::deliver`]
//! 7. account    — [`MetricsCollector`] and a `tracing` span
//! 8. return     — the reply, or one [`BridgeError`]; failed publishes go to
//!    the dead-letter store.
//!
//! Stages 1–4 never wait, so they run synchronously in [`BridgeManager::begin`]
//! on the caller's thread; bindings rely on that to avoid thread hops.
//! The [`Call`] that `begin` returns accounts for itself: however it ends
//! (reply, error, or the caller dropping it), the metrics add up.

use std::any::Any;
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use parking_lot::{Mutex, RwLock};
use serde::Serialize;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use uuid::Uuid;

use crate::config::{BridgeConfig, RateLimitMode, RouteConfig};
use crate::connection::{ConnectionManager, ServiceHealth, ServiceRoute};
use crate::error::{BridgeError, ErrorCode, Result};
use crate::message::{self, Limits, Message, Payload};
use crate::metrics::{Alert, HealthStatus, MessageStats, MetricsCollector, MetricsSnapshot, Outcome};
use crate::routing::{Admission, AdmissionQueue, Gcra, KeyedGcra, RouteTable};
use crate::security::{Action, Credentials, Principal, SecurityManager, Token};

/// A boxed future, as handlers return.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// An in-process message handler. Bindings implement it for Python, JS and
/// C callbacks; Rust code usually uses [`handler_fn`].
pub trait Handler: Send + Sync + 'static {
    /// Handle one message and produce the reply payload.
    fn call(&self, msg: Message) -> BoxFuture<Result<Payload>>;

    /// Lets a binding recognise its own handlers (to call them on the
    /// caller's event loop instead of through the engine).
    fn as_any(&self) -> Option<&dyn Any> {
        None
    }

    /// Answer at once, on the caller's thread, if this handler never waits
    /// (a pure computation); otherwise hand the message back for
    /// [`call`](Self::call). Bindings use it (through [`Call::deliver_now`])
    /// to settle a call without a trip through the runtime; the default
    /// never answers at once.
    fn call_now(&self, msg: Message) -> AnswerNow<Message> {
        AnswerNow::Later(msg)
    }
}

/// An attempt to answer at once: the answer, or what is needed to get it
/// later (the message for [`Handler::call`], the call for [`Call::deliver`]).
#[derive(Debug)]
pub enum AnswerNow<T> {
    /// Answered on the spot.
    Answered(Result<Payload>),
    /// Needs waiting: carry on the usual way with this.
    Later(T),
}

struct FnHandler<F>(F);

impl<F, Fut> Handler for FnHandler<F>
where
    F: Fn(Message) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Payload>> + Send + 'static,
{
    fn call(&self, msg: Message) -> BoxFuture<Result<Payload>> {
        Box::pin((self.0)(msg))
    }
}

/// Wrap an async closure as a [`Handler`].
pub fn handler_fn<F, Fut>(f: F) -> Arc<dyn Handler>
where
    F: Fn(Message) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Payload>> + Send + 'static,
{
    Arc::new(FnHandler(f))
}

struct SyncFnHandler<F>(F);

impl<F> Handler for SyncFnHandler<F>
where
    F: Fn(Message) -> Result<Payload> + Send + Sync + 'static,
{
    fn call(&self, msg: Message) -> BoxFuture<Result<Payload>> {
        // The closure runs here, before any caller wraps the future in a
        // panic guard: guard it here too.
        let r = std::panic::catch_unwind(AssertUnwindSafe(|| (self.0)(msg)))
            .unwrap_or_else(|_| Err(BridgeError::handler("the handler panicked")));
        Box::pin(std::future::ready(r))
    }

    fn call_now(&self, msg: Message) -> AnswerNow<Message> {
        AnswerNow::Answered((self.0)(msg))
    }
}

/// Wrap a closure that never waits as a [`Handler`]. Such a handler is
/// answered on the caller's thread when the call needs no waiting, which
/// makes it the cheapest kind of route.
///
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// use dreamos_bridge::{BridgeManager, CallOptions, Message, Payload, sync_handler_fn};
///
/// let bridge = BridgeManager::new_default();
/// bridge.initialize().await?;
/// bridge.register_route("tools.echo", sync_handler_fn(|msg: Message| Ok(msg.payload)))?;
/// let reply = bridge.route(Message::new("tools.echo", serde_json::json!({"n": 1})), CallOptions::default()).await?;
/// assert_eq!(reply, Payload::Json(serde_json::json!({"n": 1})));
/// # Ok::<(), dreamos_bridge::BridgeError>(())
/// # }).unwrap();
/// ```
pub fn sync_handler_fn<F>(f: F) -> Arc<dyn Handler>
where
    F: Fn(Message) -> Result<Payload> + Send + Sync + 'static,
{
    Arc::new(SyncFnHandler(f))
}

/// Per-call options.
#[derive(Clone, Default)]
pub struct CallOptions {
    /// The caller's bridge token (required when security is on).
    pub token: Option<String>,
    /// How long the caller waits (default: the route's, else `bridge.request_timeout`).
    pub timeout: Option<Duration>,
}

/// The token is a bearer secret: Debug says only whether there is one.
impl std::fmt::Debug for CallOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallOptions")
            .field("token", &self.token.as_ref().map(|_| "***"))
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl CallOptions {
    /// Options with a token.
    pub fn with_token(token: impl Into<String>) -> Self {
        CallOptions { token: Some(token.into()), timeout: None }
    }
    /// Set the timeout.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }
}

/// Where a resolved route delivers.
#[derive(Clone)]
pub enum Target {
    /// An in-process handler.
    Handler(Arc<dyn Handler>),
    /// An HTTP service.
    Service(Arc<ServiceRoute>),
}

/// One entry of the route table, with everything admission needs.
struct Route {
    pattern: Arc<str>,
    target: Target,
    queue: Arc<AdmissionQueue>,
    limiter: Option<Arc<Gcra>>,
    service_limiter: Option<Arc<Gcra>>,
    timeout: Option<Duration>,
    stats: Arc<MessageStats>,
}

/// A failed publish, kept for listing and replay.
#[derive(Debug, Clone, Serialize)]
pub struct DeadLetter {
    /// The message id.
    pub id: Uuid,
    /// The message as it was published.
    pub message: Message,
    /// Why its last delivery attempt failed.
    pub error: BridgeError,
    /// Delivery attempts made.
    pub attempts: u32,
    /// When it was dead-lettered, ms since the Unix epoch.
    pub failed_at: u64,
}

/// `health()`: the bridge and each service.
#[derive(Debug, Clone, Serialize)]
pub struct HealthReport {
    /// up, degraded (a service is not up) or down (bridge not running).
    pub status: HealthStatus,
    /// Per service.
    pub services: std::collections::BTreeMap<String, ServiceHealth>,
}

const NEW: u8 = 0;
const RUNNING: u8 = 1;
const DRAINING: u8 = 2;
const STOPPED: u8 = 3;

/// The deadline of a call whose timeout is too large to add to the clock.
const FAR_DEADLINE: Duration = Duration::from_secs(365 * 24 * 60 * 60);

/// The bridge. Cheap to clone: clones share one engine.
#[derive(Clone)]
pub struct BridgeManager {
    inner: Arc<Inner>,
}

struct Inner {
    config: BridgeConfig,
    limits: Limits,
    connections: ConnectionManager,
    routes: RwLock<RouteTable<Arc<Route>>>,
    security: SecurityManager,
    metrics: Arc<MetricsCollector>,
    /// `routes` entries without a service: limits for in-process routes.
    route_settings: HashMap<String, RouteConfig>,
    service_limiters: HashMap<String, Arc<Gcra>>,
    principal_limiter: Option<KeyedGcra>,
    dead_letters: Mutex<VecDeque<DeadLetter>>,
    state: AtomicU8,
    in_flight: AtomicUsize,
    drained: Notify,
    cancel: CancellationToken,
    /// `cancel` as a plain flag, for the per-call check before a handler
    /// starts: `CancellationToken::is_cancelled` locks the token's node, a
    /// line every worker would take per call.
    gave_up: AtomicBool,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl std::fmt::Debug for BridgeManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BridgeManager")
            .field("state", &self.inner.state.load(Ordering::Relaxed))
            .field("routes", &self.inner.routes.read().len())
            .finish()
    }
}

impl BridgeManager {
    // -----------------------------------------------------------------
    // Construction and lifecycle.

    /// Build a bridge from a typed configuration. Nothing runs until
    /// [`initialize`](Self::initialize).
    pub fn new(config: BridgeConfig) -> Result<Self> {
        config.validate()?;
        let metrics = Arc::new(MetricsCollector::new(&config.monitoring));
        // Components in the seed's order: connections, router, security, metrics.
        let connections = ConnectionManager::new(&config, metrics.clone())?;
        let security = SecurityManager::new(config.security.as_ref())?;

        let service_limiters = config
            .services
            .iter()
            .filter_map(|(name, s)| s.rate_limit.map(|r| (name.clone(), Arc::new(Gcra::new(r, s.burst)))))
            .collect();
        let principal_limiter = config
            .security
            .as_ref()
            .filter(|_| config.security_enabled())
            .and_then(|s| s.rate_limit.map(|r| KeyedGcra::new(r, s.rate_limit_burst)));
        let route_settings =
            config.routes.iter().filter(|r| r.service.is_none()).map(|r| (r.pattern.clone(), r.clone())).collect();

        let inner = Arc::new(Inner {
            limits: config.limits.to_limits(),
            connections,
            routes: RwLock::new(RouteTable::new()),
            security,
            metrics,
            route_settings,
            service_limiters,
            principal_limiter,
            dead_letters: Mutex::new(VecDeque::new()),
            state: AtomicU8::new(NEW),
            in_flight: AtomicUsize::new(0),
            drained: Notify::new(),
            cancel: CancellationToken::new(),
            gave_up: AtomicBool::new(false),
            tasks: Mutex::new(Vec::new()),
            config,
        });
        let bridge = BridgeManager { inner };
        for route in bridge.inner.config.routes.iter().filter(|r| r.service.is_some()) {
            let target = Target::Service(bridge.inner.connections.service_route(route)?);
            bridge.insert_route(&route.pattern, target, Some(route))?;
        }
        Ok(bridge)
    }

    /// The embedded default: in-process handlers only, no services, no security.
    pub fn new_default() -> Self {
        match Self::new(BridgeConfig::default()) {
            Ok(b) => b,
            // The default configuration is a constant that the tests validate.
            Err(e) => unreachable!("the default configuration is valid: {e}"),
        }
    }

    /// Build from YAML text.
    pub fn from_yaml(text: &str) -> Result<Self> {
        Self::new(BridgeConfig::from_yaml(text)?)
    }

    /// Build from a YAML file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        Self::new(BridgeConfig::from_file(path)?)
    }

    /// The configuration in force.
    pub fn config(&self) -> &BridgeConfig {
        &self.inner.config
    }

    /// Start the components in order (connections, router, security,
    /// metrics) and begin admitting messages. Must run inside a tokio
    /// runtime, which the bridge then uses for background work. Calling it
    /// again on a running bridge does nothing.
    pub async fn initialize(&self) -> Result<()> {
        let inner = &self.inner;
        match inner.state.compare_exchange(NEW, RUNNING, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => {}
            Err(RUNNING) => return Ok(()),
            Err(_) => {
                return Err(BridgeError::new(
                    ErrorCode::Shutdown,
                    "this bridge was shut down and cannot be restarted; create a new one",
                ));
            }
        }
        if let Err(e) = inner.connections.initialize().await {
            inner.state.store(STOPPED, Ordering::Release);
            return Err(e);
        }
        // Metrics: evaluate alerts every health-check interval.
        let weak = Arc::downgrade(inner);
        let every = inner.config.monitoring.health_check_interval.get();
        let alerts = tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(inner) = weak.upgrade() else { return };
                inner.metrics.evaluate_alerts();
            }
        });
        inner.tasks.lock().push(alerts);
        tracing::info!(
            routes = inner.routes.read().len(),
            services = inner.config.services.len(),
            security = inner.security.enabled(),
            "bridge initialized"
        );
        Ok(())
    }

    /// Shut down with the configured grace period (`bridge.shutdown_grace`).
    pub async fn shutdown(&self) {
        self.shutdown_with_grace(self.inner.config.bridge.shutdown_grace.get()).await
    }

    /// Stop admitting, let in-flight work finish for up to `grace`, then fail
    /// what is left with `SHUTDOWN`, so every caller gets an answer. Stops
    /// the components in reverse order. Calling it twice is harmless.
    pub async fn shutdown_with_grace(&self, grace: Duration) {
        let inner = &self.inner;
        // SeqCst here and in `Accounting::drop`: either the last call sees
        // DRAINING and wakes us, or we see its in-flight count of zero.
        let prev = inner.state.swap(DRAINING, Ordering::SeqCst);
        if prev == STOPPED || prev == DRAINING {
            inner.state.store(prev, Ordering::Release);
            return;
        }
        let drained = async {
            loop {
                let notified = inner.drained.notified();
                if inner.in_flight.load(Ordering::SeqCst) == 0 {
                    return;
                }
                notified.await;
            }
        };
        if tokio::time::timeout(grace, drained).await.is_err() {
            tracing::warn!(
                in_flight = inner.in_flight.load(Ordering::Acquire),
                "shutdown grace period over: failing in-flight work with SHUTDOWN"
            );
        }
        inner.gave_up.store(true, Ordering::Release);
        inner.cancel.cancel();
        inner.connections.cancel_in_flight();
        // Cancelled calls answer promptly; wait for them so that nothing is
        // still running when shutdown returns.
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            while inner.in_flight.load(Ordering::Acquire) > 0 {
                let notified = inner.drained.notified();
                if inner.in_flight.load(Ordering::SeqCst) == 0 {
                    break;
                }
                notified.await;
            }
        })
        .await;
        for task in inner.tasks.lock().drain(..) {
            task.abort();
        }
        inner.connections.shutdown().await;
        inner.state.store(STOPPED, Ordering::Release);
        tracing::info!("bridge shut down");
    }

    /// Is the bridge admitting messages?
    pub fn is_running(&self) -> bool {
        self.inner.state.load(Ordering::Acquire) == RUNNING
    }

    // -----------------------------------------------------------------
    // Routes.

    /// Route `pattern` to an in-process handler, replacing any route with
    /// the same pattern. Works while messages are being routed. Limits come
    /// from a `routes` entry with the same pattern and no service.
    pub fn register_route(&self, pattern: &str, handler: Arc<dyn Handler>) -> Result<()> {
        let settings = self.inner.route_settings.get(pattern).cloned();
        self.insert_route(pattern, Target::Handler(handler), settings.as_ref())
    }

    /// Remove the route with exactly this pattern; `true` if there was one.
    /// Messages already admitted on it still complete.
    pub fn unregister_route(&self, pattern: &str) -> bool {
        self.inner.routes.write().remove(pattern).is_some()
    }

    /// Remove the route with exactly this pattern if it runs an in-process
    /// handler for which `owned` says yes; `true` if it was removed. For a
    /// component that registered a route and withdraws it later: a route
    /// someone registered over it since stays. `owned` runs under the route
    /// table's lock, so keep it to a check (e.g. [`Handler::as_any`] and a
    /// pointer comparison).
    pub fn unregister_route_if(&self, pattern: &str, owned: impl FnOnce(&dyn Handler) -> bool) -> bool {
        let mut routes = self.inner.routes.write();
        let ours = match routes.get(pattern).map(|r| &r.target) {
            Some(Target::Handler(h)) => owned(h.as_ref()),
            _ => false,
        };
        ours && routes.remove(pattern).is_some()
    }

    /// The registered patterns.
    pub fn routes(&self) -> Vec<String> {
        self.inner.routes.read().values().iter().map(|r| r.pattern.to_string()).collect()
    }

    fn insert_route(&self, pattern: &str, target: Target, settings: Option<&RouteConfig>) -> Result<()> {
        let inner = &self.inner;
        let b = &inner.config.bridge;
        let service_limiter = match &target {
            Target::Service(s) => inner.service_limiters.get(&s.service).cloned(),
            Target::Handler(_) => None,
        };
        let route = Route {
            pattern: pattern.into(),
            queue: AdmissionQueue::new(
                settings.and_then(|s| s.max_concurrency).unwrap_or(b.max_concurrency),
                settings.and_then(|s| s.queue_size).unwrap_or(b.queue_size),
            ),
            limiter: settings.and_then(|s| s.rate_limit.map(|r| Arc::new(Gcra::new(r, s.burst)))),
            service_limiter,
            timeout: settings.and_then(|s| s.timeout).map(|t| t.get()),
            stats: inner.metrics.route(pattern),
            target,
        };
        inner.routes.write().insert(pattern, Arc::new(route))?;
        Ok(())
    }

    // -----------------------------------------------------------------
    // Security.

    /// Check credentials (`{"api_key": ...}` or an OIDC JWT) and issue a
    /// bridge token.
    pub fn authenticate(&self, credentials: &Credentials) -> Result<Token> {
        self.inner.security.authenticate(credentials)
    }

    /// Whether the token's principal may take `action` on `resource`.
    /// An invalid token is an error (`UNAUTHENTICATED`); a refusal is `false`.
    pub fn authorize(&self, token: &str, action: Action, resource: &str) -> Result<bool> {
        if !self.inner.security.enabled() {
            return Ok(true);
        }
        let principal = self.inner.security.verify(token)?;
        match self.inner.security.authorize(&principal, action, resource) {
            Ok(()) => Ok(true),
            Err(e) if e.code() == ErrorCode::Forbidden => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Verify a token and return its principal.
    pub fn verify_token(&self, token: &str) -> Result<Arc<Principal>> {
        self.inner.security.verify(token)
    }

    /// Revoke a token until it expires.
    pub fn revoke(&self, token: &str) -> Result<()> {
        self.inner.security.revoke(token)
    }

    /// A fresh token for the same principal.
    pub fn refresh(&self, token: &str) -> Result<Token> {
        self.inner.security.refresh(token)
    }

    /// The security layer (for the server and bindings).
    pub fn security(&self) -> &SecurityManager {
        &self.inner.security
    }

    // -----------------------------------------------------------------
    // The message flow.

    /// Request/reply: deliver `msg` and wait for the reply.
    pub async fn route(&self, msg: Message, opts: CallOptions) -> Result<Payload> {
        let mut call = self.begin(Action::Route, msg, &opts)?;
        call.admit().await?;
        call.deliver().await
    }

    /// Fire-and-forget: admit `msg`, deliver it in the background (with
    /// retries), and return its id at once. A final failure goes to the
    /// dead-letter store.
    pub async fn publish(&self, msg: Message, opts: CallOptions) -> Result<Uuid> {
        let mut call = self.begin(Action::Publish, msg, &opts)?;
        call.admit().await?;
        let id = call.msg.id;
        tokio::spawn(call.deliver_in_background());
        Ok(id)
    }

    /// Stages 1–4 (validate, authenticate, authorize, resolve), on the
    /// caller's thread and without waiting. The returned [`Call`] then needs
    /// [`Call::admit`] (or [`Call::try_admit`]) and [`Call::deliver`].
    pub fn begin(&self, action: Action, msg: Message, opts: &CallOptions) -> Result<Call> {
        self.begin_checked(action, msg, opts, |msg, limits| message::validate_payload(&msg.payload, limits))
    }

    /// [`begin`](Self::begin) for a binding that holds the payload in its
    /// own representation (e.g. a Python object) and converts it only if the
    /// target needs the engine's: `check_payload` validates that
    /// representation against the engine's [`Limits`] in place of
    /// `msg.payload` (size counted as [`message::validate_payload`] does),
    /// and a refusal is accounted like any other. `msg.payload` may be left
    /// empty; a binding that then delivers through the engine installs the
    /// converted payload with [`Call::set_payload`] first.
    pub fn begin_with(
        &self,
        action: Action,
        msg: Message,
        opts: &CallOptions,
        check_payload: impl FnOnce(&Limits) -> Result<()>,
    ) -> Result<Call> {
        self.begin_checked(action, msg, opts, |_, limits| check_payload(limits))
    }

    fn begin_checked(
        &self,
        action: Action,
        mut msg: Message,
        opts: &CallOptions,
        check_payload: impl FnOnce(&Message, &Limits) -> Result<()>,
    ) -> Result<Call> {
        let inner = &self.inner;
        let mut acct = Accounting::start(inner.clone());
        if inner.state.load(Ordering::Acquire) != RUNNING {
            return Err(acct.reject(BridgeError::shutdown()));
        }
        // 1. validate
        if let Err(e) =
            message::validate_envelope(&msg, &inner.limits).and_then(|()| check_payload(&msg, &inner.limits))
        {
            return Err(acct.reject(e));
        }
        // 2. authenticate, 3. authorize
        let principal = if inner.security.enabled() {
            let Some(token) = opts.token.as_deref() else {
                return Err(acct.reject(inner.security.missing_token(action, &msg.destination)));
            };
            let principal = match inner.security.verify(token) {
                Ok(p) => p,
                Err(e) => return Err(acct.reject(e)),
            };
            acct.principal = Some(inner.metrics.principal(&principal.name));
            if let Some(s) = &acct.principal {
                s.accept();
            }
            if let Err(e) = inner.security.authorize(&principal, action, &msg.destination) {
                return Err(acct.reject(e));
            }
            msg.source = Some(principal.name.clone());
            Some(principal)
        } else {
            None
        };
        // 4. resolve
        let Some(route) = inner.routes.read().resolve(&msg.destination).cloned() else {
            return Err(acct.reject(BridgeError::new(
                ErrorCode::RouteNotFound,
                format!("no route matches {:?}: register a handler or add a `routes` entry for it", msg.destination),
            )));
        };
        route.stats.accept();
        acct.route = Some(route.stats.clone());
        let timeout = opts.timeout.or(route.timeout).unwrap_or(inner.config.bridge.request_timeout.get());
        // The clock was read when accounting started, microseconds ago. A
        // timeout too large to add (`Duration::MAX`) means no deadline to
        // speak of: a year.
        let deadline = acct.started.checked_add(timeout).unwrap_or_else(|| acct.started + FAR_DEADLINE);
        msg.deadline = Some(deadline);
        Ok(Call { acct, msg, route, principal, deadline, permit: None, admitted: false, rated: false })
    }

    // -----------------------------------------------------------------
    // Observability and recovery.

    /// A snapshot of every metric.
    pub fn metrics(&self) -> MetricsSnapshot {
        self.inner.metrics.snapshot()
    }

    /// Metrics in the Prometheus text format.
    pub fn metrics_text(&self) -> String {
        self.inner.metrics.prometheus_text()
    }

    /// The metrics collector.
    pub fn metrics_collector(&self) -> &Arc<MetricsCollector> {
        &self.inner.metrics
    }

    /// Receive alert events (a success ratio fell below `alert_threshold`).
    pub fn subscribe_alerts(&self) -> tokio::sync::broadcast::Receiver<Alert> {
        self.inner.metrics.subscribe_alerts()
    }

    /// Health of the bridge and of each service.
    pub async fn health(&self) -> HealthReport {
        let services = self.inner.connections.health();
        let status = if !self.is_running() {
            HealthStatus::Down
        } else if services.values().all(|s| s.status == HealthStatus::Up) {
            HealthStatus::Up
        } else {
            HealthStatus::Degraded
        };
        HealthReport { status, services }
    }

    /// The dead-letter store, oldest first.
    pub fn dead_letters(&self) -> Vec<DeadLetter> {
        self.inner.dead_letters.lock().iter().cloned().collect()
    }

    /// Move every dead letter of `other` into this bridge's store, in order
    /// of failure, and return how many moved. For a bridge that replaces
    /// `other` (a configuration reload): its dead letters stay listable and
    /// replayable instead of vanishing with it. Call it again once `other`
    /// has shut down, to pick up the letters its drain produced.
    pub fn take_dead_letters_from(&self, other: &BridgeManager) -> usize {
        if Arc::ptr_eq(&self.inner, &other.inner) {
            return 0;
        }
        // One store locked at a time: no lock order to get wrong.
        let moved: Vec<DeadLetter> = other.inner.dead_letters.lock().drain(..).collect();
        let n = moved.len();
        for letter in moved {
            self.inner.restore_dead_letter(letter);
        }
        n
    }

    /// Deliver a dead letter again and wait for the outcome. On success it
    /// leaves the store; on a failed delivery it goes back in with the new
    /// error. A replay that does not get as far as a delivery (refused by
    /// admission, or its future dropped because the caller gave up) puts the
    /// letter back as it was: a replay never loses one.
    pub async fn replay(&self, id: Uuid) -> Result<()> {
        let letter = {
            let mut store = self.inner.dead_letters.lock();
            let pos = store.iter().position(|d| d.id == id).ok_or_else(|| {
                BridgeError::invalid(format!(
                    "no dead letter with id {id} (or it is being replayed right now): list them with dead_letters()"
                ))
            })?;
            store.remove(pos).ok_or_else(|| BridgeError::internal("dead letter vanished"))?
        };
        // Out of the store from here on (so two replays cannot deliver it
        // twice), and held by a guard that puts it back if this ends early.
        let held = HeldLetter { inner: self.inner.clone(), letter: Some(letter) };
        let mut msg = held.message().clone();
        let acct = Accounting::start(self.inner.clone());
        if !self.is_running() {
            return Err(acct.reject_quiet(BridgeError::shutdown()));
        }
        let Some(route) = self.inner.routes.read().resolve(&msg.destination).cloned() else {
            let e =
                BridgeError::new(ErrorCode::RouteNotFound, format!("no route matches {:?} any more", msg.destination));
            held.failed(e.clone(), 0);
            return Err(acct.reject_quiet(e));
        };
        let deadline = Instant::now() + route.timeout.unwrap_or(self.inner.config.bridge.request_timeout.get());
        msg.deadline = Some(deadline);
        let mut call =
            Call { acct, msg, route, principal: None, deadline, permit: None, admitted: false, rated: false };
        call.acct.route = Some(call.route.stats.clone());
        call.route.stats.accept();
        call.admit().await?;
        match call.deliver_with_retries().await {
            Ok(()) => {
                held.delivered();
                Ok(())
            }
            Err((e, attempts)) => {
                held.failed(e.clone(), attempts);
                Err(e)
            }
        }
    }
}

/// A dead letter taken out of the store for a replay. Dropped without an
/// outcome (the replay was refused or cancelled), it goes back unchanged.
struct HeldLetter {
    inner: Arc<Inner>,
    letter: Option<DeadLetter>,
}

impl HeldLetter {
    fn message(&self) -> &Message {
        match &self.letter {
            Some(l) => &l.message,
            // Taken only by `delivered` and `failed`, which consume the guard.
            None => unreachable!("a held letter is present until the guard is consumed"),
        }
    }

    /// Delivered: the letter leaves the store for good.
    fn delivered(mut self) {
        self.letter = None;
    }

    /// Delivery failed again (after `attempts` more tries): back in the
    /// store with the new error, as a fresh dead letter.
    fn failed(mut self, error: BridgeError, attempts: u32) {
        if let Some(l) = self.letter.take() {
            let failed_at = if attempts > 0 { message::now_millis() } else { l.failed_at };
            self.inner.store_dead_letter(DeadLetter { error, attempts: l.attempts + attempts, failed_at, ..l });
        }
    }
}

impl Drop for HeldLetter {
    fn drop(&mut self) {
        if let Some(letter) = self.letter.take() {
            tracing::debug!(id = %letter.id, "replay ended before a delivery: the dead letter goes back");
            self.inner.restore_dead_letter(letter);
        }
    }
}

impl Inner {
    fn store_dead_letter(&self, letter: DeadLetter) {
        let mut store = self.dead_letters.lock();
        let evicted = store.len() >= self.config.bridge.dead_letter_capacity;
        if evicted && let Some(old) = store.pop_front() {
            tracing::error!(
                id = %old.id, destination = %old.message.destination,
                "dead-letter store full (bridge.dead_letter_capacity): dropping the oldest dead letter"
            );
        }
        tracing::warn!(id = %letter.id, destination = %letter.message.destination, error = %letter.error, "message dead-lettered");
        store.push_back(letter);
        self.metrics.dead_lettered(evicted);
    }

    /// Put back a letter a replay took out and did not deliver (or one moved
    /// from a replaced bridge), in its place by failure time; not counted as
    /// newly dead-lettered.
    fn restore_dead_letter(&self, letter: DeadLetter) {
        let mut store = self.dead_letters.lock();
        let at = store.iter().position(|d| d.failed_at > letter.failed_at).unwrap_or(store.len());
        store.insert(at, letter);
        // New failures may have filled the store meanwhile: the oldest goes,
        // as when any letter arrives at a full store.
        if store.len() > self.config.bridge.dead_letter_capacity
            && let Some(old) = store.pop_front()
        {
            tracing::error!(
                id = %old.id, destination = %old.message.destination,
                "dead-letter store full (bridge.dead_letter_capacity): dropping the oldest dead letter"
            );
            self.metrics.dead_letter_evicted();
        }
    }
}

/// Counts one call in the metrics and in the in-flight gauge that
/// shutdown drains; records `Cancelled` if dropped unfinished.
struct Accounting {
    inner: Arc<Inner>,
    started: Instant,
    route: Option<Arc<MessageStats>>,
    principal: Option<Arc<MessageStats>>,
    done: bool,
}

impl Accounting {
    fn start(inner: Arc<Inner>) -> Self {
        inner.in_flight.fetch_add(1, Ordering::AcqRel);
        inner.metrics.totals().accept();
        Accounting { inner, started: Instant::now(), route: None, principal: None, done: false }
    }

    fn finish(&mut self, outcome: Outcome) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        let latency = self.started.elapsed();
        self.inner.metrics.totals().finish(outcome, latency);
        for s in [&self.route, &self.principal].into_iter().flatten() {
            s.finish(outcome, latency);
        }
    }

    fn reject(&mut self, e: BridgeError) -> BridgeError {
        self.finish(Outcome::Rejected(e.code()));
        e
    }

    fn reject_quiet(mut self, e: BridgeError) -> BridgeError {
        self.finish(Outcome::Rejected(e.code()));
        e
    }

    fn complete<T>(&mut self, result: &Result<T>) {
        self.finish(match result {
            Ok(_) => Outcome::Ok,
            Err(e) if is_rejection(e.code()) => Outcome::Rejected(e.code()),
            Err(e) => Outcome::Failed(e.code()),
        });
    }
}

/// Codes that mean "refused before delivery" rather than "delivery failed".
fn is_rejection(code: ErrorCode) -> bool {
    matches!(
        code,
        ErrorCode::InvalidMessage
            | ErrorCode::Unauthenticated
            | ErrorCode::Forbidden
            | ErrorCode::RouteNotFound
            | ErrorCode::RateLimited
            | ErrorCode::QueueFull
            | ErrorCode::Shutdown
    )
}

impl Drop for Accounting {
    fn drop(&mut self) {
        self.finish(Outcome::Cancelled);
        // Only a draining bridge waits for the count to reach zero; while
        // running, skip the wake-up (it locks a mutex, and at concurrency 1
        // every call ends at zero).
        if self.inner.in_flight.fetch_sub(1, Ordering::SeqCst) == 1
            && self.inner.state.load(Ordering::SeqCst) != RUNNING
        {
            self.inner.drained.notify_waiters();
        }
    }
}

/// A message that passed validation, authentication, authorization and
/// resolution, on its way through admission and delivery.
///
/// Dropping a `Call` before it finishes counts it as cancelled and frees
/// its queue slot.
pub struct Call {
    acct: Accounting,
    msg: Message,
    route: Arc<Route>,
    principal: Option<Arc<Principal>>,
    deadline: Instant,
    permit: Option<crate::routing::queue::Permit>,
    admitted: bool,
    /// Rate-limit cells already booked.
    rated: bool,
}

impl std::fmt::Debug for Call {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Call").field("id", &self.msg.id).field("route", &self.route.pattern).finish()
    }
}

impl Call {
    /// The message (with `source` and `deadline` set).
    pub fn message(&self) -> &Message {
        &self.msg
    }

    /// Install the payload of a call begun with [`BridgeManager::begin_with`]
    /// (the binding's object converted), before [`admit`](Self::admit) and
    /// [`deliver`](Self::deliver). It is validated again (cheap next to the
    /// conversion); a refusal ends the call as `INVALID_MESSAGE`.
    pub fn set_payload(&mut self, payload: Payload) -> Result<()> {
        if let Err(e) = message::validate_payload(&payload, &self.acct.inner.limits) {
            return Err(self.acct.reject(e));
        }
        self.msg.payload = payload;
        Ok(())
    }

    /// The authenticated principal, if security is on.
    pub fn principal(&self) -> Option<&Arc<Principal>> {
        self.principal.as_ref()
    }

    /// The pattern of the route it resolved to.
    pub fn route_pattern(&self) -> &str {
        &self.route.pattern
    }

    /// The in-process handler it resolved to, if any.
    pub fn handler(&self) -> Option<&Arc<dyn Handler>> {
        match &self.route.target {
            Target::Handler(h) => Some(h),
            Target::Service(_) => None,
        }
    }

    /// When the caller stops waiting.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// Completes when shutdown gives up on in-flight work. A binding that
    /// runs the handler itself races it (with the deadline) and then
    /// [`finish`](Self::finish)es with `SHUTDOWN`, as [`deliver`](Self::deliver) does.
    pub fn cancelled(&self) -> impl Future<Output = ()> + Send + 'static {
        self.acct.inner.cancel.clone().cancelled_owned()
    }

    /// Stage 5 without waiting: `Ok(None)` admitted now; `Ok(Some(wait))`
    /// admission needs waiting (then call [`admit`](Self::admit)); `Err` the
    /// limits refuse it.
    pub fn try_admit(&mut self) -> Result<Option<Duration>> {
        if self.admitted {
            return Ok(None);
        }
        if !self.rated {
            match self.take_rate_cells(Duration::ZERO) {
                Ok((_, cells)) => {
                    cells.keep();
                    self.rated = true;
                }
                // Wait mode: a cell comes within the deadline; admit() books it.
                Err(e)
                    if self.rate_mode() == RateLimitMode::Wait
                        && e.retry_after().is_some_and(|r| r < self.remaining()) =>
                {
                    return Ok(e.retry_after());
                }
                Err(e) => return Err(self.acct.reject(e)),
            }
        }
        match self.route.queue.try_admit() {
            Admission::Admitted(p) => {
                self.permit = Some(p);
                self.admitted = true;
                Ok(None)
            }
            Admission::MustWait => Ok(Some(Duration::ZERO)),
        }
    }

    fn rate_mode(&self) -> RateLimitMode {
        self.acct.inner.config.bridge.rate_limit_mode
    }

    fn remaining(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }

    /// Stage 5: rate limits (waiting within the deadline in `wait` mode),
    /// then a slot in the route's queue.
    pub async fn admit(&mut self) -> Result<()> {
        if self.admitted {
            return Ok(());
        }
        let max_wait = match self.rate_mode() {
            RateLimitMode::Wait => self.remaining(),
            RateLimitMode::Reject => Duration::ZERO,
        };
        if !self.rated {
            let (wait, cells) = match self.take_rate_cells(max_wait) {
                Ok(booked) => booked,
                Err(e) => return Err(self.acct.reject(e)),
            };
            if !wait.is_zero() {
                // Shutdown ends the wait: nothing may start after it. A call
                // stopped here, or dropped by its caller, gives its cells
                // back (`cells` refunds them when dropped).
                let stopped = tokio::select! {
                    _ = tokio::time::sleep(wait) => false,
                    _ = self.acct.inner.cancel.cancelled() => true,
                };
                if stopped {
                    drop(cells);
                    let e = BridgeError::shutdown();
                    self.acct.complete::<()>(&Err(e.clone()));
                    return Err(e);
                }
            }
            cells.keep();
            self.rated = true;
        }
        let permit = match self.route.queue.try_admit() {
            Admission::Admitted(p) => p,
            Admission::MustWait => {
                let queue = self.route.queue.clone();
                self.route.stats.set_queue_depth(queue.depth() + 1);
                // Refreshes the gauge however the wait ends, a caller that
                // drops this future included (then after its place in the
                // queue is gone: the wait future is dropped first).
                let _gauge = QueueGauge(&queue, &self.route.stats);
                let waited = tokio::select! {
                    r = queue.wait(self.msg.priority, self.deadline) => r,
                    _ = self.acct.inner.cancel.cancelled() => Err(BridgeError::shutdown()),
                };
                match waited {
                    Ok(p) => p,
                    Err(e) => {
                        self.acct.complete::<()>(&Err(e.clone()));
                        return Err(e);
                    }
                }
            }
        };
        self.permit = Some(permit);
        self.admitted = true;
        Ok(())
    }

    /// Book a cell from every limiter that applies, at most `max_wait`
    /// ahead: the longest wait among them and the booked cells, which go
    /// back unless [`RateCells::keep`] is called. On refusal what was booked
    /// goes back at once.
    fn take_rate_cells(&self, max_wait: Duration) -> Result<(Duration, RateCells)> {
        let inner = &self.acct.inner;
        let principal_limiter = match (&inner.principal_limiter, &self.principal) {
            (Some(k), Some(p)) => Some(k.get(&p.name)),
            _ => None,
        };
        let limiters = [principal_limiter, self.route.limiter.clone(), self.route.service_limiter.clone()];
        let mut cells = RateCells::default();
        let mut wait = Duration::ZERO;
        for (i, limiter) in limiters.into_iter().enumerate() {
            let Some(l) = limiter else { continue };
            match l.reserve(max_wait) {
                Ok(w) => {
                    wait = wait.max(w);
                    cells.booked[i] = Some(l);
                }
                Err(retry_after) => {
                    let which = [
                        "the principal's rate limit (security.rate_limit)",
                        "the route's rate limit",
                        "the service's rate limit",
                    ][i];
                    return Err(BridgeError::rate_limited(
                        format!("{which} was hit; retry after {:.3}s", retry_after.as_secs_f64()),
                        retry_after,
                    ));
                }
            }
        }
        Ok((wait, cells))
    }

    /// Stage 6–8 without waiting, for an admitted call whose handler can
    /// answer at once ([`Handler::call_now`]): the reply, accounted for;
    /// otherwise the call back, for [`deliver`](Self::deliver).
    pub fn deliver_now(self) -> AnswerNow<Call> {
        let h = match &self.route.target {
            // (A zero timeout has no time even for an answer at once.)
            Target::Handler(h) if self.admitted && self.deadline > self.acct.started => h.clone(),
            _ => return AnswerNow::Later(self),
        };
        if self.acct.inner.gave_up.load(Ordering::Acquire) {
            return AnswerNow::Later(self);
        }
        let Call { mut acct, msg, route, deadline, principal, permit, admitted, rated } = self;
        let result = match call_now_guarded(&h, msg) {
            AnswerNow::Answered(result) => result,
            AnswerNow::Later(msg) => {
                return AnswerNow::Later(Call { acct, msg, route, principal, deadline, permit, admitted, rated });
            }
        };
        drop(permit);
        acct.complete(&result);
        AnswerNow::Answered(result)
    }

    /// Stage 6–8: deliver within the deadline and account for the outcome.
    pub async fn deliver(self) -> Result<Payload> {
        // The message moves into the handler: no payload copy on this path.
        let Call { mut acct, msg, route, deadline, permit, .. } = self;
        let result = deliver_to(&acct.inner, &route, deadline, msg).await;
        drop(permit);
        acct.complete(&result);
        result
    }

    /// For bindings that ran the handler themselves (e.g. a Python handler
    /// on the caller's event loop): record the outcome.
    pub fn finish(mut self, result: &Result<Payload>) {
        self.acct.complete(result);
    }

    /// Publish delivery: retries with backoff, then the dead-letter store.
    async fn deliver_in_background(mut self) {
        use futures_util::FutureExt;
        // A panic in a delivery (a handler's, or a bug) must not lose an
        // accepted publish: it becomes an INTERNAL dead letter.
        let outcome = match std::panic::AssertUnwindSafe(self.deliver_with_retries()).catch_unwind().await {
            Ok(outcome) => outcome,
            Err(_) => {
                let e = BridgeError::internal("the delivery panicked; the message is kept as a dead letter");
                self.acct.complete::<()>(&Err(e.clone()));
                Err((e, 1))
            }
        };
        if let Err((error, attempts)) = outcome {
            let inner = self.acct.inner.clone();
            inner.store_dead_letter(DeadLetter {
                id: self.msg.id,
                message: self.msg.clone(),
                error,
                attempts,
                failed_at: message::now_millis(),
            });
        }
    }

    async fn deliver_with_retries(&mut self) -> std::result::Result<(), (BridgeError, u32)> {
        let cfg = &self.acct.inner.config.bridge;
        // Services retry inside the connection manager; handlers here.
        let retries = match self.route.target {
            Target::Handler(_) => cfg.retry_attempts,
            Target::Service(_) => 0,
        };
        let base = cfg.retry_delay.get();
        let per_attempt = self.deadline.saturating_duration_since(Instant::now());
        let mut attempt = 0;
        loop {
            attempt += 1;
            self.deadline = Instant::now() + per_attempt;
            let result = deliver_to(&self.acct.inner, &self.route, self.deadline, self.msg.clone()).await;
            match result {
                Ok(_) => {
                    self.acct.complete(&Ok(()));
                    return Ok(());
                }
                Err(e) if attempt > retries || e.code() == ErrorCode::Shutdown => {
                    self.acct.complete::<()>(&Err(e.clone()));
                    return Err((e, attempt));
                }
                Err(e) => {
                    let backoff = full_jitter(base, attempt - 1);
                    tracing::debug!(id = %self.msg.id, error = %e, ?backoff, "publish delivery failed; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = self.acct.inner.cancel.cancelled() => {
                            self.acct.complete::<()>(&Err(BridgeError::shutdown()));
                            return Err((BridgeError::shutdown(), attempt));
                        }
                    }
                }
            }
        }
    }
}

/// Deliver one message to the route's target, racing the deadline and
/// shutdown. A panicking handler becomes `HANDLER_ERROR`.
async fn deliver_to(inner: &Inner, route: &Route, deadline: Instant, msg: Message) -> Result<Payload> {
    let span =
        || tracing::debug_span!("bridge.deliver", id = %msg.id, destination = %msg.destination, route = %route.pattern);
    let h = match &route.target {
        Target::Handler(h) => h,
        Target::Service(s) => {
            // The connection manager keeps the deadline itself (pool wait,
            // every attempt, backoff) and ends with SHUTDOWN when shutdown
            // cancels in-flight work: a second timer or watch here would only cost.
            // The span only when a subscriber wants it: even a disabled span
            // records its fields for `log` (about 100 instructions a request).
            let delivery = inner.connections.deliver(s, &msg);
            return if tracing::enabled!(tracing::Level::DEBUG) {
                delivery.instrument(span()).await
            } else {
                delivery.await
            };
        }
    };
    // Admitted before a shutdown that has begun since: the handler does not run.
    if inner.gave_up.load(Ordering::Acquire) {
        return Err(BridgeError::shutdown());
    }
    let span = span();
    // A handler that never waits answers here: no future, no timer.
    let msg = match call_now_guarded(h, msg) {
        AnswerNow::Answered(result) => return result,
        AnswerNow::Later(msg) => msg,
    };
    let work = async {
        match AssertUnwindSafe(h.call(msg)).catch_unwind().await {
            Ok(r) => r,
            Err(_) => Err(BridgeError::handler("the handler panicked")),
        }
    };
    tokio::select! {
        biased;
        r = work.instrument(span) => r,
        _ = tokio::time::sleep_until(deadline.into()) => Err(BridgeError::timeout(format!(
            "no reply from {:?} within the deadline; raise the timeout or check the handler",
            route.pattern
        ))),
        _ = inner.cancel.cancelled() => Err(BridgeError::shutdown()),
    }
}

/// [`Handler::call_now`] with a panic turned into `HANDLER_ERROR`.
fn call_now_guarded(h: &Arc<dyn Handler>, msg: Message) -> AnswerNow<Message> {
    std::panic::catch_unwind(AssertUnwindSafe(|| h.call_now(msg)))
        .unwrap_or_else(|_| AnswerNow::Answered(Err(BridgeError::handler("the handler panicked"))))
}

/// Exponential backoff with full jitter: uniform in `[0, base * 2^n]`,
/// capped at 60 s.
pub fn full_jitter(base: Duration, n: u32) -> Duration {
    let cap = base.saturating_mul(1u32 << n.min(16)).min(Duration::from_secs(60));
    cap.mul_f64(rand::random::<f64>())
}
/// Sets a route's queue-depth gauge from its queue when dropped.
struct QueueGauge<'a>(&'a AdmissionQueue, &'a MessageStats);

impl Drop for QueueGauge<'_> {
    fn drop(&mut self) {
        self.1.set_queue_depth(self.0.depth());
    }
}

/// Rate-limit cells a call has booked (principal, route, service): given
/// back when dropped, unless [`keep`](Self::keep) says the call used them.
/// A caller that gives up while waiting for its cells (drops the future, or
/// is stopped by shutdown) so costs the callers behind it nothing.
#[derive(Default)]
struct RateCells {
    booked: [Option<Arc<Gcra>>; 3],
}

impl RateCells {
    fn keep(mut self) {
        self.booked = Default::default();
    }
}

impl Drop for RateCells {
    fn drop(&mut self) {
        for limiter in self.booked.iter().flatten() {
            limiter.refund();
        }
    }
}

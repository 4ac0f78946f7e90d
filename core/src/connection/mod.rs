//! ConnectionManager: delivery to external HTTP services.
//!
//! The bridge resolves a destination to a [`ServiceRoute`] and hands the
//! message here; this module owns everything between that and the reply:
//! one pooled client per service with at most `max_connections` requests
//! in flight ([`service`], [`slots`]), the outgoing credentials ([`credentials`]),
//! retries with backoff, jitter and a budget ([`retry`]), a circuit breaker
//! ([`breaker`]) and health from active checks and observed failures
//! ([`health`]).
//!
//! [`ConnectionManager::deliver`] is cancel-safe: the bridge may drop it,
//! and every gauge and slot it holds is released by a guard. It keeps the
//! message's deadline itself, and ends with `SHUTDOWN` when
//! [`ConnectionManager::cancel_in_flight`] fires ([`shutdown`]).

pub mod breaker;
mod credentials;
pub mod health;
pub mod retry;
mod service;
mod shutdown;
mod slots;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

pub use health::ServiceHealth;
pub use service::{DEFAULT_MAX_RESPONSE_BYTES, PathTemplate, ServiceRoute};

use crate::config::{BridgeConfig, RouteConfig};
use crate::error::{BridgeError, ErrorCode, Result};
use crate::message::{Message, Payload};
use crate::metrics::MetricsCollector;
use service::ServiceClient;
use shutdown::ShutdownSignal;

/// Owns one pooled client per service.
#[derive(Debug)]
pub struct ConnectionManager {
    services: BTreeMap<String, Arc<ServiceClient>>,
    route_index: BTreeMap<String, usize>,
    health_interval: Duration,
    cancel: CancellationToken,
    /// Ends in-flight deliveries at shutdown (cheaper to watch than `cancel`).
    in_flight: ShutdownSignal,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl ConnectionManager {
    /// Build clients for every configured service (nothing connects yet).
    pub fn new(cfg: &BridgeConfig, metrics: Arc<MetricsCollector>) -> Result<Self> {
        let mut services = BTreeMap::new();
        for (name, svc) in &cfg.services {
            let client = ServiceClient::new(name, svc, cfg, metrics.service(name))?;
            services.insert(name.clone(), Arc::new(client));
        }
        let route_index = cfg.routes.iter().enumerate().map(|(i, r)| (r.pattern.clone(), i)).collect();
        Ok(ConnectionManager {
            services,
            route_index,
            health_interval: cfg.monitoring.health_check_interval.get(),
            cancel: CancellationToken::new(),
            in_flight: ShutdownSignal::default(),
            tasks: Mutex::new(Vec::new()),
        })
    }

    /// Establish services: start the active health checks of every service
    /// that has a `health_check` (the first runs at once). A service that is
    /// down at start is not an error: it is reported down, and calls reach
    /// it as soon as it comes up.
    pub async fn initialize(&self) -> Result<()> {
        let mut tasks = self.tasks.lock();
        if !tasks.is_empty() {
            return Ok(());
        }
        for svc in self.services.values() {
            tracing::info!(service = %svc.name, "service established");
            if svc.health_check.is_none() {
                continue;
            }
            let svc = svc.clone();
            let cancel = self.cancel.clone();
            let every = self.health_interval;
            tasks.push(tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tick.tick() => {}
                    }
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = svc.check() => {}
                    }
                }
            }));
        }
        Ok(())
    }

    /// Terminate: stop health monitoring, end deliveries still in flight and
    /// refuse new ones with `SHUTDOWN`. Idle pooled connections close when
    /// the manager is dropped (or after the pool's idle timeout).
    pub async fn shutdown(&self) {
        self.cancel.cancel();
        self.in_flight.fire();
        let tasks: Vec<_> = self.tasks.lock().drain(..).collect();
        for t in tasks {
            t.abort();
            let _ = t.await;
        }
        for svc in self.services.values() {
            svc.terminate();
            tracing::info!(service = %svc.name, "service terminated");
        }
    }

    /// Compile a `routes` entry that names a service.
    pub fn service_route(&self, route: &RouteConfig) -> Result<Arc<ServiceRoute>> {
        let index = self.route_index.get(&route.pattern).copied();
        let Some(name) = &route.service else {
            return Err(BridgeError::config(
                &index.map(|i| format!("routes[{i}]")).unwrap_or_default(),
                "a service route needs `service`",
            ));
        };
        let Some(client) = self.services.get(name) else {
            return Err(BridgeError::config(
                &index.map(|i| format!("routes[{i}].service")).unwrap_or_default(),
                format!("no service named {name:?} under `services`"),
            ));
        };
        Ok(Arc::new(ServiceRoute::compile(route, index, client.clone())?))
    }

    /// Fail every delivery still in flight with `SHUTDOWN`, and refuse new
    /// ones (the bridge calls this when its shutdown grace is over).
    pub fn cancel_in_flight(&self) {
        self.in_flight.fire();
    }

    /// Deliver a message within its deadline, with retries; the reply
    /// payload, or `SHUTDOWN` once [`cancel_in_flight`](Self::cancel_in_flight) fired.
    pub async fn deliver(&self, route: &ServiceRoute, msg: &Message) -> Result<Payload> {
        if self.in_flight.is_fired() {
            return Err(BridgeError::shutdown());
        }
        if !self.services.get(&route.service).is_some_and(|s| Arc::ptr_eq(s, &route.client)) {
            return Err(BridgeError::new(
                ErrorCode::Internal,
                format!("route {:?} was compiled by another bridge", route.pattern),
            ));
        }
        // Boxed once here: the delivery's state (attempts, the HTTP
        // exchange) is large, and every future that awaits it would
        // otherwise copy all of it into its own state as it starts.
        match self.in_flight.guard(Box::pin(route.client.deliver(route, msg))).await {
            Some(result) => result,
            None => Err(BridgeError::shutdown()),
        }
    }

    /// Per-service health.
    pub fn health(&self) -> BTreeMap<String, ServiceHealth> {
        self.services.iter().map(|(name, s)| (name.clone(), s.health())).collect()
    }
}

#[cfg(test)]
mod tests {
    use crate::BridgeManager;

    /// Bindings build bridges outside any runtime; clients must not need one.
    #[test]
    fn builds_outside_a_runtime() {
        let b = BridgeManager::from_yaml(
            "services:\n  s:\n    url: https://example.com/api\n    follow_redirects: true\n    health_check: /health\n\
             routes:\n  - {pattern: s.>, service: s}\n",
        )
        .unwrap();
        assert_eq!(b.routes(), vec!["s.>".to_string()]);
    }
}

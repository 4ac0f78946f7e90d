//! ConnectionManager: delivery to external HTTP services.
//!
//! STUB: interface only; the full implementation (pooled reqwest clients,
//! outgoing credentials, retries, circuit breaker, health monitor) replaces
//! this file.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;

use crate::config::{BridgeConfig, RouteConfig};
use crate::error::{BridgeError, ErrorCode, Result};
use crate::message::{Message, Payload};
use crate::metrics::{HealthStatus, MetricsCollector};

/// A route served by an HTTP service, compiled from a `routes` entry.
#[derive(Debug)]
pub struct ServiceRoute {
    /// The route pattern.
    pub pattern: String,
    /// The service name.
    pub service: String,
}

/// Health of one service as reported by `BridgeManager::health()`.
#[derive(Debug, Clone, Serialize)]
pub struct ServiceHealth {
    /// up, degraded or down.
    pub status: HealthStatus,
}

/// Owns one pooled client per service.
#[derive(Debug)]
pub struct ConnectionManager {}

impl ConnectionManager {
    /// Build clients for every configured service (nothing connects yet).
    pub fn new(_cfg: &BridgeConfig, _metrics: Arc<MetricsCollector>) -> Result<Self> {
        Ok(ConnectionManager {})
    }
    /// Establish services and start health monitoring.
    pub async fn initialize(&self) -> Result<()> {
        Ok(())
    }
    /// Stop health monitoring and close pools.
    pub async fn shutdown(&self) {}
    /// Compile a `routes` entry that names a service.
    pub fn service_route(&self, route: &RouteConfig) -> Result<Arc<ServiceRoute>> {
        Ok(Arc::new(ServiceRoute {
            pattern: route.pattern.clone(),
            service: route.service.clone().unwrap_or_default(),
        }))
    }
    /// Deliver a message within its deadline, with retries; the reply payload.
    pub async fn deliver(&self, _route: &ServiceRoute, _msg: &Message) -> Result<Payload> {
        Err(BridgeError::new(ErrorCode::ServiceUnavailable, "not implemented"))
    }
    /// Per-service health.
    pub fn health(&self) -> BTreeMap<String, ServiceHealth> {
        BTreeMap::new()
    }
}

//! The registry of connected external services, and the [`Handler`] that
//! delivers to them.
//!
//! A service that subscribes to a pattern over the WebSocket becomes one
//! subscriber of a [`ConnectedServiceHandler`] registered on the bridge
//! under that pattern, so the core applies its whole flow (auth, limits,
//! queues, metrics, deadlines) before a message reaches the socket. Several
//! subscribers of one pattern share the load round robin; when one goes
//! away, its in-flight messages move to another subscriber or fail with
//! `SERVICE_UNAVAILABLE`, and the route goes away with the last subscriber.
//!
//! The hub also owns the current [`BridgeManager`], because a config reload
//! must swap the bridge and re-register these routes in one step.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use dreamos_bridge::bridge::BoxFuture;
use dreamos_bridge::{BridgeError, BridgeManager, ErrorCode, Handler, Message, Payload};
use parking_lot::{Mutex, RwLock};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

/// What a session's writer task sends to the socket.
#[derive(Debug)]
pub(crate) enum Outbound {
    /// A JSON text frame.
    Text(String),
    /// A heartbeat ping.
    Ping,
    /// A close frame with a reason; the writer stops after it.
    Close(u16, String),
}

/// Message id to the caller's channel and the message's destination (a
/// signed reply is checked against it).
type Pending = HashMap<Uuid, (oneshot::Sender<dreamos_bridge::Result<Payload>>, String)>;

/// One connected service (one WebSocket).
pub(crate) struct Session {
    pub(crate) id: u64,
    pub(crate) principal: Option<String>,
    tx: mpsc::UnboundedSender<Outbound>,
    /// Messages sent and not yet answered; `None` once the session closed,
    /// so that nothing new is handed to it.
    pending: Mutex<Option<Pending>>,
    patterns: Mutex<Vec<String>>,
}

static SESSION_IDS: AtomicU64 = AtomicU64::new(1);

impl Session {
    pub(crate) fn new(principal: Option<String>, tx: mpsc::UnboundedSender<Outbound>) -> Arc<Self> {
        Arc::new(Session {
            id: SESSION_IDS.fetch_add(1, Ordering::Relaxed),
            principal,
            tx,
            pending: Mutex::new(Some(HashMap::new())),
            patterns: Mutex::new(Vec::new()),
        })
    }

    pub(crate) fn send(&self, out: Outbound) -> bool {
        self.tx.send(out).is_ok()
    }

    /// Hand a message to this service; `None` if the session is closed.
    fn dispatch(&self, msg: &Message) -> Option<oneshot::Receiver<dreamos_bridge::Result<Payload>>> {
        let (tx, rx) = oneshot::channel();
        let mut pending = self.pending.lock();
        let map = pending.as_mut()?;
        let headers: serde_json::Map<String, serde_json::Value> =
            msg.headers.iter().map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone()))).collect();
        let frame = serde_json::json!({
            "type": "message",
            "id": msg.id.to_string(),
            "destination": msg.destination,
            "payload": msg.payload.to_json(),
            "headers": headers,
            "source": msg.source.as_deref(),
            "timeout_ms": msg.remaining().map(|d| d.as_millis() as u64),
        });
        if !self.send(Outbound::Text(frame.to_string())) {
            return None;
        }
        map.insert(msg.id, (tx, msg.destination.clone()));
        Some(rx)
    }

    /// The service answered message `id`; `false` if nobody waits for it
    /// (unknown id, or the caller already gave up).
    pub(crate) fn answer(&self, id: Uuid, result: dreamos_bridge::Result<Payload>) -> bool {
        let tx = self.pending.lock().as_mut().and_then(|m| m.remove(&id));
        match tx {
            Some((tx, _)) => tx.send(result).is_ok(),
            None => false,
        }
    }

    /// The destination of in-flight message `id`, if it awaits an answer.
    pub(crate) fn destination_of(&self, id: Uuid) -> Option<String> {
        self.pending.lock().as_ref().and_then(|m| m.get(&id)).map(|(_, d)| d.clone())
    }

    fn forget(&self, id: Uuid) {
        if let Some(m) = self.pending.lock().as_mut() {
            m.remove(&id);
        }
    }

    /// Close: refuse new messages and release the waiting ones (their
    /// callers move on to another subscriber).
    fn close(&self) -> usize {
        self.pending.lock().take().map(|m| m.len()).unwrap_or(0)
    }
}

struct Group {
    pattern: String,
    subscribers: Mutex<Vec<Arc<Session>>>,
    next: AtomicUsize,
}

impl Group {
    /// The next subscriber round robin, skipping those already tried.
    fn pick(&self, tried: &[u64]) -> Option<Arc<Session>> {
        let subs = self.subscribers.lock();
        let n = subs.len();
        if n == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..n).map(|i| &subs[(start + i) % n]).find(|s| !tried.contains(&s.id)).cloned()
    }
}

/// The [`Handler`] registered on the bridge for one pattern served by
/// connected services.
#[derive(Clone)]
pub struct ConnectedServiceHandler {
    group: Arc<Group>,
}

impl ConnectedServiceHandler {
    /// The pattern it serves.
    pub fn pattern(&self) -> &str {
        &self.group.pattern
    }

    /// How many services are connected to it.
    pub fn subscribers(&self) -> usize {
        self.group.subscribers.lock().len()
    }
}

/// Removes a pending entry when the caller stops waiting (deadline, client
/// gone), so a late reply finds nobody and is dropped.
struct PendingGuard {
    session: Arc<Session>,
    id: Uuid,
}

impl Drop for PendingGuard {
    fn drop(&mut self) {
        self.session.forget(self.id);
    }
}

impl Handler for ConnectedServiceHandler {
    fn call(&self, msg: Message) -> BoxFuture<dreamos_bridge::Result<Payload>> {
        let group = self.group.clone();
        Box::pin(async move {
            let mut tried = Vec::new();
            let mut declined = 0usize;
            loop {
                let Some(session) = group.pick(&tried) else {
                    if declined > 0 && declined == tried.len() {
                        return Err(BridgeError::new(
                            ErrorCode::RouteNotFound,
                            format!(
                                "no connected service serves {:?} any more ({declined} unsubscribed while the \
                                 message was on its way)",
                                msg.destination
                            ),
                        ));
                    }
                    return Err(BridgeError::new(
                        ErrorCode::ServiceUnavailable,
                        format!(
                            "no connected service could take the message for {:?} ({} tried and disconnected); \
                             retry when a service has subscribed to {:?} again",
                            msg.destination,
                            tried.len(),
                            group.pattern
                        ),
                    ));
                };
                tried.push(session.id);
                let Some(rx) = session.dispatch(&msg) else { continue };
                let _guard = PendingGuard { session: session.clone(), id: msg.id };
                match rx.await {
                    // The service unsubscribed after it was picked and did
                    // not run the message: another subscriber may take it.
                    Ok(Err(e)) if e.code() == ErrorCode::RouteNotFound => {
                        tracing::debug!(id = %msg.id, session = session.id, pattern = %group.pattern,
                            "connected service declined the message (unsubscribed); trying another subscriber");
                        declined += 1;
                        continue;
                    }
                    Ok(result) => return result,
                    // The session closed with the message in flight: another subscriber gets it.
                    Err(_) => {
                        tracing::info!(id = %msg.id, session = session.id, pattern = %group.pattern,
                            "connected service went away with a message in flight; retrying on another subscriber");
                        continue;
                    }
                }
            }
        })
    }

    fn as_any(&self) -> Option<&dyn std::any::Any> {
        Some(self)
    }
}

/// Connected services by pattern, and the bridge they are registered on.
pub struct ServiceHub {
    bridge: RwLock<BridgeManager>,
    groups: Mutex<HashMap<String, ConnectedServiceHandler>>,
}

impl ServiceHub {
    /// A hub over `bridge`.
    pub fn new(bridge: BridgeManager) -> Self {
        ServiceHub { bridge: RwLock::new(bridge), groups: Mutex::new(HashMap::new()) }
    }

    /// The bridge in force.
    pub fn bridge(&self) -> BridgeManager {
        self.bridge.read().clone()
    }

    /// The handler serving `pattern`, if a service is connected to it.
    pub fn handler(&self, pattern: &str) -> Option<ConnectedServiceHandler> {
        self.groups.lock().get(pattern).cloned()
    }

    /// Add `session` as a subscriber of `pattern`, registering the route on
    /// the first subscriber.
    pub(crate) fn subscribe(&self, session: &Arc<Session>, pattern: &str) -> dreamos_bridge::Result<()> {
        let mut groups = self.groups.lock();
        if let Some(h) = groups.get(pattern) {
            let mut subs = h.group.subscribers.lock();
            if !subs.iter().any(|s| s.id == session.id) {
                subs.push(session.clone());
                session.patterns.lock().push(pattern.to_string());
            }
            return Ok(());
        }
        let bridge = self.bridge();
        if bridge.routes().iter().any(|p| p == pattern) {
            return Err(BridgeError::forbidden(format!(
                "{pattern:?} is already served by a configured route or an in-process handler; subscribe to a pattern of your own"
            )));
        }
        let handler = ConnectedServiceHandler {
            group: Arc::new(Group {
                pattern: pattern.to_string(),
                subscribers: Mutex::new(vec![session.clone()]),
                next: AtomicUsize::new(0),
            }),
        };
        bridge.register_route(pattern, Arc::new(handler.clone()))?;
        groups.insert(pattern.to_string(), handler);
        session.patterns.lock().push(pattern.to_string());
        Ok(())
    }

    /// Remove `session` from `pattern`; `false` if it was not subscribed.
    pub(crate) fn unsubscribe(&self, session: &Arc<Session>, pattern: &str) -> bool {
        let mut groups = self.groups.lock();
        let removed = Self::remove_from(&mut groups, &self.bridge(), session.id, pattern);
        session.patterns.lock().retain(|p| p != pattern);
        removed
    }

    fn remove_from(
        groups: &mut HashMap<String, ConnectedServiceHandler>,
        bridge: &BridgeManager,
        session: u64,
        pattern: &str,
    ) -> bool {
        let Some(h) = groups.get(pattern) else { return false };
        let (removed, empty) = {
            let mut subs = h.group.subscribers.lock();
            let before = subs.len();
            subs.retain(|s| s.id != session);
            (subs.len() != before, subs.is_empty())
        };
        if empty {
            groups.remove(pattern);
            bridge.unregister_route(pattern);
            tracing::info!(pattern, "last connected service left; route removed");
        }
        removed
    }

    /// The session ended: drop its subscriptions, then release its
    /// in-flight messages to other subscribers.
    pub(crate) fn leave(&self, session: &Arc<Session>) {
        {
            let mut groups = self.groups.lock();
            let bridge = self.bridge();
            for p in session.patterns.lock().drain(..) {
                Self::remove_from(&mut groups, &bridge, session.id, &p);
            }
        }
        let in_flight = session.close();
        if in_flight > 0 {
            tracing::warn!(session = session.id, in_flight, "connected service left with messages in flight");
        }
    }

    /// Swap in a new bridge (config reload) with the connected services'
    /// routes registered on it; returns the old bridge for the caller to
    /// shut down.
    pub fn replace_bridge(&self, new: BridgeManager) -> BridgeManager {
        let groups = self.groups.lock();
        for (pattern, h) in groups.iter() {
            if new.routes().iter().any(|p| p == pattern) {
                tracing::warn!(
                    pattern,
                    "the reloaded config routes a pattern a connected service serves; the connected service keeps it"
                );
            }
            if let Err(e) = new.register_route(pattern, Arc::new(h.clone())) {
                tracing::error!(pattern, error = %e, "could not carry a connected service's route over to the reloaded bridge");
            }
        }
        std::mem::replace(&mut *self.bridge.write(), new)
    }
}

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
//! In-flight messages are keyed by message id per session: the service
//! answers by id, so one session never holds two messages with the same id
//! (a client may choose ids, and a retry may reuse one while the first is
//! still in flight); the duplicate goes to another subscriber or is refused.
//!
//! The hub also owns the current [`BridgeManager`], because a config reload
//! must swap the bridge and re-register these routes in one step (except
//! those the reloaded bridge routes itself: a configured route is never
//! replaced, so that the last subscriber leaving cannot delete it).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use dreamos_bridge::bridge::BoxFuture;
use dreamos_bridge::{BridgeError, BridgeManager, ErrorCode, Handler, Message, Payload};
use parking_lot::{Mutex, RwLock};
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
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

/// A message sent to the service and not yet answered.
struct InFlight {
    /// The caller's channel.
    tx: oneshot::Sender<dreamos_bridge::Result<Payload>>,
    /// The message's destination (a signed reply is checked against it).
    destination: String,
    /// Which dispatch of this id it is: a caller that stops waiting removes
    /// its own entry, never a later dispatch's of the same id.
    seq: u64,
}

/// Message id to the message in flight with that id.
type Pending = HashMap<Uuid, InFlight>;

/// What became of a message handed to a session.
enum Dispatch {
    /// Sent: the answer comes on the receiver; `u64` is the entry's `seq`.
    Sent(oneshot::Receiver<dreamos_bridge::Result<Payload>>, u64),
    /// The session is closed or closing (or its outbound queue is full).
    Closed,
    /// A message with this id is already in flight on this session; the
    /// service's answer could not tell the two apart.
    Duplicate,
}

/// One connected service (one WebSocket).
pub(crate) struct Session {
    pub(crate) id: u64,
    pub(crate) principal: Option<String>,
    /// Frames for the writer task; bounded, so that a service that does not
    /// read cannot make the server queue without limit.
    tx: mpsc::Sender<Outbound>,
    /// Messages sent and not yet answered; `None` once the session closed,
    /// so that nothing new is handed to it.
    pending: Mutex<Option<Pending>>,
    patterns: Mutex<Vec<String>>,
    /// Cancelled when the session must end now: its outbound queue
    /// overflowed or its writer stopped. The socket task then leaves the hub.
    ended: CancellationToken,
    next_seq: AtomicU64,
}

static SESSION_IDS: AtomicU64 = AtomicU64::new(1);

impl Session {
    pub(crate) fn new(principal: Option<String>, tx: mpsc::Sender<Outbound>) -> Arc<Self> {
        Arc::new(Session {
            id: SESSION_IDS.fetch_add(1, Ordering::Relaxed),
            principal,
            tx,
            pending: Mutex::new(Some(HashMap::new())),
            patterns: Mutex::new(Vec::new()),
            ended: CancellationToken::new(),
            next_seq: AtomicU64::new(0),
        })
    }

    /// Queue a frame for the socket; `false` if it cannot be sent. A full
    /// queue means the service stopped reading (or cannot keep up): the
    /// session is ended, so that its in-flight messages go elsewhere rather
    /// than wait behind a socket that does not drain.
    pub(crate) fn send(&self, out: Outbound) -> bool {
        match self.tx.try_send(out) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) => {
                if !self.ended.is_cancelled() {
                    tracing::warn!(
                        session = self.id,
                        queued = self.tx.max_capacity(),
                        "connected service does not read its frames (outbound queue full); closing the session"
                    );
                }
                self.ended.cancel();
                false
            }
            Err(TrySendError::Closed(_)) => {
                self.ended.cancel();
                false
            }
        }
    }

    /// Completes when the session must end (see [`Session::send`]).
    pub(crate) fn ended(&self) -> &CancellationToken {
        &self.ended
    }

    /// Hand a message to this service.
    fn dispatch(&self, msg: &Message) -> Dispatch {
        if self.ended.is_cancelled() {
            return Dispatch::Closed;
        }
        let (tx, rx) = oneshot::channel();
        let mut pending = self.pending.lock();
        let Some(map) = pending.as_mut() else { return Dispatch::Closed };
        if map.contains_key(&msg.id) {
            return Dispatch::Duplicate;
        }
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
            return Dispatch::Closed;
        }
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        map.insert(msg.id, InFlight { tx, destination: msg.destination.clone(), seq });
        Dispatch::Sent(rx, seq)
    }

    /// The service answered message `id`; `false` if nobody waits for it
    /// (unknown id, or the caller already gave up).
    pub(crate) fn answer(&self, id: Uuid, result: dreamos_bridge::Result<Payload>) -> bool {
        let entry = self.pending.lock().as_mut().and_then(|m| m.remove(&id));
        match entry {
            Some(e) => e.tx.send(result).is_ok(),
            None => false,
        }
    }

    /// The destination of in-flight message `id`, if it awaits an answer.
    pub(crate) fn destination_of(&self, id: Uuid) -> Option<String> {
        self.pending.lock().as_ref().and_then(|m| m.get(&id)).map(|e| e.destination.clone())
    }

    /// The caller of dispatch `seq` of message `id` stopped waiting.
    fn forget(&self, id: Uuid, seq: u64) {
        if let Some(m) = self.pending.lock().as_mut()
            && m.get(&id).is_some_and(|e| e.seq == seq)
        {
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
    seq: u64,
}

impl Drop for PendingGuard {
    fn drop(&mut self) {
        self.session.forget(self.id, self.seq);
    }
}

impl Handler for ConnectedServiceHandler {
    fn call(&self, msg: Message) -> BoxFuture<dreamos_bridge::Result<Payload>> {
        let group = self.group.clone();
        Box::pin(async move {
            let mut tried = Vec::new();
            let mut declined = 0usize;
            let mut duplicates = 0usize;
            loop {
                let Some(session) = group.pick(&tried) else {
                    if duplicates > 0 {
                        return Err(BridgeError::new(
                            ErrorCode::ServiceUnavailable,
                            format!(
                                "a message with id {} is already in flight to {duplicates} connected service(s) of \
                                 {:?}, and no other subscriber could take this one: message ids must be unique \
                                 while in flight; retry once the first is answered, or use a new id",
                                msg.id, group.pattern
                            ),
                        )
                        .with_retry_after(Duration::from_secs(1)));
                    }
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
                let (rx, seq) = match session.dispatch(&msg) {
                    Dispatch::Sent(rx, seq) => (rx, seq),
                    Dispatch::Closed => continue,
                    Dispatch::Duplicate => {
                        tracing::debug!(id = %msg.id, session = session.id, pattern = %group.pattern,
                            "a message with this id is already in flight on this session; trying another subscriber");
                        duplicates += 1;
                        continue;
                    }
                };
                let _guard = PendingGuard { session: session.clone(), id: msg.id, seq };
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
            // Only the hub's own route goes: an in-process handler registered
            // over it since (by an embedder) stays.
            let group = h.group.clone();
            groups.remove(pattern);
            let ours = bridge.unregister_route_if(pattern, |handler| {
                handler
                    .as_any()
                    .and_then(|a| a.downcast_ref::<ConnectedServiceHandler>())
                    .is_some_and(|c| Arc::ptr_eq(&c.group, &group))
            });
            if ours {
                tracing::info!(pattern, "last connected service left; route removed");
            }
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
    ///
    /// A pattern the new bridge routes itself (the reloaded config, or an
    /// in-process handler such as `--echo`) is not taken over: the config
    /// is what the operator asked for, and a connected service cannot
    /// subscribe to a configured pattern either. Its subscribers are told
    /// (an error frame `FORBIDDEN` with the `pattern`), and their messages
    /// already in flight on the old bridge still complete.
    pub fn replace_bridge(&self, new: BridgeManager) -> BridgeManager {
        let mut groups = self.groups.lock();
        let routed = new.routes();
        groups.retain(|pattern, h| {
            if !routed.iter().any(|p| p == pattern) {
                return true;
            }
            let subs = std::mem::take(&mut *h.group.subscribers.lock());
            tracing::warn!(
                pattern,
                subscribers = subs.len(),
                "the reloaded config routes a pattern connected services served; the configured route takes it"
            );
            let frame = serde_json::json!({
                "type": "error",
                "code": ErrorCode::Forbidden.as_str(),
                "pattern": pattern,
                "message": format!(
                    "the bridge's reloaded config routes {pattern:?} itself, so this subscription ended; \
                     subscribe to a pattern of your own"
                ),
            })
            .to_string();
            for s in subs {
                s.patterns.lock().retain(|p| p != pattern);
                s.send(Outbound::Text(frame.clone()));
            }
            false
        });
        for (pattern, h) in groups.iter() {
            if let Err(e) = new.register_route(pattern, Arc::new(h.clone())) {
                tracing::error!(pattern, error = %e, "could not carry a connected service's route over to the reloaded bridge");
            }
        }
        std::mem::replace(&mut *self.bridge.write(), new)
    }
}

//! Audit trail: every authentication and authorization decision, as a
//! `tracing` event and, optionally, a JSON line in a file.
//!
//! Decisions happen on the hot path of every call, so recording one must
//! never do file I/O or wait: the caller builds a small [`Record`] (a few
//! `Arc` clones and the destination) and hands it to a bounded channel with
//! `try_send`; a background thread owns the file and writes JSON lines. If
//! the writer falls behind and the channel is full, the record is dropped and
//! counted ([`AuditLog::dropped`]) rather than slowing callers down.
//!
//! Tracing events use the target `dreamos_bridge::audit`: refusals at `WARN`,
//! successful authentications at `INFO`, allowed authorizations at `DEBUG`
//! (one per call; a disabled callsite costs nothing). Records carry the
//! principal, action, resource, decision and a reason, never a secret: the
//! reasons are fixed phrases or configuration names.

use std::borrow::Cow;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::thread::JoinHandle;
use std::time::Duration;

use serde::Serialize;

use crate::error::{BridgeError, Result};
use crate::message::now_millis;

/// Tracing target of audit events.
pub const AUDIT_TARGET: &str = "dreamos_bridge::audit";

/// Records waiting for the writer before new ones are dropped.
const CHANNEL_CAPACITY: usize = 65_536;

/// Allowed or refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    /// The request goes on.
    Allow,
    /// The request is refused.
    Deny,
}

impl Decision {
    fn as_str(self) -> &'static str {
        match self {
            Decision::Allow => "allow",
            Decision::Deny => "deny",
        }
    }
}

/// One audit record, as written to the JSON-lines file.
#[derive(Debug, Clone, Serialize)]
pub struct Record {
    /// Milliseconds since the Unix epoch.
    pub time_ms: u64,
    /// `authenticate`, `verify`, `revoke`, `refresh`, `verify_message`, or an
    /// authorization action (`route`, `publish`, `handle`, `admin`).
    pub action: &'static str,
    /// The principal, when known.
    pub principal: Option<Arc<str>>,
    /// The destination or, for authentication, the credential kind.
    pub resource: Cow<'static, str>,
    /// The decision.
    pub decision: Decision,
    /// Why (a fixed phrase; never a secret).
    pub reason: Cow<'static, str>,
    /// The role that allowed or denied an authorization, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<Arc<str>>,
}

enum Command {
    Write(Record),
    Flush(SyncSender<()>),
}

/// The audit sink: tracing always, a file when configured.
pub struct AuditLog {
    tx: Option<SyncSender<Command>>,
    writer: Option<JoinHandle<()>>,
    path: Option<PathBuf>,
    dropped: AtomicU64,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog").field("path", &self.path).field("dropped", &self.dropped()).finish()
    }
}

impl AuditLog {
    /// Tracing only.
    pub fn tracing_only() -> Self {
        AuditLog { tx: None, writer: None, path: None, dropped: AtomicU64::new(0) }
    }

    /// Tracing, plus JSON lines appended to `path` by a background thread.
    /// The file is opened now so that a bad path is a `CONFIG` error at start.
    pub fn to_file(path: &Path) -> Result<Self> {
        let file = OpenOptions::new().create(true).append(true).open(path).map_err(|e| {
            BridgeError::config(
                "security.audit_log",
                format!(
                    "cannot open {} for appending ({e}): check the directory exists and is writable",
                    path.display()
                ),
            )
        })?;
        let (tx, rx) = mpsc::sync_channel(CHANNEL_CAPACITY);
        let writer = std::thread::Builder::new()
            .name("dreamos-audit".into())
            .spawn(move || write_loop(rx, file))
            .map_err(|e| BridgeError::internal(format!("cannot start the audit writer thread: {e}")))?;
        Ok(AuditLog { tx: Some(tx), writer: Some(writer), path: Some(path.to_path_buf()), dropped: AtomicU64::new(0) })
    }

    /// Records dropped because the writer fell behind.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Is a file being written?
    pub fn has_file(&self) -> bool {
        self.tx.is_some()
    }

    /// Record an authorization that was allowed: the cheap, common case.
    #[inline]
    pub fn allowed(&self, principal: &Arc<str>, action: &'static str, resource: &str, role: &Arc<str>) {
        tracing::debug!(
            target: AUDIT_TARGET,
            principal = &**principal,
            action,
            resource,
            decision = "allow",
            role = &**role,
            "authorization allowed"
        );
        if self.tx.is_some() {
            self.send(Record {
                time_ms: now_millis(),
                action,
                principal: Some(principal.clone()),
                resource: Cow::Owned(resource.to_string()),
                decision: Decision::Allow,
                reason: Cow::Borrowed("allowed"),
                role: Some(role.clone()),
            });
        }
    }

    /// Record any decision.
    pub fn record(&self, record: Record) {
        let principal = record.principal.as_deref().unwrap_or("-");
        match record.decision {
            Decision::Deny => tracing::warn!(
                target: AUDIT_TARGET,
                principal,
                action = record.action,
                resource = &*record.resource,
                decision = record.decision.as_str(),
                reason = &*record.reason,
                "refused"
            ),
            Decision::Allow => tracing::info!(
                target: AUDIT_TARGET,
                principal,
                action = record.action,
                resource = &*record.resource,
                decision = record.decision.as_str(),
                reason = &*record.reason,
                "allowed"
            ),
        }
        if self.tx.is_some() {
            self.send(record);
        }
    }

    fn send(&self, record: Record) {
        let Some(tx) = &self.tx else { return };
        match tx.try_send(Command::Write(record)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                // Counted, and reported once per power of two so a stalled
                // disk cannot flood the log either.
                let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                if n.is_power_of_two() {
                    tracing::error!(target: AUDIT_TARGET, dropped = n, "audit file writer is behind; records dropped");
                }
            }
        }
    }

    /// Wait until every record sent so far is in the file (or `timeout`
    /// passes). For tests, shutdown and admin tooling; never the hot path.
    pub fn flush(&self, timeout: Duration) -> bool {
        let Some(tx) = &self.tx else { return true };
        let (ack_tx, ack_rx) = mpsc::sync_channel(1);
        // A blocking send is fine here: this is not the hot path.
        if tx.send(Command::Flush(ack_tx)).is_err() {
            return false;
        }
        ack_rx.recv_timeout(timeout).is_ok()
    }
}

impl Drop for AuditLog {
    fn drop(&mut self) {
        // Closing the channel lets the writer drain what is queued and exit.
        self.tx = None;
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
    }
}

fn write_loop(rx: Receiver<Command>, file: File) {
    let mut out = BufWriter::new(file);
    let mut failed = false;
    // Write a batch, then flush when the queue runs dry: the file is current
    // within a moment, without a syscall per record under load.
    while let Ok(cmd) = rx.recv() {
        handle(cmd, &mut out, &mut failed);
        while let Ok(cmd) = rx.try_recv() {
            handle(cmd, &mut out, &mut failed);
        }
        flush_file(&mut out, &mut failed);
    }
    flush_file(&mut out, &mut failed);
}

fn handle(cmd: Command, out: &mut BufWriter<File>, failed: &mut bool) {
    match cmd {
        Command::Write(rec) => write_record(out, &rec, failed),
        Command::Flush(ack) => {
            flush_file(out, failed);
            let _ = ack.send(());
        }
    }
}

fn write_record(out: &mut BufWriter<File>, rec: &Record, failed: &mut bool) {
    let res = serde_json::to_writer(&mut *out, rec).map_err(std::io::Error::from).and_then(|()| out.write_all(b"\n"));
    report(res, failed);
}

fn flush_file(out: &mut BufWriter<File>, failed: &mut bool) {
    report(out.flush(), failed);
}

fn report(res: std::io::Result<()>, failed: &mut bool) {
    match res {
        Ok(()) => *failed = false,
        // Say it once per failure streak, not once per record.
        Err(e) if !*failed => {
            *failed = true;
            tracing::error!(target: AUDIT_TARGET, error = %e, "cannot write the audit log");
        }
        Err(_) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_path(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("dreamos-audit-{}-{name}-{}.jsonl", std::process::id(), uuid::Uuid::now_v7()))
    }

    #[test]
    fn lines_reach_the_file() {
        let path = temp_path("lines");
        let log = AuditLog::to_file(&path).unwrap();
        let who: Arc<str> = Arc::from("planner");
        let role: Arc<str> = Arc::from("agent");
        log.allowed(&who, "route", "agents.echo", &role);
        log.record(Record {
            time_ms: 1,
            action: "authenticate",
            principal: None,
            resource: Cow::Borrowed("api_key"),
            decision: Decision::Deny,
            reason: Cow::Borrowed("unknown api key"),
            role: None,
        });
        assert!(log.flush(Duration::from_secs(5)));
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert_eq!(lines[0]["principal"], "planner");
        assert_eq!(lines[0]["decision"], "allow");
        assert_eq!(lines[0]["role"], "agent");
        assert_eq!(lines[1]["decision"], "deny");
        assert!(lines[1]["principal"].is_null());
        drop(log);
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn drop_drains_the_queue() {
        let path = temp_path("drain");
        let log = AuditLog::to_file(&path).unwrap();
        let who: Arc<str> = Arc::from("p");
        let role: Arc<str> = Arc::from("r");
        for i in 0..100 {
            log.allowed(&who, "publish", &format!("events.n{i}"), &role);
        }
        drop(log);
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 100);
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn unwritable_path_is_a_config_error() {
        let e = AuditLog::to_file(Path::new("/nonexistent-dir-dreamos/audit.jsonl")).unwrap_err();
        assert_eq!(e.code(), crate::error::ErrorCode::Config);
        assert!(e.message().starts_with("security.audit_log:"), "{}", e.message());
    }

    #[test]
    fn tracing_only_never_blocks_or_fails() {
        let log = AuditLog::tracing_only();
        let who: Arc<str> = Arc::from("p");
        log.allowed(&who, "route", "a.b", &who);
        assert!(log.flush(Duration::from_millis(1)));
        assert!(!log.has_file());
        assert_eq!(log.dropped(), 0);
    }
}

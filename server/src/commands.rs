//! Runs the commands of [`crate::cli`]: the whole `dreamos-bridge` command
//! line as one function, [`run`], so that the binary (`src/main.rs`) and
//! the Python package's console script (`bindings-python/src/cli.rs`) are
//! the same program.

use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use clap::Parser;
use dreamos_bridge::{BridgeConfig, BridgeManager, Message, handler_fn};

use crate::cli::{Cli, Command, DeadLetterCommand, LogFormat, TokenCommand};
use crate::client::{self, Client};
use crate::{Server, check_exposure};
use serde_json::{Value, json};
use sha2::Digest;

/// Run the command line `args` (the first is the program name, as in
/// `std::env::args`) to completion and return the process exit code: 0 on
/// success, 1 when the command failed, 2 for a usage error. `--help` and
/// `--version` print and return 0. `serve` returns after SIGTERM or SIGINT
/// drained the server.
pub fn run(args: Vec<String>) -> i32 {
    let cli = match Cli::try_parse_from(args) {
        Ok(c) => c,
        Err(e) => {
            // Help and version go to stdout with 0; usage errors to stderr with 2.
            let _ = e.print();
            return e.exit_code();
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return 1;
        }
    };
    let code = runtime.block_on(execute(cli.command));
    // Connections still open after the drain must not keep the caller waiting.
    runtime.shutdown_timeout(Duration::from_secs(1));
    code
}

async fn execute(command: Command) -> i32 {
    exit_code(dispatch(command).await)
}

fn exit_code(code: ExitCode) -> i32 {
    if code == ExitCode::SUCCESS { 0 } else { 1 }
}

async fn dispatch(command: Command) -> ExitCode {
    match command {
        Command::Serve { config, log_format, echo } => serve(config, log_format, echo).await,
        Command::CheckConfig { file } => check_config(&file).await,
        Command::EchoService { listen } => echo_service(listen).await,
        Command::PlainProxy { listen, upstream } => crate::plain_proxy::run(listen, &upstream, shutdown_signal()).await,
        Command::HashKey { key } => hash_key(key),
        Command::Token(TokenCommand::Inspect { token }) => inspect(&token),
        Command::Token(TokenCommand::Issue { config, principal, roles, ttl }) => {
            issue(&config, &principal, &roles, ttl.as_deref())
        }
        Command::Route { destination, payload, timeout, conn } => {
            let body =
                json!({"destination": destination, "payload": client::parse_payload(&payload), "timeout": timeout});
            print_result(async { Client::connect(&conn, 1).await?.post("/v1/route", &body).await }.await)
        }
        Command::DeadLetters(DeadLetterCommand::List { conn }) => {
            print_result(async { Client::connect(&conn, 1).await?.get("/v1/admin/dead-letters").await }.await)
        }
        Command::DeadLetters(DeadLetterCommand::Replay { id, conn }) => print_result(
            async {
                let path = format!("/v1/admin/dead-letters/{id}/replay");
                Client::connect(&conn, 1).await?.post(&path, &json!({})).await
            }
            .await,
        ),
        Command::Bench { concurrency, requests, destination, payload, raw_url, get, json: as_json, label, conn } => {
            let payload = client::parse_payload(&payload);
            let body = match raw_url {
                Some(_) => payload,
                None => json!({"destination": destination, "payload": payload}),
            };
            let result = async {
                let c = Client::connect(&conn, concurrency).await?;
                client::bench(c, raw_url, body, get, concurrency, requests, label).await
            }
            .await;
            match result {
                Ok(r) if as_json => {
                    println!("{}", serde_json::to_string(&r).unwrap_or_default());
                    ExitCode::SUCCESS
                }
                Ok(r) => {
                    println!(
                        "{}: {} requests ({} errors) in {:.2}s: {:.0} req/s; latency p50 {:.3} ms, p90 {:.3} ms, p99 {:.3} ms",
                        r.label, r.requests, r.errors, r.seconds, r.throughput, r.p50_ms, r.p90_ms, r.p99_ms
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn print_result(r: Result<Value, client::ClientError>) -> ExitCode {
    match r {
        Ok(v) => {
            println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(level: &str, format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    // RUST_LOG wins over monitoring.log_level, for debugging one module.
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        let level = match level.to_ascii_uppercase().as_str() {
            "WARNING" => "warn".to_string(),
            l => l.to_ascii_lowercase(),
        };
        EnvFilter::new(level)
    });
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// The listen address of a config (the first address `bridge.host` resolves to).
async fn listen_addr(config: &BridgeConfig) -> dreamos_bridge::Result<SocketAddr> {
    let host = config.bridge.host.as_str();
    let mut addrs = tokio::net::lookup_host((host, config.bridge.port))
        .await
        .map_err(|e| dreamos_bridge::BridgeError::config("bridge.host", format!("cannot resolve {host:?}: {e}")))?;
    addrs.next().ok_or_else(|| dreamos_bridge::BridgeError::config("bridge.host", format!("{host:?} has no address")))
}

/// Build a bridge from a config, with the `--echo` handlers.
fn build_bridge(config: BridgeConfig, echo: &[String]) -> dreamos_bridge::Result<BridgeManager> {
    let bridge = BridgeManager::new(config)?;
    for pattern in echo {
        bridge.register_route(pattern, handler_fn(|msg: Message| async move { Ok(msg.payload) }))?;
    }
    Ok(bridge)
}

fn load(path: Option<&Path>) -> dreamos_bridge::Result<BridgeConfig> {
    match path {
        Some(p) => BridgeConfig::from_file(p),
        None => Ok(BridgeConfig::default()),
    }
}

async fn serve(config_path: Option<PathBuf>, log_format: LogFormat, echo: Vec<String>) -> ExitCode {
    let config = match load(config_path.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    init_logging(&config.monitoring.log_level, log_format);
    let started = async {
        let addr = listen_addr(&config).await?;
        check_exposure(addr, &config)?;
        let bridge = build_bridge(config, &echo)?;
        let server = Arc::new(Server::from_bridge(bridge)?);
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| dreamos_bridge::BridgeError::config("bridge.port", format!("cannot listen on {addr}: {e}")))?;
        Ok::<_, dreamos_bridge::BridgeError>((server, listener))
    }
    .await;
    let (server, listener) = match started {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot start");
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    // The signal handlers go in before the "listening" line: a signal sent
    // as soon as that line appears must drain (or reload), not kill.
    let shutdown = shutdown_signal();
    // Installed without a config file too: SIGHUP's default action would
    // kill the server without a drain.
    let reloader = {
        let (server, hup) = (server.clone(), tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()));
        tokio::spawn(async move { reload_on_sighup(server, config_path, echo, hup).await })
    };
    let local = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
    let scheme = if server.state().options.tls.is_some() { "https" } else { "http" };
    // Tests and scripts wait for this line (and read the port from it when bridge.port is 0).
    println!("dreamos-bridge listening on {scheme}://{local}");

    let result = server.run(listener, shutdown).await;
    reloader.abort();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "server failed");
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Install the SIGTERM/SIGINT handlers now; the future completes on the
/// first of them.
fn shutdown_signal() -> impl Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let handlers = (signal(SignalKind::terminate()), signal(SignalKind::interrupt()));
    async move {
        let (Ok(mut term), Ok(mut int)) = handlers else {
            tracing::error!("cannot install signal handlers; stop the server with SIGKILL");
            return std::future::pending().await;
        };
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: draining"),
            _ = int.recv() => tracing::info!("SIGINT: draining"),
        }
    }
}

/// SIGHUP: load and validate the file; only a valid one replaces the bridge.
async fn reload_on_sighup(
    server: Arc<Server>,
    path: Option<PathBuf>,
    echo: Vec<String>,
    hup: std::io::Result<tokio::signal::unix::Signal>,
) {
    let Ok(mut hup) = hup else {
        tracing::error!("cannot install the SIGHUP handler; config reload is off");
        return;
    };
    while hup.recv().await.is_some() {
        let Some(path) = &path else {
            tracing::warn!("SIGHUP: nothing to reload (started without --config, on the embedded defaults)");
            continue;
        };
        let current = server.bridge();
        let result = async {
            let config = BridgeConfig::from_file(path)?;
            let old = current.config();
            let restart_only = [
                ("bridge.host", config.bridge.host != old.bridge.host),
                ("bridge.port", config.bridge.port != old.bridge.port),
                ("bridge.max_connections", config.bridge.max_connections != old.bridge.max_connections),
                ("bridge.tls", config.bridge.tls.is_some() != old.bridge.tls.is_some()),
                (
                    "limits.max_payload_bytes (body limit)",
                    config.limits.max_payload_bytes != old.limits.max_payload_bytes,
                ),
                (
                    "security.allowed_origins",
                    config.security.as_ref().map(|s| &s.allowed_origins)
                        != old.security.as_ref().map(|s| &s.allowed_origins),
                ),
            ];
            for (key, changed) in restart_only {
                if changed {
                    tracing::warn!(key, "changed in the config file; takes effect at the next restart, not on reload");
                }
            }
            if config.security_enabled() != old.security_enabled() {
                return Err(dreamos_bridge::BridgeError::config(
                    "security",
                    "turning security on or off needs a restart (the listen address was checked for it)",
                ));
            }
            let bridge = build_bridge(config, &echo)?;
            server.replace_bridge(bridge).await
        }
        .await;
        match result {
            Ok(()) => tracing::info!(file = %path.display(), "config reloaded"),
            Err(e) => {
                tracing::error!(file = %path.display(), error = %e, "config reload failed; the running config stays")
            }
        }
    }
}

async fn check_config(file: &Path) -> ExitCode {
    let result = async {
        let config = BridgeConfig::from_file(file)?;
        if let Ok(addr) = listen_addr(&config).await {
            check_exposure(addr, &config)?;
        }
        // Building the bridge runs the checks that need more than the file (routes, services).
        let bridge = BridgeManager::new(config)?;
        Ok::<_, dreamos_bridge::BridgeError>(bridge)
    }
    .await;
    match result {
        Ok(bridge) => {
            let c = bridge.config();
            println!(
                "{}: ok ({} services, {} routes, security {})",
                file.display(),
                c.services.len(),
                c.routes.len(),
                if c.security_enabled() { "on" } else { "off" }
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{}: invalid: {}", file.display(), e.message());
            ExitCode::FAILURE
        }
    }
}

fn hash_key(key: Option<String>) -> ExitCode {
    let key = match key {
        Some(k) => k,
        None => {
            let mut s = String::new();
            if let Err(e) = std::io::stdin().read_to_string(&mut s) {
                eprintln!("error: cannot read the key from stdin: {e}");
                return ExitCode::FAILURE;
            }
            s.trim_end_matches(['\r', '\n']).to_string()
        }
    };
    if key.is_empty() {
        eprintln!("error: the key is empty: pass it as an argument or on stdin");
        return ExitCode::FAILURE;
    }
    println!("{}", hex::encode(sha2::Sha256::digest(key.as_bytes())));
    ExitCode::SUCCESS
}

fn inspect(token: &str) -> ExitCode {
    let decode = |part: &str| -> Option<Value> {
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(part.trim_end_matches('=')).ok()?;
        serde_json::from_slice(&bytes).ok()
    };
    let parts: Vec<&str> = token.trim().split('.').collect();
    let (Some(header), Some(claims)) = (parts.first().and_then(|p| decode(p)), parts.get(1).and_then(|p| decode(p)))
    else {
        eprintln!("error: not a JWT (expected three base64url parts separated by dots)");
        return ExitCode::FAILURE;
    };
    eprintln!("NOT VERIFIED: this shows what the token says, not whether the bridge accepts it.");
    let out = json!({"verified": false, "header": header, "claims": claims});
    println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
    ExitCode::SUCCESS
}

fn issue(config: &Path, principal: &str, roles: &[String], ttl: Option<&str>) -> ExitCode {
    let result = (|| {
        let config = BridgeConfig::from_file(config)?;
        let ttl = match ttl {
            Some(t) => dreamos_bridge::config::parse_duration(t)
                .map_err(|e| dreamos_bridge::BridgeError::invalid(format!("--ttl {t:?}: {e}")))?,
            None => config.security.as_ref().map(|s| s.token_expiry.get()).unwrap_or(Duration::from_secs(3600)),
        };
        // Only the security layer is built: no runtime, routes or connections needed to sign.
        let security = dreamos_bridge::security::SecurityManager::new(config.security.as_ref())?;
        security.issue_token(principal, roles, ttl)
    })();
    match result {
        Ok(token) => {
            // The token on stdout alone (for `TOKEN=$(...)`); what it grants on stderr.
            eprintln!(
                "token for {:?} with roles {:?}, expires at {} (unix seconds)",
                token.principal, token.roles, token.expires_at
            );
            println!("{}", token.value);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {}", e.message());
            ExitCode::FAILURE
        }
    }
}

async fn echo_service(listen: SocketAddr) -> ExitCode {
    use axum::routing::any;
    let app = axum::Router::new().fallback(any(|method: axum::http::Method, body: axum::body::Bytes| async move {
        let content_type = [(axum::http::header::CONTENT_TYPE, "application/json")];
        if method == axum::http::Method::GET {
            (content_type, axum::body::Bytes::from_static(b"\"ok\""))
        } else {
            (content_type, body)
        }
    }));
    let listener = match tokio::net::TcpListener::bind(listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: cannot listen on {listen}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let shutdown = shutdown_signal();
    let local = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
    println!("echo service listening on http://{local}");
    match axum::serve(listener, app).with_graceful_shutdown(shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

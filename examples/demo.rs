//! The main job of the bridge, end to end, with no file and no server:
//! an agent authenticates with an API key, calls an in-process tool through
//! the bridge with security on, publishes an event, meets a refusal, and
//! prints what the bridge recorded.
//!
//! Run it with `make demo` (or `cargo run -p dreamos-bridge --example demo`).

use std::time::Duration;

use dreamos_bridge::config::{ApiKeyConfig, RoleConfig, SecurityConfig};
use dreamos_bridge::{BridgeConfig, BridgeManager, CallOptions, Credentials, Message, Payload, handler_fn};
use serde_json::json;
use sha2::{Digest, Sha256};

#[tokio::main]
async fn main() {
    if let Err(e) = run().await {
        eprintln!("demo failed: {e}");
        std::process::exit(1);
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    // The agent's API key. The bridge stores only its SHA-256.
    let api_key = "dk_live_demo_4f9f2c";

    let mut config = BridgeConfig::default();
    config.bridge.retry_delay = dreamos_bridge::config::Seconds::from_millis(10);
    let mut security = SecurityConfig::default();
    security.api_keys.push(ApiKeyConfig {
        principal: "planner".into(),
        sha256: hex::encode(Sha256::digest(api_key)),
        roles: vec!["agent".into()],
    });
    security.roles.insert(
        "agent".into(),
        RoleConfig {
            route: vec!["tools.>".into()],
            publish: vec!["events.>".into()],
            deny: vec!["tools.admin".into()],
            ..RoleConfig::default()
        },
    );
    config.security = Some(security);

    let bridge = BridgeManager::new(config)?;
    bridge.initialize().await?;

    // An in-process tool: summarize text.
    bridge.register_route(
        "tools.summarize",
        handler_fn(|msg: Message| async move {
            let text = msg.payload.as_json().and_then(|p| p["text"].as_str()).unwrap_or_default().to_string();
            let summary: String = text.chars().take(40).collect();
            Ok(Payload::Json(json!({ "summary": summary, "requested_by": msg.source.as_deref() })))
        }),
    )?;
    // An event sink.
    bridge.register_route(
        "events.>",
        handler_fn(|msg: Message| async move {
            println!("  [event sink] {} {}", msg.destination, msg.payload.to_json());
            Ok(Payload::default())
        }),
    )?;

    println!("1. authenticate with an API key");
    let token = bridge.authenticate(&Credentials::ApiKey(api_key.into()))?;
    println!("   principal={} roles={:?} expires_at={}", token.principal, token.roles, token.expires_at);

    println!("2. route to an in-process tool");
    let text = "The Dream.OS bridge authenticates, authorizes, rate-limits and routes every agent call.";
    let reply = bridge
        .route(Message::new("tools.summarize", json!({ "text": text })), CallOptions::with_token(&token.value))
        .await?;
    println!("   reply: {}", reply.to_json());

    println!("3. publish an event (fire-and-forget)");
    let id = bridge
        .publish(Message::new("events.audit", json!({"action": "summarized"})), CallOptions::with_token(&token.value))
        .await?;
    println!("   published {id}");

    println!("4. a destination the role denies");
    match bridge.route(Message::new("tools.admin", json!({})), CallOptions::with_token(&token.value)).await {
        Ok(r) => println!("   unexpected reply: {}", r.to_json()),
        Err(e) => println!("   refused as expected: {e}"),
    }

    println!("5. a call without a token");
    if let Err(e) = bridge.route(Message::new("tools.summarize", json!({"text": "hi"})), CallOptions::default()).await {
        println!("   refused as expected: {e}");
    }

    tokio::time::sleep(Duration::from_millis(50)).await;
    println!("6. metrics snapshot");
    println!("{}", serde_json::to_string_pretty(&bridge.metrics())?);

    bridge.shutdown().await;
    println!("done: bridge shut down cleanly");
    Ok(())
}

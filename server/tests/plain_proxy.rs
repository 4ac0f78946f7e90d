//! `dreamos-bridge plain-proxy`, the benchmark's floor: it must forward
//! faithfully, or the figures beside it compare different work.

use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode, Uri, header::CONTENT_TYPE};
use axum::routing::{get, post};
use dreamos_bridge_server::plain_proxy;
use reqwest::Url;
use tokio::net::TcpListener;

/// An upstream on 127.0.0.1:0: `/api/echo` answers the body, content type,
/// path and query it received; `/api/missing` is a 404.
async fn upstream() -> String {
    let app = Router::new()
        .route(
            "/api/echo",
            post(|uri: Uri, headers: HeaderMap, body: Bytes| async move {
                let ct = headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
                let seen = format!("{} {} {}", uri, ct, String::from_utf8_lossy(&body));
                ([(CONTENT_TYPE, "text/x-seen")], seen)
            }),
        )
        .route("/api/missing", get(|| async { (StatusCode::NOT_FOUND, "nope") }));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}/api")
}

/// The proxy on 127.0.0.1:0 in front of `upstream`; its base URL.
async fn proxy(upstream: &str) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let upstream = Url::parse(upstream).unwrap();
    tokio::spawn(async move { plain_proxy::serve(listener, upstream, std::future::pending()).await.unwrap() });
    format!("http://{addr}")
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap()
}

#[tokio::test]
async fn forwards_path_query_body_and_content_type_and_answers_with_the_upstreams() {
    let base = proxy(&upstream().await).await;
    let resp = client()
        .post(format!("{base}/echo?x=1"))
        .header(CONTENT_TYPE, "application/json")
        .body(r#"{"n":1}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()[CONTENT_TYPE], "text/x-seen");
    assert_eq!(resp.text().await.unwrap(), r#"/api/echo?x=1 application/json {"n":1}"#);
}

#[tokio::test]
async fn an_upstream_error_status_passes_through() {
    let base = proxy(&upstream().await).await;
    let resp = client().get(format!("{base}/missing")).send().await.unwrap();
    assert_eq!(resp.status(), 404);
    assert_eq!(resp.text().await.unwrap(), "nope");
}

#[tokio::test]
async fn an_unreachable_upstream_is_a_502() {
    // A port that was free a moment ago: nothing listens there.
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
    let base = proxy(&format!("http://{closed}")).await;
    let resp = client().post(format!("{base}/echo")).body("x").send().await.unwrap();
    assert_eq!(resp.status(), 502);
    assert!(resp.text().await.unwrap().starts_with("upstream request failed"));
}

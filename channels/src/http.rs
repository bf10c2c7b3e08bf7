//! The one HTTP client every adapter shares (connection pooling, rustls) and the mapping of transport
//! failures onto [`ChannelError`]: a request that certainly never left is `Unreachable`, anything that
//! may have reached the channel (timeout, reset, 5xx) is `Unknown`.

use std::sync::OnceLock;
use std::time::Duration;

use crate::ChannelError;

/// Per-call timeouts. Payment calls are short; bill downloads may be long.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub connect: Duration,
    pub call: Duration,
    pub bill: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(3),
            call: Duration::from_secs(10),
            bill: Duration::from_secs(120),
        }
    }
}

/// The process-wide client: pooled keep-alive connections to every channel host.
pub fn shared_client() -> reqwest::Client {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    CLIENT
        .get_or_init(|| {
            reqwest::Client::builder()
                .connect_timeout(Timeouts::default().connect)
                .pool_idle_timeout(Duration::from_secs(90))
                .pool_max_idle_per_host(256)
                .tcp_nodelay(true)
                .user_agent(concat!("paymux/", env!("CARGO_PKG_VERSION")))
                .build()
                .expect("HTTP client with rustls")
        })
        .clone()
}

/// Classifies a transport error.
pub fn classify(err: &reqwest::Error) -> ChannelError {
    if err.is_connect() && !err.is_timeout() {
        ChannelError::Unreachable(err.to_string())
    } else if err.is_builder() {
        ChannelError::Config(err.to_string())
    } else {
        ChannelError::Unknown(err.to_string())
    }
}

/// A raw HTTP answer.
#[derive(Debug, Clone)]
pub struct RawResponse {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: bytes::Bytes,
}

/// Sends a request with the call timeout and reads the whole body.
pub async fn send(
    req: reqwest::RequestBuilder,
    timeout: Duration,
) -> Result<RawResponse, ChannelError> {
    let resp = req
        .timeout(timeout)
        .send()
        .await
        .map_err(|e| classify(&e))?;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp
        .bytes()
        .await
        .map_err(|e| ChannelError::Unknown(format!("reading the response: {e}")))?;
    Ok(RawResponse {
        status,
        headers,
        body,
    })
}

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

/// Largest answer read from an API call: real ones are a few KiB, and a misbehaving or hostile
/// endpoint must not make the process buffer without bound.
pub const MAX_CALL_BODY_BYTES: usize = 4 * 1024 * 1024;

/// Largest bill file (or answer carrying one) read: a busy merchant's day runs to hundreds of MiB.
pub const MAX_BILL_BODY_BYTES: usize = 512 * 1024 * 1024;

/// Sends a request with a timeout and reads the whole body, at most `max_body_bytes` of it
/// ([`MAX_CALL_BODY_BYTES`] for API calls, [`MAX_BILL_BODY_BYTES`] for bills). A longer body is
/// `Unknown`: the request reached the channel, and its answer is not read.
pub async fn send(
    req: reqwest::RequestBuilder,
    timeout: Duration,
    max_body_bytes: usize,
) -> Result<RawResponse, ChannelError> {
    let resp = req
        .timeout(timeout)
        .send()
        .await
        .map_err(|e| classify(&e))?;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = read_body(resp, max_body_bytes).await?;
    Ok(RawResponse {
        status,
        headers,
        body,
    })
}

/// Reads a body chunk by chunk, stopping as soon as it is longer than `max` (a stated
/// `Content-Length` over `max` is refused before reading anything).
async fn read_body(mut resp: reqwest::Response, max: usize) -> Result<bytes::Bytes, ChannelError> {
    let too_large = || {
        ChannelError::Unknown(format!(
            "the response body is larger than {max} bytes; not read"
        ))
    };
    let stated = resp.content_length();
    if stated.is_some_and(|n| n > max as u64) {
        return Err(too_large());
    }
    // Stated lengths are trusted for the first allocation only up to 1 MiB.
    let mut body = bytes::BytesMut::with_capacity(stated.map_or(0, |n| n.min(1 << 20) as usize));
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| ChannelError::Unknown(format!("reading the response: {e}")))?
    {
        if body.len() + chunk.len() > max {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Serves `len` bytes at `/sized` (with a `Content-Length`) and at `/chunked` (streamed in 64 KiB
    /// chunks, no length stated).
    async fn serve(len: usize) -> String {
        use axum::routing::get;
        let router = axum::Router::new()
            .route("/sized", get(move || async move { vec![b'x'; len] }))
            .route(
                "/chunked",
                get(move || async move {
                    let chunks = (0..len).step_by(64 * 1024).map(move |at| {
                        Ok::<_, std::io::Error>(bytes::Bytes::from(vec![
                            b'x';
                            (len - at).min(64 * 1024)
                        ]))
                    });
                    axum::body::Body::from_stream(futures::stream::iter(chunks))
                }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        format!("http://{addr}")
    }

    async fn get(base: &str, path: &str, max: usize) -> Result<RawResponse, ChannelError> {
        send(
            shared_client().get(format!("{base}{path}")),
            Duration::from_secs(10),
            max,
        )
        .await
    }

    #[tokio::test]
    async fn bodies_over_the_limit_are_not_read() {
        let over = serve(MAX_CALL_BODY_BYTES + 1).await;
        let exact = serve(MAX_CALL_BODY_BYTES).await;
        for path in ["/sized", "/chunked"] {
            let err = get(&over, path, MAX_CALL_BODY_BYTES).await.unwrap_err();
            assert!(
                matches!(&err, ChannelError::Unknown(m) if m.contains("larger than 4194304 bytes")),
                "{path}: {err}"
            );
            let ok = get(&exact, path, MAX_CALL_BODY_BYTES).await.unwrap();
            assert_eq!(ok.body.len(), MAX_CALL_BODY_BYTES, "{path}");
            // The bill limit reads what the call limit refuses.
            let ok = get(&over, path, MAX_BILL_BODY_BYTES).await.unwrap();
            assert_eq!(ok.body.len(), MAX_CALL_BODY_BYTES + 1, "{path}");
        }
    }
}

//! Signed calls to the merchant API, as a merchant's own client makes them.

use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

/// A merchant's API key.
#[derive(Clone, Deserialize)]
pub struct Merchant {
    pub key_id: String,
    pub key_secret: String,
}

impl std::fmt::Debug for Merchant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Merchant")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

/// Merchants from files holding the JSON of `paymux merchant create` (one object, or an array).
pub fn load_merchants(paths: &[std::path::PathBuf]) -> anyhow::Result<Vec<Merchant>> {
    let mut out = Vec::new();
    for path in paths {
        let bytes =
            std::fs::read(path).map_err(|e| anyhow::anyhow!("read {}: {e}", path.display()))?;
        let value: Value = serde_json::from_slice(&bytes).map_err(|e| {
            anyhow::anyhow!(
                "{}: not the JSON of `paymux merchant create`: {e}",
                path.display()
            )
        })?;
        let items = match value {
            Value::Array(items) => items,
            one => vec![one],
        };
        for item in items {
            out.push(serde_json::from_value(item).map_err(|e| {
                anyhow::anyhow!(
                    "{}: not the JSON of `paymux merchant create`: {e}",
                    path.display()
                )
            })?);
        }
    }
    Ok(out)
}

/// The result of one call: the status and JSON body, or a transport failure's name.
pub type Answer = Result<(u16, Value), String>;

pub struct Api {
    pub http: reqwest::Client,
    pub base: String,
}

impl Api {
    pub fn new(base: &str, connections: usize, timeout: Duration) -> anyhow::Result<Api> {
        Ok(Api {
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(connections)
                .timeout(timeout)
                .tcp_nodelay(true)
                .build()?,
            base: base.trim_end_matches('/').to_string(),
        })
    }

    /// A signed request to `path_and_query` (starting with `/v1/`).
    pub async fn signed(
        &self,
        m: &Merchant,
        method: reqwest::Method,
        path_and_query: &str,
        body: Option<&Value>,
    ) -> Answer {
        let body = body
            .map(|b| serde_json::to_vec(b).expect("serialise"))
            .unwrap_or_default();
        let nonce = uuid::Uuid::new_v4().simple().to_string();
        let auth = paymux_model::auth::authorization_header(
            &m.key_id,
            m.key_secret.as_bytes(),
            method.as_str(),
            path_and_query,
            chrono::Utc::now().timestamp(),
            &nonce,
            &body,
        );
        let mut req = self
            .http
            .request(method, format!("{}{path_and_query}", self.base))
            .header("authorization", auth);
        if !body.is_empty() {
            req = req.header("content-type", "application/json").body(body);
        }
        answer(req.send().await).await
    }

    /// An unsigned JSON `POST` to any URL (the sandbox payer).
    pub async fn post_json(&self, url: &str, body: &Value) -> Answer {
        answer(self.http.post(url).json(body).send().await).await
    }
}

async fn answer(result: reqwest::Result<reqwest::Response>) -> Answer {
    match result {
        Ok(resp) => {
            let status = resp.status().as_u16();
            match resp.bytes().await {
                Ok(b) => Ok((status, serde_json::from_slice(&b).unwrap_or(Value::Null))),
                Err(e) => Err(transport(&e)),
            }
        }
        Err(e) => Err(transport(&e)),
    }
}

/// The name of a transport failure: `timeout`, `connect` or `transport`.
pub(crate) fn transport(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timeout".into()
    } else if e.is_connect() {
        "connect".into()
    } else {
        "transport".into()
    }
}

/// The error code of an unexpected answer: `STATUS problem-code`.
pub fn error_code(status: u16, body: &Value) -> String {
    format!(
        "{status} {}",
        body["code"]
            .as_str()
            .unwrap_or(if status < 300 { "unexpected" } else { "-" })
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merchants_from_one_object_or_an_array() {
        let dir = tempfile::tempdir().unwrap();
        let one = dir.path().join("one.json");
        std::fs::write(
            &one,
            r#"{"merchant_id":"m","name":"A","key_id":"pk_a","key_secret":"sk_a"}"#,
        )
        .unwrap();
        let many = dir.path().join("many.json");
        std::fs::write(
            &many,
            r#"[{"key_id":"pk_b","key_secret":"sk_b"},{"key_id":"pk_c","key_secret":"sk_c"}]"#,
        )
        .unwrap();
        let m = load_merchants(&[one, many]).unwrap();
        assert_eq!(
            m.iter().map(|m| m.key_id.as_str()).collect::<Vec<_>>(),
            ["pk_a", "pk_b", "pk_c"]
        );
        assert!(!format!("{:?}", m[0]).contains("sk_a"));
        let bad = dir.path().join("bad.json");
        std::fs::write(&bad, r#"{"key":"x"}"#).unwrap();
        assert!(load_merchants(&[bad]).is_err());
    }

    #[test]
    fn error_codes() {
        assert_eq!(
            error_code(422, &serde_json::json!({"code": "validation_failed"})),
            "422 validation_failed"
        );
        assert_eq!(error_code(502, &Value::Null), "502 -");
    }
}

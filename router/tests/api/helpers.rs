use std::time::Duration;

use paymux::config::{Config, Secret};
use paymux::merchants::{self, Credentials};
use paymux::startup::{Application, secret_box};
use reqwest::{Method, StatusCode};
use serde_json::Value;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A database for one test: a temp SQLite file, or a fresh PostgreSQL database.
pub struct TestDb {
    pub url: String,
    pub dir: tempfile::TempDir,
}

pub async fn fresh_database() -> TestDb {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = match std::env::var("PAYMUX_TEST_DATABASE_URL") {
        Ok(admin) if !admin.is_empty() => {
            let name = format!("paymux_test_{}", uuid::Uuid::now_v7().simple());
            let admin_pool = sqlx::PgPool::connect(&admin)
                .await
                .expect("connect to PAYMUX_TEST_DATABASE_URL");
            sqlx::query(&format!("CREATE DATABASE {name}"))
                .execute(&admin_pool)
                .await
                .expect("create database");
            admin_pool.close().await;
            let (base, query) = match admin.split_once('?') {
                Some((b, q)) => (b.to_string(), format!("?{q}")),
                None => (admin.clone(), String::new()),
            };
            let (prefix, _) = base.rsplit_once('/').expect("database URL has a path");
            format!("{prefix}/{name}{query}")
        }
        _ => format!("sqlite://{}/paymux.sqlite", dir.path().display()),
    };
    TestDb { url, dir }
}

pub fn test_config(db: &TestDb) -> Config {
    Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: db.dir.path().to_path_buf(),
        database_url: Some(Secret::new(db.url.clone())),
        redis_url: std::env::var("PAYMUX_TEST_REDIS_URL")
            .ok()
            .filter(|s| !s.is_empty())
            .map(Secret::new),
        demo_merchant: false,
        sweeper_interval_ms: 50,
        // Webhook receivers of the tests listen on loopback.
        webhook_allow_private_targets: true,
        // No nightly reconciliation firing in the middle of a test (tests that want it set it).
        reconcile_schedule: "off".into(),
        database_max_connections: 8,
        ..Config::default()
    }
}

/// The same configuration with a fresh listening port.
pub fn test_config_on(config: &Config) -> Config {
    Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        ..config.clone()
    }
}

pub struct TestApp {
    pub base: String,
    pub config: Config,
    pub http: reqwest::Client,
    pub db: TestDb,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

pub async fn spawn_app() -> TestApp {
    let db = fresh_database().await;
    let config = test_config(&db);
    spawn_with(db, config).await
}

pub async fn spawn_with(db: TestDb, config: Config) -> TestApp {
    let app = Application::build(config.clone())
        .await
        .expect("build application");
    let base = format!("http://{}", app.local_addr());
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(app.run_until_stopped(async {
        let _ = stopped.await;
    }));
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    TestApp {
        base,
        config,
        http,
        db,
        stop: Some(stop),
        task: Some(task),
    }
}

impl TestApp {
    pub fn backend(&self) -> &'static str {
        if self.db.url.starts_with("postgres") {
            "postgres"
        } else {
            "sqlite"
        }
    }

    /// A merchant created the way `paymux merchant create` does it: with the sandbox channel
    /// accounts and routes when the sandboxes are mounted.
    pub async fn merchant(&self, name: &str) -> MerchantClient {
        let db = paymux::startup::open_database(&self.config).await.unwrap();
        let secrets = secret_box(&self.config, &db).await.unwrap();
        let creds = merchants::create_merchant(&db, &secrets, name)
            .await
            .unwrap();
        if self.config.sandbox {
            paymux::routing::store::provision_sandbox(
                &db,
                &secrets,
                creds.merchant_id,
                self.config.sandbox_fee_rate_bps,
            )
            .await
            .unwrap();
        }
        db.close().await;
        MerchantClient {
            base: self.base.clone(),
            http: self.http.clone(),
            creds,
        }
    }

    pub async fn get_raw(&self, path: &str) -> reqwest::Response {
        self.http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap()
    }

    /// Graceful stop: in-flight requests finish, the batcher drains.
    pub async fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap().unwrap();
        }
    }

    /// Hard stop: the server task is aborted mid-flight, as a crash would.
    pub async fn kill(&mut self) {
        self.stop.take();
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }

    pub async fn sql_execute(&self, sql: &str) {
        match paymux::db::Db::connect(&self.db.url, 2).await.unwrap() {
            paymux::db::Db::Sqlite(p) => {
                sqlx::query(sql).execute(&p).await.unwrap();
            }
            paymux::db::Db::Postgres(p) => {
                sqlx::query(sql).execute(&p).await.unwrap();
            }
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// A signed client for one merchant, with one method per endpoint.
#[derive(Clone)]
pub struct MerchantClient {
    pub base: String,
    pub http: reqwest::Client,
    pub creds: Credentials,
}

pub fn nonce() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

pub struct Reply {
    pub status: StatusCode,
    pub content_type: String,
    pub body: Value,
    pub headers: reqwest::header::HeaderMap,
}

impl Reply {
    pub fn code(&self) -> &str {
        self.body["code"].as_str().unwrap_or_default()
    }
}

pub async fn reply(resp: reqwest::Response) -> Reply {
    let status = resp.status();
    let headers = resp.headers().clone();
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let bytes = resp.bytes().await.unwrap();
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Reply {
        status,
        content_type,
        body,
        headers,
    }
}

impl MerchantClient {
    /// Sends a request signed now with a fresh nonce.
    pub async fn send(&self, method: Method, path: &str, body: Option<&Value>) -> Reply {
        let bytes = body
            .map(|b| serde_json::to_vec(b).unwrap())
            .unwrap_or_default();
        self.send_raw(
            method,
            path,
            bytes,
            chrono::Utc::now().timestamp(),
            &nonce(),
        )
        .await
    }

    pub async fn send_raw(
        &self,
        method: Method,
        path: &str,
        body: Vec<u8>,
        timestamp: i64,
        nonce: &str,
    ) -> Reply {
        let auth = paymux_model::auth::authorization_header(
            &self.creds.key_id,
            self.creds.key_secret.as_bytes(),
            method.as_str(),
            path,
            timestamp,
            nonce,
            &body,
        );
        let resp = self
            .http
            .request(method, format!("{}{path}", self.base))
            .header("authorization", auth)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        reply(resp).await
    }

    pub async fn create_payment(&self, body: &Value) -> Reply {
        self.send(Method::POST, "/v1/payments", Some(body)).await
    }

    pub async fn get_payment(&self, id: &str) -> Reply {
        self.send(Method::GET, &format!("/v1/payments/{id}"), None)
            .await
    }

    pub async fn close_payment(&self, id: &str) -> Reply {
        self.send(Method::POST, &format!("/v1/payments/{id}/close"), None)
            .await
    }

    pub async fn find_by_order_no(&self, order_no: &str) -> Reply {
        self.send(
            Method::GET,
            &format!("/v1/payments?merchant_order_no={order_no}"),
            None,
        )
        .await
    }
}

pub fn payment_body(order_no: &str, amount: i64) -> Value {
    serde_json::json!({
        "merchant_order_no": order_no,
        "amount": amount,
        "currency": "CNY",
        "subject": "咖啡 ×2",
        "method": "qr_merchant",
    })
}

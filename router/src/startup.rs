//! Building and running the server: [`Application::build`] wires configuration, database, caches,
//! the write batcher and background tasks, and binds the listener; [`Application::run_until_stopped`]
//! serves until the shutdown future resolves, then drains.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderName, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use paymux_model::ErrorCode;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;
use utoipa::OpenApi;

use crate::auth::{KeyStore, NonceStore};
use crate::batcher::{BatcherConfig, WriteBatcher};
use crate::config::Config;
use crate::crypto::{SecretBox, load_or_create_key_file, parse_master_key};
use crate::db::Db;
use crate::error::ApiError;
use crate::merchants::{self, Credentials};
use crate::{AppState, payments, sweeper, telemetry};

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

pub struct Application {
    listener: TcpListener,
    addr: SocketAddr,
    router: Router,
    state: AppState,
    stop: watch::Sender<bool>,
    background: Vec<JoinHandle<()>>,
    /// Credentials of the demo merchant when this start created it.
    pub demo_merchant: Option<Credentials>,
    /// The channel sandboxes mounted under `/sandbox` (unless `sandbox = false`).
    pub sandboxes: Option<paymux_channels::sandbox::Sandboxes>,
}

/// Opens the database named by the configuration and applies migrations.
pub async fn open_database(config: &Config) -> anyhow::Result<Db> {
    if !config.is_postgres() {
        std::fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("create data directory {}", config.data_dir.display()))?;
    }
    let db = Db::connect(&config.database_url(), config.database_max_connections).await?;
    db.migrate().await?;
    Ok(db)
}

/// Where the generated admin token lives when `admin_token` is not configured.
pub fn admin_token_path(config: &Config) -> std::path::PathBuf {
    config.data_dir.join("admin.token")
}

/// The master key from configuration, or from the generated key file in the data directory —
/// checked against the database. A key that does not open the secrets already sealed there is
/// refused, and a process without a key (a command run without the servers' `master_key`) does not
/// make one up for a database that holds secrets: either would seal new secrets no server opens.
pub async fn secret_box(config: &Config, db: &Db) -> anyhow::Result<SecretBox> {
    const CHECK_AAD: &[u8] = b"paymux master key check v1";
    const CHECK: &str = "SELECT nonce, ciphertext FROM master_key_check WHERE id = 1";
    const FIRST_KEY: &str = "SELECT key_id, secret_nonce, secret_ciphertext FROM merchant_keys \
        ORDER BY created_at_us LIMIT 1";
    const INSERT: &str = "INSERT INTO master_key_check (id, nonce, ciphertext) VALUES (1, $1, $2) \
        ON CONFLICT (id) DO NOTHING";
    type Sealed = (Vec<u8>, Vec<u8>);
    let read_check = || async {
        let row: Option<Sealed> = match db {
            Db::Sqlite(p) => sqlx::query_as(CHECK).fetch_optional(p).await?,
            Db::Postgres(p) => sqlx::query_as(CHECK).fetch_optional(p).await?,
        };
        anyhow::Ok(row)
    };
    let check = read_check().await?;
    let first_key: Option<(String, Vec<u8>, Vec<u8>)> = match (&check, db) {
        (Some(_), _) => None,
        (None, Db::Sqlite(p)) => sqlx::query_as(FIRST_KEY).fetch_optional(p).await?,
        (None, Db::Postgres(p)) => sqlx::query_as(FIRST_KEY).fetch_optional(p).await?,
    };
    let key_file = config.data_dir.join("master.key");
    let (key, source) = match &config.master_key {
        Some(k) => (
            parse_master_key(k.expose()).context("master_key")?,
            "master_key".to_string(),
        ),
        None => {
            anyhow::ensure!(
                key_file.exists() || (check.is_none() && first_key.is_none()),
                "no master key: this database holds secrets sealed with one; set master_key \
                 (PAYMUX_MASTER_KEY) to the servers' key, or use their data directory ({} has no \
                 master.key)",
                config.data_dir.display()
            );
            (
                load_or_create_key_file(&key_file)?,
                key_file.display().to_string(),
            )
        }
    };
    let secrets = SecretBox::new(&key);
    let wrong = || {
        anyhow::anyhow!(
            "the master key ({source}) does not open the secrets sealed in this database; use the \
             key the servers use"
        )
    };
    match (check, first_key) {
        (Some((nonce, ciphertext)), _) => {
            secrets
                .open(&nonce, &ciphertext, CHECK_AAD)
                .map_err(|_| wrong())?;
        }
        (None, first) => {
            if let Some((key_id, nonce, ciphertext)) = first {
                secrets
                    .open(&nonce, &ciphertext, key_id.as_bytes())
                    .map_err(|_| wrong())?;
            }
            let (nonce, ciphertext) = secrets.seal(b"paymux", CHECK_AAD)?;
            match db {
                Db::Sqlite(p) => {
                    sqlx::query(INSERT)
                        .bind(&nonce)
                        .bind(&ciphertext)
                        .execute(p)
                        .await?;
                }
                Db::Postgres(p) => {
                    sqlx::query(INSERT)
                        .bind(&nonce)
                        .bind(&ciphertext)
                        .execute(p)
                        .await?;
                }
            }
            // Another process may have sealed its check first: it must be the same key.
            if let Some((nonce, ciphertext)) = read_check().await? {
                secrets
                    .open(&nonce, &ciphertext, CHECK_AAD)
                    .map_err(|_| wrong())?;
            }
        }
    }
    Ok(secrets)
}

impl Application {
    pub async fn build(config: Config) -> anyhow::Result<Application> {
        let config = Arc::new(config);
        // Static codes' EMVCo payloads carry these: refuse to start rather than fail each code.
        paymux_qrcode::emv::static_merchant_code(&paymux_qrcode::emv::StaticCode::new(
            "https://example.com/c/0",
            "check",
            config.code_city.clone(),
            config.code_mcc.clone(),
        ))
        .map_err(|e| anyhow::anyhow!("code_city / code_mcc: {e}"))?;
        let db = open_database(&config).await?;
        let secrets = Arc::new(secret_box(&config, &db).await?);
        let redis = match &config.redis_url {
            Some(url) => {
                let client = redis::Client::open(url.expose()).context("parse redis_url")?;
                Some(
                    redis::aio::ConnectionManager::new(client)
                        .await
                        .context("connect to Redis")?,
                )
            }
            None => None,
        };
        let nonces = match &redis {
            Some(conn) => NonceStore::Redis(conn.clone()),
            None => NonceStore::local(),
        };
        let cashier_limiter = crate::ratelimit::RateLimiter::new(
            config.cashier_rate_limit_per_second,
            config.cashier_rate_limit_burst,
            redis.clone(),
        );
        let limiter = crate::ratelimit::RateLimiter::new(
            config.rate_limit_per_second,
            config.rate_limit_burst,
            redis,
        );
        let demo_merchant = if config.demo_merchant && merchants::count(&db).await? == 0 {
            let creds = merchants::create_merchant(&db, &secrets, "Demo Merchant").await?;
            if config.sandbox {
                crate::routing::store::provision_sandbox(
                    &db,
                    &secrets,
                    creds.merchant_id,
                    config.sandbox_fee_rate_bps,
                )
                .await
                .map_err(|e| anyhow::anyhow!("routes of the demo merchant: {e}"))?;
            }
            Some(creds)
        } else {
            None
        };
        let admin_token = match &config.admin_token {
            Some(t) if !t.expose().trim().is_empty() => Some(t.clone()),
            _ => Some(crate::config::Secret::new(
                crate::crypto::load_or_create_token_file(&admin_token_path(&config), "adm_")?,
            )),
        };
        let batcher = Arc::new(WriteBatcher::start(
            db.clone(),
            BatcherConfig {
                items_max: config.batch_items_max.max(1),
                linger: Duration::from_micros(config.batch_linger_us),
                workers: config.batch_workers,
                queue_capacity: config.batch_queue_capacity,
            },
        ));
        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("listen on {}", config.listen))?;
        let addr = listener.local_addr()?;
        let (stop, stop_rx) = watch::channel(false);
        let sandboxes = if config.sandbox && config.sandbox_url.is_none() {
            Some(
                paymux_channels::sandbox::Sandboxes::start(config.sandbox_options())
                    .await
                    .context("start the channel sandboxes")?,
            )
        } else {
            None
        };
        let base_url = config.public_base_url(addr);
        let routes = crate::routing::Registry::load(
            db.clone(),
            secrets.clone(),
            sandboxes
                .as_ref()
                .map(|sb| crate::routing::SandboxConfigs::of(sb, &base_url))
                .map(Ok)
                .or_else(|| match (&config.sandbox_url, config.sandbox) {
                    (Some(url), true) => Some(crate::routing::SandboxConfigs::external(
                        &config.sandbox_options().data_dir,
                        url,
                    )),
                    _ => None,
                })
                .transpose()?,
            base_url,
            crate::health::BreakerConfig::of(&config),
        )
        .await
        .context("load channel accounts and routes")?;
        let state = AppState {
            config: config.clone(),
            db: db.clone(),
            batcher,
            keys: Arc::new(KeyStore::new(db.clone(), secrets.clone())),
            nonces,
            metrics: telemetry::metrics_handle(),
            routes,
            secrets: secrets.clone(),
            admin_token: admin_token.map(Arc::new),
            limiter,
            cashier_limiter,
            paylinks: Arc::new(crate::paylink::PayLinks::new(
                &secrets,
                &config.public_base_url(addr),
            )),
        };
        let schedule =
            crate::reconciliation::scheduler::parse_schedule(&config.reconcile_schedule)?;
        let mut background = vec![
            tokio::spawn(sweeper::run(state.clone(), stop_rx.clone())),
            tokio::spawn(state.routes.clone().poll(
                Duration::from_millis(config.routing_refresh_ms.max(10)),
                stop_rx.clone(),
            )),
            tokio::spawn(crate::webhooks::run(
                db.clone(),
                secrets.clone(),
                crate::webhooks::DispatcherConfig::from_config(&config),
                stop_rx.clone(),
            )),
        ];
        if let Some(at) = schedule {
            background.push(tokio::spawn(crate::reconciliation::scheduler::run(
                state.clone(),
                at,
                stop_rx,
            )));
        }
        let mut app_router = router(state.clone());
        if let Some(sb) = &sandboxes {
            app_router = app_router.nest_service("/sandbox", sb.router());
        }
        Ok(Application {
            listener,
            addr,
            router: app_router,
            sandboxes,
            state,
            stop,
            background,
            demo_merchant,
        })
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The base URL clients use (the configured public URL, or the bound address).
    pub fn base_url(&self) -> String {
        self.state.config.public_base_url(self.addr)
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until `shutdown` resolves; then stops accepting, finishes in-flight requests, drains the
    /// write batcher and stops background tasks.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        axum::serve(
            self.listener,
            self.router
                .into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(shutdown)
        .await
        .context("serve")?;
        let _ = self.stop.send(true);
        for task in self.background {
            let _ = task.await;
        }
        self.state.batcher.shutdown().await;
        self.state.db.close().await;
        Ok(())
    }
}

pub fn router(state: AppState) -> Router {
    let v1 = payments::api::router()
        .merge(crate::refunds::router())
        .merge(crate::webhooks::router())
        .merge(crate::codes::router())
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            crate::ratelimit::limit,
        ))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            crate::auth::authenticate,
        ));
    Router::new()
        .nest("/v1", v1)
        .nest("/admin/v1", crate::routing::admin::router(state.clone()))
        .nest("/ops/v1", crate::ops::router(state.clone()))
        .merge(crate::ops::console::router())
        .route("/notify/{channel_account_id}", axum::routing::post(channel_notify))
        .merge(crate::linkpay::router())
        .merge(crate::codes::public_router())
        .merge(crate::cashier::router())
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi))
        .route_layer(middleware::from_fn(record_http_metrics))
        .fallback(|| async { ApiError::not_found("route") })
        .method_not_allowed_fallback(|| async { ApiError::new(ErrorCode::MethodNotAllowed, "method not allowed") })
        .layer(
            TraceLayer::new_for_http().make_span_with(|req: &Request| {
                let request_id = req.headers().get(REQUEST_ID).and_then(|v| v.to_str().ok()).unwrap_or("-");
                tracing::info_span!("request", method = %req.method(), path = %req.uri().path(), request_id = %request_id)
            }),
        )
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
        .with_state(state)
}

async fn readyz(State(state): State<AppState>) -> Response {
    if state.db.ping().await {
        (
            StatusCode::OK,
            Json(serde_json::json!({"status": "ready", "database": state.db.backend()})),
        )
            .into_response()
    } else {
        ApiError::new(ErrorCode::Unavailable, "database unreachable").into_response()
    }
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    // Every account's breaker is shown, also of accounts created moments ago on another node.
    if let Err(e) = state.routes.refresh_if_changed().await {
        tracing::warn!(error = %e, "refreshing the routing registry");
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        state.metrics.render()
            + &crate::health::render_states(state.routes.breakers().iter().map(|b| &**b)),
    )
}

async fn openapi() -> impl IntoResponse {
    Json(crate::openapi::ApiDoc::openapi())
}

async fn record_http_metrics(req: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".into());
    let method = req.method().as_str().to_owned();
    let response = next.run(req).await;
    let status = response.status().as_u16().to_string();
    metrics::counter!("paymux_http_requests_total", "method" => method.clone(), "route" => route.clone(), "status" => status)
        .increment(1);
    metrics::histogram!("paymux_http_request_duration_seconds", "method" => method, "route" => route)
        .record(started.elapsed().as_secs_f64());
    response
}

/// `POST /notify/{channel_account_id}`: a channel's asynchronous notification (no merchant
/// signature: the channel's own signature is what is checked).
async fn channel_notify(
    State(state): State<AppState>,
    axum::extract::Path(account): axum::extract::Path<String>,
    headers: axum::http::HeaderMap,
    body: bytes::Bytes,
) -> Response {
    let Ok(account) = account.parse::<paymux_model::ChannelAccountId>() else {
        return ApiError::not_found("channel account").into_response();
    };
    let reply = crate::orchestrate::channel_notification(&state, account, &headers, &body).await;
    (
        StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        [(axum::http::header::CONTENT_TYPE, reply.content_type)],
        reply.body,
    )
        .into_response()
}

//! Routing: each merchant's channel accounts and its routes per (wallet, method).
//!
//! - [`store`]: the tables (`channel_accounts` with credentials encrypted under the master key,
//!   `routes` + `route_targets`, `merchants.fee_rate_bps`, `routing_version`) and their validation.
//! - [`admin`]: the admin API under `/admin/v1` (bearer admin token).
//! - [`Registry`] (this module): the live channel accounts of every merchant — an adapter and a
//!   circuit breaker per account — and the routes, loaded from the database at start. Every change
//!   bumps `routing_version`; each node polls it every `routing_refresh_ms` and reloads when it
//!   moved (and checks it at once when a lookup misses), so a change made on one node is seen by
//!   all within that interval. An account's breaker survives reloads.
//!
//! A new payment's account is chosen among the targets of the merchant's route for its (wallet,
//! method) — `sound_wave` falls back to the `code_scan` route: accounts that are enabled and can
//! serve the wallet and method, ordered by the route's rule ([`Rule`]); then the first whose
//! breaker admits. The others stay behind it for fail-over ([`Candidates::next_admitted`]).
//! Disabled accounts take no new payments but keep serving their payments' queries, refunds,
//! closes and notifications (they are found by id).

pub mod admin;
pub mod store;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use paymux_channels::Channel;
use paymux_model::{ChannelAccountId, ChannelKind, ErrorCode, MerchantId, PayMethod, WalletBrand};
use rand::Rng;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::crypto::SecretBox;
use crate::db::Db;
use crate::error::{ApiError, ApiResult};
use crate::health::{Breaker, BreakerConfig};
use crate::orchestrate::Route;

/// How a route orders its targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Rule {
    /// Ascending `priority`.
    Priority,
    /// One target drawn at random in proportion to `weight` first, the others after it (by
    /// priority) as fail-over.
    Weighted,
    /// Ascending `cost_rate_bps` of the accounts, ties by priority.
    LowestCost,
}

impl Rule {
    pub fn as_str(self) -> &'static str {
        match self {
            Rule::Priority => "priority",
            Rule::Weighted => "weighted",
            Rule::LowestCost => "lowest_cost",
        }
    }
}

impl std::str::FromStr for Rule {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "priority" => Ok(Rule::Priority),
            "weighted" => Ok(Rule::Weighted),
            "lowest_cost" => Ok(Rule::LowestCost),
            other => Err(format!(
                "unknown rule {other:?} (priority, weighted, lowest_cost)"
            )),
        }
    }
}

/// The channel kinds paymux has adapters for.
pub const SUPPORTED_KINDS: &[ChannelKind] = &[
    ChannelKind::WechatV3,
    ChannelKind::Alipay,
    ChannelKind::UnionpayQr,
];

/// The wallet a channel kind serves, when paymux has an adapter for it.
pub fn wallet_of_kind(kind: ChannelKind) -> Option<WalletBrand> {
    match kind {
        ChannelKind::WechatV3 => Some(WalletBrand::Wechat),
        ChannelKind::Alipay => Some(WalletBrand::Alipay),
        ChannelKind::UnionpayQr => Some(WalletBrand::Unionpay),
        _ => None,
    }
}

/// The methods an adapter of this kind serves (its capabilities; a sound-wave code is a payment
/// code, charged like a scanned one).
pub fn methods_of_kind(kind: ChannelKind) -> &'static [PayMethod] {
    use PayMethod::*;
    match kind {
        ChannelKind::WechatV3 | ChannelKind::Alipay => {
            &[QrMerchant, QrStatic, CodeScan, SoundWave, Jsapi]
        }
        ChannelKind::UnionpayQr => &[QrMerchant, QrStatic, CodeScan, SoundWave],
        _ => &[],
    }
}

pub fn kind_serves(kind: ChannelKind, wallet: WalletBrand, method: PayMethod) -> bool {
    wallet_of_kind(kind) == Some(wallet) && methods_of_kind(kind).contains(&method)
}

/// The client configurations of this server's sandboxes (base URLs under `/sandbox`), from which
/// accounts with `{"sandbox": true}` credentials are built.
#[derive(Clone)]
pub struct SandboxConfigs {
    pub wechat: paymux_channels::wechat::WechatConfig,
    pub alipay: paymux_channels::alipay::AlipayConfig,
    pub unionpay: paymux_channels::unionpay::UnionPayConfig,
}

impl SandboxConfigs {
    pub fn of(sb: &paymux_channels::sandbox::Sandboxes, base_url: &str) -> Self {
        Self {
            wechat: sb
                .wechat
                .account()
                .client_config(&format!("{base_url}/sandbox/wechat"), None),
            alipay: sb
                .alipay
                .account()
                .client_config(&format!("{base_url}/sandbox/alipay/gateway.do"), None),
            unionpay: sb
                .unionpay
                .account()
                .client_config(&format!("{base_url}/sandbox/unionpay"), None),
        }
    }
}

impl SandboxConfigs {
    /// A standalone `paymux sandbox` at `sandbox_url` (its channels under `/wechat`, `/alipay`,
    /// `/unionpay`), signing with the sandbox accounts it keeps in `dir` (shared data directory).
    pub fn external(dir: &std::path::Path, sandbox_url: &str) -> anyhow::Result<Self> {
        use paymux_channels::{alipay, unionpay, wechat};
        let url = sandbox_url.trim_end_matches('/');
        let read = |e: std::io::Error| anyhow::anyhow!("sandbox keys in {}: {e}", dir.display());
        Ok(Self {
            wechat: wechat::sandbox::SandboxAccount::load_or_create(dir)
                .map_err(read)?
                .client_config(&format!("{url}/wechat"), None),
            alipay: alipay::sandbox::SandboxAccount::load_or_create(dir)
                .map_err(read)?
                .client_config(&format!("{url}/alipay/gateway.do"), None),
            unionpay: unionpay::sandbox::SandboxAccount::load_or_create(dir)
                .map_err(read)?
                .client_config(&format!("{url}/unionpay"), None),
        })
    }
}

/// Credentials that name this server's sandbox: `{"sandbox": true}`, optionally with the channel
/// base URL to reach it at (e.g. a `paymux sandbox` sharing the data directory).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SandboxCredentials {
    pub sandbox: bool,
    #[serde(default)]
    pub base_url: Option<String>,
}

fn is_sandbox(credentials: &serde_json::Value) -> bool {
    credentials.get("sandbox").is_some()
}

/// The adapter of an account: its kind's client configuration (or this server's sandbox), with
/// notifications sent to `<base_url>/notify/<account id>`.
pub fn build_channel(
    kind: ChannelKind,
    credentials: &serde_json::Value,
    id: Uuid,
    base_url: &str,
    sandbox: Option<&SandboxConfigs>,
) -> Result<Arc<dyn Channel>, String> {
    let notify = Some(format!("{base_url}/notify/{}", ChannelAccountId::from(id)));
    if is_sandbox(credentials) {
        let sc: SandboxCredentials = serde_json::from_value(credentials.clone())
            .map_err(|e| format!("sandbox credentials: {}", safe_serde_message(&e)))?;
        if !sc.sandbox {
            return Err("`sandbox` must be true when given".into());
        }
        let sb = sandbox.ok_or("the channel sandboxes are not mounted on this server")?;
        return match kind {
            ChannelKind::WechatV3 => {
                let mut cfg = sb.wechat.clone();
                cfg.notify_url = notify;
                if let Some(b) = sc.base_url {
                    cfg.base_url = b;
                }
                paymux_channels::wechat::WechatPay::new(cfg)
                    .map(|a| Arc::new(a) as Arc<dyn Channel>)
                    .map_err(|e| e.to_string())
            }
            ChannelKind::Alipay => {
                let mut cfg = sb.alipay.clone();
                cfg.notify_url = notify;
                if let Some(b) = sc.base_url {
                    cfg.base_url = b;
                }
                paymux_channels::alipay::Alipay::new(cfg)
                    .map(|a| Arc::new(a) as Arc<dyn Channel>)
                    .map_err(|e| e.to_string())
            }
            ChannelKind::UnionpayQr => {
                let mut cfg = sb.unionpay.clone();
                cfg.notify_url = notify;
                if let Some(b) = sc.base_url {
                    cfg.base_url = b;
                }
                paymux_channels::unionpay::UnionPay::new(cfg)
                    .map(|a| Arc::new(a) as Arc<dyn Channel>)
                    .map_err(|e| e.to_string())
            }
            other => Err(format!("no adapter for channel kind {other}")),
        };
    }
    fn parse<T: serde::de::DeserializeOwned>(v: &serde_json::Value) -> Result<T, String> {
        serde_json::from_value(v.clone()).map_err(|e| safe_serde_message(&e))
    }
    match kind {
        ChannelKind::WechatV3 => {
            let mut cfg: paymux_channels::wechat::WechatConfig = parse(credentials)?;
            cfg.notify_url = notify;
            paymux_channels::wechat::WechatPay::new(cfg)
                .map(|a| Arc::new(a) as Arc<dyn Channel>)
                .map_err(|e| e.to_string())
        }
        ChannelKind::Alipay => {
            let mut cfg: paymux_channels::alipay::AlipayConfig = parse(credentials)?;
            cfg.notify_url = notify;
            paymux_channels::alipay::Alipay::new(cfg)
                .map(|a| Arc::new(a) as Arc<dyn Channel>)
                .map_err(|e| e.to_string())
        }
        ChannelKind::UnionpayQr => {
            let mut cfg: paymux_channels::unionpay::UnionPayConfig = parse(credentials)?;
            cfg.notify_url = notify;
            paymux_channels::unionpay::UnionPay::new(cfg)
                .map(|a| Arc::new(a) as Arc<dyn Channel>)
                .map_err(|e| e.to_string())
        }
        other => Err(format!("no adapter for channel kind {other}")),
    }
}

/// A serde error without the offending value (credentials are secrets): only missing and unknown
/// field names are repeated.
fn safe_serde_message(e: &serde_json::Error) -> String {
    let m = e.to_string();
    if m.starts_with("missing field") || m.starts_with("unknown field") {
        m.split(", expected").next().unwrap_or(&m).to_string()
    } else {
        "not a valid configuration for this channel kind".into()
    }
}

/// Interned names for metric labels (one per distinct account name, kept for the process's life).
fn intern(name: &str) -> &'static str {
    static NAMES: Mutex<Option<std::collections::HashSet<&'static str>>> = Mutex::new(None);
    let mut guard = NAMES.lock().unwrap_or_else(|e| e.into_inner());
    let set = guard.get_or_insert_with(Default::default);
    if let Some(s) = set.get(name) {
        return s;
    }
    let leaked: &'static str = Box::leak(name.to_string().into_boxed_str());
    set.insert(leaked);
    leaked
}

#[derive(Debug, Clone, Copy)]
struct Target {
    account: Uuid,
    priority: u32,
    weight: u32,
}

#[derive(Debug, Clone)]
struct RouteEntry {
    rule: Rule,
    targets: Vec<Target>,
}

#[derive(Default)]
struct Snapshot {
    version: i64,
    accounts: HashMap<Uuid, Arc<Route>>,
    routes: HashMap<(Uuid, WalletBrand, PayMethod), RouteEntry>,
    fee_rates: HashMap<Uuid, u32>,
}

struct Inner {
    db: Option<Db>,
    secrets: Option<Arc<SecretBox>>,
    sandbox: Option<SandboxConfigs>,
    base_url: String,
    breaker_cfg: BreakerConfig,
    snapshot: RwLock<Arc<Snapshot>>,
    reload: tokio::sync::Mutex<()>,
    breakers: Mutex<HashMap<Uuid, Arc<Breaker>>>,
}

/// The live channel accounts and routes of every merchant (see the module documentation).
#[derive(Clone)]
pub struct Registry(Arc<Inner>);

impl Default for Registry {
    /// An empty registry without a database (no routes).
    fn default() -> Self {
        Self(Arc::new(Inner {
            db: None,
            secrets: None,
            sandbox: None,
            base_url: String::new(),
            breaker_cfg: BreakerConfig::default(),
            snapshot: RwLock::new(Arc::new(Snapshot::default())),
            reload: tokio::sync::Mutex::new(()),
            breakers: Mutex::new(HashMap::new()),
        }))
    }
}

/// The accounts a new payment may go to, best first.
pub struct Candidates {
    pub first: Arc<Route>,
    rest: std::vec::IntoIter<Arc<Route>>,
}

impl Candidates {
    /// The next account whose breaker admits a new payment (fail-over).
    pub fn next_admitted(&mut self) -> Option<Arc<Route>> {
        self.rest.by_ref().find(|r| r.breaker.admit().is_ok())
    }
}

impl Registry {
    /// Loads every account and route from the database.
    pub async fn load(
        db: Db,
        secrets: Arc<SecretBox>,
        sandbox: Option<SandboxConfigs>,
        base_url: String,
        breaker_cfg: BreakerConfig,
    ) -> anyhow::Result<Self> {
        let r = Self(Arc::new(Inner {
            db: Some(db),
            secrets: Some(secrets),
            sandbox,
            base_url,
            breaker_cfg,
            snapshot: RwLock::new(Arc::new(Snapshot {
                version: -1,
                ..Snapshot::default()
            })),
            reload: tokio::sync::Mutex::new(()),
            breakers: Mutex::new(HashMap::new()),
        }));
        r.reload().await?;
        Ok(r)
    }

    fn snapshot(&self) -> Arc<Snapshot> {
        self.0
            .snapshot
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Rebuilds the snapshot from the database (accounts whose row did not change keep their
    /// adapter; every account keeps its breaker).
    pub async fn reload(&self) -> anyhow::Result<()> {
        let (Some(db), Some(secrets)) = (&self.0.db, &self.0.secrets) else {
            return Ok(());
        };
        let _one_at_a_time = self.0.reload.lock().await;
        let data = store::load_all(db)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let old = self.snapshot();
        let mut accounts = HashMap::with_capacity(data.accounts.len());
        for a in data.accounts {
            if let Some(existing) = old.accounts.get(&a.id)
                && existing.updated_at_us == a.updated_at_us
            {
                accounts.insert(a.id, existing.clone());
                continue;
            }
            match self.build_route(secrets, &a) {
                Ok(route) => {
                    accounts.insert(a.id, Arc::new(route));
                }
                Err(e) => {
                    tracing::error!(channel_account_id = %a.id, error = %e, "channel account cannot be built; it takes no payments")
                }
            }
        }
        let mut routes = HashMap::with_capacity(data.routes.len());
        for r in data.routes {
            routes.insert(
                (r.merchant_id, r.wallet, r.method),
                RouteEntry {
                    rule: r.rule,
                    targets: r
                        .targets
                        .iter()
                        .map(|t| Target {
                            account: t.channel_account_id,
                            priority: t.priority,
                            weight: t.weight,
                        })
                        .collect(),
                },
            );
        }
        let snapshot = Snapshot {
            version: data.version,
            accounts,
            routes,
            fee_rates: data.fee_rates,
        };
        *self.0.snapshot.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(snapshot);
        Ok(())
    }

    fn build_route(&self, secrets: &SecretBox, a: &store::AccountRow) -> anyhow::Result<Route> {
        let kind: ChannelKind = a.kind.parse().map_err(|e| anyhow::anyhow!("kind: {e}"))?;
        let credentials = store::open_credentials(secrets, a)?;
        let channel = build_channel(
            kind,
            &credentials,
            a.id,
            &self.0.base_url,
            self.0.sandbox.as_ref(),
        )
        .map_err(|e| anyhow::anyhow!("{e}"))?;
        let name = intern(&a.name);
        let bill_source = if credentials.get("sandbox").and_then(|v| v.as_bool()) == Some(true) {
            let base = credentials
                .get("base_url")
                .and_then(|v| v.as_str())
                .unwrap_or("");
            format!("sandbox:{kind}:{base}")
        } else {
            format!("account:{}", a.id)
        };
        let breaker = self
            .0
            .breakers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(a.id)
            .or_insert_with(|| {
                Arc::new(Breaker::with_account(
                    name,
                    a.id,
                    self.0.breaker_cfg.clone(),
                ))
            })
            .clone();
        Ok(Route {
            id: ChannelAccountId::from(a.id),
            merchant_id: a.merchant_id,
            kind,
            name,
            channel,
            cost_rate_bps: a.cost_rate_bps,
            enabled: a.enabled,
            updated_at_us: a.updated_at_us,
            breaker,
            bill_source,
        })
    }

    /// Reloads when the database's routing version moved; returns whether it did.
    pub async fn refresh_if_changed(&self) -> anyhow::Result<bool> {
        let Some(db) = &self.0.db else {
            return Ok(false);
        };
        let v = store::version(db).await?;
        if v == self.snapshot().version {
            return Ok(false);
        }
        self.reload().await?;
        Ok(true)
    }

    /// Polls the routing version every `interval` until `stop`.
    pub async fn poll(self, interval: Duration, mut stop: tokio::sync::watch::Receiver<bool>) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = stop.changed() => return,
            }
            if *stop.borrow() {
                return;
            }
            if let Err(e) = self.refresh_if_changed().await {
                tracing::warn!(error = %e, "refreshing the routing registry");
            }
        }
    }

    /// Every channel account as currently loaded (enabled or not), by id.
    pub fn all(&self) -> Vec<Arc<Route>> {
        let mut all: Vec<Arc<Route>> = self.snapshot().accounts.values().cloned().collect();
        all.sort_by_key(|r| r.id);
        all
    }

    /// The account with this id as currently loaded.
    pub fn by_id(&self, id: ChannelAccountId) -> Option<Arc<Route>> {
        self.snapshot().accounts.get(&Uuid::from(id)).cloned()
    }

    /// The account with this id, reloading once if it is not known yet (created on another node).
    /// Disabled accounts are found too: they keep serving their payments.
    pub async fn account(&self, id: ChannelAccountId) -> Option<Arc<Route>> {
        if let Some(r) = self.by_id(id) {
            return Some(r);
        }
        if let Err(e) = self.refresh_if_changed().await {
            tracing::warn!(error = %e, "refreshing the routing registry");
        }
        self.by_id(id)
    }

    /// The merchant's fee rate, or `default` (configuration) when it has none of its own.
    pub fn fee_rate_bps(&self, merchant: Uuid, default: u32) -> u32 {
        self.snapshot()
            .fee_rates
            .get(&merchant)
            .copied()
            .unwrap_or(default)
    }

    /// Every account's breaker (for `/metrics`).
    pub fn breakers(&self) -> Vec<Arc<Breaker>> {
        self.0
            .breakers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// The accounts a new payment of this merchant, wallet and method may go to, in the order of
    /// the route's rule; the first is admitted by its breaker. `422 no_route` when the merchant
    /// has no route or no enabled account able to take it; `503 channel_unavailable` with
    /// `Retry-After` when every one of them has its breaker open. Nothing is written either way.
    pub async fn candidates(
        &self,
        merchant: MerchantId,
        wallet: WalletBrand,
        method: PayMethod,
    ) -> ApiResult<Candidates> {
        let m = Uuid::from(merchant);
        let mut ordered = self.ordered(m, wallet, method);
        if ordered.is_none() {
            if let Err(e) = self.refresh_if_changed().await {
                tracing::warn!(error = %e, "refreshing the routing registry");
            }
            ordered = self.ordered(m, wallet, method);
        }
        let Some(ordered) = ordered.filter(|o| !o.is_empty()) else {
            return Err(ApiError::new(
                ErrorCode::NoRoute,
                format!(
                    "no enabled channel account routes {wallet} {method} payments for this merchant"
                ),
            ));
        };
        let mut wait: Option<Duration> = None;
        let mut iter = ordered.into_iter();
        for r in iter.by_ref() {
            match r.breaker.admit() {
                Ok(()) => {
                    return Ok(Candidates {
                        first: r,
                        rest: iter.collect::<Vec<_>>().into_iter(),
                    });
                }
                Err(w) => wait = Some(wait.map_or(w, |x| x.min(w))),
            }
        }
        let secs = crate::ratelimit::retry_after_seconds(wait.unwrap_or_default());
        Err(ApiError::new(
            ErrorCode::ChannelUnavailable,
            format!(
                "every {wallet} channel account of this merchant is failing; new payments are refused for now, retry after {secs} s"
            ),
        )
        .retry_after(secs))
    }

    /// The enabled accounts able to take this merchant's `wallet` `method` payments, in the order
    /// of the route's rule, whatever their breakers say — and without taking a half-open breaker's
    /// trial slot, which only a payment about to reach the channel may ([`Self::candidates`]).
    /// For pages that list what can pay.
    pub async fn listed(
        &self,
        merchant: Uuid,
        wallet: WalletBrand,
        method: PayMethod,
    ) -> Vec<Arc<Route>> {
        let mut ordered = self.ordered(merchant, wallet, method);
        if ordered.is_none() {
            if let Err(e) = self.refresh_if_changed().await {
                tracing::warn!(error = %e, "refreshing the routing registry");
            }
            ordered = self.ordered(merchant, wallet, method);
        }
        ordered.unwrap_or_default()
    }

    /// The enabled, capable accounts of the route, ordered by its rule; `None` without a route.
    /// The wallets this merchant can be paid with by `method` (an enabled account routes them), in
    /// display order — what code plates and payment pages list. Up to date with the database.
    pub async fn wallets(&self, merchant: Uuid, method: PayMethod) -> Vec<WalletBrand> {
        if let Err(e) = self.refresh_if_changed().await {
            tracing::warn!(error = %e, "refreshing the routing registry");
        }
        [
            WalletBrand::Wechat,
            WalletBrand::Alipay,
            WalletBrand::Unionpay,
        ]
        .into_iter()
        .filter(|w| {
            self.ordered(merchant, *w, method)
                .is_some_and(|o| !o.is_empty())
        })
        .collect()
    }

    fn ordered(
        &self,
        merchant: Uuid,
        wallet: WalletBrand,
        method: PayMethod,
    ) -> Option<Vec<Arc<Route>>> {
        let snap = self.snapshot();
        let entry = snap.routes.get(&(merchant, wallet, method)).or_else(|| {
            (method == PayMethod::SoundWave)
                .then(|| snap.routes.get(&(merchant, wallet, PayMethod::CodeScan)))
                .flatten()
        })?;
        let mut usable: Vec<(Target, Arc<Route>)> = entry
            .targets
            .iter()
            .filter_map(|t| {
                let r = snap.accounts.get(&t.account)?;
                (r.enabled && r.merchant_id == merchant && kind_serves(r.kind, wallet, method))
                    .then(|| (*t, r.clone()))
            })
            .collect();
        order(entry.rule, &mut usable, &mut rand::thread_rng());
        Some(usable.into_iter().map(|(_, r)| r).collect())
    }
}

/// Orders targets by the rule.
fn order<T>(rule: Rule, items: &mut Vec<(Target, T)>, rng: &mut impl Rng)
where
    T: HasCost,
{
    match rule {
        Rule::Priority => items.sort_by_key(|(t, _)| t.priority),
        Rule::LowestCost => items.sort_by_key(|(t, r)| (r.cost(), t.priority)),
        Rule::Weighted => {
            items.sort_by_key(|(t, _)| t.priority);
            let total: u64 = items.iter().map(|(t, _)| u64::from(t.weight)).sum();
            if total == 0 {
                return;
            }
            let mut pick = rng.gen_range(0..total);
            let chosen = items
                .iter()
                .position(|(t, _)| {
                    let w = u64::from(t.weight);
                    if pick < w {
                        true
                    } else {
                        pick -= w;
                        false
                    }
                })
                .unwrap_or(0);
            let first = items.remove(chosen);
            items.insert(0, first);
        }
    }
}

trait HasCost {
    fn cost(&self) -> u32;
}

impl HasCost for Arc<Route> {
    fn cost(&self) -> u32 {
        self.cost_rate_bps
    }
}

/// Whether a code payment the channel declined may go to the route's next account: only when
/// the money certainly did not move and the decline is about the account, not the payer (whose
/// code, balance or limits would be declined anywhere). Never after an unknown outcome.
pub fn code_decline_fails_over(code: &str) -> bool {
    matches!(
        code,
        // The request never reached the channel (connection refused).
        "CHANNEL_UNREACHABLE"
            // WeChat Pay: the merchant account may not take this payment.
            | "NO_AUTH"
            | "APPID_MCHID_NOT_MATCH"
            | "MCH_NOT_EXISTS"
            | "APPID_NOT_EXIST"
            // Alipay: the app or seller may not take it.
            | "ACQ.ACCESS_FORBIDDEN"
            | "ACQ.SELLER_BEEN_BLOCKED"
            | "isv.invalid-app-id"
    )
}

/// Whether a C2B order creation that failed may go to the next account: the channel was not
/// reached, or it explicitly declined (no order exists, so nothing can be paid).
pub fn create_error_fails_over(e: &paymux_channels::ChannelError) -> bool {
    use paymux_channels::ChannelError::*;
    matches!(e, Unreachable(_) | Rejected { .. })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    struct Cost(u32);
    impl HasCost for Cost {
        fn cost(&self) -> u32 {
            self.0
        }
    }

    fn t(account: u128, priority: u32, weight: u32) -> Target {
        Target {
            account: Uuid::from_u128(account),
            priority,
            weight,
        }
    }

    fn ids(items: &[(Target, Cost)]) -> Vec<u128> {
        items.iter().map(|(t, _)| t.account.as_u128()).collect()
    }

    #[test]
    fn priority_and_lowest_cost() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let mut items = vec![
            (t(1, 5, 0), Cost(60)),
            (t(2, 1, 0), Cost(30)),
            (t(3, 2, 0), Cost(30)),
        ];
        order(Rule::Priority, &mut items, &mut rng);
        assert_eq!(ids(&items), [2, 3, 1]);
        let mut items = vec![
            (t(1, 0, 0), Cost(60)),
            (t(2, 3, 0), Cost(30)),
            (t(3, 2, 0), Cost(30)),
        ];
        order(Rule::LowestCost, &mut items, &mut rng);
        assert_eq!(ids(&items), [3, 2, 1]);
    }

    #[test]
    fn weighted_draws_in_proportion_and_keeps_the_rest_as_fail_over() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut firsts = HashMap::new();
        for _ in 0..1000 {
            let mut items = vec![
                (t(1, 0, 3), Cost(0)),
                (t(2, 1, 1), Cost(0)),
                (t(3, 2, 0), Cost(0)),
            ];
            order(Rule::Weighted, &mut items, &mut rng);
            let got = ids(&items);
            // The rest follow as fail-over targets, by priority (here: by id).
            let mut rest = vec![1, 2, 3];
            rest.retain(|id| *id != got[0]);
            assert_eq!(got[1..], rest[..], "{got:?}");
            *firsts.entry(got[0]).or_insert(0) += 1;
        }
        assert!(!firsts.contains_key(&3), "weight 0 is never drawn first");
        let a = firsts[&1];
        assert!(
            (650..850).contains(&a),
            "3:1 draws about 750 of 1000, got {a}"
        );
    }

    #[test]
    fn fail_over_only_when_the_money_certainly_did_not_move() {
        // The account may not take the payment: another account may.
        for code in [
            "CHANNEL_UNREACHABLE",
            "NO_AUTH",
            "APPID_MCHID_NOT_MATCH",
            "MCH_NOT_EXISTS",
            "APPID_NOT_EXIST",
            "ACQ.ACCESS_FORBIDDEN",
            "ACQ.SELLER_BEEN_BLOCKED",
            "isv.invalid-app-id",
        ] {
            assert!(code_decline_fails_over(code), "{code}");
        }
        // The payer's code, balance or limits: declined anywhere; or nobody knows what happened.
        for code in [
            "NOTENOUGH",
            "ACQ.BUYER_BALANCE_NOT_ENOUGH",
            "AUTHCODEEXPIRE",
            "USERPAYING",
            "SYSTEMERROR",
            "",
        ] {
            assert!(!code_decline_fails_over(code), "{code}");
        }
        use paymux_channels::ChannelError;
        assert!(create_error_fails_over(&ChannelError::Unreachable(
            "refused".into()
        )));
        assert!(create_error_fails_over(&ChannelError::Rejected {
            code: "NO_AUTH".into(),
            message: "no".into(),
        }));
        assert!(!create_error_fails_over(&ChannelError::Unknown(
            "timeout".into()
        )));
        assert!(!create_error_fails_over(&ChannelError::Signature(
            "bad".into()
        )));
    }
}

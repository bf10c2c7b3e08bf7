//! Paying a payment link `/p/{token}` (a `qr_merchant` payment made without a `wallet`) inside the
//! wallet app that opened it, through the same in-app flow as the static codes ([`crate::cashier`]).
//!
//! 1. `GET /p/{token}` shows the merchant, the subject, the amount (fixed by the payment) and its
//!    status. In a wallet the merchant is paid through, it offers a pay button; in any other app
//!    (an unknown browser, QQ, our own wallet, which has no channel yet) it lists the apps that can
//!    pay. A paid payment says so (200), a closed, failed or expired one gets a 410 page; a tampered
//!    or unknown token a 404 page. Nothing is ever written here.
//! 2. `POST /p/{token}/pay` chooses the channel account — the account already attached to the
//!    payment if it has one (a payment has one account: opened again in another wallet it is
//!    refused with a 409 page), else the merchant's route for the detected wallet: its `qr_merchant`
//!    route (the payment's own method), or its `qr_static` route when it has no `qr_merchant`
//!    route whose account can run the in-app flow. It signs a `state` binding the payment, the
//!    account and the amount for 10 minutes and sends the payer to the wallet's authorisation step
//!    (WeChat OAuth, Alipay `auth_base`, UnionPay `userAuth`). Nothing is written.
//! 3. `GET /p/{token}/auth` (back from the wallet) verifies the state, learns the payer's id,
//!    attaches the account to the payment FIRST — a compare-and-set that only succeeds while the
//!    payment is `created` and has no other account, so no second channel order is created for
//!    another account — then creates the channel's in-app order under the payment's own
//!    `out_trade_no` (a second open in the same wallet gets the same channel order back) and
//!    renders the pay page (the wallet's bridge, or the sandbox's stand-in page).
//! 4. `GET /p/{token}/r` shows the result and polls `GET /p/{token}/r/status` until it is final.
//!
//! Pages follow the cashier's: Chinese unless the browser asks for English first, a narrow
//! screen, nothing loaded from elsewhere, the large-text mode. The payment settles through the
//! channel's notification like every C2B payment (status and ledger entry in one transaction).

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use paymux_model::{
    ChannelAccountId, MerchantId, PayMethod, PaymentId, PaymentStatus, WalletBrand,
};
use uuid::Uuid;

use crate::AppState;
use crate::batcher::{WriteOp, WriteOutcome};
use crate::cashier::{
    AuthQuery, CashierState, PageQuery, apps_list, cashier_page, detected_wallet, html,
    invalid_link, message, t, unavailable, wallet_label,
};
use crate::codes::merchant_name;
use crate::db::now_us;
use crate::orchestrate::Route;
use crate::paylink::{Lang, PayLinks, escape_html, yuan};
use crate::payments::model::PaymentRow;
use crate::routing::wallet_of_kind;

/// The payment link's public routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/p/{token}", get(show))
        .route("/p/{token}/pay", post(start))
        .route("/p/{token}/auth", get(authorized))
        .route("/p/{token}/r", get(result_page))
        .route("/p/{token}/r/status", get(status))
}

/// How long the payer has between the pay button and coming back from the wallet.
const STATE_TTL_SECS: i64 = 600;
/// The purpose the link's states are signed for (separate from the static codes' states).
const STATE_PURPOSE: &str = "paymux payment link oauth state v1";

fn not_found(lang: Lang, large: bool) -> Response {
    message(
        StatusCode::NOT_FOUND,
        lang,
        large,
        "error",
        (
            "链接无效",
            "此付款链接无效或已被篡改，请向商户索取新的付款码。",
        ),
        (
            "Invalid link",
            "This payment link is not valid or has been altered. Ask the merchant for a new code.",
        ),
    )
}

fn other_app(lang: Lang, large: bool, w: WalletBrand) -> Response {
    let (zh, en) = (
        format!(
            "此付款已在{}中发起，请在{}中完成付款。未创建新的付款。",
            wallet_label(Lang::Zh, w),
            wallet_label(Lang::Zh, w)
        ),
        format!(
            "This payment is already being paid in {}; please finish it there. Nothing new was created.",
            wallet_label(Lang::En, w)
        ),
    );
    message(
        StatusCode::CONFLICT,
        lang,
        large,
        "other-app",
        ("付款进行中", zh.as_str()),
        ("Payment in progress", en.as_str()),
    )
}

/// The payment behind a genuine token, if it is a link's payment; `Err` is the page to show.
async fn link_payment(
    state: &AppState,
    token: &str,
    lang: Lang,
    large: bool,
) -> Result<PaymentRow, Response> {
    let Some(id) = state.paylinks.verify(token) else {
        return Err(not_found(lang, large));
    };
    match crate::payments::repo::get_any(&state.db, id).await {
        Ok(Some(row)) if PayLinks::applies(&row) => Ok(row),
        Ok(_) => Err(not_found(lang, large)),
        Err(e) => {
            tracing::error!(error = %e, "loading a payment for its link");
            Err(unavailable(lang, large))
        }
    }
}

fn expired(p: &PaymentRow) -> bool {
    p.status() == PaymentStatus::Created && p.expires_at_us <= now_us()
}

/// Whether a link of this merchant can be paid in `wallet` (an account of the route that
/// [`route_for`] would pick can run the in-app flow); asks no breaker for a trial.
async fn payable_in(state: &AppState, merchant: Uuid, wallet: WalletBrand) -> bool {
    for method in [PayMethod::QrMerchant, PayMethod::QrStatic] {
        let routes = state.routes.listed(merchant, wallet, method).await;
        if routes
            .first()
            .is_some_and(|r| r.channel.payer_auth_url("https://x/", "x").is_some())
        {
            return true;
        }
    }
    false
}

/// The account that takes a link's payment in `wallet`: the merchant's `qr_merchant` route, else
/// its `qr_static` route — the first whose account can run the in-app flow. Admitted by its
/// breaker: only for a payment about to reach the channel.
async fn route_for(state: &AppState, merchant: Uuid, wallet: WalletBrand) -> Option<Arc<Route>> {
    for method in [PayMethod::QrMerchant, PayMethod::QrStatic] {
        if let Ok(c) = state
            .routes
            .candidates(MerchantId::from(merchant), wallet, method)
            .await
            && c.first.channel.payer_auth_url("https://x/", "x").is_some()
        {
            return Some(c.first);
        }
    }
    None
}

/// The wallets a link of this merchant can be paid with.
async fn payable_wallets(state: &AppState, merchant: Uuid) -> Vec<WalletBrand> {
    let mut out = Vec::new();
    for w in [
        WalletBrand::Wechat,
        WalletBrand::Alipay,
        WalletBrand::Unionpay,
    ] {
        if payable_in(state, merchant, w).await {
            out.push(w);
        }
    }
    out
}

/// The wallet of the account already attached to a payment, if any.
async fn attached_wallet(state: &AppState, p: &PaymentRow) -> Option<(Arc<Route>, WalletBrand)> {
    let route = state
        .routes
        .account(ChannelAccountId::from(p.channel_account_id?))
        .await?;
    let w = wallet_of_kind(route.kind)?;
    Some((route, w))
}

fn header_block(lang: Lang, name: &str, p: &PaymentRow, status_text: &str) -> String {
    format!(
        "<h1>{} {}</h1><p class=\"muted\" id=\"subject\">{}</p>\
<p class=\"amount\" id=\"amount\">¥{}</p>\
<p><span class=\"status {code}\" id=\"status\" data-status=\"{code}\">{status_text}</span></p>",
        t(lang, "付款给", "Pay to"),
        escape_html(name),
        escape_html(&p.subject),
        yuan(p.amount_minor),
        code = p.status().as_str(),
    )
}

fn status_text(status: PaymentStatus, expired: bool, lang: Lang) -> &'static str {
    match status {
        PaymentStatus::Created if expired => t(lang, "已过期", "Expired"),
        PaymentStatus::Created => t(lang, "待支付", "Awaiting payment"),
        PaymentStatus::Processing => t(lang, "支付处理中", "Processing"),
        PaymentStatus::Succeeded => t(lang, "支付成功", "Paid"),
        PaymentStatus::Failed => t(lang, "支付失败", "Payment failed"),
        PaymentStatus::Closed => t(lang, "已关闭", "Closed"),
    }
}

/// The page of a payment that can no longer be paid; `None` while it can.
fn final_page(lang: Lang, large: bool, name: &str, p: &PaymentRow) -> Option<Response> {
    let is_expired = expired(p);
    let (code, id, text) = match p.status() {
        PaymentStatus::Succeeded => (
            StatusCode::OK,
            "paid",
            t(
                lang,
                "此付款已完成，无需再次付款。",
                "This payment has been made; there is nothing more to pay.",
            ),
        ),
        PaymentStatus::Closed | PaymentStatus::Failed => (
            StatusCode::GONE,
            "closed",
            t(
                lang,
                "此付款已关闭，请勿付款，请向商户索取新的付款码。",
                "This payment is closed. Do not pay; ask the merchant for a new code.",
            ),
        ),
        PaymentStatus::Created if is_expired => (
            StatusCode::GONE,
            "expired",
            t(
                lang,
                "此付款链接已过期，请勿付款，请向商户索取新的付款码。",
                "This payment link has expired. Do not pay; ask the merchant for a new code.",
            ),
        ),
        PaymentStatus::Created | PaymentStatus::Processing => return None,
    };
    let mut body = header_block(lang, name, p, status_text(p.status(), is_expired, lang));
    body.push_str(&format!("<p class=\"muted\" id=\"{id}\">{text}</p>"));
    Some(html(code, cashier_page(lang, name, &body, large)))
}

/// `GET /p/{token}`: the payment behind a link (see the module documentation).
pub async fn show(
    State(state): State<AppState>,
    Path(token): Path<String>,
    Query(q): Query<PageQuery>,
    headers: HeaderMap,
) -> Response {
    let lang = Lang::of(&headers);
    let large = q.large();
    let p = match link_payment(&state, &token, lang, large).await {
        Ok(p) => p,
        Err(page) => return page,
    };
    let name = merchant_name(&state.db, p.merchant_id)
        .await
        .unwrap_or_default();
    if let Some(page) = final_page(lang, large, &name, &p) {
        return page;
    }
    let mut body = header_block(lang, &name, &p, status_text(p.status(), false, lang));
    let apps = payable_wallets(&state, p.merchant_id).await;
    let opened_in = detected_wallet(&headers);
    let attached = attached_wallet(&state, &p).await.map(|(_, w)| w);
    match opened_in {
        Some(w) if attached.is_some_and(|a| a != w) => {
            return other_app(lang, large, attached.unwrap_or(w));
        }
        Some(w) if attached == Some(w) || apps.contains(&w) => {
            let large_field = if large { "?large=1" } else { "" };
            body.push_str(&format!(
                "<p class=\"muted\" id=\"app\">{}: {}</p>\
<form method=\"post\" action=\"/p/{}/pay{large_field}\" id=\"pay-form\">\
<button type=\"submit\" id=\"pay\">{}</button></form>",
                t(lang, "当前应用", "Opened in"),
                wallet_label(lang, w),
                escape_html(&token),
                t(lang, "付款", "Pay"),
            ));
        }
        opened_in => body.push_str(&apps_list(lang, opened_in, &apps)),
    }
    html(StatusCode::OK, cashier_page(lang, &name, &body, large))
}

/// `POST /p/{token}/pay`: the account, the signed state, and off to the wallet's authorisation
/// step. Writes nothing.
pub async fn start(
    State(state): State<AppState>,
    Path(token): Path<String>,
    Query(q): Query<PageQuery>,
    headers: HeaderMap,
) -> Response {
    let lang = Lang::of(&headers);
    let large = q.large();
    let p = match link_payment(&state, &token, lang, large).await {
        Ok(p) => p,
        Err(page) => return page,
    };
    let name = merchant_name(&state.db, p.merchant_id)
        .await
        .unwrap_or_default();
    if let Some(page) = final_page(lang, large, &name, &p) {
        return page;
    }
    let Some(wallet) = detected_wallet(&headers) else {
        return show(State(state), Path(token), Query(q), headers).await;
    };
    let route = match attached_wallet(&state, &p).await {
        Some((_, w)) if w != wallet => return other_app(lang, large, w),
        Some((route, _)) => Some(route),
        None => route_for(&state, p.merchant_id, wallet).await,
    };
    let Some(route) = route else {
        return show(State(state), Path(token), Query(q), headers).await;
    };
    // Anonymous requests: limited per link, apart from the merchant's signed API budget (a
    // payer looping on one link must not stop the merchant's own API calls).
    if let Err(wait) = state.cashier_limiter.check(p.id).await {
        return crate::cashier::too_many_requests(lang, large, wait);
    }
    let sealed = CashierState {
        payment: p.id,
        account: route.id.into(),
        amount_minor: p.amount_minor,
        expires_at_s: chrono::Utc::now().timestamp() + STATE_TTL_SECS,
    }
    .seal(&CashierState::key_for(&state, STATE_PURPOSE), p.id);
    let redirect = format!("{}/p/{token}/auth", state.paylinks.base_url());
    let Some(auth_url) = route.channel.payer_auth_url(&redirect, &sealed) else {
        return unavailable(lang, large);
    };
    match axum::http::HeaderValue::from_str(&auth_url) {
        Ok(v) => (StatusCode::SEE_OTHER, [(header::LOCATION, v)]).into_response(),
        Err(_) => unavailable(lang, large),
    }
}

/// `GET /p/{token}/auth`: back from the wallet — the payer's id, the account attached, the
/// channel's in-app order, the pay page.
pub async fn authorized(
    State(state): State<AppState>,
    Path(token): Path<String>,
    query: Result<Query<AuthQuery>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
) -> Response {
    let lang = Lang::of(&headers);
    let p = match link_payment(&state, &token, lang, false).await {
        Ok(p) => p,
        Err(page) => return page,
    };
    let Ok(Query(q)) = query else {
        return invalid_link(lang);
    };
    let Some(s) = q.state.as_deref().and_then(|st| {
        CashierState::open(
            &CashierState::key_for(&state, STATE_PURPOSE),
            p.id,
            st,
            chrono::Utc::now().timestamp(),
        )
    }) else {
        return invalid_link(lang);
    };
    let Some(code) = q.auth_code() else {
        return invalid_link(lang);
    };
    if p.amount_minor != s.amount_minor {
        return invalid_link(lang);
    }
    let result_url = format!("{}/p/{token}/r", state.paylinks.base_url());
    let see_result = || {
        (
            StatusCode::SEE_OTHER,
            [(header::LOCATION, result_url.clone())],
        )
            .into_response()
    };
    let name = merchant_name(&state.db, p.merchant_id)
        .await
        .unwrap_or_default();
    if p.status() != PaymentStatus::Created {
        return see_result();
    }
    if let Some(page) = final_page(lang, false, &name, &p) {
        return page;
    }
    if p.channel_account_id.is_some_and(|a| a != s.account) {
        let w = attached_wallet(&state, &p)
            .await
            .map_or(WalletBrand::Wechat, |(_, w)| w);
        return other_app(lang, false, w);
    }
    let Some(route) = state
        .routes
        .account(ChannelAccountId::from(s.account))
        .await
    else {
        return unavailable(lang, false);
    };
    let Some(wallet) = wallet_of_kind(route.kind) else {
        return unavailable(lang, false);
    };
    let auth = paymux_channels::PayerAuth {
        code,
        user_agent: headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok()),
    };
    let payer = match route.channel.payer_id(&auth).await {
        Ok(payer) => payer,
        Err(e) => {
            tracing::warn!(payment_id = %p.id, error = %e, "exchanging the payer's authorisation");
            return invalid_link(lang);
        }
    };
    // One account per payment: claim it before any channel order exists.
    let claimed = state
        .batcher
        .submit(WriteOp::AttachQr {
            payment_id: PaymentId::from(p.id),
            channel_account_id: route.id.into(),
            qr_code: p.qr_code.clone().unwrap_or_default(),
        })
        .await;
    if let Err(e) = &claimed {
        tracing::warn!(payment_id = %p.id, error = %e, "claiming the account of a payment link");
        return unavailable(lang, false);
    }
    if !matches!(claimed, Ok(WriteOutcome::Transitioned(true))) {
        return match crate::payments::repo::get_any(&state.db, p.id).await {
            Ok(Some(now)) if now.status() == PaymentStatus::Created => {
                let w = attached_wallet(&state, &now)
                    .await
                    .map_or(wallet, |(_, w)| w);
                other_app(lang, false, w)
            }
            Ok(Some(_)) => see_result(),
            _ => unavailable(lang, false),
        };
    }
    let req = paymux_channels::CreateOrder {
        order: paymux_channels::OrderRequest {
            out_trade_no: crate::orchestrate::out_trade_no(p.id),
            amount: paymux_model::Money::cny(p.amount_minor),
            subject: p.subject.clone(),
            notify_url: None,
            expires_at: Some(crate::db::us_to_datetime(p.expires_at_us)),
            client_ip: None,
            store_id: p.store_id.clone(),
            terminal_id: p.terminal_id.clone(),
        },
        kind: paymux_channels::CreateKind::Jsapi { payer_id: payer },
    };
    let params = match route.create_order(&req).await {
        Ok(paymux_channels::CreatedOrder::Jsapi { params }) => params,
        other => {
            // The payment keeps its account: the payer may try again in the same wallet, and at
            // expiry the sweeper closes whatever order the channel may have.
            tracing::warn!(payment_id = %p.id, answer = ?other, "creating the in-app order of a payment link");
            return unavailable(lang, false);
        }
    };
    let attached = state
        .batcher
        .submit(WriteOp::AttachQr {
            payment_id: PaymentId::from(p.id),
            channel_account_id: route.id.into(),
            qr_code: crate::cashier::order_reference(&params),
        })
        .await;
    if let Err(e) = &attached {
        // Not known to be closed: the order stays open for the payer's next try, and at expiry
        // the sweeper closes it at the channel.
        tracing::warn!(payment_id = %p.id, error = %e, "recording the in-app order of a payment link");
        return unavailable(lang, false);
    }
    if !matches!(attached, Ok(WriteOutcome::Transitioned(true))) {
        tracing::warn!(payment_id = %p.id, outcome = ?attached, "the linked payment was closed meanwhile");
        if let Err(e) = route.close(&crate::orchestrate::out_trade_no(p.id)).await {
            tracing::warn!(payment_id = %p.id, error = %e, "closing the in-app order of a closed payment");
        }
        return see_result();
    }
    html(
        StatusCode::OK,
        crate::cashier::pay_page(
            lang,
            &name,
            &p,
            wallet,
            &params,
            route.channel.wallet_stand_in_url(),
            &result_url,
        ),
    )
}

/// `GET /p/{token}/r`: the payment's result; polls until final.
pub async fn result_page(
    State(state): State<AppState>,
    Path(token): Path<String>,
    Query(q): Query<PageQuery>,
    headers: HeaderMap,
) -> Response {
    let lang = Lang::of(&headers);
    let large = q.large();
    let p = match link_payment(&state, &token, lang, large).await {
        Ok(p) => p,
        Err(page) => return page,
    };
    let name = merchant_name(&state.db, p.merchant_id)
        .await
        .unwrap_or_default();
    crate::cashier::result_html(lang, large, &name, &p)
}

/// `GET /p/{token}/r/status`: `{"status"}` (asks the channel when the notification is late).
pub async fn status(State(state): State<AppState>, Path(token): Path<String>) -> Response {
    let Some(id) = state.paylinks.verify(&token) else {
        return crate::error::ApiError::not_found("payment").into_response();
    };
    match crate::payments::repo::get_any(&state.db, id).await {
        Ok(Some(p)) if PayLinks::applies(&p) => crate::cashier::status_json(&state, &p).await,
        Ok(_) => crate::error::ApiError::not_found("payment").into_response(),
        Err(e) => crate::error::ApiError::from(e).into_response(),
    }
}

//! The operations web console at `/ops/`: a server-rendered page (labels in Chinese, or English
//! when the browser asks for it first) and a small script that calls `/ops/v1` with the operator's
//! bearer token. The token is typed into the login form and kept in the tab's `sessionStorage`
//! only — never in a URL, a cookie or a log; logging out forgets it.
//!
//! Views (the URL fragment): the dashboard (a day's volume and success rate by channel account and
//! kind, with an SVG chart drawn by the script), payment search, reconciliation runs with their
//! reports, the exception queue (assign to me, comment, resolve — disabled for viewers, whom the
//! API refuses as well) and merchant settlements.
//!
//! Nothing is loaded from elsewhere: the script and the style sheet are served from the binary, and
//! a strict Content-Security-Policy allows only them and calls to this server.

use axum::Router;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;

use super::store::RESOLUTIONS;
use crate::AppState;
use crate::paylink::{Lang, escape_html};

const SCRIPT: &str = include_str!("console/console.js");
const STYLE: &str = include_str!("console/console.css");

/// Only this server's script, style sheet and API; no inline code, no frames, no form posts.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
    connect-src 'self'; form-action 'none'; base-uri 'none'; frame-ancestors 'none'";

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/ops", get(|| async { Redirect::permanent("/ops/") }))
        .route("/ops/", get(shell))
        .route("/ops/console.js", get(script))
        .route("/ops/console.css", get(style))
}

fn secured(mut resp: Response, cache: &'static str) -> Response {
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    resp
}

async fn script() -> Response {
    secured(
        (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
            SCRIPT,
        )
            .into_response(),
        "no-cache",
    )
}

async fn style() -> Response {
    secured(
        (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
            STYLE,
        )
            .into_response(),
        "no-cache",
    )
}

/// Every label of the console: `(key, Chinese, English)`. The page uses some; the script gets all.
const LABELS: &[(&str, &str, &str)] = &[
    ("title", "paymux 运营控制台", "paymux operations console"),
    ("login", "登录", "Log in"),
    ("logout", "退出", "Log out"),
    ("token", "操作员令牌", "Operator token"),
    (
        "token_hint",
        "令牌由 `paymux operator create` 生成，仅保存在本标签页中。",
        "Tokens come from `paymux operator create`; this tab keeps it until you log out.",
    ),
    (
        "login_failed",
        "令牌无效或已停用。",
        "The token is wrong or disabled.",
    ),
    (
        "session_ended",
        "会话已失效，请重新登录。",
        "Your session ended; log in again.",
    ),
    ("dashboard", "概览", "Dashboard"),
    ("payments", "支付查询", "Payments"),
    ("runs", "对账批次", "Reconciliation"),
    ("exceptions", "差错处理", "Exceptions"),
    ("exception", "差错", "Exception"),
    ("settlements", "商户结算", "Settlements"),
    ("date", "日期", "Date"),
    ("show", "查看", "Show"),
    ("search", "查询", "Search"),
    (
        "volume_title",
        "当日交易量与成功率（北京时间）",
        "The day's volume and success rate (Asia/Shanghai)",
    ),
    ("by_account", "按渠道账户", "By channel account"),
    ("by_kind", "按渠道类型", "By channel kind"),
    ("channel_account", "渠道账户", "Channel account"),
    ("kind", "渠道", "Channel"),
    ("count", "笔数", "Count"),
    ("amount", "金额", "Amount"),
    ("succeeded", "成功", "Succeeded"),
    ("failed", "失败", "Failed"),
    ("closed", "已关闭", "Closed"),
    ("pending", "处理中", "Pending"),
    ("success_rate", "成功率", "Success rate"),
    ("unrouted", "未路由", "Not routed"),
    ("no_data", "没有数据。", "Nothing to show."),
    ("loading", "加载中…", "Loading…"),
    (
        "payment_id",
        "支付单号 / out_trade_no",
        "Payment id / out_trade_no",
    ),
    ("merchant_order_no", "商户订单号", "Merchant order no."),
    ("merchant", "商户", "Merchant"),
    ("status", "状态", "Status"),
    ("any", "全部", "Any"),
    ("created_at", "创建时间", "Created"),
    ("method", "方式", "Method"),
    ("wallet", "钱包", "Wallet"),
    ("channel_trade_no", "渠道交易号", "Channel trade no."),
    ("day", "账单日", "Day"),
    ("channel_records", "渠道记录", "Bill lines"),
    ("platform_records", "平台记录", "Our records"),
    ("channel_net", "渠道净额", "Channel net"),
    ("open_report", "查看报告", "Report"),
    ("report", "对账报告", "Report"),
    (
        "no_report",
        "此批次没有报告（失败的批次没有）。",
        "This run has no report (failed runs have none).",
    ),
    ("download_csv", "下载明细 CSV", "Download items CSV"),
    ("back", "返回", "Back"),
    ("filter", "筛选", "Filter"),
    ("f_open", "待处理", "Open"),
    ("f_mine", "分配给我", "Assigned to me"),
    ("f_assigned", "已分配", "Assigned"),
    ("f_resolved", "已解决", "Resolved"),
    ("f_all", "全部", "All"),
    ("class", "差错类型", "Class"),
    ("ours", "平台金额", "Ours"),
    ("theirs", "渠道金额", "Channel's"),
    ("assignee", "处理人", "Assignee"),
    ("me", "我", "me"),
    ("nobody", "—", "—"),
    ("assign_to_me", "分配给我", "Assign to me"),
    ("comment", "备注", "Comment"),
    ("add_comment", "添加备注", "Add comment"),
    ("comments", "备注记录", "Comments"),
    ("resolution", "处理方式", "Resolution"),
    ("note", "说明", "Note"),
    ("resolve", "标记已解决", "Resolve"),
    ("resolved_by", "解决人", "Resolved by"),
    (
        "viewer_readonly",
        "查看者角色只能查看，不能处理差错。",
        "Viewers can look but not work on exceptions.",
    ),
    ("done", "已保存。", "Saved."),
    ("gross", "交易额", "Gross"),
    ("refunds", "退款", "Refunds"),
    ("fees", "手续费", "Fees"),
    ("net", "净额", "Net"),
    ("carried", "往日结转", "Carried"),
    ("payout", "结算付款", "Payout"),
    ("payout_file", "付款文件", "Payout file"),
    (
        "more",
        "还有更多结果，请缩小范围。",
        "There are more; narrow the search.",
    ),
    ("s_created", "待支付", "created"),
    ("s_processing", "处理中", "processing"),
    ("s_succeeded", "成功", "succeeded"),
    ("s_failed", "失败", "failed"),
    ("s_closed", "已关闭", "closed"),
    ("x_open", "待处理", "open"),
    ("x_assigned", "已分配", "assigned"),
    ("x_resolved", "已解决", "resolved"),
    ("r_refunded_payer", "已退款给付款人", "refunded the payer"),
    (
        "r_credited_merchant",
        "已补记给商户",
        "credited the merchant",
    ),
    ("r_written_off", "核销", "written off"),
    ("r_channel_corrected", "渠道已更正", "channel corrected it"),
    ("r_no_action", "无需处理", "no action needed"),
    ("role_viewer", "查看者", "viewer"),
    ("role_operator", "操作员", "operator"),
    ("role_admin", "管理员", "admin"),
];

fn label(lang: Lang, key: &str) -> &'static str {
    LABELS
        .iter()
        .find(|(k, _, _)| *k == key)
        .map(|(_, zh, en)| match lang {
            Lang::Zh => *zh,
            Lang::En => *en,
        })
        .unwrap_or("")
}

/// The labels and the fixed lists for the script, as JSON safe inside a `<script>` element.
fn script_data(lang: Lang) -> String {
    let labels: serde_json::Map<String, serde_json::Value> = LABELS
        .iter()
        .map(|(k, zh, en)| {
            let text = match lang {
                Lang::Zh => zh,
                Lang::En => en,
            };
            (k.to_string(), serde_json::Value::from(*text))
        })
        .collect();
    serde_json::json!({
        "lang": match lang { Lang::Zh => "zh-CN", Lang::En => "en" },
        "labels": labels,
        "resolutions": RESOLUTIONS,
    })
    .to_string()
    .replace('<', "\\u003c")
    .replace('>', "\\u003e")
    .replace('&', "\\u0026")
}

pub fn page(lang: Lang) -> String {
    let l = |k: &str| escape_html(label(lang, k));
    let html_lang = match lang {
        Lang::Zh => "zh-CN",
        Lang::En => "en",
    };
    let statuses = ["created", "processing", "succeeded", "failed", "closed"]
        .iter()
        .map(|s| format!("<option value=\"{s}\">{}</option>", l(&format!("s_{s}"))))
        .collect::<String>();
    let filters = ["open", "mine", "assigned", "resolved", "all"]
        .iter()
        .map(|f| format!("<option value=\"{f}\">{}</option>", l(&format!("f_{f}"))))
        .collect::<String>();
    let nav = ["dashboard", "payments", "runs", "exceptions", "settlements"]
        .iter()
        .map(|v| format!("<a href=\"#{v}\" data-view=\"{v}\">{}</a>", l(v)))
        .collect::<String>();
    format!(
        "<!doctype html><html lang=\"{html_lang}\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
<meta name=\"referrer\" content=\"no-referrer\"><link rel=\"icon\" href=\"data:,\">\
<title>{title}</title><link rel=\"stylesheet\" href=\"/ops/console.css\"></head><body>\
<header><strong>{title}</strong><span id=\"who\"></span>\
<button type=\"button\" id=\"logout\" class=\"secondary\" hidden>{logout}</button></header>\
<main>\
<section id=\"login-view\" hidden><h1>{login}</h1>\
<form id=\"login-form\" autocomplete=\"off\"><label for=\"token\">{token}</label>\
<input id=\"token\" type=\"password\" autocomplete=\"off\" spellcheck=\"false\" required>\
<button type=\"submit\" id=\"login-button\">{login}</button></form>\
<p class=\"muted\">{token_hint}</p><p id=\"login-error\" class=\"error\" role=\"alert\"></p></section>\
<div id=\"app\" hidden><nav id=\"nav\">{nav}</nav>\
<section id=\"view-dashboard\" data-view=\"dashboard\" hidden><h1>{volume_title}</h1>\
<form id=\"dash-form\" class=\"row\"><label>{date} <input type=\"date\" id=\"dash-date\"></label>\
<button type=\"submit\">{show}</button></form>\
<div id=\"dash-totals\" class=\"cards\"></div><div id=\"dash-chart\" class=\"chart\"></div>\
<h2>{by_account}</h2><div class=\"scroll\"><table id=\"dash-accounts\"></table></div>\
<h2>{by_kind}</h2><div class=\"scroll\"><table id=\"dash-kinds\"></table></div></section>\
<section id=\"view-payments\" data-view=\"payments\" hidden><h1>{payments}</h1>\
<form id=\"pay-form\" class=\"grid\">\
<label>{payment_id}<input id=\"pay-id\" spellcheck=\"false\"></label>\
<label>{merchant_order_no}<input id=\"pay-order\" spellcheck=\"false\"></label>\
<label>{merchant}<input id=\"pay-merchant\" spellcheck=\"false\" placeholder=\"merchant_id\"></label>\
<label>{status}<select id=\"pay-status\"><option value=\"\">{any}</option>{statuses}</select></label>\
<label>{date}<input type=\"date\" id=\"pay-date\"></label>\
<button type=\"submit\" id=\"pay-search\">{search}</button></form>\
<p id=\"pay-message\" class=\"muted\"></p><div class=\"scroll\"><table id=\"pay-results\"></table></div></section>\
<section id=\"view-runs\" data-view=\"runs\" hidden><h1>{runs}</h1>\
<div class=\"scroll\"><table id=\"runs\"></table></div><p id=\"runs-more\" class=\"muted\"></p></section>\
<section id=\"view-run\" data-view=\"run\" hidden><p><a href=\"#runs\">{back}</a></p><h1 id=\"run-title\">{report}</h1>\
<dl id=\"run-facts\" class=\"facts\"></dl><p><button type=\"button\" id=\"run-csv\" class=\"secondary\">{download_csv}</button></p>\
<div id=\"run-report\" class=\"report\"></div></section>\
<section id=\"view-exceptions\" data-view=\"exceptions\" hidden><h1>{exceptions}</h1>\
<form id=\"ex-filter-form\" class=\"row\"><label>{filter} <select id=\"ex-filter\">{filters}</select></label></form>\
<div class=\"scroll\"><table id=\"exceptions\"></table></div><p id=\"ex-more\" class=\"muted\"></p></section>\
<section id=\"view-exception\" data-view=\"exception\" hidden><p><a href=\"#exceptions\">{back}</a></p>\
<h1>{exception} <span id=\"ex-status\" class=\"badge\"></span></h1><dl id=\"ex-facts\" class=\"facts\"></dl>\
<p id=\"ex-readonly\" class=\"muted\" hidden>{viewer_readonly}</p>\
<div class=\"actions\"><button type=\"button\" id=\"ex-assign\">{assign_to_me}</button></div>\
<h2>{comments}</h2><ul id=\"ex-comments\"></ul>\
<form id=\"ex-comment-form\"><label for=\"ex-comment-text\">{comment}</label>\
<textarea id=\"ex-comment-text\" rows=\"2\" maxlength=\"4000\"></textarea>\
<button type=\"submit\" id=\"ex-comment\">{add_comment}</button></form>\
<h2>{resolve}</h2><form id=\"ex-resolve-form\" class=\"grid\">\
<label>{resolution}<select id=\"ex-resolution\"></select></label>\
<label>{note}<input id=\"ex-note\" maxlength=\"4000\"></label>\
<button type=\"submit\" id=\"ex-resolve\">{resolve}</button></form>\
<p id=\"ex-message\" role=\"status\"></p></section>\
<section id=\"view-settlements\" data-view=\"settlements\" hidden><h1>{settlements}</h1>\
<form id=\"st-form\" class=\"row\"><label>{date} <input type=\"date\" id=\"st-date\"></label>\
<button type=\"submit\">{show}</button></form>\
<div class=\"scroll\"><table id=\"settlements\"></table></div><p id=\"st-more\" class=\"muted\"></p></section>\
<p id=\"error\" class=\"error\" role=\"alert\"></p></div></main>\
<script id=\"console-data\" type=\"application/json\">{data}</script>\
<script src=\"/ops/console.js\"></script></body></html>",
        title = l("title"),
        logout = l("logout"),
        login = l("login"),
        token = l("token"),
        token_hint = l("token_hint"),
        volume_title = l("volume_title"),
        date = l("date"),
        show = l("show"),
        by_account = l("by_account"),
        by_kind = l("by_kind"),
        payments = l("payments"),
        payment_id = l("payment_id"),
        merchant_order_no = l("merchant_order_no"),
        merchant = l("merchant"),
        status = l("status"),
        any = l("any"),
        search = l("search"),
        runs = l("runs"),
        back = l("back"),
        report = l("report"),
        download_csv = l("download_csv"),
        exceptions = l("exceptions"),
        exception = l("exception"),
        filter = l("filter"),
        viewer_readonly = l("viewer_readonly"),
        assign_to_me = l("assign_to_me"),
        comments = l("comments"),
        comment = l("comment"),
        add_comment = l("add_comment"),
        resolve = l("resolve"),
        resolution = l("resolution"),
        note = l("note"),
        settlements = l("settlements"),
        data = script_data(lang),
    )
}

async fn shell(headers: HeaderMap) -> Response {
    let lang = Lang::of(&headers);
    secured(
        (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            page(lang),
        )
            .into_response(),
        "no-store",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_label_has_both_languages_and_a_unique_key() {
        let mut keys = std::collections::HashSet::new();
        for (k, zh, en) in LABELS {
            assert!(keys.insert(*k), "duplicate label {k}");
            assert!(!zh.is_empty() && !en.is_empty(), "{k}");
        }
        for r in RESOLUTIONS {
            assert!(keys.contains(format!("r_{r}").as_str()), "resolution {r}");
        }
    }

    #[test]
    fn the_page_has_no_inline_code_and_its_data_cannot_close_the_element() {
        for lang in [Lang::Zh, Lang::En] {
            let p = page(lang);
            assert!(!p.contains("<script>") && !p.contains(" style=") && !p.contains("onclick"));
            let data = script_data(lang);
            assert!(!data.contains('<') && !data.contains('>'));
            let v: serde_json::Value = serde_json::from_str(&data).unwrap();
            assert_eq!(v["labels"]["login"], label(lang, "login"));
        }
    }
}

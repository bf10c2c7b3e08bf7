//! A reconciliation run's report files (`report.html`, `items.csv`, `report.json`) through the ops
//! API. The file is found from the run's row — its day and channel account under
//! `<data_dir>/reports/` — and one of three fixed names; nothing of the request's path reaches the
//! file system, so no other file can be asked for.

use axum::extract::{Path, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use chrono::NaiveDate;
use paymux_model::ChannelAccountId;

use crate::AppState;
use crate::error::{ApiError, ApiResult};

/// The files a run's report has, and how each is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportFile {
    Html,
    Csv,
    Json,
}

impl ReportFile {
    pub fn parse(name: &str) -> Option<ReportFile> {
        match name {
            "report.html" => Some(ReportFile::Html),
            "items.csv" => Some(ReportFile::Csv),
            "report.json" => Some(ReportFile::Json),
            _ => None,
        }
    }

    fn file_name(self) -> &'static str {
        match self {
            ReportFile::Html => "report.html",
            ReportFile::Csv => "items.csv",
            ReportFile::Json => "report.json",
        }
    }

    fn content_type(self) -> &'static str {
        match self {
            ReportFile::Html => "text/html; charset=utf-8",
            ReportFile::Csv => "text/csv; charset=utf-8",
            ReportFile::Json => "application/json",
        }
    }
}

/// Reports are a few hundred kilobytes; refuse to load anything absurd into memory.
const REPORT_BYTES_MAX: u64 = 64 * 1024 * 1024;

/// `GET /ops/v1/reconciliation/runs/{id}/report/{file}`.
pub async fn report_file(
    State(state): State<AppState>,
    Path((id, file)): Path<(String, String)>,
) -> ApiResult<Response> {
    let id = super::path_id(&id, "reconciliation run")?;
    let file = ReportFile::parse(&file).ok_or_else(|| ApiError::not_found("report file"))?;
    let run = super::store::get_run(&state.db, id)
        .await?
        .ok_or_else(|| ApiError::not_found("reconciliation run"))?;
    let day = NaiveDate::parse_from_str(&run.day, "%Y-%m-%d").map_err(ApiError::internal)?;
    let dir = crate::reconciliation::report::account_dir(
        &state.config.data_dir,
        day,
        ChannelAccountId::from_uuid(run.channel_account_id),
    );
    let path = dir.join(file.file_name());
    let mut resp = report_response(read_report(&path).await?, file);
    let h = resp.headers_mut();
    if file == ReportFile::Csv {
        let name = format!(
            "attachment; filename=\"reconciliation-{}-{}.csv\"",
            run.day, run.id
        );
        if let Ok(v) = HeaderValue::from_str(&name) {
            h.insert(header::CONTENT_DISPOSITION, v);
        }
    }
    Ok(resp)
}

/// A report file's bytes: `404` when it is not there (a failed run, or reports removed from this
/// node's disk).
async fn read_report(path: &std::path::Path) -> ApiResult<Vec<u8>> {
    match tokio::fs::metadata(path).await {
        Ok(m) if m.is_file() && m.len() <= REPORT_BYTES_MAX => tokio::fs::read(path)
            .await
            .map_err(|e| ApiError::internal(format!("read {}: {e}", path.display()))),
        Ok(_) => Err(ApiError::internal(format!(
            "{} is not a report",
            path.display()
        ))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Err(ApiError::not_found("report file"))
        }
        Err(e) => Err(ApiError::internal(format!("{}: {e}", path.display()))),
    }
}

/// `GET /ops/v1/reconciliation/days/{day}/report.html`: the day's index — every channel account's
/// run with its counts, and the charts of the net and of the items by channel account. The day
/// must be a `YYYY-MM-DD` date; it alone names the file.
pub async fn day_report(
    State(state): State<AppState>,
    Path(day): Path<String>,
) -> ApiResult<Response> {
    let d = NaiveDate::parse_from_str(&day, "%Y-%m-%d")
        .ok()
        .filter(|d| d.to_string() == day)
        .ok_or_else(|| ApiError::not_found("report file"))?;
    let path = crate::reconciliation::report::day_index_path(&state.config.data_dir, d);
    Ok(report_response(read_report(&path).await?, ReportFile::Html))
}

/// A report file's bytes as an answer: its type, never cached, never sniffed; the report page styles
/// itself inline and draws inline SVG, and runs nothing.
fn report_response(bytes: Vec<u8>, file: ReportFile) -> Response {
    let mut resp = bytes.into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(file.content_type()),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; img-src data:; sandbox",
        ),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_three_names() {
        assert_eq!(ReportFile::parse("report.html"), Some(ReportFile::Html));
        assert_eq!(ReportFile::parse("items.csv"), Some(ReportFile::Csv));
        assert_eq!(ReportFile::parse("report.json"), Some(ReportFile::Json));
        for bad in [
            "../report.html",
            "report.html/",
            "index.html",
            "",
            "REPORT.HTML",
            "..",
        ] {
            assert_eq!(ReportFile::parse(bad), None, "{bad}");
        }
    }
}

//! The console's files: a merchant's record uploaded and reconciled against clearing (the
//! same matching and report as `coalition reconcile`), and the signed export of a finalised
//! period (the same folder as `coalition export`) downloaded as one tar archive.

use std::collections::VecDeque;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Multipart, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use coalition_domain::MerchantId;
use coalition_domain::reconciliation::Summary;
use serde::Deserialize;

use super::format::{money, points};
use super::session::random_token;
use super::{
    ConsoleConfig, ConsoleState, Page, Signed, forged_form, message, percent_encode, render,
};
use crate::export::{self, ExportOptions};

/// Reconciliation results the console keeps (the oldest go, with their files).
const RECONCILIATIONS_KEPT: usize = 16;
/// Differences a results page lists; the CSV has them all.
const DIFFERENCES_SHOWN_MAX: usize = 500;
/// The report files a reconciliation leaves, the ones the console offers to download.
const REPORT_FILES: [&str; 4] = [
    "differences.csv",
    "differences.jsonl",
    "malformed.csv",
    "summary.json",
];
/// Finalised periods the exports page lists, newest first.
const EXPORT_PERIODS_LISTED: usize = 60;
/// Bytes per piece when an archive is sent.
const DOWNLOAD_CHUNK_BYTES: usize = 64 * 1024;

pub fn routes(upload_bytes_max: usize) -> Router<Arc<ConsoleState>> {
    Router::new()
        .route(
            "/reconciliation",
            get(reconciliation_page)
                .post(reconcile_upload)
                .layer(DefaultBodyLimit::max(upload_bytes_max)),
        )
        .route("/reconciliation/result", get(reconciliation_result))
        .route("/reconciliation/download", get(reconciliation_download))
        .route("/exports", get(exports_page))
        .route("/exports/make", post(make_export))
        .route("/exports/download", get(export_download))
}

struct ReconciliationRecord {
    id: String,
    merchant: MerchantId,
    period: String,
    dir: PathBuf,
    summary: Summary,
}

/// Where the console's files live, and the reconciliations it keeps.
pub struct Files {
    pub upload_bytes_max: usize,
    exports_dir: PathBuf,
    operator_keys_dir: PathBuf,
    database_url: String,
    work_dir: PathBuf,
    reconciliations: Mutex<VecDeque<ReconciliationRecord>>,
    /// One export at a time: each reads the whole period.
    exporting: tokio::sync::Mutex<()>,
}

impl Files {
    pub fn new(config: &ConsoleConfig) -> Files {
        Files {
            upload_bytes_max: config.upload_bytes_max,
            exports_dir: config.exports_dir.clone(),
            operator_keys_dir: config.operator_keys_dir.clone(),
            database_url: config.database_url.clone(),
            work_dir: std::env::temp_dir().join(format!(
                "coalition-console-{}-{}",
                std::process::id(),
                &random_token()[..8]
            )),
            reconciliations: Mutex::new(VecDeque::new()),
            exporting: tokio::sync::Mutex::new(()),
        }
    }

    fn keep(&self, record: ReconciliationRecord) {
        let mut kept = self.reconciliations.lock().expect("reconciliations lock");
        kept.push_back(record);
        while kept.len() > RECONCILIATIONS_KEPT {
            if let Some(old) = kept.pop_front() {
                let _ = std::fs::remove_dir_all(&old.dir);
            }
        }
    }

    fn export_dir(&self, period: &str) -> PathBuf {
        export::export_folder(&self.exports_dir, period)
    }
}

impl Drop for Files {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.work_dir);
    }
}

pub struct RecentRow {
    pub link: String,
    pub merchant: String,
    pub period: String,
    pub differences: u64,
}

#[derive(askama::Template)]
#[template(path = "console/reconciliation.html")]
struct ReconciliationPage {
    page: Page,
    merchants: Vec<(String, String)>,
    period: String,
    recent: Vec<RecentRow>,
    upload_mib_max: usize,
}

fn differences_of(summary: &Summary) -> u64 {
    summary
        .counts
        .iter()
        .filter(|(status, _)| **status != "matched")
        .map(|(_, count)| *count)
        .sum()
}

async fn reconciliation_page(State(state): State<Arc<ConsoleState>>, signed: Signed) -> Response {
    let engine = &state.engine;
    let cutoff = engine.settlement_cutoff();
    let open = cutoff.period_at(engine.now_ms());
    let recent = state
        .files
        .reconciliations
        .lock()
        .expect("reconciliations lock")
        .iter()
        .rev()
        .map(|record| RecentRow {
            link: format!("/reconciliation/result?id={}", record.id),
            merchant: record.merchant.to_string(),
            period: record.period.clone(),
            differences: differences_of(&record.summary),
        })
        .collect();
    render(&ReconciliationPage {
        page: signed.page("reconciliation"),
        merchants: engine
            .merchants()
            .into_iter()
            .map(|merchant| (merchant.merchant_id.to_string(), merchant.name))
            .collect(),
        period: cutoff.period_at(open.start_ms - 1).label,
        recent,
        upload_mib_max: state.files.upload_bytes_max / (1024 * 1024),
    })
}

/// Reads the upload's fields, the file streamed to `path`; returns (csrf, merchant, period).
async fn read_upload(
    multipart: &mut Multipart,
    path: &Path,
) -> Result<(String, String, String, bool), String> {
    let mut csrf = String::new();
    let mut merchant = String::new();
    let mut period = String::new();
    let mut has_file = false;
    while let Some(mut field) = multipart
        .next_field()
        .await
        .map_err(|error| format!("the upload could not be read: {error}"))?
    {
        let name = field.name().unwrap_or_default().to_owned();
        match name.as_str() {
            "file" => {
                let mut file = std::fs::File::create(path)
                    .map_err(|error| format!("cannot store the upload: {error}"))?;
                while let Some(chunk) = field
                    .chunk()
                    .await
                    .map_err(|error| format!("the upload could not be read: {error}"))?
                {
                    has_file |= !chunk.is_empty();
                    file.write_all(&chunk)
                        .map_err(|error| format!("cannot store the upload: {error}"))?;
                }
            }
            name => {
                let text = field
                    .text()
                    .await
                    .map_err(|error| format!("the upload could not be read: {error}"))?;
                match name {
                    "csrf" => csrf = text,
                    "merchant" => merchant = text,
                    "period" => period = text,
                    _ => {}
                }
            }
        }
    }
    Ok((csrf, merchant, period, has_file))
}

async fn reconcile_upload(
    State(state): State<Arc<ConsoleState>>,
    signed: Signed,
    mut multipart: Multipart,
) -> Response {
    let t = signed.language.texts();
    let refuse = |status: StatusCode, error: String| {
        signed.refuse("reconciliation", status, error, "/reconciliation")
    };
    let id = random_token()[..16].to_owned();
    let dir = state.files.work_dir.join(&id);
    if let Err(error) = std::fs::create_dir_all(&dir) {
        return refuse(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot create {}: {error}", dir.display()),
        );
    }
    let upload = dir.join("upload.csv");
    let fields = read_upload(&mut multipart, &upload).await;
    let outcome = async {
        let (csrf, merchant, period, has_file) =
            fields.map_err(|error| (StatusCode::BAD_REQUEST, error))?;
        if !signed.form_is_genuine(&csrf) {
            return Err((StatusCode::FORBIDDEN, String::new()));
        }
        if !has_file {
            return Err((StatusCode::BAD_REQUEST, t.no_file.to_owned()));
        }
        let merchant = state
            .registered_merchant(&merchant)
            .map_err(|error| (StatusCode::BAD_REQUEST, error))?
            .merchant_id;
        let period = state
            .engine
            .settlement_period(Some(&period))
            .map_err(|error| (StatusCode::BAD_REQUEST, error.to_string()))?;
        let file = std::fs::File::open(&upload)
            .map_err(|error| (StatusCode::INTERNAL_SERVER_ERROR, error.to_string()))?;
        let summary = crate::reconcile::reconcile_file(
            state.engine.storage(),
            &merchant,
            period.start_ms,
            period.end_ms,
            std::io::BufReader::new(file),
            &dir.join("report"),
            |_| {},
        )
        .await
        .map_err(|error| (StatusCode::BAD_REQUEST, format!("{error:#}")))?;
        Ok((merchant, period.label, summary))
    }
    .await;
    let _ = std::fs::remove_file(&upload);
    match outcome {
        Ok((merchant, period, summary)) => {
            tracing::info!(%merchant, %period, differences = differences_of(&summary), "merchant record reconciled from the console");
            state.files.keep(ReconciliationRecord {
                id: id.clone(),
                merchant,
                period,
                dir,
                summary,
            });
            Redirect::to(&format!("/reconciliation/result?id={id}")).into_response()
        }
        Err((status, error)) => {
            let _ = std::fs::remove_dir_all(&dir);
            if status == StatusCode::FORBIDDEN {
                forged_form(&signed)
            } else {
                refuse(status, error)
            }
        }
    }
}

pub struct CountRow {
    pub status: String,
    pub count: u64,
    pub link: String,
}

#[derive(askama::Template)]
#[template(path = "console/reconciliation_result.html")]
struct ResultPage {
    page: Page,
    id: String,
    merchant: String,
    period: String,
    merchant_transactions: u64,
    merchant_points: String,
    merchant_amount: String,
    clearing_transactions: u64,
    clearing_points: String,
    clearing_amount: String,
    counts: Vec<CountRow>,
    malformed_rows: u64,
    status: String,
    header: Vec<String>,
    rows: Vec<Vec<String>>,
    shown: usize,
    total: u64,
    files: Vec<&'static str>,
}

#[derive(Deserialize)]
struct ResultQuery {
    id: String,
    status: Option<String>,
}

async fn reconciliation_result(
    State(state): State<Arc<ConsoleState>>,
    signed: Signed,
    Query(query): Query<ResultQuery>,
) -> Response {
    let t = signed.language.texts();
    let found = state
        .files
        .reconciliations
        .lock()
        .expect("reconciliations lock")
        .iter()
        .find(|record| record.id == query.id)
        .map(|record| {
            (
                record.merchant.to_string(),
                record.period.clone(),
                record.dir.join("report"),
                record.summary.clone(),
            )
        });
    let Some((merchant, period, report, summary)) = found else {
        return message(
            signed.page("reconciliation"),
            StatusCode::NOT_FOUND,
            t.not_found,
            t.reconciliation_gone,
            "/reconciliation",
        );
    };
    let currency = state.currency.as_str();
    let status = query.status.unwrap_or_default();
    let mut header = Vec::new();
    let mut rows = Vec::new();
    let mut total = 0u64;
    if let Ok(mut reader) = csv::Reader::from_path(report.join("differences.csv")) {
        header = reader
            .headers()
            .map(|headers| headers.iter().map(str::to_owned).collect())
            .unwrap_or_default();
        for record in reader.records().flatten() {
            if !status.is_empty() && record.get(0) != Some(status.as_str()) {
                continue;
            }
            total += 1;
            if rows.len() < DIFFERENCES_SHOWN_MAX {
                rows.push(record.iter().map(str::to_owned).collect());
            }
        }
    }
    let id = query.id.clone();
    render(&ResultPage {
        page: signed.page("reconciliation"),
        merchant,
        period,
        merchant_transactions: summary.merchant.transactions,
        merchant_points: points(summary.merchant.points),
        merchant_amount: money(summary.merchant.amount_minor, currency),
        clearing_transactions: summary.clearing.transactions,
        clearing_points: points(summary.clearing.points),
        clearing_amount: money(summary.clearing.amount_minor, currency),
        counts: summary
            .counts
            .iter()
            .map(|(status, count)| CountRow {
                status: (*status).to_owned(),
                count: *count,
                link: format!("/reconciliation/result?id={id}&status={status}"),
            })
            .collect(),
        malformed_rows: summary.malformed_rows,
        status,
        header,
        shown: rows.len(),
        rows,
        total,
        files: REPORT_FILES.to_vec(),
        id,
    })
}

#[derive(Deserialize)]
struct DownloadQuery {
    id: String,
    file: String,
}

async fn reconciliation_download(
    State(state): State<Arc<ConsoleState>>,
    signed: Signed,
    Query(query): Query<DownloadQuery>,
) -> Response {
    let t = signed.language.texts();
    // Only the report's own files, by name: nothing else on the disk can be asked for.
    let file = REPORT_FILES.iter().find(|name| **name == query.file);
    let dir = state
        .files
        .reconciliations
        .lock()
        .expect("reconciliations lock")
        .iter()
        .find(|record| record.id == query.id)
        .map(|record| record.dir.join("report"));
    let (Some(file), Some(dir)) = (file, dir) else {
        return message(
            signed.page("reconciliation"),
            StatusCode::NOT_FOUND,
            t.not_found,
            t.reconciliation_gone,
            "/reconciliation",
        );
    };
    let content_type = if file.ends_with(".csv") {
        "text/csv; charset=utf-8"
    } else {
        "application/json"
    };
    send_file(dir.join(file), content_type, file).await
}

/// Sends a file a piece at a time, never holding it whole.
async fn send_file(path: PathBuf, content_type: &'static str, file_name: &str) -> Response {
    let file = match std::fs::File::open(&path) {
        Ok(file) => file,
        Err(error) => {
            return (
                StatusCode::NOT_FOUND,
                format!("cannot read {}: {error}", path.display()),
            )
                .into_response();
        }
    };
    let length = file.metadata().map(|metadata| metadata.len()).ok();
    let (sender, receiver) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    tokio::task::spawn_blocking(move || {
        let mut file = file;
        loop {
            let mut buffer = vec![0u8; DOWNLOAD_CHUNK_BYTES];
            match std::io::Read::read(&mut file, &mut buffer) {
                Ok(0) => break,
                Ok(read) => {
                    buffer.truncate(read);
                    if sender.blocking_send(Ok(Bytes::from(buffer))).is_err() {
                        break;
                    }
                }
                Err(error) => {
                    let _ = sender.blocking_send(Err(error));
                    break;
                }
            }
        }
    });
    let body = Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(receiver));
    let mut response = (
        [
            (header::CONTENT_TYPE, content_type.to_owned()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{file_name}\""),
            ),
        ],
        body,
    )
        .into_response();
    if let Some(length) = length
        && let Ok(value) = header::HeaderValue::from_str(&length.to_string())
    {
        response.headers_mut().insert(header::CONTENT_LENGTH, value);
    }
    response
}

pub struct ExportRow {
    pub period: String,
    pub made: bool,
    pub download: String,
}

#[derive(askama::Template)]
#[template(path = "console/exports.html")]
struct ExportsPage {
    page: Page,
    rows: Vec<ExportRow>,
    notice: Option<String>,
    exports_dir: String,
}

#[derive(Deserialize)]
struct ExportsQuery {
    made: Option<String>,
}

async fn exports_page(
    State(state): State<Arc<ConsoleState>>,
    signed: Signed,
    Query(query): Query<ExportsQuery>,
) -> Response {
    let t = signed.language.texts();
    let labels = match state.engine.storage().finalised_labels().await {
        Ok(labels) => labels,
        Err(error) => {
            return signed.refuse(
                "exports",
                StatusCode::INTERNAL_SERVER_ERROR,
                error.to_string(),
                "/",
            );
        }
    };
    let rows = labels
        .into_iter()
        .rev()
        .take(EXPORT_PERIODS_LISTED)
        .map(|period| ExportRow {
            made: archive_path(&state.files.export_dir(&period)).exists(),
            download: format!("/exports/download?period={}", percent_encode(&period)),
            period,
        })
        .collect();
    render(&ExportsPage {
        page: signed.page("exports"),
        rows,
        notice: query
            .made
            .map(|period| format!("{} {period}", t.export_made)),
        exports_dir: state.files.exports_dir.display().to_string(),
    })
}

/// The archive beside an export folder.
fn archive_path(folder: &Path) -> PathBuf {
    folder.with_extension("tar")
}

/// Packs an export folder into one tar archive (written beside it, then renamed, so a
/// half-written archive is never offered).
fn write_archive(folder: &Path) -> anyhow::Result<()> {
    let archive = archive_path(folder);
    let partial = folder.with_extension("tar.partial");
    let name = folder
        .file_name()
        .and_then(|name| name.to_str())
        .unwrap_or("export");
    let file = std::fs::File::create(&partial)?;
    let mut builder = tar::Builder::new(std::io::BufWriter::new(file));
    builder.append_dir_all(name, folder)?;
    let mut writer = builder.into_inner()?;
    writer.flush()?;
    writer.into_inner()?.sync_all()?;
    std::fs::rename(&partial, &archive)?;
    Ok(())
}

#[derive(Deserialize)]
struct MakeForm {
    #[serde(default)]
    csrf: String,
    period: String,
}

async fn make_export(
    State(state): State<Arc<ConsoleState>>,
    signed: Signed,
    axum::Form(form): axum::Form<MakeForm>,
) -> Response {
    if !signed.form_is_genuine(&form.csrf) {
        return forged_form(&signed);
    }
    let refuse =
        |status: StatusCode, error: String| signed.refuse("exports", status, error, "/exports");
    let period = match state.engine.settlement_period(Some(&form.period)) {
        Ok(period) => period,
        Err(error) => return refuse(StatusCode::BAD_REQUEST, error.to_string()),
    };
    let files = &state.files;
    let _one_at_a_time = files.exporting.lock().await;
    let folder = files.export_dir(&period.label);
    // A signed folder already there (made by `coalition export` or the demo) is packed as
    // it is; a folder without its signature was left by an export that did not finish and
    // is made again.
    let signed_folder = folder.join(export::SIGNATURE_FILE).exists();
    if !archive_path(&folder).exists() {
        if folder.exists()
            && !signed_folder
            && let Err(error) = std::fs::remove_dir_all(&folder)
        {
            return refuse(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot clear {}: {error}", folder.display()),
            );
        }
        let made = if signed_folder {
            Ok(())
        } else {
            export::export(&ExportOptions {
                database_url: files.database_url.clone(),
                period: period.clone(),
                cutoff: state.cutoff,
                out: folder.clone(),
                operator_keys: files.operator_keys_dir.clone(),
                reconcile: Vec::new(),
                // The finance team's download: every copy, spreadsheets and journal too.
                formats: export::Formats::ALL,
            })
            .await
            .map(|_| ())
        };
        if let Err(error) = made {
            return refuse(StatusCode::CONFLICT, format!("{error:#}"));
        }
        let packed = {
            let folder = folder.clone();
            tokio::task::spawn_blocking(move || write_archive(&folder)).await
        };
        match packed {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                return refuse(StatusCode::INTERNAL_SERVER_ERROR, format!("{error:#}"));
            }
            Err(error) => return refuse(StatusCode::INTERNAL_SERVER_ERROR, error.to_string()),
        }
        tracing::info!(period = %period.label, folder = %folder.display(), "export made from the console");
    }
    Redirect::to(&format!("/exports?made={}", percent_encode(&period.label))).into_response()
}

#[derive(Deserialize)]
struct ExportQuery {
    period: String,
}

async fn export_download(
    State(state): State<Arc<ConsoleState>>,
    signed: Signed,
    Query(query): Query<ExportQuery>,
) -> Response {
    let t = signed.language.texts();
    let period = match state.engine.settlement_period(Some(&query.period)) {
        Ok(period) => period,
        Err(error) => {
            return signed.refuse(
                "exports",
                StatusCode::BAD_REQUEST,
                error.to_string(),
                "/exports",
            );
        }
    };
    let archive = archive_path(&state.files.export_dir(&period.label));
    if !archive.exists() {
        return message(
            signed.page("exports"),
            StatusCode::NOT_FOUND,
            t.not_found,
            t.export_not_made,
            "/exports",
        );
    }
    send_file(
        archive,
        "application/x-tar",
        &format!("export-{}.tar", period.label),
    )
    .await
}

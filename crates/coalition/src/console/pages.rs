//! The console's overview and settlement pages.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use coalition_domain::settlement::{MatrixCell, Payment, PaymentDirection, Settlement};
use coalition_domain::{AccountKey, MerchantId};
use coalition_engine::{PeriodStatus, SettlementView};
use serde::Deserialize;

use super::format::{minute, money, points, second};
use super::{ConsoleState, Page, Signed, forged_form, message, percent_encode, render};
use crate::export;

/// The most statement lines a page shows; the CSV has them all.
const STATEMENT_LINES_SHOWN_MAX: usize = 1_000;
/// Issuers (rows) and redeemers (columns) the heat map shows by name; the rest are summed.
const MATRIX_PARTIES_SHOWN_MAX: usize = 12;
/// Heat levels of the matrix (CSS classes `heat-0` to `heat-8`).
const HEAT_LEVELS: i64 = 8;
const HOUR_MS: i64 = 3_600_000;

pub fn routes() -> Router<Arc<ConsoleState>> {
    Router::new()
        .route("/", get(overview))
        .route("/settlement", get(settlement_page))
        .route(
            "/settlement/finalise",
            get(finalise_confirmation).post(finalise),
        )
        .route("/settlement/statement", get(statement_page))
        .route("/settlement/statement.csv", get(statement_csv))
        .route("/settlement/payments.csv", get(payments_csv))
        .route("/settlement/payments.pain.001.xml", get(pain_001))
        .route("/settlement/payout", post(payout))
}

/// The totals finance reads first, summed over the merchants' nets of a settlement.
pub struct Totals {
    pub issuance: String,
    pub issuance_reversed: String,
    pub redemptions: String,
    pub redemptions_reversed: String,
    pub fees: String,
    pub breakage: String,
    pub points_issued: String,
    pub points_redeemed: String,
    pub to_pay: String,
    pub to_collect: String,
    pub merchants_paid: usize,
    pub merchants_paying: usize,
    pub operator_float: String,
    pub operator_fees: String,
    pub operator_rounding: String,
    pub operator_cash: String,
    pub operator_breakage: String,
    pub operator_net: String,
    pub entries: u64,
}

impl Totals {
    /// Money as the finance team reads it: what merchants owe for issuance and what they
    /// are owed for redemptions both as positive amounts; reversals with the sign that
    /// says which way they moved the merchants' positions.
    fn of(settlement: &Settlement) -> Totals {
        let currency = settlement.currency.as_str();
        let sum = |field: fn(&coalition_domain::settlement::MerchantNet) -> i64| -> i64 {
            settlement.merchants.iter().map(field).sum()
        };
        let nets = settlement.merchants.iter().map(|net| net.net_minor);
        let operator = &settlement.operator;
        Totals {
            issuance: money(-sum(|net| net.issuance_minor), currency),
            issuance_reversed: money(sum(|net| net.issuance_reversed_minor), currency),
            redemptions: money(sum(|net| net.redemptions_minor), currency),
            redemptions_reversed: money(sum(|net| net.redemptions_reversed_minor), currency),
            fees: money(-sum(|net| net.fees_minor), currency),
            breakage: money(sum(|net| net.breakage_minor), currency),
            points_issued: points(sum(|net| net.points_issued)),
            points_redeemed: points(sum(|net| net.points_redeemed)),
            to_pay: money(nets.clone().filter(|net| *net > 0).sum(), currency),
            to_collect: money(-nets.clone().filter(|net| *net < 0).sum::<i64>(), currency),
            merchants_paid: nets.clone().filter(|net| *net > 0).count(),
            merchants_paying: nets.filter(|net| *net < 0).count(),
            operator_float: money(operator.float_minor, currency),
            operator_fees: money(operator.fees_minor, currency),
            operator_rounding: money(operator.rounding_minor, currency),
            operator_cash: money(operator.cash_minor, currency),
            operator_breakage: money(operator.breakage_kept_minor, currency),
            operator_net: money(operator.net_minor, currency),
            entries: if settlement.last_sequence == 0 {
                0
            } else {
                settlement.last_sequence - settlement.first_sequence + 1
            },
        }
    }
}

/// One hour's bar of the chart, in SVG units (the bar's parts stacked from the bottom).
pub struct HourBar {
    pub x: i64,
    pub label: String,
    pub earns: i64,
    pub burns: i64,
    pub others: i64,
    pub earns_y: i64,
    pub earns_height: i64,
    pub burns_y: i64,
    pub burns_height: i64,
    pub others_y: i64,
    pub others_height: i64,
}

const CHART_HEIGHT: i64 = 160;
const CHART_BAR_WIDTH: i64 = 26;
const CHART_BAR_STEP: i64 = 30;

fn hour_bars(
    counts: &[coalition_storage::HourlyCount],
    hours: i64,
    label: impl Fn(i64) -> String,
) -> (Vec<HourBar>, i64) {
    let mut by_hour = vec![(0i64, 0i64, 0i64); hours.max(0) as usize];
    for count in counts {
        let Some(slot) = usize::try_from(count.hour)
            .ok()
            .and_then(|hour| by_hour.get_mut(hour))
        else {
            continue;
        };
        match count.kind.as_str() {
            "earn" | "earn_by_spend" => slot.0 += count.entries,
            "burn" | "capture" => slot.1 += count.entries,
            _ => slot.2 += count.entries,
        }
    }
    let peak = by_hour
        .iter()
        .map(|(earns, burns, others)| earns + burns + others)
        .max()
        .unwrap_or(0)
        .max(1);
    let scale = |value: i64| value * CHART_HEIGHT / peak;
    let bars = by_hour
        .iter()
        .enumerate()
        .map(|(hour, &(earns, burns, others))| {
            let earns_height = scale(earns);
            let burns_height = scale(burns);
            let others_height = scale(others);
            let earns_y = CHART_HEIGHT - earns_height;
            let burns_y = earns_y - burns_height;
            HourBar {
                x: hour as i64 * CHART_BAR_STEP,
                label: label(hour as i64),
                earns,
                burns,
                others,
                earns_y,
                earns_height,
                burns_y,
                burns_height,
                others_y: burns_y - others_height,
                others_height,
            }
        })
        .collect();
    (bars, peak)
}

#[derive(askama::Template)]
#[template(path = "console/overview.html")]
struct OverviewPage {
    page: Page,
    period: String,
    from: String,
    to: String,
    totals: Totals,
    outstanding_points: String,
    bars: Vec<HourBar>,
    chart_width: i64,
    chart_height: i64,
    bar_width: i64,
    peak: String,
}

async fn overview(State(state): State<Arc<ConsoleState>>, signed: Signed) -> Response {
    let failed =
        |error: String| signed.refuse("overview", StatusCode::INTERNAL_SERVER_ERROR, error, "/");
    let view = match state.engine.preview_settlement(None).await {
        Ok(view) => view,
        Err(error) => return failed(error.to_string()),
    };
    let settlement = &view.settlement;
    let storage = state.engine.storage();
    let counts = match storage
        .entries_per_hour(settlement.start_ms, settlement.end_ms)
        .await
    {
        Ok(counts) => counts,
        Err(error) => return failed(error.to_string()),
    };
    let outstanding = match storage.points_in_wallets().await {
        Ok(outstanding) => outstanding,
        Err(error) => return failed(error.to_string()),
    };
    let hours = (settlement.end_ms - settlement.start_ms + HOUR_MS - 1) / HOUR_MS;
    let start_ms = settlement.start_ms;
    let cutoff = state.cutoff;
    let (bars, peak) = hour_bars(&counts, hours, |hour| {
        minute(&cutoff, start_ms + hour * HOUR_MS)[11..13].to_owned()
    });
    render(&OverviewPage {
        page: signed.page("overview"),
        period: settlement.period.clone(),
        from: minute(&cutoff, settlement.start_ms),
        to: minute(&cutoff, settlement.end_ms),
        totals: Totals::of(settlement),
        outstanding_points: points(outstanding),
        chart_width: hours * CHART_BAR_STEP,
        chart_height: CHART_HEIGHT,
        bar_width: CHART_BAR_WIDTH,
        bars,
        peak: points(peak),
    })
}

/// A merchant's line of the net positions.
pub struct NetRow {
    pub merchant_id: String,
    pub name: String,
    pub points_issued: String,
    pub points_redeemed: String,
    pub issuance: String,
    pub redemptions: String,
    pub fees: String,
    pub breakage_share: String,
    pub net: String,
    pub net_minor: i64,
    pub statement_link: String,
}

/// The heat map: named rows and columns, each cell's value and heat level.
pub struct Heatmap {
    pub redeemers: Vec<String>,
    pub rows: Vec<HeatRow>,
}

pub struct HeatRow {
    pub issuer: String,
    pub cells: Vec<HeatCell>,
}

pub struct HeatCell {
    pub value: String,
    pub level: i64,
    pub title: String,
}

/// Rows and columns for the largest issuers and redeemers by value; every other party's
/// cells summed into an "all others" row and column, so the map's total is the matrix's.
fn heatmap(matrix: &[MatrixCell], currency: &str, all_others: &str) -> Heatmap {
    fn largest(totals: BTreeMap<&str, i64>) -> Vec<String> {
        let mut parties: Vec<(&str, i64)> = totals.into_iter().collect();
        parties.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        parties
            .into_iter()
            .take(MATRIX_PARTIES_SHOWN_MAX)
            .map(|(party, _)| party.to_owned())
            .collect()
    }
    let mut issuer_totals = BTreeMap::new();
    let mut redeemer_totals = BTreeMap::new();
    for cell in matrix {
        *issuer_totals.entry(cell.issuer.as_str()).or_insert(0i64) += cell.value_minor;
        *redeemer_totals
            .entry(cell.redeemer.as_str())
            .or_insert(0i64) += cell.value_minor;
    }
    let issuers_shown = largest(issuer_totals.clone());
    let redeemers_shown = largest(redeemer_totals.clone());
    let others_rows = issuer_totals.len() > issuers_shown.len();
    let others_columns = redeemer_totals.len() > redeemers_shown.len();
    let row_count = issuers_shown.len() + usize::from(others_rows);
    let column_count = redeemers_shown.len() + usize::from(others_columns);
    let mut grid = vec![vec![(0i64, 0i64); column_count]; row_count];
    for cell in matrix {
        let row = issuers_shown
            .iter()
            .position(|issuer| *issuer == cell.issuer)
            .unwrap_or(row_count.saturating_sub(1));
        let column = redeemers_shown
            .iter()
            .position(|redeemer| *redeemer == cell.redeemer)
            .unwrap_or(column_count.saturating_sub(1));
        grid[row][column].0 += cell.value_minor;
        grid[row][column].1 += cell.points;
    }
    let peak = grid
        .iter()
        .flatten()
        .map(|(value, _)| *value)
        .max()
        .unwrap_or(0)
        .max(1);
    let mut redeemers = redeemers_shown.clone();
    if others_columns {
        redeemers.push(all_others.to_owned());
    }
    let mut issuers = issuers_shown;
    if others_rows {
        issuers.push(all_others.to_owned());
    }
    let rows = issuers
        .into_iter()
        .zip(grid)
        .map(|(issuer, cells)| HeatRow {
            cells: cells
                .into_iter()
                .zip(&redeemers)
                .map(|((value, cell_points), redeemer)| HeatCell {
                    value: if value == 0 {
                        String::new()
                    } else {
                        money(value, currency)
                    },
                    // Any value at all shows at least the first level.
                    level: if value <= 0 {
                        0
                    } else {
                        (value * HEAT_LEVELS / peak).clamp(1, HEAT_LEVELS)
                    },
                    title: format!("{issuer} → {redeemer}: {} pts", points(cell_points)),
                })
                .collect(),
            issuer,
        })
        .collect();
    Heatmap { redeemers, rows }
}

/// A line of the payments of a finalised period, with what a payout form needs.
pub struct PaymentRow {
    pub merchant_id: String,
    pub name: String,
    pub operator_pays: bool,
    pub amount: String,
    pub amount_minor: i64,
    pub end_to_end_id: String,
}

#[derive(askama::Template)]
#[template(path = "console/settlement.html")]
struct SettlementPage {
    page: Page,
    period: String,
    period_query: String,
    status: &'static str,
    can_finalise: bool,
    finalised: bool,
    from: String,
    to: String,
    first_sequence: u64,
    last_sequence: u64,
    head_hash: String,
    closing_sequence: Option<u64>,
    finalised_at: Option<String>,
    totals: Totals,
    nets: Vec<NetRow>,
    heatmap: Heatmap,
    payments: Vec<PaymentRow>,
    has_pain_001: bool,
    notice: Option<String>,
    open_period: String,
    previous_period: String,
    finalised_periods: Vec<String>,
}

#[derive(Deserialize)]
struct PeriodQuery {
    period: Option<String>,
    done: Option<String>,
    paid: Option<String>,
    payable: Option<String>,
}

fn status_text(status: PeriodStatus, t: &super::text::Texts) -> &'static str {
    match status {
        PeriodStatus::Open => t.status_open,
        PeriodStatus::Closed => t.status_closed,
        PeriodStatus::Finalised => t.status_finalised,
    }
}

impl ConsoleState {
    fn merchant_name(&self, merchant_id: &str) -> String {
        MerchantId::new(merchant_id)
            .ok()
            .and_then(|id| self.engine.merchant(&id))
            .map_or_else(|| merchant_id.to_owned(), |merchant| merchant.name)
    }

    /// The period asked for, or the one open now.
    async fn settlement_view(&self, period: Option<&str>) -> Result<SettlementView, String> {
        let period = period.map(str::trim).filter(|period| !period.is_empty());
        self.engine
            .preview_settlement(period)
            .await
            .map_err(|error| error.to_string())
    }

    /// The payments of a finalised period (what its export's payments file holds).
    async fn payments(&self, view: &SettlementView) -> Result<Vec<Payment>, String> {
        export::period_payments(
            self.engine.storage(),
            &view.settlement,
            view.closing_sequence,
        )
        .await
        .map_err(|error| format!("{error:#}"))
    }
}

async fn settlement_page(
    State(state): State<Arc<ConsoleState>>,
    signed: Signed,
    Query(query): Query<PeriodQuery>,
) -> Response {
    let t = signed.language.texts();
    let view = match state.settlement_view(query.period.as_deref()).await {
        Ok(view) => view,
        Err(error) => {
            return signed.refuse("settlement", StatusCode::BAD_REQUEST, error, "/settlement");
        }
    };
    let settlement = &view.settlement;
    let currency = settlement.currency.as_str();
    let finalised = view.status == PeriodStatus::Finalised;
    let payments = if finalised {
        match state.payments(&view).await {
            Ok(payments) => payments,
            Err(error) => {
                return signed.refuse(
                    "settlement",
                    StatusCode::INTERNAL_SERVER_ERROR,
                    error,
                    "/settlement",
                );
            }
        }
    } else {
        Vec::new()
    };
    let period_query = percent_encode(&settlement.period);
    let mut nets: Vec<NetRow> = settlement
        .merchants
        .iter()
        .map(|net| NetRow {
            merchant_id: net.merchant_id.clone(),
            name: state.merchant_name(&net.merchant_id),
            points_issued: points(net.points_issued),
            points_redeemed: points(net.points_redeemed),
            issuance: money(
                -(net.issuance_minor + net.issuance_reversed_minor),
                currency,
            ),
            redemptions: money(
                net.redemptions_minor + net.redemptions_reversed_minor,
                currency,
            ),
            fees: money(-net.fees_minor, currency),
            breakage_share: money(net.breakage_share_minor, currency),
            net: money(net.net_minor, currency),
            net_minor: net.net_minor,
            statement_link: format!(
                "/settlement/statement?period={period_query}&merchant={}",
                percent_encode(&net.merchant_id)
            ),
        })
        .collect();
    nets.sort_by(|a, b| {
        b.net_minor
            .abs()
            .cmp(&a.net_minor.abs())
            .then(a.merchant_id.cmp(&b.merchant_id))
    });
    let notice = match (
        query.done.as_deref(),
        query.paid.as_deref(),
        query.payable.as_deref(),
    ) {
        (Some("now"), _, _) => Some(t.finalised_now.to_owned()),
        (Some("before"), _, _) => Some(t.finalised_before.to_owned()),
        (_, Some(merchant), Some(payable)) => Some(format!(
            "{} {merchant}: {} {}",
            t.payout_recorded,
            t.still_payable,
            payable
                .parse::<i64>()
                .map_or_else(|_| payable.to_owned(), |minor| money(minor, currency))
        )),
        _ => None,
    };
    let engine = &state.engine;
    let open = engine.settlement_cutoff().period_at(engine.now_ms());
    let previous = engine
        .settlement_cutoff()
        .period_at(open.start_ms.saturating_sub(1));
    let finalised_periods = engine
        .storage()
        .finalised_labels()
        .await
        .unwrap_or_default()
        .into_iter()
        .rev()
        .take(31)
        .collect();
    let cutoff = state.cutoff;
    let payment_rows = payments
        .iter()
        .map(|payment| PaymentRow {
            merchant_id: payment.merchant_id.clone(),
            name: state.merchant_name(&payment.merchant_id),
            operator_pays: payment.direction == PaymentDirection::OperatorPays,
            amount: money(payment.amount_minor, currency),
            amount_minor: payment.amount_minor,
            end_to_end_id: payment.end_to_end_id.clone(),
        })
        .collect();
    render(&SettlementPage {
        page: signed.page("settlement"),
        period: settlement.period.clone(),
        period_query,
        status: status_text(view.status, t),
        can_finalise: view.status == PeriodStatus::Closed,
        finalised,
        from: minute(&cutoff, settlement.start_ms),
        to: minute(&cutoff, settlement.end_ms),
        first_sequence: settlement.first_sequence,
        last_sequence: settlement.last_sequence,
        head_hash: settlement.head_hash.clone(),
        closing_sequence: view.closing_sequence,
        finalised_at: view.finalised_at_ms.map(|at| second(&cutoff, at)),
        totals: Totals::of(settlement),
        nets,
        heatmap: heatmap(&settlement.matrix, currency, t.all_others),
        has_pain_001: payments
            .iter()
            .any(|payment| payment.direction == PaymentDirection::OperatorPays),
        payments: payment_rows,
        notice,
        open_period: open.label,
        previous_period: previous.label,
        finalised_periods,
    })
}

#[derive(askama::Template)]
#[template(path = "console/finalise.html")]
struct FinalisePage {
    page: Page,
    period: String,
    from: String,
    to: String,
    totals: Totals,
    merchants: usize,
}

async fn finalise_confirmation(
    State(state): State<Arc<ConsoleState>>,
    signed: Signed,
    Query(query): Query<PeriodQuery>,
) -> Response {
    let t = signed.language.texts();
    let Some(period) = query.period.as_deref() else {
        return Redirect::to("/settlement").into_response();
    };
    let view = match state.settlement_view(Some(period)).await {
        Ok(view) => view,
        Err(error) => {
            return signed.refuse("settlement", StatusCode::BAD_REQUEST, error, "/settlement");
        }
    };
    let back = format!(
        "/settlement?period={}",
        percent_encode(&view.settlement.period)
    );
    match view.status {
        PeriodStatus::Finalised => Redirect::to(&back).into_response(),
        PeriodStatus::Open => signed.refuse(
            "settlement",
            StatusCode::CONFLICT,
            t.finalise_not_closed,
            &back,
        ),
        PeriodStatus::Closed => render(&FinalisePage {
            page: signed.page("settlement"),
            period: view.settlement.period.clone(),
            from: minute(&state.cutoff, view.settlement.start_ms),
            to: minute(&state.cutoff, view.settlement.end_ms),
            totals: Totals::of(&view.settlement),
            merchants: view.settlement.merchants.len(),
        }),
    }
}

#[derive(Deserialize)]
struct FinaliseForm {
    #[serde(default)]
    csrf: String,
    period: String,
}

async fn finalise(
    State(state): State<Arc<ConsoleState>>,
    signed: Signed,
    axum::Form(form): axum::Form<FinaliseForm>,
) -> Response {
    if !signed.form_is_genuine(&form.csrf) {
        return forged_form(&signed);
    }
    match state.engine.finalise_settlement(form.period.trim()).await {
        Ok((view, newly)) => {
            tracing::info!(period = %view.settlement.period, newly, "period finalised from the console");
            Redirect::to(&format!(
                "/settlement?period={}&done={}",
                percent_encode(&view.settlement.period),
                if newly { "now" } else { "before" }
            ))
            .into_response()
        }
        Err(error) => signed.refuse(
            "settlement",
            StatusCode::CONFLICT,
            error.to_string(),
            &format!("/settlement?period={}", percent_encode(&form.period)),
        ),
    }
}

#[derive(Deserialize)]
struct StatementQuery {
    period: String,
    merchant: String,
}

/// A merchant's statement lines of a period: the entries that posted to its settlement or
/// fee account.
async fn statement_lines(
    state: &ConsoleState,
    query: &StatementQuery,
) -> Result<
    (
        Settlement,
        MerchantId,
        Vec<coalition_domain::settlement::StatementLine>,
    ),
    String,
> {
    let merchant = MerchantId::new(query.merchant.trim()).map_err(|error| error.to_string())?;
    if state.engine.merchant(&merchant).is_none() {
        return Err(format!("merchant {merchant} is not registered"));
    }
    let view = state.settlement_view(Some(&query.period)).await?;
    let currency = coalition_domain::CurrencyCode::new(&view.settlement.currency)
        .ok_or_else(|| format!("currency {:?}", view.settlement.currency))?;
    // Only the entries that moved the merchant's money: found through its two accounts'
    // postings, not by reading the whole period.
    let storage = state.engine.storage();
    let range = storage
        .period_range(view.settlement.start_ms, view.settlement.end_ms)
        .await
        .map_err(|error| error.to_string())?;
    let entries = match range {
        Some((first, last)) => storage
            .entries_posting_to(
                &[
                    AccountKey::MerchantSettlement(merchant.clone()),
                    AccountKey::MerchantFees(merchant.clone()),
                ],
                first,
                last,
            )
            .await
            .map_err(|error| error.to_string())?,
        None => Vec::new(),
    };
    let lines = coalition_domain::settlement::statement_lines(&entries, &merchant, currency);
    Ok((view.settlement, merchant, lines))
}

pub struct StatementRow {
    pub sequence: u64,
    pub accepted_at: String,
    pub kind: String,
    pub submitted_by: String,
    pub transaction: String,
    pub points: String,
    pub amount: String,
    pub fee: String,
}

#[derive(askama::Template)]
#[template(path = "console/statement.html")]
struct StatementPage {
    page: Page,
    period: String,
    period_query: String,
    merchant_id: String,
    merchant_query: String,
    name: String,
    rows: Vec<StatementRow>,
    line_count: usize,
    total_points: String,
    total_amount: String,
    total_fees: String,
    lines_net: String,
    net: String,
}

async fn statement_page(
    State(state): State<Arc<ConsoleState>>,
    signed: Signed,
    Query(query): Query<StatementQuery>,
) -> Response {
    let (settlement, merchant, lines) = match statement_lines(&state, &query).await {
        Ok(found) => found,
        Err(error) => {
            return signed.refuse("settlement", StatusCode::BAD_REQUEST, error, "/settlement");
        }
    };
    let currency = settlement.currency.as_str();
    let net = settlement
        .merchants
        .iter()
        .find(|net| net.merchant_id == merchant.as_str())
        .map_or(0, |net| net.net_minor);
    render(&StatementPage {
        page: signed.page("settlement"),
        period: settlement.period.clone(),
        period_query: percent_encode(&settlement.period),
        merchant_id: merchant.as_str().to_owned(),
        merchant_query: percent_encode(merchant.as_str()),
        name: state.merchant_name(merchant.as_str()),
        line_count: lines.len(),
        total_points: points(lines.iter().map(|line| line.points).sum()),
        total_amount: money(lines.iter().map(|line| line.amount_minor).sum(), currency),
        total_fees: money(lines.iter().map(|line| line.fee_minor).sum(), currency),
        lines_net: money(
            lines
                .iter()
                .map(|line| line.amount_minor + line.fee_minor)
                .sum(),
            currency,
        ),
        net: money(net, currency),
        rows: lines
            .iter()
            .take(STATEMENT_LINES_SHOWN_MAX)
            .map(|line| StatementRow {
                sequence: line.sequence,
                accepted_at: second(&state.cutoff, line.accepted_at_ms),
                kind: line.kind.clone(),
                submitted_by: line.submitted_by.clone(),
                transaction: line.merchant_transaction_id.clone(),
                points: points(line.points),
                amount: money(line.amount_minor, currency),
                fee: money(line.fee_minor, currency),
            })
            .collect(),
    })
}

fn download(content_type: &'static str, file_name: &str, bytes: Vec<u8>) -> Response {
    let disposition = format!(
        "attachment; filename=\"{}\"",
        file_name.replace(
            |c: char| !c.is_ascii_alphanumeric() && !".-_".contains(c),
            "_"
        )
    );
    (
        [
            (header::CONTENT_TYPE, content_type.to_owned()),
            (header::CONTENT_DISPOSITION, disposition),
        ],
        bytes,
    )
        .into_response()
}

async fn statement_csv(
    State(state): State<Arc<ConsoleState>>,
    signed: Signed,
    Query(query): Query<StatementQuery>,
) -> Response {
    let result = match statement_lines(&state, &query).await {
        Ok((settlement, merchant, lines)) => export::csv_bytes(
            &export::STATEMENT_COLUMNS,
            lines
                .iter()
                .map(|line| export::statement_cells(line, &state.cutoff)),
        )
        .map(|bytes| (settlement, merchant, bytes))
        .map_err(|error| format!("{error:#}")),
        Err(error) => Err(error),
    };
    match result {
        Ok((settlement, merchant, bytes)) => download(
            "text/csv; charset=utf-8",
            &format!(
                "statement-{}-{}.csv",
                settlement.period,
                merchant.file_name_stem()
            ),
            bytes,
        ),
        Err(error) => signed.refuse("settlement", StatusCode::BAD_REQUEST, error, "/settlement"),
    }
}

/// A finalised period's view and payments, or the page that says why there are none.
async fn finalised_payments(
    state: &ConsoleState,
    signed: &Signed,
    period: Option<&str>,
) -> Result<(SettlementView, Vec<Payment>), Response> {
    let t = signed.language.texts();
    let refuse = |status: StatusCode, error: String| {
        signed.refuse("settlement", status, error, "/settlement")
    };
    let view = state
        .settlement_view(period)
        .await
        .map_err(|error| refuse(StatusCode::BAD_REQUEST, error))?;
    if view.status != PeriodStatus::Finalised {
        return Err(refuse(
            StatusCode::CONFLICT,
            t.payments_only_finalised.to_owned(),
        ));
    }
    let payments = state
        .payments(&view)
        .await
        .map_err(|error| refuse(StatusCode::INTERNAL_SERVER_ERROR, error))?;
    Ok((view, payments))
}

async fn payments_csv(
    State(state): State<Arc<ConsoleState>>,
    signed: Signed,
    Query(query): Query<PeriodQuery>,
) -> Response {
    let (view, payments) = match finalised_payments(&state, &signed, query.period.as_deref()).await
    {
        Ok(found) => found,
        Err(response) => return response,
    };
    let name_of = |merchant: &str| state.merchant_name(merchant);
    match export::payments_csv(&view.settlement, &payments, &name_of) {
        Ok(bytes) => download(
            "text/csv; charset=utf-8",
            &format!("payments-{}.csv", view.settlement.period),
            bytes,
        ),
        Err(error) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{error:#}")).into_response(),
    }
}

async fn pain_001(
    State(state): State<Arc<ConsoleState>>,
    signed: Signed,
    Query(query): Query<PeriodQuery>,
) -> Response {
    let (view, payments) = match finalised_payments(&state, &signed, query.period.as_deref()).await
    {
        Ok(found) => found,
        Err(response) => return response,
    };
    let name_of = |merchant: &str| state.merchant_name(merchant);
    let finalised_at_ms = view.finalised_at_ms.unwrap_or(view.settlement.end_ms);
    match export::pain_001(
        &view.settlement,
        &payments,
        &state.cutoff,
        finalised_at_ms,
        &name_of,
    ) {
        Some(xml) => download(
            "application/xml",
            &format!("payments-{}.pain.001.xml", view.settlement.period),
            xml.into_bytes(),
        ),
        None => {
            let t = signed.language.texts();
            message(
                signed.page("settlement"),
                StatusCode::NOT_FOUND,
                t.payments,
                t.no_payments,
                &format!(
                    "/settlement?period={}",
                    percent_encode(&view.settlement.period)
                ),
            )
        }
    }
}

#[derive(Deserialize)]
struct PayoutForm {
    #[serde(default)]
    csrf: String,
    period: String,
    merchant: String,
    amount_minor: String,
    reference: String,
}

async fn payout(
    State(state): State<Arc<ConsoleState>>,
    signed: Signed,
    axum::Form(form): axum::Form<PayoutForm>,
) -> Response {
    if !signed.form_is_genuine(&form.csrf) {
        return forged_form(&signed);
    }
    let back = format!("/settlement?period={}", percent_encode(form.period.trim()));
    let refuse = |error: String| signed.refuse("settlement", StatusCode::BAD_REQUEST, error, &back);
    let merchant = match MerchantId::new(form.merchant.trim()) {
        Ok(merchant) => merchant,
        Err(error) => return refuse(error.to_string()),
    };
    let Ok(amount_minor) = form.amount_minor.trim().parse::<i64>() else {
        return refuse(format!(
            "amount_minor must be a whole number of minor units, got {:?}",
            form.amount_minor
        ));
    };
    match state
        .engine
        .pay_out(
            merchant.clone(),
            amount_minor,
            form.reference.trim().to_owned(),
        )
        .await
    {
        Ok((sequence, payable)) => {
            tracing::info!(%merchant, amount_minor, sequence, "payout recorded from the console");
            Redirect::to(&format!(
                "{back}&paid={}&payable={payable}",
                percent_encode(merchant.as_str())
            ))
            .into_response()
        }
        Err(error) => refuse(error.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cell(issuer: &str, redeemer: &str, value_minor: i64) -> MatrixCell {
        MatrixCell {
            issuer: issuer.into(),
            redeemer: redeemer.into(),
            points: value_minor * 10,
            value_minor,
        }
    }

    #[test]
    fn the_heat_map_names_the_largest_parties_and_sums_the_rest_exactly() {
        // 20 issuers redeeming at 15 redeemers: more than the map names on each side.
        let mut matrix = Vec::new();
        for issuer in 0..20 {
            for redeemer in 0..15 {
                matrix.push(cell(
                    &format!("tenant-{issuer:02}"),
                    &format!("shop-{redeemer:02}"),
                    (issuer + 1) * 100 + redeemer + 1,
                ));
            }
        }
        let map = heatmap(&matrix, "CNY", "others");
        assert_eq!(map.rows.len(), MATRIX_PARTIES_SHOWN_MAX + 1);
        assert_eq!(map.redeemers.len(), MATRIX_PARTIES_SHOWN_MAX + 1);
        assert_eq!(map.rows[0].issuer, "tenant-19", "the largest issuer first");
        assert_eq!(map.redeemers[0], "shop-14", "the largest redeemer first");
        assert_eq!(map.rows.last().unwrap().issuer, "others");
        let shown: i64 = map
            .rows
            .iter()
            .flat_map(|row| &row.cells)
            .filter(|cell| !cell.value.is_empty())
            .map(|cell| {
                cell.value
                    .replace(['¥', ',', '.'], "")
                    .parse::<i64>()
                    .unwrap()
            })
            .sum();
        let whole: i64 = matrix.iter().map(|cell| cell.value_minor).sum();
        assert_eq!(shown, whole, "no value lost or counted twice");
        let levels: Vec<i64> = map
            .rows
            .iter()
            .flat_map(|row| row.cells.iter().map(|cell| cell.level))
            .collect();
        assert!(levels.iter().all(|level| (1..=HEAT_LEVELS).contains(level)));
        assert!(
            levels.contains(&HEAT_LEVELS),
            "the largest cell is the hottest"
        );
    }

    #[test]
    fn an_empty_matrix_draws_nothing_and_small_ones_name_everyone() {
        assert!(heatmap(&[], "CNY", "others").rows.is_empty());
        let map = heatmap(
            &[cell("a", "x", 5), cell("b", "x", 0), cell("a", "y", 1)],
            "CNY",
            "others",
        );
        assert_eq!(map.redeemers, ["x", "y"]);
        assert_eq!(map.rows.len(), 2);
        assert_eq!(map.rows[1].cells[0].level, 0, "a zero cell is cold");
        assert!(map.rows[1].cells[0].value.is_empty());
    }

    #[test]
    fn hour_bars_stack_by_kind_and_scale_to_the_busiest_hour() {
        let count = |hour, kind: &str, entries| coalition_storage::HourlyCount {
            hour,
            kind: kind.into(),
            entries,
        };
        let (bars, peak) = hour_bars(
            &[
                count(0, "earn", 30),
                count(0, "burn", 10),
                count(2, "capture", 5),
                count(2, "reversal", 5),
                count(30, "earn", 1),
            ],
            3,
            |hour| hour.to_string(),
        );
        assert_eq!(peak, 40);
        assert_eq!(bars.len(), 3);
        assert_eq!((bars[0].earns, bars[0].burns, bars[0].others), (30, 10, 0));
        assert_eq!(bars[0].earns_height + bars[0].burns_height, CHART_HEIGHT);
        assert_eq!(bars[0].burns_y, 0, "the busiest hour reaches the top");
        assert_eq!((bars[2].burns, bars[2].others), (5, 5));
        assert_eq!(bars[1].earns + bars[1].burns + bars[1].others, 0);
    }
}

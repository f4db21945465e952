//! The demo's finance half: settling the day's periods over gRPC, a merchant's own record with
//! planted differences reconciled over the gRPC stream, and the export an auditor verifies.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use coalition_domain::settlement::{Cutoff, Period};
use coalition_domain::{MerchantId, reconciliation::ClearedTransaction};
use coalition_grpc::client::{AdminServiceClient, AdminToken};
use coalition_grpc::pb;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

type Admin = AdminServiceClient<InterceptedService<Channel, AdminToken>>;

/// The periods that acceptance times in `[from_ms, to_ms]` fall into, in order.
pub fn periods_between(cutoff: &Cutoff, from_ms: i64, to_ms: i64) -> Vec<Period> {
    let mut periods = vec![cutoff.period_at(from_ms)];
    while periods.last().expect("one at least").end_ms <= to_ms {
        let next = cutoff.next(periods.last().expect("one at least"));
        periods.push(next);
    }
    periods
}

/// Finalises each period, then finalises it again to show that nothing more is booked.
pub async fn finalise(
    admin: &mut Admin,
    periods: &[Period],
) -> anyhow::Result<Vec<pb::Settlement>> {
    let mut settled = Vec::new();
    for period in periods {
        let first = admin
            .finalise_settlement(pb::FinaliseSettlementRequest {
                period: period.label.clone(),
            })
            .await
            .with_context(|| format!("finalising period {}", period.label))?
            .into_inner();
        let again = admin
            .finalise_settlement(pb::FinaliseSettlementRequest {
                period: period.label.clone(),
            })
            .await?
            .into_inner();
        if first.already_finalised
            || !again.already_finalised
            || first.settlement != again.settlement
        {
            bail!(
                "period {}: finalising twice must book once and return the same settlement",
                period.label
            );
        }
        settled.push(
            first
                .settlement
                .context("the server returned no settlement")?,
        );
    }
    Ok(settled)
}

/// What was planted into the merchant's record, by status.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Planted {
    pub missing_at_merchant: u64,
    pub points_mismatch: u64,
    pub amount_mismatch: u64,
    pub missing_in_clearing: u64,
    pub duplicated: u64,
    pub malformed: u64,
}

/// One row of the merchant's own record.
#[derive(Debug, Clone)]
pub struct RecordRow {
    pub id: String,
    pub kind: String,
    pub points: String,
    pub amount_minor: Option<i64>,
}

/// The merchant's own record of the period: what clearing booked for it, as its point of sale
/// kept it, with one of each kind of difference planted. Written as CSV to `path`.
pub fn merchant_record(
    cleared: &[ClearedTransaction],
    path: &Path,
) -> anyhow::Result<(Vec<RecordRow>, Planted)> {
    if cleared.len() < 6 {
        bail!("the merchant has too few transactions to plant differences into");
    }
    let mut rows: Vec<RecordRow> = cleared
        .iter()
        .map(|transaction| RecordRow {
            id: transaction.merchant_transaction_id.clone(),
            kind: transaction.kind.clone(),
            points: transaction.points.to_string(),
            amount_minor: transaction.spend_minor,
        })
        .collect();
    let mut planted = Planted::default();
    // The till lost one transaction.
    rows.remove(0);
    planted.missing_at_merchant += 1;
    // A points typo.
    rows[0].points = (cleared[1].points + 1).to_string();
    planted.points_mismatch += 1;
    // A spend typo, on the first later row that has a spend.
    if let Some(row) = rows
        .iter_mut()
        .skip(1)
        .find(|row| row.amount_minor.is_some())
    {
        row.amount_minor = row.amount_minor.map(|amount| amount + 100);
        planted.amount_mismatch += 1;
    }
    // A sale the till recorded that never reached clearing, under an id a spreadsheet would
    // take for a formula (the report neutralises it).
    rows.push(RecordRow {
        id: "=1+1".into(),
        kind: "earn".into(),
        points: "25".into(),
        amount_minor: Some(2_500),
    });
    planted.missing_in_clearing += 1;
    // An export glitch: one row twice.
    let repeated = rows[rows.len() / 2].clone();
    rows.push(repeated);
    planted.duplicated += 1;
    // A row that does not parse.
    rows.push(RecordRow {
        id: "POS-BROKEN-1".into(),
        kind: "earn".into(),
        points: "twelve".into(),
        amount_minor: None,
    });
    planted.malformed += 1;

    let mut writer =
        csv::Writer::from_path(path).with_context(|| format!("cannot write {}", path.display()))?;
    writer.write_record(["merchant_transaction_id", "kind", "points", "amount_minor"])?;
    for row in &rows {
        writer.write_record([
            row.id.as_str(),
            row.kind.as_str(),
            row.points.as_str(),
            &row.amount_minor
                .map_or_else(String::new, |amount| amount.to_string()),
        ])?;
    }
    writer.flush()?;
    Ok((rows, planted))
}

/// Streams the record to the server's Reconcile call. A row whose points do not parse is sent
/// as it would be by a client that checks its input: not at all, and counted as malformed.
pub async fn reconcile_over_grpc(
    admin: &mut Admin,
    merchant: &MerchantId,
    period: &Period,
    rows: &[RecordRow],
) -> anyhow::Result<(pb::ReconcileResponse, u64)> {
    let mut messages = vec![pb::ReconcileRequest {
        item: Some(pb::reconcile_request::Item::Header(pb::ReconcileHeader {
            merchant_id: merchant.as_str().to_owned(),
            period: period.label.clone(),
        })),
    }];
    let mut unparsable = 0u64;
    for row in rows {
        let Ok(points) = row.points.parse::<i64>() else {
            unparsable += 1;
            continue;
        };
        messages.push(pb::ReconcileRequest {
            item: Some(pb::reconcile_request::Item::Row(pb::MerchantRecordRow {
                merchant_transaction_id: row.id.clone(),
                points,
                amount_minor: row.amount_minor,
                kind: row.kind.clone(),
            })),
        });
    }
    let response = admin
        .reconcile(tokio_stream::iter(messages))
        .await
        .context("the reconciliation stream")?
        .into_inner();
    Ok((response, unparsable))
}

/// Counts of the reconciliation by status, to compare with what was planted.
pub fn found(response: &pb::ReconcileResponse, unparsable: u64) -> Planted {
    let count = |status: pb::ReconcileStatus| {
        response
            .differences
            .iter()
            .filter(|difference| difference.status == status as i32)
            .count() as u64
    };
    Planted {
        missing_at_merchant: count(pb::ReconcileStatus::MissingAtMerchant),
        points_mismatch: count(pb::ReconcileStatus::PointsMismatch),
        amount_mismatch: count(pb::ReconcileStatus::AmountMismatch),
        missing_in_clearing: count(pb::ReconcileStatus::MissingInClearing),
        duplicated: count(pb::ReconcileStatus::Duplicated),
        malformed: unparsable + response.malformed.len() as u64,
    }
}

/// Where the demo leaves what an auditor needs.
pub struct AuditTrail {
    pub exports: Vec<PathBuf>,
    pub public_key: PathBuf,
}

/// Generates a fresh operator key in `dir`, exports every finalised period with the
/// merchant's record reconciled into it, and copies the public key next to them.
pub async fn export_periods(
    database_url: &str,
    dir: &Path,
    cutoff: Cutoff,
    periods: &[Period],
    reconcile: crate::export::ReconcileInput,
) -> anyhow::Result<AuditTrail> {
    let keys = dir.join("operator-keys");
    if keys.exists() {
        std::fs::remove_dir_all(&keys)
            .with_context(|| format!("cannot remove {}", keys.display()))?;
    }
    let key = crate::operator_key::generate(&keys)?;
    let public_key = dir.join("operator.pub");
    std::fs::write(
        &public_key,
        format!("{}\n", hex::encode(key.public_key.as_bytes())),
    )
    .with_context(|| format!("cannot write {}", public_key.display()))?;
    let mut exports = Vec::new();
    for period in periods {
        let out = crate::export::export_folder(dir, &period.label);
        if out.exists() {
            std::fs::remove_dir_all(&out)
                .with_context(|| format!("cannot remove {}", out.display()))?;
        }
        crate::export::export(&crate::export::ExportOptions {
            database_url: database_url.to_owned(),
            period: period.clone(),
            cutoff,
            out: out.clone(),
            operator_keys: keys.clone(),
            reconcile: vec![reconcile.clone()],
            // What an auditor verifies, and the journal for `hledger check`.
            formats: crate::export::Formats {
                csv: false,
                hledger: true,
            },
        })
        .await?;
        exports.push(out);
    }
    Ok(AuditTrail {
        exports,
        public_key,
    })
}

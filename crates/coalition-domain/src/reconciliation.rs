//! Reconciliation of a merchant's own record against what clearing booked, matched by the
//! merchant's transaction id: matched, points mismatch, amount mismatch, missing in
//! clearing, missing at the merchant, duplicated in the merchant's record. The same matching
//! serves the CLI (a CSV file) and the gRPC stream.

use std::collections::HashMap;

use serde::Serialize;

/// One transaction of a merchant as cleared, for reconciliation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClearedTransaction {
    pub merchant_transaction_id: String,
    pub kind: String,
    pub points: i64,
    pub spend_minor: Option<i64>,
    pub sequence: u64,
}

/// One row of the merchant's file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MerchantRow {
    /// The line in the file (the header is line 1).
    pub line: u64,
    pub merchant_transaction_id: String,
    pub kind: String,
    pub points: i64,
    pub amount_minor: Option<i64>,
}

/// A row that could not be read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Malformed {
    pub line: u64,
    pub problem: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Matched,
    PointsMismatch,
    AmountMismatch,
    MissingInClearing,
    MissingAtMerchant,
    Duplicated,
}

impl Status {
    pub fn name(self) -> &'static str {
        match self {
            Status::Matched => "matched",
            Status::PointsMismatch => "points_mismatch",
            Status::AmountMismatch => "amount_mismatch",
            Status::MissingInClearing => "missing_in_clearing",
            Status::MissingAtMerchant => "missing_at_merchant",
            Status::Duplicated => "duplicated",
        }
    }
}

/// One difference between the two sides.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Difference {
    pub status: Status,
    pub merchant_transaction_id: String,
    pub merchant_line: Option<u64>,
    pub entry_sequence: Option<u64>,
    pub merchant_points: Option<i64>,
    pub clearing_points: Option<i64>,
    pub merchant_amount_minor: Option<i64>,
    pub clearing_amount_minor: Option<i64>,
}

/// Totals of one side.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SideTotals {
    pub transactions: u64,
    pub points: i64,
    pub amount_minor: i64,
}

/// The outcome of a reconciliation.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Report {
    pub merchant: SideTotals,
    pub clearing: SideTotals,
    pub counts: std::collections::BTreeMap<&'static str, u64>,
    pub malformed: Vec<Malformed>,
    /// Written to `differences.csv` and `differences.jsonl`, not into the summary.
    #[serde(skip)]
    pub differences: Vec<Difference>,
}

/// Matches the two sides by transaction id.
pub fn reconcile(
    merchant: Vec<MerchantRow>,
    clearing: Vec<ClearedTransaction>,
    malformed: Vec<Malformed>,
) -> Report {
    let mut report = Report {
        malformed,
        ..Report::default()
    };
    for row in &merchant {
        report.merchant.transactions += 1;
        report.merchant.points += row.points;
        report.merchant.amount_minor += row.amount_minor.unwrap_or(0);
    }
    for cleared in &clearing {
        report.clearing.transactions += 1;
        report.clearing.points += cleared.points;
        report.clearing.amount_minor += cleared.spend_minor.unwrap_or(0);
    }
    let mut cleared_by_id: HashMap<&str, &ClearedTransaction> = clearing
        .iter()
        .map(|cleared| (cleared.merchant_transaction_id.as_str(), cleared))
        .collect();
    let mut seen: HashMap<&str, u64> = HashMap::with_capacity(merchant.len());
    let record = |report: &mut Report, difference: Difference| {
        *report.counts.entry(difference.status.name()).or_default() += 1;
        if difference.status != Status::Matched {
            report.differences.push(difference);
        }
    };
    for row in &merchant {
        let id = row.merchant_transaction_id.as_str();
        let base = Difference {
            status: Status::Matched,
            merchant_transaction_id: id.to_owned(),
            merchant_line: Some(row.line),
            entry_sequence: None,
            merchant_points: Some(row.points),
            clearing_points: None,
            merchant_amount_minor: row.amount_minor,
            clearing_amount_minor: None,
        };
        if seen.insert(id, row.line).is_some() {
            record(
                &mut report,
                Difference {
                    status: Status::Duplicated,
                    ..base
                },
            );
            continue;
        }
        let Some(cleared) = cleared_by_id.remove(id) else {
            record(
                &mut report,
                Difference {
                    status: Status::MissingInClearing,
                    ..base
                },
            );
            continue;
        };
        let status = if cleared.points != row.points {
            Status::PointsMismatch
        } else if let (Some(theirs), Some(ours)) = (row.amount_minor, cleared.spend_minor)
            && theirs != ours
        {
            Status::AmountMismatch
        } else {
            Status::Matched
        };
        record(
            &mut report,
            Difference {
                status,
                entry_sequence: Some(cleared.sequence),
                clearing_points: Some(cleared.points),
                clearing_amount_minor: cleared.spend_minor,
                ..base
            },
        );
    }
    let mut missing: Vec<&ClearedTransaction> = cleared_by_id.into_values().collect();
    missing.sort_by_key(|cleared| cleared.sequence);
    for cleared in missing {
        record(
            &mut report,
            Difference {
                status: Status::MissingAtMerchant,
                merchant_transaction_id: cleared.merchant_transaction_id.clone(),
                merchant_line: None,
                entry_sequence: Some(cleared.sequence),
                merchant_points: None,
                clearing_points: Some(cleared.points),
                merchant_amount_minor: None,
                clearing_amount_minor: cleared.spend_minor,
            },
        );
    }
    report
}

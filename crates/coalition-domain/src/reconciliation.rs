//! Reconciliation of a merchant's own record against what clearing booked, matched by the
//! merchant's transaction id: matched, points mismatch, amount mismatch, missing in
//! clearing, missing at the merchant, duplicated in the merchant's record. The same rules serve
//! the CLI (a CSV file), the export and the gRPC stream; the matching itself runs in the
//! database, streamed, so that a period of any size reconciles in bounded memory.

use std::collections::{BTreeMap, HashMap, HashSet};

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

/// How many malformed rows a summary lists; the rest are counted (every one is written to
/// `malformed.csv` as it is found).
pub const MALFORMED_LISTED: usize = 1_000;

/// What a reconciliation found, without the differences themselves: those stream to their
/// writer as they are found, so that neither side's size bounds the memory it takes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    pub merchant: SideTotals,
    pub clearing: SideTotals,
    pub counts: BTreeMap<&'static str, u64>,
    /// Rows that could not be read.
    pub malformed_rows: u64,
    /// The first [`MALFORMED_LISTED`] of them.
    pub malformed: Vec<Malformed>,
}

impl Summary {
    /// Counts a row of the merchant's record in its side's totals.
    pub fn merchant_row(&mut self, row: &MerchantRow) {
        self.merchant.transactions += 1;
        self.merchant.points += row.points;
        self.merchant.amount_minor += row.amount_minor.unwrap_or(0);
    }

    /// Counts a row that could not be read, listing it while the list is short.
    pub fn malformed(&mut self, row: Malformed) {
        self.malformed_rows += 1;
        if self.malformed.len() < MALFORMED_LISTED {
            self.malformed.push(row);
        }
    }

    /// Counts an outcome by its status; true when it is a difference to report.
    pub fn record(&mut self, outcome: &Difference) -> bool {
        *self.counts.entry(outcome.status.name()).or_default() += 1;
        outcome.status != Status::Matched
    }

    /// How many outcomes had `status`.
    pub fn count(&self, status: Status) -> u64 {
        self.counts.get(status.name()).copied().unwrap_or(0)
    }
}

/// The outcome for one row of the merchant's record: `duplicated` when an earlier row has its
/// transaction id (then it is not compared again), else compared with what clearing booked
/// under that id in the period, if anything.
pub fn compare(
    row: &MerchantRow,
    duplicated: bool,
    cleared: Option<&ClearedTransaction>,
) -> Difference {
    let base = Difference {
        status: Status::Matched,
        merchant_transaction_id: row.merchant_transaction_id.clone(),
        merchant_line: Some(row.line),
        entry_sequence: None,
        merchant_points: Some(row.points),
        clearing_points: None,
        merchant_amount_minor: row.amount_minor,
        clearing_amount_minor: None,
    };
    if duplicated {
        return Difference {
            status: Status::Duplicated,
            ..base
        };
    }
    let Some(cleared) = cleared else {
        return Difference {
            status: Status::MissingInClearing,
            ..base
        };
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
    Difference {
        status,
        entry_sequence: Some(cleared.sequence),
        clearing_points: Some(cleared.points),
        clearing_amount_minor: cleared.spend_minor,
        ..base
    }
}

/// The outcome for a transaction clearing booked that the merchant's record lacks.
pub fn missing_at_merchant(cleared: &ClearedTransaction) -> Difference {
    Difference {
        status: Status::MissingAtMerchant,
        merchant_transaction_id: cleared.merchant_transaction_id.clone(),
        merchant_line: None,
        entry_sequence: Some(cleared.sequence),
        merchant_points: None,
        clearing_points: Some(cleared.points),
        merchant_amount_minor: None,
        clearing_amount_minor: cleared.spend_minor,
    }
}

/// The whole matching over two sides held in memory: the definition the database's streamed
/// matching (`Storage::begin_reconciliation`) is tested against. Differences come in the
/// merchant record's order, then those only clearing has by entry sequence.
pub fn reconcile(
    merchant: &[MerchantRow],
    clearing: &[ClearedTransaction],
    malformed: Vec<Malformed>,
) -> (Summary, Vec<Difference>) {
    let mut summary = Summary::default();
    for row in malformed {
        summary.malformed(row);
    }
    for cleared in clearing {
        summary.clearing.transactions += 1;
        summary.clearing.points += cleared.points;
        summary.clearing.amount_minor += cleared.spend_minor.unwrap_or(0);
    }
    let mut cleared_by_id: HashMap<&str, &ClearedTransaction> = clearing
        .iter()
        .map(|cleared| (cleared.merchant_transaction_id.as_str(), cleared))
        .collect();
    let mut seen: HashSet<&str> = HashSet::with_capacity(merchant.len());
    let mut differences = Vec::new();
    for row in merchant {
        summary.merchant_row(row);
        let id = row.merchant_transaction_id.as_str();
        let duplicated = !seen.insert(id);
        let cleared = if duplicated {
            None
        } else {
            cleared_by_id.remove(id)
        };
        let outcome = compare(row, duplicated, cleared);
        if summary.record(&outcome) {
            differences.push(outcome);
        }
    }
    let mut missing: Vec<&ClearedTransaction> = cleared_by_id.into_values().collect();
    missing.sort_by_key(|cleared| cleared.sequence);
    for cleared in missing {
        let outcome = missing_at_merchant(cleared);
        summary.record(&outcome);
        differences.push(outcome);
    }
    (summary, differences)
}

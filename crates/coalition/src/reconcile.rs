//! Reconciliation of a merchant's own record against what clearing booked, matched by the
//! merchant's transaction id: matched, points mismatch, amount mismatch, missing in
//! clearing, missing at the merchant, duplicated in the merchant's file. Malformed rows are
//! reported with their line numbers and do not stop the rest.
//!
//! The merchant's file is CSV with a header naming at least `merchant_transaction_id` and
//! `points`, and optionally `kind` and `amount_minor` (the spend in minor units; compared with
//! the spend clearing recorded when both sides have one).

use std::io::Read;
use std::path::Path;

use anyhow::{Context, bail};
pub use coalition_domain::reconciliation::{
    ClearedTransaction, Difference, Malformed, MerchantRow, Report, SideTotals, Status, reconcile,
};

/// Reads the merchant's file. `progress` is called with the bytes read so far.
pub fn read_merchant_file(
    reader: impl Read,
    mut progress: impl FnMut(u64),
) -> anyhow::Result<(Vec<MerchantRow>, Vec<Malformed>)> {
    let mut csv = csv::ReaderBuilder::new().flexible(true).from_reader(reader);
    let headers = csv.headers().context("the file has no header row")?.clone();
    let column = |name: &str| headers.iter().position(|header| header.trim() == name);
    let (Some(id_column), Some(points_column)) =
        (column("merchant_transaction_id"), column("points"))
    else {
        bail!(
            "the header must name merchant_transaction_id and points (and may name kind and amount_minor); it is {:?}",
            headers.iter().collect::<Vec<_>>()
        );
    };
    let kind_column = column("kind");
    let amount_column = column("amount_minor");
    let mut rows = Vec::new();
    let mut malformed = Vec::new();
    let mut record = csv::StringRecord::new();
    let mut counted = 0u64;
    loop {
        let line = csv.position().line();
        match csv.read_record(&mut record) {
            Ok(false) => break,
            Ok(true) => {}
            Err(error) => {
                malformed.push(Malformed {
                    line,
                    problem: error.to_string(),
                });
                continue;
            }
        }
        counted += 1;
        if counted.is_multiple_of(65_536) {
            progress(csv.position().byte());
        }
        let field = |index: usize| record.get(index).map(str::trim).unwrap_or("");
        let id = field(id_column);
        if id.is_empty() {
            malformed.push(Malformed {
                line,
                problem: "merchant_transaction_id is empty".into(),
            });
            continue;
        }
        let Ok(points) = field(points_column).parse::<i64>() else {
            malformed.push(Malformed {
                line,
                problem: format!("points {:?} is not a whole number", field(points_column)),
            });
            continue;
        };
        let amount_minor = match amount_column.map(field) {
            None | Some("") => None,
            Some(text) => match text.parse::<i64>() {
                Ok(amount) => Some(amount),
                Err(_) => {
                    malformed.push(Malformed {
                        line,
                        problem: format!("amount_minor {text:?} is not a whole number"),
                    });
                    continue;
                }
            },
        };
        rows.push(MerchantRow {
            line,
            merchant_transaction_id: id.to_owned(),
            kind: kind_column.map(field).unwrap_or("").to_owned(),
            points,
            amount_minor,
        });
    }
    progress(csv.position().byte());
    Ok((rows, malformed))
}

/// A text cell that a spreadsheet would read as a formula (starting with `=`, `+`, `-` or
/// `@`) gets a leading apostrophe. Only for text columns: amounts are written as numbers.
pub fn neutralise(text: &str) -> String {
    if text.starts_with(['=', '+', '-', '@']) {
        format!("'{text}")
    } else {
        text.to_owned()
    }
}

/// Writes `differences.csv` and `differences.jsonl` (every difference), `malformed.csv` and
/// `summary.json` (totals of both sides, counts by status, malformed rows) into `dir`.
pub fn write_report(report: &Report, dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let number = |value: Option<i64>| value.map_or_else(String::new, |v| v.to_string());
    let mut differences = csv::Writer::from_path(dir.join("differences.csv"))?;
    differences.write_record([
        "status",
        "merchant_transaction_id",
        "merchant_line",
        "entry_sequence",
        "merchant_points",
        "clearing_points",
        "merchant_amount_minor",
        "clearing_amount_minor",
    ])?;
    for difference in &report.differences {
        differences.write_record([
            difference.status.name().to_owned(),
            neutralise(&difference.merchant_transaction_id),
            difference
                .merchant_line
                .map_or_else(String::new, |v| v.to_string()),
            difference
                .entry_sequence
                .map_or_else(String::new, |v| v.to_string()),
            number(difference.merchant_points),
            number(difference.clearing_points),
            number(difference.merchant_amount_minor),
            number(difference.clearing_amount_minor),
        ])?;
    }
    differences.flush()?;
    let mut lines = std::io::BufWriter::new(std::fs::File::create(dir.join("differences.jsonl"))?);
    for difference in &report.differences {
        serde_json::to_writer(&mut lines, difference)?;
        std::io::Write::write_all(&mut lines, b"\n")?;
    }
    std::io::Write::flush(&mut lines)?;
    let mut malformed = csv::Writer::from_path(dir.join("malformed.csv"))?;
    malformed.write_record(["line", "problem"])?;
    for row in &report.malformed {
        malformed.write_record([row.line.to_string(), neutralise(&row.problem)])?;
    }
    malformed.flush()?;
    std::fs::write(
        dir.join("summary.json"),
        serde_json::to_string_pretty(report)?,
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cleared(id: &str, points: i64, spend: Option<i64>, sequence: u64) -> ClearedTransaction {
        ClearedTransaction {
            merchant_transaction_id: id.into(),
            kind: "earn".into(),
            points,
            spend_minor: spend,
            sequence,
        }
    }

    #[test]
    fn every_kind_of_difference_is_found_and_bad_rows_do_not_stop_the_rest() {
        let file = "merchant_transaction_id,kind,points,amount_minor\n\
                    t-1,earn,100,10000\n\
                    t-2,earn,99,20000\n\
                    t-3,earn,300,30001\n\
                    t-4,earn,5,\n\
                    t-1,earn,100,10000\n\
                    t-6,earn,many,1\n\
                    =cmd,earn,1,1\n";
        let (rows, malformed) = read_merchant_file(file.as_bytes(), |_| {}).unwrap();
        assert_eq!(rows.len(), 6);
        assert_eq!(
            malformed,
            vec![Malformed {
                line: 7,
                problem: "points \"many\" is not a whole number".into()
            }]
        );
        let report = reconcile(
            rows,
            vec![
                cleared("t-1", 100, Some(10_000), 1),
                cleared("t-2", 100, Some(20_000), 2),
                cleared("t-3", 300, Some(30_000), 3),
                cleared("t-5", 50, None, 4),
            ],
            malformed,
        );
        let count = |status: Status| report.counts.get(status.name()).copied().unwrap_or(0);
        assert_eq!(count(Status::Matched), 1);
        assert_eq!(count(Status::PointsMismatch), 1);
        assert_eq!(count(Status::AmountMismatch), 1);
        assert_eq!(count(Status::MissingInClearing), 2, "t-4 and =cmd");
        assert_eq!(count(Status::Duplicated), 1);
        assert_eq!(count(Status::MissingAtMerchant), 1);
        assert_eq!(report.merchant.transactions, 6);
        assert_eq!(report.clearing.points, 550);
        assert_eq!(report.differences.len(), 6);
        assert_eq!(neutralise("=cmd"), "'=cmd");
        assert_eq!(neutralise("-5"), "'-5");
        assert_eq!(neutralise("t-1"), "t-1");
    }

    #[test]
    fn a_header_without_the_needed_columns_is_refused() {
        assert!(read_merchant_file("id,pts\nx,1\n".as_bytes(), |_| {}).is_err());
    }
}

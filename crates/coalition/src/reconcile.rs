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
use coalition_domain::MerchantId;
pub use coalition_domain::reconciliation::{
    ClearedTransaction, Difference, Malformed, MerchantRow, Status, Summary, reconcile,
};
use coalition_storage::Storage;

/// The merchant's file, read a row at a time: each item a row or the reason it could not be
/// read.
pub struct MerchantFile<R: Read> {
    csv: csv::Reader<R>,
    record: csv::StringRecord,
    id_column: usize,
    points_column: usize,
    kind_column: Option<usize>,
    amount_column: Option<usize>,
}

impl<R: Read> MerchantFile<R> {
    /// Reads the header; an error when it does not name the columns needed.
    pub fn open(reader: R) -> anyhow::Result<Self> {
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
        Ok(MerchantFile {
            kind_column: column("kind"),
            amount_column: column("amount_minor"),
            csv,
            record: csv::StringRecord::new(),
            id_column,
            points_column,
        })
    }

    /// Bytes read so far.
    pub fn position(&self) -> u64 {
        self.csv.position().byte()
    }
}

impl<R: Read> Iterator for MerchantFile<R> {
    type Item = Result<MerchantRow, Malformed>;

    fn next(&mut self) -> Option<Self::Item> {
        let line = self.csv.position().line();
        match self.csv.read_record(&mut self.record) {
            Ok(false) => return None,
            Ok(true) => {}
            Err(error) => {
                return Some(Err(Malformed {
                    line,
                    problem: error.to_string(),
                }));
            }
        }
        let record = &self.record;
        let field = |index: usize| record.get(index).map(str::trim).unwrap_or("");
        let id = field(self.id_column);
        if id.is_empty() {
            return Some(Err(Malformed {
                line,
                problem: "merchant_transaction_id is empty".into(),
            }));
        }
        let Ok(points) = field(self.points_column).parse::<i64>() else {
            return Some(Err(Malformed {
                line,
                problem: format!(
                    "points {:?} is not a whole number",
                    field(self.points_column)
                ),
            }));
        };
        let amount_minor = match self.amount_column.map(field) {
            None | Some("") => None,
            Some(text) => match text.parse::<i64>() {
                Ok(amount) => Some(amount),
                Err(_) => {
                    return Some(Err(Malformed {
                        line,
                        problem: format!("amount_minor {text:?} is not a whole number"),
                    }));
                }
            },
        };
        Some(Ok(MerchantRow {
            line,
            merchant_transaction_id: id.to_owned(),
            kind: self.kind_column.map(field).unwrap_or("").to_owned(),
            points,
            amount_minor,
        }))
    }
}

/// Reconciles `file` against what `merchant_id` booked with `from_ms <= accepted_at_ms <
/// to_ms`, writing the report into `dir` as it goes (see [`ReportWriter`]). Memory stays
/// bounded whatever the sizes: the matching runs in the database. `progress` is called with
/// the bytes read so far.
pub async fn reconcile_file(
    storage: &Storage,
    merchant_id: &MerchantId,
    from_ms: i64,
    to_ms: i64,
    file: impl Read,
    dir: &Path,
    mut progress: impl FnMut(u64),
) -> anyhow::Result<Summary> {
    let mut rows = MerchantFile::open(file)?;
    let mut writer = ReportWriter::create(dir)?;
    let mut reconciliation = storage
        .begin_reconciliation(merchant_id, from_ms, to_ms)
        .await?;
    let mut read = 0u64;
    while let Some(row) = rows.next() {
        match row {
            Ok(row) => reconciliation.add(row).await?,
            Err(malformed) => {
                writer.malformed(&malformed)?;
                reconciliation.malformed(malformed);
            }
        }
        read += 1;
        if read.is_multiple_of(65_536) {
            progress(rows.position());
        }
    }
    progress(rows.position());
    let summary = reconciliation
        .finish(|difference| writer.difference(&difference))
        .await?;
    writer.finish(&summary)?;
    Ok(summary)
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

/// The files of a reconciliation's report in `dir`, written as the outcomes are found:
/// `differences.csv` and `differences.jsonl` (every difference), `malformed.csv` (every row
/// that could not be read), and at the end `summary.json` (totals of both sides, counts by
/// status, the count of malformed rows and the first of them).
pub struct ReportWriter {
    dir: std::path::PathBuf,
    differences: csv::Writer<std::fs::File>,
    lines: std::io::BufWriter<std::fs::File>,
    malformed: csv::Writer<std::fs::File>,
}

impl ReportWriter {
    pub fn create(dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
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
        let lines = std::io::BufWriter::new(std::fs::File::create(dir.join("differences.jsonl"))?);
        let mut malformed = csv::Writer::from_path(dir.join("malformed.csv"))?;
        malformed.write_record(["line", "problem"])?;
        Ok(ReportWriter {
            dir: dir.to_owned(),
            differences,
            lines,
            malformed,
        })
    }

    pub fn difference(&mut self, difference: &Difference) -> std::io::Result<()> {
        let number = |value: Option<i64>| value.map_or_else(String::new, |v| v.to_string());
        let whole = |value: Option<u64>| value.map_or_else(String::new, |v| v.to_string());
        self.differences.write_record([
            difference.status.name().to_owned(),
            neutralise(&difference.merchant_transaction_id),
            whole(difference.merchant_line),
            whole(difference.entry_sequence),
            number(difference.merchant_points),
            number(difference.clearing_points),
            number(difference.merchant_amount_minor),
            number(difference.clearing_amount_minor),
        ])?;
        serde_json::to_writer(&mut self.lines, difference)?;
        std::io::Write::write_all(&mut self.lines, b"\n")
    }

    pub fn malformed(&mut self, row: &Malformed) -> std::io::Result<()> {
        self.malformed
            .write_record([row.line.to_string(), neutralise(&row.problem)])?;
        Ok(())
    }

    /// Flushes the files and writes `summary.json`.
    pub fn finish(mut self, summary: &Summary) -> anyhow::Result<()> {
        self.differences.flush()?;
        std::io::Write::flush(&mut self.lines)?;
        self.malformed.flush()?;
        std::fs::write(
            self.dir.join("summary.json"),
            serde_json::to_string_pretty(summary)?,
        )?;
        Ok(())
    }
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
        let (rows, malformed): (Vec<_>, Vec<_>) = MerchantFile::open(file.as_bytes())
            .unwrap()
            .partition(Result::is_ok);
        let rows: Vec<MerchantRow> = rows.into_iter().map(Result::unwrap).collect();
        let malformed: Vec<Malformed> = malformed.into_iter().map(Result::unwrap_err).collect();
        assert_eq!(rows.len(), 6);
        assert_eq!(
            malformed,
            vec![Malformed {
                line: 7,
                problem: "points \"many\" is not a whole number".into()
            }]
        );
        let (report, differences) = reconcile(
            &rows,
            &[
                cleared("t-1", 100, Some(10_000), 1),
                cleared("t-2", 100, Some(20_000), 2),
                cleared("t-3", 300, Some(30_000), 3),
                cleared("t-5", 50, None, 4),
            ],
            malformed,
        );
        let count = |status: Status| report.count(status);
        assert_eq!(count(Status::Matched), 1);
        assert_eq!(count(Status::PointsMismatch), 1);
        assert_eq!(count(Status::AmountMismatch), 1);
        assert_eq!(count(Status::MissingInClearing), 2, "t-4 and =cmd");
        assert_eq!(count(Status::Duplicated), 1);
        assert_eq!(count(Status::MissingAtMerchant), 1);
        assert_eq!(report.merchant.transactions, 6);
        assert_eq!(report.clearing.points, 550);
        assert_eq!(differences.len(), 6);
        assert_eq!(report.malformed_rows, 1);
        assert_eq!(neutralise("=cmd"), "'=cmd");
        assert_eq!(neutralise("-5"), "'-5");
        assert_eq!(neutralise("t-1"), "t-1");
    }

    #[test]
    fn a_header_without_the_needed_columns_is_refused() {
        assert!(MerchantFile::open("id,pts\nx,1\n".as_bytes()).is_err());
    }
}

//! How each file of an export is written: CSV cells and columns, the payments file, ISO
//! 20022 pain.001 and the hledger journal.

use super::*;

/// The columns of `entries.csv`.
pub(crate) const ENTRY_COLUMNS: [&str; 20] = [
    "sequence",
    "kind",
    "accepted_at_ms",
    "accepted_at",
    "merchant_id",
    "merchant_transaction_id",
    "store_id",
    "terminal_id",
    "occurred_at_ms",
    "member_id",
    "points",
    "spend_minor",
    "member_points_after",
    "memo",
    "terms_version",
    "refers_to",
    "expires_at_ms",
    "earn_rule_version",
    "previous_hash",
    "hash",
];

/// The columns of a merchant's `statements/M.csv`.
pub const STATEMENT_COLUMNS: [&str; 9] = [
    "sequence",
    "accepted_at",
    "kind",
    "category",
    "submitted_by",
    "merchant_transaction_id",
    "points",
    "amount_minor",
    "fee_minor",
];

/// One row of `entries.csv`, in `ENTRY_COLUMNS` order.
pub(crate) fn entry_cells(record: &EntryRecord, cutoff: &Cutoff) -> Vec<Cell> {
    vec![
        Cell::Number(record.sequence as i64),
        text(&record.kind),
        Cell::Number(record.accepted_at_ms),
        text(cutoff.local_time(record.accepted_at_ms)),
        text(record.merchant_id.clone().unwrap_or_default()),
        text(record.merchant_transaction_id.clone().unwrap_or_default()),
        text(record.store_id.clone().unwrap_or_default()),
        text(record.terminal_id.clone().unwrap_or_default()),
        Cell::Optional(record.occurred_at_ms),
        text(record.member_id.clone().unwrap_or_default()),
        Cell::Number(record.points),
        Cell::Optional(record.spend_minor),
        Cell::Number(record.member_points_after),
        text(&record.memo),
        Cell::Optional(record.terms_version.map(i64::from)),
        Cell::Optional(record.refers_to.map(|sequence| sequence as i64)),
        Cell::Optional(record.expires_at_ms),
        Cell::Optional(record.earn_rule_version.map(i64::from)),
        text(&record.previous_hash),
        text(&record.hash),
    ]
}

/// A CSV cell: text is neutralised against formula injection, numbers are written as is.
pub enum Cell {
    /// A column name of the header, written as it is.
    Header(&'static str),
    Text(String),
    Number(i64),
    Optional(Option<i64>),
}

impl Cell {
    pub fn render(self) -> String {
        match self {
            Cell::Header(name) => name.to_owned(),
            Cell::Text(text) => neutralise(&text),
            Cell::Number(number) => number.to_string(),
            Cell::Optional(number) => number.map_or_else(String::new, |n| n.to_string()),
        }
    }
}

pub fn text(value: impl Into<String>) -> Cell {
    Cell::Text(value.into())
}

/// One row of a merchant's statement CSV, in `STATEMENT_COLUMNS` order.
pub fn statement_cells(line: &settlement::StatementLine, cutoff: &Cutoff) -> Vec<Cell> {
    vec![
        Cell::Number(line.sequence as i64),
        text(cutoff.local_time(line.accepted_at_ms)),
        text(&line.kind),
        text(&line.category),
        text(&line.submitted_by),
        text(&line.merchant_transaction_id),
        Cell::Number(line.points),
        Cell::Number(line.amount_minor),
        Cell::Number(line.fee_minor),
    ]
}

/// A whole CSV file: the header, then each row's cells rendered (text neutralised).
pub fn csv_bytes(
    header: &[&str],
    rows: impl IntoIterator<Item = Vec<Cell>>,
) -> anyhow::Result<Vec<u8>> {
    let mut writer = csv::Writer::from_writer(Vec::new());
    writer.write_record(header)?;
    for row in rows {
        writer.write_record(row.into_iter().map(Cell::render))?;
    }
    writer.into_inner().context("cannot finish a CSV")
}

/// `payments.csv` of a finalised period: the export's file, and the console's download.
pub fn payments_csv(
    settlement: &Settlement,
    payments: &[Payment],
    name_of: &dyn Fn(&str) -> String,
) -> anyhow::Result<Vec<u8>> {
    let digits = minor_digits(&settlement.currency);
    csv_bytes(
        &[
            "merchant_id",
            "merchant_name",
            "direction",
            "amount_minor",
            "amount",
            "currency",
            "period_net_minor",
            "payable_minor",
            "end_to_end_id",
            "remittance",
        ],
        payments.iter().map(|payment| {
            vec![
                text(&payment.merchant_id),
                text(name_of(&payment.merchant_id)),
                text(payment.direction.code()),
                Cell::Number(payment.amount_minor),
                text(major_amount(payment.amount_minor, digits)),
                text(&settlement.currency),
                Cell::Number(payment.period_net_minor),
                Cell::Number(payment.payable_minor),
                text(&payment.end_to_end_id),
                text(format!("Coalition settlement {}", settlement.period)),
            ]
        }),
    )
}

/// The digits after the decimal point of a currency's major unit (ISO 4217).
pub fn minor_digits(currency: &str) -> u32 {
    match currency {
        "BIF" | "CLP" | "DJF" | "GNF" | "ISK" | "JPY" | "KMF" | "KRW" | "PYG" | "RWF" | "UGX"
        | "VND" | "VUV" | "XAF" | "XOF" | "XPF" => 0,
        "BHD" | "IQD" | "JOD" | "KWD" | "LYD" | "OMR" | "TND" => 3,
        _ => 2,
    }
}

/// Minor units as a decimal amount of the major unit, exactly.
pub fn major_amount(minor: i64, digits: u32) -> String {
    if digits == 0 {
        return minor.to_string();
    }
    let scale = 10i64.pow(digits);
    let sign = if minor < 0 { "-" } else { "" };
    let magnitude = minor.unsigned_abs();
    format!(
        "{sign}{}.{:0width$}",
        magnitude / scale as u64,
        magnitude % scale as u64,
        width = digits as usize
    )
}

pub(crate) fn xml_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for character in text.chars() {
        match character {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            other => out.push(other),
        }
    }
    out
}

/// A commodity symbol hledger reads whatever the code: always quoted.
pub(crate) fn commodity(asset: &str) -> String {
    format!("\"{asset}\"")
}

/// An account name for hledger: kind, then owner, separated by a colon.
pub(crate) fn hledger_account(kind: &str, owner: &str) -> String {
    // Account names end at two spaces or a tab; ids never hold either, but be sure.
    format!("{kind}:{owner}")
        .replace(['\t', ';'], "_")
        .replace("  ", " _")
}

/// The plain-text double-entry journal: opening balances, one transaction per entry, and a
/// final transaction asserting every closing balance, so `hledger check` proves that each
/// entry balances and that the trial balance's closing follows from the postings. Written in
/// three parts so the entries can stream: this is the head (a comment and the opening).
pub(crate) fn hledger_opening(
    settlement: &Settlement,
    cutoff: &Cutoff,
    opening: &BTreeMap<BalanceKey, i64>,
) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "; Coalition export of settlement period {} ({}), entries {}..{}\n; amounts: points and minor units of {}; positive is a debit\n",
        settlement.period,
        cutoff.describe(),
        settlement.first_sequence,
        settlement.last_sequence,
        settlement.currency
    );
    let opening_lines: Vec<_> = opening.iter().filter(|(_, amount)| **amount != 0).collect();
    if !opening_lines.is_empty() {
        let _ = writeln!(out, "{} opening balances", settlement.period);
        for ((asset, kind, owner), amount) in opening_lines {
            let _ = writeln!(
                out,
                "    {}  {} {}",
                hledger_account(kind, owner),
                amount,
                commodity(asset)
            );
        }
        out.push('\n');
    }
    out
}

/// The journal's transactions of `entries`, one per entry.
pub(crate) fn hledger_entries(cutoff: &Cutoff, entries: &[Entry]) -> String {
    let mut out = String::new();
    for entry in entries {
        let description = match &entry.origin {
            Some(origin) => format!(
                "{} {} {}",
                entry.kind.code(),
                origin.merchant_id.as_str(),
                origin.merchant_transaction_id.as_str()
            ),
            None if entry.memo.is_empty() => entry.kind.code().to_owned(),
            None => format!("{} {}", entry.kind.code(), entry.memo),
        };
        let _ = writeln!(
            out,
            "{} ({}) {}\n    ; accepted_at: {}",
            cutoff.local_date(entry.accepted_at_ms),
            entry.sequence,
            description.replace(['\n', '\r', ';'], " "),
            cutoff.local_time(entry.accepted_at_ms)
        );
        for posting in &entry.postings {
            let _ = writeln!(
                out,
                "    {}  {} {}",
                hledger_account(posting.account.kind(), posting.account.owner()),
                posting.amount,
                commodity(posting.asset.code())
            );
        }
        out.push('\n');
    }
    out
}

/// The journal's last transaction: an assertion of every closing balance.
pub(crate) fn hledger_closing(
    settlement: &Settlement,
    cutoff: &Cutoff,
    closing: &[TrialBalanceLine],
) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} closing balances (assertions)",
        cutoff.local_date(settlement.end_ms - 1)
    );
    for line in closing {
        let _ = writeln!(
            out,
            "    {}  0 {} = {} {}",
            hledger_account(&line.account_kind, &line.owner),
            commodity(&line.asset),
            line.closing,
            commodity(&line.asset)
        );
    }
    // Every account and commodity the journal uses, declared (after their use, which
    // hledger allows), so that `hledger check --strict` accepts it.
    out.push('\n');
    let mut accounts = std::collections::BTreeSet::new();
    let mut commodities = std::collections::BTreeSet::new();
    for line in closing {
        accounts.insert(hledger_account(&line.account_kind, &line.owner));
        commodities.insert(commodity(&line.asset));
    }
    for account in accounts {
        let _ = writeln!(out, "account {account}");
    }
    for commodity in commodities {
        let _ = writeln!(out, "commodity {commodity}");
    }
    out
}

/// ISO 20022 pain.001.001.09 credit transfers for the payments the operator makes; `None`
/// when it makes none (the schema requires at least one transfer). Merchants' bank details
/// are not part of the ledger: the creditor account is identified by the merchant id, for
/// the treasury to map to its payee records.
pub fn pain_001(
    settlement: &Settlement,
    payments: &[Payment],
    cutoff: &Cutoff,
    finalised_at_ms: i64,
    name_of: &dyn Fn(&str) -> String,
) -> Option<String> {
    let digits = minor_digits(&settlement.currency);
    let payouts: Vec<_> = payments
        .iter()
        .filter(|payment| payment.direction == PaymentDirection::OperatorPays)
        .collect();
    if payouts.is_empty() {
        return None;
    }
    let total: i64 = payouts.iter().map(|payment| payment.amount_minor).sum();
    let created = &cutoff.local_time(finalised_at_ms)[..19];
    let execution_date = cutoff.local_date(settlement.end_ms);
    let message_id = format!("COAL-SETTLE-{}", settlement.period.replace('-', ""));
    let mut out = String::new();
    let _ = writeln!(out, r#"<?xml version="1.0" encoding="UTF-8"?>"#);
    let _ = writeln!(
        out,
        r#"<Document xmlns="urn:iso:std:iso:20022:tech:xsd:pain.001.001.09">"#
    );
    let _ = writeln!(out, "  <CstmrCdtTrfInitn>");
    let _ = writeln!(
        out,
        "    <GrpHdr>\n      <MsgId>{message_id}</MsgId>\n      <CreDtTm>{created}</CreDtTm>\n      <NbOfTxs>{}</NbOfTxs>\n      <CtrlSum>{}</CtrlSum>\n      <InitgPty><Nm>Coalition operator</Nm></InitgPty>\n    </GrpHdr>",
        payouts.len(),
        major_amount(total, digits)
    );
    let _ = writeln!(
        out,
        "    <PmtInf>\n      <PmtInfId>{message_id}-1</PmtInfId>\n      <PmtMtd>TRF</PmtMtd>\n      <NbOfTxs>{}</NbOfTxs>\n      <CtrlSum>{}</CtrlSum>\n      <ReqdExctnDt><Dt>{execution_date}</Dt></ReqdExctnDt>\n      <Dbtr><Nm>Coalition operator</Nm></Dbtr>\n      <DbtrAcct><Id><Othr><Id>COALITION-SETTLEMENT</Id></Othr></Id></DbtrAcct>\n      <DbtrAgt><FinInstnId><Othr><Id>NOTPROVIDED</Id></Othr></FinInstnId></DbtrAgt>",
        payouts.len(),
        major_amount(total, digits)
    );
    for payment in payouts {
        let _ = writeln!(
            out,
            "      <CdtTrfTxInf>\n        <PmtId><EndToEndId>{}</EndToEndId></PmtId>\n        <Amt><InstdAmt Ccy=\"{}\">{}</InstdAmt></Amt>\n        <Cdtr><Nm>{}</Nm></Cdtr>\n        <CdtrAcct><Id><Othr><Id>{}</Id></Othr></Id></CdtrAcct>\n        <RmtInf><Ustrd>Coalition settlement {} {}</Ustrd></RmtInf>\n      </CdtTrfTxInf>",
            xml_escape(&payment.end_to_end_id),
            xml_escape(&settlement.currency),
            major_amount(payment.amount_minor, digits),
            xml_escape(&name_of(&payment.merchant_id)),
            xml_escape(&payment.merchant_id),
            xml_escape(&settlement.period),
            xml_escape(&payment.merchant_id)
        );
    }
    let _ = writeln!(out, "    </PmtInf>\n  </CstmrCdtTrfInitn>\n</Document>");
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn major_amounts_are_exact() {
        assert_eq!(major_amount(12_345, 2), "123.45");
        assert_eq!(major_amount(-5, 2), "-0.05");
        assert_eq!(major_amount(7, 0), "7");
        assert_eq!(major_amount(1_001, 3), "1.001");
        assert_eq!(minor_digits("JPY"), 0);
        assert_eq!(minor_digits("CNY"), 2);
    }

    #[test]
    fn only_paths_inside_the_folder_pass() {
        for inside in [
            "matrix.csv",
            "statements/tenant-1.csv",
            "reconciliation/%2E./x.csv",
        ] {
            assert!(is_inside_path(inside), "{inside}");
        }
        for outside in [
            "",
            "/etc/passwd",
            "../x",
            "statements/../matrix.csv",
            "statements/..",
            "./x",
            "a//b",
            ".hidden",
            "a\\..\\b",
            "c:x",
        ] {
            assert!(!is_inside_path(outside), "{outside}");
        }
    }

    #[test]
    fn xml_text_is_escaped() {
        assert_eq!(
            xml_escape("A&B <C> \"d\" 'e'"),
            "A&amp;B &lt;C&gt; &quot;d&quot; &apos;e&apos;"
        );
    }
}

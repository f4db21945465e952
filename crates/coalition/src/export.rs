//! `coalition export`: one finalised settlement period's books as a folder that an auditor
//! verifies with nothing but the folder and the operator's public key (see `verify`).
//!
//! Longer than 800 lines: one writer per exported file, all from the same loaded period and
//! sharing its column helpers and CSV neutralising; splitting the file by format is planned
//! with the issue on audit proofs, which makes `verify` recompute each of them.
//!
//! Amounts are exact integers: points, and money in minor units of the settlement currency.
//! Signed amounts follow the ledger: positive is a debit. CSV text cells that a spreadsheet
//! would read as a formula are neutralised; amount columns never are. The JSON lines files
//! carry the same data unaltered, and the entries file every field the hash chain covers.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::{Context, bail};
use coalition_domain::journal::{Entry, EntryKind, MerchantOrigin, Posting};
use coalition_domain::merkle;
use coalition_domain::settlement::{self, Cutoff, Payment, PaymentDirection, Period, Settlement};
use coalition_domain::{
    AccountKey, Asset, CurrencyCode, FinalisedPeriod, MemberId, MerchantId, MerchantTransactionId,
};
use coalition_storage::{ConnectOptions, Storage};
use ed25519_dalek::Signer;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::reconcile::neutralise;

/// The payments of a finalised period: what is payable to each merchant (or owed by it)
/// after the period's closing entry, or without one, after the period's last entry. The
/// export's payments file and the demo's payouts both come from here.
pub async fn period_payments(
    storage: &Storage,
    settlement: &Settlement,
    closing_sequence: Option<u64>,
) -> anyhow::Result<Vec<Payment>> {
    let payables = period_payables(storage, settlement, closing_sequence).await?;
    Ok(settlement::payments(settlement, &payables))
}

/// What is payable to each merchant (negative: owed by it) after the period's closing entry,
/// or without one after its last entry, over every finalised period.
pub async fn period_payables(
    storage: &Storage,
    settlement: &Settlement,
    closing_sequence: Option<u64>,
) -> anyhow::Result<BTreeMap<String, i64>> {
    let currency = CurrencyCode::new(&settlement.currency)
        .with_context(|| format!("currency {:?}", settlement.currency))?;
    Ok(storage
        .merchant_payables_through(
            closing_sequence.unwrap_or(settlement.last_sequence),
            Asset::Currency(currency),
        )
        .await?)
}

/// Entries per page when an export reads its period.
const EXPORT_PAGE_LEN: u64 = 5_000;

/// The columns of `entries.csv`.
const ENTRY_COLUMNS: [&str; 20] = [
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
fn entry_cells(record: &EntryRecord, cutoff: &Cutoff) -> Vec<Cell> {
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

/// What the operator's signature over the manifest is domain-separated by.
pub const MANIFEST_SIGNATURE_DOMAIN: &[u8] = b"coalition.v1.export-manifest\0";
/// The manifest's format name.
pub const MANIFEST_FORMAT: &str = "coalition-export/2";
pub const MANIFEST_FILE: &str = "manifest.json";
pub const SIGNATURE_FILE: &str = "manifest.sig";
/// The ISO 20022 credit transfers, present only when the operator pays someone.
pub const PAIN_001_FILE: &str = "payments.pain.001.xml";
/// The accounting journal, on request.
pub const JOURNAL_FILE: &str = "journal.hledger";

/// A file the format has that this export leaves out, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OmittedFile {
    pub path: String,
    pub reason: String,
}

/// One posting as exported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PostingRecord {
    pub entry_sequence: u64,
    pub account_kind: String,
    pub owner: String,
    pub asset: String,
    pub amount: i64,
}

/// One entry as exported: every field its hash covers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryRecord {
    pub sequence: u64,
    pub kind: String,
    pub accepted_at_ms: i64,
    pub merchant_id: Option<String>,
    pub merchant_transaction_id: Option<String>,
    pub store_id: Option<String>,
    pub terminal_id: Option<String>,
    pub occurred_at_ms: Option<i64>,
    pub body_hash: Option<String>,
    pub member_id: Option<String>,
    pub points: i64,
    pub spend_minor: Option<i64>,
    pub member_points_after: i64,
    pub memo: String,
    pub terms_version: Option<u32>,
    pub refers_to: Option<u64>,
    pub expires_at_ms: Option<i64>,
    pub earn_rule_version: Option<u32>,
    pub postings: Vec<PostingRecord>,
    pub previous_hash: String,
    pub hash: String,
}

impl EntryRecord {
    pub fn from_entry(entry: &Entry) -> EntryRecord {
        let origin = entry.origin.as_ref();
        EntryRecord {
            sequence: entry.sequence,
            kind: entry.kind.code().to_owned(),
            accepted_at_ms: entry.accepted_at_ms,
            merchant_id: origin.map(|origin| origin.merchant_id.as_str().to_owned()),
            merchant_transaction_id: origin
                .map(|origin| origin.merchant_transaction_id.as_str().to_owned()),
            store_id: origin.map(|origin| origin.store_id.clone()),
            terminal_id: origin.map(|origin| origin.terminal_id.clone()),
            occurred_at_ms: origin.map(|origin| origin.occurred_at_ms),
            body_hash: origin.map(|origin| hex::encode(origin.body_hash)),
            member_id: entry
                .member_id
                .as_ref()
                .map(|member| member.as_str().to_owned()),
            points: entry.points,
            spend_minor: entry.spend_minor,
            member_points_after: entry.member_points_after,
            memo: entry.memo.clone(),
            terms_version: entry.terms_version,
            refers_to: entry.refers_to,
            expires_at_ms: entry.expires_at_ms,
            earn_rule_version: entry.earn_rule_version,
            postings: entry
                .postings
                .iter()
                .map(|posting| PostingRecord {
                    entry_sequence: entry.sequence,
                    account_kind: posting.account.kind().to_owned(),
                    owner: posting.account.owner().to_owned(),
                    asset: posting.asset.code().to_owned(),
                    amount: posting.amount,
                })
                .collect(),
            previous_hash: hex::encode(entry.previous_hash),
            hash: hex::encode(entry.hash),
        }
    }

    /// The entry back, for recomputing its hash; an error names what does not parse.
    pub fn to_entry(&self) -> anyhow::Result<Entry> {
        let sequence = self.sequence;
        let hash32 = |field: &str, text: &str| -> anyhow::Result<[u8; 32]> {
            hex::decode(text)
                .ok()
                .and_then(|bytes| bytes.try_into().ok())
                .with_context(|| format!("entry {sequence}: {field} is not 32 bytes of hex"))
        };
        let origin = match (&self.merchant_id, &self.merchant_transaction_id) {
            (Some(merchant), Some(transaction)) => Some(MerchantOrigin {
                merchant_id: MerchantId::new(merchant.clone())
                    .map_err(|error| anyhow::anyhow!("entry {sequence}: {error}"))?,
                merchant_transaction_id: MerchantTransactionId::new(transaction.clone())
                    .map_err(|error| anyhow::anyhow!("entry {sequence}: {error}"))?,
                store_id: self.store_id.clone().unwrap_or_default(),
                terminal_id: self.terminal_id.clone().unwrap_or_default(),
                occurred_at_ms: self.occurred_at_ms.unwrap_or_default(),
                body_hash: hash32("body_hash", self.body_hash.as_deref().unwrap_or(""))?,
            }),
            (None, None) => None,
            _ => bail!("entry {sequence}: merchant_id and merchant_transaction_id come together"),
        };
        let postings = self
            .postings
            .iter()
            .map(|posting| {
                Ok(Posting {
                    account: AccountKey::from_parts(&posting.account_kind, &posting.owner)
                        .with_context(|| {
                            format!(
                                "entry {sequence}: account {}:{} is not an account",
                                posting.account_kind, posting.owner
                            )
                        })?,
                    asset: Asset::from_code(&posting.asset).with_context(|| {
                        format!(
                            "entry {sequence}: asset {:?} is not an asset",
                            posting.asset
                        )
                    })?,
                    amount: posting.amount,
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Entry {
            sequence,
            kind: EntryKind::from_code(&self.kind)
                .with_context(|| format!("entry {sequence}: kind {:?} is unknown", self.kind))?,
            accepted_at_ms: self.accepted_at_ms,
            origin,
            member_id: self
                .member_id
                .clone()
                .map(MemberId::new)
                .transpose()
                .map_err(|error| anyhow::anyhow!("entry {sequence}: {error}"))?,
            points: self.points,
            spend_minor: self.spend_minor,
            member_points_after: self.member_points_after,
            memo: self.memo.clone(),
            terms_version: self.terms_version,
            refers_to: self.refers_to,
            expires_at_ms: self.expires_at_ms,
            earn_rule_version: self.earn_rule_version,
            postings,
            previous_hash: hash32("previous_hash", &self.previous_hash)?,
            hash: hash32("hash", &self.hash)?,
        })
    }
}

/// One account's line of the trial balance, per asset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrialBalanceLine {
    pub account_kind: String,
    pub owner: String,
    pub asset: String,
    pub opening: i64,
    /// The sum of the period's positive postings.
    pub debits: i64,
    /// The sum of the period's negative postings, as a positive number.
    pub credits: i64,
    pub closing: i64,
}

/// Asset, account kind, owner: how balances are keyed and sorted.
pub type BalanceKey = (String, String, String);

impl TrialBalanceLine {
    pub fn key(&self) -> BalanceKey {
        (
            self.asset.clone(),
            self.account_kind.clone(),
            self.owner.clone(),
        )
    }
}

/// The trial balance: opening balances, then every posting of `entries`.
pub fn trial_balance(
    opening: &BTreeMap<BalanceKey, i64>,
    entries: &[Entry],
) -> anyhow::Result<Vec<TrialBalanceLine>> {
    let mut balance = TrialBalance::new(opening);
    balance.add(entries)?;
    balance.finish()
}

/// The trial balance built a page of entries at a time: its memory is one line per account
/// with an opening balance or a posting, never the period's entries.
pub struct TrialBalance {
    lines: BTreeMap<BalanceKey, TrialBalanceLine>,
}

impl TrialBalance {
    pub fn new(opening: &BTreeMap<BalanceKey, i64>) -> Self {
        let mut balance = TrialBalance {
            lines: BTreeMap::new(),
        };
        for (key, amount) in opening {
            if *amount != 0 {
                balance.line(key.clone()).opening = *amount;
            }
        }
        balance
    }

    fn line(&mut self, key: BalanceKey) -> &mut TrialBalanceLine {
        self.lines
            .entry(key)
            .or_insert_with_key(|(asset, kind, owner)| TrialBalanceLine {
                account_kind: kind.clone(),
                owner: owner.clone(),
                asset: asset.clone(),
                opening: 0,
                debits: 0,
                credits: 0,
                closing: 0,
            })
    }

    /// Adds the postings of the next entries.
    pub fn add(&mut self, entries: &[Entry]) -> anyhow::Result<()> {
        for entry in entries {
            for posting in &entry.postings {
                let row = self.line((
                    posting.asset.code().to_owned(),
                    posting.account.kind().to_owned(),
                    posting.account.owner().to_owned(),
                ));
                if posting.amount >= 0 {
                    row.debits = row
                        .debits
                        .checked_add(posting.amount)
                        .context("debits overflow")?;
                } else {
                    row.credits = row
                        .credits
                        .checked_sub(posting.amount)
                        .context("credits overflow")?;
                }
            }
        }
        Ok(())
    }

    /// The lines, sorted by asset, kind and owner, with their closing balances.
    pub fn finish(self) -> anyhow::Result<Vec<TrialBalanceLine>> {
        let mut out: Vec<TrialBalanceLine> = self.lines.into_values().collect();
        for row in &mut out {
            row.closing = row
                .opening
                .checked_add(row.debits)
                .and_then(|value| value.checked_sub(row.credits))
                .context("closing balance overflows")?;
        }
        Ok(out)
    }
}

/// Opening and closing sums per asset; each must be zero.
pub fn trial_balance_sums(lines: &[TrialBalanceLine]) -> BTreeMap<String, (i128, i128)> {
    let mut sums: BTreeMap<String, (i128, i128)> = BTreeMap::new();
    for line in lines {
        let sum = sums.entry(line.asset.clone()).or_default();
        sum.0 += i128::from(line.opening);
        sum.1 += i128::from(line.closing);
    }
    sums
}

/// One file of the export and its digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileDigest {
    pub path: String,
    /// The file as stored.
    pub bytes: u64,
    pub sha256: String,
    /// For a compressed file (`.gz`), its content once decompressed: what `verify` makes
    /// again and compares.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_sha256: Option<String>,
}

/// What the operator signs: the period, its place in the hash chain, and every file's digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub period: String,
    pub start_ms: i64,
    pub end_ms: i64,
    pub currency: String,
    pub entries: u64,
    /// 0 and 0 when the period has no entries.
    pub first_sequence: u64,
    pub last_sequence: u64,
    /// The chain hash before the period's first entry, and after its last (the head).
    pub previous_hash: String,
    pub head_hash: String,
    /// The root of the Merkle tree over the period's entry hashes (`coalition_domain::merkle`),
    /// hex: what an inclusion proof of one entry leads to.
    pub entries_root: String,
    /// The daily cut-off the period was cut at (minutes after local midnight) and the local
    /// offset from UTC (minutes) that the files' local times are written in.
    pub cutoff_minute_of_day: u32,
    pub utc_offset_minutes: i32,
    /// Where the period's own closing entry was booked (in the next period), if any.
    pub closing_sequence: Option<u64>,
    pub finalised_at_ms: i64,
    pub created_at_ms: i64,
    pub operator_key_id: String,
    pub operator_public_key: String,
    pub files: Vec<FileDigest>,
    /// Files of the format this export leaves out, with why (pain.001 when nobody is paid).
    #[serde(default)]
    pub omitted: Vec<OmittedFile>,
    /// The optional copies it holds: `csv`, `hledger`.
    pub formats: Vec<String>,
}

/// The finalised period's record as `settlement.json` holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SettlementRecord {
    pub closing_sequence: Option<u64>,
    pub finalised_at_ms: i64,
    pub settlement: Settlement,
}

/// A reconciliation to include: the merchant and its file.
#[derive(Debug, Clone)]
pub struct ReconcileInput {
    pub merchant: MerchantId,
    pub file: PathBuf,
}

impl std::str::FromStr for ReconcileInput {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (merchant, file) = text
            .split_once('=')
            .ok_or_else(|| format!("expected MERCHANT=FILE, got {text:?}"))?;
        Ok(ReconcileInput {
            merchant: MerchantId::new(merchant).map_err(|error| error.to_string())?,
            file: PathBuf::from(file),
        })
    }
}

/// What to export.
#[derive(Debug, Clone)]
pub struct ExportOptions {
    pub database_url: String,
    pub period: Period,
    pub cutoff: Cutoff,
    pub out: PathBuf,
    pub operator_keys: PathBuf,
    pub reconcile: Vec<ReconcileInput>,
    /// The optional copies to add.
    pub formats: Formats,
}

/// Where the export's files go: into the folder on disk (the export), or nowhere (verify,
/// which makes every file again from the folder's inputs and compares digests). Either way
/// the SHA-256 of each file's content (before any compression) is kept, and what was
/// written is remembered for the manifest. A file whose name ends in `.gz` is written
/// gzip-compressed; appending to it adds a gzip member, which decompresses to the
/// concatenation (RFC 1952).
pub(crate) struct Folder {
    root: PathBuf,
    on_disk: bool,
    written: Vec<String>,
    content: BTreeMap<String, Arc<Mutex<Digesting>>>,
}

/// The digest of a file's content as it is made.
#[derive(Default)]
struct Digesting {
    hasher: Sha256,
    bytes: u64,
}

/// The end of a file's bytes: hashed as content, then written to the file (compressed or
/// not) or nowhere.
struct Sink {
    content: Arc<Mutex<Digesting>>,
    out: SinkOut,
}

enum SinkOut {
    File(std::fs::File),
    Gzip(flate2::write::GzEncoder<std::fs::File>),
    Nowhere,
}

impl std::io::Write for Sink {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let written = match &mut self.out {
            SinkOut::File(file) => file.write(bytes)?,
            SinkOut::Gzip(encoder) => encoder.write(bytes)?,
            SinkOut::Nowhere => bytes.len(),
        };
        let mut digesting = self
            .content
            .lock()
            .expect("a digest is never left mid-update");
        digesting.hasher.update(&bytes[..written]);
        digesting.bytes += written as u64;
        Ok(written)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match &mut self.out {
            SinkOut::File(file) => file.flush(),
            SinkOut::Gzip(encoder) => encoder.flush(),
            SinkOut::Nowhere => Ok(()),
        }
    }
}

impl Sink {
    /// Ends the file: a compressed one gets its gzip trailer.
    fn finish(self) -> std::io::Result<()> {
        match self.out {
            SinkOut::File(mut file) => std::io::Write::flush(&mut file),
            SinkOut::Gzip(encoder) => encoder.finish().map(drop),
            SinkOut::Nowhere => Ok(()),
        }
    }
}

/// Whether `relative` names a file inside a folder: `/`-separated plain names, none empty,
/// none starting with a dot (so no `.`, `..` or hidden file), no backslash or drive colon.
/// Every path the export writes and every path `verify` reads from a manifest passes this.
pub fn is_inside_path(relative: &str) -> bool {
    !relative.is_empty()
        && relative
            .split('/')
            .all(|part| !part.is_empty() && !part.starts_with('.') && !part.contains(['\\', ':']))
}

/// A file of the export written a piece at a time, so no file is ever held in memory whole.
/// A CSV file goes through the CSV writer (quoting), any other file as raw bytes.
struct Streamed {
    path: PathBuf,
    writer: StreamedWriter,
}

enum StreamedWriter {
    Raw(std::io::BufWriter<Sink>),
    Csv(Box<csv::Writer<Sink>>),
}

impl Streamed {
    fn new(path: PathBuf, sink: Sink, is_csv: bool) -> Self {
        let writer = if is_csv {
            // The CSV writer buffers on its own.
            StreamedWriter::Csv(Box::new(csv::Writer::from_writer(sink)))
        } else {
            StreamedWriter::Raw(std::io::BufWriter::new(sink))
        };
        Streamed { path, writer }
    }

    fn write(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        let StreamedWriter::Raw(writer) = &mut self.writer else {
            bail!("{} is a CSV file", self.path.display());
        };
        std::io::Write::write_all(writer, bytes)
            .with_context(|| format!("cannot write {}", self.path.display()))
    }

    /// One JSON line.
    fn jsonl<T: Serialize>(&mut self, row: &T) -> anyhow::Result<()> {
        let mut line = serde_json::to_vec(row)?;
        line.push(b'\n');
        self.write(&line)
    }

    /// One CSV record, its cells rendered (text neutralised).
    fn csv(&mut self, cells: Vec<Cell>) -> anyhow::Result<()> {
        let StreamedWriter::Csv(writer) = &mut self.writer else {
            bail!("{} is not a CSV file", self.path.display());
        };
        writer
            .write_record(cells.into_iter().map(Cell::render))
            .with_context(|| format!("cannot write {}", self.path.display()))
    }

    fn finish(self) -> anyhow::Result<()> {
        let path = self.path;
        let sink = match self.writer {
            StreamedWriter::Raw(writer) => writer.into_inner().map_err(|error| error.into_error()),
            StreamedWriter::Csv(writer) => writer.into_inner().map_err(|error| error.into_error()),
        };
        sink.and_then(Sink::finish)
            .with_context(|| format!("cannot write {}", path.display()))
    }
}

impl Folder {
    /// Files written into `root` on disk.
    fn on_disk(root: PathBuf) -> Folder {
        Folder {
            root,
            on_disk: true,
            written: Vec::new(),
            content: BTreeMap::new(),
        }
    }

    /// Files only digested, never written.
    pub(crate) fn digesting() -> Folder {
        Folder {
            root: PathBuf::new(),
            on_disk: false,
            written: Vec::new(),
            content: BTreeMap::new(),
        }
    }

    /// The SHA-256 (hex) and length of each file's content (uncompressed).
    pub(crate) fn digests(&self) -> BTreeMap<String, (String, u64)> {
        self.content
            .iter()
            .map(|(path, digesting)| {
                let digesting = digesting.lock().expect("a digest is never left mid-update");
                (
                    path.clone(),
                    (
                        hex::encode(digesting.hasher.clone().finalize()),
                        digesting.bytes,
                    ),
                )
            })
            .collect()
    }

    /// The path of a file inside the folder, its parent created.
    fn path_of(&self, relative: &str) -> anyhow::Result<PathBuf> {
        // File names come from identifiers (statements, reconciliations): refuse anything
        // that could leave the folder, whatever made it.
        if !is_inside_path(relative) {
            bail!(
                "refusing to write {relative:?}: it does not name a file inside the export folder"
            );
        }
        let path = self.root.join(relative);
        if self.on_disk
            && let Some(parent) = path.parent()
        {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        Ok(path)
    }

    /// Where a file's bytes go: a new file (`create`) or the end of one made before.
    fn sink(&mut self, relative: &str, create: bool) -> anyhow::Result<(PathBuf, Sink)> {
        let path = self.path_of(relative)?;
        let content = if create {
            self.written.push(relative.to_owned());
            let content = Arc::new(Mutex::new(Digesting::default()));
            self.content.insert(relative.to_owned(), content.clone());
            content
        } else {
            self.content
                .get(relative)
                .with_context(|| format!("{relative} was not made before"))?
                .clone()
        };
        let out = if !self.on_disk {
            SinkOut::Nowhere
        } else {
            let file = if create {
                std::fs::File::create(&path)
                    .with_context(|| format!("cannot create {}", path.display()))?
            } else {
                std::fs::OpenOptions::new()
                    .append(true)
                    .open(&path)
                    .with_context(|| format!("cannot open {}", path.display()))?
            };
            if relative.ends_with(".gz") {
                SinkOut::Gzip(flate2::write::GzEncoder::new(
                    file,
                    flate2::Compression::default(),
                ))
            } else {
                SinkOut::File(file)
            }
        };
        Ok((path, Sink { content, out }))
    }

    fn write(&mut self, relative: &str, bytes: &[u8]) -> anyhow::Result<()> {
        let (path, mut sink) = self.sink(relative, true)?;
        std::io::Write::write_all(&mut sink, bytes)
            .and_then(|()| sink.finish())
            .with_context(|| format!("cannot write {}", path.display()))
    }

    /// Creates a file to be written piece by piece; with a CSV header when given.
    fn create(
        &mut self,
        relative: &str,
        csv_header: Option<&[&'static str]>,
    ) -> anyhow::Result<Streamed> {
        let (path, sink) = self.sink(relative, true)?;
        let mut streamed = Streamed::new(path, sink, csv_header.is_some());
        if let Some(header) = csv_header {
            streamed.csv(header.iter().copied().map(Cell::Header).collect())?;
        }
        Ok(streamed)
    }

    /// Opens a file created before to add to its end.
    fn append(&mut self, relative: &str) -> anyhow::Result<Streamed> {
        let (path, sink) = self.sink(relative, false)?;
        Ok(Streamed::new(path, sink, relative.ends_with(".csv")))
    }

    fn csv<R>(
        &mut self,
        relative: &str,
        header: &[&str],
        rows: impl IntoIterator<Item = R>,
        cells: impl Fn(R) -> Vec<Cell>,
    ) -> anyhow::Result<()> {
        let mut writer = csv::Writer::from_writer(Vec::new());
        writer.write_record(header)?;
        for row in rows {
            let record: Vec<String> = cells(row).into_iter().map(Cell::render).collect();
            writer.write_record(&record)?;
        }
        let bytes = writer.into_inner().context("cannot finish a CSV")?;
        self.write(relative, &bytes)
    }

    fn jsonl<T: Serialize>(
        &mut self,
        relative: &str,
        rows: impl IntoIterator<Item = T>,
    ) -> anyhow::Result<()> {
        let mut bytes = Vec::new();
        for row in rows {
            serde_json::to_writer(&mut bytes, &row)?;
            bytes.push(b'\n');
        }
        self.write(relative, &bytes)
    }
}

/// The lines of a file of an export, decompressed when its name ends in `.gz` (every gzip
/// member, in order).
pub fn read_lines(
    folder: &std::path::Path,
    relative: &str,
) -> anyhow::Result<std::io::Lines<std::io::BufReader<Box<dyn std::io::Read>>>> {
    let file = std::fs::File::open(folder.join(relative))
        .with_context(|| format!("{relative}: missing"))?;
    let reader: Box<dyn std::io::Read> = if relative.ends_with(".gz") {
        Box::new(flate2::read::MultiGzDecoder::new(file))
    } else {
        Box::new(file)
    };
    Ok(std::io::BufRead::lines(std::io::BufReader::new(reader)))
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

fn xml_escape(text: &str) -> String {
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
fn commodity(asset: &str) -> String {
    format!("\"{asset}\"")
}

/// An account name for hledger: kind, then owner, separated by a colon.
fn hledger_account(kind: &str, owner: &str) -> String {
    // Account names end at two spaces or a tab; ids never hold either, but be sure.
    format!("{kind}:{owner}")
        .replace(['\t', ';'], "_")
        .replace("  ", " _")
}

/// The plain-text double-entry journal: opening balances, one transaction per entry, and a
/// final transaction asserting every closing balance, so `hledger check` proves that each
/// entry balances and that the trial balance's closing follows from the postings. Written in
/// three parts so the entries can stream: this is the head (a comment and the opening).
fn hledger_opening(
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
fn hledger_entries(cutoff: &Cutoff, entries: &[Entry]) -> String {
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
fn hledger_closing(
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

/// The subfolder of an export that holds reconciliation reports (not signed: see `export`).
pub const RECONCILIATION_DIR: &str = "reconciliation";

/// The entries with every field their hashes cover: the export's main input.
pub const ENTRIES_FILE: &str = "entries.jsonl.gz";
/// The lot attribution of the period's redemptions.
pub const ATTRIBUTIONS_FILE: &str = "attributions.jsonl.gz";
/// The trial balance, whose openings are an input.
pub const TRIAL_BALANCE_FILE: &str = "trial_balance.jsonl.gz";
/// The payments' inputs.
pub const MERCHANTS_FILE: &str = "merchants.jsonl";
pub const PAYABLES_FILE: &str = "payables.jsonl";

/// A merchant's statement as JSON lines.
pub fn statement_jsonl(merchant: &MerchantId) -> String {
    format!("statements/{}.jsonl.gz", merchant.file_name_stem())
}

/// What an export holds beside what every export holds (the compressed JSON lines, the
/// settlement, the payments and their inputs): the spreadsheet copies and the accounting
/// journal, on request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Formats {
    /// CSV copies: `entries.csv`, `postings.csv`, `attributions.csv`, `trial_balance.csv`,
    /// `settlement.csv`, `matrix.csv`, `statements/M.csv`.
    pub csv: bool,
    /// The plain-text accounting journal `journal.hledger`.
    pub hledger: bool,
}

impl Formats {
    pub const ALL: Formats = Formats {
        csv: true,
        hledger: true,
    };

    /// The names the manifest lists them by.
    pub fn names(self) -> Vec<String> {
        let mut names = Vec::new();
        if self.csv {
            names.push("csv".to_owned());
        }
        if self.hledger {
            names.push("hledger".to_owned());
        }
        names
    }

    /// From the manifest's names; an unknown name is an error.
    pub fn from_names(names: &[String]) -> anyhow::Result<Formats> {
        let mut formats = Formats::default();
        for name in names {
            match name.as_str() {
                "csv" => formats.csv = true,
                "hledger" => formats.hledger = true,
                other => bail!("format {other:?} is not one this version knows"),
            }
        }
        Ok(formats)
    }
}

/// The merchants' terms the period's netting used, by version.
pub const TERMS_FILE: &str = "terms.jsonl";

/// One version of a merchant's terms as `terms.jsonl` holds it: what the netting takes from
/// it (the prices of the money legs, the fee, the breakage share). Decimals are strings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TermsRecord {
    pub merchant_id: String,
    pub version: u32,
    pub effective_from_ms: i64,
    pub issue_price_minor_per_point: String,
    pub redeem_price_minor_per_point: String,
    pub fee_minor_per_point: String,
    pub breakage_share: String,
}

impl TermsRecord {
    pub fn from_terms(terms: &coalition_domain::terms::MerchantTerms) -> TermsRecord {
        TermsRecord {
            merchant_id: terms.merchant_id.as_str().to_owned(),
            version: terms.version,
            effective_from_ms: terms.effective_from_ms,
            issue_price_minor_per_point: terms.issue_price_minor_per_point.to_string(),
            redeem_price_minor_per_point: terms.redeem_price_minor_per_point.to_string(),
            fee_minor_per_point: terms.fee_minor_per_point.to_string(),
            breakage_share: terms.breakage_share.to_string(),
        }
    }
}

/// Merchants' terms by version, to find the version in force at a time.
#[derive(Debug, Clone, Default)]
pub struct TermsBook {
    by_merchant: BTreeMap<String, Vec<TermsRecord>>,
}

impl TermsBook {
    pub fn new(records: impl IntoIterator<Item = TermsRecord>) -> TermsBook {
        let mut book = TermsBook::default();
        for record in records {
            book.by_merchant
                .entry(record.merchant_id.clone())
                .or_default()
                .push(record);
        }
        for versions in book.by_merchant.values_mut() {
            versions.sort_by_key(|record| record.version);
        }
        book
    }

    /// The version of `merchant`'s terms in force at `at_ms`: the highest version effective
    /// by then (as the ledger picks it).
    pub fn in_force(&self, merchant: &str, at_ms: i64) -> Option<&TermsRecord> {
        self.by_merchant
            .get(merchant)?
            .iter()
            .rev()
            .find(|record| record.effective_from_ms <= at_ms)
    }

    /// The versions `used` names and, per merchant of the settlement, the version in force
    /// at the period's last instant (its breakage share is the settlement's), sorted.
    fn needed(
        &self,
        used: &std::collections::BTreeSet<(String, u32)>,
        settlement: &Settlement,
    ) -> Vec<TermsRecord> {
        let mut wanted = used.clone();
        for net in &settlement.merchants {
            if let Some(record) = self.in_force(&net.merchant_id, settlement.end_ms - 1) {
                wanted.insert((record.merchant_id.clone(), record.version));
            }
        }
        wanted
            .iter()
            .filter_map(|(merchant, version)| {
                self.by_merchant
                    .get(merchant)?
                    .iter()
                    .find(|record| record.version == *version)
                    .cloned()
            })
            .collect()
    }
}

/// Whether an entry's money legs are priced by its merchant's terms, and on which side:
/// `Some(true)` for an issue (earn), `Some(false)` for a redemption (burn).
pub fn priced_side(kind: EntryKind) -> Option<bool> {
    match kind {
        EntryKind::Earn => Some(true),
        EntryKind::Burn => Some(false),
        _ => None,
    }
}

/// A merchant's name as `merchants.jsonl` holds it (the payments files name merchants).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MerchantName {
    pub merchant_id: String,
    pub name: String,
}

/// What was payable to a merchant after the period's closing entry, over every finalised
/// period (negative: what it owed), as `payables.jsonl` holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payable {
    pub merchant_id: String,
    pub payable_minor: i64,
}

/// What a period's files are made from besides its entries and attributions: the export
/// reads them from the database, `verify` from the export's own files.
pub(crate) struct PeriodInputs {
    pub record: SettlementRecord,
    pub cutoff: Cutoff,
    /// Every account's balance before the period's first entry.
    pub opening: BTreeMap<BalanceKey, i64>,
    /// The sequence the period's first entry must have.
    pub first_sequence: u64,
    pub merchants: Vec<MerchantName>,
    pub payables: Vec<Payable>,
    /// Merchants' terms by version (every version the database has, or the export's own).
    pub terms: TermsBook,
    pub formats: Formats,
}

/// Makes every signed file of a period, page by page as the entries come, so its memory is
/// bounded by a page and the number of merchants and accounts, never by the period's length.
/// The export runs it onto the disk; `verify` runs it again from the export's inputs into
/// digests, so every file that follows from others is checked byte for byte.
pub(crate) struct PeriodWriter<'a> {
    folder: Folder,
    inputs: &'a PeriodInputs,
    currency: CurrencyCode,
    entries_jsonl: Streamed,
    attributions_jsonl: Streamed,
    entries_csv: Option<Streamed>,
    postings_csv: Option<Streamed>,
    attributions_csv: Option<Streamed>,
    journal: Option<Streamed>,
    /// Per merchant: its JSON lines statement, and its CSV one when CSV is asked for.
    statements: Vec<(MerchantId, String, Option<String>)>,
    balance: TrialBalance,
    tree: merkle::RootBuilder,
    /// The terms versions the period's priced entries record.
    terms_used: std::collections::BTreeSet<(String, u32)>,
    pub entry_count: u64,
}

/// What a `PeriodWriter` made.
pub(crate) struct Written {
    pub folder: Folder,
    pub entry_count: u64,
    pub entries_root: String,
    pub omitted: Vec<OmittedFile>,
}

impl<'a> PeriodWriter<'a> {
    pub fn begin(mut folder: Folder, inputs: &'a PeriodInputs) -> anyhow::Result<Self> {
        let settlement = &inputs.record.settlement;
        let currency = CurrencyCode::new(&settlement.currency)
            .with_context(|| format!("currency {:?}", settlement.currency))?;
        let formats = inputs.formats;
        let entries_jsonl = folder.create(ENTRIES_FILE, None)?;
        let attributions_jsonl = folder.create(ATTRIBUTIONS_FILE, None)?;
        let (entries_csv, postings_csv, attributions_csv) = if formats.csv {
            (
                Some(folder.create("entries.csv", Some(&ENTRY_COLUMNS))?),
                Some(folder.create(
                    "postings.csv",
                    Some(&["entry_sequence", "account_kind", "owner", "asset", "amount"]),
                )?),
                Some(folder.create(
                    "attributions.csv",
                    Some(&["entry_sequence", "issuer", "points"]),
                )?),
            )
        } else {
            (None, None, None)
        };
        let journal = if formats.hledger {
            let mut journal = folder.create(JOURNAL_FILE, None)?;
            journal
                .write(hledger_opening(settlement, &inputs.cutoff, &inputs.opening).as_bytes())?;
            Some(journal)
        } else {
            None
        };
        // A statement per merchant, every one created now (a merchant may have no line) and
        // added to as the pages come.
        let mut statements = Vec::with_capacity(settlement.merchants.len());
        for net in &settlement.merchants {
            let merchant = MerchantId::new(net.merchant_id.clone())
                .map_err(|error| anyhow::anyhow!("{error}"))?;
            let jsonl = statement_jsonl(&merchant);
            folder.create(&jsonl, None)?.finish()?;
            let csv = if formats.csv {
                let csv = format!("statements/{}.csv", merchant.file_name_stem());
                folder.create(&csv, Some(&STATEMENT_COLUMNS))?.finish()?;
                Some(csv)
            } else {
                None
            };
            statements.push((merchant, jsonl, csv));
        }
        Ok(PeriodWriter {
            folder,
            inputs,
            currency,
            entries_jsonl,
            attributions_jsonl,
            entries_csv,
            postings_csv,
            attributions_csv,
            journal,
            statements,
            balance: TrialBalance::new(&inputs.opening),
            tree: merkle::RootBuilder::new(),
            terms_used: std::collections::BTreeSet::new(),
            entry_count: 0,
        })
    }

    /// The next entries of the period, in sequence order, and the lot attribution of their
    /// redemptions.
    pub fn add_page(
        &mut self,
        page: &[Entry],
        attributions: &[settlement::Attribution],
    ) -> anyhow::Result<()> {
        let cutoff = &self.inputs.cutoff;
        for entry in page {
            if entry.sequence != self.inputs.first_sequence + self.entry_count {
                bail!(
                    "entry {} is not where period {} continues",
                    entry.sequence,
                    self.inputs.record.settlement.period
                );
            }
            self.entry_count += 1;
            self.tree.push(&entry.hash);
            if priced_side(entry.kind).is_some()
                && let (Some(origin), Some(version)) = (&entry.origin, entry.terms_version)
            {
                self.terms_used
                    .insert((origin.merchant_id.as_str().to_owned(), version));
            }
            let record = EntryRecord::from_entry(entry);
            self.entries_jsonl.jsonl(&record)?;
            if let Some(entries_csv) = &mut self.entries_csv {
                entries_csv.csv(entry_cells(&record, cutoff))?;
            }
            if let Some(postings_csv) = &mut self.postings_csv {
                for posting in &record.postings {
                    postings_csv.csv(vec![
                        Cell::Number(posting.entry_sequence as i64),
                        text(&posting.account_kind),
                        text(&posting.owner),
                        text(&posting.asset),
                        Cell::Number(posting.amount),
                    ])?;
                }
            }
        }
        for attribution in attributions {
            self.attributions_jsonl.jsonl(attribution)?;
            if let Some(attributions_csv) = &mut self.attributions_csv {
                attributions_csv.csv(vec![
                    Cell::Number(attribution.entry_sequence as i64),
                    text(&attribution.issuer),
                    Cell::Number(attribution.points),
                ])?;
            }
        }
        self.balance.add(page)?;
        if let Some(journal) = &mut self.journal {
            journal.write(hledger_entries(cutoff, page).as_bytes())?;
        }
        for (merchant, jsonl, csv) in &self.statements {
            let lines = settlement::statement_lines(page, merchant, self.currency);
            if lines.is_empty() {
                continue;
            }
            let mut jsonl = self.folder.append(jsonl)?;
            for line in &lines {
                jsonl.jsonl(line)?;
            }
            jsonl.finish()?;
            if let Some(csv) = csv {
                let mut csv = self.folder.append(csv)?;
                for line in &lines {
                    csv.csv(statement_cells(line, cutoff))?;
                }
                csv.finish()?;
            }
        }
        Ok(())
    }

    /// The files made from the whole period: trial balance, the journal's closing,
    /// settlement, matrix, the inputs of the payments and the payments.
    pub fn finish(self) -> anyhow::Result<Written> {
        let PeriodWriter {
            mut folder,
            inputs,
            entries_jsonl,
            attributions_jsonl,
            entries_csv,
            postings_csv,
            attributions_csv,
            journal,
            balance,
            tree,
            terms_used,
            entry_count,
            ..
        } = self;
        for streamed in [entries_jsonl, attributions_jsonl]
            .into_iter()
            .chain(entries_csv)
            .chain(postings_csv)
            .chain(attributions_csv)
        {
            streamed.finish()?;
        }
        let settlement = &inputs.record.settlement;
        let cutoff = &inputs.cutoff;
        // The trial balance, and the journal's closing assertions from it.
        let balance = balance.finish()?;
        for (asset, (opening_sum, closing_sum)) in trial_balance_sums(&balance) {
            if opening_sum != 0 || closing_sum != 0 {
                bail!(
                    "the trial balance of {asset} does not sum to zero: opening {opening_sum}, closing {closing_sum}"
                );
            }
        }
        if let Some(mut journal) = journal {
            journal.write(hledger_closing(settlement, cutoff, &balance).as_bytes())?;
            journal.finish()?;
        }
        folder.jsonl(TRIAL_BALANCE_FILE, &balance)?;
        if inputs.formats.csv {
            folder.csv(
                "trial_balance.csv",
                &[
                    "account_kind",
                    "owner",
                    "asset",
                    "opening",
                    "debits",
                    "credits",
                    "closing",
                ],
                &balance,
                |line| {
                    vec![
                        text(&line.account_kind),
                        text(&line.owner),
                        text(&line.asset),
                        Cell::Number(line.opening),
                        Cell::Number(line.debits),
                        Cell::Number(line.credits),
                        Cell::Number(line.closing),
                    ]
                },
            )?;
        }
        write_settlement(&mut folder, &inputs.record, inputs.formats)?;

        // What the payments are made from, then the payments for the treasury: what is
        // payable after this period's closing entry, netted over every finalised period, so
        // that no file pays a merchant what it does not owe it and each transfer is what
        // RecordPayout accepts.
        folder.jsonl(
            TERMS_FILE,
            inputs.terms.needed(&terms_used, &inputs.record.settlement),
        )?;
        folder.jsonl(MERCHANTS_FILE, &inputs.merchants)?;
        folder.jsonl(PAYABLES_FILE, &inputs.payables)?;
        let payables: BTreeMap<String, i64> = inputs
            .payables
            .iter()
            .map(|payable| (payable.merchant_id.clone(), payable.payable_minor))
            .collect();
        let payments = settlement::payments(settlement, &payables);
        let names: BTreeMap<&str, &str> = inputs
            .merchants
            .iter()
            .map(|merchant| (merchant.merchant_id.as_str(), merchant.name.as_str()))
            .collect();
        let name_of = |merchant: &str| {
            names
                .get(merchant)
                .map_or_else(|| merchant.to_owned(), |name| (*name).to_owned())
        };
        folder.write(
            "payments.csv",
            &payments_csv(settlement, &payments, &name_of)?,
        )?;
        // pain.001 has no valid form without a transfer: when the operator pays nobody, the
        // file is left out and the manifest says why.
        let mut omitted = Vec::new();
        match pain_001(
            settlement,
            &payments,
            cutoff,
            inputs.record.finalised_at_ms,
            &name_of,
        ) {
            Some(pain) => folder.write(PAIN_001_FILE, pain.as_bytes())?,
            None => omitted.push(OmittedFile {
                path: PAIN_001_FILE.to_owned(),
                reason: "the operator pays no merchant after this period's closing".to_owned(),
            }),
        }
        Ok(Written {
            folder,
            entry_count,
            entries_root: hex::encode(tree.root()),
            omitted,
        })
    }
}

/// The settlement in its three forms and its matrix in two (the CSV ones on request).
fn write_settlement(
    folder: &mut Folder,
    record: &SettlementRecord,
    formats: Formats,
) -> anyhow::Result<()> {
    let settlement = &record.settlement;
    folder.write(
        "settlement.json",
        serde_json::to_string_pretty(record)?.as_bytes(),
    )?;
    folder.jsonl("settlement.jsonl", &settlement.merchants)?;
    folder.jsonl("matrix.jsonl", &settlement.matrix)?;
    if !formats.csv {
        return Ok(());
    }
    let operator = &settlement.operator;
    let mut settlement_rows: Vec<Vec<Cell>> = settlement
        .merchants
        .iter()
        .map(|net| {
            vec![
                text(&net.merchant_id),
                Cell::Number(net.points_issued),
                Cell::Number(net.points_redeemed),
                Cell::Number(net.issuance_minor),
                Cell::Number(net.issuance_reversed_minor),
                Cell::Number(net.redemptions_minor),
                Cell::Number(net.redemptions_reversed_minor),
                Cell::Number(net.fees_minor),
                Cell::Number(net.funding_minor),
                Cell::Number(net.breakage_minor),
                text(&net.breakage_share),
                Cell::Number(net.breakage_share_minor),
                Cell::Number(net.net_minor),
            ]
        })
        .collect();
    settlement_rows.push(vec![
        text("operator"),
        Cell::Number(0),
        Cell::Number(0),
        Cell::Number(operator.float_minor),
        Cell::Number(0),
        Cell::Number(operator.rounding_minor),
        Cell::Number(0),
        Cell::Number(operator.fees_minor),
        Cell::Number(operator.cash_minor),
        Cell::Number(operator.breakage_kept_minor),
        text(""),
        Cell::Number(0),
        Cell::Number(operator.net_minor),
    ]);
    folder.csv(
        "settlement.csv",
        &[
            "party",
            "points_issued",
            "points_redeemed",
            "issuance_minor",
            "issuance_reversed_minor",
            "redemptions_minor",
            "redemptions_reversed_minor",
            "fees_minor",
            "funding_minor",
            "breakage_minor",
            "breakage_share",
            "breakage_share_minor",
            "net_minor",
        ],
        settlement_rows,
        |row| row,
    )?;
    folder.csv(
        "matrix.csv",
        &["issuer", "redeemer", "points", "value_minor"],
        &settlement.matrix,
        |cell| {
            vec![
                text(&cell.issuer),
                text(&cell.redeemer),
                Cell::Number(cell.points),
                Cell::Number(cell.value_minor),
            ]
        },
    )
}

/// Exports a finalised period. Reads the database only.
pub async fn export(options: &ExportOptions) -> anyhow::Result<Manifest> {
    let period = &options.period;
    if options.out.exists()
        && std::fs::read_dir(&options.out)
            .with_context(|| format!("cannot read {}", options.out.display()))?
            .next()
            .is_some()
    {
        bail!(
            "{} exists and is not empty; an export goes into a new folder",
            options.out.display()
        );
    }
    let (key_id, signing_key) = crate::operator_key::current_signer(&options.operator_keys)?;
    let storage = Storage::connect(&ConnectOptions::existing(&*options.database_url)).await?;
    let result = read_and_write(options, period, &storage, key_id, &signing_key).await;
    storage.close().await;
    result
}

async fn read_and_write(
    options: &ExportOptions,
    period: &Period,
    storage: &Storage,
    key_id: String,
    signing_key: &ed25519_dalek::SigningKey,
) -> anyhow::Result<Manifest> {
    let Some(FinalisedPeriod {
        settlement,
        closing_sequence,
        finalised_at_ms,
    }) = storage.finalised_period(&period.label).await?
    else {
        bail!(
            "period {} is not finalised; finalise it first (coalition admin settle finalise --period {})",
            period.label,
            period.label
        );
    };
    if settlement.start_ms != period.start_ms || settlement.end_ms != period.end_ms {
        bail!(
            "period {} was finalised as [{}, {}) but the cut-off given makes it [{}, {}): pass the server's --cutoff and --utc-offset",
            period.label,
            settlement.start_ms,
            settlement.end_ms,
            period.start_ms,
            period.end_ms
        );
    }
    // The period is read a page at a time: every file that lists entries is written as the
    // pages come, so the export's memory does not grow with the period.
    let range = storage.period_range(period.start_ms, period.end_ms).await?;
    let (first_sequence, last_sequence) = range.unwrap_or((0, 0));
    let mut pages = storage
        .period_pages(period.start_ms, period.end_ms, EXPORT_PAGE_LEN)
        .await?;
    if (first_sequence, last_sequence) != (settlement.first_sequence, settlement.last_sequence)
        || hex::encode(pages.previous_hash) != settlement.previous_hash
    {
        bail!(
            "the database's entries of period {} are not the ones it was finalised with",
            period.label
        );
    }
    let opening_before = if range.is_none() {
        storage
            .period_range(i64::MIN, period.start_ms)
            .await?
            .map_or(1, |(_, last)| last + 1)
    } else {
        first_sequence
    };
    let mut opening: BTreeMap<BalanceKey, i64> = BTreeMap::new();
    for (account, asset, balance) in storage.balances_before(opening_before).await? {
        opening.insert(
            (
                asset.code().to_owned(),
                account.kind().to_owned(),
                account.owner().to_owned(),
            ),
            balance,
        );
    }
    let registry = storage.load_registry().await?;
    let payables = period_payables(storage, &settlement, closing_sequence).await?;
    // The names of the merchants the payments files name, and only those: every name the
    // export carries is then one that `verify` checks through those files.
    let paid: std::collections::BTreeSet<String> = settlement::payments(&settlement, &payables)
        .into_iter()
        .map(|payment| payment.merchant_id)
        .collect();
    let mut merchants: Vec<MerchantName> = registry
        .merchants()
        .filter(|merchant| paid.contains(merchant.merchant_id.as_str()))
        .map(|merchant| MerchantName {
            merchant_id: merchant.merchant_id.as_str().to_owned(),
            name: merchant.name.clone(),
        })
        .collect();
    merchants.sort_by(|left, right| left.merchant_id.cmp(&right.merchant_id));
    let payables = payables
        .into_iter()
        .map(|(merchant_id, payable_minor)| Payable {
            merchant_id,
            payable_minor,
        })
        .collect();
    let inputs = PeriodInputs {
        record: SettlementRecord {
            closing_sequence,
            finalised_at_ms,
            settlement: settlement.clone(),
        },
        cutoff: options.cutoff,
        opening,
        first_sequence,
        merchants,
        payables,
        terms: TermsBook::new(
            storage
                .load_terms()
                .await?
                .iter()
                .map(TermsRecord::from_terms),
        ),
        formats: options.formats,
    };
    std::fs::create_dir_all(&options.out)
        .with_context(|| format!("cannot create {}", options.out.display()))?;
    let mut writer = PeriodWriter::begin(Folder::on_disk(options.out.clone()), &inputs)?;
    while let Some((page, attributions)) = pages.next_page().await? {
        writer.add_page(&page, &attributions)?;
    }
    let expected_count = if range.is_some() {
        last_sequence - first_sequence + 1
    } else {
        0
    };
    if writer.entry_count != expected_count {
        bail!(
            "period {} holds {expected_count} entries but {} were read",
            period.label,
            writer.entry_count
        );
    }
    let Written {
        mut folder,
        entry_count,
        entries_root,
        omitted,
    } = writer.finish()?;

    // Reconciliations of merchants' own records: reports beside the export, outside what
    // the manifest signs, since their input (the merchant's file) is not in the export and
    // `verify` could not make them again.
    for input in &options.reconcile {
        let reader = std::io::BufReader::new(
            std::fs::File::open(&input.file)
                .with_context(|| format!("cannot open {}", input.file.display()))?,
        );
        let relative = format!("{RECONCILIATION_DIR}/{}", input.merchant.file_name_stem());
        if !is_inside_path(&relative) {
            bail!("refusing to write {relative:?}: it does not name a folder inside the export");
        }
        crate::reconcile::reconcile_file(
            storage,
            &input.merchant,
            period.start_ms,
            period.end_ms,
            reader,
            &folder.root.join(&relative),
            |_| {},
        )
        .await?;
    }

    // The manifest, signed.
    let mut files = Vec::with_capacity(folder.written.len());
    folder.written.sort();
    let content = folder.digests();
    for relative in &folder.written {
        // Read back a buffer at a time: a file is never held whole.
        let mut file = std::fs::File::open(folder.root.join(relative))
            .with_context(|| format!("cannot read back {relative}"))?;
        let mut hasher = Sha256::new();
        let mut buffer = vec![0u8; 1 << 16];
        let mut bytes = 0u64;
        loop {
            let read = std::io::Read::read(&mut file, &mut buffer)
                .with_context(|| format!("cannot read back {relative}"))?;
            if read == 0 {
                break;
            }
            hasher.update(&buffer[..read]);
            bytes += read as u64;
        }
        let (content_sha256, content_bytes) = if relative.ends_with(".gz") {
            let (sha256, bytes) = content
                .get(relative)
                .with_context(|| format!("{relative} has no content digest"))?;
            (Some(sha256.clone()), Some(*bytes))
        } else {
            (None, None)
        };
        files.push(FileDigest {
            path: relative.clone(),
            bytes,
            sha256: hex::encode(hasher.finalize()),
            content_bytes,
            content_sha256,
        });
    }
    let manifest = Manifest {
        format: MANIFEST_FORMAT.to_owned(),
        period: settlement.period.clone(),
        start_ms: settlement.start_ms,
        end_ms: settlement.end_ms,
        currency: settlement.currency.clone(),
        entries: entry_count,
        first_sequence,
        last_sequence,
        previous_hash: settlement.previous_hash.clone(),
        head_hash: settlement.head_hash.clone(),
        entries_root,
        cutoff_minute_of_day: options.cutoff.minute_of_day,
        utc_offset_minutes: options.cutoff.offset_minutes,
        closing_sequence,
        finalised_at_ms,
        created_at_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_millis() as i64),
        operator_key_id: key_id,
        operator_public_key: hex::encode(signing_key.verifying_key().as_bytes()),
        files,
        omitted,
        formats: options.formats.names(),
    };
    let manifest_bytes = serde_json::to_vec_pretty(&manifest)?;
    std::fs::write(folder.root.join(MANIFEST_FILE), &manifest_bytes)
        .context("cannot write the manifest")?;
    let signature = signing_key.sign(&signed_message(&manifest_bytes));
    std::fs::write(
        folder.root.join(SIGNATURE_FILE),
        format!("{}\n", hex::encode(signature.to_bytes())),
    )
    .context("cannot write the manifest's signature")?;
    Ok(manifest)
}

/// What the operator's key signs: the domain, then the manifest's bytes as written.
pub fn signed_message(manifest_bytes: &[u8]) -> Vec<u8> {
    let mut message = MANIFEST_SIGNATURE_DOMAIN.to_vec();
    message.extend_from_slice(manifest_bytes);
    message
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

//! `coalition export`: one finalised settlement period's books as a folder that an auditor
//! verifies with nothing but the folder and the operator's public key (see `verify`).
//!
//! `records` holds the rows and inputs, `folder` where the files go, `formats` how each file
//! is written, `writer` the one `PeriodWriter` that makes them for both the export and
//! `verify`; this file reads the database and signs the manifest.
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

mod folder;
mod formats;
mod records;
mod writer;

pub use folder::*;
pub use formats::*;
pub use records::*;
pub use writer::*;

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

/// The folder an export of `period` is kept in under `exports_dir`: where the console and
/// the demo put them, and where `ProveEntries` and `coalition prove --period` look.
pub fn export_folder(exports_dir: &std::path::Path, period: &str) -> PathBuf {
    exports_dir.join(format!("export-{period}"))
}

/// Entries per page when an export reads its period.
const EXPORT_PAGE_LEN: u64 = 5_000;

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
    /// Per merchant, how many of the period's entries concern it (it submitted them or they
    /// post to its accounts): what makes a merchant's proof complete.
    pub merchant_entries: BTreeMap<String, u64>,
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

/// The subfolder of an export that holds reconciliation reports (not signed: see `export`).
pub const RECONCILIATION_DIR: &str = "reconciliation";

/// The entries with every field their hashes cover: the export's main input.
pub const ENTRIES_FILE: &str = "entries.jsonl.gz";
/// The lot attribution of the period's redemptions.
pub const ATTRIBUTIONS_FILE: &str = "attributions.jsonl.gz";
/// The trial balance, whose openings are an input.
pub const TRIAL_BALANCE_FILE: &str = "trial_balance.jsonl.gz";
/// The partners' signed envelopes of the period's entries, and the keys that signed them.
pub const ENVELOPES_FILE: &str = "envelopes.jsonl.gz";
pub const KEYS_FILE: &str = "keys.jsonl";
/// The earn rules the period's earns by spend were priced by, and their members' tiers.
pub const EARN_RULES_FILE: &str = "earn_rules.jsonl";
pub const MEMBER_TIERS_FILE: &str = "member_tiers.jsonl";
/// The payments' inputs.
pub const MERCHANTS_FILE: &str = "merchants.jsonl";
pub const PAYABLES_FILE: &str = "payables.jsonl";

/// A merchant's statement as JSON lines.
pub fn statement_jsonl(merchant: &MerchantId) -> String {
    format!("statements/{}.jsonl.gz", merchant.file_name_stem())
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
        keys: registry
            .merchants()
            .flat_map(|merchant| {
                merchant.keys.iter().map(|key| KeyRecord {
                    merchant_id: merchant.merchant_id.as_str().to_owned(),
                    key_id: key.key_id.as_str().to_owned(),
                    public_key: hex::encode(key.public_key.as_bytes()),
                    valid_from_ms: key.valid_from_ms,
                })
            })
            .collect(),
        earn_rules: storage
            .load_earn_rules()
            .await?
            .iter()
            .map(EarnRulesRecord::from_rules)
            .collect(),
        member_tiers: storage
            .member_tiers(
                &storage
                    .members_earning_by_rules(first_sequence, last_sequence)
                    .await?,
            )
            .await?,
        formats: options.formats,
    };
    std::fs::create_dir_all(&options.out)
        .with_context(|| format!("cannot create {}", options.out.display()))?;
    let mut writer = PeriodWriter::begin(Folder::on_disk(options.out.clone()), &inputs)?;
    while let Some((page, attributions)) = pages.next_page().await? {
        let envelopes: Vec<EnvelopeRecord> = match (page.first(), page.last()) {
            (Some(first), Some(last)) => storage
                .envelopes_between(first.sequence, last.sequence)
                .await?
                .into_iter()
                .map(|(entry_sequence, key_id, body, signature)| EnvelopeRecord {
                    entry_sequence,
                    key_id,
                    body: hex::encode(body),
                    signature: hex::encode(signature),
                })
                .collect(),
            _ => Vec::new(),
        };
        writer.add_page(&page, &attributions, &envelopes)?;
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
        merchant_entries,
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
        merchant_entries,
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

//! `coalition verify`: checks an export with nothing but the folder and the operator's public
//! key. Every problem found is reported; the export is sound only when there are none.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use coalition_domain::CurrencyCode;
use coalition_domain::chain::{ChainHead, verify_chain};
use coalition_domain::journal::Entry;
use coalition_domain::settlement::{Attribution, Cutoff, Period, SettlementBuilder};
use ed25519_dalek::{Signature, VerifyingKey};
use rust_decimal::Decimal;
use sha2::{Digest, Sha256};

use crate::export::{
    ATTRIBUTIONS_FILE, BalanceKey, EARN_RULES_FILE, ENTRIES_FILE, ENVELOPES_FILE, EarnRulesRecord,
    EntryRecord, EnvelopeRecord, Folder, Formats, KEYS_FILE, KeyRecord, MANIFEST_FILE,
    MANIFEST_FORMAT, MEMBER_TIERS_FILE, MERCHANTS_FILE, Manifest, MemberTier, MerchantName,
    PAYABLES_FILE, Payable, PeriodInputs, PeriodWriter, RECONCILIATION_DIR, SIGNATURE_FILE,
    SettlementRecord, TERMS_FILE, TRIAL_BALANCE_FILE, TermsBook, TermsRecord, TrialBalanceLine,
    priced_side, signed_message, trial_balance_sums,
};

/// What verifying one folder found.
#[derive(Debug, Default)]
pub struct Verified {
    pub folder: PathBuf,
    pub manifest: Option<Manifest>,
    /// The trial balance's closing lines, to chain the next period's opening to.
    pub closing: Vec<TrialBalanceLine>,
    pub opening: Vec<TrialBalanceLine>,
    /// The settlement as finalised, to check its closing entry in a later export against.
    pub settlement: Option<coalition_domain::settlement::Settlement>,
    /// The closing entries of earlier periods that this period holds.
    pub closings: Vec<Entry>,
    /// Merchants' entries of the period, and how many of them have no kept envelope (booked
    /// before envelopes were kept): their partners' signatures cannot be checked.
    pub merchant_entry_count: u64,
    pub without_envelope: u64,
    /// Every posting of the period to a merchant's payable account, in the settlement
    /// currency: (sequence, merchant, amount). Only closing entries and payouts post there.
    pub payable_postings: Vec<(u64, String, i64)>,
    /// What `payables.jsonl` says was payable after the period's closing entry (non-zero).
    pub payables: BTreeMap<String, i64>,
    pub problems: Vec<String>,
}

fn walk(root: &Path, dir: &Path, out: &mut BTreeSet<String>) -> anyhow::Result<()> {
    for item in std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))? {
        let path = item?.path();
        if path.is_dir() {
            walk(root, &path, out)?;
        } else {
            let relative = path
                .strip_prefix(root)
                .expect("under the root")
                .to_string_lossy()
                .replace('\\', "/");
            out.insert(relative);
        }
    }
    Ok(())
}

fn read_jsonl<T: serde::de::DeserializeOwned>(
    folder: &Path,
    name: &str,
    problems: &mut Vec<String>,
) -> Vec<T> {
    let lines = match crate::export::read_lines(folder, name) {
        Ok(lines) => lines,
        Err(error) => {
            problems.push(format!("{error:#}"));
            return Vec::new();
        }
    };
    let mut rows = Vec::new();
    for (index, line) in lines.enumerate() {
        let parsed = line
            .map_err(anyhow::Error::from)
            .and_then(|line| Ok(serde_json::from_str(&line)?));
        match parsed {
            Ok(row) => rows.push(row),
            Err(error) => {
                problems.push(format!("{name} line {}: {error}", index + 1));
                break;
            }
        }
    }
    rows
}

/// Verifies one export folder; its manifest must be signed by one of `keys` (the operator's
/// current key and, after a rotation, older ones).
pub fn verify_folder(folder: &Path, keys: &[VerifyingKey]) -> anyhow::Result<Verified> {
    let mut verified = Verified {
        folder: folder.to_owned(),
        ..Verified::default()
    };
    let mut problems = Vec::new();
    check_folder(folder, keys, &mut verified, &mut problems)?;
    verified.problems = problems;
    Ok(verified)
}

/// `verify_folder`'s checks; returns early when nothing further can be checked.
fn check_folder(
    folder: &Path,
    keys: &[VerifyingKey],
    verified: &mut Verified,
    problems: &mut Vec<String>,
) -> anyhow::Result<()> {
    let manifest_bytes = std::fs::read(folder.join(MANIFEST_FILE))
        .with_context(|| format!("{} has no {MANIFEST_FILE}", folder.display()))?;
    // The signature over the manifest's exact bytes.
    let mut signed_by: Option<&VerifyingKey> = None;
    match std::fs::read_to_string(folder.join(SIGNATURE_FILE)) {
        Err(_) => problems.push(format!("{SIGNATURE_FILE}: missing")),
        Ok(text) => {
            let signature = hex::decode(text.trim())
                .ok()
                .and_then(|bytes| <[u8; 64]>::try_from(bytes).ok())
                .map(|bytes| Signature::from_bytes(&bytes));
            match signature {
                None => problems.push(format!("{SIGNATURE_FILE}: not 64 bytes of hex")),
                Some(signature) => {
                    let message = signed_message(&manifest_bytes);
                    signed_by = keys
                        .iter()
                        .find(|key| key.verify_strict(&message, &signature).is_ok());
                    if signed_by.is_none() {
                        problems.push(format!(
                            "{MANIFEST_FILE}: the signature does not verify with the operator keys given"
                        ));
                    }
                }
            }
        }
    }
    // An export of another format is told apart before its fields are read.
    let format = serde_json::from_slice::<serde_json::Value>(&manifest_bytes)
        .ok()
        .and_then(|value| value.get("format")?.as_str().map(str::to_owned));
    if let Some(format) = format
        && format != MANIFEST_FORMAT
    {
        problems.push(format!(
            "{MANIFEST_FILE}: format {format:?}; this version verifies {MANIFEST_FORMAT:?} (verify it with the version that made it, or export the period again)"
        ));
        return Ok(());
    }
    let manifest: Manifest = match serde_json::from_slice(&manifest_bytes) {
        Ok(manifest) => manifest,
        Err(error) => {
            problems.push(format!("{MANIFEST_FILE}: {error}"));
            return Ok(());
        }
    };
    if let Some(key) = signed_by
        && hex::encode(key.as_bytes()) != manifest.operator_public_key
    {
        problems.push(format!(
            "{MANIFEST_FILE}: names the operator key {}, but was signed by {}",
            manifest.operator_public_key,
            hex::encode(key.as_bytes())
        ));
    }
    // Every file's digest, and no file the manifest does not name.
    let mut present = BTreeSet::new();
    walk(folder, folder, &mut present)?;
    present.remove(MANIFEST_FILE);
    present.remove(SIGNATURE_FILE);
    for file in &manifest.files {
        present.remove(&file.path);
        // A manifest is data from outside until its signature is checked, and even a signed
        // one never makes this read outside the folder.
        if !crate::export::is_inside_path(&file.path) {
            problems.push(format!(
                "{:?}: the manifest names a path outside the export folder",
                file.path
            ));
            continue;
        }
        match std::fs::read(folder.join(&file.path)) {
            Err(_) => problems.push(format!("{}: missing", file.path)),
            Ok(bytes) => {
                let digest = hex::encode(Sha256::digest(&bytes));
                if digest != file.sha256 || bytes.len() as u64 != file.bytes {
                    problems.push(format!(
                        "{}: altered (SHA-256 {digest}, the manifest says {})",
                        file.path, file.sha256
                    ));
                }
            }
        }
    }
    // Reconciliation reports ride beside the export unsigned: their input, the merchant's
    // own file, is not in it.
    present.retain(|path| !path.starts_with(&format!("{RECONCILIATION_DIR}/")));
    for extra in present {
        problems.push(format!("{extra}: not named in the manifest"));
    }

    let cutoff = Cutoff {
        minute_of_day: manifest.cutoff_minute_of_day,
        offset_minutes: manifest.utc_offset_minutes,
    };
    let previous_hash: Option<[u8; 32]> = hex::decode(&manifest.previous_hash)
        .ok()
        .and_then(|bytes| bytes.try_into().ok());
    let Some(previous_hash) = previous_hash else {
        problems.push(format!(
            "{MANIFEST_FILE}: previous_hash is not 32 bytes of hex"
        ));
        return Ok(());
    };
    let Some(currency) = CurrencyCode::new(&manifest.currency) else {
        problems.push(format!(
            "{MANIFEST_FILE}: currency {:?} is not a currency code",
            manifest.currency
        ));
        return Ok(());
    };

    // The inputs besides the entries: the settlement as finalised, the opening balances
    // (the trial balance's), the merchants' names and what was payable.
    let record: SettlementRecord = match std::fs::read(folder.join("settlement.json"))
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
    {
        Some(record) => record,
        None => {
            problems.push("settlement.json: missing or unreadable".into());
            return Ok(());
        }
    };
    if record.settlement.period != manifest.period
        || record.settlement.head_hash != manifest.head_hash
        || record.finalised_at_ms != manifest.finalised_at_ms
        || record.closing_sequence != manifest.closing_sequence
    {
        problems.push(
            "settlement.json: not the period, finalisation or closing entry the manifest names"
                .into(),
        );
    }
    let lines: Vec<TrialBalanceLine> = read_jsonl(folder, TRIAL_BALANCE_FILE, problems);
    let opening: BTreeMap<BalanceKey, i64> = lines
        .iter()
        .map(|line| (line.key(), line.opening))
        .collect();
    let merchants: Vec<MerchantName> = read_jsonl(folder, MERCHANTS_FILE, problems);
    let payables: Vec<Payable> = read_jsonl(folder, PAYABLES_FILE, problems);
    let terms = TermsBook::new(read_jsonl::<TermsRecord>(folder, TERMS_FILE, problems));
    let key_records: Vec<KeyRecord> = read_jsonl(folder, KEYS_FILE, problems);
    let earn_rules: Vec<EarnRulesRecord> = read_jsonl(folder, EARN_RULES_FILE, problems);
    let member_tiers: BTreeMap<String, Option<String>> =
        read_jsonl::<MemberTier>(folder, MEMBER_TIERS_FILE, problems)
            .into_iter()
            .map(|row| (row.member_id, row.tier))
            .collect();
    let rules_by_version: BTreeMap<u32, coalition_domain::EarnRules> = earn_rules
        .iter()
        .filter_map(|record| {
            let rules = record.to_rules();
            if rules.is_none() {
                problems.push(format!(
                    "{EARN_RULES_FILE}: version {} does not parse",
                    record.version
                ));
            }
            rules.map(|rules| (record.version, rules))
        })
        .collect();
    let keys = key_book(&key_records, problems);
    let formats = match Formats::from_names(&manifest.formats) {
        Ok(formats) => formats,
        Err(error) => {
            problems.push(format!("{MANIFEST_FILE}: {error}"));
            return Ok(());
        }
    };
    let mut shares = BTreeMap::new();
    for net in &record.settlement.merchants {
        match Decimal::from_str_exact(&net.breakage_share) {
            Ok(share) => {
                shares.insert(net.merchant_id.clone(), share);
            }
            Err(_) => problems.push(format!(
                "settlement.json: breakage share {:?} of {} is not a decimal",
                net.breakage_share, net.merchant_id
            )),
        }
    }
    let period = Period {
        label: record.settlement.period.clone(),
        start_ms: manifest.start_ms,
        end_ms: manifest.end_ms,
    };
    let inputs = PeriodInputs {
        record,
        cutoff,
        opening,
        first_sequence: manifest.first_sequence,
        merchants,
        payables,
        terms,
        keys: key_records,
        earn_rules,
        member_tiers,
        formats,
    };

    // The entries a page at a time: the chain, each entry balanced and inside the period,
    // the settlement recomputed, and every file made again into digests.
    let mut settlement = SettlementBuilder::new(&period, currency, previous_hash);
    let mut writer = PeriodWriter::begin(Folder::digesting(), &inputs)?;
    let mut head = ChainHead {
        sequence: manifest.first_sequence.saturating_sub(1),
        hash: previous_hash,
    };
    let mut pages = match Pages::open(folder) {
        Ok(pages) => pages,
        Err(error) => {
            problems.push(format!("{error:#}"));
            return Ok(());
        }
    };
    let mut readable = true;
    loop {
        let (page, attributions, envelopes) = match pages.next_page() {
            Ok(Some(page)) => page,
            Ok(None) => break,
            Err(error) => {
                problems.push(format!("{error:#}"));
                readable = false;
                break;
            }
        };
        match verify_chain(head, &page) {
            Ok(next) => head = next,
            Err(error) => {
                problems.push(format!("{ENTRIES_FILE}: hash chain broken: {error}"));
                readable = false;
                break;
            }
        }
        verified.closings.extend(
            page.iter()
                .filter(|entry| entry.kind == coalition_domain::EntryKind::Settlement)
                .cloned(),
        );
        let money = coalition_domain::Asset::Currency(currency);
        for entry in &page {
            for posting in &entry.postings {
                if let coalition_domain::AccountKey::MerchantPayable(merchant) = &posting.account
                    && posting.asset == money
                {
                    verified.payable_postings.push((
                        entry.sequence,
                        merchant.as_str().to_owned(),
                        posting.amount,
                    ));
                }
            }
            if let Err(error) = entry.check_balanced() {
                problems.push(format!("{ENTRIES_FILE}: {error}"));
            }
            if let Some(problem) = priced_problem(entry, &inputs.terms, currency) {
                problems.push(problem);
            }
            if let Some(problem) = rules_problem(
                entry,
                &inputs.terms,
                &rules_by_version,
                &inputs.member_tiers,
            ) {
                problems.push(problem);
            }
            if entry.accepted_at_ms < manifest.start_ms || entry.accepted_at_ms >= manifest.end_ms {
                problems.push(format!(
                    "{ENTRIES_FILE}: entry {} was accepted outside the period",
                    entry.sequence
                ));
            }
        }
        if let Err(error) = settlement.add_page(&page, &attributions) {
            problems.push(format!(
                "settlement.json: cannot be recomputed from {ENTRIES_FILE} and {ATTRIBUTIONS_FILE}: {error}"
            ));
            readable = false;
            break;
        }
        problems.extend(envelope_problems(&page, &envelopes, &keys));
        let enveloped: BTreeSet<u64> = envelopes
            .iter()
            .map(|envelope| envelope.entry_sequence)
            .collect();
        verified.without_envelope += page
            .iter()
            .filter(|entry| entry.origin.is_some() && !enveloped.contains(&entry.sequence))
            .count() as u64;
        verified.merchant_entry_count +=
            page.iter().filter(|entry| entry.origin.is_some()).count() as u64;
        if let Err(error) = writer.add_page(&page, &attributions, &envelopes) {
            problems.push(format!("{ENTRIES_FILE}: {error:#}"));
            readable = false;
            break;
        }
    }
    if !readable {
        return Ok(());
    }
    if hex::encode(head.hash) != manifest.head_hash {
        problems.push(format!(
            "{ENTRIES_FILE}: the chain ends at {}, the manifest's head is {}",
            hex::encode(head.hash),
            manifest.head_hash
        ));
    }
    if writer.entry_count > 0 && head.sequence != manifest.last_sequence {
        problems.push(format!(
            "{ENTRIES_FILE}: the last entry is {}, the manifest says {}",
            head.sequence, manifest.last_sequence
        ));
    }
    if writer.entry_count != manifest.entries {
        problems.push(format!(
            "{ENTRIES_FILE}: {} entries, the manifest says {}",
            writer.entry_count, manifest.entries
        ));
    }
    // Each merchant's breakage share is the one of its terms in force at the period's end.
    for net in &inputs.record.settlement.merchants {
        let in_force = inputs
            .terms
            .in_force(&net.merchant_id, manifest.end_ms - 1)
            .map_or(Ok(Decimal::ZERO), |record| {
                Decimal::from_str_exact(&record.breakage_share)
            });
        if in_force.ok() != shares.get(&net.merchant_id).copied() {
            problems.push(format!(
                "settlement.json: {}'s breakage share {} is not its share in {TERMS_FILE}",
                net.merchant_id, net.breakage_share
            ));
        }
    }
    match settlement.finish(&shares) {
        Ok(recomputed) if recomputed == inputs.record.settlement => {}
        Ok(_) => problems.push(
            format!("settlement.json: does not follow from {ENTRIES_FILE} and {ATTRIBUTIONS_FILE}"),
        ),
        Err(error) => problems.push(format!(
            "settlement.json: cannot be recomputed from {ENTRIES_FILE} and {ATTRIBUTIONS_FILE}: {error}"
        )),
    }
    match writer.finish() {
        Err(error) => problems.push(format!(
            "the export's files cannot be made again: {error:#}"
        )),
        Ok(written) => {
            if written.entries_root != manifest.entries_root {
                problems.push(format!(
                    "{ENTRIES_FILE}: the Merkle root of its entries is {}, the manifest says {}",
                    written.entries_root, manifest.entries_root
                ));
            }
            if written.merchant_entries != manifest.merchant_entries {
                problems.push(format!(
                    "{MANIFEST_FILE}: its merchant_entries are not the entries' counts per merchant"
                ));
            }
            if written.omitted != manifest.omitted {
                problems.push(format!(
                    "{MANIFEST_FILE}: the files it leaves out are not the ones the period leaves out"
                ));
            }
            // Every signed file is one the entries and the inputs make, byte for byte.
            let made = written.folder.digests();
            for file in &manifest.files {
                // A compressed file is compared by its content: compressors may differ.
                let signed = match (&file.content_sha256, file.content_bytes) {
                    (Some(sha256), Some(bytes)) => (sha256, bytes),
                    _ => (&file.sha256, file.bytes),
                };
                match made.get(&file.path) {
                    Some((sha256, bytes)) if sha256 == signed.0 && *bytes == signed.1 => {}
                    Some(_) => problems.push(format!(
                        "{}: is not what {} make",
                        file.path,
                        made_from(&file.path)
                    )),
                    None => problems.push(format!(
                        "{}: signed, but not a file of the export format",
                        file.path
                    )),
                }
            }
            let named: BTreeSet<&str> = manifest
                .files
                .iter()
                .map(|file| file.path.as_str())
                .collect();
            for path in made.keys() {
                if !named.contains(path.as_str()) {
                    problems.push(format!("{path}: the period has it, the manifest does not"));
                }
            }
        }
    }
    for (asset, (opening_sum, closing_sum)) in trial_balance_sums(&lines) {
        if opening_sum != 0 || closing_sum != 0 {
            problems.push(format!(
                "{TRIAL_BALANCE_FILE}: {asset} sums to {opening_sum} opening and {closing_sum} closing, not zero"
            ));
        }
    }
    verified.closing = lines
        .iter()
        .filter(|line| line.closing != 0)
        .cloned()
        .collect();
    verified.opening = lines
        .iter()
        .filter(|line| line.opening != 0)
        .cloned()
        .collect();
    verified.payables = inputs
        .payables
        .iter()
        .filter(|payable| payable.payable_minor != 0)
        .map(|payable| (payable.merchant_id.clone(), payable.payable_minor))
        .collect();
    // Without a closing entry, what was payable is the payable accounts' closing balances.
    if manifest.closing_sequence.is_none()
        && verified.payables != payables_at_close(&verified.closing, &manifest.currency)
    {
        problems.push(format!(
            "{PAYABLES_FILE}: not the payable balances of {TRIAL_BALANCE_FILE}"
        ));
    }
    verified.settlement = Some(inputs.record.settlement.clone());
    verified.manifest = Some(manifest);
    Ok(())
}

/// The merchants' payable balances among a trial balance's closing lines (non-zero).
fn payables_at_close(closing: &[TrialBalanceLine], currency: &str) -> BTreeMap<String, i64> {
    closing
        .iter()
        .filter(|line| {
            line.account_kind == "merchant_payable" && line.asset == currency && line.closing != 0
        })
        .map(|line| (line.owner.clone(), line.closing))
        .collect()
}

/// Problems joining `later` onto `earlier`: the second period must start where the first
/// ended, in the hash chain and in the balances.
pub fn chain_problems(earlier: &Verified, later: &Verified) -> Vec<String> {
    let (Some(first), Some(second)) = (&earlier.manifest, &later.manifest) else {
        return Vec::new();
    };
    let mut problems = Vec::new();
    // Periods between two exports may be left out only when they hold no entry: then the
    // second continues the hash chain from the first's head (checked next), which no entry
    // in between would leave so.
    if second.start_ms < first.end_ms {
        problems.push(format!(
            "period {} starts before {} ends",
            second.period, first.period
        ));
    }
    if second.previous_hash != first.head_hash {
        problems.push(format!(
            "period {} does not continue the hash chain of {} (previous {} vs head {})",
            second.period, first.period, second.previous_hash, first.head_hash
        ));
    }
    if first.entries > 0 && second.entries > 0 && second.first_sequence != first.last_sequence + 1 {
        problems.push(format!(
            "period {} starts at entry {}, {} ended at {}",
            second.period, second.first_sequence, first.period, first.last_sequence
        ));
    }
    let closing: BTreeSet<_> = earlier
        .closing
        .iter()
        .map(|line| (line.key(), line.closing))
        .collect();
    let opening: BTreeSet<_> = later
        .opening
        .iter()
        .map(|line| (line.key(), line.opening))
        .collect();
    if closing != opening {
        problems.push(format!(
            "period {}'s opening balances are not {}'s closing balances",
            second.period, first.period
        ));
    }
    problems
}

/// Entries per page when `verify` reads an export.
const PAGE_LEN: usize = 5_000;

/// The entries read a page at a time, each page with the attributions and the envelopes of
/// exactly its entries (both files come in entry order).
struct Pages {
    entries: Lines,
    entry_line: usize,
    attributions: ByEntry<Attribution>,
    envelopes: ByEntry<EnvelopeRecord>,
}

type Lines = std::io::Lines<std::io::BufReader<Box<dyn std::io::Read>>>;

/// A JSON lines file whose rows name entries in order, read along with the entries.
struct ByEntry<T> {
    name: &'static str,
    lines: std::iter::Peekable<Lines>,
    line: usize,
    last: u64,
    sequence_of: fn(&T) -> u64,
}

impl<T: serde::de::DeserializeOwned> ByEntry<T> {
    fn open(folder: &Path, name: &'static str, sequence_of: fn(&T) -> u64) -> anyhow::Result<Self> {
        Ok(ByEntry {
            name,
            lines: crate::export::read_lines(folder, name)?.peekable(),
            line: 0,
            last: 0,
            sequence_of,
        })
    }

    /// The rows for entries up to `last`.
    fn through(&mut self, last: u64) -> anyhow::Result<Vec<T>> {
        let mut rows = Vec::new();
        while let Some(line) = self.lines.peek() {
            let Ok(line) = line else {
                bail!("{}: not readable", self.name);
            };
            let row: T = serde_json::from_str(line)
                .with_context(|| format!("{} line {}", self.name, self.line + 1))?;
            let sequence = (self.sequence_of)(&row);
            if sequence > last {
                break;
            }
            if sequence < self.last {
                bail!("{} line {}: not in entry order", self.name, self.line + 1);
            }
            self.last = sequence;
            self.line += 1;
            self.lines.next();
            rows.push(row);
        }
        Ok(rows)
    }

    /// An error when rows remain after the last entry.
    fn finished(&mut self) -> anyhow::Result<()> {
        if self.lines.next().is_some() {
            bail!(
                "{} line {}: names an entry the period does not have",
                self.name,
                self.line + 1
            );
        }
        Ok(())
    }
}

impl Pages {
    fn open(folder: &Path) -> anyhow::Result<Pages> {
        Ok(Pages {
            entries: crate::export::read_lines(folder, ENTRIES_FILE)?,
            entry_line: 0,
            attributions: ByEntry::open(folder, ATTRIBUTIONS_FILE, |row: &Attribution| {
                row.entry_sequence
            })?,
            envelopes: ByEntry::open(folder, ENVELOPES_FILE, |row: &EnvelopeRecord| {
                row.entry_sequence
            })?,
        })
    }

    #[allow(clippy::type_complexity)]
    fn next_page(
        &mut self,
    ) -> anyhow::Result<Option<(Vec<Entry>, Vec<Attribution>, Vec<EnvelopeRecord>)>> {
        let mut page = Vec::with_capacity(PAGE_LEN);
        for line in self.entries.by_ref().take(PAGE_LEN) {
            self.entry_line += 1;
            let line = line.with_context(|| format!("{ENTRIES_FILE}: not readable"))?;
            let record: EntryRecord = serde_json::from_str(&line)
                .with_context(|| format!("{ENTRIES_FILE} line {}", self.entry_line))?;
            page.push(record.to_entry().context(ENTRIES_FILE)?);
        }
        let Some(last) = page.last().map(|entry| entry.sequence) else {
            self.attributions.finished()?;
            self.envelopes.finished()?;
            return Ok(None);
        };
        let attributions = self.attributions.through(last)?;
        let envelopes = self.envelopes.through(last)?;
        Ok(Some((page, attributions, envelopes)))
    }
}

/// The keys of `keys.jsonl`: per (merchant, key id), the public key and since when it may
/// sign.
fn key_book(
    records: &[KeyRecord],
    problems: &mut Vec<String>,
) -> BTreeMap<(String, String), (VerifyingKey, i64)> {
    let mut book = BTreeMap::new();
    for record in records {
        let key = hex::decode(&record.public_key)
            .ok()
            .and_then(|bytes| <[u8; 32]>::try_from(bytes).ok())
            .and_then(|bytes| coalition_domain::signing::parse_public_key(&bytes).ok());
        match key {
            Some(key) => {
                book.insert(
                    (record.merchant_id.clone(), record.key_id.clone()),
                    (key, record.valid_from_ms),
                );
            }
            None => problems.push(format!(
                "{KEYS_FILE}: key {} of {} is not an ed25519 public key",
                record.key_id, record.merchant_id
            )),
        }
    }
    book
}

/// Problems with a page's envelopes: each must belong to a merchant's entry of the page,
/// its body must hash to the entry's body hash, and its signature must verify (strictly,
/// as the server checked it) with a key of that merchant in `keys.jsonl` that could sign by
/// the entry's acceptance. Checked on every core: this is a signature per entry.
fn envelope_problems(
    page: &[Entry],
    envelopes: &[EnvelopeRecord],
    keys: &BTreeMap<(String, String), (VerifyingKey, i64)>,
) -> Vec<String> {
    let check = |envelope: &EnvelopeRecord| -> Option<String> {
        let sequence = envelope.entry_sequence;
        let entry = page
            .first()
            .and_then(|first| sequence.checked_sub(first.sequence))
            .and_then(|index| page.get(index as usize))
            .filter(|entry| entry.sequence == sequence);
        let Some(origin) = entry.and_then(|entry| entry.origin.as_ref()) else {
            return Some(format!(
                "{ENVELOPES_FILE}: entry {sequence} is no merchant's entry"
            ));
        };
        let Ok(body) = hex::decode(&envelope.body) else {
            return Some(format!(
                "{ENVELOPES_FILE}: entry {sequence}: the body is not hex"
            ));
        };
        if coalition_domain::body_hash(&body) != origin.body_hash {
            return Some(format!(
                "{ENVELOPES_FILE}: entry {sequence}: the body does not hash to the entry's body hash"
            ));
        }
        let merchant = origin.merchant_id.as_str().to_owned();
        let Some((key, valid_from_ms)) = keys.get(&(merchant.clone(), envelope.key_id.clone()))
        else {
            return Some(format!(
                "{ENVELOPES_FILE}: entry {sequence}: {KEYS_FILE} has no key {} of {merchant}",
                envelope.key_id
            ));
        };
        let accepted_at_ms = entry.map_or(0, |entry| entry.accepted_at_ms);
        if *valid_from_ms > accepted_at_ms {
            return Some(format!(
                "{ENVELOPES_FILE}: entry {sequence}: key {} of {merchant} in {KEYS_FILE} could not sign before {valid_from_ms}",
                envelope.key_id
            ));
        }
        let signature = hex::decode(&envelope.signature)
            .ok()
            .and_then(|bytes| coalition_domain::signing::parse_signature(&bytes).ok());
        let verified = signature.is_some_and(|signature| {
            coalition_domain::signing::verify(
                key,
                coalition_domain::signing::SUBMISSION_DOMAIN,
                &body,
                &signature,
            )
            .is_ok()
        });
        (!verified).then(|| {
            format!(
                "{ENVELOPES_FILE}: entry {sequence}: the signature does not verify with key {} of {merchant} in {KEYS_FILE}",
                envelope.key_id
            )
        })
    };
    let halves = envelopes.split_at(envelopes.len() / 2);
    let (first, second) = std::thread::scope(|scope| {
        let second = scope.spawn(|| halves.1.iter().filter_map(check).collect::<Vec<_>>());
        let first: Vec<String> = halves.0.iter().filter_map(check).collect();
        (
            first,
            second.join().expect("the envelope checks do not panic"),
        )
    });
    first.into_iter().chain(second).collect()
}

/// What `verify` makes a signed file from, for its report when the file is not that.
fn made_from(path: &str) -> &'static str {
    match path {
        "entries.csv" | "postings.csv" => "the entries of entries.jsonl.gz",
        "journal.hledger" | "trial_balance.jsonl.gz" | "trial_balance.csv" => {
            "entries.jsonl.gz and the opening balances of trial_balance.jsonl.gz"
        }
        "attributions.csv" => "the rows of attributions.jsonl.gz",
        "settlement.jsonl" | "settlement.csv" | "matrix.jsonl" | "matrix.csv" => {
            "the settlement of settlement.json"
        }
        "payments.csv" | crate::export::PAIN_001_FILE => {
            "settlement.json, merchants.jsonl and payables.jsonl"
        }
        path if path.starts_with("statements/") => "the entries of entries.jsonl.gz",
        // The inputs themselves, written again from what was read: a difference is a file
        // not in the format's own form (reordered fields, spacing).
        _ => "its own rows in the export format's form",
    }
}

/// Problems with an earlier period's closing entry when `later` holds it: the entry at the
/// earlier manifest's `closing_sequence` must be a closing entry whose postings are exactly
/// what the earlier settlement moves into each merchant's payable account. Nothing when the
/// closing entry falls outside `later`.
pub fn closing_problems(earlier: &Verified, later: &Verified) -> Vec<String> {
    let (Some(first), Some(second), Some(settlement)) =
        (&earlier.manifest, &later.manifest, &earlier.settlement)
    else {
        return Vec::new();
    };
    let Some(sequence) = first.closing_sequence else {
        return Vec::new();
    };
    if second.entries == 0 || sequence < second.first_sequence || sequence > second.last_sequence {
        return Vec::new();
    }
    let Some(currency) = CurrencyCode::new(&settlement.currency) else {
        return vec![format!(
            "period {}: currency {:?} is not a currency code",
            first.period, settlement.currency
        )];
    };
    let Some(entry) = later
        .closings
        .iter()
        .find(|entry| entry.sequence == sequence)
    else {
        return vec![format!(
            "period {}: entry {sequence} of period {} is not a closing entry",
            first.period, second.period
        )];
    };
    let expected = coalition_domain::settlement::closing_postings(settlement, currency);
    if entry.postings != expected {
        return vec![format!(
            "period {}: its closing entry {sequence} in period {} does not move its settlement's nets into the payables",
            first.period, second.period
        )];
    }
    // When `later` follows `earlier` directly, what was payable after the closing entry is
    // the earlier closing balances plus what the later period posted to payables up to and
    // including the closing entry: `payables.jsonl`, which the payments come from.
    if second.previous_hash == first.head_hash && !earlier.closing.is_empty() {
        let mut payable = payables_at_close(&earlier.closing, &settlement.currency);
        for (at, merchant, amount) in &later.payable_postings {
            if *at <= sequence {
                *payable.entry(merchant.clone()).or_default() += amount;
            }
        }
        payable.retain(|_, amount| *amount != 0);
        if payable != earlier.payables {
            return vec![format!(
                "period {}: {PAYABLES_FILE} is not what was payable after its closing entry {sequence} in period {}",
                first.period, second.period
            )];
        }
    }
    Vec::new()
}

/// What is wrong with an earn's or a burn's money legs, if anything: the entry must record
/// its merchant's terms version in force at its acceptance, and move the merchant's
/// settlement and fee accounts by exactly what that version's prices give under the
/// rounding rule (`terms::money_leg`: the payer charged the exact amount rounded up, the
/// payee paid it rounded down).
fn priced_problem(entry: &Entry, terms: &TermsBook, currency: CurrencyCode) -> Option<String> {
    let issue = priced_side(entry.kind)?;
    let origin = entry.origin.as_ref()?;
    let merchant = origin.merchant_id.as_str();
    let sequence = entry.sequence;
    let Some(record) = terms.in_force(merchant, entry.accepted_at_ms) else {
        return Some(format!(
            "{ENTRIES_FILE}: entry {sequence} has no terms of {merchant} in force in {TERMS_FILE}"
        ));
    };
    if entry.terms_version != Some(record.version) {
        return Some(format!(
            "{ENTRIES_FILE}: entry {sequence} records terms version {:?}, {TERMS_FILE} has {} in force",
            entry.terms_version, record.version
        ));
    }
    let price = if issue {
        &record.issue_price_minor_per_point
    } else {
        &record.redeem_price_minor_per_point
    };
    let legs = Decimal::from_str_exact(price)
        .ok()
        .zip(Decimal::from_str_exact(&record.fee_minor_per_point).ok())
        .and_then(|(price, fee)| {
            let (charged, paid) = coalition_domain::terms::money_leg(entry.points, price)?;
            let (fee_charged, _) = coalition_domain::terms::money_leg(entry.points, fee)?;
            Some((if issue { -charged } else { paid }, -fee_charged))
        });
    let money = coalition_domain::Asset::Currency(currency);
    let moved = |kind: &str| -> i64 {
        entry
            .postings
            .iter()
            .filter(|posting| {
                posting.asset == money
                    && posting.account.kind() == kind
                    && posting.account.owner() == merchant
            })
            .map(|posting| posting.amount)
            .sum()
    };
    let recorded = (moved("merchant_settlement"), moved("merchant_fees"));
    (legs != Some(recorded)).then(|| {
        format!(
            "{ENTRIES_FILE}: entry {sequence} moves {recorded:?} (settlement, fee), {TERMS_FILE}'s version {} of {merchant} gives {legs:?}",
            record.version
        )
    })
}

/// What is wrong with an earn whose points the earn rules gave, if anything: the version it
/// records must be the one in force at its acceptance, and its points must be its spend
/// times its merchant's base rate (the terms in force) times the multiplier of that version
/// for the member's tier, the merchant and the purchase time, rounded down
/// (`earn_rules::points_for_spend`).
fn rules_problem(
    entry: &Entry,
    terms: &TermsBook,
    rules: &BTreeMap<u32, coalition_domain::EarnRules>,
    tiers: &BTreeMap<String, Option<String>>,
) -> Option<String> {
    let version = entry.earn_rule_version?;
    let sequence = entry.sequence;
    let (Some(origin), Some(member)) = (&entry.origin, &entry.member_id) else {
        return Some(format!(
            "{ENTRIES_FILE}: entry {sequence} records earn rules but is no merchant's earn"
        ));
    };
    let in_force = rules
        .values()
        .rev()
        .find(|rules| rules.effective_from_ms <= entry.accepted_at_ms);
    let Some(rules_in_force) = in_force.filter(|rules| rules.version == version) else {
        return Some(format!(
            "{ENTRIES_FILE}: entry {sequence} records earn rules version {version}, {EARN_RULES_FILE} has {:?} in force",
            in_force.map(|rules| rules.version)
        ));
    };
    let Some(tier) = tiers.get(member.as_str()) else {
        return Some(format!(
            "{ENTRIES_FILE}: entry {sequence}: {MEMBER_TIERS_FILE} does not name member {member}"
        ));
    };
    let base = terms
        .in_force(origin.merchant_id.as_str(), entry.accepted_at_ms)
        .and_then(|record| record.earn_points_per_minor.as_deref())
        .and_then(|rate| Decimal::from_str_exact(rate).ok());
    let multiplier =
        rules_in_force.multiplier(tier.as_deref(), &origin.merchant_id, origin.occurred_at_ms);
    let expected = base.and_then(|base| {
        coalition_domain::earn_rules::points_for_spend(entry.spend_minor?, base, multiplier)
    });
    (expected != Some(entry.points)).then(|| {
        format!(
            "{ENTRIES_FILE}: entry {sequence} earned {} points, {EARN_RULES_FILE} version {version}, {MEMBER_TIERS_FILE} and {TERMS_FILE} give {expected:?}",
            entry.points
        )
    })
}

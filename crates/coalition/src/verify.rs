//! `coalition verify`: checks an export with nothing but the folder and the operator's public
//! key. Every problem found is reported; the export is sound only when there are none.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::Context;
use coalition_domain::CurrencyCode;
use coalition_domain::chain::{ChainHead, verify_chain};
use coalition_domain::journal::Entry;
use coalition_domain::settlement::{self, Attribution, Period};
use ed25519_dalek::{Signature, VerifyingKey};
use rust_decimal::Decimal;
use sha2::{Digest, Sha256};

use crate::export::{
    BalanceKey, EntryRecord, MANIFEST_FILE, MANIFEST_FORMAT, Manifest, SIGNATURE_FILE,
    SettlementRecord, TrialBalanceLine, signed_message, trial_balance, trial_balance_sums,
};

/// What verifying one folder found.
#[derive(Debug, Default)]
pub struct Verified {
    pub folder: PathBuf,
    pub manifest: Option<Manifest>,
    /// The trial balance's closing lines, to chain the next period's opening to.
    pub closing: Vec<TrialBalanceLine>,
    pub opening: Vec<TrialBalanceLine>,
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
    let Ok(text) = std::fs::read_to_string(folder.join(name)) else {
        problems.push(format!("{name}: missing or not UTF-8"));
        return Vec::new();
    };
    let mut rows = Vec::new();
    for (index, line) in text.lines().enumerate() {
        match serde_json::from_str(line) {
            Ok(row) => rows.push(row),
            Err(error) => problems.push(format!("{name} line {}: {error}", index + 1)),
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
    let problems = &mut verified.problems;
    let manifest_bytes = std::fs::read(folder.join(MANIFEST_FILE))
        .with_context(|| format!("{} has no {MANIFEST_FILE}", folder.display()))?;
    // The signature over the manifest's exact bytes.
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
                    if !keys
                        .iter()
                        .any(|key| key.verify_strict(&message, &signature).is_ok())
                    {
                        problems.push(format!(
                            "{MANIFEST_FILE}: the signature does not verify with the operator keys given"
                        ));
                    }
                }
            }
        }
    }
    let manifest: Manifest = match serde_json::from_slice(&manifest_bytes) {
        Ok(manifest) => manifest,
        Err(error) => {
            problems.push(format!("{MANIFEST_FILE}: {error}"));
            return Ok(verified);
        }
    };
    if manifest.format != MANIFEST_FORMAT {
        problems.push(format!(
            "{MANIFEST_FILE}: format {:?}, expected {MANIFEST_FORMAT:?}",
            manifest.format
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
    for extra in present {
        problems.push(format!("{extra}: not named in the manifest"));
    }

    // The hash chain across the period, and every entry balanced.
    let records: Vec<EntryRecord> = read_jsonl(folder, "entries.jsonl", problems);
    let mut entries: Vec<Entry> = Vec::with_capacity(records.len());
    for record in &records {
        match record.to_entry() {
            Ok(entry) => entries.push(entry),
            Err(error) => problems.push(format!("entries.jsonl: {error:#}")),
        }
    }
    let previous_hash: Option<[u8; 32]> = hex::decode(&manifest.previous_hash)
        .ok()
        .and_then(|bytes| bytes.try_into().ok());
    match previous_hash {
        None => problems.push(format!(
            "{MANIFEST_FILE}: previous_hash is not 32 bytes of hex"
        )),
        Some(previous_hash) => {
            let start = ChainHead {
                sequence: manifest.first_sequence.saturating_sub(1),
                hash: previous_hash,
            };
            match verify_chain(start, &entries) {
                Err(error) => problems.push(format!("entries.jsonl: hash chain broken: {error}")),
                Ok(head) => {
                    if hex::encode(head.hash) != manifest.head_hash {
                        problems.push(format!(
                            "entries.jsonl: the chain ends at {}, the manifest's head is {}",
                            hex::encode(head.hash),
                            manifest.head_hash
                        ));
                    }
                    if !entries.is_empty() && head.sequence != manifest.last_sequence {
                        problems.push(format!(
                            "entries.jsonl: the last entry is {}, the manifest says {}",
                            head.sequence, manifest.last_sequence
                        ));
                    }
                }
            }
        }
    }
    if entries.len() as u64 != manifest.entries {
        problems.push(format!(
            "entries.jsonl: {} entries, the manifest says {}",
            entries.len(),
            manifest.entries
        ));
    }
    for entry in &entries {
        if let Err(error) = entry.check_balanced() {
            problems.push(format!("entries.jsonl: {error}"));
        }
        if entry.accepted_at_ms < manifest.start_ms || entry.accepted_at_ms >= manifest.end_ms {
            problems.push(format!(
                "entries.jsonl: entry {} was accepted outside the period",
                entry.sequence
            ));
        }
    }
    // The postings files hold exactly the entries' postings.
    let postings: Vec<crate::export::PostingRecord> =
        read_jsonl(folder, "postings.jsonl", problems);
    let from_entries: Vec<&crate::export::PostingRecord> =
        records.iter().flat_map(|record| &record.postings).collect();
    if postings.iter().collect::<Vec<_>>() != from_entries {
        problems.push("postings.jsonl: not the postings of entries.jsonl".into());
    }

    // The trial balance follows from its opening and the postings, and sums to zero.
    let lines: Vec<TrialBalanceLine> = read_jsonl(folder, "trial_balance.jsonl", problems);
    let opening: BTreeMap<BalanceKey, i64> = lines
        .iter()
        .map(|line| (line.key(), line.opening))
        .collect();
    match trial_balance(&opening, &entries) {
        Err(error) => problems.push(format!("trial_balance.jsonl: {error}")),
        Ok(expected) => {
            if expected != lines {
                let differing = expected
                    .iter()
                    .zip(&lines)
                    .find(|(left, right)| left != right)
                    .map(|(left, _)| {
                        format!(
                            " (first at {}:{} {})",
                            left.account_kind, left.owner, left.asset
                        )
                    })
                    .unwrap_or_default();
                problems.push(format!(
                    "trial_balance.jsonl: does not follow from the opening balances and the postings{differing}"
                ));
            }
        }
    }
    for (asset, (opening_sum, closing_sum)) in trial_balance_sums(&lines) {
        if opening_sum != 0 || closing_sum != 0 {
            problems.push(format!(
                "trial_balance.jsonl: {asset} sums to {opening_sum} opening and {closing_sum} closing, not zero"
            ));
        }
    }

    // The settlement follows from the entries and the lot attribution.
    match std::fs::read(folder.join("settlement.json"))
        .ok()
        .and_then(|bytes| serde_json::from_slice::<SettlementRecord>(&bytes).ok())
    {
        None => problems.push("settlement.json: missing or unreadable".into()),
        Some(record) => {
            let attributions: Vec<Attribution> = read_jsonl(folder, "attributions.jsonl", problems);
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
            match (CurrencyCode::new(&manifest.currency), previous_hash) {
                (Some(currency), Some(previous_hash)) => {
                    match settlement::compute(
                        &period,
                        currency,
                        previous_hash,
                        &entries,
                        &attributions,
                        &shares,
                    ) {
                        Ok(recomputed) if recomputed == record.settlement => {}
                        Ok(_) => problems.push(
                            "settlement.json: does not follow from the entries and the attribution"
                                .into(),
                        ),
                        Err(error) => problems.push(format!(
                            "settlement.json: cannot be recomputed from the entries: {error}"
                        )),
                    }
                }
                _ => problems.push(format!(
                    "{MANIFEST_FILE}: currency {:?} is not a currency code",
                    manifest.currency
                )),
            }
            // Each statement ties to its merchant's line: its amounts and fees sum to the net
            // less the breakage share (breakage is not an entry of the merchant's).
            for net in &record.settlement.merchants {
                let name = format!(
                    "statements/{}.jsonl",
                    coalition_domain::ids::file_name_stem(&net.merchant_id)
                );
                let lines: Vec<settlement::StatementLine> = read_jsonl(folder, &name, problems);
                let sum: i64 = lines
                    .iter()
                    .map(|line| line.amount_minor + line.fee_minor)
                    .sum();
                if sum != net.net_minor - net.breakage_share_minor {
                    problems.push(format!(
                        "{name}: sums to {sum}, the settlement's net less breakage share is {}",
                        net.net_minor - net.breakage_share_minor
                    ));
                }
            }
            if record.settlement.period != manifest.period
                || record.settlement.head_hash != manifest.head_hash
            {
                problems.push("settlement.json: not the period the manifest names".into());
            }
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
    verified.manifest = Some(manifest);
    Ok(verified)
}

/// Problems joining `later` onto `earlier`: the second period must start where the first
/// ended, in the hash chain and in the balances.
pub fn chain_problems(earlier: &Verified, later: &Verified) -> Vec<String> {
    let (Some(first), Some(second)) = (&earlier.manifest, &later.manifest) else {
        return Vec::new();
    };
    let mut problems = Vec::new();
    if second.start_ms != first.end_ms {
        problems.push(format!(
            "period {} does not start where {} ends",
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

//! Inclusion proofs: one entry, or every entry of a merchant or a member in a period, each with
//! its audit path to the Merkle root that the period's signed manifest carries
//! (`coalition_domain::merkle`). A proof holds the manifest exactly as signed and its
//! signature, so `coalition verify-proof` needs nothing but the proof and the operator's
//! public key: not the export, not the database, not anyone else's entries.
//!
//! A proof shows that each entry it lists is in the signed period. A merchant's proof also
//! shows that it lists all of the merchant's entries: the manifest counts them per merchant.
//! A member's does not (the manifest does not count per member).

use std::path::{Path, PathBuf};

use anyhow::Context;
use coalition_domain::chain::entry_hash;
use coalition_domain::merkle::{self, Hash};
use coalition_domain::{AccountKey, MemberId, MerchantId, MerchantTransactionId};
use ed25519_dalek::{Signature, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::export::{
    ENTRIES_FILE, EntryRecord, MANIFEST_FILE, MANIFEST_FORMAT, Manifest, SIGNATURE_FILE,
    signed_message,
};

/// The proof document's format name.
pub const PROOF_FORMAT: &str = "coalition-proof/1";

/// What a proof is about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Subject {
    /// One merchant transaction: the entry it made.
    Transaction {
        merchant_id: String,
        transaction_id: String,
    },
    /// Every entry a merchant submitted or that posts to one of its accounts.
    Merchant { merchant_id: String },
    /// Every entry that names the member.
    Member { member_id: String },
}

impl Subject {
    /// Parses `MERCHANT/ID` (the transaction id may itself hold slashes).
    pub fn transaction(text: &str) -> anyhow::Result<Subject> {
        let (merchant, transaction) = text
            .split_once('/')
            .with_context(|| format!("expected MERCHANT/TRANSACTION_ID, got {text:?}"))?;
        Subject::checked(Subject::Transaction {
            merchant_id: merchant.to_owned(),
            transaction_id: transaction.to_owned(),
        })
    }

    /// The subject when each id it holds is a valid id.
    pub fn checked(subject: Subject) -> anyhow::Result<Subject> {
        match &subject {
            Subject::Transaction {
                merchant_id,
                transaction_id,
            } => {
                MerchantId::new(merchant_id.clone()).map_err(|error| anyhow::anyhow!("{error}"))?;
                MerchantTransactionId::new(transaction_id.clone())
                    .map_err(|error| anyhow::anyhow!("{error}"))?;
            }
            Subject::Merchant { merchant_id } => {
                MerchantId::new(merchant_id.clone()).map_err(|error| anyhow::anyhow!("{error}"))?;
            }
            Subject::Member { member_id } => {
                MemberId::new(member_id.clone()).map_err(|error| anyhow::anyhow!("{error}"))?;
            }
        }
        Ok(subject)
    }

    /// Whether the entry is one this subject's proof lists.
    pub fn concerns(&self, entry: &EntryRecord) -> bool {
        match self {
            Subject::Transaction {
                merchant_id,
                transaction_id,
            } => {
                entry.merchant_id.as_deref() == Some(merchant_id)
                    && entry.merchant_transaction_id.as_deref() == Some(transaction_id)
            }
            Subject::Merchant { merchant_id } => {
                merchants_concerned(entry).contains(merchant_id.as_str())
            }
            Subject::Member { member_id } => entry.member_id.as_deref() == Some(member_id),
        }
    }
}

/// The merchants an entry concerns: the one that submitted it and every merchant one of
/// whose accounts it posts to. The manifest counts each merchant's entries by this rule, so
/// that a merchant's proof can be shown to list all of them.
pub fn merchants_concerned(entry: &EntryRecord) -> std::collections::BTreeSet<&str> {
    entry
        .merchant_id
        .as_deref()
        .into_iter()
        .chain(entry.postings.iter().filter_map(|posting| {
            AccountKey::from_parts(&posting.account_kind, &posting.owner).and_then(|account| {
                account
                    .merchant()
                    .is_some()
                    .then_some(posting.owner.as_str())
            })
        }))
        .collect()
}

impl std::fmt::Display for Subject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Subject::Transaction {
                merchant_id,
                transaction_id,
            } => write!(f, "transaction {merchant_id}/{transaction_id}"),
            Subject::Merchant { merchant_id } => write!(f, "merchant {merchant_id}"),
            Subject::Member { member_id } => write!(f, "member {member_id}"),
        }
    }
}

/// One entry and its audit path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProvedEntry {
    /// The entry's place among the period's entries, from 0: its sequence less the
    /// manifest's `first_sequence`.
    pub leaf_index: u64,
    /// Every field the entry's hash covers, as the export's entries file holds it.
    pub entry: EntryRecord,
    /// The sibling hashes from the leaf up, hex.
    pub path: Vec<String>,
}

/// A proof document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proof {
    pub format: String,
    pub subject: Subject,
    /// `manifest.json` exactly as the operator signed it.
    pub manifest: String,
    /// `manifest.sig`: the operator's signature over it, hex.
    pub signature: String,
    pub entries: Vec<ProvedEntry>,
}

/// Why a proof cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum ProveError {
    #[error("no signed export in {} (export the period first)", folder.display())]
    NoExport { folder: PathBuf },
    #[error("no entry of period {period} concerns {subject}")]
    NothingFound { period: String, subject: String },
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

pub use crate::export::export_folder;

/// Makes the proof of `subject` from a signed export folder. Reads its entries once, a
/// line at a time, keeping 32 bytes per entry of the period (the tree's leaves) and the
/// entries the subject concerns.
pub fn prove(folder: &Path, subject: &Subject) -> Result<Proof, ProveError> {
    let manifest_path = folder.join(MANIFEST_FILE);
    if !manifest_path.exists() {
        return Err(ProveError::NoExport {
            folder: folder.to_owned(),
        });
    }
    let manifest_text = std::fs::read_to_string(&manifest_path)
        .with_context(|| format!("cannot read {} as UTF-8", manifest_path.display()))?;
    let signature = std::fs::read_to_string(folder.join(SIGNATURE_FILE))
        .with_context(|| format!("{} has no {SIGNATURE_FILE}", folder.display()))?
        .trim()
        .to_owned();
    let manifest: Manifest = serde_json::from_str(&manifest_text)
        .with_context(|| format!("{} is not a manifest", manifest_path.display()))?;
    if manifest.format != MANIFEST_FORMAT {
        return Err(anyhow::anyhow!(
            "{} is of format {:?}; proofs need {MANIFEST_FORMAT:?} (export the period again)",
            manifest_path.display(),
            manifest.format
        )
        .into());
    }
    let mut leaves: Vec<Hash> = Vec::with_capacity(manifest.entries as usize);
    let mut wanted: Vec<(usize, EntryRecord)> = Vec::new();
    for (index, line) in crate::export::read_lines(folder, ENTRIES_FILE)?.enumerate() {
        let line = line.with_context(|| format!("cannot read {ENTRIES_FILE}"))?;
        let record: EntryRecord = serde_json::from_str(&line)
            .with_context(|| format!("{ENTRIES_FILE} line {}", index + 1))?;
        let hash: Hash = hex::decode(&record.hash)
            .ok()
            .and_then(|bytes| bytes.try_into().ok())
            .with_context(|| format!("{ENTRIES_FILE} line {}: hash is not 32 bytes", index + 1))?;
        leaves.push(hash);
        if subject.concerns(&record) {
            wanted.push((index, record));
        }
    }
    // The folder's entries must be the ones signed, or every path would lead elsewhere.
    if hex::encode(merkle::root(&leaves)) != manifest.entries_root
        || leaves.len() as u64 != manifest.entries
    {
        return Err(anyhow::anyhow!(
            "{}: its entries are not the ones the manifest signs; verify the export",
            folder.display()
        )
        .into());
    }
    if wanted.is_empty() {
        return Err(ProveError::NothingFound {
            period: manifest.period.clone(),
            subject: subject.to_string(),
        });
    }
    let indices: Vec<usize> = wanted.iter().map(|(index, _)| *index).collect();
    let mut paths = merkle::audit_paths(&leaves, &indices);
    let entries = wanted
        .into_iter()
        .map(|(index, entry)| ProvedEntry {
            leaf_index: index as u64,
            entry,
            path: paths
                .remove(&index)
                .expect("a path for every index asked")
                .iter()
                .map(hex::encode)
                .collect(),
        })
        .collect();
    Ok(Proof {
        format: PROOF_FORMAT.to_owned(),
        subject: subject.clone(),
        manifest: manifest_text,
        signature,
        entries,
    })
}

/// What a proof that verifies says.
#[derive(Debug)]
pub struct ProofChecked {
    pub manifest: Manifest,
    pub entries: usize,
}

/// Checks a proof with nothing but the operator's public key: the manifest's signature, that
/// the manifest names that key, and for each entry that its fields give its hash and its
/// path leads from that hash to the manifest's root. Every problem found is listed.
pub fn verify_proof(proof: &Proof, key: &VerifyingKey) -> Result<ProofChecked, Vec<String>> {
    let mut problems = Vec::new();
    if proof.format != PROOF_FORMAT {
        problems.push(format!(
            "format {:?}, expected {PROOF_FORMAT:?}",
            proof.format
        ));
    }
    let signature = hex::decode(proof.signature.trim())
        .ok()
        .and_then(|bytes| <[u8; 64]>::try_from(bytes).ok())
        .map(|bytes| Signature::from_bytes(&bytes));
    match signature {
        None => problems.push("signature: not 64 bytes of hex".into()),
        Some(signature) => {
            if key
                .verify_strict(&signed_message(proof.manifest.as_bytes()), &signature)
                .is_err()
            {
                problems.push("manifest: the signature does not verify with the key given".into());
            }
        }
    }
    let manifest: Manifest = match serde_json::from_str(&proof.manifest) {
        Ok(manifest) => manifest,
        Err(error) => {
            problems.push(format!("manifest: {error}"));
            return Err(problems);
        }
    };
    if manifest.operator_public_key != hex::encode(key.as_bytes()) {
        problems.push(format!(
            "manifest: names the operator key {}, not the key given",
            manifest.operator_public_key
        ));
    }
    let root: Option<Hash> = hex::decode(&manifest.entries_root)
        .ok()
        .and_then(|bytes| bytes.try_into().ok());
    let Some(root) = root else {
        problems.push("manifest: entries_root is not 32 bytes of hex".into());
        return Err(problems);
    };
    if proof.entries.is_empty() {
        problems.push("the proof lists no entry".into());
    }
    if proof
        .entries
        .windows(2)
        .any(|pair| pair[0].leaf_index >= pair[1].leaf_index)
    {
        problems.push("the entries are not in order, or one is listed twice".into());
    }
    // A merchant's proof is complete when it lists as many entries as the manifest counts.
    if let Subject::Merchant { merchant_id } = &proof.subject {
        let counted = manifest
            .merchant_entries
            .get(merchant_id)
            .copied()
            .unwrap_or(0);
        if proof.entries.len() as u64 != counted {
            problems.push(format!(
                "lists {} of the {counted} entries of merchant {merchant_id} the manifest counts",
                proof.entries.len()
            ));
        }
    }
    for proved in &proof.entries {
        let sequence = proved.entry.sequence;
        if !proof.subject.concerns(&proved.entry) {
            problems.push(format!(
                "entry {sequence}: does not concern {}",
                proof.subject
            ));
        }
        if Some(proved.leaf_index) != sequence.checked_sub(manifest.first_sequence) {
            problems.push(format!(
                "entry {sequence}: at leaf {}, but the period starts at entry {}",
                proved.leaf_index, manifest.first_sequence
            ));
        }
        let entry = match proved.entry.to_entry() {
            Ok(entry) => entry,
            Err(error) => {
                problems.push(format!("{error:#}"));
                continue;
            }
        };
        let hash = entry_hash(&entry);
        if hash != entry.hash {
            problems.push(format!(
                "entry {sequence}: its fields hash to {}, not {}",
                hex::encode(hash),
                proved.entry.hash
            ));
            continue;
        }
        let path: Option<Vec<Hash>> = proved
            .path
            .iter()
            .map(|node| {
                hex::decode(node)
                    .ok()
                    .and_then(|bytes| bytes.try_into().ok())
            })
            .collect();
        let Some(path) = path else {
            problems.push(format!(
                "entry {sequence}: a path node is not 32 bytes of hex"
            ));
            continue;
        };
        if merkle::root_from_path(proved.leaf_index, manifest.entries, &hash, &path) != Some(root) {
            problems.push(format!(
                "entry {sequence}: its path does not lead to the root of period {}",
                manifest.period
            ));
        }
    }
    if problems.is_empty() {
        Ok(ProofChecked {
            entries: proof.entries.len(),
            manifest,
        })
    } else {
        Err(problems)
    }
}

/// Reads a proof document.
pub fn read_proof(path: &Path) -> anyhow::Result<Proof> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_slice(&bytes).with_context(|| format!("{} is not a proof", path.display()))
}

/// The server's maker of `ProveEntries` proofs: from the signed exports in its exports folder.
#[derive(Debug, Clone)]
pub struct ExportsProver {
    pub exports_dir: PathBuf,
    /// The server's cut-off, which reads period labels (so that one names a folder and
    /// nothing else).
    pub cutoff: coalition_domain::settlement::Cutoff,
}

impl coalition_grpc::Prover for ExportsProver {
    fn prove(
        &self,
        request: &coalition_grpc::pb::ProveEntriesRequest,
    ) -> Result<(Vec<u8>, u32), tonic::Status> {
        use coalition_grpc::pb::prove_entries_request::Subject as Wire;
        if let Err(error) = self.cutoff.period(&request.period) {
            return Err(tonic::Status::invalid_argument(format!(
                "invalid period: {error}"
            )));
        }
        let subject = match &request.subject {
            Some(Wire::Transaction(transaction)) => Subject::Transaction {
                merchant_id: transaction.merchant_id.clone(),
                transaction_id: transaction.transaction_id.clone(),
            },
            Some(Wire::MerchantId(merchant_id)) => Subject::Merchant {
                merchant_id: merchant_id.clone(),
            },
            Some(Wire::MemberId(member_id)) => Subject::Member {
                member_id: member_id.clone(),
            },
            None => {
                return Err(tonic::Status::invalid_argument(
                    "invalid subject: none given",
                ));
            }
        };
        let subject = Subject::checked(subject).map_err(|error| {
            tonic::Status::invalid_argument(format!("invalid subject: {error}"))
        })?;
        let folder = export_folder(&self.exports_dir, &request.period);
        let proof = prove(&folder, &subject).map_err(|error| match error {
            ProveError::NoExport { .. } => tonic::Status::not_found(format!(
                "period {} has no signed export in the server's exports folder; export it first",
                request.period
            )),
            ProveError::NothingFound { .. } => tonic::Status::not_found(error.to_string()),
            ProveError::Other(error) => tonic::Status::internal(format!("{error:#}")),
        })?;
        let entries = u32::try_from(proof.entries.len()).unwrap_or(u32::MAX);
        let json = serde_json::to_vec(&proof)
            .map_err(|error| tonic::Status::internal(error.to_string()))?;
        Ok((json, entries))
    }
}

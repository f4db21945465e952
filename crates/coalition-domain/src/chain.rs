//! The hash chain over committed entries. Each entry's hash covers the previous entry's hash
//! and a canonical, length-prefixed encoding of every field, so changing, removing or
//! reordering any committed entry changes every hash after it.
//!
//! Encoding (all integers big-endian): the domain tag `coalition.v1.entry\0`, the previous
//! hash (32 bytes), sequence (u64), kind code, accepted_at (i64), a presence byte and, when
//! present, merchant id, transaction id, store id, terminal id, occurred_at (i64) and body hash
//! (32 bytes); member id, points (i64), a presence byte and spend (i64), member points after
//! (i64), memo, a presence byte and the terms version (u32), a presence byte and the referred
//! sequence (u64), a presence byte and the expiry time (i64), a presence byte and the earn
//! rule version (u32), the posting count (u32) and per
//! posting the account code, asset code and amount (i64). Strings are a u32 byte length followed by UTF-8 bytes.

use sha2::{Digest, Sha256};

use crate::journal::Entry;

/// The hash before the first entry.
pub const GENESIS_HASH: [u8; 32] = [0; 32];

const ENTRY_HASH_DOMAIN: &[u8] = b"coalition.v1.entry\0";

/// The head of the chain: the last committed sequence and its hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChainHead {
    pub sequence: u64,
    pub hash: [u8; 32],
}

impl ChainHead {
    pub const GENESIS: ChainHead = ChainHead {
        sequence: 0,
        hash: GENESIS_HASH,
    };
}

fn put_text(hasher: &mut Sha256, text: &str) {
    let len = u32::try_from(text.len()).expect("texts in entries are bounded far below 4 GiB");
    hasher.update(len.to_be_bytes());
    hasher.update(text.as_bytes());
}

/// Computes the hash of an entry from its fields and its `previous_hash`; the entry's own
/// `hash` field is not read.
pub fn entry_hash(entry: &Entry) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(ENTRY_HASH_DOMAIN);
    hasher.update(entry.previous_hash);
    hasher.update(entry.sequence.to_be_bytes());
    put_text(&mut hasher, entry.kind.code());
    hasher.update(entry.accepted_at_ms.to_be_bytes());
    match &entry.origin {
        Some(origin) => {
            hasher.update([1]);
            put_text(&mut hasher, origin.merchant_id.as_str());
            put_text(&mut hasher, origin.merchant_transaction_id.as_str());
            put_text(&mut hasher, &origin.store_id);
            put_text(&mut hasher, &origin.terminal_id);
            hasher.update(origin.occurred_at_ms.to_be_bytes());
            hasher.update(origin.body_hash);
        }
        None => hasher.update([0]),
    }
    // An entry without a member hashes the empty text, which no member id can be.
    put_text(
        &mut hasher,
        entry
            .member_id
            .as_ref()
            .map_or("", |member| member.as_str()),
    );
    hasher.update(entry.points.to_be_bytes());
    match entry.spend_minor {
        Some(spend) => {
            hasher.update([1]);
            hasher.update(spend.to_be_bytes());
        }
        None => hasher.update([0]),
    }
    hasher.update(entry.member_points_after.to_be_bytes());
    put_text(&mut hasher, &entry.memo);
    match entry.terms_version {
        Some(version) => {
            hasher.update([1]);
            hasher.update(version.to_be_bytes());
        }
        None => hasher.update([0]),
    }
    match entry.refers_to {
        Some(sequence) => {
            hasher.update([1]);
            hasher.update(sequence.to_be_bytes());
        }
        None => hasher.update([0]),
    }
    match entry.expires_at_ms {
        Some(at_ms) => {
            hasher.update([1]);
            hasher.update(at_ms.to_be_bytes());
        }
        None => hasher.update([0]),
    }
    match entry.earn_rule_version {
        Some(version) => {
            hasher.update([1]);
            hasher.update(version.to_be_bytes());
        }
        None => hasher.update([0]),
    }
    let count = u32::try_from(entry.postings.len()).expect("an entry has few postings");
    hasher.update(count.to_be_bytes());
    for posting in &entry.postings {
        put_text(&mut hasher, &posting.account.to_string());
        put_text(&mut hasher, posting.asset.code());
        hasher.update(posting.amount.to_be_bytes());
    }
    hasher.finalize().into()
}

/// What is wrong with a chain of entries.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    #[error("sequence gap: expected entry {expected}, found {found}")]
    SequenceGap { expected: u64, found: u64 },
    #[error("entry {sequence} does not link to the previous entry's hash")]
    BrokenLink { sequence: u64 },
    #[error("entry {sequence} hash does not match its contents")]
    HashMismatch { sequence: u64 },
}

/// Walks entries in order from `start` and checks sequence, links and hashes; returns the
/// new head. Used by the check command and by recovery.
pub fn verify_chain<'a>(
    start: ChainHead,
    entries: impl IntoIterator<Item = &'a Entry>,
) -> Result<ChainHead, ChainError> {
    let mut head = start;
    for entry in entries {
        let expected = head.sequence + 1;
        if entry.sequence != expected {
            return Err(ChainError::SequenceGap {
                expected,
                found: entry.sequence,
            });
        }
        if entry.previous_hash != head.hash {
            return Err(ChainError::BrokenLink {
                sequence: entry.sequence,
            });
        }
        if entry_hash(entry) != entry.hash {
            return Err(ChainError::HashMismatch {
                sequence: entry.sequence,
            });
        }
        head = ChainHead {
            sequence: entry.sequence,
            hash: entry.hash,
        };
    }
    Ok(head)
}

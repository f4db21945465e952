//! Journal entries, postings and lots: the append-only record of every business transaction.

use crate::account::{AccountKey, Asset};
use crate::ids::{MemberId, MerchantId, MerchantTransactionId};

/// What business transaction an entry books.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EntryKind {
    /// A merchant awarded points to a member.
    Earn,
    /// A member redeemed points at a merchant.
    Burn,
    /// The operator merged one member id into another: the wallet and its lots moved.
    MemberMerge,
    /// A merchant took back points of an earlier earn (a refund), fully or in part.
    EarnReversal,
    /// A merchant gave back points of an earlier burn or capture (a cancelled ticket).
    BurnReversal,
    /// A merchant reserved points (a parking gate at entry); they leave the wallet for the
    /// member's held account.
    Hold,
    /// A merchant redeemed part or all of a hold at the hold's prices; the rest went back.
    Capture,
    /// A merchant released a hold; every held point went back to the wallet.
    Void,
    /// The operator released a hold that was neither captured nor voided in time.
    HoldExpiry,
    /// Money a merchant paid in (prepaid funding): no member, no points.
    Funding,
    /// A member converted a merchant's legacy units into alliance points issued by it.
    ExchangeIn,
    /// A member converted alliance points into a merchant's legacy units.
    ExchangeOut,
    /// The operator booked a member's expired lots to breakage, attributed to their issuers.
    Expiry,
    /// The closing entry of a finalised settlement period: each merchant's net for the period
    /// moves from its settlement and fee accounts (and its share of breakage) to its payable.
    Settlement,
    /// Money the operator paid a merchant against what finalised periods left payable to it.
    Payout,
}

impl EntryKind {
    pub fn code(self) -> &'static str {
        match self {
            EntryKind::Earn => "earn",
            EntryKind::Burn => "burn",
            EntryKind::MemberMerge => "member_merge",
            EntryKind::EarnReversal => "earn_reversal",
            EntryKind::BurnReversal => "burn_reversal",
            EntryKind::Hold => "hold",
            EntryKind::Capture => "capture",
            EntryKind::Void => "void",
            EntryKind::HoldExpiry => "hold_expiry",
            EntryKind::Funding => "funding",
            EntryKind::ExchangeIn => "exchange_in",
            EntryKind::ExchangeOut => "exchange_out",
            EntryKind::Expiry => "expiry",
            EntryKind::Settlement => "settlement",
            EntryKind::Payout => "payout",
        }
    }

    pub fn from_code(code: &str) -> Option<Self> {
        match code {
            "earn" => Some(EntryKind::Earn),
            "burn" => Some(EntryKind::Burn),
            "member_merge" => Some(EntryKind::MemberMerge),
            "earn_reversal" => Some(EntryKind::EarnReversal),
            "burn_reversal" => Some(EntryKind::BurnReversal),
            "hold" => Some(EntryKind::Hold),
            "capture" => Some(EntryKind::Capture),
            "void" => Some(EntryKind::Void),
            "hold_expiry" => Some(EntryKind::HoldExpiry),
            "funding" => Some(EntryKind::Funding),
            "exchange_in" => Some(EntryKind::ExchangeIn),
            "exchange_out" => Some(EntryKind::ExchangeOut),
            "expiry" => Some(EntryKind::Expiry),
            "settlement" => Some(EntryKind::Settlement),
            "payout" => Some(EntryKind::Payout),
            _ => None,
        }
    }
}

/// One leg of an entry: a signed amount of one asset added to one account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Posting {
    pub account: AccountKey,
    pub asset: Asset,
    pub amount: i64,
}

/// Where a merchant-submitted entry came from. Operator entries (a member merge) have none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MerchantOrigin {
    pub merchant_id: MerchantId,
    pub merchant_transaction_id: MerchantTransactionId,
    pub store_id: String,
    pub terminal_id: String,
    pub occurred_at_ms: i64,
    /// SHA-256 of the signed body bytes: what an idempotent retry is compared against.
    pub body_hash: [u8; 32],
}

/// One committed journal entry. Immutable once committed: a mistake is corrected by a new entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Gap-free, starting at 1.
    pub sequence: u64,
    pub kind: EntryKind,
    /// The server's acceptance time; settlement periods are cut by it.
    pub accepted_at_ms: i64,
    pub origin: Option<MerchantOrigin>,
    /// The member whose wallet the entry moves, after alias resolution; none for money-only
    /// entries (funding).
    pub member_id: Option<MemberId>,
    pub points: i64,
    /// The purchase amount the earn was for, in minor units of the settlement currency.
    pub spend_minor: Option<i64>,
    /// The member's wallet balance after this entry.
    pub member_points_after: i64,
    /// A note for operator entries; empty for merchant entries.
    pub memo: String,
    /// The version of the merchant's terms whose prices made the money legs. A reversal or a
    /// capture carries the version of the entry it refers to: its prices were locked there.
    pub terms_version: Option<u32>,
    /// The sequence of the entry this one refers to: the original of a reversal, the hold of
    /// a capture, a void or a hold expiry.
    pub refers_to: Option<u64>,
    /// When what this entry creates runs out: the lot of an earn, or a hold.
    pub expires_at_ms: Option<i64>,
    /// The version of the alliance's earn rules that turned an earn's spend into points.
    pub earn_rule_version: Option<u32>,
    pub postings: Vec<Posting>,
    pub previous_hash: [u8; 32],
    pub hash: [u8; 32],
}

/// Why an entry is not balanced.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BalanceError {
    #[error("entry {sequence} has {count} postings; an entry needs at least two")]
    TooFewPostings { sequence: u64, count: usize },
    #[error(
        "entry {sequence} names member {member} but posts to neither its wallet nor its held account"
    )]
    MemberNotPosted { sequence: u64, member: String },
    #[error("entry {sequence} does not balance in {asset}: postings sum to {sum}")]
    Unbalanced {
        sequence: u64,
        asset: String,
        sum: i128,
    },
}

impl Entry {
    /// Checks the double-entry invariant: at least two postings, and for each asset the
    /// postings sum to exactly zero. Called when an entry is made and when it is read back.
    ///
    /// Also: an entry that names a member posts to that member's wallet or held account. A
    /// member's history is read through those accounts' postings (no index of entries by
    /// member is kept), so an entry that broke this would be missing from it.
    pub fn check_balanced(&self) -> Result<(), BalanceError> {
        check_postings_balance(self.sequence, &self.postings)?;
        if let Some(member) = &self.member_id {
            let posts_to_member = self.postings.iter().any(|posting| {
                matches!(&posting.account,
                    AccountKey::MemberWallet(owner) | AccountKey::MemberHeld(owner)
                        if owner == member)
            });
            if !posts_to_member {
                return Err(BalanceError::MemberNotPosted {
                    sequence: self.sequence,
                    member: member.to_string(),
                });
            }
        }
        Ok(())
    }

    pub fn merchant_id(&self) -> Option<&MerchantId> {
        self.origin.as_ref().map(|origin| &origin.merchant_id)
    }
}

/// The double-entry check on a list of postings, summing in i128 so that no sum can overflow.
pub fn check_postings_balance(sequence: u64, postings: &[Posting]) -> Result<(), BalanceError> {
    if postings.len() < 2 {
        return Err(BalanceError::TooFewPostings {
            sequence,
            count: postings.len(),
        });
    }
    let mut sums: Vec<(Asset, i128)> = Vec::with_capacity(1);
    for posting in postings {
        match sums.iter_mut().find(|(asset, _)| *asset == posting.asset) {
            Some((_, sum)) => *sum += i128::from(posting.amount),
            None => sums.push((posting.asset, i128::from(posting.amount))),
        }
    }
    for (asset, sum) in sums {
        if sum != 0 {
            return Err(BalanceError::Unbalanced {
                sequence,
                asset: asset.code().to_owned(),
                sum,
            });
        }
    }
    Ok(())
}

/// A lot is identified by the entry that created it and its index within that entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LotId {
    pub entry_sequence: u64,
    pub index: u32,
}

/// A lot as created: the points one earn put into one wallet, and who issued them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LotRecord {
    pub lot_id: LotId,
    pub member_id: MemberId,
    pub issuer: MerchantId,
    pub points: i64,
    pub earned_at_ms: i64,
    /// When the lot's remaining points expire; never when `None`.
    pub expires_at_ms: Option<i64>,
}

/// Points taken out of a lot by an entry (a burn, or a merge moving the lot).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LotConsumption {
    pub entry_sequence: u64,
    pub lot_id: LotId,
    pub points: i64,
    /// The points repaid the member's debt as they came into the wallet (new points, or a
    /// hold's released rest) instead of being taken by the entry itself. Stored apart: a
    /// partial capture may both take from a lot and repay debt from the same lot, and lot
    /// attribution (whose points a redemption took) must see only what was taken.
    pub repaid: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn posting(amount: i64) -> Posting {
        Posting {
            account: AccountKey::MemberWallet(MemberId::new("m").unwrap()),
            asset: Asset::Points,
            amount,
        }
    }

    #[test]
    fn balance_check_boundaries() {
        assert_eq!(
            check_postings_balance(1, &[posting(5), posting(-5)]),
            Ok(())
        );
        assert_eq!(
            check_postings_balance(1, &[posting(5)]),
            Err(BalanceError::TooFewPostings {
                sequence: 1,
                count: 1
            })
        );
        assert_eq!(
            check_postings_balance(2, &[posting(5), posting(-4)]),
            Err(BalanceError::Unbalanced {
                sequence: 2,
                asset: "PTS".into(),
                sum: 1
            })
        );
        // Sums are taken in i128, so extreme amounts cannot wrap into a false balance.
        assert!(
            check_postings_balance(3, &[posting(i64::MAX), posting(i64::MAX), posting(2)]).is_err()
        );
    }

    fn entry_of(member: Option<&str>, postings: Vec<Posting>) -> Entry {
        Entry {
            sequence: 7,
            kind: EntryKind::Earn,
            accepted_at_ms: 0,
            origin: None,
            member_id: member.map(|member| MemberId::new(member).unwrap()),
            points: 5,
            spend_minor: None,
            member_points_after: 5,
            memo: String::new(),
            terms_version: None,
            refers_to: None,
            expires_at_ms: None,
            earn_rule_version: None,
            postings,
            previous_hash: [0; 32],
            hash: [0; 32],
        }
    }

    #[test]
    fn an_entry_naming_a_member_posts_to_one_of_its_accounts() {
        let issued = |amount| Posting {
            account: AccountKey::MerchantIssued(MerchantId::new("tenant-1").unwrap()),
            asset: Asset::Points,
            amount,
        };
        let held = |member: &str, amount| Posting {
            account: AccountKey::MemberHeld(MemberId::new(member).unwrap()),
            asset: Asset::Points,
            amount,
        };
        // The wallet or the held account of the member named: sound.
        assert_eq!(
            entry_of(Some("m"), vec![issued(-5), posting(5)]).check_balanced(),
            Ok(())
        );
        assert_eq!(
            entry_of(Some("m"), vec![posting(-5), held("m", 5)]).check_balanced(),
            Ok(())
        );
        // No member named: nothing to post to.
        assert_eq!(
            entry_of(None, vec![issued(-5), issued(5)]).check_balanced(),
            Ok(())
        );
        // Balanced, but the member's history would not show it.
        let unposted = BalanceError::MemberNotPosted {
            sequence: 7,
            member: "m".into(),
        };
        assert_eq!(
            entry_of(Some("m"), vec![issued(-5), issued(5)]).check_balanced(),
            Err(unposted.clone())
        );
        assert_eq!(
            entry_of(Some("m"), vec![held("other", -5), held("other", 5)]).check_balanced(),
            Err(unposted)
        );
    }
}

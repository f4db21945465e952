//! Accounts and assets. Every account is named by a canonical code that the hash chain and
//! the exports use; the numeric id is only a compact handle for storage.

use std::fmt;

use crate::ids::{MemberId, MerchantId};

/// A compact account handle, assigned by the ledger in order of first use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AccountId(pub u64);

/// An asset kept on the books. Alliance points are the only asset of the clearing core;
/// settlement currencies and merchants' own points units join it with valuation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Asset {
    /// Alliance points, integer, no fractions.
    Points,
}

impl Asset {
    pub fn code(self) -> &'static str {
        match self {
            Asset::Points => "PTS",
        }
    }

    pub fn from_code(code: &str) -> Option<Self> {
        match code {
            "PTS" => Some(Asset::Points),
            _ => None,
        }
    }
}

/// What an account is. The sign convention is the same for all: a posting adds its signed
/// amount to the balance. A member wallet is positive when the member holds points; a
/// merchant's issued account is negative by the points it put into circulation; a merchant's
/// redeemed account is positive by the points it took back. All balances of an asset sum to 0.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AccountKey {
    MemberWallet(MemberId),
    MerchantIssued(MerchantId),
    MerchantRedeemed(MerchantId),
}

impl AccountKey {
    /// The account kind as stored and exported.
    pub fn kind(&self) -> &'static str {
        match self {
            AccountKey::MemberWallet(_) => "member_wallet",
            AccountKey::MerchantIssued(_) => "merchant_issued",
            AccountKey::MerchantRedeemed(_) => "merchant_redeemed",
        }
    }

    /// Who the account belongs to.
    pub fn owner(&self) -> &str {
        match self {
            AccountKey::MemberWallet(member) => member.as_str(),
            AccountKey::MerchantIssued(merchant) | AccountKey::MerchantRedeemed(merchant) => {
                merchant.as_str()
            }
        }
    }

    /// Rebuilds a key from its stored kind and owner.
    pub fn from_parts(kind: &str, owner: &str) -> Option<Self> {
        match kind {
            "member_wallet" => MemberId::new(owner).ok().map(AccountKey::MemberWallet),
            "merchant_issued" => MerchantId::new(owner).ok().map(AccountKey::MerchantIssued),
            "merchant_redeemed" => MerchantId::new(owner)
                .ok()
                .map(AccountKey::MerchantRedeemed),
            _ => None,
        }
    }
}

impl fmt::Display for AccountKey {
    /// The canonical code, for example `member_wallet:m-1001`.
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{}:{}", self.kind(), self.owner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn account_keys_round_trip_through_their_parts() {
        let keys = [
            AccountKey::MemberWallet(MemberId::new("m-1").unwrap()),
            AccountKey::MerchantIssued(MerchantId::new("tenant-1").unwrap()),
            AccountKey::MerchantRedeemed(MerchantId::new("cinema").unwrap()),
        ];
        for key in keys {
            assert_eq!(
                AccountKey::from_parts(key.kind(), key.owner()),
                Some(key.clone())
            );
        }
        assert_eq!(AccountKey::from_parts("nonsense", "x"), None);
        assert_eq!(Asset::from_code(Asset::Points.code()), Some(Asset::Points));
    }
}

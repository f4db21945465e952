//! Accounts and assets. Every account is named by a canonical code that the hash chain and
//! the exports use; the numeric id is only a compact handle for storage.

use std::fmt;

use crate::ids::{MemberId, MerchantId};

/// A compact account handle, assigned by the ledger in order of first use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AccountId(pub u64);

/// An ISO 4217 currency code: three ASCII capital letters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CurrencyCode([u8; 3]);

impl CurrencyCode {
    pub fn new(code: &str) -> Option<Self> {
        let bytes: [u8; 3] = code.as_bytes().try_into().ok()?;
        bytes
            .iter()
            .all(u8::is_ascii_uppercase)
            .then_some(CurrencyCode(bytes))
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).expect("checked ASCII at construction")
    }
}

/// The code of a merchant's own legacy points unit: 4 to 12 of `A-Z 0-9` (so that it is
/// never a currency code or `PTS`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UnitCode {
    bytes: [u8; 12],
    len: u8,
}

impl UnitCode {
    pub fn new(code: &str) -> Option<Self> {
        let valid = (4..=12).contains(&code.len())
            && code
                .bytes()
                .all(|byte| byte.is_ascii_uppercase() || byte.is_ascii_digit());
        if !valid {
            return None;
        }
        let mut bytes = [0; 12];
        bytes[..code.len()].copy_from_slice(code.as_bytes());
        Some(UnitCode {
            bytes,
            len: code.len() as u8,
        })
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.bytes[..usize::from(self.len)])
            .expect("checked ASCII at construction")
    }
}

/// An asset kept on the books: alliance points, the settlement currency in integer minor
/// units (fen for CNY), and merchants' own legacy points units. Amounts of every asset are
/// integers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Asset {
    /// Alliance points, integer, no fractions.
    Points,
    /// Money in minor units of the currency.
    Currency(CurrencyCode),
    /// A merchant's own legacy points unit, exchanged into alliance points and back.
    Legacy(UnitCode),
}

impl Asset {
    pub fn code(&self) -> &str {
        match self {
            Asset::Points => "PTS",
            Asset::Currency(code) => code.as_str(),
            Asset::Legacy(unit) => unit.as_str(),
        }
    }

    pub fn from_code(code: &str) -> Option<Self> {
        match code {
            "PTS" => Some(Asset::Points),
            other if other.len() == 3 => CurrencyCode::new(other).map(Asset::Currency),
            other => UnitCode::new(other).map(Asset::Legacy),
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
    /// Points a merchant holds for the member until it captures or voids the hold.
    MemberHeld(MemberId),
    MerchantIssued(MerchantId),
    MerchantRedeemed(MerchantId),
    /// Money between the merchant and the operator: negative when the merchant owes the
    /// operator (for points it issued), positive when the operator owes the merchant (for
    /// points redeemed there).
    MerchantSettlement(MerchantId),
    /// Clearing fees charged to the merchant (negative): kept apart from the price legs so that
    /// statements and the netting show them; settled with the settlement account.
    MerchantFees(MerchantId),
    /// What the settlement of finalised periods left to pay the merchant (positive) or to
    /// collect from it (negative); the treasury's payments clear it.
    MerchantPayable(MerchantId),
    /// Points of the merchant's issue that expired unspent, and the float money that was held
    /// against them: breakage attributed to the issuer.
    MerchantBreakage(MerchantId),
    /// The operator's money held against outstanding points.
    OperatorFloat,
    /// Sub-minor-unit remainders of money legs (see `terms::money_leg`).
    OperatorRounding,
    /// Clearing fees the operator charged merchants.
    OperatorFees,
    /// Money that crossed the ledger's edge: what merchants paid in (funding) or were paid out.
    OperatorCash,
    /// The operator's trading account for exchanges between a legacy unit and alliance
    /// points: it holds the legacy units taken in and the points given out (and the reverse),
    /// so each asset balances on its own.
    OperatorTrading(UnitCode),
}

/// The owner name of the operator's own accounts.
pub const OPERATOR: &str = "operator";

impl AccountKey {
    /// The account kind as stored and exported.
    pub fn kind(&self) -> &'static str {
        match self {
            AccountKey::MemberWallet(_) => "member_wallet",
            AccountKey::MemberHeld(_) => "member_held",
            AccountKey::MerchantIssued(_) => "merchant_issued",
            AccountKey::MerchantRedeemed(_) => "merchant_redeemed",
            AccountKey::MerchantSettlement(_) => "merchant_settlement",
            AccountKey::MerchantFees(_) => "merchant_fees",
            AccountKey::MerchantPayable(_) => "merchant_payable",
            AccountKey::MerchantBreakage(_) => "merchant_breakage",
            AccountKey::OperatorFloat => "operator_float",
            AccountKey::OperatorRounding => "operator_rounding",
            AccountKey::OperatorFees => "operator_fees",
            AccountKey::OperatorCash => "operator_cash",
            AccountKey::OperatorTrading(_) => "operator_trading",
        }
    }

    /// Every kind of account but a member's: the accounts of merchants and the operator,
    /// which are few and stay in the writer's memory. Listed, rather than "not a member's",
    /// so the database can find them through its index on kind.
    pub const RESIDENT_KINDS: [&'static str; 11] = [
        "merchant_issued",
        "merchant_redeemed",
        "merchant_settlement",
        "merchant_fees",
        "merchant_payable",
        "merchant_breakage",
        "operator_float",
        "operator_rounding",
        "operator_fees",
        "operator_cash",
        "operator_trading",
    ];

    /// The member whose account this is, for a member's wallet or held points.
    pub fn member(&self) -> Option<&MemberId> {
        match self {
            AccountKey::MemberWallet(member) | AccountKey::MemberHeld(member) => Some(member),
            _ => None,
        }
    }

    /// Who the account belongs to.
    pub fn owner(&self) -> &str {
        match self {
            AccountKey::MemberWallet(member) | AccountKey::MemberHeld(member) => member.as_str(),
            AccountKey::MerchantIssued(merchant)
            | AccountKey::MerchantRedeemed(merchant)
            | AccountKey::MerchantSettlement(merchant)
            | AccountKey::MerchantFees(merchant)
            | AccountKey::MerchantPayable(merchant)
            | AccountKey::MerchantBreakage(merchant) => merchant.as_str(),
            AccountKey::OperatorFloat
            | AccountKey::OperatorRounding
            | AccountKey::OperatorFees
            | AccountKey::OperatorCash => OPERATOR,
            AccountKey::OperatorTrading(unit) => unit.as_str(),
        }
    }

    /// The merchant whose account this is, for merchants' accounts.
    pub fn merchant(&self) -> Option<&MerchantId> {
        match self {
            AccountKey::MerchantIssued(merchant)
            | AccountKey::MerchantRedeemed(merchant)
            | AccountKey::MerchantSettlement(merchant)
            | AccountKey::MerchantFees(merchant)
            | AccountKey::MerchantPayable(merchant)
            | AccountKey::MerchantBreakage(merchant) => Some(merchant),
            AccountKey::MemberWallet(_)
            | AccountKey::MemberHeld(_)
            | AccountKey::OperatorFloat
            | AccountKey::OperatorRounding
            | AccountKey::OperatorFees
            | AccountKey::OperatorCash
            | AccountKey::OperatorTrading(_) => None,
        }
    }

    /// Rebuilds a key from its stored kind and owner.
    pub fn from_parts(kind: &str, owner: &str) -> Option<Self> {
        match kind {
            "member_wallet" => MemberId::new(owner).ok().map(AccountKey::MemberWallet),
            "member_held" => MemberId::new(owner).ok().map(AccountKey::MemberHeld),
            "merchant_issued" => MerchantId::new(owner).ok().map(AccountKey::MerchantIssued),
            "merchant_redeemed" => MerchantId::new(owner)
                .ok()
                .map(AccountKey::MerchantRedeemed),
            "merchant_settlement" => MerchantId::new(owner)
                .ok()
                .map(AccountKey::MerchantSettlement),
            "merchant_fees" => MerchantId::new(owner).ok().map(AccountKey::MerchantFees),
            "merchant_payable" => MerchantId::new(owner).ok().map(AccountKey::MerchantPayable),
            "merchant_breakage" => MerchantId::new(owner)
                .ok()
                .map(AccountKey::MerchantBreakage),
            "operator_float" if owner == OPERATOR => Some(AccountKey::OperatorFloat),
            "operator_rounding" if owner == OPERATOR => Some(AccountKey::OperatorRounding),
            "operator_fees" if owner == OPERATOR => Some(AccountKey::OperatorFees),
            "operator_cash" if owner == OPERATOR => Some(AccountKey::OperatorCash),
            "operator_trading" => UnitCode::new(owner).map(AccountKey::OperatorTrading),
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
            AccountKey::MemberHeld(MemberId::new("m-1").unwrap()),
            AccountKey::MerchantBreakage(MerchantId::new("tenant-1").unwrap()),
            AccountKey::MerchantIssued(MerchantId::new("tenant-1").unwrap()),
            AccountKey::MerchantRedeemed(MerchantId::new("cinema").unwrap()),
            AccountKey::MerchantSettlement(MerchantId::new("cinema").unwrap()),
            AccountKey::MerchantFees(MerchantId::new("cinema").unwrap()),
            AccountKey::MerchantPayable(MerchantId::new("cinema").unwrap()),
            AccountKey::OperatorFloat,
            AccountKey::OperatorRounding,
            AccountKey::OperatorFees,
            AccountKey::OperatorCash,
            AccountKey::OperatorTrading(UnitCode::new("MALLSTAR").unwrap()),
        ];
        for key in keys {
            assert_eq!(
                AccountKey::from_parts(key.kind(), key.owner()),
                Some(key.clone())
            );
            assert_eq!(
                AccountKey::RESIDENT_KINDS.contains(&key.kind()),
                key.member().is_none(),
                "{key}"
            );
        }
        assert_eq!(AccountKey::from_parts("nonsense", "x"), None);
        assert_eq!(Asset::from_code(Asset::Points.code()), Some(Asset::Points));
        let cny = Asset::from_code("CNY").unwrap();
        assert_eq!(cny.code(), "CNY");
        assert_eq!(Asset::from_code("cny"), None);
        assert_eq!(
            Asset::from_code("CNYX"),
            Some(Asset::Legacy(UnitCode::new("CNYX").unwrap()))
        );
        assert_eq!(Asset::from_code("MALLSTAR").unwrap().code(), "MALLSTAR");
        assert_eq!(Asset::from_code("mallstar"), None);
        assert_eq!(Asset::from_code("AVERYLONGUNIT"), None);
    }
}

//! Merchants' commercial terms: what a merchant pays the operator per point it issues and
//! what the operator pays it per point redeemed there. Terms are versioned and only ever
//! added; the version in force at acceptance time prices an entry and is recorded on it, so
//! a later change never alters a booked entry.

use rust_decimal::Decimal;
use rust_decimal::prelude::ToPrimitive;

use crate::account::UnitCode;
use crate::ids::MerchantId;

/// The most decimal places a price may have.
pub const PRICE_SCALE_MAX: u32 = 6;

/// The highest price per point, in minor units: a guard against a misplaced decimal point.
pub const PRICE_MINOR_PER_POINT_MAX: i64 = 1_000;

/// One version of a merchant's terms. Prices are in minor units of the settlement currency
/// per point (1.05 means 1.05 fen per point for CNY).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MerchantTerms {
    pub merchant_id: MerchantId,
    /// 1, 2, ... per merchant.
    pub version: u32,
    /// In force for entries accepted at or after this time, until the next version.
    pub effective_from_ms: i64,
    /// What the merchant pays per point it issues.
    pub issue_price_minor_per_point: Decimal,
    /// What the merchant is paid per point redeemed there.
    pub redeem_price_minor_per_point: Decimal,
    /// The operator's clearing fee per point the merchant issues or redeems, charged to the
    /// merchant; zero for none.
    pub fee_minor_per_point: Decimal,
    /// Whether the merchant may reverse transactions other merchants made (a purchase
    /// returned at another store). The money is reversed with the original merchant.
    pub cross_merchant_reversals: bool,
    /// How far the merchant's net money position with the operator may go below zero before
    /// its earns are refused, in minor units: `None` for no limit, `Some(0)` for a prepaid
    /// merchant whose earns draw down what it paid in, `Some(limit)` for a post-paid one.
    pub credit_limit_minor: Option<i64>,
    /// The merchant's base earn rate: points per minor unit of spend, for earns sent with a
    /// spend amount and no points (see `earn_rules`). `None`: earns must name their points.
    pub earn_points_per_minor: Option<Decimal>,
    /// The merchant's own legacy points unit and its exchange rate in alliance points per
    /// legacy unit; both or neither.
    pub exchange: Option<(UnitCode, Decimal)>,
    /// The part of the breakage of the merchant's expired points that settlement pays back to
    /// it, from 0 (the operator keeps all) to 1; see `settlement`.
    pub breakage_share: Decimal,
}

/// What one version of terms sets: prices in minor units per point, and permissions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prices {
    /// What the merchant pays per point it issues.
    pub issue_price_minor_per_point: Decimal,
    /// What the merchant is paid per point redeemed there.
    pub redeem_price_minor_per_point: Decimal,
    /// The clearing fee per point issued or redeemed, charged to the merchant.
    pub fee_minor_per_point: Decimal,
    /// Whether the merchant may reverse other merchants' transactions.
    pub cross_merchant_reversals: bool,
    /// See `MerchantTerms::credit_limit_minor`.
    pub credit_limit_minor: Option<i64>,
    /// See `MerchantTerms::earn_points_per_minor`.
    pub earn_points_per_minor: Option<Decimal>,
    /// See `MerchantTerms::exchange`.
    pub exchange: Option<(UnitCode, Decimal)>,
    /// See `MerchantTerms::breakage_share`.
    pub breakage_share: Decimal,
}

/// Why terms were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TermsError {
    #[error(
        "{field} must be from 0 to {PRICE_MINOR_PER_POINT_MAX} minor units per point with at most {PRICE_SCALE_MAX} decimals, got {value}"
    )]
    PriceInvalid { field: &'static str, value: Decimal },
    #[error(
        "{field} must be above 0 and at most {} with at most {PRICE_SCALE_MAX} decimals, got {value}",
        crate::earn_rules::MULTIPLIER_MAX
    )]
    FactorInvalid { field: &'static str, value: Decimal },
    #[error("campaign {name:?}: {problem}")]
    CampaignInvalid { name: String, problem: String },
    #[error(
        "earn rules effective from {effective_from_ms} ms must start after version {version}, effective from {previous_ms} ms"
    )]
    RulesNotAfterPrevious {
        effective_from_ms: i64,
        version: u32,
        previous_ms: i64,
    },
    #[error("legacy unit {unit} already belongs to merchant {owner}")]
    UnitTaken { unit: String, owner: MerchantId },
    #[error(
        "the breakage share must be from 0 to 1 with at most {PRICE_SCALE_MAX} decimals, got {0}"
    )]
    ShareInvalid(Decimal),
    #[error("the credit limit cannot be negative, got {0} minor units")]
    CreditLimitInvalid(i64),
    #[error(
        "terms effective from {effective_from_ms} ms would reprice entries already accepted up to {last_accepted_at_ms} ms"
    )]
    EffectiveInThePast {
        effective_from_ms: i64,
        last_accepted_at_ms: i64,
    },
    #[error(
        "terms of merchant {merchant_id} effective from {effective_from_ms} ms must start after version {version}, effective from {previous_ms} ms"
    )]
    NotAfterPrevious {
        merchant_id: MerchantId,
        effective_from_ms: i64,
        version: u32,
        previous_ms: i64,
    },
}

/// Checks a price's range and precision.
pub fn check_price(field: &'static str, value: Decimal) -> Result<(), TermsError> {
    if value.is_sign_negative()
        || value > Decimal::from(PRICE_MINOR_PER_POINT_MAX)
        || value.scale() > PRICE_SCALE_MAX
    {
        return Err(TermsError::PriceInvalid { field, value });
    }
    Ok(())
}

/// The money leg of `points` at `price_minor_per_point`: `(charged, paid)` in minor units.
///
/// The rounding rule: the exact amount `points × price` is rarely a whole number of minor
/// units. The party that pays is charged the amount rounded up, the party that is paid
/// receives it rounded down, and the difference (0 or 1 minor unit) goes to the operator's
/// rounding account. Every entry therefore balances in whole minor units, nobody is paid
/// more than the exact value, and the remainders are on the books rather than lost.
pub fn money_leg(points: i64, price_minor_per_point: Decimal) -> Option<(i64, i64)> {
    let exact = Decimal::from(points).checked_mul(price_minor_per_point)?;
    let charged = exact.ceil().to_i64()?;
    let paid = exact.floor().to_i64()?;
    debug_assert!(charged - paid <= 1 && charged >= paid);
    Some((charged, paid))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn check(points: i64, price: &str, expected: (i64, i64)) {
        let price = Decimal::from_str(price).unwrap();
        assert_eq!(
            money_leg(points, price),
            Some(expected),
            "{points} at {price}"
        );
    }

    #[test]
    fn money_legs_round_up_for_the_payer_and_down_for_the_payee() {
        check(333, "1.05", (350, 349));
        check(200, "0.95", (190, 190));
        check(1, "0.000001", (1, 0));
        check(0, "1.05", (0, 0));
        check(10_000_000, "1000", (10_000_000_000, 10_000_000_000));
    }

    #[test]
    fn prices_are_checked() {
        assert!(check_price("issue price", Decimal::from_str("1.05").unwrap()).is_ok());
        assert!(check_price("issue price", Decimal::from_str("-0.01").unwrap()).is_err());
        assert!(check_price("issue price", Decimal::from_str("1000.000001").unwrap()).is_err());
        assert!(check_price("issue price", Decimal::from_str("0.0000001").unwrap()).is_err());
    }
}

//! Earning by spend. A merchant may send the purchase amount instead of points; the points
//! follow from the merchant's base rate (in its terms, points per minor unit of spend) times
//! the alliance's earn rules in force: a multiplier per member tier and time-boxed campaign
//! multipliers (alliance-wide or for one merchant). The result is rounded down to whole
//! points, and the rules' version is recorded on the entry.

use std::collections::BTreeMap;

use rust_decimal::Decimal;
use rust_decimal::prelude::ToPrimitive;

use crate::ids::MerchantId;
use crate::terms::{PRICE_SCALE_MAX, TermsError};

/// The largest multiplier: a guard against a misplaced decimal point.
pub const MULTIPLIER_MAX: i64 = 100;

/// A time-boxed multiplier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Campaign {
    pub name: String,
    /// Only purchases at this merchant, or at every merchant when `None`.
    pub merchant_id: Option<MerchantId>,
    /// Purchases that happened in [starts_at_ms, ends_at_ms).
    pub starts_at_ms: i64,
    pub ends_at_ms: i64,
    pub multiplier: Decimal,
}

/// One version of the alliance's earn rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EarnRules {
    /// 1, 2, ...
    pub version: u32,
    /// In force for entries accepted at or after this time, until the next version.
    pub effective_from_ms: i64,
    /// Tier name to multiplier; a member without a tier, or with a tier not listed, gets 1.
    pub tier_multipliers: BTreeMap<String, Decimal>,
    pub campaigns: Vec<Campaign>,
}

impl EarnRules {
    /// The multiplier for a purchase by a member of `tier` at `merchant_id` at `occurred_at_ms`:
    /// the tier's times every campaign running then for that merchant.
    pub fn multiplier(
        &self,
        tier: Option<&str>,
        merchant_id: &MerchantId,
        occurred_at_ms: i64,
    ) -> Decimal {
        let mut multiplier = tier
            .and_then(|tier| self.tier_multipliers.get(tier))
            .copied()
            .unwrap_or(Decimal::ONE);
        for campaign in &self.campaigns {
            let applies = campaign
                .merchant_id
                .as_ref()
                .is_none_or(|merchant| merchant == merchant_id);
            if applies
                && campaign.starts_at_ms <= occurred_at_ms
                && occurred_at_ms < campaign.ends_at_ms
            {
                multiplier *= campaign.multiplier;
            }
        }
        multiplier
    }
}

/// Checks a multiplier or a base rate: positive, at most `MULTIPLIER_MAX`, at most six decimals.
pub fn check_factor(field: &'static str, value: Decimal) -> Result<(), TermsError> {
    if value <= Decimal::ZERO
        || value > Decimal::from(MULTIPLIER_MAX)
        || value.scale() > PRICE_SCALE_MAX
    {
        return Err(TermsError::FactorInvalid { field, value });
    }
    Ok(())
}

/// Points for `spend_minor` at `points_per_minor` times `multiplier`, rounded down. `None`
/// on overflow.
pub fn points_for_spend(
    spend_minor: i64,
    points_per_minor: Decimal,
    multiplier: Decimal,
) -> Option<i64> {
    Decimal::from(spend_minor)
        .checked_mul(points_per_minor)?
        .checked_mul(multiplier)?
        .floor()
        .to_i64()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn decimal(text: &str) -> Decimal {
        Decimal::from_str(text).unwrap()
    }

    #[test]
    fn multipliers_combine_and_points_round_down() {
        let tenant = MerchantId::new("tenant").unwrap();
        let cinema = MerchantId::new("cinema").unwrap();
        let rules = EarnRules {
            version: 1,
            effective_from_ms: 0,
            tier_multipliers: [("gold".to_owned(), decimal("1.5"))].into(),
            campaigns: vec![
                Campaign {
                    name: "double days".into(),
                    merchant_id: None,
                    starts_at_ms: 100,
                    ends_at_ms: 200,
                    multiplier: decimal("2"),
                },
                Campaign {
                    name: "tenant week".into(),
                    merchant_id: Some(tenant.clone()),
                    starts_at_ms: 0,
                    ends_at_ms: 1_000,
                    multiplier: decimal("1.1"),
                },
            ],
        };
        assert_eq!(rules.multiplier(None, &cinema, 50), Decimal::ONE);
        assert_eq!(rules.multiplier(Some("silver"), &cinema, 50), Decimal::ONE);
        assert_eq!(rules.multiplier(Some("gold"), &cinema, 150), decimal("3"));
        assert_eq!(rules.multiplier(Some("gold"), &tenant, 150), decimal("3.3"));
        assert_eq!(rules.multiplier(None, &tenant, 200), decimal("1.1"));
        // ¥179.99 at 1 point per yuan, gold in the campaign: 179.99 × 3.3 = 593.967 → 593.
        assert_eq!(
            points_for_spend(17_999, decimal("0.01"), decimal("3.3")),
            Some(593)
        );
        assert_eq!(points_for_spend(99, decimal("0.01"), Decimal::ONE), Some(0));
        assert!(check_factor("multiplier", decimal("0")).is_err());
        assert!(check_factor("multiplier", decimal("100.5")).is_err());
        assert!(check_factor("multiplier", decimal("1.25")).is_ok());
    }
}

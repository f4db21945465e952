//! Exchanges of a merchant's legacy units into alliance points and back, through the unit's trading account.

use super::*;

impl Ledger {
    /// An exchange between the merchant's legacy unit and alliance points at the rate in its
    /// terms. Exchanging in, the member's units become points the merchant issues (a lot of
    /// its issue, its issue price paid into the float); exchanging out, points go back to the
    /// merchant (its redeem price paid to it) for its units. Both assets pass through the
    /// trading account of the unit. Rounding: the side the member receives is rounded down to
    /// whole units; of what the member gives, the part that bought nothing whole goes to the
    /// rounding account, so each asset balances in integers.
    pub(super) fn draft_exchange(
        &self,
        submission: &Submission,
        member_id: MemberId,
        accepted_at_ms: i64,
    ) -> Result<Draft, ApplyError> {
        let merchant = &submission.merchant_id;
        let wallet_before = self.wallet_points(&member_id);
        let outgoing = submission.kind == TransactionKind::ExchangeOut;
        if outgoing {
            check_available(submission, wallet_before)?;
        }
        let terms = self.terms_in_force(merchant, accepted_at_ms)?;
        let (unit, rate) = terms.exchange.ok_or_else(|| {
            rejected(
                RejectionReason::ExchangeRateMissing,
                format!("merchant {merchant} has no legacy unit and exchange rate in its terms"),
            )
        })?;
        let whole = |value: Option<Decimal>| value.and_then(|value| value.to_i64());
        let overflow = || ApplyError::InvariantViolated("exchange overflow".into());
        let legacy = Asset::Legacy(unit);
        let trading = AccountKey::OperatorTrading(unit);
        let wallet = AccountKey::MemberWallet(member_id.clone());
        let issued = AccountKey::MerchantIssued(merchant.clone());
        let posting = |account: &AccountKey, asset: Asset, amount: i64| Posting {
            account: account.clone(),
            asset,
            amount,
        };
        let (points, units, given_used, given_left) = if outgoing {
            let points = submission.points;
            let units = whole(Decimal::from(points).checked_div(rate).map(|v| v.floor()))
                .ok_or_else(overflow)?;
            let points_used = whole(Decimal::from(units).checked_mul(rate).map(|v| v.ceil()))
                .ok_or_else(overflow)?
                .min(points);
            (points, units, points_used, points - points_used)
        } else {
            let units = submission.legacy_units;
            let points = whole(Decimal::from(units).checked_mul(rate).map(|v| v.floor()))
                .ok_or_else(overflow)?;
            let units_used = whole(Decimal::from(points).checked_div(rate).map(|v| v.ceil()))
                .ok_or_else(overflow)?
                .min(units);
            (points, units, units_used, units - units_used)
        };
        if !outgoing && points > self.policy.points_per_transaction_max {
            return Err(self.above_limit(points));
        }
        if points == 0 || units == 0 {
            return Err(rejected(
                RejectionReason::ExchangeTooSmall,
                format!(
                    "at {rate} points per {} unit, {} converts to nothing whole",
                    unit.as_str(),
                    if outgoing {
                        format!("{points} points")
                    } else {
                        format!("{units} units")
                    }
                ),
            ));
        }
        let mut postings = if outgoing {
            vec![
                posting(&wallet, Asset::Points, -points),
                posting(&trading, Asset::Points, given_used),
                posting(&AccountKey::OperatorRounding, Asset::Points, given_left),
                posting(&trading, legacy, -units),
                posting(&issued, legacy, units),
            ]
        } else {
            vec![
                posting(&issued, legacy, -units),
                posting(&trading, legacy, given_used),
                posting(&AccountKey::OperatorRounding, legacy, given_left),
                posting(&trading, Asset::Points, -points),
                posting(&wallet, Asset::Points, points),
            ]
        };
        postings.retain(|posting| posting.amount != 0);
        // The money of the points: issued in by the merchant, or redeemed by it going out.
        let (side, priced_points) = if outgoing {
            (Side::Redeem, given_used)
        } else {
            (Side::Issue, points)
        };
        let legs = self.money_legs(side, merchant, priced_points, terms)?;
        if !outgoing {
            self.check_credit(merchant, terms, &legs)?;
        }
        postings.extend(legs.into_iter().filter(|posting| posting.amount != 0));
        Ok(Draft {
            earn_rule_version: None,
            kind: if outgoing {
                EntryKind::ExchangeOut
            } else {
                EntryKind::ExchangeIn
            },
            member_points_after: checked_wallet(
                wallet_before,
                if outgoing { -points } else { points },
            )?,
            member_id,
            points,
            terms_version: Some(terms.version),
            refers_to: None,
            expires_at_ms: if outgoing {
                None
            } else {
                self.policy.lot_expiry(submission.occurred_at_ms)
            },
            postings,
        })
    }

    pub(super) fn above_limit(&self, points: i64) -> ApplyError {
        rejected(
            RejectionReason::ComputedPointsAboveLimit,
            format!(
                "the transaction would award {points} points, above the per-transaction limit of {}",
                self.policy.points_per_transaction_max
            ),
        )
    }
}

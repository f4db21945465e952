//! Earns, burns and holds as new entries: their money legs at the terms in force, and the credit limit an earn may not pass.

use super::*;

impl Ledger {
    /// An earn, a burn or a hold: priced by the merchant's terms in force now.
    pub(super) fn draft_new(
        &self,
        submission: &Submission,
        member_id: MemberId,
        accepted_at_ms: i64,
    ) -> Result<Draft, ApplyError> {
        let merchant = &submission.merchant_id;
        let wallet_before = self.wallet_points(&member_id);
        let points = submission.points;
        if submission.kind != TransactionKind::Earn {
            check_available(submission, wallet_before)?;
        }
        let terms = self.terms_in_force(merchant, accepted_at_ms)?;
        // An earn with a spend and no points: the points follow from the earn rules.
        let (points, earn_rule_version) =
            if submission.kind == TransactionKind::Earn && submission.points == 0 {
                self.points_for_spend(submission, &member_id, terms, accepted_at_ms)?
            } else {
                (points, None)
            };
        let (kind, wallet_change, counter_account, expires_at_ms) = match submission.kind {
            TransactionKind::Earn => (
                EntryKind::Earn,
                points,
                AccountKey::MerchantIssued(merchant.clone()),
                self.policy.lot_expiry(submission.occurred_at_ms),
            ),
            TransactionKind::Burn => (
                EntryKind::Burn,
                -points,
                AccountKey::MerchantRedeemed(merchant.clone()),
                None,
            ),
            _ => (
                EntryKind::Hold,
                -points,
                AccountKey::MemberHeld(member_id.clone()),
                Some(accepted_at_ms.saturating_add(self.policy.hold_timeout_ms)),
            ),
        };
        let mut postings = vec![
            Posting {
                account: AccountKey::MemberWallet(member_id.clone()),
                asset: Asset::Points,
                amount: wallet_change,
            },
            Posting {
                account: counter_account,
                asset: Asset::Points,
                amount: -wallet_change,
            },
        ];
        // A hold moves points only; its prices are locked by the terms version it records and
        // its money moves at capture.
        let side = match kind {
            EntryKind::Earn => Some(Side::Issue),
            EntryKind::Burn => Some(Side::Redeem),
            _ => None,
        };
        if let Some(side) = side {
            let legs = self.money_legs(side, merchant, points, terms)?;
            if kind == EntryKind::Earn {
                self.check_credit(merchant, terms, &legs)?;
            }
            postings.extend(legs.into_iter().filter(|posting| posting.amount != 0));
        }
        Ok(Draft {
            earn_rule_version,
            kind,
            member_points_after: checked_wallet(wallet_before, wallet_change)?,
            member_id,
            points,
            terms_version: Some(terms.version),
            refers_to: None,
            expires_at_ms,
            postings,
        })
    }

    /// A merchant's net money position with the operator: negative when it owes. The open
    /// period's settlement and fees, and what finalised periods left payable: a settlement
    /// says what is owed, only money paid in (funding) moves the position up.
    pub fn merchant_position(&self, merchant_id: &MerchantId) -> i64 {
        [
            AccountKey::MerchantSettlement(merchant_id.clone()),
            AccountKey::MerchantFees(merchant_id.clone()),
            AccountKey::MerchantPayable(merchant_id.clone()),
        ]
        .iter()
        .map(|key| self.money_of(key))
        .sum()
    }

    /// An account's balance in the settlement currency (0 for an account never posted to).
    pub(super) fn money_of(&self, key: &AccountKey) -> i64 {
        self.account_id(key).map_or(0, |account| {
            self.balance_of(account, Asset::Currency(self.currency))
        })
    }

    /// Refuses an earn whose cost would take the merchant's net position below its credit
    /// limit (zero for a prepaid merchant). Only earns are limited: reversals, captures and
    /// the clearing of settlements must always be possible.
    pub(super) fn check_credit(
        &self,
        merchant_id: &MerchantId,
        terms: &MerchantTerms,
        legs: &[Posting; 5],
    ) -> Result<(), ApplyError> {
        let Some(limit) = terms.credit_limit_minor else {
            return Ok(());
        };
        let settlement = AccountKey::MerchantSettlement(merchant_id.clone());
        let fees = AccountKey::MerchantFees(merchant_id.clone());
        let cost: i64 = -legs
            .iter()
            .filter(|posting| posting.account == settlement || posting.account == fees)
            .map(|posting| posting.amount)
            .sum::<i64>();
        let position = self.merchant_position(merchant_id);
        if position - cost >= -limit {
            return Ok(());
        }
        let currency = self.currency.as_str();
        Err(if limit == 0 {
            rejected(
                RejectionReason::PrepaidBalanceInsufficient,
                format!(
                    "merchant {merchant_id} is prepaid with {} {currency} minor units left; the earn costs {cost}",
                    position.max(0)
                ),
            )
        } else {
            rejected(
                RejectionReason::CreditLimitExceeded,
                format!(
                    "merchant {merchant_id} stands at {position} {currency} minor units against a credit limit of {limit}; the earn costs {cost} and would pass it until the merchant settles"
                ),
            )
        })
    }

    /// The money of `points` issued or redeemed by `merchant_id` at `terms`: the price leg
    /// and the clearing fee, rounded by `terms::money_leg`, as five postings in a fixed order
    /// (price payer, price payee, fee payer, fees, rounding) whose amounts may be zero.
    pub(super) fn money_legs(
        &self,
        side: Side,
        merchant_id: &MerchantId,
        points: i64,
        terms: &MerchantTerms,
    ) -> Result<[Posting; 5], ApplyError> {
        let settlement = AccountKey::MerchantSettlement(merchant_id.clone());
        // The issuer pays the operator's float for points it issues; the float pays the
        // redeemer for points redeemed there.
        let (price, payer, payee) = match side {
            Side::Redeem => (
                terms.redeem_price_minor_per_point,
                AccountKey::OperatorFloat,
                settlement.clone(),
            ),
            Side::Issue => (
                terms.issue_price_minor_per_point,
                settlement.clone(),
                AccountKey::OperatorFloat,
            ),
        };
        let overflow = || ApplyError::InvariantViolated("money leg overflow".into());
        let (charged, paid) = money_leg(points, price).ok_or_else(overflow)?;
        // The clearing fee, charged to the merchant on every point it issues or redeems, by
        // the same rounding rule.
        let (fee_charged, fee_paid) =
            money_leg(points, terms.fee_minor_per_point).ok_or_else(overflow)?;
        let money = Asset::Currency(self.currency);
        Ok([
            (payer, -charged),
            (payee, paid),
            (AccountKey::MerchantFees(merchant_id.clone()), -fee_charged),
            (AccountKey::OperatorFees, fee_paid),
            (
                AccountKey::OperatorRounding,
                (charged - paid) + (fee_charged - fee_paid),
            ),
        ]
        .map(|(account, amount)| Posting {
            account,
            asset: money,
            amount,
        }))
    }
}

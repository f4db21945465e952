//! Reversals of earns, burns and captures, full or partial, at the original's terms, never beyond what remains.

use super::*;

impl Ledger {
    /// The receipt of the transaction a reversal, capture or void names.
    pub(super) fn referred(&self, submission: &Submission) -> Result<&Receipt, ApplyError> {
        let key = submission.refers_to.as_ref().ok_or_else(|| {
            ApplyError::InvariantViolated("a checked reference submission has no reference".into())
        })?;
        let receipt = self.receipts.get(key).ok_or_else(|| {
            rejected(
                RejectionReason::ReferenceUnknown,
                format!("merchant {} has no transaction {}", key.0, key.1),
            )
        })?;
        self.require_reference(receipt.sequence)?;
        Ok(receipt)
    }

    pub(super) fn draft_reversal(
        &self,
        submission: &Submission,
        member_id: MemberId,
        accepted_at_ms: i64,
    ) -> Result<Draft, ApplyError> {
        let referred = self.referred(submission)?;
        let sequence = referred.sequence;
        let original = self.reversibles.get(&sequence).ok_or_else(|| {
            rejected(
                RejectionReason::ReferenceNotApplicable,
                format!(
                    "transaction {} (entry {sequence}) is a {}; only earns, burns and captures can be reversed",
                    submission.refers_to.as_ref().map_or("", |key| key.1.as_str()),
                    referred.kind.code()
                ),
            )
        })?;
        if self.resolve_loaded(&original.member_id)? != member_id {
            return Err(rejected(
                RejectionReason::ReferenceNotApplicable,
                format!(
                    "entry {sequence} belongs to member {}, not {}",
                    original.member_id, submission.member_id
                ),
            ));
        }
        if original.merchant_id != submission.merchant_id
            && !self
                .terms_at(&submission.merchant_id, accepted_at_ms)
                .is_some_and(|terms| terms.cross_merchant_reversals)
        {
            return Err(rejected(
                RejectionReason::ReversalNotPermitted,
                format!(
                    "merchant {} may not reverse merchant {}'s transactions: its terms do not allow returns of other merchants' sales",
                    submission.merchant_id, original.merchant_id
                ),
            ));
        }
        let remaining = original.points - original.reversed;
        if submission.points > remaining {
            return Err(rejected(
                RejectionReason::ReversalExceedsRemaining,
                format!(
                    "entry {sequence} has {remaining} of its {} points left to reverse, the reversal asks for {}",
                    original.points, submission.points
                ),
            ));
        }
        let terms = self.recorded_terms(&original.merchant_id, Some(original.terms_version))?;
        let (kind, wallet_change, counter_account, side) = match original.kind {
            EntryKind::Earn => (
                EntryKind::EarnReversal,
                -submission.points,
                AccountKey::MerchantIssued(original.merchant_id.clone()),
                Side::Issue,
            ),
            _ => (
                EntryKind::BurnReversal,
                submission.points,
                AccountKey::MerchantRedeemed(original.merchant_id.clone()),
                Side::Redeem,
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
        // Money goes back at the original's prices. A reversal moves the money from that of
        // the points un-reversed before it to that of the points un-reversed after it, so the
        // original and its reversals always leave exactly the money of the points that remain
        // (to the last minor unit, by the rounding rule), and nothing once all are reversed.
        let before = self.money_legs(side, &original.merchant_id, remaining, terms)?;
        let after = self.money_legs(
            side,
            &original.merchant_id,
            remaining - submission.points,
            terms,
        )?;
        for (before, after) in before.into_iter().zip(after) {
            let amount = after.amount - before.amount;
            if amount != 0 {
                postings.push(Posting { amount, ..before });
            }
        }
        let wallet_before = self.wallet_points(&member_id);
        Ok(Draft {
            earn_rule_version: None,
            kind,
            member_points_after: checked_wallet(wallet_before, wallet_change)?,
            member_id,
            points: submission.points,
            terms_version: Some(original.terms_version),
            refers_to: Some(sequence),
            expires_at_ms: None,
            postings,
        })
    }
}

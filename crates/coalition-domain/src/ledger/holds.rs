//! Captures and voids of open holds, and the release of holds past their timeout.

use super::*;

impl Ledger {
    pub(super) fn draft_hold_settlement(
        &self,
        submission: &Submission,
        member_id: MemberId,
        accepted_at_ms: i64,
    ) -> Result<Draft, ApplyError> {
        let referred = self.referred(submission)?;
        let sequence = referred.sequence;
        let referred_merchant = submission.refers_to.as_ref().map(|key| &key.0);
        if referred.kind != EntryKind::Hold || referred_merchant != Some(&submission.merchant_id) {
            return Err(rejected(
                RejectionReason::ReferenceNotApplicable,
                format!(
                    "entry {sequence} is a {} of merchant {}; a capture or void acts on a hold the submitting merchant placed",
                    referred.kind.code(),
                    referred_merchant.map_or("", |merchant| merchant.as_str())
                ),
            ));
        }
        let hold = self
            .holds
            .get(&sequence)
            .filter(|hold| hold.expires_at_ms > accepted_at_ms)
            .ok_or_else(|| {
                rejected(
                    RejectionReason::HoldNotOpen,
                    format!("the hold of entry {sequence} was already captured, voided or expired"),
                )
            })?;
        if self.resolve_loaded(&hold.member_id)? != member_id {
            return Err(rejected(
                RejectionReason::ReferenceNotApplicable,
                format!(
                    "the hold of entry {sequence} is for member {}, not {}",
                    hold.member_id, submission.member_id
                ),
            ));
        }
        let captured = if submission.kind == TransactionKind::Capture {
            if submission.points > hold.points {
                return Err(rejected(
                    RejectionReason::CaptureExceedsHold,
                    format!(
                        "the hold of entry {sequence} holds {} points, the capture asks for {}",
                        hold.points, submission.points
                    ),
                ));
            }
            submission.points
        } else {
            0
        };
        let released = hold.points - captured;
        let mut postings = vec![Posting {
            account: AccountKey::MemberHeld(hold.member_id.clone()),
            asset: Asset::Points,
            amount: -hold.points,
        }];
        if released != 0 {
            postings.push(Posting {
                account: AccountKey::MemberWallet(member_id.clone()),
                asset: Asset::Points,
                amount: released,
            });
        }
        let (kind, points, terms_version) = if submission.kind == TransactionKind::Capture {
            postings.push(Posting {
                account: AccountKey::MerchantRedeemed(hold.merchant_id.clone()),
                asset: Asset::Points,
                amount: captured,
            });
            // Captured at the prices locked when the hold was placed.
            let terms = self.recorded_terms(&hold.merchant_id, Some(hold.terms_version))?;
            let legs = self.money_legs(Side::Redeem, &hold.merchant_id, captured, terms)?;
            postings.extend(legs.into_iter().filter(|posting| posting.amount != 0));
            (EntryKind::Capture, captured, Some(hold.terms_version))
        } else {
            (EntryKind::Void, hold.points, None)
        };
        let wallet_before = self.wallet_points(&member_id);
        Ok(Draft {
            earn_rule_version: None,
            kind,
            member_points_after: checked_wallet(wallet_before, released)?,
            member_id,
            points,
            terms_version,
            refers_to: Some(sequence),
            expires_at_ms: None,
            postings,
        })
    }

    /// Releases every hold whose deadline has passed at `at_ms`, one operator entry each.
    pub fn expire_holds(
        &mut self,
        at_ms: i64,
        changes: &mut Changes,
    ) -> Result<ExpirySummary, ApplyError> {
        let mut summary = ExpirySummary::default();
        let due: Vec<(i64, u64)> = self
            .hold_deadlines
            .range(..=(at_ms, u64::MAX))
            .copied()
            .collect();
        for (_, sequence) in due {
            let Some(hold) = self.holds.get(&sequence) else {
                continue;
            };
            let member_id = self.resolve_loaded(&hold.member_id)?;
            let member_points_after = checked_wallet(self.wallet_points(&member_id), hold.points)?;
            let entry = OperatorEntry {
                kind: EntryKind::HoldExpiry,
                member_id: Some(member_id.clone()),
                points: hold.points,
                member_points_after,
                memo: format!(
                    "hold of merchant {} expired at {} ms, neither captured nor voided",
                    hold.merchant_id, hold.expires_at_ms
                ),
                refers_to: Some(sequence),
                postings: vec![
                    Posting {
                        account: AccountKey::MemberHeld(hold.member_id.clone()),
                        asset: Asset::Points,
                        amount: -hold.points,
                    },
                    Posting {
                        account: AccountKey::MemberWallet(member_id),
                        asset: Asset::Points,
                        amount: hold.points,
                    },
                ],
            };
            summary.entries += 1;
            summary.points += entry.points;
            self.commit_operator_entry(entry, at_ms, changes)
                .map_err(|error| ApplyError::InvariantViolated(error.to_string()))?;
        }
        Ok(summary)
    }
}

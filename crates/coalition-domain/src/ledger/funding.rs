//! Money across the ledger's edge and settlement: prepaid funding, payouts against what is payable, and a finalised period's closing entry.

use super::*;

impl Ledger {
    /// Books money a merchant paid in: its position rises by `amount_minor`, the operator's
    /// cash account records the receipt. Returns the entry's sequence.
    pub fn fund_merchant(
        &mut self,
        merchant_id: &MerchantId,
        amount_minor: i64,
        reference: &str,
        at_ms: i64,
        changes: &mut Changes,
    ) -> Result<u64, ApplyError> {
        self.book_cash(
            EntryKind::Funding,
            AccountKey::MerchantSettlement(merchant_id.clone()),
            amount_minor,
            format!("funding of merchant {merchant_id}: {reference}"),
            at_ms,
            changes,
        )
    }

    /// What finalised periods left payable to a merchant (negative: what it owes).
    pub fn merchant_payable(&self, merchant_id: &MerchantId) -> i64 {
        self.money_of(&AccountKey::MerchantPayable(merchant_id.clone()))
    }

    /// Books money the operator paid a merchant: its payable falls by `amount_minor`, the
    /// operator's cash account records the payment. The caller checks the amount against
    /// the payable. Returns the entry's sequence.
    pub fn pay_out(
        &mut self,
        merchant_id: &MerchantId,
        amount_minor: i64,
        reference: &str,
        at_ms: i64,
        changes: &mut Changes,
    ) -> Result<u64, ApplyError> {
        self.book_cash(
            EntryKind::Payout,
            AccountKey::MerchantPayable(merchant_id.clone()),
            -amount_minor,
            format!("payout to merchant {merchant_id}: {reference}"),
            at_ms,
            changes,
        )
    }

    /// Money crossing the ledger's edge: `amount_minor` to `account`, the opposite to the
    /// operator's cash account.
    pub(super) fn book_cash(
        &mut self,
        kind: EntryKind,
        account: AccountKey,
        amount_minor: i64,
        memo: String,
        at_ms: i64,
        changes: &mut Changes,
    ) -> Result<u64, ApplyError> {
        let money = Asset::Currency(self.currency);
        let entry = OperatorEntry {
            kind,
            member_id: None,
            points: 0,
            member_points_after: 0,
            memo,
            refers_to: None,
            postings: vec![
                Posting {
                    account: AccountKey::OperatorCash,
                    asset: money,
                    amount: -amount_minor,
                },
                Posting {
                    account,
                    asset: money,
                    amount: amount_minor,
                },
            ],
        };
        self.commit_operator_entry(entry, at_ms, changes)
            .map_err(|error| ApplyError::InvariantViolated(error.to_string()))
    }

    /// Books the closing entry of a finalised period (see `settlement`) and records the
    /// period as finalised. Returns what was recorded.
    pub fn book_settlement(
        &mut self,
        settlement: Settlement,
        at_ms: i64,
        changes: &mut Changes,
    ) -> Result<FinalisedPeriod, ApplyError> {
        let postings = closing_postings(&settlement, self.currency);
        let closing_sequence = if postings.is_empty() {
            None
        } else {
            let entry = OperatorEntry {
                kind: EntryKind::Settlement,
                member_id: None,
                points: 0,
                member_points_after: 0,
                memo: format!("settlement of period {}", settlement.period),
                refers_to: None,
                postings,
            };
            Some(
                self.commit_operator_entry(entry, at_ms, changes)
                    .map_err(|error| ApplyError::InvariantViolated(error.to_string()))?,
            )
        };
        let finalised = FinalisedPeriod {
            settlement,
            closing_sequence,
            finalised_at_ms: at_ms,
        };
        changes.settlements.push(finalised.clone());
        Ok(finalised)
    }
}

//! Hand-written conversions between the wire types and the domain.

use coalition_domain::account::{AccountKey, OPERATOR};
use coalition_domain::journal::Entry;
use coalition_domain::journal::EntryKind;
use coalition_domain::reconciliation::{
    Difference, SideTotals, Status as ReconcileStatus, Summary,
};
use coalition_domain::{
    MemberId, MerchantCategory, MerchantId, RawSubmission, Rejection, RejectionReason,
    TransactionKind,
};
use coalition_domain::{MerchantTerms, UnitCode};
use coalition_engine::{EngineError, Envelope, PeriodStatus, SettlementView, SubmitOutcome};
use tonic::Status;

use crate::pb;

pub fn rejection_reason(reason: RejectionReason) -> pb::RejectionReason {
    // The wire enum uses the domain's stable codes.
    pb::RejectionReason::try_from(i32::from(reason.code()))
        .expect("every domain rejection reason has a wire value")
}

pub fn envelope(envelope: pb::Envelope) -> Envelope {
    Envelope {
        merchant_id: envelope.merchant_id,
        key_id: envelope.key_id,
        body: envelope.body,
        signature: envelope.signature,
    }
}

pub fn raw_submission(body: pb::TransactionBody) -> RawSubmission {
    let kind = match pb::TransactionKind::try_from(body.kind) {
        Ok(pb::TransactionKind::Earn) => Some(TransactionKind::Earn),
        Ok(pb::TransactionKind::Burn) => Some(TransactionKind::Burn),
        Ok(pb::TransactionKind::Reversal) => Some(TransactionKind::Reversal),
        Ok(pb::TransactionKind::Hold) => Some(TransactionKind::Hold),
        Ok(pb::TransactionKind::Capture) => Some(TransactionKind::Capture),
        Ok(pb::TransactionKind::Void) => Some(TransactionKind::Void),
        Ok(pb::TransactionKind::ExchangeIn) => Some(TransactionKind::ExchangeIn),
        Ok(pb::TransactionKind::ExchangeOut) => Some(TransactionKind::ExchangeOut),
        Ok(pb::TransactionKind::Unspecified) | Err(_) => None,
    };
    RawSubmission {
        merchant_id: body.merchant_id,
        merchant_transaction_id: body.merchant_transaction_id,
        kind,
        member_id: body.member_id,
        points: body.points,
        spend_minor: body.spend_minor,
        occurred_at_ms: body.occurred_at_unix_ms,
        store_id: body.store_id,
        terminal_id: body.terminal_id,
        refers_to_merchant_id: body.refers_to_merchant_id,
        refers_to_transaction_id: body.refers_to_transaction_id,
        legacy_units: body.legacy_units,
    }
}

fn wire_kind(kind: EntryKind) -> pb::TransactionKind {
    match kind {
        EntryKind::Earn => pb::TransactionKind::Earn,
        EntryKind::Burn => pb::TransactionKind::Burn,
        EntryKind::EarnReversal | EntryKind::BurnReversal => pb::TransactionKind::Reversal,
        EntryKind::Hold => pb::TransactionKind::Hold,
        EntryKind::Capture => pb::TransactionKind::Capture,
        EntryKind::Void => pb::TransactionKind::Void,
        EntryKind::ExchangeIn => pb::TransactionKind::ExchangeIn,
        EntryKind::ExchangeOut => pb::TransactionKind::ExchangeOut,
        EntryKind::MemberMerge
        | EntryKind::HoldExpiry
        | EntryKind::Expiry
        | EntryKind::Funding
        | EntryKind::Settlement
        | EntryKind::Payout => pb::TransactionKind::Unspecified,
    }
}

pub fn accepted(outcome: &SubmitOutcome, merchant_transaction_id: String) -> pb::SubmissionResult {
    let receipt = &outcome.receipt;
    pb::SubmissionResult {
        merchant_transaction_id,
        outcome: Some(pb::submission_result::Outcome::Accepted(pb::Accepted {
            entry_sequence: receipt.sequence,
            accepted_at_unix_ms: receipt.accepted_at_ms,
            kind: wire_kind(receipt.kind) as i32,
            member_id: receipt.member_id.to_string(),
            points: receipt.points,
            member_points_balance: receipt.member_points_after,
            duplicate: outcome.duplicate,
        })),
    }
}

pub fn rejected(rejection: &Rejection, merchant_transaction_id: String) -> pb::SubmissionResult {
    pb::SubmissionResult {
        merchant_transaction_id,
        outcome: Some(pb::submission_result::Outcome::Rejected(pb::Rejected {
            reason: rejection_reason(rejection.reason) as i32,
            message: rejection.message.clone(),
        })),
    }
}

pub fn engine_status(error: EngineError) -> Status {
    match error {
        EngineError::StorageUnavailable(_) | EngineError::ShuttingDown => Status::unavailable(
            format!("{error}; nothing was applied, retry with the same body"),
        ),
        EngineError::InvariantViolated(_) => {
            Status::internal(format!("{error}; nothing was applied"))
        }
    }
}

pub fn account_kind(kind: &AccountKey) -> pb::AccountKind {
    match kind {
        AccountKey::MemberWallet(_) => pb::AccountKind::MemberWallet,
        AccountKey::MemberHeld(_) => pb::AccountKind::MemberHeld,
        AccountKey::MerchantBreakage(_) => pb::AccountKind::MerchantBreakage,
        AccountKey::MerchantIssued(_) => pb::AccountKind::MerchantIssued,
        AccountKey::MerchantRedeemed(_) => pb::AccountKind::MerchantRedeemed,
        AccountKey::MerchantSettlement(_) => pb::AccountKind::MerchantSettlement,
        AccountKey::MerchantFees(_) => pb::AccountKind::MerchantFees,
        AccountKey::MerchantPayable(_) => pb::AccountKind::MerchantPayable,
        AccountKey::OperatorFloat => pb::AccountKind::OperatorFloat,
        AccountKey::OperatorRounding => pb::AccountKind::OperatorRounding,
        AccountKey::OperatorFees => pb::AccountKind::OperatorFees,
        AccountKey::OperatorCash => pb::AccountKind::OperatorCash,
        AccountKey::OperatorTrading(_) => pb::AccountKind::OperatorTrading,
    }
}

pub fn account_key(kind: i32, owner_id: String) -> Result<AccountKey, Status> {
    let invalid = |message: String| Status::invalid_argument(message);
    match pb::AccountKind::try_from(kind) {
        Ok(pb::AccountKind::MemberWallet) => MemberId::new(owner_id)
            .map(AccountKey::MemberWallet)
            .map_err(|error| invalid(format!("owner_id {error}"))),
        Ok(pb::AccountKind::MerchantIssued) => MerchantId::new(owner_id)
            .map(AccountKey::MerchantIssued)
            .map_err(|error| invalid(format!("owner_id {error}"))),
        Ok(pb::AccountKind::MerchantRedeemed) => MerchantId::new(owner_id)
            .map(AccountKey::MerchantRedeemed)
            .map_err(|error| invalid(format!("owner_id {error}"))),
        Ok(pb::AccountKind::MerchantSettlement) => MerchantId::new(owner_id)
            .map(AccountKey::MerchantSettlement)
            .map_err(|error| invalid(format!("owner_id {error}"))),
        Ok(pb::AccountKind::OperatorTrading) => UnitCode::new(&owner_id)
            .map(AccountKey::OperatorTrading)
            .ok_or_else(|| invalid(format!("owner_id {owner_id:?} is not a legacy unit code"))),
        Ok(pb::AccountKind::MemberHeld) => MemberId::new(owner_id)
            .map(AccountKey::MemberHeld)
            .map_err(|error| invalid(format!("owner_id {error}"))),
        Ok(pb::AccountKind::MerchantBreakage) => MerchantId::new(owner_id)
            .map(AccountKey::MerchantBreakage)
            .map_err(|error| invalid(format!("owner_id {error}"))),
        Ok(pb::AccountKind::MerchantFees) => MerchantId::new(owner_id)
            .map(AccountKey::MerchantFees)
            .map_err(|error| invalid(format!("owner_id {error}"))),
        Ok(pb::AccountKind::MerchantPayable) => MerchantId::new(owner_id)
            .map(AccountKey::MerchantPayable)
            .map_err(|error| invalid(format!("owner_id {error}"))),
        Ok(
            kind @ (pb::AccountKind::OperatorFloat
            | pb::AccountKind::OperatorRounding
            | pb::AccountKind::OperatorFees
            | pb::AccountKind::OperatorCash),
        ) => {
            if !(owner_id.is_empty() || owner_id == OPERATOR) {
                return Err(invalid(format!(
                    "the operator's accounts have owner_id {OPERATOR:?}"
                )));
            }
            Ok(match kind {
                pb::AccountKind::OperatorFloat => AccountKey::OperatorFloat,
                pb::AccountKind::OperatorRounding => AccountKey::OperatorRounding,
                pb::AccountKind::OperatorCash => AccountKey::OperatorCash,
                _ => AccountKey::OperatorFees,
            })
        }
        Ok(pb::AccountKind::Unspecified) | Err(_) => {
            Err(invalid("account_kind must be set".to_owned()))
        }
    }
}

/// The wire enum of an entry kind.
pub fn entry_kind(kind: EntryKind) -> pb::EntryKind {
    match kind {
        EntryKind::Earn => pb::EntryKind::Earn,
        EntryKind::Burn => pb::EntryKind::Burn,
        EntryKind::MemberMerge => pb::EntryKind::MemberMerge,
        EntryKind::EarnReversal => pb::EntryKind::EarnReversal,
        EntryKind::BurnReversal => pb::EntryKind::BurnReversal,
        EntryKind::Hold => pb::EntryKind::Hold,
        EntryKind::Capture => pb::EntryKind::Capture,
        EntryKind::Void => pb::EntryKind::Void,
        EntryKind::HoldExpiry => pb::EntryKind::HoldExpiry,
        EntryKind::Funding => pb::EntryKind::Funding,
        EntryKind::ExchangeIn => pb::EntryKind::ExchangeIn,
        EntryKind::ExchangeOut => pb::EntryKind::ExchangeOut,
        EntryKind::Expiry => pb::EntryKind::Expiry,
        EntryKind::Settlement => pb::EntryKind::Settlement,
        EntryKind::Payout => pb::EntryKind::Payout,
    }
}

pub fn journal_entry(entry: &Entry) -> pb::JournalEntry {
    let origin = entry.origin.as_ref();
    // The deprecated string kind is still filled for clients that read it.
    #[allow(deprecated)]
    pb::JournalEntry {
        sequence: entry.sequence,
        kind: entry.kind.code().to_owned(),
        entry_kind: entry_kind(entry.kind) as i32,
        accepted_at_unix_ms: entry.accepted_at_ms,
        merchant_id: origin
            .map(|o| o.merchant_id.to_string())
            .unwrap_or_default(),
        merchant_transaction_id: origin
            .map(|o| o.merchant_transaction_id.to_string())
            .unwrap_or_default(),
        store_id: origin.map(|o| o.store_id.clone()).unwrap_or_default(),
        terminal_id: origin.map(|o| o.terminal_id.clone()).unwrap_or_default(),
        occurred_at_unix_ms: origin.map(|o| o.occurred_at_ms).unwrap_or_default(),
        member_id: entry
            .member_id
            .as_ref()
            .map_or_else(String::new, ToString::to_string),
        points: entry.points,
        spend_minor: entry.spend_minor,
        member_points_balance: entry.member_points_after,
        memo: entry.memo.clone(),
        postings: entry
            .postings
            .iter()
            .map(|posting| pb::Posting {
                account_kind: account_kind(&posting.account) as i32,
                owner_id: posting.account.owner().to_owned(),
                asset: posting.asset.code().to_owned(),
                amount: posting.amount,
            })
            .collect(),
        hash: entry.hash.to_vec(),
        terms_version: entry.terms_version,
        refers_to_sequence: entry.refers_to,
        earn_rule_version: entry.earn_rule_version,
        previous_hash: entry.previous_hash.to_vec(),
        body_hash: origin.map(|o| o.body_hash.to_vec()).unwrap_or_default(),
        expires_at_unix_ms: entry.expires_at_ms,
    }
}

pub fn merchant_category(category: i32) -> Result<MerchantCategory, Status> {
    match pb::MerchantCategory::try_from(category) {
        Ok(pb::MerchantCategory::MallTenant) => Ok(MerchantCategory::MallTenant),
        Ok(pb::MerchantCategory::Cinema) => Ok(MerchantCategory::Cinema),
        Ok(pb::MerchantCategory::Restaurant) => Ok(MerchantCategory::Restaurant),
        Ok(pb::MerchantCategory::Parking) => Ok(MerchantCategory::Parking),
        Ok(pb::MerchantCategory::Other) => Ok(MerchantCategory::Other),
        Ok(pb::MerchantCategory::Unspecified) | Err(_) => {
            Err(Status::invalid_argument("category must be set"))
        }
    }
}

pub fn wire_category(category: MerchantCategory) -> pb::MerchantCategory {
    match category {
        MerchantCategory::MallTenant => pb::MerchantCategory::MallTenant,
        MerchantCategory::Cinema => pb::MerchantCategory::Cinema,
        MerchantCategory::Restaurant => pb::MerchantCategory::Restaurant,
        MerchantCategory::Parking => pb::MerchantCategory::Parking,
        MerchantCategory::Other => pb::MerchantCategory::Other,
    }
}

pub fn wire_terms(terms: &MerchantTerms) -> pb::MerchantTerms {
    pb::MerchantTerms {
        version: terms.version,
        effective_from_unix_ms: terms.effective_from_ms,
        issue_price_minor_per_point: terms.issue_price_minor_per_point.to_string(),
        redeem_price_minor_per_point: terms.redeem_price_minor_per_point.to_string(),
        fee_minor_per_point: terms.fee_minor_per_point.to_string(),
        breakage_share: terms.breakage_share.to_string(),
        cross_merchant_reversals: terms.cross_merchant_reversals,
        credit_limit_minor: terms.credit_limit_minor,
        earn_points_per_minor: terms
            .earn_points_per_minor
            .map_or_else(String::new, |rate| rate.to_string()),
        legacy_unit: terms
            .exchange
            .map_or_else(String::new, |(unit, _)| unit.as_str().to_owned()),
        points_per_legacy_unit: terms
            .exchange
            .map_or_else(String::new, |(_, rate)| rate.to_string()),
    }
}

/// A period's settlement on the wire.
pub fn settlement(view: SettlementView) -> pb::Settlement {
    let SettlementView {
        settlement,
        status,
        closing_sequence,
        finalised_at_ms,
    } = view;
    pb::Settlement {
        period: settlement.period,
        start_unix_ms: settlement.start_ms,
        end_unix_ms: settlement.end_ms,
        currency: settlement.currency,
        status: match status {
            PeriodStatus::Open => pb::SettlementStatus::Open,
            PeriodStatus::Closed => pb::SettlementStatus::Closed,
            PeriodStatus::Finalised => pb::SettlementStatus::Finalised,
        } as i32,
        first_sequence: settlement.first_sequence,
        last_sequence: settlement.last_sequence,
        previous_hash: settlement.previous_hash,
        head_hash: settlement.head_hash,
        merchants: settlement
            .merchants
            .into_iter()
            .map(|net| pb::MerchantSettlement {
                merchant_id: net.merchant_id,
                points_issued: net.points_issued,
                points_redeemed: net.points_redeemed,
                issuance_minor: net.issuance_minor,
                issuance_reversed_minor: net.issuance_reversed_minor,
                redemptions_minor: net.redemptions_minor,
                redemptions_reversed_minor: net.redemptions_reversed_minor,
                fees_minor: net.fees_minor,
                funding_minor: net.funding_minor,
                breakage_minor: net.breakage_minor,
                breakage_share: net.breakage_share,
                breakage_share_minor: net.breakage_share_minor,
                net_minor: net.net_minor,
            })
            .collect(),
        operator: Some(pb::OperatorSettlement {
            float_minor: settlement.operator.float_minor,
            fees_minor: settlement.operator.fees_minor,
            rounding_minor: settlement.operator.rounding_minor,
            cash_minor: settlement.operator.cash_minor,
            breakage_kept_minor: settlement.operator.breakage_kept_minor,
            net_minor: settlement.operator.net_minor,
        }),
        matrix: settlement
            .matrix
            .into_iter()
            .map(|cell| pb::MatrixCell {
                issuer_id: cell.issuer,
                redeemer_id: cell.redeemer,
                points: cell.points,
                value_minor: cell.value_minor,
            })
            .collect(),
        closing_sequence,
        finalised_at_unix_ms: finalised_at_ms.unwrap_or(0),
    }
}

/// A reconciliation report on the wire: its summary (with the malformed rows it lists), the
/// differences listed and how many were not.
pub fn reconcile_response(
    summary: Summary,
    differences: Vec<pb::ReconcileDifference>,
    differences_not_listed: u64,
) -> pb::ReconcileResponse {
    let totals = |side: SideTotals| pb::ReconcileTotals {
        transactions: side.transactions,
        points: side.points,
        amount_minor: side.amount_minor,
    };
    pb::ReconcileResponse {
        matched: summary.count(ReconcileStatus::Matched),
        merchant: Some(totals(summary.merchant)),
        clearing: Some(totals(summary.clearing)),
        differences,
        differences_not_listed,
        malformed_not_listed: summary.malformed_rows - summary.malformed.len() as u64,
        malformed: summary
            .malformed
            .into_iter()
            .map(|row| format!("row {}: {}", row.line, row.problem))
            .collect(),
    }
}

pub fn reconcile_difference(difference: Difference) -> pb::ReconcileDifference {
    pb::ReconcileDifference {
        status: match difference.status {
            ReconcileStatus::Matched => pb::ReconcileStatus::Matched,
            ReconcileStatus::PointsMismatch => pb::ReconcileStatus::PointsMismatch,
            ReconcileStatus::AmountMismatch => pb::ReconcileStatus::AmountMismatch,
            ReconcileStatus::MissingInClearing => pb::ReconcileStatus::MissingInClearing,
            ReconcileStatus::MissingAtMerchant => pb::ReconcileStatus::MissingAtMerchant,
            ReconcileStatus::Duplicated => pb::ReconcileStatus::Duplicated,
        } as i32,
        merchant_transaction_id: difference.merchant_transaction_id,
        merchant_row: difference.merchant_line.unwrap_or(0),
        entry_sequence: difference.entry_sequence.unwrap_or(0),
        merchant_points: difference.merchant_points,
        clearing_points: difference.clearing_points,
        merchant_amount_minor: difference.merchant_amount_minor,
        clearing_amount_minor: difference.clearing_amount_minor,
    }
}

//! Settlement periods and the multilateral netting of a period through the operator.
//!
//! Longer than 800 lines: about 180 of them are its tests; the rest is one computation (the
//! netting, its matrix and the largest-remainder splits) that reads best in one place.
//!
//! A period is a day cut at a configured local time: the period labelled `2026-11-22` with a
//! 04:00 cut-off at +08:00 holds every entry accepted from 2026-11-22 04:00 to 2026-11-23
//! 04:00 local time. Acceptance times never go backwards, so a period is a contiguous range
//! of sequence numbers, and a transaction accepted after the cut-off falls into the next one.
//!
//! The settlement of a period is computed from its entries alone (and the breakage share of
//! each issuer's terms), so the server's preview, its finalisation and an auditor's
//! `coalition verify` of an export all run this same function on the same entries:
//!
//! - per merchant, from the money postings to its settlement and fee accounts, by the kind of
//!   the entry: issuance owed (earns, exchanges in), issuance reversed (refunds), redemptions
//!   due (burns, captures, exchanges out), redemptions reversed (cancellations), fees, money
//!   paid in (funding), and its share of the breakage of its expired points (rounded down,
//!   the operator keeps the rest); their sum is the merchant's one net amount: positive, the
//!   operator pays it; negative, the merchant pays the operator;
//! - the operator's line: the movement of its own accounts (float, fees, rounding, cash) and
//!   the breakage it keeps. The merchants' nets and the operator's sum to exactly zero, because
//!   every entry balances; `compute` asserts it;
//! - the bilateral matrix: whose points were redeemed where, from lot attribution, with the
//!   redemption money of each redeeming entry split over the issuers of the points it took
//!   (largest remainder), so that each redeemer's column sums to its redemptions due.
//!
//! Closing entries of earlier periods (kind `settlement`) and payouts fall into the period in
//! which they are booked and are left out of its netting: they move amounts already settled.

use std::collections::BTreeMap;

use rust_decimal::Decimal;
use rust_decimal::prelude::ToPrimitive;
use serde::{Deserialize, Serialize};

use crate::account::{AccountKey, Asset, CurrencyCode};
use crate::ids::MerchantId;
use crate::journal::{Entry, EntryKind, Posting};

const DAY_MS: i64 = 86_400_000;

/// Why a period or a cut-off could not be understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeriodError {
    #[error("the cut-off time must be HH:MM from 00:00 to 23:59, got {0:?}")]
    CutoffTime(String),
    #[error("the UTC offset must be +HH:MM or -HH:MM within ±14:00, got {0:?}")]
    Offset(String),
    #[error("a period is named by its first day as YYYY-MM-DD, got {0:?}")]
    Label(String),
}

/// The daily cut-off: a local time of day in a fixed UTC offset (the alliance's time zone).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cutoff {
    /// Minutes after local midnight.
    pub minute_of_day: u32,
    /// The local time's offset from UTC, in minutes.
    pub offset_minutes: i32,
}

/// One settlement period: entries accepted in `[start_ms, end_ms)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Period {
    /// The local date on which the period starts, `YYYY-MM-DD`.
    pub label: String,
    pub start_ms: i64,
    pub end_ms: i64,
}

fn parse_hh_mm(text: &str) -> Option<(u32, u32)> {
    let (hours, minutes) = text.split_once(':')?;
    if hours.len() != 2 || minutes.len() != 2 {
        return None;
    }
    let hours: u32 = hours.parse().ok()?;
    let minutes: u32 = minutes.parse().ok()?;
    (minutes < 60).then_some((hours, minutes))
}

impl Cutoff {
    /// Parses a local time `HH:MM` and an offset `+HH:MM` / `-HH:MM`.
    pub fn parse(time: &str, offset: &str) -> Result<Cutoff, PeriodError> {
        let (hours, minutes) = parse_hh_mm(time)
            .filter(|(hours, _)| *hours < 24)
            .ok_or_else(|| PeriodError::CutoffTime(time.to_owned()))?;
        let bad_offset = || PeriodError::Offset(offset.to_owned());
        let sign = match offset.as_bytes().first() {
            Some(b'+') => 1,
            Some(b'-') => -1,
            _ => return Err(bad_offset()),
        };
        let (offset_hours, offset_minutes) = parse_hh_mm(&offset[1..]).ok_or_else(bad_offset)?;
        let offset_total = offset_hours * 60 + offset_minutes;
        if offset_total > 14 * 60 {
            return Err(bad_offset());
        }
        Ok(Cutoff {
            minute_of_day: hours * 60 + minutes,
            offset_minutes: sign * offset_total as i32,
        })
    }

    /// The local time of day and offset, as configured.
    pub fn describe(&self) -> String {
        let offset = self.offset_minutes.unsigned_abs();
        format!(
            "{:02}:{:02} at UTC{}{:02}:{:02}",
            self.minute_of_day / 60,
            self.minute_of_day % 60,
            if self.offset_minutes < 0 { '-' } else { '+' },
            offset / 60,
            offset % 60
        )
    }

    fn shift_ms(&self) -> i64 {
        i64::from(self.minute_of_day) * 60_000 - i64::from(self.offset_minutes) * 60_000
    }

    /// The period that starts on the local date `label` (`YYYY-MM-DD`).
    pub fn period(&self, label: &str) -> Result<Period, PeriodError> {
        let bad = || PeriodError::Label(label.to_owned());
        if label.len() != 10 {
            return Err(bad());
        }
        let date: jiff::civil::Date = label.parse().map_err(|_| bad())?;
        let days = date
            .since(jiff::civil::Date::constant(1970, 1, 1))
            .map_err(|_| bad())?
            .get_days();
        Ok(self.period_of_day(i64::from(days)))
    }

    /// The period an entry accepted at `at_ms` belongs to.
    pub fn period_at(&self, at_ms: i64) -> Period {
        self.period_of_day((at_ms - self.shift_ms()).div_euclid(DAY_MS))
    }

    /// The local date and time of `at_ms` in the cut-off's offset, as
    /// `YYYY-MM-DDTHH:MM:SS.mmm+HH:MM`.
    pub fn local_time(&self, at_ms: i64) -> String {
        let local_ms = at_ms + i64::from(self.offset_minutes) * 60_000;
        let day = local_ms.div_euclid(DAY_MS);
        let within = local_ms.rem_euclid(DAY_MS);
        let date = jiff::civil::Date::constant(1970, 1, 1)
            .checked_add(jiff::Span::new().days(day))
            .expect("acceptance times stay within jiff's calendar");
        let offset = self.offset_minutes.unsigned_abs();
        format!(
            "{date}T{:02}:{:02}:{:02}.{:03}{}{:02}:{:02}",
            within / 3_600_000,
            within / 60_000 % 60,
            within / 1000 % 60,
            within % 1000,
            if self.offset_minutes < 0 { '-' } else { '+' },
            offset / 60,
            offset % 60
        )
    }

    /// The local date of `at_ms`, `YYYY-MM-DD`.
    pub fn local_date(&self, at_ms: i64) -> String {
        self.local_time(at_ms)[..10].to_owned()
    }

    /// The period after `period`.
    pub fn next(&self, period: &Period) -> Period {
        self.period_at(period.end_ms)
    }

    fn period_of_day(&self, day: i64) -> Period {
        let date = jiff::civil::Date::constant(1970, 1, 1)
            .checked_add(jiff::Span::new().days(day))
            .expect("days of acceptance times stay within jiff's calendar");
        let start_ms = day * DAY_MS + self.shift_ms();
        Period {
            label: date.to_string(),
            start_ms,
            end_ms: start_ms + DAY_MS,
        }
    }
}

/// A merchant's part of a period's settlement, in minor units of the settlement currency,
/// signed from the merchant's side: positive is money the operator owes the merchant.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MerchantNet {
    pub merchant_id: String,
    /// Points the merchant issued (earns and exchanges in, less refunds).
    pub points_issued: i64,
    /// Points redeemed at the merchant (burns, captures, exchanges out, less cancellations).
    pub points_redeemed: i64,
    pub issuance_minor: i64,
    pub issuance_reversed_minor: i64,
    pub redemptions_minor: i64,
    pub redemptions_reversed_minor: i64,
    pub fees_minor: i64,
    pub funding_minor: i64,
    /// The float money of the merchant's points that expired in the period (kept by the
    /// operator as breakage, except the share below).
    pub breakage_minor: i64,
    /// The share of breakage the merchant's terms give back to it, as a decimal from 0 to 1.
    pub breakage_share: String,
    pub breakage_share_minor: i64,
    /// The one amount to pay (positive) or collect (negative).
    pub net_minor: i64,
}

impl MerchantNet {
    /// The period's movement of the merchant's settlement account.
    pub fn settlement_movement_minor(&self) -> i64 {
        self.issuance_minor
            + self.issuance_reversed_minor
            + self.redemptions_minor
            + self.redemptions_reversed_minor
            + self.funding_minor
    }
}

/// The operator's side of the netting: the movement of its own money accounts in the period.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperatorNet {
    pub float_minor: i64,
    pub fees_minor: i64,
    pub rounding_minor: i64,
    pub cash_minor: i64,
    pub breakage_kept_minor: i64,
    pub net_minor: i64,
}

/// Points of `issuer`'s issue redeemed at `redeemer`, and the redemption money paid for them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MatrixCell {
    pub issuer: String,
    pub redeemer: String,
    pub points: i64,
    pub value_minor: i64,
}

/// The settlement of one period.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settlement {
    pub period: String,
    pub start_ms: i64,
    pub end_ms: i64,
    pub currency: String,
    /// The first and last sequence numbers of the period's entries (0 and 0 when it has none).
    pub first_sequence: u64,
    pub last_sequence: u64,
    /// The chain hash before the period's first entry and after its last, hex.
    pub previous_hash: String,
    pub head_hash: String,
    pub merchants: Vec<MerchantNet>,
    pub operator: OperatorNet,
    pub matrix: Vec<MatrixCell>,
}

/// Points of an issuer's lots that a redeeming entry consumed (from lot attribution).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attribution {
    pub entry_sequence: u64,
    pub issuer: String,
    pub points: i64,
}

/// Why a period's settlement could not be computed: the entries are not what a sound ledger
/// writes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SettlementError {
    #[error("entry {0} is not in the period's sequence (gap or accepted outside the period)")]
    NotContiguous(u64),
    #[error("entry {sequence} ({kind}) posts money to {account}, which its kind never does")]
    UnexpectedPosting {
        sequence: u64,
        kind: &'static str,
        account: String,
    },
    #[error(
        "redeeming entry {sequence} redeemed {points} points but lot attribution names {attributed}"
    )]
    AttributionMismatch {
        sequence: u64,
        points: i64,
        attributed: i64,
    },
    #[error("attribution names entry {0}, which is not a redemption of the period")]
    AttributionStray(u64),
    #[error("the breakage share {0:?} is not a decimal from 0 to 1")]
    Share(String),
    #[error("the netting does not sum to zero: merchants {merchants}, operator {operator}")]
    NotZero { merchants: i64, operator: i64 },
    #[error("amounts overflow")]
    Overflow,
}

/// Whether an entry is a redemption whose lot attribution the matrix splits.
pub fn is_redemption(kind: EntryKind) -> bool {
    matches!(
        kind,
        EntryKind::Burn | EntryKind::Capture | EntryKind::ExchangeOut
    )
}

/// The netting bucket a merchant settlement posting of an entry of `kind` belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Category {
    Issuance,
    IssuanceReversed,
    Redemption,
    RedemptionReversed,
    Funding,
}

impl Category {
    pub fn of(kind: EntryKind) -> Option<Category> {
        match kind {
            EntryKind::Earn | EntryKind::ExchangeIn => Some(Category::Issuance),
            EntryKind::EarnReversal => Some(Category::IssuanceReversed),
            EntryKind::Burn | EntryKind::Capture | EntryKind::ExchangeOut => {
                Some(Category::Redemption)
            }
            EntryKind::BurnReversal => Some(Category::RedemptionReversed),
            EntryKind::Funding => Some(Category::Funding),
            _ => None,
        }
    }

    pub fn code(self) -> &'static str {
        match self {
            Category::Issuance => "issuance",
            Category::IssuanceReversed => "issuance_reversed",
            Category::Redemption => "redemption",
            Category::RedemptionReversed => "redemption_reversed",
            Category::Funding => "funding",
        }
    }
}

/// The money a merchant posting of `entry` moves on `merchant`'s settlement and fee accounts.
fn merchant_amounts(entry: &Entry, merchant: &MerchantId, money: Asset) -> (i64, i64) {
    let mut amount = 0;
    let mut fee = 0;
    for posting in entry.postings.iter().filter(|p| p.asset == money) {
        match &posting.account {
            AccountKey::MerchantSettlement(owner) if owner == merchant => amount += posting.amount,
            AccountKey::MerchantFees(owner) if owner == merchant => fee += posting.amount,
            _ => {}
        }
    }
    (amount, fee)
}

/// The netting line of `merchant`, created empty on first use.
fn line<'a>(
    merchants: &'a mut BTreeMap<String, MerchantNet>,
    merchant: &MerchantId,
) -> &'a mut MerchantNet {
    merchants
        .entry(merchant.as_str().to_owned())
        .or_insert_with(|| MerchantNet {
            merchant_id: merchant.as_str().to_owned(),
            ..MerchantNet::default()
        })
}

/// Splits `value` over `weights` in proportion, rounding down and giving the remaining minor
/// units to the largest remainders (ties to the earlier weight), so the parts sum to `value`.
pub fn split_largest_remainder(value: i64, weights: &[i64]) -> Vec<i64> {
    let total: i128 = weights.iter().map(|&weight| i128::from(weight)).sum();
    if total == 0 {
        return vec![0; weights.len()];
    }
    let mut parts = Vec::with_capacity(weights.len());
    let mut remainders = Vec::with_capacity(weights.len());
    for (index, &weight) in weights.iter().enumerate() {
        let exact = i128::from(value) * i128::from(weight);
        parts.push(exact.div_euclid(total));
        remainders.push((exact.rem_euclid(total), index));
    }
    let left = i128::from(value) - parts.iter().sum::<i128>();
    remainders.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    for &(_, index) in remainders.iter().take(left as usize) {
        parts[index] += 1;
    }
    parts
        .into_iter()
        .map(|part| i64::try_from(part).expect("a part is at most the value"))
        .collect()
}

/// Computes the settlement of `period` from its entries (in sequence order, all of them),
/// the lot attribution of its redemptions, and each issuer's breakage share (merchants not
/// named share nothing). `previous_hash` is the chain hash before the period's first entry.
/// The same as feeding one page to a [`SettlementBuilder`].
pub fn compute(
    period: &Period,
    currency: CurrencyCode,
    previous_hash: [u8; 32],
    entries: &[Entry],
    attributions: &[Attribution],
    shares: &BTreeMap<String, Decimal>,
) -> Result<Settlement, SettlementError> {
    let mut builder = SettlementBuilder::new(period, currency, previous_hash);
    builder.add_page(entries, attributions)?;
    builder.finish(shares)
}

/// A period's settlement computed page by page, so that its memory is bounded by a page and
/// by the number of merchants, never by the period's size: each page of entries (in sequence
/// order, continuing the previous page) comes with the lot attribution of exactly its
/// redemptions, and is forgotten once added.
#[derive(Debug, Clone)]
pub struct SettlementBuilder {
    period: Period,
    currency: CurrencyCode,
    previous_hash: [u8; 32],
    merchants: BTreeMap<String, MerchantNet>,
    operator: OperatorNet,
    /// (issuer, redeemer) → (points, value in minor units).
    cells: BTreeMap<(String, String), (i64, i64)>,
    first_sequence: Option<u64>,
    last: Option<(u64, [u8; 32])>,
}

impl SettlementBuilder {
    /// A builder for `period`, whose first entry must continue `previous_hash`.
    pub fn new(period: &Period, currency: CurrencyCode, previous_hash: [u8; 32]) -> Self {
        SettlementBuilder {
            period: period.clone(),
            currency,
            previous_hash,
            merchants: BTreeMap::new(),
            operator: OperatorNet::default(),
            cells: BTreeMap::new(),
            first_sequence: None,
            last: None,
        }
    }

    /// Adds the next entries of the period and the attribution of their redemptions.
    pub fn add_page(
        &mut self,
        entries: &[Entry],
        attributions: &[Attribution],
    ) -> Result<(), SettlementError> {
        let money = Asset::Currency(self.currency);
        let mut redemptions: BTreeMap<u64, (String, i64, i64)> = BTreeMap::new();
        for entry in entries {
            let (expected_sequence, expected_previous) = match self.last {
                Some((sequence, hash)) => (Some(sequence + 1), hash),
                None => (None, self.previous_hash),
            };
            if expected_sequence.is_some_and(|expected| entry.sequence != expected)
                || entry.previous_hash != expected_previous
                || entry.accepted_at_ms < self.period.start_ms
                || entry.accepted_at_ms >= self.period.end_ms
            {
                return Err(SettlementError::NotContiguous(entry.sequence));
            }
            self.first_sequence.get_or_insert(entry.sequence);
            self.last = Some((entry.sequence, entry.hash));
            // Closing entries and payouts move money between a merchant's payable and its own
            // accounts or the operator's cash: settling what earlier periods left, not
            // business of this one.
            if matches!(entry.kind, EntryKind::Settlement | EntryKind::Payout) {
                continue;
            }
            self.add_postings(entry, money)?;
            if is_redemption(entry.kind)
                && let Some(origin) = &entry.origin
            {
                let (value, _) = merchant_amounts(entry, &origin.merchant_id, money);
                redemptions.insert(
                    entry.sequence,
                    (origin.merchant_id.as_str().to_owned(), entry.points, value),
                );
            }
        }
        add_to_matrix(&mut self.cells, &redemptions, attributions)
    }

    fn add_postings(&mut self, entry: &Entry, money: Asset) -> Result<(), SettlementError> {
        let merchants = &mut self.merchants;
        let operator = &mut self.operator;
        let category = Category::of(entry.kind);
        for posting in &entry.postings {
            let unexpected = || SettlementError::UnexpectedPosting {
                sequence: entry.sequence,
                kind: entry.kind.code(),
                account: posting.account.to_string(),
            };
            if posting.asset == Asset::Points {
                match &posting.account {
                    // Issued accounts are negative by the points put into circulation.
                    AccountKey::MerchantIssued(merchant) => {
                        line(merchants, merchant).points_issued -= posting.amount
                    }
                    AccountKey::MerchantRedeemed(merchant) => {
                        line(merchants, merchant).points_redeemed += posting.amount
                    }
                    _ => {}
                }
                continue;
            }
            if posting.asset != money {
                continue;
            }
            match &posting.account {
                AccountKey::MerchantSettlement(merchant) => {
                    let line = line(merchants, merchant);
                    match category {
                        Some(Category::Issuance) => line.issuance_minor += posting.amount,
                        Some(Category::IssuanceReversed) => {
                            line.issuance_reversed_minor += posting.amount
                        }
                        Some(Category::Redemption) => line.redemptions_minor += posting.amount,
                        Some(Category::RedemptionReversed) => {
                            line.redemptions_reversed_minor += posting.amount
                        }
                        Some(Category::Funding) => line.funding_minor += posting.amount,
                        None => return Err(unexpected()),
                    }
                }
                AccountKey::MerchantFees(merchant) => {
                    line(merchants, merchant).fees_minor += posting.amount
                }
                AccountKey::MerchantBreakage(merchant) => {
                    if entry.kind != EntryKind::Expiry {
                        return Err(unexpected());
                    }
                    line(merchants, merchant).breakage_minor += posting.amount;
                }
                AccountKey::MerchantPayable(_) => return Err(unexpected()),
                AccountKey::OperatorFloat => operator.float_minor += posting.amount,
                AccountKey::OperatorFees => operator.fees_minor += posting.amount,
                AccountKey::OperatorRounding => operator.rounding_minor += posting.amount,
                AccountKey::OperatorCash => operator.cash_minor += posting.amount,
                _ => return Err(unexpected()),
            }
        }
        Ok(())
    }

    /// The settlement of everything added, with each issuer's breakage share.
    pub fn finish(self, shares: &BTreeMap<String, Decimal>) -> Result<Settlement, SettlementError> {
        let SettlementBuilder {
            period,
            currency,
            previous_hash,
            mut merchants,
            mut operator,
            cells,
            first_sequence,
            last,
        } = self;
        for line in merchants.values_mut() {
            let share = shares
                .get(&line.merchant_id)
                .copied()
                .unwrap_or(Decimal::ZERO);
            if share.is_sign_negative() || share > Decimal::ONE {
                return Err(SettlementError::Share(share.to_string()));
            }
            line.breakage_share = share.normalize().to_string();
            line.breakage_share_minor = (Decimal::from(line.breakage_minor) * share)
                .floor()
                .to_i64()
                .ok_or(SettlementError::Overflow)?;
            line.net_minor =
                line.settlement_movement_minor() + line.fees_minor + line.breakage_share_minor;
            operator.breakage_kept_minor += line.breakage_minor - line.breakage_share_minor;
        }
        operator.net_minor = operator.float_minor
            + operator.fees_minor
            + operator.rounding_minor
            + operator.cash_minor
            + operator.breakage_kept_minor;
        let merchants_total: i64 = merchants.values().map(|line| line.net_minor).sum();
        if merchants_total + operator.net_minor != 0 {
            return Err(SettlementError::NotZero {
                merchants: merchants_total,
                operator: operator.net_minor,
            });
        }
        let (first_sequence, last_sequence, head) = match (first_sequence, last) {
            (Some(first), Some((last, hash))) => (first, last, hash),
            _ => (0, 0, previous_hash),
        };
        Ok(Settlement {
            period: period.label.clone(),
            start_ms: period.start_ms,
            end_ms: period.end_ms,
            currency: currency.as_str().to_owned(),
            first_sequence,
            last_sequence,
            previous_hash: hex::encode(previous_hash),
            head_hash: hex::encode(head),
            merchants: merchants.into_values().collect(),
            operator,
            matrix: matrix_cells(cells),
        })
    }
}

/// The matrix's cells, by issuer then redeemer.
fn matrix_cells(cells: BTreeMap<(String, String), (i64, i64)>) -> Vec<MatrixCell> {
    cells
        .into_iter()
        .map(|((issuer, redeemer), (points, value_minor))| MatrixCell {
            issuer,
            redeemer,
            points,
            value_minor,
        })
        .collect()
}

/// Adds each redemption's attribution to the matrix: `redemptions` maps a redeeming entry to
/// its redeemer, points and redemption money; `attributions` must be exactly theirs.
fn add_to_matrix(
    cells: &mut BTreeMap<(String, String), (i64, i64)>,
    redemptions: &BTreeMap<u64, (String, i64, i64)>,
    attributions: &[Attribution],
) -> Result<(), SettlementError> {
    let mut by_entry: BTreeMap<u64, Vec<&Attribution>> = BTreeMap::new();
    for attribution in attributions {
        if !redemptions.contains_key(&attribution.entry_sequence) {
            return Err(SettlementError::AttributionStray(
                attribution.entry_sequence,
            ));
        }
        by_entry
            .entry(attribution.entry_sequence)
            .or_default()
            .push(attribution);
    }
    for (sequence, (redeemer, points, value)) in redemptions {
        // Attribution is what the entry took out of lots (debt repaid by a capture's released
        // rest is recorded apart), so it names exactly the points redeemed.
        let pieces: Vec<(&str, i64)> = by_entry
            .get(sequence)
            .into_iter()
            .flatten()
            .map(|attribution| (attribution.issuer.as_str(), attribution.points))
            .collect();
        let attributed: i64 = pieces.iter().map(|(_, points)| points).sum();
        if attributed != *points {
            return Err(SettlementError::AttributionMismatch {
                sequence: *sequence,
                points: *points,
                attributed,
            });
        }
        let weights: Vec<i64> = pieces.iter().map(|(_, points)| *points).collect();
        for ((issuer, points), part) in pieces.iter().zip(split_largest_remainder(*value, &weights))
        {
            let cell = cells
                .entry(((*issuer).to_owned(), redeemer.clone()))
                .or_default();
            cell.0 += points;
            cell.1 += part;
        }
    }
    Ok(())
}

/// The postings of a period's closing entry: each merchant's net moves from its settlement
/// and fee accounts and its breakage share to its payable account. Empty when nothing moves.
pub fn closing_postings(settlement: &Settlement, currency: CurrencyCode) -> Vec<Posting> {
    let money = Asset::Currency(currency);
    let mut postings = Vec::new();
    for line in &settlement.merchants {
        let Ok(merchant) = MerchantId::new(&line.merchant_id) else {
            continue;
        };
        let legs = [
            (
                AccountKey::MerchantSettlement(merchant.clone()),
                -line.settlement_movement_minor(),
            ),
            (AccountKey::MerchantFees(merchant.clone()), -line.fees_minor),
            (
                AccountKey::MerchantBreakage(merchant.clone()),
                -line.breakage_share_minor,
            ),
            (AccountKey::MerchantPayable(merchant), line.net_minor),
        ];
        postings.extend(legs.into_iter().filter(|(_, amount)| *amount != 0).map(
            |(account, amount)| Posting {
                account,
                asset: money,
                amount,
            },
        ));
    }
    postings
}

/// One line of a merchant's statement: an entry of the period that moved its money.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatementLine {
    pub merchant_id: String,
    pub sequence: u64,
    pub accepted_at_ms: i64,
    pub kind: String,
    pub category: String,
    /// The merchant that submitted the entry (another one for a cross-merchant refund), and
    /// its transaction id; empty for operator entries.
    pub submitted_by: String,
    pub merchant_transaction_id: String,
    pub points: i64,
    pub amount_minor: i64,
    pub fee_minor: i64,
}

/// Every entry of the period that moved `merchant`'s settlement or fee account: the lines of
/// its statement, which sum to its net less its breakage share.
pub fn statement_lines(
    entries: &[Entry],
    merchant: &MerchantId,
    currency: CurrencyCode,
) -> Vec<StatementLine> {
    let money = Asset::Currency(currency);
    entries
        .iter()
        .filter(|entry| entry.kind != EntryKind::Settlement)
        .filter_map(|entry| {
            let touches = entry.postings.iter().any(|posting| {
                matches!(&posting.account,
                    AccountKey::MerchantSettlement(owner) | AccountKey::MerchantFees(owner)
                        if owner == merchant)
            });
            if !touches {
                return None;
            }
            let (amount_minor, fee_minor) = merchant_amounts(entry, merchant, money);
            Some(StatementLine {
                merchant_id: merchant.as_str().to_owned(),
                sequence: entry.sequence,
                accepted_at_ms: entry.accepted_at_ms,
                kind: entry.kind.code().to_owned(),
                category: Category::of(entry.kind)
                    .map_or("other", Category::code)
                    .to_owned(),
                submitted_by: entry
                    .origin
                    .as_ref()
                    .map(|origin| origin.merchant_id.as_str().to_owned())
                    .unwrap_or_default(),
                merchant_transaction_id: entry
                    .origin
                    .as_ref()
                    .map(|origin| origin.merchant_transaction_id.as_str().to_owned())
                    .unwrap_or_default(),
                points: entry.points,
                amount_minor,
                fee_minor,
            })
        })
        .collect()
}

/// Which way a payment goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PaymentDirection {
    /// The operator pays the merchant (what `RecordPayout` books).
    OperatorPays,
    /// The merchant pays the operator (booked as funding when it arrives).
    MerchantPays,
}

impl PaymentDirection {
    pub fn code(self) -> &'static str {
        match self {
            PaymentDirection::OperatorPays => "operator_pays",
            PaymentDirection::MerchantPays => "merchant_pays",
        }
    }
}

/// One line of a period's payments file: what is payable to a merchant, or owed by it, after
/// the period's closing entry, netted over every finalised period (one transfer a merchant).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payment {
    pub merchant_id: String,
    pub direction: PaymentDirection,
    /// Always positive: the transfer's amount.
    pub amount_minor: i64,
    /// The period's own net for the merchant (0 for a merchant paid only what earlier
    /// periods left payable).
    pub period_net_minor: i64,
    /// The payable balance after the closing entry: `amount_minor` with the sign of the
    /// direction (positive when the operator pays).
    pub payable_minor: i64,
    /// The end-to-end reference of the transfer: unique and at most 35 characters.
    pub end_to_end_id: String,
}

/// ISO 20022 limits identifiers such as `EndToEndId` to 35 characters.
pub const END_TO_END_ID_LEN_MAX: usize = 35;

/// The end-to-end reference of a merchant's payment for `period` (`YYYY-MM-DD`): the period
/// and the merchant id, `COAL-20261207-tenant-001`, when that fits in 35 characters. A longer
/// id is cut and numbered by `ordinal` (the payment's 1-based place in the period's file), as
/// `COAL-20261207-7+northwing-tenant-s`: merchant ids never contain `+`, so a numbered
/// reference never equals a whole one, and two numbered ones differ by their ordinal. Unique
/// within a period by construction, and across periods by the date.
pub fn end_to_end_id(period: &str, merchant_id: &str, ordinal: usize) -> String {
    let prefix = format!("COAL-{}-", period.replace('-', ""));
    let whole = format!("{prefix}{merchant_id}");
    if whole.len() <= END_TO_END_ID_LEN_MAX {
        return whole;
    }
    let numbered = format!("{prefix}{ordinal}+");
    let room = END_TO_END_ID_LEN_MAX.saturating_sub(numbered.len());
    // Merchant ids are ASCII, so cutting at a byte is cutting at a character.
    let cut: String = merchant_id.chars().take(room).collect();
    let id = format!("{numbered}{cut}");
    assert!(
        id.len() <= END_TO_END_ID_LEN_MAX,
        "an end-to-end id over 35 characters"
    );
    id
}

/// The payments of a finalised period: one line per merchant whose payable balance after the
/// closing entry (`payables`, from the ledger) is not zero, sorted by merchant id. A merchant
/// owed money for this period but owing more from before is not paid: it pays the
/// difference. Each payment to a merchant is exactly what `RecordPayout` accepts for it at
/// that point; what merchants owe is listed as `merchant_pays`.
pub fn payments(settlement: &Settlement, payables: &BTreeMap<String, i64>) -> Vec<Payment> {
    let nets: BTreeMap<&str, i64> = settlement
        .merchants
        .iter()
        .map(|net| (net.merchant_id.as_str(), net.net_minor))
        .collect();
    let mut lines = Vec::new();
    for (merchant_id, &payable_minor) in payables {
        if payable_minor == 0 {
            continue;
        }
        let ordinal = lines.len() + 1;
        lines.push(Payment {
            merchant_id: merchant_id.clone(),
            direction: if payable_minor > 0 {
                PaymentDirection::OperatorPays
            } else {
                PaymentDirection::MerchantPays
            },
            amount_minor: payable_minor.abs(),
            period_net_minor: nets.get(merchant_id.as_str()).copied().unwrap_or(0),
            payable_minor,
            end_to_end_id: end_to_end_id(&settlement.period, merchant_id, ordinal),
        });
    }
    let references: std::collections::BTreeSet<&str> = lines
        .iter()
        .map(|line| line.end_to_end_id.as_str())
        .collect();
    assert_eq!(references.len(), lines.len(), "end-to-end ids are unique");
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods_cut_at_the_local_cutoff() {
        let cutoff = Cutoff::parse("04:00", "+08:00").unwrap();
        let period = cutoff.period("2026-11-22").unwrap();
        // 2026-11-22T04:00+08:00 is 2026-11-21T20:00Z.
        assert_eq!(period.start_ms, 1_795_291_200_000);
        assert_eq!(period.end_ms - period.start_ms, DAY_MS);
        assert_eq!(cutoff.period_at(period.start_ms), period);
        assert_eq!(cutoff.period_at(period.end_ms - 1), period);
        assert_eq!(cutoff.period_at(period.end_ms).label, "2026-11-23");
        assert_eq!(cutoff.period_at(period.start_ms - 1).label, "2026-11-21");
        assert_eq!(cutoff.next(&period).start_ms, period.end_ms);
        assert_eq!(cutoff.describe(), "04:00 at UTC+08:00");
        assert_eq!(
            cutoff.local_time(period.start_ms + 1_234),
            "2026-11-22T04:00:01.234+08:00"
        );
        assert_eq!(cutoff.local_date(period.end_ms - 1), "2026-11-23");
        let west = Cutoff::parse("23:30", "-05:00").unwrap();
        let period = west.period("1969-12-31").unwrap();
        assert_eq!(west.period_at(period.start_ms), period);
        for bad in ["24:00", "4:00", "04:60", ""] {
            assert!(Cutoff::parse(bad, "+08:00").is_err(), "{bad}");
        }
        for bad in ["08:00", "+8:00", "+14:30", "+08"] {
            assert!(Cutoff::parse("04:00", bad).is_err(), "{bad}");
        }
        for bad in ["2026-13-01", "2026-11-31", "26-11-22", "2026-11-22x"] {
            assert!(cutoff.period(bad).is_err(), "{bad}");
        }
    }

    /// The matrix of `redemptions` alone, as cells.
    fn bilateral_matrix(
        redemptions: &BTreeMap<u64, (String, i64, i64)>,
        attributions: &[Attribution],
    ) -> Result<Vec<MatrixCell>, SettlementError> {
        let mut cells = BTreeMap::new();
        add_to_matrix(&mut cells, redemptions, attributions)?;
        Ok(matrix_cells(cells))
    }

    #[test]
    fn the_matrix_needs_attribution_of_exactly_the_points_redeemed() {
        let attribution = |entry_sequence: u64, issuer: &str, points: i64| Attribution {
            entry_sequence,
            issuer: issuer.to_owned(),
            points,
        };
        // Entry 7 redeemed 10 points at the cinema for 95 minor units.
        let redemptions: BTreeMap<u64, (String, i64, i64)> =
            [(7, ("cinema".to_owned(), 10, 95))].into();
        let cells = bilateral_matrix(
            &redemptions,
            &[attribution(7, "tenant-a", 7), attribution(7, "tenant-b", 3)],
        )
        .unwrap();
        let values: Vec<(&str, i64, i64)> = cells
            .iter()
            .map(|cell| (cell.issuer.as_str(), cell.points, cell.value_minor))
            .collect();
        assert_eq!(values, vec![("tenant-a", 7, 67), ("tenant-b", 3, 28)]);
        for wrong in [
            vec![attribution(7, "tenant-a", 7)],
            vec![attribution(7, "tenant-a", 7), attribution(7, "tenant-b", 4)],
        ] {
            assert!(matches!(
                bilateral_matrix(&redemptions, &wrong),
                Err(SettlementError::AttributionMismatch {
                    sequence: 7,
                    points: 10,
                    ..
                })
            ));
        }
        assert_eq!(
            bilateral_matrix(&redemptions, &[attribution(8, "tenant-a", 1)]),
            Err(SettlementError::AttributionStray(8))
        );
    }

    #[test]
    fn largest_remainder_splits_exactly() {
        assert_eq!(split_largest_remainder(100, &[1, 1, 1]), vec![34, 33, 33]);
        assert_eq!(
            split_largest_remainder(-100, &[1, 1, 1]),
            vec![-33, -33, -34]
        );
        assert_eq!(split_largest_remainder(7, &[0, 5]), vec![0, 7]);
        assert_eq!(split_largest_remainder(0, &[]), Vec::<i64>::new());
        for value in [-1001, -1, 0, 1, 999, 123_457] {
            let weights = [3, 7, 11, 1];
            assert_eq!(
                split_largest_remainder(value, &weights).iter().sum::<i64>(),
                value
            );
        }
    }

    #[test]
    fn end_to_end_ids_are_unique_and_short() {
        assert_eq!(
            end_to_end_id("2026-12-07", "tenant-001", 1),
            "COAL-20261207-tenant-001"
        );
        // 35 characters exactly still fit whole.
        let fits = "m".repeat(35 - "COAL-20261207-".len());
        assert_eq!(end_to_end_id("2026-12-07", &fits, 9).len(), 35);
        assert!(!end_to_end_id("2026-12-07", &fits, 9).contains('+'));
        // Two long ids that share their first 21 characters: cut the same, numbered apart.
        let first = end_to_end_id("2026-12-07", "northwing-tenant-shop-0001", 1);
        let second = end_to_end_id("2026-12-07", "northwing-tenant-shop-0002", 2);
        assert_ne!(first, second);
        assert!(first.len() <= 35 && second.len() <= 35, "{first} {second}");
        assert_eq!(first, "COAL-20261207-1+northwing-tenant-sh");
        // Many long ids in one period, and the largest ordinals, stay unique and short.
        let mut seen = std::collections::BTreeSet::new();
        for ordinal in 1..=20_000 {
            let id = end_to_end_id("2026-12-07", &"x".repeat(64), ordinal);
            assert!(id.len() <= 35, "{id}");
            assert!(seen.insert(id));
        }
    }

    #[test]
    fn payments_pay_what_is_payable_after_netting() {
        let net = |merchant_id: &str, net_minor: i64| MerchantNet {
            merchant_id: merchant_id.into(),
            points_issued: 0,
            points_redeemed: 0,
            issuance_minor: 0,
            issuance_reversed_minor: 0,
            redemptions_minor: 0,
            redemptions_reversed_minor: 0,
            fees_minor: 0,
            funding_minor: 0,
            breakage_minor: 0,
            breakage_share: "0".into(),
            breakage_share_minor: 0,
            net_minor,
        };
        let settlement = Settlement {
            period: "2027-12-01".into(),
            start_ms: 0,
            end_ms: 1,
            currency: "CNY".into(),
            first_sequence: 1,
            last_sequence: 1,
            previous_hash: String::new(),
            head_hash: String::new(),
            // A tenant's breakage share (+300) while it still owes 1,000 from before; a
            // cinema owed 500 this period and 200 from before; a restaurant with nothing.
            merchants: vec![net("cinema", 500), net("restaurant", 0), net("tenant", 300)],
            operator: OperatorNet::default(),
            matrix: Vec::new(),
        };
        let payables = BTreeMap::from([
            ("cinema".to_owned(), 700),
            ("restaurant".to_owned(), 0),
            ("tenant".to_owned(), -700),
        ]);
        let lines = payments(&settlement, &payables);
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].merchant_id, "cinema");
        assert_eq!(lines[0].direction, PaymentDirection::OperatorPays);
        assert_eq!(
            (lines[0].amount_minor, lines[0].period_net_minor),
            (700, 500)
        );
        assert_eq!(lines[1].merchant_id, "tenant");
        assert_eq!(lines[1].direction, PaymentDirection::MerchantPays);
        assert_eq!((lines[1].amount_minor, lines[1].payable_minor), (700, -700));
        assert_eq!(lines[1].period_net_minor, 300);
    }
}

//! A member's wallet as lots. A lot is the points one earn put into a wallet, with their
//! issuer, age and expiry; a burn takes from the lots that expire first, which also says
//! whose points were spent. Points that leave a wallet and may come back (a hold, a burn that
//! is later reversed) keep their lot attributes, so they return as they left.
//!
//! The negative-balance policy lives here: reversing an earn takes the earn's own lot first,
//! then the member's other lots, and whatever the member already spent becomes a debt. A
//! wallet in debt has no lots, its balance is minus the debt, burns and holds are refused
//! (nothing is available), and the next points that arrive repay the debt before they form a
//! lot. No point is created or lost: the reversed earn's points go back to the issuer in full.

use crate::ids::MerchantId;
use crate::journal::LotId;

/// A lot, or a piece of one taken out of a wallet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lot {
    pub lot_id: LotId,
    pub issuer: MerchantId,
    pub earned_at_ms: i64,
    pub expires_at_ms: Option<i64>,
    /// The terms version of the earn that issued the points: the price the issuer paid into
    /// the float for them, which expiry moves to breakage.
    pub issue_terms_version: Option<u32>,
    pub points: i64,
}

impl Lot {
    /// Burns take lots in this order: soonest expiry, then oldest, then by id.
    fn order_key(&self) -> (i64, i64, LotId) {
        (
            self.expires_at_ms.unwrap_or(i64::MAX),
            self.earned_at_ms,
            self.lot_id,
        )
    }
}

/// The points of one member, as lots and possibly a debt.
#[derive(Debug, Clone, Default)]
pub(crate) struct Wallet {
    /// In `Lot::order_key` order; every lot holds at least one point.
    pub lots: Vec<Lot>,
    /// Points owed after a reversed earn whose points were already spent. While positive,
    /// `lots` is empty.
    pub debt: i64,
}

impl Wallet {
    /// Points in lots minus the debt: the wallet account's balance.
    pub fn balance(&self) -> i64 {
        self.lots.iter().map(|lot| lot.points).sum::<i64>() - self.debt
    }

    /// Takes up to `points`, first from the lot `preferred` if given, then soonest-expiring
    /// first. Returns the pieces taken; their points sum to at most `points`.
    pub fn take(&mut self, points: i64, preferred: Option<LotId>) -> Vec<Lot> {
        let mut remaining = points;
        let mut taken = Vec::new();
        if let Some(position) =
            preferred.and_then(|id| self.lots.iter().position(|lot| lot.lot_id == id))
        {
            let piece = remaining.min(self.lots[position].points);
            self.lots[position].points -= piece;
            remaining -= piece;
            taken.push(Lot {
                points: piece,
                ..self.lots[position].clone()
            });
        }
        for lot in self.lots.iter_mut() {
            if remaining == 0 {
                break;
            }
            if lot.points == 0 {
                continue;
            }
            let piece = remaining.min(lot.points);
            lot.points -= piece;
            remaining -= piece;
            taken.push(Lot {
                points: piece,
                ..lot.clone()
            });
        }
        self.lots.retain(|lot| lot.points > 0);
        taken
    }

    /// Puts a lot into the wallet, or points back into the lot they were taken from. It first
    /// repays any debt; returns the points that did.
    pub fn add(&mut self, mut lot: Lot) -> i64 {
        let repaid = self.debt.min(lot.points);
        self.debt -= repaid;
        lot.points -= repaid;
        if let Some(existing) = self
            .lots
            .iter_mut()
            .find(|existing| existing.lot_id == lot.lot_id)
        {
            existing.points += lot.points;
        } else if lot.points > 0 {
            self.insert_in_order(lot);
        }
        repaid
    }

    /// Inserts a lot (as stored, or new) at its place in take order.
    pub fn insert_in_order(&mut self, lot: Lot) {
        let key = lot.order_key();
        let position = self.lots.partition_point(|other| other.order_key() <= key);
        self.lots.insert(position, lot);
    }

    /// Removes and returns every lot that has expired at `at_ms`.
    pub fn take_expired(&mut self, at_ms: i64) -> Vec<Lot> {
        let (expired, kept): (Vec<Lot>, Vec<Lot>) = std::mem::take(&mut self.lots)
            .into_iter()
            .partition(|lot| lot.expires_at_ms.is_some_and(|expires| expires <= at_ms));
        self.lots = kept;
        expired
    }

    /// Splits pieces taken earlier into the first `points` and the rest, in order.
    pub fn split(pieces: Vec<Lot>, points: i64) -> (Vec<Lot>, Vec<Lot>) {
        let mut first = Vec::new();
        let mut rest = Vec::new();
        let mut remaining = points;
        for mut piece in pieces {
            if remaining >= piece.points {
                remaining -= piece.points;
                first.push(piece);
            } else if remaining > 0 {
                let mut head = piece.clone();
                head.points = remaining;
                piece.points -= remaining;
                remaining = 0;
                first.push(head);
                rest.push(piece);
            } else {
                rest.push(piece);
            }
        }
        (first, rest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lot(sequence: u64, expires: Option<i64>, points: i64) -> Lot {
        Lot {
            lot_id: LotId {
                entry_sequence: sequence,
                index: 0,
            },
            issuer: MerchantId::new("tenant").unwrap(),
            earned_at_ms: sequence as i64,
            expires_at_ms: expires,
            issue_terms_version: Some(1),
            points,
        }
    }

    #[test]
    fn burns_take_the_soonest_expiring_lot_first() {
        let mut wallet = Wallet::default();
        wallet.add(lot(1, None, 100));
        wallet.add(lot(2, Some(50), 30));
        wallet.add(lot(3, Some(40), 20));
        let taken = wallet.take(60, None);
        let order: Vec<(u64, i64)> = taken
            .iter()
            .map(|piece| (piece.lot_id.entry_sequence, piece.points))
            .collect();
        assert_eq!(order, vec![(3, 20), (2, 30), (1, 10)]);
        assert_eq!(wallet.balance(), 90);
    }

    #[test]
    fn a_preferred_lot_goes_first_and_debt_is_repaid_by_the_next_lot() {
        let mut wallet = Wallet::default();
        wallet.add(lot(1, None, 100));
        wallet.add(lot(2, None, 50));
        let taken = wallet.take(
            120,
            Some(LotId {
                entry_sequence: 2,
                index: 0,
            }),
        );
        assert_eq!(taken.iter().map(|piece| piece.points).sum::<i64>(), 120);
        assert_eq!(taken[0].lot_id.entry_sequence, 2);
        let short = wallet.take(40, None);
        assert_eq!(short.iter().map(|piece| piece.points).sum::<i64>(), 30);
        wallet.debt += 10;
        assert_eq!(wallet.balance(), -10);
        assert_eq!(wallet.add(lot(3, None, 25)), 10);
        assert_eq!(wallet.balance(), 15);
        assert_eq!(wallet.debt, 0);
    }

    #[test]
    fn expired_lots_leave_and_splits_keep_order() {
        let mut wallet = Wallet::default();
        wallet.add(lot(1, Some(10), 5));
        wallet.add(lot(2, Some(20), 7));
        assert_eq!(wallet.take_expired(10).len(), 1);
        assert_eq!(wallet.balance(), 7);
        let (first, rest) = Wallet::split(vec![lot(1, None, 5), lot(2, None, 7)], 8);
        assert_eq!(
            first.iter().map(|piece| piece.points).collect::<Vec<_>>(),
            vec![5, 3]
        );
        assert_eq!(
            rest.iter().map(|piece| piece.points).collect::<Vec<_>>(),
            vec![4]
        );
    }
}

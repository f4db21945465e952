//! The core every entry passes through: sealing into the hash chain, accounts, and committing an entry to balances, wallets, lots, reversible remainders and open holds, the same path for live application and replay.

use super::*;

impl Ledger {
    /// Seals and commits an operator entry accepted at `at_ms`; returns its sequence.
    pub(super) fn commit_operator_entry(
        &mut self,
        entry: OperatorEntry,
        at_ms: i64,
        changes: &mut Changes,
    ) -> Result<u64, ReplayError> {
        let entry = self.seal(Entry {
            sequence: 0,
            kind: entry.kind,
            accepted_at_ms: at_ms,
            origin: None,
            member_id: entry.member_id,
            points: entry.points,
            spend_minor: None,
            member_points_after: entry.member_points_after,
            memo: entry.memo,
            terms_version: None,
            refers_to: entry.refers_to,
            expires_at_ms: None,
            earn_rule_version: None,
            postings: entry.postings,
            previous_hash: [0; 32],
            hash: [0; 32],
        });
        let sequence = entry.sequence;
        self.commit_entry(entry, Some(changes))?;
        Ok(sequence)
    }

    /// Gives an entry its sequence, link and hash at the current head.
    pub(super) fn seal(&self, mut entry: Entry) -> Entry {
        entry.sequence = self.head.sequence + 1;
        entry.previous_hash = self.head.hash;
        entry.hash = entry_hash(&entry);
        entry
    }

    pub(super) fn account_for(
        &mut self,
        key: &AccountKey,
        changes: Option<&mut Changes>,
    ) -> Result<AccountId, ReplayError> {
        if let Some(id) = self.accounts.get(key) {
            return Ok(*id);
        }
        // A member's accounts are known only while the member is in memory: creating one for
        // a member that is not would give a second id to an account that exists.
        if let Some(member_id) = key.member() {
            self.require_member(member_id)
                .map_err(|_| ReplayError::NotInMemory(member_id.to_string()))?;
        }
        match changes {
            Some(changes) => {
                let id = AccountId(self.next_account_id);
                self.restore_account(id, key.clone());
                changes.accounts.push((id, key.clone()));
                Ok(id)
            }
            None => Err(ReplayError::AccountMissing(key.to_string())),
        }
    }

    /// The single path by which an entry enters the state, live or on replay.
    pub(super) fn commit_entry(
        &mut self,
        entry: Entry,
        mut changes: Option<&mut Changes>,
    ) -> Result<(), ReplayError> {
        let expected = self.head.sequence + 1;
        if entry.sequence != expected {
            return Err(ChainError::SequenceGap {
                expected,
                found: entry.sequence,
            }
            .into());
        }
        if entry.previous_hash != self.head.hash {
            return Err(ChainError::BrokenLink {
                sequence: entry.sequence,
            }
            .into());
        }
        if entry_hash(&entry) != entry.hash {
            return Err(ChainError::HashMismatch {
                sequence: entry.sequence,
            }
            .into());
        }
        entry.check_balanced()?;
        self.touched = working_set::Touched::default();

        // Resolve every account before changing anything, so a failure leaves no trace.
        let mut account_ids = Vec::with_capacity(entry.postings.len());
        for posting in &entry.postings {
            account_ids.push(self.account_for(&posting.account, changes.as_deref_mut())?);
        }
        // An entry may post to one account more than once (a merchant's money leg and its
        // fee), so the new balances accumulate over the entry's postings.
        let mut new_balances: Vec<((AccountId, Asset), i64)> =
            Vec::with_capacity(entry.postings.len());
        for (posting, &account) in entry.postings.iter().zip(&account_ids) {
            let key = (account, posting.asset);
            let before = match new_balances.iter().find(|(existing, _)| *existing == key) {
                Some((_, balance)) => *balance,
                None => self.balance_of(account, posting.asset),
            };
            let balance = before
                .checked_add(posting.amount)
                .ok_or(ReplayError::Overflow(entry.sequence))?;
            match new_balances
                .iter_mut()
                .find(|(existing, _)| *existing == key)
            {
                Some((_, slot)) => *slot = balance,
                None => new_balances.push((key, balance)),
            }
        }

        // The entry's effect on lots, holds and reversible originals: derived from the entry
        // and the state alone, so replay repeats exactly what the live path did.
        let mut lots = Vec::new();
        let mut consumptions = Vec::new();
        let sequence = entry.sequence;
        let shape = || ReplayError::Shape(sequence);
        // Every entry but funding moves one member's wallet.
        let member = || entry.member_id.as_ref().ok_or_else(shape);
        match entry.kind {
            EntryKind::Earn | EntryKind::ExchangeIn => {
                let origin = entry.origin.as_ref().ok_or_else(shape)?;
                let lot = Lot {
                    lot_id: LotId {
                        entry_sequence: sequence,
                        index: 0,
                    },
                    issuer: origin.merchant_id.clone(),
                    earned_at_ms: origin.occurred_at_ms,
                    expires_at_ms: entry.expires_at_ms,
                    issue_terms_version: entry.terms_version,
                    points: entry.points,
                };
                self.put_lots(member()?, vec![lot], sequence, &mut lots, &mut consumptions);
                // An exchange is final: a mistaken one is undone by the opposite exchange.
                if entry.kind == EntryKind::Earn {
                    self.add_reversible(
                        sequence,
                        Reversible {
                            kind: EntryKind::Earn,
                            merchant_id: origin.merchant_id.clone(),
                            member_id: member()?.clone(),
                            points: entry.points,
                            reversed: 0,
                            terms_version: entry.terms_version.ok_or_else(shape)?,
                            taken: Vec::new(),
                        },
                    );
                }
            }
            EntryKind::ExchangeOut => {
                let taken =
                    self.take_lots(member()?, entry.points, sequence, None, &mut consumptions)?;
                if taken.iter().map(|lot| lot.points).sum::<i64>() != entry.points {
                    return Err(ReplayError::LotsShort(sequence));
                }
            }
            EntryKind::Burn | EntryKind::Hold => {
                let origin = entry.origin.as_ref().ok_or_else(shape)?;
                let terms_version = entry.terms_version.ok_or_else(shape)?;
                // Held points stay unspent: a hold takes them out of the wallet without
                // consuming their lots; the capture consumes what it redeems.
                let mut held_consumptions = Vec::new();
                let taken = self.take_lots(
                    member()?,
                    entry.points,
                    sequence,
                    None,
                    if entry.kind == EntryKind::Burn {
                        &mut consumptions
                    } else {
                        &mut held_consumptions
                    },
                )?;
                if taken.iter().map(|lot| lot.points).sum::<i64>() != entry.points {
                    return Err(ReplayError::LotsShort(sequence));
                }
                if entry.kind == EntryKind::Burn {
                    self.add_reversible(
                        sequence,
                        Reversible {
                            kind: EntryKind::Burn,
                            merchant_id: origin.merchant_id.clone(),
                            member_id: member()?.clone(),
                            points: entry.points,
                            reversed: 0,
                            terms_version,
                            taken,
                        },
                    );
                } else {
                    let expires_at_ms = entry.expires_at_ms.ok_or_else(shape)?;
                    self.touched.holds_opened.insert(sequence);
                    self.track_reference(sequence);
                    self.hold_deadlines.insert((expires_at_ms, sequence));
                    self.holds.insert(
                        sequence,
                        OpenHold {
                            merchant_id: origin.merchant_id.clone(),
                            member_id: member()?.clone(),
                            points: entry.points,
                            terms_version,
                            expires_at_ms,
                            taken,
                        },
                    );
                }
            }
            EntryKind::Capture | EntryKind::Void | EntryKind::HoldExpiry => {
                let hold_sequence = entry.refers_to.ok_or_else(shape)?;
                let hold = self.holds.remove(&hold_sequence).ok_or_else(shape)?;
                self.touched.holds_closed.insert(hold_sequence);
                self.hold_deadlines
                    .remove(&(hold.expires_at_ms, hold_sequence));
                let captured = if entry.kind == EntryKind::Capture {
                    entry.points
                } else {
                    0
                };
                if captured > hold.points
                    || (entry.kind != EntryKind::Capture && entry.points != hold.points)
                {
                    return Err(shape());
                }
                let (captured_lots, released) = Wallet::split(hold.taken, captured);
                consumptions.extend(captured_lots.iter().map(|lot| LotConsumption {
                    entry_sequence: sequence,
                    lot_id: lot.lot_id,
                    points: lot.points,
                    repaid: false,
                }));
                self.restore_lots(member()?, released, sequence, &mut consumptions);
                if entry.kind == EntryKind::Capture {
                    self.add_reversible(
                        sequence,
                        Reversible {
                            kind: EntryKind::Capture,
                            merchant_id: hold.merchant_id,
                            member_id: member()?.clone(),
                            points: captured,
                            reversed: 0,
                            terms_version: hold.terms_version,
                            taken: captured_lots,
                        },
                    );
                }
            }
            EntryKind::EarnReversal | EntryKind::BurnReversal => {
                let original_sequence = entry.refers_to.ok_or_else(shape)?;
                let original = self
                    .reversibles
                    .get_mut(&original_sequence)
                    .ok_or_else(shape)?;
                let reversing_earn = entry.kind == EntryKind::EarnReversal;
                if (original.kind == EntryKind::Earn) != reversing_earn
                    || original.reversed + entry.points > original.points
                {
                    return Err(shape());
                }
                let already = original.reversed;
                original.reversed += entry.points;
                if reversing_earn {
                    // The earn's own lot first, then the member's other lots; what the member
                    // already spent becomes a debt (see `lots`).
                    let taken = self.take_lots(
                        member()?,
                        entry.points,
                        sequence,
                        Some(LotId {
                            entry_sequence: original_sequence,
                            index: 0,
                        }),
                        &mut consumptions,
                    )?;
                    let short = entry.points - taken.iter().map(|lot| lot.points).sum::<i64>();
                    self.members.get_mut(member()?).ok_or_else(shape)?.debt += short;
                    if short != 0 {
                        self.touched.members.insert(member()?.clone());
                    }
                } else {
                    // The burn's pieces are given back last taken first, as they left.
                    let (_, not_yet_reversed_tail) = Wallet::split(
                        original.taken.clone(),
                        original.points - already - entry.points,
                    );
                    let (given_back, _) = Wallet::split(not_yet_reversed_tail, entry.points);
                    self.put_lots(
                        member()?,
                        given_back,
                        sequence,
                        &mut lots,
                        &mut consumptions,
                    );
                }
            }
            EntryKind::Expiry => {
                let wallet = self.members.get_mut(member()?).ok_or_else(shape)?;
                let expired = wallet.take_expired(entry.accepted_at_ms);
                self.touched.members.insert(member()?.clone());
                if expired.iter().map(|lot| lot.points).sum::<i64>() != entry.points {
                    return Err(shape());
                }
                consumptions.extend(expired.iter().map(|lot| LotConsumption {
                    entry_sequence: sequence,
                    lot_id: lot.lot_id,
                    points: lot.points,
                    repaid: false,
                }));
            }
            EntryKind::Funding | EntryKind::Settlement | EntryKind::Payout => {
                if entry.member_id.is_some() || entry.points != 0 {
                    return Err(shape());
                }
            }
            EntryKind::MemberMerge => {
                let source = entry
                    .postings
                    .iter()
                    .find_map(|posting| match &posting.account {
                        AccountKey::MemberWallet(wallet)
                            if Some(wallet) != entry.member_id.as_ref() =>
                        {
                            Some(wallet.clone())
                        }
                        _ => None,
                    })
                    .ok_or_else(shape)?;
                let moved =
                    self.take_lots(&source, entry.points, sequence, None, &mut consumptions)?;
                if moved.iter().map(|lot| lot.points).sum::<i64>() != entry.points {
                    return Err(ReplayError::LotsShort(sequence));
                }
                self.put_lots(member()?, moved, sequence, &mut lots, &mut consumptions);
            }
        }

        for (key, balance) in new_balances {
            self.balances.insert(key, balance);
        }
        if let Some((key, receipt)) = Receipt::of_entry(&entry) {
            self.remember_receipt(key, receipt);
        }
        self.head = ChainHead {
            sequence: entry.sequence,
            hash: entry.hash,
        };
        self.last_accepted_at_ms = self.last_accepted_at_ms.max(entry.accepted_at_ms);
        let wallet_after = entry
            .member_id
            .as_ref()
            .map_or(0, |member_id| self.wallet_points(member_id));
        if wallet_after != entry.member_points_after {
            return Err(ReplayError::WalletMismatch(entry.sequence));
        }
        let mut touched = std::mem::take(&mut self.touched);
        // A member whose accounts moved has a new stored state (a capture, say, changes the
        // held balance and no lot of the wallet).
        touched.members.extend(
            entry
                .postings
                .iter()
                .filter_map(|posting| posting.account.member().cloned()),
        );
        if let Some(changes) = changes {
            changes.touched.absorb(touched);
            for (posting, account) in entry.postings.iter().zip(account_ids) {
                changes.touched_balances.insert((account, posting.asset));
                changes.posting_account_ids.push(account);
            }
            changes.lots.extend(lots);
            changes.lot_consumptions.extend(consumptions);
            changes.entries.push(entry);
        }
        Ok(())
    }

    /// Records a new earn, burn or capture as reversible: in memory, in the working set's
    /// use order, and among the state rows of the batch.
    fn add_reversible(&mut self, sequence: u64, reversible: Reversible) {
        self.touched.new_reversibles.insert(sequence);
        self.track_reference(sequence);
        self.reversibles.insert(sequence, reversible);
    }

    /// Takes up to `points` from a member's lots (the `preferred` lot first, then those that
    /// expire first) and records which lots paid.
    pub(super) fn take_lots(
        &mut self,
        member_id: &MemberId,
        points: i64,
        sequence: u64,
        preferred: Option<LotId>,
        consumptions: &mut Vec<LotConsumption>,
    ) -> Result<Vec<Lot>, ReplayError> {
        let wallet = self
            .members
            .get_mut(member_id)
            .ok_or(ReplayError::LotsShort(sequence))?;
        let taken = wallet.take(points, preferred);
        self.touched.members.insert(member_id.clone());
        consumptions.extend(taken.iter().map(|piece| LotConsumption {
            entry_sequence: sequence,
            lot_id: piece.lot_id,
            points: piece.points,
            repaid: false,
        }));
        Ok(taken)
    }

    /// Puts pieces into the wallet under their own lot ids: held pieces go back into the lots
    /// they were taken from (they were never consumed). Any debt is repaid first, recorded as
    /// consumed by entry `sequence`.
    pub(super) fn restore_lots(
        &mut self,
        member_id: &MemberId,
        pieces: Vec<Lot>,
        sequence: u64,
        consumptions: &mut Vec<LotConsumption>,
    ) {
        let wallet = self.members.entry(member_id.clone()).or_default();
        for lot in pieces {
            let lot_id = lot.lot_id;
            self.touched.members.insert(member_id.clone());
            let repaid = wallet.add(lot);
            if repaid > 0 {
                self.touched.members.insert(member_id.clone());
                consumptions.push(LotConsumption {
                    entry_sequence: sequence,
                    lot_id,
                    points: repaid,
                    repaid: true,
                });
            }
        }
    }

    /// Puts lots (new, or pieces coming back) into a member's wallet as new lots of entry
    /// `sequence`, keeping issuer, age and expiry. Each first repays any debt; the repaid
    /// points are recorded as consumed by the same entry.
    pub(super) fn put_lots(
        &mut self,
        member_id: &MemberId,
        pieces: Vec<Lot>,
        sequence: u64,
        records: &mut Vec<LotRecord>,
        consumptions: &mut Vec<LotConsumption>,
    ) {
        let mut renumbered = Vec::with_capacity(pieces.len());
        for (index, mut lot) in pieces.into_iter().enumerate() {
            lot.lot_id = LotId {
                entry_sequence: sequence,
                index: u32::try_from(index).expect("an entry puts fewer than 4 billion lots"),
            };
            records.push(LotRecord {
                lot_id: lot.lot_id,
                member_id: member_id.clone(),
                issuer: lot.issuer.clone(),
                points: lot.points,
                earned_at_ms: lot.earned_at_ms,
                expires_at_ms: lot.expires_at_ms,
            });
            renumbered.push(lot);
        }
        self.restore_lots(member_id, renumbered, sequence, consumptions);
    }
}

//! The expiry run: expired lots to their issuers' breakage at the price they were bought at; the outstanding points by issuer.

use super::*;

impl Ledger {
    /// The expiry run: books every lot expired at `at_ms` to breakage, one operator entry per
    /// member, the points to the issuer's breakage account and the float money held against
    /// them (at the price the issuer paid) to the same account. Running it again books
    /// nothing, since expired lots are gone from the wallets.
    pub fn expire_lots(
        &mut self,
        at_ms: i64,
        changes: &mut Changes,
    ) -> Result<ExpirySummary, ApplyError> {
        let mut summary = ExpirySummary::default();
        // The wallets in memory with an expired lot. The writer loads every member the
        // database has with one before the run, so a working set finds the same members.
        let members: BTreeSet<MemberId> = self
            .members
            .iter()
            .filter(|(_, wallet)| {
                wallet
                    .lots
                    .iter()
                    .any(|lot| lot.expires_at_ms.is_some_and(|expires| expires <= at_ms))
            })
            .map(|(member_id, _)| member_id.clone())
            .collect();
        for member_id in members {
            let Some(wallet) = self.members.get(&member_id) else {
                continue;
            };
            let mut points_by_issuer: BTreeMap<MerchantId, i64> = BTreeMap::new();
            let mut points_by_price: BTreeMap<(MerchantId, Option<u32>), i64> = BTreeMap::new();
            for lot in &wallet.lots {
                if lot.expires_at_ms.is_some_and(|expires| expires <= at_ms) {
                    *points_by_issuer.entry(lot.issuer.clone()).or_default() += lot.points;
                    *points_by_price
                        .entry((lot.issuer.clone(), lot.issue_terms_version))
                        .or_default() += lot.points;
                }
            }
            let points: i64 = points_by_issuer.values().sum();
            if points == 0 {
                continue;
            }
            let mut postings = vec![Posting {
                account: AccountKey::MemberWallet(member_id.clone()),
                asset: Asset::Points,
                amount: -points,
            }];
            for (issuer, issued) in &points_by_issuer {
                postings.push(Posting {
                    account: AccountKey::MerchantBreakage(issuer.clone()),
                    asset: Asset::Points,
                    amount: *issued,
                });
            }
            let mut money: BTreeMap<AccountKey, i64> = BTreeMap::new();
            for ((issuer, version), expired) in points_by_price {
                let terms = self.recorded_terms(&issuer, version)?;
                let (charged, paid) = money_leg(expired, terms.issue_price_minor_per_point)
                    .ok_or_else(|| ApplyError::InvariantViolated("money leg overflow".into()))?;
                *money.entry(AccountKey::OperatorFloat).or_default() -= charged;
                *money
                    .entry(AccountKey::MerchantBreakage(issuer))
                    .or_default() += paid;
                *money.entry(AccountKey::OperatorRounding).or_default() += charged - paid;
                summary.money_minor += paid;
            }
            let currency = Asset::Currency(self.currency);
            postings.extend(money.into_iter().filter(|(_, amount)| *amount != 0).map(
                |(account, amount)| Posting {
                    account,
                    asset: currency,
                    amount,
                },
            ));
            let member_points_after = checked_wallet(self.wallet_points(&member_id), -points)?;
            let entry = OperatorEntry {
                kind: EntryKind::Expiry,
                member_id: Some(member_id),
                points,
                member_points_after,
                memo: format!("points expired by {at_ms} ms"),
                refers_to: None,
                postings,
            };
            summary.entries += 1;
            summary.points += points;
            self.commit_operator_entry(entry, at_ms, changes)
                .map_err(|error| ApplyError::InvariantViolated(error.to_string()))?;
        }
        Ok(summary)
    }

    /// Outstanding points per issuer, from lot attribution (held points included).
    pub fn outstanding_by_issuer(&self) -> HashMap<MerchantId, i64> {
        let mut outstanding = HashMap::new();
        let held = self.holds.values().flat_map(|hold| hold.taken.iter());
        for lot in self
            .members
            .values()
            .flat_map(|wallet| wallet.lots.iter())
            .chain(held)
        {
            *outstanding.entry(lot.issuer.clone()).or_insert(0) += lot.points;
        }
        outstanding
    }
}

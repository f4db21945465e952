//! Enrolment, aliases and member merges, and resolving an id to the member it stands for.

use super::*;

impl Ledger {
    /// Follows aliases to the member id that owns the wallet.
    pub fn resolve_member(&self, member_id: &MemberId) -> MemberId {
        let mut current = member_id;
        for _ in 0..ALIAS_DEPTH_MAX {
            match self.aliases.get(current) {
                Some(target) => current = target,
                None => break,
            }
        }
        current.clone()
    }

    /// Follows aliases like `resolve_member`, requiring every id on the way to be in memory.
    pub(super) fn resolve_loaded(&self, member_id: &MemberId) -> Result<MemberId, ApplyError> {
        let mut current = member_id;
        for _ in 0..ALIAS_DEPTH_MAX {
            self.require_member(current)?;
            match self.aliases.get(current) {
                Some(target) => current = target,
                None => break,
            }
        }
        self.require_member(current)?;
        Ok(current.clone())
    }

    /// Points in the member's wallet (after aliases).
    pub fn member_points(&self, member_id: &MemberId) -> i64 {
        self.wallet_points(&self.resolve_member(member_id))
    }

    /// Points in the wallet of exactly this member id, without following aliases.
    pub(super) fn wallet_points(&self, member_id: &MemberId) -> i64 {
        self.account_id(&AccountKey::MemberWallet(member_id.clone()))
            .map(|account| self.balance_of(account, Asset::Points))
            .unwrap_or(0)
    }

    /// Enrolls a member. Enrolling an enrolled member changes nothing and returns false.
    pub fn enroll_member(
        &mut self,
        member_id: MemberId,
        tier: Option<String>,
        enrolled_at_ms: i64,
        changes: &mut Changes,
    ) -> Result<bool, MemberError> {
        self.require_member(&member_id)
            .map_err(|error| MemberError::InvariantViolated(error.to_string()))?;
        if self.members.contains_key(&member_id) {
            return Ok(false);
        }
        if self.aliases.contains_key(&member_id) {
            return Err(MemberError::AlreadyAliased(member_id));
        }
        self.members.insert(member_id.clone(), Wallet::default());
        if let Some(tier) = &tier {
            self.member_tiers.insert(member_id.clone(), tier.clone());
        }
        changes.touched.members.insert(member_id.clone());
        changes.members.push(MemberRecord {
            member_id,
            tier,
            enrolled_at_ms,
        });
        Ok(true)
    }

    /// Makes `alias` stand for `target` from now on. When `alias` is an enrolled member with
    /// points, a member-merge entry moves its wallet and lots (issuer and age kept) to `target`.
    pub fn alias_member(
        &mut self,
        alias: MemberId,
        target: MemberId,
        at_ms: i64,
        changes: &mut Changes,
    ) -> Result<Option<Receipt>, MemberError> {
        let loaded = |error: ApplyError| MemberError::InvariantViolated(error.to_string());
        self.require_member(&alias).map_err(loaded)?;
        if self.aliases.contains_key(&alias) {
            return Err(MemberError::AlreadyAliased(alias));
        }
        let target = self.resolve_loaded(&target).map_err(loaded)?;
        if !self.members.contains_key(&target) {
            return Err(MemberError::Unknown(target));
        }
        if alias == target {
            return Err(MemberError::SelfAlias);
        }
        let moved_points = self.wallet_points(&alias);
        if moved_points < 0 {
            return Err(MemberError::InDebt {
                member_id: alias,
                points: -moved_points,
            });
        }
        let mut receipt = None;
        if moved_points > 0 {
            let member_points_after = self.wallet_points(&target) + moved_points;
            let entry = OperatorEntry {
                kind: EntryKind::MemberMerge,
                member_id: Some(target.clone()),
                points: moved_points,
                member_points_after,
                memo: format!("member {alias} merged into {target}"),
                refers_to: None,
                postings: vec![
                    Posting {
                        account: AccountKey::MemberWallet(alias.clone()),
                        asset: Asset::Points,
                        amount: -moved_points,
                    },
                    Posting {
                        account: AccountKey::MemberWallet(target.clone()),
                        asset: Asset::Points,
                        amount: moved_points,
                    },
                ],
            };
            let sequence = self
                .commit_operator_entry(entry, at_ms, changes)
                .map_err(|error| MemberError::InvariantViolated(error.to_string()))?;
            receipt = Some(Receipt {
                sequence,
                occurred_at_ms: at_ms,
                kind: EntryKind::MemberMerge,
                accepted_at_ms: at_ms,
                body_hash: [0; 32],
                member_id: target.clone(),
                points: moved_points,
                member_points_after,
            });
        }
        self.members.remove(&alias);
        self.aliases.insert(alias.clone(), target.clone());
        changes.touched.members.insert(alias.clone());
        changes.touched.members.insert(target.clone());
        changes.aliases.push(AliasRecord {
            alias,
            target,
            created_at_ms: at_ms,
        });
        Ok(receipt)
    }

    /// Recovery: restores an enrolled member and its tier.
    pub fn restore_member(&mut self, member_id: MemberId, tier: Option<String>) {
        if let Some(tier) = tier {
            self.member_tiers.insert(member_id.clone(), tier);
        }
        self.members.entry(member_id).or_default();
    }

    /// Recovery: restores an alias; aliases are restored after members and before entries.
    pub fn restore_alias(&mut self, alias: MemberId, target: MemberId) {
        self.aliases.insert(alias, target);
    }
}

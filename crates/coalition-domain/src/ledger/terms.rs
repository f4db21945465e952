//! Merchants' versioned terms and the alliance's versioned earn rules: adding a version, the version in force at a time, and the points an earn by spend computes.

use super::*;

impl Ledger {
    /// The terms of `merchant_id` in force at `at_ms`.
    pub fn terms_at(&self, merchant_id: &MerchantId, at_ms: i64) -> Option<&MerchantTerms> {
        self.terms
            .get(merchant_id)?
            .iter()
            .rev()
            .find(|terms| terms.effective_from_ms <= at_ms)
    }

    /// Every version of a merchant's terms, oldest first.
    pub fn merchant_terms(&self, merchant_id: &MerchantId) -> &[MerchantTerms] {
        self.terms.get(merchant_id).map_or(&[], Vec::as_slice)
    }

    /// Adds the next version of a merchant's terms, effective from `effective_from_ms`, or,
    /// when `None`, from the millisecond after the last accepted entry (so that every entry
    /// is priced by the terms in force at its acceptance time).
    pub fn add_terms(
        &mut self,
        merchant_id: MerchantId,
        effective_from_ms: Option<i64>,
        prices: Prices,
        now_ms: i64,
        changes: &mut Changes,
    ) -> Result<MerchantTerms, TermsError> {
        let Prices {
            issue_price_minor_per_point,
            redeem_price_minor_per_point,
            fee_minor_per_point,
            cross_merchant_reversals,
            credit_limit_minor,
            earn_points_per_minor,
            exchange,
            breakage_share,
        } = prices;
        if breakage_share.is_sign_negative()
            || breakage_share > Decimal::ONE
            || breakage_share.scale() > crate::terms::PRICE_SCALE_MAX
        {
            return Err(TermsError::ShareInvalid(breakage_share));
        }
        if let Some((unit, rate)) = exchange {
            check_factor("the exchange rate", rate)?;
            if let Some(owner) = self.terms.iter().find_map(|(owner, versions)| {
                (owner != &merchant_id
                    && versions
                        .iter()
                        .any(|terms| terms.exchange.is_some_and(|(taken, _)| taken == unit)))
                .then(|| owner.clone())
            }) {
                return Err(TermsError::UnitTaken {
                    unit: unit.as_str().to_owned(),
                    owner,
                });
            }
        }
        if let Some(rate) = earn_points_per_minor {
            check_factor("the base earn rate", rate)?;
        }
        check_price("issue price", issue_price_minor_per_point)?;
        check_price("redeem price", redeem_price_minor_per_point)?;
        check_price("fee", fee_minor_per_point)?;
        if let Some(limit) = credit_limit_minor
            && limit < 0
        {
            return Err(TermsError::CreditLimitInvalid(limit));
        }
        let previous_effective_ms = self
            .terms
            .get(&merchant_id)
            .and_then(|versions| versions.last())
            .map_or(i64::MIN, |previous| previous.effective_from_ms);
        let effective_from_ms =
            self.effective_from(effective_from_ms, previous_effective_ms, now_ms)?;
        let versions = self.terms.entry(merchant_id.clone()).or_default();
        if let Some(previous) = versions.last()
            && effective_from_ms <= previous.effective_from_ms
        {
            return Err(TermsError::NotAfterPrevious {
                merchant_id,
                effective_from_ms,
                version: previous.version,
                previous_ms: previous.effective_from_ms,
            });
        }
        let terms = MerchantTerms {
            merchant_id,
            version: u32::try_from(versions.len() + 1).expect("fewer than 4 billion versions"),
            effective_from_ms,
            issue_price_minor_per_point,
            redeem_price_minor_per_point,
            fee_minor_per_point,
            cross_merchant_reversals,
            credit_limit_minor,
            earn_points_per_minor,
            exchange,
            breakage_share,
        };
        versions.push(terms.clone());
        changes.terms.push(terms.clone());
        Ok(terms)
    }

    /// The earn rules in force at `at_ms`.
    pub fn earn_rules_at(&self, at_ms: i64) -> Option<&EarnRules> {
        self.earn_rules
            .iter()
            .rev()
            .find(|rules| rules.effective_from_ms <= at_ms)
    }

    /// Adds the next version of the alliance's earn rules, effective from `effective_from_ms`
    /// or, when `None`, from the millisecond after the last accepted entry.
    pub fn add_earn_rules(
        &mut self,
        effective_from_ms: Option<i64>,
        tier_multipliers: BTreeMap<String, Decimal>,
        campaigns: Vec<Campaign>,
        now_ms: i64,
        changes: &mut Changes,
    ) -> Result<EarnRules, TermsError> {
        for multiplier in tier_multipliers.values() {
            check_factor("a tier multiplier", *multiplier)?;
        }
        for campaign in &campaigns {
            check_factor("a campaign multiplier", campaign.multiplier)?;
            let problem = if campaign.name.trim().is_empty() || campaign.name.len() > 128 {
                Some("a campaign needs a name of at most 128 bytes")
            } else if campaign.starts_at_ms >= campaign.ends_at_ms {
                Some("it must start before it ends")
            } else {
                None
            };
            if let Some(problem) = problem {
                return Err(TermsError::CampaignInvalid {
                    name: campaign.name.clone(),
                    problem: problem.into(),
                });
            }
        }
        let previous_effective_ms = self
            .earn_rules
            .last()
            .map_or(i64::MIN, |previous| previous.effective_from_ms);
        let effective_from_ms =
            self.effective_from(effective_from_ms, previous_effective_ms, now_ms)?;
        if let Some(previous) = self.earn_rules.last()
            && effective_from_ms <= previous.effective_from_ms
        {
            return Err(TermsError::RulesNotAfterPrevious {
                effective_from_ms,
                version: previous.version,
                previous_ms: previous.effective_from_ms,
            });
        }
        let rules = EarnRules {
            version: u32::try_from(self.earn_rules.len() + 1)
                .expect("fewer than 4 billion versions"),
            effective_from_ms,
            tier_multipliers,
            campaigns,
        };
        self.earn_rules.push(rules.clone());
        changes.earn_rules.push(rules.clone());
        Ok(rules)
    }

    /// When a new version of terms or rules starts: as requested, or "from now", meaning
    /// after the last accepted entry and after the previous version. Never at or before the
    /// last accepted entry, which would reprice what is booked.
    pub(super) fn effective_from(
        &self,
        requested_ms: Option<i64>,
        previous_effective_ms: i64,
        now_ms: i64,
    ) -> Result<i64, TermsError> {
        let effective_from_ms = requested_ms.unwrap_or_else(|| {
            now_ms
                .max(self.last_accepted_at_ms.saturating_add(1))
                .max(previous_effective_ms.saturating_add(1))
        });
        if effective_from_ms <= self.last_accepted_at_ms {
            return Err(TermsError::EffectiveInThePast {
                effective_from_ms,
                last_accepted_at_ms: self.last_accepted_at_ms,
            });
        }
        Ok(effective_from_ms)
    }

    /// Recovery: restores one stored version of the earn rules (in version order).
    pub fn restore_earn_rules(&mut self, rules: EarnRules) {
        self.earn_rules.push(rules);
    }

    /// Recovery: restores one stored version of terms (in version order).
    pub fn restore_terms(&mut self, terms: MerchantTerms) {
        self.terms
            .entry(terms.merchant_id.clone())
            .or_default()
            .push(terms);
    }

    /// The points an earn by spend earns: spend × the merchant's base rate × the earn rules'
    /// multiplier for the member's tier and the campaigns running when it happened, rounded
    /// down; and the rules' version, if any rules are in force.
    pub(super) fn points_for_spend(
        &self,
        submission: &Submission,
        member_id: &MemberId,
        terms: &MerchantTerms,
        accepted_at_ms: i64,
    ) -> Result<(i64, Option<u32>), ApplyError> {
        let merchant = &submission.merchant_id;
        let spend = submission.spend_minor.unwrap_or(0);
        let base = terms.earn_points_per_minor.ok_or_else(|| {
            rejected(
                RejectionReason::EarnRuleMissing,
                format!(
                    "merchant {merchant} has no base earn rate in its terms; send the points to award"
                ),
            )
        })?;
        let rules = self.earn_rules_at(accepted_at_ms);
        let multiplier = rules.map_or(Decimal::ONE, |rules| {
            rules.multiplier(
                self.member_tiers.get(member_id).map(String::as_str),
                merchant,
                submission.occurred_at_ms,
            )
        });
        match points_for_spend(spend, base, multiplier) {
            Some(points) if points > self.policy.points_per_transaction_max => {
                Err(self.above_limit(points))
            }
            Some(points) if points > 0 => Ok((points, rules.map(|rules| rules.version))),
            _ => Err(rejected(
                RejectionReason::SpendEarnsNoPoints,
                format!(
                    "a spend of {spend} minor units earns no whole point at {base} points per minor unit times {multiplier}"
                ),
            )),
        }
    }

    /// The terms that price a new transaction of `merchant_id` accepted at `at_ms`.
    pub(super) fn terms_in_force(
        &self,
        merchant_id: &MerchantId,
        at_ms: i64,
    ) -> Result<&MerchantTerms, ApplyError> {
        self.terms_at(merchant_id, at_ms).ok_or_else(|| {
            rejected(
                RejectionReason::TermsMissing,
                format!(
                    "merchant {merchant_id} has no terms in force, so its points have no price"
                ),
            )
        })
    }

    /// A version of terms recorded on a booked entry or lot; terms are insert-only, so a
    /// missing one is a broken invariant.
    pub(super) fn recorded_terms(
        &self,
        merchant_id: &MerchantId,
        version: Option<u32>,
    ) -> Result<&MerchantTerms, ApplyError> {
        version
            .and_then(|version| {
                self.terms
                    .get(merchant_id)?
                    .get((version as usize).checked_sub(1)?)
            })
            .ok_or_else(|| {
                ApplyError::InvariantViolated(format!(
                    "terms version {version:?} of merchant {merchant_id} is recorded but missing"
                ))
            })
    }
}

//! The operator's admin service, and the admin-token check shared with the query service.

use std::sync::Arc;

use coalition_domain::reconciliation::{Malformed, MerchantRow};
use coalition_domain::registry::RegistryError;
use coalition_domain::signing;
use coalition_domain::{KeyId, MemberError, MemberId, MerchantId, MerchantKey, MerchantStatus};
use coalition_domain::{Prices, TermsError, UnitCode};
use coalition_engine::{AdminError, Engine, NewMerchant};
use rust_decimal::Decimal;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status};

use crate::convert;
use crate::pb;
use crate::pb::admin_service_server::AdminService;
use crate::server::ServerConfig;

/// The most differences a reconciliation response lists; the rest are counted. Ten thousand
/// differences make about a megabyte, within gRPC's default 4 MiB. Malformed rows are listed
/// as the summary keeps them (its first `MALFORMED_LISTED`).
const RECONCILE_LISTED_MAX: usize = 10_000;

/// True when the metadata carries the configured admin token. Without a configured token no
/// call is an admin call.
pub fn is_admin(metadata: &MetadataMap, config: &ServerConfig) -> bool {
    let Some(token) = config.admin_token.as_deref() else {
        return false;
    };
    let Some(value) = metadata
        .get("authorization")
        .and_then(|value| value.to_str().ok())
    else {
        return false;
    };
    // The scheme is case-insensitive (RFC 7235, section 2.1, which RFC 6750 follows).
    let Some((scheme, presented)) = value.split_once(' ') else {
        return false;
    };
    if !scheme.eq_ignore_ascii_case("bearer") {
        return false;
    }
    let presented = presented.trim_start_matches(' ');
    // Compare in time independent of where the first difference is.
    presented.len() == token.len()
        && presented
            .bytes()
            .zip(token.bytes())
            .fold(0u8, |difference, (a, b)| difference | (a ^ b))
            == 0
}

fn require_admin(metadata: &MetadataMap, config: &ServerConfig) -> Result<(), Status> {
    if is_admin(metadata, config) {
        Ok(())
    } else if config.admin_token.is_none() {
        Err(Status::permission_denied(
            "admin calls are disabled: the server has no admin_token configured",
        ))
    } else {
        Err(Status::unauthenticated(
            "admin calls need the metadata 'authorization: Bearer TOKEN' with the configured admin token",
        ))
    }
}

pub fn admin_status(error: AdminError) -> Status {
    match &error {
        AdminError::Terms(
            TermsError::EffectiveInThePast { .. }
            | TermsError::NotAfterPrevious { .. }
            | TermsError::RulesNotAfterPrevious { .. }
            | TermsError::UnitTaken { .. },
        ) => Status::failed_precondition(error.to_string()),
        AdminError::Terms(
            TermsError::PriceInvalid { .. }
            | TermsError::CreditLimitInvalid(_)
            | TermsError::ShareInvalid(_)
            | TermsError::FactorInvalid { .. }
            | TermsError::CampaignInvalid { .. },
        ) => Status::invalid_argument(error.to_string()),
        AdminError::Registry(
            RegistryError::MerchantExists(_)
            | RegistryError::KeyExists { .. }
            | RegistryError::PublicKeyInUse { .. },
        ) => Status::already_exists(error.to_string()),
        AdminError::Registry(
            RegistryError::MerchantUnknown(_) | RegistryError::KeyUnknown { .. },
        )
        | AdminError::Member(MemberError::Unknown(_)) => Status::not_found(error.to_string()),
        AdminError::Registry(RegistryError::KeyAlreadyRevoked { .. })
        | AdminError::Member(MemberError::AlreadyAliased(_) | MemberError::InDebt { .. }) => {
            Status::failed_precondition(error.to_string())
        }
        AdminError::Registry(_) | AdminError::Member(_) | AdminError::Invalid { .. } => {
            Status::invalid_argument(error.to_string())
        }
        AdminError::Period(_) => Status::invalid_argument(error.to_string()),
        AdminError::PeriodOpen { .. } | AdminError::PayoutExceedsPayable { .. } => {
            Status::failed_precondition(error.to_string())
        }
        AdminError::Settlement { .. } => Status::internal(error.to_string()),
        AdminError::Engine(engine) => convert::engine_status(engine.clone()),
    }
}

fn invalid(field: &'static str, message: impl ToString) -> Status {
    Status::invalid_argument(format!("invalid {field}: {}", message.to_string()))
}

pub fn merchant_id(text: String) -> Result<MerchantId, Status> {
    MerchantId::new(text).map_err(|error| invalid("merchant_id", error))
}

fn member_id(field: &'static str, text: String) -> Result<MemberId, Status> {
    MemberId::new(text).map_err(|error| invalid(field, error))
}

fn merchant_key(key: pb::MerchantKey, now_ms: i64) -> Result<MerchantKey, Status> {
    Ok(MerchantKey {
        key_id: KeyId::new(key.key_id).map_err(|error| invalid("key_id", error))?,
        public_key: signing::parse_public_key(&key.public_key)
            .map_err(|error| invalid("public_key", error))?,
        valid_from_ms: if key.valid_from_unix_ms == 0 {
            now_ms
        } else {
            key.valid_from_unix_ms
        },
        valid_until_ms: key.valid_until_unix_ms,
        revoked_at_ms: None,
    })
}

/// The largest piece of a proof document one `ProveEntries` message carries.
const PROOF_PIECE_BYTES: usize = 1 << 20;

/// Makes inclusion proofs from signed exports for `ProveEntries`. The export format and its
/// proofs belong to the binary's crate, which gives the server one of these.
pub trait Prover: Send + Sync + 'static {
    /// The proof document asked for, and how many entries it proves.
    fn prove(&self, request: &pb::ProveEntriesRequest) -> Result<(Vec<u8>, u32), Status>;
}

impl std::fmt::Debug for dyn Prover {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Prover")
    }
}

pub struct Admin {
    pub engine: Engine,
    pub config: Arc<ServerConfig>,
}

#[tonic::async_trait]
impl AdminService for Admin {
    async fn register_merchant(
        &self,
        request: Request<pb::RegisterMerchantRequest>,
    ) -> Result<Response<pb::RegisterMerchantResponse>, Status> {
        require_admin(request.metadata(), &self.config)?;
        let request = request.into_inner();
        let now_ms = self.engine.now_ms();
        let merchant = NewMerchant {
            merchant_id: merchant_id(request.merchant_id)?,
            name: request.name,
            category: convert::merchant_category(request.category)?,
            keys: request
                .keys
                .into_iter()
                .map(|key| merchant_key(key, now_ms))
                .collect::<Result<_, _>>()?,
        };
        let merchant = self
            .engine
            .register_merchant(merchant)
            .await
            .map_err(admin_status)?;
        tracing::info!(merchant_id = %merchant.merchant_id, "merchant registered");
        Ok(Response::new(pb::RegisterMerchantResponse {
            registered_at_unix_ms: merchant.registered_at_ms,
        }))
    }

    async fn add_merchant_key(
        &self,
        request: Request<pb::AddMerchantKeyRequest>,
    ) -> Result<Response<pb::AddMerchantKeyResponse>, Status> {
        require_admin(request.metadata(), &self.config)?;
        let request = request.into_inner();
        let key = request
            .key
            .ok_or_else(|| Status::invalid_argument("key is required"))?;
        let key = merchant_key(key, self.engine.now_ms())?;
        self.engine
            .add_merchant_key(&merchant_id(request.merchant_id)?, key)
            .await
            .map_err(admin_status)?;
        Ok(Response::new(pb::AddMerchantKeyResponse {}))
    }

    async fn revoke_merchant_key(
        &self,
        request: Request<pb::RevokeMerchantKeyRequest>,
    ) -> Result<Response<pb::RevokeMerchantKeyResponse>, Status> {
        require_admin(request.metadata(), &self.config)?;
        let request = request.into_inner();
        let key_id = KeyId::new(request.key_id).map_err(|error| invalid("key_id", error))?;
        let revoked_at_unix_ms = self
            .engine
            .revoke_merchant_key(&merchant_id(request.merchant_id)?, &key_id)
            .await
            .map_err(admin_status)?;
        Ok(Response::new(pb::RevokeMerchantKeyResponse {
            revoked_at_unix_ms,
        }))
    }

    async fn suspend_merchant(
        &self,
        request: Request<pb::SuspendMerchantRequest>,
    ) -> Result<Response<pb::SuspendMerchantResponse>, Status> {
        require_admin(request.metadata(), &self.config)?;
        let merchant = merchant_id(request.into_inner().merchant_id)?;
        self.engine
            .set_merchant_status(&merchant, MerchantStatus::Suspended)
            .await
            .map_err(admin_status)?;
        Ok(Response::new(pb::SuspendMerchantResponse {}))
    }

    async fn reactivate_merchant(
        &self,
        request: Request<pb::ReactivateMerchantRequest>,
    ) -> Result<Response<pb::ReactivateMerchantResponse>, Status> {
        require_admin(request.metadata(), &self.config)?;
        let merchant = merchant_id(request.into_inner().merchant_id)?;
        self.engine
            .set_merchant_status(&merchant, MerchantStatus::Active)
            .await
            .map_err(admin_status)?;
        Ok(Response::new(pb::ReactivateMerchantResponse {}))
    }

    async fn get_merchant(
        &self,
        request: Request<pb::GetMerchantRequest>,
    ) -> Result<Response<pb::GetMerchantResponse>, Status> {
        require_admin(request.metadata(), &self.config)?;
        let id = merchant_id(request.into_inner().merchant_id)?;
        let merchant = self
            .engine
            .merchant(&id)
            .ok_or_else(|| Status::not_found(format!("merchant {id} is not registered")))?;
        let terms = self
            .engine
            .storage()
            .load_terms()
            .await
            .map_err(|error| Status::unavailable(format!("the database did not answer: {error}")))?
            .iter()
            .filter(|terms| terms.merchant_id == id)
            .map(convert::wire_terms)
            .collect();
        Ok(Response::new(pb::GetMerchantResponse {
            terms,
            merchant_id: merchant.merchant_id.to_string(),
            name: merchant.name,
            category: convert::wire_category(merchant.category) as i32,
            suspended: merchant.status == MerchantStatus::Suspended,
            registered_at_unix_ms: merchant.registered_at_ms,
            keys: merchant
                .keys
                .iter()
                .map(|key| pb::MerchantKey {
                    key_id: key.key_id.to_string(),
                    public_key: key.public_key.as_bytes().to_vec(),
                    valid_from_unix_ms: key.valid_from_ms,
                    valid_until_unix_ms: key.valid_until_ms,
                    revoked_at_unix_ms: key.revoked_at_ms,
                })
                .collect(),
        }))
    }

    async fn enroll_members(
        &self,
        request: Request<pb::EnrollMembersRequest>,
    ) -> Result<Response<pb::EnrollMembersResponse>, Status> {
        require_admin(request.metadata(), &self.config)?;
        let members = request.into_inner().members;
        if members.len() > self.config.batch_request_len_max {
            return Err(Status::invalid_argument(format!(
                "at most {} members per call, got {}",
                self.config.batch_request_len_max,
                members.len()
            )));
        }
        let mut valid = Vec::with_capacity(members.len());
        // Refusals keep request order: the position of each, then sorted.
        let mut refusals = Vec::new();
        for (position, member) in members.into_iter().enumerate() {
            match MemberId::new(member.member_id.clone()) {
                Ok(id) => valid.push((position, id, member.tier)),
                Err(error) => refusals.push((
                    position,
                    pb::EnrollmentRefusal {
                        message: format!("member id {:?} {error}", member.member_id),
                        member_id: member.member_id,
                        reason: pb::EnrollmentRefusalReason::MemberIdInvalid as i32,
                    },
                )),
            }
        }
        let positions: std::collections::HashMap<MemberId, usize> = valid
            .iter()
            .map(|(position, id, _)| (id.clone(), *position))
            .collect();
        let summary = self
            .engine
            .enroll_members(valid.into_iter().map(|(_, id, tier)| (id, tier)).collect())
            .await
            .map_err(convert::engine_status)?;
        for (member_id, error) in summary.refused {
            let reason = match &error {
                MemberError::AlreadyAliased(_) => pb::EnrollmentRefusalReason::MemberIdIsAlias,
                // Enrolling checks nothing else; anything more is the writer's failure.
                other => return Err(Status::internal(other.to_string())),
            };
            refusals.push((
                positions.get(&member_id).copied().unwrap_or(usize::MAX),
                pb::EnrollmentRefusal {
                    member_id: member_id.to_string(),
                    reason: reason as i32,
                    message: error.to_string(),
                },
            ));
        }
        refusals.sort_by_key(|(position, _)| *position);
        let refusals: Vec<_> = refusals.into_iter().map(|(_, refusal)| refusal).collect();
        // The deprecated text list is still filled for clients that read it.
        #[allow(deprecated)]
        Ok(Response::new(pb::EnrollMembersResponse {
            enrolled: summary.enrolled,
            already_enrolled: summary.already_enrolled,
            refused: refusals
                .iter()
                .map(|refusal| refusal.message.clone())
                .collect(),
            refusals,
        }))
    }

    async fn set_merchant_terms(
        &self,
        request: Request<pb::SetMerchantTermsRequest>,
    ) -> Result<Response<pb::SetMerchantTermsResponse>, Status> {
        require_admin(request.metadata(), &self.config)?;
        let request = request.into_inner();
        let price = |field: &'static str, text: &str| {
            Decimal::from_str_exact(text.trim())
                .map_err(|error| invalid(field, format!("{text:?} is not a decimal: {error}")))
        };
        let terms = self
            .engine
            .set_merchant_terms(
                merchant_id(request.merchant_id)?,
                (request.effective_from_unix_ms != 0).then_some(request.effective_from_unix_ms),
                Prices {
                    issue_price_minor_per_point: price(
                        "issue_price_minor_per_point",
                        &request.issue_price_minor_per_point,
                    )?,
                    redeem_price_minor_per_point: price(
                        "redeem_price_minor_per_point",
                        &request.redeem_price_minor_per_point,
                    )?,
                    fee_minor_per_point: if request.fee_minor_per_point.trim().is_empty() {
                        Decimal::ZERO
                    } else {
                        price("fee_minor_per_point", &request.fee_minor_per_point)?
                    },
                    cross_merchant_reversals: request.cross_merchant_reversals,
                    credit_limit_minor: request.credit_limit_minor,
                    exchange: match (
                        request.legacy_unit.trim(),
                        request.points_per_legacy_unit.trim(),
                    ) {
                        ("", "") => None,
                        (unit, rate) => Some((
                            UnitCode::new(unit).ok_or_else(|| {
                                invalid(
                                    "legacy_unit",
                                    format!("{unit:?} is not 4 to 12 of A-Z 0-9"),
                                )
                            })?,
                            price("points_per_legacy_unit", rate)?,
                        )),
                    },
                    earn_points_per_minor: if request.earn_points_per_minor.trim().is_empty() {
                        None
                    } else {
                        Some(price(
                            "earn_points_per_minor",
                            &request.earn_points_per_minor,
                        )?)
                    },
                    breakage_share: if request.breakage_share.trim().is_empty() {
                        Decimal::ZERO
                    } else {
                        price("breakage_share", &request.breakage_share)?
                    },
                },
            )
            .await
            .map_err(admin_status)?;
        tracing::info!(merchant_id = %terms.merchant_id, version = terms.version, "terms set");
        Ok(Response::new(pb::SetMerchantTermsResponse {
            terms: Some(convert::wire_terms(&terms)),
        }))
    }

    async fn set_earn_rules(
        &self,
        request: Request<pb::SetEarnRulesRequest>,
    ) -> Result<Response<pb::SetEarnRulesResponse>, Status> {
        require_admin(request.metadata(), &self.config)?;
        let request = request.into_inner();
        let decimal = |field: &'static str, text: &str| {
            Decimal::from_str_exact(text.trim())
                .map_err(|error| invalid(field, format!("{text:?} is not a decimal: {error}")))
        };
        let mut tiers = std::collections::BTreeMap::new();
        for tier in request.tiers {
            if tier.tier.trim().is_empty() {
                return Err(invalid("tiers", "a tier multiplier needs the tier's name"));
            }
            let multiplier = decimal("tiers.multiplier", &tier.multiplier)?;
            if tiers.insert(tier.tier.clone(), multiplier).is_some() {
                return Err(invalid(
                    "tiers",
                    format!("tier {:?} is given twice", tier.tier),
                ));
            }
        }
        let mut campaigns = Vec::new();
        for campaign in request.campaigns {
            campaigns.push(coalition_domain::Campaign {
                merchant_id: if campaign.merchant_id.is_empty() {
                    None
                } else {
                    Some(merchant_id(campaign.merchant_id)?)
                },
                starts_at_ms: campaign.starts_at_unix_ms,
                ends_at_ms: campaign.ends_at_unix_ms,
                multiplier: decimal("campaigns.multiplier", &campaign.multiplier)?,
                name: campaign.name,
            });
        }
        let rules = self
            .engine
            .set_earn_rules(
                (request.effective_from_unix_ms != 0).then_some(request.effective_from_unix_ms),
                tiers,
                campaigns,
            )
            .await
            .map_err(admin_status)?;
        tracing::info!(version = rules.version, "earn rules set");
        Ok(Response::new(pb::SetEarnRulesResponse {
            version: rules.version,
            effective_from_unix_ms: rules.effective_from_ms,
        }))
    }

    async fn fund_merchant(
        &self,
        request: Request<pb::FundMerchantRequest>,
    ) -> Result<Response<pb::FundMerchantResponse>, Status> {
        require_admin(request.metadata(), &self.config)?;
        let request = request.into_inner();
        let (entry_sequence, position_minor) = self
            .engine
            .fund_merchant(
                merchant_id(request.merchant_id)?,
                request.amount_minor,
                request.reference,
            )
            .await
            .map_err(admin_status)?;
        Ok(Response::new(pb::FundMerchantResponse {
            entry_sequence,
            position_minor,
        }))
    }

    async fn record_payout(
        &self,
        request: Request<pb::RecordPayoutRequest>,
    ) -> Result<Response<pb::RecordPayoutResponse>, Status> {
        require_admin(request.metadata(), &self.config)?;
        let request = request.into_inner();
        let (entry_sequence, payable_minor) = self
            .engine
            .pay_out(
                merchant_id(request.merchant_id)?,
                request.amount_minor,
                request.reference,
            )
            .await
            .map_err(admin_status)?;
        Ok(Response::new(pb::RecordPayoutResponse {
            entry_sequence,
            payable_minor,
        }))
    }

    async fn run_expiry(
        &self,
        request: Request<pb::RunExpiryRequest>,
    ) -> Result<Response<pb::RunExpiryResponse>, Status> {
        require_admin(request.metadata(), &self.config)?;
        let summary = self
            .engine
            .run_expiry()
            .await
            .map_err(convert::engine_status)?;
        Ok(Response::new(pb::RunExpiryResponse {
            entries: summary.entries as u64,
            points: summary.points,
            breakage_minor: summary.money_minor,
        }))
    }

    async fn preview_settlement(
        &self,
        request: Request<pb::PreviewSettlementRequest>,
    ) -> Result<Response<pb::PreviewSettlementResponse>, Status> {
        require_admin(request.metadata(), &self.config)?;
        let period = request.into_inner().period;
        let label = (!period.trim().is_empty()).then_some(period.as_str());
        let view = self
            .engine
            .preview_settlement(label)
            .await
            .map_err(admin_status)?;
        Ok(Response::new(pb::PreviewSettlementResponse {
            settlement: Some(convert::settlement(view)),
        }))
    }

    async fn finalise_settlement(
        &self,
        request: Request<pb::FinaliseSettlementRequest>,
    ) -> Result<Response<pb::FinaliseSettlementResponse>, Status> {
        require_admin(request.metadata(), &self.config)?;
        let period = request.into_inner().period;
        if period.trim().is_empty() {
            return Err(invalid(
                "period",
                "name the period to finalise (YYYY-MM-DD)",
            ));
        }
        let (view, finalised_now) = self
            .engine
            .finalise_settlement(&period)
            .await
            .map_err(admin_status)?;
        Ok(Response::new(pb::FinaliseSettlementResponse {
            settlement: Some(convert::settlement(view)),
            already_finalised: !finalised_now,
        }))
    }

    async fn reconcile(
        &self,
        request: Request<tonic::Streaming<pb::ReconcileRequest>>,
    ) -> Result<Response<pb::ReconcileResponse>, Status> {
        require_admin(request.metadata(), &self.config)?;
        let mut stream = request.into_inner();
        let header = match stream
            .message()
            .await
            .map_err(crate::server::request_stream_status)?
            .and_then(|message| message.item)
        {
            Some(pb::reconcile_request::Item::Header(header)) => header,
            _ => {
                return Err(Status::invalid_argument(
                    "the first message of a reconciliation names the merchant and the period (header)",
                ));
            }
        };
        let merchant = merchant_id(header.merchant_id)?;
        let period = self
            .engine
            .settlement_period(Some(&header.period))
            .map_err(|error| invalid("period", error))?;
        let mut reconciliation = self
            .engine
            .storage()
            .begin_reconciliation(&merchant, period.start_ms, period.end_ms)
            .await
            .map_err(|error| admin_status(error.into()))?;
        let mut number = 0u64;
        while let Some(message) = stream
            .message()
            .await
            .map_err(crate::server::request_stream_status)?
        {
            match message.item {
                Some(pb::reconcile_request::Item::Row(row)) => {
                    number += 1;
                    let id = row.merchant_transaction_id.trim();
                    if id.is_empty() {
                        reconciliation.malformed(Malformed {
                            line: number,
                            problem: "merchant_transaction_id is empty".into(),
                        });
                        continue;
                    }
                    reconciliation
                        .add(MerchantRow {
                            line: number,
                            merchant_transaction_id: id.to_owned(),
                            kind: row.kind,
                            points: row.points,
                            amount_minor: row.amount_minor,
                        })
                        .await
                        .map_err(|error| admin_status(error.into()))?;
                }
                Some(pb::reconcile_request::Item::Header(_)) => {
                    return Err(Status::invalid_argument(
                        "a reconciliation has one header, as its first message",
                    ));
                }
                None => {
                    return Err(Status::invalid_argument(
                        "a reconciliation message carries a header or a row",
                    ));
                }
            }
        }
        let mut differences = Vec::new();
        let mut differences_not_listed = 0u64;
        let summary = reconciliation
            .finish(|difference| {
                if differences.len() < RECONCILE_LISTED_MAX {
                    differences.push(convert::reconcile_difference(difference));
                } else {
                    differences_not_listed += 1;
                }
                Ok(())
            })
            .await
            .map_err(|error| admin_status(error.into()))?;
        Ok(Response::new(convert::reconcile_response(
            summary,
            differences,
            differences_not_listed,
        )))
    }

    async fn alias_member(
        &self,
        request: Request<pb::AliasMemberRequest>,
    ) -> Result<Response<pb::AliasMemberResponse>, Status> {
        require_admin(request.metadata(), &self.config)?;
        let request = request.into_inner();
        let alias = member_id("alias_member_id", request.alias_member_id)?;
        let target = member_id("target_member_id", request.target_member_id)?;
        let receipt = self
            .engine
            .alias_member(alias, target)
            .await
            .map_err(admin_status)?;
        Ok(Response::new(pb::AliasMemberResponse {
            merge_entry_sequence: receipt.as_ref().map(|r| r.sequence),
            points_moved: receipt.map_or(0, |r| r.points),
        }))
    }

    type ProveEntriesStream = std::pin::Pin<
        Box<dyn tokio_stream::Stream<Item = Result<pb::ProveEntriesResponse, Status>> + Send>,
    >;

    async fn prove_entries(
        &self,
        request: Request<pb::ProveEntriesRequest>,
    ) -> Result<Response<Self::ProveEntriesStream>, Status> {
        require_admin(request.metadata(), &self.config)?;
        let Some(prover) = self.config.prover.clone() else {
            return Err(Status::unimplemented(
                "this server has no exports folder to prove entries from",
            ));
        };
        let request = request.into_inner();
        if request.subject.is_none() {
            return Err(invalid(
                "subject",
                "name a transaction, a merchant_id or a member_id",
            ));
        }
        // Reading an export's entries is file work: off the async workers.
        let (proof_json, entries) = tokio::task::spawn_blocking(move || prover.prove(&request))
            .await
            .map_err(|error| Status::internal(format!("the proof was not made: {error}")))??;
        // Pieces well under the message limit: a busy merchant's proof is tens of megabytes.
        let pieces: Vec<Result<pb::ProveEntriesResponse, Status>> = proof_json
            .chunks(PROOF_PIECE_BYTES)
            .map(|piece| {
                Ok(pb::ProveEntriesResponse {
                    proof_json_piece: piece.to_vec(),
                    entries,
                })
            })
            .collect();
        Ok(Response::new(Box::pin(tokio_stream::iter(pieces))))
    }
}

//! The subcommands that talk to a running server over gRPC: `admin` (the operator's token)
//! and `client` (a merchant's signed calls).

use super::*;

async fn connect(server: &str) -> anyhow::Result<Channel> {
    Channel::from_shared(server.to_owned())?
        .connect()
        .await
        .with_context(|| format!("cannot connect to {server}"))
}

fn public_key_bytes(text: &str) -> anyhow::Result<Vec<u8>> {
    hex::decode(text.trim()).context("the public key must be hex")
}

pub(super) async fn admin(
    connection: AdminConnection,
    command: AdminCommand,
) -> anyhow::Result<()> {
    let channel = connect(&connection.server).await?;
    let mut admin =
        AdminServiceClient::with_interceptor(channel, AdminToken::new(&connection.token)?);
    match command {
        AdminCommand::RegisterMerchant {
            merchant,
            name,
            category,
            key_id,
            public_key,
        } => {
            let response = admin
                .register_merchant(pb::RegisterMerchantRequest {
                    merchant_id: merchant.clone(),
                    name,
                    category: category.wire() as i32,
                    keys: vec![pb::MerchantKey {
                        key_id,
                        public_key: public_key_bytes(&public_key)?,
                        ..Default::default()
                    }],
                })
                .await?
                .into_inner();
            println!(
                "registered {merchant} at {} ms",
                response.registered_at_unix_ms
            );
        }
        AdminCommand::AddKey {
            merchant,
            key_id,
            public_key,
            valid_until_ms,
        } => {
            admin
                .add_merchant_key(pb::AddMerchantKeyRequest {
                    merchant_id: merchant.clone(),
                    key: Some(pb::MerchantKey {
                        key_id: key_id.clone(),
                        public_key: public_key_bytes(&public_key)?,
                        valid_until_unix_ms: valid_until_ms,
                        ..Default::default()
                    }),
                })
                .await?;
            println!("added key {key_id} to {merchant}");
        }
        AdminCommand::RevokeKey { merchant, key_id } => {
            let response = admin
                .revoke_merchant_key(pb::RevokeMerchantKeyRequest {
                    merchant_id: merchant.clone(),
                    key_id: key_id.clone(),
                })
                .await?
                .into_inner();
            println!(
                "revoked key {key_id} of {merchant} at {} ms",
                response.revoked_at_unix_ms
            );
        }
        AdminCommand::SuspendMerchant { merchant } => {
            admin
                .suspend_merchant(pb::SuspendMerchantRequest {
                    merchant_id: merchant.clone(),
                })
                .await?;
            println!("suspended {merchant}");
        }
        AdminCommand::ReactivateMerchant { merchant } => {
            admin
                .reactivate_merchant(pb::ReactivateMerchantRequest {
                    merchant_id: merchant.clone(),
                })
                .await?;
            println!("reactivated {merchant}");
        }
        AdminCommand::ShowMerchant { merchant } => {
            let merchant = admin
                .get_merchant(pb::GetMerchantRequest {
                    merchant_id: merchant,
                })
                .await?
                .into_inner();
            println!(
                "{} ({}) category {:?}{}",
                merchant.merchant_id,
                merchant.name,
                pb::MerchantCategory::try_from(merchant.category).unwrap_or_default(),
                if merchant.suspended {
                    ", suspended"
                } else {
                    ""
                }
            );
            for key in merchant.keys {
                println!(
                    "  key {} {} valid from {} until {} revoked {}",
                    key.key_id,
                    hex::encode(&key.public_key),
                    key.valid_from_unix_ms,
                    key.valid_until_unix_ms
                        .map_or("-".into(), |t| t.to_string()),
                    key.revoked_at_unix_ms.map_or("-".into(), |t| t.to_string()),
                );
            }
        }
        AdminCommand::Enroll { members, tier } => {
            let response = admin
                .enroll_members(pb::EnrollMembersRequest {
                    members: members
                        .into_iter()
                        .map(|member_id| pb::MemberEnrollment {
                            member_id,
                            tier: tier.clone(),
                        })
                        .collect(),
                })
                .await?
                .into_inner();
            println!(
                "enrolled {}, already enrolled {}",
                response.enrolled, response.already_enrolled
            );
            for refusal in &response.refusals {
                println!(
                    "refused: {} ({}): {}",
                    refusal.member_id,
                    pb::EnrollmentRefusalReason::try_from(refusal.reason)
                        .map_or("unknown reason", |reason| reason.as_str_name()),
                    refusal.message
                );
            }
            if !response.refusals.is_empty() {
                bail!("{} members were refused", response.refusals.len());
            }
        }
        AdminCommand::SetTerms {
            merchant,
            issue_price,
            redeem_price,
            fee,
            effective_from_ms,
            cross_merchant_reversals,
            credit_limit_minor,
            earn_points_per_minor,
            legacy_unit,
            points_per_legacy_unit,
            breakage_share,
        } => {
            let terms = admin
                .set_merchant_terms(pb::SetMerchantTermsRequest {
                    merchant_id: merchant.clone(),
                    effective_from_unix_ms: effective_from_ms.unwrap_or(0),
                    issue_price_minor_per_point: issue_price,
                    redeem_price_minor_per_point: redeem_price,
                    fee_minor_per_point: fee,
                    cross_merchant_reversals,
                    credit_limit_minor,
                    earn_points_per_minor,
                    legacy_unit,
                    points_per_legacy_unit,
                    breakage_share,
                })
                .await?
                .into_inner()
                .terms
                .context("the server returned no terms")?;
            println!(
                "terms version {} of {merchant}: issue {} / redeem {} minor units per point, from {} ms",
                terms.version,
                terms.issue_price_minor_per_point,
                terms.redeem_price_minor_per_point,
                terms.effective_from_unix_ms
            );
        }
        AdminCommand::SetEarnRules {
            tiers,
            campaigns,
            effective_from_ms,
        } => {
            let tiers = tiers
                .iter()
                .map(|text| {
                    let (tier, multiplier) = text
                        .split_once('=')
                        .with_context(|| format!("--tier {text:?} is not TIER=MULTIPLIER"))?;
                    Ok(pb::TierMultiplier {
                        tier: tier.to_owned(),
                        multiplier: multiplier.to_owned(),
                    })
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            let campaigns = campaigns
                .iter()
                .map(|text| {
                    let parts: Vec<&str> = text.split(',').collect();
                    let [name, merchant, starts, ends, multiplier] = parts[..] else {
                        bail!(
                            "--campaign {text:?} is not NAME,MERCHANT,STARTS_MS,ENDS_MS,MULTIPLIER"
                        );
                    };
                    Ok(pb::Campaign {
                        name: name.to_owned(),
                        merchant_id: if merchant == "*" {
                            String::new()
                        } else {
                            merchant.to_owned()
                        },
                        starts_at_unix_ms: starts
                            .parse()
                            .with_context(|| format!("campaign {name}: start {starts:?}"))?,
                        ends_at_unix_ms: ends
                            .parse()
                            .with_context(|| format!("campaign {name}: end {ends:?}"))?,
                        multiplier: multiplier.to_owned(),
                    })
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            let response = admin
                .set_earn_rules(pb::SetEarnRulesRequest {
                    effective_from_unix_ms: effective_from_ms.unwrap_or(0),
                    tiers,
                    campaigns,
                })
                .await?
                .into_inner();
            println!(
                "earn rules version {} in force from {} ms",
                response.version, response.effective_from_unix_ms
            );
        }
        AdminCommand::Fund {
            merchant,
            amount_minor,
            reference,
        } => {
            let response = admin
                .fund_merchant(pb::FundMerchantRequest {
                    merchant_id: merchant.clone(),
                    amount_minor,
                    reference,
                })
                .await?
                .into_inner();
            println!(
                "funding booked as entry {}; {merchant} now stands at {} minor units",
                response.entry_sequence, response.position_minor
            );
        }
        AdminCommand::Payout {
            merchant,
            amount_minor,
            reference,
        } => {
            let response = admin
                .record_payout(pb::RecordPayoutRequest {
                    merchant_id: merchant.clone(),
                    amount_minor,
                    reference,
                })
                .await?
                .into_inner();
            println!(
                "payout booked as entry {}; {} minor units still payable to {merchant}",
                response.entry_sequence, response.payable_minor
            );
        }
        AdminCommand::Settle { command } => {
            let (settlement, note, json) = match command {
                SettleCommand::Preview { period, json } => {
                    let response = admin
                        .preview_settlement(pb::PreviewSettlementRequest {
                            period: period.unwrap_or_default(),
                        })
                        .await?
                        .into_inner();
                    (response.settlement, "preview: nothing booked", json)
                }
                SettleCommand::Finalise { period, json } => {
                    let response = admin
                        .finalise_settlement(pb::FinaliseSettlementRequest { period })
                        .await?
                        .into_inner();
                    let note = if response.already_finalised {
                        "already finalised: nothing booked"
                    } else {
                        "finalised now: closing entry booked"
                    };
                    (response.settlement, note, json)
                }
            };
            let settlement = settlement.context("the server returned no settlement")?;
            if json {
                println!("{}", crate::settlement::settlement_json(&settlement)?);
            } else {
                print!("{}", crate::settlement::settlement_table(&settlement, None));
                println!("{note}");
            }
        }
        AdminCommand::Expire => {
            let response = admin
                .run_expiry(pb::RunExpiryRequest {})
                .await?
                .into_inner();
            println!(
                "expiry run: {} points of {} members expired, {} minor units of float moved to breakage",
                response.points, response.entries, response.breakage_minor
            );
        }
        AdminCommand::Prove {
            period,
            subject,
            out,
        } => {
            use crate::proof::Subject;
            use pb::prove_entries_request::Subject as Wire;
            let subject = match subject.subject()? {
                Subject::Transaction {
                    merchant_id,
                    transaction_id,
                } => Wire::Transaction(pb::MerchantTransaction {
                    merchant_id,
                    transaction_id,
                }),
                Subject::Merchant { merchant_id } => Wire::MerchantId(merchant_id),
                Subject::Member { member_id } => Wire::MemberId(member_id),
            };
            let mut pieces = admin
                .prove_entries(pb::ProveEntriesRequest {
                    period,
                    subject: Some(subject),
                })
                .await?
                .into_inner();
            let mut proof = Vec::new();
            while let Some(piece) = pieces.message().await? {
                proof.extend_from_slice(&piece.proof_json_piece);
            }
            super::write_proof(&proof, out.as_deref())?;
        }
        AdminCommand::Alias { alias, target } => {
            let response = admin
                .alias_member(pb::AliasMemberRequest {
                    alias_member_id: alias.clone(),
                    target_member_id: target.clone(),
                })
                .await?
                .into_inner();
            println!(
                "{alias} now stands for {target}; {} points moved",
                response.points_moved
            );
        }
    }
    Ok(())
}

pub(super) async fn client(
    identity: MerchantIdentity,
    command: ClientCommand,
) -> anyhow::Result<()> {
    let signer = MerchantSigner::new(
        identity.merchant.clone(),
        identity.key_id.clone(),
        read_key_file(&identity.key_file)?,
    );
    let channel = connect(&identity.server).await?;
    let now_ms = coalition_engine::Clock::now_ms(&coalition_engine::SystemClock);
    match command {
        ClientCommand::Submit {
            kind,
            member,
            points,
            transaction_id,
            store,
            terminal,
            spend_minor,
            occurred_at_ms,
            refers_to,
            refers_to_merchant,
            legacy_units,
        } => {
            let body = pb::TransactionBody {
                merchant_id: identity.merchant,
                merchant_transaction_id: transaction_id,
                kind: match kind {
                    Kind::Earn => pb::TransactionKind::Earn,
                    Kind::Burn => pb::TransactionKind::Burn,
                    Kind::Reversal => pb::TransactionKind::Reversal,
                    Kind::Hold => pb::TransactionKind::Hold,
                    Kind::Capture => pb::TransactionKind::Capture,
                    Kind::Void => pb::TransactionKind::Void,
                    Kind::ExchangeIn => pb::TransactionKind::ExchangeIn,
                    Kind::ExchangeOut => pb::TransactionKind::ExchangeOut,
                } as i32,
                member_id: member,
                points,
                spend_minor,
                occurred_at_unix_ms: occurred_at_ms.unwrap_or(now_ms),
                store_id: store,
                terminal_id: terminal,
                refers_to_transaction_id: refers_to,
                refers_to_merchant_id: refers_to_merchant,
                legacy_units,
            };
            let response = SubmissionServiceClient::new(channel)
                .submit(pb::SubmitRequest {
                    envelope: Some(signer.envelope(&body)),
                })
                .await?
                .into_inner();
            match response.result.and_then(|result| result.outcome) {
                Some(pb::submission_result::Outcome::Accepted(accepted)) => println!(
                    "accepted as entry {}{}; member {} now has {} points",
                    accepted.entry_sequence,
                    if accepted.duplicate {
                        " (duplicate of an earlier submission)"
                    } else {
                        ""
                    },
                    accepted.member_id,
                    accepted.member_points_balance
                ),
                Some(pb::submission_result::Outcome::Rejected(rejected)) => {
                    let reason = pb::RejectionReason::try_from(rejected.reason).unwrap_or_default();
                    bail!("rejected: {} ({})", rejected.message, reason.as_str_name())
                }
                None => bail!("the server returned no result"),
            }
        }
        ClientCommand::Balance { member } => {
            let query = pb::BalanceQuery {
                merchant_id: identity.merchant,
                issued_at_unix_ms: now_ms,
                account_kind: pb::AccountKind::MemberWallet as i32,
                owner_id: member.clone(),
                as_of_unix_ms: None,
                asset: String::new(),
            };
            let (query, signature) = signer.sign_query(&query);
            let response = QueryServiceClient::new(channel)
                .get_balance(pb::GetBalanceRequest {
                    query,
                    signature: Some(signature),
                })
                .await?
                .into_inner();
            println!(
                "member {member} has {} points (as of entry {})",
                response.points, response.as_of_entry_sequence
            );
        }
    }
    Ok(())
}

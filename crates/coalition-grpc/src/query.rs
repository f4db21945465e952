//! The query service. Reads come from committed state in the database, so a client never
//! reads something that was not acknowledged.

use std::sync::Arc;

use coalition_domain::account::{AccountKey, Asset};
use coalition_domain::signing::QUERY_DOMAIN;
use coalition_domain::{EntryKind, MemberId, MerchantId, MerchantTransactionId};
use coalition_engine::{Engine, Envelope};
use coalition_storage::StorageError;
use prost::Message;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status};

use crate::admin::{is_admin, merchant_id};
use crate::convert;
use crate::pb;
use crate::pb::query_service_server::QueryService;
use crate::server::ServerConfig;
use crate::subscription::{EntryStream, Subscriptions};

/// The page length when a query asks for none.
const HISTORY_PAGE_LEN_DEFAULT: u32 = 50;

pub struct Queries {
    pub engine: Engine,
    pub config: Arc<ServerConfig>,
    pub subscriptions: Subscriptions,
}

/// Who is reading.
enum Reader {
    Admin,
    Merchant(MerchantId),
}

/// The asset a query names: PTS when empty.
fn asset_of(code: &str) -> Result<Asset, Status> {
    if code.is_empty() {
        return Ok(Asset::Points);
    }
    Asset::from_code(code).ok_or_else(|| {
        Status::invalid_argument(format!("asset {code:?} is neither PTS nor a currency code"))
    })
}

fn storage_status(error: StorageError) -> Status {
    tracing::error!(%error, "query failed");
    Status::unavailable(format!("the database did not answer: {error}"))
}

impl Queries {
    /// Authorises a query and decodes it. The admin token reads everything; otherwise the
    /// query bytes must carry a merchant's valid signature, which is checked before the bytes
    /// are parsed, and the signed query must be fresh and name the signing merchant.
    fn authorize<Q: Message + Default>(
        &self,
        metadata: &MetadataMap,
        query: &[u8],
        signature: Option<pb::QuerySignature>,
        merchant_and_time: impl Fn(&Q) -> (&str, i64),
    ) -> Result<(Reader, Q), Status> {
        let decode = |bytes: &[u8]| {
            Q::decode(bytes).map_err(|error| {
                Status::invalid_argument(format!("the query bytes do not decode: {error}"))
            })
        };
        if is_admin(metadata, &self.config) {
            return Ok((Reader::Admin, decode(query)?));
        }
        let signature = signature.ok_or_else(|| {
            Status::unauthenticated("a query needs a merchant signature or the admin token")
        })?;
        let envelope = Envelope {
            merchant_id: signature.merchant_id,
            key_id: signature.key_id,
            body: query.to_vec(),
            signature: signature.signature,
        };
        self.engine
            .authenticate(&envelope, QUERY_DOMAIN)
            .map_err(|rejection| Status::unauthenticated(rejection.to_string()))?;
        let decoded = decode(query)?;
        let (named_merchant, issued_at_ms) = merchant_and_time(&decoded);
        if named_merchant != envelope.merchant_id {
            return Err(Status::permission_denied(format!(
                "the query names merchant {named_merchant:?} but was signed by {:?}",
                envelope.merchant_id
            )));
        }
        let now_ms = self.engine.now_ms();
        if (now_ms - issued_at_ms).abs() > self.config.query_freshness_ms {
            return Err(Status::unauthenticated(format!(
                "the query was issued {} ms from the server clock; at most {} ms is allowed",
                now_ms - issued_at_ms,
                self.config.query_freshness_ms
            )));
        }
        Ok((
            Reader::Merchant(merchant_id(envelope.merchant_id)?),
            decoded,
        ))
    }

    /// The enrolled member an id or alias stands for; NOT_FOUND when there is none, so a POS
    /// can tell "not a member" from "no points".
    async fn resolve_member(&self, member_id: String) -> Result<MemberId, Status> {
        let member = MemberId::new(member_id)
            .map_err(|error| Status::invalid_argument(format!("member_id {error}")))?;
        let storage = self.engine.storage();
        let resolved = storage
            .resolve_member(&member)
            .await
            .map_err(storage_status)?;
        if !storage
            .member_enrolled(&resolved)
            .await
            .map_err(storage_status)?
        {
            return Err(Status::not_found(if resolved == member {
                format!("member {member} is not enrolled")
            } else {
                format!("member {member} (an alias of {resolved}) is not enrolled")
            }));
        }
        Ok(resolved)
    }
}

#[tonic::async_trait]
impl QueryService for Queries {
    type SubscribeEntriesStream = EntryStream;

    async fn subscribe_entries(
        &self,
        request: Request<pb::SubscribeEntriesRequest>,
    ) -> Result<Response<EntryStream>, Status> {
        let (metadata, _, request) = request.into_parts();
        let (reader, subscription) = self.authorize(
            &metadata,
            &request.query,
            request.signature,
            |q: &pb::EntriesSubscription| (q.merchant_id.as_str(), q.issued_at_unix_ms),
        )?;
        let merchant = match reader {
            Reader::Admin => None,
            Reader::Merchant(merchant) => Some(merchant),
        };
        let stream =
            self.subscriptions
                .open(self.engine.clone(), merchant, subscription.after_sequence)?;
        Ok(Response::new(stream))
    }

    async fn get_balance(
        &self,
        request: Request<pb::GetBalanceRequest>,
    ) -> Result<Response<pb::GetBalanceResponse>, Status> {
        let (metadata, _, request) = request.into_parts();
        let (reader, query) = self.authorize(
            &metadata,
            &request.query,
            request.signature,
            |q: &pb::BalanceQuery| (q.merchant_id.as_str(), q.issued_at_unix_ms),
        )?;
        let asset = asset_of(&query.asset)?;
        let mut account = convert::account_key(query.account_kind, query.owner_id)?;
        match &account {
            AccountKey::MemberWallet(member) => {
                account = AccountKey::MemberWallet(self.resolve_member(member.to_string()).await?);
            }
            AccountKey::MemberHeld(member) => {
                account = AccountKey::MemberHeld(self.resolve_member(member.to_string()).await?);
            }
            _ => {}
        }
        if let Reader::Merchant(merchant) = &reader {
            // Any member's accounts (a POS shows the balance before a burn), a merchant's
            // own, never the operator's.
            let allowed = match account.merchant() {
                Some(owner) => owner == merchant,
                None => matches!(
                    account,
                    AccountKey::MemberWallet(_) | AccountKey::MemberHeld(_)
                ),
            };
            if !allowed {
                return Err(Status::permission_denied(format!(
                    "merchant {merchant} may not read account {account}"
                )));
            }
        }
        let balance = self
            .engine
            .storage()
            .account_balance(&account, asset, query.as_of_unix_ms)
            .await
            .map_err(storage_status)?;
        Ok(Response::new(pb::GetBalanceResponse {
            points: balance.balance,
            as_of_entry_sequence: balance.as_of_sequence,
        }))
    }

    async fn get_member_history(
        &self,
        request: Request<pb::GetMemberHistoryRequest>,
    ) -> Result<Response<pb::GetMemberHistoryResponse>, Status> {
        let (metadata, _, request) = request.into_parts();
        let (reader, query) = self.authorize(
            &metadata,
            &request.query,
            request.signature,
            |q: &pb::MemberHistoryQuery| (q.merchant_id.as_str(), q.issued_at_unix_ms),
        )?;
        let member = self.resolve_member(query.member_id).await?;
        let page_len = match query.page_len {
            0 => HISTORY_PAGE_LEN_DEFAULT,
            asked => asked.min(self.config.history_page_len_max),
        };
        let merchant_filter = match &reader {
            Reader::Admin => None,
            Reader::Merchant(merchant) => Some(merchant),
        };
        let storage = self.engine.storage();
        let page = storage
            .member_history(&member, merchant_filter, query.before_sequence, page_len)
            .await
            .map_err(storage_status)?;
        let balance = storage
            .account_balance(&AccountKey::MemberWallet(member), Asset::Points, None)
            .await
            .map_err(storage_status)?;
        Ok(Response::new(pb::GetMemberHistoryResponse {
            entries: page.entries.iter().map(convert::journal_entry).collect(),
            next_before_sequence: page.next_before_sequence,
            member_points_balance: balance.balance,
        }))
    }

    async fn get_transaction(
        &self,
        request: Request<pb::GetTransactionRequest>,
    ) -> Result<Response<pb::GetTransactionResponse>, Status> {
        let (metadata, _, request) = request.into_parts();
        let (reader, query) = self.authorize(
            &metadata,
            &request.query,
            request.signature,
            |q: &pb::TransactionQuery| (q.merchant_id.as_str(), q.issued_at_unix_ms),
        )?;
        let owner = merchant_id(query.transaction_merchant_id)?;
        if let Reader::Merchant(merchant) = &reader
            && *merchant != owner
        {
            return Err(Status::permission_denied(format!(
                "merchant {merchant} may only read its own transactions"
            )));
        }
        let transaction_id =
            MerchantTransactionId::new(query.merchant_transaction_id).map_err(|error| {
                Status::invalid_argument(format!("merchant_transaction_id {error}"))
            })?;
        let entry = self
            .engine
            .storage()
            .entry_by_transaction(&owner, &transaction_id)
            .await
            .map_err(storage_status)?
            .ok_or_else(|| {
                Status::not_found(format!(
                    "merchant {owner} has no transaction {transaction_id}"
                ))
            })?;
        Ok(Response::new(pb::GetTransactionResponse {
            entry: Some(convert::journal_entry(&entry)),
        }))
    }

    async fn get_account_history(
        &self,
        request: Request<pb::GetAccountHistoryRequest>,
    ) -> Result<Response<pb::GetAccountHistoryResponse>, Status> {
        let (metadata, _, request) = request.into_parts();
        let (reader, query) = self.authorize(
            &metadata,
            &request.query,
            request.signature,
            |q: &pb::AccountHistoryQuery| (q.merchant_id.as_str(), q.issued_at_unix_ms),
        )?;
        let asset = asset_of(&query.asset)?;
        let account = convert::account_key(query.account_kind, query.owner_id)?;
        if let Reader::Merchant(merchant) = &reader {
            let own = match &account {
                AccountKey::MerchantIssued(owner)
                | AccountKey::MerchantRedeemed(owner)
                | AccountKey::MerchantSettlement(owner) => owner == merchant,
                _ => false,
            };
            if !own {
                return Err(Status::permission_denied(format!(
                    "merchant {merchant} may read the history of its own accounts only, not {account}"
                )));
            }
        }
        let page_len = match query.page_len {
            0 => HISTORY_PAGE_LEN_DEFAULT,
            asked => asked.min(self.config.history_page_len_max),
        };
        let (lines, next) = self
            .engine
            .storage()
            .account_history(&account, asset, query.before_sequence, page_len)
            .await
            .map_err(storage_status)?;
        Ok(Response::new(pb::GetAccountHistoryResponse {
            lines: lines
                .into_iter()
                .map(|line| {
                    let kind = EntryKind::from_code(&line.kind).ok_or_else(|| {
                        Status::internal(format!("entry kind {:?} is unknown", line.kind))
                    })?;
                    // The deprecated string kind is still filled for clients that read it.
                    #[allow(deprecated)]
                    Ok(pb::AccountHistoryLine {
                        entry_sequence: line.entry_sequence,
                        accepted_at_unix_ms: line.accepted_at_ms,
                        entry_kind: convert::entry_kind(kind) as i32,
                        kind: line.kind,
                        merchant_transaction_id: line.merchant_transaction_id.unwrap_or_default(),
                        amount: line.amount,
                        balance_after: line.balance_after,
                    })
                })
                .collect::<Result<_, Status>>()?,
            next_before_sequence: next,
        }))
    }

    async fn get_outstanding_points(
        &self,
        request: Request<pb::GetOutstandingPointsRequest>,
    ) -> Result<Response<pb::GetOutstandingPointsResponse>, Status> {
        let (metadata, _, request) = request.into_parts();
        let (reader, query) = self.authorize(
            &metadata,
            &request.query,
            request.signature,
            |q: &pb::OutstandingPointsQuery| (q.merchant_id.as_str(), q.issued_at_unix_ms),
        )?;
        let issuer = match &reader {
            Reader::Admin => None,
            Reader::Merchant(merchant) => Some(merchant),
        };
        let now_ms = if query.issued_at_unix_ms == 0 {
            self.engine.now_ms()
        } else {
            query.issued_at_unix_ms
        };
        let rows = self
            .engine
            .storage()
            .outstanding_points(issuer, now_ms)
            .await
            .map_err(storage_status)?;
        let total_points = rows.iter().map(|row| row.points).sum();
        Ok(Response::new(pb::GetOutstandingPointsResponse {
            rows: rows
                .into_iter()
                .map(|row| pb::OutstandingPoints {
                    issuer_id: row.issuer,
                    age_days: row.age_days.to_owned(),
                    points: row.points,
                })
                .collect(),
            total_points,
        }))
    }
}

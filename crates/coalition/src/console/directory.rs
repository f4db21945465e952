//! The console's merchants (list, terms by version, keys, revoke, suspend and reactivate,
//! each change behind a confirmation) and members (balance, lots, history).

use std::sync::Arc;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use coalition_domain::registry::{Merchant, MerchantCategory, MerchantStatus};
use coalition_domain::{Asset, KeyId, MemberId, MerchantId, MerchantTerms};
use serde::Deserialize;

use super::format::{minute, money, points, second};
use super::text::Texts;
use super::{ConsoleState, Page, Signed, forged_form, percent_encode, render};

/// Entries of a member's history per page.
const HISTORY_PAGE_LEN: u32 = 50;

pub fn routes() -> Router<Arc<ConsoleState>> {
    Router::new()
        .route("/merchants", get(merchants))
        .route("/merchants/detail", get(merchant_detail))
        .route(
            "/merchants/change",
            get(change_confirmation).post(change_merchant),
        )
        .route("/members", get(members))
}

fn category_name(category: MerchantCategory, t: &Texts) -> &'static str {
    match category {
        MerchantCategory::MallTenant => t.category_mall_tenant,
        MerchantCategory::Cinema => t.category_cinema,
        MerchantCategory::Restaurant => t.category_restaurant,
        MerchantCategory::Parking => t.category_parking,
        MerchantCategory::Other => t.category_other,
    }
}

fn status_name(status: MerchantStatus, t: &Texts) -> &'static str {
    match status {
        MerchantStatus::Active => t.status_active,
        MerchantStatus::Suspended => t.status_suspended,
    }
}

/// A merchant's line in the list.
pub struct MerchantRow {
    pub merchant_id: String,
    pub link: String,
    pub name: String,
    pub category: &'static str,
    pub status: &'static str,
    pub suspended: bool,
    pub keys_in_force: usize,
    pub terms_version: String,
    pub credit_limit: String,
    pub position: String,
    pub headroom: String,
}

#[derive(askama::Template)]
#[template(path = "console/merchants.html")]
struct MerchantsPage {
    page: Page,
    rows: Vec<MerchantRow>,
}

/// The terms version in force now for each merchant: the last whose start has passed.
fn terms_in_force<'a>(
    terms: &'a [MerchantTerms],
    merchant: &MerchantId,
    now_ms: i64,
) -> Option<&'a MerchantTerms> {
    terms
        .iter()
        .filter(|terms| &terms.merchant_id == merchant && terms.effective_from_ms <= now_ms)
        .max_by_key(|terms| terms.version)
}

fn key_in_force(key: &coalition_domain::registry::MerchantKey, now_ms: i64) -> bool {
    key.revoked_at_ms.is_none()
        && key.valid_from_ms <= now_ms
        && key.valid_until_ms.is_none_or(|until| now_ms < until)
}

fn credit_limit_text(limit: Option<i64>, currency: &str, t: &Texts) -> String {
    match limit {
        None => t.no_limit.to_owned(),
        Some(0) => t.prepaid.to_owned(),
        Some(limit) => money(limit, currency),
    }
}

async fn merchants(State(state): State<Arc<ConsoleState>>, signed: Signed) -> Response {
    let t = signed.language.texts();
    let engine = &state.engine;
    let currency = state.currency.as_str().to_owned();
    let loaded = async {
        let terms = engine.storage().load_terms().await?;
        let positions = engine
            .storage()
            .merchant_positions(Asset::Currency(state.currency))
            .await?;
        Ok::<_, coalition_storage::StorageError>((terms, positions))
    };
    let (terms, positions) = match loaded.await {
        Ok(loaded) => loaded,
        Err(error) => {
            return signed.refuse(
                "merchants",
                StatusCode::INTERNAL_SERVER_ERROR,
                error.to_string(),
                "/",
            );
        }
    };
    let now_ms = engine.now_ms();
    let rows = engine
        .merchants()
        .into_iter()
        .map(|merchant| {
            let in_force = terms_in_force(&terms, &merchant.merchant_id, now_ms);
            let position = positions
                .get(merchant.merchant_id.as_str())
                .copied()
                .unwrap_or(0);
            let limit = in_force.and_then(|terms| terms.credit_limit_minor);
            MerchantRow {
                link: format!(
                    "/merchants/detail?merchant={}",
                    percent_encode(merchant.merchant_id.as_str())
                ),
                merchant_id: merchant.merchant_id.to_string(),
                name: merchant.name.clone(),
                category: category_name(merchant.category, t),
                status: status_name(merchant.status, t),
                suspended: merchant.status == MerchantStatus::Suspended,
                keys_in_force: merchant
                    .keys
                    .iter()
                    .filter(|key| key_in_force(key, now_ms))
                    .count(),
                terms_version: in_force
                    .map_or_else(|| "—".to_owned(), |terms| terms.version.to_string()),
                credit_limit: credit_limit_text(limit, &currency, t),
                position: money(position, &currency),
                headroom: limit.map_or_else(
                    || "—".to_owned(),
                    |limit| money(position + limit, &currency),
                ),
            }
        })
        .collect();
    render(&MerchantsPage {
        page: signed.page("merchants"),
        rows,
    })
}

pub struct KeyRow {
    pub key_id: String,
    pub public_key: String,
    pub valid_from: String,
    pub valid_until: String,
    pub revoked_at: String,
    pub state: &'static str,
    pub can_revoke: bool,
    pub revoke_link: String,
}

pub struct TermsRow {
    pub version: u32,
    pub effective_from: String,
    pub issue_price: String,
    pub redeem_price: String,
    pub fee: String,
    pub breakage_share: String,
    pub credit_limit: String,
    pub cross_reversals: &'static str,
    pub earn_rate: String,
    pub in_force: bool,
}

#[derive(askama::Template)]
#[template(path = "console/merchant.html")]
struct MerchantPage {
    page: Page,
    merchant_id: String,
    merchant_query: String,
    name: String,
    category: &'static str,
    status: &'static str,
    suspended: bool,
    registered_at: String,
    position: String,
    keys: Vec<KeyRow>,
    terms: Vec<TermsRow>,
    notice: Option<&'static str>,
}

#[derive(Deserialize)]
struct MerchantQuery {
    merchant: String,
    done: Option<String>,
}

impl ConsoleState {
    pub(super) fn registered_merchant(&self, id: &str) -> Result<Merchant, String> {
        let merchant_id = MerchantId::new(id.trim()).map_err(|error| error.to_string())?;
        self.engine
            .merchant(&merchant_id)
            .ok_or_else(|| format!("merchant {merchant_id} is not registered"))
    }
}

async fn merchant_detail(
    State(state): State<Arc<ConsoleState>>,
    signed: Signed,
    Query(query): Query<MerchantQuery>,
) -> Response {
    let t = signed.language.texts();
    let refuse =
        |status: StatusCode, error: String| signed.refuse("merchants", status, error, "/merchants");
    let merchant = match state.registered_merchant(&query.merchant) {
        Ok(merchant) => merchant,
        Err(error) => return refuse(StatusCode::NOT_FOUND, error),
    };
    let engine = &state.engine;
    let currency = state.currency.as_str().to_owned();
    let (terms, positions) = match async {
        Ok::<_, coalition_storage::StorageError>((
            engine.storage().load_terms().await?,
            engine
                .storage()
                .merchant_positions(Asset::Currency(state.currency))
                .await?,
        ))
    }
    .await
    {
        Ok(loaded) => loaded,
        Err(error) => return refuse(StatusCode::INTERNAL_SERVER_ERROR, error.to_string()),
    };
    let now_ms = engine.now_ms();
    let in_force_version =
        terms_in_force(&terms, &merchant.merchant_id, now_ms).map(|terms| terms.version);
    let merchant_query = percent_encode(merchant.merchant_id.as_str());
    let cutoff = state.cutoff;
    let keys = merchant
        .keys
        .iter()
        .map(|key| {
            let in_force = key_in_force(key, now_ms);
            KeyRow {
                key_id: key.key_id.to_string(),
                public_key: hex::encode(key.public_key.as_bytes()),
                valid_from: minute(&cutoff, key.valid_from_ms),
                valid_until: key
                    .valid_until_ms
                    .map_or_else(|| "—".to_owned(), |at| minute(&cutoff, at)),
                revoked_at: key
                    .revoked_at_ms
                    .map_or_else(String::new, |at| second(&cutoff, at)),
                state: if key.revoked_at_ms.is_some() {
                    t.key_revoked
                } else if in_force {
                    t.key_in_force
                } else if key.valid_from_ms > now_ms {
                    t.key_not_yet
                } else {
                    t.key_expired
                },
                can_revoke: key.revoked_at_ms.is_none(),
                revoke_link: format!(
                    "/merchants/change?merchant={merchant_query}&action=revoke&key={}",
                    percent_encode(key.key_id.as_str())
                ),
            }
        })
        .collect();
    let terms = terms
        .iter()
        .filter(|terms| terms.merchant_id == merchant.merchant_id)
        .map(|terms| TermsRow {
            version: terms.version,
            effective_from: minute(&cutoff, terms.effective_from_ms),
            issue_price: terms.issue_price_minor_per_point.to_string(),
            redeem_price: terms.redeem_price_minor_per_point.to_string(),
            fee: terms.fee_minor_per_point.to_string(),
            breakage_share: terms.breakage_share.to_string(),
            credit_limit: credit_limit_text(terms.credit_limit_minor, &currency, t),
            cross_reversals: if terms.cross_merchant_reversals {
                t.yes
            } else {
                t.no
            },
            earn_rate: terms
                .earn_points_per_minor
                .map_or_else(|| "—".to_owned(), |rate| rate.to_string()),
            in_force: Some(terms.version) == in_force_version,
        })
        .collect();
    let notice = match query.done.as_deref() {
        Some("revoke") => Some(t.key_revoked_done),
        Some("suspend") => Some(t.suspended_done),
        Some("reactivate") => Some(t.reactivated_done),
        _ => None,
    };
    render(&MerchantPage {
        page: signed.page("merchants"),
        merchant_id: merchant.merchant_id.to_string(),
        merchant_query,
        name: merchant.name.clone(),
        category: category_name(merchant.category, t),
        status: status_name(merchant.status, t),
        suspended: merchant.status == MerchantStatus::Suspended,
        registered_at: minute(&cutoff, merchant.registered_at_ms),
        position: money(
            positions
                .get(merchant.merchant_id.as_str())
                .copied()
                .unwrap_or(0),
            &currency,
        ),
        keys,
        terms,
        notice,
    })
}

/// A change to a merchant that the console makes only after a confirmation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Change {
    Revoke,
    Suspend,
    Reactivate,
}

impl Change {
    fn parse(action: &str) -> Option<Change> {
        match action {
            "revoke" => Some(Change::Revoke),
            "suspend" => Some(Change::Suspend),
            "reactivate" => Some(Change::Reactivate),
            _ => None,
        }
    }

    fn code(self) -> &'static str {
        match self {
            Change::Revoke => "revoke",
            Change::Suspend => "suspend",
            Change::Reactivate => "reactivate",
        }
    }

    fn words(self, t: &Texts) -> (&'static str, &'static str, &'static str) {
        match self {
            Change::Revoke => (t.revoke_confirm_title, t.revoke_confirm_text, t.revoke),
            Change::Suspend => (t.suspend_confirm_title, t.suspend_confirm_text, t.suspend),
            Change::Reactivate => (
                t.reactivate_confirm_title,
                t.reactivate_confirm_text,
                t.reactivate,
            ),
        }
    }
}

#[derive(Deserialize)]
struct ChangeQuery {
    merchant: String,
    action: String,
    key: Option<String>,
}

#[derive(askama::Template)]
#[template(path = "console/merchant_change.html")]
struct ChangePage {
    page: Page,
    title: &'static str,
    text: &'static str,
    button: String,
    merchant_id: String,
    merchant_query: String,
    name: String,
    action: &'static str,
    key: String,
}

async fn change_confirmation(
    State(state): State<Arc<ConsoleState>>,
    signed: Signed,
    Query(query): Query<ChangeQuery>,
) -> Response {
    let t = signed.language.texts();
    let merchant = match state.registered_merchant(&query.merchant) {
        Ok(merchant) => merchant,
        Err(error) => {
            return signed.refuse("merchants", StatusCode::NOT_FOUND, error, "/merchants");
        }
    };
    let Some(change) = Change::parse(&query.action) else {
        return Redirect::to("/merchants").into_response();
    };
    let (title, text, button) = change.words(t);
    render(&ChangePage {
        page: signed.page("merchants"),
        title,
        text,
        button: button.trim_end_matches('…').to_owned(),
        merchant_query: percent_encode(merchant.merchant_id.as_str()),
        merchant_id: merchant.merchant_id.to_string(),
        name: merchant.name,
        action: change.code(),
        key: query.key.unwrap_or_default(),
    })
}

#[derive(Deserialize)]
struct ChangeForm {
    #[serde(default)]
    csrf: String,
    merchant: String,
    action: String,
    #[serde(default)]
    key: String,
}

async fn change_merchant(
    State(state): State<Arc<ConsoleState>>,
    signed: Signed,
    axum::Form(form): axum::Form<ChangeForm>,
) -> Response {
    if !signed.form_is_genuine(&form.csrf) {
        return forged_form(&signed);
    }
    let back = format!(
        "/merchants/detail?merchant={}",
        percent_encode(form.merchant.trim())
    );
    let refuse = |error: String| signed.refuse("merchants", StatusCode::BAD_REQUEST, error, &back);
    let merchant = match MerchantId::new(form.merchant.trim()) {
        Ok(merchant) => merchant,
        Err(error) => return refuse(error.to_string()),
    };
    let Some(change) = Change::parse(&form.action) else {
        return refuse(format!("unknown action {:?}", form.action));
    };
    let engine = &state.engine;
    let done = match change {
        Change::Revoke => match KeyId::new(form.key.trim()) {
            Ok(key) => engine
                .revoke_merchant_key(&merchant, &key)
                .await
                .map(|_| ()),
            Err(error) => return refuse(error.to_string()),
        },
        Change::Suspend => {
            engine
                .set_merchant_status(&merchant, MerchantStatus::Suspended)
                .await
        }
        Change::Reactivate => {
            engine
                .set_merchant_status(&merchant, MerchantStatus::Active)
                .await
        }
    };
    match done {
        Ok(()) => {
            tracing::info!(%merchant, action = change.code(), key = %form.key, "merchant changed from the console");
            Redirect::to(&format!("{back}&done={}", change.code())).into_response()
        }
        Err(error) => refuse(error.to_string()),
    }
}

pub struct LotRow {
    pub issuer: String,
    pub points: String,
    pub earned_at: String,
    pub expires_at: String,
}

pub struct HistoryRow {
    pub sequence: u64,
    pub accepted_at: String,
    pub kind: String,
    pub merchant: String,
    pub transaction: String,
    pub points: String,
    pub points_after: String,
}

#[derive(askama::Template)]
#[template(path = "console/members.html")]
struct MembersPage {
    page: Page,
    asked: String,
    found: Option<MemberView>,
    not_found: bool,
}

pub struct MemberView {
    pub member_id: String,
    pub alias_of: bool,
    pub enrolled: bool,
    pub tier: String,
    pub wallet: String,
    pub held: String,
    pub debt: String,
    pub lots: Vec<LotRow>,
    pub history: Vec<HistoryRow>,
    pub older_link: Option<String>,
}

#[derive(Deserialize)]
struct MemberQuery {
    member: Option<String>,
    before: Option<u64>,
}

async fn members(
    State(state): State<Arc<ConsoleState>>,
    signed: Signed,
    Query(query): Query<MemberQuery>,
) -> Response {
    let t = signed.language.texts();
    let asked = query.member.unwrap_or_default().trim().to_owned();
    let blank = |not_found| {
        render(&MembersPage {
            page: signed.page("members"),
            asked: asked.clone(),
            found: None,
            not_found,
        })
    };
    if asked.is_empty() {
        return blank(false);
    }
    let Ok(member_id) = MemberId::new(asked.clone()) else {
        return blank(true);
    };
    let storage = state.engine.storage();
    let summary = match storage.member_summary(&member_id).await {
        Ok(Some(summary)) => summary,
        Ok(None) => return blank(true),
        Err(error) => {
            return signed.refuse(
                "members",
                StatusCode::INTERNAL_SERVER_ERROR,
                error.to_string(),
                "/members",
            );
        }
    };
    let history = match storage
        .member_history(&summary.member_id, None, query.before, HISTORY_PAGE_LEN)
        .await
    {
        Ok(history) => history,
        Err(error) => {
            return signed.refuse(
                "members",
                StatusCode::INTERNAL_SERVER_ERROR,
                error.to_string(),
                "/members",
            );
        }
    };
    let cutoff = state.cutoff;
    let view = MemberView {
        alias_of: summary.member_id != member_id,
        member_id: summary.member_id.to_string(),
        enrolled: summary.enrolled,
        tier: summary.tier.clone().unwrap_or_else(|| "—".to_owned()),
        wallet: points(summary.wallet_points),
        held: points(summary.held_points),
        debt: points(summary.debt),
        lots: summary
            .lots
            .iter()
            .map(|lot| LotRow {
                issuer: lot.issuer.to_string(),
                points: points(lot.points),
                earned_at: minute(&cutoff, lot.earned_at_ms),
                expires_at: lot
                    .expires_at_ms
                    .map_or_else(|| t.never.to_owned(), |at| minute(&cutoff, at)),
            })
            .collect(),
        history: history
            .entries
            .iter()
            .map(|entry| HistoryRow {
                sequence: entry.sequence,
                accepted_at: second(&cutoff, entry.accepted_at_ms),
                kind: entry.kind.code().to_owned(),
                merchant: entry
                    .origin
                    .as_ref()
                    .map_or_else(String::new, |origin| origin.merchant_id.to_string()),
                transaction: entry.origin.as_ref().map_or_else(String::new, |origin| {
                    origin.merchant_transaction_id.to_string()
                }),
                points: points(entry.points),
                points_after: points(entry.member_points_after),
            })
            .collect(),
        older_link: history
            .next_before_sequence
            .map(|before| format!("/members?member={}&before={before}", percent_encode(&asked))),
    };
    render(&MembersPage {
        page: signed.page("members"),
        asked,
        found: Some(view),
        not_found: false,
    })
}

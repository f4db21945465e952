//! The writer's state in the database: the rows that keep each member's state (one row per
//! member), reversible remainders and open holds current with each batch; the loads that
//! fill the writer's working set before a batch (a few set-based queries, whatever the
//! batch's size); the small state the writer starts from; the hash-chain checkpoints that
//! bound start-up verification; and the one-time replay that fills the state tables of a journal written before them.

use coalition_domain::account::{AccountId, AccountKey, Asset};
use coalition_domain::chain::{ChainHead, entry_hash};
use coalition_domain::journal::{EntryKind, LotId};
use coalition_domain::{
    Ledger, Lot, MemberId, MemberState, MerchantId, Needs, OpenHold, ReferenceState, Registry,
    Reversible, StateRows, WorkingSet,
};
use sqlx::Row;

use crate::batch::{Column, Table, to_i64};
use crate::{Storage, StorageError};

mod loads;
mod start;

pub use start::StartState;

/// The writer stores a verified checkpoint of the hash chain at the last entry of every batch
/// that crosses a multiple of this many entries, in the batch's own transaction, so start-up
/// verifies fewer than this many, each read with its postings (from disk, on a cold cache).
/// A checkpoint is one small row per this many entries.
pub const CHECKPOINT_INTERVAL: u64 = 1_000;

/// How many entries start-up verification reads per query.
const VERIFY_PAGE: i64 = 5_000;

fn corrupt(message: impl Into<String>) -> StorageError {
    StorageError::Corrupt(message.into())
}

fn member_id(text: String) -> Result<MemberId, StorageError> {
    MemberId::new(text).map_err(|error| corrupt(format!("member id {error}")))
}

fn merchant_id(text: String) -> Result<MerchantId, StorageError> {
    MerchantId::new(text).map_err(|error| corrupt(format!("merchant id {error}")))
}

fn sequence(value: i64) -> Result<u64, StorageError> {
    u64::try_from(value).map_err(|_| corrupt("negative sequence"))
}

fn version(value: i64) -> Result<u32, StorageError> {
    u32::try_from(value).map_err(|_| corrupt("terms version out of range"))
}

/// A stored lot or lot piece, before it is checked.
type LotRow = (i64, i64, String, i64, Option<i64>, Option<i64>, i64);

fn lot_from_row(
    (lot_entry_sequence, lot_index, issuer, earned_at_ms, expires_at_ms, version, points): LotRow,
) -> Result<Lot, StorageError> {
    Ok(Lot {
        lot_id: LotId {
            entry_sequence: sequence(lot_entry_sequence)?,
            index: u32::try_from(lot_index).map_err(|_| corrupt("lot index out of range"))?,
        },
        issuer: merchant_id(issuer)?,
        earned_at_ms,
        expires_at_ms,
        issue_terms_version: version.map(self::version).transpose()?,
        points,
    })
}

/// A lot about to be stored: `LotRow` with the issuer borrowed.
type LotRowRef<'a> = (i64, i64, &'a str, i64, Option<i64>, Option<i64>, i64);

/// A member's wallet lots as stored in `member_states.lots`: a JSON array of
/// `[lot_entry_sequence, lot_index, issuer, earned_at_ms, expires_at_ms, issue_terms_version,
/// points]`, in the wallet's order.
fn encode_lots(lots: &[Lot]) -> String {
    let rows: Vec<LotRowRef<'_>> = lots
        .iter()
        .map(|lot| {
            (
                to_i64(lot.lot_id.entry_sequence),
                i64::from(lot.lot_id.index),
                lot.issuer.as_str(),
                lot.earned_at_ms,
                lot.expires_at_ms,
                lot.issue_terms_version.map(i64::from),
                lot.points,
            )
        })
        .collect();
    serde_json::to_string(&rows).expect("lots serialise")
}

fn decode_lots(member: &str, text: &str) -> Result<Vec<Lot>, StorageError> {
    let rows: Vec<LotRow> = serde_json::from_str(text)
        .map_err(|error| corrupt(format!("lots of member {member}: {error}")))?;
    rows.into_iter().map(lot_from_row).collect()
}

/// One `member_states` row per member: its whole state, upserted.
fn member_states_table(members: &[MemberState]) -> Table {
    let account = |state: &MemberState, held: bool| {
        state.accounts.iter().find_map(|(id, key, balances)| {
            matches!(
                (key, held),
                (AccountKey::MemberWallet(_), false) | (AccountKey::MemberHeld(_), true)
            )
            .then(|| {
                let points = balances
                    .iter()
                    .find(|(asset, _)| *asset == Asset::Points)
                    .map_or(0, |(_, points)| *points);
                (to_i64(id.0), points)
            })
        })
    };
    let wallets: Vec<Option<(i64, i64)>> = members.iter().map(|m| account(m, false)).collect();
    let helds: Vec<Option<(i64, i64)>> = members.iter().map(|m| account(m, true)).collect();
    Table {
        name: "member_states",
        columns: vec![
            (
                "member_id",
                Column::Text(members.iter().map(|m| m.member_id.to_string()).collect()),
            ),
            (
                "enrolled",
                Column::BigInt(members.iter().map(|m| i64::from(m.enrolled)).collect()),
            ),
            (
                "alias_of",
                Column::NullableText(
                    members
                        .iter()
                        .map(|m| m.alias_of.as_ref().map(ToString::to_string))
                        .collect(),
                ),
            ),
            (
                "tier",
                Column::NullableText(members.iter().map(|m| m.tier.clone()).collect()),
            ),
            (
                "debt",
                Column::BigInt(members.iter().map(|m| m.debt).collect()),
            ),
            (
                "wallet_account_id",
                Column::NullableBigInt(wallets.iter().map(|a| a.map(|(id, _)| id)).collect()),
            ),
            (
                "wallet_points",
                Column::NullableBigInt(wallets.iter().map(|a| a.map(|(_, p)| p)).collect()),
            ),
            (
                "held_account_id",
                Column::NullableBigInt(helds.iter().map(|a| a.map(|(id, _)| id)).collect()),
            ),
            (
                "held_points",
                Column::NullableBigInt(helds.iter().map(|a| a.map(|(_, p)| p)).collect()),
            ),
            (
                "lots",
                Column::Text(members.iter().map(|m| encode_lots(&m.lots)).collect()),
            ),
            (
                "next_expiry_ms",
                Column::NullableBigInt(
                    members
                        .iter()
                        .map(|m| m.lots.iter().filter_map(|lot| lot.expires_at_ms).min())
                        .collect(),
                ),
            ),
        ],
        on_conflict: "ON CONFLICT (member_id) DO UPDATE SET enrolled = excluded.enrolled, \
             alias_of = excluded.alias_of, tier = excluded.tier, debt = excluded.debt, \
             wallet_account_id = excluded.wallet_account_id, wallet_points = excluded.wallet_points, \
             held_account_id = excluded.held_account_id, held_points = excluded.held_points, \
             lots = excluded.lots, next_expiry_ms = excluded.next_expiry_ms",
    }
}

/// Builds the tables that write `rows`.
fn state_tables(rows: &StateRows) -> Vec<Table> {
    // The pieces of each burn, capture and open hold, in take order.
    let pieces: Vec<(i64, i64, &Lot)> = rows
        .pieces
        .iter()
        .flat_map(|(owner, taken)| {
            taken
                .iter()
                .enumerate()
                .map(move |(position, lot)| (to_i64(*owner), position as i64, lot))
        })
        .collect();
    let state_pieces = Table {
        name: "state_pieces",
        columns: vec![
            (
                "owner_sequence",
                Column::BigInt(pieces.iter().map(|(owner, _, _)| *owner).collect()),
            ),
            (
                "position",
                Column::BigInt(pieces.iter().map(|(_, position, _)| *position).collect()),
            ),
            (
                "lot_entry_sequence",
                Column::BigInt(
                    pieces
                        .iter()
                        .map(|(_, _, lot)| to_i64(lot.lot_id.entry_sequence))
                        .collect(),
                ),
            ),
            (
                "lot_index",
                Column::BigInt(
                    pieces
                        .iter()
                        .map(|(_, _, lot)| i64::from(lot.lot_id.index))
                        .collect(),
                ),
            ),
            (
                "issuer",
                Column::Text(
                    pieces
                        .iter()
                        .map(|(_, _, lot)| lot.issuer.to_string())
                        .collect(),
                ),
            ),
            (
                "earned_at_ms",
                Column::BigInt(pieces.iter().map(|(_, _, lot)| lot.earned_at_ms).collect()),
            ),
            (
                "expires_at_ms",
                Column::NullableBigInt(
                    pieces.iter().map(|(_, _, lot)| lot.expires_at_ms).collect(),
                ),
            ),
            (
                "issue_terms_version",
                Column::NullableBigInt(
                    pieces
                        .iter()
                        .map(|(_, _, lot)| lot.issue_terms_version.map(i64::from))
                        .collect(),
                ),
            ),
            (
                "points",
                Column::BigInt(pieces.iter().map(|(_, _, lot)| lot.points).collect()),
            ),
        ],
        on_conflict: "",
    };
    let member_states = member_states_table(&rows.members);
    let holds = &rows.holds_opened;
    let hold_table = Table {
        name: "open_holds",
        columns: vec![
            (
                "sequence",
                Column::BigInt(holds.iter().map(|(s, _)| to_i64(*s)).collect()),
            ),
            (
                "merchant_id",
                Column::Text(
                    holds
                        .iter()
                        .map(|(_, h)| h.merchant_id.to_string())
                        .collect(),
                ),
            ),
            (
                "member_id",
                Column::Text(holds.iter().map(|(_, h)| h.member_id.to_string()).collect()),
            ),
            (
                "points",
                Column::BigInt(holds.iter().map(|(_, h)| h.points).collect()),
            ),
            (
                "terms_version",
                Column::BigInt(
                    holds
                        .iter()
                        .map(|(_, h)| i64::from(h.terms_version))
                        .collect(),
                ),
            ),
            (
                "expires_at_ms",
                Column::BigInt(holds.iter().map(|(_, h)| h.expires_at_ms).collect()),
            ),
        ],
        on_conflict: "",
    };
    vec![member_states, hold_table, state_pieces]
}

/// Deletes the rows of closed holds and their pieces inside a batch's transaction.
async fn delete_state_sqlite(
    transaction: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    rows: &StateRows,
) -> Result<(), StorageError> {
    if !rows.holds_closed.is_empty() {
        let closed: Vec<i64> = rows.holds_closed.iter().map(|s| to_i64(*s)).collect();
        let closed = serde_json::to_string(&closed).expect("keys serialise");
        for sql in [
            "DELETE FROM open_holds WHERE sequence IN (SELECT value FROM json_each($1))",
            "DELETE FROM state_pieces WHERE owner_sequence IN (SELECT value FROM json_each($1))",
        ] {
            sqlx::query(sql)
                .bind(closed.clone())
                .execute(&mut **transaction)
                .await?;
        }
    }
    Ok(())
}

async fn delete_state_postgres(
    transaction: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    rows: &StateRows,
) -> Result<(), StorageError> {
    if !rows.holds_closed.is_empty() {
        let closed: Vec<i64> = rows.holds_closed.iter().map(|s| to_i64(*s)).collect();
        for sql in [
            "DELETE FROM open_holds WHERE sequence = ANY($1)",
            "DELETE FROM state_pieces WHERE owner_sequence = ANY($1)",
        ] {
            sqlx::query(sql)
                .bind(closed.clone())
                .execute(&mut **transaction)
                .await?;
        }
    }
    Ok(())
}

/// The checkpoint a batch records when its last entry crosses a multiple of
/// `CHECKPOINT_INTERVAL`.
fn checkpoint_table(first_sequence: u64, last: Option<(u64, [u8; 32], i64)>) -> Option<Table> {
    let (sequence, hash, at_ms) = last?;
    if sequence / CHECKPOINT_INTERVAL == first_sequence.saturating_sub(1) / CHECKPOINT_INTERVAL {
        return None;
    }
    Some(checkpoint_row(sequence, hash, at_ms))
}

fn checkpoint_row(sequence: u64, hash: [u8; 32], at_ms: i64) -> Table {
    Table {
        name: "checkpoints",
        columns: vec![
            ("sequence", Column::BigInt(vec![to_i64(sequence)])),
            ("hash", Column::Bytes(vec![hash.to_vec()])),
            ("verified_at_ms", Column::BigInt(vec![at_ms])),
        ],
        on_conflict: "ON CONFLICT (sequence) DO NOTHING",
    }
}

/// Records a verified checkpoint in its own transaction: the writer's (`checkpoints`) or an
/// audit's (`audit_checkpoints`).
pub(crate) async fn insert_checkpoint(
    storage: &Storage,
    table: &'static str,
    head: ChainHead,
    verified_at_ms: i64,
) -> Result<(), StorageError> {
    let mut table_rows = checkpoint_row(head.sequence, head.hash, verified_at_ms);
    table_rows.name = table;
    let table = table_rows;
    match storage {
        Storage::Sqlite(_, pool) => {
            let mut transaction = pool.begin_with("BEGIN IMMEDIATE").await?;
            table.insert_sqlite(&mut transaction).await?;
            transaction.commit().await?;
        }
        Storage::Postgres(pool) => {
            let mut transaction = pool.begin().await?;
            table.insert_postgres(&mut transaction).await?;
            transaction.commit().await?;
        }
    }
    Ok(())
}

/// Writes state rows (and a checkpoint, if the batch crossed one) in an open transaction.
pub(crate) async fn write_state_sqlite(
    transaction: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    rows: &StateRows,
    checkpoint: Option<(u64, u64, [u8; 32], i64)>,
) -> Result<(), StorageError> {
    delete_state_sqlite(transaction, rows).await?;
    for table in state_tables(rows) {
        table.insert_sqlite(transaction).await?;
    }
    if let Some((first, last, hash, at_ms)) = checkpoint
        && let Some(table) = checkpoint_table(first, Some((last, hash, at_ms)))
    {
        table.insert_sqlite(transaction).await?;
    }
    Ok(())
}

pub(crate) async fn write_state_postgres(
    transaction: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    rows: &StateRows,
    checkpoint: Option<(u64, u64, [u8; 32], i64)>,
) -> Result<(), StorageError> {
    delete_state_postgres(transaction, rows).await?;
    for table in state_tables(rows) {
        table.insert_postgres(transaction).await?;
    }
    if let Some((first, last, hash, at_ms)) = checkpoint
        && let Some(table) = checkpoint_table(first, Some((last, hash, at_ms)))
    {
        table.insert_postgres(transaction).await?;
    }
    Ok(())
}

/// A member's committed state as the finance console shows it: points in the wallet and on
/// hold, debt, tier, and the wallet's lots in the order burns take them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberSummary {
    pub member_id: MemberId,
    pub enrolled: bool,
    pub tier: Option<String>,
    pub debt: i64,
    pub wallet_points: i64,
    pub held_points: i64,
    pub lots: Vec<Lot>,
}

impl Storage {
    /// The member `member_id` names (aliases followed), from its one state row; `None` for an
    /// id never enrolled.
    pub async fn member_summary(
        &self,
        member_id: &MemberId,
    ) -> Result<Option<MemberSummary>, StorageError> {
        let member = self.resolve_member(member_id).await?;
        type Row = (i64, Option<String>, i64, Option<i64>, Option<i64>, String);
        let row: Option<Row> = crate::with_pool!(self, pool => {
            sqlx::query(
                "SELECT enrolled, tier, debt, wallet_points, held_points, lots \
                 FROM member_states WHERE member_id = $1",
            )
            .bind(member.as_str())
            .fetch_optional(pool)
            .await?
            .map(|row| {
                Ok::<_, sqlx::Error>((
                    row.try_get("enrolled")?,
                    row.try_get("tier")?,
                    row.try_get("debt")?,
                    row.try_get("wallet_points")?,
                    row.try_get("held_points")?,
                    row.try_get("lots")?,
                ))
            })
            .transpose()?
        });
        let Some((enrolled, tier, debt, wallet_points, held_points, lots)) = row else {
            return Ok(None);
        };
        let lots = decode_lots(member.as_str(), &lots)?;
        let wallet_points = wallet_points.unwrap_or(0);
        let lot_points: i64 = lots.iter().map(|lot| lot.points).sum();
        // The wallet is its lots less what the member owes (a refund after points were spent).
        if lot_points - debt != wallet_points {
            return Err(corrupt(format!(
                "member {member}: lots hold {lot_points} points, debt {debt}, wallet {wallet_points}"
            )));
        }
        Ok(Some(MemberSummary {
            member_id: member,
            enrolled: enrolled != 0,
            tier,
            debt,
            wallet_points,
            held_points: held_points.unwrap_or(0),
            lots,
        }))
    }
}

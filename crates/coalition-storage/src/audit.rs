//! The audit behind `coalition check`, in memory bounded whatever the journal's size: the
//! hash chain streamed a page at a time (every entry's link, hash and balance), and every
//! piece of derived state compared with the journal by aggregate queries the database runs
//! (balances against postings, lots against their consumptions, wallets against their lots,
//! held balances against open holds, open holds against the entries that close holds).
//! What remains reversible of an entry is not stored: the writer derives it from the journal. Everything is read in one read-only transaction: a
//! consistent snapshot, so the audit can run beside a live writer.

use coalition_domain::chain::{ChainHead, entry_hash};
use sqlx::Row;

use crate::load::{assemble, entry_columns, entry_row, posting_columns, posting_row};
use crate::{Storage, StorageError};

/// Entries per page of the chain walk.
const AUDIT_PAGE: i64 = 5_000;

/// How many differences each comparison reports at most.
const DIFFERENCES_MAX: i64 = 20;

/// Where the chain walk starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditStart {
    /// The first entry.
    Genesis,
    /// The head the latest sound audit verified (recorded by `record_checkpoint`).
    LastCheckpoint,
    /// The head an earlier sound audit verified at this sequence.
    Checkpoint(u64),
}

/// What an audit found.
#[derive(Debug, Clone)]
pub struct AuditReport {
    /// The head the chain walk started from (genesis or a checkpoint).
    pub start: ChainHead,
    pub head: ChainHead,
    /// Entries whose link, hash and balance were verified.
    pub entries: u64,
    /// The derived-state comparisons made, each with how many differences it found.
    pub comparisons: Vec<(&'static str, usize)>,
    /// Every difference found; empty when the books are sound.
    pub problems: Vec<String>,
}

impl AuditReport {
    pub fn is_sound(&self) -> bool {
        self.problems.is_empty()
    }
}

/// The comparisons: a name, and a query returning one row per difference as a `problem`
/// text column. Each runs in the database over the whole of its tables.
const COMPARISONS: &[(&str, &str)] = &[
    (
        "balances = sum of postings",
        "SELECT 'account ' || CAST(COALESCE(p.account_id, b.account_id) AS TEXT) || ' ' || \
         COALESCE(p.asset, b.asset) || ': stored balance ' || CAST(COALESCE(b.balance, 0) AS TEXT) || \
         ', postings sum to ' || CAST(COALESCE(p.total, 0) AS TEXT) AS problem \
         FROM (SELECT account_id, asset, CAST(SUM(amount) AS BIGINT) AS total FROM postings \
               GROUP BY account_id, asset) p \
         FULL OUTER JOIN account_balances b ON b.account_id = p.account_id AND b.asset = p.asset \
         WHERE COALESCE(p.total, 0) <> COALESCE(b.balance, 0)",
    ),
    (
        "lots: points less consumed and repaid = in wallets + on hold",
        "SELECT 'lot ' || CAST(l.entry_sequence AS TEXT) || '/' || CAST(l.lot_index AS TEXT) || \
         ': ' || CAST(l.points - COALESCE(u.points, 0) AS TEXT) || ' points left by the journal, ' || \
         CAST(COALESCE(w.points, 0) AS TEXT) || ' in a wallet and ' || CAST(COALESCE(h.points, 0) AS TEXT) || \
         ' on hold' AS problem \
         FROM lots l \
         LEFT JOIN (SELECT lot_entry_sequence, lot_index, CAST(SUM(points) AS BIGINT) AS points FROM ( \
             SELECT lot_entry_sequence, lot_index, points FROM lot_consumptions UNION ALL \
             SELECT lot_entry_sequence, lot_index, points FROM debt_repayments) x \
             GROUP BY lot_entry_sequence, lot_index) u \
           ON u.lot_entry_sequence = l.entry_sequence AND u.lot_index = l.lot_index \
         LEFT JOIN (SELECT lot_entry_sequence, lot_index, CAST(SUM(points) AS BIGINT) AS points \
             FROM {wallet_lots} w0 GROUP BY lot_entry_sequence, lot_index) w \
           ON w.lot_entry_sequence = l.entry_sequence AND w.lot_index = l.lot_index \
         LEFT JOIN (SELECT s.lot_entry_sequence, s.lot_index, CAST(SUM(s.points) AS BIGINT) AS points \
             FROM state_pieces s JOIN open_holds o ON o.sequence = s.owner_sequence \
             GROUP BY s.lot_entry_sequence, s.lot_index) h \
           ON h.lot_entry_sequence = l.entry_sequence AND h.lot_index = l.lot_index \
         WHERE l.points - COALESCE(u.points, 0) <> COALESCE(w.points, 0) + COALESCE(h.points, 0)",
    ),
    (
        "wallet lots are lots of the journal",
        "SELECT 'wallet lot ' || CAST(w.lot_entry_sequence AS TEXT) || '/' || CAST(w.lot_index AS TEXT) || \
         ' of ' || w.member_id || ' is no lot of the journal or is empty' AS problem \
         FROM {wallet_lots} w LEFT JOIN lots l \
           ON l.entry_sequence = w.lot_entry_sequence AND l.lot_index = w.lot_index \
         WHERE l.entry_sequence IS NULL OR w.points <= 0",
    ),
    (
        "wallets = lots less debt",
        "SELECT 'member ' || a.owner || ': wallet balance ' || CAST(COALESCE(b.balance, 0) AS TEXT) || \
         ', lots less debt ' || CAST(COALESCE(w.points, 0) - COALESCE(d.debt, 0) AS TEXT) AS problem \
         FROM accounts a \
         LEFT JOIN account_balances b ON b.account_id = a.account_id AND b.asset = 'PTS' \
         LEFT JOIN (SELECT member_id, CAST(SUM(points) AS BIGINT) AS points FROM {wallet_lots} w0 \
             GROUP BY member_id) w ON w.member_id = a.owner \
         LEFT JOIN member_states d ON d.member_id = a.owner \
         WHERE a.kind = 'member_wallet' \
           AND COALESCE(b.balance, 0) <> COALESCE(w.points, 0) - COALESCE(d.debt, 0)",
    ),
    (
        "debts: none negative, none beside lots",
        "SELECT 'member ' || d.member_id || ': debt ' || CAST(d.debt AS TEXT) || ' beside lots' AS problem \
         FROM member_states d \
         WHERE d.debt < 0 OR (d.debt > 0 AND d.lots <> '[]')",
    ),
    (
        "member states = members, aliases and tiers",
        "SELECT 'member ' || m.member_id || ': stored state ' || \
         CASE WHEN s.member_id IS NULL THEN 'missing' ELSE 'disagrees on enrolment or tier' END AS problem \
         FROM members m \
         LEFT JOIN member_states s ON s.member_id = m.member_id \
         LEFT JOIN member_aliases x ON x.alias = m.member_id \
         WHERE s.member_id IS NULL \
            OR s.enrolled <> CASE WHEN x.alias IS NULL THEN 1 ELSE 0 END \
            OR (x.alias IS NULL AND COALESCE(s.tier, '') <> COALESCE(m.tier, '')) \
         UNION ALL \
         SELECT 'alias ' || x.alias || ': stored state does not name ' || x.target AS problem \
         FROM member_aliases x LEFT JOIN member_states s ON s.member_id = x.alias \
         WHERE s.member_id IS NULL OR s.alias_of IS NULL OR s.alias_of <> x.target \
         UNION ALL \
         SELECT 'member ' || s.member_id || ': stored as merged into ' || s.alias_of || \
         ', which no alias says' AS problem \
         FROM member_states s WHERE s.alias_of IS NOT NULL AND NOT EXISTS ( \
             SELECT 1 FROM member_aliases x WHERE x.alias = s.member_id AND x.target = s.alias_of) \
         UNION ALL \
         SELECT 'member ' || s.member_id || ': enrolled in its stored state, not in the journal' AS problem \
         FROM member_states s WHERE s.enrolled = 1 AND (NOT EXISTS ( \
             SELECT 1 FROM members m WHERE m.member_id = s.member_id) OR EXISTS ( \
             SELECT 1 FROM member_aliases x WHERE x.alias = s.member_id))",
    ),
    (
        "member states = member accounts and their balances",
        "SELECT 'member ' || a.owner || ': ' || a.kind || ' account ' || CAST(a.account_id AS TEXT) || \
         ' with ' || CAST(COALESCE(b.balance, 0) AS TEXT) || ' points is not in its stored state' AS problem \
         FROM accounts a \
         LEFT JOIN account_balances b ON b.account_id = a.account_id AND b.asset = 'PTS' \
         LEFT JOIN member_states s ON s.member_id = a.owner \
         WHERE a.kind IN ('member_wallet', 'member_held') AND (s.member_id IS NULL \
            OR (a.kind = 'member_wallet' AND (s.wallet_account_id IS NULL \
                OR s.wallet_account_id <> a.account_id OR s.wallet_points <> COALESCE(b.balance, 0))) \
            OR (a.kind = 'member_held' AND (s.held_account_id IS NULL \
                OR s.held_account_id <> a.account_id OR s.held_points <> COALESCE(b.balance, 0)))) \
         UNION ALL \
         SELECT 'member ' || s.member_id || ': its stored state names an account that is not its own' AS problem \
         FROM member_states s \
         WHERE (s.wallet_account_id IS NOT NULL AND NOT EXISTS (SELECT 1 FROM accounts a \
                WHERE a.account_id = s.wallet_account_id AND a.kind = 'member_wallet' AND a.owner = s.member_id)) \
            OR (s.held_account_id IS NOT NULL AND NOT EXISTS (SELECT 1 FROM accounts a \
                WHERE a.account_id = s.held_account_id AND a.kind = 'member_held' AND a.owner = s.member_id))",
    ),
    (
        "member accounts hold points only",
        "SELECT 'member ' || a.owner || ': ' || a.kind || ' account holds ' || \
         CAST(b.balance AS TEXT) || ' ' || b.asset AS problem \
         FROM accounts a JOIN account_balances b ON b.account_id = a.account_id \
         WHERE a.kind IN ('member_wallet', 'member_held') AND b.asset <> 'PTS' AND b.balance <> 0",
    ),
    (
        "next expiry = the earliest expiry of the lots",
        "SELECT 'member ' || s.member_id || ': next expiry ' || COALESCE(CAST(s.next_expiry_ms AS TEXT), 'none') || \
         ', its lots expire first at ' || COALESCE(CAST(w.first_ms AS TEXT), 'never') AS problem \
         FROM member_states s \
         LEFT JOIN (SELECT member_id, MIN(expires_at_ms) AS first_ms FROM {wallet_lots} w0 \
             GROUP BY member_id) w ON w.member_id = s.member_id \
         WHERE COALESCE(s.next_expiry_ms, -1) <> COALESCE(w.first_ms, -1)",
    ),
    (
        "held balances = open holds",
        "SELECT 'member ' || a.owner || ': held balance ' || CAST(COALESCE(b.balance, 0) AS TEXT) || \
         ', open holds ' || CAST(COALESCE(h.points, 0) AS TEXT) AS problem \
         FROM accounts a \
         LEFT JOIN account_balances b ON b.account_id = a.account_id AND b.asset = 'PTS' \
         LEFT JOIN (SELECT member_id, CAST(SUM(points) AS BIGINT) AS points FROM open_holds \
             GROUP BY member_id) h ON h.member_id = a.owner \
         WHERE a.kind = 'member_held' AND COALESCE(b.balance, 0) <> COALESCE(h.points, 0)",
    ),
    (
        "open holds = holds not captured, voided or expired",
        "SELECT 'hold ' || CAST(e.sequence AS TEXT) || ' is open in the journal but not stored open' AS problem \
         FROM entries e WHERE e.kind = 'hold' \
           AND NOT EXISTS (SELECT 1 FROM entries c WHERE c.refers_to = e.sequence \
               AND c.kind IN ('capture', 'void', 'hold_expiry')) \
           AND NOT EXISTS (SELECT 1 FROM open_holds o WHERE o.sequence = e.sequence) \
         UNION ALL \
         SELECT 'hold ' || CAST(o.sequence AS TEXT) || ' is stored open but the journal closed it, \
         or it is no hold, or its pieces do not make its points' AS problem \
         FROM open_holds o \
         WHERE NOT EXISTS (SELECT 1 FROM entries e WHERE e.sequence = o.sequence AND e.kind = 'hold' \
               AND e.points = o.points) \
            OR EXISTS (SELECT 1 FROM entries c WHERE c.refers_to = o.sequence \
               AND c.kind IN ('capture', 'void', 'hold_expiry')) \
            OR o.points <> (SELECT COALESCE(CAST(SUM(s.points) AS BIGINT), 0) FROM state_pieces s \
               WHERE s.owner_sequence = o.sequence)",
    ),
];

/// The wallets' lots as rows (`member_id, lot_entry_sequence, lot_index, expires_at_ms,
/// points`), read out of `member_states.lots` (a JSON array per member) by each backend's JSON
/// functions; the comparisons name it `{wallet_lots}`.
const WALLET_LOTS_SQLITE: &str = "(SELECT m.member_id AS member_id, \
     CAST(json_extract(j.value, '$[0]') AS INTEGER) AS lot_entry_sequence, \
     CAST(json_extract(j.value, '$[1]') AS INTEGER) AS lot_index, \
     CAST(json_extract(j.value, '$[4]') AS INTEGER) AS expires_at_ms, \
     CAST(json_extract(j.value, '$[6]') AS INTEGER) AS points \
     FROM member_states m, json_each(m.lots) j)";
const WALLET_LOTS_POSTGRES: &str = "(SELECT m.member_id AS member_id, \
     (j.value ->> 0)::bigint AS lot_entry_sequence, (j.value ->> 1)::bigint AS lot_index, \
     (j.value ->> 4)::bigint AS expires_at_ms, (j.value ->> 6)::bigint AS points \
     FROM member_states m CROSS JOIN LATERAL jsonb_array_elements(m.lots::jsonb) AS j (value))";

/// Runs the audit's reads against one transaction of either backend.
macro_rules! audit_in {
    ($transaction:ident, $start:expr, $wallet_lots:expr) => {{
        let start: AuditStart = $start;
        let corrupt = |message: String| StorageError::Corrupt(message);
        let checkpoint: Option<(i64, Vec<u8>)> = match start {
            AuditStart::Genesis => None,
            AuditStart::LastCheckpoint => sqlx::query(
                "SELECT sequence, hash FROM audit_checkpoints ORDER BY sequence DESC LIMIT 1",
            )
            .fetch_optional(&mut *$transaction)
            .await?
            .map(|row| Ok::<_, sqlx::Error>((row.try_get("sequence")?, row.try_get("hash")?)))
            .transpose()?,
            AuditStart::Checkpoint(sequence) => Some(
                sqlx::query("SELECT sequence, hash FROM audit_checkpoints WHERE sequence = $1")
                    .bind(i64::try_from(sequence).map_err(|_| corrupt("sequence beyond 2^63".into()))?)
                    .fetch_optional(&mut *$transaction)
                    .await?
                    .map(|row| Ok::<_, sqlx::Error>((row.try_get("sequence")?, row.try_get("hash")?)))
                    .transpose()?
                    .ok_or_else(|| corrupt(format!("no earlier check verified the chain up to entry {sequence}")))?,
            ),
        };
        let mut problems = Vec::new();
        let mut head = ChainHead::GENESIS;
        if let Some((sequence, hash)) = checkpoint {
            let hash: [u8; 32] = hash
                .try_into()
                .map_err(|_| corrupt("a checkpoint hash is not 32 bytes".into()))?;
            let stored: Option<Vec<u8>> =
                sqlx::query("SELECT hash FROM entries WHERE sequence = $1")
                    .bind(sequence)
                    .fetch_optional(&mut *$transaction)
                    .await?
                    .map(|row| row.try_get("hash"))
                    .transpose()?;
            if stored.as_deref() != Some(&hash[..]) {
                problems.push(format!(
                    "entry {sequence} no longer has the hash its checkpoint verified"
                ));
            }
            head = ChainHead {
                sequence: u64::try_from(sequence).map_err(|_| corrupt("negative sequence".into()))?,
                hash,
            };
        }
        let start_head = head;
        let mut entries = 0u64;
        'walk: loop {
            let after = i64::try_from(head.sequence).map_err(|_| corrupt("sequence beyond 2^63".into()))?;
            let entry_rows = sqlx::query(concat!(
                "SELECT ", entry_columns!(), " FROM entries WHERE sequence > $1 AND sequence <= $2 ORDER BY sequence"
            ))
            .bind(after)
            .bind(after + AUDIT_PAGE)
            .fetch_all(&mut *$transaction)
            .await?
            .iter()
            .map(|row| Ok(entry_row!(row)))
            .collect::<Result<Vec<_>, sqlx::Error>>()?;
            if entry_rows.is_empty() {
                break;
            }
            let posting_rows = sqlx::query(concat!(
                "SELECT ", posting_columns!(), " FROM postings p JOIN accounts a ON a.account_id = p.account_id \
                 WHERE p.entry_sequence > $1 AND p.entry_sequence <= $2 ORDER BY p.entry_sequence, p.posting_index"
            ))
            .bind(after)
            .bind(after + AUDIT_PAGE)
            .fetch_all(&mut *$transaction)
            .await?
            .iter()
            .map(|row| Ok(posting_row!(row)))
            .collect::<Result<Vec<_>, sqlx::Error>>()?;
            // `assemble` refuses an entry that does not balance per asset.
            let page = match assemble(entry_rows, posting_rows) {
                Ok(page) => page,
                Err(error) => {
                    problems.push(error.to_string());
                    break 'walk;
                }
            };
            for entry in page {
                if entry.sequence != head.sequence + 1 || entry.previous_hash != head.hash {
                    problems.push(format!(
                        "entry {} does not link to entry {}",
                        entry.sequence, head.sequence
                    ));
                    break 'walk;
                }
                if entry_hash(&entry) != entry.hash {
                    problems.push(format!(
                        "entry {}: its hash does not match its contents",
                        entry.sequence
                    ));
                    break 'walk;
                }
                head = ChainHead {
                    sequence: entry.sequence,
                    hash: entry.hash,
                };
                entries += 1;
            }
        }
        let mut comparisons = Vec::new();
        for (name, sql) in COMPARISONS {
            let sql = sql.replace("{wallet_lots}", $wallet_lots);
            let found: Vec<String> = sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT problem FROM ({sql}) d LIMIT {DIFFERENCES_MAX}"
            )))
            .fetch_all(&mut *$transaction)
            .await?
            .iter()
            .map(|row| row.try_get("problem"))
            .collect::<Result<_, sqlx::Error>>()?;
            comparisons.push((*name, found.len()));
            problems.extend(found.into_iter().map(|problem| format!("{name}: {problem}")));
        }
        $transaction.rollback().await?;
        AuditReport {
            start: start_head,
            head,
            entries,
            comparisons,
            problems,
        }
    }};
}

impl Storage {
    /// Audits the books in one consistent snapshot (see the module documentation), walking
    /// the chain from `start`. Reads only; a live writer may keep writing.
    pub async fn audit(&self, start: AuditStart) -> Result<AuditReport, StorageError> {
        let report = match self {
            Storage::Sqlite(pool, _) => {
                // A read transaction in WAL mode sees one snapshot until it ends.
                let mut transaction = pool.begin().await?;
                audit_in!(transaction, start, WALLET_LOTS_SQLITE)
            }
            Storage::Postgres(pool) => {
                let mut transaction = pool.begin().await?;
                sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
                    .execute(&mut *transaction)
                    .await?;
                audit_in!(transaction, start, WALLET_LOTS_POSTGRES)
            }
        };
        Ok(report)
    }

    /// Records a checkpoint at a head an audit verified, so a later audit may start there.
    pub async fn record_checkpoint(
        &self,
        head: ChainHead,
        verified_at_ms: i64,
    ) -> Result<(), StorageError> {
        crate::state::insert_checkpoint(self, "audit_checkpoints", head, verified_at_ms).await
    }
}

//! The single writer. It alone mutates the ledger and appends to the journal.
//!
//! Longer than 800 lines: the writer's loop, its loads, the batch's application and the
//! pipelined commit share the writer's state and are one sequence of steps (docs/
//! ARCHITECTURE.md, "Write path"); the decisions themselves are in `coalition-domain`.

use std::sync::Arc;
use std::time::Instant;

use coalition_domain::ledger::{ApplyError, ExpirySummary, Outcome};
use coalition_domain::settlement::Settlement;
use coalition_domain::{
    Campaign, Changes, CurrencyCode, EarnRules, FinalisedPeriod, Ledger, LedgerPolicy, MemberId,
    MerchantId, MerchantTerms, Needs, Prices, Receipt, Rejection, Submission,
};
use coalition_storage::Storage;
use tokio::sync::{mpsc, oneshot};

use crate::clock::Clock;
use crate::engine::{AdminError, EngineError, EnrollSummary};

/// The result of one submission as the writer decided it.
pub(crate) type ItemResult = Result<Outcome, Rejection>;

pub(crate) enum Command {
    Submit {
        submissions: Vec<Submission>,
        reply: oneshot::Sender<Result<Vec<ItemResult>, EngineError>>,
    },
    Enroll {
        members: Vec<(MemberId, Option<String>)>,
        reply: oneshot::Sender<Result<EnrollSummary, EngineError>>,
    },
    Alias {
        alias: MemberId,
        target: MemberId,
        reply: oneshot::Sender<Result<Option<Receipt>, AdminError>>,
    },
    Terms {
        merchant_id: MerchantId,
        effective_from_ms: Option<i64>,
        prices: Prices,
        reply: oneshot::Sender<Result<MerchantTerms, AdminError>>,
    },
    /// The next version of the earn rules.
    EarnRules {
        effective_from_ms: Option<i64>,
        tier_multipliers: std::collections::BTreeMap<String, rust_decimal::Decimal>,
        campaigns: Vec<Campaign>,
        reply: oneshot::Sender<Result<EarnRules, AdminError>>,
    },
    /// Money a merchant paid in.
    Fund {
        merchant_id: MerchantId,
        amount_minor: i64,
        reference: String,
        reply: oneshot::Sender<Result<(u64, i64), EngineError>>,
    },
    /// Money paid to a merchant, at most what is payable to it.
    Payout {
        merchant_id: MerchantId,
        amount_minor: i64,
        reference: String,
        reply: oneshot::Sender<Result<(u64, i64), AdminError>>,
    },
    /// The expiry run.
    Expire {
        reply: oneshot::Sender<Result<ExpirySummary, EngineError>>,
    },
    /// Moves acceptance time to at least now and answers whether it has reached `end_ms`:
    /// when it has, every entry accepted before `end_ms` is committed and no later one can be.
    Close {
        end_ms: i64,
        reply: oneshot::Sender<Result<bool, EngineError>>,
    },
    /// Books a computed period's closing entry and records it finalised; `None` when the
    /// period was finalised before (nothing is booked).
    Finalise {
        settlement: Box<Settlement>,
        reply: oneshot::Sender<Result<Option<FinalisedPeriod>, EngineError>>,
    },
    /// Finish what was received before this command, then stop.
    Shutdown,
}

impl Command {
    /// Answers the command with an engine failure; nothing of it was applied.
    fn fail(self, error: &EngineError) {
        match self {
            Command::Submit { reply, .. } => drop(reply.send(Err(error.clone()))),
            Command::Enroll { reply, .. } => drop(reply.send(Err(error.clone()))),
            Command::Alias { reply, .. } => {
                drop(reply.send(Err(AdminError::Engine(error.clone()))))
            }
            Command::Terms { reply, .. } => {
                drop(reply.send(Err(AdminError::Engine(error.clone()))))
            }
            Command::Expire { reply } => drop(reply.send(Err(error.clone()))),
            Command::Fund { reply, .. } => drop(reply.send(Err(error.clone()))),
            Command::Close { reply, .. } => drop(reply.send(Err(error.clone()))),
            Command::Payout { reply, .. } => {
                drop(reply.send(Err(AdminError::Engine(error.clone()))))
            }
            Command::Finalise { reply, .. } => drop(reply.send(Err(error.clone()))),
            Command::EarnRules { reply, .. } => {
                drop(reply.send(Err(AdminError::Engine(error.clone()))))
            }
            Command::Shutdown => {}
        }
    }

    /// How many ledger operations the command carries, for batch sizing.
    fn weight(&self) -> usize {
        match self {
            Command::Submit { submissions, .. } => submissions.len(),
            Command::Enroll { members, .. } => members.len(),
            Command::Alias { .. }
            | Command::Terms { .. }
            | Command::Expire { .. }
            | Command::Fund { .. }
            | Command::EarnRules { .. }
            | Command::Close { .. }
            | Command::Finalise { .. }
            | Command::Payout { .. }
            | Command::Shutdown => 1,
        }
    }
}

/// A decided command whose reply waits for the commit.
enum Pending {
    Submit(
        oneshot::Sender<Result<Vec<ItemResult>, EngineError>>,
        Vec<ItemResult>,
    ),
    Enroll(
        oneshot::Sender<Result<EnrollSummary, EngineError>>,
        EnrollSummary,
    ),
    Alias(
        oneshot::Sender<Result<Option<Receipt>, AdminError>>,
        Result<Option<Receipt>, AdminError>,
    ),
    Terms(
        oneshot::Sender<Result<MerchantTerms, AdminError>>,
        Result<MerchantTerms, AdminError>,
    ),
    Expire(
        oneshot::Sender<Result<ExpirySummary, EngineError>>,
        ExpirySummary,
    ),
    Fund(oneshot::Sender<Result<(u64, i64), EngineError>>, (u64, i64)),
    EarnRules(
        oneshot::Sender<Result<EarnRules, AdminError>>,
        Result<EarnRules, AdminError>,
    ),
    Close(oneshot::Sender<Result<bool, EngineError>>, bool),
    Payout(
        oneshot::Sender<Result<(u64, i64), AdminError>>,
        Result<(u64, i64), AdminError>,
    ),
    Finalise(
        oneshot::Sender<Result<Option<FinalisedPeriod>, EngineError>>,
        Option<FinalisedPeriod>,
    ),
}

impl Pending {
    fn acknowledge(self) {
        // A caller that went away (a dropped connection) no longer needs its reply; the
        // transaction is committed all the same and a retry gets the original result.
        match self {
            Pending::Submit(reply, results) => drop(reply.send(Ok(results))),
            Pending::Enroll(reply, summary) => drop(reply.send(Ok(summary))),
            Pending::Alias(reply, result) => drop(reply.send(result)),
            Pending::Terms(reply, result) => drop(reply.send(result)),
            Pending::Expire(reply, summary) => drop(reply.send(Ok(summary))),
            Pending::Fund(reply, booked) => drop(reply.send(Ok(booked))),
            Pending::EarnRules(reply, result) => drop(reply.send(result)),
            Pending::Close(reply, closed) => drop(reply.send(Ok(closed))),
            Pending::Payout(reply, result) => drop(reply.send(result)),
            Pending::Finalise(reply, finalised) => drop(reply.send(Ok(finalised))),
        }
    }

    fn fail(self, error: &EngineError) {
        match self {
            Pending::Submit(reply, _) => drop(reply.send(Err(error.clone()))),
            Pending::Enroll(reply, _) => drop(reply.send(Err(error.clone()))),
            Pending::Alias(reply, _) => drop(reply.send(Err(AdminError::Engine(error.clone())))),
            Pending::Terms(reply, _) => drop(reply.send(Err(AdminError::Engine(error.clone())))),
            Pending::Expire(reply, _) => drop(reply.send(Err(error.clone()))),
            Pending::Fund(reply, _) => drop(reply.send(Err(error.clone()))),
            Pending::EarnRules(reply, _) => {
                drop(reply.send(Err(AdminError::Engine(error.clone()))))
            }
            Pending::Close(reply, _) => drop(reply.send(Err(error.clone()))),
            Pending::Payout(reply, _) => drop(reply.send(Err(AdminError::Engine(error.clone())))),
            Pending::Finalise(reply, _) => drop(reply.send(Err(error.clone()))),
        }
    }
}

pub(crate) struct Writer {
    pub ledger: Ledger,
    pub storage: Storage,
    pub clock: Arc<dyn Clock>,
    pub batch_len_max: usize,
    /// What the recent batch writes took per submission, in nanoseconds (a moving average;
    /// 0 before the first), written by the commit tasks: it sizes the next batches.
    pub write_nanos_per_submission: Arc<std::sync::atomic::AtomicU64>,
    /// Where each committed batch's entries go, in commit order, for entry subscriptions.
    pub committed: tokio::sync::broadcast::Sender<Arc<CommittedEntries>>,
    /// See `EngineConfig::receipt_retention_ms`.
    pub receipt_retention_ms: i64,
    pub receiver: mpsc::Receiver<Command>,
    /// Acceptance times never go backwards, even if the wall clock does.
    pub last_accepted_at_ms: i64,
    pub currency: CurrencyCode,
    pub policy: LedgerPolicy,
    /// See `EngineConfig::expiry_run_interval_ms`.
    pub expiry_run_interval_ms: Option<i64>,
    /// When the scheduled expiry run is next due.
    pub next_expiry_run_ms: i64,
    /// See `EngineConfig::expiry_members_per_batch_max`.
    pub expiry_members_max: usize,
    /// The last part of an expiry run was full: more members may have expired points, and
    /// the next batch runs the next part.
    pub expiry_unfinished: bool,
    /// The labels of finalised settlement periods.
    pub finalised_periods: std::collections::HashSet<String>,
    /// Working-set budgets (see `EngineConfig::writer_cache_members_max`).
    pub members_max: usize,
    pub references_max: usize,
    pub receipts_max: usize,
    /// The batches whose commits are under way, oldest first (see `process`): at most
    /// `Storage::batch_writes_in_flight_max`.
    pub in_flight: std::collections::VecDeque<InFlight>,
    /// The last sequence the database is known to hold.
    pub committed_through: u64,
    /// The WAL checkpoint under way (SQLite), started after a commit.
    pub checkpoint: Option<tokio::task::JoinHandle<()>>,
}

/// A batch applied in memory whose commit runs as its own task while the writer prepares the
/// next batch. The task answers the batch's callers itself, right after its commit and only
/// if it commits.
pub(crate) struct InFlight {
    commit: tokio::task::JoinHandle<bool>,
    /// Whether the commit succeeded, once known: the next batch's write waits on it.
    outcome: tokio::sync::watch::Receiver<Option<bool>>,
    /// The working-set tick taken before the batch was prepared: what it touched was used
    /// after it, and stays in memory until its commit is known.
    tick: u64,
    /// The periods the batch finalised: forgotten again if it does not commit.
    finalised_now: Vec<String>,
    /// The batch's last entry, if it has any.
    last_sequence: Option<u64>,
    accepted_at_ms: i64,
}

/// One committed batch's entries, in sequence order, as the writer publishes them after the
/// commit (`Engine::committed_entries`).
#[derive(Debug)]
pub struct CommittedEntries {
    pub entries: Vec<coalition_domain::Entry>,
}

/// What `prepare` made of a batch: the callers' answers, waiting for the commit, and the rows.
struct Prepared {
    pending: Vec<Pending>,
    changes: Changes,
    balances: Vec<(
        coalition_domain::account::AccountId,
        coalition_domain::account::Asset,
        i64,
    )>,
    state: coalition_domain::StateRows,
    finalised_now: Vec<String>,
    accepted_at_ms: i64,
    submissions_count: usize,
}

/// How long one batch's write should take under load where two writes can be under way
/// (PostgreSQL). Batches are sized from what recent writes took per submission: a flood
/// fills batches of about this much work, which keeps both writes busy and answers callers
/// sooner than one big batch would (paired end to end on PostgreSQL: ×1.14 and ×1.25 against
/// batches of up to 4,096, docs/benchmarks.md); a lone call is never held back, since a
/// batch takes only what is already waiting.
const BATCH_WRITE_TARGET_NANOS: u64 = 80_000_000;

/// The smallest batch limit the sizing chooses (whole calls always go in one batch).
const BATCH_LEN_MIN: usize = 64;

/// How often an idle writer wakes to expire holds and run scheduled expiry.
const HOUSEKEEPING_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

impl Writer {
    pub async fn run(mut self) {
        let mut stopping = false;
        let mut housekeeping = tokio::time::interval(HOUSEKEEPING_INTERVAL);
        housekeeping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while !stopping {
            let first = tokio::select! {
                command = self.receiver.recv() => command,
                committed = commit_finished(&mut self.in_flight) => {
                    // The oldest commit in flight finished with nothing else to do: settle it
                    // now, so that an idle writer frees memory at once.
                    let flight = self.in_flight.pop_front().expect("a commit was in flight");
                    let tick = self.ledger.use_tick();
                    self.settle(flight, committed, tick).await;
                    continue;
                }
                _ = housekeeping.tick() => {
                    // Idle: expire due holds and run the scheduled expiry, if any is due.
                    self.process(Vec::new()).await;
                    continue;
                }
            };
            let Some(first) = first else {
                break;
            };
            let mut commands = Vec::new();
            let mut weight = first.weight();
            commands.push(first);
            // Gather whatever is already waiting, up to the batch limit: under load batches
            // grow by themselves, at rest a lone submission commits at once.
            let batch_len = self.batch_len_target();
            while weight < batch_len {
                match self.receiver.try_recv() {
                    Ok(command) => {
                        weight += command.weight();
                        commands.push(command);
                    }
                    Err(_) => break,
                }
            }
            if let Some(position) = commands.iter().position(|c| matches!(c, Command::Shutdown)) {
                stopping = true;
                commands.truncate(position);
            }
            if !commands.is_empty() {
                self.process(commands).await;
            }
        }
        let tick = self.ledger.use_tick();
        self.settle_in_flight(tick).await;
        tracing::info!("writer stopped");
    }

    /// How many submissions the next batch gathers at most: with two writes under way, about
    /// `BATCH_WRITE_TARGET_NANOS` of write at the recent rate, within
    /// `BATCH_LEN_MIN..=batch_len_max`; with one, `batch_len_max`.
    fn batch_len_target(&self) -> usize {
        if self.storage.batch_writes_in_flight_max() < 2 {
            // One write at a time (SQLite): nothing to overlap, and the biggest batch spreads
            // the commit's fixed cost widest (paired end to end: batches sized to the target
            // ×0.84 of the ceiling's in both pairs, docs/benchmarks.md).
            return self.batch_len_max;
        }
        batch_len_for(
            self.write_nanos_per_submission
                .load(std::sync::atomic::Ordering::Relaxed),
            self.batch_len_max,
        )
    }

    /// Loads from the journal the receipts of the batch's transaction ids that memory lacks,
    /// so a reused old id is still recognised. One query for the whole batch.
    async fn load_missing_receipts(&mut self, commands: &[Command]) -> Result<(), EngineError> {
        let mut missing = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for command in commands {
            if let Command::Submit { submissions, .. } = command {
                for submission in submissions {
                    let key = (
                        submission.merchant_id.clone(),
                        submission.merchant_transaction_id.clone(),
                    );
                    // The transaction a reversal, capture or void acts on, too.
                    for key in std::iter::once(key).chain(submission.refers_to.clone()) {
                        if !self.ledger.has_receipt(&key) && seen.insert(key.clone()) {
                            missing.push(key);
                        }
                    }
                }
            }
        }
        if missing.is_empty() {
            return Ok(());
        }
        let found = self
            .storage
            .receipts_for(&missing)
            .await
            .map_err(|error| EngineError::StorageUnavailable(error.to_string()))?;
        metrics::counter!("coalition_receipts_loaded_total").increment(found.len() as u64);
        for (key, receipt) in found {
            self.ledger.remember_receipt(key, receipt);
        }
        Ok(())
    }

    /// Loads into the working set everything the batch may touch that memory lacks: the
    /// members its submissions and commands name (with the members their aliases stand for),
    /// the entries its reversals, captures and voids refer to (with their members), the holds
    /// due to expire and, when an expiry run is due, the members with expired lots. A few
    /// set-based queries per round; a second round only when a loaded alias or reference
    /// names a member that is not in memory.
    async fn load_working_set(
        &mut self,
        commands: &[Command],
        at_ms: i64,
    ) -> Result<(), EngineError> {
        let unavailable = |error: coalition_storage::StorageError| {
            EngineError::StorageUnavailable(error.to_string())
        };
        let mut needs = Needs::default();
        let mut expiry_due = self.expiry_unfinished
            || self
                .expiry_run_interval_ms
                .is_some_and(|_| at_ms >= self.next_expiry_run_ms);
        for command in commands {
            match command {
                Command::Submit { submissions, .. } => {
                    for submission in submissions {
                        needs.members.insert(submission.member_id.clone());
                        if let Some(receipt) = submission
                            .refers_to
                            .as_ref()
                            .and_then(|key| self.ledger.receipt(key))
                        {
                            needs.references.insert(receipt.sequence);
                        }
                    }
                }
                Command::Enroll { members, .. } => {
                    needs
                        .members
                        .extend(members.iter().map(|(member_id, _)| member_id.clone()));
                }
                Command::Alias { alias, target, .. } => {
                    needs.members.insert(alias.clone());
                    needs.members.insert(target.clone());
                }
                Command::Expire { .. } => expiry_due = true,
                _ => {}
            }
        }
        if !self.ledger.holds_working_set() {
            return Ok(());
        }
        needs
            .references
            .extend(self.storage.holds_due(at_ms).await.map_err(unavailable)?);
        if expiry_due {
            let (due, full) = self
                .storage
                .members_with_lots_due(at_ms, self.expiry_members_max)
                .await
                .map_err(unavailable)?;
            self.expiry_unfinished = full;
            needs.members.extend(due);
        }
        // Each round loads what is missing; aliases chain at most ALIAS_DEPTH_MAX deep.
        for _ in 0..=coalition_domain::ledger::ALIAS_DEPTH_MAX + 1 {
            let missing = self.ledger.missing(&needs);
            if missing.is_empty() {
                return Ok(());
            }
            let set = self
                .storage
                .load_working_set(&missing)
                .await
                .map_err(unavailable)?;
            metrics::counter!("coalition_working_set_members_loaded_total")
                .increment(set.members.len() as u64);
            metrics::counter!("coalition_working_set_references_loaded_total")
                .increment(set.references.len() as u64);
            self.ledger.admit(set);
        }
        Err(EngineError::InvariantViolated(
            "the working set did not close over aliases".into(),
        ))
    }

    /// Decides a batch: loads what it needs, applies it to the ledger in memory and builds
    /// its rows. `None` when there is nothing to commit or answer, or when the batch was
    /// refused or aborted (its callers are answered).
    async fn prepare(&mut self, commands: Vec<Command>) -> Option<Prepared> {
        let load_started = Instant::now();
        if let Err(error) = self.load_missing_receipts(&commands).await {
            tracing::error!(%error, "cannot read receipts; the batch is refused");
            for command in commands {
                command.fail(&error);
            }
            return None;
        }
        let accepted_at_ms = self.clock.now_ms().max(self.last_accepted_at_ms);
        // A part of an expiry run left for this batch by the one before it.
        let expiry_continues = self.expiry_unfinished;
        if let Err(error) = self.load_working_set(&commands, accepted_at_ms).await {
            tracing::error!(%error, "cannot load the working set; the batch is refused");
            for command in commands {
                command.fail(&error);
            }
            return None;
        }
        metrics::histogram!("coalition_writer_load_seconds")
            .record(load_started.elapsed().as_secs_f64());
        let apply_started = Instant::now();
        let mut accepted_until_ms = accepted_at_ms;
        let mut changes = Changes::default();
        let mut pending = Vec::with_capacity(commands.len());
        let mut invariant_violation = None;
        let mut submissions_count = 0usize;
        // Periods finalised by this batch: forgotten again if it does not commit.
        let mut finalised_now = Vec::new();
        // Holds past their deadline are released before anything else is decided, so that
        // no capture succeeds after its hold timed out and released points are available.
        if let Err(error) = self.housekeeping(accepted_at_ms, expiry_continues, &mut changes) {
            invariant_violation = Some(error);
        }
        for command in commands {
            // After a broken invariant the batch will be aborted: the rest is answered with
            // the failure rather than applied.
            if invariant_violation.is_some() {
                command.fail(&EngineError::InvariantViolated(
                    "an earlier part of the batch broke an invariant".into(),
                ));
                continue;
            }
            match command {
                Command::Submit { submissions, reply } => {
                    submissions_count += submissions.len();
                    let mut results = Vec::with_capacity(submissions.len());
                    for submission in &submissions {
                        match self.ledger.apply(submission, accepted_at_ms, &mut changes) {
                            Ok(outcome) => results.push(Ok(outcome)),
                            Err(ApplyError::Rejected(rejection)) => results.push(Err(rejection)),
                            Err(ApplyError::InvariantViolated(message)) => {
                                invariant_violation = Some(message);
                                break;
                            }
                        }
                    }
                    pending.push(Pending::Submit(reply, results));
                }
                Command::Enroll { members, reply } => {
                    let mut summary = EnrollSummary::default();
                    for (member_id, tier) in members {
                        match self.ledger.enroll_member(
                            member_id.clone(),
                            tier,
                            accepted_at_ms,
                            &mut changes,
                        ) {
                            Ok(true) => summary.enrolled += 1,
                            Ok(false) => summary.already_enrolled += 1,
                            Err(error) => summary.refused.push((member_id, error)),
                        }
                    }
                    pending.push(Pending::Enroll(reply, summary));
                }
                Command::Alias {
                    alias,
                    target,
                    reply,
                } => {
                    let result = self
                        .ledger
                        .alias_member(alias, target, accepted_at_ms, &mut changes)
                        .map_err(AdminError::Member);
                    pending.push(Pending::Alias(reply, result));
                }
                Command::Terms {
                    merchant_id,
                    effective_from_ms,
                    prices,
                    reply,
                } => {
                    let immediate = effective_from_ms.is_none();
                    let result = self
                        .ledger
                        .add_terms(
                            merchant_id,
                            effective_from_ms,
                            prices,
                            accepted_at_ms,
                            &mut changes,
                        )
                        .map_err(AdminError::Terms);
                    // Terms "from now" start at the next millisecond when entries were already
                    // accepted in this one; acceptance times move on with them, so the next
                    // batch is priced by them even if the wall clock has not moved.
                    if let (true, Ok(terms)) = (immediate, &result) {
                        accepted_until_ms = accepted_until_ms.max(terms.effective_from_ms);
                    }
                    pending.push(Pending::Terms(reply, result));
                }
                Command::EarnRules {
                    effective_from_ms,
                    tier_multipliers,
                    campaigns,
                    reply,
                } => {
                    let immediate = effective_from_ms.is_none();
                    let result = self
                        .ledger
                        .add_earn_rules(
                            effective_from_ms,
                            tier_multipliers,
                            campaigns,
                            accepted_at_ms,
                            &mut changes,
                        )
                        .map_err(AdminError::Terms);
                    // As for terms: acceptance times move on to the rules' start.
                    if let (true, Ok(rules)) = (immediate, &result) {
                        accepted_until_ms = accepted_until_ms.max(rules.effective_from_ms);
                    }
                    pending.push(Pending::EarnRules(reply, result));
                }
                Command::Fund {
                    merchant_id,
                    amount_minor,
                    reference,
                    reply,
                } => {
                    match self.ledger.fund_merchant(
                        &merchant_id,
                        amount_minor,
                        &reference,
                        accepted_at_ms,
                        &mut changes,
                    ) {
                        Ok(sequence) => {
                            let position = self.ledger.merchant_position(&merchant_id);
                            pending.push(Pending::Fund(reply, (sequence, position)));
                        }
                        Err(error) => {
                            invariant_violation = Some(error.to_string());
                            pending.push(Pending::Fund(reply, (0, 0)));
                        }
                    }
                }
                Command::Expire { reply } => {
                    match self.ledger.expire_lots(accepted_at_ms, &mut changes) {
                        Ok(summary) => {
                            log_expiry(&summary, "requested");
                            pending.push(Pending::Expire(reply, summary));
                        }
                        Err(error) => {
                            invariant_violation = Some(error.to_string());
                            pending.push(Pending::Expire(reply, ExpirySummary::default()));
                        }
                    }
                }
                Command::Payout {
                    merchant_id,
                    amount_minor,
                    reference,
                    reply,
                } => {
                    let payable = self.ledger.merchant_payable(&merchant_id);
                    if amount_minor > payable {
                        pending.push(Pending::Payout(
                            reply,
                            Err(AdminError::PayoutExceedsPayable {
                                merchant_id,
                                payable_minor: payable,
                                amount_minor,
                            }),
                        ));
                        continue;
                    }
                    match self.ledger.pay_out(
                        &merchant_id,
                        amount_minor,
                        &reference,
                        accepted_at_ms,
                        &mut changes,
                    ) {
                        Ok(sequence) => {
                            let payable = self.ledger.merchant_payable(&merchant_id);
                            pending.push(Pending::Payout(reply, Ok((sequence, payable))));
                        }
                        Err(error) => {
                            invariant_violation = Some(error.to_string());
                            pending.push(Pending::Payout(reply, Ok((0, 0))));
                        }
                    }
                }
                Command::Close { end_ms, reply } => {
                    pending.push(Pending::Close(reply, accepted_at_ms >= end_ms));
                }
                Command::Finalise { settlement, reply } => {
                    if self.finalised_periods.contains(&settlement.period) {
                        pending.push(Pending::Finalise(reply, None));
                        continue;
                    }
                    let label = settlement.period.clone();
                    match self
                        .ledger
                        .book_settlement(*settlement, accepted_at_ms, &mut changes)
                    {
                        Ok(finalised) => {
                            self.finalised_periods.insert(label.clone());
                            finalised_now.push(label);
                            pending.push(Pending::Finalise(reply, Some(finalised)));
                        }
                        Err(error) => {
                            invariant_violation = Some(error.to_string());
                            pending.push(Pending::Finalise(reply, None));
                        }
                    }
                }
                Command::Shutdown => {}
            }
        }
        let forget_finalised = |writer: &mut Writer| {
            for label in &finalised_now {
                writer.finalised_periods.remove(label);
            }
        };
        if let Some(message) = invariant_violation {
            forget_finalised(self);
            tracing::error!(%message, "ledger invariant violated; the batch is aborted");
            self.abort(pending, EngineError::InvariantViolated(message))
                .await;
            return None;
        }
        if pending.is_empty() && changes.is_empty() {
            return None;
        }
        metrics::histogram!("coalition_writer_apply_seconds")
            .record(apply_started.elapsed().as_secs_f64());
        let started = Instant::now();
        let balances = changes.balances(&self.ledger);
        let state = match changes.state_rows(&self.ledger) {
            Ok(state) => state,
            Err(error) => {
                forget_finalised(self);
                tracing::error!(%error, "ledger invariant violated; the batch is aborted");
                self.abort(pending, EngineError::InvariantViolated(error.to_string()))
                    .await;
                return None;
            }
        };
        metrics::histogram!("coalition_writer_rows_seconds")
            .record(started.elapsed().as_secs_f64());
        // The next batch is accepted no earlier than this one, committed or not yet.
        self.last_accepted_at_ms = accepted_until_ms;
        Some(Prepared {
            pending,
            changes,
            balances,
            state,
            finalised_now,
            accepted_at_ms,
            submissions_count,
        })
    }

    /// Runs one batch through the pipeline: it is prepared while the batches before it may
    /// still be committing; it is written as a task of its own, so that the writer prepares
    /// the next batch meanwhile, and it commits only after the batch before it committed (its
    /// entries chain on that batch's): on PostgreSQL its journal rows go in beside that
    /// commit, on SQLite its write starts after it (`Storage::write_changes_after`). Callers
    /// are answered by the commit task, after the commit. If the batch before fails to
    /// commit, this one, decided on top of it, is void: its callers are told so and nothing
    /// of it is written.
    async fn process(&mut self, commands: Vec<Command>) {
        // What this batch touches is marked used after this tick, so it stays in memory until
        // its commit is known.
        let tick = self.ledger.use_tick();
        let Some(prepared) = self.prepare(commands).await else {
            return;
        };
        let in_flight_max = self.storage.batch_writes_in_flight_max();
        let mut settled = true;
        while settled && self.in_flight.len() >= in_flight_max {
            settled = self.settle_oldest(tick).await;
        }
        // A batch with nothing to write answers from what is committed: it waits for all.
        if settled && prepared.changes.is_empty() {
            settled = self.settle_in_flight(tick).await;
        }
        if !settled {
            for label in &prepared.finalised_now {
                self.finalised_periods.remove(label);
            }
            let error = EngineError::StorageUnavailable(
                "the batch before this one failed to commit; nothing of this one was written"
                    .into(),
            );
            for reply in prepared.pending {
                reply.fail(&error);
            }
            return;
        }
        let Prepared {
            pending,
            changes,
            balances,
            state,
            finalised_now,
            accepted_at_ms,
            submissions_count,
        } = prepared;
        if changes.is_empty() {
            // Nothing to write (duplicates and refusals only): the answers stand on what is
            // committed, so they go out now.
            for reply in pending {
                reply.acknowledge();
            }
            return;
        }
        let last_sequence = changes.entries.last().map(|entry| entry.sequence);
        let mut changes = changes;
        let committed = self.committed.clone();
        let storage = self.storage.clone();
        let before = self.in_flight.back().map(|flight| flight.outcome.clone());
        let (outcome_sender, outcome) = tokio::sync::watch::channel(None);
        let write_nanos_per_submission = self.write_nanos_per_submission.clone();
        let commit = tokio::spawn(async move {
            let started = Instant::now();
            let before = async move {
                match before {
                    None => true,
                    // A task that ended without saying (it panicked) did not commit.
                    Some(mut before) => before
                        .wait_for(Option::is_some)
                        .await
                        .is_ok_and(|outcome| *outcome == Some(true)),
                }
            };
            let written = storage
                .write_changes_after(&changes, &balances, &state, before)
                .await;
            let entries_count = changes.entries.len();
            if written.is_ok() {
                // Before the outcome: the next batch's task commits and publishes only after
                // it, so subscribers see batches in commit order. Nothing is kept when no
                // one subscribes (the send fails), and the send never waits.
                let _ = committed.send(Arc::new(CommittedEntries {
                    entries: std::mem::take(&mut changes.entries),
                }));
            }
            outcome_sender.send_replace(Some(written.is_ok()));
            match written {
                Ok(()) => {
                    let elapsed = started.elapsed();
                    metrics::histogram!("coalition_commit_seconds").record(elapsed.as_secs_f64());
                    if submissions_count > 0 {
                        let per_submission = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX)
                            / submissions_count as u64;
                        let average =
                            write_nanos_per_submission.load(std::sync::atomic::Ordering::Relaxed);
                        let average = if average == 0 {
                            per_submission
                        } else {
                            (average.saturating_mul(3).saturating_add(per_submission)) / 4
                        };
                        write_nanos_per_submission
                            .store(average.max(1), std::sync::atomic::Ordering::Relaxed);
                    }
                    metrics::histogram!("coalition_batch_submissions")
                        .record(submissions_count as f64);
                    metrics::histogram!("coalition_batch_entries").record(entries_count as f64);
                    for reply in pending {
                        reply.acknowledge();
                    }
                    true
                }
                Err(error) => {
                    tracing::error!(error = %error, source = ?std::error::Error::source(&error), "batch commit failed");
                    let error = EngineError::StorageUnavailable(error.to_string());
                    for reply in pending {
                        reply.fail(&error);
                    }
                    false
                }
            }
        });
        self.in_flight.push_back(InFlight {
            commit,
            outcome,
            tick,
            finalised_now,
            last_sequence,
            accepted_at_ms,
        });
    }

    /// Waits for every commit in flight and settles each in order (see `settle`); whether the
    /// database now holds everything the ledger in memory holds.
    async fn settle_in_flight(&mut self, tick: u64) -> bool {
        while !self.in_flight.is_empty() {
            if !self.settle_oldest(tick).await {
                return false;
            }
        }
        true
    }

    /// Waits for the oldest commit in flight, if any, and settles it; whether it committed.
    /// `tick` is the current batch's, which is not in flight yet.
    async fn settle_oldest(&mut self, tick: u64) -> bool {
        let Some(mut flight) = self.in_flight.pop_front() else {
            return true;
        };
        let waited = Instant::now();
        let committed = (&mut flight.commit).await.unwrap_or(false);
        metrics::histogram!("coalition_writer_wait_seconds").record(waited.elapsed().as_secs_f64());
        self.settle(flight, committed, tick).await
    }

    /// After a commit: frees memory beyond the budgets, keeping what was used after `tick`
    /// (what a prepared batch, not yet committed, touched) and the receipts the database does
    /// not hold yet. After a failed commit: reloads the ledger from the database, since what
    /// memory holds went past it.
    async fn settle(&mut self, flight: InFlight, committed: bool, tick: u64) -> bool {
        if !committed {
            // The batches after it were decided on top of it: their writes give up without
            // committing (they wait for this one's outcome), and their callers are told.
            let mut failed = vec![flight];
            while let Some(mut later) = self.in_flight.pop_front() {
                let _ = (&mut later.commit).await;
                failed.push(later);
            }
            for flight in failed {
                for label in &flight.finalised_now {
                    self.finalised_periods.remove(label);
                }
            }
            self.reload().await;
            return false;
        }
        // What the batches still in flight touched stays: the oldest of them was prepared
        // after the earliest tick.
        let tick = self
            .in_flight
            .front()
            .map_or(tick, |next| next.tick.min(tick));
        if let Some(sequence) = flight.last_sequence {
            self.committed_through = sequence;
        }
        let evict_started = Instant::now();
        self.ledger.forget_committed_receipts_before(
            flight.accepted_at_ms - self.receipt_retention_ms,
            self.committed_through,
        );
        self.ledger
            .forget_committed_receipts_beyond(self.receipts_max, self.committed_through);
        self.ledger
            .evict_used_through(self.members_max, self.references_max, tick);
        metrics::histogram!("coalition_writer_evict_seconds")
            .record(evict_started.elapsed().as_secs_f64());
        self.start_checkpoint();
        let (members, references) = self.ledger.resident();
        metrics::gauge!("coalition_working_set_members").set(members as f64);
        metrics::gauge!("coalition_working_set_references").set(references as f64);
        metrics::gauge!("coalition_working_set_receipts")
            .set(self.ledger.receipts_in_memory() as f64);
        true
    }

    /// Starts a WAL checkpoint beside the writer unless one is still running: SQLite's
    /// automatic checkpoint would otherwise run inside the writer's commit (a third of the
    /// commit task's time on the SQLite mall day, docs/benchmarks.md).
    fn start_checkpoint(&mut self) {
        if !self.storage.keeps_wal()
            || self
                .checkpoint
                .as_ref()
                .is_some_and(|running| !running.is_finished())
        {
            return;
        }
        let storage = self.storage.clone();
        self.checkpoint = Some(tokio::spawn(async move {
            let started = Instant::now();
            match storage.checkpoint_wal().await {
                Ok(()) => metrics::histogram!("coalition_wal_checkpoint_seconds")
                    .record(started.elapsed().as_secs_f64()),
                Err(error) => {
                    tracing::warn!(%error, "WAL checkpoint failed; the writer's own will run")
                }
            }
        }));
    }

    /// Releases holds past their deadline and, when due, runs the scheduled expiry run (or
    /// the next part of an unfinished one).
    fn housekeeping(
        &mut self,
        at_ms: i64,
        expiry_continues: bool,
        changes: &mut Changes,
    ) -> Result<(), String> {
        let holds = self
            .ledger
            .expire_holds(at_ms, changes)
            .map_err(|error| error.to_string())?;
        if holds.entries > 0 {
            metrics::counter!("coalition_holds_expired_total").increment(holds.entries as u64);
            tracing::info!(
                holds = holds.entries,
                points = holds.points,
                "holds expired"
            );
        }
        let scheduled = self
            .expiry_run_interval_ms
            .is_some_and(|_| at_ms >= self.next_expiry_run_ms);
        if let Some(interval_ms) = self.expiry_run_interval_ms
            && scheduled
        {
            self.next_expiry_run_ms = at_ms.saturating_add(interval_ms);
        }
        if scheduled || expiry_continues {
            let summary = self
                .ledger
                .expire_lots(at_ms, changes)
                .map_err(|error| error.to_string())?;
            log_expiry(&summary, if scheduled { "scheduled" } else { "continued" });
        }
        Ok(())
    }

    /// Nothing of the batch is acknowledged; the working set is dropped and the small state
    /// reloaded from the database (no replay): the next batches load what they need again.
    async fn abort(&mut self, pending: Vec<Pending>, error: EngineError) {
        // The batch in flight commits or fails first, so that the reload sees its outcome.
        let tick = self.ledger.use_tick();
        self.settle_in_flight(tick).await;
        for reply in pending {
            reply.fail(&error);
        }
        self.reload().await;
    }

    /// Rebuilds the ledger from what the database holds (the small state; the working set
    /// starts empty), after a batch that will not commit went into memory.
    async fn reload(&mut self) {
        match self.storage.load_start().await {
            Ok(state) => {
                self.ledger = state.ledger;
                self.ledger.set_currency(self.currency);
                self.ledger.set_policy(self.policy);
                self.committed_through = self.ledger.head().sequence;
            }
            Err(reload_error) => {
                tracing::error!(error = %reload_error, "cannot rebuild the ledger after a failed batch; the writer stops");
                self.receiver.close();
            }
        }
    }
}

/// Waits for the oldest commit in flight, if there is one (forever otherwise); whether it
/// committed.
async fn commit_finished(in_flight: &mut std::collections::VecDeque<InFlight>) -> bool {
    match in_flight.front_mut() {
        Some(flight) => (&mut flight.commit).await.unwrap_or(false),
        None => std::future::pending().await,
    }
}

/// The batch limit for writes that recently took `per_submission_nanos` each (0: none yet,
/// the ceiling): about `BATCH_WRITE_TARGET_NANOS` of work, within
/// `BATCH_LEN_MIN..=batch_len_max`.
fn batch_len_for(per_submission_nanos: u64, batch_len_max: usize) -> usize {
    if per_submission_nanos == 0 {
        return batch_len_max;
    }
    usize::try_from(BATCH_WRITE_TARGET_NANOS / per_submission_nanos)
        .unwrap_or(usize::MAX)
        .clamp(BATCH_LEN_MIN.min(batch_len_max), batch_len_max)
}

fn log_expiry(summary: &ExpirySummary, trigger: &str) {
    if summary.entries > 0 {
        metrics::counter!("coalition_points_expired_total").increment(summary.points as u64);
        tracing::info!(
            trigger,
            members = summary.entries,
            points = summary.points,
            breakage_minor = summary.money_minor,
            "expiry run booked expired points to breakage"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_hold_about_the_target_write_time_within_their_bounds() {
        // Nothing measured yet: the ceiling.
        assert_eq!(batch_len_for(0, 4096), 4096);
        // 80 µs a submission: 80 ms of write is 1,000 submissions.
        assert_eq!(batch_len_for(80_000, 4096), 1000);
        // Slow writes never shrink batches below the floor, fast ones never pass the ceiling.
        assert_eq!(batch_len_for(10_000_000, 4096), BATCH_LEN_MIN);
        assert_eq!(batch_len_for(1, 4096), 4096);
        // A ceiling below the floor is the ceiling.
        assert_eq!(batch_len_for(10_000_000, 16), 16);
    }
}

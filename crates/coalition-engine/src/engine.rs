//! The engine handle shared by the gRPC services and the CLI.

use std::sync::{Arc, RwLock};

use coalition_domain::SignedEnvelope;
use coalition_domain::ledger::ExpirySummary;
use coalition_domain::ledger::Outcome;
use coalition_domain::registry::RegistryError;
use coalition_domain::settlement::{
    Cutoff, Period, PeriodError, Settlement, SettlementBuilder, SettlementError,
};
use coalition_domain::signing::{self, SignatureFault};
use coalition_domain::{
    CurrencyCode, FinalisedPeriod, LedgerPolicy, MerchantTerms, Prices, TermsError,
};
use coalition_domain::{
    KeyId, Limits, MemberError, MemberId, Merchant, MerchantCategory, MerchantId, MerchantKey,
    MerchantStatus, RawSubmission, Receipt, Registry, Rejection, RejectionReason, Submission,
};
use coalition_storage::{Storage, StorageError, WriterLock};
use tokio::sync::{Mutex, mpsc, oneshot};

use tokio::task::JoinHandle;

use crate::clock::Clock;
use crate::writer::{Command, CommittedEntries, Writer};

/// Limits of the writing path.
#[derive(Debug, Clone, Copy)]
pub struct EngineConfig {
    /// The currency of money legs.
    pub currency: CurrencyCode,
    /// The most submissions one writer batch (one database transaction) holds.
    pub batch_len_max: usize,
    /// How many commands may wait for the writer before callers wait in turn.
    pub writer_queue_len_max: usize,
    pub limits: Limits,
    /// Hold timeouts and point lifetimes.
    pub policy: LedgerPolicy,
    /// How often the writer runs the expiry run by itself; `None` for only on request.
    pub expiry_run_interval_ms: Option<i64>,
    /// When one settlement period ends and the next begins, each day.
    pub settlement_cutoff: Cutoff,
    /// The writer's working set: how many members (wallet, accounts, tier), referred entries
    /// (reversible remainders, open holds) and idempotency receipts stay in memory between
    /// batches. The least recently used beyond these are dropped after each commit; the
    /// database has them. A batch may hold more while it runs (all it touches).
    pub writer_cache_members_max: usize,
    pub writer_cache_references_max: usize,
    pub writer_cache_receipts_max: usize,
    /// The most members one expiry run loads into a batch. A run with more members whose
    /// points have expired continues in the following batches (an idle writer takes the next
    /// part each second), so an expiry boundary that falls on millions of members never
    /// holds them in memory at once.
    pub expiry_members_per_batch_max: usize,
}

/// Default working-set budgets (see `EngineConfig::writer_cache_members_max`).
pub const WRITER_CACHE_MEMBERS_MAX_DEFAULT: usize = 20_000;
pub const WRITER_CACHE_REFERENCES_MAX_DEFAULT: usize = 50_000;
pub const WRITER_CACHE_RECEIPTS_MAX_DEFAULT: usize = 50_000;
/// Default part of an expiry run per batch (see `EngineConfig::expiry_members_per_batch_max`).
pub const EXPIRY_MEMBERS_PER_BATCH_MAX_DEFAULT: usize = 20_000;

impl EngineConfig {
    /// How long the receipts of transactions stay in the writer's memory, counted from when
    /// they happened: a retry of the same body is refused by the offline window after this
    /// anyway, and older transaction ids are looked up in the journal when reused.
    pub fn receipt_retention_ms(&self) -> i64 {
        self.limits.offline_window_ms + self.limits.future_skew_max_ms + RECEIPT_RETENTION_MARGIN_MS
    }
}

/// The default daily cut-off: 04:00, after the mall's late-night trade, in UTC+8.
pub const CUTOFF_TIME_DEFAULT: &str = "04:00";
pub const CUTOFF_OFFSET_DEFAULT: &str = "+08:00";

/// The largest single funding, in minor units: a guard against a misplaced decimal point.
pub const FUNDING_MINOR_MAX: i64 = 1_000_000_000_000;

/// Extra time receipts stay in memory beyond the offline window, for queueing delays.
const RECEIPT_RETENTION_MARGIN_MS: i64 = 3_600_000;

/// Entries per page when a period's settlement is computed: bounds its memory whatever the
/// period's size (a page of entries with their postings is a few MiB).
const SETTLEMENT_PAGE_LEN: u64 = 5_000;

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            currency: CurrencyCode::new(coalition_domain::ledger::CURRENCY_DEFAULT)
                .expect("a valid code"),
            batch_len_max: 4096,
            writer_queue_len_max: 1024,
            limits: Limits::default(),
            policy: LedgerPolicy::default(),
            expiry_run_interval_ms: Some(3_600_000),
            settlement_cutoff: Cutoff::parse(CUTOFF_TIME_DEFAULT, CUTOFF_OFFSET_DEFAULT)
                .expect("a valid cut-off"),
            writer_cache_members_max: WRITER_CACHE_MEMBERS_MAX_DEFAULT,
            writer_cache_references_max: WRITER_CACHE_REFERENCES_MAX_DEFAULT,
            writer_cache_receipts_max: WRITER_CACHE_RECEIPTS_MAX_DEFAULT,
            expiry_members_per_batch_max: EXPIRY_MEMBERS_PER_BATCH_MAX_DEFAULT,
        }
    }
}

/// Failures of the engine itself, as opposed to business rejections.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EngineError {
    #[error("the database did not commit the batch: {0}")]
    StorageUnavailable(String),
    #[error("a ledger invariant was violated; the batch was aborted: {0}")]
    InvariantViolated(String),
    #[error("the engine is shutting down")]
    ShuttingDown,
}

/// Why an administrative command was refused.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AdminError {
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Member(#[from] MemberError),
    #[error(transparent)]
    Terms(#[from] TermsError),
    #[error("invalid {field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    #[error(transparent)]
    Period(#[from] PeriodError),
    #[error(
        "period {period} is still open: its cut-off is {end_ms} (Unix ms) and it can be finalised after that"
    )]
    PeriodOpen { period: String, end_ms: i64 },
    #[error(
        "merchant {merchant_id} is owed {payable_minor} minor units from finalised periods; a payout of {amount_minor} would pay more than that"
    )]
    PayoutExceedsPayable {
        merchant_id: MerchantId,
        payable_minor: i64,
        amount_minor: i64,
    },
    #[error("the settlement of period {period} cannot be computed: {error}")]
    Settlement {
        period: String,
        error: SettlementError,
    },
    #[error(transparent)]
    Engine(#[from] EngineError),
}

/// Where a settlement period stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeriodStatus {
    /// Before its cut-off.
    Open,
    /// Past its cut-off, not finalised.
    Closed,
    /// Finalised: recorded and its closing entry booked.
    Finalised,
}

/// A period's settlement and where the period stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettlementView {
    pub settlement: Settlement,
    pub status: PeriodStatus,
    pub closing_sequence: Option<u64>,
    pub finalised_at_ms: Option<i64>,
}

impl SettlementView {
    fn finalised(record: FinalisedPeriod) -> SettlementView {
        SettlementView {
            settlement: record.settlement,
            status: PeriodStatus::Finalised,
            closing_sequence: record.closing_sequence,
            finalised_at_ms: Some(record.finalised_at_ms),
        }
    }
}

impl From<StorageError> for AdminError {
    fn from(error: StorageError) -> Self {
        AdminError::Engine(EngineError::StorageUnavailable(error.to_string()))
    }
}

/// A signed envelope as received: nothing in it has been checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    pub merchant_id: String,
    pub key_id: String,
    pub body: Vec<u8>,
    pub signature: Vec<u8>,
}

/// What a submission returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubmitOutcome {
    pub receipt: Receipt,
    /// True when the same body was accepted before and this is its original result.
    pub duplicate: bool,
}

/// A merchant to register.
#[derive(Debug, Clone)]
pub struct NewMerchant {
    pub merchant_id: MerchantId,
    pub name: String,
    pub category: MerchantCategory,
    pub keys: Vec<MerchantKey>,
}

/// What an enrolment command did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EnrollSummary {
    pub enrolled: u64,
    pub already_enrolled: u64,
    /// The members refused, with why, in the order given.
    pub refused: Vec<(MemberId, MemberError)>,
}

struct Inner {
    storage: Storage,
    registry: RwLock<Registry>,
    config: EngineConfig,
    clock: Arc<dyn Clock>,
    sender: mpsc::Sender<Command>,
    writer: Mutex<Option<JoinHandle<()>>>,
    /// Serialises registry changes so the database and memory change in the same order.
    admin: Mutex<()>,
    /// Released when the writer has stopped.
    writer_lock: Mutex<Option<WriterLock>>,
    /// Committed batches, for entry subscriptions (`committed_entries`).
    committed: tokio::sync::broadcast::Sender<Arc<CommittedEntries>>,
    /// The last previewed period's settlement as far as it was read, so that the next
    /// preview of it reads only the entries committed since (`preview_settlement`).
    preview: Mutex<Option<PreviewProgress>>,
}

/// A period's settlement built through entry `through` (0: none yet). Committed entries never
/// change and a period's entries are a run of sequences, so what was added stays right.
struct PreviewProgress {
    label: String,
    builder: SettlementBuilder,
    through: u64,
}

/// Committed batches the live feed of entry subscriptions keeps for a subscriber that has
/// not read them yet; one that falls further behind reads from the database instead.
pub const COMMITTED_FEED_BATCHES: usize = 16;

/// A cheap, cloneable handle to the running engine.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("Engine").finish_non_exhaustive()
    }
}

impl Engine {
    /// Rebuilds state from storage and starts the writer.
    /// `writer_lock` is the database's single-writer lock (`Storage::lock_writer`); the
    /// engine holds it until `shutdown`.
    pub async fn start(
        storage: Storage,
        config: EngineConfig,
        clock: Arc<dyn Clock>,
        writer_lock: WriterLock,
    ) -> Result<Engine, StorageError> {
        assert!(config.batch_len_max > 0, "batch_len_max must be positive");
        assert!(
            config.writer_queue_len_max > 0,
            "writer_queue_len_max must be positive"
        );
        let started = std::time::Instant::now();
        let state = storage.load_start().await?;
        tracing::info!(
            head_sequence = state.ledger.head().sequence,
            merchants = state.registry.merchants().count(),
            verified_entries = state.verified_entries,
            rebuilt_state = state.rebuilt_state,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "ledger loaded: the chain verified from its last checkpoint, members load as batches need them"
        );
        let mut ledger = state.ledger;
        ledger.set_currency(config.currency);
        ledger.set_policy(config.policy);
        let (sender, receiver) = mpsc::channel(config.writer_queue_len_max);
        // Acceptance times continue from the journal's, whatever the clock says after a
        // restart, so an entry is never accepted before one already booked.
        let last_accepted_at_ms = ledger.last_accepted_at_ms();
        let finalised_periods = storage.finalised_labels().await?.into_iter().collect();
        let committed_through = ledger.head().sequence;
        let (committed, _) = tokio::sync::broadcast::channel(COMMITTED_FEED_BATCHES);
        let writer = Writer {
            committed: committed.clone(),
            finalised_periods,
            ledger,
            storage: storage.clone(),
            clock: clock.clone(),
            batch_len_max: config.batch_len_max,
            write_nanos_per_submission: Arc::default(),
            receipt_retention_ms: config.receipt_retention_ms(),
            receiver,
            last_accepted_at_ms,
            currency: config.currency,
            policy: config.policy,
            expiry_run_interval_ms: config.expiry_run_interval_ms,
            next_expiry_run_ms: i64::MIN,
            expiry_members_max: config.expiry_members_per_batch_max,
            expiry_unfinished: false,
            members_max: config.writer_cache_members_max,
            references_max: config.writer_cache_references_max,
            receipts_max: config.writer_cache_receipts_max,
            in_flight: std::collections::VecDeque::new(),
            committed_through,
            checkpoint: None,
        };
        let handle = tokio::spawn(writer.run());
        Ok(Engine {
            inner: Arc::new(Inner {
                storage,
                registry: RwLock::new(state.registry),
                config,
                clock,
                sender,
                writer: Mutex::new(Some(handle)),
                admin: Mutex::new(()),
                writer_lock: Mutex::new(Some(writer_lock)),
                committed,
                preview: Mutex::new(None),
            }),
        })
    }

    /// The live feed of committed entries: every batch committed after this call, in commit
    /// order, each once. The feed keeps `COMMITTED_FEED_BATCHES` batches for a receiver that
    /// has not read them; a receiver further behind is told it lagged (and reads what it
    /// missed from the database). The writer never waits for a receiver.
    pub fn committed_entries(&self) -> tokio::sync::broadcast::Receiver<Arc<CommittedEntries>> {
        self.inner.committed.subscribe()
    }

    pub fn storage(&self) -> &Storage {
        &self.inner.storage
    }

    pub fn now_ms(&self) -> i64 {
        self.inner.clock.now_ms()
    }

    /// A copy of one merchant's registration.
    pub fn merchant(&self, merchant_id: &MerchantId) -> Option<Merchant> {
        self.registry().merchant(merchant_id).cloned()
    }

    /// Every registered merchant, in the registry's order (by id).
    pub fn merchants(&self) -> Vec<Merchant> {
        self.registry().merchants().cloned().collect()
    }

    fn registry(&self) -> std::sync::RwLockReadGuard<'_, Registry> {
        self.inner
            .registry
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Checks the envelope's key and signature (strictly) over `domain || body`. Runs on the
    /// caller's thread, in parallel with other callers; cheap checks first.
    pub fn authenticate(&self, envelope: &Envelope, domain: &[u8]) -> Result<(), Rejection> {
        let signature = signing::parse_signature(&envelope.signature).map_err(|_| {
            Rejection::new(
                RejectionReason::SignatureMalformed,
                format!(
                    "a signature is 64 bytes, this one is {}",
                    envelope.signature.len()
                ),
            )
        })?;
        let key =
            *self
                .registry()
                .authorize(&envelope.merchant_id, &envelope.key_id, self.now_ms())?;
        signing::verify(&key, domain, &envelope.body, &signature).map_err(|fault| match fault {
            SignatureFault::Malformed => {
                Rejection::new(RejectionReason::SignatureMalformed, "malformed signature")
            }
            SignatureFault::Invalid => Rejection::new(
                RejectionReason::SignatureInvalid,
                format!(
                    "the signature does not verify with key {} of merchant {}",
                    envelope.key_id, envelope.merchant_id
                ),
            ),
        })
    }

    /// Checks a decoded body against the envelope, the limits and the clock.
    pub fn check_submission(
        &self,
        raw: RawSubmission,
        envelope: Envelope,
    ) -> Result<Submission, Rejection> {
        let mut submission = Submission::check(
            raw,
            &envelope.merchant_id,
            coalition_domain::body_hash(&envelope.body),
            self.now_ms(),
            &self.inner.config.limits,
        )?;
        // Kept with the entry, moved rather than copied (an authenticated envelope's
        // signature is 64 bytes).
        if let Ok(signature) = <[u8; 64]>::try_from(envelope.signature.as_slice()) {
            submission.envelope = Some(std::sync::Arc::new(SignedEnvelope {
                key_id: envelope.key_id,
                body: envelope.body,
                signature,
            }));
        }
        Ok(submission)
    }

    async fn send(&self, command: Command) -> Result<(), EngineError> {
        self.inner
            .sender
            .send(command)
            .await
            .map_err(|_| EngineError::ShuttingDown)
    }

    /// Hands checked submissions to the writer and waits until their batch is committed.
    /// Results come back in the order given.
    pub async fn submit(
        &self,
        submissions: Vec<Submission>,
    ) -> Result<Vec<Result<SubmitOutcome, Rejection>>, EngineError> {
        if submissions.is_empty() {
            return Ok(Vec::new());
        }
        let (reply, response) = oneshot::channel();
        self.send(Command::Submit { submissions, reply }).await?;
        let results = response.await.map_err(|_| EngineError::ShuttingDown)??;
        Ok(results
            .into_iter()
            .map(|result| {
                result.map(|outcome| match outcome {
                    Outcome::Applied(receipt) => SubmitOutcome {
                        receipt,
                        duplicate: false,
                    },
                    Outcome::Duplicate(receipt) => SubmitOutcome {
                        receipt,
                        duplicate: true,
                    },
                })
            })
            .collect())
    }

    /// Enrolls members; already enrolled ones are counted, not refused.
    pub async fn enroll_members(
        &self,
        members: Vec<(MemberId, Option<String>)>,
    ) -> Result<EnrollSummary, EngineError> {
        let (reply, response) = oneshot::channel();
        self.send(Command::Enroll { members, reply }).await?;
        response.await.map_err(|_| EngineError::ShuttingDown)?
    }

    /// Makes `alias` stand for `target`, merging its wallet when it has points.
    pub async fn alias_member(
        &self,
        alias: MemberId,
        target: MemberId,
    ) -> Result<Option<Receipt>, AdminError> {
        let (reply, response) = oneshot::channel();
        self.send(Command::Alias {
            alias,
            target,
            reply,
        })
        .await?;
        response
            .await
            .map_err(|_| AdminError::Engine(EngineError::ShuttingDown))?
    }

    /// Adds the next version of a merchant's terms, effective from `effective_from_ms` or, when
    /// `None`, from the next millisecond after the last accepted entry. Goes through the writer,
    /// so it is ordered exactly with the entries it prices.
    pub async fn set_merchant_terms(
        &self,
        merchant_id: MerchantId,
        effective_from_ms: Option<i64>,
        prices: Prices,
    ) -> Result<MerchantTerms, AdminError> {
        if self.registry().merchant(&merchant_id).is_none() {
            return Err(AdminError::Registry(RegistryError::MerchantUnknown(
                merchant_id,
            )));
        }
        let (reply, response) = oneshot::channel();
        self.send(Command::Terms {
            merchant_id,
            effective_from_ms,
            prices,
            reply,
        })
        .await?;
        response
            .await
            .map_err(|_| AdminError::Engine(EngineError::ShuttingDown))?
    }

    /// Adds the next version of the alliance's earn rules (tier multipliers and campaigns),
    /// effective from `effective_from_ms` or, when `None`, from now. Through the writer, like
    /// terms, so it is ordered exactly with the earns it rates.
    pub async fn set_earn_rules(
        &self,
        effective_from_ms: Option<i64>,
        tier_multipliers: std::collections::BTreeMap<String, rust_decimal::Decimal>,
        campaigns: Vec<coalition_domain::Campaign>,
    ) -> Result<coalition_domain::EarnRules, AdminError> {
        if let Some(merchant_id) = campaigns
            .iter()
            .filter_map(|campaign| campaign.merchant_id.as_ref())
            .find(|merchant_id| self.registry().merchant(merchant_id).is_none())
        {
            return Err(AdminError::Registry(RegistryError::MerchantUnknown(
                merchant_id.clone(),
            )));
        }
        let (reply, response) = oneshot::channel();
        self.send(Command::EarnRules {
            effective_from_ms,
            tier_multipliers,
            campaigns,
            reply,
        })
        .await?;
        response
            .await
            .map_err(|_| AdminError::Engine(EngineError::ShuttingDown))?
    }

    /// Books money a merchant paid in (funding a prepaid merchant, or paying down a post-paid
    /// one's position). Returns the entry's sequence and the merchant's new position.
    pub async fn fund_merchant(
        &self,
        merchant_id: MerchantId,
        amount_minor: i64,
        reference: String,
    ) -> Result<(u64, i64), AdminError> {
        self.check_money_movement(&merchant_id, amount_minor, &reference)?;
        let (reply, response) = oneshot::channel();
        self.send(Command::Fund {
            merchant_id,
            amount_minor,
            reference,
            reply,
        })
        .await?;
        response
            .await
            .map_err(|_| AdminError::Engine(EngineError::ShuttingDown))?
            .map_err(AdminError::Engine)
    }

    /// Books money the operator paid a merchant against what finalised periods left payable
    /// to it (never more). Returns the entry's sequence and what is still payable.
    pub async fn pay_out(
        &self,
        merchant_id: MerchantId,
        amount_minor: i64,
        reference: String,
    ) -> Result<(u64, i64), AdminError> {
        self.check_money_movement(&merchant_id, amount_minor, &reference)?;
        let (reply, response) = oneshot::channel();
        self.send(Command::Payout {
            merchant_id,
            amount_minor,
            reference,
            reply,
        })
        .await?;
        response
            .await
            .map_err(|_| AdminError::Engine(EngineError::ShuttingDown))?
    }

    /// The checks funding and payouts share: a known merchant, a sane amount, a reference.
    fn check_money_movement(
        &self,
        merchant_id: &MerchantId,
        amount_minor: i64,
        reference: &str,
    ) -> Result<(), AdminError> {
        if self.registry().merchant(merchant_id).is_none() {
            return Err(AdminError::Registry(RegistryError::MerchantUnknown(
                merchant_id.clone(),
            )));
        }
        if amount_minor <= 0 || amount_minor > FUNDING_MINOR_MAX {
            return Err(AdminError::Invalid {
                field: "amount_minor",
                message: format!(
                    "must be from 1 to {FUNDING_MINOR_MAX} minor units, got {amount_minor}"
                ),
            });
        }
        if reference.trim().is_empty() || reference.len() > 200 {
            return Err(AdminError::Invalid {
                field: "reference",
                message: "a payment needs a reference (the bank transfer's), at most 200 bytes"
                    .into(),
            });
        }
        Ok(())
    }

    /// The expiry run: books every lot expired by now to breakage. Idempotent: a second run
    /// finds nothing left to expire.
    pub async fn run_expiry(&self) -> Result<ExpirySummary, EngineError> {
        let (reply, response) = oneshot::channel();
        self.send(Command::Expire { reply }).await?;
        response.await.map_err(|_| EngineError::ShuttingDown)?
    }

    /// The daily settlement cut-off.
    pub fn settlement_cutoff(&self) -> Cutoff {
        self.inner.config.settlement_cutoff
    }

    /// The period named `label` (`None`: the one open now).
    pub fn settlement_period(&self, label: Option<&str>) -> Result<Period, PeriodError> {
        let cutoff = self.inner.config.settlement_cutoff;
        match label {
            None => Ok(cutoff.period_at(self.now_ms())),
            Some(label) => cutoff.period(label.trim()),
        }
    }

    /// Computes a period's settlement from what the database holds: for an open period the
    /// entries committed so far. Reads the period a page at a time, so its memory does not
    /// grow with the period.
    async fn compute_settlement(&self, period: &Period) -> Result<Settlement, AdminError> {
        let storage = self.storage();
        let failed = |error| AdminError::Settlement {
            period: period.label.clone(),
            error,
        };
        let mut pages = storage
            .period_pages(period.start_ms, period.end_ms, SETTLEMENT_PAGE_LEN)
            .await?;
        let mut builder =
            SettlementBuilder::new(period, self.inner.config.currency, pages.previous_hash);
        while let Some((entries, attributions)) = pages.next_page().await? {
            builder.add_page(&entries, &attributions).map_err(failed)?;
        }
        let shares = storage.breakage_shares_at(period.end_ms - 1).await?;
        builder.finish(&shares).map_err(failed)
    }

    /// What `compute_settlement` gives, reading only the entries committed since the last
    /// preview of the same period (the finance console's overview previews the open period
    /// on every view). Finalising always computes from the whole period.
    async fn preview_from_progress(&self, period: &Period) -> Result<Settlement, AdminError> {
        let storage = self.storage();
        let failed = |error| AdminError::Settlement {
            period: period.label.clone(),
            error,
        };
        let mut progress = self.inner.preview.lock().await;
        let mut pages = storage
            .period_pages(period.start_ms, period.end_ms, SETTLEMENT_PAGE_LEN)
            .await?;
        let (mut builder, through) = match progress.take() {
            Some(done) if done.label == period.label => (done.builder, done.through),
            _ => (
                SettlementBuilder::new(period, self.inner.config.currency, pages.previous_hash),
                0,
            ),
        };
        pages.resume_after(through);
        let mut through = through;
        while let Some((entries, attributions)) = pages.next_page().await? {
            builder.add_page(&entries, &attributions).map_err(failed)?;
            through = entries.last().map_or(through, |entry| entry.sequence);
        }
        *progress = Some(PreviewProgress {
            label: period.label.clone(),
            builder: builder.clone(),
            through,
        });
        drop(progress);
        let shares = storage.breakage_shares_at(period.end_ms - 1).await?;
        builder.finish(&shares).map_err(failed)
    }

    /// A period's settlement, booking nothing: what was recorded for a finalised period,
    /// what it would be for one that is open or closed.
    pub async fn preview_settlement(
        &self,
        label: Option<&str>,
    ) -> Result<SettlementView, AdminError> {
        let period = self.settlement_period(label)?;
        if let Some(record) = self.storage().finalised_period(&period.label).await? {
            return Ok(SettlementView::finalised(record));
        }
        let settlement = self.preview_from_progress(&period).await?;
        let status = if self.now_ms() >= period.end_ms {
            PeriodStatus::Closed
        } else {
            PeriodStatus::Open
        };
        Ok(SettlementView {
            settlement,
            status,
            closing_sequence: None,
            finalised_at_ms: None,
        })
    }

    /// Finalises a period whose cut-off has passed: books its closing entry and records it.
    /// Finalising again returns the recorded settlement and books nothing; the flag says
    /// whether this call finalised it.
    pub async fn finalise_settlement(
        &self,
        label: &str,
    ) -> Result<(SettlementView, bool), AdminError> {
        let period = self.settlement_period(Some(label))?;
        if let Some(record) = self.storage().finalised_period(&period.label).await? {
            return Ok((SettlementView::finalised(record), false));
        }
        // Acceptance time must have passed the cut-off in the writer: from then on every
        // entry of the period is committed and none can join it.
        let (reply, response) = oneshot::channel();
        self.send(Command::Close {
            end_ms: period.end_ms,
            reply,
        })
        .await?;
        if !response.await.map_err(|_| EngineError::ShuttingDown)?? {
            return Err(AdminError::PeriodOpen {
                period: period.label,
                end_ms: period.end_ms,
            });
        }
        let settlement = self.compute_settlement(&period).await?;
        let (reply, response) = oneshot::channel();
        self.send(Command::Finalise {
            settlement: Box::new(settlement),
            reply,
        })
        .await?;
        match response.await.map_err(|_| EngineError::ShuttingDown)?? {
            Some(record) => {
                tracing::info!(
                    period = %period.label,
                    closing_sequence = ?record.closing_sequence,
                    "settlement period finalised"
                );
                Ok((SettlementView::finalised(record), true))
            }
            // Finalised by a concurrent call in the meantime.
            None => {
                let record = self
                    .storage()
                    .finalised_period(&period.label)
                    .await?
                    .ok_or_else(|| {
                        AdminError::Engine(EngineError::InvariantViolated(format!(
                            "period {} is finalised in memory but not in the database",
                            period.label
                        )))
                    })?;
                Ok((SettlementView::finalised(record), false))
            }
        }
    }

    /// Registers a merchant: checked against a copy of the registry, written to the
    /// database, then made visible to the signature checkers.
    pub async fn register_merchant(&self, merchant: NewMerchant) -> Result<Merchant, AdminError> {
        let _guard = self.inner.admin.lock().await;
        let merchant = Merchant {
            merchant_id: merchant.merchant_id,
            name: merchant.name,
            category: merchant.category,
            status: MerchantStatus::Active,
            registered_at_ms: self.now_ms(),
            keys: merchant.keys,
        };
        let mut copy = self.registry().clone();
        copy.check_new(&merchant.merchant_id, &merchant.keys)?;
        copy.register(merchant.clone())?;
        self.inner.storage.insert_merchant(&merchant).await?;
        self.replace_registry(copy);
        Ok(merchant)
    }

    pub async fn add_merchant_key(
        &self,
        merchant_id: &MerchantId,
        key: MerchantKey,
    ) -> Result<(), AdminError> {
        let _guard = self.inner.admin.lock().await;
        let mut copy = self.registry().clone();
        copy.check_new(merchant_id, std::slice::from_ref(&key))?;
        copy.add_key(merchant_id, key.clone())?;
        self.inner
            .storage
            .insert_merchant_key(merchant_id, &key)
            .await?;
        self.replace_registry(copy);
        Ok(())
    }

    /// Revokes a key from now on.
    pub async fn revoke_merchant_key(
        &self,
        merchant_id: &MerchantId,
        key_id: &KeyId,
    ) -> Result<i64, AdminError> {
        let _guard = self.inner.admin.lock().await;
        let revoked_at_ms = self.now_ms();
        let mut copy = self.registry().clone();
        copy.revoke_key(merchant_id, key_id, revoked_at_ms)?;
        self.inner
            .storage
            .revoke_merchant_key(merchant_id, key_id, revoked_at_ms)
            .await?;
        self.replace_registry(copy);
        Ok(revoked_at_ms)
    }

    pub async fn set_merchant_status(
        &self,
        merchant_id: &MerchantId,
        status: MerchantStatus,
    ) -> Result<(), AdminError> {
        let _guard = self.inner.admin.lock().await;
        let mut copy = self.registry().clone();
        copy.set_status(merchant_id, status)?;
        self.inner
            .storage
            .set_merchant_status(merchant_id, status)
            .await?;
        self.replace_registry(copy);
        Ok(())
    }

    fn replace_registry(&self, registry: Registry) {
        *self
            .inner
            .registry
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = registry;
    }

    /// Stops the writer after it has committed and acknowledged everything sent before.
    pub async fn shutdown(&self) {
        let _ = self.inner.sender.send(Command::Shutdown).await;
        if let Some(handle) = self.inner.writer.lock().await.take() {
            let _ = handle.await;
        }
        if let Some(lock) = self.inner.writer_lock.lock().await.take() {
            lock.release().await;
        }
    }
}

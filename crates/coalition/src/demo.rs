//! `coalition demo`: a server on a fresh embedded database, the mall's partners registered
//! with real keys, a day of mall traffic driven through the gRPC API by several concurrent
//! clients (batch, stream and one-at-a-time), then a summary and the ledger check.
//!
//! Longer than 800 lines: the demo is one script, read top to bottom by newcomers; its
//! settlement part is already in `demo_settlement`.

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use coalition_domain::settlement::PaymentDirection;
use coalition_engine::Clock;
use coalition_grpc::client::{
    AdminServiceClient, AdminToken, QueryServiceClient, SubmissionServiceClient,
};
use coalition_grpc::pb;
use coalition_storage::{ConnectOptions, Storage};
use indicatif::{ProgressBar, ProgressStyle};
use tokio::task::JoinSet;
use tonic::transport::Channel;

use crate::config::Config;
use crate::demo_settlement;
use crate::runtime::RunningServer;
use crate::workload::{Day, MallDayProfile, generate};

#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Where the demo keeps its database; a database left by an earlier run is replaced.
    #[arg(long, default_value = "coalition-demo")]
    pub dir: PathBuf,
    /// Traffic as a multiple of one mall's day (1.0 = 60,000 earns and 12,000 burns).
    #[arg(long, default_value_t = 1.0)]
    pub scale: f64,
    /// Concurrent gateway clients: one streams, one sends one transaction per call, the rest
    /// send batches.
    #[arg(long, default_value_t = 8)]
    pub clients: usize,
    /// Envelopes per batch call.
    #[arg(long, default_value_t = 200)]
    pub batch_len: usize,
    /// Seed of the generated day.
    #[arg(long, default_value_t = 2026)]
    pub seed: u64,
    /// Use this database instead of a fresh SQLite file in --dir (it must be empty).
    #[arg(long)]
    pub database_url: Option<String>,
    /// No progress bars.
    #[arg(long)]
    pub quiet: bool,
    /// After the demo, keep the server and its finance console running on the demo's books
    /// until Ctrl-C, to look at the day's settlement in the browser.
    #[arg(long)]
    pub serve: bool,
    /// Where the console listens with --serve.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub console_address: String,
}

/// Outcomes as the clients saw them.
#[derive(Debug, Default)]
pub struct Tally {
    pub accepted: u64,
    pub duplicates: u64,
    pub rejected: BTreeMap<String, u64>,
    /// Round-trip time of every call (of every chunk, for streams).
    pub call_latencies: Vec<Duration>,
}

impl Tally {
    fn record(&mut self, result: Option<pb::SubmissionResult>) {
        match result.and_then(|result| result.outcome) {
            Some(pb::submission_result::Outcome::Accepted(accepted)) if accepted.duplicate => {
                self.duplicates += 1
            }
            Some(pb::submission_result::Outcome::Accepted(_)) => self.accepted += 1,
            Some(pb::submission_result::Outcome::Rejected(rejected)) => {
                let reason = pb::RejectionReason::try_from(rejected.reason).unwrap_or_default();
                *self
                    .rejected
                    .entry(reason.as_str_name().to_owned())
                    .or_default() += 1;
            }
            None => *self.rejected.entry("NO_RESULT".to_owned()).or_default() += 1,
        }
    }

    fn rejected(&self, reason: pb::RejectionReason) -> u64 {
        self.rejected
            .get(reason.as_str_name())
            .copied()
            .unwrap_or(0)
    }
}

/// How a client sends its share of the traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// SubmitBatch calls of `batch_len` envelopes.
    Batch,
    /// One SubmitStream per chunk of `batch_len` envelopes.
    Stream,
    /// One Submit per envelope, 16 in flight per client, as a fleet of POS terminals.
    OneAtATime,
}

/// Which clients use which mode.
#[derive(Debug, Clone, Copy)]
pub enum ClientMix {
    /// One client streams, one sends one at a time, the rest send batches (the demo).
    Gateways,
    /// Every client uses the same mode (the benchmark).
    All(Mode),
}

const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 24 * HOUR_MS;

/// The demo's clearing fee per point issued or redeemed, in minor units.
const DEMO_FEE_MINOR_PER_POINT: &str = "0.02";

/// How many one-at-a-time calls one such client keeps in flight, as a POS fleet would.
const ONE_AT_A_TIME_IN_FLIGHT: usize = 16;

pub fn progress(total: usize, label: &str, quiet: bool) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total as u64);
    bar.set_style(
        ProgressStyle::with_template("{msg:>10} [{bar:40}] {pos}/{len} {per_sec} eta {eta}")
            .expect("the template is valid")
            .progress_chars("=> "),
    );
    bar.set_message(label.to_owned());
    bar
}

/// Sends all envelopes from `clients` concurrent clients; chunks are taken in time order.
pub async fn drive(
    channel: Channel,
    envelopes: Vec<pb::Envelope>,
    clients: usize,
    batch_len: usize,
    mix: ClientMix,
    bar: &ProgressBar,
) -> anyhow::Result<Tally> {
    let chunks: VecDeque<Vec<pb::Envelope>> = envelopes
        .chunks(batch_len.max(1))
        .map(|chunk| chunk.to_vec())
        .collect();
    let queue = Arc::new(Mutex::new(chunks));
    let tally = Arc::new(Mutex::new(Tally::default()));
    let mut tasks = JoinSet::new();
    for client in 0..clients.max(1) {
        let mode = match (mix, client) {
            (ClientMix::All(mode), _) => mode,
            (ClientMix::Gateways, 0) if clients >= 3 => Mode::Stream,
            (ClientMix::Gateways, 1) if clients >= 3 => Mode::OneAtATime,
            (ClientMix::Gateways, _) => Mode::Batch,
        };
        let queue = queue.clone();
        let tally = tally.clone();
        let channel = channel.clone();
        let bar = bar.clone();
        tasks.spawn(async move {
            let mut submissions = SubmissionServiceClient::new(channel)
                .max_decoding_message_size(64 * 1024 * 1024)
                .max_encoding_message_size(64 * 1024 * 1024);
            loop {
                let Some(chunk) = queue.lock().expect("queue lock").pop_front() else {
                    break;
                };
                let count = chunk.len() as u64;
                let (results, latencies) = send_chunk(&mut submissions, mode, chunk).await?;
                let mut tally = tally.lock().expect("tally lock");
                tally.call_latencies.extend(latencies);
                for result in results {
                    tally.record(result);
                }
                bar.inc(count);
            }
            anyhow::Ok(())
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined??;
    }
    bar.finish();
    let tally = std::mem::take(&mut *tally.lock().expect("tally lock"));
    Ok(tally)
}

async fn send_chunk(
    client: &mut SubmissionServiceClient<Channel>,
    mode: Mode,
    chunk: Vec<pb::Envelope>,
) -> anyhow::Result<(Vec<Option<pb::SubmissionResult>>, Vec<Duration>)> {
    let started = Instant::now();
    match mode {
        Mode::Batch => {
            let response = client
                .submit_batch(pb::SubmitBatchRequest { envelopes: chunk })
                .await
                .context("SubmitBatch failed")?;
            let results = response
                .into_inner()
                .results
                .into_iter()
                .map(Some)
                .collect();
            Ok((results, vec![started.elapsed()]))
        }
        Mode::Stream => {
            let count = chunk.len();
            let requests =
                chunk
                    .into_iter()
                    .enumerate()
                    .map(|(index, envelope)| pb::SubmitStreamRequest {
                        client_reference: index.to_string(),
                        envelope: Some(envelope),
                    });
            let mut responses = client
                .submit_stream(tokio_stream::iter(requests))
                .await
                .context("SubmitStream failed")?
                .into_inner();
            let mut results = vec![None; count];
            let mut received = 0;
            while let Some(response) = responses.message().await.context("SubmitStream failed")? {
                let index: usize = response
                    .client_reference
                    .parse()
                    .context("client reference")?;
                results[index] = response.result;
                received += 1;
            }
            if received != count {
                bail!("the stream answered {received} of {count} submissions");
            }
            Ok((results, vec![started.elapsed()]))
        }
        Mode::OneAtATime => {
            let mut results = Vec::with_capacity(chunk.len());
            let mut latencies = Vec::with_capacity(chunk.len());
            let mut pending = chunk.into_iter();
            loop {
                let mut calls = JoinSet::new();
                for (index, envelope) in pending.by_ref().take(ONE_AT_A_TIME_IN_FLIGHT).enumerate()
                {
                    let mut client = client.clone();
                    calls.spawn(async move {
                        let started = Instant::now();
                        let response = client
                            .submit(pb::SubmitRequest {
                                envelope: Some(envelope),
                            })
                            .await;
                        (index, response, started.elapsed())
                    });
                }
                if calls.is_empty() {
                    break;
                }
                let mut round = vec![None; calls.len()];
                while let Some(joined) = calls.join_next().await {
                    let (index, response, latency) = joined?;
                    round[index] = response.context("Submit failed")?.into_inner().result;
                    latencies.push(latency);
                }
                results.extend(round);
            }
            Ok((results, latencies))
        }
    }
}

/// Registers the day's merchants and enrolls its members through the admin API.
pub async fn register(channel: Channel, token: &str, day: &Day) -> anyhow::Result<()> {
    let mut admin = AdminServiceClient::with_interceptor(channel, AdminToken::new(token)?);
    for merchant in &day.merchants {
        admin
            .register_merchant(pb::RegisterMerchantRequest {
                merchant_id: merchant.signer.merchant_id.clone(),
                name: merchant.name.clone(),
                category: merchant.category as i32,
                keys: vec![pb::MerchantKey {
                    key_id: merchant.signer.key_id.clone(),
                    public_key: merchant.signer.key.verifying_key().as_bytes().to_vec(),
                    ..Default::default()
                }],
            })
            .await
            .with_context(|| format!("registering {}", merchant.signer.merchant_id))?;
        admin
            .set_merchant_terms(pb::SetMerchantTermsRequest {
                merchant_id: merchant.signer.merchant_id.clone(),
                effective_from_unix_ms: 0,
                issue_price_minor_per_point: merchant.issue_price.clone(),
                redeem_price_minor_per_point: merchant.redeem_price.clone(),
                fee_minor_per_point: DEMO_FEE_MINOR_PER_POINT.into(),
                // Mall tenants take back each other's sales (bought at A, returned at C).
                cross_merchant_reversals: merchant.category == pb::MerchantCategory::MallTenant,
                credit_limit_minor: None,
                earn_points_per_minor: crate::workload::EARN_POINTS_PER_MINOR.into(),
                legacy_unit: String::new(),
                points_per_legacy_unit: String::new(),
                // Mall tenants get a fifth of the breakage on their points back at settlement.
                breakage_share: if merchant.category == pb::MerchantCategory::MallTenant {
                    "0.2".into()
                } else {
                    "0".into()
                },
            })
            .await
            .with_context(|| format!("setting the terms of {}", merchant.signer.merchant_id))?;
    }
    for members in day.members.chunks(5_000) {
        let response = admin
            .enroll_members(pb::EnrollMembersRequest {
                members: members
                    .iter()
                    .map(|member_id| pb::MemberEnrollment {
                        member_id: member_id.clone(),
                        tier: None,
                    })
                    .collect(),
            })
            .await
            .context("enrolling members")?
            .into_inner();
        if !response.refusals.is_empty() {
            bail!("members refused: {:?}", response.refusals);
        }
    }
    Ok(())
}

/// The value below which `percent` of the sorted durations fall.
pub fn percentile(sorted: &[Duration], percent: usize) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[(sorted.len() * percent / 100).min(sorted.len() - 1)]
}

pub fn random_token() -> anyhow::Result<String> {
    let mut bytes = [0u8; 24];
    getrandom::fill(&mut bytes).map_err(|error| anyhow::anyhow!("no randomness: {error}"))?;
    Ok(hex::encode(bytes))
}

pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("cannot create {}", args.dir.display()))?;
    let database_path = args.dir.join("coalition.db");
    let database_url = match &args.database_url {
        Some(url) => url.clone(),
        None => {
            for suffix in ["", "-wal", "-shm"] {
                let path = PathBuf::from(format!("{}{suffix}", database_path.display()));
                if path.exists() {
                    std::fs::remove_file(&path)
                        .with_context(|| format!("cannot remove {}", path.display()))?;
                }
            }
            format!("sqlite://{}", database_path.display())
        }
    };
    let token = random_token()?;
    let config = Config {
        listen_address: "127.0.0.1:0".into(),
        metrics_address: "off".into(),
        console_address: "off".into(),
        database_url: database_url.clone(),
        admin_token: Some(token.clone()),
        ..Config::default()
    };
    let server = RunningServer::start(&config).await?;
    println!(
        "Coalition demo: server on {} with database {}",
        server.endpoint(),
        crate::runtime::redacted(&database_url)
    );
    let channel = Channel::from_shared(server.endpoint())?.connect().await?;

    let profile = MallDayProfile::scaled(args.scale);
    // The simulated day ended a minute ago, so all of it lies within the offline window.
    let day_end_ms = coalition_engine::SystemClock.now_ms() - 60_000;
    let generation = Instant::now();
    let day = generate(&profile, args.seed, day_end_ms);
    println!(
        "generated and signed a mall day in {:.1} s: {} partners, {} members, {} carry-in earns, {} submissions",
        generation.elapsed().as_secs_f64(),
        day.merchants.len(),
        day.members.len(),
        day.carry_in.len(),
        day.traffic.len()
    );
    register(channel.clone(), &token, &day).await?;
    println!(
        "registered {} merchants with their keys and enrolled {} members",
        day.merchants.len(),
        day.members.len()
    );

    let accepted_from_ms = coalition_engine::SystemClock.now_ms();
    let bar = progress(day.carry_in.len(), "carry-in", args.quiet);
    let carry_in = drive(
        channel.clone(),
        day.carry_in.clone(),
        args.clients,
        args.batch_len,
        ClientMix::Gateways,
        &bar,
    )
    .await?;
    if carry_in.accepted != day.carry_in.len() as u64 {
        bail!(
            "carry-in: {} of {} accepted: {:?}",
            carry_in.accepted,
            day.carry_in.len(),
            carry_in.rejected
        );
    }
    let bar = progress(day.traffic.len(), "mall day", args.quiet);
    let started = Instant::now();
    let mut tally = drive(
        channel.clone(),
        day.traffic.clone(),
        args.clients,
        args.batch_len,
        ClientMix::Gateways,
        &bar,
    )
    .await?;
    let elapsed = started.elapsed();

    // The rest of the day refers to what happened in it: cars leave the car park (captures
    // of the entry holds, or voids), purchases are refunded (some at another tenant),
    // tickets are cancelled. Sent once the day is cleared, so each finds what it refers to.
    let bar = progress(day.follow_ups.len(), "follow-ups", args.quiet);
    let follow_ups = drive(
        channel.clone(),
        day.follow_ups.clone(),
        args.clients,
        args.batch_len,
        ClientMix::Gateways,
        &bar,
    )
    .await?;

    // Read back through the query API, as a POS would: a signed balance query.
    let cinema = day
        .merchants
        .iter()
        .find(|m| m.category == pb::MerchantCategory::Cinema)
        .context("the day has a cinema")?;
    let member = day.members[0].clone();
    let (query, signature) = cinema.signer.sign_query(&pb::BalanceQuery {
        merchant_id: cinema.signer.merchant_id.clone(),
        issued_at_unix_ms: coalition_engine::SystemClock.now_ms(),
        account_kind: pb::AccountKind::MemberWallet as i32,
        owner_id: member.clone(),
        as_of_unix_ms: None,
        asset: String::new(),
    });
    let balance = QueryServiceClient::new(channel.clone())
        .get_balance(pb::GetBalanceRequest {
            query,
            signature: Some(signature),
        })
        .await?
        .into_inner();

    let accepted_to_ms = coalition_engine::SystemClock.now_ms();
    server.shutdown().await?;

    // A year later, the morning's expiry run: points earned before the demo day that were
    // never spent reach the end of their life; today's points still have hours to go. The
    // server restarts on the same database with its clock a year ahead.
    let year_later_ms = day_end_ms + 365 * DAY_MS - 18 * HOUR_MS;
    let year_later_clock = coalition_engine::ManualClock::new(year_later_ms);
    // The run is requested here, so the schedule is off for this start.
    let expiry_config = Config {
        expiry_run_interval_ms: 0,
        ..config.clone()
    };
    let server =
        RunningServer::start_with_clock(&expiry_config, Arc::new(year_later_clock.clone())).await?;
    let expiry_channel = Channel::from_shared(server.endpoint())?.connect().await?;
    let mut admin = AdminServiceClient::with_interceptor(expiry_channel, AdminToken::new(&token)?);
    // The finance team settles the day: every period the day's traffic was accepted in (one,
    // or two when the run crossed the cut-off), finalised twice to show the second books
    // nothing. The closing entries land in the period open now, a year later.
    let cutoff = expiry_config.engine().settlement_cutoff;
    let periods = demo_settlement::periods_between(&cutoff, accepted_from_ms, accepted_to_ms);
    let settling = Instant::now();
    let settlements = demo_settlement::finalise(&mut admin, &periods).await?;
    let settled_in = settling.elapsed();
    // The treasury executes the day's payments file: every merchant the operator owes is paid
    // and the transfer booked, which clears what is payable to it.
    let mut payouts = (0u64, 0i64);
    for settlement in &settlements {
        let finalised = server
            .engine
            .storage()
            .finalised_period(&settlement.period)
            .await?
            .with_context(|| format!("period {} is not finalised", settlement.period))?;
        let payments = crate::export::period_payments(
            server.engine.storage(),
            &finalised.settlement,
            finalised.closing_sequence,
        )
        .await?;
        for payment in payments
            .iter()
            .filter(|payment| payment.direction == PaymentDirection::OperatorPays)
        {
            let paid = admin
                .record_payout(pb::RecordPayoutRequest {
                    merchant_id: payment.merchant_id.clone(),
                    amount_minor: payment.amount_minor,
                    reference: payment.end_to_end_id.clone(),
                })
                .await
                .with_context(|| format!("paying {}", payment.merchant_id))?
                .into_inner();
            if paid.payable_minor != 0 {
                bail!(
                    "{} is still owed {} after its payout",
                    payment.merchant_id,
                    paid.payable_minor
                );
            }
            payouts.0 += 1;
            payouts.1 += payment.amount_minor;
        }
    }
    // One mall tenant's own record of its busiest period, with planted differences,
    // reconciled over the gRPC stream.
    let (busiest, _) = settlements
        .iter()
        .enumerate()
        .max_by_key(|(_, settlement)| settlement.last_sequence - settlement.first_sequence)
        .context("the day has a period")?;
    // The busiest mall tenant of that period.
    let mut busiest_tenant = None;
    for merchant in &day.merchants {
        if merchant.category != pb::MerchantCategory::MallTenant {
            continue;
        }
        let merchant_id = coalition_domain::MerchantId::new(merchant.signer.merchant_id.clone())
            .map_err(|error| anyhow::anyhow!("{error}"))?;
        let cleared = server
            .engine
            .storage()
            .merchant_transactions(
                &merchant_id,
                periods[busiest].start_ms,
                periods[busiest].end_ms,
            )
            .await?;
        if busiest_tenant
            .as_ref()
            .is_none_or(|(_, most): &(_, Vec<_>)| cleared.len() > most.len())
        {
            busiest_tenant = Some((merchant_id, cleared));
        }
    }
    let (tenant_id, cleared) = busiest_tenant.context("the day has a mall tenant")?;
    let record_path = args
        .dir
        .join(format!("merchant-record-{}.csv", tenant_id.as_str()));
    let (record, planted) = demo_settlement::merchant_record(&cleared, &record_path)?;
    let (reconciled, unparsable) =
        demo_settlement::reconcile_over_grpc(&mut admin, &tenant_id, &periods[busiest], &record)
            .await?;
    let found = demo_settlement::found(&reconciled, unparsable);
    let expiry = admin
        .run_expiry(pb::RunExpiryRequest {})
        .await
        .context("the expiry run")?
        .into_inner();
    let expiry_again = admin
        .run_expiry(pb::RunExpiryRequest {})
        .await?
        .into_inner();
    // The expiry run's period, settled once its cut-off has passed: breakage is the
    // operator's, except the share the terms give back to the issuer (a fifth, for tenants).
    let expiry_period = cutoff.period_at(year_later_ms);
    year_later_clock.set(expiry_period.end_ms);
    let expiry_settlement =
        demo_settlement::finalise(&mut admin, std::slice::from_ref(&expiry_period))
            .await?
            .pop()
            .context("the expiry period's settlement")?;
    server.shutdown().await?;

    let expected = &day.expected;
    let submissions = day.traffic.len() as u64;
    println!();
    println!("== The mall day, as the clients saw it ==");
    println!("submissions           {submissions:>8}");
    println!(
        "accepted              {:>8}   (planted valid: {})",
        tally.accepted, expected.unique_valid
    );
    println!(
        "duplicates            {:>8}   (planted network retries: {}; original result returned, nothing applied twice)",
        tally.duplicates, expected.duplicates
    );
    for (reason, count) in &tally.rejected {
        println!("rejected {reason:<45} {count:>6}");
    }
    println!(
        "planted faults        bad signatures {}, unknown members {}, burns beyond balance {}, changed-body retries {}",
        expected.bad_signatures,
        expected.unknown_members,
        expected.burns_beyond_balance,
        expected.changed_body_retries
    );
    tally.call_latencies.sort();
    println!(
        "throughput            {:.0} submissions/s over {:.1} s with {} clients; call latency p50 {:.1} ms, p99 {:.1} ms",
        submissions as f64 / elapsed.as_secs_f64(),
        elapsed.as_secs_f64(),
        args.clients,
        percentile(&tally.call_latencies, 50).as_secs_f64() * 1e3,
        percentile(&tally.call_latencies, 99).as_secs_f64() * 1e3,
    );
    println!(
        "follow-ups            {:>8} accepted of {}: {} parking exits captured, {} holds voided, {} refunds ({} at another tenant than the seller), {} cancelled tickets",
        follow_ups.accepted,
        day.follow_ups.len(),
        expected.captures,
        expected.voids,
        expected.refunds,
        expected.refunds_elsewhere,
        expected.cancelled_tickets
    );
    for (reason, count) in &follow_ups.rejected {
        println!("follow-up rejected {reason:<40} {count:>6}");
    }
    println!(
        "expiry run            a year later: {} points of {} members expired to breakage with {} {} of float; a second run booked {} entries",
        expiry.points,
        expiry.entries,
        minor_units(expiry.breakage_minor),
        config.settlement_currency,
        expiry_again.entries
    );
    println!(
        "signed balance query  {member} has {} points (as of entry {}), read by {}",
        balance.points, balance.as_of_entry_sequence, cinema.signer.merchant_id
    );

    let as_planted = tally.accepted == expected.unique_valid as u64
        && tally.duplicates == expected.duplicates as u64
        && tally.rejected(pb::RejectionReason::SignatureInvalid) == expected.bad_signatures as u64
        && tally.rejected(pb::RejectionReason::MemberUnknown) == expected.unknown_members as u64
        && tally.rejected(pb::RejectionReason::PointsInsufficient)
            == expected.burns_beyond_balance as u64
        && tally.rejected(pb::RejectionReason::TransactionIdConflict)
            == expected.changed_body_retries as u64
        && tally.rejected.values().sum::<u64>()
            == (expected.bad_signatures
                + expected.unknown_members
                + expected.burns_beyond_balance
                + expected.changed_body_retries) as u64
        && follow_ups.accepted == day.follow_ups.len() as u64
        && follow_ups.rejected.is_empty()
        && expiry.points > 0
        && expiry_again.entries == 0
        && found == planted;
    println!(
        "reconciliation        {} record of period {} over gRPC: {} matched; found {} missing at the merchant, {} points and {} amount mismatches, {} missing in clearing, {} duplicated, {} malformed (planted {}, {}, {}, {}, {}, {})",
        tenant_id.as_str(),
        periods[busiest].label,
        reconciled.matched,
        found.missing_at_merchant,
        found.points_mismatch,
        found.amount_mismatch,
        found.missing_in_clearing,
        found.duplicated,
        found.malformed,
        planted.missing_at_merchant,
        planted.points_mismatch,
        planted.amount_mismatch,
        planted.missing_in_clearing,
        planted.duplicated,
        planted.malformed
    );

    println!();
    println!("== Ledger check (recomputed from the database after shutdown) ==");
    let database_url_for_export = database_url.clone();
    let storage = Storage::connect(&ConnectOptions::existing(database_url)).await?;
    let (ledger, report) = storage.replay(i64::MAX).await?;
    storage.close().await;
    println!(
        "entries {}, accounts {}, chain head {} at entry {}",
        report.entries,
        report.accounts,
        hex::encode(report.head.hash),
        report.head.sequence
    );
    let mut outstanding: Vec<(String, i64)> = ledger
        .outstanding_by_issuer()
        .into_iter()
        .map(|(issuer, points)| (issuer.to_string(), points))
        .collect();
    outstanding.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let total: i64 = outstanding.iter().map(|(_, points)| points).sum();
    println!(
        "outstanding points    {total} across {} issuers; largest: {}",
        outstanding.len(),
        outstanding
            .iter()
            .take(3)
            .map(|(i, p)| format!("{i} {p}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    // Money legs at the merchants' terms: who owes and is owed what, in minor units.
    let money = coalition_domain::Asset::Currency(ledger.currency());
    let (mut owed_by_issuers, mut owed_to_redeemers, mut float, mut rounding, mut fees) =
        (0i64, 0i64, 0i64, 0i64, 0i64);
    let mut breakage: Vec<(String, i64, i64)> = Vec::new();
    for (key, id) in ledger.accounts() {
        let balance = ledger.balance_of(id, money);
        match key {
            coalition_domain::AccountKey::MerchantBreakage(issuer) => breakage.push((
                issuer.to_string(),
                ledger.balance_of(id, coalition_domain::Asset::Points),
                balance,
            )),
            coalition_domain::AccountKey::MerchantPayable(_) if balance < 0 => {
                owed_by_issuers -= balance
            }
            coalition_domain::AccountKey::MerchantPayable(_) => owed_to_redeemers += balance,
            coalition_domain::AccountKey::OperatorFloat => float += balance,
            coalition_domain::AccountKey::OperatorRounding => rounding += balance,
            coalition_domain::AccountKey::OperatorFees => fees += balance,
            _ => {}
        }
    }
    let currency = money.code();
    println!(
        "money legs            settled: merchants owe {} {currency}, are owed {} {currency}; float {} {currency}, fees {} {currency}, rounding {} {currency}",
        minor_units(owed_by_issuers),
        minor_units(owed_to_redeemers),
        minor_units(float),
        minor_units(fees),
        minor_units(rounding)
    );
    breakage.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    println!(
        "breakage              {} points, {} {currency} across {} issuers; largest: {}",
        breakage.iter().map(|(_, points, _)| points).sum::<i64>(),
        minor_units(breakage.iter().map(|(_, _, money)| money).sum::<i64>()),
        breakage.len(),
        breakage
            .iter()
            .take(3)
            .map(|(issuer, points, money)| format!(
                "{issuer} {points} ({} {currency})",
                minor_units(*money)
            ))
            .collect::<Vec<_>>()
            .join(", ")
    );
    for problem in &report.problems {
        println!("problem: {problem}");
    }
    match &args.database_url {
        Some(url) => println!("database              {}", crate::runtime::redacted(url)),
        None => println!("database              {}", database_path.display()),
    }
    if !report.is_sound() {
        bail!(
            "ledger check FAILED with {} problems",
            report.problems.len()
        );
    }
    println!(
        "ledger check          OK: every entry balances, the hash chain verifies, balances and lots equal the postings"
    );

    println!();
    println!(
        "== Settlement (cut-off {}, amounts in minor units of {}) ==",
        cutoff.describe(),
        config.settlement_currency
    );
    println!(
        "finalised             {} period(s) in {:.2} s over gRPC (each twice; the second books nothing)",
        periods.len(),
        settled_in.as_secs_f64()
    );
    println!(
        "payouts               {} transfers of {} {} booked from the payments file; what merchants owe stays payable until they pay",
        payouts.0,
        minor_units(payouts.1),
        config.settlement_currency
    );
    for settlement in &settlements {
        print!(
            "{}",
            crate::settlement::settlement_table(settlement, Some(10))
        );
    }
    println!();
    print!(
        "{}",
        crate::settlement::settlement_table(&expiry_settlement, Some(5))
    );

    println!();
    println!("== Export and proof ==");
    let exporting = Instant::now();
    // Every period finalised: the day's, and the expiry run's a year later, which holds the
    // day's closing entries and continues its hash chain (nothing was booked in between).
    let finalised_periods: Vec<_> = periods
        .iter()
        .cloned()
        .chain(std::iter::once(expiry_period))
        .collect();
    let trail = demo_settlement::export_periods(
        &database_url_for_export,
        &args.dir,
        cutoff,
        &finalised_periods,
        crate::export::ReconcileInput {
            merchant: tenant_id.clone(),
            file: record_path.clone(),
        },
    )
    .await?;
    let key = crate::operator_key::read_public_key(&trail.public_key)?;
    let exported_in = exporting.elapsed();
    let verifying = Instant::now();
    let mut earlier: Vec<crate::verify::Verified> = Vec::new();
    for folder in &trail.exports {
        let verified = crate::verify::verify_folder(folder, std::slice::from_ref(&key))?;
        let mut problems = verified.problems.clone();
        if let Some(previous) = earlier.last() {
            problems.extend(crate::verify::chain_problems(previous, &verified));
        }
        for before in &earlier {
            problems.extend(crate::verify::closing_problems(before, &verified));
        }
        for problem in &problems {
            println!("problem: {}: {problem}", folder.display());
        }
        if !problems.is_empty() {
            bail!("the export {} does not verify", folder.display());
        }
        println!(
            "export                {} verified: signature, file digests, hash chain, Merkle root, balanced entries priced by their terms, settlement recomputed, every signed file made again{}",
            folder.display(),
            if earlier.is_empty() {
                String::new()
            } else {
                "; continues the period before it, whose closing entries it checks".to_owned()
            }
        );
        // Only the last period's balances are chained to; the earlier ones keep what their
        // closing entries are checked by.
        if let Some(previous) = earlier.last_mut() {
            previous.closing = Vec::new();
            previous.opening = Vec::new();
        }
        earlier.push(verified);
    }
    println!(
        "export and verify     exported in {:.2} s, verified in {:.2} s",
        exported_in.as_secs_f64(),
        verifying.elapsed().as_secs_f64()
    );
    // A member's own proof: every entry of the day naming the first member the day's
    // export lists, each with its path to the signed root; checked with the public key alone.
    let day_export = trail.exports.first().context("the day is exported")?;
    let member = crate::export::read_lines(day_export, crate::export::ENTRIES_FILE)?
        .map_while(Result::ok)
        .find_map(|line| {
            serde_json::from_str::<crate::export::EntryRecord>(&line)
                .ok()
                .and_then(|record| record.member_id)
        })
        .context("the day's export names a member")?;
    let subject = crate::proof::Subject::Member { member_id: member };
    let proof = crate::proof::prove(day_export, &subject)?;
    let proof_path = args.dir.join("member.proof.json");
    std::fs::write(&proof_path, serde_json::to_vec(&proof)?)
        .with_context(|| format!("cannot write {}", proof_path.display()))?;
    let checked = crate::proof::verify_proof(&proof, &key)
        .map_err(|problems| anyhow::anyhow!("the member's proof does not verify: {problems:?}"))?;
    println!(
        "proof                 {subject}: {} entries of period {} proved against its signed Merkle root ({} bytes, {})",
        checked.entries,
        checked.manifest.period,
        std::fs::metadata(&proof_path)?.len(),
        proof_path.display()
    );
    println!("operator public key   {}", trail.public_key.display());
    println!("merchant record       {}", record_path.display());
    for folder in &trail.exports {
        println!(
            "check by hand         coalition verify {} --operator-key {}",
            folder.display(),
            trail.public_key.display()
        );
        println!(
            "                      hledger check --strict -f {}",
            folder.join("journal.hledger").display()
        );
    }
    println!(
        "                      coalition verify-proof {} --operator-key {}",
        proof_path.display(),
        trail.public_key.display()
    );
    if !as_planted {
        bail!("the outcomes differ from what the generator planted");
    }
    println!("outcomes              exactly as planted");
    if !args.serve {
        println!(
            "console               `coalition demo --serve` keeps this day's books open in the browser at http://{}/",
            args.console_address
        );
        return Ok(());
    }
    // The server again, on the same books and the same clock a year on, with the finance
    // console; the console's exports are the demo's folders.
    let serve_config = Config {
        console_address: args.console_address.clone(),
        console_exports_dir: args.dir.display().to_string(),
        console_operator_keys_dir: args.dir.join("operator-keys").display().to_string(),
        ..expiry_config
    };
    let server =
        RunningServer::start_with_clock(&serve_config, Arc::new(year_later_clock.clone())).await?;
    let console = server
        .console_address
        .context("the console listens with --serve")?;
    println!();
    println!("== Serving the demo's books until Ctrl-C ==");
    println!("gRPC                  {}", server.endpoint());
    println!("console               http://{console}/");
    println!("admin token           {token}   (sign in to the console with it)");
    println!(
        "clock                 {} (a year after the day, past its expiry run; the day's periods are under Settlement)",
        cutoff.local_time(year_later_clock.now_ms())
    );
    crate::cli::shutdown_signal().await;
    server.shutdown().await
}

/// Minor units as a decimal amount with two places (the demo's currency has two).
fn minor_units(amount: i64) -> String {
    let sign = if amount < 0 { "-" } else { "" };
    format!(
        "{sign}{}.{:02}",
        amount.unsigned_abs() / 100,
        amount.unsigned_abs() % 100
    )
}

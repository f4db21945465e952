//! The submission benchmark: a real server on a fresh database (SQLite or PostgreSQL), the
//! mall-day workload pre-signed, then driven over gRPC by concurrent clients. Prints sustained
//! throughput and call latency percentiles. With `--core`, the mall day's submissions are
//! checked first (signatures, keys, bodies; untimed) and then handed straight to the engine
//! by the same number of concurrent callers: the ledger core (the writer and the database)
//! without gRPC and signature verification, to set beside other ledgers' own benchmarks.
//! See docs/benchmarks.md.

/// The server's allocator, as in `src/main.rs`, so the figures are the server's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, ValueEnum};
use coalition::config::Config;
use coalition::demo::{ClientMix, Mode, drive, percentile, progress, random_token, register};
use coalition::runtime::RunningServer;
use coalition::workload::{MallDayProfile, generate};
use coalition_engine::{Clock, SystemClock};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use sqlx::Connection;
use tonic::transport::Channel;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Backend {
    Sqlite,
    Postgres,
}

#[derive(Debug, Parser)]
#[command(about = "Measure submission throughput and latency over gRPC")]
struct Args {
    #[arg(long, value_enum, default_value = "sqlite")]
    backend: Backend,
    /// The PostgreSQL server; a fresh database is created on it and dropped afterwards.
    #[arg(
        long,
        env = "COALITION_TEST_POSTGRES_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/test"
    )]
    postgres_url: String,
    /// Traffic as a multiple of one mall's day (72,000 submissions and 40,000 members each).
    #[arg(long, default_value_t = 3.0)]
    days: f64,
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// Envelopes per call (per stream chunk).
    #[arg(long, default_value_t = 500)]
    batch_len: usize,
    #[arg(long, value_enum, default_value = "batch")]
    mode: Mode,
    /// The database pool size.
    #[arg(long, default_value_t = 8)]
    database_connections_max: u32,
    /// The writer's batch limit (submissions per database transaction).
    #[arg(long, default_value_t = 4096)]
    writer_batch_len_max: usize,
    /// The writer's member budget (`writer_cache_members_max`); the default is the server's.
    #[arg(long)]
    writer_cache_members_max: Option<usize>,
    /// The page cache of the writer's SQLite connection in MiB (`sqlite_writer_cache_mib`);
    /// the default is the server's.
    #[arg(long)]
    sqlite_writer_cache_mib: Option<u32>,
    /// Time the ledger core: the mall day's submissions checked beforehand, then handed to
    /// the engine in calls of `--batch-len` by `--clients` concurrent callers.
    #[arg(long)]
    core: bool,
    /// Entry subscribers (`SubscribeEntries` with the admin token, each on its own
    /// connection) following the journal while the mall day is cleared.
    #[arg(long, default_value_t = 0)]
    subscribers: usize,
}

/// What one subscriber did: the entries it received, the sampled delays after their commits,
/// and when it caught up with the day's last entry.
type Followed = anyhow::Result<(u64, Vec<Duration>, Instant)>;

/// Entry subscribers during the mall day: each counts the entries it receives and, for a
/// sample of them, how long after its batch's commit each arrived (the commit's moment is
/// when the engine's live feed published the batch, seen by a recorder in this process).
struct Subscribers {
    commits: Arc<std::sync::Mutex<std::collections::BTreeMap<u64, Instant>>>,
    target: Arc<std::sync::atomic::AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<Followed>>,
    recorder: tokio::task::JoinHandle<()>,
}

impl Subscribers {
    async fn start(
        count: usize,
        server: &RunningServer,
        token: &str,
        after: u64,
    ) -> anyhow::Result<Subscribers> {
        let commits: Arc<std::sync::Mutex<std::collections::BTreeMap<u64, Instant>>> =
            Arc::default();
        let target = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let mut feed = server.engine.committed_entries();
        let recorded = commits.clone();
        let recorder = tokio::spawn(async move {
            loop {
                match feed.recv().await {
                    Ok(batch) => {
                        if let Some(last) = batch.entries.last() {
                            recorded
                                .lock()
                                .unwrap()
                                .insert(last.sequence, Instant::now());
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        // Every `count`-th entry of each subscriber is timed: the same number of samples
        // in all whatever the count.
        let sample = count.max(1) as u64;
        let mut tasks = Vec::with_capacity(count);
        for _ in 0..count {
            let channel = Channel::from_shared(server.endpoint())?.connect().await?;
            let mut queries = coalition_grpc::client::QueryServiceClient::with_interceptor(
                channel,
                coalition_grpc::client::AdminToken::new(token)?,
            );
            let mut stream = queries
                .subscribe_entries(coalition_grpc::pb::SubscribeEntriesRequest {
                    query: prost::Message::encode_to_vec(
                        &coalition_grpc::pb::EntriesSubscription {
                            after_sequence: after,
                            ..Default::default()
                        },
                    ),
                    signature: None,
                })
                .await?
                .into_inner();
            let (commits, target) = (commits.clone(), target.clone());
            tasks.push(tokio::spawn(async move {
                let (mut received, mut last, mut lags) = (0_u64, after, Vec::new());
                loop {
                    let reached = target.load(std::sync::atomic::Ordering::Relaxed);
                    if reached != 0 && last >= reached {
                        return Ok((received, lags, Instant::now()));
                    }
                    let message = tokio::select! {
                        message = stream.message() => message?,
                        _ = tokio::time::sleep(Duration::from_millis(50)) => continue,
                    };
                    let Some(message) = message else {
                        anyhow::bail!("the subscription ended");
                    };
                    let now = Instant::now();
                    for subscribed in message.entries {
                        let sequence = subscribed.entry.map_or(last, |entry| entry.sequence);
                        received += 1;
                        last = sequence;
                        if received % sample == 0
                            && let Some((_, committed)) =
                                commits.lock().unwrap().range(sequence..).next()
                        {
                            lags.push(now.saturating_duration_since(*committed));
                        }
                    }
                }
            }));
        }
        Ok(Subscribers {
            commits,
            target,
            tasks,
            recorder,
        })
    }

    /// Waits until every subscriber has received entry `last`; what they did, as a line.
    async fn finish(
        self,
        last: u64,
        day_ended: Instant,
        day_started: Instant,
    ) -> anyhow::Result<String> {
        self.target
            .store(last.max(1), std::sync::atomic::Ordering::Relaxed);
        let count = self.tasks.len();
        let (mut entries, mut lags, mut finished) = (0, Vec::new(), day_ended);
        for task in self.tasks {
            let (received, sampled, at) = task.await??;
            entries += received;
            lags.extend(sampled);
            finished = finished.max(at);
        }
        self.recorder.abort();
        drop(self.commits);
        lags.sort();
        let millis = |percent| percentile(&lags, percent).as_secs_f64() * 1e3;
        let seconds = finished.duration_since(day_started).as_secs_f64();
        Ok(format!(
            "subscribers   {count} (admin, own connections): {} entries each, {:.0} entries/s \
             delivered in all; the last caught up {:.2} s after the day ended; delivery after \
             the batch's commit p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({} samples)",
            entries / count.max(1) as u64,
            entries as f64 / seconds,
            finished.duration_since(day_ended).as_secs_f64(),
            millis(50),
            millis(99),
            lags.last().map_or(0.0, |d| d.as_secs_f64() * 1e3),
            lags.len()
        ))
    }
}

/// The process's resident memory in MiB, from /proc.
fn memory_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|line| line.starts_with("VmRSS:"))
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|kib| kib.parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0)
}

/// Bytes this process has passed to write and read calls so far (`wchar`, `rchar` of
/// /proc/self/io): SQLite's WAL, checkpoints and page reads go through them; PostgreSQL's own
/// processes do not.
fn io_bytes() -> (u64, u64) {
    let io = std::fs::read_to_string("/proc/self/io").unwrap_or_default();
    let field = |name: &str| {
        io.lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|value| value.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    (field("wchar:"), field("rchar:"))
}

/// The process's writes and reads between two readings, per submission.
fn print_io(before: (u64, u64), after: (u64, u64), submissions: usize) {
    let per = |bytes: u64| bytes as f64 / submissions.max(1) as f64 / 1024.0;
    println!(
        "process I/O   {:.1} KiB written and {:.1} KiB read per submission (write and read calls \
         of this process; PostgreSQL's own processes not included)",
        per(after.0.saturating_sub(before.0)),
        per(after.1.saturating_sub(before.1)),
    );
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|line| line.starts_with("model name"))
                .map(|line| line.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{cores} cores, {cpu}")
}

/// One core's ed25519 verify rate with the check the server makes of every envelope
/// (`verify_strict`), over about a second on this thread.
fn verify_rate() -> f64 {
    use ed25519_dalek::{Signer, SigningKey};
    let key = SigningKey::from_bytes(&[7; 32]);
    let public = key.verifying_key();
    let message = [0x5a_u8; 160];
    let signature = key.sign(&message);
    let started = Instant::now();
    let mut count = 0_u64;
    while started.elapsed().as_secs_f64() < 1.0 {
        for _ in 0..100 {
            let checked = public.verify_strict(std::hint::black_box(&message), &signature);
            assert!(checked.is_ok());
        }
        count += 100;
    }
    count as f64 / started.elapsed().as_secs_f64()
}

/// The mall day's rate as a multiple of one core's verify rate, which is also how many cores
/// verifying every envelope alone kept busy (the envelopes are signed before the timed
/// window).
fn print_verify_rate(verify: f64, submissions_per_second: f64) {
    println!(
        "ed25519       one core verifies {verify:.0} signatures/s (verify_strict); the mall day \
         ran at {:.2}x that: verification alone kept that many cores busy",
        submissions_per_second / verify,
    );
}

fn main() -> anyhow::Result<()> {
    coalition::memory::block_on_main(bench())
}

async fn bench() -> anyhow::Result<()> {
    let args = Args::parse();
    let scratch = std::env::temp_dir().join(format!("coalition-bench-{}", std::process::id()));
    std::fs::create_dir_all(&scratch)?;
    let postgres_database = format!("coalition_bench_{}", std::process::id());
    let database_url = match args.backend {
        Backend::Sqlite => format!("sqlite://{}", scratch.join("bench.db").display()),
        Backend::Postgres => {
            let mut connection = sqlx::PgConnection::connect(&args.postgres_url)
                .await
                .context("connect to PostgreSQL")?;
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "CREATE DATABASE {postgres_database}"
            )))
            .execute(&mut connection)
            .await?;
            let (prefix, _) = args
                .postgres_url
                .rsplit_once('/')
                .context("the URL names a database")?;
            format!("{prefix}/{postgres_database}")
        }
    };
    let result = run(&args, &database_url).await;
    if args.backend == Backend::Postgres {
        let mut connection = sqlx::PgConnection::connect(&args.postgres_url).await?;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {postgres_database} WITH (FORCE)"
        )))
        .execute(&mut connection)
        .await?;
    }
    let _ = std::fs::remove_dir_all(&scratch);
    result
}

/// The writer's stage timings, as sums in seconds, read from the in-process metrics recorder.
fn stage_seconds(metrics: &PrometheusHandle) -> Vec<(String, f64)> {
    metrics
        .render()
        .lines()
        .filter(|line| {
            line.starts_with("coalition_writer_")
                || line.starts_with("coalition_write_seconds")
                || line.starts_with("coalition_write_table_seconds")
                || line.starts_with("coalition_wal_checkpoint_seconds")
        })
        .filter_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            let name = name
                .strip_suffix("_sum")
                .or_else(|| name.contains("_sum{").then_some(name))?;
            Some((name.replace("_sum{", "{"), value.parse().ok()?))
        })
        .collect()
}

/// The writer's committed batches so far and the submissions they held (the
/// `coalition_batch_submissions` histogram's count and sum).
fn batches(metrics: &PrometheusHandle) -> (f64, f64) {
    let rendered = metrics.render();
    let value = |name: &str| {
        rendered
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|value| value.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (
        value("coalition_batch_submissions_count "),
        value("coalition_batch_submissions_sum "),
    )
}

/// Prints how many batches the writer committed between two readings, and their mean size.
fn print_batches(before: (f64, f64), after: (f64, f64)) {
    let count = after.0 - before.0;
    let submissions = after.1 - before.1;
    println!(
        "writer batches {count:.0} committed, {:.0} submissions each on average",
        if count > 0.0 {
            submissions / count
        } else {
            0.0
        }
    );
}

/// Prints where the writer's time went between two readings of the stage sums.
fn print_stages(before: &[(String, f64)], after: &[(String, f64)], seconds: f64) {
    for (name, total) in after {
        let earlier = before
            .iter()
            .find(|(other, _)| other == name)
            .map_or(0.0, |(_, value)| *value);
        let spent = total - earlier;
        if name.starts_with("coalition_write_table_seconds") && spent < 0.01 {
            continue;
        }
        println!(
            "  {name:<44} {spent:>8.2} s  {:>5.1}% of the wall time",
            spent / seconds * 100.0
        );
    }
}

async fn run(args: &Args, database_url: &str) -> anyhow::Result<()> {
    let metrics = PrometheusBuilder::new()
        .install_recorder()
        .context("install the metrics recorder")?;
    let token = random_token()?;
    let config = Config {
        listen_address: "127.0.0.1:0".into(),
        metrics_address: "off".into(),
        console_address: "off".into(),
        database_url: database_url.to_owned(),
        admin_token: Some(token.clone()),
        batch_len_max: args.writer_batch_len_max,
        database_connections_max: args.database_connections_max,
        writer_cache_members_max: args
            .writer_cache_members_max
            .unwrap_or(Config::default().writer_cache_members_max),
        sqlite_writer_cache_mib: args
            .sqlite_writer_cache_mib
            .unwrap_or(Config::default().sqlite_writer_cache_mib),
        ..Config::default()
    };
    let server = RunningServer::start(&config).await?;
    let channel = Channel::from_shared(server.endpoint())?.connect().await?;
    let day = generate(
        &MallDayProfile::scaled(args.days),
        1,
        SystemClock.now_ms() - 60_000,
    );
    register(channel.clone(), &token, &day).await?;
    let bar = progress(day.carry_in.len(), "carry-in", true);
    let started = Instant::now();
    let carry_in = drive(
        channel.clone(),
        day.carry_in.clone(),
        args.clients,
        args.batch_len,
        ClientMix::All(args.mode),
        &bar,
    )
    .await?;
    let carry_in_seconds = started.elapsed().as_secs_f64();
    if args.core {
        return core(args, server, day.traffic, &metrics, &config).await;
    }
    let subscribers = if args.subscribers > 0 {
        let head = server.engine.storage().last_sequence().await?;
        Some(Subscribers::start(args.subscribers, &server, &token, head).await?)
    } else {
        None
    };
    let bar = progress(day.traffic.len(), "mall day", true);
    let stages_before = stage_seconds(&metrics);
    let batches_before = batches(&metrics);
    let io_before = io_bytes();
    let started = Instant::now();
    let mut tally = drive(
        channel,
        day.traffic.clone(),
        args.clients,
        args.batch_len,
        ClientMix::All(args.mode),
        &bar,
    )
    .await?;
    let seconds = started.elapsed().as_secs_f64();
    let day_ended = Instant::now();
    let stages_after = stage_seconds(&metrics);
    let batches_after = batches(&metrics);
    let io_after = io_bytes();
    let rss_mib = memory_mib();
    let subscribed = match subscribers {
        Some(subscribers) => {
            let last = server.engine.storage().last_sequence().await?;
            Some(subscribers.finish(last, day_ended, started))
        }
        None => None,
    };
    let subscribed = match subscribed {
        Some(finishing) => Some(finishing.await),
        None => None,
    };
    server.shutdown().await?;

    tally.call_latencies.sort();
    let millis = |percent| percentile(&tally.call_latencies, percent).as_secs_f64() * 1e3;
    println!("machine       {}", machine());
    println!(
        "backend       {:?} ({})",
        args.backend,
        coalition::runtime::redacted(database_url)
    );
    println!(
        "load          {:?} calls of {} envelopes from {} clients; writer batches up to {}",
        args.mode,
        if args.mode == Mode::OneAtATime {
            1
        } else {
            args.batch_len
        },
        args.clients,
        args.writer_batch_len_max
    );
    println!(
        "carry-in      {} earns in {:.2} s = {:.0} tx/s",
        day.carry_in.len(),
        carry_in_seconds,
        carry_in.accepted as f64 / carry_in_seconds
    );
    println!(
        "mall day      {} submissions ({} accepted, {} duplicates, {} rejected) in {:.2} s = {:.0} tx/s",
        day.traffic.len(),
        tally.accepted,
        tally.duplicates,
        tally.rejected.values().sum::<u64>(),
        seconds,
        day.traffic.len() as f64 / seconds
    );
    println!(
        "call latency  p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms over {} calls",
        millis(50),
        millis(99),
        tally
            .call_latencies
            .last()
            .map_or(0.0, |d| d.as_secs_f64() * 1e3),
        tally.call_latencies.len()
    );
    println!(
        "working set   {} members at most; RSS {:.0} MiB at the end (the load generator's day included)",
        config.writer_cache_members_max, rss_mib
    );
    println!(
        "writer stages during the mall day (time in each, summed over batches; the writer's own \
         are load, apply, rows, wait and evict, while write runs in the commit task beside the \
         next batch's):"
    );
    print_stages(&stages_before, &stages_after, seconds);
    print_batches(batches_before, batches_after);
    print_io(io_before, io_after, day.traffic.len());
    print_verify_rate(verify_rate(), day.traffic.len() as f64 / seconds);
    if let Some(line) = subscribed {
        println!("{}", line?);
    }
    Ok(())
}

/// The ledger core: the day's traffic checked beforehand (untimed), then submitted straight
/// to the engine by `--clients` callers taking calls of `--batch-len` from one queue.
async fn core(
    args: &Args,
    server: RunningServer,
    traffic: Vec<coalition_grpc::pb::Envelope>,
    metrics: &PrometheusHandle,
    config: &Config,
) -> anyhow::Result<()> {
    let total = traffic.len();
    let started = Instant::now();
    let mut checked = Vec::with_capacity(total);
    let mut refused_by_checks = 0usize;
    for chunk in traffic.chunks(args.batch_len) {
        for item in coalition_grpc::check_envelopes(&server.engine, chunk.to_vec())
            .await
            .map_err(|status| anyhow::anyhow!("{status}"))?
        {
            match item {
                Ok(submission) => checked.push(submission),
                Err(_) => refused_by_checks += 1,
            }
        }
    }
    let check_seconds = started.elapsed().as_secs_f64();
    let calls: Vec<Vec<_>> = checked.chunks(args.batch_len).map(<[_]>::to_vec).collect();
    let submitted = checked.len();
    drop(checked);
    let queue = std::sync::Arc::new(std::sync::Mutex::new(calls.into_iter()));
    let stages_before = stage_seconds(metrics);
    let batches_before = batches(metrics);
    let io_before = io_bytes();
    let started = Instant::now();
    let mut callers = tokio::task::JoinSet::new();
    for _ in 0..args.clients {
        let queue = queue.clone();
        let engine = server.engine.clone();
        callers.spawn(async move {
            let (mut accepted, mut duplicates, mut rejected) = (0u64, 0u64, 0u64);
            let mut latencies = Vec::new();
            loop {
                let Some(call) = queue.lock().expect("queue").next() else {
                    break;
                };
                let sent = Instant::now();
                for outcome in engine.submit(call).await? {
                    match outcome {
                        Ok(outcome) if outcome.duplicate => duplicates += 1,
                        Ok(_) => accepted += 1,
                        Err(_) => rejected += 1,
                    }
                }
                latencies.push(sent.elapsed());
            }
            anyhow::Ok((accepted, duplicates, rejected, latencies))
        });
    }
    let (mut accepted, mut duplicates, mut rejected) = (0u64, 0u64, 0u64);
    let mut latencies = Vec::new();
    while let Some(caller) = callers.join_next().await {
        let (a, d, r, l) = caller??;
        accepted += a;
        duplicates += d;
        rejected += r;
        latencies.extend(l);
    }
    let seconds = started.elapsed().as_secs_f64();
    let stages_after = stage_seconds(metrics);
    let batches_after = batches(metrics);
    let io_after = io_bytes();
    let rss_mib = memory_mib();
    server.shutdown().await?;
    latencies.sort();
    let millis = |percent| percentile(&latencies, percent).as_secs_f64() * 1e3;
    println!("machine       {}", machine());
    println!(
        "backend       {:?} ({})",
        args.backend,
        coalition::runtime::redacted(&config.database_url)
    );
    println!(
        "load          ledger core: engine calls of {} checked submissions from {} callers; writer batches up to {}",
        args.batch_len, args.clients, args.writer_batch_len_max
    );
    println!(
        "checks        {total} envelopes checked beforehand in {check_seconds:.2} s ({refused_by_checks} refused), untimed"
    );
    println!(
        "ledger core   {submitted} submissions ({accepted} accepted, {duplicates} duplicates, {rejected} rejected) in {seconds:.2} s = {:.0} tx/s",
        submitted as f64 / seconds
    );
    println!(
        "call latency  p50 {:.2} ms, p99 {:.2} ms over {} calls",
        millis(50),
        millis(99),
        latencies.len()
    );
    println!(
        "working set   {} members at most; RSS {rss_mib:.0} MiB at the end",
        config.writer_cache_members_max
    );
    println!("writer stages during the mall day:");
    print_stages(&stages_before, &stages_after, seconds);
    print_batches(batches_before, batches_after);
    print_io(io_before, io_after, submitted);
    Ok(())
}

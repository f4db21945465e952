//! Journal-scale measurements: `build` books mall days into a database through the engine
//! (every check `Submit` makes, without the network), fast enough to reach millions of
//! entries; `restart` starts a server on a database and reports how long it took to serve
//! and the memory it holds. See docs/benchmarks.md.

/// The server's allocator, as in `src/main.rs`, so the figures are the server's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use coalition::config::Config;
use coalition::demo::{ClientMix, Mode, drive, random_token, register};
use coalition::runtime::RunningServer;
use coalition::workload::{MallDayProfile, generate_day};
use coalition_engine::{Clock, ManualClock, SystemClock};
use coalition_grpc::client::{AdminServiceClient, AdminToken};
use coalition_grpc::pb;
use tonic::transport::Channel;

const DAY_MS: i64 = 86_400_000;

#[derive(Debug, Parser)]
#[command(about = "Build large journals and measure restart time and memory")]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Books `--days` mall days (carry-in earns, the day's traffic with its faults, and the
    /// follow-ups: captures, voids, refunds, cancelled tickets) into a fresh database.
    Build {
        /// The database (created if missing; it must hold no journal yet).
        #[arg(long)]
        database_url: String,
        /// How many days to book, each a new simulated date.
        #[arg(long, default_value_t = 1)]
        days: u32,
        /// Each day's traffic and members as a multiple of one mall's day.
        #[arg(long, default_value_t = 1.0)]
        scale: f64,
        /// Submissions handed to the engine per call.
        #[arg(long, default_value_t = 4096)]
        batch_len: usize,
    },
    /// Starts a server on an existing database and reports the time until it serves and its
    /// resident memory; then, with `--then-days`, books more mall days on it (new and returning
    /// members, as `build` does) and reports memory and throughput after them.
    Restart {
        #[arg(long)]
        database_url: String,
        /// Mall days to book after the start.
        #[arg(long, default_value_t = 0)]
        then_days: u32,
        /// How many days the journal already holds (the `--days` it was built with), so the
        /// new days bring the next members.
        #[arg(long, default_value_t = 0)]
        built_days: u32,
        /// Each day's traffic and members as a multiple of one mall's day.
        #[arg(long, default_value_t = 1.0)]
        scale: f64,
    },
    /// Books mall days over gRPC on a separate, running `coalition serve` (whose database was
    /// built by `build`), so the server's memory can be read apart from this load generator.
    /// Each day's traffic is dated just before now.
    Drive {
        /// The server, for example http://127.0.0.1:50051.
        #[arg(long)]
        address: String,
        /// The server's admin token (for enrolling each day's new members).
        #[arg(long, env = "COALITION_ADMIN_TOKEN")]
        admin_token: String,
        /// How many mall days to book.
        #[arg(long, default_value_t = 1)]
        days: u32,
        /// How many days the journal already holds, so the new days bring the next members.
        #[arg(long, default_value_t = 0)]
        built_days: u32,
        /// Each day's traffic and members as a multiple of one mall's day.
        #[arg(long, default_value_t = 1.0)]
        scale: f64,
    },
}

/// The process's resident memory and its peak, in MiB, from /proc.
fn memory_mib() -> (f64, f64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|line| line.starts_with(name))
            .and_then(|line| line.split_whitespace().nth(1))
            .and_then(|kib| kib.parse::<f64>().ok())
            .map_or(0.0, |kib| kib / 1024.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// The sequence of the journal's last entry: its length.
async fn journal_len(server: &RunningServer) -> anyhow::Result<u64> {
    Ok(server
        .engine
        .storage()
        .period_range(i64::MIN, i64::MAX)
        .await?
        .map_or(0, |(_, last)| last))
}

fn config(database_url: &str, token: &str) -> Config {
    Config {
        listen_address: "127.0.0.1:0".into(),
        metrics_address: "off".into(),
        console_address: "off".into(),
        database_url: database_url.to_owned(),
        admin_token: Some(token.to_owned()),
        ..Config::default()
    }
}

fn main() -> anyhow::Result<()> {
    coalition::memory::block_on_main(run())
}

async fn run() -> anyhow::Result<()> {
    match Args::parse().command {
        Command::Build {
            database_url,
            days,
            scale,
            batch_len,
        } => build(&database_url, days, scale, batch_len).await,
        Command::Restart {
            database_url,
            then_days,
            built_days,
            scale,
        } => restart(&database_url, then_days, built_days, scale).await,
        Command::Drive {
            address,
            admin_token,
            days,
            built_days,
            scale,
        } => drive_days(&address, &admin_token, days, built_days, scale).await,
    }
}

async fn drive_days(
    address: &str,
    token: &str,
    days: u32,
    built_days: u32,
    scale: f64,
) -> anyhow::Result<()> {
    let channel = Channel::from_shared(address.to_owned())?.connect().await?;
    let profile = MallDayProfile::scaled(scale);
    let started = Instant::now();
    let mut submitted = 0usize;
    let mut accepted = 0u64;
    for offset in 0..days {
        let day_index = built_days + offset;
        let day = generate_day(
            &profile,
            u64::from(day_index) + 1,
            SystemClock.now_ms() - 60_000,
            day_index,
        );
        enroll(channel.clone(), token, &day.members).await?;
        for envelopes in [day.carry_in, day.traffic, day.follow_ups] {
            submitted += envelopes.len();
            let bar = indicatif::ProgressBar::hidden();
            let tally = drive(
                channel.clone(),
                envelopes,
                8,
                500,
                ClientMix::All(Mode::Batch),
                &bar,
            )
            .await?;
            accepted += tally.accepted;
        }
        eprintln!("day {}/{days} booked", offset + 1);
    }
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "drove         {days} days: {submitted} submissions ({accepted} booked) in {seconds:.1} s = {:.0} submissions/s",
        submitted as f64 / seconds
    );
    Ok(())
}

async fn enroll(channel: Channel, token: &str, members: &[String]) -> anyhow::Result<()> {
    let mut admin = AdminServiceClient::with_interceptor(channel, AdminToken::new(token)?);
    for chunk in members.chunks(5_000) {
        let response = admin
            .enroll_members(pb::EnrollMembersRequest {
                members: chunk
                    .iter()
                    .map(|member_id| pb::MemberEnrollment {
                        member_id: member_id.clone(),
                        tier: None,
                    })
                    .collect(),
            })
            .await?
            .into_inner();
        if !response.refusals.is_empty() {
            bail!("members refused: {:?}", response.refusals);
        }
    }
    Ok(())
}

/// Submissions handed to the engine, and what became of them.
#[derive(Debug, Default)]
struct Counts {
    submitted: usize,
    accepted: usize,
    refused: usize,
}

/// Books one mall day (registration or the day's new members, carry-in earns, the day's
/// traffic, the follow-ups) through the engine, with the clock set to the day's times.
#[allow(clippy::too_many_arguments)]
async fn book_day(
    server: &RunningServer,
    channel: &Channel,
    token: &str,
    clock: &ManualClock,
    profile: &MallDayProfile,
    day_index: u32,
    day_end_ms: i64,
    batch_len: usize,
    counts: &mut Counts,
) -> anyhow::Result<()> {
    clock.set(day_end_ms - 12 * 3_600_000);
    let day = generate_day(profile, u64::from(day_index) + 1, day_end_ms, day_index);
    if day_index == 0 {
        register(channel.clone(), token, &day).await?;
    } else {
        enroll(channel.clone(), token, &day.members).await?;
    }
    // Traffic is booked at the end of its day, follow-ups an hour later, as the demo does.
    for (envelopes, at_ms) in [
        (day.carry_in, day_end_ms + 60_000),
        (day.traffic, day_end_ms + 120_000),
        (day.follow_ups, day_end_ms + 3_600_000),
    ] {
        clock.set(at_ms);
        for chunk in envelopes.chunks(batch_len) {
            counts.submitted += chunk.len();
            let checked = coalition_grpc::check_envelopes(&server.engine, chunk.to_vec())
                .await
                .map_err(|status| anyhow::anyhow!("{status}"))?;
            let mut submissions = Vec::with_capacity(checked.len());
            for item in checked {
                match item {
                    Ok(submission) => submissions.push(submission),
                    Err(_) => counts.refused += 1,
                }
            }
            for outcome in server.engine.submit(submissions).await? {
                match outcome {
                    Ok(outcome) if !outcome.duplicate => counts.accepted += 1,
                    Ok(_) => {}
                    Err(_) => counts.refused += 1,
                }
            }
        }
    }
    Ok(())
}

async fn build(database_url: &str, days: u32, scale: f64, batch_len: usize) -> anyhow::Result<()> {
    let token = random_token()?;
    // The journal ends today: day d is simulated `days - d` days ago, and the engine's clock
    // is set to each day as it is booked.
    let today_end_ms = SystemClock.now_ms() / DAY_MS * DAY_MS + 22 * 3_600_000;
    let first_day_end_ms = today_end_ms - i64::from(days.saturating_sub(1)) * DAY_MS;
    let clock = ManualClock::new(first_day_end_ms - 12 * 3_600_000);
    let server =
        RunningServer::start_with_clock(&config(database_url, &token), Arc::new(clock.clone()))
            .await?;
    if journal_len(&server).await? != 0 {
        bail!("the database already holds a journal; build into a fresh one");
    }
    let channel = Channel::from_shared(server.endpoint())?.connect().await?;
    let profile = MallDayProfile::scaled(scale);
    let started = Instant::now();
    let mut counts = Counts::default();
    for day_index in 0..days {
        let day_end_ms = first_day_end_ms + i64::from(day_index) * DAY_MS;
        book_day(
            &server,
            &channel,
            &token,
            &clock,
            &profile,
            day_index,
            day_end_ms,
            batch_len,
            &mut counts,
        )
        .await?;
        let entries = journal_len(&server).await?;
        let seconds = started.elapsed().as_secs_f64();
        let (rss, peak) = memory_mib();
        eprintln!(
            "day {:>4}/{days}: {entries} entries, {:.0} entries/s, RSS {rss:.0} MiB (peak {peak:.0})",
            day_index + 1,
            entries as f64 / seconds,
        );
    }
    let entries = journal_len(&server).await?;
    let seconds = started.elapsed().as_secs_f64();
    let (rss, peak) = memory_mib();
    server.shutdown().await?;
    println!(
        "database      {}",
        coalition::runtime::redacted(database_url)
    );
    println!("days          {days} at scale {scale}");
    println!(
        "submissions   {} ({} booked, {} refused, the rest duplicates)",
        counts.submitted, counts.accepted, counts.refused
    );
    println!(
        "journal       {entries} entries in {seconds:.1} s = {:.0} entries/s",
        entries as f64 / seconds
    );
    println!("memory        RSS {rss:.0} MiB at the end, peak {peak:.0} MiB");
    Ok(())
}

async fn restart(
    database_url: &str,
    then_days: u32,
    built_days: u32,
    scale: f64,
) -> anyhow::Result<()> {
    let token = random_token()?;
    let (rss_before, _) = memory_mib();
    // The first new day ends a day after the last built one (which ended today at 22:00).
    let today_end_ms = SystemClock.now_ms() / DAY_MS * DAY_MS + 22 * 3_600_000;
    let clock = ManualClock::new(SystemClock.now_ms().max(today_end_ms + 3_600_000 + 1));
    let started = Instant::now();
    let server =
        RunningServer::start_with_clock(&config(database_url, &token), Arc::new(clock.clone()))
            .await
            .context("starting the server")?;
    let serving_after = started.elapsed();
    let entries = journal_len(&server).await?;
    let (rss, peak) = memory_mib();
    println!(
        "database      {}",
        coalition::runtime::redacted(database_url)
    );
    println!("journal       {entries} entries");
    println!(
        "restart       serving after {:.2} s",
        serving_after.as_secs_f64()
    );
    println!(
        "memory        RSS {rss:.0} MiB after start (peak {peak:.0} MiB; {rss_before:.0} MiB before)"
    );
    if then_days > 0 {
        let channel = Channel::from_shared(server.endpoint())?.connect().await?;
        let profile = MallDayProfile::scaled(scale);
        let mut counts = Counts::default();
        let booking = Instant::now();
        for offset in 0..then_days {
            let day_end_ms = today_end_ms + i64::from(offset + 1) * DAY_MS;
            book_day(
                &server,
                &channel,
                &token,
                &clock,
                &profile,
                built_days + offset,
                day_end_ms,
                4096,
                &mut counts,
            )
            .await?;
        }
        let seconds = booking.elapsed().as_secs_f64();
        let booked = journal_len(&server).await? - entries;
        let (rss, peak) = memory_mib();
        println!(
            "then          {then_days} more days: {booked} entries in {seconds:.1} s = {:.0} entries/s ({} submissions, {} booked)",
            booked as f64 / seconds,
            counts.submitted,
            counts.accepted
        );
        println!("memory        RSS {rss:.0} MiB after them (peak {peak:.0} MiB)");
    }
    server.shutdown().await?;
    Ok(())
}

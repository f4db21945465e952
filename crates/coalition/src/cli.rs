//! The command line.
//!
//! Longer than 800 lines on purpose: half of it is the clap definitions of every subcommand
//! with the help texts users read, kept beside the handlers of the local subcommands so that
//! an argument and what it does read together. The gRPC subcommands are in `remote`.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand, ValueEnum};
use coalition_domain::signing;
use coalition_engine::Clock;
use coalition_grpc::client::{
    AdminServiceClient, AdminToken, MerchantSigner, QueryServiceClient, SubmissionServiceClient,
};
use coalition_grpc::pb;
use coalition_storage::{AuditStart, ConnectOptions, Storage};
use ed25519_dalek::SigningKey;
use tonic::transport::Channel;

use crate::config::Config;
use crate::runtime::RunningServer;

mod remote;
use remote::{admin, client};

#[derive(Debug, Parser)]
#[command(
    name = "coalition",
    version,
    about = "Clearing engine for coalition loyalty points"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server (SQLite at ./coalition.db unless configured otherwise).
    Serve {
        /// A TOML configuration file; COALITION_* environment variables override it.
        #[arg(long, env = "COALITION_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Start a server on a fresh embedded database and clear a day of mall traffic through it.
    Demo(crate::demo::DemoArgs),
    /// Publish the journal to NATS JetStream: each committed entry whole on
    /// `PREFIX.all` and per merchant it concerns on `PREFIX.merchant.MERCHANT`, resuming
    /// after a crash from the position kept in the database, with message ids so the
    /// stream drops what it already holds.
    Relay(crate::relay::RelayArgs),
    /// Audit the books: verify every entry's link, hash and balance, and compare balances,
    /// lots, wallets, member states and open holds with the journal. Runs in bounded
    /// memory on a consistent snapshot, beside a live server. Exits non-zero when the books
    /// are not sound; when they are, records a checkpoint at the head it verified.
    Check {
        /// The database to check.
        #[arg(
            long,
            env = "COALITION_DATABASE_URL",
            default_value = "sqlite://coalition.db"
        )]
        database_url: String,
        /// Walk the chain from the head an earlier sound check verified rather than from the
        /// first entry: `checkpoint` for the latest, or the entry sequence of one. The
        /// derived state is still compared in full.
        #[arg(long)]
        since: Option<String>,
        /// Also replay the whole journal through the ledger, as the writer once did at every
        /// start (memory grows with the members and the journal).
        #[arg(long)]
        replay: bool,
    },
    /// Reconcile a merchant's own record (a CSV file) against what clearing booked for it
    /// in a window of acceptance time; writes differences.csv, malformed.csv and
    /// summary.json into --out.
    Reconcile {
        /// The database to read (read only).
        #[arg(
            long,
            env = "COALITION_DATABASE_URL",
            default_value = "sqlite://coalition.db"
        )]
        database_url: String,
        #[arg(long)]
        merchant: String,
        /// The settlement period to compare with (its entries by acceptance time).
        #[command(flatten)]
        period: PeriodArgs,
        /// Instead of --period: the window's start, Unix milliseconds of acceptance
        /// (inclusive).
        #[arg(long, conflicts_with = "period", requires = "to_ms")]
        from_ms: Option<i64>,
        /// The window's end, Unix milliseconds of acceptance (exclusive).
        #[arg(long, conflicts_with = "period", requires = "from_ms")]
        to_ms: Option<i64>,
        /// The merchant's CSV: merchant_transaction_id, points, and optionally kind and
        /// amount_minor.
        #[arg(long)]
        file: PathBuf,
        /// The folder for the results.
        #[arg(long)]
        out: PathBuf,
        /// No progress bar.
        #[arg(long)]
        quiet: bool,
    },
    /// Export a finalised settlement period as a folder for auditors: entries, postings,
    /// trial balance, settlement, statements, payments, reconciliations, an hledger journal,
    /// and a manifest signed by the operator's current key.
    Export {
        /// The database to read (read only).
        #[arg(
            long,
            env = "COALITION_DATABASE_URL",
            default_value = "sqlite://coalition.db"
        )]
        database_url: String,
        #[command(flatten)]
        period: PeriodArgs,
        /// The folder to create (must not exist or be empty).
        #[arg(long)]
        out: PathBuf,
        /// The operator's key directory (see `coalition operator-key`).
        #[arg(long)]
        operator_keys: PathBuf,
        /// Reconcile a merchant's own record into the export, MERCHANT=FILE; repeat for more.
        #[arg(long = "reconcile")]
        reconcile: Vec<crate::export::ReconcileInput>,
        /// Add optional copies: `csv` (spreadsheet copies of every file) and `hledger` (the
        /// accounting journal); repeat or separate by commas. Without it the export holds
        /// what an auditor verifies: compressed JSON lines, the settlement and the payments.
        #[arg(long = "with", value_enum, value_delimiter = ',')]
        with: Vec<ExportFormat>,
    },
    /// Verify exports with nothing but the folders and the operator's public key: signature,
    /// file digests, hash chain, balanced entries, trial balance, settlement. Several folders
    /// of consecutive periods must chain. Exits non-zero on any problem.
    Verify {
        /// Export folders, in period order.
        #[arg(required = true)]
        folders: Vec<PathBuf>,
        /// The operator's public key: a `.pub` file or 64 hex digits. Repeat it to accept
        /// exports signed before a key rotation.
        #[arg(long = "operator-key", required = true)]
        operator_keys: Vec<String>,
    },
    /// Prove that entries are in a finalised period, from its signed export: one transaction,
    /// or every entry of a merchant or of a member, each with its audit path to the Merkle
    /// root the signed manifest carries. The proof verifies with `coalition verify-proof` and
    /// the operator's public key alone. (`coalition admin prove` asks the server instead.)
    Prove {
        /// The export folder; or name the period and the folder it is kept in.
        #[arg(long, required_unless_present = "period", conflicts_with = "period")]
        export: Option<PathBuf>,
        /// The period, YYYY-MM-DD, whose export is `EXPORTS_DIR/export-PERIOD`.
        #[arg(long)]
        period: Option<String>,
        /// Where the console keeps exports.
        #[arg(long, env = "COALITION_CONSOLE_EXPORTS_DIR", default_value = "exports")]
        exports_dir: PathBuf,
        #[command(flatten)]
        subject: ProofSubjectArgs,
        /// Write the proof here instead of to standard output.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Check an inclusion proof with nothing but the operator's public key: the manifest's
    /// signature, each entry's hash from its fields, and its path to the signed root. Exits
    /// non-zero on any problem.
    VerifyProof {
        /// The proof file (from `coalition prove` or the admin call ProveEntries).
        proof: PathBuf,
        /// The operator's public key: a `.pub` file or 64 hex digits.
        #[arg(long = "operator-key")]
        operator_key: String,
    },
    /// Generate an ed25519 key: the secret seed goes to a file, the public key is printed.
    Keygen {
        /// Where to write the secret key (hex); refused if the file exists.
        #[arg(long)]
        out: PathBuf,
    },
    /// Print the worked signing example of the README, computed afresh.
    SignExample,
    /// The operator's signing keys (they sign export manifests and closed periods' chain
    /// heads): generate the first, show them, rotate to a new one.
    OperatorKey {
        #[command(subcommand)]
        command: OperatorKeyCommand,
    },
    /// Operator administration over gRPC.
    Admin {
        #[command(flatten)]
        connection: AdminConnection,
        #[command(subcommand)]
        command: AdminCommand,
    },
    /// Act as a partner: sign and submit a transaction, or read a balance, over gRPC.
    Client {
        #[command(flatten)]
        identity: MerchantIdentity,
        #[command(subcommand)]
        command: ClientCommand,
    },
}

/// A settlement period named on the command line, and the cut-off that defines periods (the
/// server's `settlement_cutoff` and `settlement_utc_offset`).
#[derive(Debug, Clone, clap::Args)]
pub struct PeriodArgs {
    /// The period: the local date it starts, YYYY-MM-DD.
    #[arg(long)]
    pub period: Option<String>,
    /// The daily cut-off, local HH:MM.
    #[arg(long, env = "COALITION_SETTLEMENT_CUTOFF", default_value = coalition_engine::CUTOFF_TIME_DEFAULT)]
    pub cutoff: String,
    /// The UTC offset of the cut-off, +HH:MM or -HH:MM.
    #[arg(long, env = "COALITION_SETTLEMENT_UTC_OFFSET", default_value = coalition_engine::CUTOFF_OFFSET_DEFAULT, allow_hyphen_values = true)]
    pub utc_offset: String,
}

impl PeriodArgs {
    /// The period named, if one is.
    pub fn period(&self) -> anyhow::Result<Option<coalition_domain::settlement::Period>> {
        let Some(label) = &self.period else {
            return Ok(None);
        };
        let cutoff = coalition_domain::settlement::Cutoff::parse(&self.cutoff, &self.utc_offset)?;
        Ok(Some(cutoff.period(label)?))
    }
}

/// An optional copy an export can hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExportFormat {
    Csv,
    Hledger,
}

/// What a proof is about: exactly one of these.
#[derive(Debug, Clone, clap::Args)]
#[group(required = true, multiple = false)]
pub struct ProofSubjectArgs {
    /// One merchant transaction, MERCHANT/TRANSACTION_ID.
    #[arg(long)]
    transaction: Option<String>,
    /// Every entry the merchant submitted or that posts to one of its accounts.
    #[arg(long)]
    merchant: Option<String>,
    /// Every entry that names the member.
    #[arg(long)]
    member: Option<String>,
}

impl ProofSubjectArgs {
    pub fn subject(&self) -> anyhow::Result<crate::proof::Subject> {
        use crate::proof::Subject;
        match (&self.transaction, &self.merchant, &self.member) {
            (Some(transaction), None, None) => Subject::transaction(transaction),
            (None, Some(merchant), None) => Subject::checked(Subject::Merchant {
                merchant_id: merchant.clone(),
            }),
            (None, None, Some(member)) => Subject::checked(Subject::Member {
                member_id: member.clone(),
            }),
            _ => bail!("name one of --transaction, --merchant or --member"),
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct AdminConnection {
    /// The server's gRPC endpoint.
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    server: String,
    /// The admin token.
    #[arg(long, env = "COALITION_ADMIN_TOKEN", hide_env_values = true)]
    token: String,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Category {
    MallTenant,
    Cinema,
    Restaurant,
    Parking,
    Other,
}

impl Category {
    fn wire(self) -> pb::MerchantCategory {
        match self {
            Category::MallTenant => pb::MerchantCategory::MallTenant,
            Category::Cinema => pb::MerchantCategory::Cinema,
            Category::Restaurant => pb::MerchantCategory::Restaurant,
            Category::Parking => pb::MerchantCategory::Parking,
            Category::Other => pb::MerchantCategory::Other,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Register a merchant with its first key.
    RegisterMerchant {
        #[arg(long)]
        merchant: String,
        #[arg(long)]
        name: String,
        #[arg(long, value_enum)]
        category: Category,
        #[arg(long)]
        key_id: String,
        /// The public key, 64 hex characters (as printed by `coalition keygen`).
        #[arg(long)]
        public_key: String,
    },
    /// Add a key to a merchant.
    AddKey {
        #[arg(long)]
        merchant: String,
        #[arg(long)]
        key_id: String,
        #[arg(long)]
        public_key: String,
        /// Valid until, Unix milliseconds.
        #[arg(long)]
        valid_until_ms: Option<i64>,
    },
    /// Revoke a merchant's key from now on.
    RevokeKey {
        #[arg(long)]
        merchant: String,
        #[arg(long)]
        key_id: String,
    },
    /// Suspend a merchant.
    SuspendMerchant {
        #[arg(long)]
        merchant: String,
    },
    /// Lift a merchant's suspension.
    ReactivateMerchant {
        #[arg(long)]
        merchant: String,
    },
    /// Show a merchant and its keys.
    ShowMerchant {
        #[arg(long)]
        merchant: String,
    },
    /// Enroll members.
    Enroll {
        /// Member ids.
        #[arg(required = true)]
        members: Vec<String>,
        #[arg(long)]
        tier: Option<String>,
    },
    /// Add the next version of a merchant's terms (prices per point, in minor units).
    SetTerms {
        #[arg(long)]
        merchant: String,
        /// What the merchant pays per point it issues, e.g. 1.05.
        #[arg(long)]
        issue_price: String,
        /// What the merchant is paid per point redeemed there, e.g. 0.95.
        #[arg(long)]
        redeem_price: String,
        /// The clearing fee per point issued or redeemed, charged to the merchant.
        #[arg(long, default_value = "0")]
        fee: String,
        /// In force from this acceptance time, Unix milliseconds; default now.
        #[arg(long)]
        effective_from_ms: Option<i64>,
        /// The merchant may reverse other merchants' transactions (returns of their sales).
        #[arg(long)]
        cross_merchant_reversals: bool,
        /// How far the merchant's net position may go below zero before earns are refused,
        /// in minor units; 0 makes it prepaid. Default: no limit.
        #[arg(long)]
        credit_limit_minor: Option<i64>,
        /// The base earn rate for earns sent with a spend and no points: points per minor
        /// unit (0.01 is one point per yuan). Default: earns must name their points.
        #[arg(long, default_value = "")]
        earn_points_per_minor: String,
        /// The merchant's own legacy points unit (4 to 12 of A-Z 0-9), exchanged into
        /// alliance points at --points-per-legacy-unit.
        #[arg(long, default_value = "")]
        legacy_unit: String,
        /// Alliance points per legacy unit, e.g. 0.35.
        #[arg(long, default_value = "")]
        points_per_legacy_unit: String,
        /// The share of breakage on the merchant's issue paid back to it at settlement, a
        /// decimal from 0 to 1.
        #[arg(long, default_value = "0")]
        breakage_share: String,
    },
    /// Set the next version of the alliance's earn rules (tier multipliers and campaigns).
    SetEarnRules {
        /// A tier multiplier, TIER=MULTIPLIER (e.g. gold=1.5); repeat for more.
        #[arg(long = "tier")]
        tiers: Vec<String>,
        /// A campaign, NAME,MERCHANT,STARTS_MS,ENDS_MS,MULTIPLIER with MERCHANT "*" for every
        /// merchant; repeat for more.
        #[arg(long = "campaign")]
        campaigns: Vec<String>,
        /// In force from this acceptance time, Unix milliseconds; default now.
        #[arg(long)]
        effective_from_ms: Option<i64>,
    },
    /// Book money a merchant paid in (prepaid funding, or paying down a position).
    Fund {
        #[arg(long)]
        merchant: String,
        /// The amount received, in minor units.
        #[arg(long)]
        amount_minor: i64,
        /// The payment's reference.
        #[arg(long)]
        reference: String,
    },
    /// Book money the operator paid a merchant against what settlement left payable to it.
    Payout {
        #[arg(long)]
        merchant: String,
        /// The amount paid, in minor units.
        #[arg(long)]
        amount_minor: i64,
        /// The payment's reference (the transfer's end-to-end id).
        #[arg(long)]
        reference: String,
    },
    /// Run the expiry run now: book every expired lot to breakage (idempotent).
    Expire,
    /// Settlement periods: preview one, or finalise one whose cut-off has passed.
    Settle {
        #[command(subcommand)]
        command: SettleCommand,
    },
    /// Ask the server for an inclusion proof from its signed export of a period (the call
    /// ProveEntries); check it with `coalition verify-proof`.
    Prove {
        /// The period, YYYY-MM-DD.
        #[arg(long)]
        period: String,
        #[command(flatten)]
        subject: ProofSubjectArgs,
        /// Write the proof here instead of to standard output.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Make one member id an alias of another, moving its points.
    Alias {
        #[arg(long)]
        alias: String,
        #[arg(long)]
        target: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum SettleCommand {
    /// Compute a period's settlement and book nothing (the open period when none is named).
    Preview {
        /// The period, YYYY-MM-DD (the local date it starts).
        #[arg(long)]
        period: Option<String>,
        /// Print the settlement as JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Finalise a period: book its closing entry and record it. Again: the same result.
    Finalise {
        /// The period, YYYY-MM-DD.
        #[arg(long)]
        period: String,
        /// Print the settlement as JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, clap::Args)]
pub struct MerchantIdentity {
    /// The server's gRPC endpoint.
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    server: String,
    /// The merchant id.
    #[arg(long)]
    merchant: String,
    /// The key id.
    #[arg(long)]
    key_id: String,
    /// The file with the secret key (hex), as written by `coalition keygen`.
    #[arg(long)]
    key_file: PathBuf,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Kind {
    Earn,
    Burn,
    Reversal,
    Hold,
    Capture,
    Void,
    ExchangeIn,
    ExchangeOut,
}

#[derive(Debug, Subcommand)]
pub enum ClientCommand {
    /// Sign and submit one earn, burn, reversal, hold, capture or void.
    Submit {
        #[arg(long, value_enum)]
        kind: Kind,
        #[arg(long)]
        member: String,
        #[arg(long)]
        points: i64,
        #[arg(long)]
        transaction_id: String,
        #[arg(long, default_value = "store-1")]
        store: String,
        #[arg(long, default_value = "terminal-1")]
        terminal: String,
        /// The purchase amount in minor units.
        #[arg(long)]
        spend_minor: Option<i64>,
        /// When it happened, Unix milliseconds; defaults to now. Give the same value to
        /// retry a submission with the same body.
        #[arg(long)]
        occurred_at_ms: Option<i64>,
        /// For a reversal, capture or void: the transaction id it acts on.
        #[arg(long, default_value = "")]
        refers_to: String,
        /// For a reversal of another merchant's transaction: that merchant.
        #[arg(long, default_value = "")]
        refers_to_merchant: String,
        /// For an exchange-in: the legacy units converted.
        #[arg(long, default_value_t = 0)]
        legacy_units: i64,
    },
    /// Read a member's balance with a signed query.
    Balance {
        #[arg(long)]
        member: String,
    },
}

/// Runs the command line; the binary's `main`. Errors are printed as one line with their
/// causes, and the exit code is 1.
pub fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = crate::memory::block_on_main(run(cli));
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve { config } => serve(config.as_deref()).await,
        Command::Demo(args) => crate::demo::run(args).await,
        Command::Relay(args) => crate::relay::run(&args, shutdown_signal()).await,
        Command::Check {
            database_url,
            since,
            replay,
        } => check(&database_url, since.as_deref(), replay).await,
        Command::Reconcile {
            database_url,
            merchant,
            period,
            from_ms,
            to_ms,
            file,
            out,
            quiet,
        } => {
            let (from_ms, to_ms) = match (period.period()?, from_ms, to_ms) {
                (Some(period), _, _) => (period.start_ms, period.end_ms),
                (None, Some(from_ms), Some(to_ms)) => (from_ms, to_ms),
                _ => bail!("name the window: --period, or --from-ms and --to-ms"),
            };
            reconcile(&database_url, &merchant, from_ms, to_ms, &file, &out, quiet).await
        }
        Command::Export {
            database_url,
            period,
            out,
            operator_keys,
            reconcile,
            with,
        } => {
            let Some(named) = period.period()? else {
                bail!("name the period to export with --period YYYY-MM-DD");
            };
            let cutoff =
                coalition_domain::settlement::Cutoff::parse(&period.cutoff, &period.utc_offset)?;
            let manifest = crate::export::export(&crate::export::ExportOptions {
                database_url,
                period: named,
                cutoff,
                out: out.clone(),
                operator_keys,
                reconcile,
                formats: crate::export::Formats {
                    csv: with.contains(&ExportFormat::Csv),
                    hledger: with.contains(&ExportFormat::Hledger),
                },
            })
            .await?;
            println!(
                "exported period {} (entries {}..{}, head {}) to {}: {} files, signed by operator key {}",
                manifest.period,
                manifest.first_sequence,
                manifest.last_sequence,
                manifest.head_hash,
                out.display(),
                manifest.files.len() + 2,
                manifest.operator_key_id
            );
            Ok(())
        }
        Command::Verify {
            folders,
            operator_keys,
        } => verify(&folders, &operator_keys),
        Command::Keygen { out } => keygen(&out),
        Command::OperatorKey { command } => operator_key(command),
        Command::Prove {
            export,
            period,
            exports_dir,
            subject,
            out,
        } => {
            let folder = match (export, period) {
                (Some(folder), _) => folder,
                (None, Some(period)) => crate::proof::export_folder(&exports_dir, &period),
                (None, None) => bail!("name --export or --period"),
            };
            let proof = crate::proof::prove(&folder, &subject.subject()?)?;
            write_proof(&serde_json::to_vec(&proof)?, out.as_deref())
        }
        Command::VerifyProof {
            proof,
            operator_key,
        } => verify_proof(&proof, &operator_key),
        Command::SignExample => {
            print!("{}", sign_example());
            Ok(())
        }
        Command::Admin {
            connection,
            command,
        } => admin(connection, command).await,
        Command::Client { identity, command } => client(identity, command).await,
    }
}

fn init_logging(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&config.log_filter));
    // Colour only on a terminal: a file or a pipe gets plain text (and NO_COLOR is honoured).
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
        .with_writer(std::io::stderr);
    let _ = if config.log_format == "json" {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

async fn serve(config_file: Option<&Path>) -> anyhow::Result<()> {
    let config = Config::load(config_file, std::env::vars())?;
    init_logging(&config);
    if config.metrics_address != "off" {
        let address: std::net::SocketAddr = config
            .metrics_address
            .parse()
            .with_context(|| format!("metrics_address {:?}", config.metrics_address))?;
        metrics_exporter_prometheus::PrometheusBuilder::new()
            .with_http_listener(address)
            .set_buckets(&[
                0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0,
                100.0, 1000.0, 5000.0,
            ])?
            .install()
            .context("cannot start the metrics endpoint")?;
        tracing::info!(%address, "metrics at /metrics");
    }
    if config.admin_token.is_none() {
        tracing::warn!("no admin_token configured: admin calls are refused");
    }
    let server = RunningServer::start(&config).await?;
    // Print the bound address on stdout so scripts (and tests) can find a port-0 server.
    println!("listening on {}", server.address);
    shutdown_signal().await;
    tracing::info!("shutting down: finishing calls in flight");
    server.shutdown().await
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .expect("can listen for SIGTERM");
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
}

/// An operator public key given as 64 hex digits or as a `.pub` file.
fn operator_public_key(text: &str) -> anyhow::Result<ed25519_dalek::VerifyingKey> {
    match hex::decode(text.trim())
        .ok()
        .and_then(|bytes| <[u8; 32]>::try_from(bytes).ok())
    {
        Some(bytes) => coalition_domain::signing::parse_public_key(&bytes)
            .context("--operator-key is not a usable ed25519 public key"),
        None => crate::operator_key::read_public_key(Path::new(text)),
    }
}

/// Writes a proof document to `out`, or to standard output.
pub(crate) fn write_proof(json: &[u8], out: Option<&Path>) -> anyhow::Result<()> {
    match out {
        Some(path) => {
            std::fs::write(path, json).with_context(|| format!("cannot write {}", path.display()))
        }
        None => {
            use std::io::Write as _;
            let mut stdout = std::io::stdout().lock();
            stdout.write_all(json)?;
            stdout.write_all(b"\n")?;
            Ok(())
        }
    }
}

/// Checks a proof and prints what it proves, or every problem.
fn verify_proof(path: &Path, operator_key: &str) -> anyhow::Result<()> {
    let key = operator_public_key(operator_key)?;
    let proof = crate::proof::read_proof(path)?;
    match crate::proof::verify_proof(&proof, &key) {
        Ok(checked) => {
            println!(
                "{}: {} of period {}: {} entries proved in the period signed by the operator key (root {})",
                path.display(),
                proof.subject,
                checked.manifest.period,
                checked.entries,
                &checked.manifest.entries_root[..16.min(checked.manifest.entries_root.len())]
            );
            for proved in &proof.entries {
                println!(
                    "  entry {} {} {} points {}",
                    proved.entry.sequence,
                    proved.entry.kind,
                    proved
                        .entry
                        .merchant_transaction_id
                        .as_deref()
                        .unwrap_or("-"),
                    proved.entry.points
                );
            }
            Ok(())
        }
        Err(problems) => {
            for problem in &problems {
                println!("{}: {problem}", path.display());
            }
            bail!(
                "{} problems found: the proof does not verify",
                problems.len()
            )
        }
    }
}

/// Verifies export folders and prints every problem; an error when there is any.
fn verify(folders: &[PathBuf], operator_keys: &[String]) -> anyhow::Result<()> {
    let mut keys = Vec::with_capacity(operator_keys.len());
    for operator_key in operator_keys {
        keys.push(operator_public_key(operator_key)?);
    }
    let mut problems = 0usize;
    let mut earlier: Vec<crate::verify::Verified> = Vec::new();
    for folder in folders {
        let verified = crate::verify::verify_folder(folder, &keys)?;
        let mut found = verified.problems.clone();
        if let Some(previous) = earlier.last() {
            found.extend(crate::verify::chain_problems(previous, &verified));
        }
        for before in &earlier {
            found.extend(crate::verify::closing_problems(before, &verified));
        }
        match (&verified.manifest, found.is_empty()) {
            (Some(manifest), true) => println!(
                "{}: period {} verified: signature, {} files, entries {}..{} chained from {} to {}, balanced, priced by their terms, Merkle root, settlement recomputed, every signed file made again",
                folder.display(),
                manifest.period,
                manifest.files.len(),
                manifest.first_sequence,
                manifest.last_sequence,
                &manifest.previous_hash[..16.min(manifest.previous_hash.len())],
                &manifest.head_hash[..16.min(manifest.head_hash.len())]
            ),
            _ => {
                for problem in &found {
                    println!("{}: {problem}", folder.display());
                }
            }
        }
        if found.is_empty() && verified.merchant_entry_count > 0 {
            println!(
                "{}: partners' signed envelopes checked for {} of {} merchant entries{}",
                folder.display(),
                verified.merchant_entry_count - verified.without_envelope,
                verified.merchant_entry_count,
                if verified.without_envelope > 0 {
                    " (the rest were booked before envelopes were kept)"
                } else {
                    ""
                }
            );
        }
        problems += found.len();
        // Only the last period's balances are chained to; the earlier ones keep what their
        // closing entries are checked by.
        if let Some(previous) = earlier.last_mut() {
            previous.closing = Vec::new();
            previous.opening = Vec::new();
        }
        earlier.push(verified);
    }
    if problems > 0 {
        bail!("{problems} problems found: the export does not verify");
    }
    if folders.len() > 1 {
        println!("{} consecutive periods chain", folders.len());
    }
    Ok(())
}

/// Reconciles a merchant's file with what clearing booked, writing the report's files into
/// `out` and printing its summary.
async fn reconcile(
    database_url: &str,
    merchant: &str,
    from_ms: i64,
    to_ms: i64,
    file: &Path,
    out: &Path,
    quiet: bool,
) -> anyhow::Result<()> {
    use crate::reconcile;
    let merchant_id = coalition_domain::MerchantId::new(merchant)
        .map_err(|error| anyhow::anyhow!("--merchant {error}"))?;
    if from_ms >= to_ms {
        bail!("--from-ms must be before --to-ms");
    }
    let started = std::time::Instant::now();
    let size = std::fs::metadata(file)
        .with_context(|| format!("cannot read {}", file.display()))?
        .len();
    let reader = std::io::BufReader::new(
        std::fs::File::open(file).with_context(|| format!("cannot open {}", file.display()))?,
    );
    let storage = Storage::connect(&ConnectOptions::existing(database_url)).await?;
    let bar = crate::demo::progress(size as usize, "reading", quiet);
    let report = reconcile::reconcile_file(
        &storage,
        &merchant_id,
        from_ms,
        to_ms,
        reader,
        out,
        |bytes| bar.set_position(bytes),
    )
    .await;
    bar.finish_and_clear();
    storage.close().await;
    let report = report?;
    println!(
        "merchant file: {} transactions, {} points, {} amount; clearing: {} transactions, {} points, {} amount",
        report.merchant.transactions,
        report.merchant.points,
        report.merchant.amount_minor,
        report.clearing.transactions,
        report.clearing.points,
        report.clearing.amount_minor
    );
    for (status, count) in &report.counts {
        println!("{status:<22} {count}");
    }
    println!("malformed rows         {}", report.malformed_rows);
    println!(
        "results in {} ({:.2} s)",
        out.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

pub async fn check(database_url: &str, since: Option<&str>, replay: bool) -> anyhow::Result<()> {
    let start = match since {
        None => AuditStart::Genesis,
        Some("checkpoint") => AuditStart::LastCheckpoint,
        Some(sequence) => AuditStart::Checkpoint(sequence.parse().map_err(|_| {
            anyhow::anyhow!("--since takes `checkpoint` or an entry sequence, not {sequence:?}")
        })?),
    };
    let storage = Storage::connect(&ConnectOptions::existing(database_url)).await?;
    let started = std::time::Instant::now();
    let report = storage.audit(start).await?;
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "chain: {} entries verified from entry {} to {} in {seconds:.1} s, with the derived \
         state compared ({:.0} entries/s); head {}",
        report.entries,
        report.start.sequence,
        report.head.sequence,
        report.entries as f64 / seconds.max(1e-9),
        hex::encode(report.head.hash),
    );
    for (name, differences) in &report.comparisons {
        println!("  {name:<62} {differences} differences");
    }
    let mut problems = report.problems.clone();
    if replay {
        let started = std::time::Instant::now();
        let (_, replayed) = storage.replay(i64::MAX).await?;
        let seconds = started.elapsed().as_secs_f64();
        println!(
            "replay: {} entries through the ledger in {seconds:.1} s ({:.0} entries/s)",
            replayed.entries,
            replayed.entries as f64 / seconds.max(1e-9)
        );
        problems.extend(replayed.problems);
    }
    if problems.is_empty() && report.entries > 0 {
        storage
            .record_checkpoint(report.head, coalition_engine::SystemClock.now_ms())
            .await?;
    }
    storage.close().await;
    if problems.is_empty() {
        println!(
            "ledger check: OK (every entry balances, the chain verifies, balances, lots, wallets and holds match the journal)"
        );
        Ok(())
    } else {
        for problem in &problems {
            println!("problem: {problem}");
        }
        bail!("ledger check failed with {} problems", problems.len())
    }
}

#[derive(Debug, Subcommand)]
pub enum OperatorKeyCommand {
    /// Create the first operator key in the directory (refused if it holds keys already).
    Generate {
        #[arg(long, default_value = "operator-keys")]
        dir: PathBuf,
    },
    /// Print the current key's id and public key, and every older one.
    Show {
        #[arg(long, default_value = "operator-keys")]
        dir: PathBuf,
    },
    /// Make a new key current; the old one signs nothing more but stays verifiable.
    Rotate {
        #[arg(long, default_value = "operator-keys")]
        dir: PathBuf,
    },
}

fn operator_key(command: OperatorKeyCommand) -> anyhow::Result<()> {
    use crate::operator_key;
    let describe = |key: &operator_key::OperatorKey, dir: &Path| {
        format!(
            "{} {} {} ({})",
            if key.current { "current" } else { "retired" },
            key.key_id,
            hex::encode(key.public_key.as_bytes()),
            dir.join(format!("{}.pub", key.key_id)).display()
        )
    };
    match command {
        OperatorKeyCommand::Generate { dir } => {
            let key = operator_key::generate(&dir)?;
            println!("{}", describe(&key, &dir));
        }
        OperatorKeyCommand::Show { dir } => {
            for key in operator_key::list(&dir)? {
                println!("{}", describe(&key, &dir));
            }
        }
        OperatorKeyCommand::Rotate { dir } => {
            let key = operator_key::rotate(&dir)?;
            println!("{}", describe(&key, &dir));
        }
    }
    Ok(())
}

/// Reads a secret key file written by `keygen`.
pub fn read_key_file(path: &Path) -> anyhow::Result<SigningKey> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let bytes =
        hex::decode(text.trim()).with_context(|| format!("{} is not hex", path.display()))?;
    let seed: [u8; 32] = bytes
        .try_into()
        .map_err(|_| anyhow::anyhow!("{} must hold 32 bytes of hex", path.display()))?;
    Ok(SigningKey::from_bytes(&seed))
}

/// A new signing key from the operating system's randomness.
pub fn generate_key() -> anyhow::Result<SigningKey> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed)
        .map_err(|error| anyhow::anyhow!("no randomness available: {error}"))?;
    Ok(SigningKey::from_bytes(&seed))
}

fn keygen(out: &Path) -> anyhow::Result<()> {
    let key = generate_key()?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options
        .open(out)
        .with_context(|| format!("cannot create {} (it must not exist yet)", out.display()))?;
    std::io::Write::write_all(
        &mut file,
        format!("{}\n", hex::encode(key.to_bytes())).as_bytes(),
    )?;
    println!("secret key written to {}", out.display());
    println!(
        "public key: {}",
        hex::encode(key.verifying_key().as_bytes())
    );
    Ok(())
}

/// The README's worked signing example: fixed key and body, so partners in any language can
/// check that their signer produces the same bytes.
pub fn sign_example() -> String {
    let seed: [u8; 32] = std::array::from_fn(|index| index as u8);
    let key = SigningKey::from_bytes(&seed);
    let body = example_body();
    let body_bytes = prost::Message::encode_to_vec(&body);
    let signature = signing::sign(&key, signing::SUBMISSION_DOMAIN, &body_bytes);
    let query_bytes = prost::Message::encode_to_vec(&example_query());
    let query_signature = signing::sign(&key, signing::QUERY_DOMAIN, &query_bytes);
    format!(
        "secret key seed (hex): {}\npublic key (hex):      {}\nbody (hex):            {}\nsigned message (hex): {}\nsignature (hex):       {}\n\nquery (hex):                 {}\nsigned query message (hex):  {}\nquery signature (hex):       {}\n",
        hex::encode(seed),
        hex::encode(key.verifying_key().as_bytes()),
        hex::encode(&body_bytes),
        hex::encode(signing::signed_message(
            signing::SUBMISSION_DOMAIN,
            &body_bytes
        )),
        hex::encode(signature),
        hex::encode(&query_bytes),
        hex::encode(signing::signed_message(signing::QUERY_DOMAIN, &query_bytes)),
        hex::encode(query_signature),
    )
}

/// The signed query of the worked example: merchant `tenant-001` asks for the wallet balance
/// of `member-000042`, issued at 2026-01-01T00:00:00Z.
pub fn example_query() -> pb::BalanceQuery {
    pb::BalanceQuery {
        merchant_id: "tenant-001".into(),
        issued_at_unix_ms: 1_767_225_600_000,
        account_kind: pb::AccountKind::MemberWallet as i32,
        owner_id: "member-000042".into(),
        as_of_unix_ms: None,
        asset: String::new(),
    }
}

/// The body of the worked example.
pub fn example_body() -> pb::TransactionBody {
    pb::TransactionBody {
        merchant_id: "tenant-001".into(),
        merchant_transaction_id: "pos-7-000123".into(),
        kind: pb::TransactionKind::Earn as i32,
        member_id: "member-000042".into(),
        points: 180,
        spend_minor: Some(18_000),
        occurred_at_unix_ms: 1_767_225_600_000,
        store_id: "store-12".into(),
        terminal_id: "pos-7".into(),
        refers_to_transaction_id: String::new(),
        refers_to_merchant_id: String::new(),
        legacy_units: 0,
    }
}

//! Configuration: defaults, then a TOML file, then `COALITION_*` environment variables, each
//! later source overriding the earlier. Every limit is named with its unit last; the
//! defaults are documented in `docs/configuration.md`.

use std::path::Path;

use coalition_domain::settlement::Cutoff;
use coalition_domain::{CurrencyCode, ExpiryBoundary, LedgerPolicy, Limits};
use coalition_engine::EngineConfig;
use coalition_grpc::ServerConfig;
use serde::{Deserialize, Serialize};

/// Everything `coalition serve` can be told.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where the gRPC API listens.
    pub listen_address: String,
    /// Where the Prometheus metrics endpoint listens; "off" disables it.
    pub metrics_address: String,
    /// Where the finance team's web console listens; "off" disables it.
    pub console_address: String,
    /// How long a console session lasts without a request before it must sign in again.
    pub console_session_timeout_ms: i64,
    /// The most console sessions open at once.
    pub console_sessions_max: usize,
    /// Where the console writes the exports it makes (one folder per period).
    pub console_exports_dir: String,
    /// The operator's key directory the console signs exports with (see `coalition
    /// operator-key`).
    pub console_operator_keys_dir: String,
    /// The largest merchant file the console accepts for reconciliation, in bytes.
    pub console_upload_bytes_max: usize,
    /// `sqlite://PATH` (created on first run) or `postgres://...`.
    pub database_url: String,
    /// Database pool size.
    pub database_connections_max: u32,
    /// The page cache of the writer's SQLite connection, in MiB (SQLite only).
    pub sqlite_writer_cache_mib: u32,
    /// The settlement currency of money legs, an ISO 4217 code; amounts are in its minor units.
    pub settlement_currency: String,
    /// The operator's admin token; admin calls are refused when unset.
    pub admin_token: Option<String>,
    /// The most submissions per writer batch (one database transaction).
    pub batch_len_max: usize,
    /// Commands waiting for the writer before callers wait in turn.
    pub writer_queue_len_max: usize,
    /// The most envelopes in one SubmitBatch call.
    pub batch_request_len_max: usize,
    /// The largest gRPC message, in bytes.
    pub message_size_max_bytes: usize,
    /// The most open client connections.
    pub connections_max: usize,
    /// The most submissions of one stream processed at once.
    pub stream_in_flight_max: usize,
    /// The most entries in a history page.
    pub history_page_len_max: u32,
    /// The most `SubscribeEntries` streams open at once.
    pub subscribers_max: usize,
    /// Messages (a batch's entries each) waiting to be sent to one subscriber before it is
    /// caught up from the database.
    pub subscriber_buffer_len: usize,
    /// How old a transaction may be when submitted (terminals that were offline).
    pub offline_window_ms: i64,
    /// How far in the future `occurred_at` may be (terminal clock skew).
    pub future_skew_max_ms: i64,
    /// The most points in one transaction.
    pub points_per_transaction_max: i64,
    /// How far a signed query's issued_at may be from the server clock.
    pub query_freshness_ms: i64,
    /// How long a hold stays open before it is released by itself.
    pub hold_timeout_ms: i64,
    /// How many days points live after they were earned; 0 for forever.
    pub points_lifetime_days: i64,
    /// Where a lot's expiry is rounded up to: "exact", "month_end" or "year_end" (UTC).
    pub points_expiry_boundary: String,
    /// How often the server runs the expiry run by itself; 0 for only on request.
    pub expiry_run_interval_ms: i64,
    /// The daily settlement cut-off, local time `HH:MM`: a transaction accepted at or after it
    /// falls into the next period.
    pub settlement_cutoff: String,
    /// The alliance's UTC offset for the cut-off and period names, `+HH:MM` or `-HH:MM`.
    pub settlement_utc_offset: String,
    /// How long a graceful shutdown waits for open calls before closing their connections.
    pub shutdown_grace_ms: u64,
    /// "text" or "json".
    pub log_format: String,
    /// A tracing filter such as "info" or "coalition=debug"; RUST_LOG overrides it.
    pub log_filter: String,
    /// The writer's working set between batches: members (wallet, accounts, tier) kept in
    /// memory; the least recently used beyond it are dropped and reloaded when needed.
    pub writer_cache_members_max: usize,
    /// Referred entries (reversible remainders of earns, burns, captures; open holds) kept.
    pub writer_cache_references_max: usize,
    /// Idempotency receipts kept; older ones are looked up in the journal when needed.
    pub writer_cache_receipts_max: usize,
    /// The most members one batch of an expiry run takes; a larger run continues in the
    /// following batches.
    pub expiry_members_per_batch_max: usize,
}

impl Default for Config {
    fn default() -> Self {
        let engine = EngineConfig::default();
        let server = ServerConfig::default();
        let limits = Limits::default();
        Self {
            listen_address: "127.0.0.1:50051".into(),
            metrics_address: "127.0.0.1:9464".into(),
            console_address: "127.0.0.1:8080".into(),
            console_session_timeout_ms: 30 * 60 * 1000,
            console_sessions_max: 64,
            console_exports_dir: "exports".into(),
            console_operator_keys_dir: "operator-keys".into(),
            console_upload_bytes_max: 256 * 1024 * 1024,
            database_url: "sqlite://coalition.db".into(),
            database_connections_max: 8,
            sqlite_writer_cache_mib: coalition_storage::SQLITE_WRITER_CACHE_MIB_DEFAULT,
            settlement_currency: coalition_domain::ledger::CURRENCY_DEFAULT.into(),
            admin_token: None,
            batch_len_max: engine.batch_len_max,
            writer_queue_len_max: engine.writer_queue_len_max,
            batch_request_len_max: server.batch_request_len_max,
            message_size_max_bytes: server.message_size_max_bytes,
            connections_max: server.connections_max,
            stream_in_flight_max: server.stream_in_flight_max,
            history_page_len_max: server.history_page_len_max,
            subscribers_max: server.subscribers_max,
            subscriber_buffer_len: server.subscriber_buffer_len,
            offline_window_ms: limits.offline_window_ms,
            future_skew_max_ms: limits.future_skew_max_ms,
            points_per_transaction_max: limits.points_per_transaction_max,
            query_freshness_ms: server.query_freshness_ms,
            hold_timeout_ms: engine.policy.hold_timeout_ms,
            points_lifetime_days: engine
                .policy
                .points_lifetime_ms
                .map_or(0, |lifetime| lifetime / DAY_MS),
            points_expiry_boundary: engine.policy.expiry_boundary.to_string(),
            expiry_run_interval_ms: engine.expiry_run_interval_ms.unwrap_or(0),
            settlement_cutoff: coalition_engine::CUTOFF_TIME_DEFAULT.into(),
            settlement_utc_offset: coalition_engine::CUTOFF_OFFSET_DEFAULT.into(),
            shutdown_grace_ms: 10_000,
            log_format: "text".into(),
            log_filter: "info".into(),
            writer_cache_members_max: engine.writer_cache_members_max,
            writer_cache_references_max: engine.writer_cache_references_max,
            writer_cache_receipts_max: engine.writer_cache_receipts_max,
            expiry_members_per_batch_max: engine.expiry_members_per_batch_max,
        }
    }
}

const DAY_MS: i64 = 86_400_000;

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the configuration file {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// The prefix of environment variables that set configuration values.
pub const ENVIRONMENT_PREFIX: &str = "COALITION_";

/// Environment variables with the prefix that are not settings of the server: the
/// configuration file, `coalition relay`'s broker, and the tests' services. A server started
/// beside a relay (or by the tests) sees them and must not refuse them.
const ENVIRONMENT_NOT_SETTINGS: &[&str] = &[
    "COALITION_CONFIG",
    "COALITION_NATS_URL",
    "COALITION_TEST_POSTGRES_URL",
    "COALITION_TEST_NATS_URL",
];

impl Config {
    /// Defaults, then the file (if any), then the environment.
    pub fn load(
        file: Option<&Path>,
        environment: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut table = toml::Table::try_from(Config::default())
            .map_err(|error| ConfigError::Invalid(error.to_string()))?;
        if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.display().to_string(),
                source,
            })?;
            let from_file: toml::Table = text
                .parse()
                .map_err(|error| ConfigError::Invalid(format!("{}: {error}", path.display())))?;
            for (key, value) in from_file {
                table.insert(key, value);
            }
        }
        for (name, value) in environment {
            let Some(key) = name.strip_prefix(ENVIRONMENT_PREFIX) else {
                continue;
            };
            if ENVIRONMENT_NOT_SETTINGS.contains(&name.as_str()) {
                continue;
            }
            let key = key.to_ascii_lowercase();
            // Numbers stay numbers only where the setting is a number, so a token of digits
            // is still a string.
            let value = match table.get(&key) {
                Some(toml::Value::Integer(_)) => {
                    toml::Value::Integer(value.parse().map_err(|_| {
                        ConfigError::Invalid(format!(
                            "{name} must be a whole number, got {value:?}"
                        ))
                    })?)
                }
                _ => toml::Value::String(value),
            };
            table.insert(key, value);
        }
        let config: Config = table
            .try_into()
            .map_err(|error: toml::de::Error| ConfigError::Invalid(error.to_string()))?;
        config.check()?;
        Ok(config)
    }

    fn check(&self) -> Result<(), ConfigError> {
        let positive = [
            ("batch_len_max", self.batch_len_max as i64),
            (
                "writer_cache_members_max",
                self.writer_cache_members_max as i64,
            ),
            (
                "writer_cache_references_max",
                self.writer_cache_references_max as i64,
            ),
            (
                "writer_cache_receipts_max",
                self.writer_cache_receipts_max as i64,
            ),
            ("writer_queue_len_max", self.writer_queue_len_max as i64),
            (
                "expiry_members_per_batch_max",
                self.expiry_members_per_batch_max as i64,
            ),
            ("batch_request_len_max", self.batch_request_len_max as i64),
            ("message_size_max_bytes", self.message_size_max_bytes as i64),
            ("connections_max", self.connections_max as i64),
            ("stream_in_flight_max", self.stream_in_flight_max as i64),
            ("history_page_len_max", i64::from(self.history_page_len_max)),
            ("subscribers_max", self.subscribers_max as i64),
            (
                "console_session_timeout_ms",
                self.console_session_timeout_ms,
            ),
            ("console_sessions_max", self.console_sessions_max as i64),
            (
                "console_upload_bytes_max",
                self.console_upload_bytes_max as i64,
            ),
            ("subscriber_buffer_len", self.subscriber_buffer_len as i64),
            ("offline_window_ms", self.offline_window_ms),
            (
                "points_per_transaction_max",
                self.points_per_transaction_max,
            ),
            ("query_freshness_ms", self.query_freshness_ms),
            ("hold_timeout_ms", self.hold_timeout_ms),
            (
                "database_connections_max",
                i64::from(self.database_connections_max),
            ),
            (
                "sqlite_writer_cache_mib",
                i64::from(self.sqlite_writer_cache_mib),
            ),
        ];
        for (name, value) in positive {
            if value <= 0 {
                return Err(ConfigError::Invalid(format!(
                    "{name} must be positive, got {value}"
                )));
            }
        }
        for (name, value) in [
            ("points_lifetime_days", self.points_lifetime_days),
            ("expiry_run_interval_ms", self.expiry_run_interval_ms),
        ] {
            if value < 0 {
                return Err(ConfigError::Invalid(format!(
                    "{name} cannot be negative (0 turns it off), got {value}"
                )));
            }
        }
        self.points_expiry_boundary
            .parse::<ExpiryBoundary>()
            .map_err(|error| ConfigError::Invalid(format!("points_{error}")))?;
        if self.future_skew_max_ms < 0 {
            return Err(ConfigError::Invalid(
                "future_skew_max_ms cannot be negative".into(),
            ));
        }
        if CurrencyCode::new(&self.settlement_currency).is_none() {
            return Err(ConfigError::Invalid(format!(
                "settlement_currency must be an ISO 4217 code such as \"CNY\", got {:?}",
                self.settlement_currency
            )));
        }
        Cutoff::parse(&self.settlement_cutoff, &self.settlement_utc_offset)
            .map_err(|error| ConfigError::Invalid(format!("settlement: {error}")))?;
        if !matches!(self.log_format.as_str(), "text" | "json") {
            return Err(ConfigError::Invalid(format!(
                "log_format must be \"text\" or \"json\", got {:?}",
                self.log_format
            )));
        }
        if let Some(token) = &self.admin_token
            && token.len() < 16
        {
            return Err(ConfigError::Invalid(
                "admin_token must be at least 16 characters".into(),
            ));
        }
        Ok(())
    }

    pub fn engine(&self) -> EngineConfig {
        EngineConfig {
            currency: CurrencyCode::new(&self.settlement_currency).expect("checked when loaded"),
            batch_len_max: self.batch_len_max,
            writer_queue_len_max: self.writer_queue_len_max,
            limits: Limits {
                offline_window_ms: self.offline_window_ms,
                future_skew_max_ms: self.future_skew_max_ms,
                points_per_transaction_max: self.points_per_transaction_max,
            },
            policy: LedgerPolicy {
                hold_timeout_ms: self.hold_timeout_ms,
                points_lifetime_ms: (self.points_lifetime_days > 0)
                    .then(|| self.points_lifetime_days.saturating_mul(DAY_MS)),
                expiry_boundary: self
                    .points_expiry_boundary
                    .parse()
                    .expect("checked when loaded"),
                points_per_transaction_max: self.points_per_transaction_max,
            },
            expiry_run_interval_ms: (self.expiry_run_interval_ms > 0)
                .then_some(self.expiry_run_interval_ms),
            settlement_cutoff: Cutoff::parse(&self.settlement_cutoff, &self.settlement_utc_offset)
                .expect("checked when loaded"),
            writer_cache_members_max: self.writer_cache_members_max,
            writer_cache_references_max: self.writer_cache_references_max,
            writer_cache_receipts_max: self.writer_cache_receipts_max,
            expiry_members_per_batch_max: self.expiry_members_per_batch_max,
        }
    }

    /// What the finance console needs.
    pub fn console(&self) -> crate::console::ConsoleConfig {
        crate::console::ConsoleConfig {
            address: self.console_address.clone(),
            admin_token: self.admin_token.clone(),
            session_timeout: std::time::Duration::from_millis(
                self.console_session_timeout_ms.max(1) as u64,
            ),
            sessions_max: self.console_sessions_max,
            exports_dir: self.console_exports_dir.clone().into(),
            operator_keys_dir: self.console_operator_keys_dir.clone().into(),
            upload_bytes_max: self.console_upload_bytes_max,
            database_url: self.database_url.clone(),
            currency: CurrencyCode::new(&self.settlement_currency)
                .expect("check() refuses a settlement_currency that is not a currency code"),
        }
    }

    pub fn server(&self) -> ServerConfig {
        ServerConfig {
            admin_token: self.admin_token.clone(),
            batch_request_len_max: self.batch_request_len_max,
            message_size_max_bytes: self.message_size_max_bytes,
            connections_max: self.connections_max,
            stream_in_flight_max: self.stream_in_flight_max,
            history_page_len_max: self.history_page_len_max,
            query_freshness_ms: self.query_freshness_ms,
            subscribers_max: self.subscribers_max,
            subscriber_buffer_len: self.subscriber_buffer_len,
            prover: Some(std::sync::Arc::new(crate::proof::ExportsProver {
                exports_dir: self.console_exports_dir.clone().into(),
                cutoff: self.engine().settlement_cutoff,
            })),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn environment(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn environment_overrides_file_overrides_defaults() {
        let directory =
            std::env::temp_dir().join(format!("coalition-config-{}", std::process::id()));
        std::fs::create_dir_all(&directory).unwrap();
        let file = directory.join("coalition.toml");
        std::fs::write(
            &file,
            "batch_len_max = 100\nlisten_address = \"0.0.0.0:1\"\n",
        )
        .unwrap();
        let config = Config::load(
            Some(&file),
            environment(&[
                ("COALITION_BATCH_LEN_MAX", "7"),
                ("COALITION_LOG_FORMAT", "json"),
                ("COALITION_SQLITE_WRITER_CACHE_MIB", "32"),
                ("OTHER", "x"),
            ]),
        )
        .unwrap();
        assert_eq!(config.batch_len_max, 7);
        assert_eq!(config.listen_address, "0.0.0.0:1");
        assert_eq!(config.log_format, "json");
        assert_eq!(config.sqlite_writer_cache_mib, 32);
        assert_eq!(
            config.offline_window_ms,
            Limits::default().offline_window_ms
        );
    }

    #[test]
    fn the_relay_s_and_the_tests_variables_are_not_settings() {
        let config = Config::load(
            None,
            environment(&[
                ("COALITION_NATS_URL", "nats://127.0.0.1:4222"),
                ("COALITION_TEST_NATS_URL", "nats://127.0.0.1:4222"),
                (
                    "COALITION_TEST_POSTGRES_URL",
                    "postgres://postgres@127.0.0.1/test",
                ),
            ]),
        )
        .expect("not settings, not refused");
        assert_eq!(config, Config::default());
    }

    #[test]
    fn bad_values_are_refused_with_their_name() {
        let error =
            Config::load(None, environment(&[("COALITION_BATCH_LEN_MAX", "0")])).unwrap_err();
        assert!(error.to_string().contains("batch_len_max"), "{error}");
        let error =
            Config::load(None, environment(&[("COALITION_NO_SUCH_SETTING", "1")])).unwrap_err();
        assert!(error.to_string().contains("no_such_setting"), "{error}");
        let error =
            Config::load(None, environment(&[("COALITION_ADMIN_TOKEN", "short")])).unwrap_err();
        assert!(error.to_string().contains("admin_token"), "{error}");
        let error = Config::load(
            None,
            environment(&[("COALITION_SQLITE_WRITER_CACHE_MIB", "0")]),
        )
        .unwrap_err();
        assert!(
            error.to_string().contains("sqlite_writer_cache_mib"),
            "{error}"
        );
    }
}

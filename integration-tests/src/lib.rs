//! Helpers for the end-to-end tests: a fresh database per test (a SQLite file in its own
//! folder, or a PostgreSQL database created and dropped around the test), a real server on
//! port 0, and real gRPC clients.
//!
//! PostgreSQL is reached at `COALITION_TEST_POSTGRES_URL`, by default
//! `postgres://postgres@127.0.0.1:5432/test`. A PostgreSQL test fails, never skips, when the
//! server cannot be reached.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use coalition::config::Config;
use coalition::runtime::RunningServer;
use coalition_engine::{Clock, ManualClock, SystemClock};
use coalition_grpc::client::{
    AdminServiceClient, AdminToken, MerchantSigner, QueryServiceClient, SubmissionServiceClient,
};
use coalition_grpc::pb;
use ed25519_dalek::SigningKey;
use sqlx::Connection;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

/// Runs each named test function (taking a `Backend`) once on SQLite and once on PostgreSQL.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::Backend::Sqlite).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::Backend::Postgres).await
                }
            )*
        }
    };
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";

static NEXT_DATABASE: AtomicU64 = AtomicU64::new(0);

/// The PostgreSQL server the tests use.
pub fn postgres_base_url() -> String {
    std::env::var("COALITION_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

fn unique_name() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!(
        "coalition_test_{}_{}_{}",
        std::process::id(),
        NEXT_DATABASE.fetch_add(1, Ordering::SeqCst),
        nanos
    )
}

/// A database that exists for one test and is removed after it.
pub struct TestDatabase {
    pub url: String,
    pub backend: Backend,
    sqlite_dir: Option<PathBuf>,
    postgres_name: Option<String>,
}

impl TestDatabase {
    pub async fn new(backend: Backend) -> TestDatabase {
        let name = unique_name();
        match backend {
            Backend::Sqlite => {
                let dir = std::env::temp_dir().join(&name);
                std::fs::create_dir_all(&dir).expect("create a temporary folder");
                TestDatabase {
                    url: format!("sqlite://{}", dir.join("coalition.db").display()),
                    backend,
                    sqlite_dir: Some(dir),
                    postgres_name: None,
                }
            }
            Backend::Postgres => {
                let base = postgres_base_url();
                let mut connection = sqlx::PgConnection::connect(&base).await.unwrap_or_else(|error| {
                    panic!(
                        "PostgreSQL tests need a server at {base} (set COALITION_TEST_POSTGRES_URL; \
                         start one with `pg_ctlcluster --skip-systemctl-redirect 15 main start`): {error}"
                    )
                });
                sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                    .execute(&mut connection)
                    .await
                    .expect("create the test database");
                let _ = connection.close().await;
                let (prefix, _) = base.rsplit_once('/').expect("the URL names a database");
                TestDatabase {
                    url: format!("{prefix}/{name}"),
                    backend,
                    sqlite_dir: None,
                    postgres_name: Some(name),
                }
            }
        }
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        if let Some(dir) = &self.sqlite_dir {
            let _ = std::fs::remove_dir_all(dir);
        }
        if let Some(name) = self.postgres_name.take() {
            // Drop runs inside the test's runtime; a thread with its own runtime may block.
            let _ = std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime");
                runtime.block_on(async {
                    if let Ok(mut connection) =
                        sqlx::PgConnection::connect(&postgres_base_url()).await
                    {
                        let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                            "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                        )))
                        .execute(&mut connection)
                        .await;
                    }
                });
            })
            .join();
        }
    }
}

pub type Admin = AdminServiceClient<InterceptedService<Channel, AdminToken>>;

/// A real server on a fresh database, with a clock the test controls.
pub struct TestServer {
    pub server: RunningServer,
    pub database: TestDatabase,
    pub clock: ManualClock,
    pub channel: Channel,
    pub config: Config,
}

/// The configuration tests run with.
pub fn test_config(database_url: &str) -> Config {
    Config {
        listen_address: "127.0.0.1:0".into(),
        metrics_address: "off".into(),
        console_address: "off".into(),
        database_url: database_url.to_owned(),
        admin_token: Some(ADMIN_TOKEN.into()),
        batch_request_len_max: 1_000,
        // A working set of one member, one referred entry and one receipt: nearly every
        // batch loads what it needs from the database, so every test here also checks that
        // the loads miss nothing. (The demo and the benchmarks run with the defaults.)
        writer_cache_members_max: 1,
        writer_cache_references_max: 1,
        writer_cache_receipts_max: 1,
        ..Config::default()
    }
}

impl TestServer {
    pub async fn start(backend: Backend) -> TestServer {
        let database = TestDatabase::new(backend).await;
        let config = test_config(&database.url);
        Self::start_on(database, config).await
    }

    pub async fn start_on(database: TestDatabase, config: Config) -> TestServer {
        let clock = ManualClock::new(SystemClock.now_ms());
        let server = RunningServer::start_with_clock(&config, Arc::new(clock.clone()))
            .await
            .expect("the server starts");
        let channel = Channel::from_shared(server.endpoint())
            .unwrap()
            .connect()
            .await
            .expect("connect");
        TestServer {
            server,
            database,
            clock,
            channel,
            config,
        }
    }

    /// Stops the server gracefully and starts a new one on the same database.
    pub async fn restart(self) -> TestServer {
        let TestServer {
            server,
            database,
            config,
            ..
        } = self;
        server.shutdown().await.expect("graceful shutdown");
        Self::start_on(database, config).await
    }

    pub fn admin(&self) -> Admin {
        AdminServiceClient::with_interceptor(
            self.channel.clone(),
            AdminToken::new(ADMIN_TOKEN).unwrap(),
        )
    }

    pub fn submissions(&self) -> SubmissionServiceClient<Channel> {
        SubmissionServiceClient::new(self.channel.clone())
    }

    pub fn queries(&self) -> QueryServiceClient<Channel> {
        QueryServiceClient::new(self.channel.clone())
    }

    pub fn admin_queries(&self) -> QueryServiceClient<InterceptedService<Channel, AdminToken>> {
        QueryServiceClient::with_interceptor(
            self.channel.clone(),
            AdminToken::new(ADMIN_TOKEN).unwrap(),
        )
    }

    pub fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    /// Registers a merchant with a fresh key `key-1`.
    pub async fn merchant(
        &self,
        merchant_id: &str,
        category: pb::MerchantCategory,
    ) -> MerchantSigner {
        register_merchant(&self.channel, merchant_id, category, new_key(), &[]).await
    }

    /// Gives `signer`'s merchant a fresh key `key_id` and revokes the signer's key; returns
    /// a signer with the new key.
    pub async fn rotate_key(&self, signer: &MerchantSigner, key_id: &str) -> MerchantSigner {
        let key = new_key();
        let mut admin = self.admin();
        admin
            .add_merchant_key(pb::AddMerchantKeyRequest {
                merchant_id: signer.merchant_id.clone(),
                key: Some(pb::MerchantKey {
                    key_id: key_id.into(),
                    public_key: key.verifying_key().as_bytes().to_vec(),
                    ..Default::default()
                }),
            })
            .await
            .expect("add the new key");
        admin
            .revoke_merchant_key(pb::RevokeMerchantKeyRequest {
                merchant_id: signer.merchant_id.clone(),
                key_id: signer.key_id.clone(),
            })
            .await
            .expect("revoke the old key");
        MerchantSigner::new(signer.merchant_id.clone(), key_id, key)
    }

    /// The two merchants most tests need: `tenant-1` (a mall tenant) and `cinema-1`.
    pub async fn tenant_and_cinema(&self) -> (MerchantSigner, MerchantSigner) {
        (
            self.merchant("tenant-1", pb::MerchantCategory::MallTenant)
                .await,
            self.merchant("cinema-1", pb::MerchantCategory::Cinema)
                .await,
        )
    }

    pub async fn enroll(&self, members: &[&str]) {
        let response = self
            .admin()
            .enroll_members(pb::EnrollMembersRequest {
                members: members
                    .iter()
                    .map(|member| pb::MemberEnrollment {
                        member_id: member.to_string(),
                        tier: None,
                    })
                    .collect(),
            })
            .await
            .expect("enroll")
            .into_inner();
        assert!(response.refusals.is_empty(), "{:?}", response.refusals);
    }

    /// A transaction body happening now.
    pub fn body(
        &self,
        signer: &MerchantSigner,
        kind: pb::TransactionKind,
        transaction_id: &str,
        member: &str,
        points: i64,
    ) -> pb::TransactionBody {
        pb::TransactionBody {
            merchant_id: signer.merchant_id.clone(),
            merchant_transaction_id: transaction_id.into(),
            kind: kind as i32,
            member_id: member.into(),
            points,
            spend_minor: None,
            occurred_at_unix_ms: self.now_ms(),
            store_id: "store-1".into(),
            terminal_id: "pos-1".into(),
            refers_to_transaction_id: String::new(),
            refers_to_merchant_id: String::new(),
            legacy_units: 0,
        }
    }

    /// A reversal, capture or void body acting on `refers_to` (a transaction of `signer`'s
    /// merchant unless `refers_to_merchant` is given).
    #[allow(clippy::too_many_arguments)]
    pub fn referring_body(
        &self,
        signer: &MerchantSigner,
        kind: pb::TransactionKind,
        transaction_id: &str,
        member: &str,
        points: i64,
        refers_to: &str,
        refers_to_merchant: &str,
    ) -> pb::TransactionBody {
        pb::TransactionBody {
            refers_to_transaction_id: refers_to.into(),
            refers_to_merchant_id: refers_to_merchant.into(),
            ..self.body(signer, kind, transaction_id, member, points)
        }
    }

    pub async fn submit(&self, envelope: pb::Envelope) -> pb::SubmissionResult {
        self.submissions()
            .submit(pb::SubmitRequest {
                envelope: Some(envelope),
            })
            .await
            .expect("Submit answers")
            .into_inner()
            .result
            .expect("a result")
    }

    /// Submits `envelopes` in one `SubmitBatch` call and returns the result of each.
    pub async fn submit_batch(&self, envelopes: Vec<pb::Envelope>) -> Vec<pb::SubmissionResult> {
        self.submissions()
            .submit_batch(pb::SubmitBatchRequest { envelopes })
            .await
            .expect("SubmitBatch answers")
            .into_inner()
            .results
    }

    pub async fn earn(
        &self,
        signer: &MerchantSigner,
        transaction_id: &str,
        member: &str,
        points: i64,
    ) -> pb::SubmissionResult {
        let body = self.body(
            signer,
            pb::TransactionKind::Earn,
            transaction_id,
            member,
            points,
        );
        self.submit(signer.envelope(&body)).await
    }

    pub async fn burn(
        &self,
        signer: &MerchantSigner,
        transaction_id: &str,
        member: &str,
        points: i64,
    ) -> pb::SubmissionResult {
        let body = self.body(
            signer,
            pb::TransactionKind::Burn,
            transaction_id,
            member,
            points,
        );
        self.submit(signer.envelope(&body)).await
    }

    /// A period's settlement as the admin preview answers it (`""`: the open period).
    pub async fn preview(&self, period: &str) -> pb::Settlement {
        self.admin()
            .preview_settlement(pb::PreviewSettlementRequest {
                period: period.into(),
            })
            .await
            .expect("preview")
            .into_inner()
            .settlement
            .expect("a settlement")
    }

    /// A member's balance read with the admin token.
    pub async fn balance(&self, member: &str) -> i64 {
        self.account_balance(pb::AccountKind::MemberWallet, member, "")
            .await
    }

    /// Any account's current balance of `asset` ("" for points), read with the admin token.
    pub async fn account_balance(&self, kind: pb::AccountKind, owner: &str, asset: &str) -> i64 {
        let query = pb::BalanceQuery {
            merchant_id: String::new(),
            issued_at_unix_ms: self.now_ms(),
            account_kind: kind as i32,
            owner_id: owner.into(),
            as_of_unix_ms: None,
            asset: asset.into(),
        };
        self.admin_queries()
            .get_balance(pb::GetBalanceRequest {
                query: prost::Message::encode_to_vec(&query),
                signature: None,
            })
            .await
            .expect("GetBalance")
            .into_inner()
            .points
    }

    /// The entry a merchant's transaction made, read with the admin token.
    pub async fn transaction(
        &self,
        merchant: &str,
        merchant_transaction_id: &str,
    ) -> pb::JournalEntry {
        let query = pb::TransactionQuery {
            merchant_id: String::new(),
            issued_at_unix_ms: self.now_ms(),
            transaction_merchant_id: merchant.into(),
            merchant_transaction_id: merchant_transaction_id.into(),
        };
        self.admin_queries()
            .get_transaction(pb::GetTransactionRequest {
                query: prost::Message::encode_to_vec(&query),
                signature: None,
            })
            .await
            .expect("GetTransaction")
            .into_inner()
            .entry
            .expect("an entry")
    }

    /// Runs the ledger check against the test database.
    pub async fn check(&self) -> coalition_storage::CheckReport {
        check_database(&self.database.url).await
    }
}

pub async fn check_database(url: &str) -> coalition_storage::CheckReport {
    let storage =
        coalition_storage::Storage::connect(&coalition_storage::ConnectOptions::existing(url))
            .await
            .expect("connect for the check");
    let (_, report) = storage.replay(i64::MAX).await.expect("replay");
    storage.close().await;
    report
}

/// The terms test merchants get: what they pay per point issued, in minor units.
pub const ISSUE_PRICE: &str = "1.05";
/// What test merchants are paid per point redeemed, in minor units.
pub const REDEEM_PRICE: &str = "0.95";

/// Registers `merchant_id` with `key` as its key `key-1` and terms at `ISSUE_PRICE` and
/// `REDEEM_PRICE`, and enrolls `members`, through the admin API; returns the merchant's signer.
pub async fn register_merchant(
    channel: &Channel,
    merchant_id: &str,
    category: pb::MerchantCategory,
    key: SigningKey,
    members: &[&str],
) -> MerchantSigner {
    let mut admin = AdminServiceClient::with_interceptor(
        channel.clone(),
        AdminToken::new(ADMIN_TOKEN).unwrap(),
    );
    admin
        .register_merchant(pb::RegisterMerchantRequest {
            merchant_id: merchant_id.into(),
            name: format!("Merchant {merchant_id}"),
            category: category as i32,
            keys: vec![pb::MerchantKey {
                key_id: "key-1".into(),
                public_key: key.verifying_key().as_bytes().to_vec(),
                ..Default::default()
            }],
        })
        .await
        .expect("register the merchant");
    admin
        .set_merchant_terms(pb::SetMerchantTermsRequest {
            merchant_id: merchant_id.into(),
            effective_from_unix_ms: 0,
            issue_price_minor_per_point: ISSUE_PRICE.into(),
            redeem_price_minor_per_point: REDEEM_PRICE.into(),
            fee_minor_per_point: String::new(),
            ..Default::default()
        })
        .await
        .expect("set the merchant's terms");
    if !members.is_empty() {
        let response = admin
            .enroll_members(pb::EnrollMembersRequest {
                members: members
                    .iter()
                    .map(|member| pb::MemberEnrollment {
                        member_id: member.to_string(),
                        tier: None,
                    })
                    .collect(),
            })
            .await
            .expect("enroll")
            .into_inner();
        assert!(response.refusals.is_empty(), "{:?}", response.refusals);
    }
    MerchantSigner::new(merchant_id, "key-1", key)
}

/// A channel to a server's gRPC endpoint, connected.
pub async fn connect(endpoint: &str) -> Channel {
    Channel::from_shared(endpoint.to_owned())
        .expect("a valid endpoint")
        .connect()
        .await
        .expect("connect")
}

/// A fresh random signing key.
pub fn new_key() -> SigningKey {
    coalition::cli::generate_key().expect("randomness")
}

/// The accepted outcome, or a panic naming what came instead.
pub fn accepted(result: &pb::SubmissionResult) -> &pb::Accepted {
    match &result.outcome {
        Some(pb::submission_result::Outcome::Accepted(accepted)) => accepted,
        other => panic!("expected acceptance, got {other:?}"),
    }
}

/// The rejection reason, or a panic naming what came instead.
pub fn rejection(result: &pb::SubmissionResult) -> pb::RejectionReason {
    match &result.outcome {
        Some(pb::submission_result::Outcome::Rejected(rejected)) => {
            assert!(!rejected.message.is_empty(), "a rejection explains itself");
            pb::RejectionReason::try_from(rejected.reason).expect("a known reason")
        }
        other => panic!("expected a rejection, got {other:?}"),
    }
}

/// A server process that is killed when dropped, so a failing test never leaves one behind
/// (an orphan holding the test's output pipes would keep the test run from ending).
pub struct ServerProcess(pub std::process::Child);

impl std::ops::Deref for ServerProcess {
    type Target = std::process::Child;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for ServerProcess {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the real server `binary` (tests pass `env!("CARGO_BIN_EXE_coalition-under-test")`) on `database_url` with extra `COALITION_*` settings, and
/// returns the process with its endpoint. Its stderr (the logs) is piped when
/// `environment` sets a log format, so tests can read it; otherwise inherited.
pub fn spawn_server(
    binary: &str,
    database_url: &str,
    environment: &[(&str, &str)],
) -> (ServerProcess, String) {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let capture_logs = environment
        .iter()
        .any(|(name, _)| *name == "COALITION_LOG_FORMAT");
    let mut command = Command::new(binary);
    command
        .arg("serve")
        .env("COALITION_DATABASE_URL", database_url)
        .env("COALITION_LISTEN_ADDRESS", "127.0.0.1:0")
        .env("COALITION_METRICS_ADDRESS", "off")
        .env("COALITION_CONSOLE_ADDRESS", "off")
        .env("COALITION_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("COALITION_LOG_FILTER", "warn")
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(if capture_logs {
            Stdio::piped()
        } else {
            Stdio::inherit()
        });
    for (name, value) in environment {
        command.env(name, value);
    }
    let mut child = ServerProcess(command.spawn().expect("start the server binary"));
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout is piped"))
        .read_line(&mut line)
        .expect("read the address");
    let address = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_owned();
    (child, format!("http://{address}"))
}

/// Validates pain.001.001.09 files against the official XSD (shipped in PyPI's `sepaxml`)
/// with `xmlschema`. Both are installed into `packages` (a folder under the test's target
/// directory) when missing, so the check runs wherever the tests do; it fails, never skips,
/// when it cannot.
pub fn validate_pain_001(packages: &std::path::Path, files: &[&std::path::Path]) {
    use std::process::Command;
    static INSTALLED: std::sync::Mutex<bool> = std::sync::Mutex::new(false);
    {
        let mut installed = INSTALLED.lock().unwrap();
        if !*installed {
            let probe = Command::new("python3")
                .args(["-c", "import xmlschema, sepaxml"])
                .env("PYTHONPATH", packages)
                .output()
                .expect("python3 is needed to validate pain.001 against its XSD");
            if !probe.status.success() {
                for arguments in [
                    vec!["xmlschema==4.3.2"],
                    vec!["--no-deps", "sepaxml==2.7.0"],
                ] {
                    let output = Command::new("python3")
                        .args(["-m", "pip", "install", "--quiet", "--target"])
                        .arg(packages)
                        .args(arguments)
                        .output()
                        .unwrap();
                    assert!(
                        output.status.success(),
                        "cannot install the XSD validator: {}",
                        String::from_utf8_lossy(&output.stderr)
                    );
                }
            }
            *installed = true;
        }
    }
    let script = "import sys, importlib.resources, xmlschema\n\
        xsd = importlib.resources.files('sepaxml').joinpath('schemas/pain.001.001.09.xsd')\n\
        schema = xmlschema.XMLSchema(str(xsd))\n\
        for path in sys.argv[1:]:\n    schema.validate(path)\n    print('valid', path)\n";
    let output = Command::new("python3")
        .args(["-c", script])
        .args(files)
        .env("PYTHONPATH", packages)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "pain.001 is not valid against pain.001.001.09.xsd: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A GET from outside the browser, with the console session's cookie when given: status,
/// headers and body.
pub async fn http_get(
    base: &str,
    path: &str,
    session: Option<&str>,
) -> (u16, http::HeaderMap, Vec<u8>) {
    let mut request = http::Request::get(format!("{base}{path}"));
    if let Some(session) = session {
        request = request.header("cookie", format!("coalition_session={session}"));
    }
    http_send(request.body(String::new()).unwrap()).await
}

/// A form POST from outside the browser with the console session's cookie and exactly the
/// fields `form` holds.
pub async fn http_post(
    base: &str,
    path: &str,
    session: &str,
    form: &str,
) -> (u16, http::HeaderMap, Vec<u8>) {
    let request = http::Request::post(format!("{base}{path}"))
        .header("cookie", format!("coalition_session={session}"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form.to_owned())
        .unwrap();
    http_send(request).await
}

/// Sends one HTTP/1 request and reads the whole answer.
pub async fn http_send(request: http::Request<String>) -> (u16, http::HeaderMap, Vec<u8>) {
    use http_body_util::BodyExt;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Full<bytes::Bytes>>();
    let (parts, body) = request.into_parts();
    let request =
        http::Request::from_parts(parts, http_body_util::Full::new(bytes::Bytes::from(body)));
    let response = client.request(request).await.expect("the console answers");
    let (parts, body) = response.into_parts();
    let bytes = body.collect().await.unwrap().to_bytes().to_vec();
    (parts.status.as_u16(), parts.headers, bytes)
}

/// Signs in to the console at `base` (`http://host:port`) with `token` as a browser does
/// (the sign-in form's token, echoed in its cookie) and returns the session id.
pub async fn console_sign_in(base: &str, token: &str) -> String {
    let cookie_value = |headers: &http::HeaderMap, name: &str| {
        headers
            .get_all("set-cookie")
            .iter()
            .filter_map(|value| value.to_str().ok())
            .find_map(|value| value.strip_prefix(&format!("{name}=")))
            .and_then(|rest| rest.split(';').next())
            .map(str::to_owned)
    };
    let (status, headers, body) = http_get(base, "/sign-in", None).await;
    assert_eq!(status, 200);
    let form = String::from_utf8(body).unwrap();
    let csrf = form
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("the sign-in form carries its token");
    let sign_in_cookie = cookie_value(&headers, "coalition_sign_in").expect("the form's cookie");
    let request = http::Request::post(format!("{base}/sign-in"))
        .header("cookie", format!("coalition_sign_in={sign_in_cookie}"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("csrf={csrf}&token={token}"))
        .unwrap();
    let (status, headers, _) = http_send(request).await;
    assert_eq!(status, 303, "signed in and sent to the overview");
    cookie_value(&headers, "coalition_session").expect("a session cookie")
}

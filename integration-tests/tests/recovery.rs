//! Durability and recovery with a real server process: `kill -9` under load loses no
//! acknowledged transaction and leaves no partial one; SIGTERM finishes the batch in flight;
//! a tampered journal is caught by the check command and refused at startup.

use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use coalition_domain::{MerchantId, MerchantTransactionId};
use coalition_grpc::client::SubmissionServiceClient;
use coalition_grpc::pb;
use coalition_integration_tests::{
    Backend, TestDatabase, TestServer, accepted, check_database, connect, new_key,
    on_both_backends, register_merchant, spawn_server, test_config,
};
use tokio::task::JoinSet;

const LOAD_CLIENTS: usize = 4;
const LOAD_BATCH_LEN: usize = 50;

struct Load {
    acknowledged: Arc<Mutex<Vec<(String, u64)>>>,
    tasks: JoinSet<()>,
}

/// Registers a merchant and members, then submits earns from several clients until stopped,
/// recording every acknowledged transaction id with its entry sequence.
async fn start_load(endpoint: &str) -> Load {
    let channel = connect(endpoint).await;
    let members: Vec<String> = (0..50).map(|n| format!("m-{n}")).collect();
    let members: Vec<&str> = members.iter().map(String::as_str).collect();
    let signer = register_merchant(
        &channel,
        "tenant-1",
        pb::MerchantCategory::MallTenant,
        new_key(),
        &members,
    )
    .await;
    let acknowledged = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = JoinSet::new();
    for client in 0..LOAD_CLIENTS {
        let mut submissions = SubmissionServiceClient::new(channel.clone());
        let signer = signer.clone();
        let acknowledged = acknowledged.clone();
        tasks.spawn(async move {
            for round in 0.. {
                let now = coalition_engine::Clock::now_ms(&coalition_engine::SystemClock);
                let envelopes: Vec<pb::Envelope> = (0..LOAD_BATCH_LEN)
                    .map(|n| {
                        signer.envelope(&pb::TransactionBody {
                            merchant_id: "tenant-1".into(),
                            merchant_transaction_id: format!("c{client}-r{round}-n{n}"),
                            kind: pb::TransactionKind::Earn as i32,
                            member_id: format!("m-{}", n % 50),
                            points: 10,
                            spend_minor: None,
                            occurred_at_unix_ms: now,
                            store_id: "store-1".into(),
                            terminal_id: "pos-1".into(),
                            ..Default::default()
                        })
                    })
                    .collect();
                let Ok(response) = submissions
                    .submit_batch(pb::SubmitBatchRequest { envelopes })
                    .await
                else {
                    return;
                };
                let mut acknowledged = acknowledged.lock().unwrap();
                for result in response.into_inner().results {
                    let sequence = accepted(&result).entry_sequence;
                    acknowledged.push((result.merchant_transaction_id, sequence));
                }
            }
        });
    }
    Load {
        acknowledged,
        tasks,
    }
}

async fn wait_for_acknowledged(load: &Load, count: usize) {
    let started = Instant::now();
    while load.acknowledged.lock().unwrap().len() < count {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the load did not get going"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Every acknowledged transaction is in the database with the sequence it was acknowledged
/// with, and the books are sound.
async fn assert_all_acknowledged_are_committed(database_url: &str, acknowledged: &[(String, u64)]) {
    let report = check_database(database_url).await;
    assert!(report.is_sound(), "{:?}", report.problems);
    assert!(
        report.entries as usize >= acknowledged.len(),
        "{} entries, {} acknowledged",
        report.entries,
        acknowledged.len()
    );
    let storage = coalition_storage::Storage::connect(
        &coalition_storage::ConnectOptions::existing(database_url),
    )
    .await
    .unwrap();
    let merchant = MerchantId::new("tenant-1").unwrap();
    for (transaction_id, sequence) in acknowledged {
        let entry = storage
            .entry_by_transaction(
                &merchant,
                &MerchantTransactionId::new(transaction_id.clone()).unwrap(),
            )
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("acknowledged transaction {transaction_id} is missing"));
        assert_eq!(entry.sequence, *sequence);
    }
    storage.close().await;
}

async fn kill_9_under_load_loses_no_acknowledged_transaction(backend: Backend) {
    let database = TestDatabase::new(backend).await;
    let (mut child, endpoint) = spawn_server(SERVER, &database.url, &[]);
    let mut load = start_load(&endpoint).await;
    wait_for_acknowledged(&load, 2_000).await;
    child.kill().expect("SIGKILL the server");
    child.wait().unwrap();
    while load.tasks.join_next().await.is_some() {}
    let acknowledged = load.acknowledged.lock().unwrap().clone();
    assert_all_acknowledged_are_committed(&database.url, &acknowledged).await;

    // The server recovers and carries on from the recovered head.
    let report = check_database(&database.url).await;
    let config = test_config(&database.url);
    let server = TestServer::start_on(database, config).await;
    let signer = server
        .merchant("tenant-2", pb::MerchantCategory::MallTenant)
        .await;
    let next = server.earn(&signer, "after-crash", "m-1", 5).await;
    assert_eq!(accepted(&next).entry_sequence, report.head.sequence + 1);
    assert!(server.check().await.is_sound());
}

async fn sigterm_finishes_the_batch_in_flight_and_exits_cleanly(backend: Backend) {
    let database = TestDatabase::new(backend).await;
    let (mut child, endpoint) = spawn_server(SERVER, &database.url, &[]);
    let mut load = start_load(&endpoint).await;
    wait_for_acknowledged(&load, 1_000).await;
    let status = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(status.success());
    let exit = child.wait().unwrap();
    assert!(exit.success(), "graceful shutdown exits 0, got {exit:?}");
    while load.tasks.join_next().await.is_some() {}
    let acknowledged = load.acknowledged.lock().unwrap().clone();
    assert_all_acknowledged_are_committed(&database.url, &acknowledged).await;
    let report = check_database(&database.url).await;
    assert_eq!(
        report.entries as usize,
        acknowledged.len(),
        "after a graceful stop every committed entry was acknowledged"
    );
}

/// Alters one committed entry behind the append-only guard.
async fn tamper(database: &TestDatabase) {
    match database.backend {
        Backend::Sqlite => {
            use sqlx::Connection;
            let mut connection = sqlx::SqliteConnection::connect(&database.url)
                .await
                .unwrap();
            let guarded = sqlx::query("UPDATE entries SET points = points + 1 WHERE sequence = 2")
                .execute(&mut connection)
                .await;
            assert!(guarded.unwrap_err().to_string().contains("append-only"));
            sqlx::query("DROP TRIGGER entries_append_only_update")
                .execute(&mut connection)
                .await
                .unwrap();
            sqlx::query("UPDATE entries SET points = points + 1 WHERE sequence = 2")
                .execute(&mut connection)
                .await
                .unwrap();
        }
        Backend::Postgres => {
            use sqlx::Connection;
            let mut connection = sqlx::PgConnection::connect(&database.url).await.unwrap();
            let guarded = sqlx::query("UPDATE entries SET points = points + 1 WHERE sequence = 2")
                .execute(&mut connection)
                .await;
            assert!(guarded.unwrap_err().to_string().contains("append-only"));
            sqlx::query("ALTER TABLE entries DISABLE TRIGGER entries_append_only")
                .execute(&mut connection)
                .await
                .unwrap();
            sqlx::query("UPDATE entries SET points = points + 1 WHERE sequence = 2")
                .execute(&mut connection)
                .await
                .unwrap();
        }
    }
}

async fn a_tampered_journal_is_reported_and_refused_at_startup(backend: Backend) {
    let server = TestServer::start(backend).await;
    let tenant = server
        .merchant("tenant-1", pb::MerchantCategory::MallTenant)
        .await;
    server.enroll(&["m-1"]).await;
    for index in 0..3 {
        accepted(&server.earn(&tenant, &format!("e-{index}"), "m-1", 10).await);
    }
    let TestServer {
        server: running,
        database,
        config,
        ..
    } = server;
    running.shutdown().await.unwrap();
    let check = Command::new(env!("CARGO_BIN_EXE_coalition-under-test"))
        .args(["check", "--database-url", &database.url])
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );
    tamper(&database).await;
    let report = check_database(&database.url).await;
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.contains("entry 2") && p.contains("hash")),
        "{:?}",
        report.problems
    );
    let check = Command::new(env!("CARGO_BIN_EXE_coalition-under-test"))
        .args(["check", "--database-url", &database.url])
        .output()
        .unwrap();
    assert!(!check.status.success());
    assert!(String::from_utf8_lossy(&check.stdout).contains("problem: entry 2"));
    let refused = coalition::runtime::RunningServer::start(&config).await;
    assert!(
        refused.is_err(),
        "a server must not start on a tampered journal"
    );
}

async fn a_second_server_on_the_same_database_refuses_to_start(backend: Backend) {
    let server = TestServer::start(backend).await;
    let tenant = server
        .merchant("tenant-1", pb::MerchantCategory::MallTenant)
        .await;
    server.enroll(&["m-1"]).await;
    let second = coalition::runtime::RunningServer::start(&server.config).await;
    let error = format!("{:#}", second.err().expect("a second writer is refused"));
    assert!(error.contains("already has a writer"), "{error}");
    // The first is unaffected, and once it stops the database can be opened again.
    accepted(&server.earn(&tenant, "e-1", "m-1", 5).await);
    let server = server.restart().await;
    assert_eq!(server.balance("m-1").await, 5);
}

async fn an_orphan_posting_is_reported(backend: Backend) {
    let server = TestServer::start(backend).await;
    let tenant = server
        .merchant("tenant-1", pb::MerchantCategory::MallTenant)
        .await;
    server.enroll(&["m-1"]).await;
    accepted(&server.earn(&tenant, "e-1", "m-1", 10).await);
    let database = stop(server).await;
    let orphan = "INSERT INTO postings (entry_sequence, posting_index, account_id, asset, amount) VALUES (999, 0, 1, 'PTS', 5)";
    match database.backend {
        Backend::Sqlite => {
            use sqlx::Connection;
            let mut connection = sqlx::SqliteConnection::connect(&database.url)
                .await
                .unwrap();
            sqlx::query("PRAGMA foreign_keys = OFF")
                .execute(&mut connection)
                .await
                .unwrap();
            sqlx::query(orphan).execute(&mut connection).await.unwrap();
        }
        Backend::Postgres => {
            use sqlx::Connection;
            let mut connection = sqlx::PgConnection::connect(&database.url).await.unwrap();
            sqlx::query(orphan).execute(&mut connection).await.unwrap();
        }
    }
    let storage = coalition_storage::Storage::connect(
        &coalition_storage::ConnectOptions::existing(&*database.url),
    )
    .await
    .unwrap();
    let error = storage.replay(i64::MAX).await.unwrap_err();
    assert!(error.to_string().contains("entry 999"), "{error}");
    storage.close().await;
}

/// The writer records a hash-chain checkpoint in every batch that crosses a multiple of
/// `CHECKPOINT_INTERVAL` entries, so a start verifies only the entries after the last one
/// (fewer than the interval) and records one at the head, after which a start verifies none.
async fn a_start_verifies_only_the_entries_after_the_last_checkpoint(backend: Backend) {
    use coalition_storage::CHECKPOINT_INTERVAL;
    use sqlx::Row;
    let server = TestServer::start(backend).await;
    let tenant = server
        .merchant("tenant-1", pb::MerchantCategory::MallTenant)
        .await;
    server.enroll(&["m-1"]).await;
    let entries = 2 * CHECKPOINT_INTERVAL + CHECKPOINT_INTERVAL / 3;
    let envelopes: Vec<_> = (0..entries)
        .map(|index| {
            tenant.envelope(&server.body(
                &tenant,
                pb::TransactionKind::Earn,
                &format!("e-{index}"),
                "m-1",
                1,
            ))
        })
        .collect();
    for chunk in envelopes.chunks(500) {
        for result in &server.submit_batch(chunk.to_vec()).await {
            accepted(result);
        }
    }
    let database = stop(server).await;
    let storage = coalition_storage::Storage::connect(
        &coalition_storage::ConnectOptions::existing(&*database.url),
    )
    .await
    .unwrap();
    let last_checkpoint = || async {
        let query = "SELECT MAX(sequence) AS last FROM checkpoints";
        let last: Option<i64> = match &database.backend {
            Backend::Sqlite => {
                use sqlx::Connection;
                let mut connection = sqlx::SqliteConnection::connect(&database.url)
                    .await
                    .unwrap();
                sqlx::query(query)
                    .fetch_one(&mut connection)
                    .await
                    .unwrap()
                    .get("last")
            }
            Backend::Postgres => {
                use sqlx::Connection;
                let mut connection = sqlx::PgConnection::connect(&database.url).await.unwrap();
                sqlx::query(query)
                    .fetch_one(&mut connection)
                    .await
                    .unwrap()
                    .get("last")
            }
        };
        last.unwrap_or(0) as u64
    };
    let checkpoint = last_checkpoint().await;
    assert!(
        checkpoint >= 2 * CHECKPOINT_INTERVAL,
        "the writer's last checkpoint is at {checkpoint} of {entries} entries"
    );
    let first = storage.load_start().await.unwrap();
    assert_eq!(first.ledger.head().sequence, entries);
    assert_eq!(first.verified_entries, entries - checkpoint);
    assert!(first.verified_entries < CHECKPOINT_INTERVAL);
    assert_eq!(last_checkpoint().await, entries);
    let second = storage.load_start().await.unwrap();
    assert_eq!(second.verified_entries, 0);
    storage.close().await;
}

/// The real server binary.
const SERVER: &str = env!("CARGO_BIN_EXE_coalition-under-test");

/// While the ledger recovers the port already answers: health NOT_SERVING, every other call
/// UNAVAILABLE; when recovery ends the same port serves the API.
async fn while_starting_health_is_not_serving_and_calls_are_unavailable(backend: Backend) {
    use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus};
    let server = TestServer::start(backend).await;
    let tenant = server
        .merchant("tenant-1", pb::MerchantCategory::MallTenant)
        .await;
    server.enroll(&["m-1"]).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let incoming = coalition_grpc::Incoming::new(listener, 16);
    let (ready, recovering) = tokio::sync::oneshot::channel::<()>();
    let starting = tokio::spawn(coalition_grpc::serve_starting(incoming.clone(), async {
        let _ = recovering.await;
    }));
    let channel = connect(&endpoint).await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    for service in [
        "",
        "coalition.v1.SubmissionService",
        "coalition.v1.AdminService",
    ] {
        let status = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status();
        assert_eq!(status, ServingStatus::NotServing, "{service:?}");
    }
    let body = server.body(&tenant, pb::TransactionKind::Earn, "e-1", "m-1", 10);
    let refused = SubmissionServiceClient::new(channel)
        .submit(pb::SubmitRequest {
            envelope: Some(tenant.envelope(&body)),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable);
    assert!(
        refused.message().contains("starting"),
        "{}",
        refused.message()
    );
    // Recovery is over: the starting phase hands the port to the API.
    ready.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), starting)
        .await
        .expect("the starting phase ends")
        .unwrap()
        .unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(coalition_grpc::serve(
        server.server.engine.clone(),
        server.config.server(),
        incoming,
        async {
            let _ = stopped.await;
        },
    ));
    let channel = connect(&endpoint).await;
    let status = tonic_health::pb::health_client::HealthClient::new(channel.clone())
        .check(HealthCheckRequest {
            service: "coalition.v1.SubmissionService".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status();
    assert_eq!(status, ServingStatus::Serving);
    let result = SubmissionServiceClient::new(channel)
        .submit(pb::SubmitRequest {
            envelope: Some(tenant.envelope(&body)),
        })
        .await
        .unwrap()
        .into_inner()
        .result
        .unwrap();
    assert_eq!(accepted(&result).member_points_balance, 10);
    stop.send(()).unwrap();
    serving.await.unwrap().unwrap();
}

/// Runs `coalition check` with `args` after the database URL; returns (success, stdout).
fn run_check(database: &TestDatabase, args: &[&str]) -> (bool, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_coalition-under-test"))
        .args(["check", "--database-url", &database.url])
        .args(args)
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
    )
}

/// Runs statements against the test database directly, as an intruder would.
async fn execute(database: &TestDatabase, statements: &[&str]) {
    use sqlx::Connection;
    match database.backend {
        Backend::Sqlite => {
            let mut connection = sqlx::SqliteConnection::connect(&database.url)
                .await
                .unwrap();
            for statement in statements {
                sqlx::query(sqlx::AssertSqlSafe(*statement))
                    .execute(&mut connection)
                    .await
                    .unwrap();
            }
        }
        Backend::Postgres => {
            let mut connection = sqlx::PgConnection::connect(&database.url).await.unwrap();
            for statement in statements {
                sqlx::query(sqlx::AssertSqlSafe(*statement))
                    .execute(&mut connection)
                    .await
                    .unwrap();
            }
        }
    }
}

async fn the_check_audits_the_writer_state_beside_a_live_server_and_resumes(backend: Backend) {
    let server = TestServer::start(backend).await;
    let tenant = server
        .merchant("tenant-1", pb::MerchantCategory::MallTenant)
        .await;
    server.enroll(&["m-1", "m-2"]).await;
    accepted(&server.earn(&tenant, "e-1", "m-1", 100).await);
    accepted(&server.earn(&tenant, "e-2", "m-2", 50).await);
    accepted(&server.burn(&tenant, "b-1", "m-1", 30).await);
    let hold = server.body(&tenant, pb::TransactionKind::Hold, "h-1", "m-2", 20);
    accepted(&server.submit(tenant.envelope(&hold)).await);
    let reversal = server.referring_body(
        &tenant,
        pb::TransactionKind::Reversal,
        "r-1",
        "m-1",
        10,
        "b-1",
        "",
    );
    accepted(&server.submit(tenant.envelope(&reversal)).await);

    // Beside the live server: the whole chain, then nothing new from its own checkpoint.
    let (sound, full) = run_check(&server.database, &[]);
    assert!(sound, "{full}");
    assert!(full.contains("verified from entry 0 to 5"), "{full}");
    assert!(full.contains("held balances = open holds"), "{full}");
    let (sound, resumed) = run_check(&server.database, &["--since", "checkpoint"]);
    assert!(sound, "{resumed}");
    assert!(
        resumed.contains("0 entries verified from entry 5 to 5"),
        "{resumed}"
    );
    accepted(&server.earn(&tenant, "e-3", "m-1", 7).await);
    let (sound, resumed) = run_check(&server.database, &["--since", "5"]);
    assert!(sound, "{resumed}");
    assert!(
        resumed.contains("1 entries verified from entry 5 to 6"),
        "{resumed}"
    );
    let (sound, unknown) = run_check(&server.database, &["--since", "3"]);
    assert!(
        !sound && unknown.is_empty(),
        "no check verified entry 3: {unknown}"
    );

    // The writer's state tables, altered behind its back, are reported.
    let database = stop(server).await;
    // One more point in m-1's first lot (the lots are a JSON array in its state row).
    let one_more_point = match database.backend {
        Backend::Sqlite => {
            "UPDATE member_states SET lots = json_set(lots, '$[0][6]', \
             json_extract(lots, '$[0][6]') + 1) WHERE member_id = 'm-1'"
        }
        Backend::Postgres => {
            "UPDATE member_states SET lots = jsonb_set(lots::jsonb, '{0,6}', \
             to_jsonb(((lots::jsonb) -> 0 ->> 6)::bigint + 1))::text WHERE member_id = 'm-1'"
        }
    };
    execute(
        &database,
        &[
            one_more_point,
            "UPDATE member_states SET held_points = held_points + 5, next_expiry_ms = 1 \
             WHERE member_id = 'm-2'",
            "DELETE FROM open_holds",
            // A member's state row carries points only; money on a member account is reported.
            "INSERT INTO account_balances (account_id, asset, balance) \
             SELECT account_id, 'CNY', 5 FROM accounts \
             WHERE kind = 'member_wallet' AND owner = 'm-1'",
        ],
    )
    .await;
    let (sound, report) = run_check(&database, &[]);
    assert!(!sound, "{report}");
    for expected in [
        "problem: lots: points less consumed and repaid",
        "problem: wallets = lots less debt: member m-1",
        "problem: held balances = open holds: member m-2",
        "problem: member states = member accounts and their balances: member m-2",
        "problem: next expiry = the earliest expiry of the lots: member m-2",
        "problem: member accounts hold points only: member m-1",
        "problem: open holds = holds not captured, voided or expired: hold 4",
    ] {
        assert!(report.contains(expected), "{expected} in {report}");
    }
}

/// Shuts the server down and keeps its database, for what a test does with it afterwards.
async fn stop(server: TestServer) -> TestDatabase {
    let TestServer {
        server: running,
        database,
        ..
    } = server;
    running.shutdown().await.unwrap();
    database
}

/// Shuts the server down and requires `coalition check` to find its database sound.
async fn stop_and_check(server: TestServer) {
    let database = stop(server).await;
    let (sound, report) = run_check(&database, &[]);
    assert!(sound, "{report}");
}

/// Makes the database refuse to commit a batch with an earn of 777 points (a trigger on
/// `lots`, the earn's lot); `slowly` first takes about half a second, so that the writer prepares the
/// next batches meanwhile.
async fn refuse_earns_of_777(database: &TestDatabase, slowly: bool) {
    let statements = match (database.backend, slowly) {
        (Backend::Sqlite, false) => vec![
            "CREATE TRIGGER refuse_777 BEFORE INSERT ON lots \
             WHEN NEW.points = 777 BEGIN SELECT RAISE(ABORT, 'injected failure'); END",
        ],
        // SQLite has no sleep: the trigger first counts a cross product of a table of 200
        // rows (eight million rows, whatever the journal holds).
        (Backend::Sqlite, true) => vec![
            "CREATE TABLE slow (x INTEGER)",
            "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 200) \
             INSERT INTO slow SELECT x FROM c",
            "CREATE TRIGGER refuse_777 BEFORE INSERT ON lots \
             WHEN NEW.points = 777 BEGIN \
             SELECT RAISE(ABORT, 'injected failure') WHERE \
             (SELECT count(*) FROM slow a, slow b, slow c) >= 0; END",
        ],
        (Backend::Postgres, slowly) => vec![
            if slowly {
                "CREATE FUNCTION refuse_777() RETURNS trigger AS $$ BEGIN \
                 IF NEW.points = 777 THEN PERFORM pg_sleep(0.5); \
                 RAISE EXCEPTION 'injected failure'; END IF; RETURN NEW; END $$ LANGUAGE plpgsql"
            } else {
                "CREATE FUNCTION refuse_777() RETURNS trigger AS $$ BEGIN \
                 IF NEW.points = 777 THEN RAISE EXCEPTION 'injected failure'; END IF; \
                 RETURN NEW; END $$ LANGUAGE plpgsql"
            },
            "CREATE TRIGGER refuse_777 BEFORE INSERT ON lots \
             FOR EACH ROW EXECUTE FUNCTION refuse_777()",
        ],
    };
    execute(database, &statements).await;
}

/// Removes what `refuse_earns_of_777` installed.
async fn accept_earns_of_777(database: &TestDatabase) {
    let remove = match database.backend {
        Backend::Sqlite => "DROP TRIGGER refuse_777",
        Backend::Postgres => "DROP TRIGGER refuse_777 ON lots",
    };
    execute(database, &[remove]).await;
}

async fn a_failed_commit_leaves_the_working_set_as_the_database_has_it(backend: Backend) {
    let server = TestServer::start(backend).await;
    let tenant = server
        .merchant("tenant-1", pb::MerchantCategory::MallTenant)
        .await;
    server.enroll(&["m-1"]).await;
    accepted(&server.earn(&tenant, "e-1", "m-1", 100).await);
    // The database refuses the next earn of 777 points: its batch cannot commit.
    refuse_earns_of_777(&server.database, false).await;
    let body = server.body(&tenant, pb::TransactionKind::Earn, "e-2", "m-1", 777);
    let refused = server
        .submissions()
        .submit(pb::SubmitRequest {
            envelope: Some(tenant.envelope(&body)),
        })
        .await;
    assert!(refused.is_err(), "{refused:?}");
    // The writer reloaded what the database holds: the failed earn's points are not there.
    assert_eq!(server.balance("m-1").await, 100);
    assert_eq!(
        accepted(&server.burn(&tenant, "b-1", "m-1", 30).await).member_points_balance,
        70
    );
    accept_earns_of_777(&server.database).await;
    // The same transaction, sent again, now books.
    assert_eq!(
        accepted(&server.submit(tenant.envelope(&body)).await).member_points_balance,
        847
    );
    stop_and_check(server).await;
}

/// The writer prepares the next batch while the one before commits. When that commit fails,
/// the batch prepared on top of it must be written never and answered as unavailable; every
/// acknowledged submission, and only those, is in the books.
async fn a_failed_commit_voids_the_batch_prepared_on_top_of_it(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (tenant, cinema) = server.tenant_and_cinema().await;
    let members: Vec<String> = (0..12).map(|index| format!("m-{index}")).collect();
    let names: Vec<&str> = members.iter().map(String::as_str).collect();
    server.enroll(&names).await;
    for member in &members {
        accepted(
            &server
                .earn(&tenant, &format!("seed-{member}"), member, 1_000)
                .await,
        );
    }
    // The database refuses an earn of 777 points, slowly, so that the writer prepares the
    // next batches while that commit runs.
    refuse_earns_of_777(&server.database, true).await;
    let failing = tenant.envelope(&server.body(
        &tenant,
        pb::TransactionKind::Earn,
        "fails",
        &members[0],
        777,
    ));
    let mut client = server.submissions();
    let refused = tokio::spawn(async move {
        client
            .submit(pb::SubmitRequest {
                envelope: Some(failing),
            })
            .await
    });
    // Clients keep submitting for the same members while that commit fails.
    let mut clients = JoinSet::new();
    for task in 0..6usize {
        let mut planned = Vec::new();
        for step in 0..40usize {
            let member = members[(task * 5 + step) % members.len()].clone();
            let id = format!("t{task}-{step}");
            let (signer, kind, points) = if step % 3 == 2 {
                (&cinema, pb::TransactionKind::Burn, 7)
            } else {
                (&tenant, pb::TransactionKind::Earn, 3)
            };
            let envelope = signer.envelope(&server.body(signer, kind, &id, &member, points));
            let delta = if kind == pb::TransactionKind::Earn {
                points
            } else {
                -points
            };
            planned.push((member, delta, envelope));
        }
        let mut client = server.submissions();
        clients.spawn(async move {
            let mut booked = Vec::new();
            let mut voided = 0usize;
            for (member, delta, envelope) in planned {
                match client
                    .submit(pb::SubmitRequest {
                        envelope: Some(envelope),
                    })
                    .await
                {
                    Ok(response) => {
                        let result = response.into_inner().result.unwrap();
                        accepted(&result);
                        booked.push((member, delta));
                    }
                    Err(status) => {
                        assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
                        voided += usize::from(status.message().contains("batch before"));
                    }
                }
            }
            (booked, voided)
        });
    }
    let refused = refused.await.unwrap();
    assert!(refused.is_err(), "{refused:?}");
    let mut expected: std::collections::BTreeMap<String, i64> = members
        .iter()
        .map(|member| (member.clone(), 1_000))
        .collect();
    let mut voided = 0;
    while let Some(outcome) = clients.join_next().await {
        let (booked, count) = outcome.unwrap();
        voided += count;
        for (member, delta) in booked {
            *expected.get_mut(&member).unwrap() += delta;
        }
    }
    assert!(
        voided > 0,
        "some batch was prepared while the failing commit ran, and voided"
    );
    for (member, points) in &expected {
        assert_eq!(server.balance(member).await, *points, "{member}");
    }
    // The same envelope twice, the second alone in its batch while the first's commit runs
    // and fails: a batch of nothing but a duplicate of an uncommitted transaction must not
    // be answered as booked.
    let again = tenant.envelope(&server.body(
        &tenant,
        pb::TransactionKind::Earn,
        "fails-again",
        &members[0],
        777,
    ));
    let mut client = server.submissions();
    let first = {
        let envelope = again.clone();
        tokio::spawn(async move {
            client
                .submit(pb::SubmitRequest {
                    envelope: Some(envelope),
                })
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let duplicate = server
        .submissions()
        .submit(pb::SubmitRequest {
            envelope: Some(again),
        })
        .await;
    assert!(duplicate.is_err(), "{duplicate:?}");
    let first = first.await.unwrap();
    assert!(first.is_err(), "{first:?}");
    assert_eq!(server.balance(&members[0]).await, expected[&members[0]]);
    accept_earns_of_777(&server.database).await;
    accepted(&server.earn(&tenant, "after", &members[0], 1).await);
    stop_and_check(server).await;
}

/// Makes the database take about a second over a batch with an earn of 555 points (a trigger
/// on `lots`, the earn's lot), which then commits.
async fn slow_earns_of_555(database: &TestDatabase) {
    let statements = match database.backend {
        // SQLite has no sleep: a count over a cross product of 450 rows three times.
        Backend::Sqlite => vec![
            "CREATE TABLE slow (x INTEGER)",
            "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 450) \
             INSERT INTO slow SELECT x FROM c",
            "CREATE TRIGGER slow_555 BEFORE INSERT ON lots \
             WHEN NEW.points = 555 BEGIN \
             SELECT RAISE(ABORT, 'unreachable') WHERE \
             (SELECT count(*) FROM slow a, slow b, slow c) < 0; END",
        ],
        Backend::Postgres => vec![
            "CREATE FUNCTION slow_555() RETURNS trigger AS $$ BEGIN \
             IF NEW.points = 555 THEN PERFORM pg_sleep(1); END IF; RETURN NEW; END $$ \
             LANGUAGE plpgsql",
            "CREATE TRIGGER slow_555 BEFORE INSERT ON lots \
             FOR EACH ROW EXECUTE FUNCTION slow_555()",
        ],
    };
    execute(database, &statements).await;
}

/// Batches are written beside each other where the database allows it (PostgreSQL), but a
/// batch never commits, and its callers are never answered, before the batch before it: its
/// entries chain on that batch's. A slow batch in front, then batches behind it for other
/// members: every one of them is answered after the slow one, with later sequences, and the
/// journal checks.
async fn a_batch_never_commits_before_the_batch_before_it(backend: Backend) {
    let server = TestServer::start(backend).await;
    let tenant = server
        .merchant("tenant-1", pb::MerchantCategory::MallTenant)
        .await;
    server.enroll(&["m-slow", "m-1", "m-2", "m-3"]).await;
    accepted(&server.earn(&tenant, "seed", "m-1", 10).await);
    slow_earns_of_555(&server.database).await;
    let slow =
        tenant.envelope(&server.body(&tenant, pb::TransactionKind::Earn, "slow", "m-slow", 555));
    let started = std::time::Instant::now();
    // A submission's response and when it came, from the start.
    let submit_timed = |envelope: pb::Envelope| {
        let mut client = server.submissions();
        async move {
            let response = client
                .submit(pb::SubmitRequest {
                    envelope: Some(envelope),
                })
                .await;
            (response, started.elapsed())
        }
    };
    let slow = tokio::spawn(submit_timed(slow));
    tokio::time::sleep(Duration::from_millis(150)).await;
    let mut behind = JoinSet::new();
    for (index, member) in ["m-1", "m-2", "m-3"].into_iter().enumerate() {
        let envelope = tenant.envelope(&server.body(
            &tenant,
            pb::TransactionKind::Earn,
            &format!("behind-{index}"),
            member,
            5,
        ));
        behind.spawn(submit_timed(envelope));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (slow, slow_answered) = slow.await.unwrap();
    let slow = accepted(&slow.unwrap().into_inner().result.unwrap()).clone();
    assert!(
        slow_answered >= Duration::from_millis(400),
        "the slow batch was still committing when the last batch behind it was sent: \
         {slow_answered:?}"
    );
    while let Some(outcome) = behind.join_next().await {
        let (response, answered) = outcome.unwrap();
        let result = response.unwrap().into_inner().result.unwrap();
        let booked = accepted(&result);
        assert!(
            booked.entry_sequence > slow.entry_sequence,
            "{} after {}",
            booked.entry_sequence,
            slow.entry_sequence
        );
        assert!(
            answered >= slow_answered,
            "a batch behind was answered at {answered:?}, before the slow one at {slow_answered:?}"
        );
    }
    assert_eq!(server.balance("m-slow").await, 555);
    assert_eq!(server.balance("m-1").await, 15);
    stop_and_check(server).await;
}

on_both_backends!(
    a_batch_never_commits_before_the_batch_before_it,
    a_failed_commit_voids_the_batch_prepared_on_top_of_it,
    a_failed_commit_leaves_the_working_set_as_the_database_has_it,
    the_check_audits_the_writer_state_beside_a_live_server_and_resumes,
    while_starting_health_is_not_serving_and_calls_are_unavailable,
    kill_9_under_load_loses_no_acknowledged_transaction,
    sigterm_finishes_the_batch_in_flight_and_exits_cleanly,
    a_tampered_journal_is_reported_and_refused_at_startup,
    a_second_server_on_the_same_database_refuses_to_start,
    an_orphan_posting_is_reported,
    a_start_verifies_only_the_entries_after_the_last_checkpoint,
);

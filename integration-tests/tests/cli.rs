//! The command line against a running server, as the README's "Trying it by hand" does it:
//! keygen, admin register-merchant and enroll, client submit and balance.
//!
//! Longer than 800 lines: one scenario per test, each run on both backends, kept in one
//! file per area so that the scenarios share their helpers.

use std::process::{Command, Output};

use ed25519_dalek::Signer;
use sha2::Digest;

use coalition_integration_tests::{
    ADMIN_TOKEN, Backend, TestDatabase, on_both_backends, spawn_server,
};

const SERVER: &str = env!("CARGO_BIN_EXE_coalition-under-test");

fn coalition(arguments: &[&str]) -> Output {
    Command::new(SERVER)
        .args(arguments)
        .env("COALITION_ADMIN_TOKEN", ADMIN_TOKEN)
        .output()
        .expect("run the CLI")
}

fn stdout(output: &Output) -> String {
    assert!(
        output.status.success(),
        "failed: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

async fn the_cli_registers_enrolls_submits_and_reads(backend: Backend) {
    let database = TestDatabase::new(backend).await;
    let (mut child, endpoint) = spawn_server(SERVER, &database.url, &[]);
    let dir = std::env::temp_dir().join(format!(
        "coalition-cli-test-{}-{backend:?}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let key_file = dir.join("tenant.key");
    let _ = std::fs::remove_file(&key_file);
    let key_path = key_file.to_str().unwrap();

    let generated = stdout(&coalition(&["keygen", "--out", key_path]));
    let public_key = generated
        .lines()
        .find_map(|line| line.strip_prefix("public key: "))
        .unwrap()
        .to_owned();
    let again = coalition(&["keygen", "--out", key_path]);
    assert!(!again.status.success(), "keygen never overwrites a key");

    let admin = |arguments: &[&str]| {
        let mut all = vec!["admin", "--server", &endpoint];
        all.extend_from_slice(arguments);
        coalition(&all)
    };
    stdout(&admin(&[
        "register-merchant",
        "--merchant",
        "tenant-001",
        "--name",
        "Tenant",
        "--category",
        "mall-tenant",
        "--key-id",
        "key-1",
        "--public-key",
        &public_key,
    ]));
    assert!(stdout(&admin(&["enroll", "member-000042"])).contains("enrolled 1"));
    let terms = stdout(&admin(&[
        "set-terms",
        "--merchant",
        "tenant-001",
        "--issue-price",
        "1.05",
        "--redeem-price",
        "0.95",
    ]));
    assert!(terms.contains("terms version 1 of tenant-001"), "{terms}");
    let bad = admin(&[
        "set-terms",
        "--merchant",
        "tenant-001",
        "--issue-price",
        "-1",
        "--redeem-price",
        "0.95",
    ]);
    assert!(!bad.status.success());
    assert!(stdout(&admin(&["show-merchant", "--merchant", "tenant-001"])).contains(&public_key));

    let client = |arguments: &[&str]| {
        let mut all = vec![
            "client",
            "--server",
            &endpoint,
            "--merchant",
            "tenant-001",
            "--key-id",
            "key-1",
            "--key-file",
            key_path,
        ];
        all.extend_from_slice(arguments);
        coalition(&all)
    };
    let earn = [
        "submit",
        "--kind",
        "earn",
        "--member",
        "member-000042",
        "--points",
        "180",
        "--transaction-id",
        "pos-7-000123",
        "--occurred-at-ms",
    ];
    let now = coalition_engine::Clock::now_ms(&coalition_engine::SystemClock).to_string();
    let submitted = stdout(&client(&[&earn[..], &[now.as_str()]].concat()));
    assert!(submitted.contains("accepted as entry 1"), "{submitted}");
    assert!(submitted.contains("180 points"), "{submitted}");
    let retried = stdout(&client(&[&earn[..], &[now.as_str()]].concat()));
    assert!(
        retried.contains("accepted as entry 1 (duplicate"),
        "{retried}"
    );
    let overdrawn = client(&[
        "submit",
        "--kind",
        "burn",
        "--member",
        "member-000042",
        "--points",
        "181",
        "--transaction-id",
        "pos-7-000124",
    ]);
    assert!(!overdrawn.status.success());
    assert!(
        String::from_utf8_lossy(&overdrawn.stderr).contains("REJECTION_REASON_POINTS_INSUFFICIENT")
    );
    let balance = stdout(&client(&["balance", "--member", "member-000042"]));
    assert!(balance.contains("has 180 points"), "{balance}");

    // Holds, captures, reversals, exchanges, earn by spend, funding and the expiry run.
    let submit = |kind: &str, id: &str, points: &str, extra: &[&str]| {
        let mut all = vec![
            "submit",
            "--kind",
            kind,
            "--member",
            "member-000042",
            "--points",
            points,
            "--transaction-id",
            id,
        ];
        all.extend_from_slice(extra);
        client(&all)
    };
    let held = stdout(&submit("hold", "gate-1", "100", &[]));
    assert!(held.contains("now has 80 points"), "{held}");
    let captured = stdout(&submit(
        "capture",
        "gate-2",
        "60",
        &["--refers-to", "gate-1"],
    ));
    assert!(captured.contains("now has 120 points"), "{captured}");
    let refunded = stdout(&submit(
        "reversal",
        "refund-1",
        "20",
        &["--refers-to", "pos-7-000123"],
    ));
    assert!(refunded.contains("now has 100 points"), "{refunded}");
    let terms = stdout(&admin(&[
        "set-terms",
        "--merchant",
        "tenant-001",
        "--issue-price",
        "1.05",
        "--redeem-price",
        "0.95",
        "--earn-points-per-minor",
        "0.01",
        "--legacy-unit",
        "TENANTPTS",
        "--points-per-legacy-unit",
        "0.5",
        "--credit-limit-minor",
        "100000",
    ]));
    assert!(terms.contains("terms version 2"), "{terms}");
    let rules = stdout(&admin(&[
        "set-earn-rules",
        "--tier",
        "gold=1.5",
        "--campaign",
        "opening,*,0,9999999999999,2",
    ]));
    assert!(rules.contains("earn rules version 1"), "{rules}");
    let by_spend = stdout(&submit(
        "earn",
        "pos-7-000125",
        "0",
        &["--spend-minor", "1000"],
    ));
    assert!(by_spend.contains("now has 120 points"), "{by_spend}");
    let exchanged = stdout(&submit(
        "exchange-in",
        "swap-1",
        "0",
        &["--legacy-units", "40"],
    ));
    assert!(exchanged.contains("now has 140 points"), "{exchanged}");
    let funded = stdout(&admin(&[
        "fund",
        "--merchant",
        "tenant-001",
        "--amount-minor",
        "5000",
        "--reference",
        "transfer-1",
    ]));
    assert!(funded.contains("funding booked as entry"), "{funded}");
    let expiry = stdout(&admin(&["expire"]));
    assert!(expiry.contains("expiry run: 0 points"), "{expiry}");

    let wrong_token = Command::new(SERVER)
        .args([
            "admin",
            "--server",
            &endpoint,
            "--token",
            "wrong-token-wrong-token",
            "enroll",
            "x",
        ])
        .output()
        .unwrap();
    assert!(!wrong_token.status.success());

    child.kill().unwrap();
    child.wait().unwrap();
    // The full audit of what the commands booked, with its rate.
    let checked = stdout(&coalition(&["check", "--database-url", &database.url]));
    assert!(checked.contains("ledger check: OK"), "{checked}");
    assert!(checked.contains(" entries/s)"), "{checked}");
    // The check never reports a database that does not exist as sound.
    let missing = format!("sqlite://{}", dir.join("missing.db").display());
    let check = coalition(&["check", "--database-url", &missing]);
    assert!(!check.status.success());
    assert!(
        !dir.join("missing.db").exists(),
        "the check must not create a database"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Operator keys through the binary: generate, show, rotate; old public keys stay.
#[test]
fn operator_keys_are_generated_shown_and_rotated() {
    let dir = std::env::temp_dir().join(format!("coalition-operator-keys-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let dir_text = dir.to_str().unwrap();
    let generated = stdout(&coalition(&["operator-key", "generate", "--dir", dir_text]));
    assert!(generated.starts_with("current operator-1 "), "{generated}");
    let again = coalition(&["operator-key", "generate", "--dir", dir_text]);
    assert!(!again.status.success(), "generate never replaces a key");
    let rotated = stdout(&coalition(&["operator-key", "rotate", "--dir", dir_text]));
    assert!(rotated.starts_with("current operator-2 "), "{rotated}");
    let shown = stdout(&coalition(&["operator-key", "show", "--dir", dir_text]));
    let lines: Vec<&str> = shown.lines().collect();
    assert_eq!(lines.len(), 2, "{shown}");
    assert!(lines[0].starts_with("retired operator-1 "), "{shown}");
    assert!(lines[1].starts_with("current operator-2 "), "{shown}");
    // What `generate` printed as the first public key is what its .pub file says.
    let first_public = generated.split_whitespace().nth(2).unwrap();
    let stored = std::fs::read_to_string(dir.join("operator-1.pub")).unwrap();
    assert_eq!(stored.trim(), first_public);
    let _ = std::fs::remove_dir_all(&dir);
}

/// `coalition reconcile` against the database of a running server: every kind of difference,
/// a malformed row reported with its line, the good rows all matched.
async fn the_cli_reconciles_a_merchant_file(backend: Backend) {
    use coalition_grpc::pb;
    use coalition_integration_tests::{TestServer, accepted};
    let server = TestServer::start(backend).await;
    let (tenant, _) = server.tenant_and_cinema().await;
    server.enroll(&["m-1"]).await;
    for (id, points, spend) in [
        ("t-1", 100, 10_000),
        ("t-2", 50, 5_000),
        ("t-3", 30, 3_000),
        ("t-5", 10, 1_000),
    ] {
        let body = pb::TransactionBody {
            spend_minor: Some(spend),
            ..server.body(&tenant, pb::TransactionKind::Earn, id, "m-1", points)
        };
        accepted(&server.submit(tenant.envelope(&body)).await);
    }
    let dir = std::env::temp_dir().join(format!(
        "coalition-reconcile-{}-{backend:?}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("tenant-1.csv");
    std::fs::write(
        &file,
        "merchant_transaction_id,kind,points,amount_minor\n\
         t-1,earn,100,10000\n\
         t-2,earn,51,5000\n\
         t-3,earn,30,2999\n\
         t-8,earn,lots,1\n\
         t-9,earn,5,\n\
         t-1,earn,100,10000\n",
    )
    .unwrap();
    let now = server.now_ms();
    let out = dir.join("results");
    let printed = stdout(&coalition(&[
        "reconcile",
        "--database-url",
        &server.database.url,
        "--merchant",
        "tenant-1",
        "--from-ms",
        &(now - 3_600_000).to_string(),
        "--to-ms",
        &(now + 3_600_000).to_string(),
        "--file",
        file.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--quiet",
    ]));
    assert!(printed.contains("malformed rows         1"), "{printed}");
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    let counts = &summary["counts"];
    for (status, expected) in [
        ("matched", 1),
        ("points_mismatch", 1),
        ("amount_mismatch", 1),
        ("missing_in_clearing", 1),
        ("duplicated", 1),
        ("missing_at_merchant", 1),
    ] {
        assert_eq!(counts[status], expected, "{status}: {summary}");
    }
    assert_eq!(summary["clearing"]["points"], 190);
    assert_eq!(summary["malformed"][0]["line"], 5);
    assert_eq!(summary["malformed_rows"], 1);
    let malformed = std::fs::read_to_string(out.join("malformed.csv")).unwrap();
    assert_eq!(malformed.lines().count(), 2, "{malformed}");
    assert!(malformed.starts_with("line,problem\n5,"), "{malformed}");
    let differences = std::fs::read_to_string(out.join("differences.csv")).unwrap();
    assert!(
        differences.contains("missing_at_merchant,t-5,,4,,10,,1000"),
        "{differences}"
    );
    let lines = std::fs::read_to_string(out.join("differences.jsonl")).unwrap();
    assert_eq!(lines.lines().count(), 5, "{lines}");
    assert!(lines.contains("\"status\":\"duplicated\""), "{lines}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Settles two consecutive periods with the CLI, exports them (rotating the operator's key in
/// between), and verifies them alone and together; a tampered copy and the wrong order fail.
async fn the_cli_settles_exports_and_verifies_consecutive_periods(backend: Backend) {
    use coalition_grpc::pb;
    use coalition_integration_tests::{TestServer, accepted};
    let server = TestServer::start(backend).await;
    let endpoint = server.server.endpoint();
    let (tenant, cinema) = server.tenant_and_cinema().await;
    server.enroll(&["m-1", "m-2"]).await;
    let admin = |arguments: &[&str]| {
        let mut all = vec!["admin", "--server", endpoint.as_str()];
        all.extend_from_slice(arguments);
        coalition(&all)
    };
    for (merchant, share) in [("tenant-1", "0"), ("cinema-1", "0.5")] {
        stdout(&admin(&[
            "set-terms",
            "--merchant",
            merchant,
            "--issue-price",
            "1.05",
            "--redeem-price",
            "0.95",
            "--fee",
            "0.01",
            "--breakage-share",
            share,
            "--earn-points-per-minor",
            "0.01",
        ]));
    }
    // Earn rules: gold members earn half as much again on earns by spend.
    stdout(&admin(&["set-earn-rules", "--tier", "gold=1.5"]));
    stdout(&admin(&["enroll", "--tier", "gold", "m-gold"]));
    let cutoff = server.config.engine().settlement_cutoff;
    let first = cutoff.next(&cutoff.period_at(server.now_ms()));
    let second = cutoff.next(&first);
    server.clock.set(first.start_ms + 3_600_000);
    accepted(&server.earn(&tenant, "e-1", "m-1", 1_000).await);
    accepted(&server.earn(&cinema, "e-2", "m-2", 400).await);
    accepted(&server.burn(&cinema, "b-1", "m-1", 300).await);
    server.clock.set(second.start_ms + 3_600_000);
    accepted(&server.burn(&tenant, "b-2", "m-2", 100).await);
    let body = pb::TransactionBody {
        spend_minor: Some(12_345),
        ..server.body(&tenant, pb::TransactionKind::Earn, "e-3", "m-2", 120)
    };
    accepted(&server.submit(tenant.envelope(&body)).await);
    // ¥179.99 at one point per yuan for a gold member: 179.99 × 1.5 = 269.985 → 269.
    let by_spend = pb::TransactionBody {
        points: 0,
        spend_minor: Some(17_999),
        ..server.body(&tenant, pb::TransactionKind::Earn, "e-gold", "m-gold", 0)
    };
    assert_eq!(
        accepted(&server.submit(tenant.envelope(&by_spend)).await).points,
        269
    );
    server.clock.set(second.end_ms + 3_600_000);

    let preview = stdout(&admin(&["settle", "preview", "--period", &first.label]));
    assert!(preview.contains("closed, not finalised"), "{preview}");
    assert!(
        preview.contains("sum of nets                         0"),
        "{preview}"
    );
    for period in [&first, &second] {
        let finalised = stdout(&admin(&["settle", "finalise", "--period", &period.label]));
        assert!(finalised.contains("finalised now"), "{finalised}");
        let again = stdout(&admin(&[
            "settle",
            "finalise",
            "--period",
            &period.label,
            "--json",
        ]));
        let again: serde_json::Value = serde_json::from_str(&again).unwrap();
        assert_eq!(again["status"], "finalised");
        assert_eq!(again["settlement"]["period"], period.label.as_str());
    }

    // Both merchants owe after these periods: a payout to either is refused.
    let refused = admin(&[
        "payout",
        "--merchant",
        "cinema-1",
        "--amount-minor",
        "1",
        "--reference",
        "COAL-1",
    ]);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("would pay more than that"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );

    let dir = std::env::temp_dir().join(format!(
        "coalition-export-test-{}-{backend:?}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let keys = dir.join("keys");
    let keys = keys.to_str().unwrap();
    stdout(&coalition(&["operator-key", "generate", "--dir", keys]));
    let record = dir.join("tenant-1.csv");
    std::fs::write(
        &record,
        "merchant_transaction_id,points,amount_minor\ne-3,120,12345\n=HYPERLINK(1),5,\n",
    )
    .unwrap();
    // The first export as lean as by default, the second with every copy.
    let export = |period: &str, out: &std::path::Path, reconcile: bool| {
        let mut arguments = vec![
            "export",
            "--database-url",
            &server.database.url,
            "--period",
            period,
            "--out",
            out.to_str().unwrap(),
            "--operator-keys",
            keys,
        ];
        if reconcile {
            arguments.extend(["--with", "csv,hledger"]);
        }
        let reconcile_argument = format!("tenant-1={}", record.display());
        if reconcile {
            arguments.extend(["--reconcile", &reconcile_argument]);
        }
        stdout(&coalition(&arguments))
    };
    let first_dir = dir.join("first");
    let second_dir = dir.join("second");
    export(&first.label, &first_dir, false);
    stdout(&coalition(&["operator-key", "rotate", "--dir", keys]));
    let printed = export(&second.label, &second_dir, true);
    assert!(
        printed.contains("signed by operator key operator-2"),
        "{printed}"
    );
    let key_1 = format!("{keys}/operator-1.pub");
    let key_2 = format!("{keys}/operator-2.pub");

    // The files an auditor reads.
    let read = |path: std::path::PathBuf| std::fs::read_to_string(&path).unwrap();
    for copy in [
        "entries.csv",
        "trial_balance.csv",
        "journal.hledger",
        "statements/tenant-1.csv",
    ] {
        assert!(!first_dir.join(copy).exists(), "{copy} only on request");
        assert!(second_dir.join(copy).exists(), "{copy} was asked for");
    }
    let lean: coalition::export::Manifest =
        serde_json::from_str(&read(first_dir.join("manifest.json"))).unwrap();
    assert!(lean.formats.is_empty());
    let entries = lean
        .files
        .iter()
        .find(|file| file.path == "entries.jsonl.gz")
        .expect("the entries, compressed");
    assert!(
        entries.content_bytes.unwrap() > entries.bytes,
        "{entries:?}"
    );
    let balance = read(second_dir.join("trial_balance.csv"));
    assert!(balance.starts_with("account_kind,owner,asset,opening,debits,credits,closing\n"));
    assert!(
        balance.contains("member_wallet,m-2,PTS,400,120,100,420"),
        "{balance}"
    );
    let statement = read(second_dir.join("statements/tenant-1.csv"));
    assert!(
        statement.contains(",earn,issuance,tenant-1,e-3,120,-126,-2"),
        "{statement}"
    );
    let differences = read(second_dir.join("reconciliation/tenant-1/differences.csv"));
    assert!(
        differences.contains("missing_in_clearing,'=HYPERLINK(1)"),
        "{differences}"
    );
    assert!(
        differences.contains("missing_at_merchant,b-2"),
        "{differences}"
    );
    // Both merchants owe: the operator pays nobody, so there is no pain.001, and the
    // manifest says why; the payments file lists what each owes.
    assert!(!second_dir.join("payments.pain.001.xml").exists());
    let manifest: serde_json::Value =
        serde_json::from_str(&read(second_dir.join("manifest.json"))).unwrap();
    assert_eq!(manifest["omitted"][0]["path"], "payments.pain.001.xml");
    let payments = read(second_dir.join("payments.csv"));
    assert!(payments.contains("\ntenant-1,"), "{payments}");
    assert!(!payments.contains("operator_pays"), "{payments}");

    // Every merchant entry's signed envelope is kept, and verify checks each.
    for file in ["envelopes.jsonl.gz", "keys.jsonl"] {
        assert!(
            lean.files.iter().any(|digest| digest.path == file),
            "{file}"
        );
    }
    // Each alone, and both together in order: they chain.
    let verified = stdout(&coalition(&[
        "verify",
        first_dir.to_str().unwrap(),
        second_dir.to_str().unwrap(),
        "--operator-key",
        &key_1,
        "--operator-key",
        &key_2,
    ]));
    assert!(
        verified.contains("2 consecutive periods chain"),
        "{verified}"
    );
    assert!(
        verified.contains("partners' signed envelopes checked for 3 of 3 merchant entries"),
        "{verified}"
    );
    // The old export stays verifiable with the retired key; not with the new one.
    stdout(&coalition(&[
        "verify",
        first_dir.to_str().unwrap(),
        "--operator-key",
        &key_1,
    ]));
    let wrong_key = coalition(&[
        "verify",
        first_dir.to_str().unwrap(),
        "--operator-key",
        &key_2,
    ]);
    assert!(!wrong_key.status.success());
    assert!(String::from_utf8_lossy(&wrong_key.stdout).contains("signature does not verify"));
    // The wrong order does not chain.
    let reversed = coalition(&[
        "verify",
        second_dir.to_str().unwrap(),
        first_dir.to_str().unwrap(),
        "--operator-key",
        &key_1,
        "--operator-key",
        &key_2,
    ]);
    assert!(!reversed.status.success());
    assert!(String::from_utf8_lossy(&reversed.stdout).contains("does not continue the hash chain"));

    // One altered byte in any file is reported.
    for file in [
        "trial_balance.csv",
        "entries.jsonl.gz",
        "settlement.json",
        "journal.hledger",
        "manifest.json",
    ] {
        let copy = dir.join(format!("tampered-{file}"));
        copy_dir(&second_dir, &copy);
        let path = copy.join(file);
        let mut bytes = std::fs::read(&path).unwrap();
        let at = bytes.len() / 2;
        bytes[at] = if bytes[at] == b'1' { b'2' } else { b'1' };
        std::fs::write(&path, bytes).unwrap();
        let output = coalition(&["verify", copy.to_str().unwrap(), "--operator-key", &key_2]);
        assert!(!output.status.success(), "{file} altered must not verify");
        let printed = String::from_utf8_lossy(&output.stdout);
        assert!(
            printed.contains(file) || printed.contains("manifest.json"),
            "{file}: {printed}"
        );
    }
    // Every signed file, one digit changed and the manifest signed again by another key
    // (its digest and key updated): verify, given that key, names the file. So a signature
    // vouches only for files that follow from the entries and the export's inputs.
    let throwaway = ed25519_dalek::SigningKey::from_bytes(&[9; 32]);
    let throwaway_public = hex::encode(throwaway.verifying_key().as_bytes());
    let manifest: coalition::export::Manifest =
        serde_json::from_str(&read(second_dir.join("manifest.json"))).unwrap();
    // Writes the manifest into `copy`, signs it with the throwaway key and runs verify
    // with that key.
    let sign_and_verify = |copy: &std::path::Path, manifest_bytes: &[u8]| {
        std::fs::write(copy.join("manifest.json"), manifest_bytes).unwrap();
        let signature = throwaway.sign(&coalition::export::signed_message(manifest_bytes));
        std::fs::write(
            copy.join("manifest.sig"),
            format!("{}\n", hex::encode(signature.to_bytes())),
        )
        .unwrap();
        coalition(&[
            "verify",
            copy.to_str().unwrap(),
            "--operator-key",
            &throwaway_public,
        ])
    };
    let mut edited_files = 0;
    let mut skipped = Vec::new();
    for file in &manifest.files {
        // A compressed file is edited in its content and compressed again.
        let stored = std::fs::read(second_dir.join(&file.path)).unwrap();
        let compressed = file.path.ends_with(".gz");
        let mut bytes = if compressed {
            let mut content = Vec::new();
            std::io::Read::read_to_end(
                &mut flate2::read::MultiGzDecoder::new(&stored[..]),
                &mut content,
            )
            .unwrap();
            content
        } else {
            stored
        };
        // Past a CSV file's header.
        let from = if file.path.ends_with(".csv") {
            bytes
                .iter()
                .position(|byte| *byte == b'\n')
                .map_or(0, |at| at + 1)
        } else {
            0
        };
        match bytes[from..].iter().position(u8::is_ascii_digit) {
            Some(at) => {
                let at = from + at;
                bytes[at] = b'0' + (bytes[at] - b'0' + 1) % 10;
            }
            // A file without digits (member tiers): its first value's first letter.
            None => {
                let Some(at) = bytes.windows(3).position(|window| window == b"\":\"") else {
                    skipped.push(file.path.clone());
                    continue;
                };
                let at = at + 3;
                bytes[at] = if bytes[at] == b'x' { b'y' } else { b'x' };
            }
        }
        let copy = dir.join("resigned");
        let _ = std::fs::remove_dir_all(&copy);
        copy_dir(&second_dir, &copy);
        let written = if compressed {
            let mut encoder =
                flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            std::io::Write::write_all(&mut encoder, &bytes).unwrap();
            encoder.finish().unwrap()
        } else {
            bytes.clone()
        };
        std::fs::write(copy.join(&file.path), &written).unwrap();
        let mut resigned = manifest.clone();
        resigned.operator_public_key = throwaway_public.clone();
        for digest in &mut resigned.files {
            if digest.path == file.path {
                digest.sha256 = hex::encode(sha2::Sha256::digest(&written));
                digest.bytes = written.len() as u64;
                if compressed {
                    digest.content_sha256 = Some(hex::encode(sha2::Sha256::digest(&bytes)));
                    digest.content_bytes = Some(bytes.len() as u64);
                }
            }
        }
        let output = sign_and_verify(&copy, &serde_json::to_vec_pretty(&resigned).unwrap());
        let printed = String::from_utf8_lossy(&output.stdout);
        assert!(
            !output.status.success(),
            "{} edited and signed again must not verify: {printed}",
            file.path
        );
        assert!(printed.contains(&file.path), "{}: {printed}", file.path);
        assert!(!printed.contains("signature does not verify"), "{printed}");
        edited_files += 1;
    }
    assert!(
        edited_files >= 18 && skipped.is_empty(),
        "{edited_files} files edited, {skipped:?} without a digit"
    );
    // Replaces `from` by `to` in a plain file of a copy of the second export, signs the
    // manifest again with the throwaway key and runs verify; what it printed, which must be
    // a failure.
    let edited_and_resigned = |file: &str, from: &str, to: &str| -> String {
        let copy = dir.join("resigned");
        let _ = std::fs::remove_dir_all(&copy);
        copy_dir(&second_dir, &copy);
        let before = read(copy.join(file));
        let after = before.replace(from, to);
        assert_ne!(before, after, "{file} holds {from}");
        std::fs::write(copy.join(file), &after).unwrap();
        let mut resigned = manifest.clone();
        resigned.operator_public_key = throwaway_public.clone();
        for digest in &mut resigned.files {
            if digest.path == file {
                digest.sha256 = hex::encode(sha2::Sha256::digest(after.as_bytes()));
                digest.bytes = after.len() as u64;
            }
        }
        let output = sign_and_verify(&copy, &serde_json::to_vec_pretty(&resigned).unwrap());
        let printed = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(!output.status.success(), "{printed}");
        printed
    };
    // A price in the terms changed (not its first digit): the earns priced by it no longer
    // follow.
    let printed = edited_and_resigned(
        "terms.jsonl",
        "\"issue_price_minor_per_point\":\"1.05\"",
        "\"issue_price_minor_per_point\":\"1.06\"",
    );
    assert!(
        printed.contains("moves (-126, -2) (settlement, fee), terms.jsonl's version 2 of tenant-1 gives Some((-128, -2))"),
        "{printed}"
    );
    // A partner's signature changed in the kept envelopes and the manifest signed again:
    // the envelope no longer verifies with the merchant's key.
    let copy = dir.join("resigned");
    let _ = std::fs::remove_dir_all(&copy);
    copy_dir(&second_dir, &copy);
    let stored = std::fs::read(copy.join("envelopes.jsonl.gz")).unwrap();
    let mut content = String::new();
    std::io::Read::read_to_string(
        &mut flate2::read::MultiGzDecoder::new(&stored[..]),
        &mut content,
    )
    .unwrap();
    let at = content.find("\"signature\":\"").unwrap() + "\"signature\":\"".len();
    let digit = content.as_bytes()[at];
    let flipped = if digit == b'0' { "1" } else { "0" };
    content.replace_range(at..at + 1, flipped);
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut encoder, content.as_bytes()).unwrap();
    let written = encoder.finish().unwrap();
    std::fs::write(copy.join("envelopes.jsonl.gz"), &written).unwrap();
    let mut resigned = manifest.clone();
    resigned.operator_public_key = throwaway_public.clone();
    for digest in &mut resigned.files {
        if digest.path == "envelopes.jsonl.gz" {
            digest.sha256 = hex::encode(sha2::Sha256::digest(&written));
            digest.bytes = written.len() as u64;
            digest.content_sha256 = Some(hex::encode(sha2::Sha256::digest(content.as_bytes())));
            digest.content_bytes = Some(content.len() as u64);
        }
    }
    let output = sign_and_verify(&copy, &serde_json::to_vec_pretty(&resigned).unwrap());
    let printed = String::from_utf8_lossy(&output.stdout);
    assert!(!output.status.success(), "{printed}");
    assert!(
        printed.contains("the signature does not verify with key key-1 of"),
        "{printed}"
    );
    // A gold multiplier changed in the earn rules: the earn by spend no longer follows.
    let printed = edited_and_resigned("earn_rules.jsonl", "\"gold\":\"1.5\"", "\"gold\":\"1.6\"");
    assert!(
        printed.contains("earned 269 points, earn_rules.jsonl version 1, member_tiers.jsonl and terms.jsonl give Some(287)"),
        "{printed}"
    );
    // A member's tier changed: the same.
    let printed = edited_and_resigned("member_tiers.jsonl", "\"gold\"", "null");
    assert!(printed.contains("earned 269 points"), "{printed}");
    // A merchant's entry count in the manifest changed and signed again: refused, since
    // it is what shows a merchant's proof complete.
    let copy = dir.join("resigned");
    let _ = std::fs::remove_dir_all(&copy);
    copy_dir(&second_dir, &copy);
    let mut recounted = manifest.clone();
    recounted.operator_public_key = throwaway_public.clone();
    *recounted.merchant_entries.get_mut("tenant-1").unwrap() += 1;
    let output = sign_and_verify(&copy, &serde_json::to_vec_pretty(&recounted).unwrap());
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stdout)
            .contains("its merchant_entries are not the entries' counts per merchant"),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
    // An export of an earlier format is named as such, not read field by field.
    let copy = dir.join("resigned");
    let _ = std::fs::remove_dir_all(&copy);
    copy_dir(&second_dir, &copy);
    let older = read(copy.join("manifest.json"))
        .replace("\"coalition-export/2\"", "\"coalition-export/1\"");
    let output = sign_and_verify(&copy, older.as_bytes());
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stdout).contains(
            "format \"coalition-export/1\"; this version verifies \"coalition-export/2\""
        ),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
    // The manifest unchanged but signed by another key than the one it names.
    let copy = dir.join("resigned");
    let _ = std::fs::remove_dir_all(&copy);
    copy_dir(&second_dir, &copy);
    let output = sign_and_verify(&copy, read(copy.join("manifest.json")).as_bytes());
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("names the operator key"),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
    // A manifest naming a path outside its folder is refused, and that path is not read.
    let escaping = dir.join("escaping");
    copy_dir(&second_dir, &escaping);
    let mut manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(escaping.join("manifest.json")).unwrap())
            .unwrap();
    manifest["files"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({"path": "../keys/operator-1.pub", "bytes": 0, "sha256": ""}));
    std::fs::write(
        escaping.join("manifest.json"),
        serde_json::to_vec_pretty(&manifest).unwrap(),
    )
    .unwrap();
    let output = coalition(&[
        "verify",
        escaping.to_str().unwrap(),
        "--operator-key",
        &key_2,
    ]);
    assert!(!output.status.success());
    let printed = String::from_utf8_lossy(&output.stdout);
    assert!(
        printed.contains(
            "\"../keys/operator-1.pub\": the manifest names a path outside the export folder"
        ),
        "{printed}"
    );
    // An export refuses a period that is not finalised, and a folder that is not empty.
    let third = cutoff.next(&second);
    let refused = coalition(&[
        "export",
        "--database-url",
        &server.database.url,
        "--period",
        &third.label,
        "--out",
        dir.join("third").to_str().unwrap(),
        "--operator-keys",
        keys,
    ]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("is not finalised"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// The payments file pays each merchant what is payable after netting over every finalised
/// period, exactly what RecordPayout accepts; a merchant owed this period but owing more from
/// before pays the difference; references are unique and at most 35 characters; pain.001 is
/// valid, or absent when nobody is paid; merchant ids name files safely.
async fn payments_pay_only_what_is_payable(backend: Backend) {
    use coalition_grpc::pb;
    use coalition_integration_tests::{TestServer, accepted};
    let server = TestServer::start(backend).await;
    let tenant = server
        .merchant("tenant-1", pb::MerchantCategory::MallTenant)
        .await;
    // Redeemers only: the operator owes them. "con" is a name Windows reserves; the two long
    // ids agree in their first 21 characters.
    let long_1 = "northwing-tenant-shop-0001";
    let long_2 = "northwing-tenant-shop-0002";
    let mut redeemers = Vec::new();
    for id in ["cinema-1", "con", long_1, long_2] {
        redeemers.push(server.merchant(id, pb::MerchantCategory::Cinema).await);
    }
    server.enroll(&["m-1"]).await;
    let cutoff = server.config.engine().settlement_cutoff;
    let first = cutoff.next(&cutoff.period_at(server.now_ms()));
    let second = cutoff.next(&first);
    let third = cutoff.next(&second);
    server.clock.set(first.start_ms + 3_600_000);
    accepted(&server.earn(&tenant, "e-1", "m-1", 10_000).await);
    for (index, (redeemer, points)) in redeemers.iter().zip([1_000, 500, 100, 100]).enumerate() {
        accepted(
            &server
                .burn(redeemer, &format!("b-{index}"), "m-1", points)
                .await,
        );
    }
    // Second period: the tenant redeems (owed 950 for it) while it still owes 10,500.
    server.clock.set(second.start_ms + 3_600_000);
    accepted(&server.burn(&tenant, "b-t", "m-1", 1_000).await);
    server.clock.set(third.start_ms + 3_600_000);
    accepted(&server.earn(&tenant, "e-3", "m-1", 1).await);
    server.clock.set(third.end_ms + 3_600_000);
    let mut admin = server.admin();
    let finalise = |period: String| {
        let mut admin = server.admin();
        async move {
            admin
                .finalise_settlement(pb::FinaliseSettlementRequest { period })
                .await
                .unwrap()
        }
    };

    let dir = std::env::temp_dir().join(format!(
        "coalition-payments-test-{}-{backend:?}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let keys = dir.join("keys");
    stdout(&coalition(&[
        "operator-key",
        "generate",
        "--dir",
        keys.to_str().unwrap(),
    ]));
    let key = keys.join("operator-1.pub");
    let export = |label: &str| {
        let out = dir.join(label);
        stdout(&coalition(&[
            "export",
            "--database-url",
            &server.database.url,
            "--period",
            label,
            "--out",
            out.to_str().unwrap(),
            "--operator-keys",
            keys.to_str().unwrap(),
        ]));
        stdout(&coalition(&[
            "verify",
            out.to_str().unwrap(),
            "--operator-key",
            key.to_str().unwrap(),
        ]));
        out
    };
    /// The rows of payments.csv: merchant, direction, amount, period net, payable, reference.
    fn payments(folder: &std::path::Path) -> Vec<(String, String, i64, i64, i64, String)> {
        let mut reader = csv::Reader::from_path(folder.join("payments.csv")).unwrap();
        let headers = reader.headers().unwrap().clone();
        let column = |name: &str| headers.iter().position(|header| header == name).unwrap();
        let number = |record: &csv::StringRecord, name: &str| -> i64 {
            record[column(name)].parse().unwrap()
        };
        reader
            .records()
            .map(|record| {
                let record = record.unwrap();
                (
                    record[column("merchant_id")].to_owned(),
                    record[column("direction")].to_owned(),
                    number(&record, "amount_minor"),
                    number(&record, "period_net_minor"),
                    number(&record, "payable_minor"),
                    record[column("end_to_end_id")].to_owned(),
                )
            })
            .collect()
    }

    finalise(first.label.clone()).await;
    let first_dir = export(&first.label);
    let lines = payments(&first_dir);
    let summary: Vec<_> = lines
        .iter()
        .map(|(merchant, direction, amount, ..)| (merchant.as_str(), direction.as_str(), *amount))
        .collect();
    assert_eq!(
        summary,
        [
            ("cinema-1", "operator_pays", 950),
            ("con", "operator_pays", 475),
            (long_1, "operator_pays", 95),
            (long_2, "operator_pays", 95),
            ("tenant-1", "merchant_pays", 10_500),
        ]
    );
    let references: std::collections::BTreeSet<_> =
        lines.iter().map(|line| line.5.clone()).collect();
    assert_eq!(
        references.len(),
        lines.len(),
        "references are unique: {references:?}"
    );
    assert!(references.iter().all(|reference| reference.len() <= 35));
    assert!(references.contains(&format!("COAL-{}-cinema-1", first.label.replace('-', ""))));
    // The reserved name got a safe file name, and verify found the statement by it.
    assert!(first_dir.join("statements/%63on.jsonl.gz").exists());
    let pain = std::fs::read_to_string(first_dir.join("payments.pain.001.xml")).unwrap();
    assert_eq!(pain.matches("<CdtTrfTxInf>").count(), 4, "{pain}");
    assert!(pain.contains("<CtrlSum>16.15</CtrlSum>"), "{pain}");
    assert!(!pain.contains("tenant-1</Id>"), "{pain}");
    // Each payment is exactly what RecordPayout accepts: one minor unit more is refused.
    let (_, _, amount, _, _, reference) = &lines[0];
    let refused = admin
        .record_payout(pb::RecordPayoutRequest {
            merchant_id: "cinema-1".into(),
            amount_minor: amount + 1,
            reference: reference.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    let paid = admin
        .record_payout(pb::RecordPayoutRequest {
            merchant_id: "cinema-1".into(),
            amount_minor: *amount,
            reference: reference.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(paid.payable_minor, 0);

    // The tenant's own net of the second period is +950, but it still owes 10,500: the file
    // collects 9,550 and pays it nothing. The unpaid redeemers are still owed.
    finalise(second.label.clone()).await;
    let second_dir = export(&second.label);
    let lines = payments(&second_dir);
    let tenant_line = lines.iter().find(|line| line.0 == "tenant-1").unwrap();
    assert_eq!(
        (
            tenant_line.1.as_str(),
            tenant_line.2,
            tenant_line.3,
            tenant_line.4
        ),
        ("merchant_pays", 9_550, 950, -9_550)
    );
    assert!(
        lines.iter().all(|line| line.0 != "cinema-1"),
        "cinema-1 was paid"
    );
    let pain = std::fs::read_to_string(second_dir.join("payments.pain.001.xml")).unwrap();
    assert!(!pain.contains("tenant-1"), "{pain}");
    assert_eq!(pain.matches("<CdtTrfTxInf>").count(), 3, "{pain}");
    let refused = admin
        .record_payout(pb::RecordPayoutRequest {
            merchant_id: "tenant-1".into(),
            amount_minor: 950,
            reference: "COAL-x".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    // Pay what the file says, and the third period owes nobody anything: no pain.001.
    for (merchant, direction, amount, _, _, reference) in &lines {
        if direction == "operator_pays" {
            admin
                .record_payout(pb::RecordPayoutRequest {
                    merchant_id: merchant.clone(),
                    amount_minor: *amount,
                    reference: reference.clone(),
                })
                .await
                .unwrap();
        }
    }
    finalise(third.label.clone()).await;
    let third_dir = export(&third.label);
    assert!(!third_dir.join("payments.pain.001.xml").exists());
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(third_dir.join("manifest.json")).unwrap())
            .unwrap();
    assert_eq!(manifest["omitted"][0]["path"], "payments.pain.001.xml");
    assert!(
        payments(&third_dir)
            .iter()
            .all(|line| line.1 == "merchant_pays")
    );

    coalition_integration_tests::validate_pain_001(
        &std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("python-xsd"),
        &[
            &first_dir.join("payments.pain.001.xml"),
            &second_dir.join("payments.pain.001.xml"),
        ],
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Logs written to a file or a pipe carry no colour codes.
#[test]
fn logs_to_a_pipe_have_no_colour() {
    use std::io::Read;
    let dir = std::env::temp_dir().join(format!("coalition-log-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let database = format!("sqlite://{}", dir.join("ledger.db").display());
    let (mut server, _) = spawn_server(
        SERVER,
        &database,
        &[
            ("COALITION_LOG_FORMAT", "text"),
            ("COALITION_LOG_FILTER", "info"),
        ],
    );
    // The server has logged its start by the time it printed its address.
    server.kill().unwrap();
    let mut logs = String::new();
    server
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut logs)
        .unwrap();
    assert!(logs.contains("INFO"), "nothing was logged: {logs:?}");
    assert!(!logs.contains('\u{1b}'), "colour codes in a pipe: {logs:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for item in std::fs::read_dir(from).unwrap() {
        let path = item.unwrap().path();
        let target = to.join(path.file_name().unwrap());
        if path.is_dir() {
            copy_dir(&path, &target);
        } else {
            std::fs::copy(&path, &target).unwrap();
        }
    }
}

on_both_backends!(
    the_cli_registers_enrolls_submits_and_reads,
    the_cli_reconciles_a_merchant_file,
    the_cli_settles_exports_and_verifies_consecutive_periods,
    payments_pay_only_what_is_payable,
);

//! The README's promises: its worked signing example is what the code computes and what the
//! server accepts, and the demo clears a (scaled-down) mall day end to end on both backends.

use std::process::Command;

use coalition_domain::signing;
use coalition_grpc::pb;
use coalition_integration_tests::{
    Backend, ServerProcess, TestDatabase, TestServer, accepted, on_both_backends, register_merchant,
};
use ed25519_dalek::SigningKey;

/// The README of the checkout under test, found at run time so a test binary reused from
/// another checkout (a shared target directory) reads this one.
fn readme_path() -> std::path::PathBuf {
    let manifest =
        std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").into());
    std::path::Path::new(&manifest).join("../README.md")
}

#[test]
fn the_readme_shows_the_worked_example_as_computed() {
    let readme = std::fs::read_to_string(readme_path()).unwrap();
    let example = coalition::cli::sign_example();
    for line in example.lines() {
        assert!(
            readme.contains(line),
            "README.md lacks the line {line:?}; run `coalition sign-example`"
        );
    }
    // Check the example independently of the signer: verify the printed signature over the
    // printed message with the printed public key.
    let value = |label: &str| {
        let line = example
            .lines()
            .find(|line| line.starts_with(label))
            .unwrap();
        hex::decode(line.rsplit(' ').next().unwrap()).unwrap()
    };
    let public_key = signing::parse_public_key(&value("public key")).unwrap();
    let body = value("body");
    let message = value("signed message");
    assert_eq!(
        message,
        [signing::SUBMISSION_DOMAIN, body.as_slice()].concat()
    );
    let signature = signing::parse_signature(&value("signature")).unwrap();
    assert_eq!(
        signing::verify(&public_key, signing::SUBMISSION_DOMAIN, &body, &signature),
        Ok(())
    );
    // The signed query: its bytes decode to the query the README describes, and the
    // signature verifies over the query prefix and those bytes, and over nothing else.
    let query = value("query (hex)");
    assert_eq!(
        <pb::BalanceQuery as prost::Message>::decode(query.as_slice()).unwrap(),
        coalition::cli::example_query()
    );
    assert_eq!(
        value("signed query message"),
        [signing::QUERY_DOMAIN, query.as_slice()].concat()
    );
    let query_signature = signing::parse_signature(&value("query signature")).unwrap();
    assert_eq!(
        signing::verify(&public_key, signing::QUERY_DOMAIN, &query, &query_signature),
        Ok(())
    );
    assert!(
        signing::verify(
            &public_key,
            signing::SUBMISSION_DOMAIN,
            &query,
            &query_signature
        )
        .is_err()
    );
}

async fn the_readme_example_is_accepted_by_a_server(backend: Backend) {
    let server = TestServer::start(backend).await;
    let key = SigningKey::from_bytes(&std::array::from_fn(|index| index as u8));
    let signer = register_merchant(
        &server.channel,
        "tenant-001",
        pb::MerchantCategory::MallTenant,
        key.clone(),
        &["member-000042"],
    )
    .await;
    // The example happened on 2026-01-01; bring it within the offline window.
    let mut body = coalition::cli::example_body();
    body.occurred_at_unix_ms = server.now_ms();
    let result = server.submit(signer.envelope(&body)).await;
    assert_eq!(accepted(&result).member_points_balance, 180);
    // The signed query of the README, issued now, reads that balance back.
    let mut query = coalition::cli::example_query();
    query.issued_at_unix_ms = server.now_ms();
    let query_bytes = prost::Message::encode_to_vec(&query);
    let signature = signing::sign(&key, signing::QUERY_DOMAIN, &query_bytes);
    let balance = pb::query_service_client::QueryServiceClient::new(server.channel.clone())
        .get_balance(pb::GetBalanceRequest {
            query: query_bytes,
            signature: Some(pb::QuerySignature {
                merchant_id: "tenant-001".into(),
                key_id: signer.key_id.clone(),
                signature: signature.to_vec(),
            }),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(balance.points, 180);
}

async fn the_demo_clears_a_mall_day(backend: Backend) {
    let database = TestDatabase::new(backend).await;
    let dir = std::env::temp_dir().join(format!(
        "coalition-demo-test-{}-{backend:?}",
        std::process::id()
    ));
    let mut command = Command::new(env!("CARGO_BIN_EXE_coalition-under-test"));
    command
        .args(["demo", "--scale", "0.02", "--quiet", "--serve"])
        .args(["--console-address", "127.0.0.1:0", "--dir"])
        .arg(&dir);
    if backend == Backend::Postgres {
        command.args(["--database-url", &database.url]);
    }
    // With --serve the demo keeps its server and console running after the summary, until
    // it is interrupted: the console answers on the address the summary names, with the
    // day's settlement behind the admin token it prints.
    let mut demo = ServerProcess(
        command
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let reader = std::io::BufReader::new(demo.stdout.take().unwrap());
    let mut stdout = String::new();
    let mut lines = std::io::BufRead::lines(reader);
    for line in lines.by_ref() {
        let line = line.unwrap();
        stdout.push_str(&line);
        stdout.push('\n');
        if line.starts_with("admin token") {
            break;
        }
    }
    let field = |name: &str| {
        stdout
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .map(|rest| {
                rest.split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .to_owned()
            })
            .unwrap_or_else(|| panic!("the summary names its {name}:\n{stdout}"))
    };
    let console = field("console               ");
    let token = field("admin token           ");
    let period = stdout
        .lines()
        .find_map(|line| line.strip_prefix("settlement period "))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("the summary shows a settled period:\n{stdout}"))
        .to_owned();
    let base = console.trim_end_matches('/');
    let session = coalition_integration_tests::console_sign_in(base, &token).await;
    let (status, _, page) = coalition_integration_tests::http_get(
        base,
        &format!("/settlement?period={period}"),
        Some(&session),
    )
    .await;
    let page = String::from_utf8_lossy(&page);
    assert_eq!(status, 200);
    // No Accept-Language: the console speaks Chinese first.
    assert!(page.contains("id=\"status\">已定稿"), "{page}");
    let interrupted = Command::new("kill")
        .args(["-INT", &demo.id().to_string()])
        .status()
        .unwrap();
    assert!(interrupted.success());
    for line in lines {
        stdout.push_str(&line.unwrap());
        stdout.push('\n');
    }
    let status = demo.wait().unwrap();
    assert!(status.success(), "demo failed:\n{stdout}");
    assert!(stdout.contains("ledger check          OK"), "{stdout}");
    // Every finalised period is exported: the day's, and the expiry run's a year later
    // (which holds the day's closing entries; they verified as a chain above).
    let mut exports: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|item| item.unwrap().path())
        .filter(|path| {
            path.file_name()
                .is_some_and(|name| name.to_string_lossy().starts_with("export-"))
        })
        .collect();
    exports.sort();
    assert!(exports.len() >= 2, "{exports:?}");
    assert!(
        stdout.contains("continues the period before it, whose closing entries it checks"),
        "{stdout}"
    );
    assert!(stdout.contains("entries of period"), "{stdout}");
    assert!(dir.join("member.proof.json").exists());
    // The day's payments file pays the redeemers: its pain.001 is valid.
    let export = &exports[0];
    coalition_integration_tests::validate_pain_001(
        &std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("python-xsd"),
        &[&export.join("payments.pain.001.xml")],
    );
    assert!(
        stdout.contains("outcomes              exactly as planted"),
        "{stdout}"
    );
    assert!(
        stdout.contains("REJECTION_REASON_SIGNATURE_INVALID"),
        "{stdout}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

on_both_backends!(
    the_readme_example_is_accepted_by_a_server,
    the_demo_clears_a_mall_day
);

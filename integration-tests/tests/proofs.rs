//! Inclusion proofs against a period's signed export: every entry of a small period proves
//! and verifies with the operator's public key alone; a proof with one byte changed, for
//! another period, or against a manifest signed by another key does not. The same proofs
//! come from the CLI (`coalition prove`, `coalition verify-proof`) and from the admin call
//! ProveEntries on a running server.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use coalition::export::{ExportOptions, signed_message};
use coalition::proof::{Proof, Subject, export_folder, prove, verify_proof};
use coalition_grpc::pb;
use coalition_integration_tests::{
    ADMIN_TOKEN, Backend, TestDatabase, TestServer, accepted, on_both_backends, test_config,
};
use ed25519_dalek::Signer;

const CLI: &str = env!("CARGO_BIN_EXE_coalition-under-test");
const HOUR_MS: i64 = 3_600_000;

fn coalition(arguments: &[&str]) -> Output {
    Command::new(CLI)
        .args(arguments)
        .env("COALITION_ADMIN_TOKEN", ADMIN_TOKEN)
        .output()
        .expect("run the CLI")
}

fn entry_records(folder: &Path) -> Vec<coalition::export::EntryRecord> {
    coalition::export::read_lines(folder, coalition::export::ENTRIES_FILE)
        .unwrap()
        .map(|line| serde_json::from_str(&line.unwrap()).unwrap())
        .collect()
}

/// The subject whose proof lists this entry: its transaction, else its member, else a
/// merchant it posts to.
fn subject_of(record: &coalition::export::EntryRecord) -> Subject {
    match (
        &record.merchant_id,
        &record.merchant_transaction_id,
        &record.member_id,
    ) {
        (Some(merchant_id), Some(transaction_id), _) => Subject::Transaction {
            merchant_id: merchant_id.clone(),
            transaction_id: transaction_id.clone(),
        },
        (_, _, Some(member_id)) => Subject::Member {
            member_id: member_id.clone(),
        },
        _ => Subject::Merchant {
            merchant_id: record
                .postings
                .iter()
                .find(|posting| posting.account_kind.starts_with("merchant_"))
                .expect("an entry without a member posts to a merchant")
                .owner
                .clone(),
        },
    }
}

fn problems(proof: &Proof, key: &ed25519_dalek::VerifyingKey) -> String {
    verify_proof(proof, key)
        .expect_err("must not verify")
        .join("; ")
}

async fn proofs_of_every_entry_verify_and_altered_ones_do_not(backend: Backend) {
    let database = TestDatabase::new(backend).await;
    let files = std::env::temp_dir().join(format!(
        "coalition-proofs-{}-{backend:?}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&files);
    let exports = files.join("exports");
    let mut config = test_config(&database.url);
    config.console_exports_dir = exports.display().to_string();
    let server = TestServer::start_on(database, config).await;
    let (tenant, cinema) = server.tenant_and_cinema().await;
    server.enroll(&["m-1", "m-2", "m-3"]).await;
    let cutoff = server.config.engine().settlement_cutoff;
    let first = cutoff.next(&cutoff.period_at(server.now_ms()));
    let second = cutoff.next(&first);
    server.clock.set(first.start_ms + HOUR_MS);
    for (index, member) in ["m-1", "m-2", "m-3", "m-1", "m-2"].iter().enumerate() {
        let merchant = if index % 2 == 0 { &tenant } else { &cinema };
        accepted(
            &server
                .earn(merchant, &format!("e-{index}"), member, 100 + index as i64)
                .await,
        );
    }
    accepted(&server.burn(&cinema, "b-1", "m-1", 50).await);
    accepted(&server.burn(&tenant, "b-2", "m-3", 20).await);
    // Enough of the cinema's earns that its proof is over a megabyte: it comes over gRPC
    // in more than one piece.
    let many: Vec<pb::Envelope> = (0..900)
        .map(|index| {
            cinema.envelope(&server.body(
                &cinema,
                pb::TransactionKind::Earn,
                &format!("many-{index}"),
                "m-2",
                1,
            ))
        })
        .collect();
    for result in server.submit_batch(many).await {
        accepted(&result);
    }
    // The first period is finalised during the second, which so holds its closing entry;
    // the third has no entry and is never finalised; the fourth continues the chain.
    server.clock.set(second.start_ms + HOUR_MS);
    let finalise = |period: &coalition_domain::settlement::Period| {
        let mut admin = server.admin();
        let period = period.label.clone();
        async move {
            admin
                .finalise_settlement(pb::FinaliseSettlementRequest { period })
                .await
                .expect("finalise")
        }
    };
    finalise(&first).await;
    accepted(&server.earn(&tenant, "e-second", "m-2", 7).await);
    let fourth = cutoff.next(&cutoff.next(&second));
    server.clock.set(fourth.start_ms + HOUR_MS);
    finalise(&second).await;
    accepted(&server.earn(&cinema, "e-fourth", "m-3", 9).await);
    server.clock.set(fourth.end_ms + HOUR_MS);
    finalise(&fourth).await;
    let keys = files.join("keys");
    coalition::operator_key::generate(&keys).unwrap();
    let key = coalition::operator_key::read_public_key(&keys.join("operator-1.pub")).unwrap();
    for period in [&first, &second, &fourth] {
        coalition::export::export(&ExportOptions {
            database_url: server.database.url.clone(),
            period: period.clone(),
            cutoff,
            out: export_folder(&exports, &period.label),
            operator_keys: keys.clone(),
            reconcile: Vec::new(),
            formats: coalition::export::Formats::default(),
        })
        .await
        .expect("export");
    }
    let first_dir = export_folder(&exports, &first.label);
    let second_dir = export_folder(&exports, &second.label);
    let fourth_dir = export_folder(&exports, &fourth.label);

    // The three exports verify and chain over the empty third period; the second holds the
    // first's closing entry, which moves exactly the first settlement's nets.
    let verified: Vec<_> = [&first_dir, &second_dir, &fourth_dir]
        .iter()
        .map(|folder| coalition::verify::verify_folder(folder, &[key]).unwrap())
        .collect();
    for one in &verified {
        assert!(one.problems.is_empty(), "{:?}", one.problems);
    }
    assert!(coalition::verify::chain_problems(&verified[0], &verified[1]).is_empty());
    assert!(coalition::verify::chain_problems(&verified[1], &verified[2]).is_empty());
    let first_manifest = verified[0].manifest.as_ref().unwrap();
    let closing = first_manifest.closing_sequence.expect("a closing entry");
    assert!(
        verified[1]
            .closings
            .iter()
            .any(|entry| entry.sequence == closing)
    );
    assert!(coalition::verify::closing_problems(&verified[0], &verified[1]).is_empty());
    // What payables.jsonl says was payable after the closing entry is checked against the
    // first period's closing balances and the second's payable postings up to it.
    assert!(!verified[0].payables.is_empty());
    let mut wrong = coalition::verify::verify_folder(&first_dir, &[key]).unwrap();
    *wrong.payables.values_mut().next().unwrap() += 1;
    let found = coalition::verify::closing_problems(&wrong, &verified[1]);
    assert!(
        found
            .iter()
            .any(|problem| problem.contains("payables.jsonl is not what was payable")),
        "{found:?}"
    );
    // A settlement whose nets differ from what its closing entry moved is reported.
    let mut different = coalition::verify::verify_folder(&first_dir, &[key]).unwrap();
    let settlement = different.settlement.as_mut().unwrap();
    settlement.merchants[0].net_minor += 1;
    settlement.merchants[1].net_minor -= 1;
    let found = coalition::verify::closing_problems(&different, &verified[1]);
    assert!(
        found
            .iter()
            .any(|problem| problem.contains("does not move its settlement's nets")),
        "{found:?}"
    );
    // Skipping a period that has entries breaks the chain.
    let skipped = coalition::verify::chain_problems(&verified[0], &verified[2]);
    assert!(
        skipped
            .iter()
            .any(|problem| problem.contains("does not continue the hash chain")),
        "{skipped:?}"
    );
    let reversed = coalition::verify::chain_problems(&verified[2], &verified[1]);
    assert!(
        reversed
            .iter()
            .any(|problem| problem.contains("starts before")),
        "{reversed:?}"
    );

    // Every entry of the first period (earns, burns, and the opening period's closing entry
    // if any) proves and verifies; the proof of a subject lists exactly its entries.
    let records = entry_records(&first_dir);
    assert!(records.len() >= 7, "{} entries", records.len());
    for record in &records {
        let subject = subject_of(record);
        let proof = prove(&first_dir, &subject).expect("prove");
        assert!(
            proof.entries.iter().any(|proved| proved.entry == *record),
            "{subject} lists entry {}",
            record.sequence
        );
        let expected = records
            .iter()
            .filter(|other| subject.concerns(other))
            .count();
        assert_eq!(proof.entries.len(), expected, "{subject}");
        let checked = verify_proof(&proof, &key).expect("verifies");
        assert_eq!(checked.manifest.period, first.label);
    }

    let proof = prove(
        &first_dir,
        &Subject::Member {
            member_id: "m-1".into(),
        },
    )
    .unwrap();
    assert_eq!(proof.entries.len(), 3, "two earns and a burn");
    // One byte of a path changed.
    let mut altered = proof.clone();
    let node = &mut altered.entries[0].path[0];
    let flipped = if node.starts_with('0') { "1" } else { "0" };
    node.replace_range(0..1, flipped);
    assert!(problems(&altered, &key).contains("does not lead to the root"));
    // An entry's points changed: its fields no longer give its hash.
    let mut altered = proof.clone();
    altered.entries[1].entry.points += 1;
    assert!(problems(&altered, &key).contains("its fields hash to"));
    // The entry moved to another leaf.
    let mut altered = proof.clone();
    altered.entries[0].leaf_index += 1;
    assert!(problems(&altered, &key).contains("at leaf"));
    // The same entries against the next period's signed manifest.
    let mut altered = proof.clone();
    altered.manifest = std::fs::read_to_string(second_dir.join("manifest.json")).unwrap();
    altered.signature = std::fs::read_to_string(second_dir.join("manifest.sig"))
        .unwrap()
        .trim()
        .to_owned();
    let found = problems(&altered, &key);
    assert!(found.contains("does not lead to the root"), "{found}");
    // The manifest re-signed by another key: with the operator's key the signature fails,
    // with the other key the manifest does not name it.
    let other = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
    let mut altered = proof.clone();
    altered.signature = hex::encode(
        other
            .sign(&signed_message(altered.manifest.as_bytes()))
            .to_bytes(),
    );
    assert!(problems(&altered, &key).contains("signature does not verify"));
    assert!(problems(&altered, &other.verifying_key()).contains("not the key given"));
    // A manifest edited (its root swapped for another) fails its signature.
    let mut altered = proof.clone();
    let manifest: coalition::export::Manifest = serde_json::from_str(&proof.manifest).unwrap();
    altered.manifest = proof
        .manifest
        .replace(&manifest.entries_root, &"ab".repeat(32));
    assert!(problems(&altered, &key).contains("signature does not verify"));
    // Another member's entry slipped into a member's proof.
    let mut altered = proof.clone();
    let stranger = prove(
        &first_dir,
        &Subject::Member {
            member_id: "m-2".into(),
        },
    )
    .unwrap();
    altered.entries.push(stranger.entries[0].clone());
    assert!(problems(&altered, &key).contains("does not concern member m-1"));
    // Nothing to prove, and no export.
    let nothing = prove(
        &first_dir,
        &Subject::Member {
            member_id: "m-9".into(),
        },
    );
    assert!(matches!(
        nothing,
        Err(coalition::proof::ProveError::NothingFound { .. })
    ));
    assert!(matches!(
        prove(&files.join("nowhere"), &proof.subject),
        Err(coalition::proof::ProveError::NoExport { .. })
    ));

    // The command line: prove from the export, verify with the .pub file.
    let proof_file = files.join("e-1.proof.json");
    let made = coalition(&[
        "prove",
        "--export",
        first_dir.to_str().unwrap(),
        "--transaction",
        &format!("{}/e-1", cinema.merchant_id),
        "--out",
        proof_file.to_str().unwrap(),
    ]);
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let public = keys.join("operator-1.pub");
    let checked = coalition(&[
        "verify-proof",
        proof_file.to_str().unwrap(),
        "--operator-key",
        public.to_str().unwrap(),
    ]);
    let printed = String::from_utf8_lossy(&checked.stdout);
    assert!(checked.status.success(), "{printed}");
    assert!(printed.contains("1 entries proved"), "{printed}");
    // The same file with one byte of its entry changed: refused, non-zero.
    let text = std::fs::read_to_string(&proof_file).unwrap();
    let tampered = files.join("tampered.proof.json");
    std::fs::write(
        &tampered,
        text.replacen("\"points\":101", "\"points\":102", 1),
    )
    .unwrap();
    assert_ne!(text, std::fs::read_to_string(&tampered).unwrap());
    let refused = coalition(&[
        "verify-proof",
        tampered.to_str().unwrap(),
        "--operator-key",
        public.to_str().unwrap(),
    ]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stdout).contains("its fields hash to"));

    // The admin call, from the server's exports folder, by the period's label; and through
    // `coalition admin prove`.
    let mut admin = server.admin();
    let mut pieces = admin
        .prove_entries(pb::ProveEntriesRequest {
            period: first.label.clone(),
            subject: Some(pb::prove_entries_request::Subject::MerchantId(
                cinema.merchant_id.clone(),
            )),
        })
        .await
        .expect("ProveEntries")
        .into_inner();
    let mut joined = Vec::new();
    let mut entries = 0;
    let mut count = 0;
    while let Some(piece) = pieces.message().await.expect("a piece") {
        joined.extend_from_slice(&piece.proof_json_piece);
        entries = piece.entries;
        count += 1;
    }
    assert!(count >= 2, "{} bytes in {count} pieces", joined.len());
    let proof: Proof = serde_json::from_slice(&joined).unwrap();
    assert_eq!(entries as usize, proof.entries.len());
    // The server's proof is the one the export folder gives.
    let from_folder = prove(
        &first_dir,
        &Subject::Merchant {
            merchant_id: cinema.merchant_id.clone(),
        },
    )
    .unwrap();
    assert_eq!(proof, from_folder);
    assert!(proof.entries.len() >= 903, "the cinema's earns and burn");
    verify_proof(&proof, &key).expect("the server's proof verifies");
    // A merchant's proof is complete: one entry left out, or one listed twice, is found.
    let mut short = proof.clone();
    short.entries.remove(1);
    let found = problems(&short, &key);
    assert!(
        found.contains("lists 902 of the 903 entries of merchant"),
        "{found}"
    );
    let mut doubled = proof.clone();
    doubled.entries.insert(1, doubled.entries[0].clone());
    doubled.entries.remove(2);
    let found = problems(&doubled, &key);
    assert!(
        found.contains("not in order, or one is listed twice"),
        "{found}"
    );
    let endpoint = server.server.endpoint();
    let from_server = files.join("member.proof.json");
    let asked = coalition(&[
        "admin",
        "--server",
        &endpoint,
        "prove",
        "--period",
        &first.label,
        "--member",
        "m-3",
        "--out",
        from_server.to_str().unwrap(),
    ]);
    assert!(
        asked.status.success(),
        "{}",
        String::from_utf8_lossy(&asked.stderr)
    );
    let checked = coalition(&[
        "verify-proof",
        from_server.to_str().unwrap(),
        "--operator-key",
        public.to_str().unwrap(),
    ]);
    assert!(
        checked.status.success(),
        "{}",
        String::from_utf8_lossy(&checked.stdout)
    );
    // What the call refuses.
    let ask = |period: &str, subject| {
        let mut admin = server.admin();
        let period = period.to_owned();
        async move {
            match admin
                .prove_entries(pb::ProveEntriesRequest {
                    period,
                    subject: Some(subject),
                })
                .await
            {
                Err(status) => status,
                Ok(_) => panic!("refused"),
            }
        }
    };
    let member = |id: &str| pb::prove_entries_request::Subject::MemberId(id.into());
    let status = ask(&cutoff.next(&second).label, member("m-1")).await;
    assert_eq!(status.code(), tonic::Code::NotFound, "{status:?}");
    let status = ask(&cutoff.next(&fourth).label, member("m-1")).await;
    assert_eq!(status.code(), tonic::Code::NotFound, "{status:?}");
    assert!(status.message().contains("has no signed export"));
    let status = ask(&first.label, member("m-9")).await;
    assert_eq!(status.code(), tonic::Code::NotFound, "{status:?}");
    let status = ask("../keys", member("m-1")).await;
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    // Shaped like a date, but not one: read by the cut-off's own parser.
    let status = ask("2026-13-40", member("m-1")).await;
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    let status = ask(
        &first.label,
        pb::prove_entries_request::Subject::Transaction(pb::MerchantTransaction {
            merchant_id: "no such merchant!".into(),
            transaction_id: "x".into(),
        }),
    )
    .await;
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    let mut anonymous = pb::admin_service_client::AdminServiceClient::new(server.channel.clone());
    let Err(status) = anonymous
        .prove_entries(pb::ProveEntriesRequest {
            period: first.label.clone(),
            subject: Some(member("m-1")),
        })
        .await
    else {
        panic!("needs the admin token");
    };
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    let _ = std::fs::remove_dir_all(PathBuf::from(&files));
}

on_both_backends!(proofs_of_every_entry_verify_and_altered_ones_do_not);

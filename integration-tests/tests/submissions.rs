//! Submitting over gRPC: earn and burn, idempotent retries, batches with bad items, the
//! stream, concurrent burns for one member, key rotation.
//!
//! Longer than 800 lines: one scenario per test, each run on both backends, kept in one
//! file per area so that the scenarios share their helpers.

use std::collections::HashSet;

use coalition_grpc::pb;
use coalition_integration_tests::{
    Backend, TestServer, accepted, new_key, on_both_backends, rejection,
};
use tokio::task::JoinSet;

async fn earn_then_burn_moves_points_and_books_balanced_entries(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (tenant, cinema) = server.tenant_and_cinema().await;
    server.enroll(&["m-1"]).await;

    let earned = server.earn(&tenant, "e-1", "m-1", 500).await;
    let earned = accepted(&earned);
    assert_eq!(
        (
            earned.entry_sequence,
            earned.points,
            earned.member_points_balance
        ),
        (1, 500, 500)
    );
    assert!(!earned.duplicate);
    let burned = server.burn(&cinema, "b-1", "m-1", 200).await;
    let burned = accepted(&burned);
    assert_eq!(
        (burned.entry_sequence, burned.member_points_balance),
        (2, 300)
    );
    assert_eq!(burned.kind, pb::TransactionKind::Burn as i32);
    assert_eq!(server.balance("m-1").await, 300);
    let report = server.check().await;
    assert!(report.is_sound(), "{:?}", report.problems);
    assert_eq!(report.entries, 2);
}

async fn a_retry_returns_the_original_result_and_a_changed_body_conflicts(backend: Backend) {
    let server = TestServer::start(backend).await;
    let tenant = server
        .merchant("tenant-1", pb::MerchantCategory::MallTenant)
        .await;
    server.enroll(&["m-1"]).await;
    let body = server.body(&tenant, pb::TransactionKind::Earn, "e-1", "m-1", 100);
    let envelope = tenant.envelope(&body);
    let first = server.submit(envelope.clone()).await;
    server.clock.advance(5_000);
    let again = server.submit(envelope).await;
    let (first, again) = (accepted(&first), accepted(&again));
    assert!(again.duplicate);
    assert_eq!(again.entry_sequence, first.entry_sequence);
    assert_eq!(again.accepted_at_unix_ms, first.accepted_at_unix_ms);
    assert_eq!(again.member_points_balance, 100);
    let mut changed = body.clone();
    changed.points = 101;
    let conflict = server.submit(tenant.envelope(&changed)).await;
    assert_eq!(
        rejection(&conflict),
        pb::RejectionReason::TransactionIdConflict
    );
    assert_eq!(server.balance("m-1").await, 100, "nothing applied twice");
    // Another merchant may use the same transaction id: ids are per merchant.
    let other = server
        .merchant("tenant-2", pb::MerchantCategory::MallTenant)
        .await;
    accepted(&server.earn(&other, "e-1", "m-1", 1).await);
}

async fn a_retry_long_after_the_offline_window_gets_its_original_result(backend: Backend) {
    let database = coalition_integration_tests::TestDatabase::new(backend).await;
    let mut config = coalition_integration_tests::test_config(&database.url);
    config.offline_window_ms = 6_000;
    let server = TestServer::start_on(database, config).await;
    let tenant = server
        .merchant("tenant-1", pb::MerchantCategory::MallTenant)
        .await;
    server.enroll(&["m-1"]).await;
    // A terminal flushes its offline backlog: the transaction happened 3.5 s ago, inside the
    // 6 s window, and is booked, but the answer is lost.
    let mut body = server.body(&tenant, pb::TransactionKind::Earn, "e-1", "m-1", 100);
    body.occurred_at_unix_ms = server.now_ms() - 3_500;
    let envelope = tenant.envelope(&body);
    let first = accepted(&server.submit(envelope.clone()).await).clone();
    assert!(!first.duplicate);
    // 3.5 s later the very same envelope is past the window: it is still the original.
    server.clock.advance(3_500);
    let again = server.submit(envelope.clone()).await;
    let again = accepted(&again);
    assert!(again.duplicate);
    assert_eq!(again.entry_sequence, first.entry_sequence);
    assert_eq!(again.member_points_balance, 100);
    // A changed body under that id is a conflict, not "too old"; a new id that old is too old.
    let mut changed = body.clone();
    changed.points = 101;
    assert_eq!(
        rejection(&server.submit(tenant.envelope(&changed)).await),
        pb::RejectionReason::TransactionIdConflict
    );
    let mut late = body.clone();
    late.merchant_transaction_id = "e-2".into();
    assert_eq!(
        rejection(&server.submit(tenant.envelope(&late)).await),
        pb::RejectionReason::OccurredAtBeyondOfflineWindow
    );
    // Two days on the writer has long forgotten the receipt (it keeps those of the window,
    // the skew and an hour, and forgets after each batch): the journal still answers.
    server.clock.advance(2 * 86_400_000);
    accepted(&server.earn(&tenant, "e-3", "m-1", 1).await);
    let much_later = server.submit(envelope.clone()).await;
    assert!(accepted(&much_later).duplicate);
    assert_eq!(accepted(&much_later).entry_sequence, first.entry_sequence);
    // And after a restart (whose clock starts at the wall clock again: move it on).
    let server = server.restart().await;
    server.clock.advance(3 * 86_400_000);
    let restarted = server.submit(envelope.clone()).await;
    assert!(accepted(&restarted).duplicate);
    assert_eq!(accepted(&restarted).entry_sequence, first.entry_sequence);
    // Also in a batch, next to a new transaction that is too old.
    let results = server
        .submissions()
        .submit_batch(pb::SubmitBatchRequest {
            envelopes: vec![envelope.clone(), tenant.envelope(&late)],
        })
        .await
        .unwrap()
        .into_inner()
        .results;
    assert!(accepted(&results[0]).duplicate);
    assert_eq!(
        rejection(&results[1]),
        pb::RejectionReason::OccurredAtBeyondOfflineWindow
    );
    assert_eq!(server.balance("m-1").await, 101, "nothing was booked twice");
    assert!(server.check().await.is_sound());
}

async fn a_retry_signed_with_a_revoked_key_is_refused_and_re_signing_it_returns_the_original(
    backend: Backend,
) {
    let server = TestServer::start(backend).await;
    let tenant = server
        .merchant("tenant-1", pb::MerchantCategory::MallTenant)
        .await;
    server.enroll(&["m-1"]).await;
    let body = server.body(&tenant, pb::TransactionKind::Earn, "e-1", "m-1", 100);
    let first = accepted(&server.submit(tenant.envelope(&body)).await).clone();
    let rotated = server.rotate_key(&tenant, "key-2").await;
    // The old key tells nothing, not even whether the transaction was booked.
    assert_eq!(
        rejection(&server.submit(tenant.envelope(&body)).await),
        pb::RejectionReason::KeyRevoked
    );
    // The same body bytes signed with the key in force: the original result.
    let resent = server.submit(rotated.envelope(&body)).await;
    let resent = accepted(&resent);
    assert!(resent.duplicate);
    assert_eq!(resent.entry_sequence, first.entry_sequence);
    assert_eq!(server.balance("m-1").await, 100);
}

async fn a_batch_keeps_every_good_item_around_the_bad_ones(backend: Backend) {
    let server = TestServer::start(backend).await;
    let tenant = server
        .merchant("tenant-1", pb::MerchantCategory::MallTenant)
        .await;
    server.enroll(&["m-1", "m-2"]).await;
    let mut envelopes = Vec::new();
    for index in 0..40 {
        let body = server.body(
            &tenant,
            pb::TransactionKind::Earn,
            &format!("e-{index}"),
            "m-1",
            10,
        );
        let mut envelope = tenant.envelope(&body);
        match index % 4 {
            1 => envelope.signature[0] ^= 1,
            2 => {
                let body = server.body(
                    &tenant,
                    pb::TransactionKind::Burn,
                    &format!("b-{index}"),
                    "m-2",
                    1_000,
                );
                envelope = tenant.envelope(&body);
            }
            _ => {}
        }
        envelopes.push(envelope);
    }
    // The same good envelope twice in one batch: the second is a duplicate.
    envelopes.push(envelopes[0].clone());
    let results = server
        .submissions()
        .submit_batch(pb::SubmitBatchRequest { envelopes })
        .await
        .unwrap()
        .into_inner()
        .results;
    assert_eq!(results.len(), 41);
    for (index, result) in results.iter().take(40).enumerate() {
        match index % 4 {
            1 => assert_eq!(rejection(result), pb::RejectionReason::SignatureInvalid),
            2 => assert_eq!(rejection(result), pb::RejectionReason::PointsInsufficient),
            _ => {
                assert!(!accepted(result).duplicate);
                assert_eq!(result.merchant_transaction_id, format!("e-{index}"));
            }
        }
    }
    assert!(accepted(&results[40]).duplicate);
    assert_eq!(server.balance("m-1").await, 20 * 10);
    let too_many = server
        .submissions()
        .submit_batch(pb::SubmitBatchRequest {
            envelopes: vec![pb::Envelope::default(); server.config.batch_request_len_max + 1],
        })
        .await
        .unwrap_err();
    assert_eq!(too_many.code(), tonic::Code::InvalidArgument);
    assert!(
        too_many.message().contains("at most"),
        "{}",
        too_many.message()
    );
}

async fn the_stream_answers_every_request_with_its_reference(backend: Backend) {
    let server = TestServer::start(backend).await;
    let tenant = server
        .merchant("tenant-1", pb::MerchantCategory::MallTenant)
        .await;
    server.enroll(&["m-1"]).await;
    let requests: Vec<pb::SubmitStreamRequest> = (0..200)
        .map(|index| {
            let member = if index == 7 { "stranger" } else { "m-1" };
            let body = server.body(
                &tenant,
                pb::TransactionKind::Earn,
                &format!("s-{index}"),
                member,
                1,
            );
            pb::SubmitStreamRequest {
                client_reference: format!("ref-{index}"),
                envelope: Some(tenant.envelope(&body)),
            }
        })
        .collect();
    let mut responses = server
        .submissions()
        .submit_stream(tokio_stream::iter(requests))
        .await
        .unwrap()
        .into_inner();
    let mut references = HashSet::new();
    while let Some(response) = responses.message().await.unwrap() {
        let result = response.result.unwrap();
        if response.client_reference == "ref-7" {
            assert_eq!(rejection(&result), pb::RejectionReason::MemberUnknown);
        } else {
            accepted(&result);
        }
        assert!(references.insert(response.client_reference));
    }
    assert_eq!(references.len(), 200);
    assert_eq!(server.balance("m-1").await, 199);
}

async fn a_bad_request_on_the_stream_is_one_refused_item_and_the_stream_goes_on(backend: Backend) {
    let server = TestServer::start(backend).await;
    let tenant = server
        .merchant("tenant-1", pb::MerchantCategory::MallTenant)
        .await;
    server.enroll(&["m-1"]).await;
    // Five earns, a request without an envelope, five more.
    let mut requests = Vec::new();
    for index in 0..11 {
        let envelope = (index != 5).then(|| {
            tenant.envelope(&server.body(
                &tenant,
                pb::TransactionKind::Earn,
                &format!("s-{index}"),
                "m-1",
                1,
            ))
        });
        requests.push(pb::SubmitStreamRequest {
            client_reference: format!("ref-{index}"),
            envelope,
        });
    }
    let mut responses = server
        .submissions()
        .submit_stream(tokio_stream::iter(requests))
        .await
        .unwrap()
        .into_inner();
    let mut answered = HashSet::new();
    while let Some(response) = responses.message().await.expect("the stream ends with OK") {
        let result = response.result.unwrap();
        if response.client_reference == "ref-5" {
            assert_eq!(rejection(&result), pb::RejectionReason::SignatureMalformed);
            let message = match &result.outcome {
                Some(pb::submission_result::Outcome::Rejected(rejected)) => &rejected.message,
                other => panic!("{other:?}"),
            };
            assert!(message.contains("no envelope"), "{message}");
        } else {
            assert!(!accepted(&result).duplicate);
        }
        assert!(answered.insert(response.client_reference));
    }
    assert_eq!(answered.len(), 11, "every request is answered");
    // Exactly the answered earns are booked.
    assert_eq!(server.balance("m-1").await, 10);
}

async fn a_message_over_the_size_limit_is_resource_exhausted(backend: Backend) {
    let database = coalition_integration_tests::TestDatabase::new(backend).await;
    let mut config = coalition_integration_tests::test_config(&database.url);
    config.message_size_max_bytes = 64 * 1024;
    let server = TestServer::start_on(database, config).await;
    let tenant = server
        .merchant("tenant-1", pb::MerchantCategory::MallTenant)
        .await;
    server.enroll(&["m-1"]).await;
    let envelope =
        tenant.envelope(&server.body(&tenant, pb::TransactionKind::Earn, "e-1", "m-1", 1));
    let too_big = pb::SubmitBatchRequest {
        envelopes: vec![envelope.clone(); 1_000],
    };
    let status = server
        .submissions()
        .submit_batch(too_big)
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    // On a stream: the earlier request is answered, then the stream ends with the same code.
    let mut huge = envelope.clone();
    huge.body = vec![0; 100 * 1024];
    let requests = vec![
        pb::SubmitStreamRequest {
            client_reference: "small".into(),
            envelope: Some(envelope),
        },
        pb::SubmitStreamRequest {
            client_reference: "huge".into(),
            envelope: Some(huge),
        },
    ];
    let mut responses = server
        .submissions()
        .submit_stream(tokio_stream::iter(requests))
        .await
        .unwrap()
        .into_inner();
    let mut answered = Vec::new();
    let ended = loop {
        match responses.message().await {
            Ok(Some(response)) => answered.push(response.client_reference),
            Ok(None) => panic!("the stream ended without an error"),
            Err(status) => break status,
        }
    };
    assert_eq!(ended.code(), tonic::Code::ResourceExhausted, "{ended:?}");
    assert_eq!(answered, ["small"]);
    assert_eq!(server.balance("m-1").await, 1);
}

async fn public_keys_are_canonical_and_belong_to_one_merchant(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut admin = server.admin();
    let register = |merchant_id: &str, public_key: Vec<u8>| pb::RegisterMerchantRequest {
        merchant_id: merchant_id.into(),
        name: merchant_id.into(),
        category: pb::MerchantCategory::MallTenant as i32,
        keys: vec![pb::MerchantKey {
            key_id: "key-1".into(),
            public_key,
            ..Default::default()
        }],
    };
    // y = p + 3 names the same point as y = 3: not canonical, refused with the bytes to use.
    let mut non_canonical = vec![0xffu8; 32];
    non_canonical[0] = 0xf0;
    non_canonical[31] = 0x7f;
    let mut canonical = vec![0u8; 32];
    canonical[0] = 3;
    let refused = admin
        .register_merchant(register("tenant-a", non_canonical.clone()))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert!(
        refused.message().contains("canonical")
            && refused.message().contains(&hex::encode(&canonical)),
        "{}",
        refused.message()
    );
    // The canonical encoding is taken, once: not by a second merchant, nor as a second key.
    admin
        .register_merchant(register("tenant-a", canonical.clone()))
        .await
        .unwrap();
    let twice = admin
        .register_merchant(register("tenant-b", canonical.clone()))
        .await
        .unwrap_err();
    assert_eq!(twice.code(), tonic::Code::AlreadyExists);
    assert!(twice.message().contains("tenant-a"), "{}", twice.message());
    let twin = admin
        .register_merchant(register("tenant-b", non_canonical.clone()))
        .await
        .unwrap_err();
    assert_eq!(twin.code(), tonic::Code::InvalidArgument);
    let as_second_key = admin
        .add_merchant_key(pb::AddMerchantKeyRequest {
            merchant_id: "tenant-a".into(),
            key: Some(pb::MerchantKey {
                key_id: "key-2".into(),
                public_key: non_canonical,
                ..Default::default()
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(as_second_key.code(), tonic::Code::InvalidArgument);
    let shown = admin
        .get_merchant(pb::GetMerchantRequest {
            merchant_id: "tenant-a".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(shown.keys.len(), 1);
    assert_eq!(shown.keys[0].public_key, canonical, "stored as registered");
    let missing = admin
        .get_merchant(pb::GetMerchantRequest {
            merchant_id: "tenant-b".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound);
}

/// New merchant ids cannot form a path: they name export files and folders.
async fn new_merchant_ids_cannot_form_paths(backend: Backend) {
    let server = TestServer::start(backend).await;
    for hostile in [
        "../matrix",
        "..",
        ".hidden",
        "a/b",
        "x:y",
        "-flag",
        &"m".repeat(65),
    ] {
        let refused = server
            .admin()
            .register_merchant(pb::RegisterMerchantRequest {
                merchant_id: hostile.into(),
                name: "hostile".into(),
                category: pb::MerchantCategory::MallTenant as i32,
                keys: vec![pb::MerchantKey {
                    key_id: "key-1".into(),
                    public_key: new_key().verifying_key().as_bytes().to_vec(),
                    ..Default::default()
                }],
            })
            .await
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{hostile}");
        assert!(
            refused.message().contains("merchant id"),
            "{}",
            refused.message()
        );
    }
    server
        .merchant("tenant.east-1_a", pb::MerchantCategory::MallTenant)
        .await;
}

async fn concurrent_burns_for_one_member_never_overdraw(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (tenant, cinema) = server.tenant_and_cinema().await;
    let parking = server
        .merchant("parking-1", pb::MerchantCategory::Parking)
        .await;
    server.enroll(&["m-1"]).await;
    accepted(&server.earn(&tenant, "e-1", "m-1", 1_000).await);
    let mut burns = JoinSet::new();
    for index in 0..30 {
        let signer = if index % 2 == 0 {
            cinema.clone()
        } else {
            parking.clone()
        };
        let body = server.body(
            &signer,
            pb::TransactionKind::Burn,
            &format!("b-{index}"),
            "m-1",
            100,
        );
        let envelope = signer.envelope(&body);
        let mut client = server.submissions();
        burns.spawn(async move {
            client
                .submit(pb::SubmitRequest {
                    envelope: Some(envelope),
                })
                .await
                .unwrap()
                .into_inner()
                .result
                .unwrap()
        });
    }
    let mut accepted_count = 0;
    let mut insufficient = 0;
    while let Some(result) = burns.join_next().await {
        let result = result.unwrap();
        match &result.outcome {
            Some(pb::submission_result::Outcome::Accepted(accepted)) => {
                assert!(accepted.member_points_balance >= 0);
                accepted_count += 1;
            }
            _ => {
                assert_eq!(rejection(&result), pb::RejectionReason::PointsInsufficient);
                insufficient += 1;
            }
        }
    }
    assert_eq!((accepted_count, insufficient), (10, 20));
    assert_eq!(server.balance("m-1").await, 0);
    assert!(server.check().await.is_sound());
}

/// Concurrent clients over ten members, with a working set of one member (the tests' budget):
/// nearly every batch loads its members and evicts others. The books must come out exactly as
/// the acknowledgements say, and the audit must find the writer's state equal to the journal.
async fn a_working_set_of_one_under_concurrent_clients_keeps_the_books_exact(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (tenant, cinema) = server.tenant_and_cinema().await;
    let members: Vec<String> = (0..10).map(|index| format!("m-{index}")).collect();
    let names: Vec<&str> = members.iter().map(String::as_str).collect();
    server.enroll(&names).await;
    for member in &members {
        accepted(
            &server
                .earn(&tenant, &format!("seed-{member}"), member, 500)
                .await,
        );
    }
    let mut clients = JoinSet::new();
    for task in 0..8usize {
        let mut planned = Vec::new();
        for step in 0..15usize {
            let member = members[(task * 7 + step * 3) % members.len()].clone();
            let id = format!("t{task}-{step}");
            let (signer, kind, points) = if step % 2 == 0 {
                (&tenant, pb::TransactionKind::Earn, 20)
            } else {
                (&cinema, pb::TransactionKind::Burn, 90)
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
            for (member, delta, envelope) in planned {
                let result = client
                    .submit(pb::SubmitRequest {
                        envelope: Some(envelope),
                    })
                    .await
                    .unwrap()
                    .into_inner()
                    .result
                    .unwrap();
                match &result.outcome {
                    Some(pb::submission_result::Outcome::Accepted(accepted)) => {
                        assert!(accepted.member_points_balance >= 0);
                        booked.push((member, delta));
                    }
                    _ => assert_eq!(rejection(&result), pb::RejectionReason::PointsInsufficient),
                }
            }
            booked
        });
    }
    let mut expected: std::collections::BTreeMap<String, i64> =
        members.iter().map(|member| (member.clone(), 500)).collect();
    let mut burns = 0;
    while let Some(booked) = clients.join_next().await {
        for (member, delta) in booked.unwrap() {
            *expected.get_mut(&member).unwrap() += delta;
            burns += usize::from(delta < 0);
        }
    }
    assert!(burns > 0, "some burns are booked");
    for (member, points) in &expected {
        assert_eq!(server.balance(member).await, *points, "{member}");
    }
    let report = server.check().await;
    assert!(report.is_sound(), "{report:?}");
}

async fn keys_rotate_and_a_suspended_merchant_comes_back(backend: Backend) {
    let server = TestServer::start(backend).await;
    let tenant = server
        .merchant("tenant-1", pb::MerchantCategory::MallTenant)
        .await;
    server.enroll(&["m-1"]).await;
    let rotated = server.rotate_key(&tenant, "key-2").await;
    let mut admin = server.admin();
    assert_eq!(
        rejection(&server.earn(&tenant, "e-1", "m-1", 1).await),
        pb::RejectionReason::KeyRevoked
    );
    accepted(&server.earn(&rotated, "e-2", "m-1", 1).await);
    // Revoking twice, duplicate keys and weak keys are refused with clear errors.
    let again = admin
        .revoke_merchant_key(pb::RevokeMerchantKeyRequest {
            merchant_id: "tenant-1".into(),
            key_id: "key-1".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(again.code(), tonic::Code::FailedPrecondition);
    let mut weak = [0u8; 32];
    weak[0] = 1;
    let refused = admin
        .add_merchant_key(pb::AddMerchantKeyRequest {
            merchant_id: "tenant-1".into(),
            key: Some(pb::MerchantKey {
                key_id: "weak".into(),
                public_key: weak.to_vec(),
                ..Default::default()
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert!(refused.message().contains("weak"), "{}", refused.message());
    admin
        .suspend_merchant(pb::SuspendMerchantRequest {
            merchant_id: "tenant-1".into(),
        })
        .await
        .unwrap();
    assert_eq!(
        rejection(&server.earn(&rotated, "e-3", "m-1", 1).await),
        pb::RejectionReason::MerchantSuspended
    );
    admin
        .reactivate_merchant(pb::ReactivateMerchantRequest {
            merchant_id: "tenant-1".into(),
        })
        .await
        .unwrap();
    accepted(&server.earn(&rotated, "e-3", "m-1", 1).await);
    let shown = admin
        .get_merchant(pb::GetMerchantRequest {
            merchant_id: "tenant-1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(shown.keys.len(), 2);
    assert!(
        shown
            .keys
            .iter()
            .any(|key| key.key_id == "key-1" && key.revoked_at_unix_ms.is_some())
    );
    // A body signed with one merchant's key but sent as another merchant is refused, even
    // when both name their keys alike.
    let other = server
        .merchant("tenant-2", pb::MerchantCategory::MallTenant)
        .await;
    let mut foreign = rotated.clone();
    foreign.merchant_id = "tenant-2".into();
    foreign.key_id = "key-1".into();
    let body = server.body(&foreign, pb::TransactionKind::Earn, "f-1", "m-1", 1);
    assert_eq!(
        rejection(&server.submit(foreign.envelope(&body)).await),
        pb::RejectionReason::SignatureInvalid
    );
    accepted(&server.submit(other.envelope(&body)).await);
    // The registry survives a restart.
    let server = server.restart().await;
    assert_eq!(
        rejection(&server.earn(&tenant, "e-4", "m-1", 1).await),
        pb::RejectionReason::KeyRevoked
    );
    accepted(&server.earn(&rotated, "e-4", "m-1", 1).await);
}

async fn aliases_merge_wallets_and_resolve_later_submissions(backend: Backend) {
    let server = TestServer::start(backend).await;
    let tenant = server
        .merchant("tenant-1", pb::MerchantCategory::MallTenant)
        .await;
    server.enroll(&["card-1", "app-1"]).await;
    accepted(&server.earn(&tenant, "e-1", "card-1", 300).await);
    accepted(&server.earn(&tenant, "e-2", "app-1", 200).await);
    let merged = server
        .admin()
        .alias_member(pb::AliasMemberRequest {
            alias_member_id: "card-1".into(),
            target_member_id: "app-1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(merged.points_moved, 300);
    assert_eq!(merged.merge_entry_sequence, Some(3));
    assert_eq!(server.balance("app-1").await, 500);
    assert_eq!(
        server.balance("card-1").await,
        500,
        "the alias reads the target's wallet"
    );
    let burned = server.burn(&tenant, "b-1", "card-1", 450).await;
    assert_eq!(accepted(&burned).member_id, "app-1");
    assert_eq!(server.balance("app-1").await, 50);
    let server = server.restart().await;
    assert_eq!(server.balance("card-1").await, 50);
    assert!(server.check().await.is_sound());
}

on_both_backends!(
    earn_then_burn_moves_points_and_books_balanced_entries,
    a_retry_returns_the_original_result_and_a_changed_body_conflicts,
    a_batch_keeps_every_good_item_around_the_bad_ones,
    the_stream_answers_every_request_with_its_reference,
    concurrent_burns_for_one_member_never_overdraw,
    a_working_set_of_one_under_concurrent_clients_keeps_the_books_exact,
    keys_rotate_and_a_suspended_merchant_comes_back,
    aliases_merge_wallets_and_resolve_later_submissions,
    a_retry_long_after_the_offline_window_gets_its_original_result,
    a_retry_signed_with_a_revoked_key_is_refused_and_re_signing_it_returns_the_original,
    a_bad_request_on_the_stream_is_one_refused_item_and_the_stream_goes_on,
    a_message_over_the_size_limit_is_resource_exhausted,
    public_keys_are_canonical_and_belong_to_one_merchant,
    new_merchant_ids_cannot_form_paths,
);

/// The writer keeps only recent receipts in memory; an old transaction id reused with a new
/// body is still found in the journal and refused.
async fn an_old_transaction_id_conflicts_after_its_receipt_left_memory(backend: Backend) {
    let database = coalition_integration_tests::TestDatabase::new(backend).await;
    let config = coalition::config::Config {
        offline_window_ms: 60_000,
        future_skew_max_ms: 0,
        ..coalition_integration_tests::test_config(&database.url)
    };
    let server = TestServer::start_on(database, config).await;
    let tenant = server
        .merchant("tenant-1", pb::MerchantCategory::MallTenant)
        .await;
    server.enroll(&["m-1"]).await;
    let original = server.body(&tenant, pb::TransactionKind::Earn, "e-1", "m-1", 100);
    accepted(&server.submit(tenant.envelope(&original)).await);
    // Two hours on, well past the receipt retention (offline window + skew + one hour); the
    // next batch's commit makes the writer forget the old receipt.
    server.clock.advance(2 * 3_600_000);
    accepted(&server.earn(&tenant, "e-2", "m-1", 1).await);
    accepted(&server.earn(&tenant, "e-3", "m-1", 1).await);
    let reused = server.earn(&tenant, "e-1", "m-1", 5).await;
    assert_eq!(
        rejection(&reused),
        pb::RejectionReason::TransactionIdConflict
    );
    // The very same body, now beyond the offline window, is still answered with its
    // original result from the journal.
    let late_retry = server.submit(tenant.envelope(&original)).await;
    assert!(accepted(&late_retry).duplicate);
    assert_eq!(accepted(&late_retry).entry_sequence, 1);
    // A retry of a recent one, in the same batch as a reuse of the old id, still gets the
    // original result, and the reuse is still refused.
    let recent = server.body(&tenant, pb::TransactionKind::Earn, "e-2", "m-1", 1);
    let mut reuse = server.body(&tenant, pb::TransactionKind::Earn, "e-1", "m-1", 7);
    reuse.store_id = "store-9".into();
    let results = server
        .submissions()
        .submit_batch(pb::SubmitBatchRequest {
            envelopes: vec![tenant.envelope(&recent), tenant.envelope(&reuse)],
        })
        .await
        .unwrap()
        .into_inner()
        .results;
    assert!(accepted(&results[0]).duplicate);
    assert_eq!(
        rejection(&results[1]),
        pb::RejectionReason::TransactionIdConflict
    );
    assert_eq!(server.balance("m-1").await, 102);
    assert!(server.check().await.is_sound());
}

mod receipts {
    use super::*;
    on_both_backends!(an_old_transaction_id_conflicts_after_its_receipt_left_memory);
}

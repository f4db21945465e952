//! Submitting over gRPC: earn and burn, idempotent retries, batches with bad items, the
//! stream, concurrent burns for one member, key rotation.

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

async fn keys_rotate_and_a_suspended_merchant_comes_back(backend: Backend) {
    let server = TestServer::start(backend).await;
    let tenant = server
        .merchant("tenant-1", pb::MerchantCategory::MallTenant)
        .await;
    server.enroll(&["m-1"]).await;
    let new = new_key();
    let mut admin = server.admin();
    admin
        .add_merchant_key(pb::AddMerchantKeyRequest {
            merchant_id: "tenant-1".into(),
            key: Some(pb::MerchantKey {
                key_id: "key-2".into(),
                public_key: new.verifying_key().as_bytes().to_vec(),
                ..Default::default()
            }),
        })
        .await
        .unwrap();
    admin
        .revoke_merchant_key(pb::RevokeMerchantKeyRequest {
            merchant_id: "tenant-1".into(),
            key_id: "key-1".into(),
        })
        .await
        .unwrap();
    assert_eq!(
        rejection(&server.earn(&tenant, "e-1", "m-1", 1).await),
        pb::RejectionReason::KeyRevoked
    );
    let rotated = coalition_grpc::client::MerchantSigner::new("tenant-1", "key-2", new);
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
    keys_rotate_and_a_suspended_merchant_comes_back,
    aliases_merge_wallets_and_resolve_later_submissions,
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
    // The very same body is now beyond the offline window.
    let late_retry = server.submit(tenant.envelope(&original)).await;
    assert_eq!(
        rejection(&late_retry),
        pb::RejectionReason::OccurredAtBeyondOfflineWindow
    );
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

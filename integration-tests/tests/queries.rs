//! Reading back over gRPC: balances now and as of a time, history pages, one transaction,
//! what a merchant may and may not read, admin authentication, health and reflection.

use coalition_grpc::pb;
use coalition_integration_tests::{Backend, TestServer, accepted, on_both_backends};
use prost::Message;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;

async fn balances_as_of_a_time_and_history_in_pages(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (tenant, cinema) = server.tenant_and_cinema().await;
    server.enroll(&["m-1"]).await;
    let mut times = Vec::new();
    for index in 0..7 {
        server.clock.advance(1_000);
        let result = server
            .earn(&tenant, &format!("e-{index}"), "m-1", 100)
            .await;
        times.push(accepted(&result).accepted_at_unix_ms);
    }
    server.clock.advance(1_000);
    accepted(&server.burn(&cinema, "b-1", "m-1", 250).await);

    // As of the third earn's acceptance time: 300 points.
    let mut queries = server.admin_queries();
    let as_of = |time: Option<i64>| pb::BalanceQuery {
        merchant_id: String::new(),
        issued_at_unix_ms: server.now_ms(),
        account_kind: pb::AccountKind::MemberWallet as i32,
        owner_id: "m-1".into(),
        as_of_unix_ms: time,
        asset: String::new(),
    };
    let balance = |query: pb::BalanceQuery| pb::GetBalanceRequest {
        query: query.encode_to_vec(),
        signature: None,
    };
    let then = queries
        .get_balance(balance(as_of(Some(times[2]))))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((then.points, then.as_of_entry_sequence), (300, 3));
    let now = queries
        .get_balance(balance(as_of(None)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((now.points, now.as_of_entry_sequence), (450, 8));
    let before_all = queries
        .get_balance(balance(as_of(Some(times[0] - 1))))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(before_all.points, 0);

    // History, newest first, three per page, for the operator.
    let mut sequences = Vec::new();
    let mut before = None;
    loop {
        let query = pb::MemberHistoryQuery {
            merchant_id: String::new(),
            issued_at_unix_ms: server.now_ms(),
            member_id: "m-1".into(),
            before_sequence: before,
            page_len: 3,
        };
        let page = queries
            .get_member_history(pb::GetMemberHistoryRequest {
                query: query.encode_to_vec(),
                signature: None,
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(page.member_points_balance, 450);
        for entry in &page.entries {
            assert_eq!(
                entry.postings.iter().map(|p| p.amount).sum::<i64>(),
                0,
                "entries balance"
            );
            assert_eq!(entry.hash.len(), 32);
        }
        sequences.extend(page.entries.iter().map(|entry| entry.sequence));
        match page.next_before_sequence {
            Some(next) => before = Some(next),
            None => break,
        }
    }
    assert_eq!(sequences, vec![8, 7, 6, 5, 4, 3, 2, 1]);

    // The cinema, with its own signature, sees only its own entries of the member.
    let (query, signature) = cinema.sign_query(&pb::MemberHistoryQuery {
        merchant_id: "cinema-1".into(),
        issued_at_unix_ms: server.now_ms(),
        member_id: "m-1".into(),
        before_sequence: None,
        page_len: 0,
    });
    let page = server
        .queries()
        .get_member_history(pb::GetMemberHistoryRequest {
            query,
            signature: Some(signature),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.entries.len(), 1);
    assert_eq!(page.entries[0].merchant_transaction_id, "b-1");
    assert_eq!(page.entries[0].entry_kind(), pb::EntryKind::Burn);
}

async fn a_merchant_reads_only_what_concerns_it(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (tenant, cinema) = server.tenant_and_cinema().await;
    server.enroll(&["m-1"]).await;
    accepted(&server.earn(&tenant, "e-1", "m-1", 100).await);
    let mut queries = server.queries();

    // Its own transaction: yes. Another merchant's: no.
    let transaction = |merchant: &str| pb::TransactionQuery {
        merchant_id: "cinema-1".into(),
        issued_at_unix_ms: server.now_ms(),
        transaction_merchant_id: merchant.into(),
        merchant_transaction_id: "e-1".into(),
    };
    let (query, signature) = tenant.sign_query(&pb::TransactionQuery {
        merchant_id: "tenant-1".into(),
        ..transaction("tenant-1")
    });
    let entry = queries
        .get_transaction(pb::GetTransactionRequest {
            query,
            signature: Some(signature),
        })
        .await
        .unwrap()
        .into_inner()
        .entry
        .unwrap();
    assert_eq!(
        (entry.sequence, entry.points, entry.member_points_balance),
        (1, 100, 100)
    );
    let (query, signature) = cinema.sign_query(&transaction("tenant-1"));
    let denied = queries
        .get_transaction(pb::GetTransactionRequest {
            query,
            signature: Some(signature),
        })
        .await
        .unwrap_err();
    assert_eq!(denied.code(), tonic::Code::PermissionDenied);

    // Any member's balance (a POS shows it before a burn), but not another merchant's accounts.
    let balance = |kind: pb::AccountKind, owner: &str| pb::BalanceQuery {
        merchant_id: "cinema-1".into(),
        issued_at_unix_ms: server.now_ms(),
        account_kind: kind as i32,
        owner_id: owner.into(),
        as_of_unix_ms: None,
        asset: String::new(),
    };
    let (query, signature) = cinema.sign_query(&balance(pb::AccountKind::MemberWallet, "m-1"));
    let points = queries
        .get_balance(pb::GetBalanceRequest {
            query,
            signature: Some(signature),
        })
        .await
        .unwrap()
        .into_inner()
        .points;
    assert_eq!(points, 100);
    let (query, signature) =
        cinema.sign_query(&balance(pb::AccountKind::MerchantIssued, "tenant-1"));
    let denied = queries
        .get_balance(pb::GetBalanceRequest {
            query,
            signature: Some(signature),
        })
        .await
        .unwrap_err();
    assert_eq!(denied.code(), tonic::Code::PermissionDenied);
    let (query, signature) = tenant.sign_query(&pb::BalanceQuery {
        merchant_id: "tenant-1".into(),
        ..balance(pb::AccountKind::MerchantIssued, "tenant-1")
    });
    let issued = queries
        .get_balance(pb::GetBalanceRequest {
            query,
            signature: Some(signature),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(issued.points, -100);

    // A signature by one merchant over a query naming another, a stale query, a forged
    // signature, and no credentials at all are refused.
    let (query, signature) = tenant.sign_query(&balance(pb::AccountKind::MemberWallet, "m-1"));
    let refused = queries
        .get_balance(pb::GetBalanceRequest {
            query,
            signature: Some(signature),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);
    let (query, signature) = cinema.sign_query(&pb::BalanceQuery {
        issued_at_unix_ms: server.now_ms() - 3_600_000,
        ..balance(pb::AccountKind::MemberWallet, "m-1")
    });
    let stale = queries
        .get_balance(pb::GetBalanceRequest {
            query,
            signature: Some(signature),
        })
        .await
        .unwrap_err();
    assert_eq!(stale.code(), tonic::Code::Unauthenticated);
    let (query, mut signature) = cinema.sign_query(&balance(pb::AccountKind::MemberWallet, "m-1"));
    signature.signature[3] ^= 1;
    let forged = queries
        .get_balance(pb::GetBalanceRequest {
            query: query.clone(),
            signature: Some(signature),
        })
        .await
        .unwrap_err();
    assert_eq!(forged.code(), tonic::Code::Unauthenticated);
    assert!(
        forged.message().contains("signature_invalid"),
        "{}",
        forged.message()
    );
    let anonymous = queries
        .get_balance(pb::GetBalanceRequest {
            query,
            signature: None,
        })
        .await
        .unwrap_err();
    assert_eq!(anonymous.code(), tonic::Code::Unauthenticated);
}

async fn admin_calls_need_the_token(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut unauthenticated =
        coalition_grpc::client::AdminServiceClient::new(server.channel.clone());
    let refused = unauthenticated
        .enroll_members(pb::EnrollMembersRequest {
            members: vec![pb::MemberEnrollment {
                member_id: "m-1".into(),
                tier: None,
            }],
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    let mut wrong = coalition_grpc::client::AdminServiceClient::with_interceptor(
        server.channel.clone(),
        coalition_grpc::client::AdminToken::new("not-the-admin-token-at-all").unwrap(),
    );
    let refused = wrong
        .get_merchant(pb::GetMerchantRequest {
            merchant_id: "x".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    // Bad admin input gets a specific error and changes nothing.
    let bad = server
        .admin()
        .register_merchant(pb::RegisterMerchantRequest {
            merchant_id: "bad id".into(),
            name: "x".into(),
            category: pb::MerchantCategory::Cinema as i32,
            keys: vec![],
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    assert!(bad.message().contains("merchant_id"), "{}", bad.message());
    server
        .merchant("tenant-1", pb::MerchantCategory::MallTenant)
        .await;
    let twice = server
        .admin()
        .register_merchant(pb::RegisterMerchantRequest {
            merchant_id: "tenant-1".into(),
            name: "again".into(),
            category: pb::MerchantCategory::MallTenant as i32,
            keys: vec![pb::MerchantKey {
                key_id: "k".into(),
                public_key: coalition_integration_tests::new_key()
                    .verifying_key()
                    .as_bytes()
                    .to_vec(),
                ..Default::default()
            }],
        })
        .await
        .unwrap_err();
    assert_eq!(twice.code(), tonic::Code::AlreadyExists);
    let enrolled = server
        .admin()
        .enroll_members(pb::EnrollMembersRequest {
            members: ["m-1", "m-1", "bad id"]
                .iter()
                .map(|m| pb::MemberEnrollment {
                    member_id: m.to_string(),
                    tier: None,
                })
                .collect(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (
            enrolled.enrolled,
            enrolled.already_enrolled,
            enrolled.refusals.len()
        ),
        (1, 1, 1)
    );
    assert_eq!(enrolled.refusals[0].member_id, "bad id");
    assert_eq!(
        enrolled.refusals[0].reason(),
        pb::EnrollmentRefusalReason::MemberIdInvalid
    );
    // An id that stands for another member cannot be enrolled: refused with its code, in
    // request order, next to members that are enrolled.
    server.enroll(&["m-2"]).await;
    server
        .admin()
        .alias_member(pb::AliasMemberRequest {
            alias_member_id: "card-7".into(),
            target_member_id: "m-2".into(),
        })
        .await
        .unwrap();
    let enrolled = server
        .admin()
        .enroll_members(pb::EnrollMembersRequest {
            members: ["m-3", "card-7", "no/way?", "m-4"]
                .iter()
                .map(|m| pb::MemberEnrollment {
                    member_id: m.to_string(),
                    tier: None,
                })
                .collect(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(enrolled.enrolled, 2);
    let refusals: Vec<_> = enrolled
        .refusals
        .iter()
        .map(|refusal| (refusal.member_id.as_str(), refusal.reason()))
        .collect();
    assert_eq!(
        refusals,
        [
            ("card-7", pb::EnrollmentRefusalReason::MemberIdIsAlias),
            ("no/way?", pb::EnrollmentRefusalReason::MemberIdInvalid),
        ]
    );
    assert!(enrolled.refusals[0].message.contains("alias"));
    // The deprecated text list still carries the same refusals.
    #[allow(deprecated)]
    let text = enrolled.refused.clone();
    assert_eq!(text.len(), 2);
}

/// The scheme of the admin token's header is case-insensitive (RFC 6750, RFC 7235).
async fn the_bearer_scheme_is_case_insensitive(backend: Backend) {
    let server = TestServer::start(backend).await;
    server
        .merchant("tenant-1", pb::MerchantCategory::MallTenant)
        .await;
    for (header, allowed) in [
        (
            format!("bearer {}", coalition_integration_tests::ADMIN_TOKEN),
            true,
        ),
        (
            format!("BEARER {}", coalition_integration_tests::ADMIN_TOKEN),
            true,
        ),
        (
            format!("Bearer {}", coalition_integration_tests::ADMIN_TOKEN),
            true,
        ),
        (
            format!("Basic {}", coalition_integration_tests::ADMIN_TOKEN),
            false,
        ),
        (
            format!("Bearer{}", coalition_integration_tests::ADMIN_TOKEN),
            false,
        ),
        ("bearer wrong-token-wrong-token-wrong".to_owned(), false),
    ] {
        let mut request = tonic::Request::new(pb::GetMerchantRequest {
            merchant_id: "tenant-1".into(),
        });
        request
            .metadata_mut()
            .insert("authorization", header.parse().unwrap());
        let result = coalition_grpc::client::AdminServiceClient::new(server.channel.clone())
            .get_merchant(request)
            .await;
        match (allowed, result) {
            (true, Ok(response)) => assert_eq!(response.into_inner().merchant_id, "tenant-1"),
            (false, Err(status)) => {
                assert_eq!(status.code(), tonic::Code::Unauthenticated, "{header}")
            }
            (allowed, result) => panic!("{header}: allowed {allowed}, got {result:?}"),
        }
    }
}

/// Every entry kind comes back as an enum value (and, deprecated, as its name); a member
/// who was never enrolled is NOT_FOUND, never a balance of 0.
async fn entries_carry_their_kind_and_unknown_members_are_not_found(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (tenant, cinema) = server.tenant_and_cinema().await;
    server.enroll(&["m-1", "m-empty"]).await;
    accepted(&server.earn(&tenant, "e-1", "m-1", 100).await);
    accepted(&server.burn(&cinema, "b-1", "m-1", 30).await);
    for (signer, kind, id, points, refers_to) in [
        (&tenant, pb::TransactionKind::Reversal, "r-1", 10, "e-1"),
        (&cinema, pb::TransactionKind::Reversal, "r-2", 5, "b-1"),
        (&cinema, pb::TransactionKind::Hold, "h-1", 20, ""),
        (&cinema, pb::TransactionKind::Capture, "c-1", 15, "h-1"),
    ] {
        let body = server.referring_body(signer, kind, id, "m-1", points, refers_to, "");
        accepted(&server.submit(signer.envelope(&body)).await);
    }
    let page = server
        .admin_queries()
        .get_member_history(pb::GetMemberHistoryRequest {
            query: pb::MemberHistoryQuery {
                merchant_id: String::new(),
                issued_at_unix_ms: server.now_ms(),
                member_id: "m-1".into(),
                before_sequence: None,
                page_len: 0,
            }
            .encode_to_vec(),
            signature: None,
        })
        .await
        .unwrap()
        .into_inner();
    let kinds: Vec<_> = page
        .entries
        .iter()
        .map(|entry| entry.entry_kind())
        .collect();
    assert_eq!(
        kinds,
        [
            pb::EntryKind::Capture,
            pb::EntryKind::Hold,
            pb::EntryKind::BurnReversal,
            pb::EntryKind::EarnReversal,
            pb::EntryKind::Burn,
            pb::EntryKind::Earn,
        ]
    );
    // The deprecated name is the enum's name, lowercase, without its prefix.
    for entry in &page.entries {
        #[allow(deprecated)]
        let name = entry.kind.clone();
        assert_eq!(
            format!("ENTRY_KIND_{}", name.to_uppercase()),
            entry.entry_kind().as_str_name()
        );
    }
    let lines = server
        .admin_queries()
        .get_account_history(pb::GetAccountHistoryRequest {
            query: pb::AccountHistoryQuery {
                merchant_id: String::new(),
                issued_at_unix_ms: server.now_ms(),
                account_kind: pb::AccountKind::MerchantIssued as i32,
                owner_id: "tenant-1".into(),
                asset: String::new(),
                before_sequence: None,
                page_len: 0,
            }
            .encode_to_vec(),
            signature: None,
        })
        .await
        .unwrap()
        .into_inner()
        .lines;
    let kinds: Vec<_> = lines.iter().map(|line| line.entry_kind()).collect();
    assert_eq!(kinds, [pb::EntryKind::EarnReversal, pb::EntryKind::Earn]);

    // Never enrolled: NOT_FOUND for the operator and for a merchant, balance and history.
    let balance_of = |member: &str| pb::BalanceQuery {
        merchant_id: "tenant-1".into(),
        issued_at_unix_ms: server.now_ms(),
        account_kind: pb::AccountKind::MemberWallet as i32,
        owner_id: member.into(),
        as_of_unix_ms: None,
        asset: String::new(),
    };
    let (query, signature) = tenant.sign_query(&balance_of("stranger"));
    let status = server
        .queries()
        .get_balance(pb::GetBalanceRequest {
            query,
            signature: Some(signature),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound);
    assert!(
        status.message().contains("stranger"),
        "{}",
        status.message()
    );
    let status = server
        .admin_queries()
        .get_balance(pb::GetBalanceRequest {
            query: balance_of("stranger").encode_to_vec(),
            signature: None,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound);
    let status = server
        .admin_queries()
        .get_member_history(pb::GetMemberHistoryRequest {
            query: pb::MemberHistoryQuery {
                merchant_id: String::new(),
                issued_at_unix_ms: server.now_ms(),
                member_id: "stranger".into(),
                before_sequence: None,
                page_len: 0,
            }
            .encode_to_vec(),
            signature: None,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound);
    // Enrolled with no points: a balance of 0.
    let (query, signature) = tenant.sign_query(&balance_of("m-empty"));
    let empty = server
        .queries()
        .get_balance(pb::GetBalanceRequest {
            query,
            signature: Some(signature),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(empty.points, 0);
}

async fn health_and_reflection_answer(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(server.channel.clone());
    let status = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "coalition.v1.SubmissionService".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        status.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );

    let mut reflection =
        tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient::new(
            server.channel.clone(),
        );
    let request = tonic_reflection::pb::v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = reflection
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let response = responses.message().await.unwrap().unwrap();
    let Some(
        tonic_reflection::pb::v1::server_reflection_response::MessageResponse::ListServicesResponse(
            list,
        ),
    ) = response.message_response
    else {
        panic!("expected a service list");
    };
    let names: Vec<String> = list
        .service
        .into_iter()
        .map(|service| service.name)
        .collect();
    for expected in [
        "coalition.v1.SubmissionService",
        "coalition.v1.QueryService",
        "coalition.v1.AdminService",
    ] {
        assert!(names.contains(&expected.to_string()), "{names:?}");
    }
    let mut alpha =
        tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient::new(
            server.channel.clone(),
        );
    let request = tonic_reflection::pb::v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest::FileContainingSymbol(
            "coalition.v1.TransactionBody".into(),
        )),
    };
    let mut responses = alpha
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let response = responses.message().await.unwrap().unwrap();
    assert!(matches!(
        response.message_response,
        Some(tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse::FileDescriptorResponse(_))
    ));
}

on_both_backends!(
    the_bearer_scheme_is_case_insensitive,
    entries_carry_their_kind_and_unknown_members_are_not_found,
    balances_as_of_a_time_and_history_in_pages,
    a_merchant_reads_only_what_concerns_it,
    admin_calls_need_the_token,
    health_and_reflection_answer,
);

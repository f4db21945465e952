//! Assembling and running the gRPC server: the three services, health, reflection (v1 and
//! v1alpha), a bound on concurrent connections, and graceful shutdown.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use coalition_engine::Engine;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tonic::transport::server::{Connected, TcpConnectInfo};

use crate::admin::Admin;
use crate::pb;
use crate::pb::admin_service_server::AdminServiceServer;
use crate::pb::query_service_server::QueryServiceServer;
use crate::pb::submission_service_server::SubmissionServiceServer;
use crate::query::Queries;
use crate::submission::Submissions;
use crate::subscription::Subscriptions;

/// Limits and credentials of the gRPC server.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The operator's admin token; without one, admin calls are refused.
    pub admin_token: Option<String>,
    /// The most envelopes in one SubmitBatch call (and members in one EnrollMembers call).
    pub batch_request_len_max: usize,
    /// The largest gRPC message accepted, in bytes.
    pub message_size_max_bytes: usize,
    /// The most open client connections; further ones wait in the listen backlog.
    pub connections_max: usize,
    /// The most submissions of one stream being processed at once.
    pub stream_in_flight_max: usize,
    /// The most entries in one history page.
    pub history_page_len_max: u32,
    /// How far a signed query's issued_at may be from the server clock.
    pub query_freshness_ms: i64,
    /// The most `SubscribeEntries` streams open at once; further ones are refused with
    /// RESOURCE_EXHAUSTED.
    pub subscribers_max: usize,
    /// Messages (a committed batch's entries for the subscriber each) waiting to be sent to
    /// one subscriber; a subscriber that leaves this many unread falls behind the live feed
    /// and is caught up from the database.
    pub subscriber_buffer_len: usize,
    /// Makes the inclusion proofs of `ProveEntries`; without one the call is UNIMPLEMENTED.
    pub prover: Option<Arc<dyn crate::admin::Prover>>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            admin_token: None,
            batch_request_len_max: 10_000,
            message_size_max_bytes: 16 * 1024 * 1024,
            connections_max: 1024,
            stream_in_flight_max: 1024,
            history_page_len_max: 500,
            query_freshness_ms: 5 * 60_000,
            subscribers_max: 256,
            subscriber_buffer_len: 16,
            prover: None,
        }
    }
}

/// A connection that holds one of the `connections_max` permits while it is open.
pub struct CountedConnection {
    stream: TcpStream,
    _permit: OwnedSemaphorePermit,
}

impl Connected for CountedConnection {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.stream.connect_info()
    }
}

impl AsyncRead for CountedConnection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buffer: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(context, buffer)
    }
}

impl AsyncWrite for CountedConnection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buffer: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(context, buffer)
    }

    fn poll_flush(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(context)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(context)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buffers: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(context, buffers)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// The server's connections: one accept loop for the life of the listener, admitting a
/// connection only while fewer than `connections_max` are open. The starting phase and the
/// serving phase read the same queue one after the other, so a connection that arrives while
/// they hand over waits for the serving phase instead of being accepted and lost. The loop
/// ends when the last reader is dropped.
#[derive(Clone)]
pub struct Incoming {
    receiver: Arc<std::sync::Mutex<mpsc::Receiver<io::Result<CountedConnection>>>>,
}

impl Incoming {
    pub fn new(listener: TcpListener, connections_max: usize) -> Incoming {
        let (sender, receiver) = mpsc::channel(16);
        let permits = Arc::new(Semaphore::new(connections_max));
        tokio::spawn(async move {
            loop {
                let Ok(permit) = permits.clone().acquire_owned().await else {
                    break;
                };
                let accepted = tokio::select! {
                    accepted = listener.accept() => accepted,
                    () = sender.closed() => break,
                };
                let item = accepted.map(|(stream, _)| {
                    let _ = stream.set_nodelay(true);
                    CountedConnection {
                        stream,
                        _permit: permit,
                    }
                });
                if sender.send(item).await.is_err() {
                    break;
                }
            }
        });
        Incoming {
            receiver: Arc::new(std::sync::Mutex::new(receiver)),
        }
    }
}

impl tokio_stream::Stream for Incoming {
    type Item = io::Result<CountedConnection>;

    fn poll_next(self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        // One phase reads at a time; the lock is held only for this poll.
        self.receiver
            .lock()
            .expect("the connection queue is never poisoned")
            .poll_recv(context)
    }
}

/// Whether a status is tonic's refusal of a message over the size limit, which it answers
/// with OUT_OF_RANGE.
fn is_oversized(code: tonic::Code, message: &str) -> bool {
    code == tonic::Code::OutOfRange
        && (message.contains("too large") || message.contains("too%20large"))
}

/// Answers a request over `message_size_max_bytes` with RESOURCE_EXHAUSTED, as gRPC's status
/// code guide and the other gRPC implementations do, instead of tonic's OUT_OF_RANGE. A
/// unary request too large is refused before the handler runs, in a trailers-only response
/// whose status is in the headers, which is where this rewrites it.
fn oversized_is_resource_exhausted(
    mut response: http::Response<tonic::body::Body>,
) -> http::Response<tonic::body::Body> {
    let headers = response.headers_mut();
    let code = headers
        .get("grpc-status")
        .and_then(|value| value.to_str().ok());
    let message = headers
        .get("grpc-message")
        .and_then(|value| value.to_str().ok());
    if let (Some(code), Some(message)) = (code, message)
        && is_oversized(tonic::Code::from_bytes(code.as_bytes()), message)
    {
        headers.insert("grpc-status", http::HeaderValue::from_static("8"));
    }
    response
}

/// The status a streaming call ends with when its request stream failed: RESOURCE_EXHAUSTED
/// for a message over the size limit (as for unary calls), the status as it came otherwise.
pub fn request_stream_status(status: tonic::Status) -> tonic::Status {
    if is_oversized(status.code(), status.message()) {
        tonic::Status::resource_exhausted(status.message().to_owned())
    } else {
        status
    }
}

/// The message of every call but health and reflection while the server starts.
const STARTING_MESSAGE: &str = "the server is starting (recovering the ledger); retry shortly";

/// While starting, a call to a service that is not served yet answers UNAVAILABLE (which
/// clients retry) instead of tonic's UNIMPLEMENTED for an unknown service.
fn unimplemented_is_starting(
    mut response: http::Response<tonic::body::Body>,
) -> http::Response<tonic::body::Body> {
    let headers = response.headers_mut();
    if headers
        .get("grpc-status")
        .is_some_and(|code| code.as_bytes() == b"12")
    {
        headers.insert("grpc-status", http::HeaderValue::from_static("14"));
        headers.insert(
            "grpc-message",
            // gRPC sends printable ASCII but '%' as it is.
            http::HeaderValue::from_static(STARTING_MESSAGE),
        );
    }
    response
}

/// Serves the starting phase on `incoming` until `ready` resolves: gRPC health answers
/// NOT_SERVING for the server and each of its services, reflection works, and every other
/// call answers UNAVAILABLE, so that while the ledger recovers clients and load balancers get
/// an answer rather than "connection refused". Then it closes its connections (clients
/// reconnect to the serving phase on the same port) and returns.
pub async fn serve_starting(
    incoming: Incoming,
    ready: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_service_status("", tonic_health::ServingStatus::NotServing)
        .await;
    for service in [
        <SubmissionServiceServer<Submissions> as tonic::server::NamedService>::NAME,
        <QueryServiceServer<Queries> as tonic::server::NamedService>::NAME,
        <AdminServiceServer<Admin> as tonic::server::NamedService>::NAME,
    ] {
        health_reporter
            .set_service_status(service, tonic_health::ServingStatus::NotServing)
            .await;
    }
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .expect("the embedded descriptor set is valid");
    tonic::transport::Server::builder()
        .layer(tower::util::MapResponseLayer::new(
            unimplemented_is_starting,
        ))
        .add_service(health_service)
        .add_service(reflection)
        .serve_with_incoming_shutdown(incoming, ready)
        .await
}

/// Serves the API on `incoming` until `shutdown` resolves, then stops accepting, lets calls
/// in flight finish (their batches commit and are acknowledged), and returns.
pub async fn serve(
    engine: Engine,
    config: ServerConfig,
    incoming: Incoming,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    let config = Arc::new(config);
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<SubmissionServiceServer<Submissions>>()
        .await;
    health_reporter
        .set_serving::<QueryServiceServer<Queries>>()
        .await;
    health_reporter
        .set_serving::<AdminServiceServer<Admin>>()
        .await;
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .expect("the embedded descriptor set is valid");
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .expect("the embedded descriptor set is valid");
    let size = config.message_size_max_bytes;
    let submissions = SubmissionServiceServer::new(Submissions {
        engine: engine.clone(),
        config: config.clone(),
    })
    .max_decoding_message_size(size)
    .max_encoding_message_size(size);
    // Entry subscriptions never end by themselves: they are told when the server stops, so
    // that the graceful shutdown does not wait for them.
    let (stopping_sender, stopping) = tokio::sync::watch::channel(false);
    let shutdown = async move {
        shutdown.await;
        let _ = stopping_sender.send(true);
    };
    let queries = QueryServiceServer::new(Queries {
        engine: engine.clone(),
        config: config.clone(),
        subscriptions: Subscriptions {
            open: Arc::new(Semaphore::new(config.subscribers_max)),
            buffer_len: config.subscriber_buffer_len,
            stopping,
        },
    })
    .max_decoding_message_size(size)
    .max_encoding_message_size(size);
    let admin = AdminServiceServer::new(Admin {
        engine,
        config: config.clone(),
    })
    .max_decoding_message_size(size)
    .max_encoding_message_size(size);
    tonic::transport::Server::builder()
        .layer(tower::util::MapResponseLayer::new(
            oversized_is_resource_exhausted,
        ))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(submissions)
        .add_service(queries)
        .add_service(admin)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
}

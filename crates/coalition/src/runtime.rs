//! Starting and stopping a whole server: storage, engine and gRPC, as `coalition serve`, the
//! demo, the benchmark and the integration tests all do.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use coalition_engine::{Clock, Engine, SystemClock};
use coalition_storage::{ConnectOptions, Storage};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::config::Config;

/// How long the starting phase may take to close its connections before it is cut.
const STARTING_PHASE_CLOSE: std::time::Duration = std::time::Duration::from_secs(1);

/// A running server.
pub struct RunningServer {
    pub address: SocketAddr,
    pub engine: Engine,
    /// Where the finance console listens, unless `console_address` is "off".
    pub console_address: Option<SocketAddr>,
    console: Option<crate::console::RunningConsole>,
    shutdown_grace: std::time::Duration,
    stop: Option<oneshot::Sender<()>>,
    server: JoinHandle<Result<(), tonic::transport::Error>>,
}

impl RunningServer {
    /// Connects to the database, recovers the ledger, and starts serving on
    /// `config.listen_address` (port 0 picks a free port).
    pub async fn start(config: &Config) -> anyhow::Result<RunningServer> {
        Self::start_with_clock(config, Arc::new(SystemClock)).await
    }

    pub async fn start_with_clock(
        config: &Config,
        clock: Arc<dyn Clock>,
    ) -> anyhow::Result<RunningServer> {
        // Listen first: while the ledger recovers, health answers NOT_SERVING and every
        // other call UNAVAILABLE, instead of the port being closed.
        let listener = TcpListener::bind(&config.listen_address)
            .await
            .with_context(|| format!("cannot listen on {}", config.listen_address))?;
        let address = listener.local_addr()?;
        let incoming = coalition_grpc::Incoming::new(listener, config.connections_max);
        let (recovered, recovering) = oneshot::channel::<()>();
        let mut starting = tokio::spawn(coalition_grpc::serve_starting(incoming.clone(), async {
            let _ = recovering.await;
        }));
        tracing::info!(%address, "listening; recovering the ledger");
        let engine = Self::recover(config, clock).await;
        // The starting phase closes its connections and hands the port over; a health watch
        // that a client keeps open must not hold the start up.
        let _ = recovered.send(());
        if tokio::time::timeout(STARTING_PHASE_CLOSE, &mut starting)
            .await
            .is_err()
        {
            starting.abort();
        }
        let engine = engine?;
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(coalition_grpc::serve(
            engine.clone(),
            config.server(),
            incoming,
            async {
                let _ = stopped.await;
            },
        ));
        tracing::info!(%address, database = %redacted(&config.database_url), "serving");
        let console = if config.console_address == "off" {
            None
        } else {
            Some(crate::console::RunningConsole::start(engine.clone(), config.console()).await?)
        };
        Ok(RunningServer {
            address,
            engine,
            console_address: console.as_ref().map(|console| console.address),
            console,
            shutdown_grace: std::time::Duration::from_millis(config.shutdown_grace_ms),
            stop: Some(stop),
            server,
        })
    }

    /// Opens the database, takes the writer's lock and recovers the ledger.
    async fn recover(config: &Config, clock: Arc<dyn Clock>) -> anyhow::Result<Engine> {
        let storage = Storage::connect(&ConnectOptions {
            url: config.database_url.clone(),
            connections_max: config.database_connections_max,
            create_if_missing: true,
            sqlite_writer_cache_mib: config.sqlite_writer_cache_mib,
        })
        .await
        .with_context(|| {
            format!(
                "cannot open the database {}",
                redacted(&config.database_url)
            )
        })?;
        let writer_lock = storage.lock_writer(&config.database_url).await?;
        Engine::start(storage, config.engine(), clock, writer_lock)
            .await
            .context("cannot recover the ledger")
    }

    /// The address for clients, e.g. `http://127.0.0.1:50051`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.address)
    }

    /// Graceful shutdown: stop accepting, let calls in flight finish (their batch commits and
    /// is acknowledged), stop the writer, close the database. Connections still open after
    /// `shutdown_grace_ms` (a gateway's stream that never ends) are cut; whatever their calls
    /// had handed to the writer is still committed before the writer stops.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        if let Some(console) = self.console.take() {
            console.shutdown().await;
        }
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let served = match tokio::time::timeout(self.shutdown_grace, &mut self.server).await {
            Ok(served) => Some(served),
            Err(_) => {
                tracing::warn!(
                    grace_ms = self.shutdown_grace.as_millis() as u64,
                    "connections still open after the grace period; closing them"
                );
                self.server.abort();
                None
            }
        };
        self.engine.shutdown().await;
        self.engine.storage().close().await;
        if let Some(served) = served {
            served??;
        }
        tracing::info!("stopped");
        Ok(())
    }
}

/// A database URL without its password, for logs.
pub fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let credentials = &url[scheme_end + 3..at];
            match credentials.find(':') {
                Some(colon) => format!(
                    "{}{}:***{}",
                    &url[..scheme_end + 3],
                    &credentials[..colon],
                    &url[at..]
                ),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

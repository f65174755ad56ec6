//! turmoil's simulated TCP listener, and the simulated server's accept loop: the HTTP router
//! of `rockhound serve` runs unchanged inside the simulation.

use axum::Router;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

/// A bound simulated listener.
#[allow(missing_debug_implementations)]
pub struct SimListener(pub turmoil::net::TcpListener);

impl SimListener {
    /// Binds `addr` on the current turmoil host.
    pub async fn bind(addr: &str) -> io::Result<SimListener> {
        turmoil::net::TcpListener::bind(addr).await.map(SimListener)
    }
}

impl axum::serve::Listener for SimListener {
    type Io = turmoil::net::TcpStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.0.accept().await {
                Ok(accepted) => return accepted,
                // A failed accept (a peer gone before the handshake finished) is retried
                // after a pause, as axum does for real sockets.
                Err(_) => tokio::time::sleep(Duration::from_millis(1)).await,
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.0.local_addr()
    }
}

/// Serves `router` on `listener` for as long as the host lives, one local task per
/// connection.
///
/// Not `axum::serve`: it spawns connections with `tokio::spawn`, and tokio keeps those tasks
/// in lists sharded by task id, a process-wide counter. When turmoil crashes the server host
/// the tasks are dropped shard by shard, so the order in which connections close (and the
/// latency each close draws from the simulation's RNG) would depend on how many tasks the
/// process spawned before: a second run of the same seed in the same process could differ.
/// `spawn_local` tasks live in the host's `LocalSet`, one list in spawn order.
pub async fn serve(mut listener: SimListener, router: Router) -> io::Result<()> {
    use axum::serve::Listener as _;
    loop {
        let (stream, _) = listener.accept().await;
        let service = TowerToHyperService::new(router.clone());
        tokio::task::spawn_local(async move {
            // A connection that fails (a peer gone, a torn request) ends alone.
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

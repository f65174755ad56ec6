//! turmoil's simulated TCP listener as an [`axum::serve::Listener`], so the HTTP router of
//! `rockhound serve` runs unchanged inside the simulation.

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

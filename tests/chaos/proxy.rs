//! A TCP proxy in front of the faulty partner, for the failures partner-sim cannot make
//! itself: connections refused (nothing listens on the port) and TLS handshakes that fail
//! (the peer answers the ClientHello with plain text). Switching mode closes every open
//! connection, so delivery's pooled connections meet the fault too.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Pass every byte to the partner.
    Forward,
    /// Nothing listens: connections are refused.
    Refuse,
    /// Accept, answer plain text, close: the TLS handshake fails.
    BreakTls,
}

#[derive(Debug)]
pub struct FaultProxy {
    pub port: u16,
    mode: watch::Sender<Mode>,
    task: tokio::task::JoinHandle<()>,
}

impl FaultProxy {
    /// Listens on a free port and forwards to `target` on 127.0.0.1.
    pub fn start(target: u16) -> Self {
        let port = testkit::service::free_port();
        let (mode, rx) = watch::channel(Mode::Forward);
        let task = tokio::spawn(run(port, target, rx));
        Self { port, mode, task }
    }

    pub fn set(&self, mode: Mode) {
        self.mode.send_replace(mode);
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn run(port: u16, target: u16, mut mode: watch::Receiver<Mode>) {
    let address = SocketAddr::from(([127, 0, 0, 1], port));
    loop {
        while *mode.borrow_and_update() == Mode::Refuse {
            if mode.changed().await.is_err() {
                return;
            }
        }
        let listener = loop {
            let bound = TcpSocket::new_v4().and_then(|socket| {
                socket.set_reuseaddr(true)?;
                socket.bind(address)?;
                socket.listen(1024)
            });
            match bound {
                Ok(listener) => break listener,
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        };
        // Connections of this mode; a mode change closes them all.
        let connections = CancellationToken::new();
        let current = *mode.borrow();
        loop {
            tokio::select! {
                changed = mode.changed() => {
                    connections.cancel();
                    if changed.is_err() {
                        return;
                    }
                    break;
                }
                accepted = listener.accept() => {
                    if let Ok((client, _)) = accepted {
                        tokio::spawn(serve(client, target, current, connections.child_token()));
                    }
                }
            }
        }
        // Dropping the listener stops listening (Refuse) or makes way for the next mode's.
    }
}

async fn serve(mut client: TcpStream, target: u16, mode: Mode, closed: CancellationToken) {
    match mode {
        Mode::Forward => {
            let Ok(mut partner) = TcpStream::connect(("127.0.0.1", target)).await else {
                return;
            };
            tokio::select! {
                _ = tokio::io::copy_bidirectional(&mut client, &mut partner) => {}
                () = closed.cancelled() => {}
            }
        }
        Mode::BreakTls => {
            // As a server that does not speak TLS: read the ClientHello, answer plain text,
            // close gracefully (reading on), so the client reads the answer rather than a
            // reset — a handshake failure, not a connection failure.
            let mut hello = [0_u8; 4096];
            let _ = tokio::time::timeout(Duration::from_secs(2), client.read(&mut hello)).await;
            let _ = client
                .write_all(b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n")
                .await;
            let _ = client.shutdown().await;
            let _ = tokio::time::timeout(Duration::from_secs(2), async {
                while matches!(client.read(&mut hello).await, Ok(n) if n > 0) {}
            })
            .await;
        }
        Mode::Refuse => {}
    }
}

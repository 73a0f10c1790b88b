//! The floor: what any HTTP proxy hop costs on this machine. `lowart-bench __floor-proxy
//! <upstream>` is a bare forwarding proxy (hyper, one thread, an upstream connection per
//! client connection, no parsing, no logging, no accounting) that the bench runs pinned to
//! the gateway's CPU and loads at the same fixed rates. Its overhead over the direct call
//! is the part of the gateway's that is loopback TCP, wake-ups and scheduling, not Lowart.

use std::net::SocketAddr;
use std::process::Stdio;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1 as client;
use hyper::server::conn::http1 as server;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;

use crate::BoxError;

/// The argument that runs this process as the floor proxy.
pub const MODE: &str = "__floor-proxy";

/// Serves as the proxy to `upstream` on a current-thread runtime; prints its address.
pub fn serve(upstream: &str) -> Result<(), BoxError> {
    let upstream: SocketAddr = upstream.parse()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        println!("{}", listener.local_addr()?);
        loop {
            let (stream, _) = listener.accept().await?;
            stream.set_nodelay(true)?;
            tokio::spawn(async move {
                let Ok(up) = TcpStream::connect(upstream).await else {
                    return;
                };
                let _ = up.set_nodelay(true);
                let Ok((send, conn)) = client::handshake(TokioIo::new(up)).await else {
                    return;
                };
                tokio::spawn(conn);
                let send = std::sync::Arc::new(Mutex::new(send));
                let service = service_fn(move |req: Request<Incoming>| {
                    let send = send.clone();
                    async move { forward(send, req).await }
                });
                let _ = server::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    })
}

async fn forward(
    send: std::sync::Arc<Mutex<client::SendRequest<Full<Bytes>>>>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, hyper::Error> {
    let (parts, body) = req.into_parts();
    let body = body.collect().await?.to_bytes();
    let mut send = send.lock().await;
    send.ready().await?;
    let res = send
        .send_request(Request::from_parts(parts, Full::new(body)))
        .await?;
    drop(send);
    let (parts, body) = res.into_parts();
    let body = body.collect().await?.to_bytes();
    Ok(Response::from_parts(parts, Full::new(body)))
}

/// The floor proxy, running as a child process.
pub struct FloorProxy {
    child: tokio::process::Child,
    pub addr: SocketAddr,
}

impl FloorProxy {
    /// Starts this executable as the proxy to `upstream`, on CPU 0 when `pin`.
    pub async fn start(upstream: SocketAddr, pin: bool) -> Result<Self, BoxError> {
        let exe = std::env::current_exe()?;
        let mut command = if pin {
            let mut c = tokio::process::Command::new("taskset");
            c.arg("-c").arg("0").arg(exe);
            c
        } else {
            tokio::process::Command::new(exe)
        };
        let mut child = command
            .arg(MODE)
            .arg(upstream.to_string())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let line = BufReader::new(stdout)
            .lines()
            .next_line()
            .await?
            .ok_or("the floor proxy printed no address")?;
        Ok(Self {
            child,
            addr: line.trim().parse()?,
        })
    }

    pub async fn stop(mut self) -> Result<(), BoxError> {
        self.child.kill().await?;
        Ok(())
    }
}

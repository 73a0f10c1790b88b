//! A minimal HTTP/1.1 client on hyper: one connection per `Conn`, TCP_NODELAY set.

use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::BoxError;

pub struct Conn {
    addr: SocketAddr,
    send: SendRequest<Full<Bytes>>,
}

impl Conn {
    pub async fn open(addr: SocketAddr) -> Result<Self, BoxError> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let (send, conn) = http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        Ok(Self { addr, send })
    }

    /// Sends one request and returns the response with its body not yet read.
    pub async fn send(
        &mut self,
        method: Method,
        path: &str,
        auth: Option<&str>,
        body: Option<Bytes>,
    ) -> Result<Response<Incoming>, BoxError> {
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", self.addr.to_string());
        if let Some(key) = auth {
            req = req.header("authorization", format!("Bearer {key}"));
        }
        if body.is_some() {
            req = req.header("content-type", "application/json");
        }
        let req = req.body(Full::new(body.unwrap_or_default()))?;
        self.send.ready().await?;
        Ok(self.send.send_request(req).await?)
    }

    /// Sends one request and reads the whole body.
    pub async fn call(
        &mut self,
        method: Method,
        path: &str,
        auth: Option<&str>,
        body: Option<Bytes>,
    ) -> Result<(StatusCode, Bytes), BoxError> {
        let res = self.send(method, path, auth, body).await?;
        let status = res.status();
        let body = res.into_body().collect().await?.to_bytes();
        Ok((status, body))
    }
}

/// One request on a fresh connection.
pub async fn call_once(
    addr: SocketAddr,
    method: Method,
    path: &str,
    auth: Option<&str>,
    body: Option<Bytes>,
) -> Result<(StatusCode, Bytes), BoxError> {
    Conn::open(addr).await?.call(method, path, auth, body).await
}

//! The subscriber's side: one request, then JSON lines as they come.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::header::{AUTHORIZATION, HOST};
use hyper::{Request, Response, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_rustls::rustls::pki_types::ServerName;

use super::{Line, WATCH_PATH};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A server to subscribe to.
pub struct Remote {
    url: String,
    host: String,
    port: u16,
    authority: String,
    secret: Option<String>,
    tls: Option<tokio_rustls::TlsConnector>,
}

/// What to subscribe to.
#[derive(Clone, Debug, Default)]
pub struct Subscription {
    /// Absolute path on the server.
    pub path: String,
    /// Comma-separated kinds; `None` for all.
    pub events: Option<String>,
    /// Resume after this token.
    pub since: Option<String>,
}

impl Remote {
    /// `url`: `http://host:port` or `https://host:port`; `ca` the
    /// authorities to trust for https (default: the system's).
    pub fn new(url: &str, secret: Option<String>, ca: Option<&Path>) -> Result<Remote> {
        let uri: Uri = url
            .parse()
            .with_context(|| format!("{url:?} is not a URL (e.g. http://host:7070)"))?;
        let tls = match uri.scheme_str() {
            Some("http") => None,
            Some("https") => Some(tokio_rustls::TlsConnector::from(super::tls::client_config(
                ca,
            )?)),
            _ => bail!("{url:?}: the URL must start with http:// or https://"),
        };
        let Some(host) = uri.host() else {
            bail!("{url:?} names no host")
        };
        if !matches!(uri.path(), "" | "/") {
            bail!("{url:?}: give the server only (http://host:port), not a path on it");
        }
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = uri
            .port_u16()
            .unwrap_or(if tls.is_some() { 443 } else { 80 });
        let authority = uri
            .authority()
            .map_or_else(|| host.clone(), |a| a.to_string());
        Ok(Remote {
            url: url.trim_end_matches('/').to_string(),
            host,
            port,
            authority,
            secret,
            tls,
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    fn request(&self, sub: &Subscription) -> Result<Request<Empty<Bytes>>> {
        let mut query = form_urlencoded::Serializer::new(String::new());
        query.append_pair("path", &sub.path);
        if let Some(events) = &sub.events {
            query.append_pair("events", events);
        }
        if let Some(since) = &sub.since {
            query.append_pair("since", since);
        }
        let mut req =
            Request::get(format!("{WATCH_PATH}?{}", query.finish())).header(HOST, &self.authority);
        if let Some(secret) = &self.secret {
            req = req.header(AUTHORIZATION, format!("Bearer {secret}"));
        }
        Ok(req.body(Empty::<Bytes>::new())?)
    }

    /// Subscribe; the stream's lines follow.
    pub async fn watch(&self, sub: &Subscription) -> Result<Stream> {
        let req = self.request(sub)?;
        let tcp = timeout(
            CONNECT_TIMEOUT,
            TcpStream::connect((self.host.as_str(), self.port)),
        )
        .await
        .with_context(|| format!("{}: connecting timed out", self.url))?
        .with_context(|| {
            format!(
                "cannot connect to {} (is ebb serve running there?)",
                self.url
            )
        })?;
        let _ = tcp.set_nodelay(true);
        let resp = match &self.tls {
            Some(tls) => {
                let name = ServerName::try_from(self.host.clone())
                    .with_context(|| format!("{:?} is not a host name for TLS", self.host))?;
                let stream = timeout(CONNECT_TIMEOUT, tls.connect(name, tcp))
                    .await
                    .with_context(|| format!("{}: TLS handshake timed out", self.url))?
                    .with_context(|| format!("{}: TLS handshake", self.url))?;
                send(stream, req).await
            }
            None => send(tcp, req).await,
        }
        .with_context(|| format!("{}: no answer", self.url))?;
        if resp.status() != StatusCode::OK {
            let status = resp.status();
            let body = timeout(CONNECT_TIMEOUT, resp.into_body().collect())
                .await
                .ok()
                .and_then(Result::ok)
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            let message = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v.get("error")?.as_str().map(str::to_string))
                .unwrap_or_else(|| String::from_utf8_lossy(&body).trim().to_string());
            return Err(Refused {
                url: self.url.clone(),
                status: status.as_u16(),
                message,
            }
            .into());
        }
        Ok(Stream {
            body: resp.into_body(),
            buf: Vec::new(),
            ended: false,
        })
    }
}

/// The server answered, and said no.
#[derive(Debug, thiserror::Error)]
#[error("{url}: {message} (HTTP {status})")]
pub struct Refused {
    pub url: String,
    pub status: u16,
    pub message: String,
}

impl Refused {
    /// Worth asking again later (the server is full, or its journal is
    /// momentarily unreadable), unlike a bad request.
    pub fn is_transient(&self) -> bool {
        self.status == 503
    }
}

async fn send<I>(io: I, req: Request<Empty<Bytes>>) -> Result<Response<Incoming>>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender.send_request(req).await?)
}

/// A subscription's lines, as the server sends them.
pub struct Stream {
    body: Incoming,
    buf: Vec<u8>,
    ended: bool,
}

impl Stream {
    /// The next line; `None` when the server ended the stream.
    pub async fn next(&mut self) -> Result<Option<Line>> {
        loop {
            if let Some(end) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=end).collect();
                let parsed = serde_json::from_slice(&line[..end]).with_context(|| {
                    format!(
                        "the server sent a line that is not an event: {:?}",
                        String::from_utf8_lossy(&line)
                    )
                })?;
                return Ok(Some(parsed));
            }
            if self.ended {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                bail!("the stream ended in the middle of a line");
            }
            match self.body.frame().await {
                Some(frame) => {
                    if let Ok(data) = frame.context("the connection broke")?.into_data() {
                        self.buf.extend_from_slice(&data);
                    }
                }
                None => self.ended = true,
            }
        }
    }
}

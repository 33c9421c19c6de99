//! `ebb serve` and `ebb watch`.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Args;

use crate::remote::client::{Refused, Remote, Stream, Subscription};
use crate::remote::server::{read_secret, Config, Server};
use crate::remote::{tls, Line, Reason, DEFAULT_LISTEN};

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// The directory to export: a managed tree or a directory in one.
    /// Subscribers see nothing outside it.
    path: PathBuf,
    /// Address and port to listen on. Anything but loopback also needs
    /// TLS (or --insecure).
    #[arg(long, value_name = "ADDR:PORT", default_value = DEFAULT_LISTEN)]
    listen: SocketAddr,
    /// File holding the secret subscribers must present
    /// (Authorization: Bearer …). One word, at least 16 characters; keep
    /// it mode 0600. Required unless --no-auth.
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// Serve without a secret, on loopback only: every local user can then
    /// stream every change under the export.
    #[arg(long)]
    no_auth: bool,
    /// Serve off loopback without TLS: the secret and every file name
    /// travel in cleartext.
    #[arg(long)]
    insecure: bool,
    /// Serve TLS with this certificate chain (PEM); needs --tls-key.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Connections served at once; more are refused (HTTP 503).
    #[arg(long, value_name = "N", default_value_t = 1024)]
    max_connections: usize,
    /// A subscriber that has not read its stream for this long is sent
    /// "rescan" with the token to resume from, and its stream ends.
    #[arg(long, value_name = "SECS", default_value_t = 10.0)]
    slow_timeout: f64,
    /// Send idle streams a heartbeat (their current token) this often.
    #[arg(long, value_name = "SECS", default_value_t = 10.0)]
    heartbeat: f64,
}

#[derive(Args, Debug)]
pub struct WatchArgs {
    /// The server: http://host:port or https://host:port.
    #[arg(long, value_name = "URL")]
    remote: String,
    /// What to watch: an absolute path on the server, in what it exports.
    path: String,
    /// Kinds of change to receive, comma-separated: create, delete,
    /// modify, rename, attrib (default: all).
    #[arg(long, value_name = "LIST")]
    events: Option<String>,
    /// Resume: first every event after this token, then live ones.
    #[arg(long, value_name = "TOKEN")]
    since: Option<String>,
    /// One JSON object per line: path, kind, is_dir, token (and from,
    /// reason, detail where they apply).
    #[arg(long)]
    json: bool,
    /// Exit after printing this many lines.
    #[arg(long, value_name = "N")]
    max_events: Option<u64>,
    /// Exit when nothing has been printed for this long.
    #[arg(long, value_name = "SECS")]
    idle_exit: Option<f64>,
    /// File holding the server's secret (see ebb serve --token-file).
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// Trust this certificate authority (PEM) for https:// instead of
    /// the system's.
    #[arg(long, value_name = "FILE")]
    ca_cert: Option<PathBuf>,
    /// Exit when the connection is lost (status 1) or the server says
    /// this subscriber was too slow (status 3, after printing its `rescan`
    /// line), instead of resuming from the last token.
    #[arg(long)]
    no_reconnect: bool,
}

fn seconds(s: f64, what: &str) -> Result<Duration> {
    Duration::try_from_secs_f64(s)
        .with_context(|| format!("{what}: {s} is not a number of seconds"))
}

pub fn serve(args: ServeArgs) -> Result<ExitCode> {
    let mut config = Config::new(args.path.clone(), args.listen);
    config.secret = args.token_file.as_deref().map(read_secret).transpose()?;
    config.no_auth = args.no_auth;
    config.insecure = args.insecure;
    if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
        config.tls = Some(tls::server_config(cert, key)?);
    }
    anyhow::ensure!(
        args.max_connections > 0,
        "--max-connections must be at least 1"
    );
    config.max_connections = args.max_connections;
    config.slow_timeout = seconds(args.slow_timeout, "--slow-timeout")?;
    config.heartbeat = seconds(args.heartbeat, "--heartbeat")?;
    let scheme = if config.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let server = Server::bind(config).await?;
        let addr = server.local_addr()?;
        // The bound address on stdout (--listen …:0 picks a port).
        println!("listening on {scheme}://{addr}");
        std::io::stdout().flush()?;
        tracing::info!(
            "serving the changes under {} on {scheme}://{addr}",
            args.path.display()
        );
        server.run(stop_signal()).await
    })?;
    Ok(ExitCode::SUCCESS)
}

async fn stop_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => std::future::pending().await,
    }
}

pub fn watch(args: WatchArgs) -> Result<ExitCode> {
    let secret = match &args.token_file {
        Some(path) => Some(String::from_utf8(read_secret(path)?)?),
        None => None,
    };
    let remote = Remote::new(&args.remote, secret, args.ca_cert.as_deref())?;
    let idle = args
        .idle_exit
        .map(|s| seconds(s, "--idle-exit"))
        .transpose()?;
    let mut sub = Subscription {
        path: args.path.clone(),
        events: args.events.clone(),
        since: args.since.clone(),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let mut watcher = Watcher {
            args: &args,
            printed: 0,
            last_print: Instant::now(),
            out: std::io::stdout().lock(),
        };
        let mut backoff = Duration::from_millis(100);
        let mut connected_once = false;
        loop {
            let stream = match watcher.idle(remote.watch(&sub), idle).await {
                None => return Ok(ExitCode::SUCCESS),
                Some(Ok(stream)) => stream,
                Some(Err(e)) => {
                    let transient = e
                        .downcast_ref::<Refused>()
                        .is_none_or(Refused::is_transient);
                    if !connected_once || args.no_reconnect || !transient {
                        return Err(e);
                    }
                    eprintln!("ebb watch: {e:#}; trying again in {backoff:?}");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            };
            connected_once = true;
            backoff = Duration::from_millis(100);
            match watcher.follow(stream, &mut sub, idle).await? {
                Next::Exit(code) => return Ok(code),
                Next::Resume(why) => {
                    if args.no_reconnect {
                        anyhow::bail!("{why} (not resuming: --no-reconnect)");
                    }
                    let from = sub.since.as_deref().unwrap_or("now");
                    eprintln!("ebb watch: {why}; resuming from {from}");
                }
            }
        }
    })
}

enum Next {
    Exit(ExitCode),
    Resume(String),
}

struct Watcher<'a> {
    args: &'a WatchArgs,
    printed: u64,
    last_print: Instant,
    out: std::io::StdoutLock<'static>,
}

impl Watcher<'_> {
    /// `work`, unless nothing has been printed for --idle-exit first
    /// (then `None`).
    async fn idle<T>(
        &self,
        work: impl std::future::Future<Output = T>,
        idle: Option<Duration>,
    ) -> Option<T> {
        match idle {
            None => Some(work.await),
            Some(idle) => {
                let left = idle.saturating_sub(self.last_print.elapsed());
                tokio::time::timeout(left, work).await.ok()
            }
        }
    }

    async fn follow(
        &mut self,
        mut stream: Stream,
        sub: &mut Subscription,
        idle: Option<Duration>,
    ) -> Result<Next> {
        loop {
            let line = match self.idle(stream.next(), idle).await {
                None => return Ok(Next::Exit(ExitCode::SUCCESS)),
                Some(Ok(Some(line))) => line,
                Some(Ok(None)) => return Ok(Next::Resume("the server ended the stream".into())),
                Some(Err(e)) => return Ok(Next::Resume(format!("{e:#}"))),
            };
            sub.since = Some(line.token.clone());
            match line.kind.as_str() {
                "heartbeat" => continue,
                "rescan"
                    if line.reason.as_deref() == Some(Reason::Slow.as_str())
                        && !self.args.no_reconnect =>
                {
                    // Resuming from its token gets every event missed:
                    // nothing to rescan, so nothing to print.
                    return Ok(Next::Resume(
                        "the server found this subscriber too slow".into(),
                    ));
                }
                _ => {}
            }
            self.print(&line)?;
            if line.reason.as_deref() == Some(Reason::Slow.as_str()) {
                return Ok(Next::Exit(ExitCode::from(3)));
            }
            if line.kind == "gone" || self.args.max_events.is_some_and(|n| self.printed >= n) {
                return Ok(Next::Exit(ExitCode::SUCCESS));
            }
        }
    }

    fn print(&mut self, line: &Line) -> Result<()> {
        if self.args.json {
            serde_json::to_writer(&mut self.out, line)?;
            writeln!(self.out)?;
        } else {
            let slash = if line.is_dir && line.kind != "rescan" && line.kind != "gone" {
                "/"
            } else {
                ""
            };
            match (&line.from, &line.detail) {
                (Some(from), _) => {
                    writeln!(self.out, "{:<9} {from} -> {}{slash}", line.kind, line.path)?
                }
                (None, Some(detail)) => writeln!(
                    self.out,
                    "{:<9} {}: {detail} (token {})",
                    line.kind, line.path, line.token
                )?,
                (None, None) => writeln!(self.out, "{:<9} {}{slash}", line.kind, line.path)?,
            }
        }
        self.out.flush()?;
        self.printed += 1;
        self.last_print = Instant::now();
        Ok(())
    }
}

//! siproxctl: the management CLI. Calls one JSON-RPC (or, with `--xml`, XML-RPC) method on
//! a siprox management listener over HTTPS with a client certificate, prints the result
//! (a table for people, `--json` for scripts), and exits non-zero on any error with the
//! error printed. A blocking client on purpose (one request, then exit): openssl over a std
//! `TcpStream`, no HTTP crate. The pure parts live in `siprox_actors::mgmt::ctl`.
#![forbid(unsafe_code)]

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use clap::Parser;
use openssl::ssl::{HandshakeError, SslConnector, SslFiletype, SslMethod};
use serde_json::Value;
use siprox::rpc::{jsonrpc, xmlrpc};
use siprox_actors::mgmt::ctl::{self, Cli, CtlFile, Material, Refused};

/// Exit status when the server answered with an RPC error.
const EXIT_RPC_ERROR: u8 = 1;
/// Exit status when the server could not be reached or refused the connection.
const EXIT_TRANSPORT: u8 = 2;

/// Why a call failed.
enum Failure {
    Rpc {
        code: i64,
        message: String,
    },
    Transport(anyhow::Error),
    /// The TLS connection was refused one way or the other: printed with a hint that names
    /// the options and the files used.
    Refused(Refused, Box<Material>),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (method, params) = match ctl::resolve_command(&cli.command) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("siproxctl: {e}");
            return ExitCode::from(EXIT_RPC_ERROR);
        }
    };
    match run(&cli, &method, &params) {
        Ok(v) => {
            if cli.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&v).unwrap_or_else(|_| v.to_string())
                );
            } else {
                let width = std::env::var("COLUMNS")
                    .ok()
                    .and_then(|c| c.trim().parse::<usize>().ok())
                    .filter(|w| *w >= 40)
                    .unwrap_or(ctl::DEFAULT_WIDTH);
                println!("{}", ctl::render_for(&method, &v, width));
            }
            if ctl::cluster_reload_failed(&v) {
                eprintln!("siproxctl: {method}: not every node reloaded");
                return ExitCode::from(EXIT_RPC_ERROR);
            }
            ExitCode::SUCCESS
        }
        Err(Failure::Rpc { code, message }) => {
            if cli.json {
                println!(
                    "{}",
                    serde_json::json!({"error": {"code": code, "message": message}})
                );
            }
            eprintln!("siproxctl: {method}: error {code}: {message}");
            ExitCode::from(EXIT_RPC_ERROR)
        }
        Err(Failure::Transport(e)) => {
            eprintln!("siproxctl: {e:#}");
            ExitCode::from(EXIT_TRANSPORT)
        }
        Err(Failure::Refused(r, material)) => {
            eprintln!("siproxctl: {r}");
            eprintln!("{}", ctl::hint(&r, &material));
            ExitCode::from(EXIT_TRANSPORT)
        }
    }
}

fn run(cli: &Cli, method: &str, params: &[Value]) -> Result<Value, Failure> {
    let file_path = cli.config.clone().or_else(CtlFile::default_path);
    let file = match &file_path {
        Some(p) => CtlFile::load(p, cli.config.is_some()),
        None => Ok(CtlFile::default()),
    }
    .map_err(|e| Failure::Transport(anyhow!(e)))?;
    let url = cli
        .url
        .clone()
        .or(file.url.clone())
        .unwrap_or_else(|| ctl::DEFAULT_URL.to_owned());
    let cwd = std::env::current_dir().ok();
    let search = ctl::dev_search_dirs(cli.conf_dir.as_deref(), cwd.as_deref());
    let given = ctl::Given {
        cert: cli.cert.clone(),
        key: cli.key.clone(),
        ca: cli.ca.clone(),
    };
    let material = ctl::resolve_material(
        &given,
        &file,
        file_path.as_deref().filter(|p| p.exists()),
        &search,
        &|p: &std::path::Path| p.exists(),
    );

    let (host, port, path) = ctl::parse_url(&url).map_err(|e| Failure::Transport(anyhow!(e)))?;
    let (content_type, body) = if cli.xml {
        ("text/xml", xmlrpc::encode_call(method, params).into_bytes())
    } else {
        ("application/json", jsonrpc::request(1, method, params))
    };
    let (status, resp) = exchange(
        &host,
        port,
        &path,
        content_type,
        &body,
        &material,
        Duration::from_secs(cli.timeout.max(1)),
    )
    .map_err(|e| match e.downcast::<Refused>() {
        Ok(r) => Failure::Refused(r, Box::new(material.clone())),
        Err(e) => Failure::Transport(e),
    })?;
    if cli.xml {
        return xmlrpc::parse_response(&resp).map_err(|(code, message)| {
            if code == 0 {
                Failure::Transport(anyhow!("HTTP {status}: {message}"))
            } else {
                Failure::Rpc {
                    code: i64::from(code),
                    message,
                }
            }
        });
    }
    let v: Value = serde_json::from_slice(&resp).map_err(|_| {
        Failure::Transport(anyhow!(
            "HTTP {status}: {}",
            String::from_utf8_lossy(&resp).trim()
        ))
    })?;
    if let Some(e) = v.get("error") {
        return Err(Failure::Rpc {
            code: e.get("code").and_then(Value::as_i64).unwrap_or(0),
            message: e
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("unknown error")
                .to_owned(),
        });
    }
    v.get("result")
        .cloned()
        .ok_or_else(|| Failure::Transport(anyhow!("HTTP {status}: no result in the response")))
}

/// One HTTPS POST, read to EOF. A refused TLS connection is a [`Refused`] inside the error.
fn exchange(
    host: &str,
    port: u16,
    path: &str,
    content_type: &str,
    body: &[u8],
    m: &Material,
    timeout: Duration,
) -> anyhow::Result<(u16, Vec<u8>)> {
    // The openssl crate panics on a path that is not UTF-8 (it hands OpenSSL a C string).
    for p in [&m.ca, &m.cert, &m.key].into_iter().flatten() {
        if p.to_str().is_none() {
            bail!("{}: not a UTF-8 path", p.display());
        }
    }
    let mut b = SslConnector::builder(SslMethod::tls_client())?;
    if let Some(ca) = &m.ca {
        b.set_ca_file(ca)
            .with_context(|| format!("CA file {}", ca.display()))?;
    }
    if let Some(cert) = &m.cert {
        b.set_certificate_chain_file(cert)
            .with_context(|| format!("client certificate {}", cert.display()))?;
        if let Some(key) = &m.key {
            b.set_private_key_file(key, SslFiletype::PEM)
                .with_context(|| format!("client key {}", key.display()))?;
            b.check_private_key()
                .context("the client key does not match the certificate")?;
        }
    }
    let connector = b.build();
    let addr = (host, port)
        .to_socket_addrs()
        .with_context(|| format!("cannot resolve {host}"))?
        .next()
        .ok_or_else(|| anyhow!("{host}: no address"))?;
    let tcp = TcpStream::connect_timeout(&addr, timeout)
        .with_context(|| format!("cannot connect to {addr}"))?;
    tcp.set_read_timeout(Some(timeout))?;
    tcp.set_write_timeout(Some(timeout))?;
    let mut tls = connector.connect(host, tcp).map_err(|e| {
        let verify = match &e {
            HandshakeError::Failure(mid) | HandshakeError::WouldBlock(mid) => {
                Some(mid.ssl().verify_result())
            }
            HandshakeError::SetupFailure(_) => None,
        };
        match verify {
            Some(v) if v != openssl::x509::X509VerifyResult::OK => {
                anyhow::Error::new(Refused::ServerNotTrusted {
                    addr: addr.to_string(),
                    reason: v.error_string().to_owned(),
                })
            }
            _ => anyhow::Error::new(Refused::ClientNotAccepted {
                what: format!("TLS handshake with {addr} failed: {e}"),
            }),
        }
    })?;
    let host_header = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {host_header}\r\nUser-Agent: siproxctl/{}\r\n\
         Content-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        env!("CARGO_PKG_VERSION"),
        body.len()
    );
    let mut req = head.into_bytes();
    req.extend_from_slice(body);
    // With TLS 1.3 a refused client certificate surfaces after the handshake: on the first
    // read, or already on this write when the server's alert and close came first.
    let refused = |what: String| anyhow::Error::new(Refused::ClientNotAccepted { what });
    tls.write_all(&req)
        .map_err(|e| refused(format!("sending the request failed: {e}")))?;
    let mut resp = Vec::new();
    match tls.read_to_end(&mut resp) {
        Ok(_) => {}
        Err(e) if !resp.is_empty() && e.kind() != std::io::ErrorKind::WouldBlock => {}
        Err(e) => return Err(refused(format!("the server closed the connection: {e}"))),
    }
    if resp.is_empty() {
        return Err(refused(
            "the server closed the connection without answering".to_owned(),
        ));
    }
    ctl::parse_http_response(&resp).map_err(|e| anyhow!(e))
}

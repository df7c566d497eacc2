//! The webhook caller: a rule's `webhook` action POSTs JSON to an admin-configured
//! `http://` URL, and the engine never waits for it.
//!
//! The engine hands a [`WebhookCall`] to [`Webhooks::send`], which only puts it in a bounded
//! queue (or says "full" at once). A small pool of worker tasks takes calls from the queue,
//! sends them with hyper's client, retries when the call asks to, and reports each call's
//! outcome once through the `report` callback given to [`Webhooks::start`].
//!
//! Invariants and limits (what a bad rule file or a bad webhook server can make it do):
//! - `send` never blocks and never awaits; at most `queue` calls wait, the rest are refused.
//! - Every accepted call is reported exactly once, also when its URL is invalid (then with
//!   `attempts = 0`) and also when the callback panicked for an earlier call.
//! - One attempt (connect, request, response head, reading the body) ends at the call's
//!   timeout, capped at [`MAX_TIMEOUT`]; a server that accepts and never answers, or
//!   streams forever, holds a worker no longer than that.
//! - At most [`MAX_RETRIES`] retries, with backoff 1 s, 2 s, 4 s, …; a retrying call holds
//!   its worker during the backoff, so one call holds a worker at most
//!   `(MAX_RETRIES + 1) × timeout + 31 s`.
//! - The response body is read up to [`MAX_RESPONSE_BODY`] bytes and discarded; redirects
//!   are not followed; request bodies over [`MAX_REQUEST_BODY`] are not sent.
//! - Plain HTTP only: this build has no TLS, and `https://` URLs are refused with that
//!   said.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::header::{CONTENT_TYPE, USER_AGENT};
use hyper::{Method, Request, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::sync::{Mutex, mpsc};
use tokio::time::Instant;

/// The most retries a call gets, whatever it asks for: with the doubling backoff that is
/// 1 + 2 + 4 + 8 + 16 = 31 s of waiting, enough to ride out a webhook server's restart.
pub const MAX_RETRIES: u32 = 5;
/// The longest per-attempt timeout honoured; longer ones are cut to this.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(60);
/// How much of a response body is read (then discarded) before the connection is dropped.
pub const MAX_RESPONSE_BODY: usize = 64 * 1024;
/// The largest request body sent; a larger one is reported as not sent.
pub const MAX_REQUEST_BODY: usize = 1024 * 1024;
/// The longest URL accepted by [`check_url`].
pub const MAX_URL_LEN: usize = 2048;

/// The wait before the first retry; it doubles for each next one.
const BACKOFF_BASE: Duration = Duration::from_secs(1);
/// How long an idle kept-alive connection to a webhook server is kept for reuse.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// One call of a webhook, as the engine hands it over.
#[derive(Debug, Clone, PartialEq)]
pub struct WebhookCall {
    /// `http://host[:port]/path[?query]`, checked with [`check_url`] when the admin saved it.
    pub url: String,
    /// Sent as the JSON request body.
    pub body: serde_json::Value,
    /// Per attempt (capped at [`MAX_TIMEOUT`]).
    pub timeout: Duration,
    /// Attempts after the first failure (capped at [`MAX_RETRIES`]); 0: no retry.
    pub retries: u32,
    /// The caller's id for this call, echoed in the result.
    pub tag: String,
}

/// How a call ended: the last attempt's outcome.
#[derive(Debug, Clone, PartialEq)]
pub struct WebhookResult {
    /// The call's `tag`.
    pub tag: String,
    /// The call's `url`.
    pub url: String,
    /// Attempts made; 0 when the call could not be sent at all (bad URL, body too large).
    pub attempts: u32,
    /// The last attempt's HTTP status, if a response came back.
    pub status: Option<u16>,
    /// What went wrong, for a person; `None` exactly when the call succeeded (status 2xx).
    pub error: Option<String>,
    /// From the start of the first attempt to the outcome, backoff included (the time the
    /// call waited in the queue is not counted).
    pub elapsed_ms: u64,
}

impl WebhookResult {
    /// The webhook answered 2xx.
    pub fn ok(&self) -> bool {
        matches!(self.status, Some(200..=299))
    }
}

/// Checks a webhook URL when an admin saves it: scheme `http`, a host, a port (if any) in
/// 1–65535, no user info, no fragment. The error says what is wrong and what to write.
pub fn check_url(url: &str) -> Result<(), String> {
    const SHAPE: &str = "write http://host[:port]/path";
    if url.is_empty() {
        return Err(format!("the URL is empty; {SHAPE}"));
    }
    if url.len() > MAX_URL_LEN {
        return Err(format!(
            "the URL is {} characters long, over the limit of {MAX_URL_LEN}",
            url.len()
        ));
    }
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(
            "the URL contains a space or a control character; percent-encode it (%20)".into(),
        );
    }
    if !url.is_ascii() {
        return Err(format!(
            "the URL contains characters outside ASCII; percent-encode them (ä is %C3%A4) — {}",
            shorten(url)
        ));
    }
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(format!("the URL has no scheme; {SHAPE}"));
    };
    if scheme.eq_ignore_ascii_case("https") {
        return Err("https:// is not supported: this build has no TLS; use an http:// URL (the venue's network, or a local TLS proxy)".into());
    }
    if !scheme.eq_ignore_ascii_case("http") {
        return Err(format!(
            "the scheme `{}` is not supported; {SHAPE}",
            shorten(scheme)
        ));
    }
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    if authority.contains('@') {
        return Err("user info (user:password@) in the URL is not supported: it would be sent in clear; put a token in the path or query instead".into());
    }
    if tail.contains('#') {
        return Err("a fragment (#…) is never sent to the server; remove it".into());
    }
    let (host, port) = split_host_port(authority)?;
    check_host(host)?;
    if let Some(port) = port {
        let valid = !port.is_empty()
            && port.bytes().all(|b| b.is_ascii_digit())
            && matches!(port.parse::<u16>(), Ok(1..));
        if !valid {
            return Err(format!(
                "the port `{}` is not a number in 1–65535",
                shorten(port)
            ));
        }
    }
    Uri::try_from(url)
        .map(|_| ())
        .map_err(|e| format!("not a valid URL ({e}); percent-encode special characters"))
}

/// Splits `host[:port]` / `[v6][:port]`; the port is `Some("")` for a trailing colon.
fn split_host_port(authority: &str) -> Result<(&str, Option<&str>), String> {
    if authority.is_empty() {
        return Err("the URL has no host; write http://host[:port]/path".into());
    }
    if let Some(v6) = authority.strip_prefix('[') {
        let Some((host, after)) = v6.split_once(']') else {
            return Err("an IPv6 address is missing its closing `]`".into());
        };
        return match after.strip_prefix(':') {
            Some(port) => Ok((host, Some(port))),
            None if after.is_empty() => Ok((host, None)),
            None => Err(format!(
                "unexpected `{}` after the IPv6 address",
                shorten(after)
            )),
        };
    }
    match authority.split_once(':') {
        Some((host, port)) if port.contains(':') => Err(format!(
            "`{}:{}` has more than one colon; write an IPv6 address in brackets, [::1]",
            shorten(host),
            shorten(port)
        )),
        Some((host, port)) => Ok((host, Some(port))),
        None => Ok((authority, None)),
    }
}

/// A host is a name (letters, digits, `-`, `_`, dot-separated, no empty label), an IPv4
/// address (which is such a name), or an IPv6 address (from inside brackets).
fn check_host(host: &str) -> Result<(), String> {
    if host.is_empty() {
        return Err("the URL has no host; write http://host[:port]/path".into());
    }
    if host.contains(':') {
        return host
            .parse::<std::net::Ipv6Addr>()
            .map(|_| ())
            .map_err(|_| format!("`{}` is not an IPv6 address", shorten(host)));
    }
    let name_ok = host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if name_ok {
        Ok(())
    } else {
        Err(format!(
            "the host `{}` is not a valid host name or address",
            shorten(host)
        ))
    }
}

/// Cuts text quoted in an error to a readable length (on a char boundary).
fn shorten(text: &str) -> String {
    const MAX: usize = 60;
    match text.char_indices().nth(MAX) {
        None => text.to_string(),
        Some((end, _)) => format!("{}…", &text[..end]),
    }
}

/// The callback each call's outcome goes to.
type Report = Arc<dyn Fn(WebhookResult) + Send + Sync>;
type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// The webhook sender: a handle to the queue. Cloning shares the queue and the workers;
/// when the last handle is dropped, the workers finish what is queued and stop.
#[derive(Clone)]
pub struct Webhooks {
    tx: mpsc::Sender<WebhookCall>,
}

impl std::fmt::Debug for Webhooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhooks")
            .field("queued", &self.queued())
            .field("queue", &self.tx.max_capacity())
            .finish()
    }
}

impl Webhooks {
    /// Starts `workers` sender tasks (call inside a Tokio runtime); at most `queue` calls
    /// wait; `report` is called once per call with its outcome (from a worker task, so it
    /// should be quick: hand the result on, don't do work in it).
    ///
    /// `workers` and `queue` of 0 are taken as 1 (a queue of 0 cannot hold a call).
    ///
    /// # Panics
    /// When called outside a Tokio runtime (as `tokio::spawn` does).
    pub fn start(
        workers: usize,
        queue: usize,
        report: Arc<dyn Fn(WebhookResult) + Send + Sync>,
    ) -> Webhooks {
        let (tx, rx) = mpsc::channel(queue.max(1));
        let rx = Arc::new(Mutex::new(rx));
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let workers = workers.max(1);
        // The client keeps idle connections per host, so a webhook fired often reuses one;
        // the timer closes those idle for POOL_IDLE_TIMEOUT, so none linger for days.
        let client: HttpClient = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .pool_max_idle_per_host(workers)
            .build(connector);
        for _ in 0..workers {
            tokio::spawn(worker(rx.clone(), client.clone(), report.clone()));
        }
        Webhooks { tx }
    }

    /// Never blocks, never awaits: false when the queue is full (the caller records that),
    /// or when the workers are gone (the runtime is shutting down). A call accepted here is
    /// reported once through the callback; a refused one is not.
    pub fn send(&self, call: WebhookCall) -> bool {
        self.tx.try_send(call).is_ok()
    }

    /// Calls waiting in the queue (not those a worker is sending).
    pub fn queued(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }
}

/// One sender task: takes calls until the queue closes.
async fn worker(rx: Arc<Mutex<mpsc::Receiver<WebhookCall>>>, client: HttpClient, report: Report) {
    loop {
        // The lock is held only while waiting for the next call, not while sending it.
        let next = rx.lock().await.recv().await;
        let Some(call) = next else { break };
        let result = deliver(&client, call).await;
        // A panicking callback must not take the worker (and every later report) with it.
        if std::panic::catch_unwind(AssertUnwindSafe(|| report(result))).is_err() {
            tracing::error!("the webhook report callback panicked; the result was lost");
        }
    }
}

/// Sends one call with its retries and says how it ended.
async fn deliver(client: &HttpClient, call: WebhookCall) -> WebhookResult {
    let started = Instant::now();
    let WebhookCall {
        url,
        body,
        timeout,
        retries,
        tag,
    } = call;
    let (timeout, retries) = limits(timeout, retries);
    let mut result = WebhookResult {
        tag,
        url,
        attempts: 0,
        status: None,
        error: None,
        elapsed_ms: 0,
    };
    match prepare(&result.url, &body) {
        Err(e) => result.error = Some(format!("not sent: {e}")),
        Ok((uri, bytes)) => loop {
            result.attempts += 1;
            let retry = match attempt(client, &uri, bytes.clone(), timeout).await {
                Ok(status) => {
                    result.status = Some(status);
                    result.error = status_error(status);
                    matches!(status, 408 | 429 | 500..=599)
                }
                Err(e) => {
                    result.status = None;
                    result.error = Some(e);
                    true
                }
            };
            if !retry || result.attempts > retries {
                break;
            }
            let wait = backoff(result.attempts);
            tracing::debug!(tag = %result.tag, attempt = result.attempts, ?wait, error = ?result.error, "webhook attempt failed; retrying");
            tokio::time::sleep(wait).await;
        },
    }
    result.elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    result
}

/// The call's timeout and retries within [`MAX_TIMEOUT`] and [`MAX_RETRIES`].
fn limits(timeout: Duration, retries: u32) -> (Duration, u32) {
    (timeout.min(MAX_TIMEOUT), retries.min(MAX_RETRIES))
}

/// The wait after failed attempt `n` (1-based): 1 s, 2 s, 4 s, … (`n` is at most
/// `MAX_RETRIES`, so the shift cannot overflow; saturate anyway).
fn backoff(n: u32) -> Duration {
    BACKOFF_BASE.saturating_mul(1u32.checked_shl(n.saturating_sub(1)).unwrap_or(u32::MAX))
}

/// The URI and the serialized body, or why the call cannot be sent.
fn prepare(url: &str, body: &serde_json::Value) -> Result<(Uri, Bytes), String> {
    check_url(url)?;
    let uri = Uri::try_from(url).map_err(|e| format!("not a valid URL ({e})"))?;
    let bytes = serde_json::to_vec(body).map_err(|e| format!("the body is not JSON ({e})"))?;
    if bytes.len() > MAX_REQUEST_BODY {
        return Err(format!(
            "the body is {} bytes, over the limit of {MAX_REQUEST_BODY}",
            bytes.len()
        ));
    }
    Ok((uri, Bytes::from(bytes)))
}

/// `None` for 2xx, else what the status means for the admin.
fn status_error(status: u16) -> Option<String> {
    let reason = hyper::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("");
    let reason = if reason.is_empty() {
        String::new()
    } else {
        format!(" {reason}")
    };
    match status {
        200..=299 => None,
        300..=399 => Some(format!(
            "the webhook answered {status}{reason}; redirects are not followed, configure the final URL"
        )),
        _ => Some(format!("the webhook answered {status}{reason}")),
    }
}

/// One POST, bounded by `timeout` from start to the end of reading the body. `Ok` is the
/// status of a response that came back; the body after its head is best effort (read up
/// to the limit or the deadline, then dropped) and does not change the outcome.
async fn attempt(
    client: &HttpClient,
    uri: &Uri,
    body: Bytes,
    timeout: Duration,
) -> Result<u16, String> {
    let deadline = Instant::now() + timeout;
    let request = Request::builder()
        .method(Method::POST)
        .uri(uri.clone())
        .header(CONTENT_TYPE, "application/json")
        .header(USER_AGENT, "gatehouse-webhook")
        .body(Full::new(body))
        .map_err(|e| format!("could not build the request ({e})"))?;
    let response = match tokio::time::timeout_at(deadline, client.request(request)).await {
        Err(_) => {
            return Err(format!(
                "no answer within the timeout of {} ms",
                timeout.as_millis()
            ));
        }
        Ok(Err(e)) => return Err(describe(&e, uri)),
        Ok(Ok(response)) => response,
    };
    let status = response.status().as_u16();
    let mut body = response.into_body();
    let drain = async {
        let mut read = 0usize;
        while read < MAX_RESPONSE_BODY {
            match body.frame().await {
                Some(Ok(frame)) => read += frame.data_ref().map_or(0, |d| d.len()),
                Some(Err(_)) | None => break,
            }
        }
    };
    // Past the deadline or the limit the body is dropped, which closes the connection.
    let _ = tokio::time::timeout_at(deadline, drain).await;
    Ok(status)
}

/// A transport error in words: "connection refused by host:port" rather than hyper's
/// layered error.
fn describe(error: &hyper_util::client::legacy::Error, uri: &Uri) -> String {
    let target = uri.authority().map_or("the host", |a| a.as_str());
    let mut chain = Vec::new();
    let mut io_kind = None;
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            io_kind = Some(io.kind());
        }
        let text = e.to_string();
        if !chain.iter().any(|c: &String| c.contains(&text)) {
            chain.push(text);
        }
        source = e.source();
    }
    let detail = chain.join(": ");
    if error.is_connect() {
        match io_kind {
            Some(std::io::ErrorKind::ConnectionRefused) => {
                format!("connection refused by {target} (is the webhook's server running?)")
            }
            _ => format!("could not connect to {target}: {detail}"),
        }
    } else {
        format!("the request to {target} failed: {detail}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    #[test]
    fn check_url_table() {
        let ok = [
            "http://127.0.0.1/hook",
            "http://127.0.0.1:8080/hook?game=1&x=%20y",
            "http://localhost",
            "http://Example.COM:1/",
            "HTTP://host/path",
            "http://[::1]:9000/hook",
            "http://[fe80::1]/",
            "http://my_host.lan/a/b",
            "http://host:65535",
        ];
        for url in ok {
            assert_eq!(check_url(url), Ok(()), "{url}");
        }
        let long = format!("http://host/{}", "a".repeat(MAX_URL_LEN));
        let bad: &[(&str, &str)] = &[
            ("", "the URL is empty"),
            (
                "https://host/hook",
                "https:// is not supported: this build has no TLS",
            ),
            ("HTTPS://host/hook", "no TLS"),
            (
                "ftp://host/file",
                "the scheme `ftp` is not supported; write http://host[:port]/path",
            ),
            ("host/hook", "the URL has no scheme"),
            ("http://", "the URL has no host"),
            ("http:///path", "the URL has no host"),
            ("http://:8080/path", "the URL has no host"),
            (
                "http://user:pw@host/hook",
                "user info (user:password@) in the URL is not supported",
            ),
            ("http://user@host/hook", "user info"),
            (
                "http://host:0/hook",
                "the port `0` is not a number in 1–65535",
            ),
            (
                "http://host:65536/hook",
                "the port `65536` is not a number in 1–65535",
            ),
            ("http://host:99999999999/", "the port `99999999999` is not"),
            ("http://host:/hook", "the port `` is not"),
            ("http://host:http/hook", "the port `http` is not"),
            ("http://host:-1/hook", "the port `-1` is not"),
            (
                "http://::1/hook",
                "has more than one colon; write an IPv6 address in brackets",
            ),
            ("http://[::1/hook", "missing its closing `]`"),
            (
                "http://[::1]x/hook",
                "unexpected `x` after the IPv6 address",
            ),
            ("http://[zz::1]/", "`zz::1` is not an IPv6 address"),
            ("http://ho st/hook", "a space or a control character"),
            ("http://host/ho\nok", "a space or a control character"),
            (
                "http://host..lan/",
                "the host `host..lan` is not a valid host name",
            ),
            ("http://hóst/", "characters outside ASCII"),
            (
                "http://host/päth",
                "the URL contains characters outside ASCII; percent-encode them",
            ),
            ("http://host/hook#frag", "a fragment (#…) is never sent"),
            ("http://host/a<b>", "not a valid URL"),
            ("http://h*st/", "the host `h*st` is not a valid host name"),
            (&long, "over the limit of 2048"),
        ];
        for (url, want) in bad {
            let err = check_url(url).expect_err(url);
            assert!(err.contains(want), "{url:?}: got {err:?}, want {want:?}");
        }
    }

    /// What the test server does with each request on a connection.
    #[derive(Clone, Copy)]
    enum Behaviour {
        /// Answers with the statuses in turn (the last repeats), an empty body.
        Statuses(&'static [u16]),
        /// Reads the request, never answers.
        Silent,
        /// Answers 200 with a chunked body that never ends, 1 KiB a millisecond.
        StreamForever,
        /// Answers 200 with a chunked body that never ends, a byte every 50 ms.
        Trickle,
    }

    /// A request as the server saw it.
    #[derive(Debug)]
    struct Seen {
        head: String,
        body: Vec<u8>,
    }

    /// A real HTTP/1.1 server on 127.0.0.1:0 (raw tokio); returns its address and the
    /// requests it got. It runs until the test's runtime ends.
    async fn server(behaviour: Behaviour) -> (String, mpsc::UnboundedReceiver<Seen>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let (seen_tx, seen_rx) = mpsc::unbounded_channel();
        let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        tokio::spawn(async move {
            loop {
                let (socket, _) = listener.accept().await.unwrap();
                let seen_tx = seen_tx.clone();
                let count = count.clone();
                tokio::spawn(async move {
                    let _ = connection(socket, behaviour, seen_tx, count).await;
                });
            }
        });
        (addr, seen_rx)
    }

    async fn connection(
        mut socket: TcpStream,
        behaviour: Behaviour,
        seen: mpsc::UnboundedSender<Seen>,
        count: Arc<std::sync::atomic::AtomicUsize>,
    ) -> std::io::Result<()> {
        let mut buf = Vec::new();
        loop {
            // Read one request: the head, then Content-Length bytes of body.
            let head_end = loop {
                if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    break i + 4;
                }
                let mut chunk = [0u8; 4096];
                let n = socket.read(&mut chunk).await?;
                if n == 0 {
                    return Ok(());
                }
                buf.extend_from_slice(&chunk[..n]);
            };
            let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
            let length: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().unwrap())
                })
                .unwrap_or(0);
            while buf.len() < head_end + length {
                let mut chunk = [0u8; 4096];
                let n = socket.read(&mut chunk).await?;
                if n == 0 {
                    return Ok(());
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            let body = buf[head_end..head_end + length].to_vec();
            buf.drain(..head_end + length);
            let _ = seen.send(Seen { head, body });
            let n = count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            match behaviour {
                Behaviour::Statuses(list) => {
                    let status = list[n.min(list.len() - 1)];
                    let extra = if (300..400).contains(&status) {
                        "Location: /elsewhere\r\n"
                    } else {
                        ""
                    };
                    let reply =
                        format!("HTTP/1.1 {status} X\r\n{extra}Content-Length: 2\r\n\r\nok");
                    socket.write_all(reply.as_bytes()).await?;
                }
                Behaviour::Silent => {
                    // Hold the connection open without a word until the client gives up.
                    let mut rest = [0u8; 64];
                    while socket.read(&mut rest).await? > 0 {}
                    return Ok(());
                }
                Behaviour::Trickle => {
                    socket
                        .write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
                        .await?;
                    loop {
                        socket.write_all(b"1\r\nx\r\n").await?;
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
                Behaviour::StreamForever => {
                    socket
                        .write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
                        .await?;
                    let chunk = format!("{:x}\r\n{}\r\n", 1024, "x".repeat(1024));
                    loop {
                        socket.write_all(chunk.as_bytes()).await?;
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                }
            }
        }
    }

    /// A sender whose reports arrive on a channel.
    fn sender(workers: usize, queue: usize) -> (Webhooks, mpsc::UnboundedReceiver<WebhookResult>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let report: Report = Arc::new(move |r| {
            let _ = tx.send(r);
        });
        (Webhooks::start(workers, queue, report), rx)
    }

    fn call(url: &str, retries: u32, timeout_ms: u64) -> WebhookCall {
        WebhookCall {
            url: url.to_string(),
            body: json!({"rule": "alarm", "level": 3, "text": "тревога"}),
            timeout: Duration::from_millis(timeout_ms),
            retries,
            tag: "rule-7#1".into(),
        }
    }

    /// Waits for the next report; a generous guard so a hang fails instead of stalling.
    async fn next_report(rx: &mut mpsc::UnboundedReceiver<WebhookResult>) -> WebhookResult {
        report_within(rx, 30).await
    }

    async fn report_within(
        rx: &mut mpsc::UnboundedReceiver<WebhookResult>,
        secs: u64,
    ) -> WebhookResult {
        tokio::time::timeout(Duration::from_secs(secs), rx.recv())
            .await
            .expect("no report")
            .expect("reports closed")
    }

    #[tokio::test]
    async fn a_2xx_is_delivered_with_the_calls_body() {
        let (addr, mut seen) = server(Behaviour::Statuses(&[204])).await;
        let (hooks, mut reports) = sender(2, 8);
        let c = call(&format!("http://{addr}/hook?game=1"), 3, 5000);
        let want_body = c.body.clone();
        assert!(hooks.send(c));
        let r = next_report(&mut reports).await;
        assert_eq!(
            (r.tag.as_str(), r.attempts, r.status, r.error.as_deref()),
            ("rule-7#1", 1, Some(204), None)
        );
        assert!(r.ok());
        assert_eq!(r.url, format!("http://{addr}/hook?game=1"));
        let req = seen.recv().await.unwrap();
        assert!(
            req.head.starts_with("POST /hook?game=1 HTTP/1.1\r\n"),
            "{}",
            req.head
        );
        let head = req.head.to_ascii_lowercase();
        assert!(
            head.contains("\r\ncontent-type: application/json\r\n"),
            "{head}"
        );
        assert!(head.contains(&format!("\r\nhost: {addr}\r\n")), "{head}");
        let body: serde_json::Value = serde_json::from_slice(&req.body).unwrap();
        assert_eq!(body, want_body);
        assert!(seen.try_recv().is_err(), "one request only");
    }

    #[tokio::test]
    async fn a_500_is_retried_then_reported() {
        let (addr, mut seen) = server(Behaviour::Statuses(&[500])).await;
        let (hooks, mut reports) = sender(1, 8);
        assert!(hooks.send(call(&format!("http://{addr}/hook"), 2, 5000)));
        let r = next_report(&mut reports).await;
        assert_eq!((r.attempts, r.status), (3, Some(500)));
        assert!(!r.ok());
        assert_eq!(
            r.error.as_deref(),
            Some("the webhook answered 500 Internal Server Error")
        );
        for _ in 0..3 {
            seen.recv().await.unwrap();
        }
        assert!(seen.try_recv().is_err(), "exactly retries + 1 requests");
    }

    #[tokio::test]
    async fn a_retry_that_succeeds_is_reported_ok() {
        let (addr, _seen) = server(Behaviour::Statuses(&[503, 200])).await;
        let (hooks, mut reports) = sender(1, 8);
        assert!(hooks.send(call(&format!("http://{addr}/hook"), 4, 5000)));
        let r = next_report(&mut reports).await;
        assert_eq!((r.attempts, r.status, r.error), (2, Some(200), None));
    }

    /// Statuses a retry cannot fix are not retried, even when the call allows retries; a
    /// redirect is reported, not followed.
    #[tokio::test]
    async fn permanent_failures_and_redirects_are_not_retried() {
        let cases: &[(&'static [u16], &str)] = &[
            (&[404], "the webhook answered 404 Not Found"),
            (&[400], "the webhook answered 400 Bad Request"),
            (
                &[302],
                "the webhook answered 302 Found; redirects are not followed, configure the final URL",
            ),
        ];
        for (statuses, want) in cases {
            let (addr, mut seen) = server(Behaviour::Statuses(statuses)).await;
            let (hooks, mut reports) = sender(1, 8);
            assert!(hooks.send(call(&format!("http://{addr}/hook"), 3, 5000)));
            let r = next_report(&mut reports).await;
            assert_eq!(
                (r.attempts, r.status, r.error.as_deref()),
                (1, Some(statuses[0]), Some(*want))
            );
            seen.recv().await.unwrap();
            assert!(seen.try_recv().is_err(), "{statuses:?}: one request only");
        }
    }

    #[tokio::test]
    async fn a_server_that_never_answers_times_out() {
        let (addr, _seen) = server(Behaviour::Silent).await;
        let (hooks, mut reports) = sender(1, 8);
        assert!(hooks.send(call(&format!("http://{addr}/hook"), 0, 200)));
        let r = next_report(&mut reports).await;
        assert_eq!((r.attempts, r.status), (1, None));
        assert_eq!(
            r.error.as_deref(),
            Some("no answer within the timeout of 200 ms")
        );
    }

    /// A body that never ends does not hold the worker: the status counts, the body is cut
    /// at 64 KiB (the call's timeout is far beyond the guard, so only the limit can end
    /// it in time), and the worker is free for the next call.
    #[tokio::test]
    async fn a_body_that_streams_forever_is_cut_at_the_limit() {
        let (addr, _seen) = server(Behaviour::StreamForever).await;
        let (hooks, mut reports) = sender(1, 8);
        for _ in 0..2 {
            assert!(hooks.send(call(&format!("http://{addr}/hook"), 0, 60_000)));
            let r = report_within(&mut reports, 20).await;
            assert_eq!((r.attempts, r.status, r.error), (1, Some(200), None));
        }
    }

    /// A body that trickles (under the limit) ends at the call's timeout.
    #[tokio::test]
    async fn a_body_that_trickles_ends_at_the_timeout() {
        let (addr, _seen) = server(Behaviour::Trickle).await;
        let (hooks, mut reports) = sender(1, 8);
        assert!(hooks.send(call(&format!("http://{addr}/hook"), 0, 300)));
        let r = next_report(&mut reports).await;
        assert_eq!((r.attempts, r.status, r.error), (1, Some(200), None));
    }

    #[tokio::test]
    async fn connection_refused_is_reported() {
        // A port that was just free: nothing listens there.
        let port = {
            let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
            l.local_addr().unwrap().port()
        };
        let (hooks, mut reports) = sender(1, 8);
        assert!(hooks.send(call(&format!("http://127.0.0.1:{port}/hook"), 1, 2000)));
        let r = next_report(&mut reports).await;
        assert_eq!((r.attempts, r.status), (2, None));
        assert_eq!(
            r.error,
            Some(format!(
                "connection refused by 127.0.0.1:{port} (is the webhook's server running?)"
            ))
        );
    }

    #[tokio::test]
    async fn calls_that_cannot_be_sent_are_reported_with_no_attempt() {
        let (hooks, mut reports) = sender(1, 8);
        let mut big = call("http://127.0.0.1:9/hook", 0, 100);
        big.body = json!("x".repeat(MAX_REQUEST_BODY));
        let cases = [
            (
                call("https://127.0.0.1/hook", 3, 100),
                "not sent: https:// is not supported",
            ),
            (
                big,
                "not sent: the body is 1048578 bytes, over the limit of 1048576",
            ),
        ];
        for (c, want) in cases {
            assert!(hooks.send(c));
            let r = next_report(&mut reports).await;
            assert_eq!((r.attempts, r.status), (0, None));
            let err = r.error.unwrap_or_default();
            assert!(err.starts_with(want), "{err}");
        }
    }

    /// `send` on a full queue returns false at once. On a current-thread runtime the
    /// workers cannot run until the test awaits, so the queue fills deterministically.
    #[tokio::test(flavor = "current_thread")]
    async fn a_full_queue_refuses_at_once() {
        let (hooks, mut reports) = sender(1, 2);
        let url = "http://127.0.0.1:9/none";
        assert_eq!(hooks.queued(), 0);
        assert!(hooks.send(call(url, 0, 100)));
        assert!(hooks.clone().send(call(url, 0, 100)));
        assert_eq!(hooks.queued(), 2);
        assert!(!hooks.send(call(url, 0, 100)));
        assert!(!hooks.send(call(url, 0, 100)));
        assert_eq!(hooks.queued(), 2);
        // The two accepted calls are reported (whatever their outcome); the refused are not.
        next_report(&mut reports).await;
        next_report(&mut reports).await;
        assert_eq!(hooks.queued(), 0);
        drop(hooks);
        assert!(
            reports.recv().await.is_none(),
            "no report for refused calls"
        );
    }

    /// Zero workers or a zero queue would be a sender that can never send; both mean 1.
    #[tokio::test(flavor = "current_thread")]
    async fn zero_sizes_mean_one() {
        let (hooks, mut reports) = sender(0, 0);
        assert!(hooks.send(call("https://x/", 0, 100)));
        assert!(!hooks.send(call("https://x/", 0, 100)));
        assert_eq!(next_report(&mut reports).await.attempts, 0);
    }

    /// A panicking callback does not stop the worker: later calls are still reported.
    #[tokio::test]
    async fn a_panicking_report_does_not_kill_the_worker() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let report: Report = Arc::new(move |r: WebhookResult| {
            if r.tag == "boom" {
                panic!("report failed");
            }
            let _ = tx.send(r);
        });
        let hooks = Webhooks::start(1, 4, report);
        let mut first = call("https://x/", 0, 100);
        first.tag = "boom".into();
        assert!(hooks.send(first));
        assert!(hooks.send(call("https://x/", 0, 100)));
        assert_eq!(next_report(&mut rx).await.tag, "rule-7#1");
    }

    /// Retries and timeouts asked for beyond the caps are cut to them, and the backoff
    /// doubles from 1 s.
    #[test]
    fn limits_and_backoff() {
        let cases = [
            (
                (Duration::from_millis(200), 2),
                (Duration::from_millis(200), 2),
            ),
            (
                (Duration::from_secs(3600), u32::MAX),
                (MAX_TIMEOUT, MAX_RETRIES),
            ),
            ((Duration::ZERO, 0), (Duration::ZERO, 0)),
        ];
        for ((timeout, retries), want) in cases {
            assert_eq!(limits(timeout, retries), want);
        }
        let waits: Vec<u64> = (1..=MAX_RETRIES).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16]);
    }
}

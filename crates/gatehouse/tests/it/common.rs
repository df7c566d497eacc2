//! Test harness: an in-process server on port 0 with its own data directory, a board that
//! speaks raw bytes over TCP, and an HTTP client with the admin token.

use std::time::Duration;

use acon::{Answer, Decoder};
use gatehouse::core::{CoreConfig, UnknownPolicy};
use gatehouse::gateway::acon::AconLimits;
use gatehouse::server::{Running, Settings, start};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub const TOKEN: &str = "test-token-123";

/// The seed's example message (spec test vector 1), CRLF.
pub const SEED: &str = "ACon_V1.0\r\nID=1953\r\nSEND=141349\r\nCONNECTION=1\r\nWIFI_STATE=0\r\nGSM_STATE=0\r\nRESET=1\r\nSTATE=0\r\nCOLS=8\r\nROWS=8\r\nACT_CON=01011011,11111111,10110111,11111111,10011111,11111111,10110111,11111111\r\nBOX_ENG=2,5,8,23,24,25\r\nBOX_TO=33,34\r\nBOX_ACC=1,54,43\r\nCLOSE\r\n";

pub fn settings(dir: &std::path::Path) -> Settings {
    Settings {
        data_dir: dir.to_path_buf(),
        acon_listen: "127.0.0.1:0".into(),
        http_listen: "127.0.0.1:0".into(),
        admin_token: Some(TOKEN.into()),
        core: CoreConfig {
            unknown_devices: UnknownPolicy::Register,
            presence_timeout_ms: 300_000,
            code_length: 4,
        },
        acon: AconLimits {
            max_frame: 64 * 1024,
            max_connections: 1000,
            idle_timeout: Duration::from_secs(60),
            frame_timeout: Duration::from_secs(10),
            max_bad_frames: 10,
        },
    }
}

pub struct Server {
    pub running: Option<Running>,
    pub _dir: tempfile::TempDir,
    pub http: reqwest::Client,
}

impl Server {
    pub async fn start() -> Server {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(f: impl FnOnce(&mut Settings)) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let mut s = settings(dir.path());
        f(&mut s);
        let running = start(s).await.unwrap();
        Server {
            running: Some(running),
            _dir: dir,
            http: reqwest::Client::new(),
        }
    }

    pub fn running(&self) -> &Running {
        self.running.as_ref().unwrap()
    }

    pub async fn board(&self) -> Board {
        Board::connect(self.running().acon_addr).await
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.running().http_addr)
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let r = self
            .http
            .get(self.url(path))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        decode(r).await
    }

    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self.http.request(method, self.url(path)).bearer_auth(TOKEN);
        if let Some(b) = body {
            req = req.json(&b);
        }
        decode(req.send().await.unwrap()).await
    }

    /// Events of a device, oldest first, as kinds.
    pub async fn event_kinds(&self, device: &str) -> Vec<String> {
        let (status, v) = self
            .get(&format!("/api/events?device={device}&limit=1000"))
            .await;
        assert_eq!(status, 200, "{v}");
        let mut kinds: Vec<String> = v
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["kind"].as_str().unwrap().to_string())
            .collect();
        kinds.reverse();
        kinds
    }
}

pub async fn decode(r: reqwest::Response) -> (u16, Value) {
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    let v = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or(Value::String(text))
    };
    (status, v)
}

/// A board: raw bytes out, answers in.
pub struct Board {
    pub stream: TcpStream,
    decoder: Decoder,
}

impl Board {
    pub async fn connect(addr: std::net::SocketAddr) -> Board {
        let stream = TcpStream::connect(addr).await.unwrap();
        stream.set_nodelay(true).unwrap();
        Board {
            stream,
            decoder: Decoder::default(),
        }
    }

    pub async fn write(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    /// The next answer frame, raw; `None` on timeout or close.
    pub async fn raw_answer(&mut self, wait: Duration) -> Option<Vec<u8>> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(f) = self.decoder.next_frame() {
                return Some(f.unwrap().bytes);
            }
            let mut buf = [0u8; 4096];
            let n = tokio::time::timeout_at(deadline, self.stream.read(&mut buf))
                .await
                .ok()?
                .ok()?;
            if n == 0 {
                return None;
            }
            self.decoder.feed(&buf[..n]);
        }
    }

    pub async fn answer(&mut self) -> Answer {
        let raw = self
            .raw_answer(Duration::from_secs(10))
            .await
            .expect("an answer");
        Answer::parse(&raw).unwrap()
    }

    /// Sends a message and waits for its answer.
    pub async fn exchange(&mut self, msg: &str) -> Answer {
        self.write(msg.as_bytes()).await;
        self.answer().await
    }

    /// True if the server closed the connection within `wait`.
    pub async fn closed(&mut self, wait: Duration) -> bool {
        let mut buf = [0u8; 1024];
        loop {
            match tokio::time::timeout(wait, self.stream.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(_)) => continue,
                Err(_) => return false,
            }
        }
    }
}

/// A message from board `id` with SEND `send` and extra lines (LF).
pub fn msg(id: &str, send: u64, extra: &str) -> String {
    format!(
        "ACon_V1.0\nID={id}\nSEND={send}\nRESET=0\nSTATE=0\nCOLS=4\nROWS=2\nACT_CON=1111,1111\n{extra}CLOSE\n"
    )
}

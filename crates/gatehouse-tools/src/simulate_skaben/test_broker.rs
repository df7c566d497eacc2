//! A scripted MQTT 3.1.1 broker for the tools' tests: it answers every CONNECT with one
//! CONNACK return code, every SUBSCRIBE with success or failure (0x80), every PINGREQ, and
//! records who logged in how. Publishes go nowhere (QoS 1 and 2 are acknowledged), so
//! nothing ever echoes.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// What the broker answers.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Script {
    /// The CONNACK return code: 0 accepted, 4 bad user name or password, 5 not authorised.
    pub(crate) connack: u8,
    /// Whether every subscription is refused (SUBACK 0x80).
    pub(crate) refuse_subscriptions: bool,
}

/// One CONNECT as received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Connect {
    pub(crate) client_id: String,
    pub(crate) username: Option<String>,
    pub(crate) password: Option<String>,
}

pub(crate) struct TestBroker {
    pub(crate) addr: SocketAddr,
    connects: Arc<Mutex<Vec<Connect>>>,
    task: JoinHandle<()>,
}

impl TestBroker {
    pub(crate) async fn start(script: Script) -> TestBroker {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connects = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&connects);
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream, script, Arc::clone(&seen)));
            }
        });
        TestBroker {
            addr,
            connects,
            task,
        }
    }

    /// Every CONNECT so far.
    pub(crate) fn connects(&self) -> Vec<Connect> {
        self.connects
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One connection, until it closes or a packet does not parse.
async fn serve(mut stream: TcpStream, script: Script, seen: Arc<Mutex<Vec<Connect>>>) {
    while let Some((header, body)) = read_packet(&mut stream).await {
        let answer: Vec<u8> = match header >> 4 {
            1 => {
                let Some(connect) = parse_connect(&body) else {
                    return;
                };
                seen.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(connect);
                vec![0x20, 2, 0, script.connack]
            }
            3 => {
                let qos = (header >> 1) & 3;
                let Some(topic_len) = body
                    .get(..2)
                    .map(|b| usize::from(b[0]) << 8 | usize::from(b[1]))
                else {
                    return;
                };
                match (qos, body.get(2 + topic_len..4 + topic_len)) {
                    (0, _) | (_, None) => Vec::new(),
                    // PUBACK, or PUBREC for QoS 2.
                    (1, Some(pid)) => vec![0x40, 2, pid[0], pid[1]],
                    (_, Some(pid)) => vec![0x50, 2, pid[0], pid[1]],
                }
            }
            // PUBREL → PUBCOMP.
            6 => [&[0x70, 2][..], body.get(..2).unwrap_or(&[0, 0])].concat(),
            8 => {
                let Some(pid) = body.get(..2) else { return };
                let mut codes = Vec::new();
                let mut at = 2;
                while let Some(len) = body.get(at..at + 2) {
                    let len = usize::from(len[0]) << 8 | usize::from(len[1]);
                    let Some(&qos) = body.get(at + 2 + len) else {
                        return;
                    };
                    codes.push(if script.refuse_subscriptions {
                        0x80
                    } else {
                        qos
                    });
                    at += 3 + len;
                }
                let mut suback = vec![
                    0x90,
                    u8::try_from(2 + codes.len()).unwrap_or(2),
                    pid[0],
                    pid[1],
                ];
                suback.extend(codes);
                suback
            }
            12 => vec![0xD0, 0],
            14 => return,
            _ => Vec::new(),
        };
        if !answer.is_empty() && stream.write_all(&answer).await.is_err() {
            return;
        }
        if header >> 4 == 1 && script.connack != 0 {
            return;
        }
    }
}

async fn read_packet(stream: &mut TcpStream) -> Option<(u8, Vec<u8>)> {
    let header = stream.read_u8().await.ok()?;
    let mut len = 0usize;
    for shift in [0, 7, 14, 21] {
        let byte = stream.read_u8().await.ok()?;
        len |= usize::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            let mut body = vec![0; len];
            stream.read_exact(&mut body).await.ok()?;
            return Some((header, body));
        }
    }
    None
}

fn parse_connect(body: &[u8]) -> Option<Connect> {
    let mut at = 0;
    let string = |at: &mut usize| -> Option<String> {
        let len = body.get(*at..*at + 2)?;
        let len = usize::from(len[0]) << 8 | usize::from(len[1]);
        let s = body.get(*at + 2..*at + 2 + len)?;
        *at += 2 + len;
        Some(String::from_utf8_lossy(s).into_owned())
    };
    let _protocol = string(&mut at)?;
    let flags = *body.get(at + 1)?;
    at += 4; // level, flags, keep-alive
    let client_id = string(&mut at)?;
    if flags & 0x04 != 0 {
        string(&mut at)?;
        string(&mut at)?;
    }
    let username = if flags & 0x80 != 0 {
        Some(string(&mut at)?)
    } else {
        None
    };
    let password = if flags & 0x40 != 0 {
        Some(string(&mut at)?)
    } else {
        None
    };
    Some(Connect {
        client_id,
        username,
        password,
    })
}

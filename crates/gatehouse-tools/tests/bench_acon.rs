//! `bench acon` against real sockets: the reference server, and a server that echoes the
//! wrong SEND (so the mismatch check is shown to fail when it should). No timing is asserted.

use acon::{Answer, Decoder, LineEnding, Message};
use clap::Parser;
use gatehouse_tools::bench_acon::{BenchAconArgs, measure};
use gatehouse_tools::reference;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    bench: BenchAconArgs,
}

fn args(argv: &[&str]) -> BenchAconArgs {
    Cli::try_parse_from(std::iter::once("bench").chain(argv.iter().copied()))
        .unwrap()
        .bench
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reference_server_answers_every_message_correctly() {
    let report = measure(&args(&[
        "--reference",
        "--conns",
        "4",
        "--seconds",
        "1",
        "--warmup",
        "0.2",
    ]))
    .await
    .unwrap();
    println!("{report}");
    assert_eq!(report.conns, 4);
    assert!(report.messages > 0, "{report}");
    assert_eq!(report.errors, 0, "{report}");
    assert_eq!(report.send_mismatches, 0, "{report}");
    assert!(
        report.p50_us <= report.p99_us
            && report.p99_us <= report.p999_us
            && report.p999_us <= report.max_us
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_loop_against_the_reference_server_has_no_errors() {
    let report = measure(&args(&[
        "--reference",
        "--conns",
        "20",
        "--rate",
        "200",
        "--seconds",
        "1",
        "--warmup",
        "0",
    ]))
    .await
    .unwrap();
    assert_eq!(report.conns, 20);
    assert!(report.messages > 0, "{report}");
    assert_eq!((report.errors, report.send_mismatches), (0, 0), "{report}");
}

/// A server that answers every message with SEND+1, as a buggy server might.
async fn wrong_send_server(listener: TcpListener) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            return;
        };
        tokio::spawn(async move {
            let mut decoder = Decoder::default();
            let mut buf = [0u8; 4096];
            loop {
                let n = match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                decoder.feed(&buf[..n]);
                let mut out = Vec::new();
                while let Some(frame) = decoder.next_frame() {
                    let Ok(message) = frame
                        .map_err(drop)
                        .and_then(|f| Message::parse(&f.bytes).map_err(drop))
                    else {
                        continue;
                    };
                    Answer {
                        version: message.version,
                        id: message.id,
                        send: message.send + 1,
                        reset: false,
                        block: false,
                        cells: Vec::new(),
                        line_ending: message.line_ending,
                    }
                    .encode(&mut out);
                }
                if stream.write_all(&out).await.is_err() {
                    return;
                }
            }
        });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_with_the_wrong_send_are_counted_as_mismatches() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(wrong_send_server(listener));
    let report = measure(&args(&[
        "--addr",
        &addr,
        "--conns",
        "2",
        "--seconds",
        "0.5",
        "--warmup",
        "0",
    ]))
    .await
    .unwrap();
    assert!(report.send_mismatches > 0, "{report}");
    assert!(report.errors >= report.send_mismatches, "{report}");
    assert_eq!(report.messages, 0, "no answer was right: {report}");
}

#[tokio::test]
async fn no_server_is_a_clear_error() {
    // Bind then drop: the port is (very likely) closed now.
    let addr = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let err = measure(&args(&[
        "--addr",
        &addr,
        "--conns",
        "1",
        "--seconds",
        "0.1",
    ]))
    .await
    .unwrap_err();
    assert!(err.to_string().contains("cannot connect"), "{err:#}");
}

#[tokio::test]
async fn the_reference_server_echoes_a_message() {
    let listener = reference::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(reference::serve(listener));
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    // Spec test vector 1 (CRLF), then an LF message in the same write.
    let seed = "ACon_V1.0\r\nID=1953\r\nSEND=141349\r\nCONNECTION=1\r\nWIFI_STATE=0\r\nGSM_STATE=0\r\nRESET=1\r\n\
                STATE=0\r\nCOLS=8\r\nROWS=8\r\n\
                ACT_CON=01011011,11111111,10110111,11111111,10011111,11111111,10110111,11111111\r\n\
                BOX_ENG=2,5,8,23,24,25\r\nBOX_TO=33,34\r\nBOX_ACC=1,54,43\r\nCLOSE\r\n\
                ACon_V1.0\nID=7\nSEND=2\nCLOSE\n";
    stream.write_all(seed.as_bytes()).await.unwrap();
    let mut decoder = Decoder::default();
    let mut answers = Vec::new();
    let mut buf = [0u8; 1024];
    while answers.len() < 2 {
        let n = stream.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed early");
        decoder.feed(&buf[..n]);
        while let Some(frame) = decoder.next_frame() {
            let bytes = frame.unwrap().bytes;
            answers.push((Answer::parse(&bytes).unwrap(), bytes));
        }
    }
    let (first, bytes) = &answers[0];
    assert_eq!(
        (first.id.as_str(), first.send, first.reset, first.block),
        ("1953", 141_349, false, false)
    );
    assert_eq!(first.cells.len(), 2);
    assert_eq!(
        first.line_ending,
        LineEnding::Crlf,
        "{:?}",
        String::from_utf8_lossy(bytes)
    );
    let (second, bytes) = &answers[1];
    assert_eq!((second.id.as_str(), second.send), ("7", 2));
    assert!(
        !bytes.contains(&b'\r'),
        "{:?}",
        String::from_utf8_lossy(bytes)
    );
}

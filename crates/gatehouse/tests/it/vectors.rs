//! The spec's test vectors 1–8, over a real TCP connection to the server.

use std::time::Duration;

use tokio::io::AsyncReadExt;

use crate::common::{SEED, Server, msg};

const SHORT: Duration = Duration::from_millis(500);

#[tokio::test]
async fn v1_seed_message_is_answered_with_its_id_and_send_in_crlf() {
    let s = Server::start().await;
    let mut b = s.board().await;
    b.write(SEED.as_bytes()).await;
    // Read the bytes off the socket as they are, without a decoder.
    let mut raw = Vec::new();
    while !raw.ends_with(b"CLOSE\r\n") {
        let mut buf = [0u8; 256];
        let n = tokio::time::timeout(Duration::from_secs(5), b.stream.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "closed early: {raw:?}");
        raw.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8(raw).unwrap();
    assert_eq!(
        text,
        "ACon_V1.0\r\nID=1953\r\nSEND=141349\r\nRESET=0\r\nSTATE=0\r\nCLOSE\r\n"
    );
}

#[tokio::test]
async fn v2_one_byte_per_write_gives_one_answer() {
    let s = Server::start().await;
    let mut b = s.board().await;
    for byte in SEED.as_bytes() {
        b.write(&[*byte]).await;
    }
    let a = b.answer().await;
    assert_eq!((a.id.as_str(), a.send), ("1953", 141349));
    assert!(b.raw_answer(SHORT).await.is_none(), "exactly one answer");
}

#[tokio::test]
async fn v3_two_messages_in_one_write_give_two_answers_in_order() {
    let s = Server::start().await;
    let mut b = s.board().await;
    let two = format!("{}{}", msg("7", 1, ""), msg("7", 2, ""));
    b.write(two.as_bytes()).await;
    assert_eq!(b.answer().await.send, 1);
    assert_eq!(b.answer().await.send, 2);
    // And a merged read with a partial third frame: the third is answered once complete.
    let third = msg("7", 3, "");
    let (head, tail) = third.split_at(10);
    b.write(format!("{}{}", msg("7", 4, ""), head).as_bytes())
        .await;
    assert_eq!(b.answer().await.send, 4);
    b.write(tail.as_bytes()).await;
    assert_eq!(b.answer().await.send, 3);
}

#[tokio::test]
async fn v4_a_16x16_board_over_1024_bytes_gets_one_answer() {
    let s = Server::start().await;
    let mut b = s.board().await;
    let rows = vec!["1111111111111111"; 16].join(",");
    let mut m = format!(
        "ACon_V1.0\r\nID=16\r\nSEND=5\r\nCOLS=16\r\nROWS=16\r\nACT_CON={rows}\r\nBOX_ENG=0\r\nBOX_TO=0\r\n"
    );
    let acc: Vec<String> = (1..=200).map(|c| c.to_string()).collect();
    m.push_str(&format!("BOX_ACC={}\r\nCLOSE\r\n", acc.join(",")));
    assert!(m.len() > 1024);
    let a = b.exchange(&m).await;
    assert_eq!(a.send, 5);
    let (_, cells) = s.get("/api/devices/acon/16/cells").await;
    assert_eq!(cells.as_array().unwrap().len(), 256);
}

#[tokio::test]
async fn v5_zero_lists_are_empty() {
    let s = Server::start().await;
    let mut b = s.board().await;
    b.exchange(&msg("5", 1, "BOX_ENG=0\nBOX_TO=0\nBOX_ACC=0\n"))
        .await;
    let (_, v) = s.get("/api/devices/acon/5").await;
    let m = &v["reported"]["message"];
    assert_eq!(m["box_eng"], serde_json::json!([]));
    assert_eq!(m["box_to"], serde_json::json!([]));
    assert_eq!(m["box_acc"], serde_json::json!([]));
}

#[tokio::test]
async fn v6_state_lists_keep_unknown_codes() {
    let s = Server::start().await;
    let mut b = s.board().await;
    b.exchange(&msg("6", 1, "").replace("STATE=0", "STATE=0,2"))
        .await;
    let (_, v) = s.get("/api/devices/acon/6").await;
    assert_eq!(v["reported"]["message"]["state"], serde_json::json!([0, 2]));
    b.exchange(&msg("6", 2, "").replace("STATE=0", "STATE=7"))
        .await;
    let (_, v) = s.get("/api/devices/acon/6").await;
    assert_eq!(v["reported"]["message"]["state"], serde_json::json!([7]));
    assert!(
        s.event_kinds("acon/6")
            .await
            .contains(&"wrong_code".to_string())
    );
}

#[tokio::test]
async fn v7_malformed_messages_get_no_answer_an_error_event_and_the_connection_carries_on() {
    let s = Server::start().await;
    let mut b = s.board().await;
    let no_id = "ACon_V1.0\nSEND=1\nCLOSE\n";
    let no_send = "ACon_V1.0\nID=70\nCLOSE\n";
    let bad_send = "ACon_V1.0\nID=70\nSEND=abc\nCLOSE\n";
    for bad in [no_id, no_send, bad_send] {
        b.write(bad.as_bytes()).await;
        assert!(b.raw_answer(SHORT).await.is_none(), "no answer to {bad:?}");
    }
    // The same connection still works.
    assert_eq!(b.exchange(&msg("70", 9, "")).await.send, 9);
    let (_, events) = s.get("/api/events?kind=malformed&limit=10").await;
    let reasons: Vec<&str> = events
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["data"]["reason"].as_str().unwrap())
        .collect();
    assert_eq!(reasons.len(), 3, "{events}");
    assert!(reasons.iter().any(|r| r.contains("ID")), "{reasons:?}");
    assert!(
        reasons.iter().any(|r| r.contains("SEND=\"abc\"")),
        "{reasons:?}"
    );
    let raw = events[0]["data"]["raw"].as_str().unwrap();
    assert!(raw.contains("SEND=abc"), "raw bytes kept: {raw}");
    assert_eq!(
        events[0]["device"], "acon/70",
        "filed under the board when its ID is readable"
    );
}

#[tokio::test]
async fn v8_100k_bytes_without_close_closes_that_connection_only() {
    let s = Server::start().await;
    let mut other = s.board().await;
    assert_eq!(other.exchange(&msg("81", 1, "")).await.send, 1);
    let mut b = s.board().await;
    let mut junk = b"ACon_V1.0\nID=80\nSEND=1\n".to_vec();
    while junk.len() < 100_000 {
        junk.extend_from_slice(b"X_PADDING=0123456789012345678901234567890123456789\n");
    }
    // The server may close mid-write; ignore write errors.
    let _ = tokio::io::AsyncWriteExt::write_all(&mut b.stream, &junk).await;
    assert!(
        b.closed(Duration::from_secs(5)).await,
        "oversized frame closes the connection"
    );
    assert_eq!(
        other.exchange(&msg("81", 2, "")).await.send,
        2,
        "other connections unaffected"
    );
    let mut again = s.board().await;
    assert_eq!(
        again.exchange(&msg("80", 2, "")).await.send,
        2,
        "the server carries on"
    );
}

#[tokio::test]
async fn too_many_bad_frames_in_a_row_close_the_connection() {
    let s = Server::start_with(|c| c.acon.max_bad_frames = 3).await;
    let mut b = s.board().await;
    for _ in 0..4 {
        b.write(b"ACon_V1.0\nID=9\nSEND=x\nCLOSE\n").await;
    }
    assert!(b.closed(Duration::from_secs(5)).await);
}

#[tokio::test]
async fn an_idle_connection_is_closed_and_a_slow_frame_too() {
    let s = Server::start_with(|c| {
        c.acon.idle_timeout = Duration::from_millis(300);
        c.acon.frame_timeout = Duration::from_millis(300);
    })
    .await;
    let mut idle = s.board().await;
    assert!(
        idle.closed(Duration::from_secs(5)).await,
        "idle connection closed"
    );
    let mut slow = s.board().await;
    slow.write(b"ACon_V1.0\nID=1\n").await;
    assert!(
        slow.closed(Duration::from_secs(5)).await,
        "unfinished frame closed"
    );
}

#[tokio::test]
async fn connections_over_the_limit_are_closed_at_once() {
    let s = Server::start_with(|c| c.acon.max_connections = 2).await;
    let mut a = s.board().await;
    let mut b = s.board().await;
    assert_eq!(a.exchange(&msg("1", 1, "")).await.send, 1);
    assert_eq!(b.exchange(&msg("2", 1, "")).await.send, 1);
    let mut c = s.board().await;
    assert!(
        c.closed(Duration::from_secs(5)).await,
        "third connection refused"
    );
    drop(a);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut d = s.board().await;
    assert_eq!(
        d.exchange(&msg("4", 1, "")).await.send,
        1,
        "a freed slot is reused"
    );
}

#[tokio::test]
async fn shutdown_answers_what_was_received_then_closes() {
    let mut s = Server::start().await;
    let mut b = s.board().await;
    assert_eq!(b.exchange(&msg("30", 1, "")).await.send, 1);
    // Two messages on the wire, then the server is told to stop before it has read them.
    b.write(format!("{}{}", msg("30", 2, ""), msg("30", 3, "")).as_bytes())
        .await;
    let running = s.running.take().unwrap();
    let stopped = tokio::spawn(running.shutdown());
    assert_eq!(b.answer().await.send, 2);
    assert_eq!(b.answer().await.send, 3);
    assert!(b.closed(Duration::from_secs(5)).await);
    stopped.await.unwrap().unwrap();
}

//! The test vectors (`docs/protocol/acon.md`, "Test vectors" 1-8) at the codec level, and
//! the codec's other rules: field checks, unknown keys, line endings, the answer's exact bytes.
//!
//! Tests go through the public API only (`Decoder`, `Message`, `Answer`), so the codec's
//! insides can change without touching them.

use acon::{
    Answer, Connection, DEFAULT_MAX_FRAME, Decoder, DecoderError, Engaged, Frame, LineEnding,
    LinkState, Matrix, Message, ParseError, StateCode,
};

/// The example message of `docs/protocol/acon.md` ("the seed message"), lines without their
/// ending.
const SEED: &[&str] = &[
    "ACon_V1.0",
    "ID=1953",
    "SEND=141349",
    "CONNECTION=1",
    "WIFI_STATE=0",
    "GSM_STATE=0",
    "RESET=1",
    "STATE=0",
    "COLS=8",
    "ROWS=8",
    "ACT_CON=01011011,11111111,10110111,11111111,10011111,11111111,10110111,11111111",
    "BOX_ENG=2,5,8,23,24,25",
    "BOX_TO=33,34",
    "BOX_ACC=1,54,43",
    "CLOSE",
];

/// Joins lines, each followed by `nl`.
fn text(lines: &[&str], nl: &str) -> Vec<u8> {
    lines
        .iter()
        .flat_map(|l| [*l, nl])
        .collect::<String>()
        .into_bytes()
}

fn seed_crlf() -> Vec<u8> {
    text(SEED, "\r\n")
}

/// The seed message with `line` (`KEY=…`) replacing the line with the same key, or with the
/// line of `key` removed when `line` is just the key.
fn seed_with(key: &str, line: Option<&str>) -> Vec<u8> {
    let prefix = format!("{key}=");
    let lines: Vec<&str> = SEED
        .iter()
        .filter_map(|&l| {
            if l.starts_with(&prefix) {
                line
            } else {
                Some(l)
            }
        })
        .collect();
    text(&lines, "\r\n")
}

/// A message from a header, some KEY=VALUE lines and CLOSE, with LF endings.
fn msg(lines: &[&str]) -> Vec<u8> {
    let mut all = vec!["ACon_V1.0"];
    all.extend_from_slice(lines);
    all.push("CLOSE");
    text(&all, "\n")
}

/// Everything the decoder yields for `input` fed at once.
fn decode_all(decoder: &mut Decoder, input: &[u8]) -> Vec<Result<Frame, DecoderError>> {
    decoder.feed(input);
    std::iter::from_fn(|| decoder.next_frame()).collect()
}

/// The frames of `input` (fed at once, default limit); panics on a decoder error.
fn frames(input: &[u8]) -> Vec<Vec<u8>> {
    decode_all(&mut Decoder::default(), input)
        .into_iter()
        .map(|r| r.expect("decoder error").bytes)
        .collect()
}

/// `input` must hold exactly one frame; its parse.
fn parse_one(input: &[u8]) -> Result<Message, ParseError> {
    let frames = frames(input);
    assert_eq!(
        frames.len(),
        1,
        "expected one frame in {:?}",
        String::from_utf8_lossy(input)
    );
    Message::parse(&frames[0])
}

fn matrix(cols: u16, rows: u16, groups: &[&str]) -> Matrix {
    let bits = groups.concat().bytes().map(|b| b == b'1').collect();
    Matrix::new(cols, rows, bits).expect("bits match the size")
}

/// The seed message as a typed value: every field written out.
fn seed_message(line_ending: LineEnding) -> Message {
    Message {
        version: "ACon_V1.0".into(),
        id: "1953".into(),
        send: 141_349,
        connection: Some(Connection::Wifi),
        wifi_state: Some(LinkState::Ok),
        gsm_state: Some(LinkState::Ok),
        reset: Some(true),
        state: Some(vec![StateCode::Normal]),
        cols: Some(8),
        rows: Some(8),
        act_con: Some(matrix(
            8,
            8,
            &[
                "01011011", "11111111", "10110111", "11111111", "10011111", "11111111", "10110111",
                "11111111",
            ],
        )),
        box_eng: Some(vec![2, 5, 8, 23, 24, 25]),
        box_to: Some(vec![33, 34]),
        box_acc: Some(vec![1, 54, 43]),
        extra: vec![],
        line_ending,
    }
}

// --- Vector 1: the seed message, CRLF -----------------------------------------------------

#[test]
fn v1_seed_message_parses_with_every_field() {
    let m = parse_one(&seed_crlf()).expect("the seed message is valid");
    assert_eq!(m, seed_message(LineEnding::Crlf));

    // The matrix reads left to right, top to bottom, cells from 1.
    let act = m.act_con.as_ref().expect("ACT_CON present");
    assert_eq!((act.cols(), act.rows(), act.bits().len()), (8, 8, 64));
    assert_eq!(act.connected(1), Some(false));
    assert_eq!(act.connected(2), Some(true));
    assert_eq!(act.connected(9), Some(true), "row 2 starts at cell 9");
    assert_eq!(
        act.connected(18),
        Some(false),
        "row 3 = 10110111: cell 18 is its 2nd"
    );
    assert_eq!(act.connected(64), Some(true));
    assert_eq!(act.connected(0), None);
    assert_eq!(act.connected(65), None);
    assert_eq!(m.cell_count(), Some(64));
    assert!(m.has_state(StateCode::Normal));
    assert!(!m.has_state(StateCode::Blocked));
}

#[test]
fn v1_seed_message_encodes_back_byte_for_byte() {
    let mut out = Vec::new();
    seed_message(LineEnding::Crlf).encode(&mut out);
    assert_eq!(
        String::from_utf8_lossy(&out),
        String::from_utf8_lossy(&seed_crlf())
    );
}

#[test]
fn v1_answer_to_the_seed_echoes_id_and_send() {
    let m = parse_one(&seed_crlf()).expect("valid");
    let answer = Answer {
        version: m.version.clone(),
        id: m.id.clone(),
        send: m.send,
        reset: false,
        block: false,
        cells: vec![],
        line_ending: m.line_ending,
    };
    let mut out = Vec::new();
    answer.encode(&mut out);
    assert_eq!(
        out,
        b"ACon_V1.0\r\nID=1953\r\nSEND=141349\r\nRESET=0\r\nSTATE=0\r\nCLOSE\r\n"
    );
}

// --- Vector 2: one byte per write ---------------------------------------------------------

#[test]
fn v2_one_byte_at_a_time_gives_one_frame_when_close_arrives() {
    let input = seed_crlf();
    let close_end = input.len() - "\r\n".len();
    let mut d = Decoder::default();
    let mut got = Vec::new();
    for (i, byte) in input.iter().enumerate() {
        d.feed(std::slice::from_ref(byte));
        while let Some(item) = d.next_frame() {
            let frame = item.expect("no decoder error");
            assert_eq!(
                i + 1,
                close_end,
                "the frame is complete as soon as CLOSE is"
            );
            got.push(frame);
        }
    }
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].bytes, &input[..close_end]);
    assert_eq!(
        Message::parse(&got[0].bytes),
        Ok(seed_message(LineEnding::Crlf))
    );
    assert_eq!(d.pending(), 0, "the CRLF after CLOSE is consumed");
    assert!(!d.in_frame());
}

// --- Vector 3: two messages in one write --------------------------------------------------

#[test]
fn v3_two_messages_in_one_write_give_two_frames_in_order() {
    let mut input = seed_crlf();
    input.extend(seed_with("SEND", Some("SEND=141350")));
    let frames = frames(&input);
    assert_eq!(frames.len(), 2);
    let sends: Vec<u64> = frames
        .iter()
        .map(|f| Message::parse(f).expect("valid").send)
        .collect();
    assert_eq!(sends, [141_349, 141_350]);
}

// --- Vector 4: a 16×16 board, over 1024 bytes ---------------------------------------------

#[test]
fn v4_sixteen_by_sixteen_board_over_1024_bytes() {
    // Row r has a lock everywhere except column r.
    let groups: Vec<String> = (0..16)
        .map(|r| (0..16).map(|c| if c == r { '0' } else { '1' }).collect())
        .collect();
    let act_con = format!("ACT_CON={}", groups.join(","));
    let all: Vec<String> = (1..=256).map(|c: u32| c.to_string()).collect();
    let box_eng = format!("BOX_ENG={}", all.join(","));
    let lines = [
        "ACon_V1.0",
        "ID=big-board",
        "SEND=7",
        "COLS=16",
        "ROWS=16",
        &act_con,
        &box_eng,
        "BOX_TO=0",
        "BOX_ACC=256",
        "CLOSE",
    ];
    let input = text(&lines, "\r\n");
    assert!(
        input.len() > 1024,
        "the vector must not fit one 1024-byte read"
    );

    // Delivered in 1024-byte reads, as the seed's server read it.
    let mut d = Decoder::default();
    let mut got = Vec::new();
    for chunk in input.chunks(1024) {
        got.extend(decode_all(&mut d, chunk));
    }
    assert_eq!(got.len(), 1);
    let frame = got.remove(0).expect("no decoder error");
    let m = Message::parse(&frame.bytes).expect("valid");
    assert_eq!(
        (m.cols, m.rows, m.cell_count()),
        (Some(16), Some(16), Some(256))
    );
    let act = m.act_con.expect("ACT_CON present");
    assert_eq!(act.bits().len(), 256);
    assert_eq!(act.connected(1), Some(false), "row 0, column 0");
    assert_eq!(act.connected(2), Some(true));
    assert_eq!(act.connected(18), Some(false), "row 1, column 1");
    assert_eq!(act.connected(256), Some(false), "row 15, column 15");
    assert_eq!(m.box_eng, Some((1..=256).collect()));
    assert_eq!(m.box_to, Some(vec![]));
    assert_eq!(m.box_acc, Some(vec![256]));
}

// --- Vector 5: BOX_*=0 --------------------------------------------------------------------

#[test]
fn v5_box_lists_of_zero_are_empty() {
    let m = parse_one(&msg(&[
        "ID=1",
        "SEND=1",
        "BOX_ENG=0",
        "BOX_TO=0",
        "BOX_ACC=0",
    ]))
    .expect("valid");
    assert_eq!(m.box_eng, Some(vec![]));
    assert_eq!(m.box_to, Some(vec![]));
    assert_eq!(m.box_acc, Some(vec![]));

    // An absent list is not an empty one, and an empty list encodes back to 0.
    let absent = parse_one(&msg(&["ID=1", "SEND=1"])).expect("valid");
    assert_eq!(
        (absent.box_eng, absent.box_to, absent.box_acc),
        (None, None, None)
    );
    let mut out = Vec::new();
    m.encode(&mut out);
    assert_eq!(
        out,
        msg(&["ID=1", "SEND=1", "BOX_ENG=0", "BOX_TO=0", "BOX_ACC=0"])
    );
}

// --- Vector 6: STATE lists and unknown codes ----------------------------------------------

#[test]
fn v6_state_lists_keep_every_code_including_unknown_ones() {
    use StateCode::*;
    let cases: &[(&str, &[StateCode])] = &[
        ("STATE=0", &[Normal]),
        ("STATE=0,2", &[Normal, WrongCode]),
        ("STATE=1,3", &[ShortCircuit, Blocked]),
        ("STATE=7", &[Unknown(7)]),
        ("STATE=2, 7 ,3", &[WrongCode, Unknown(7), Blocked]),
        ("STATE=65535", &[Unknown(65535)]),
    ];
    for &(line, want) in cases {
        let m = parse_one(&msg(&["ID=1", "SEND=1", line])).expect(line);
        assert_eq!(m.state.as_deref(), Some(want), "{line}");
        for &code in want {
            assert!(m.has_state(code), "{line} has {code:?}");
        }
    }
    let m = parse_one(&msg(&["ID=1", "SEND=1", "STATE=0,2"])).expect("valid");
    assert!(!m.has_state(Blocked));
}

// --- Vector 7: missing ID / SEND, SEND=abc ------------------------------------------------

#[test]
fn v7_missing_or_bad_id_and_send_are_rejected() {
    type IsExpected = fn(&ParseError) -> bool;
    let cases: Vec<(&str, Vec<u8>, IsExpected)> = vec![
        ("no ID", seed_with("ID", None), |e| {
            *e == ParseError::Missing("ID")
        }),
        ("no SEND", seed_with("SEND", None), |e| {
            *e == ParseError::Missing("SEND")
        }),
        (
            "SEND=abc",
            seed_with("SEND", Some("SEND=abc")),
            |e| matches!(e, ParseError::BadValue { key: "SEND", value, .. } if value == "abc"),
        ),
        ("SEND empty", seed_with("SEND", Some("SEND=")), |e| {
            matches!(e, ParseError::BadValue { key: "SEND", .. })
        }),
        ("SEND negative", seed_with("SEND", Some("SEND=-1")), |e| {
            matches!(e, ParseError::BadValue { key: "SEND", .. })
        }),
        (
            "SEND over u64",
            seed_with("SEND", Some("SEND=18446744073709551616")),
            |e| matches!(e, ParseError::BadValue { key: "SEND", .. }),
        ),
        ("ID empty", seed_with("ID", Some("ID=")), |e| {
            matches!(e, ParseError::BadValue { key: "ID", .. })
        }),
        ("ID with a space", seed_with("ID", Some("ID=19 53")), |e| {
            matches!(e, ParseError::BadValue { key: "ID", .. })
        }),
    ];
    for (name, input, is_expected) in cases {
        let err = parse_one(&input).expect_err(name);
        assert!(is_expected(&err), "{name}: got {err:?}");
        assert!(!err.to_string().is_empty());
    }
}

#[test]
fn v7_a_bad_message_does_not_stop_the_next_one() {
    let mut input = seed_with("ID", None);
    input.extend(seed_with("SEND", Some("SEND=abc")));
    input.extend(seed_crlf());
    let results: Vec<_> = frames(&input).iter().map(|f| Message::parse(f)).collect();
    assert_eq!(results.len(), 3);
    assert_eq!(results[0], Err(ParseError::Missing("ID")));
    assert!(results[1].is_err());
    assert_eq!(results[2], Ok(seed_message(LineEnding::Crlf)));
}

#[test]
fn send_extremes_are_accepted() {
    for (line, want) in [("SEND=0", 0), ("SEND=18446744073709551615", u64::MAX)] {
        let m = parse_one(&seed_with("SEND", Some(line))).expect(line);
        assert_eq!(m.send, want);
    }
}

// --- Vector 8: 100 000 bytes without CLOSE ------------------------------------------------

/// A header and then `len` bytes of well-formed lines, no CLOSE.
fn endless_frame(len: usize) -> Vec<u8> {
    let mut input = b"ACon_V1.0\r\nID=1\r\n".to_vec();
    while input.len() < len {
        input.extend_from_slice(b"X=0123456789\r\n");
    }
    input.truncate(len);
    input
}

#[test]
fn v8_100_000_bytes_without_close_are_too_large() {
    let inputs = [
        ("in a frame", endless_frame(100_000)),
        ("noise without a line end", vec![b'x'; 100_000]),
    ];
    for (name, input) in inputs {
        for chunk_size in [input.len(), 1024, 1] {
            let mut d = Decoder::default();
            let mut got = Vec::new();
            for chunk in input.chunks(chunk_size) {
                got.extend(decode_all(&mut d, chunk));
                assert!(
                    d.pending() <= DEFAULT_MAX_FRAME + chunk_size,
                    "{name}: memory bounded"
                );
            }
            assert_eq!(
                got,
                [Err(DecoderError::TooLarge {
                    limit: DEFAULT_MAX_FRAME
                })],
                "{name}, chunks of {chunk_size}"
            );
            assert!(got[0].as_ref().unwrap_err().is_fatal());
            // Nothing more comes out, even a valid message.
            assert!(
                decode_all(&mut d, &seed_crlf()).is_empty(),
                "{name}: nothing after"
            );
        }
    }
}

#[test]
fn v8_a_frame_at_the_limit_is_fine_and_one_byte_more_is_not() {
    // Header, one long line, CLOSE: exactly the limit.
    let mut input = b"ACon_V1.0\r\nID=1\r\nSEND=1\r\nZ=".to_vec();
    let fill = DEFAULT_MAX_FRAME - input.len() - "\r\nCLOSE".len();
    input.extend(std::iter::repeat_n(b'a', fill));
    input.extend_from_slice(b"\r\nCLOSE\r\n");
    let got = decode_all(&mut Decoder::default(), &input);
    assert_eq!(got.len(), 1);
    assert_eq!(
        got[0].as_ref().map(|f| f.bytes.len()),
        Ok(DEFAULT_MAX_FRAME)
    );

    input.insert(input.len() - "\r\nCLOSE\r\n".len(), b'a');
    let got = decode_all(&mut Decoder::default(), &input);
    assert_eq!(
        got,
        [Err(DecoderError::TooLarge {
            limit: DEFAULT_MAX_FRAME
        })]
    );
}

#[test]
fn short_noise_lines_are_dropped_as_they_come() {
    let mut d = Decoder::default();
    for _ in 0..10_000 {
        assert!(decode_all(&mut d, b"ip\r\nserver\r\n").is_empty());
        assert!(d.pending() < 100, "noise is not kept");
    }
    assert_eq!(decode_all(&mut d, &seed_crlf()).len(), 1);
}

// --- Decoder: frame boundaries and the size limit -----------------------------------------

#[test]
fn frame_is_the_same_whether_closes_line_ending_comes_with_it_or_later() {
    let input = seed_crlf();
    let whole = frames(&input);
    for split in input.len() - 8..=input.len() {
        let mut d = Decoder::default();
        let mut got = decode_all(&mut d, &input[..split]);
        got.extend(decode_all(&mut d, &input[split..]));
        let got: Vec<Vec<u8>> = got
            .into_iter()
            .map(|r| r.expect("no error").bytes)
            .collect();
        assert_eq!(got, whole, "split at {split}");
    }
    assert!(whole[0].ends_with(b"\r\nCLOSE"));
}

#[test]
fn size_limit_counts_the_frame_through_close_however_it_is_split() {
    let input = b"ACon_V1.0\r\nID=1\r\nSEND=2\r\nCLOSE  \r\n";
    let frame_len = input.len() - "  \r\n".len();
    for (limit, fits) in [(frame_len, true), (frame_len - 1, false)] {
        for split in 0..=input.len() {
            let mut d = Decoder::new(limit);
            let mut got = decode_all(&mut d, &input[..split]);
            got.extend(decode_all(&mut d, &input[split..]));
            let want = if fits {
                Ok(Frame {
                    bytes: input[..frame_len].to_vec(),
                })
            } else {
                Err(DecoderError::TooLarge { limit })
            };
            assert_eq!(got, [want], "limit {limit}, split at {split}");
        }
    }
}

#[test]
fn white_space_outside_frames_is_not_part_of_them_and_not_counted() {
    let frame = b"ACon_V1.0\nID=1\nSEND=1\nCLOSE";
    let mut input = b"\r\n\n \t ".to_vec();
    input.extend_from_slice(frame);
    input.extend(std::iter::repeat_n(b' ', 200));
    input.extend_from_slice(b"\r\n\r\n  ");
    // The limit is far below the white space after CLOSE: however the bytes are split, that
    // white space is dropped, not taken for an endless line of noise.
    for split in [
        0,
        4,
        5,
        10,
        5 + frame.len(),
        5 + frame.len() + 1,
        100,
        input.len(),
    ] {
        let mut d = Decoder::new(64);
        let mut got = decode_all(&mut d, &input[..split]);
        got.extend(decode_all(&mut d, &input[split..]));
        assert_eq!(
            got,
            [Ok(Frame {
                bytes: frame.to_vec()
            })],
            "split at {split}"
        );
        assert_eq!(d.pending(), 0, "split at {split}");
    }

    // A header that interrupts a frame starts the next one at its `ACon_` too.
    let got = decode_all(
        &mut Decoder::default(),
        b"ACon_V1.0\nID=1\n  ACon_V1.0\nCLOSE\n",
    );
    assert_eq!(
        got,
        [
            Err(DecoderError::Unterminated {
                bytes: b"ACon_V1.0\nID=1\n".to_vec()
            }),
            Ok(Frame {
                bytes: b"ACon_V1.0\nCLOSE".to_vec()
            }),
        ]
    );
}

#[test]
fn close_with_white_space_around_it_ends_the_frame() {
    for close in ["CLOSE", "  CLOSE", "CLOSE \t", "\tCLOSE  "] {
        let input = format!("ACon_V1.0\nID=1\nSEND=1\n{close}\n");
        let got = frames(input.as_bytes());
        assert_eq!(got.len(), 1, "{close:?}");
        assert!(got[0].ends_with(b"CLOSE"), "{close:?}");
        assert!(Message::parse(&got[0]).is_ok(), "{close:?}");
    }
    // Not CLOSE: the frame goes on.
    for not_close in ["CLOSED", "CLOSE X", "close", "C LOSE"] {
        let input = format!("ACon_V1.0\nID=1\nSEND=1\n{not_close}\n");
        assert!(frames(input.as_bytes()).is_empty(), "{not_close:?}");
    }
}

#[test]
fn header_inside_a_frame_reports_the_unclosed_part_and_goes_on() {
    let mut input = b"ACon_V1.0\r\nID=1\r\n".to_vec();
    input.extend(seed_crlf());
    let got = decode_all(&mut Decoder::default(), &input);
    assert_eq!(got.len(), 2);
    assert_eq!(
        got[0],
        Err(DecoderError::Unterminated {
            bytes: b"ACon_V1.0\r\nID=1\r\n".to_vec()
        })
    );
    assert!(!got[0].as_ref().unwrap_err().is_fatal());
    let frame = got[1].as_ref().expect("the second frame");
    assert_eq!(
        Message::parse(&frame.bytes),
        Ok(seed_message(LineEnding::Crlf))
    );
}

// --- Message: field rules -----------------------------------------------------------------

/// Parses `lines` (between a header and CLOSE) and checks the error's key.
fn check_bad_value(lines: &[&str], key: &str) {
    match parse_one(&msg(lines)) {
        Err(ParseError::BadValue { key: k, .. }) if k == key => {}
        other => panic!("{lines:?}: expected a bad {key}, got {other:?}"),
    }
}

#[test]
fn act_con_must_match_cols_and_rows() {
    let ok = parse_one(&msg(&[
        "ID=1",
        "SEND=1",
        "COLS=3",
        "ROWS=2",
        "ACT_CON=101,011",
    ]))
    .expect("valid");
    assert_eq!(ok.act_con, Some(matrix(3, 2, &["101", "011"])));

    let bad: &[&[&str]] = &[
        &["COLS=3", "ROWS=2", "ACT_CON=101"],         // too few groups
        &["COLS=3", "ROWS=2", "ACT_CON=101,011,111"], // too many groups
        &["COLS=3", "ROWS=2", "ACT_CON=101,01"],      // short group
        &["COLS=3", "ROWS=2", "ACT_CON=1010,011"],    // long group
        &["COLS=3", "ROWS=2", "ACT_CON=101,012"],     // not a bit
        &["COLS=3", "ROWS=2", "ACT_CON=101011"],      // no commas
        &["COLS=3", "ROWS=2", "ACT_CON="],            // empty
        &["ROWS=2", "ACT_CON=101,011"],               // no COLS
        &["COLS=3", "ACT_CON=101,011"],               // no ROWS
        &["ACT_CON=101,011"],                         // neither
    ];
    for lines in bad {
        let mut all = vec!["ID=1", "SEND=1"];
        all.extend_from_slice(lines);
        check_bad_value(&all, "ACT_CON");
    }
}

#[test]
fn cols_and_rows_must_be_in_range() {
    for (line, key) in [
        ("COLS=0", "COLS"),
        ("COLS=65", "COLS"),
        ("ROWS=0", "ROWS"),
        ("ROWS=x", "ROWS"),
    ] {
        check_bad_value(&["ID=1", "SEND=1", line], key);
    }
    let m = parse_one(&msg(&["ID=1", "SEND=1", "COLS=64", "ROWS=1"])).expect("valid");
    assert_eq!((m.cols, m.rows), (Some(64), Some(1)));
}

#[test]
fn box_cells_must_lie_in_the_matrix() {
    for key in ["BOX_ENG", "BOX_TO", "BOX_ACC"] {
        let last = format!("{key}=1,30");
        let m = parse_one(&msg(&["ID=1", "SEND=1", "COLS=5", "ROWS=6", &last]))
            .expect("cell 30 is the last of 5×6");
        assert_eq!(m.cell_count(), Some(30));

        for bad in ["31", "1,31", "0,1", "1,0", "x", "1,,2", "-1"] {
            let line = format!("{key}={bad}");
            check_bad_value(&["ID=1", "SEND=1", "COLS=5", "ROWS=6", &line], key);
        }
        // The order of the lines does not matter: the check runs once all are read.
        let line = format!("{key}=31");
        check_bad_value(&["ID=1", "SEND=1", &line, "COLS=5", "ROWS=6"], key);
    }
}

#[test]
fn duplicate_keys_are_rejected() {
    for line in [
        "ID=2",
        "SEND=2",
        "STATE=1",
        "COLS=8",
        "BOX_ENG=3",
        "RESET=0",
        "CONNECTION=2",
    ] {
        let key = line.split('=').next().unwrap_or_default();
        let mut input = seed_crlf();
        // Insert the second copy just before CLOSE.
        let at = input.len() - "CLOSE\r\n".len();
        input.splice(at..at, format!("{line}\r\n").into_bytes());
        assert_eq!(
            parse_one(&input),
            Err(ParseError::Duplicate {
                key: key.to_string()
            }),
            "{line}"
        );
    }
}

#[test]
fn unknown_keys_are_kept_in_order() {
    let m = parse_one(&msg(&[
        "FW=2.3.1",
        "ID=1",
        "SEND=1",
        "URL=http://x/?a=b",
        " TEMP = 21 ",
        "id=lowercase is another key",
        "EMPTY=",
    ]))
    .expect("valid");
    let want: Vec<(String, String)> = [
        ("FW", "2.3.1"),
        ("URL", "http://x/?a=b"),
        ("TEMP", "21"),
        ("id", "lowercase is another key"),
        ("EMPTY", ""),
    ]
    .iter()
    .map(|&(k, v)| (k.to_string(), v.to_string()))
    .collect();
    assert_eq!(m.extra, want);
    assert_eq!(m.id, "1");
}

#[test]
fn lines_that_are_not_key_value_are_rejected() {
    for line in ["garbage", "=5", " = 5"] {
        assert!(
            matches!(
                parse_one(&msg(&["ID=1", "SEND=1", line])),
                Err(ParseError::NotKeyValue { .. })
            ),
            "{line:?}"
        );
    }
}

#[test]
fn link_fields_keep_unknown_values() {
    let m = parse_one(&msg(&[
        "ID=1",
        "SEND=1",
        "CONNECTION=2",
        "WIFI_STATE=2",
        "GSM_STATE=9",
    ]))
    .expect("valid");
    assert_eq!(m.connection, Some(Connection::Gsm));
    assert_eq!(m.wifi_state, Some(LinkState::NoAccessPoint));
    assert_eq!(m.gsm_state, Some(LinkState::Other(9)));
    check_bad_value(&["ID=1", "SEND=1", "CONNECTION=256"], "CONNECTION");
    check_bad_value(&["ID=1", "SEND=1", "RESET=2"], "RESET");
}

#[test]
fn frame_level_errors() {
    assert_eq!(
        Message::parse(b"ID=1\nSEND=1\nCLOSE\n"),
        Err(ParseError::NoHeader)
    );
    assert_eq!(Message::parse(b""), Err(ParseError::NoHeader));
    assert_eq!(
        Message::parse(b"ACon_V1.0\nID=1\nSEND=1\n"),
        Err(ParseError::NoClose)
    );
    assert_eq!(
        Message::parse(b"ACon_V1.0\nID=\xff\nSEND=1\nCLOSE"),
        Err(ParseError::InvalidUtf8)
    );
    assert!(matches!(
        Message::parse(b"ACon_V1.0\nID=1\nSEND=1\nCLOSE\nX=1\n"),
        Err(ParseError::NotKeyValue { .. })
    ));
}

// --- Line endings -------------------------------------------------------------------------

#[test]
fn lf_and_crlf_both_work_and_the_ending_is_recorded() {
    for (nl, ending) in [("\r\n", LineEnding::Crlf), ("\n", LineEnding::Lf)] {
        let input = text(SEED, nl);
        let m = parse_one(&input).expect("valid");
        assert_eq!(m, seed_message(ending), "{ending:?}");
        let mut out = Vec::new();
        m.encode(&mut out);
        assert_eq!(out, input, "{ending:?} encodes back with its own ending");
    }
}

// --- Answer -------------------------------------------------------------------------------

fn answer(cells: &[(u32, &str, u32)], reset: bool, block: bool, nl: LineEnding) -> Answer {
    Answer {
        version: "ACon_V1.0".into(),
        id: "1953".into(),
        send: 141_349,
        reset,
        block,
        cells: cells
            .iter()
            .map(|&(cell, code, minutes)| Engaged {
                cell,
                code: code.into(),
                minutes,
            })
            .collect(),
        line_ending: nl,
    }
}

#[test]
fn answer_encoding_is_byte_exact() {
    use LineEnding::*;
    let cases: &[(Answer, &str)] = &[
        (
            answer(&[(2, "1492", 4800)], false, false, Crlf),
            "ACon_V1.0\r\nID=1953\r\nSEND=141349\r\nRESET=0\r\nSTATE=0\r\nBOX_ENG=(2,1492,4800)\r\nCLOSE\r\n",
        ),
        (
            answer(&[(2, "1492", 4800), (5, "0007", 1)], false, false, Lf),
            "ACon_V1.0\nID=1953\nSEND=141349\nRESET=0\nSTATE=0\nBOX_ENG=(2,1492,4800)\nBOX_ENG=(5,0007,1)\nCLOSE\n",
        ),
        (
            answer(&[], true, true, Crlf),
            "ACon_V1.0\r\nID=1953\r\nSEND=141349\r\nRESET=1\r\nSTATE=3\r\nCLOSE\r\n",
        ),
    ];
    for (a, want) in cases {
        let mut out = Vec::new();
        a.encode(&mut out);
        assert_eq!(String::from_utf8_lossy(&out), *want);
    }
}

#[test]
fn answer_parses_back_to_itself() {
    use LineEnding::*;
    let cases = [
        answer(&[(2, "1492", 4800)], false, false, Crlf),
        answer(
            &[
                (2, "1492", 4800),
                (5, "0007", 1),
                (64, "99999999", u32::MAX),
            ],
            false,
            true,
            Lf,
        ),
        answer(&[], true, false, Crlf),
        answer(&[], false, false, Lf),
    ];
    for a in cases {
        let mut out = Vec::new();
        a.encode(&mut out);
        assert_eq!(Answer::parse(&out), Ok(a.clone()), "parsed directly");
        // And as a board gets it: through a decoder.
        let got = frames(&out);
        assert_eq!(got.len(), 1);
        assert_eq!(Answer::parse(&got[0]), Ok(a), "parsed from a frame");
    }
}

#[test]
fn answer_parse_errors() {
    assert_eq!(Answer::parse(b"ID=1\nCLOSE\n"), Err(ParseError::NoHeader));
    assert_eq!(
        Answer::parse(b"ACon_V1.0\nID=1\nSEND=1\n"),
        Err(ParseError::NoClose)
    );
    assert_eq!(
        Answer::parse(b"ACon_V1.0\nSEND=1\nCLOSE\n"),
        Err(ParseError::Missing("ID"))
    );
    assert_eq!(
        Answer::parse(b"ACon_V1.0\nID=1\nCLOSE\n"),
        Err(ParseError::Missing("SEND"))
    );
    for line in [
        "BOX_ENG=2,1492,4800",
        "BOX_ENG=(2,1492)",
        "BOX_ENG=(x,1492,5)",
        "SEND=abc",
    ] {
        let input = format!("ACon_V1.0\nID=1\nSEND=1\n{line}\nCLOSE\n");
        assert!(
            matches!(
                Answer::parse(input.as_bytes()),
                Err(ParseError::BadValue { .. })
            ),
            "{line}"
        );
    }
}

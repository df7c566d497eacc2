//! Property tests of the codec: encode → parse round trips, "the same bytes split at any points
//! give the same frames", and no panics on arbitrary input.

use acon::{
    Answer, Connection, Decoder, DecoderError, Engaged, Frame, LineEnding, LinkState, Matrix,
    Message, StateCode,
};
use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;
use proptest::sample::Index;

/// The keys `Message` reads into typed fields.
const KNOWN_KEYS: &[&str] = &[
    "ID",
    "SEND",
    "CONNECTION",
    "WIFI_STATE",
    "GSM_STATE",
    "RESET",
    "STATE",
    "COLS",
    "ROWS",
    "ACT_CON",
    "BOX_ENG",
    "BOX_TO",
    "BOX_ACC",
];

fn line_ending() -> impl Strategy<Value = LineEnding> {
    prop_oneof![Just(LineEnding::Crlf), Just(LineEnding::Lf)]
}

fn version() -> impl Strategy<Value = String> {
    prop_oneof![Just("ACon_V1.0".to_string()), "ACon_[A-Za-z0-9._]{0,10}"]
}

fn id() -> impl Strategy<Value = String> {
    "[A-Za-z0-9_.-]{1,64}"
}

/// An unknown key: not a known one, and not one the decoder reads as a frame line (a key
/// starting `CLOSE` could be cut at a read boundary right after `CLOSE`, which then ends the
/// frame; a key starting `ACon_` is a header).
fn extra_key() -> impl Strategy<Value = String> {
    "[A-Za-z][A-Za-z0-9_]{0,15}".prop_filter("collides with a known key or a frame line", |k| {
        !KNOWN_KEYS.contains(&k.as_str()) && !k.starts_with("CLOSE") && !k.starts_with("ACon_")
    })
}

/// A value as a line holds it: printable ASCII, '=' allowed, no white space at either end
/// (the parser trims it).
fn extra_value() -> impl Strategy<Value = String> {
    "([!-~]([ -~]{0,20}[!-~])?)?"
}

/// Cell lists, cells from 1 to `max`.
fn cells(max: u32) -> impl Strategy<Value = Option<Vec<u32>>> {
    option::of(vec(1..=max, 0..10))
}

/// COLS, ROWS, a matching ACT_CON (only when both are there) and the three BOX_* lists with
/// cells inside the matrix (any cell from 1 when the size is not known).
type Layout = (
    Option<u16>,
    Option<u16>,
    Option<Matrix>,
    Option<Vec<u32>>,
    Option<Vec<u32>>,
    Option<Vec<u32>>,
);

fn layout() -> impl Strategy<Value = Layout> {
    (
        option::weighted(0.8, 1..=16u16),
        option::weighted(0.8, 1..=16u16),
    )
        .prop_flat_map(|(cols, rows)| {
            let (matrix, max_cell) = match (cols, rows) {
                (Some(c), Some(r)) => {
                    let n = usize::from(c) * usize::from(r);
                    let m = option::of(
                        vec(any::<bool>(), n)
                            .prop_filter_map("size", move |bits| Matrix::new(c, r, bits)),
                    )
                    .boxed();
                    (m, u32::from(c) * u32::from(r))
                }
                _ => (Just(None).boxed(), u32::MAX),
            };
            (
                Just(cols),
                Just(rows),
                matrix,
                cells(max_cell),
                cells(max_cell),
                cells(max_cell),
            )
        })
}

/// Any message the protocol allows (a STATE list, when present, has at least one code: an empty
/// one has no wire form).
fn message() -> impl Strategy<Value = Message> {
    let head = (version(), id(), any::<u64>(), line_ending());
    let links = (
        option::of(any::<u8>().prop_map(Connection::from)),
        option::of(any::<u8>().prop_map(LinkState::from)),
        option::of(any::<u8>().prop_map(LinkState::from)),
        option::of(any::<bool>()),
        option::of(vec(any::<u16>().prop_map(StateCode::from), 1..5)),
    );
    let extra = vec((extra_key(), extra_value()), 0..4);
    (head, links, layout(), extra).prop_map(
        |(
            (version, id, send, line_ending),
            (connection, wifi_state, gsm_state, reset, state),
            (cols, rows, act_con, box_eng, box_to, box_acc),
            extra,
        )| Message {
            version,
            id,
            send,
            connection,
            wifi_state,
            gsm_state,
            reset,
            state,
            cols,
            rows,
            act_con,
            box_eng,
            box_to,
            box_acc,
            extra,
            line_ending,
        },
    )
}

fn answer() -> impl Strategy<Value = Answer> {
    let cell =
        (any::<u32>(), "[0-9]{1,8}", any::<u32>()).prop_map(|(cell, code, minutes)| Engaged {
            cell,
            code,
            minutes,
        });
    (
        version(),
        id(),
        any::<u64>(),
        any::<bool>(),
        any::<bool>(),
        vec(cell, 0..10),
        line_ending(),
    )
        .prop_map(
            |(version, id, send, reset, block, cells, line_ending)| Answer {
                version,
                id,
                send,
                reset,
                block,
                cells,
                line_ending,
            },
        )
}

fn encode(m: &Message) -> Vec<u8> {
    let mut out = Vec::new();
    m.encode(&mut out);
    out
}

/// Cuts `len` bytes at the given points (sorted, duplicates give empty pieces).
fn cut_points(len: usize, at: &[Index]) -> Vec<usize> {
    let mut points: Vec<usize> = at.iter().map(|i| i.index(len + 1)).collect();
    points.push(0);
    points.push(len);
    points.sort_unstable();
    points
}

/// Feeds `pieces` one by one, draining the decoder after each, alternating between `feed`
/// and writing into `buffer_mut` (the two ways a reader hands bytes over).
fn decode_pieces<'a>(
    max_frame: usize,
    pieces: impl IntoIterator<Item = &'a [u8]>,
) -> Vec<Result<Frame, DecoderError>> {
    let mut d = Decoder::new(max_frame);
    let mut out = Vec::new();
    for (i, piece) in pieces.into_iter().enumerate() {
        if i % 2 == 0 {
            d.feed(piece);
        } else {
            d.buffer_mut().extend_from_slice(piece);
        }
        out.extend(std::iter::from_fn(|| d.next_frame()));
    }
    out
}

fn decode_split(max_frame: usize, bytes: &[u8], at: &[Index]) -> Vec<Result<Frame, DecoderError>> {
    let points = cut_points(bytes.len(), at);
    decode_pieces(max_frame, points.windows(2).map(|w| &bytes[w[0]..w[1]]))
}

/// Lines a stream may carry, for the framing properties: headers, CLOSE with and without white
/// space, fields, noise, blank lines, long lines; each with its line ending. No line starts
/// with `CLOSE` followed by more text: see `extra_key`.
fn stream_line() -> impl Strategy<Value = String> {
    let body = prop_oneof![
        3 => Just("ACon_V1.0".to_string()),
        3 => Just("CLOSE".to_string()),
        1 => Just(" \tCLOSE  ".to_string()),
        1 => Just("  ACon_V2 ".to_string()),
        3 => "[A-Z_]{1,8}=[0-9,]{0,12}",
        2 => "[a-z0-9 =#]{0,20}",
        1 => Just(String::new()),
        1 => "[ \t\r]{1,4}",
        1 => "[a-z]{40,200}",
        1 => " {70,90}",
    ];
    (body, prop_oneof![Just("\n"), Just("\r\n")]).prop_map(|(b, nl)| b + nl)
}

/// A value for a known key: mostly plausible for that key, sometimes odd (white space around
/// it, any printable text, non-ASCII).
fn value_for(key: &str) -> BoxedStrategy<String> {
    let plausible = match key {
        "CONNECTION" | "WIFI_STATE" | "GSM_STATE" => " ?[0-9]{1,3} ?",
        "RESET" => "[0-2]",
        "STATE" => "[0-9]{1,2}( ?, ?[0-9]{1,2}){0,3}",
        "COLS" | "ROWS" => "[0-3]",
        "ACT_CON" => "[01]{1,3}( ?, ?[01]{1,3}){0,2}",
        _ => "[0-9]( ?, ?[0-9]{1,2}){0,3}",
    };
    prop_oneof![
        10 => plausible,
        1 => "\\PC{0,12}",
        1 => "[ -~]{0,12}",
    ]
    .boxed()
}

/// The fields of a frame that is nearly valid: ID and SEND, each other known key at most once,
/// a few unknown keys, in any order.
fn near_valid_fields() -> impl Strategy<Value = Vec<(String, String)>> {
    let others: Vec<&str> = KNOWN_KEYS[2..].to_vec();
    let known = proptest::sample::subsequence(others, 0..=11).prop_flat_map(|keys| {
        let values: Vec<_> = keys.iter().map(|k| value_for(k)).collect();
        (Just(keys), values)
    });
    let id = prop_oneof![8 => id(), 1 => "\\PC{0,8}"];
    let send = prop_oneof![8 => "[0-9]{1,20}", 1 => "[ -~]{0,6}"];
    let extra = vec(("[A-Za-z_ ]{1,6}", "\\PC{0,12}"), 0..3);
    (known, id, send, extra)
        .prop_map(|((keys, values), id, send, extra)| {
            let mut all: Vec<(String, String)> =
                keys.into_iter().map(str::to_string).zip(values).collect();
            all.extend(extra);
            all.push(("ID".into(), id));
            all.push(("SEND".into(), send));
            all
        })
        .prop_shuffle()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// (a) Whatever a board may send parses back to the same message.
    #[test]
    fn message_round_trip(m in message()) {
        let bytes = encode(&m);
        prop_assert_eq!(Message::parse(&bytes), Ok(m));
    }

    /// (a) … and through a decoder, as the server gets it.
    #[test]
    fn message_round_trip_through_the_decoder(m in message()) {
        let got = decode_pieces(acon::DEFAULT_MAX_FRAME, [encode(&m).as_slice()]);
        prop_assert_eq!(got.len(), 1);
        let frame = got[0].as_ref().map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(Message::parse(&frame.bytes), Ok(m));
    }

    /// (b) Several messages with noise between them: split anywhere, fed in pieces, they give
    /// exactly the frames they give fed at once, and those are the messages, in order.
    #[test]
    fn messages_split_anywhere_give_the_same_frames(
        parts in vec((vec("[a-z0-9 =#]{0,20}", 0..3), message()), 1..5),
        tail in "[a-z ]{0,8}",
        nl in prop_oneof![Just("\n"), Just("\r\n")],
        at in vec(any::<Index>(), 0..12),
    ) {
        let mut bytes = Vec::new();
        for (noise, m) in &parts {
            for line in noise {
                bytes.extend_from_slice(line.as_bytes());
                bytes.extend_from_slice(nl.as_bytes());
            }
            m.encode(&mut bytes);
        }
        bytes.extend_from_slice(tail.as_bytes());

        let max = acon::DEFAULT_MAX_FRAME;
        let whole = decode_pieces(max, [bytes.as_slice()]);
        prop_assert_eq!(&decode_split(max, &bytes, &at), &whole);

        let parsed: Vec<_> = whole
            .iter()
            .map(|r| r.as_ref().map(|f| Message::parse(&f.bytes)))
            .collect();
        let want: Vec<_> = parts.into_iter().map(|(_, m)| Ok(Ok(m))).collect();
        prop_assert_eq!(parsed, want);
    }

    /// (b) Any mix of headers, CLOSEs, fields and noise, with any size limit: split anywhere,
    /// the frames and the errors (unclosed frames, too large) are the same as fed at once.
    #[test]
    fn line_soup_split_anywhere_gives_the_same_results(
        lines in vec(stream_line(), 0..40),
        // The last line may lack its ending: a bare CLOSE, with or without much white space.
        tail in prop_oneof!["[a-z ]{0,8}", "[ \t]{0,80}CLOSE[ \t\r]{0,80}"],
        max_frame in 8usize..400,
        at in vec(any::<Index>(), 0..16),
    ) {
        let bytes = (lines.concat() + &tail).into_bytes();
        let whole = decode_pieces(max_frame, [bytes.as_slice()]);
        prop_assert_eq!(decode_split(max_frame, &bytes, &at), whole);
    }

    /// (b) One byte per read is the extreme split.
    #[test]
    fn one_byte_per_read_gives_the_same_results(
        lines in vec(stream_line(), 0..30),
        max_frame in 8usize..400,
    ) {
        let bytes = lines.concat().into_bytes();
        let whole = decode_pieces(max_frame, [bytes.as_slice()]);
        prop_assert_eq!(decode_pieces(max_frame, bytes.chunks(1)), whole);
    }

    /// (c) The decoder takes any bytes in any pieces without panicking, holds no more than its
    /// limit plus one read until it gives up, and parsing whatever it hands out does not panic
    /// either.
    #[test]
    fn decoder_and_parsers_never_panic(
        bytes in vec(any::<u8>(), 0..4096),
        at in vec(any::<Index>(), 0..16),
        max_frame in 1usize..600,
    ) {
        let points = cut_points(bytes.len(), &at);
        let mut d = Decoder::new(max_frame);
        let mut failed = false;
        for w in points.windows(2) {
            let piece = &bytes[w[0]..w[1]];
            d.feed(piece);
            while let Some(item) = d.next_frame() {
                match item {
                    Ok(frame) => {
                        prop_assert!(frame.bytes.len() <= max_frame);
                        let _ = Message::parse(&frame.bytes);
                        let _ = Answer::parse(&frame.bytes);
                    }
                    Err(e) => failed |= e.is_fatal(),
                }
            }
            // After a fatal error the caller closes the connection; what it still feeds is kept
            // but never looked at.
            prop_assert!(failed || d.pending() <= max_frame + piece.len());
        }
        let _ = Message::parse(&bytes);
        let _ = Answer::parse(&bytes);
    }

    /// (d) An answer parses back to itself, directly and through a decoder.
    #[test]
    fn answer_round_trip(a in answer()) {
        let mut bytes = Vec::new();
        a.encode(&mut bytes);
        prop_assert_eq!(Answer::parse(&bytes), Ok(a.clone()));
        let got = decode_pieces(acon::DEFAULT_MAX_FRAME, [bytes.as_slice()]);
        prop_assert_eq!(got.len(), 1);
        let frame = got[0].as_ref().map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(Answer::parse(&frame.bytes), Ok(a));
    }
}

proptest! {
    // Most of these frames are rejected (as they should be); enough cases that several hundred
    // are accepted and re-encoded.
    #![proptest_config(ProptestConfig::with_cases(4096))]

    /// (c) Frames close to valid ones, with odd values: parsing never panics, and what it
    /// accepts encodes to bytes that parse back to the same value.
    #[test]
    fn parse_accepts_only_what_it_can_encode_back(
        lines in near_valid_fields(),
        nl in prop_oneof![Just("\n"), Just("\r\n")],
    ) {
        let mut text = format!("ACon_V1.0{nl}");
        for (k, v) in &lines {
            text.push_str(&format!("{k}={v}{nl}"));
        }
        text.push_str("CLOSE");
        text.push_str(nl);
        if let Ok(m) = Message::parse(text.as_bytes()) {
            prop_assert_eq!(Message::parse(&encode(&m)), Ok(m));
        }
        if let Ok(a) = Answer::parse(text.as_bytes()) {
            let mut out = Vec::new();
            a.encode(&mut out);
            prop_assert_eq!(Answer::parse(&out), Ok(a));
        }
    }
}

//! ACon_V1.0, the lock-board protocol, as pure code: bytes in, typed values out.
//!
//! Nothing here touches a socket, a clock or a database (sans-IO). The gateway owns the
//! connection and feeds bytes to a [`Decoder`]; each complete frame is parsed into a
//! [`Message`] (board → server) or an [`Answer`] (server → board), and both encode back to
//! bytes. The protocol is described in `docs/protocol/acon.md`; the decisions gatehouse made
//! where the original leaves room are listed there ("Decisions gatehouse made") and written
//! next to the code that makes them.

mod answer;
mod decoder;
mod message;

pub use answer::{Answer, Engaged};
pub use decoder::{DEFAULT_MAX_FRAME, Decoder, DecoderError, Frame};
pub use message::{
    Connection, LineEnding, LinkState, MAX_DIMENSION, MAX_ID_LEN, Matrix, Message, ParseError,
    StateCode, is_valid_id, sniff_id,
};

//! The device side of gatehouse, for demos, tests and load: virtual ACon boards, a
//! closed-loop load generator, and a bare parse-and-answer server to measure against.
//! These talk to the server only over the wire, through the `acon` codec.
//!
//! - [`simulate_acon`]: a few virtual boards that behave like real ones (`gatehouse simulate
//!   acon`), printing what they do.
//! - [`bench_acon`]: many boards sending as fast as answers come, or at a fixed rate, with an
//!   HDR latency histogram (`gatehouse bench acon`).
//! - [`reference`]: the ceiling — a server that parses and answers and does nothing else.

mod args;
pub mod bench_acon;
pub mod bench_skaben;
mod latency;
mod net;
pub mod reference;
pub mod simulate_acon;
pub mod simulate_skaben;

//! The device side of gatehouse, for demos, tests and load: virtual ACon boards and SKABEN
//! props, load generators for both, and the references every figure is measured against.
//! These talk to the server only over the wire, through the `acon` and `skaben` crates.
//!
//! - [`simulate_acon`]: a few virtual boards that behave like real ones (`gatehouse simulate
//!   acon`), printing what they do.
//! - [`bench_acon`]: many boards sending as fast as answers come, or at a fixed rate, with an
//!   HDR latency histogram (`gatehouse bench acon`).
//! - [`reference`]: the ACon ceiling — a server that parses and answers and does nothing else
//!   (`bench acon --reference`).
//! - [`simulate_skaben`]: virtual props over MQTT — locks and terminals like the public Python
//!   client, lamps like the ESP firmware, in either client profile (`gatehouse simulate
//!   skaben`).
//! - [`bench_skaben`]: closed-loop CUP request → CUP round trips through the server, next to the
//!   broker's own publish → receive rate measured in the same run (`gatehouse bench skaben`).

mod args;
pub mod bench_acon;
pub mod bench_console;
pub mod bench_skaben;
mod latency;
mod net;
pub mod reference;
pub mod simulate_acon;
pub mod simulate_skaben;

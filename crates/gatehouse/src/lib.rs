//! gatehouse: a server for the devices of a venue. See ARCHITECTURE.md for the map.

pub mod bus;
pub mod cidr;
pub mod cli;
pub mod clock;
pub mod core;
pub mod gateway;
pub mod http;
pub mod rules_cli;
pub mod server;
pub mod store;
pub mod user_cli;

//! Integration tests: the server over real TCP sockets, a real SQLite file, real HTTP.

mod api;
mod common;
mod config;
mod durability;
mod tools;
mod vectors;

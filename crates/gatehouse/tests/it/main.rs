//! Integration tests: the server over real TCP sockets, a real SQLite file, real HTTP.

mod accounts;
mod acon_guards;
mod api;
mod browser;
mod browser_access;
mod browser_admin;
mod browser_board;
mod browser_device;
mod browser_game;
mod browser_rules;
mod common;
mod config;
mod durability;
mod game;
mod http;
mod limits;
mod mqtt_access;
mod net_limits;
mod openapi;
mod preset;
mod skaben;
mod store;
mod stream;
mod tools;
mod vectors;

//! The gateways: where devices connect. Each owns its sockets and hands typed messages to
//! the core; none holds device state of its own.

pub mod access;
pub mod acon;
pub mod broker;
pub mod budget;
pub mod inproc;

pub mod mqtt;
pub mod webhook;

//! SecAgg+ (Bell et al., CCS 2020) as sans-IO state machines, following PROTOCOL.md.

pub mod accumulator;
pub mod cipher;
pub mod client;
pub mod graph;
pub mod kdf;
pub mod keys;
pub mod params;
pub mod prg;
pub mod server;
pub mod shamir;
pub mod unmask;

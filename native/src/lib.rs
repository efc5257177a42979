//! The native face of the engine: the `orfeas` CLI ([`cli`]) and the HTTP server that keeps the
//! original studio's API ([`server`]).

pub mod cli;
pub mod compute;
pub mod convert;
pub mod generate;
pub mod isnet;
pub mod progress;
pub mod remove_bg;
pub mod server;
pub mod synthetic;

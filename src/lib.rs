//! portcullis: a hardened, self-hostable chat backend in front of an
//! OpenAI-compatible LLM server. See ARCHITECTURE.md for the map.

pub mod allocator;
pub mod app;
pub mod audit;
pub mod cli;
pub mod config;
pub mod data_files;
pub mod db;
pub mod error;
pub mod filters;
pub mod http;
pub mod ids;
pub mod json_body;
pub mod keys_cli;
pub mod logging;
pub mod login_throttle;
pub mod metrics;
pub mod net;
pub mod passwords;
pub mod relays;
pub mod router;
pub mod routes;
pub mod seats;
pub mod secret;
pub mod server;
pub mod signals;
pub mod sse;
pub mod streams;
pub mod threads;
pub mod time;
pub mod tokens;
pub mod upstream;
pub mod upstreams;
pub mod usage;

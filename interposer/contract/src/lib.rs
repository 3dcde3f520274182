//! The contract between pytier's parts, defined once and kube-free:
//!
//! - [`settings`]: what an interposer can be told (the TieringPolicy API
//!   embeds these types as they are, so the API server and the interposer
//!   cannot disagree about what is valid);
//! - [`protocol`]: the control socket's requests and replies;
//! - [`stats`]: what an interposer reports.

pub mod protocol;
pub mod settings;
pub mod stats;

pub use settings::Settings;

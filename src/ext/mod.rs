//! Integrations, each behind its feature: `image` (decoding into pooled
//! frames), `http-body` (request bodies in, chunked bodies out), `tokio`
//! (async reads and writes) and `metrics` (telemetry).

#[cfg(feature = "http-body")]
pub(crate) mod http;
#[cfg(feature = "image")]
pub(crate) mod image;
#[cfg(feature = "metrics")]
pub(crate) mod metrics;
#[cfg(feature = "tokio")]
pub(crate) mod tokio;

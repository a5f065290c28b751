pub(crate) mod http;
pub(crate) mod png;
pub(crate) mod scratch;

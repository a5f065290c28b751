pub(crate) mod http;
pub(crate) mod png;

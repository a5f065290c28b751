pub(crate) mod http;

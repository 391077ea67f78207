//! TLS at run time: domains, the ClientHello dispatch, connection facts, development
//! certificates, and the one `unsafe` module (`ffi`). Knows no sockets and no reload.

mod domains;
// The only module allowed `unsafe`: OpenSSL calls the `openssl` crate lacks.
#[allow(unsafe_code)]
pub mod ffi;

pub use domains::*;

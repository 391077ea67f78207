//! The few OpenSSL calls the `openssl` crate does not wrap: reading a raw extension of the
//! ClientHello inside the ClientHello callback (the SNI, before OpenSSL has parsed it). The
//! only module of siprox allowed `unsafe`; every block says why it is sound. Must never hand
//! out a pointer or a slice that outlives the borrow it came from.

use foreign_types::ForeignTypeRef;
use openssl::ssl::SslRef;

/// TLS extension number of server_name (RFC 6066).
pub const EXT_SERVER_NAME: u32 = 0;

/// The body of extension `ext_type` in the ClientHello being processed, if the client sent
/// it. Only meaningful inside the ClientHello callback; elsewhere OpenSSL returns nothing.
pub fn client_hello_ext(ssl: &SslRef, ext_type: u32) -> Option<&[u8]> {
    let mut out: *const std::os::raw::c_uchar = std::ptr::null();
    let mut len: usize = 0;
    // SAFETY: `ssl.as_ptr()` is a live SSL for the duration of the borrow; `out` and `len`
    // are valid, writable locals. Outside a ClientHello callback OpenSSL returns 0 and
    // writes nothing.
    let found = unsafe {
        openssl_sys::SSL_client_hello_get0_ext(ssl.as_ptr(), ext_type, &mut out, &mut len)
    };
    if found != 1 || out.is_null() {
        return None;
    }
    // SAFETY: on success OpenSSL points `out` at `len` bytes inside the ClientHello it keeps
    // for the whole callback; the slice borrows `ssl`, so it cannot outlive the callback's
    // access to the SSL, and nothing can free the ClientHello while it is borrowed shared.
    Some(unsafe { std::slice::from_raw_parts(out, len) })
}

//! The few OpenSSL calls the `openssl` crate does not wrap: reading a raw extension of the
//! ClientHello inside the ClientHello callback (the SNI, before OpenSSL has parsed it),
//! marking one connection's TLS 1.2 session not resumable, offering a saved session on
//! an outgoing connection (wrapped, but `unsafe`, in the crate), and adding a CRL parsed
//! from bytes to a verify store; and the two libc calls std lacks: the open-file limit
//! (`getrlimit`/`setrlimit`) and glibc's `malloc_trim`. The only module of siprox allowed
//! `unsafe`; every block says why it is sound. Must never hand out a pointer or a slice
//! that outlives the borrow it came from.

use std::os::raw::c_int;

use foreign_types::ForeignTypeRef;
use openssl::error::ErrorStack;
use openssl::ssl::{SslRef, SslSessionRef};
use openssl::x509::store::X509StoreBuilderRef;
use openssl::x509::X509CrlRef;
use openssl_sys::SSL;

extern "C" {
    // libssl 1.1.0 and later (a function since then; declared in <openssl/ssl.h>, not
    // bound by openssl-sys).
    fn SSL_set_not_resumable_session_callback(
        ssl: *mut SSL,
        cb: Option<extern "C" fn(*mut SSL, c_int) -> c_int>,
    );
}

/// OpenSSL asks it whether the new session may be resumed later: never.
extern "C" fn never_resumable(_ssl: *mut SSL, _is_forward_secure: c_int) -> c_int {
    1
}

/// The session this connection establishes (TLS 1.2) will not be resumable: OpenSSL neither
/// caches it nor issues a ticket for it. For a server domain with `session_resumption =
/// false`, whose connections start on the dispatch context: the session cache and the
/// ticket option of the domain's own context are never consulted after the switch (TLS 1.3
/// is covered by `num_tickets = 0`). Must be called before the ClientHello is processed
/// further, i.e. in the ClientHello callback.
pub fn disable_resumption(ssl: &mut SslRef) {
    // SAFETY: `ssl.as_ptr()` is a live SSL, exclusively borrowed; the callback is a plain
    // function with the C signature OpenSSL expects, valid for the whole program, and reads
    // nothing through its arguments.
    unsafe { SSL_set_not_resumable_session_callback(ssl.as_ptr(), Some(never_resumable)) }
}

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

/// Offers `session` for resumption on an outgoing connection not yet started.
/// `session` must come from a connection of the same `SslContext` as `ssl`: the client
/// domain's session cache (`ClientContext::sessions`) belongs to one built context and only
/// ever holds sessions that context produced.
pub fn offer_session(ssl: &mut SslRef, session: &SslSessionRef) -> Result<(), ErrorStack> {
    // SAFETY: the openssl crate marks this unsafe because a session from an incompatible
    // context must not be offered; per the contract above, `session` was produced by
    // `ssl`'s own context. OpenSSL takes its own reference to the session.
    unsafe { ssl.set_session(session) }
}

extern "C" {
    // libcrypto; declared in <openssl/x509_vfy.h>, not bound by openssl-sys.
    fn X509_STORE_add_crl(
        store: *mut openssl_sys::X509_STORE,
        crl: *mut openssl_sys::X509_CRL,
    ) -> c_int;
}

/// Adds `crl` to a verify store being built: the core builds trust from bytes, and the
/// `openssl` crate can only load a CRL from a path (the core's `AddCrl` hook).
pub fn add_crl(store: &mut X509StoreBuilderRef, crl: &X509CrlRef) -> Result<(), ErrorStack> {
    // SAFETY: both pointers are live objects borrowed for the call (the store exclusively);
    // X509_STORE_add_crl takes its own reference to the CRL (X509_CRL_up_ref) and keeps no
    // pointer to our borrow. An existing equal CRL is not an error (OpenSSL 1.1.1+).
    let ok = unsafe { X509_STORE_add_crl(store.as_ptr(), crl.as_ptr()) };
    if ok == 1 {
        Ok(())
    } else {
        Err(ErrorStack::get())
    }
}

/// The soft and hard `RLIMIT_NOFILE` of this process (`u64::MAX`: unlimited).
pub fn nofile_limit() -> std::io::Result<(u64, u64)> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid, writable `rlimit` local; getrlimit writes only into it.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((lim.rlim_cur, lim.rlim_max))
}

/// Sets the soft `RLIMIT_NOFILE` to `soft`, keeping the hard limit `hard` (an unprivileged
/// process may raise its soft limit up to its hard one, never past it).
pub fn set_nofile_soft(soft: u64, hard: u64) -> std::io::Result<()> {
    let lim = libc::rlimit {
        rlim_cur: soft,
        rlim_max: hard,
    };
    // SAFETY: `lim` is a valid `rlimit` that setrlimit only reads; a value the kernel
    // refuses (EINVAL, EPERM) is returned as an error, changing nothing.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Returns the free memory at the top of every malloc arena, and the free whole pages
/// inside them, to the OS (glibc `malloc_trim(0)`). True when some memory was released.
/// Takes each arena's lock in turn: call it off the hot path, after connections have gone.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn trim_heap() -> bool {
    // SAFETY: malloc_trim takes no pointer and is thread-safe (it locks each arena while
    // it trims it); it only releases memory malloc holds free.
    unsafe { libc::malloc_trim(0) == 1 }
}

/// Elsewhere (musl, other systems) there is no `malloc_trim`: nothing to do.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn trim_heap() -> bool {
    false
}

//! The few OpenSSL calls the `openssl` crate does not wrap: reading a raw extension of the
//! ClientHello inside the ClientHello callback (the SNI, before OpenSSL has parsed it),
//! marking one connection's TLS 1.2 session not resumable, offering a saved session on
//! an outgoing connection (wrapped, but `unsafe`, in the crate), adding a CRL parsed
//! from bytes to a verify store, and the session-ticket key callback (a cluster's shared
//! key ring); and the two libc calls std lacks: the open-file limit
//! (`getrlimit`/`setrlimit`) and glibc's `malloc_trim`; and whether OpenSSL still holds
//! bytes of a connection it has read (`SSL_has_pending`), and a TLS 1.3 KeyUpdate for the
//! tests to send (`SSL_key_update`); a connection's key-exchange groups
//! (`SSL_set1_groups_list`, which the crate wraps only for a context). The only module of
//! siprox allowed `unsafe`; every block says why it is sound. Must never hand out a
//! pointer or a slice that outlives the borrow it came from.

use std::ffi::CStr;
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
    // libssl 1.1.0 and later (declared in <openssl/ssl.h>, not bound by openssl-sys).
    fn SSL_has_pending(ssl: *const SSL) -> c_int;
    // libssl 1.1.1 and later (declared in <openssl/ssl.h>, not bound by openssl-sys).
    fn SSL_key_update(ssl: *mut SSL, updatetype: c_int) -> c_int;
}

/// `SSL_KEY_UPDATE_REQUESTED` (<openssl/ssl.h>): the peer must update its keys too.
const SSL_KEY_UPDATE_REQUESTED: c_int = 1;

/// Whether OpenSSL holds anything of this connection's incoming bytes: decrypted data not
/// yet returned, or bytes read from the socket (read-ahead) not yet processed, whole
/// records or part of one. `false`: the next `SSL_read` can only find something new
/// if the socket has more.
pub fn has_pending(ssl: &SslRef) -> bool {
    // SAFETY: `ssl.as_ptr()` is a live SSL for the duration of the shared borrow;
    // SSL_has_pending only reads the record layer's counters and changes nothing.
    unsafe { SSL_has_pending(ssl.as_ptr()) == 1 }
}

/// Schedules a TLS 1.3 KeyUpdate on `s` that asks the peer to update its keys too; OpenSSL
/// sends it with the next write. siprox never starts one: the tests play the peer that
/// does (a post-handshake message siprox must answer between application records). Takes
/// the stream, not its `SslRef` (which the crate lends only shared): the exclusive borrow
/// is what makes the write to the SSL sound.
pub fn request_key_update<S>(s: &mut openssl::ssl::SslStream<S>) -> Result<(), ErrorStack> {
    // SAFETY: `s.ssl().as_ptr()` is the live SSL of `s`, and `s` is exclusively borrowed:
    // no other use of that SSL can run during the call. SSL_key_update only records that
    // a KeyUpdate is due (it fails, returning 0, unless the connection is established
    // TLS 1.3) and keeps no pointer.
    if unsafe { SSL_key_update(s.ssl().as_ptr(), SSL_KEY_UPDATE_REQUESTED) } == 1 {
        Ok(())
    } else {
        Err(ErrorStack::get())
    }
}

/// Sets the key-exchange groups of one connection (TLS 1.3 key shares, TLS 1.2 curves),
/// for a server domain whose groups differ from the dispatch context's: OpenSSL copies
/// the groups into an `Ssl` when it is made, and switching its context keeps them. Called
/// in the ClientHello callback, before OpenSSL reads the key shares. The crate wraps this
/// only for a context.
pub fn set_groups_list(ssl: &mut SslRef, groups: &CStr) -> Result<(), ErrorStack> {
    // SAFETY: `ssl.as_ptr()` is a live SSL, exclusively borrowed; `groups` is a
    // NUL-terminated string that OpenSSL only reads during the call (it parses the names
    // into its own array and keeps no pointer).
    if unsafe { openssl_sys::SSL_set1_groups_list(ssl.as_ptr(), groups.as_ptr()) } == 1 {
        Ok(())
    } else {
        Err(ErrorStack::get())
    }
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

extern "C" {
    // libssl 3.0 and later (a function, declared in <openssl/tls1.h>, not bound by
    // openssl-sys).
    fn SSL_CTX_set_tlsext_ticket_key_evp_cb(
        ctx: *mut openssl_sys::SSL_CTX,
        cb: Option<
            unsafe extern "C" fn(
                *mut SSL,
                *mut std::os::raw::c_uchar,
                *mut std::os::raw::c_uchar,
                *mut openssl_sys::EVP_CIPHER_CTX,
                *mut openssl_sys::EVP_MAC_CTX,
                c_int,
            ) -> c_int,
        >,
    ) -> c_int;
    // libcrypto 3.0; openssl-sys binds the octet-string constructor but not this one.
    fn OSSL_PARAM_construct_utf8_string(
        key: *const std::os::raw::c_char,
        buf: *mut std::os::raw::c_char,
        bsize: usize,
    ) -> openssl_sys::OSSL_PARAM;
}

/// Bytes of the IV OpenSSL hands the callback (EVP_MAX_IV_LENGTH); AES-CBC uses 16.
const TICKET_IV_LEN: usize = 16;

/// Tickets of connections started on `b` are made and read with the ring attached to each
/// connection (`ticket_keys::attach`) instead of OpenSSL's per-process keys.
pub fn set_ticket_key_callback(b: &mut openssl::ssl::SslContextBuilder) -> Result<(), ErrorStack> {
    // SAFETY: `b.as_ptr()` is a live SSL_CTX being built, exclusively borrowed; the
    // callback is a plain function with the C signature OpenSSL 3 declares, valid for the
    // whole program.
    let ok = unsafe { SSL_CTX_set_tlsext_ticket_key_evp_cb(b.as_ptr(), Some(ticket_key_cb)) };
    if ok == 1 {
        Ok(())
    } else {
        Err(ErrorStack::get())
    }
}

/// HMAC-SHA256 with `key` on OpenSSL's MAC context.
///
/// # Safety
/// `hctx` must be the live EVP_MAC_CTX OpenSSL passed to the ticket callback.
unsafe fn ticket_mac_init(hctx: *mut openssl_sys::EVP_MAC_CTX, key: &[u8; 32]) -> bool {
    let mut k = *key;
    let mut digest = *b"SHA256\0";
    let params = [
        openssl_sys::OSSL_PARAM_construct_octet_string(
            c"key".as_ptr(),
            k.as_mut_ptr().cast(),
            k.len(),
        ),
        OSSL_PARAM_construct_utf8_string(c"digest".as_ptr(), digest.as_mut_ptr().cast(), 0),
        openssl_sys::OSSL_PARAM_construct_end(),
    ];
    // The params point at `k` and `digest`, which outlive the call; the MAC copies the key.
    openssl_sys::EVP_MAC_CTX_set_params(hctx, params.as_ptr()) == 1
}

/// OpenSSL's ticket key callback (`enc` 1: a new ticket, fill `key_name` and `iv`; 0: a
/// ticket named `key_name` arrived). Returns 1 (done), 2 (accepted, but made with an older
/// key: issue a new ticket), 0 (no ticket / unknown key: full handshake), -1 (error).
unsafe extern "C" fn ticket_key_cb(
    ssl: *mut SSL,
    key_name: *mut std::os::raw::c_uchar,
    iv: *mut std::os::raw::c_uchar,
    ectx: *mut openssl_sys::EVP_CIPHER_CTX,
    hctx: *mut openssl_sys::EVP_MAC_CTX,
    enc: c_int,
) -> c_int {
    use crate::tls::ticket_keys::{now_ms, ring_of, NAME_LEN};
    if ssl.is_null() || key_name.is_null() || iv.is_null() || ectx.is_null() || hctx.is_null() {
        return -1;
    }
    // SAFETY: OpenSSL calls this with the live SSL of the handshake in progress; the borrow
    // ends with the call.
    let ssl = SslRef::from_ptr(ssl);
    let Some(ring) = ring_of(ssl) else {
        return 0;
    };
    // SAFETY: OpenSSL passes a 16-byte key name buffer and an EVP_MAX_IV_LENGTH IV buffer,
    // both live and not aliased by anything else during the call.
    let name = std::slice::from_raw_parts_mut(key_name, NAME_LEN);
    let iv = std::slice::from_raw_parts_mut(iv, TICKET_IV_LEN);
    let now = now_ms();
    if enc == 1 {
        let key = ring.encrypting(now);
        if openssl::rand::rand_bytes(iv).is_err() {
            return -1;
        }
        name.copy_from_slice(&key.name);
        // SAFETY: `ectx` is OpenSSL's live cipher context; key and IV are 32 and 16 bytes,
        // what AES-256-CBC reads.
        let ok = openssl_sys::EVP_EncryptInit_ex(
            ectx,
            openssl_sys::EVP_aes_256_cbc(),
            std::ptr::null_mut(),
            key.aes.as_ptr(),
            iv.as_ptr(),
        ) == 1
            && ticket_mac_init(hctx, &key.hmac);
        return if ok { 1 } else { -1 };
    }
    let Some(chosen) = ring.decrypting(name, now) else {
        return 0;
    };
    // SAFETY: as above; the IV is the one read from the ticket.
    let ok = ticket_mac_init(hctx, &chosen.key.hmac)
        && openssl_sys::EVP_DecryptInit_ex(
            ectx,
            openssl_sys::EVP_aes_256_cbc(),
            std::ptr::null_mut(),
            chosen.key.aes.as_ptr(),
            iv.as_ptr(),
        ) == 1;
    match (ok, chosen.renew) {
        (false, _) => -1,
        (true, true) => 2,
        (true, false) => 1,
    }
}

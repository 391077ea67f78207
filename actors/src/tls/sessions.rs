//! The sessions siprox may resume when it connects out: one store per built client context,
//! filled by OpenSSL's new-session callback (through the core's `ClientSessionCache`) and
//! taken from once per connect. Bounded; must never be touched per message, and never
//! offer a session to another context than the one that produced it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use openssl::ex_data::Index;
use openssl::ssl::{Ssl, SslRef, SslSession, SslVersion};
use siprox::tls::ClientSessionCache;

/// Most destinations a client domain remembers sessions for.
const MAX_CLIENT_SESSIONS: usize = 4096;

/// The sessions a client domain may resume, by destination (address and server name).
#[derive(Default)]
pub struct ClientSessions {
    by_dest: Mutex<HashMap<String, SslSession>>,
}

impl std::fmt::Debug for ClientSessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientSessions")
            .field("held", &self.len())
            .finish()
    }
}

/// A new, empty store, for the core's `BuildHooks`.
pub fn new_cache() -> Arc<dyn ClientSessionCache> {
    Arc::new(ClientSessions::default())
}

/// The ex-data slot of an outgoing `Ssl` naming its destination for [`ClientSessions`]:
/// set by whoever creates the `Ssl`, read when the new session arrives.
pub fn client_session_key() -> Option<Index<Ssl, String>> {
    static I: OnceLock<Option<Index<Ssl, String>>> = OnceLock::new();
    *I.get_or_init(|| Ssl::new_ex_index().ok())
}

impl ClientSessionCache for ClientSessions {
    fn new_session(&self, ssl: &SslRef, session: SslSession) {
        if let Some(dest) = client_session_key().and_then(|i| ssl.ex_data(i)) {
            self.store(dest.clone(), session);
        }
    }

    /// The session to offer when connecting to `dest`. A TLS 1.3 ticket is handed out once
    /// (RFC 8446 §C.4: tickets are not reused); the connection that resumes with it
    /// receives fresh ones. A TLS 1.2 session may be offered again.
    fn take(&self, dest: &str) -> Option<SslSession> {
        let mut m = self.by_dest.lock().ok()?;
        let tls13 = m.get(dest)?.protocol_version() == SslVersion::TLS1_3;
        if tls13 {
            m.remove(dest)
        } else {
            m.get(dest).cloned()
        }
    }
}

impl ClientSessions {
    fn store(&self, dest: String, session: SslSession) {
        let Ok(mut m) = self.by_dest.lock() else {
            return;
        };
        if m.len() >= MAX_CLIENT_SESSIONS && !m.contains_key(&dest) {
            if let Some(k) = m.keys().next().cloned() {
                m.remove(&k);
            }
        }
        m.insert(dest, session);
    }

    /// Sessions held (for tests and status).
    pub fn len(&self) -> usize {
        self.by_dest.lock().map_or(0, |m| m.len())
    }

    /// True when no session is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

//! The compiled route scripts of one configuration, and which one a message runs. Compiled
//! by the runtime's `Script` actor, run through [`super::host`]. Immutable once built;
//! selecting a script must never allocate beyond the Request-URI host.

use std::collections::HashMap;

use crate::script::Script;
use crate::sip::Message;
use crate::tls::TlsFacts;

/// The compiled scripts of one snapshot. Immutable; shared by every worker.
#[derive(Debug, Default, Clone)]
pub struct ScriptSet {
    /// `[script] file`; `None`: the built-in route.
    pub default: Option<Script>,
    /// Domain name -> its script.
    pub by_domain: HashMap<String, Script>,
    /// Lower-case SIP domain name -> the domain (with a script) that serves it.
    by_sip_name: HashMap<String, String>,
}

impl ScriptSet {
    /// Adds `domain`'s script, which also serves requests for its SIP `names`.
    pub fn add_domain(&mut self, domain: &str, names: &[String], script: Script) {
        for n in names {
            self.by_sip_name.insert(
                n.trim_end_matches('.').to_ascii_lowercase(),
                domain.to_owned(),
            );
        }
        self.by_domain.insert(domain.to_owned(), script);
    }

    /// The script a request runs, and the tag that names it in siprox's Via: the script of
    /// the TLS domain the connection belongs to; else of the domain whose SIP names match
    /// the Request-URI host; else the default. `None`: the built-in route.
    pub fn for_request<'s>(
        &'s self,
        tls: Option<&TlsFacts>,
        msg: &Message,
    ) -> Option<(&'s Script, Option<&'s str>)> {
        if let Some(domain) = tls.and_then(|t| t.domain.as_deref()) {
            if let Some((name, s)) = self.by_domain.get_key_value(domain) {
                return Some((s, Some(name.as_str())));
            }
        }
        if !self.by_sip_name.is_empty() {
            if let Some(host) = msg
                .request_uri()
                .ok()
                .and_then(|u| u.as_sip().map(|s| s.host.to_string()))
            {
                let host = host.trim_end_matches('.').to_ascii_lowercase();
                if let Some(domain) = self.by_sip_name.get(&host) {
                    if let Some((name, s)) = self.by_domain.get_key_value(domain) {
                        return Some((s, Some(name.as_str())));
                    }
                }
            }
        }
        self.default.as_ref().map(|s| (s, None))
    }

    /// The script whose `onreply_route` a response runs: the one that forwarded the request
    /// (named by the tag in siprox's Via), else the default.
    pub fn for_reply(&self, tag: Option<&str>) -> Option<&Script> {
        tag.and_then(|t| self.by_domain.get(t))
            .or(self.default.as_ref())
    }

    /// True when no script is configured at all.
    pub fn is_empty(&self) -> bool {
        self.default.is_none() && self.by_domain.is_empty()
    }
}

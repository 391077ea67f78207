//! HTTP digest (RFC 7616 / RFC 8760) as a SIP client answers a 401: the nonce of a
//! challenge and the `Authorization` header for it, MD5 or SHA-256 with `qop=auth`. One
//! copy for every test and the load generator. Test code: it may panic on a response
//! without the challenge it was asked to answer, never on anything else.

use openssl::hash::{hash, MessageDigest};

/// Who answers, to what, and with which nonce count.
#[derive(Debug, Clone, Copy)]
pub struct Answer<'a> {
    /// `MD5` or `SHA-256` (anything else is taken as MD5).
    pub alg: &'a str,
    pub user: &'a str,
    pub realm: &'a str,
    pub password: &'a str,
    /// The request's method (`REGISTER`) and its Request-URI.
    pub method: &'a str,
    pub uri: &'a str,
    pub nc: u32,
    pub cnonce: &'a str,
}

/// The nonce of the `WWW-Authenticate` value with `algorithm=<alg>` among `values`.
pub fn nonce_of<'a>(values: impl IntoIterator<Item = &'a str>, alg: &str) -> Option<&'a str> {
    let want = format!("algorithm={alg}");
    values
        .into_iter()
        .find(|v| v.contains(&want))?
        .split("nonce=\"")
        .nth(1)?
        .split('"')
        .next()
}

/// The nonce of the `algorithm=<alg>` challenge in a 401's text (header lines as sent).
pub fn nonce_in<'a>(response: &'a str, alg: &str) -> Option<&'a str> {
    nonce_of(
        response
            .split("\r\n")
            .filter_map(|l| l.strip_prefix("WWW-Authenticate:")),
        alg,
    )
}

impl Answer<'_> {
    fn hex(&self, s: &str) -> String {
        let md = if self.alg == "SHA-256" {
            MessageDigest::sha256()
        } else {
            MessageDigest::md5()
        };
        hash(md, s.as_bytes())
            .map(|d| d.iter().map(|b| format!("{b:02x}")).collect())
            .unwrap_or_default()
    }

    /// The `Authorization` header line (with its CRLF) answering `nonce`.
    pub fn header(&self, nonce: &str) -> String {
        let ha1 = self.hex(&format!("{}:{}:{}", self.user, self.realm, self.password));
        let ha2 = self.hex(&format!("{}:{}", self.method, self.uri));
        let nc = format!("{:08x}", self.nc);
        let response = self.hex(&format!("{ha1}:{nonce}:{nc}:{}:auth:{ha2}", self.cnonce));
        format!(
            "Authorization: Digest username=\"{}\", realm=\"{}\", nonce=\"{nonce}\", \
             uri=\"{}\", response=\"{response}\", algorithm={}, qop=auth, nc={nc}, \
             cnonce=\"{}\"\r\n",
            self.user, self.realm, self.uri, self.alg, self.cnonce
        )
    }

    /// The `Authorization` header line answering the `alg` challenge in the 401 `response`.
    /// Panics when it has none.
    pub fn to(&self, response: &str) -> String {
        let nonce = nonce_in(response, self.alg)
            .unwrap_or_else(|| panic!("no {} challenge in {response}", self.alg));
        self.header(nonce)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rfc_2617_example_answer() {
        // RFC 2617 section 3.5, with its own values (MD5, qop=auth).
        let a = Answer {
            alg: "MD5",
            user: "Mufasa",
            realm: "testrealm@host.com",
            password: "Circle Of Life",
            method: "GET",
            uri: "/dir/index.html",
            nc: 1,
            cnonce: "0a4f113b",
        };
        let h = a.header("dcd98b7102dd2f0e8b11d0f600bfb0c093");
        assert!(
            h.contains("response=\"6629fae49393a05397450978507c4ef1\""),
            "{h}"
        );
        assert!(h.ends_with("nc=00000001, cnonce=\"0a4f113b\"\r\n"), "{h}");
    }

    #[test]
    fn the_nonce_of_the_asked_algorithm() {
        let r = "SIP/2.0 401 Unauthorized\r\n\
                 WWW-Authenticate: Digest realm=\"x\", nonce=\"n256\", algorithm=SHA-256, qop=\"auth\"\r\n\
                 WWW-Authenticate: Digest realm=\"x\", nonce=\"n5\", algorithm=MD5, qop=\"auth\"\r\n\r\n";
        assert_eq!(nonce_in(r, "SHA-256"), Some("n256"));
        assert_eq!(nonce_in(r, "MD5"), Some("n5"));
        assert_eq!(nonce_in(r, "SHA-512-256"), None);
    }
}

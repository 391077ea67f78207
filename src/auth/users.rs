//! The digest users file (`conf.d/users.toml`): one `[[user]]` table per account with its
//! HA1 per hash (`ha1_md5`, `ha1_sha256`), or a `password` that is hashed at load and then
//! dropped (its buffer overwritten): plain passwords are never kept. Parsing is pure (the
//! runtime reads the file and swaps the result in on reload); errors name file and line.
//!
//! ```toml
//! realm = "example.com"          # default realm for the users below
//!
//! [[user]]
//! name = "alice"
//! ha1_md5 = "..."                # H(name:realm:password), lower- or upper-case hex
//! ha1_sha256 = "..."
//!
//! [[user]]
//! name = "bob"
//! realm = "example.org"
//! password = "secret"           # hashed at load, never stored
//! ```

use std::borrow::Cow;
use std::collections::HashMap;

use serde::Deserialize;
use toml::Spanned;

use super::digest::{ha1, Algorithm, HashAlg};

/// A users file problem, naming the file and the line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UsersError {
    #[error("{file}:{line}: {message}")]
    Syntax {
        file: String,
        line: usize,
        message: String,
    },
    #[error("{file}:{line}: user {user:?}: {what}")]
    Invalid {
        file: String,
        line: usize,
        user: String,
        what: String,
    },
}

/// Where digest credentials come from; object-safe so that a database can follow.
pub trait UserDb: Send + Sync {
    /// The stored HA1 (lower-case hex) of `user` in `realm` for `hash`, if any.
    fn ha1(&self, user: &str, realm: &str, hash: HashAlg) -> Option<Cow<'_, str>>;
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Entry {
    md5: Option<String>,
    sha256: Option<String>,
}

/// The loaded users: realm -> user -> HA1s.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Users {
    realms: HashMap<String, HashMap<String, Entry>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    realm: Option<Spanned<String>>,
    #[serde(default)]
    user: Vec<Spanned<RawUser>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUser {
    name: String,
    realm: Option<String>,
    password: Option<String>,
    ha1_md5: Option<String>,
    ha1_sha256: Option<String>,
}

fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()
        .get(..offset.min(text.len()))
        .map_or(1, |b| b.iter().filter(|&&c| c == b'\n').count() + 1)
}

/// Overwrite a secret before freeing it. Best effort: the TOML parser and the caller's
/// copy of the file text are out of our hands, and this is not a guarantee against the
/// optimiser without `unsafe` volatile writes, which the core forbids.
fn wipe(s: String) {
    let mut b = s.into_bytes();
    b.fill(0);
    std::hint::black_box(&b);
}

fn check_ha1(v: String, hash: HashAlg) -> Result<String, String> {
    if v.len() == hash.hex_len() && v.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(v.to_ascii_lowercase())
    } else {
        Err(format!("not {} hex digits", hash.hex_len()))
    }
}

impl Users {
    /// Parse a users file; `file` names it in errors.
    pub fn from_toml(text: &str, file: &str) -> Result<Users, UsersError> {
        let raw: RawFile = toml::from_str(text).map_err(|e| UsersError::Syntax {
            file: file.to_owned(),
            line: e.span().map_or(1, |s| line_of(text, s.start)),
            message: e.message().to_owned(),
        })?;
        let default_realm = raw.realm.map(Spanned::into_inner);
        let mut users = Users::default();
        for u in raw.user {
            let line = line_of(text, u.span().start);
            let u = u.into_inner();
            let invalid = |what: String| UsersError::Invalid {
                file: file.to_owned(),
                line,
                user: u.name.clone(),
                what,
            };
            if u.name.is_empty() || u.name.chars().any(char::is_control) {
                return Err(invalid("empty name or control characters".into()));
            }
            let realm = match u.realm.clone().or_else(|| default_realm.clone()) {
                Some(r) if !r.is_empty() && !r.chars().any(char::is_control) => r,
                Some(_) => return Err(invalid("empty realm or control characters".into())),
                None => return Err(invalid("no realm (set `realm` here or at the top)".into())),
            };
            let entry = match (u.password, u.ha1_md5, u.ha1_sha256) {
                (Some(p), None, None) => {
                    let r = (
                        ha1(&u.name, &realm, &p, Algorithm::Md5),
                        ha1(&u.name, &realm, &p, Algorithm::Sha256),
                    );
                    wipe(p);
                    match r {
                        (Ok(md5), Ok(sha)) => Entry {
                            md5: Some(md5),
                            sha256: Some(sha),
                        },
                        (Err(e), _) | (_, Err(e)) => return Err(invalid(e.to_string())),
                    }
                }
                (Some(p), _, _) => {
                    wipe(p);
                    return Err(invalid("give either password or ha1_*, not both".into()));
                }
                (None, None, None) => {
                    return Err(invalid("needs password, ha1_md5 or ha1_sha256".into()))
                }
                (None, md5, sha) => Entry {
                    md5: md5
                        .map(|v| check_ha1(v, HashAlg::Md5))
                        .transpose()
                        .map_err(|e| invalid(format!("ha1_md5: {e}")))?,
                    sha256: sha
                        .map(|v| check_ha1(v, HashAlg::Sha256))
                        .transpose()
                        .map_err(|e| invalid(format!("ha1_sha256: {e}")))?,
                },
            };
            let realm_map = users.realms.entry(realm.clone()).or_default();
            if realm_map.contains_key(&u.name) {
                return Err(invalid(format!("defined twice in realm {realm:?}")));
            }
            realm_map.insert(u.name, entry);
        }
        Ok(users)
    }

    /// Add or replace one user from a password (for tests and tooling).
    pub fn insert_password(
        &mut self,
        user: &str,
        realm: &str,
        password: &str,
    ) -> Result<(), super::CryptoError> {
        let e = Entry {
            md5: Some(ha1(user, realm, password, Algorithm::Md5)?),
            sha256: Some(ha1(user, realm, password, Algorithm::Sha256)?),
        };
        self.realms
            .entry(realm.to_owned())
            .or_default()
            .insert(user.to_owned(), e);
        Ok(())
    }

    /// Number of accounts.
    pub fn len(&self) -> usize {
        self.realms.values().map(HashMap::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl UserDb for Users {
    fn ha1(&self, user: &str, realm: &str, hash: HashAlg) -> Option<Cow<'_, str>> {
        let e = self.realms.get(realm)?.get(user)?;
        match hash {
            HashAlg::Md5 => e.md5.as_deref(),
            HashAlg::Sha256 => e.sha256.as_deref(),
        }
        .map(Cow::Borrowed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loads_and_validates() {
        let text = r#"
realm = "example.com"

[[user]]
name = "alice"
password = "secret"

[[user]]
name = "bob"
realm = "example.org"
ha1_md5 = "0123456789ABCDEF0123456789abcdef"
"#;
        let u = Users::from_toml(text, "users.toml").unwrap();
        assert_eq!(u.len(), 2);
        assert_eq!(
            u.ha1("alice", "example.com", HashAlg::Md5).as_deref(),
            Some(
                ha1("alice", "example.com", "secret", Algorithm::Md5)
                    .unwrap()
                    .as_str()
            )
        );
        assert!(u.ha1("alice", "example.com", HashAlg::Sha256).is_some());
        assert_eq!(
            u.ha1("bob", "example.org", HashAlg::Md5).as_deref(),
            Some("0123456789abcdef0123456789abcdef")
        );
        assert!(u.ha1("bob", "example.org", HashAlg::Sha256).is_none());
        assert!(u.ha1("bob", "example.com", HashAlg::Md5).is_none());
    }

    #[test]
    fn errors_name_file_and_line() {
        let e = Users::from_toml("[[user]]\nname = \"a\"\n", "u.toml").unwrap_err();
        assert!(
            e.to_string().starts_with("u.toml:1: user \"a\": no realm"),
            "{e}"
        );
        let e = Users::from_toml(
            "realm=\"r\"\n[[user]]\nname=\"a\"\npassword=\"p\"\n\n[[user]]\nname=\"a\"\npassword=\"q\"\n",
            "u.toml",
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("u.toml:6: user \"a\": defined twice"),
            "{e}"
        );
        let e = Users::from_toml(
            "realm=\"r\"\n[[user]]\nname=\"a\"\nha1_md5=\"xyz\"\n",
            "u.toml",
        )
        .unwrap_err();
        assert!(e.to_string().contains("ha1_md5: not 32 hex digits"), "{e}");
        let e = Users::from_toml(
            "realm=\"r\"\n[[user]]\nname=\"a\"\npasswd=\"p\"\n",
            "u.toml",
        )
        .unwrap_err();
        assert!(matches!(e, UsersError::Syntax { line: 4, .. }), "{e}");
        let e = Users::from_toml("realm=\"r\"\n[[user]]\nname=\"a\"\n", "u.toml").unwrap_err();
        assert!(e.to_string().contains("needs password"), "{e}");
        assert!(Users::from_toml("[[user]\n", "u.toml").is_err());
        assert!(Users::from_toml("", "u.toml").unwrap().is_empty());
    }
}

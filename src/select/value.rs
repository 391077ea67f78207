//! The value a select, pseudo-variable or script expression evaluates to: an integer or a
//! string borrowed from the message when possible. Conversions never fail loudly: a string
//! that is not a number simply has no integer form.

use std::borrow::Cow;
use std::fmt;

/// An integer or a string. Strings borrow from the message (or the script) when they can.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value<'a> {
    Int(i64),
    Str(Cow<'a, str>),
    /// No value: a route script's pseudo-variable that has none (Kamailio's null: an absent
    /// header, `$du` unset, `$tls_*` outside TLS, a transformation out of range). Selects
    /// never give it (an absent select is the empty string, as in SER). Its string form is
    /// `""` and it is no integer; a script template prints it `<null>`.
    Null,
}

impl<'a> Value<'a> {
    /// The empty string: what a select yields when the thing it names is absent.
    pub const EMPTY: Value<'static> = Value::Str(Cow::Borrowed(""));

    /// A borrowed string value.
    pub fn str(s: &'a str) -> Value<'a> {
        Value::Str(Cow::Borrowed(s))
    }

    /// A borrowed string, or the empty string when absent.
    pub fn opt(s: Option<&'a str>) -> Value<'a> {
        Value::Str(Cow::Borrowed(s.unwrap_or("")))
    }

    /// The string form (integers in decimal).
    pub fn as_str(&self) -> Cow<'_, str> {
        match self {
            Value::Int(i) => Cow::Owned(i.to_string()),
            Value::Str(s) => Cow::Borrowed(s),
            Value::Null => Cow::Borrowed(""),
        }
    }

    /// The integer form: integers as they are, strings when they are a decimal number
    /// (surrounding blanks ignored), otherwise `None`.
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            Value::Str(s) => s.trim().parse().ok(),
            Value::Null => None,
        }
    }

    /// True for [`Value::Null`].
    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }

    /// True for the empty string (an integer is never empty).
    pub fn is_empty(&self) -> bool {
        matches!(self, Value::Str(s) if s.is_empty())
    }

    /// Detach from the message.
    pub fn into_owned(self) -> Value<'static> {
        match self {
            Value::Int(i) => Value::Int(i),
            Value::Str(s) => Value::Str(Cow::Owned(s.into_owned())),
            Value::Null => Value::Null,
        }
    }

    /// Append the string form to `out` without an intermediate allocation.
    pub fn write_to(&self, out: &mut String) {
        match self {
            Value::Int(i) => {
                use fmt::Write as _;
                let _ = write!(out, "{i}");
            }
            Value::Str(s) => out.push_str(s),
            Value::Null => {}
        }
    }
}

impl fmt::Display for Value<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Int(i) => write!(f, "{i}"),
            Value::Str(s) => f.write_str(s),
            Value::Null => Ok(()),
        }
    }
}

impl From<i64> for Value<'_> {
    fn from(i: i64) -> Self {
        Value::Int(i)
    }
}

impl From<String> for Value<'_> {
    fn from(s: String) -> Self {
        Value::Str(Cow::Owned(s))
    }
}

impl<'a> From<&'a str> for Value<'a> {
    fn from(s: &'a str) -> Self {
        Value::Str(Cow::Borrowed(s))
    }
}

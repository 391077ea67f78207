//! SIP selects: the Request-URI, name-addr headers (From, To, Contact, Route, ...), Via,
//! CSeq, Call-ID, any header by name (`@hf_value`), the message itself, the addresses it
//! travelled between, and the RPC method of an HTTP request handed to the script. Every
//! evaluation is a lazy parse of the one header it needs; bad or absent input is "".

use std::borrow::Cow;

use super::{Env, RawIdx, Seg, SelectError, Value};
use crate::sip::{CommaSplit, Field, HeaderName, Host, Message, NameAddr, Uri, Via, Where};

/// A header named in a select: classified once at compile time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderRef {
    pub known: HeaderName,
    /// The name as written (used to match unknown headers, case-insensitively).
    pub name: String,
}

impl HeaderRef {
    pub fn new(name: &str) -> HeaderRef {
        HeaderRef {
            known: HeaderName::classify(name.as_bytes()),
            name: name.to_owned(),
        }
    }

    fn matches(&self, f: &Field<'_>) -> bool {
        if self.known == HeaderName::Other {
            f.name == HeaderName::Other && f.name_str.eq_ignore_ascii_case(&self.name)
        } else {
            f.name == self.known
        }
    }

    /// Whether the message has this header at all (with an empty value or not).
    pub fn present(&self, msg: &Message) -> bool {
        msg.fields().any(|f| self.matches(&f))
    }

    /// Every line value of this header, in order. The values borrow from the message only.
    fn lines<'s, 'a: 's>(&'s self, msg: &'a Message) -> impl Iterator<Item = &'a str> + 's {
        msg.fields()
            .filter(move |f| self.matches(f))
            .map(|f| f.value)
    }
}

/// Which element of a list: 1-based from the front, or counted from the back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Idx {
    /// 0-based position from the front.
    Nth(usize),
    /// 1 = last.
    FromEnd(usize),
}

impl Idx {
    fn from_raw(seg: &Seg<'_>, raw: &RawIdx<'_>) -> Result<Idx, SelectError> {
        match raw {
            RawIdx::Int(n) if *n > 0 => Ok(Idx::Nth((*n - 1) as usize)),
            RawIdx::Int(n) if *n < 0 => Ok(Idx::FromEnd(n.unsigned_abs() as usize)),
            RawIdx::Int(_) => Err(SelectError::at(
                seg.at,
                "indices start at 1 (or -1 for the last)",
            )),
            RawIdx::Str(_) => Err(SelectError::at(seg.at, "expected a number as index")),
        }
    }

    fn pick<'a, I: Iterator<Item = &'a str>>(self, mut it: I) -> Option<&'a str> {
        match self {
            Idx::Nth(n) => it.nth(n),
            Idx::FromEnd(k) => {
                let all: Vec<&str> = it.collect();
                all.len().checked_sub(k).and_then(|i| all.get(i).copied())
            }
        }
    }
}

/// A part of a URI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UriPart {
    Whole,
    Scheme,
    /// The user as written (`$rU`, `$fU`, `$tU`).
    User,
    /// The select's `.user`: for a `tel:` URI or a `sip:` URI with `user=phone`, without the
    /// visual separators `-` `.` `(` `)` (SER's and Kamailio's select_uri_user).
    SelUser,
    Password,
    Host,
    /// The explicit port, or "".
    Port,
    /// The explicit port, or the scheme's default (Kamailio's `$rp`).
    PortOrDefault,
    /// `host:port`, the port as written or the scheme's default.
    HostPort,
    /// All parameters, raw, without the leading `;`.
    Params,
    /// One parameter's value ("" when absent or valueless).
    Param(String),
    /// The header part after `?`.
    Headers,
    /// The select's `.transport`: the `transport` parameter in lower case, else the
    /// scheme's default, `udp` (`tls` for `sips:`), as SER's select_uri_proto.
    Transport,
}

/// A part of a name-addr header value (From, To, Contact, Route, ...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NaPart {
    /// The value as written.
    Whole,
    Uri(UriPart),
    /// The display name as written, quotes kept (`"Alice A"`): SER's and Kamailio's core
    /// selects and `$fn`/`$tn`.
    Name,
    /// The display name without its quotes: textopsx's `@hf_value...name`.
    NameUnquoted,
    Tag,
    Params,
    Param(String),
    Expires,
    Q,
}

/// A part of a Via value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ViaPart {
    Whole,
    Transport,
    Host,
    Port,
    Branch,
    Received,
    Rport,
    Params,
    Param(String),
}

/// A compiled SIP select.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SipSelect {
    /// `@ruri...`
    Ruri(UriPart),
    /// `@from...`, `@to...`: a single name-addr header.
    Single(HeaderName, NaPart),
    /// `@contact[n]...`, `@route[n]`, `@record_route[n]`, `@hf_value.X[n]...`: the n-th
    /// comma-separated element across every line of the header, read as a name-addr.
    Element(HeaderRef, Idx, NaPart),
    /// `@msg.header["X"]`, `$hdr(X)`: the first line's whole value.
    Header(HeaderRef),
    /// `@hf_value["X"]`: every comma-separated value across every line, trimmed and joined
    /// with `,` (textopsx).
    HeaderAll(HeaderRef),
    /// `@contact...` without an index: SER's contact list, in which the first Contact line's
    /// contacts come last first, so `@contact.uri` is the last contact of the first line;
    /// `@contact` alone is that whole line.
    SerContact(NaPart),
    /// `@via[n]...`
    Via(Idx, ViaPart),
    CSeqWhole,
    CSeqNum,
    CSeqMethod,
    CallId,
    /// The request method (the CSeq method for a response).
    Method,
    Status,
    Reason,
    MsgWhole,
    MsgBody,
    MsgLen,
    MsgFirstLine,
    /// 1 for a request, 2 for a reply (SER's and Kamailio's `first_line.type`).
    MsgType,
    SrcIp,
    SrcPort,
    DstIp,
    DstPort,
    /// `@rpc.method` / `@xmlrpc.method`: the method of a JSON-RPC or XML-RPC body.
    RpcMethod,
}

fn uri_part(rest: &[Seg<'_>], what: &str) -> Result<UriPart, SelectError> {
    let Some(s) = rest.first() else {
        return Ok(UriPart::Whole);
    };
    s.no_index()?;
    let part = if s.is(&["user", "username"]) {
        UriPart::SelUser
    } else if s.is(&["host", "hostname"]) {
        UriPart::Host
    } else if s.is(&["port"]) {
        UriPart::Port
    } else if s.is(&["hostport"]) {
        UriPart::HostPort
    } else if s.is(&["scheme", "type"]) {
        UriPart::Scheme
    } else if s.is(&["pwd", "password"]) {
        UriPart::Password
    } else if s.is(&["headers"]) {
        UriPart::Headers
    } else if s.is(&["transport"]) {
        UriPart::Transport
    } else if s.is(&["params"]) {
        return match rest.get(1) {
            None => Ok(UriPart::Params),
            Some(p) => {
                p.no_index()?;
                if let Some(x) = rest.get(2) {
                    return Err(SelectError::at(x.at, "nothing follows a URI parameter"));
                }
                Ok(UriPart::Param(p.name.to_ascii_lowercase()))
            }
        };
    } else {
        return Err(SelectError::at(
            s.at,
            format!(
                "unknown URI field `{}` of {what} (expected user, host, port, hostport, scheme, pwd, params, headers, transport)",
                s.name
            ),
        ));
    };
    nothing_after(rest, s)?;
    Ok(part)
}

fn na_part(rest: &[Seg<'_>], what: &str) -> Result<NaPart, SelectError> {
    na_part_of(rest, what, false)
}

/// `hf`: textopsx's `@hf_value` spelling, where `.param.NAME` / `.p.NAME` name a parameter
/// and the display name is unquoted.
fn na_part_of(rest: &[Seg<'_>], what: &str, hf: bool) -> Result<NaPart, SelectError> {
    let Some(s) = rest.first() else {
        return Ok(NaPart::Whole);
    };
    s.no_index()?;
    if s.is(&["uri"]) {
        return uri_part(&rest[1..], what).map(NaPart::Uri);
    }
    if hf && s.is(&["param", "p"]) {
        return match params_part(rest)? {
            Some(n) => Ok(NaPart::Param(n)),
            None => Err(SelectError::at(
                s.at,
                format!("`{}` needs a parameter name, e.g. .{}.tag", s.name, s.name),
            )),
        };
    }
    let part = if s.is(&["name", "display", "display_name"]) {
        if hf {
            NaPart::NameUnquoted
        } else {
            NaPart::Name
        }
    } else if s.is(&["tag"]) {
        NaPart::Tag
    } else if s.is(&["expires"]) {
        NaPart::Expires
    } else if s.is(&["q"]) {
        NaPart::Q
    } else if s.is(&["params"]) {
        return Ok(params_part(rest)?.map_or(NaPart::Params, NaPart::Param));
    } else {
        return Err(SelectError::at(
            s.at,
            format!(
                "unknown field `{}` of {what} (expected uri, name, tag, params{}, expires, q)",
                s.name,
                if hf { ", param" } else { "" }
            ),
        ));
    };
    nothing_after(rest, s)?;
    Ok(part)
}

fn via_part(rest: &[Seg<'_>]) -> Result<ViaPart, SelectError> {
    let Some(s) = rest.first() else {
        return Ok(ViaPart::Whole);
    };
    s.no_index()?;
    let part = if s.is(&["branch"]) {
        ViaPart::Branch
    } else if s.is(&["received"]) {
        ViaPart::Received
    } else if s.is(&["rport"]) {
        ViaPart::Rport
    } else if s.is(&["host"]) {
        ViaPart::Host
    } else if s.is(&["port"]) {
        ViaPart::Port
    } else if s.is(&["transport", "proto"]) {
        ViaPart::Transport
    } else if s.is(&["params"]) {
        return Ok(params_part(rest)?.map_or(ViaPart::Params, ViaPart::Param));
    } else {
        return Err(SelectError::at(
            s.at,
            format!(
                "unknown Via field `{}` (expected branch, received, rport, host, port, transport, params)",
                s.name
            ),
        ));
    };
    nothing_after(rest, s)?;
    Ok(part)
}

/// The element index of a list select: none means the first.
fn list_idx(seg: &Seg<'_>) -> Result<Idx, SelectError> {
    match seg.idx.as_slice() {
        [] => Ok(Idx::Nth(0)),
        [one] => Idx::from_raw(seg, one),
        _ => Err(SelectError::at(seg.at, "one index only")),
    }
}

fn leaf(rest: &[Seg<'_>], sel: SipSelect) -> Result<SipSelect, SelectError> {
    match rest.first() {
        None => Ok(sel),
        Some(x) => Err(SelectError::at(
            x.at,
            format!("unknown select field `{}`", x.name),
        )),
    }
}

fn sub<'s, 'p>(
    rest: &'s [Seg<'p>],
    names: &[(&[&str], SipSelect)],
    what: &str,
) -> Result<SipSelect, SelectError> {
    let Some(s) = rest.first() else {
        return Err(SelectError::at(0, format!("{what} needs a field")));
    };
    s.no_index()?;
    for (aliases, sel) in names {
        if s.is(aliases) {
            return leaf(&rest[1..], sel.clone());
        }
    }
    let expected: Vec<&str> = names.iter().map(|(a, _)| a[0]).collect();
    Err(SelectError::at(
        s.at,
        format!(
            "unknown field `{}` of {what} (expected {})",
            s.name,
            expected.join(", ")
        ),
    ))
}

/// Build a SIP select from its segments (the first is the root).
pub(super) fn build(segs: &[Seg<'_>]) -> Result<SipSelect, SelectError> {
    let first = &segs[0];
    let rest = &segs[1..];
    let single = |name: HeaderName, what: &str| -> Result<SipSelect, SelectError> {
        first.no_index()?;
        Ok(SipSelect::Single(name, na_part(rest, what)?))
    };
    if first.is(&["ruri", "request_uri"]) {
        first.no_index()?;
        return uri_part(rest, "@ruri").map(SipSelect::Ruri);
    }
    if first.is(&["from", "f"]) {
        return single(HeaderName::From, "@from");
    }
    if first.is(&["to", "t"]) {
        return single(HeaderName::To, "@to");
    }
    for (aliases, name) in [
        (&["contact", "m"][..], "Contact"),
        (&["route"][..], "Route"),
        (&["record_route"][..], "Record-Route"),
        (&["path"][..], "Path"),
    ] {
        if first.is(aliases) {
            let what = format!("@{}", first.name);
            if name == "Contact" && first.idx.is_empty() {
                return Ok(SipSelect::SerContact(na_part(rest, &what)?));
            }
            let idx = list_idx(first)?;
            return Ok(SipSelect::Element(
                HeaderRef::new(name),
                idx,
                na_part(rest, &what)?,
            ));
        }
    }
    if first.is(&["via", "v"]) {
        let idx = list_idx(first)?;
        return Ok(SipSelect::Via(idx, via_part(rest)?));
    }
    if first.is(&["hf_value", "header"]) {
        // @hf_value["X-Foo"][2]... or @hf_value.x_foo[2]...
        let (name, idx, rest, seg) = match first.idx.split_first() {
            Some((RawIdx::Str(n), more)) => ((*n).to_owned(), more, rest, first),
            Some((RawIdx::Int(_), _)) => {
                return Err(SelectError::at(
                    first.at,
                    "@hf_value takes a header name, e.g. @hf_value[\"X-Foo\"]",
                ))
            }
            None => {
                let Some(h) = rest.first() else {
                    return Err(SelectError::at(first.at, "@hf_value needs a header name"));
                };
                // SER spells dashes as underscores in select names: @hf_value.user_agent.
                (h.name.replace('_', "-"), h.idx.as_slice(), &rest[1..], h)
            }
        };
        if !valid_header_name(&name) {
            return Err(SelectError::at(seg.at, "not a header name"));
        }
        let h = HeaderRef::new(&name);
        return match idx {
            [] if rest.is_empty() => Ok(SipSelect::HeaderAll(h)),
            [] => Ok(SipSelect::Element(
                h,
                Idx::Nth(0),
                na_part_of(rest, "@hf_value", true)?,
            )),
            [one] => Ok(SipSelect::Element(
                h,
                Idx::from_raw(seg, one)?,
                na_part_of(rest, "@hf_value", true)?,
            )),
            _ => Err(SelectError::at(seg.at, "one index only")),
        };
    }
    first.no_index()?;
    if first.is(&["cseq"]) {
        if rest.is_empty() {
            return Ok(SipSelect::CSeqWhole);
        }
        return sub(
            rest,
            &[
                (&["num", "number"], SipSelect::CSeqNum),
                (&["method"], SipSelect::CSeqMethod),
            ],
            "@cseq",
        );
    }
    if first.is(&["call_id", "callid", "ci"]) {
        return leaf(rest, SipSelect::CallId);
    }
    if first.is(&["method"]) {
        return leaf(rest, SipSelect::Method);
    }
    if first.is(&["msg", "message"]) {
        if rest.is_empty() {
            return Ok(SipSelect::MsgWhole);
        }
        if rest[0].is(&["header"]) {
            // @msg.header["X-Foo"]: the first line of a header, as written.
            let h = &rest[0];
            let name = match h.idx.as_slice() {
                [RawIdx::Str(n)] if valid_header_name(n) => *n,
                _ => {
                    return Err(SelectError::at(
                        h.at,
                        "@msg.header takes a header name, e.g. @msg.header[\"X-Foo\"]",
                    ))
                }
            };
            return leaf(&rest[1..], SipSelect::Header(HeaderRef::new(name)));
        }
        return sub(
            rest,
            &[
                (&["body"], SipSelect::MsgBody),
                (&["len", "length"], SipSelect::MsgLen),
                (&["first_line", "request_line"], SipSelect::MsgFirstLine),
                (&["type"], SipSelect::MsgType),
                (&["method"], SipSelect::Method),
                (&["status", "code"], SipSelect::Status),
                (&["reason"], SipSelect::Reason),
            ],
            "@msg",
        );
    }
    if first.is(&["src"]) {
        return sub(
            rest,
            &[(&["ip"], SipSelect::SrcIp), (&["port"], SipSelect::SrcPort)],
            "@src",
        );
    }
    if first.is(&["dst"]) {
        return sub(
            rest,
            &[(&["ip"], SipSelect::DstIp), (&["port"], SipSelect::DstPort)],
            "@dst",
        );
    }
    if first.is(&["rpc", "xmlrpc"]) {
        return sub(rest, &[(&["method"], SipSelect::RpcMethod)], "@rpc");
    }
    Err(SelectError::at(
        first.at,
        format!("unknown select `@{}`", first.name),
    ))
}

/// A header name as a select may spell it (a token).
fn valid_header_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.!%*+`'~".contains(&b))
}

fn host_value<'a>(h: Host<'a>) -> Value<'a> {
    match h {
        Host::Name(n) => Value::str(n),
        other => Value::Str(Cow::Owned(other.to_string())),
    }
}

fn opt_port<'a>(p: Option<u16>) -> Value<'a> {
    match p {
        Some(p) => Value::Int(i64::from(p)),
        None => Value::EMPTY,
    }
}

fn param<'a>(p: Option<Option<&'a str>>) -> Value<'a> {
    Value::opt(p.flatten())
}

/// A telephone number without its visual separators (SER's normalize_tel_user).
fn tel_user(user: &str) -> Value<'_> {
    if user.contains(['-', '.', '(', ')']) {
        Value::Str(std::borrow::Cow::Owned(
            user.chars()
                .filter(|c| !matches!(c, '-' | '.' | '(' | ')'))
                .collect(),
        ))
    } else {
        Value::str(user)
    }
}

impl UriPart {
    /// Evaluate against a URI string (the Request-URI, or a URI read from a header).
    pub fn eval<'a>(&self, s: &'a str) -> Value<'a> {
        if *self == UriPart::Whole {
            return Value::str(s);
        }
        let Ok(uri) = Uri::parse(s) else {
            return Value::EMPTY;
        };
        match uri {
            // Kamailio's phone2tel (on by default): a `sip:` URI with `user=phone` is a
            // telephone number: its type is `tel`, its user ends at the first `;`, and the
            // parameters after that `;` are the URI's parameters for `.params` (a named one
            // is looked for in both lists).
            Uri::Sip(u)
                if u.params
                    .get("user")
                    .flatten()
                    .is_some_and(|v| v.eq_ignore_ascii_case("phone"))
                    && matches!(
                        self,
                        UriPart::Scheme
                            | UriPart::User
                            | UriPart::SelUser
                            | UriPart::Params
                            | UriPart::Param(_)
                    ) =>
            {
                let user = u.user.unwrap_or("");
                let (number, user_params) = user.split_once(';').unwrap_or((user, ""));
                match self {
                    UriPart::Scheme => Value::str(if u.secure { "tels" } else { "tel" }),
                    UriPart::User => Value::str(number),
                    UriPart::SelUser => tel_user(number),
                    UriPart::Params => Value::str(user_params),
                    UriPart::Param(n) => match u.params.get(n) {
                        Some(v) => Value::opt(v),
                        None => Value::opt(user_params.split(';').find_map(|p| {
                            let (k, v) = p.split_once('=').unwrap_or((p, ""));
                            k.trim().eq_ignore_ascii_case(n).then_some(v.trim())
                        })),
                    },
                    _ => Value::EMPTY,
                }
            }
            Uri::Sip(u) => match self {
                UriPart::Whole => Value::str(s),
                UriPart::Scheme => Value::str(if u.secure { "sips" } else { "sip" }),
                UriPart::User | UriPart::SelUser => Value::opt(u.user),
                UriPart::Password => Value::opt(u.password),
                UriPart::Host => host_value(u.host),
                UriPart::Port => opt_port(u.port),
                // Kamailio's parse_uri: 5061 for sips: and for transport=tls.
                UriPart::PortOrDefault => Value::Int(i64::from(
                    u.port.unwrap_or(
                        if u.secure
                            || u.params
                                .get("transport")
                                .flatten()
                                .is_some_and(|t| t.eq_ignore_ascii_case("tls"))
                        {
                            5061
                        } else {
                            5060
                        },
                    ),
                )),
                UriPart::HostPort => {
                    // The text between userinfo and the parameters, as written; without a
                    // port, the scheme's default (SER's select_uri_hostport: 5060, sips 5061).
                    let after = s.split_once(':').map(|x| x.1).unwrap_or("");
                    let after = after.rsplit_once('@').map(|x| x.1).unwrap_or(after);
                    let end = after.find([';', '?']).unwrap_or(after.len());
                    if u.port.is_some() {
                        Value::str(&after[..end])
                    } else {
                        let port = if u.secure { 5061 } else { 5060 };
                        Value::Str(std::borrow::Cow::Owned(format!("{}:{port}", &after[..end])))
                    }
                }
                // Without the leading `;`, as SER's parse_uri keeps them.
                UriPart::Params => Value::str(u.params.as_str().trim_start_matches(';')),
                UriPart::Param(n) => param(u.params.get(n)),
                UriPart::Headers => Value::opt(u.headers),
                UriPart::Transport => match u.params.get("transport").flatten() {
                    Some(t) if !t.is_empty() => {
                        Value::Str(std::borrow::Cow::Owned(t.to_ascii_lowercase()))
                    }
                    _ => Value::str(if u.secure { "tls" } else { "udp" }),
                },
            },
            Uri::Tel(t) => match self {
                UriPart::Scheme => Value::str("tel"),
                UriPart::User => Value::str(t.number),
                UriPart::SelUser => tel_user(t.number),
                UriPart::Params => Value::str(t.params.as_str().trim_start_matches(';')),
                UriPart::Param(n) => param(t.params.get(n)),
                _ => Value::EMPTY,
            },
            Uri::Other { scheme, .. } => match self {
                UriPart::Scheme => Value::str(scheme),
                _ => Value::EMPTY,
            },
        }
    }
}

impl NaPart {
    fn eval<'a>(&self, v: &'a str, at: Where) -> Value<'a> {
        if *self == NaPart::Whole {
            return Value::str(v);
        }
        let Ok(na) = NameAddr::parse(v, at) else {
            return Value::EMPTY;
        };
        match self {
            NaPart::Whole => Value::str(v),
            NaPart::Uri(p) => p.eval(na.uri_str),
            NaPart::Name => Value::opt(na.display.map(|d| quoted_display(v, d))),
            NaPart::NameUnquoted => Value::opt(na.display),
            NaPart::Tag => Value::opt(na.tag()),
            NaPart::Params => Value::str(na.params.as_str()),
            NaPart::Param(n) => param(na.params.get(n)),
            NaPart::Expires => na
                .expires()
                .map_or(Value::EMPTY, |e| Value::Int(i64::from(e))),
            NaPart::Q => match na.params.get("q").flatten() {
                Some(q) => Value::str(q),
                None => Value::EMPTY,
            },
        }
    }
}

impl ViaPart {
    fn eval<'a>(&self, v: &'a str) -> Value<'a> {
        if *self == ViaPart::Whole {
            return Value::str(v);
        }
        let Ok(via) = Via::parse(v) else {
            return Value::EMPTY;
        };
        match self {
            ViaPart::Whole => Value::str(v),
            ViaPart::Transport => Value::str(via.transport),
            ViaPart::Host => host_value(via.host),
            ViaPart::Port => opt_port(via.port),
            ViaPart::Branch => Value::opt(via.branch()),
            ViaPart::Received => Value::opt(via.received()),
            ViaPart::Rport => param(via.params.get("rport")),
            ViaPart::Params => Value::str(via.params.as_str()),
            ViaPart::Param(n) => param(via.params.get(n)),
        }
    }
}

/// The display name `d` (parsed from `v`) as written: with its quotes when it was quoted.
fn quoted_display<'a>(v: &'a str, d: &'a str) -> &'a str {
    let t = v.trim_start_matches([' ', '\t', '\r', '\n']);
    if t.starts_with('"') {
        // NameAddr::parse took `d` from between the quotes that start `t`.
        t.get(..d.len() + 2).unwrap_or(d)
    } else {
        d
    }
}

/// The n-th comma-separated element across every line of a header.
fn element<'a>(msg: &'a Message, h: &HeaderRef, idx: Idx) -> Option<&'a str> {
    let it = h.lines(msg).flat_map(CommaSplit::new).map_while(Result::ok);
    idx.pick(it)
}

/// Find `"method"` in a JSON-RPC body or `<methodName>` in an XML-RPC body. A scan, not a
/// parser: the script only needs the name, and the RPC layer validates the rest.
fn rpc_method(body: &[u8]) -> &str {
    let Ok(s) = std::str::from_utf8(body) else {
        return "";
    };
    if let Some(i) = s.find("<methodName>") {
        let rest = &s[i + "<methodName>".len()..];
        if let Some(e) = rest.find("</methodName>") {
            return rest[..e].trim();
        }
    }
    if let Some(i) = s.find("\"method\"") {
        let rest = s[i + "\"method\"".len()..].trim_start();
        if let Some(rest) = rest.strip_prefix(':') {
            if let Some(rest) = rest.trim_start().strip_prefix('"') {
                if let Some(e) = rest.find('"') {
                    return &rest[..e];
                }
            }
        }
    }
    ""
}

impl SipSelect {
    pub(super) fn eval<'a>(&self, env: &Env<'a>) -> Value<'a> {
        match self {
            SipSelect::SrcIp => return Value::from(env.rx.source.ip().to_string()),
            SipSelect::SrcPort => return Value::Int(i64::from(env.rx.source.port())),
            SipSelect::DstIp => return Value::from(env.rx.local.ip().to_string()),
            SipSelect::DstPort => return Value::Int(i64::from(env.rx.local.port())),
            _ => {}
        }
        let Some(msg) = env.msg else {
            return Value::EMPTY;
        };
        match self {
            SipSelect::Ruri(p) => match msg.request_uri_str() {
                Some(u) => p.eval(u),
                None => Value::EMPTY,
            },
            SipSelect::Single(name, part) => match msg.header(*name) {
                Some(v) => part.eval(v, Where::Header(name.as_str())),
                None => Value::EMPTY,
            },
            SipSelect::Element(h, idx, part) => match element(msg, h, *idx) {
                Some(v) => part.eval(v, Where::Header("header")),
                None => Value::EMPTY,
            },
            SipSelect::Header(h) => Value::opt(h.lines(msg).next()),
            SipSelect::HeaderAll(h) => {
                let mut it = h
                    .lines(msg)
                    .flat_map(CommaSplit::new)
                    .map_while(Result::ok)
                    .map(str::trim);
                let Some(first) = it.next() else {
                    return Value::EMPTY;
                };
                match it.next() {
                    None => Value::str(first),
                    Some(second) => {
                        let mut out = format!("{first},{second}");
                        for e in it {
                            out.push(',');
                            out.push_str(e);
                        }
                        Value::from(out)
                    }
                }
            }
            SipSelect::SerContact(part) => {
                let Some(line) = msg.header(HeaderName::Contact) else {
                    return Value::EMPTY;
                };
                if *part == NaPart::Whole {
                    return Value::str(line);
                }
                let last = CommaSplit::new(line).map_while(Result::ok).last();
                match last {
                    Some(v) => part.eval(v, Where::Header("Contact")),
                    None => Value::EMPTY,
                }
            }
            SipSelect::Via(idx, part) => {
                let it = msg
                    .header_values(HeaderName::Via)
                    .flat_map(CommaSplit::new)
                    .map_while(Result::ok);
                match idx.pick(it) {
                    Some(v) => part.eval(v),
                    None => Value::EMPTY,
                }
            }
            SipSelect::CSeqWhole => Value::opt(msg.header(HeaderName::CSeq)),
            SipSelect::CSeqNum => msg
                .cseq()
                .map_or(Value::EMPTY, |c| Value::Int(i64::from(c.seq))),
            SipSelect::CSeqMethod => msg.cseq().map_or(Value::EMPTY, |c| Value::str(c.method)),
            SipSelect::CallId => Value::opt(msg.header(HeaderName::CallId)),
            SipSelect::Method => match msg.method() {
                Some(m) => Value::str(m),
                None => msg.cseq().map_or(Value::EMPTY, |c| Value::str(c.method)),
            },
            SipSelect::Status => msg
                .status()
                .map_or(Value::EMPTY, |s| Value::Int(i64::from(s))),
            SipSelect::Reason => Value::opt(msg.reason()),
            SipSelect::MsgWhole => Value::Str(String::from_utf8_lossy(msg.as_bytes())),
            SipSelect::MsgBody => Value::Str(String::from_utf8_lossy(msg.body())),
            SipSelect::MsgLen => Value::Int(msg.as_bytes().len() as i64),
            SipSelect::MsgFirstLine => Value::str(msg.start_line()),
            SipSelect::MsgType => Value::Int(if msg.is_request() { 1 } else { 2 }),
            SipSelect::RpcMethod => Value::str(rpc_method(msg.body())),
            SipSelect::SrcIp | SipSelect::SrcPort | SipSelect::DstIp | SipSelect::DstPort => {
                Value::EMPTY
            }
        }
    }
}

/// `params` (`None`: the whole list) or `params.NAME` (lower-case), and nothing after.
fn params_part(rest: &[Seg<'_>]) -> Result<Option<String>, SelectError> {
    let Some(p) = rest.get(1) else {
        return Ok(None);
    };
    p.no_index()?;
    if let Some(x) = rest.get(2) {
        return Err(SelectError::at(x.at, "nothing follows a parameter"));
    }
    Ok(Some(p.name.to_ascii_lowercase()))
}

/// A leaf field `s` (the first of `rest`) must end the select.
fn nothing_after(rest: &[Seg<'_>], s: &Seg<'_>) -> Result<(), SelectError> {
    match rest.get(1) {
        Some(x) => Err(SelectError::at(
            x.at,
            format!("nothing follows `{}`", s.name),
        )),
        None => Ok(()),
    }
}

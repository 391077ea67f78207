//! Property tests of the SIP message core: generated valid messages parse, validate, read
//! back what was generated, serialise byte-for-byte, frame over a stream and survive proxy
//! edits; arbitrary and mutated input never panics any parser, accessor, editor or framer.
//! Must never be flaky: every case is reproducible from its seed and fast in debug builds.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::OnceLock;

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use proptest::sample::Index;
use siprox::sip::{
    parse_hostport, unescape, Editor, Frame, HeaderName, Limits, Message, NameAddr, StreamFramer,
    Uri,
};

// ---------------------------------------------------------------------------------------
// Generators of valid messages
// ---------------------------------------------------------------------------------------

/// What a generated message must read back as.
#[derive(Debug, Clone)]
struct Expected {
    /// `(method, request-uri)` for a request.
    request: Option<(String, String)>,
    status: Option<u16>,
    vias: Vec<ViaGen>,
    from_tag: Option<String>,
    to_tag: Option<String>,
    call_id: String,
    cseq: (u32, String),
    max_forwards: Option<u8>,
    /// Route URIs (without `<>`), top first.
    routes: Vec<String>,
    record_routes: usize,
    contacts: usize,
    body: Vec<u8>,
}

#[derive(Debug, Clone)]
struct Generated {
    bytes: Vec<u8>,
    exp: Expected,
}

#[derive(Debug, Clone)]
struct ViaGen {
    transport: String,
    /// As `Host`'s `Display` prints it.
    host: String,
    port: Option<u16>,
    branch: String,
    text: String,
}

/// LWS where the grammar allows optional white space (SWS), folds included.
fn sws() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec!["", "", "", " ", "\t", "  ", "\r\n ", " \r\n\t"])
}

/// LWS where the grammar requires some.
fn lws() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![" ", " ", " ", "\t", "   ", "\r\n ", " \r\n  "])
}

/// A header name from its spellings (long, compact), in random case.
fn header_name(spellings: &'static [&'static str]) -> impl Strategy<Value = String> {
    (prop::sample::select(spellings), any::<u64>()).prop_map(|(s, bits)| {
        s.chars()
            .enumerate()
            .map(|(i, c)| {
                if bits >> (i % 64) & 1 == 1 {
                    c.to_ascii_uppercase()
                } else {
                    c.to_ascii_lowercase()
                }
            })
            .collect()
    })
}

/// `Name SWS ":" SWS` as written before a value.
fn header_prefix(spellings: &'static [&'static str]) -> impl Strategy<Value = String> {
    (
        header_name(spellings),
        prop::sample::select(vec!["", "", " ", "\t", "  "]),
        sws(),
    )
        .prop_map(|(n, before, after)| format!("{n}{before}:{after}"))
}

const TOKEN: &str = "[A-Za-z0-9.!%*_+`'~-]";

fn token(max: usize) -> impl Strategy<Value = String> {
    proptest::string::string_regex(&format!("{TOKEN}{{1,{max}}}")).expect("valid regex")
}

fn method() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(vec![
            "INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "REGISTER", "PRACK", "SUBSCRIBE",
            "NOTIFY", "PUBLISH", "INFO", "REFER", "MESSAGE", "UPDATE",
        ])
        .prop_map(str::to_owned),
        1 => token(16),
    ]
}

/// A host as written, and as `Host`'s `Display` prints it.
fn host() -> impl Strategy<Value = (String, String)> {
    prop_oneof![
        "[a-z][a-z0-9-]{0,10}(\\.[a-z][a-z0-9]{0,6}){0,3}".prop_map(|h| (h.clone(), h)),
        any::<[u8; 4]>().prop_map(|a| {
            let s = Ipv4Addr::from(a).to_string();
            (s.clone(), s)
        }),
        any::<[u16; 8]>().prop_map(|a| {
            let s = format!("[{}]", Ipv6Addr::from(a));
            (s.clone(), s)
        }),
    ]
}

fn user() -> impl Strategy<Value = String> {
    "([a-zA-Z0-9._~!*'()&=+$,-]|%[0-9A-Fa-f]{2}){1,12}"
}

/// URI parameters, e.g. `;transport=tcp;lr`.
fn uri_params() -> impl Strategy<Value = String> {
    prop::collection::vec(
        (
            prop_oneof![
                Just("transport".to_owned()),
                Just("lr".to_owned()),
                Just("user".to_owned()),
                token(8)
            ],
            prop::option::of(token(10)),
        ),
        0..3,
    )
    .prop_map(|ps| {
        ps.into_iter()
            .map(|(n, v)| match v {
                Some(v) => format!(";{n}={v}"),
                None => format!(";{n}"),
            })
            .collect()
    })
}

fn sip_uri() -> impl Strategy<Value = String> {
    (
        prop::sample::select(vec!["sip", "sips", "SIP"]),
        prop::option::of(user()),
        host(),
        prop::option::of(any::<u16>()),
        uri_params(),
    )
        .prop_map(|(scheme, user, (host, _), port, params)| {
            let user = user.map(|u| format!("{u}@")).unwrap_or_default();
            let port = port.map(|p| format!(":{p}")).unwrap_or_default();
            format!("{scheme}:{user}{host}{port}{params}")
        })
}

fn tel_uri() -> impl Strategy<Value = String> {
    "tel:(\\+[0-9]{1,3}(-[0-9]{2,4}){1,3}|[0-9]{3,6};phone-context=example\\.com)"
}

fn any_uri() -> impl Strategy<Value = String> {
    prop_oneof![4 => sip_uri(), 1 => tel_uri()]
}

/// Header parameters with random LWS around `;` and `=`.
fn header_params(pairs: Vec<(String, Option<String>)>) -> impl Strategy<Value = String> {
    prop::collection::vec((sws(), sws(), sws(), sws()), pairs.len()).prop_map(move |ws| {
        pairs
            .iter()
            .zip(ws)
            .map(|((n, v), (a, b, c, d))| match v {
                Some(v) => format!("{a};{b}{n}{c}={d}{v}"),
                None => format!("{a};{b}{n}"),
            })
            .collect()
    })
}

fn via() -> impl Strategy<Value = ViaGen> {
    (
        prop_oneof![
            prop::sample::select(vec!["UDP", "TCP", "TLS", "SCTP", "WS", "WSS", "udp"])
                .prop_map(str::to_owned),
            token(6),
        ],
        host(),
        prop::option::of(any::<u16>()),
        "[A-Za-z0-9.-]{1,16}",
        prop::sample::select(vec!["/", "/", " / ", "\t/ "]),
        lws(),
        any::<bool>(),
    )
        .prop_flat_map(
            |(transport, (host_text, host), port, branch, slash, ws, rport)| {
                let branch = format!("z9hG4bK{branch}");
                let mut params = vec![("branch".to_owned(), Some(branch.clone()))];
                if rport {
                    params.insert(0, ("rport".to_owned(), None));
                }
                let port_text = match port {
                    Some(p) => format!(":{p}"),
                    None => String::new(),
                };
                header_params(params).prop_map(move |params| {
                    let text = format!(
                        "SIP{slash}2.0{slash}{transport}{ws}{host_text}{port_text}{params}"
                    );
                    ViaGen {
                        transport: transport.clone(),
                        host: host.clone(),
                        port,
                        branch: branch.clone(),
                        text,
                    }
                })
            },
        )
}

/// A name-addr (or a bare addr-spec when nothing forces the brackets), and its tag.
fn name_addr(with_tag: bool) -> impl Strategy<Value = (String, Option<String>)> {
    (
        prop_oneof![
            Just(None),
            "\"([a-zA-Z0-9 ,;:<>@]|\\\\\")*\"".prop_map(Some),
            "[A-Za-z]{1,8}( [A-Za-z]{1,8})?".prop_map(Some),
        ],
        any_uri(),
        prop::option::of(token(12)),
        any::<bool>(),
        sws(),
    )
        .prop_flat_map(move |(display, uri, tag, bare, ws)| {
            let tag = if with_tag { tag } else { None };
            let params = tag
                .iter()
                .map(|t| ("tag".to_owned(), Some(t.clone())))
                .collect();
            let addr = match display {
                Some(d) => format!("{d}{ws}<{uri}>"),
                // An addr-spec cannot carry URI parameters (they would read as header ones).
                None if bare && !uri.contains([';', ',']) => uri,
                None => format!("<{uri}>"),
            };
            header_params(params).prop_map(move |p| (format!("{addr}{p}"), tag.clone()))
        })
}

/// Join list values over one or more lines of the same header; `join[i]` says whether value
/// `i + 1` goes on the line of value `i`.
fn list_lines(prefix: &[String], values: &[String], join: &[bool], comma: &[&str]) -> Vec<String> {
    let mut lines: Vec<String> = Vec::new();
    for (i, v) in values.iter().enumerate() {
        if i > 0 && join[(i - 1) % join.len().max(1)] {
            if let Some(last) = lines.last_mut() {
                last.push_str(comma[i % comma.len().max(1)]);
                last.push_str(v);
                continue;
            }
        }
        lines.push(format!("{}{v}", prefix[i % prefix.len()]));
    }
    lines
}

fn commas() -> impl Strategy<Value = Vec<&'static str>> {
    prop::collection::vec(prop::sample::select(vec![",", ", ", " ,\r\n ", " , "]), 4)
}

/// The kind of a header line: lines of one kind keep their relative order when shuffled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Via,
    Route,
    RecordRoute,
    Other,
}

prop_compose! {
    // Parameters are grouped in tuples: proptest composes at most 12 strategies at a time.
    fn message(requests_only: bool)(
        (is_request, method, ruri, status, reason) in (
            if requests_only { Just(true).boxed() } else { prop::bool::weighted(0.7).boxed() },
            method(),
            any_uri(),
            100u16..=699,
            "[A-Za-z ]{0,20}",
        ),
        (vias, via_join, via_prefix, via_commas) in (
            prop::collection::vec(via(), 1..=5),
            prop::collection::vec(any::<bool>(), 4),
            prop::collection::vec(header_prefix(&["Via", "v"]), 5),
            commas(),
        ),
        (from, from_p, to, to_p) in (
            name_addr(true),
            header_prefix(&["From", "f"]),
            name_addr(true),
            header_prefix(&["To", "t"]),
        ),
        (call_id, call_id_p) in (
            proptest::string::string_regex(&format!("{TOKEN}{{1,20}}(@[a-z0-9.]{{1,10}})?"))
                .expect("valid regex"),
            header_prefix(&["Call-ID", "i"]),
        ),
        (cseq, cseq_method_other, cseq_zeros, cseq_ws, cseq_p) in (
            0u32..(1 << 31),
            method(),
            0usize..4,
            lws(),
            header_prefix(&["CSeq"]),
        ),
        (max_forwards, mf_zeros, mf_p) in (
            prop::option::of(any::<u8>()),
            0usize..4,
            header_prefix(&["Max-Forwards"]),
        ),
        (contact, contact_p) in (
            prop::option::of(name_addr(false)),
            header_prefix(&["Contact", "m"]),
        ),
        (routes, route_join, route_p, record_routes, rr_join, rr_p, list_commas) in (
            prop::collection::vec(sip_uri(), 0..3),
            prop::collection::vec(any::<bool>(), 2),
            prop::collection::vec(header_prefix(&["Route"]), 3),
            prop::collection::vec(sip_uri(), 0..3),
            prop::collection::vec(any::<bool>(), 2),
            prop::collection::vec(header_prefix(&["Record-Route"]), 3),
            commas(),
        ),
        unknown in prop::collection::vec(
            (
                header_name(&["X-Custom", "X-Foo-Bar", "NewFangledHeader", "Subject"]),
                "[!-~]([ -~]{0,18}[!-~])?",
            ),
            0..3,
        ),
        (body, cl_p) in (
            prop::option::of(prop::collection::vec(any::<u8>(), 1..200)),
            header_prefix(&["Content-Length", "l"]),
        ),
        order in Just((0..32usize).collect::<Vec<_>>()).prop_shuffle(),
    ) -> Generated {
        let cseq_method = if is_request { method.clone() } else { cseq_method_other };
        let mut lines: Vec<(Kind, String)> = Vec::new();
        let via_texts: Vec<String> = vias.iter().map(|v| v.text.clone()).collect();
        for l in list_lines(&via_prefix, &via_texts, &via_join, &via_commas) {
            lines.push((Kind::Via, l));
        }
        lines.push((Kind::Other, format!("{from_p}{}", from.0)));
        lines.push((Kind::Other, format!("{to_p}{}", to.0)));
        lines.push((Kind::Other, format!("{call_id_p}{call_id}")));
        lines.push((Kind::Other, format!("{cseq_p}{cseq:0cseq_zeros$}{cseq_ws}{cseq_method}")));
        if let Some(mf) = max_forwards {
            lines.push((Kind::Other, format!("{mf_p}{mf:0mf_zeros$}")));
        }
        if let Some((c, _)) = &contact {
            lines.push((Kind::Other, format!("{contact_p}{c}")));
        }
        let bracket = |u: &String| format!("<{u}>");
        let route_vals: Vec<String> = routes.iter().map(bracket).collect();
        for l in list_lines(&route_p, &route_vals, &route_join, &list_commas) {
            lines.push((Kind::Route, l));
        }
        let rr_vals: Vec<String> = record_routes.iter().map(bracket).collect();
        for l in list_lines(&rr_p, &rr_vals, &rr_join, &list_commas) {
            lines.push((Kind::RecordRoute, l));
        }
        for (n, v) in &unknown {
            lines.push((Kind::Other, format!("{n}: {v}")));
        }
        let body = body.unwrap_or_default();
        lines.push((Kind::Other, format!("{cl_p}{}", body.len())));

        // Shuffle the lines, then put the lines of each ordered kind back in their order.
        let mut shuffled: Vec<(Kind, String)> = order
            .iter()
            .filter(|&&i| i < lines.len())
            .map(|&i| lines[i].clone())
            .collect();
        for kind in [Kind::Via, Kind::Route, Kind::RecordRoute] {
            let mut in_order = lines.iter().filter(|(k, _)| *k == kind).map(|(_, l)| l.clone());
            for slot in shuffled.iter_mut().filter(|(k, _)| *k == kind) {
                slot.1 = in_order.next().unwrap_or_default();
            }
        }

        let mut text = if is_request {
            format!("{method} {ruri} SIP/2.0\r\n")
        } else {
            format!("SIP/2.0 {status} {reason}\r\n")
        };
        for (_, l) in &shuffled {
            text.push_str(l);
            text.push_str("\r\n");
        }
        text.push_str("\r\n");
        let mut bytes = text.into_bytes();
        bytes.extend_from_slice(&body);
        Generated {
            bytes,
            exp: Expected {
                request: is_request.then(|| (method.clone(), ruri.clone())),
                status: (!is_request).then_some(status),
                vias,
                from_tag: from.1,
                to_tag: to.1,
                call_id,
                cseq: (cseq, cseq_method),
                max_forwards,
                routes,
                record_routes: record_routes.len(),
                contacts: usize::from(contact.is_some()),
                body,
            },
        }
    }
}

fn parse(bytes: &[u8]) -> Message {
    let m = Message::parse(Bytes::copy_from_slice(bytes))
        .unwrap_or_else(|e| panic!("does not parse: {e}\n{}", String::from_utf8_lossy(bytes)));
    if let Err(e) = m.validate() {
        panic!("does not validate: {e}\n{}", String::from_utf8_lossy(bytes));
    }
    m
}

fn check_fields(m: &Message, exp: &Expected) {
    match &exp.request {
        Some((method, ruri)) => {
            assert_eq!(m.method(), Some(method.as_str()));
            assert_eq!(m.request_uri_str(), Some(ruri.as_str()));
            let u = m.request_uri().expect("request URI parses");
            assert!(ruri.to_ascii_lowercase().starts_with(u.scheme()));
        }
        None => {
            assert_eq!(m.status(), exp.status);
            assert!(m.method().is_none());
        }
    }
    let vias: Vec<_> = m.vias().map(|v| v.expect("via parses")).collect();
    assert_eq!(vias.len(), exp.vias.len());
    for (v, e) in vias.iter().zip(&exp.vias) {
        assert_eq!(v.transport, e.transport);
        assert_eq!(v.host.to_string(), e.host);
        assert_eq!(v.port, e.port);
        assert_eq!(v.branch(), Some(e.branch.as_str()));
        assert!(v.has_rfc3261_branch());
    }
    assert_eq!(m.from().expect("From").tag(), exp.from_tag.as_deref());
    assert_eq!(m.to().expect("To").tag(), exp.to_tag.as_deref());
    assert_eq!(m.call_id().expect("Call-ID"), exp.call_id);
    let cseq = m.cseq().expect("CSeq");
    assert_eq!((cseq.seq, cseq.method), (exp.cseq.0, exp.cseq.1.as_str()));
    assert_eq!(m.max_forwards().expect("Max-Forwards"), exp.max_forwards);
    let routes: Vec<String> = m
        .routes()
        .map(|r| r.expect("Route").uri_str.to_owned())
        .collect();
    assert_eq!(routes, exp.routes);
    assert_eq!(m.record_routes().count(), exp.record_routes);
    assert_eq!(
        m.contacts().expect("Contact").as_slice().len(),
        exp.contacts
    );
    assert_eq!(m.content_length(), Some(exp.body.len()));
    assert_eq!(m.body(), &exp.body[..]);
}

/// Feed `stream` to a framer in chunks of the given sizes (cycled); collect the frames.
fn frame_all(stream: &[u8], sizes: &[usize]) -> Result<Vec<Frame>, siprox::sip::ParseError> {
    let mut framer = StreamFramer::new(Limits::default());
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    let mut fed = 0;
    let mut i = 0;
    while fed < stream.len() {
        let size = sizes
            .get(i % sizes.len().max(1))
            .copied()
            .unwrap_or(stream.len())
            .max(1);
        i += 1;
        let end = (fed + size).min(stream.len());
        buf.extend_from_slice(&stream[fed..end]);
        fed = end;
        while let Some(f) = framer.next_frame(&mut buf)? {
            out.push(f);
        }
    }
    Ok(out)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn generated_messages_round_trip(g in message(false)) {
        let m = parse(&g.bytes);
        check_fields(&m, &g.exp);
        prop_assert_eq!(&Editor::new(&m).finish()[..], &g.bytes[..]);
        prop_assert_eq!(&m.as_bytes()[..], &g.bytes[..]);
    }

    #[test]
    fn generated_messages_frame_over_a_stream(
        msgs in prop::collection::vec(message(false), 1..4),
        keepalive in prop::collection::vec(prop::sample::select(vec!["", "", "\r\n", "\r\n\r\n"]), 4),
        sizes in prop::collection::vec(1usize..96, 1..8),
    ) {
        let mut stream = Vec::new();
        for (i, g) in msgs.iter().enumerate() {
            stream.extend_from_slice(keepalive[i].as_bytes());
            stream.extend_from_slice(&g.bytes);
        }
        let frames = frame_all(&stream, &sizes).expect("stream frames");
        let got: Vec<Bytes> = frames
            .into_iter()
            .filter_map(|f| match f {
                Frame::Message(m) => Some(m.as_bytes().clone()),
                Frame::Ping | Frame::Pong | Frame::Malformed { .. } => None,
            })
            .collect();
        prop_assert_eq!(got.len(), msgs.len());
        for (b, g) in got.iter().zip(&msgs) {
            prop_assert_eq!(&b[..], &g.bytes[..]);
        }
    }

    #[test]
    fn edited_messages_reparse_and_show_the_edits(g in message(true)) {
        let m = parse(&g.bytes);
        let mut e = Editor::new(&m);
        e.prepend_via("SIP/2.0/TLS proxy.example.com:5061;branch=z9hG4bKproxy1");
        let mf = e.decrement_max_forwards();
        e.prepend_record_route("<sip:proxy.example.com;lr>");
        let removed = e.remove_first_route().expect("routes are well-formed");
        prop_assert_eq!(removed, !g.exp.routes.is_empty());
        e.set_request_uri("sip:new-target@192.0.2.99:5062;transport=tcp");
        let f = parse(&e.finish());

        prop_assert_eq!(f.request_uri_str(), Some("sip:new-target@192.0.2.99:5062;transport=tcp"));
        let vias: Vec<_> = f.vias().map(|v| v.expect("via")).collect();
        prop_assert_eq!(vias.len(), g.exp.vias.len() + 1);
        prop_assert_eq!(vias[0].branch(), Some("z9hG4bKproxy1"));
        prop_assert_eq!(vias[0].port, Some(5061));
        prop_assert_eq!(vias[1].branch(), Some(g.exp.vias[0].branch.as_str()));
        match g.exp.max_forwards {
            Some(0) => {
                prop_assert!(mf.is_err());
                prop_assert_eq!(f.max_forwards().expect("mf"), Some(0));
            }
            Some(n) => {
                prop_assert_eq!(mf.expect("decremented"), n - 1);
                prop_assert_eq!(f.max_forwards().expect("mf"), Some(n - 1));
            }
            None => {
                prop_assert_eq!(mf.expect("added"), 70);
                prop_assert_eq!(f.max_forwards().expect("mf"), Some(70));
            }
        }
        let rr: Vec<String> = f.record_routes().map(|r| r.expect("rr").uri_str.to_owned()).collect();
        prop_assert_eq!(rr.len(), g.exp.record_routes + 1);
        prop_assert_eq!(rr[0].as_str(), "sip:proxy.example.com;lr");
        let routes: Vec<String> = f.routes().map(|r| r.expect("route").uri_str.to_owned()).collect();
        prop_assert_eq!(&routes[..], g.exp.routes.get(1..).unwrap_or(&[]));
        prop_assert_eq!(f.body(), &g.exp.body[..]);
        prop_assert_eq!(f.call_id().expect("call-id"), g.exp.call_id.as_str());
    }
}

// ---------------------------------------------------------------------------------------
// Robustness: nothing panics on arbitrary or mutated input
// ---------------------------------------------------------------------------------------

/// The RFC 4475 messages, LF turned into CRLF as EXPECTED.tsv says.
fn corpus() -> &'static [Vec<u8>] {
    static CORPUS: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    CORPUS.get_or_init(|| {
        let dir = format!("{}/tests/data/rfc4475", env!("CARGO_MANIFEST_DIR"));
        let mut names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{dir}: {e}"))
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "dat"))
            .collect();
        names.sort();
        let msgs: Vec<Vec<u8>> = names
            .iter()
            .map(|p| crlf(&std::fs::read(p).unwrap_or_else(|e| panic!("{p:?}: {e}"))))
            .collect();
        assert_eq!(msgs.len(), 49);
        msgs
    })
}

/// The rule from EXPECTED.tsv: every bare LF becomes CRLF; existing CRLF stays.
fn crlf(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len() + raw.len() / 20);
    for (i, &b) in raw.iter().enumerate() {
        if b == b'\n' && (i == 0 || raw[i - 1] != b'\r') {
            out.push(b'\r');
        }
        out.push(b);
    }
    out
}

#[derive(Debug, Clone)]
enum Mutation {
    Flip(Index, u8),
    Insert(Index, u8),
    Delete(Index, usize),
    Truncate(Index),
    DuplicateLine(Index),
}

/// Bytes that matter to the SIP grammar, to insert more often than random ones.
fn interesting_byte() -> impl Strategy<Value = u8> {
    prop_oneof![
        3 => prop::sample::select(b"\r\n \t:;,=\"<>@[]%?/\\\x00\xff\xc3".to_vec()),
        1 => any::<u8>(),
    ]
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<Index>(), 1u8..=255).prop_map(|(i, x)| Mutation::Flip(i, x)),
        (any::<Index>(), interesting_byte()).prop_map(|(i, b)| Mutation::Insert(i, b)),
        (any::<Index>(), 1usize..16).prop_map(|(i, n)| Mutation::Delete(i, n)),
        any::<Index>().prop_map(Mutation::Truncate),
        any::<Index>().prop_map(Mutation::DuplicateLine),
    ]
}

fn mutate(mut b: Vec<u8>, muts: &[Mutation]) -> Vec<u8> {
    for m in muts {
        if b.is_empty() {
            break;
        }
        match m {
            Mutation::Flip(i, x) => {
                let i = i.index(b.len());
                b[i] ^= x;
            }
            Mutation::Insert(i, x) => {
                let i = i.index(b.len() + 1);
                b.insert(i, *x);
            }
            Mutation::Delete(i, n) => {
                let i = i.index(b.len());
                let end = (i + n).min(b.len());
                b.drain(i..end);
            }
            Mutation::Truncate(i) => b.truncate(i.index(b.len())),
            Mutation::DuplicateLine(i) => {
                let starts: Vec<usize> = std::iter::once(0)
                    .chain(
                        b.iter()
                            .enumerate()
                            .filter(|(_, &c)| c == b'\n')
                            .map(|(j, _)| j + 1),
                    )
                    .filter(|&j| j < b.len())
                    .collect();
                let s = starts[i.index(starts.len())];
                let e = b[s..]
                    .iter()
                    .position(|&c| c == b'\n')
                    .map_or(b.len(), |p| s + p + 1);
                let line = b[s..e].to_vec();
                b.splice(e..e, line);
            }
        }
    }
    b
}

fn touch_uri(u: &Uri<'_>) {
    let _ = u.scheme();
    match u {
        Uri::Sip(s) => {
            let _ = (
                s.transport(),
                s.is_loose_router(),
                s.host.to_string(),
                s.host.ip(),
            );
            if let Some(user) = s.user {
                let _ = unescape(user);
            }
            let _ = s.params.iter().count();
            let _ = s.params.validate();
        }
        Uri::Tel(t) => {
            let _ = t.params.iter().count();
        }
        Uri::Other { .. } => {}
    }
}

fn touch_name_addr(n: &NameAddr<'_>) {
    let _ = (
        n.display,
        n.tag(),
        n.expires(),
        n.q(),
        n.params.iter().count(),
    );
    let _ = n.validate();
    if let Ok(u) = n.uri() {
        touch_uri(&u);
    }
}

/// Every accessor, every edit, and a re-parse of the edited message.
fn exercise(m: &Message) {
    let _ = m.validate();
    let _ = (
        m.start_line(),
        m.method(),
        m.method_kind(),
        m.status(),
        m.reason(),
    );
    if let Ok(u) = m.request_uri() {
        touch_uri(&u);
    }
    for f in m.fields() {
        let _ = f.unfolded();
        let _ = m.header_values_by_name(f.name_str).count();
    }
    for v in m.vias().flatten() {
        let _ = (
            v.branch(),
            v.received(),
            v.rport(),
            v.host.to_string(),
            v.params.iter().count(),
        );
    }
    let _ = m.top_via();
    for n in [m.from(), m.to()].into_iter().flatten() {
        touch_name_addr(&n);
    }
    let _ = (
        m.call_id(),
        m.cseq(),
        m.max_forwards(),
        m.expires(),
        m.content_type(),
    );
    if let Ok(c) = m.contacts() {
        c.as_slice().iter().for_each(touch_name_addr);
    }
    m.routes().flatten().for_each(|n| touch_name_addr(&n));
    m.record_routes()
        .flatten()
        .for_each(|n| touch_name_addr(&n));
    m.paths().flatten().for_each(|n| touch_name_addr(&n));
    let _ = (
        m.require().count(),
        m.proxy_require().count(),
        m.supported().count(),
    );
    let _ = m.list_values(HeaderName::Allow).count();
    let _ = format!("{m:?}");

    assert_eq!(Editor::new(m).finish(), m.as_bytes());
    let mut e = Editor::new(m);
    e.prepend_via("SIP/2.0/UDP p.example.com;branch=z9hG4bKp");
    let _ = e.decrement_max_forwards();
    e.prepend_record_route("<sip:p.example.com;lr>");
    let _ = e.remove_first_route();
    let _ = e.remove_first_via();
    e.set_request_uri("sip:x@192.0.2.1");
    e.ensure_content_length();
    let _ = e.remove_headers_named("Via");
    let _ = e.remove_headers(HeaderName::Route);
    e.append_header("X-Test", "1");
    if let Ok(f) = Message::parse(e.finish()) {
        let _ = f.validate();
        let _ = f.vias().count();
    }
}

fn datagram(bytes: &[u8]) {
    if let Ok(m) = Message::parse_datagram(Bytes::copy_from_slice(bytes), &Limits::default()) {
        exercise(&m);
    }
}

fn stream(bytes: &[u8], sizes: &[usize]) {
    let mut framer = StreamFramer::new(Limits::default());
    let mut buf = BytesMut::new();
    let mut fed = 0;
    let mut i = 0;
    while fed < bytes.len() {
        let size = sizes
            .get(i % sizes.len().max(1))
            .copied()
            .unwrap_or(bytes.len())
            .max(1);
        i += 1;
        let end = (fed + size).min(bytes.len());
        buf.extend_from_slice(&bytes[fed..end]);
        fed = end;
        loop {
            match framer.next_frame(&mut buf) {
                Ok(Some(Frame::Message(m))) => exercise(&m),
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
}

/// [`frame_all`]'s frames (bytes, validation verdict, error of a malformed one) or its error,
/// as text.
fn rendered_frames(stream: &[u8], sizes: &[usize]) -> String {
    match frame_all(stream, sizes) {
        Ok(frames) => frames
            .iter()
            .map(|f| match f {
                Frame::Message(m) => format!("{:?} {:?}\n", m.as_bytes(), m.validate()),
                Frame::Malformed { bytes, error } => format!("malformed {bytes:?} {error:?}\n"),
                other => format!("{other:?}\n"),
            })
            .collect(),
        Err(e) => format!("error {e:?}"),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_bytes_never_panic(
        bytes in prop::collection::vec(any::<u8>(), 0..1024),
        sizes in prop::collection::vec(1usize..64, 1..4),
    ) {
        datagram(&bytes);
        stream(&bytes, &sizes);
        if let Ok(s) = std::str::from_utf8(&bytes) {
            if let Ok(u) = Uri::parse(s) {
                touch_uri(&u);
            }
        }
    }

    #[test]
    fn mutated_rfc4475_messages_never_panic(
        which in any::<Index>(),
        muts in prop::collection::vec(mutation(), 1..8),
        sizes in prop::collection::vec(1usize..128, 1..4),
    ) {
        let corpus = corpus();
        let original = &corpus[which.index(corpus.len())];
        let bytes = mutate(original.clone(), &muts);
        datagram(&bytes);
        // A stream of the message twice, so that a second message follows a broken first.
        let mut twice = bytes.clone();
        twice.extend_from_slice(&bytes);
        stream(&twice, &sizes);
    }

    /// A head all in one read is indexed without first searching for its end; a head split
    /// across reads is searched for first. Frames and verdicts must not depend on which.
    #[test]
    fn mutated_rfc4475_messages_frame_alike_in_one_read_and_split(
        which in any::<Index>(),
        muts in prop::collection::vec(mutation(), 0..6),
        sizes in prop::collection::vec(1usize..128, 1..4),
    ) {
        let corpus = corpus();
        let bytes = mutate(corpus[which.index(corpus.len())].clone(), &muts);
        let mut twice = bytes.clone();
        twice.extend_from_slice(&bytes);
        prop_assert_eq!(rendered_frames(&twice, &[twice.len()]), rendered_frames(&twice, &sizes));
    }

    #[test]
    fn uri_parsing_never_panics(
        s in prop_oneof![
            any::<String>(),
            "(sips?|tel|SIP|x-y):[ -~]{0,40}",
            any_uri().prop_flat_map(|u| {
                let len = u.len();
                (Just(u), prop::collection::vec((0..len.max(1), interesting_byte()), 1..4))
            })
            .prop_map(|(u, edits)| {
                let mut b = u.into_bytes();
                for (i, x) in edits {
                    let i = i.min(b.len());
                    b.insert(i, x);
                }
                String::from_utf8_lossy(&b).into_owned()
            }),
        ],
    ) {
        if let Ok(u) = Uri::parse(&s) {
            touch_uri(&u);
        }
        let _ = parse_hostport(&s);
    }
}

/// The generated URIs are valid on their own (a sanity check of the generator).
#[test]
fn generator_sanity() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    for _ in 0..64 {
        let u = any_uri().new_tree(&mut runner).expect("tree").current();
        assert!(Uri::parse(&u).is_ok(), "{u}");
    }
}

//! The differential test against Debian's Kamailio 5.6 (issue 16): one route block runs in
//! Kamailio and in siprox; for each probe (a select, a pseudo-variable, a transformation,
//! a function's return code or a condition) both answer with its value in a reply header
//! `X-E<n>` (and a pseudo-variable also inside the string, `X-N<n>`, where Kamailio shows
//! its null), for an INVITE, an in-dialog OPTIONS, a MESSAGE to a `user=phone` URI and a
//! REGISTER, each over TLS 1.3 and TLS 1.2 with a rich client certificate, over TLS without
//! one and over UDP. Every value must match, except the intended differences below, which
//! docs/script.md's "Intended differences from Kamailio 5.6" table lists exactly
//! (expressions and reason, so docs and test cannot drift); an intended difference that no
//! longer differs fails too. The "Coming from Kamailio or SER" rows that say "same" must
//! name compared expressions. Kamailio must be installed (tests/run.sh installs it): the
//! test fails, saying so, without it.
//!
//! Both servers get the same certificates (made here: a CA, a server certificate, a client
//! certificate with every subject field, every kind of SAN, fixed dates and serial) and
//! listen on 127.0.0.1. Values that name a server's own port or the client's source port
//! are compared with those ports replaced by `{LPORT}` / `{SPORT}`.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::time::Duration;

use common::kamailio::{self, Kamailio};
use common::*;
use openssl::asn1::{Asn1Integer, Asn1Time};
use openssl::bn::BigNum;
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::ssl::{SslConnector, SslFiletype, SslMethod, SslVersion};
use openssl::x509::extension::{
    BasicConstraints, ExtendedKeyUsage, KeyUsage, SubjectAlternativeName,
};
use openssl::x509::{X509Builder, X509Name, X509NameBuilder, X509};
use siprox::config::{Config, Listener, Proto, RuntimeConfig, TlsConfig, VerifyClient};
use tokio::net::{TcpStream, UdpSocket};
use tokio_openssl::SslStream;

/// Where siprox's value may differ from Kamailio 5.6.3's, and why: the probes (exactly as
/// in [`probes`]), the only method whose message shows the difference (`None`: any), and the reason.
/// docs/script.md's "Intended differences from Kamailio 5.6" table has one row per entry,
/// with these probes (the code spans of its first column) and this reason (its last column),
/// together with [`KAMAILIO_LOAD_ERRORS`].
type Intended = (&'static [&'static str], Option<&'static str>, &'static str);

const INTENDED: &[Intended] = &[
    (
        &["$(fu{uri.port})", "$(ru{uri.port})", "$(tu{uri.port})"],
        None,
        "a value has one type: the URI has no port, and `\"\"` is what a string shows",
    ),
    (
        &["$tls_peer_subject", "$tls_peer_issuer", "$tls_my_subject", "$tls_my_issuer"],
        None,
        "the whole DN is what the name says; Kamailio's value cannot be used",
    ),
    (
        &["@tls.my.expired", "@tls.my.self_signed"],
        None,
        "the certificate's own data answers the question, as for the peer",
    ),
    (
        &["append_to_reply(\"X-Raw: $tls_description\\r\\n\")"],
        None,
        "a CR or LF inside a value ends the header line (or the header section) early: header injection from a value that came from the message, or a broken reply from `$tls_description`'s trailing newline",
    ),
    (
        &["@contact[2].uri", "@record_route[1].uri.host"],
        None,
        "the SER documentation's own example; an index that silently reads nothing hides mistakes",
    ),
    (
        &["@hf_value[\"X-P\"].param.a"],
        None,
        "the parameter is what the script asks for",
    ),
    (
        &["@ruri.scheme", "@ruri.headers", "@callid", "@msg.method"],
        None,
        "siprox names (the first, third and fourth are aliases of `@ruri.type`, `@call_id` and `@method`); Kamailio accepts these names and ignores the last part or answers `\"\"`",
    ),
    (
        &["@from.params", "@to.params", "@contact.params", "@via[1].params"],
        None,
        "the header's parameters are what the name says",
    ),
    (
        &["@route", "@route.uri", "@path", "@path.uri"],
        None,
        "the first entry is what the name says, as `@record_route` reads the first Record-Route in both",
    ),
    (
        &["\"u=$rU\""],
        None,
        "one rule for every string literal: a `$` in one is a pseudo-variable, in an assignment as in a function's argument (`$$` is a `$`)",
    ),
];

/// Probes Kamailio 5.6.3 refuses at load and siprox accepts, with the reason (checked with
/// `kamailio -c` one by one; docs/script.md lists them with [`INTENDED`]).
const KAMAILIO_LOAD_ERRORS: &[(&[&str], &str)] = &[(
    &["@hf_value[\"X-Q\"][2]", "@hf_value.contact[-1].uri"],
    "the n-th value and counting from the end work the same for every list select",
)];

/// A probe: an expression whose value goes into the header, or `if:COND` (1 when the
/// condition holds, -1 otherwise), or `do:STATEMENTS` that set `$var(x)` themselves.
fn probes() -> Vec<String> {
    let mut p: Vec<String> = Vec::new();
    let mut add = |s: &str| p.push(s.to_owned());
    // TLS selects: the connection.
    for s in [
        "@tls.version",
        "@tls.cipher",
        "@tls.cipher.bits",
        "@tls.server_name",
        "@tls.serverName",
        "@tls.peer",
        "@tls.me",
        "@tls.my",
        "@tls.myself",
    ] {
        add(s);
    }
    // OpenSSL's description ends in a newline: compared trimmed and by length.
    for s in ["@tls", "@tls.desc", "@tls.description"] {
        add(&format!("do:$var(d) = {s}; $var(x) = $(var(d){{s.trim}});"));
        add(&format!("do:$var(d) = {s}; $var(x) = $(var(d){{s.len}});"));
    }
    // TLS selects: both certificates.
    for who in ["peer", "my"] {
        for leaf in [
            "subject",
            "subj",
            "issuer",
            "subject.cn",
            "subject.commonName",
            "subject.o",
            "subject.organizationName",
            "subject.ou",
            "subject.unit",
            "subject.c",
            "subject.country",
            "subject.st",
            "subject.state",
            "subject.l",
            "subject.locality",
            "subject.uid",
            "issuer.cn",
            "issuer.o",
            "issuer.ou",
            "issuer.c",
            "issuer.st",
            "issuer.l",
            "version",
            "sn",
            "serialNumber",
            "not_before",
            "notBefore",
            "not_after",
            "notAfter",
            "expired",
            "self_signed",
            "email",
            "emailAddress",
            "host",
            "hostname",
            "dns",
            "uri",
            "url",
            "ip",
        ] {
            add(&format!("@tls.{who}.{leaf}"));
        }
    }
    for s in [
        "@tls.peer.verified",
        "@tls.peer.revoked",
        "@tls.my.verified",
        "@tls.my.revoked",
        "append_to_reply(\"X-Raw: $tls_description\\r\\n\")",
    ] {
        add(s);
    }
    // TLS pseudo-variables.
    for s in [
        "$tls_version",
        "$(tls_description{s.trim})",
        "$(tls_description{s.len})",
        "$tls_cipher_info",
        "$tls_cipher_bits",
        "$tls_peer_verified",
        "$tls_peer_revoked",
        "$tls_peer_expired",
        "$tls_peer_selfsigned",
        "$tls_peer_notBefore",
        "$tls_peer_notAfter",
        "$tls_peer_server_name",
    ] {
        add(s);
    }
    for who in ["peer", "my"] {
        for leaf in [
            "version",
            "serial",
            "subject",
            "issuer",
            "subject_cn",
            "subject_locality",
            "subject_country",
            "subject_state",
            "subject_organization",
            "subject_unit",
            "subject_uid",
            "issuer_cn",
            "issuer_locality",
            "issuer_country",
            "issuer_state",
            "issuer_organization",
            "issuer_unit",
            "san_email",
            "san_hostname",
            "san_uri",
            "san_ip",
        ] {
            add(&format!("$tls_{who}_{leaf}"));
        }
    }
    add("is_peer_verified()");
    // SIP selects.
    for s in [
        "@ruri",
        "@ruri.user",
        "@ruri.host",
        "@ruri.port",
        "@ruri.hostport",
        "@ruri.scheme",
        "@ruri.type",
        "@ruri.params",
        "@ruri.params.user",
        "@ruri.params.xp",
        "@ruri.pwd",
        "@ruri.headers",
        "@ruri.transport",
        "@from",
        "@from.uri",
        "@from.uri.user",
        "@from.uri.host",
        "@from.uri.params",
        "@from.uri.params.transport",
        "@from.tag",
        "@from.name",
        "@from.params",
        "@from.params.xf",
        "@to",
        "@to.uri",
        "@to.uri.user",
        "@to.tag",
        "@to.name",
        "@to.params",
        "@to.params.tag",
        "@contact",
        "@contact.uri",
        "@contact.uri.host",
        "@contact.uri.params.transport",
        "@contact.name",
        "@contact.params.q",
        "@contact.expires",
        "@contact.q",
        "@contact.params",
        "@hf_value.contact[1].uri.params.transport",
        "@contact[2].uri",
        "@hf_value.contact[1].uri",
        "@hf_value.contact[2].name",
        "@hf_value.contact[3].uri",
        "@hf_value.contact[-1]",
        "@route",
        "@route.uri",
        "@record_route",
        "@record_route.uri",
        "@record_route[1].uri.host",
        "@path",
        "@path.uri",
        "@via",
        "@via[1]",
        "@via[2]",
        "@via[1].branch",
        "@via[1].rport",
        "@via[1].host",
        "@via[1].port",
        "@via[1].transport",
        "@via[1].params.xv",
        "@via[2].received",
        "@via[2].host",
        "@via[1].params",
        "@via[2].params.branch",
        "@hf_value[\"X-Foo\"]",
        "@hf_value.x_foo",
        "@hf_value[\"X-Q\"]",
        "@hf_value.x_q[1]",
        "@hf_value.x_p[1].param.a",
        "@hf_value.x_p[1].p.b",
        "@hf_value[\"X-P\"].param.a",
        "@msg.header[\"X-Foo\"]",
        "@msg.header[\"x-q\"]",
        "@cseq",
        "@cseq.num",
        "@cseq.method",
        "@call_id",
        "@callid",
        "@method",
        "@msg.method",
        "@msg.len",
        "@msg.first_line",
        "@msg.type",
        "@msg.status",
        "@msg.reason",
        "@src.ip",
        "@src.port",
        "@dst.ip",
        "@dst.port",
        "do:$var(d) = @msg; $var(x) = $(var(d){s.len});",
        "do:$var(d) = @msg.body; $var(x) = $(var(d){s.len});",
    ] {
        add(s);
    }
    // SIP pseudo-variables.
    for s in [
        "$ru",
        "$rU",
        "$rd",
        "$rp",
        "$rz",
        "$fu",
        "$fU",
        "$fd",
        "$ft",
        "$fn",
        "$tu",
        "$tU",
        "$td",
        "$tt",
        "$tn",
        "$ci",
        "$cs",
        "$rm",
        "$si",
        "$sp",
        "$Ri",
        "$Rp",
        "$pr",
        "$proto",
        "$hdr(X-Foo)",
        "$hdr(x-q)",
        "$hdr(v)",
        "$hdr(i)",
        "$rs",
        "$rr",
        "$ua",
        "$ct",
        "$(mb{s.len})",
        "$ml",
        "$(rb{s.len})",
        "$du",
        "$bf",
    ] {
        add(s);
    }
    // Transformations.
    for s in [
        "$(fu{uri.user})",
        "$(fu{uri.host})",
        "$(fu{uri.port})",
        "$(ru{uri.port})",
        "$(fu{uri.param,transport})",
        "$(ru{uri.param,user})",
        "$(ru{uri.param,xp})",
        "$(ru{uri.param,none})",
        "$(ru{uri.user})",
        "$(ru{uri.param,ext})",
        "@ruri.params.ext",
        "$(fn{s.len})",
        "$(fU{s.toupper})",
        "$(ci{s.toupper})",
        "$(hdr(X-Foo){s.toupper}{s.tolower})",
        "$(ci{s.substr,0,4})",
        "$(ci{s.substr,-3,0})",
        "$(ci{s.substr,5,100})",
        "$(ci{s.substr,100,2})",
        "$(hdr(X-Q){s.select,1,,})",
        "$(hdr(X-P){s.select,0,;})",
        "$(hdr(X-P){s.select,-1,;})",
        "$(hdr(X-P){s.select,7,;})",
        "$(ci{s.strip,3})",
        "$(ci{s.striptail,3})",
        "$(ci{s.strip,100})",
        "$(hdr(X-P){param.value,a})",
        "$(hdr(X-P){param.value,b})",
        "$(hdr(X-Q){param.value,a})",
        "$(hdr(X-L){param.value,a})",
        "$(hdr(X-L){param.value,b})",
        "$(hdr(X-L){param.value,c})",
        "$(hdr(X-L){param.value,d})",
        "$(hdr(From){nameaddr.uri})",
        "$(hdr(From){nameaddr.name})",
        "$(hdr(From){nameaddr.uri}{uri.user})",
        "$(ct{nameaddr.uri})",
        "$(hdr(To){nameaddr.name})",
        "$(ru{s.len})",
        "$(fu{uri.user}{s.toupper}{s.len})",
        "$(cs{s.len})",
        "$(hdr(Max-Forwards){s.int})",
        "$(hdr(X-Pad){s.trim})",
        "$(tls_peer_subject_cn{s.tolower})",
        "$(tls_peer_san_uri{uri.user})",
    ] {
        add(s);
    }
    // $sht: a table `t` in both (htable's modparam; siprox's [htables.t]): written and read
    // back, an absent key (null), and counters from nothing: `null + 1` is the string "1"
    // in Kamailio 5.6 (then "11"), `{s.int}` counts.
    for s in [
        "do:$sht(t=>$ci) = $fU; $var(x) = $sht(t=>$ci);",
        // From an absent key each time (Kamailio's readiness polls run the route too).
        "do:$sht(t=>n$ci) = $null; $sht(t=>n$ci) = $sht(t=>n$ci) + 1; $sht(t=>n$ci) = $sht(t=>n$ci) + 1; $var(x) = $sht(t=>n$ci);",
        "do:$sht(t=>i$ci) = $null; $sht(t=>i$ci) = $(sht(t=>i$ci){s.int}) + 1; $sht(t=>i$ci) = $(sht(t=>i$ci){s.int}) + 1; $var(x) = $sht(t=>i$ci);",
        "do:$sht(t=>gone) = 5; $sht(t=>gone) = $null; if ($sht(t=>gone) == $null) { $var(x) = 1; } else { $var(x) = -1; }",
        "do:$sht(t=>kept) = 5; if ($sht(t=>kept) != $null) { $var(x) = 1; } else { $var(x) = -1; }",
        "$sht(t=>absent)",
        "$avp(x)",
        "do:$avp(x) = $fU; $avp(s:y) = 7; $var(x) = $avp(x) + $avp(y);",
        "do:$sht(t=>k) = $rm; $var(x) = $sht(t=>k);",
    ] {
        add(s);
    }
    // Null: a pseudo-variable without a value, compared, assigned, concatenated, printed
    // and transformed (X-None is absent in every message; $tt is null outside the
    // in-dialog OPTIONS, $rU for the REGISTER).
    for s in [
        "$null",
        "\"u=$rU\"",
        "$hdr(X-None)",
        "$(hdr(X-None){s.len})",
        "$(hdr(X-None){s.tolower})",
        "$(hdr(X-None){s.int})",
        "$(ru{uri.port}{s.len})",
        "$(rU{s.substr,40,1})",
        "$du",
        "if:$null == $null",
        "if:$null == \"\"",
        "if:$null != \"\"",
        "if:$null == 0",
        "if:$null",
        "if:!$null",
        "if:$hdr(X-None) == $null",
        "if:$hdr(X-None) != $null",
        "if:$hdr(X-None) == \"\"",
        "if:$hdr(X-None) != \"\"",
        "if:$hdr(X-None) == 0",
        "if:$hdr(X-Foo) == $null",
        "$hdr(X-Empty)",
        "$(hdr(X-Empty){s.len})",
        "if:$hdr(X-Empty) == $null",
        "if:$hdr(X-Empty) == \"\"",
        "if:$hdr(X-Foo) != $null",
        "if:$rU == $null",
        "if:$tt == $null",
        "if:$tt != $null",
        "if:$du == $null",
        "if:$(hdr(X-None){s.len}) == $null",
        "if:$(hdr(X-None){s.len}) == 0",
        "if:$(ru{uri.port}) == $null",
        "if:$(ru{uri.port}) == \"\"",
        "if:$avp(never) == $null",
        "if:$sht(t=>never) == $null",
        "if:$var(never) == $null",
        "if:$var(never) == 0",
        "do:$var(e) = \"\"; if ($var(e) == $null) { $var(x) = 1; } else { $var(x) = -1; }",
        "do:$var(e) = \"\"; if ($var(e) != $null) { $var(x) = 1; } else { $var(x) = -1; }",
        "do:$var(e) = $null; if ($var(e) == $null) { $var(x) = 1; } else { $var(x) = -1; }",
        "do:$var(e) = $null; if ($var(e) == 0) { $var(x) = 1; } else { $var(x) = -1; }",
        "do:$var(x) = $null;",
        "do:$var(x) = $hdr(X-None) + 1;",
        "do:$var(x) = 1 + $hdr(X-None);",
        "do:$var(x) = \"a\" + $hdr(X-None) + \"b\";",
        "do:$var(x) = $hdr(X-None) + \"b\";",
        "do:$du = \"sip:d.example\"; $du = $null; if ($du == $null) { $var(x) = 1; } else { $var(x) = -1; }",
        "do:$du = \"sip:d.example\"; $du = \"\"; if ($du == $null) { $var(x) = 1; } else { $var(x) = -1; }",
        "do:$du = \"sip:d.example\"; $var(x) = $du;",
        "do:$avp(n) = 1; $avp(n) = $null; if ($avp(n) == $null) { $var(x) = 1; } else { $var(x) = -1; }",
        "do:$avp(n) = \"\"; if ($avp(n) == $null) { $var(x) = 1; } else { $var(x) = -1; }",
        "do:$sht(t=>e$ci) = \"\"; if ($sht(t=>e$ci) == $null) { $var(x) = 1; } else { $var(x) = -1; }",
        "do:switch ($hdr(X-None)) { case \"\": $var(x) = 1; break; default: $var(x) = 2; }",
        "do:$var(x) = $(null{s.len});",
        "$avp(never)",
        "$sht(t=>never)",
        "$(avp(never){s.len})",
        "$(rb{s.len})",
        "$(tu{uri.port})",
        "$(tu{uri.param,x})",
        "$(hdr(X-P){uri.user})",
        "$(hdr(X-P){nameaddr.uri})",
        "$(hdr(X-Pad){s.int})",
    ] {
        add(s);
    }
    // $fs (the forced send socket): null until set, then the listener `proto:ip:port`;
    // a socket that is no listener leaves it as it was; null clears it.
    for s in [
        "$fs",
        "do:$fs = $pr + \":\" + $Ri + \":\" + $Rp; $var(x) = $fs;",
        "do:$fs = $pr + \":\" + $Ri + \":\" + $Rp; $var(s) = \"udp:192.0.2.1:5060\"; $fs = $var(s); $var(x) = $fs;",
        "do:$var(s) = \"udp:192.0.2.1:5060\"; $fs = $var(s); $var(x) = $fs;",
        "do:$fs = $pr + \":\" + $Ri + \":\" + $Rp; $fs = $null; $var(x) = $fs;",
        "do:set_send_socket(\"$pr:$Ri:$Rp\"); $var(x) = $fs;",
        "do:$fs = $pr + \":\" + $Ri + \":\" + $Rp; if ($fs == $null) { $var(x) = 1; } else { $var(x) = -1; }",
    ] {
        add(s);
    }
    // Function return codes and conditions.
    for s in [
        "is_method(\"INVITE\")",
        "is_method(\"OPTIONS|REGISTER\")",
        "has_totag()",
        "has_body()",
        "is_present_hf(\"X-Foo\")",
        "is_present_hf(\"X-None\")",
        "search(\"^x-foo: *bar\")",
        "search(\"diff-ua/[0-9]\")",
        "search(\"^(INVITE|MESSAGE) \")",
        "search(\"^X-Nope:\")",
        "search(\"^v=0\")",
        "mf_process_maxfwd_header(\"10\")",
        "if:uri == myself",
        "if:from_uri == myself",
        "if:to_uri == myself",
        "if:method == \"invite\"",
        "if:proto == TLS",
        "if:proto == UDP",
        "if:af == INET",
        "if:src_ip == \"127.0.0.1\"",
        "if:dst_ip == \"127.0.0.1\"",
        "if:src_ip == \"127.0.0.0/8\"",
        "if:msg:len > 100",
        "if:$fd =~ \"a\\.example$\"",
        "if:$ru =~ \"^sip:Bob\"",
        "if:@from.uri.host == \"a.example\"",
        "if:$cs == 42",
        "if:$cs < 100",
        "if:$ua == \"diff-ua/1.0\"",
    ] {
        add(s);
    }
    p
}

/// The route statements that put probe `n`'s value into `X-E<n>`.
fn probe_code(n: usize, probe: &str) -> String {
    let set = if let Some(cond) = probe.strip_prefix("if:") {
        format!("if ({cond}) {{ $var(x) = 1; }} else {{ $var(x) = -1; }}")
    } else if let Some(code) = probe.strip_prefix("do:") {
        code.to_owned()
    } else {
        format!("$var(x) = {probe};")
    };
    let mut code = format!(
        "    $var(x) = \"<unset>\";\n    {set}\n    append_to_reply(\"X-E{n}: $var(x)\\r\\n\");\n"
    );
    // A pseudo-variable also goes into the string itself, where Kamailio shows its null.
    if is_pv(probe) {
        code.push_str(&format!(
            "    append_to_reply(\"X-N{n}: {probe}\\r\\n\");\n"
        ));
    }
    code
}

/// A pseudo-variable, with or without transformations (not a function or a select).
fn is_pv(probe: &str) -> bool {
    probe.starts_with('$') && !probe.contains(' ')
}

/// The route block both servers run.
fn route_block(probes: &[String]) -> String {
    let mut s = String::from("request_route {\n");
    for (n, p) in probes.iter().enumerate() {
        s.push_str(&probe_code(n, p));
    }
    s.push_str("    sl_send_reply(\"200\", \"OK\");\n}\n");
    s
}

/// Kamailio's configuration around a route block.
fn kamailio_cfg(dir: &Path, udp: u16, tls: u16, route: &str) -> String {
    let mpath = kamailio::module_dir();
    let p = |f: &str| dir.join(f).display().to_string();
    format!(
        "#!KAMAILIO\n\
         debug=1\nlog_stderror=yes\nchildren=1\ntcp_children=1\n\
         auto_aliases=no\ndns=no\nrev_dns=no\nuse_dns_cache=off\nenable_tls=yes\n\
         listen=udp:127.0.0.1:{udp}\nlisten=tls:127.0.0.1:{tls}\n\
         # Any port: uri == myself for sip:...@127.0.0.1, as siprox knows its addresses.\n\
         alias=127.0.0.1\n\
         loadpath \"{mpath}/\"\n\
         loadmodule \"tls.so\"\nloadmodule \"sl.so\"\nloadmodule \"pv.so\"\n\
         loadmodule \"siputils.so\"\nloadmodule \"textops.so\"\nloadmodule \"textopsx.so\"\n\
         loadmodule \"maxfwd.so\"\nloadmodule \"htable.so\"\nloadmodule \"corex.so\"\n\
         modparam(\"htable\", \"htable\", \"t=>size=4;\")\n\
         modparam(\"tls\", \"certificate\", \"{cert}\")\n\
         modparam(\"tls\", \"private_key\", \"{key}\")\n\
         modparam(\"tls\", \"ca_list\", \"{ca}\")\n\
         modparam(\"tls\", \"tls_method\", \"TLSv1.2+\")\n\
         modparam(\"tls\", \"verify_certificate\", 1)\n\
         modparam(\"tls\", \"require_certificate\", 0)\n\
         {route}",
        mpath = mpath.display(),
        cert = p("server.pem"),
        key = p("server.key"),
        ca = p("ca.pem"),
    )
}

// ---- the test PKI ------------------------------------------------------------------------

const NOT_BEFORE: i64 = 1_735_689_600; // 2025-01-01 00:00:00 UTC
const NOT_AFTER: i64 = 2_051_222_400; // 2035-01-01 00:00:00 UTC

fn ec_key() -> PKey<Private> {
    siprox_testkit::pki::key()
}

fn name(entries: &[(Nid, &str)]) -> X509Name {
    let mut b = X509NameBuilder::new().expect("name");
    for (nid, v) in entries {
        b.append_entry_by_nid(*nid, v).expect("name entry");
    }
    b.build()
}

struct Cert {
    cert: X509,
    key: PKey<Private>,
}

/// A v3 certificate with a fixed serial and validity.
fn make_cert(
    subject: &X509Name,
    serial: u32,
    issuer: Option<&Cert>,
    ca: bool,
    san: Option<SubjectAlternativeName>,
) -> Cert {
    let key = ec_key();
    let mut b = X509Builder::new().expect("builder");
    b.set_version(2).expect("v3");
    let sn: Asn1Integer = BigNum::from_u32(serial)
        .and_then(|n| n.to_asn1_integer())
        .expect("serial");
    b.set_serial_number(&sn).expect("serial");
    b.set_subject_name(subject).expect("subject");
    b.set_issuer_name(issuer.map_or(subject, |i| i.cert.subject_name()))
        .expect("issuer");
    b.set_pubkey(&key).expect("pubkey");
    b.set_not_before(&Asn1Time::from_unix(NOT_BEFORE).expect("time"))
        .expect("not before");
    b.set_not_after(&Asn1Time::from_unix(NOT_AFTER).expect("time"))
        .expect("not after");
    if ca {
        b.append_extension(BasicConstraints::new().critical().ca().build().expect("bc"))
            .expect("bc");
        b.append_extension(
            KeyUsage::new()
                .critical()
                .key_cert_sign()
                .crl_sign()
                .build()
                .expect("ku"),
        )
        .expect("ku");
    } else {
        b.append_extension(BasicConstraints::new().build().expect("bc"))
            .expect("bc");
        b.append_extension(
            KeyUsage::new()
                .critical()
                .digital_signature()
                .key_agreement()
                .build()
                .expect("ku"),
        )
        .expect("ku");
        b.append_extension(
            ExtendedKeyUsage::new()
                .server_auth()
                .client_auth()
                .build()
                .expect("eku"),
        )
        .expect("eku");
    }
    if let Some(san) = san {
        let ext = {
            let ctx = b.x509v3_context(issuer.map(|i| &*i.cert), None);
            san.build(&ctx).expect("san")
        };
        b.append_extension(ext).expect("san");
    }
    b.sign(issuer.map_or(&key, |i| &i.key), MessageDigest::sha256())
        .expect("sign");
    Cert {
        cert: b.build(),
        key,
    }
}

fn write(dir: &Path, stem: &str, c: &Cert) {
    std::fs::write(
        dir.join(format!("{stem}.pem")),
        c.cert.to_pem().expect("pem"),
    )
    .unwrap();
    std::fs::write(
        dir.join(format!("{stem}.key")),
        c.key.private_key_to_pem_pkcs8().expect("key pem"),
    )
    .unwrap();
}

/// ca.pem, server.pem/.key (localhost, 127.0.0.1) and client.pem/.key: every subject field
/// and every kind of SAN.
fn make_pki(dir: &Path) {
    let ca = make_cert(
        &name(&[
            (Nid::COUNTRYNAME, "DE"),
            (Nid::STATEORPROVINCENAME, "Berlin"),
            (Nid::LOCALITYNAME, "Berlin"),
            (Nid::ORGANIZATIONNAME, "Diff CA Org"),
            (Nid::ORGANIZATIONALUNITNAME, "Diff CA Unit"),
            (Nid::COMMONNAME, "Diff Test CA"),
        ]),
        0x1000,
        None,
        true,
        None,
    );
    let mut san = SubjectAlternativeName::new();
    san.dns("localhost")
        .ip("127.0.0.1")
        .email("server@example.org");
    let server = make_cert(
        &name(&[
            (Nid::COUNTRYNAME, "FR"),
            (Nid::STATEORPROVINCENAME, "IDF"),
            (Nid::LOCALITYNAME, "Paris"),
            (Nid::ORGANIZATIONNAME, "Server Org"),
            (Nid::ORGANIZATIONALUNITNAME, "Server Unit"),
            (Nid::COMMONNAME, "localhost"),
        ]),
        0x2002,
        Some(&ca),
        false,
        Some(san),
    );
    let mut san = SubjectAlternativeName::new();
    san.email("alice@san.example.com")
        .dns("alice.example.com")
        .uri("sip:alice@example.com")
        .ip("192.0.2.7");
    let client = make_cert(
        &name(&[
            (Nid::COUNTRYNAME, "US"),
            (Nid::STATEORPROVINCENAME, "California"),
            (Nid::LOCALITYNAME, "Palo Alto"),
            (Nid::ORGANIZATIONNAME, "Example Inc"),
            (Nid::ORGANIZATIONALUNITNAME, "Voice"),
            (Nid::COMMONNAME, "Alice Client"),
            (Nid::PKCS9_EMAILADDRESS, "alice@dn.example.com"),
            (Nid::USERID, "u-alice"),
            (Nid::X500UNIQUEIDENTIFIER, "x500-alice"),
            (Nid::SERIALNUMBER, "SN-7"),
        ]),
        0x7B2D_4C01,
        Some(&ca),
        false,
        Some(san),
    );
    write(dir, "ca", &ca);
    write(dir, "server", &server);
    write(dir, "client", &client);
}

// ---- the messages ------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Via {
    /// TLS 1.3 (both servers' choice) with the client certificate.
    TlsCert,
    /// TLS 1.2 with the client certificate, one cipher offered (so that the servers'
    /// cipher preferences do not decide).
    Tls12Cert,
    TlsNoCert,
    Udp,
}

/// The requests, for a client at `local` over `via`: a rich INVITE (quoted display name,
/// several Contacts with parameters, two Vias with parameters, Route and Record-Route,
/// custom headers, a body), an in-dialog OPTIONS, a MESSAGE to a `user=phone` URI (a
/// `tel:` To) and a REGISTER with a Path.
fn messages(via: Via, local: SocketAddr) -> Vec<(&'static str, String)> {
    let t = if via == Via::Udp { "UDP" } else { "TLS" };
    let common = |method: &str, ruri: &str, to: &str, cseq: u32, extra: &str, body: &str| {
        format!(
            "{method} {ruri} SIP/2.0\r\n\
             Via: SIP/2.0/{t} {local};branch=z9hG4bK-diff-{method};rport;xv=7\r\n\
             Via: SIP/2.0/UDP 192.0.2.9:5070;branch=z9hG4bKup;received=198.51.100.1\r\n\
             Max-Forwards: 70\r\n\
             From: \"Alice A\" <sip:alice@a.example;transport=tls>;tag=ftag1;xf=1\r\n\
             To: {to}\r\n\
             Call-ID: diff-{method}-Call@a.example\r\n\
             CSeq: {cseq} {method}\r\n\
             {extra}\
             User-Agent: diff-ua/1.0\r\n\
             X-Foo: Bar\r\n\
             X-Foo: second\r\n\
             X-P: val;a=1;b=two\r\n\
             X-Q: x, y;a=2\r\n\
             X-Pad:   padded  \r\n\
             X-L: ;a = 1 ; b=\"q,r\" ;c, d=4\r\n\
             X-Empty:\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    let sdp = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n";
    vec![
        (
            "INVITE",
            common(
                "INVITE",
                "sip:Bob.B@127.0.0.1;xp=Q",
                "Bob <sip:bob@b.example>",
                42,
                "Contact: <sip:one@h1;transport=tls>;q=0.5;expires=60, \"Two\" <sip:two@h2>;q=0.1\r\n\
                 Contact: <sip:three@h3>\r\n\
                 Route: <sip:r1.example;lr>, <sip:r2.example;lr>\r\n\
                 Record-Route: <sip:rr1.example;lr;ftag=x>\r\n\
                 Content-Type: application/sdp\r\n",
                sdp,
            ),
        ),
        (
            "OPTIONS",
            common(
                "OPTIONS",
                "sip:127.0.0.1;transport=tls",
                "<sip:bob@b.example>;tag=ttag9",
                7,
                "Accept: application/sdp\r\n",
                "",
            ),
        ),
        (
            "MESSAGE",
            common(
                "MESSAGE",
                "sip:+1-555.0100;ext=7@127.0.0.1;user=phone",
                "<tel:+1-555-0100>",
                3,
                "Content-Type: text/plain\r\n",
                "hello",
            ),
        ),
        (
            "REGISTER",
            common(
                "REGISTER",
                "sip:b.example",
                "\"Alice A\" <sip:alice@a.example>",
                1,
                "Contact: <sip:alice@192.0.2.10:5061;transport=tls>;expires=3600;+sip.instance=\"<urn:uuid:1>\"\r\n\
                 Path: <sip:edge.example;lr>\r\n",
                "",
            ),
        ),
    ]
}

// ---- talking to the servers -------------------------------------------------------------

fn connector(dir: &Path, via: Via) -> SslConnector {
    let mut b = SslConnector::builder(SslMethod::tls_client()).expect("connector");
    b.set_ca_file(dir.join("ca.pem")).expect("ca");
    if via == Via::Tls12Cert {
        b.set_max_proto_version(Some(SslVersion::TLS1_2))
            .expect("max");
        b.set_cipher_list("ECDHE-ECDSA-AES128-GCM-SHA256")
            .expect("cipher");
    }
    if via != Via::TlsNoCert {
        b.set_certificate_chain_file(dir.join("client.pem"))
            .expect("client cert");
        b.set_private_key_file(dir.join("client.key"), SslFiletype::PEM)
            .expect("client key");
    }
    b.build()
}

async fn tls_to(addr: SocketAddr, c: &SslConnector) -> std::io::Result<SslStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let ssl = c
        .configure()
        .and_then(|c| c.into_ssl("localhost"))
        .expect("ssl");
    let mut s = SslStream::new(ssl, tcp).expect("stream");
    tokio::time::timeout(Duration::from_secs(5), Pin::new(&mut s).connect())
        .await
        .map_err(|_| std::io::Error::other("handshake timed out"))?
        .map_err(std::io::Error::other)?;
    Ok(s)
}

/// One reply per message over `via` to the server at (`udp`, `tls`): each message's
/// replies, and the client's source port.
async fn exchange(
    dir: &Path,
    via: Via,
    udp_sock: &UdpSocket,
    udp: SocketAddr,
    tls: SocketAddr,
) -> (Vec<(&'static str, String)>, u16) {
    let mut out = Vec::new();
    match via {
        Via::Udp => {
            let local = udp_sock.local_addr().unwrap();
            for (m, req) in messages(via, local) {
                udp_sock.send_to(req.as_bytes(), udp).await.unwrap();
                let mut buf = vec![0u8; 65536];
                let (n, _) =
                    tokio::time::timeout(Duration::from_secs(5), udp_sock.recv_from(&mut buf))
                        .await
                        .unwrap_or_else(|_| panic!("no UDP reply from {udp} to {m}"))
                        .unwrap();
                out.push((m, String::from_utf8_lossy(&buf[..n]).into_owned()));
            }
            (out, local.port())
        }
        Via::TlsCert | Via::Tls12Cert | Via::TlsNoCert => {
            let c = connector(dir, via);
            let mut s = tls_to(tls, &c)
                .await
                .unwrap_or_else(|e| panic!("TLS to {tls}: {e}"));
            let local = s.get_ref().local_addr().unwrap();
            let mut buf = Vec::new();
            for (m, req) in messages(via, local) {
                send(&mut s, &req).await;
                let r = read_message(&mut s, &mut buf, Duration::from_secs(5))
                    .await
                    .unwrap_or_else(|e| panic!("no TLS reply from {tls} to {m}: {e}"));
                out.push((m, r));
            }
            (out, local.port())
        }
    }
}

/// The `<prefix><n>` values of a reply (the text after `X-E<n>: ` up to CRLF, kept
/// verbatim), with `lport`/`sport` (as whole numbers) replaced by `{LPORT}`/`{SPORT}`.
fn values(reply: &str, prefix: &str, lport: u16, sport: u16) -> BTreeMap<usize, String> {
    let head = reply.split("\r\n\r\n").next().unwrap_or("");
    let mut v = BTreeMap::new();
    for line in head.split("\r\n") {
        let Some(rest) = line.strip_prefix(prefix) else {
            continue;
        };
        let Some((n, val)) = rest.split_once(':') else {
            continue;
        };
        let Ok(n) = n.parse::<usize>() else { continue };
        let val = val.strip_prefix(' ').unwrap_or(val);
        v.insert(n, normalize(val, lport, sport));
    }
    v
}

fn normalize(val: &str, lport: u16, sport: u16) -> String {
    let mut out = String::new();
    let b = val.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i].is_ascii_digit() && (i == 0 || !b[i - 1].is_ascii_digit()) {
            let mut j = i;
            while j < b.len() && b[j].is_ascii_digit() {
                j += 1;
            }
            let num = &val[i..j];
            if num == lport.to_string() {
                out.push_str("{LPORT}");
            } else if num == sport.to_string() {
                out.push_str("{SPORT}");
            } else {
                out.push_str(num);
            }
            i = j;
        } else {
            let c = val[i..].chars().next().unwrap();
            out.push(c);
            i += c.len_utf8();
        }
    }
    out
}

/// What both servers answered for one probe and message: (`X-E<n>`, `X-N<n>`).
struct Got {
    kamailio: (Option<String>, Option<String>),
    siprox: (Option<String>, Option<String>),
}

fn intended(probe: &str, method: &str) -> Option<usize> {
    INTENDED
        .iter()
        .position(|(keys, only, _)| keys.contains(&probe) && only.is_none_or(|m| m == method))
}

// ---- docs/script.md ------------------------------------------------------------------------

fn docs() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/script.md");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The rows of the first table after the heading `heading`, as cells.
fn table(doc: &str, heading: &str) -> Vec<Vec<String>> {
    let start = doc
        .find(heading)
        .unwrap_or_else(|| panic!("docs/script.md has no {heading:?}"));
    let mut rows = Vec::new();
    let mut in_table = false;
    for line in doc[start..].lines().skip(1) {
        let l = line.trim();
        if l.starts_with('|') {
            in_table = true;
            let inner = l.trim_start_matches('|').trim_end_matches('|');
            // `\|` is a pipe inside a cell.
            let cells: Vec<String> = inner
                .replace("\\|", "\u{1}")
                .split('|')
                .map(|c| c.trim().replace('\u{1}', "|"))
                .collect();
            if cells
                .iter()
                .all(|c| c.chars().all(|ch| ch == '-' || ch == ':'))
            {
                continue;
            }
            rows.push(cells);
        } else if in_table || l.starts_with('#') {
            break;
        }
    }
    assert!(!rows.is_empty(), "no table after {heading:?}");
    rows.remove(0); // the header row
    rows
}

/// Every `code` span of a cell.
fn codes(cell: &str) -> Vec<&str> {
    cell.split('`').skip(1).step_by(2).collect()
}

/// The code spans a cell starts with, separated by `, ` (what follows them is prose).
fn leading_codes(cell: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = cell.trim_start();
    while let Some(r) = rest.strip_prefix('`') {
        let Some(end) = r.find('`') else { break };
        out.push(&r[..end]);
        match r[end + 1..].strip_prefix(", ") {
            Some(next) => rest = next,
            None => break,
        }
    }
    out
}

// ---- the test -----------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn siprox_matches_kamailio_5_6_except_the_documented_differences() {
    kamailio::binary();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    make_pki(d);
    let probes = probes();
    let route = route_block(&probes);

    // Kamailio.
    let (kudp, ktls) = kamailio::free_ports();
    let kcfg = d.join("kamailio.cfg");
    std::fs::write(&kcfg, kamailio_cfg(d, kudp, ktls, &route)).unwrap();
    if let Err(e) = kamailio::check(&kcfg) {
        // Name the probes Kamailio refuses, one by one.
        let mut refused = String::new();
        for (n, p) in probes.iter().enumerate() {
            let one = d.join("one.cfg");
            let block = format!(
                "request_route {{\n{}    sl_send_reply(\"200\", \"OK\");\n}}\n",
                probe_code(n, p)
            );
            std::fs::write(&one, kamailio_cfg(d, kudp, ktls, &block)).unwrap();
            if kamailio::check(&one).is_err() {
                let _ = writeln!(refused, "  {p}");
            }
        }
        panic!("Kamailio refuses the probes:\n{refused}\nkamailio -c said:\n{e}");
    }
    if let Err(e) = siprox::script::compile(&route, "diff.cfg") {
        let refused: Vec<&String> = probes
            .iter()
            .enumerate()
            .filter(|(n, p)| {
                let block = format!("request_route {{\n{}}}\n", probe_code(*n, p));
                siprox::script::compile(&block, "one.cfg").is_err()
            })
            .map(|(_, p)| p)
            .collect();
        panic!("siprox refuses the probes {refused:?}:\n{e}");
    }
    let mut kam = Kamailio::start(&kcfg, d, kudp, ktls);

    // Kamailio is ready when it answers over UDP and accepts TLS (siprox starts after
    // that: its port 0 cannot take a port Kamailio has not bound yet).
    let udp_sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let ping = messages(Via::Udp, udp_sock.local_addr().unwrap())[1]
        .1
        .clone();
    assert_eventually!(
        {
            kam.assert_running();
            udp_sock.send_to(ping.as_bytes(), kam.udp).await.unwrap();
            let mut buf = [0u8; 65536];
            matches!(
                tokio::time::timeout(Duration::from_millis(200), udp_sock.recv_from(&mut buf))
                    .await,
                Ok(Ok(_))
            )
        },
        Duration::from_secs(15),
        "kamailio answers on {}:\n{}",
        kam.udp,
        kam.log_text()
    );
    // Late duplicates of the pings.
    let mut buf = [0u8; 65536];
    while let Ok(Ok(_)) =
        tokio::time::timeout(Duration::from_millis(100), udp_sock.recv_from(&mut buf)).await
    {}
    assert_eventually!(
        tls_to(kam.tls, &connector(d, Via::TlsNoCert)).await.is_ok(),
        Duration::from_secs(10),
        "kamailio accepts TLS on {}:\n{}",
        kam.tls,
        kam.log_text()
    );

    // siprox, same certificates, same route block.
    std::fs::create_dir_all(d.join("scripts")).unwrap();
    std::fs::write(d.join("scripts/diff.cfg"), &route).unwrap();
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let mut cfg = Config {
        listen: vec![
            Listener {
                proto: Proto::Udp,
                addr: any,
                advertise: None,
            },
            Listener {
                proto: Proto::Tls,
                addr: any,
                advertise: None,
            },
        ],
        runtime: RuntimeConfig {
            workers: 1,
            ..RuntimeConfig::default()
        },
        tls: TlsConfig {
            certificate: d.join("server.pem"),
            private_key: d.join("server.key"),
            ca_file: Some(d.join("ca.pem")),
            verify_client: VerifyClient::Optional,
            generate_dev_certs: false,
            ..TlsConfig::default()
        },
        ..Config::default()
    };
    cfg.script.file = Some("scripts/diff.cfg".into());
    cfg.htables
        .insert("t".into(), siprox::config::HtableConfig::default());
    let rt = start(cfg, d);
    let sudp = rt.local_addr(siprox::proxy::Transport::Udp).unwrap();
    let stls = rt.local_addr(siprox::proxy::Transport::Tls).unwrap();

    // Both answer every message over every transport.
    let mut got: BTreeMap<(usize, Via, &str), Got> = BTreeMap::new();
    for via in [Via::TlsCert, Via::Tls12Cert, Via::TlsNoCert, Via::Udp] {
        let (kr, ksport) = exchange(d, via, &udp_sock, kam.udp, kam.tls).await;
        let (sr, ssport) = exchange(d, via, &udp_sock, sudp, stls).await;
        let (klport, slport) = if via == Via::Udp {
            (kam.udp.port(), sudp.port())
        } else {
            (kam.tls.port(), stls.port())
        };
        for ((m, k), (_, s)) in kr.iter().zip(&sr) {
            assert_eq!(
                status(k),
                Some(200),
                "kamailio {via:?} {m}:\n{k}\n{}",
                kam.log_text()
            );
            assert_eq!(status(s), Some(200), "siprox {via:?} {m}:\n{s}");
            let ke = values(k, "X-E", klport, ksport);
            let se = values(s, "X-E", slport, ssport);
            let kn = values(k, "X-N", klport, ksport);
            let sn = values(s, "X-N", slport, ssport);
            for n in 0..probes.len() {
                got.insert(
                    (n, via, m),
                    Got {
                        kamailio: (ke.get(&n).cloned(), kn.get(&n).cloned()),
                        siprox: (se.get(&n).cloned(), sn.get(&n).cloned()),
                    },
                );
            }
        }
    }
    rt.shutdown();
    drop(kam);

    // Every value matches, except the intended differences; each of those still differs.
    let mut report = String::new();
    let mut differing: BTreeSet<usize> = BTreeSet::new();
    let mut all = String::new();
    for ((n, via, m), g) in &got {
        let p = probes[*n].as_str();
        let line = format!(
            "E{n} {p} [{via:?} {m}]: kamailio={:?} siprox={:?}\n",
            g.kamailio, g.siprox
        );
        all.push_str(&line);
        if g.kamailio == g.siprox {
            continue;
        }
        let key = if g.kamailio.0.is_none() {
            None
        } else {
            intended(p, m)
        };
        match key {
            Some(key) => {
                differing.insert(key);
            }
            None => report.push_str(&line),
        }
    }
    eprintln!("{all}");
    assert!(
        report.is_empty(),
        "values that differ from Kamailio 5.6.3:\n{report}"
    );
    let stale: Vec<&[&str]> = INTENDED
        .iter()
        .enumerate()
        .filter(|(i, _)| !differing.contains(i))
        .map(|(_, (keys, ..))| *keys)
        .collect();
    assert!(
        stale.is_empty(),
        "intended differences that no longer differ (remove them here and in docs/script.md): {stale:?}"
    );

    // The probes Kamailio refuses at load, and siprox loads.
    for p in KAMAILIO_LOAD_ERRORS
        .iter()
        .flat_map(|(keys, _)| keys.iter())
    {
        let one = d.join("one.cfg");
        let block = format!(
            "request_route {{\n{}    sl_send_reply(\"200\", \"OK\");\n}}\n",
            probe_code(0, p)
        );
        std::fs::write(&one, kamailio_cfg(d, kudp, ktls, &block)).unwrap();
        assert!(
            kamailio::check(&one).is_err(),
            "Kamailio now loads {p}: not a difference any more"
        );
        siprox::script::compile(&block, "one.cfg")
            .unwrap_or_else(|e| panic!("siprox refuses {p}:\n{e}"));
    }

    // docs/script.md lists exactly these differences, with these reasons.
    let doc = docs();
    let documented: BTreeSet<(Vec<String>, String)> =
        table(&doc, "### Intended differences from Kamailio 5.6")
            .iter()
            .map(|r| {
                let mut keys: Vec<String> =
                    leading_codes(&r[0]).iter().map(|c| c.to_string()).collect();
                keys.sort();
                (keys, r.last().cloned().unwrap_or_default())
            })
            .collect();
    let tested: BTreeSet<(Vec<String>, String)> = INTENDED
        .iter()
        .map(|(keys, _, why)| (*keys, *why))
        .chain(KAMAILIO_LOAD_ERRORS.iter().copied())
        .map(|(keys, why)| {
            let mut keys: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
            keys.sort();
            (keys, why.to_string())
        })
        .collect();
    let missing: Vec<_> = tested.difference(&documented).collect();
    let extra: Vec<_> = documented.difference(&tested).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "docs/script.md's intended differences (the code spans of the first column, the last \
         column) and this test's: missing from the docs {missing:#?}\nnot in the test {extra:#?}"
    );

    // "Coming from Kamailio or SER": every select and pseudo-variable named on a "same" row
    // is one this test compared and found the same.
    let matching = |code: &str| {
        probes.iter().any(|p| {
            p.contains(code)
                && INTENDED
                    .iter()
                    .all(|(keys, ..)| !keys.contains(&p.as_str()))
        })
    };
    for r in table(&doc, "## Coming from Kamailio or SER") {
        if !r.last().is_some_and(|c| c.starts_with("same")) {
            continue;
        }
        for code in codes(&r[0]) {
            let code = code.trim().trim_end_matches("...").trim_end_matches('*');
            if (code.starts_with('@') || code.starts_with('$')) && !code.contains(' ') {
                assert!(
                    matching(code),
                    "docs/script.md says {code} is the same as in Kamailio; no probe compares it"
                );
            }
        }
    }
}

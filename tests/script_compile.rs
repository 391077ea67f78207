//! Compilation of route scripts: every error names file:line:col with a caret excerpt; the
//! default script compiles; no input (random bytes, deep nesting) panics the compiler.

mod script_support;

use proptest::prelude::*;
use script_support::*;
use siprox::script::{compile, End};

fn err(src: &str) -> String {
    match compile(src, "conf.d/scripts/t.cfg") {
        Ok(_) => panic!("expected a compile error for:\n{src}"),
        Err(e) => e.to_string(),
    }
}

fn first(src: &str) -> (usize, usize, String) {
    let e = compile(src, "t.cfg").expect_err("compile error");
    let f = e.first().expect("one error").clone();
    (f.line, f.col, f.msg)
}

#[test]
fn error_format_has_position_and_caret() {
    let src = "route {\n    if (foo(1)) { drop; }\n}\n";
    let e = err(src);
    assert_eq!(
        e,
        "conf.d/scripts/t.cfg:2:9: unknown function `foo`\n2 |     if (foo(1)) { drop; }\n  |         ^^^^^^"
    );
}

#[test]
fn semantic_errors_are_all_reported() {
    let src =
        "route {\n  nope();\n  $var(x) = @bad.select;\n  xlog(\"$nopv\");\n  route(MISSING);\n}\n";
    let e = compile(src, "t.cfg").unwrap_err();
    let msgs: Vec<String> = e
        .errors
        .iter()
        .map(|e| format!("{}:{} {}", e.line, e.col, e.msg))
        .collect();
    assert_eq!(msgs.len(), 3, "{msgs:?}");
    assert!(
        msgs[0].starts_with("2:3 unknown function `nope`"),
        "{msgs:?}"
    );
    assert!(
        msgs[1].starts_with("3:14 unknown select `@bad`"),
        "{msgs:?}"
    );
    assert!(
        msgs[2].starts_with("4:8 unknown pseudo-variable `$nopv`"),
        "{msgs:?}"
    );
    // Unknown routes are checked once everything else is clean.
    assert_eq!(
        first("route {\n  route(MISSING);\n}"),
        (2, 9, "unknown route `MISSING`".into())
    );
    // So are t_on_branch's names; append_branch's literal URI at once.
    assert_eq!(
        first("route {\n  t_on_branch(\"NOPE\");\n  t_relay();\n}\nbranch_route[OTHER] { }"),
        (2, 15, "unknown branch_route `NOPE`".into())
    );
    assert!(compile(
        "route { t_on_branch(\"B\"); append_branch(); append_branch(\"sip:a@b\"); t_relay(); }\n\
         branch_route[B] { if ($T_branch_idx == 1) { drop; } }\n\
         failure_route[F] { if (!t_next_contacts()) { exit; } }",
        "t.cfg"
    )
    .is_ok());
    assert_eq!(
        first("route {\n  append_branch(\"not a uri\");\n}"),
        (2, 17, "append_branch: bad URI `not a uri`".into())
    );
}

#[test]
fn each_kind_of_error() {
    let cases: &[(&str, (usize, usize), &str)] = &[
        (
            "route { forward(1, 2, 3); }",
            (1, 9),
            "`forward` takes 0 to 2 arguments, got 3",
        ),
        (
            "route { sl_send_reply(\"403\"); }",
            (1, 9),
            "`sl_send_reply` takes 2 arguments, got 1",
        ),
        (
            "route { sl_send_reply(\"99\", \"x\"); }",
            (1, 23),
            "not a status code",
        ),
        (
            "route { if ($ru =~ \"(\") { drop; } }",
            (1, 20),
            "bad regex",
        ),
        (
            "route { $var(r) = \"a\" =~ $var(x); }",
            (1, 26),
            "must be a string literal",
        ),
        (
            "route { if (@tls.peer.subject.nope == \"x\") {} }",
            (1, 31),
            "unknown name attribute `nope`",
        ),
        (
            "route { if (@contact[0].uri) {} }",
            (1, 14),
            "indices start at 1",
        ),
        ("route { $nope = 1; }", (1, 9), "cannot assign to `$nope`"),
        (
            "route { if ($tls_peer_bogus) {} }",
            (1, 13),
            "unknown pseudo-variable `$tls_peer_bogus`",
        ),
        (
            "route { if (bogus) {} }",
            (1, 13),
            "unknown keyword `bogus`",
        ),
        (
            "route { if (record_route) {} }",
            (1, 13),
            "`record_route` is a function",
        ),
        (
            "route { setflag(64); }",
            (1, 17),
            "a flag is an integer literal from 0 to 63",
        ),
        ("route { is_method($var(m)); }", (1, 19), "literal list"),
        (
            "route { xlog(\"L_NOPE\", \"x\"); }",
            (1, 14),
            "the level is a literal",
        ),
        (
            "route { forward(\"bad host!\"); }",
            (1, 17),
            "bad forward target",
        ),
        ("route { rewriteuri(\"nope\"); }", (1, 20), "bad URI"),
        ("route { break; }", (1, 9), "`break` outside"),
        ("route { drop }", (1, 13), "expected `;`"),
        ("route { if (1) { drop; }", (1, 7), "never closed"),
        ("route { \"abc }", (1, 9), "unterminated string"),
        (
            "route { } route { }",
            (1, 11),
            "the main route is defined twice",
        ),
        (
            "route[A] { } route[A] { }",
            (1, 14),
            "route `A` is defined twice",
        ),
        (
            "event_route[tls:nope] { }",
            (1, 1),
            "unknown event `tls:nope`",
        ),
        ("failure_route { }", (1, 15), "needs a name"),
        (
            "loadmodule \"tm.so\"",
            (1, 1),
            "does not belong in a siprox script",
        ),
        ("debug=3", (1, 1), "global parameter `debug`"),
        (
            "#!include_file \"x.cfg\"\n",
            (1, 1),
            "`#!include_file` is not supported",
        ),
        ("#!ifdef WITH_AUTH\n", (1, 1), "without `#!endif`"),
        (
            "route { }\n#!endif\n",
            (2, 1),
            "`#!endif` without `#!ifdef`",
        ),
        ("#!else\n", (1, 1), "`#!else` without `#!ifdef`"),
        (
            "#!ifdef A\n#!else\n#!else\n#!endif\n",
            (3, 1),
            "second `#!else`",
        ),
        (
            "#!define A 1\n#!define A 2\n",
            (2, 1),
            "`A` is already defined",
        ),
        ("#!define\n", (1, 1), "`#!define` needs a name"),
        (
            "#!define A B\n#!define B A\nroute { A; }",
            (3, 9),
            "expands too deeply",
        ),
        ("#!subst \"/a(/b/\"\n", (1, 9), "bad `#!subst` regex"),
        ("#!subst \"/a/b/x\"\n", (1, 9), "unknown `#!subst` flag `x`"),
        (
            "#!subst \"/a/b\"\n",
            (1, 9),
            "expected \"/regex/replacement/flags\"",
        ),
        (
            "#!subst /a/b/\n",
            (1, 1),
            "needs \"/regex/replacement/flags\"",
        ),
        (
            "#!define R sl_send_reply(\"404\")\nroute {\n  R;\n}",
            (3, 3),
            "`sl_send_reply` takes 2 arguments, got 1",
        ),
        (
            "route { proto == \"quic\"; }",
            (1, 18),
            "not a transport name",
        ),
        (
            "route { $var(a) = myself; }",
            (1, 19),
            "`myself` is only valid",
        ),
        (
            "route { 1 + 2; }",
            (1, 9),
            "a statement must be a function call",
        ),
        (
            "route { route($var(x)); }",
            (1, 15),
            "expected a route name",
        ),
        (
            "route { switch ($rm) { drop; } }",
            (1, 24),
            "expected `case` or `default`",
        ),
        (
            "route { switch ($rm) { case \"A\": case \"A\": break; } }",
            (1, 39),
            "duplicate case",
        ),
        ("route { else { } }", (1, 9), "`else` without `if`"),
        (
            "route { mf_process_maxfwd_header(\"0\"); }",
            (1, 34),
            "Max-Forwards limit",
        ),
        ("route { `x` }", (1, 9), "unexpected character"),
        (
            "onreply_route[A] {} onreply_route[A] {}",
            (1, 21),
            "onreply_route `A` is defined twice",
        ),
    ];
    for (src, (line, col), want) in cases {
        let (l, c, m) = first(src);
        assert!(m.contains(want), "{src}: got `{m}`, want `{want}`");
        assert_eq!((l, c), (*line, *col), "{src}: {m}");
    }
    let (_, c, m) = first("route { setbflag(1, 2); }");
    assert!(m.contains("only branch 0"), "{m}");
    assert_eq!(c, 21);
    let (_, _, m) = first("route { isbflagset(64); }");
    assert!(m.contains("from 0 to 63"), "{m}");
}

#[test]
fn accepted_forms() {
    for src in [
        "",
        "# only a comment\n// another\n/* block */",
        "#!KAMAILIO\nrequest_route { exit; }",
        "route { } route[RELAY] { } route[\"quoted\"] { } route[1] { }",
        "reply_route { } onreply_route[X] { } branch_route[B] { } failure_route[F] { }",
        "route { if (proto == udp || proto == WSS || af == inet6) { exit; } }",
        "route { route(\"quoted\"); } route[quoted] { }",
        "route { xlog(-1, \"numeric level\"); log(L_INFO, \"bare level name\"); }",
        "route { $var(x) = $(ru) + $(hdr(X-A)); }",
        "route { if (@tls.peer.subject.commonName == \"a\" && @tls.my.issuer.organizationalUnitName != \"b\") {} }",
        "route { $var(n) = -5; switch ($var(n)) { case -5: break; } }",
    ] {
        if let Err(e) = compile(src, "t.cfg") {
            panic!("{src}\n{e}");
        }
    }
}

#[test]
fn nesting_is_bounded() {
    let deep = format!(
        "route {{ $var(x) = {}1{}; }}",
        "(".repeat(500),
        ")".repeat(500)
    );
    assert!(first(&deep).2.contains("nesting deeper than"));
    let deep_not = format!("route {{ $var(x) = {}1; }}", "!".repeat(500));
    assert!(first(&deep_not).2.contains("nesting deeper than"));
    let deep_if = format!("route {{ {} }}", "if (1) ".repeat(500) + "drop;");
    assert!(first(&deep_if).2.contains("nesting deeper than"));
    let deep_blocks = format!("route {{ {}{} }}", "{".repeat(500), "}".repeat(500));
    assert!(first(&deep_blocks).2.contains("nesting deeper than"));
}

/// The `script_message` fuzz target runs a script that reads each kind of pseudo-variable,
/// select and transformation; the test command builds the fuzz crate but does not run it,
/// so a language change that breaks the script must show here, not as a crash at the
/// fuzzer's start.
#[test]
fn the_script_message_fuzz_targets_script_compiles() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz/src/script.rs");
    let text = std::fs::read_to_string(path).unwrap();
    let src = text
        .split_once("pub const EVERYTHING: &str = r#\"")
        .and_then(|(_, rest)| rest.split_once("\"#;"))
        .map(|(src, _)| src)
        .expect("EVERYTHING in fuzz/src/script.rs");
    let sc = compile(src, "everything.cfg").unwrap_or_else(|e| panic!("{e}"));
    assert!(sc.has_request_route() && sc.has_reply_route());
}

#[test]
fn default_script_compiles_and_routes() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/examples/default.cfg");
    let src = std::fs::read_to_string(path).unwrap();
    let sc = compile(&src, "default.cfg").unwrap_or_else(|e| panic!("{e}"));
    assert!(sc.has_request_route() && sc.has_reply_route() && sc.has_event("tls:connection-in"));
    for r in ["WITHINDLG", "REGISTRAR", "LOCATION", "RELAY"] {
        assert!(sc.has_route(r), "{r}");
    }
    // REGISTER for siprox -> digest (this host accepts it) -> save
    let reg = REGISTER.replace("REGISTER sip:example.com", "REGISTER sip:127.0.0.1");
    let r = run_with(&sc, &msg(&reg), &udp(), None, RecHost::default(), &[]);
    assert_eq!(
        r.host.calls,
        vec![
            "auth WwwAuthorize  subscriber",
            "auth ConsumeCredentials  ",
            "save location"
        ]
    );
    // In-dialog BYE with our Route -> forwarded
    let r = run_with(&sc, &msg(BYE), &udp(), None, RecHost::default(), &[]);
    assert_eq!(r.host.calls, vec!["forward"]);
    assert!(r.edits.loose_routed);
    // INVITE to one of our users with no binding -> 404. It carries the Route a phone
    // preloads when siprox is its outbound proxy: the lookup decides all the same.
    let to_me = INVITE
        .replace(
            "sip:bob@biloxi.example.com:5070;transport=tcp;user=phone",
            "sip:bob@127.0.0.1",
        )
        .replace(
            "Route: <sip:proxy.example.net;lr>",
            "Route: <sip:127.0.0.1;transport=tls;lr>",
        );
    let r = run_with(&sc, &msg(&to_me), &udp(), None, RecHost::default(), &[]);
    assert_eq!(r.host.calls, vec!["lookup location", "reply 404 Not Found"]);
    assert!(r.edits.record_route);
    assert_eq!(r.out.end, End::Exit);
    // ...and with a binding -> forwarded to it
    let h = RecHost {
        lookup_ruri: Some("sip:bob@192.0.2.9:5060".into()),
        ..RecHost::default()
    };
    let r = run_with(&sc, &msg(&to_me), &udp(), None, h, &[]);
    assert_eq!(r.host.calls, vec!["lookup location", "forward"]);
    // Max-Forwards 0 -> 483
    let mf0 = to_me.replace("Max-Forwards: 70", "Max-Forwards: 0");
    let r = run_with(&sc, &msg(&mf0), &udp(), None, RecHost::default(), &[]);
    assert_eq!(r.host.calls, vec!["reply 483 Too Many Hops"]);
}

#[test]
fn doc_examples_compile() {
    // Every fenced block tagged `cfg` in docs/script.md is a compilable script or fragment.
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/script.md");
    let doc = std::fs::read_to_string(path).unwrap();
    let mut n = 0;
    let mut rest = doc.as_str();
    while let Some(i) = rest.find("```cfg\n") {
        let body = &rest[i + 7..];
        let end = body.find("```").expect("closed fence");
        let block = &body[..end];
        let src = if block.trim_start().starts_with("#!") {
            // A preprocessor example is a whole script.
            block.to_owned()
        } else if block.contains("route")
            && block
                .trim_start()
                .starts_with(|c: char| c.is_ascii_lowercase())
            && block.contains('{')
            && (block.trim_start().starts_with("route")
                || block.trim_start().starts_with("onreply_route")
                || block.trim_start().starts_with("failure_route")
                || block.trim_start().starts_with("event_route")
                || block.trim_start().starts_with("request_route")
                || block.trim_start().starts_with("branch_route")
                || block.trim_start().starts_with('#'))
        {
            block.to_owned()
        } else {
            format!("route {{\n{block}\n}}\nroute[RELAY] {{ forward(); }}\nroute[A] {{ }}\nroute[B] {{ }}\nroute[CHECK] {{ }}\nroute[AUTH] {{ }}\n")
        };
        if let Err(e) = compile(&src, "docs/script.md") {
            panic!("doc example does not compile:\n{block}\n{e}");
        }
        n += 1;
        rest = &body[end + 3..];
    }
    assert!(n >= 12, "only {n} cfg examples");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        let src = String::from_utf8_lossy(&bytes);
        let _ = compile(&src, "fuzz.cfg").map_err(|e| e.to_string());
    }

    #[test]
    fn random_token_soup_never_panics(toks in proptest::collection::vec(prop::sample::select(vec![
        "route", "{", "}", "(", ")", "[", "]", "if", "else", "switch", "case", "default", ":", "break", ";",
        "$var(x)", "$ru", "@tls.peer", "@contact[2].uri", "=", "==", "=~", "\"a\"", "\"$rU\"", "1", "-1",
        "&&", "||", "!", "+", "forward", "sl_send_reply", "route", "A", ",", "while", "return", "drop",
        "exit", "myself", "proto", "TLS", "msg", "len", "event_route", "onreply_route",
    ]), 0..60)) {
        let src = toks.join(" ");
        if let Ok(sc) = compile(&src, "soup.cfg") {
            // Whatever compiles also runs without panicking.
            let m = msg(INVITE);
            let _ = run_with(&sc, &m, &udp(), None, RecHost::default(), &[]);
        }
    }

    /// Preprocessor soup: directives, defines naming each other (cycles included) and
    /// transformations in any order never panic, and expansion stays bounded.
    #[test]
    fn random_preprocessor_soup_never_panics(lines in proptest::collection::vec(prop::sample::select(vec![
        "#!define A B B", "#!define B A", "#!define C C C C C C C C", "#!define D 1 + D",
        "#!define E", "#!trydef A 1", "#!redefine B 2", "#!ifdef A", "#!ifndef B", "#!else",
        "#!endif", "!!ifdef C", "!!endif", "#!subst \"/a/\\0\\0/g\"", "#!substdef \"/E/x/\"",
        "#!subst \"/(/x/\"", "route { $var(x) = A; }", "route[R] { $var(y) = \"aaa\" + E; }",
        "route { $var(z) = $(ru{uri.user}{s.substr,1,2}{s.len}); }", "}", "{", "#!define F \\",
        "#!redefine C \"$(fu{s.select,-1,@})\"", "route { $var(x) = C; }",
    ]), 0..24)) {
        let src = lines.join("\n");
        if let Ok(sc) = compile(&src, "pp.cfg") {
            let m = msg(INVITE);
            let _ = run_with(&sc, &m, &udp(), None, RecHost::default(), &[]);
        }
    }
}

#[test]
fn transformation_errors() {
    let cases: &[(&str, (usize, usize), &str)] = &[
        (
            "route { $var(a) = $(ru{s.nope}); }",
            (1, 19),
            "unknown transformation `{s.nope}`",
        ),
        (
            "route { $var(a) = $(ru{s.substr,1}); }",
            (1, 19),
            "`{s.substr}` takes 2 parameters, got 1",
        ),
        (
            "route { $var(a) = $(ru{s.substr,x,1}); }",
            (1, 19),
            "needs an integer parameter",
        ),
        (
            "route { $var(a) = $(ru{s.strip,$var(n)}); }",
            (1, 19),
            "must be a literal",
        ),
        (
            "route { $var(a) = $(ru{s.select,1,ab}); }",
            (1, 19),
            "one-character separator",
        ),
        (
            "route { $var(a) = $(ru{uri.param}); }",
            (1, 19),
            "takes 1 parameter",
        ),
        ("route { $var(a) = $(ru{s.len\n); }", (1, 19), "missing `}`"),
        ("route { $var(a) = $(ru{s.len}; }", (1, 19), "missing `)`"),
        (
            "route { $(ru{s.len}) = 1; }",
            (1, 9),
            "cannot assign to a transformation",
        ),
        (
            "route { xlog(\"$(ru{s.nope})\"); }",
            (1, 14),
            "unknown transformation",
        ),
    ];
    for (src, (line, col), want) in cases {
        let (l, c, m) = first(src);
        assert!(m.contains(want), "{src}: got `{m}`, want `{want}`");
        assert_eq!((l, c), (*line, *col), "{src}: {m}");
    }
}

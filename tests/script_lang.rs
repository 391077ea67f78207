//! The route-script language at the interpreter level: statements, operators, keywords,
//! every function, the seed's certificate rule, edits, recursion and step limits.

mod script_support;

use script_support::*;
use siprox::proxy::Transport;
use siprox::script::{compile, End, Level, MsgCtx, RouteKind, RunError, MAX_ROUTE_DEPTH};

const SEED: &str = r#"
route {
    if (proto == TLS && @tls.peer != "Bob") {
        sl_send_reply("403", "Forbidden");
        drop;
    }
    forward();
}
"#;

#[test]
fn seed_rule_bob_passes_mallory_and_anonymous_get_403_udp_untouched() {
    let script = compiled(SEED);
    let m = msg(INVITE);
    let tls_rx = rx(Transport::Tls, "192.0.2.1:40000");
    for ver in ["TLSv1.2", "TLSv1.3"] {
        let mut bob = tls(Some("Bob"));
        bob.version = ver.into();
        let r = run_with(&script, &m, &tls_rx, Some(&bob), RecHost::default(), &[]);
        assert_eq!(r.host.calls, vec!["forward"], "{ver}");
        assert_eq!(r.out.end, End::Finished(1));
        assert!(r.out.forwarded && r.out.replied.is_none());

        let mallory = tls(Some("Mallory"));
        let r = run_with(
            &script,
            &m,
            &tls_rx,
            Some(&mallory),
            RecHost::default(),
            &[],
        );
        assert_eq!(r.host.calls, vec!["reply 403 Forbidden"]);
        assert_eq!(r.out.end, End::Drop);
        assert_eq!(r.out.replied, Some(403));
        assert!(!r.out.forwarded);

        let anon = tls(None);
        let r = run_with(&script, &m, &tls_rx, Some(&anon), RecHost::default(), &[]);
        assert_eq!(r.host.calls, vec!["reply 403 Forbidden"]);
        assert_eq!(r.out.end, End::Drop);
    }
    let r = run_with(&script, &m, &udp(), None, RecHost::default(), &[]);
    assert_eq!(r.host.calls, vec!["forward"]);
    // The DESIGN's spelling with the subject CN behaves the same.
    let s2 = compiled(
        r#"route { if (proto == TLS && @tls.peer.subject.cn != "Bob") { sl_send_reply("403", "Forbidden"); drop; } forward(); }"#,
    );
    let r = run_with(
        &s2,
        &m,
        &tls_rx,
        Some(&tls(Some("Mallory"))),
        RecHost::default(),
        &[],
    );
    assert_eq!(r.out.end, End::Drop);
    let r = run_with(
        &s2,
        &m,
        &tls_rx,
        Some(&tls(Some("Bob"))),
        RecHost::default(),
        &[],
    );
    assert_eq!(r.host.calls, vec!["forward"]);
}

#[test]
fn if_else_chains_and_blocks() {
    let m = msg(INVITE);
    let src = r#"route {
        if (method == "REGISTER") { $var(a) = 1; }
        else if (method == "invite") { $var(a) = 2; }
        else { $var(a) = 3; }
        if (1) $var(b) = "one-statement";
        { $var(c) = "nested"; }
        ;
    }"#;
    let r = run_with(
        &compiled(src),
        &m,
        &udp(),
        None,
        RecHost::default(),
        &["a", "b", "c"],
    );
    assert_eq!(r.var("a"), i(2), "method compares case-insensitively");
    assert_eq!(r.var("b"), s("one-statement"));
    assert_eq!(r.var("c"), s("nested"));
}

#[test]
fn switch_with_fallthrough_break_and_default() {
    let src = r#"route {
        $var(n) = 0;
        switch ($rm) {
            case "INVITE":
                $var(n) = $var(n) + 1;
            case "BYE":
                $var(n) = $var(n) + 10;
                break;
            case "REGISTER":
                $var(n) = 100;
                break;
            default:
                $var(n) = -1;
        }
        switch ($cs) {
            case 1: $var(k) = "one"; break;
            case -5: $var(k) = "minus five"; break;
            default: $var(k) = "other";
        }
        switch ($var(none)) { case "x": $var(z) = 1; }
    }"#;
    let sc = compiled(src);
    let run = |t: &str| run_with(&sc, &msg(t), &udp(), None, RecHost::default(), &["n", "k"]);
    let r = run(INVITE);
    assert_eq!(r.var("n"), i(11));
    assert_eq!(r.var("k"), s("other"));
    let r = run(BYE);
    assert_eq!(r.var("n"), i(10));
    let r = run(REGISTER);
    assert_eq!(r.var("n"), i(100));
    assert_eq!(r.var("k"), s("one"));
}

#[test]
fn while_loops_and_break() {
    let src = r#"route {
        $var(i) = 0;
        while ($var(i) < 5) { $var(i) = $var(i) + 1; if ($var(i) == 3) break; }
    }"#;
    let r = run_with(
        &compiled(src),
        &msg(INVITE),
        &udp(),
        None,
        RecHost::default(),
        &["i"],
    );
    assert_eq!(r.var("i"), i(3));
}

#[test]
fn return_exit_drop_and_sub_routes() {
    let m = msg(INVITE);
    let src = r#"
    route {
        if (route(CHECK)) { $var(x) = "check-true"; }
        $var(y) = route(NEG);
        route(STOP);
        $var(z) = "not reached";
    }
    route[CHECK] { return 5; }
    route[NEG] { return(-2); }
    route[STOP] { exit; }
    "#;
    let r = run_with(
        &compiled(src),
        &m,
        &udp(),
        None,
        RecHost::default(),
        &["x", "y", "z"],
    );
    assert_eq!(r.var("x"), s("check-true"));
    assert_eq!(r.var("y"), i(-2));
    assert_eq!(r.var("z"), i(0));
    assert_eq!(r.out.end, End::Exit);

    // return(0) in a sub-route ends the script (Kamailio).
    let r = run(
        "route { route(Z); forward(); } route[Z] { return(0); }",
        &m,
        &udp(),
        None,
    );
    assert_eq!(r.out.end, End::Exit);
    assert!(r.host.calls.is_empty());
    // A sub-route that falls off its end returns 1 (true).
    let r = run(
        "route { if (route(E)) { forward(); } } route[E] { }",
        &m,
        &udp(),
        None,
    );
    assert_eq!(r.host.calls, vec!["forward"]);
    // return n from the main route.
    assert_eq!(
        run("route { return(7); }", &m, &udp(), None).out.end,
        End::Finished(7)
    );
    assert_eq!(
        run("route { return; }", &m, &udp(), None).out.end,
        End::Finished(1)
    );
    // drop inside a sub-route drops the message.
    let r = run(
        "route { route(D); forward(); } route[D] { drop; }",
        &m,
        &udp(),
        None,
    );
    assert_eq!(r.out.end, End::Drop);
    assert!(r.host.calls.is_empty());
    // drop() and exit() function forms.
    assert_eq!(
        run("route { drop(); }", &m, &udp(), None).out.end,
        End::Drop
    );
    assert_eq!(
        run("route { exit(); }", &m, &udp(), None).out.end,
        End::Exit
    );
    // A function that returns 0 ends the script.
    let h = RecHost {
        ret: 0,
        ..RecHost::default()
    };
    let r = run_with(
        &compiled("route { forward(); $var(a) = 1; }"),
        &m,
        &udp(),
        None,
        h,
        &["a"],
    );
    assert_eq!(r.out.end, End::Exit);
    assert_eq!(r.var("a"), i(0));
}

#[test]
fn operators() {
    let m = msg(INVITE);
    let rx = udp();
    let t = |e: &str| ev(e, &m, &rx, None);
    // logic (with short-circuit: the right side is not run)
    assert_eq!(t("1 && 0"), i(0));
    assert_eq!(t("1 || 0"), i(1));
    assert_eq!(t("!0"), i(1));
    assert_eq!(t("!(1 == 1)"), i(0));
    assert_eq!(t("0 && forward()"), i(0));
    assert_eq!(t("is_method(\"BYE\") || is_method(\"INVITE\")"), i(1));
    // comparisons: integers when an operand is an integer, strings otherwise
    assert_eq!(t("10 > 9"), i(1));
    assert_eq!(t("\"10\" > \"9\""), i(0), "string order");
    assert_eq!(t("\"10\" > 9"), i(1), "an int operand makes it numeric");
    assert_eq!(t("$cs >= 314159"), i(1));
    assert_eq!(t("$cs < 314159"), i(0));
    assert_eq!(t("$cs <= 314159"), i(1));
    assert_eq!(
        t("$cs == \"314159\""),
        i(1),
        "dynamic int vs string literal compares as string of the int"
    );
    assert_eq!(t("$rU != \"bob\""), i(0));
    assert_eq!(t("\"abc\" == 1"), i(0));
    assert_eq!(
        t("\"abc\" != 1"),
        i(0),
        "a non-number compared as a number is false"
    );
    assert_eq!(t("@ruri.port == 5070"), i(1));
    // regex
    assert_eq!(t("$ru =~ \"^sip:bob@\""), i(1));
    assert_eq!(t("$ru !~ \"^sip:bob@\""), i(0));
    assert_eq!(t("method =~ \"^(INVITE|REGISTER)$\""), i(1));
    assert_eq!(t("@from.uri.host =~ \"(?i)ATLANTA\""), i(1));
    // arithmetic and concatenation
    assert_eq!(t("1 + 2 * 3"), i(7));
    assert_eq!(t("(1 + 2) * 3"), i(9));
    assert_eq!(t("7 / 2"), i(3));
    assert_eq!(t("7 % 4"), i(3));
    assert_eq!(t("7 / 0"), i(0));
    assert_eq!(t("5 - 8"), i(-3));
    assert_eq!(t("-$cs"), i(-314_159));
    assert_eq!(t("\"a\" + \"b\""), s("ab"));
    assert_eq!(t("$rU + \"@\" + $rd"), s("bob@biloxi.example.com"));
    assert_eq!(t("\"n=\" + 5"), s("n=5"));
    assert_eq!(t("\"$rU-\" + $cs"), s("bob-314159"));
    assert_eq!(t("true"), i(1));
    assert_eq!(t("false"), i(0));
    assert_eq!(t("0x10"), i(16));
    // strings with escapes
    assert_eq!(t(r#""a\tb\"c\\""#), s("a\tb\"c\\"));
    assert_eq!(t("'single'"), s("single"));
}

#[test]
fn keywords_and_constants() {
    let m = msg(INVITE);
    let v6 = rx(Transport::Tcp, "[2001:db8::5]:5090");
    let rx4 = rx(Transport::Tls, "192.0.2.1:40000");
    let t = |e: &str, rx: &siprox::proxy::Inbound| ev(e, &m, rx, None);
    assert_eq!(t("method", &rx4), s("INVITE"));
    assert_eq!(
        t("uri", &rx4),
        s("sip:bob@biloxi.example.com:5070;transport=tcp;user=phone")
    );
    assert_eq!(t("proto", &rx4), i(3));
    assert_eq!(t("proto == TLS", &rx4), i(1));
    assert_eq!(t("proto == tls", &rx4), i(1));
    assert_eq!(t("proto == \"tls\"", &rx4), i(1));
    assert_eq!(t("proto == UDP", &rx4), i(0));
    assert_eq!(t("proto == TCP", &v6), i(1));
    assert_eq!(t("proto != SCTP && proto != WS && proto != WSS", &v6), i(1));
    assert_eq!(t("src_ip", &rx4), s("192.0.2.1"));
    assert_eq!(t("src_port", &rx4), i(40000));
    assert_eq!(t("dst_ip", &rx4), s("127.0.0.1"));
    assert_eq!(t("dst_port", &rx4), i(5061));
    assert_eq!(t("af == INET", &rx4), i(1));
    assert_eq!(t("af == INET6", &v6), i(1));
    assert_eq!(t("af", &v6), i(10));
    assert_eq!(t("msg:len", &rx4), i(m.as_bytes().len() as i64));
    assert_eq!(t("msg:len > 100", &rx4), i(1));
    assert_eq!(t("from_uri", &rx4), s("sip:alice@atlanta.example.com"));
    assert_eq!(t("to_uri", &rx4), s("sip:bob@biloxi.example.com"));
    assert_eq!(t("status", &rx4), s(""));
    // networks
    assert_eq!(t("src_ip == \"192.0.2.0/24\"", &rx4), i(1));
    assert_eq!(t("src_ip != \"10.0.0.0/8\"", &rx4), i(1));
    assert_eq!(t("src_ip == \"192.0.2.1\"", &rx4), i(1));
    assert_eq!(t("src_ip == \"2001:db8::/32\"", &v6), i(1));
    assert_eq!(t("dst_ip == \"127.0.0.1\"", &rx4), i(1));
    // myself (RecHost knows 127.0.0.1 and proxy.example.net)
    assert_eq!(t("uri == myself", &rx4), i(0));
    assert_eq!(t("dst_ip == myself", &rx4), i(1));
    assert_eq!(t("@route.uri == myself", &rx4), i(1));
    assert_eq!(t("myself != @route.uri.host", &rx4), i(0));
}

#[test]
fn flags() {
    let r = run(
        "route { setflag(3); setflag(63); resetflag(3); if (isflag(63) && !isflag(3)) { $var(ok) = 1; } }",
        &msg(INVITE),
        &udp(),
        None,
    );
    assert_eq!(r.flags, 1 << 63);
    let r = run_with(
        &compiled("route { setflag(1); if (isflag(1)) { $var(ok) = 1; } }"),
        &msg(INVITE),
        &udp(),
        None,
        RecHost::default(),
        &["ok"],
    );
    assert_eq!(r.var("ok"), i(1));
}

#[test]
fn branch_flags_and_bf() {
    let r = run_with(
        &compiled(
            "route { setbflag(2); setbflag(4, 0); resetbflag(2); $var(a) = $bf; \
             $bf = 9; if (isbflagset(0) && isbflagset(3, 0) && !isbflagset(4) && !isflag(0)) { $var(ok) = 1; } \
             $bf = \"junk\"; $var(b) = $bf; }",
        ),
        &msg(INVITE),
        &udp(),
        None,
        RecHost::default(),
        &["a", "ok", "b"],
    );
    assert_eq!(r.var("a"), i(16));
    assert_eq!(r.var("ok"), i(1));
    assert_eq!(r.var("b"), i(0));
    assert_eq!(r.flags, 0);
}

/// textops' `search`: the pattern anywhere in the message (start line, headers, body),
/// case-insensitive, `^`/`$` at line ends, as Kamailio's POSIX `REG_ICASE | REG_NEWLINE`
/// (compared with Kamailio 5.6.3 in actors/tests/kamailio_diff.rs).
#[test]
fn search_matches_the_message_as_kamailio() {
    let m = msg(INVITE);
    let src = r#"route {
        $var(hdr) = search("^x-foo: *BAR");
        $var(first) = search("^INVITE sip:bob@");
        $var(body) = search("^v=0");
        $var(mid) = search("testua/[0-9]");
        $var(none) = search("^X-Nope:");
        $var(nl) = search("bar.User-Agent");
        if (search("pc33\.atlanta") && !search("nowhere")) { $var(cond) = 1; }
    }"#;
    let r = run_with(
        &compiled(src),
        &m,
        &udp(),
        None,
        RecHost::default(),
        &["hdr", "first", "body", "mid", "none", "nl", "cond"],
    );
    assert_eq!(r.var("hdr"), i(1));
    assert_eq!(r.var("first"), i(1));
    assert_eq!(r.var("body"), i(1));
    assert_eq!(r.var("mid"), i(1));
    assert_eq!(r.var("none"), i(-1));
    // `.` does not cross a line end.
    assert_eq!(r.var("nl"), i(-1));
    assert_eq!(r.var("cond"), i(1));
    for bad in [
        r#"route { search("(unclosed"); }"#,
        r#"route { search($var(x)); }"#,
        r#"route { search(); }"#,
    ] {
        assert!(siprox::script::compile(bad, "t.cfg").is_err(), "{bad}");
    }
}

#[test]
fn header_and_uri_functions() {
    let m = msg(INVITE);
    let src = r#"route {
        append_hf("X-Cn: $tls_peer_subject_cn\r\n");
        append_hf("X-Two: 2");
        if (remove_hf("X-Foo")) { $var(rm) = 1; }
        if (!remove_hf("X-Nope")) { $var(rm2) = -1; }
        remove_hf("x-foo");
        if (is_present_hf("User-Agent") && !is_present_hf("X-Nope")) { $var(p) = 1; }
        if (has_body()) { $var(b) = 1; }
        if (!has_totag()) { $var(t) = "initial"; }
        append_to_reply("Retry-After: 30\r\n");
        record_route();
        rewritehost("example.org");
        $var(after_host) = $ru;
        rewriteport("5080");
        rewriteuser("carol");
        $var(u) = $ru;
        $var(rd) = @ruri.host;
        rewritehostport("[2001:db8::1]:5062");
        $var(hp) = $ru;
        rewriteuri("sips:dave@example.net");
        $var(ru) = uri;
        $rd = "e.example";
        $rU = "erin";
        $var(final) = $ru;
        forward();
        sl_send_reply(480, "Later");
    }"#;
    let r = run_with(
        &compiled(src),
        &m,
        &udp(),
        None,
        RecHost::default(),
        &[
            "rm",
            "rm2",
            "p",
            "b",
            "t",
            "after_host",
            "u",
            "rd",
            "hp",
            "ru",
            "final",
        ],
    );
    assert_eq!(r.var("rm"), i(1));
    assert_eq!(r.var("rm2"), i(-1));
    assert_eq!(r.var("p"), i(1));
    assert_eq!(r.var("b"), i(1));
    assert_eq!(r.var("t"), s("initial"));
    assert_eq!(
        r.var("after_host"),
        s("sip:bob@example.org:5070;transport=tcp;user=phone")
    );
    assert_eq!(
        r.var("u"),
        s("sip:carol@example.org:5080;transport=tcp;user=phone")
    );
    assert_eq!(r.var("rd"), s("example.org"));
    assert_eq!(
        r.var("hp"),
        s("sip:carol@[2001:db8::1]:5062;transport=tcp;user=phone")
    );
    assert_eq!(r.var("ru"), s("sips:dave@example.net"));
    assert_eq!(r.var("final"), s("sips:erin@e.example"));
    // No TLS: `$tls_peer_subject_cn` is null, `<null>` in a string as in Kamailio.
    assert_eq!(r.edits.append_hf, "X-Cn: <null>\r\nX-Two: 2\r\n");
    assert_eq!(
        r.edits.remove_hf,
        vec!["X-Foo".to_owned(), "X-Nope".to_owned()]
    );
    assert_eq!(r.edits.reply_hf, "Retry-After: 30\r\n");
    assert!(r.edits.record_route);
    assert_eq!(r.edits.new_ruri.as_deref(), Some("sips:erin@e.example"));
    assert_eq!(
        r.host.calls,
        vec!["forward", "reply 480 Later +Retry-After: 30"]
    );
    assert_eq!(r.host.forwarded_edits.as_ref(), Some(&r.edits));

    // The edits apply through the Editor.
    let mut ed = siprox::sip::Editor::new(&m);
    r.edits.apply(&mut ed);
    let out = siprox::sip::Message::parse(ed.finish()).unwrap();
    assert_eq!(out.request_uri_str(), Some("sips:erin@e.example"));
    assert_eq!(out.header_values_by_name("X-Foo").count(), 0);
    assert_eq!(out.header_values_by_name("X-Two").next(), Some("2"));
}

#[test]
fn bad_runtime_arguments_fail_softly() {
    let m = msg(INVITE);
    let src = r#"route {
        $var(h) = "Bad Header";
        if (!append_hf($var(h))) { $var(a) = -1; }
        $var(x) = "X: 1\r\n\r\nINVITE sip:evil SIP/2.0";
        if (!append_hf($var(x))) { $var(b) = -1; }
        $var(bad) = "not a uri";
        if (!rewriteuri($var(bad))) { $var(c) = -1; }
        $var(code) = "abc";
        if (!sl_send_reply($var(code), "x")) { $var(d) = -1; }
        $var(t) = "bad host name!";
        if (!forward($var(t))) { $var(e) = -1; }
        if (!rewriteport("99999")) { $var(f) = -1; }
    }"#;
    let r = run_with(
        &compiled(src),
        &m,
        &udp(),
        None,
        RecHost::default(),
        &["a", "b", "c", "d", "e", "f"],
    );
    for v in ["a", "b", "c", "d", "e", "f"] {
        assert_eq!(r.var(v), i(-1), "{v}");
    }
    assert!(r.edits.append_hf.is_empty());
    assert!(r.host.calls.is_empty());
}

#[test]
fn forward_targets() {
    let m = msg(INVITE);
    let r = run(
        r#"route { forward("10.0.0.2:5061;transport=tls"); forward("sip:10.0.0.3"); forward("tls:gw.example.com:5061"); forward("10.0.0.4", 5070); $var(p) = 5090; forward("10.0.0.5", $var(p)); t_relay(); }"#,
        &m,
        &udp(),
        None,
    );
    assert_eq!(
        r.host.calls,
        vec![
            "forward 10.0.0.2:5061;transport=tls",
            "forward sip:10.0.0.3",
            "forward tls:gw.example.com:5061",
            "forward 10.0.0.4:5070",
            "forward 10.0.0.5:5090",
            "forward",
        ]
    );
}

#[test]
fn is_method_has_totag_loose_route() {
    let inv = msg(INVITE);
    let bye = msg(BYE);
    let t = |e: &str, m: &siprox::sip::Message| ev(e, m, &udp(), None);
    assert_eq!(t("is_method(\"INVITE|REGISTER\")", &inv), i(1));
    assert_eq!(t("is_method(\"invite\")", &inv), i(1));
    assert_eq!(t("is_method(\"BYE|CANCEL\")", &inv), i(-1));
    assert_eq!(t("has_totag()", &bye), i(1));
    assert_eq!(t("has_totag()", &inv), i(-1));
    // BYE's top Route is 127.0.0.1 (myself): loose routing applies.
    let r = run(
        "route { if (has_totag() && loose_route()) { forward(); } }",
        &bye,
        &udp(),
        None,
    );
    assert!(r.edits.loose_routed);
    assert_eq!(r.host.calls, vec!["forward"]);
    // INVITE's Route names proxy.example.net: siprox for the default test host...
    assert_eq!(t("loose_route()", &inv), i(1));
    // ...and a preloaded Route set (-3) for a siprox that is only 127.0.0.1.
    let h = RecHost {
        myself: vec!["127.0.0.1".into()],
        ..RecHost::default()
    };
    let r = run_with(
        &compiled("route { $var(r) = loose_route(); }"),
        &inv,
        &udp(),
        None,
        h,
        &["r"],
    );
    assert_eq!(r.var("r"), i(-3));
    assert!(!r.edits.loose_routed);
    assert_eq!(t("loose_route()", &msg(REGISTER)), i(-1));
    assert_eq!(
        ev_reply("is_method(\"INVITE\")", &msg(REPLY)),
        i(1),
        "CSeq method for replies"
    );
}

#[test]
fn logging_levels_and_disabled_levels() {
    let m = msg(INVITE);
    let sc = compiled(
        r#"route { log("plain"); log(1, "notice"); log("L_WARN", "warn"); xlog("default err $rm"); xlog("L_DBG", "dbg $rm"); xlogl("L_INFO", "info"); }"#,
    );
    let r = run_with(&sc, &m, &udp(), None, RecHost::default(), &[]);
    assert_eq!(
        r.host.logs,
        vec![
            (Level::Dbg, "plain".to_owned()),
            (Level::Notice, "notice".to_owned()),
            (Level::Warn, "warn".to_owned()),
            (Level::Err, "default err INVITE".to_owned()),
            (Level::Dbg, "dbg INVITE".to_owned()),
            (Level::Info, "info".to_owned()),
        ]
    );
    let h = RecHost {
        max_level: Level::Notice,
        ..RecHost::default()
    };
    let r = run_with(&sc, &m, &udp(), None, h, &[]);
    assert_eq!(r.host.logs.len(), 3);
}

#[test]
fn registrar_rpc_auth_and_tls_functions_are_delegated() {
    let reg = msg(REGISTER);
    let src = r#"route {
        if (!www_authorize("example.com", "subscriber")) { www_challenge("example.com", "0"); exit; }
        consume_credentials();
        proxy_authorize("", "subscriber");
        proxy_challenge("example.com", "1");
        if (is_method("REGISTER")) { save("location"); save("location", "0x01"); exit; }
    }"#;
    let r = run(src, &reg, &udp(), None);
    assert_eq!(
        r.host.calls,
        vec![
            "auth WwwAuthorize example.com subscriber",
            "auth ConsumeCredentials  ",
            "auth ProxyAuthorize  subscriber",
            "auth ProxyChallenge example.com 1",
            "save location",
            "save location 0x01",
        ]
    );
    assert_eq!(r.out.replied, Some(407));
    let h = RecHost {
        ret: -1,
        ..RecHost::default()
    };
    let r = run_with(&compiled(src), &reg, &udp(), None, h, &[]);
    assert_eq!(
        r.host.calls,
        vec![
            "auth WwwAuthorize example.com subscriber",
            "auth WwwChallenge example.com 0"
        ]
    );
    assert_eq!(r.out.end, End::Exit);

    // lookup rewrites the Request-URI (host side), 404 when it fails.
    let src = r#"route { if (!lookup("location")) { sl_send_reply("404", "Not Found"); exit; } forward(); }"#;
    let inv = msg(INVITE);
    let h = RecHost {
        lookup_ruri: Some("sip:alice@192.0.2.4:5062".into()),
        ..RecHost::default()
    };
    let r = run_with(&compiled(src), &inv, &udp(), None, h, &[]);
    assert_eq!(r.host.calls, vec!["lookup location", "forward"]);
    assert_eq!(
        r.edits.new_ruri.as_deref(),
        Some("sip:alice@192.0.2.4:5062")
    );
    let r = run(src, &inv, &udp(), None);
    assert_eq!(r.host.calls, vec!["lookup location", "reply 404 Not Found"]);

    let r = run(
        r#"route { if (@rpc.method == "core.kill" && is_peer_verified()) { dispatch_rpc(); } }"#,
        &inv,
        &udp(),
        None,
    );
    assert!(r.host.calls.is_empty());
    let tls_rx = rx(Transport::Tls, "192.0.2.1:4000");
    let t = tls(Some("admin"));
    assert_eq!(ev("is_peer_verified()", &inv, &tls_rx, Some(&t)), i(1));
    assert_eq!(
        ev("is_peer_verified()", &inv, &tls_rx, Some(&tls(None))),
        i(-1)
    );
    assert_eq!(ev("is_peer_verified()", &inv, &udp(), None), i(-1));
    let r = run("route { dispatch_rpc(); }", &inv, &tls_rx, Some(&t));
    assert_eq!(r.host.calls, vec!["dispatch_rpc"]);
}

#[test]
fn max_forwards_and_sanity_check() {
    let no_mf = msg("OPTIONS sip:127.0.0.1 SIP/2.0\nVia: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKo\nFrom: <sip:a@b>;tag=1\nTo: <sip:c@d>\nCall-ID: o1\nCSeq: 1 OPTIONS\nContent-Length: 0\n\n");
    let zero = msg("OPTIONS sip:127.0.0.1 SIP/2.0\nVia: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKo\nMax-Forwards: 0\nFrom: <sip:a@b>;tag=1\nTo: <sip:c@d>\nCall-ID: o1\nCSeq: 1 OPTIONS\nContent-Length: 0\n\n");
    let src = r#"route { if (!mf_process_maxfwd_header("10")) { sl_send_reply("483", "Too Many Hops"); exit; } $var(ok) = 1; }"#;
    let r = run_with(
        &compiled(src),
        &no_mf,
        &udp(),
        None,
        RecHost::default(),
        &["ok"],
    );
    assert_eq!(r.edits.max_forwards, Some(10));
    assert_eq!(r.var("ok"), i(1));
    let r = run(src, &zero, &udp(), None);
    assert_eq!(r.host.calls, vec!["reply 483 Too Many Hops"]);
    let r = run(src, &msg(INVITE), &udp(), None);
    assert_eq!(r.edits.max_forwards, None);

    let bad = msg("INVITE sip:bob@example.com SIP/2.0\nVia: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKo\nFrom: <sip:a@b>;tag=1\nTo: <sip:c@d>\nCall-ID: o1\nCSeq: 1 BYE\nContent-Length: 0\n\n");
    let r = run(
        "route { if (!sanity_check()) { exit; } forward(); }",
        &bad,
        &udp(),
        None,
    );
    assert_eq!(r.host.calls.len(), 1);
    assert!(
        r.host.calls[0].starts_with("reply 400"),
        "{:?}",
        r.host.calls
    );
    assert_eq!(r.out.replied, Some(400));
    let r = run(
        "route { if (!sanity_check()) { exit; } forward(); }",
        &msg(INVITE),
        &udp(),
        None,
    );
    assert_eq!(r.host.calls, vec!["forward"]);
}

#[test]
fn recursion_limit_is_a_runtime_error() {
    let r = run(
        "route { route(A); forward(); } route[A] { route(B); } route[B] { route(A); }",
        &msg(INVITE),
        &udp(),
        None,
    );
    assert_eq!(
        r.out.end,
        End::Error(RunError::RecursionLimit {
            route: "A".into(),
            limit: MAX_ROUTE_DEPTH
        })
    );
    assert!(r.out.is_error());
    assert!(r.host.calls.is_empty());
    assert_eq!(r.host.logs.len(), 1);
    assert_eq!(r.host.logs[0].0, Level::Err);
    assert!(r.host.logs[0].1.contains("recursion"), "{:?}", r.host.logs);
}

#[test]
fn step_limit_ends_infinite_loops() {
    let r = run("route { while (1) { } }", &msg(INVITE), &udp(), None);
    assert!(matches!(r.out.end, End::Error(RunError::StepLimit { .. })));
    let r = run(
        "route { $var(i) = 0; while (1) { $var(i) = $var(i) + 1; } }",
        &msg(INVITE),
        &udp(),
        None,
    );
    assert!(matches!(r.out.end, End::Error(RunError::StepLimit { .. })));
}

#[test]
fn reply_route_event_routes_and_named_blocks() {
    let src = r#"
    route { forward(); }
    onreply_route { if (status >= 180 && status < 200) { $var(prov) = 1; drop; } }
    onreply_route[R1] { $var(r1) = 1; }
    failure_route[F1] { $var(f) = 1; }
    branch_route[B1] { $var(b) = 1; }
    event_route[tls:connection-in] {
        if (@tls.peer.verified != 1 || $tls_peer_subject_cn == "Mallory") { xlog("L_WARN", "refusing $si cn=$tls_peer_subject_cn"); drop; }
    }
    event_route[tls:connection-closed] { xlog("L_INFO", "closed $si"); }
    "#;
    let sc = compiled(src);
    assert!(sc.has_request_route() && sc.has_reply_route());
    assert!(sc.has_event("tls:connection-in") && sc.has_event("tls:connection-closed"));
    assert!(
        sc.has(RouteKind::Reply, "R1")
            && sc.has(RouteKind::Failure, "F1")
            && sc.has(RouteKind::Branch, "B1")
    );
    assert!(!sc.has_route("R1"));
    let reply = msg(REPLY);
    let r = run_with(&sc, &reply, &udp(), None, RecHost::default(), &["prov"]);
    assert_eq!(r.out.end, End::Drop);
    assert_eq!(r.var("prov"), i(1));

    let tls_rx = rx(Transport::Tls, "192.0.2.1:4000");
    let mut host = RecHost::default();
    let mallory = tls(Some("Mallory"));
    let mut ctx = MsgCtx::event(&tls_rx, Some(&mallory));
    let out = sc
        .run_event("tls:connection-in", &mut ctx, &mut host)
        .unwrap();
    assert_eq!(out.end, End::Drop);
    assert_eq!(
        host.logs,
        vec![(Level::Warn, "refusing 192.0.2.1 cn=Mallory".to_owned())]
    );
    let bob = tls(Some("Bob"));
    let mut ctx = MsgCtx::event(&tls_rx, Some(&bob));
    assert_eq!(
        sc.run_event("tls:connection-in", &mut ctx, &mut host)
            .unwrap()
            .end,
        End::Finished(1)
    );
    let mut ctx = MsgCtx::event(&tls_rx, Some(&bob));
    assert!(sc.run_event("tls:nope", &mut ctx, &mut host).is_none());
    // SIP functions in an event route fail softly (no message).
    let e = compiled("event_route[tls:connection-in] { if (!forward()) { $var(x) = 1; } sl_send_reply(403, \"x\"); }");
    let mut ctx = MsgCtx::event(&tls_rx, None);
    let out = e
        .run_event("tls:connection-in", &mut ctx, &mut host)
        .unwrap();
    assert_eq!(e.var(&ctx, "x"), Some(i(1)));
    assert_eq!(out.replied, None);
    // failure_route runs through run_named.
    let inv = msg(INVITE);
    let mut ctx = MsgCtx::new(&inv, &tls_rx, None);
    let out = sc
        .run_named(RouteKind::Failure, "F1", &mut ctx, &mut host)
        .unwrap();
    assert_eq!(out.end, End::Finished(1));
    assert_eq!(sc.var(&ctx, "f"), Some(i(1)));
    // No main route: nothing happens.
    let only_reply = compiled("onreply_route { drop; }");
    let mut ctx = MsgCtx::new(&inv, &tls_rx, None);
    let out = only_reply.run_request(&mut ctx, &mut host);
    assert_eq!(out.end, End::Finished(1));
    assert!(!out.forwarded);
}

#[test]
fn vars_are_per_message() {
    let sc = compiled("route { $var(n) = $var(n) + 1; }");
    let m = msg(INVITE);
    for _ in 0..3 {
        let r = run_with(&sc, &m, &udp(), None, RecHost::default(), &["n"]);
        assert_eq!(r.var("n"), i(1));
    }
}

#[test]
fn compiled_scripts_are_shared_across_threads() {
    let sc = compiled(SEED);
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let sc = sc.clone();
            std::thread::spawn(move || {
                let m = msg(INVITE);
                let rx = rx(Transport::Tls, "192.0.2.1:4000");
                let t = tls(Some("Mallory"));
                run_with(&sc, &m, &rx, Some(&t), RecHost::default(), &[])
                    .out
                    .end
            })
        })
        .collect();
    for h in handles {
        assert_eq!(h.join().unwrap(), End::Drop);
    }
    let _ = compile("route {}", "x").unwrap();
}

#[test]
fn worst_case_nesting_and_recursion_fit_a_small_stack() {
    // The deepest nesting the compiler accepts, inside a route that recurses to the limit,
    // run on a thread with a 2 MiB stack (tokio's default for workers) in a debug build.
    let ifs = "if (1) ".repeat(28);
    let expr = format!("{}$var(x) + 1{}", "(".repeat(28), ")".repeat(28));
    let src =
        format!("route {{ route(A); }} route[A] {{ {ifs} {{ $var(x) = {expr}; route(A); }} }}");
    let sc = compiled(&src);
    let h = std::thread::Builder::new()
        .stack_size(2 << 20)
        .spawn(move || {
            let m = msg(INVITE);
            run_with(&sc, &m, &udp(), None, RecHost::default(), &[])
                .out
                .end
        })
        .unwrap();
    assert!(matches!(
        h.join().unwrap(),
        End::Error(RunError::RecursionLimit { .. } | RunError::TooDeep { .. })
    ));
}

#[test]
fn worst_case_recursion_through_function_arguments_fits_a_small_stack() {
    let open = "(".repeat(30);
    let close = ")".repeat(30);
    for body in [
        format!("log({open}route(A){close} + \"\");"),
        format!("sl_send_reply({open}route(A){close}, \"x\");"),
        format!("switch ({open}route(A){close}) {{ default: forward(); }}"),
        format!("while ({open}route(A){close}) {{ break; }}"),
    ] {
        let src = format!("route {{ route(A); }} route[A] {{ {body} }}");
        let sc = compiled(&src);
        let h = std::thread::Builder::new()
            .stack_size(2 << 20)
            .spawn(move || {
                let m = msg(INVITE);
                run_with(&sc, &m, &udp(), None, RecHost::default(), &[])
                    .out
                    .end
            })
            .unwrap();
        let end = h.join().unwrap();
        assert!(
            matches!(
                end,
                End::Error(RunError::RecursionLimit { .. } | RunError::TooDeep { .. })
            ),
            "{end:?}"
        );
    }
}

/// Kamailio's preprocessor: defines replace names in the script body (not inside strings or
/// pseudo-variable names), `#!ifdef`/`#!ifndef`/`#!else`/`#!endif` nest, `#!trydef` keeps
/// an earlier define, `#!redefine` replaces it, `#!subst` rewrites string literals after it.
#[test]
fn preprocessor() {
    let src = r#"#!KAMAILIO
#!define WITH_AUTH
#!define FLT_ACC 1
#!define CODE "403"
#!define TWICE FLT_ACC + FLT_ACC
#!trydef FLT_ACC 7
#!trydef FLT_NAT 5
#!define LONG 10 + \
    20
#!ifdef WITH_AUTH
  #!ifndef WITH_TLS
    #!define MODE "auth"
  #!else
    #!define MODE "tls"
  #!endif
#!else
  #!define MODE "none"
  this is not compiled at all {{{
#!endif
!!ifdef WITH_NOTHING
  #!define MODE "unreachable"
!!endif
#!subst "/example\.ORG/example.net/gi"
#!substdefs "!DOMAIN!sip.example.com!"
route {
    setflag(FLT_ACC);
    $var(code) = CODE;
    $var(twice) = TWICE;
    $var(nat) = FLT_NAT;
    $var(long) = LONG;
    $var(mode) = MODE;
    $var(s) = "a.Example.org b.example.org FLT_ACC";
    $var(d) = DOMAIN;
    $var(ds) = "DOMAIN";
    $var(FLT_ACC) = 3;
    route(LATER);
}
#!redefine FLT_ACC 9
route[LATER] { $var(later) = FLT_ACC; }
"#;
    let script = compiled(src);
    let r = run_with(
        &script,
        &msg(INVITE),
        &udp(),
        None,
        RecHost::default(),
        &[
            "code", "twice", "nat", "long", "mode", "s", "d", "ds", "FLT_ACC", "later",
        ],
    );
    assert_eq!(r.flags, 1 << 1);
    assert_eq!(r.var("code"), s("403"));
    assert_eq!(r.var("twice"), i(2));
    assert_eq!(r.var("nat"), i(5));
    assert_eq!(r.var("long"), i(30));
    assert_eq!(r.var("mode"), s("auth"));
    assert_eq!(r.var("s"), s("a.example.net b.example.net FLT_ACC"));
    assert_eq!(r.var("d"), s("sip.example.com"));
    assert_eq!(r.var("ds"), s("sip.example.com"));
    assert_eq!(r.var("FLT_ACC"), i(3));
    // `#!redefine` applies to what follows it only.
    assert_eq!(r.var("later"), i(9));
}

/// Transformations on pseudo-variables, alone and chained, in expressions and in strings,
/// with Kamailio's results; where Kamailio gives null so does siprox (0 in a `$var`).
#[test]
fn transformations() {
    let m = msg(INVITE);
    let e = |x: &str| ev(x, &m, &udp(), None);
    assert_eq!(e("$(fu{uri.user})"), s("alice"));
    assert_eq!(e("$(fu{uri.user}{s.toupper})"), s("ALICE"));
    assert_eq!(e("$(fu{uri.host}{s.len})"), i(19));
    assert_eq!(e("$(ru{uri.param,transport})"), s("tcp"));
    assert_eq!(e("$(ru{uri.param,TRANSPORT}{s.toupper})"), s("TCP"));
    assert_eq!(e("$(ru{uri.param,nope})"), s(""));
    assert_eq!(e("$(ru{uri.param,nope}{s.len})"), i(0));
    assert_eq!(e("$(ru{uri.port})"), i(5070));
    assert_eq!(
        e("$(hdr(From){nameaddr.uri})"),
        s("sip:alice@atlanta.example.com")
    );
    assert_eq!(e("$(hdr(From){nameaddr.name})"), s("\"Alice\" "));
    assert_eq!(
        e("$(hdr(From){nameaddr.uri}{uri.user}{s.substr,1,3})"),
        s("lic")
    );
    assert_eq!(
        e("$(hdr(From){s.select,1,;}{param.value,tag})"),
        s("1928301774")
    );
    assert_eq!(e("$(hdr(From){s.select,1,;}{param.value,nope})"), s(""));
    assert_eq!(e("$(hdr(From){s.select,1,;})"), s("tag=1928301774"));
    assert_eq!(
        e("$(hdr(From){s.select,-1,;}{param.value,tag}{s.strip,4})"),
        s("301774")
    );
    assert_eq!(e("$(ci{s.select,0,@})"), s("a84b4c76e66710"));
    assert_eq!(e("$(ci{s.select,5,@})"), s(""));
    assert_eq!(e("$(rm{s.tolower})"), s("invite"));
    assert_eq!(e("$(cs{s.len})"), i(6));
    assert_eq!(e("$(var(nothing){s.len})"), i(1));
    assert_eq!(e("$(hdr(X-Missing){s.len})"), i(0));
    // Null (not a URI, out of range) assigned to a $var is 0, as in Kamailio.
    assert_eq!(e("$(rm{uri.user})"), i(0));
    assert_eq!(e("$(rm{s.substr,10,1})"), i(0));
    assert_eq!(
        e("\"user=$(fu{uri.user}{s.tolower}) host=$(ru{uri.host})\""),
        s("user=alice host=biloxi.example.com")
    );
    assert_eq!(e("$(fu{uri.user}{s.len}) + 1"), i(6));
    let r = run(
        "route { if ($(ru{uri.param,user}) == \"phone\" && $(fU{s.len}) == 5) { setflag(2); } }",
        &m,
        &udp(),
        None,
    );
    assert_eq!(r.flags, 1 << 2);
    let r = run_with(
        &compiled(
            r#"route {
    $var(tel) = "tel:+1-555-0100;phone-context=example.com";
    $var(v6) = "sip:alice@[2001:db8::9]:5062;transport=tls";
    $var(pad) = "  x y \t";
    $var(a) = $(var(tel){uri.user});
    $var(b) = $(var(tel){uri.param,phone-context});
    $var(c) = $(var(v6){uri.host});
    $var(d) = $(var(v6){uri.port});
    $var(e) = $(var(pad){s.trim});
    $var(f) = $(var(pad){s.striptail,2});
    $var(g) = $(var(pad){s.trim}{s.len});
    $var(h) = $(var(v6){uri.user}{s.int});
    $var(k) = $(rU{uri.user});
    $var(l) = $(ru{uri.port}{s.len});
}"#,
        ),
        &m,
        &udp(),
        None,
        RecHost::default(),
        &["a", "b", "c", "d", "e", "f", "g", "h", "k", "l"],
    );
    assert_eq!(r.var("a"), s("+1-555-0100"));
    assert_eq!(
        r.var("b"),
        s(""),
        "Kamailio 5.6 gives \"\" for a tel: parameter (kamailio_diff: $(tu{{uri.param,x}}))"
    );
    assert_eq!(r.var("c"), s("[2001:db8::9]"));
    assert_eq!(r.var("d"), i(5062));
    assert_eq!(r.var("e"), s("x y"));
    assert_eq!(r.var("f"), s("  x y"));
    assert_eq!(r.var("g"), i(3));
    assert_eq!(r.var("h"), i(0), "null: 0 in a $var");
    assert_eq!(r.var("k"), i(0), "a bare user is not a URI: null");
    assert_eq!(r.var("l"), i(4));
}

/// What Debian's stock kamailio.cfg uses and `siprox import` carries over: `$rc`,
/// `$avp`, `$null`, `t_is_set`, `sl_reply_error`, `isflagset`, `xdbg`, `sanity_check` with
/// Kamailio's masks, `force_rport`, `set_reply_no_connect`, `t_precheck_trans`,
/// `t_is_canceled`.
#[test]
fn kamailio_stock_config_functions() {
    let m = msg(INVITE);
    // $rc: the last function's or route's return code.
    let r = run_with(
        &compiled(
            "route { route(NEG); $var(a) = $rc; is_method(\"INVITE\"); $var(b) = $retcode; } \
             route[NEG] { return -3; }",
        ),
        &m,
        &udp(),
        None,
        RecHost::default(),
        &["a", "b"],
    );
    assert_eq!((r.var("a"), r.var("b")), (i(-3), i(1)));
    // $avp: null until set (0 when assigned to a $var), so `== $null` holds for the unset.
    assert_eq!(ev("$avp(x)", &m, &udp(), None), i(0));
    let r = run_with(
        &compiled(
            "route { if ($avp(x) == $null) { $var(a) = 1; } $avp(s:x) = $rU; \
             if ($avp(x) != $null) { $var(b) = $avp(x); } $du = \"sip:h\"; $du = $null; \
             if ($du == $null) { $var(c) = 1; } }",
        ),
        &m,
        &udp(),
        None,
        RecHost::default(),
        &["a", "b", "c"],
    );
    assert_eq!(r.var("a"), i(1));
    assert_eq!(r.var("b"), s("bob"));
    assert_eq!(r.var("c"), i(1));
    assert!(r.edits.dst_uri.is_none());
    // t_is_set: what this run armed.
    let r = run_with(
        &compiled(
            "route { if (!t_is_set(\"failure_route\")) { t_on_failure(\"F\"); } \
             if (t_is_set(\"failure_route\")) { $var(a) = 1; } \
             if (!t_is_set(\"branch_route\")) { $var(b) = 1; } } failure_route[F] { }",
        ),
        &m,
        &udp(),
        None,
        RecHost::default(),
        &["a", "b"],
    );
    assert_eq!((r.var("a"), r.var("b")), (i(1), i(1)));
    // sl_reply_error: 500, once, and not after a final reply.
    let r = run(
        "route { sl_reply_error(); sl_reply_error(); }",
        &m,
        &udp(),
        None,
    );
    assert_eq!(r.host.calls, vec!["reply 500 Server Internal Error"]);
    let r = run(
        "route { sl_send_reply(\"404\", \"Nope\"); sl_reply_error(); }",
        &m,
        &udp(),
        None,
    );
    assert_eq!(r.host.calls, vec!["reply 404 Nope"]);
    // The rest: flags, levels, masks, and the functions siprox answers for itself.
    let r = run_with(
        &compiled(
            "route { setflag(5); if (isflagset(5)) { $var(a) = 1; } xdbg(\"dbg $rm\\n\"); \
             xinfo(\"info\\n\"); if (sanity_check(\"17895\", \"7\")) { $var(b) = 1; } \
             force_rport(); set_reply_no_connect(); \
             if (!t_precheck_trans() && !t_is_canceled()) { $var(c) = 1; } }",
        ),
        &m,
        &udp(),
        None,
        RecHost::default(),
        &["a", "b", "c"],
    );
    assert_eq!((r.var("a"), r.var("b"), r.var("c")), (i(1), i(1), i(1)));
    assert!(r.edits.force_rport && r.edits.reply_no_connect);
    for bad in [
        "route { t_is_set(\"nope\"); }",
        "route { sanity_check($var(x)); }",
        "route { $avp(1bad-name) = 1; }",
        "route { $avp(i:1) = 1; }",
    ] {
        assert!(compile(bad, "t.cfg").is_err(), "{bad} compiled");
    }
}

#[test]
fn avp_and_sht_inside_strings() {
    // No table in this host: $sht is null, `<null>` in a string as in Kamailio.
    let r = run_with(
        &compiled(
            "route { $avp(a) = \"x\"; $var(s) = \"[$avp(a)][$sht(t=>$var(k))][$sht(t=>k)]\"; }",
        ),
        &msg(INVITE),
        &udp(),
        None,
        RecHost::default(),
        &["s"],
    );
    assert_eq!(r.var("s"), s("[x][<null>][<null>]"));
}

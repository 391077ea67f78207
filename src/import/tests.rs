use super::*;

struct Fs(Vec<(&'static str, &'static str)>);

impl Files for Fs {
    fn read(&self, path: &str) -> Option<String> {
        self.0
            .iter()
            .find(|(p, _)| *p == path)
            .map(|(_, t)| (*t).to_owned())
    }
    fn exists(&self, path: &str) -> bool {
        self.0.iter().any(|(p, _)| *p == path)
    }
}

fn run(cfg: &str, tls: Option<&str>, fs: &Fs) -> Import {
    kamailio(
        &Options {
            cfg: Source {
                name: "/etc/kamailio/kamailio.cfg",
                text: cfg,
            },
            tls: tls.map(|t| Source {
                name: "/etc/kamailio/tls.cfg",
                text: t,
            }),
            defines: Vec::new(),
        },
        fs,
    )
}

fn file<'a>(imp: &'a Import, path: &str) -> &'a str {
    imp.files
        .iter()
        .find(|(p, _)| p == path)
        .map(|(_, t)| t.as_str())
        .unwrap_or_else(|| panic!("no {path} in {:?}", imp.files))
}

const CFG: &str = r#"#!KAMAILIO
#!define WITH_TLS
#!define DBGLEVEL 3
#!ifdef WITH_MYSQL
loadmodule "db_mysql.so"
#!endif
import_file "kamailio-local.cfg"
debug=DBGLEVEL
listen=udp:127.0.0.1:5070
listen=tls:127.0.0.1:5071 advertise sip.example.com:5061
alias="sip.example.com"
children=8
tcp_connection_lifetime=3605
#!ifdef WITH_TLS
enable_tls=yes
#!endif
loadmodule "tm.so"
loadmodule "acc.so"
modparam("registrar", "max_expires", 3600)
modparam("acc", "log_extra",
	"src_user=$fU;src_domain=$fd;"
	"dst_user=$rU")
modparam("tls", "config", "/etc/kamailio/tls.cfg")

/* main route */
request_route {
	if (is_method("OPTIONS")) {
		sl_send_reply("200", "OK");   # a comment { with a brace
		exit;
	}
	route(NEXT);
}

route[NEXT] {
	sl_send_reply("404", "Not here");
}
"#;

const TLS: &str = "\
[server:default]
method = TLSv1.2+
verify_certificate = yes
require_certificate = no
private_key = /etc/kamailio/key.pem
certificate = /etc/kamailio/cert.pem
ca_list = /etc/kamailio/ca.pem

[client:default]
verify_certificate = yes
require_certificate = yes

[server:127.0.0.1:5081]
certificate = /etc/kamailio/other.pem
private_key = /etc/kamailio/other.key
verify_certificate = no

[client:192.0.2.7:5061]
server_name = carrier.test
ca_list = /etc/kamailio/missing-ca.pem
";

fn fs() -> Fs {
    Fs(vec![
        ("/etc/kamailio/key.pem", ""),
        ("/etc/kamailio/cert.pem", ""),
        ("/etc/kamailio/ca.pem", ""),
        ("/etc/kamailio/other.pem", ""),
        ("/etc/kamailio/other.key", ""),
        ("/etc/kamailio/tls.cfg", TLS),
    ])
}

#[test]
fn globals_become_keys_and_every_other_line_has_a_reason() {
    let imp = run(CFG, None, &fs());
    let main = file(&imp, MAIN_TOML);
    let parsed: toml::Table = main.parse().expect("valid TOML");
    let listens = parsed["listen"].as_array().expect("listen");
    assert_eq!(listens.len(), 2, "{main}");
    assert_eq!(listens[0]["proto"].as_str(), Some("udp"));
    assert_eq!(listens[0]["addr"].as_str(), Some("127.0.0.1:5070"));
    assert_eq!(listens[1]["proto"].as_str(), Some("tls"));
    assert_eq!(
        listens[1]["advertise"].as_str(),
        Some("sip.example.com:5061")
    );
    assert_eq!(parsed["log"]["level"].as_str(), Some("debug"));
    assert_eq!(
        parsed["connections"]["idle_timeout"].as_str(),
        Some("3605s")
    );
    assert_eq!(parsed["registrar"]["max_expires"].as_integer(), Some(3600));
    assert_eq!(parsed["script"]["file"].as_str(), Some(SCRIPT_PATH));
    // tls.cfg, read through the modparam.
    assert_eq!(parsed["tls"]["verify_client"].as_str(), Some("optional"));
    assert_eq!(
        parsed["tls"]["certificate"].as_str(),
        Some("/etc/kamailio/cert.pem")
    );
    assert_eq!(parsed["tls"]["min_version"].as_str(), Some("1.2"));
    assert_eq!(parsed["tls"]["verify_server"].as_bool(), Some(true));

    let aliases: toml::Table = file(&imp, "conf.d/domains/aliases.toml").parse().unwrap();
    assert_eq!(
        aliases["domains"]["aliases"]["names"].as_array().unwrap()[0].as_str(),
        Some("sip.example.com")
    );
    let srv: toml::Table = file(&imp, "conf.d/domains/tls-server-127.0.0.1-5081.toml")
        .parse()
        .unwrap();
    let server = &srv["domains"]["tls-server-127.0.0.1-5081"]["server"];
    assert_eq!(
        server["listen"].as_array().unwrap()[0].as_str(),
        Some("127.0.0.1:5081")
    );
    assert_eq!(server["verify_client"].as_str(), Some("off"));

    let skipped: Vec<String> = imp.skipped.iter().map(ToString::to_string).collect();
    let has = |needle: &str| skipped.iter().any(|s| s.contains(needle));
    assert!(
        has(":12: children=8: siprox runs one worker thread"),
        "{skipped:#?}"
    );
    assert!(
        has(":18: loadmodule \"acc.so\": no accounting module"),
        "{skipped:#?}"
    );
    // The three-line modparam is one statement, reported at its first line.
    assert!(has(":20: modparam(\"acc\", \"log_extra\","), "{skipped:#?}");
    // The client profile whose CA file is missing is left out, and says why.
    assert!(has(
        "/etc/kamailio/missing-ca.pem not found: this profile is left out"
    ));
    assert!(!imp
        .files
        .iter()
        .any(|(p, _)| p.contains("tls-client-192.0.2.7")));
    // Inactive lines are counted, not listed.
    assert_eq!(imp.inactive, 1);
    assert!(!has("db_mysql"));
    // The missing import_file is carried over as Kamailio treats it.
    assert!(imp
        .carried
        .iter()
        .any(|l| l.text.starts_with("import_file") && l.why.contains("skipped, as Kamailio does")));
}

#[test]
fn the_script_keeps_routes_and_directives_on_their_lines() {
    let imp = run(CFG, Some(TLS), &fs());
    let script = file(&imp, SCRIPT_PATH);
    let lines: Vec<&str> = script.lines().collect();
    // The original, line for line.
    let orig: Vec<&str> = CFG.lines().collect();
    assert_eq!(lines.len(), orig.len(), "{script}");
    for (i, o) in orig.iter().enumerate() {
        let l = lines[i];
        assert!(
            l == *o || l == format!("# [import] {o}"),
            "line {}: {l:?} vs {o:?}",
            i + 1
        );
    }
    assert!(script.contains("\nrequest_route {\n"));
    assert!(script.contains("\n# [import] loadmodule \"tm.so\"\n"));
    assert!(script.contains("\n#!define WITH_TLS\n"));
    // And it compiles as a siprox script.
    crate::script::compile(script, SCRIPT_PATH).expect("the imported routes compile");
}

#[test]
fn no_listen_means_every_address_and_defines_from_the_command_line_apply() {
    let cfg = "#!ifdef WITH_TLS\nenable_tls=yes\n#!endif\nrequest_route {\n\tdrop;\n}\n";
    let imp = kamailio(
        &Options {
            cfg: Source {
                name: "kamailio.cfg",
                text: cfg,
            },
            tls: None,
            defines: vec![("WITH_TLS".into(), String::new())],
        },
        &Fs(vec![]),
    );
    let main: toml::Table = file(&imp, MAIN_TOML).parse().unwrap();
    let addrs: Vec<(&str, &str)> = main["listen"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| (l["proto"].as_str().unwrap(), l["addr"].as_str().unwrap()))
        .collect();
    assert_eq!(
        addrs,
        [
            ("udp", "0.0.0.0:5060"),
            ("tcp", "0.0.0.0:5060"),
            ("tls", "0.0.0.0:5061")
        ]
    );
    let script = file(&imp, SCRIPT_PATH);
    assert!(script.contains("#!define WITH_TLS \n") || script.contains("#!define WITH_TLS\n"));
    crate::script::compile(script, SCRIPT_PATH).expect("compiles");
}

#[test]
fn garbage_never_panics() {
    for cfg in [
        "listen=",
        "listen=udp:eth0:5060",
        "modparam(\"a\"",
        "modparam(",
        "\u{e9}=\u{e9}",
        "route[X] {\n/* {{{ */ }\n",
        "#!ifdef\n#!else\n#!else\n#!endif\n#!endif",
        "include_file \"nope.cfg\"",
        "\"unterminated",
        "debug=\"x",
        "listen=[::1]:5060\nlisten=tls:[::1]\nenable_tls=1",
    ] {
        let imp = run(
            cfg,
            Some("[server:x]\nfoo\n[client:any]\nmethod=SSLv2\n= \n"),
            &Fs(vec![]),
        );
        assert!(imp.files.iter().any(|(p, _)| p == MAIN_TOML));
        let _: toml::Table = file(&imp, MAIN_TOML).parse().expect("valid TOML");
    }
}

#[test]
fn htable_modparams_become_tables() {
    let cfg = "loadmodule \"htable.so\"\nmodparam(\"htable\", \"htable\", \"ipban=>size=8;autoexpire=300;\")\nrequest_route {\n\tif ($sht(ipban=>$si) != $null) { exit; }\n}\n";
    let imp = run(cfg, None, &Fs(vec![]));
    let main: toml::Table = file(&imp, MAIN_TOML).parse().unwrap();
    assert_eq!(
        main["htables"]["ipban"]["autoexpire"].as_str(),
        Some("300s")
    );
    assert!(imp.skipped.is_empty(), "{:?}", imp.skipped);
}

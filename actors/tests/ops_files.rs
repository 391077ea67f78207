//! The operations files against the code they describe: every `siprox_` metric that
//! deploy/grafana/siprox.json and deploy/prometheus/alerts.yml name is exported on `/metrics`
//! by a running siprox (a cluster node, so that the cluster families are there too), and
//! deploy/systemd/siprox.service's `LimitNOFILE=` covers what the packaged configuration
//! needs with the most workers siprox accepts.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::tree::Tree;
use siprox_testkit::pki::Spec;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Every `siprox_...` name in `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (i, _) in text.match_indices("siprox_") {
        if text[..i]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            continue;
        }
        let name: String = text[i..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        // `siprox_` alone is prose ("every siprox_ metric"), not a name.
        if name.len() > "siprox_".len() {
            out.insert(name);
        }
    }
    out
}

/// The sample names of an OpenMetrics exposition (`siprox_messages_total`, ...): those with
/// a sample, and those of every declared family (a labelled family with no sample yet, such as
/// replies by code before the first reply, is exported all the same).
fn exported(metrics: &str) -> BTreeSet<String> {
    let mut names: BTreeSet<String> = metrics
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect();
    for l in metrics.lines() {
        let mut w = l.split_whitespace();
        if let (Some("#"), Some("TYPE"), Some(name), Some(kind)) =
            (w.next(), w.next(), w.next(), w.next())
        {
            names.insert(match kind {
                "counter" => format!("{name}_total"),
                _ => name.to_owned(),
            });
        }
    }
    names
}

#[test]
fn every_metric_of_the_dashboard_and_the_alerts_is_exported() {
    let t = Tree::new(
        "watch = false\nreload_check_interval = \"0s\"\n\
         [management]\nenabled = true\nlisten = \"127.0.0.1:0\"\n\
         certificate = \"certs/mgmt-server.pem\"\nprivate_key = \"certs/mgmt-server.key\"\n\
         ca_file = \"certs/test-ca.pem\"\nallow = [\"admin\"]\n\
         [auth]\nflow_key_file = \"certs/flow.key\"\nsecret_file = \"certs/nonce.secret\"\n\
         [cluster]\nnode = \"n1\"\nadvertise = \"sip:127.0.0.1:0;transport=tls\"\n\
         redis = [\"redis://127.0.0.1:1\"]\ninsecure_plaintext = true\n",
    );
    t.ca.issue(&Spec::server("localhost").ip([127, 0, 0, 1].into()))
        .write(&t.path("certs"), "mgmt-server");
    t.ca.issue(&Spec::client("admin"))
        .write(&t.path("certs"), "admin");
    t.write(
        "certs/flow.key",
        b"00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\n",
    );
    t.write(
        "certs/nonce.secret",
        b"ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100\n",
    );
    // A tenant: its certificate's not-after is a per-domain family.
    t.server_domain("acme", "");
    let rt = t.start();
    let url = format!("https://{}/metrics", rt.management_addr().expect("mgmt"));
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", "--cacert"])
        .arg(t.path("certs/test-ca.pem"))
        .arg("--cert")
        .arg(t.path("certs/admin.pem"))
        .arg("--key")
        .arg(t.path("certs/admin.key"))
        .arg(url)
        .output()
        .expect("curl runs");
    assert!(out.status.success(), "curl: {out:?}");
    let metrics = String::from_utf8_lossy(&out.stdout).into_owned();
    let have = exported(&metrics);
    assert!(have.contains("siprox_uptime_seconds"), "{metrics}");
    // docs/rpc.md: responses siprox could not route back are counted on /metrics.
    assert!(
        have.contains("siprox_responses_unmatched_total"),
        "{metrics}"
    );

    for file in ["deploy/grafana/siprox.json", "deploy/prometheus/alerts.yml"] {
        let text = std::fs::read_to_string(repo().join(file)).expect(file);
        let named = metric_names(&text);
        assert!(named.len() >= 8, "{file} names only {named:?}");
        let missing: Vec<_> = named.difference(&have).collect();
        assert!(
            missing.is_empty(),
            "{file} names metrics siprox does not export: {missing:?}\n{metrics}"
        );
    }
    rt.shutdown();
}

#[test]
fn the_units_open_file_limit_covers_the_packaged_configuration() {
    let unit =
        std::fs::read_to_string(repo().join("deploy/systemd/siprox.service")).expect("the unit");
    let limit: u64 = unit
        .lines()
        .find_map(|l| l.strip_prefix("LimitNOFILE="))
        .expect("LimitNOFILE=")
        .trim()
        .parse()
        .expect("a number");
    let config = siprox_actors::reload::files::load(&repo().join("conf.d")).expect("conf.d loads");
    let needed = siprox_actors::transport::fdlimit::needed(
        &config,
        siprox::config::RuntimeConfig::MAX_WORKERS,
    );
    assert!(
        needed <= limit,
        "conf.d needs {needed} descriptors, the unit allows {limit}"
    );
}

//! `certs/` in git: key material anywhere under `certs/` is ignored, and `certs/README.md`
//! is tracked so that the folder exists in a fresh clone (DESIGN.md layout). Asks git
//! itself (`check-ignore`, `ls-files`); must never write to the repository.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `git -C <root> args...`: (exit code, stdout).
fn git(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new("git")
        .arg("-C")
        .arg(repo_root())
        .args(args)
        .output()
        .expect("git runs (the tests run in a git checkout)");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn key_material_under_certs_is_ignored_at_any_depth() {
    for p in [
        "certs/server.key",
        "certs/ca.pem",
        "certs/admin.key",
        "certs/example.com/tls.key",
        "certs/example.com/tls.crt",
        "certs/tenants/a/key.pem",
        "certs/tenants/a/..data/tls.key",
    ] {
        // check-ignore exits 0 when the path is ignored, 1 when it is not.
        let (code, out) = git(&["check-ignore", "--no-index", p]);
        assert_eq!(code, Some(0), "{p} is not ignored by git ({out})");
    }
}

#[test]
fn certs_readme_is_tracked_and_not_ignored() {
    let (code, _) = git(&["check-ignore", "--no-index", "certs/README.md"]);
    assert_eq!(code, Some(1), "certs/README.md is ignored");
    let (code, out) = git(&["ls-files", "--error-unmatch", "certs/README.md"]);
    assert_eq!(code, Some(0), "certs/README.md is not tracked: {out}");
}

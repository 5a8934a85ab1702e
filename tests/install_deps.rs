//! `scripts/install-deps` checks what it installed: every tool and file the build and the tests use, each missing
//! one named with the Debian package that provides it. (A fresh machine once failed in the build because a package
//! had only ever been installed by hand.)

use std::path::Path;
use std::process::Command;

fn install_deps_check(path: &str) -> (Option<i32>, String) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/install-deps");
    let output = Command::new("/bin/bash").arg(script).arg("--check").env("PATH", path).output().unwrap();
    (output.status.code(), String::from_utf8_lossy(&output.stderr).into_owned())
}

#[test]
fn missing_tools_are_named_with_their_packages() {
    // A PATH that holds only what the script itself runs: every checked tool is missing.
    let bin = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink("/usr/bin/dirname", bin.path().join("dirname")).unwrap();
    let (code, stderr) = install_deps_check(&bin.path().display().to_string());
    assert_eq!(code, Some(1), "{stderr}");
    for (tool, package) in [
        ("protoc", "protobuf-compiler"),
        ("etcd", "etcd-server"),
        ("etcdctl", "etcd-client"),
        ("openssl", "openssl"),
        ("promtool", "prometheus"),
    ] {
        let line = format!("missing command '{tool}': it comes with the Debian package '{package}'");
        assert!(stderr.contains(&line), "stderr lacks {line:?}:\n{stderr}");
    }
}

#[test]
fn this_machine_meets_every_postcondition() {
    // scripts/test runs install-deps before the tests, so on a machine it prepared nothing is missing.
    let (code, stderr) = install_deps_check(&std::env::var("PATH").unwrap());
    assert_eq!(code, Some(0), "{stderr}");
}

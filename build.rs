//! Stamps the git commit into the build as `FERRY_GIT_COMMIT` (`ferry version`, `/status`, `ferry_build_info`).
//!
//! A tarball or container build has no `.git`: the commit is then `FERRY_GIT_COMMIT` from the build's environment,
//! or `unknown`. Cargo reruns this only when HEAD moves (or that variable changes), not on every build.

use std::path::Path;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=FERRY_GIT_COMMIT");
    let commit = match std::env::var("FERRY_GIT_COMMIT") {
        Ok(commit) if !commit.trim().is_empty() => commit.trim().to_owned(),
        _ => git_commit().unwrap_or_else(|| "unknown".to_owned()),
    };
    println!("cargo:rustc-env=FERRY_GIT_COMMIT={commit}");
}

/// HEAD's short hash, and the files whose change means HEAD moved, or `None` outside a git checkout.
fn git_commit() -> Option<String> {
    // Only this checkout's own `.git` (a directory, or a file in a linked worktree): a source tree unpacked inside
    // some other repository must not take that repository's commit.
    if !Path::new(".git").exists() {
        return None;
    }
    let commit = git(&["rev-parse", "--short=12", "HEAD"])?;
    // HEAD names a branch whose ref is a loose file or a line of packed-refs; a commit moves one of them. `--git-path`
    // resolves both in a linked worktree too, where they live in the main checkout's git directory. A path that
    // does not exist would make cargo rerun this every build, so only existing ones are named; a packed branch has
    // no loose file until its next commit writes one, so then its directory is watched.
    let mut watched = Vec::new();
    for name in ["HEAD", "packed-refs"] {
        watched.extend(git(&["rev-parse", "--git-path", name]));
    }
    if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]).and_then(|name| git(&["rev-parse", "--git-path", &name]))
    {
        let file = Path::new(&branch);
        let watch = if file.exists() { file } else { file.parent().unwrap_or(file) };
        watched.push(watch.display().to_string());
    }
    for path in watched.into_iter().filter(|path| Path::new(path).exists()) {
        println!("cargo:rerun-if-changed={path}");
    }
    Some(commit)
}

/// `git args` in the package's directory (cargo's working directory for build scripts): its trimmed output when it
/// succeeds.
fn git(args: &[&str]) -> Option<String> {
    let output = Command::new("git").args(args).output().ok()?;
    let text = String::from_utf8(output.stdout).ok()?;
    (output.status.success() && !text.trim().is_empty()).then(|| text.trim().to_owned())
}

//! Records the git commit the binary is built from, for `socketcluster --version`.
//!
//! Order: `SOCKETCLUSTER_GIT_COMMIT` from the environment (packagers), the
//! `.cargo_vcs_info.json` that `cargo package` writes (an install from the registry),
//! then `git` in the source tree. Without any of them the version says "unknown commit".

use std::path::Path;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=SOCKETCLUSTER_GIT_COMMIT");
    let dir = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| ".".into());
    let commit = std::env::var("SOCKETCLUSTER_GIT_COMMIT")
        .ok()
        .filter(|c| !c.is_empty())
        .or_else(|| from_vcs_info(Path::new(&dir)))
        .or_else(|| from_git(Path::new(&dir)))
        .unwrap_or_else(|| "unknown commit".to_owned());
    println!("cargo:rustc-env=SOCKETCLUSTER_BUILD_COMMIT={commit}");
}

fn from_vcs_info(dir: &Path) -> Option<String> {
    let path = dir.join(".cargo_vcs_info.json");
    println!("cargo:rerun-if-changed={}", path.display());
    let text = std::fs::read_to_string(path).ok()?;
    // {"git": {"sha1": "<40 hex>", ...}, ...}: no JSON parser needed for one field.
    let start = text.find("\"sha1\"")?;
    let rest = &text[start + 6..];
    let open = rest.find('"')? + 1;
    let len = rest[open..].find('"')?;
    Some(short(&rest[open..open + len]))
}

fn from_git(dir: &Path) -> Option<String> {
    let git = |args: &[&str]| -> Option<String> {
        let out = Command::new("git")
            .current_dir(dir)
            .args(args)
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
            .filter(|s| !s.is_empty())
    };
    let sha = git(&["rev-parse", "HEAD"])?;
    // Rebuild when HEAD moves: HEAD itself (checkout) and the branch it points to (commit).
    for rel in ["HEAD", "packed-refs"] {
        if let Some(p) = git(&["rev-parse", "--path-format=absolute", "--git-path", rel]) {
            println!("cargo:rerun-if-changed={p}");
        }
    }
    if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"])
        && let Some(p) = git(&["rev-parse", "--path-format=absolute", "--git-path", &branch])
    {
        println!("cargo:rerun-if-changed={p}");
    }
    Some(short(&sha))
}

fn short(sha: &str) -> String {
    sha.chars().take(12).collect()
}

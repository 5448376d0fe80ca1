//! What an operator gets after `cargo install`: `--version` with the build's commit,
//! shell completions that the shells accept and complete with, and man pages.

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_socketcluster");

fn run(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .output()
        .expect("run socketcluster");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn version_names_the_crate_version_and_the_commit_built_from() {
    let (ok, out, _) = run(&["--version"]);
    assert!(ok);
    let expected_prefix = format!("socketcluster {} (", env!("CARGO_PKG_VERSION"));
    assert!(out.starts_with(&expected_prefix), "{out}");
    let commit = out
        .trim()
        .strip_prefix(&expected_prefix)
        .and_then(|r| r.strip_suffix(')'))
        .expect("version (commit)");
    // This test runs from the source tree: the commit is git's HEAD.
    let head = Command::new("git")
        .args(["rev-parse", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("git");
    let head = String::from_utf8_lossy(&head.stdout).trim().to_owned();
    assert_eq!(commit.len(), 12, "{commit}");
    assert!(
        head.starts_with(commit),
        "built from {commit}, HEAD is {head}"
    );
}

#[test]
fn bash_completion_completes_subcommands_and_serve_flags() {
    let (ok, script, _) = run(&["completions", "bash"]);
    assert!(ok);
    let dir = std::env::temp_dir().join(format!("sc-completion-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("socketcluster.bash");
    std::fs::write(&path, script).unwrap();
    // What bash does on <TAB>: call the registered function with COMP_WORDS set.
    let complete = |words: &str, cword: usize| {
        let out = Command::new("bash")
            .arg("-c")
            .arg(format!(
                "source '{}'; COMP_WORDS=({words}); COMP_CWORD={cword}; \
                 _socketcluster socketcluster \"${{COMP_WORDS[$COMP_CWORD]}}\" \
                 \"${{COMP_WORDS[$COMP_CWORD-1]}}\"; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
                path.display()
            ))
            .output()
            .expect("bash");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let subcommands = complete("socketcluster s", 1);
    for s in ["serve", "subscribe"] {
        assert!(subcommands.lines().any(|l| l == s), "{s} in {subcommands}");
    }
    assert!(!subcommands.lines().any(|l| l == "invoke"), "{subcommands}");
    let flags = complete("socketcluster serve --history-", 2);
    for f in ["--history-size", "--history-ttl", "--history-max-recovery"] {
        assert!(flags.lines().any(|l| l == f), "{f} in {flags}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn zsh_and_fish_completions_cover_every_subcommand() {
    let (_, help, _) = run(&["--help"]);
    for shell in ["zsh", "fish"] {
        let (ok, script, err) = run(&["completions", shell]);
        assert!(ok, "{shell}: {err}");
        for sub in [
            "serve",
            "invoke",
            "publish",
            "subscribe",
            "history",
            "token",
            "man",
        ] {
            assert!(help.contains(sub), "{sub} is a subcommand");
            assert!(script.contains(sub), "{shell} completion lacks {sub}");
        }
    }
    let (ok, _, err) = run(&["completions", "tcsh"]);
    assert!(!ok && err.contains("invalid value"), "{err}");
}

#[test]
fn man_pages_are_written_for_every_subcommand_and_render() {
    let dir = std::env::temp_dir().join(format!("sc-man-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (ok, _, err) = run(&["man", "--out", dir.to_str().unwrap()]);
    assert!(ok, "{err}");
    let mut pages: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    pages.sort();
    for page in [
        "socketcluster.1",
        "socketcluster-serve.1",
        "socketcluster-subscribe.1",
    ] {
        assert!(pages.iter().any(|p| p == page), "{page} in {pages:?}");
    }
    let serve = std::fs::read_to_string(dir.join("socketcluster-serve.1")).unwrap();
    assert!(
        serve.starts_with(".ie") || serve.contains(".TH socketcluster-serve 1"),
        "{serve}"
    );
    assert!(
        serve.contains(r"\-\-history\-size"),
        "serve's flags are documented"
    );
    // The same page on stdout.
    let (ok, stdout, _) = run(&["man", "serve"]);
    assert!(ok);
    assert_eq!(stdout, serve);
    let (ok, _, err) = run(&["man", "nope"]);
    assert!(!ok && err.contains("no subcommand named \"nope\""), "{err}");
    // man(1) renders it, when the machine has man.
    if let Ok(out) = Command::new("man")
        .args(["-l", dir.join("socketcluster-serve.1").to_str().unwrap()])
        .env("MANWIDTH", "100")
        .output()
    {
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("socketcluster-serve - Run a standalone SocketCluster server"),
            "{text}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

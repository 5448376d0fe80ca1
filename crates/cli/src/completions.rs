//! `socketcluster completions SHELL` and `socketcluster man`: shell completion scripts
//! and man pages generated from the command-line definitions themselves, so they never
//! drift from `--help`.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, CommandFactory};
use clap_complete::Shell;

/// Arguments of `socketcluster completions`.
#[derive(Debug, Args)]
pub(crate) struct CompletionsArgs {
    /// The shell to write the completion script for.
    #[arg(value_enum)]
    shell: Shell,
}

/// Arguments of `socketcluster man`.
#[derive(Debug, Args)]
pub(crate) struct ManArgs {
    /// Write every page (`socketcluster.1`, `socketcluster-serve.1`, ...) into this
    /// directory instead of printing one page on stdout.
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// The subcommand whose page is printed (`serve` prints `socketcluster-serve.1`);
    /// without it, the main page.
    #[arg(value_name = "SUBCOMMAND")]
    subcommand: Option<String>,
}

/// The errors of these commands.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DocsError {
    #[error("man: no subcommand named {0:?} (see `socketcluster --help`)")]
    NoSuchSubcommand(String),
    #[error("cannot write {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
}

/// Print the completion script for `args.shell` on stdout.
pub(crate) fn completions(args: &CompletionsArgs) -> Result<ExitCode, DocsError> {
    let mut cmd = crate::Cli::command();
    // Into a buffer first: clap_complete panics when its writer fails (a closed pipe).
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut cmd, "socketcluster", &mut script);
    let mut out = std::io::stdout().lock();
    out.write_all(&script)
        .and_then(|()| out.flush())
        .map_err(|source| DocsError::Write {
            path: "stdout".into(),
            source,
        })?;
    Ok(ExitCode::SUCCESS)
}

/// Print one man page on stdout, or write them all into `--out`.
pub(crate) fn man(args: &ManArgs) -> Result<ExitCode, DocsError> {
    let root = crate::Cli::command();
    let pages = pages(&root);
    let write_err = |path: String| move |source| DocsError::Write { path, source };
    if let Some(dir) = &args.out {
        std::fs::create_dir_all(dir).map_err(write_err(dir.display().to_string()))?;
        for (name, cmd) in &pages {
            let path = dir.join(format!("{name}.1"));
            let mut text = Vec::new();
            render(cmd, &mut text).map_err(write_err(path.display().to_string()))?;
            std::fs::write(&path, text).map_err(write_err(path.display().to_string()))?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    let wanted = match &args.subcommand {
        None => "socketcluster".to_owned(),
        Some(sub) => format!("socketcluster-{sub}"),
    };
    let (_, cmd) = pages
        .iter()
        .find(|(name, _)| *name == wanted)
        .ok_or_else(|| DocsError::NoSuchSubcommand(args.subcommand.clone().unwrap_or_default()))?;
    let mut out = std::io::stdout().lock();
    render(cmd, &mut out)
        .and_then(|()| out.flush())
        .map_err(write_err("stdout".into()))?;
    Ok(ExitCode::SUCCESS)
}

/// The main page and one page per subcommand, each named as `man` looks it up
/// (`socketcluster-serve`), with the subcommand's own name and version.
fn pages(root: &clap::Command) -> Vec<(String, clap::Command)> {
    let version = root.get_version().unwrap_or_default().to_owned();
    let mut pages = vec![("socketcluster".to_owned(), root.clone())];
    for sub in root.get_subcommands().filter(|s| s.get_name() != "help") {
        let name = format!("socketcluster-{}", sub.get_name());
        let cmd = sub.clone().name(name.clone()).version(version.clone());
        pages.push((name, cmd));
    }
    pages
}

fn render(cmd: &clap::Command, out: &mut dyn Write) -> std::io::Result<()> {
    clap_mangen::Man::new(cmd.clone())
        .section("1")
        .manual("SocketCluster")
        .render(out)
}

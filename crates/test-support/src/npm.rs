//! Locating `interop/` and installing its npm dependencies (the real JS peers).

use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;

/// Packages the harness scripts `require`; their presence is part of "installed".
const REQUIRED_PACKAGES: &[&str] = &[
    "socketcluster-server",
    "socketcluster-client",
    "socketcluster-server-v14",
    "socketcluster-client-v14",
    "ws",
];

/// Name of the stamp file (inside `node_modules/`) holding the hash of the lockfile that
/// was installed. `npm ci` deletes `node_modules/`, so a stale stamp cannot survive it.
const STAMP: &str = ".sc-test-support-stamp";

/// Lock file serialising `npm ci` between concurrent test processes.
const LOCK: &str = ".npm-install.lock";

/// A lock file older than this is considered left behind by a killed process.
const STALE_LOCK: Duration = Duration::from_secs(15 * 60);

/// How long to wait for another process's install before giving up.
const LOCK_WAIT: Duration = Duration::from_secs(20 * 60);

/// `<workspace>/interop`: the directory holding `package.json`, `server.js` and
/// `client.js`. Found from this crate's `CARGO_MANIFEST_DIR` by walking up to the first
/// ancestor that has `interop/package.json`.
pub fn interop_dir() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    for dir in manifest.ancestors() {
        let candidate = dir.join("interop");
        if candidate.join("package.json").is_file() {
            return candidate;
        }
    }
    panic!(
        "sc-test-support: no interop/package.json found above {}",
        manifest.display()
    );
}

static INSTALL_RESULT: Mutex<Option<Result<(), String>>> = Mutex::new(None);

/// Make sure `interop/node_modules` matches `interop/package-lock.json`, running
/// `npm ci --no-audit --no-fund` when it does not (a clean clone, or a changed lockfile).
///
/// Runs at most once per process; concurrent test processes are serialised with the lock
/// file `interop/.npm-install.lock` (a lock older than 15 minutes is treated as stale).
/// The installation is considered current when `node_modules/.sc-test-support-stamp`
/// holds the lockfile's hash, or when npm's own `node_modules/.package-lock.json` lists
/// exactly the lockfile's packages.
///
/// # Panics
///
/// When `node` (>= 18) or `npm` is missing or `npm ci` fails. It never skips silently.
pub fn ensure_npm_installed() {
    let mut guard = INSTALL_RESULT.lock().unwrap_or_else(|e| e.into_inner());
    if guard.is_none() {
        *guard = Some(install(&interop_dir()));
    }
    if let Some(Err(message)) = guard.as_ref() {
        panic!("sc-test-support: cannot provide the JS peers: {message}");
    }
}

fn install(dir: &Path) -> Result<(), String> {
    check_node()?;
    if up_to_date(dir)? {
        return Ok(());
    }
    let _lock = InstallLock::acquire(dir)?;
    // Another process may have installed while we waited for the lock.
    if up_to_date(dir)? {
        return Ok(());
    }
    run_npm_ci(dir)?;
    write_stamp(dir)?;
    if !up_to_date(dir)? {
        return Err(format!(
            "`npm ci` succeeded in {} but node_modules still does not match package-lock.json",
            dir.display()
        ));
    }
    Ok(())
}

fn check_node() -> Result<(), String> {
    let output = Command::new("node")
        .arg("--version")
        .output()
        .map_err(|e| {
            format!("`node` is not runnable ({e}); install Node.js >= 18 to run the interop tests")
        })?;
    if !output.status.success() {
        return Err(format!(
            "`node --version` failed: {}",
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    let version = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    let major = version
        .trim_start_matches('v')
        .split('.')
        .next()
        .and_then(|m| m.parse::<u32>().ok())
        .ok_or_else(|| format!("cannot parse the node version {version:?}"))?;
    if major < 18 {
        return Err(format!(
            "node {version} is too old; Node.js >= 18 is required"
        ));
    }
    Ok(())
}

/// FNV-1a 64: a stable hash of the lockfile (std's hasher may change between releases).
fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

fn lock_hash(dir: &Path) -> Result<String, String> {
    let path = dir.join("package-lock.json");
    let bytes = fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    Ok(format!("{:016x}-{}", fnv1a64(&bytes), bytes.len()))
}

fn required_packages_present(dir: &Path) -> bool {
    REQUIRED_PACKAGES.iter().all(|p| {
        dir.join("node_modules")
            .join(p)
            .join("package.json")
            .is_file()
    })
}

/// The `packages` map of a lockfile without the root (`""`) entry, which npm's hidden
/// lockfile does not record.
fn lock_packages(path: &Path) -> Option<serde_json::Map<String, Value>> {
    let text = fs::read_to_string(path).ok()?;
    let Value::Object(mut top) = serde_json::from_str::<Value>(&text).ok()? else {
        return None;
    };
    let Some(Value::Object(mut packages)) = top.remove("packages") else {
        return None;
    };
    packages.shift_remove("");
    Some(packages)
}

fn up_to_date(dir: &Path) -> Result<bool, String> {
    if !required_packages_present(dir) {
        return Ok(false);
    }
    let hash = lock_hash(dir)?;
    let stamp = dir.join("node_modules").join(STAMP);
    if fs::read_to_string(&stamp).is_ok_and(|s| s.trim() == hash) {
        return Ok(true);
    }
    let wanted = lock_packages(&dir.join("package-lock.json"));
    let installed = lock_packages(&dir.join("node_modules").join(".package-lock.json"));
    if wanted.is_some() && wanted == installed {
        // Record it so the next run only compares hashes.
        let _ = fs::write(&stamp, &hash);
        return Ok(true);
    }
    Ok(false)
}

fn write_stamp(dir: &Path) -> Result<(), String> {
    let hash = lock_hash(dir)?;
    let stamp = dir.join("node_modules").join(STAMP);
    fs::write(&stamp, hash).map_err(|e| format!("cannot write {}: {e}", stamp.display()))
}

fn run_npm_ci(dir: &Path) -> Result<(), String> {
    let output = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund"])
        .current_dir(dir)
        .output()
        .map_err(|e| {
            format!("`npm` is not runnable ({e}); install npm to fetch the JS peers of the interop tests")
        })?;
    if !output.status.success() {
        return Err(format!(
            "`npm ci --no-audit --no-fund` failed in {} ({})\n--- stdout ---\n{}\n--- stderr ---\n{}",
            dir.display(),
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    Ok(())
}

/// The cross-process install lock; removed on drop.
struct InstallLock {
    path: PathBuf,
}

impl InstallLock {
    fn acquire(dir: &Path) -> Result<InstallLock, String> {
        let path = dir.join(LOCK);
        let started = Instant::now();
        loop {
            match fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
            {
                Ok(mut file) => {
                    use std::io::Write;
                    let _ = writeln!(file, "pid {}", std::process::id());
                    return Ok(InstallLock { path });
                }
                Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                    let age = fs::metadata(&path)
                        .and_then(|m| m.modified())
                        .ok()
                        .and_then(|m| SystemTime::now().duration_since(m).ok());
                    if age.is_some_and(|a| a > STALE_LOCK) {
                        let _ = fs::remove_file(&path);
                        continue;
                    }
                    if started.elapsed() > LOCK_WAIT {
                        return Err(format!(
                            "gave up waiting for {} (another `npm ci` still running? delete the file if not)",
                            path.display()
                        ));
                    }
                    std::thread::sleep(Duration::from_millis(250));
                }
                Err(e) => return Err(format!("cannot create {}: {e}", path.display())),
            }
        }
    }
}

impl Drop for InstallLock {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interop_dir_holds_the_runner_scripts() {
        let dir = interop_dir();
        assert!(dir.join("package-lock.json").is_file());
        assert!(dir.join("server.js").is_file());
        assert!(dir.join("client.js").is_file());
    }

    #[test]
    fn fnv_hash_is_stable() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn ensure_npm_installed_leaves_a_current_installation() {
        ensure_npm_installed();
        let dir = interop_dir();
        assert!(required_packages_present(&dir));
        assert!(up_to_date(&dir).unwrap());
        assert!(!dir.join(LOCK).exists());
    }
}

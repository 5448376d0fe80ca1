#!/usr/bin/env bash
# What a newcomer does with the published crates, checked from the packages themselves:
#   1. `cargo publish --dry-run` of every published crate, in dependency order (each one is
#      packaged and built from its package, against the packages of the crates it uses);
#   2. a fresh Rust project that depends on the packaged client by path (`cargo add --path`)
#      builds, and talks to
#   3. the command installed with `cargo install` from the packaged CLI, whose --version,
#      completions and man pages work.
# Needs network access to crates.io only. Run by .ci/run; also by hand: scripts/check-package.sh
# (--reuse: skip the dry run and reuse the packages it left in target/package).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
# The workspace's target directory, and the workspace's debug setting for dependencies, so
# the dependencies `cargo test --workspace` built are reused (a packaged crate is its own
# workspace and does not see our [profile] section).
export CARGO_TARGET_DIR="$(realpath -m "${CARGO_TARGET_DIR:-$repo/target}")"
export CARGO_PROFILE_DEV_DEBUG=false

step() { printf '\n== %s\n' "$*"; }

if [ "${1:-}" = "--reuse" ]; then
    # Reuse the packages of an earlier run (quicker when only the later steps changed).
    step "reusing the packages in $CARGO_TARGET_DIR/package"
else
    step "cargo publish --dry-run (every published crate, in dependency order)"
    cargo publish --dry-run --workspace --exclude sc-test-support --locked --allow-dirty
fi

work=$(mktemp -d)
trap 'kill "${serve_pid:-0}" 2>/dev/null || true; rm -rf "$work"' EXIT
# The dry run leaves every package unpacked in target/package/<name>-<version>/. Until the
# crates are on crates.io, their dependencies on each other resolve to these packaged copies
# through [patch.crates-io] (given to cargo as --config).
patches=()
for dir in "$CARGO_TARGET_DIR"/package/socketcluster-rs-*-"$version"; do
    name=$(basename "$dir" "-$version")
    cp -r "$dir" "$work/$name"
    patches+=(--config "patch.crates-io.$name.path=\"$work/$name\"")
done
test -d "$work/socketcluster-rs-cli" && test -d "$work/socketcluster-rs-client"

step "cargo install from the packaged CLI"
cargo install --debug --quiet "${patches[@]}" --path "$work/socketcluster-rs-cli" \
    --root "$work/install"
sc="$work/install/bin/socketcluster"
# The packaged CLI is not a git checkout: the commit comes from .cargo_vcs_info.json when
# packaged from a clean tree, else the version says "unknown commit".
"$sc" --version | grep -E "^socketcluster $version \(([0-9a-f]{12}|unknown commit)\)$"
"$sc" completions bash | grep -q "complete -F _socketcluster"
"$sc" man --out "$work/man"
test -s "$work/man/socketcluster-serve.1"

step "a fresh project with the packaged client as a path dependency"
cd "$work"
cargo new --quiet --bin fresh
cd fresh
cargo add --quiet "${patches[@]}" --path "$work/socketcluster-rs-client"
cargo add --quiet "${patches[@]}" tokio --features rt-multi-thread,macros
cargo add --quiet "${patches[@]}" futures-util
cat > src/main.rs <<'RUST'
use futures_util::StreamExt;
use socketcluster_rs_client::Client;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::args().nth(1).expect("url");
    let client = Client::connect(url).await?;
    let mut news = client.subscribe("news").await?;
    client.publish("news", "hello from a fresh project").await?;
    let message = news.next().await.expect("a publication");
    println!("{}", message.deserialize::<String>()?);
    Ok(())
}
RUST
cargo build --quiet "${patches[@]}"

step "the fresh project talks to the installed server"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$sc" serve --host 127.0.0.1 --port "$port" --auth-key check-package -q &
serve_pid=$!
for _ in $(seq 100); do
    curl -sf "http://127.0.0.1:$port/health" >/dev/null && break
    sleep 0.1
done
got=$(timeout 30 "$CARGO_TARGET_DIR/debug/fresh" "ws://127.0.0.1:$port/socketcluster/")
test "$got" = "hello from a fresh project" || { echo "unexpected output: $got"; exit 1; }
echo "ok: packaged crates publish, install and build; the fresh project got: $got"

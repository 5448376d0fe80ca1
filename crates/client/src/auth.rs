//! Authentication: the client-side auth state (docs/PROTOCOL.md 5.7), token storage
//! ([`TokenStore`], [`MemoryTokenStore`], [`FileTokenStore`]) and the re-authentication
//! hook ([`TokenProvider`]).

use std::fmt;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use serde_json::Value;
use socketcluster_rs_protocol::ErrorObject;

use crate::error::TokenStoreError;

/// A boxed error returned by a [`TokenProvider`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A boxed, `Send` future.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The client's authentication state. As in the JS client there is no "pending" value,
/// and a disconnection does not change it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AuthState {
    /// No accepted token.
    Unauthenticated,
    /// The server accepted the token the client holds.
    Authenticated,
}

impl AuthState {
    /// The JS spelling (`authenticated` / `unauthenticated`).
    pub fn as_str(self) -> &'static str {
        match self {
            AuthState::Unauthenticated => "unauthenticated",
            AuthState::Authenticated => "authenticated",
        }
    }
}

impl fmt::Display for AuthState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The result of [`Client::authenticate`](crate::Client::authenticate): the server's
/// `{isAuthenticated, authError}`.
#[derive(Clone, Debug, PartialEq)]
pub struct AuthStatus {
    /// Whether the socket is now authenticated.
    pub is_authenticated: bool,
    /// The soft failure (e.g. `AuthTokenNotBeforeError`), if any.
    pub auth_error: Option<ErrorObject>,
}

/// Where the client keeps its signed token between connections (the JS `authEngine`).
/// All methods are awaited by the connection task, so they should be quick.
///
/// A failed `save` or `remove` is reported as an `error` event (`FailedToSaveTokenError`,
/// `FailedToRemoveTokenError`) and does not end the session. Until a later change
/// succeeds, the client's handshakes use what the store should hold (the new token, or
/// none after a removal) instead of calling `load`, and try the failed change again on
/// each reconnect: a full or read-only disk never takes a reconnect back to a replaced
/// token, nor logs a deauthenticated client back in with the stale one. (The JS client
/// reloads the store on every handshake.)
pub trait TokenStore: Send + Sync + 'static {
    /// The stored token, if any.
    fn load(&self) -> BoxFuture<'_, Result<Option<String>, TokenStoreError>>;
    /// Store `token`, replacing any previous one.
    fn save(&self, token: String) -> BoxFuture<'_, Result<(), TokenStoreError>>;
    /// Delete the token, returning the old one.
    fn remove(&self) -> BoxFuture<'_, Result<Option<String>, TokenStoreError>>;
}

/// The default store: memory owned by the client (survives reconnects, not process
/// restarts), like the JS client's in Node.
#[derive(Debug, Default, Clone)]
pub struct MemoryTokenStore {
    token: Arc<Mutex<Option<String>>>,
}

impl MemoryTokenStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// A store that already holds `token` (e.g. from the command line).
    pub fn with_token(token: impl Into<String>) -> Self {
        MemoryTokenStore {
            token: Arc::new(Mutex::new(Some(token.into()))),
        }
    }

    /// The current token (a synchronous peek).
    pub fn get(&self) -> Option<String> {
        self.token.lock().map(|t| t.clone()).unwrap_or(None)
    }
}

impl TokenStore for MemoryTokenStore {
    fn load(&self) -> BoxFuture<'_, Result<Option<String>, TokenStoreError>> {
        let t = self.get();
        Box::pin(async move { Ok(t) })
    }
    fn save(&self, token: String) -> BoxFuture<'_, Result<(), TokenStoreError>> {
        if let Ok(mut g) = self.token.lock() {
            *g = Some(token);
        }
        Box::pin(async { Ok(()) })
    }
    fn remove(&self) -> BoxFuture<'_, Result<Option<String>, TokenStoreError>> {
        let old = self.token.lock().ok().and_then(|mut g| g.take());
        Box::pin(async move { Ok(old) })
    }
}

/// A token kept in a file, so it survives process restarts. Writes are atomic (a
/// temporary file in the same directory, synced, then renamed over the target) and the
/// file is created with mode 0600 on Unix.
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use socketcluster_rs_client::{Client, FileTokenStore};
/// let client = Client::builder("ws://127.0.0.1:8000/socketcluster/")
///     .token_store(FileTokenStore::new("/var/lib/myapp/sc-token"))
///     .connect()
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct FileTokenStore {
    path: PathBuf,
}

impl FileTokenStore {
    /// A store backed by `path` (created on the first save).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        FileTokenStore { path: path.into() }
    }

    /// The file path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn load_sync(path: &Path) -> std::io::Result<Option<String>> {
        match std::fs::read_to_string(path) {
            Ok(s) => {
                let t = s.trim();
                Ok(if t.is_empty() {
                    None
                } else {
                    Some(t.to_owned())
                })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn save_sync(path: &Path, token: &str) -> std::io::Result<()> {
        use std::io::Write;
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let file_name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "token".to_owned());
        let tmp = dir.join(format!(
            ".{file_name}.tmp.{}.{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let result = (|| {
            let mut f = opts.open(&tmp)?;
            f.write_all(token.as_bytes())?;
            f.sync_all()?;
            drop(f);
            std::fs::rename(&tmp, path)
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }

    fn remove_sync(path: &Path) -> std::io::Result<Option<String>> {
        let old = Self::load_sync(path)?;
        match std::fs::remove_file(path) {
            Ok(()) => Ok(old),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(old),
            Err(e) => Err(e),
        }
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> Result<T, TokenStoreError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(TokenStoreError),
        Err(e) => Err(TokenStoreError(std::io::Error::other(e.to_string()))),
    }
}

impl TokenStore for FileTokenStore {
    fn load(&self) -> BoxFuture<'_, Result<Option<String>, TokenStoreError>> {
        let p = self.path.clone();
        Box::pin(blocking(move || Self::load_sync(&p)))
    }
    fn save(&self, token: String) -> BoxFuture<'_, Result<(), TokenStoreError>> {
        let p = self.path.clone();
        Box::pin(blocking(move || Self::save_sync(&p, &token)))
    }
    fn remove(&self) -> BoxFuture<'_, Result<Option<String>, TokenStoreError>> {
        let p = self.path.clone();
        Box::pin(blocking(move || Self::remove_sync(&p)))
    }
}

/// Why the client asks the [`TokenProvider`] for a token.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum ReauthReason {
    /// The handshake reported the socket unauthenticated without an error (no token was
    /// sent).
    NoToken,
    /// The handshake rejected the token (expired, signed with an unknown key, ...).
    Rejected(ErrorObject),
    /// The server removed the token (`#removeAuthToken`), e.g. because it expired.
    Removed,
    /// The current token expires soon (`exp` minus the configured margin).
    Expiring,
    /// A subscription was rejected while the client was not authenticated.
    SubscribeRejected(String),
}

/// What the client passes to the [`TokenProvider`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct TokenRequest {
    /// Why a token is needed.
    pub reason: ReauthReason,
    /// The token the client currently holds (possibly expired), if any.
    pub current_token: Option<String>,
    /// Consecutive failed attempts before this one (0 for a first attempt).
    pub failures: u32,
}

/// The re-authentication hook: returns a fresh signed token. Implemented for every
/// `Fn(TokenRequest) -> impl Future<Output = Result<String, E>>`.
pub trait TokenProvider: Send + Sync + 'static {
    /// Produce a token.
    fn token(&self, request: TokenRequest) -> BoxFuture<'static, Result<String, BoxError>>;
}

impl<F, Fut, E> TokenProvider for F
where
    F: Fn(TokenRequest) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<String, E>> + Send + 'static,
    E: Into<BoxError>,
{
    fn token(&self, request: TokenRequest) -> BoxFuture<'static, Result<String, BoxError>> {
        let fut = self(request);
        Box::pin(async move { fut.await.map_err(Into::into) })
    }
}

/// A shared token provider.
pub type BoxTokenProvider = Arc<dyn TokenProvider>;

pub(crate) fn boxed_provider<P: TokenProvider>(p: P) -> BoxTokenProvider {
    Arc::new(p)
}

/// The decoded (unverified) payload of a token, as the JS client computes `authToken`.
pub fn decode_claims(signed: &str) -> Option<Value> {
    socketcluster_rs_protocol::auth::decode_token_payload(signed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn file_store_round_trips_atomically_with_private_mode() {
        let dir = std::env::temp_dir().join(format!("sc-token-test-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("token");
        let store = FileTokenStore::new(&path);
        assert_eq!(store.load().await.unwrap(), None);
        store.save("a.b.c".into()).await.unwrap();
        assert_eq!(store.load().await.unwrap().as_deref(), Some("a.b.c"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        store.save("d.e.f".into()).await.unwrap();
        // a second store on the same path (a restarted process) sees the latest token
        assert_eq!(
            FileTokenStore::new(&path).load().await.unwrap().as_deref(),
            Some("d.e.f")
        );
        assert_eq!(store.remove().await.unwrap().as_deref(), Some("d.e.f"));
        assert_eq!(store.load().await.unwrap(), None);
        // only the token file was ever in the directory (no leftover temporary files)
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn memory_store_keeps_one_token() {
        let s = MemoryTokenStore::with_token("x");
        assert_eq!(s.load().await.unwrap().as_deref(), Some("x"));
        assert_eq!(s.remove().await.unwrap().as_deref(), Some("x"));
        assert_eq!(s.load().await.unwrap(), None);
    }
}

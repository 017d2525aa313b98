//! One error type for the whole library.
//!
//! `Error` is `Clone` because a single-flight load hands the *same* outcome to
//! every caller that waited on it; sources that are not `Clone` are kept behind
//! an `Arc`.

use std::error::Error as StdError;
use std::fmt;
use std::sync::Arc;

/// A boxed error, the form loaders' errors are converted into.
pub type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// Everything that can go wrong in larder.
///
/// Configuration mistakes surface when the cache is built or a family is
/// opened, never later on the request path. On the read path only the loader's
/// own failure ([`Error::Loader`]) and bad keys reach the caller: a sick Redis
/// is counted, logged and routed around, and a value that does not decode is
/// treated as a miss.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A family's policy (or the cache's own settings) is invalid.
    #[error("invalid cache configuration for `{family}`: {reason}")]
    Config {
        /// The family (or `cache` for cache-wide settings).
        family: String,
        /// What is wrong and how to fix it.
        reason: String,
    },

    /// A policy file could not be read or parsed.
    #[error("cannot load cache policies from {path}: {reason}")]
    ConfigFile {
        /// The file that was read.
        path: String,
        /// The I/O or TOML error.
        reason: String,
    },

    /// [`Cache::family`](crate::Cache::family) was asked for a name that no
    /// policy defines.
    #[error("no cache family named `{0}` is configured")]
    UnknownFamily(String),

    /// The same family name was opened with different key or value types.
    #[error("cache family `{family}` is already open with other key/value types")]
    FamilyTypeMismatch {
        /// The family name.
        family: String,
    },

    /// The Redis URL could not be parsed. The URL itself is not repeated here:
    /// it may hold a password.
    #[error("invalid Redis URL: {0}")]
    RedisUrl(String),

    /// A built key is longer than the cache's maximum key length.
    #[error("key for family `{family}` is {len} bytes, over the {max}-byte limit")]
    KeyTooLong {
        /// The family.
        family: String,
        /// Length of the escaped key.
        len: usize,
        /// The configured maximum.
        max: usize,
    },

    /// A value is larger than its family's `max_value_size`.
    #[error("value for family `{family}` is {size} bytes encoded, over the {max}-byte limit")]
    ValueTooLarge {
        /// The family.
        family: String,
        /// Encoded size of the value.
        size: usize,
        /// The family's limit.
        max: usize,
    },

    /// The value could not be serialised with the family's codec.
    #[error("cannot encode value for family `{family}`: {reason}")]
    Encode {
        /// The family.
        family: String,
        /// The serialiser's message.
        reason: String,
    },

    /// The loader returned an error. Every caller that waited on that load
    /// receives the same error; nothing is cached, so the next call retries.
    #[error("loader failed: {0}")]
    Loader(#[source] SourceError),

    /// The database write of a write-through failed. The cache was not
    /// touched.
    #[error("persist failed: {0}")]
    Persist(#[source] SourceError),

    /// A key type wrote a different number of parts than its family's
    /// template has placeholders (a `KeyPart` implementation that writes
    /// none, or two). Refused, because such keys could collide.
    #[error("key for family `{family}` has {got} part(s), its template {expected}")]
    KeyArity {
        /// The family.
        family: String,
        /// Placeholders in the template.
        expected: usize,
        /// Parts written.
        got: usize,
    },

    /// A wrong pattern for [`Family::invalidate_pattern`](crate::Family::invalidate_pattern).
    #[error("invalid pattern for family `{family}`: {reason}")]
    Pattern {
        /// The family.
        family: String,
        /// What is wrong.
        reason: String,
    },

    /// A bug in larder: an internal invariant did not hold. Please report it.
    #[error("internal error: {0}")]
    Internal(&'static str),

    /// The load took longer than the family's `hard_timeout`. It goes on in
    /// the background and fills the cache for the next caller.
    #[error("load of family `{family}` timed out after {after:?}")]
    Timeout {
        /// The family.
        family: String,
        /// The hard timeout.
        after: std::time::Duration,
    },

    /// The loader panicked. The panic is contained in the load task; callers get
    /// this error and the next call retries.
    #[error("loader panicked")]
    LoaderPanicked,

    /// The change-stream listener cannot run: the server does not allow
    /// logical replication, a mapped table or column is missing or not in
    /// the replica identity, the role lacks a right. The message says what
    /// to change.
    #[error("change stream: {0}")]
    ChangeStream(String),

    /// A Redis command failed or timed out on a path where the caller must know
    /// (`set`, `invalidate`). Reads never return this: they fall back to the
    /// loader.
    #[error("redis {op} failed: {reason}")]
    Redis {
        /// The operation (`GET`, `SET`, `UNLINK`, ...).
        op: &'static str,
        /// The client's message, or `timed out after ...`.
        reason: String,
    },
}

/// An error from your data source (a loader or a persister), shared between
/// all callers of one load.
///
/// Use [`SourceError::downcast_ref`] to get your own error type back:
///
/// ```
/// use larder::{Error, SourceError};
///
/// #[derive(Debug, thiserror::Error)]
/// #[error("database is down")]
/// struct DbDown;
///
/// let err = Error::Loader(SourceError::new(DbDown));
/// if let Error::Loader(e) = &err {
///     assert!(e.downcast_ref::<DbDown>().is_some());
/// }
/// ```
#[derive(Clone)]
pub struct SourceError(Arc<dyn StdError + Send + Sync + 'static>);

impl SourceError {
    /// Wraps any error.
    pub fn new(err: impl Into<BoxError>) -> Self {
        Self(Arc::from(err.into()))
    }

    /// The loader's error as its concrete type, if it is an `E`.
    pub fn downcast_ref<E: StdError + 'static>(&self) -> Option<&E> {
        self.0.downcast_ref::<E>()
    }

    /// The loader's error as a trait object.
    pub fn get_ref(&self) -> &(dyn StdError + Send + Sync + 'static) {
        &*self.0
    }
}

impl fmt::Debug for SourceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl fmt::Display for SourceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl StdError for SourceError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.0.source()
    }
}

impl Error {
    pub(crate) fn config(family: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Config {
            family: family.into(),
            reason: reason.into(),
        }
    }
}

//! The `Cache` handle and the state it shares.

use std::any::TypeId;
use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::Error;
use crate::builder::CacheBuilder;
use crate::family::{Family, FamilyCore};
use crate::flight::Flights;
use crate::key::KeyParts;
use crate::policy::CompiledPolicy;
use crate::tier::memory::MemoryTier;
use crate::tier::redis::RedisTier;

/// A two-tier cache: an in-process tier (L1) in front of Redis (L2), in front
/// of your loaders (the database).
///
/// `Cache` is a cheap handle (one `Arc`): clone it into every task and handler.
/// Data is read and written through typed [`Family`] handles, one per kind of
/// cached data, opened with [`Cache::family`].
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), larder::Error> {
/// use larder::{Cache, Policy};
/// use std::time::Duration;
///
/// let cache = Cache::builder()
///     .family(Policy::new("greeting", "greeting:{name}").ttl(Duration::from_secs(60)))
///     .build()
///     .await?;
/// let greetings = cache.family::<String, String>("greeting")?;
///
/// let name = "ada".to_string();
/// let who = name.clone(); // the loader owns what it uses
/// let hello = greetings
///     .get_or_load(&name, move || async move {
///         Ok::<_, std::io::Error>(Some(format!("hello, {who}")))
///     })
///     .await?;
/// assert_eq!(hello.as_deref().map(String::as_str), Some("hello, ada"));
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Cache {
    pub(crate) shared: Arc<Shared>,
}

/// What every clone of a `Cache` shares.
pub(crate) struct Shared {
    pub namespace: String,
    pub l1: Option<MemoryTier>,
    pub l1_max_ttl: Option<Duration>,
    pub l2: Option<RedisTier>,
    pub flights: Arc<Flights>,
    pub policies: HashMap<String, CompiledPolicy>,
    /// Opened families by name, with the `TypeId` of their `(K, V)`. Opening
    /// a family twice returns the same core, so both handles share counters.
    pub families: Mutex<HashMap<String, (TypeId, Arc<FamilyCore>)>>,
    pub max_key_len: usize,
    pub enabled: bool,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("namespace", &self.shared.namespace)
            .field("l1", &self.shared.l1.is_some())
            .field("l2", &self.shared.l2.is_some())
            .field("enabled", &self.shared.enabled)
            .finish()
    }
}

impl Cache {
    /// Starts configuring a cache. See [`CacheBuilder`].
    pub fn builder() -> CacheBuilder {
        CacheBuilder::default()
    }

    /// Opens the family `name` (its policy was given to the builder) with key
    /// type `K` and value type `V`.
    ///
    /// Fails if no such policy exists, if `K` does not fill the key template
    /// (e.g. a tuple of two on `portfolio:{user_id}`), or if the family is
    /// already open with other types. Opening it again with the same types
    /// returns a handle that shares the first one's state.
    pub fn family<K, V>(&self, name: &str) -> Result<Family<K, V>, Error>
    where
        K: KeyParts + 'static,
        V: Serialize + DeserializeOwned + Send + Sync + 'static,
    {
        let policy = self
            .shared
            .policies
            .get(name)
            .ok_or_else(|| Error::UnknownFamily(name.to_string()))?;
        if K::ARITY != policy.template.arity() {
            return Err(Error::config(
                name,
                format!(
                    "key template `{}` has {} placeholder(s) but the key type fills {}",
                    policy.template.as_str(),
                    policy.template.arity(),
                    K::ARITY
                ),
            ));
        }
        let type_id = TypeId::of::<(K, V)>();
        let mut families = self
            .shared
            .families
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let core = match families.get(name) {
            Some((existing, core)) if *existing == type_id => Arc::clone(core),
            Some(_) => {
                return Err(Error::FamilyTypeMismatch {
                    family: name.to_string(),
                });
            }
            None => {
                let core = Arc::new(FamilyCore::new(&self.shared.namespace, policy.clone()));
                families.insert(name.to_string(), (type_id, Arc::clone(&core)));
                core
            }
        };
        Ok(Family {
            cache: self.clone(),
            core,
            _types: PhantomData,
        })
    }

    /// The namespace prefix of every key.
    pub fn namespace(&self) -> &str {
        &self.shared.namespace
    }

    /// Whether a Redis tier is configured.
    pub fn has_redis(&self) -> bool {
        self.shared.l2.is_some()
    }

    /// Whether the cache is on (see [`CacheBuilder::enabled`]).
    pub fn is_enabled(&self) -> bool {
        self.shared.enabled
    }

    /// Entries and bytes held by the in-process tier (zero when disabled).
    /// Runs pending housekeeping first, so the numbers are current.
    pub async fn l1_usage(&self) -> L1Usage {
        match &self.shared.l1 {
            Some(l1) => {
                let (entries, bytes) = l1.usage();
                L1Usage { entries, bytes }
            }
            None => L1Usage::default(),
        }
    }

    /// Names of the configured families.
    pub fn family_names(&self) -> impl Iterator<Item = &str> {
        self.shared.policies.keys().map(String::as_str)
    }
}

/// Occupancy of the in-process tier.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct L1Usage {
    /// Entries held.
    pub entries: u64,
    /// Bytes charged against the budget.
    pub bytes: u64,
}

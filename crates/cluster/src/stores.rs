//! Object stores made on first use: a cluster process reads and writes the run's store and
//! inputs named in plans (`s3://bucket/…`) without anyone registering them first; each S3
//! bucket is configured from this process's `AWS_*` variables.

use std::sync::Arc;

use datafusion::error::Result;
use datafusion::execution::object_store::{DefaultObjectStoreRegistry, ObjectStoreRegistry};
use object_store::ObjectStore;
use url::Url;

use crate::trust::{Confined, Roots};

/// The object stores of a cluster process. Confined ones (every executor's) reach only the
/// folders and buckets of their [`Roots`]: local paths through [`Confined`], S3 keys checked
/// per bucket at first use and per object by [`Confined`]'s S3 counterpart.
#[derive(Debug, Default)]
pub struct EnvObjectStores {
    known: DefaultObjectStoreRegistry,
    roots: Option<Arc<Roots>>,
}

impl EnvObjectStores {
    /// Stores that reach only `roots` (none at all when it is empty).
    pub fn confined(roots: Arc<Roots>) -> Self {
        let known = DefaultObjectStoreRegistry::new();
        if let Ok(url) = Url::parse("file://") {
            let local: Arc<dyn ObjectStore> = Arc::new(object_store::local::LocalFileSystem::new());
            known.register_store(&url, Arc::new(Confined::new(local, roots.clone())));
        }
        EnvObjectStores {
            known,
            roots: Some(roots),
        }
    }
}

impl ObjectStoreRegistry for EnvObjectStores {
    fn register_store(
        &self,
        url: &Url,
        store: Arc<dyn ObjectStore>,
    ) -> Option<Arc<dyn ObjectStore>> {
        self.known.register_store(url, store)
    }

    fn deregister_store(&self, url: &Url) -> Result<Arc<dyn ObjectStore>> {
        self.known.deregister_store(url)
    }

    fn get_store(&self, url: &Url) -> Result<Arc<dyn ObjectStore>> {
        match self.known.get_store(url) {
            Ok(store) => Ok(store),
            Err(e) => match (url.scheme(), url.host_str()) {
                ("s3", Some(bucket)) => {
                    if let Some(roots) = &self.roots
                        && !roots.allows_bucket(bucket)
                    {
                        return Err(datafusion::error::DataFusionError::Execution(format!(
                            "bucket {bucket} is outside the places this executor was started with (--allow)"
                        )));
                    }
                    let store = caiflow_run::store::s3_from_env(bucket)
                        .map_err(|e| datafusion::error::DataFusionError::External(Box::new(e)))?;
                    let store: Arc<dyn ObjectStore> = match &self.roots {
                        Some(roots) => Arc::new(Confined::bucket(store, bucket, roots.clone())),
                        None => store,
                    };
                    self.known.register_store(url, store.clone());
                    Ok(store)
                }
                _ => Err(e),
            },
        }
    }
}

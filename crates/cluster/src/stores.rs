//! Object stores made on first use: a cluster process reads and writes the run's store and
//! inputs named in plans (`s3://bucket/…`) without anyone registering them first; each S3
//! bucket is configured from this process's `AWS_*` variables.

use std::sync::Arc;

use datafusion::error::Result;
use datafusion::execution::object_store::{DefaultObjectStoreRegistry, ObjectStoreRegistry};
use object_store::ObjectStore;
use url::Url;

#[derive(Debug, Default)]
pub struct EnvObjectStores {
    known: DefaultObjectStoreRegistry,
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
                    let store = caiflow_run::store::s3_from_env(bucket)
                        .map_err(|e| datafusion::error::DataFusionError::External(Box::new(e)))?;
                    self.known.register_store(url, store.clone());
                    Ok(store)
                }
                _ => Err(e),
            },
        }
    }
}

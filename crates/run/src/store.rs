//! Where runs live: a local folder (default `data/runs`) or `s3://bucket/prefix`, both through
//! `object_store`. S3 settings come from the usual `AWS_*` variables (`AWS_ENDPOINT` and
//! `AWS_ALLOW_HTTP=true` for S3-compatible servers).
//!
//! A run is a folder: a Delta table per materialized table (`{table}/`, see [`crate::delta`]),
//! `journal/` (request journal segments), `plan.sql` and `plan.vars.json` (the plan as last
//! run, for `repair`) and `inputs.json` (input file fingerprints).

use std::sync::Arc;

use bytes::Bytes;
use datafusion::prelude::SessionContext;
use futures::TryStreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use url::Url;

use crate::error::{Result, RunError};

/// The S3 bucket `bucket`, configured by the `AWS_*` variables.
pub fn s3_from_env(bucket: &str) -> Result<Arc<dyn ObjectStore>> {
    let s3 = AmazonS3Builder::from_env()
        .with_bucket_name(bucket)
        .build()
        .map_err(|e| store_err(&format!("S3 bucket {bucket}"), e))?;
    Ok(Arc::new(s3))
}

/// Make the buckets of the `s3://` locations among `locations` readable by `ctx` (each
/// configured by the `AWS_*` variables), unless an object store is already registered for
/// them, so that inputs on S3 (Delta tables, Parquet folders) can be named in a plan.
pub fn register_s3_buckets<'a>(
    ctx: &SessionContext,
    locations: impl IntoIterator<Item = &'a str>,
) -> Result<()> {
    for location in locations {
        let Some(rest) = location.strip_prefix("s3://") else {
            continue;
        };
        let bucket = rest.split('/').next().unwrap_or_default();
        let Ok(url) = Url::parse(&format!("s3://{bucket}")) else {
            continue;
        };
        if bucket.is_empty()
            || ctx
                .runtime_env()
                .object_store_registry
                .get_store(&url)
                .is_ok()
        {
            continue;
        }
        ctx.register_object_store(&url, s3_from_env(bucket)?);
    }
    Ok(())
}

/// fsync local files and the folders that hold them (new names are durable only once their
/// folder is), off the async threads.
pub async fn sync_paths(paths: Vec<std::path::PathBuf>) -> Result<()> {
    let synced = tokio::task::spawn_blocking(
        move || -> std::result::Result<(), (std::path::PathBuf, std::io::Error)> {
            let mut folders = std::collections::BTreeSet::new();
            for path in &paths {
                let file = std::fs::File::open(path).map_err(|e| (path.clone(), e))?;
                file.sync_all().map_err(|e| (path.clone(), e))?;
                if let Some(folder) = path.parent() {
                    folders.insert(folder.to_path_buf());
                }
            }
            for folder in folders {
                // Folders cannot be opened for syncing everywhere (Windows): best effort there.
                if let Ok(dir) = std::fs::File::open(&folder) {
                    let _ = dir.sync_all();
                }
            }
            Ok(())
        },
    )
    .await
    .map_err(|e| RunError::Store(format!("syncing files: {e}")))?;
    synced.map_err(|(path, e)| RunError::io(path, e))
}

#[derive(Clone, Debug)]
pub struct RunStore {
    store: Arc<dyn ObjectStore>,
    /// The run folder inside the store.
    root: ObjectPath,
    /// URL prefix DataFusion uses for the run folder (`file:///…/` or `s3://bucket/…/`).
    url: String,
    /// The store's own URL (`s3://bucket`), to register with DataFusion; None when local.
    store_url: Option<Url>,
    /// What the user named, for messages.
    pub display: String,
}

fn store_err(what: &str, e: impl std::error::Error + Send + Sync + 'static) -> RunError {
    RunError::StoreOp {
        what: what.to_string(),
        cause: Box::new(e),
    }
}

/// Where runs live by default: `caiflow run --store`'s default.
pub const DEFAULT_STORE: &str = "data/runs";

/// A store as every process of a cluster names it: an absolute folder (processes may run in
/// other folders) or the S3 URL.
pub fn shared_location(store: &str) -> Result<String> {
    if store.starts_with("s3://") {
        return Ok(store.to_string());
    }
    let path = std::fs::canonicalize(store).map_err(|e| RunError::Io {
        path: store.into(),
        cause: e,
    })?;
    Ok(path.display().to_string())
}

impl RunStore {
    /// An existing run named by its folder, `data/runs/NAME` or `s3://bucket/prefix/NAME`
    /// (what `caiflow inspect`, `report`, `export`, … take).
    pub fn open_spec(spec: &str) -> Result<RunStore> {
        let spec = spec.trim_end_matches('/');
        if let Some(rest) = spec.strip_prefix("s3://")
            && !rest.contains('/')
        {
            return Err(RunError::Store(format!(
                "{spec} names a bucket, not a run: name the run's folder, s3://BUCKET/[PREFIX/]RUN"
            )));
        }
        let (store, run) = spec.rsplit_once('/').unwrap_or((".", spec));
        if !spec.starts_with("s3://") && !std::path::Path::new(spec).is_dir() {
            return Err(RunError::Store(format!("no run folder {spec}")));
        }
        RunStore::open(store, run)
    }

    /// Open run `run` in `store` (a folder path or `s3://bucket[/prefix]`).
    pub fn open(store: &str, run: &str) -> Result<RunStore> {
        if run.is_empty() || run.contains('/') || run.starts_with('.') {
            return Err(RunError::Store(format!(
                "run name '{run}' must be a plain folder name"
            )));
        }
        if let Some(rest) = store.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(RunError::Store(format!("store '{store}' names no bucket")));
            }
            let s3 = s3_from_env(bucket)?;
            let prefix = prefix.trim_matches('/');
            let root = if prefix.is_empty() {
                run.to_string()
            } else {
                format!("{prefix}/{run}")
            };
            let store_url =
                Url::parse(&format!("s3://{bucket}")).map_err(|e| store_err(store, e))?;
            Ok(RunStore {
                store: s3,
                url: format!("s3://{bucket}/{root}/"),
                root: ObjectPath::from(root),
                store_url: Some(store_url),
                display: format!("{}/{run}", store.trim_end_matches('/')),
            })
        } else {
            let folder = std::path::Path::new(store).join(run);
            std::fs::create_dir_all(&folder).map_err(|e| RunError::io(&folder, e))?;
            let folder = folder
                .canonicalize()
                .map_err(|e| RunError::io(&folder, e))?;
            let root = ObjectPath::from_absolute_path(&folder)
                .map_err(|e| store_err(&folder.display().to_string(), e))?;
            Ok(RunStore {
                store: Arc::new(LocalFileSystem::new()),
                url: format!("{}/", folder.display()),
                root,
                store_url: None,
                display: folder.display().to_string(),
            })
        }
    }

    /// Run `run` in an object store given directly (tests: an in-memory or throttled store
    /// standing in for S3), under `url` (`memory://`).
    pub fn in_object_store(store: Arc<dyn ObjectStore>, url: &str, run: &str) -> Result<RunStore> {
        let store_url = Url::parse(url).map_err(|e| store_err(url, e))?;
        Ok(RunStore {
            store,
            url: format!("{}/{run}/", url.trim_end_matches('/')),
            root: ObjectPath::from(run),
            store_url: Some(store_url),
            display: format!("{}/{run}", url.trim_end_matches('/')),
        })
    }

    /// The local file of a path inside the run, when the store is a local folder.
    pub fn local_path(&self, relative: &str) -> Option<std::path::PathBuf> {
        if self.store_url.is_some() {
            return None;
        }
        Some(std::path::Path::new(&self.display).join(relative))
    }

    /// Make DataFusion read and write this store's URLs.
    pub fn register(&self, ctx: &SessionContext) {
        if let Some(url) = &self.store_url {
            ctx.register_object_store(url, self.store.clone());
        }
    }

    /// The URL of a table folder of the run (`file:///…/RUN/name/` or `s3://bucket/…/name/`).
    pub fn table_url(&self, name: &str) -> Result<Url> {
        let url = if self.store_url.is_some() {
            Url::parse(&format!("{}{name}/", self.url)).ok()
        } else {
            Url::from_directory_path(std::path::Path::new(&self.display).join(name)).ok()
        };
        url.ok_or_else(|| RunError::Store(format!("table {name} of {}: not a URL", self.display)))
    }

    /// The object store the run lives in ("/" is the store's root).
    pub fn object_store(&self) -> Arc<dyn ObjectStore> {
        self.store.clone()
    }

    /// The DataFusion location of a path inside the run (ends with `/` for folders).
    pub fn location(&self, relative: &str) -> String {
        format!("{}{relative}", self.url)
    }

    fn path(&self, relative: &str) -> ObjectPath {
        relative
            .split('/')
            .filter(|p| !p.is_empty())
            .fold(self.root.clone(), |p, part| p.join(part))
    }

    /// Fail early, with a clear message, when the store cannot be written.
    pub async fn check_writable(&self) -> Result<()> {
        let probe = self.path(".write-probe");
        self.store
            .put(&probe, PutPayload::from_static(b"ok"))
            .await
            .map_err(|e| store_err(&format!("store {} is not writable", self.display), e))?;
        let _ = self.store.delete(&probe).await;
        Ok(())
    }

    /// Write an object. On a local store it is durable when this returns: the file and its
    /// folder are synced (an object store's PUT is durable by itself).
    pub async fn put(&self, relative: &str, bytes: Bytes) -> Result<()> {
        self.store
            .put(&self.path(relative), PutPayload::from_bytes(bytes))
            .await
            .map_err(|e| store_err(&format!("writing {}/{relative}", self.display), e))?;
        if let Some(path) = self.local_path(relative) {
            sync_paths(vec![path]).await?;
        }
        Ok(())
    }

    /// Create the object only if it does not exist yet: false when it does. Where the store
    /// cannot create conditionally, it is checked first and then written (best effort).
    pub async fn put_new(&self, relative: &str, bytes: Bytes) -> Result<bool> {
        let what = format!("writing {}/{relative}", self.display);
        let options = object_store::PutOptions {
            mode: object_store::PutMode::Create,
            ..Default::default()
        };
        let payload = PutPayload::from_bytes(bytes.clone());
        match self
            .store
            .put_opts(&self.path(relative), payload, options)
            .await
        {
            Ok(_) => Ok(true),
            Err(object_store::Error::AlreadyExists { .. })
            | Err(object_store::Error::Precondition { .. }) => Ok(false),
            Err(object_store::Error::NotImplemented { .. })
            | Err(object_store::Error::NotSupported { .. }) => {
                if self.get(relative).await?.is_some() {
                    return Ok(false);
                }
                self.put(relative, bytes).await?;
                Ok(true)
            }
            Err(e) => Err(store_err(&what, e)),
        }
    }

    /// The object's bytes, or None when it does not exist.
    pub async fn get(&self, relative: &str) -> Result<Option<Bytes>> {
        match self.store.get(&self.path(relative)).await {
            Ok(r) => Ok(Some(r.bytes().await.map_err(|e| store_err(relative, e))?)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(store_err(
                &format!("reading {}/{relative}", self.display),
                e,
            )),
        }
    }

    /// An object's bytes from `offset` on, as a stream of chunks: never held whole (drop the
    /// stream to stop reading).
    pub async fn get_stream(
        &self,
        relative: &str,
        offset: u64,
    ) -> Result<futures::stream::BoxStream<'static, Result<Bytes>>> {
        let what = format!("reading {}/{relative}", self.display);
        let options = object_store::GetOptions {
            range: Some(object_store::GetRange::Offset(offset)),
            ..Default::default()
        };
        let got = self
            .store
            .get_opts(&self.path(relative), options)
            .await
            .map_err(|e| store_err(&what, e))?;
        Ok(Box::pin(
            got.into_stream().map_err(move |e| store_err(&what, e)),
        ))
    }

    /// A writer that streams an object to the store (multipart on S3); the object appears
    /// when the writer is shut down.
    pub fn writer(&self, relative: &str) -> object_store::buffered::BufWriter {
        object_store::buffered::BufWriter::new(self.store.clone(), self.path(relative))
    }

    /// Objects under a folder of the run, as paths relative to the run, sorted.
    pub async fn list(&self, relative: &str) -> Result<Vec<(String, u64)>> {
        let prefix = self.path(relative);
        let root = self.root.as_ref().to_string();
        let mut out: Vec<(String, u64)> = self
            .store
            .list(Some(&prefix))
            .map_ok(|m| {
                let full = m.location.as_ref().to_string();
                (
                    full.strip_prefix(&root)
                        .unwrap_or(&full)
                        .trim_start_matches('/')
                        .to_string(),
                    m.size,
                )
            })
            .try_collect()
            .await
            .map_err(|e| store_err(&format!("listing {}/{relative}", self.display), e))?;
        out.sort();
        Ok(out)
    }

    /// Move an object inside the run (a copy and a delete on object stores).
    pub async fn rename(&self, from: &str, to: &str) -> Result<()> {
        self.store
            .rename(&self.path(from), &self.path(to))
            .await
            .map_err(|e| store_err(&format!("moving {}/{from} to {to}", self.display), e))
    }

    pub async fn delete_one(&self, relative: &str) -> Result<()> {
        self.store
            .delete(&self.path(relative))
            .await
            .map_err(|e| store_err(&format!("deleting {}/{relative}", self.display), e))
    }

    /// Delete every object under a folder of the run (best effort: leftovers are harmless,
    /// since only what a manifest names is ever read).
    pub async fn delete_folder(&self, relative: &str) {
        if let Ok(objects) = self.list(relative).await {
            for (path, _) in objects {
                let _ = self.store.delete(&self.path(&path)).await;
            }
        }
    }
}

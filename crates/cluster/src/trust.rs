//! What a cluster process trusts, and nothing more.
//!
//! A task arrives with its run's options (store, run, endpoints) chosen by whoever submitted
//! the job, so an executor never takes them on faith:
//! - **Endpoints**: an executor serves only the endpoints of its own configuration
//!   (`caiflow cluster executor --config FILE`). A task's endpoint is served when an endpoint
//!   of that file has the same kind, URL (user-info aside), API and key variable; the executor
//!   then builds it from its own entry, so a key is read only for a server the executor's
//!   owner approved. Anything else is refused, naming the endpoint.
//! - **Paths**: an executor reads and writes only under the roots it was started with
//!   (`--allow DIR` or `--allow s3://bucket[/prefix]`, repeatable): the run's store (journal,
//!   data files) and the inputs its tasks read. Local files are reached through a
//!   [`Confined`] store that refuses any other path.
//! - **Who submits**: with `CAIFLOW_CLUSTER_TOKEN` set, a client signs its run options
//!   (HMAC-SHA256); the scheduler refuses a job, and an executor a task, whose signature does
//!   not match. The token itself never travels. Without a token, processes bind to loopback
//!   only.

use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use hmac::{Hmac, Mac};
use object_store::path::Path as ObjectPath;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult,
};
use sha2::Sha256;

use caiflow_llm::config::{BackendConfig, Config, redact_userinfo};

use crate::error::{ClusterError, Result};
use crate::options::RunOptions;

/// The environment variable holding the cluster's shared secret.
pub const TOKEN_ENV: &str = "CAIFLOW_CLUSTER_TOKEN";

/// The shared secret of this process's cluster, if set (read once, at start).
pub fn token_from_env() -> Option<String> {
    std::env::var(TOKEN_ENV).ok().filter(|t| !t.is_empty())
}

/// A process may listen beyond loopback only with a token: anyone who reaches an open
/// scheduler could otherwise submit jobs.
pub fn check_bind(what: &str, addr: SocketAddr, token: Option<&str>) -> Result<()> {
    if addr.ip().is_loopback() || token.is_some() {
        return Ok(());
    }
    Err(ClusterError::Address(format!(
        "{what} {addr} is reachable from other machines, and {TOKEN_ENV} is not set: set the same secret in {TOKEN_ENV} for the scheduler, the executors and the clients, or bind to 127.0.0.1"
    )))
}

/// The MAC of a task's run options under `token`, fed with every field that says what the
/// task may touch.
fn mac(token: &str, options: &RunOptions) -> Option<Hmac<Sha256>> {
    // HMAC takes a key of any length: this fails for no token.
    let mut mac = Hmac::<Sha256>::new_from_slice(token.as_bytes()).ok()?;
    for part in [
        options.store.as_str(),
        options.run.as_str(),
        options.endpoints.as_str(),
        &options.executors.to_string(),
    ] {
        mac.update(&(part.len() as u64).to_le_bytes());
        mac.update(part.as_bytes());
    }
    Some(mac)
}

/// The signature of a task's run options under `token`.
pub fn sign(token: &str, options: &RunOptions) -> String {
    mac(token, options)
        .map(|m| hex::encode(m.finalize().into_bytes()))
        .unwrap_or_default()
}

/// Whether `options` were signed by a holder of `token` (always, without a token).
pub fn verify(token: Option<&str>, options: &RunOptions) -> std::result::Result<(), String> {
    let Some(token) = token else {
        return Ok(());
    };
    let given = hex::decode(&options.auth).unwrap_or_default();
    match mac(token, options).map(|m| m.verify_slice(&given)) {
        Some(Ok(())) => Ok(()),
        _ => Err(format!(
            "refused: the job is not signed with this cluster's token ({TOKEN_ENV}); set the cluster's {TOKEN_ENV} for the client"
        )),
    }
}

/// What decides whether two endpoint definitions reach the same server with the same key.
fn identity(b: &BackendConfig) -> BackendConfig {
    let mut b = b.clone();
    match &mut b {
        BackendConfig::Openai(o) => o.base_url = redact_userinfo(&o.base_url),
        BackendConfig::Nemo(n) => n.base_url = redact_userinfo(&n.base_url),
        BackendConfig::Anthropic(a) => a.base_url = redact_userinfo(&a.base_url),
        BackendConfig::Embedded(_) => {}
    }
    b
}

/// The endpoints to serve for `task`'s: each built from the executor's own entry that
/// reaches the same server with the same key variable; an endpoint with no such entry is
/// refused.
pub fn approve(
    own: Option<&Config>,
    task: &Config,
    worker: &str,
) -> std::result::Result<Config, String> {
    let Some(own) = own else {
        return Err(format!(
            "executor {worker} serves no endpoints: start it with --config FILE naming the endpoints it may call"
        ));
    };
    let mut approved = Config::default();
    for (name, wanted) in &task.endpoints {
        let id = identity(&wanted.backend);
        let Some(mine) = own.endpoints.values().find(|e| identity(&e.backend) == id) else {
            let what = match &wanted.backend {
                BackendConfig::Openai(o) => format!(
                    "base_url {}, api_key_env {}",
                    redact_userinfo(&o.base_url),
                    o.api_key_env.as_deref().unwrap_or("(none)")
                ),
                BackendConfig::Nemo(n) => format!("base_url {}", redact_userinfo(&n.base_url)),
                BackendConfig::Anthropic(a) => format!(
                    "base_url {}, api_key_env {}",
                    redact_userinfo(&a.base_url),
                    a.api_key_env.as_deref().unwrap_or("(none)")
                ),
                BackendConfig::Embedded(e) => {
                    format!(
                        "model_path {}",
                        e.model_path.as_deref().unwrap_or("(default)")
                    )
                }
            };
            return Err(format!(
                "executor {worker} refuses endpoint '{name}' ({what}): its --config allows no such endpoint"
            ));
        };
        let mut endpoint = wanted.clone();
        endpoint.backend = mine.backend.clone();
        approved.endpoints.insert(name.clone(), endpoint);
    }
    Ok(approved)
}

/// One place an executor may read and write.
#[derive(Clone, Debug, PartialEq)]
pub enum Root {
    Folder(PathBuf),
    S3 { bucket: String, prefix: String },
}

/// The places an executor may read and write (`--allow`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Roots(pub Vec<Root>);

/// `path` with `.` and `..` resolved lexically (no file system access), when absolute.
fn normalized(path: &Path) -> Option<PathBuf> {
    if !path.is_absolute() {
        return None;
    }
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::ParentDir => {
                if !out.pop() {
                    return None;
                }
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    Some(out)
}

impl Roots {
    /// Parse `--allow` values: folders (made absolute and resolved) or `s3://bucket[/prefix]`.
    pub fn parse(values: &[String]) -> Result<Roots> {
        let mut roots = vec![];
        for v in values {
            if let Some(rest) = v.strip_prefix("s3://") {
                let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
                if bucket.is_empty() {
                    return Err(ClusterError::Address(format!(
                        "--allow {v}: name a bucket, s3://BUCKET[/PREFIX]"
                    )));
                }
                roots.push(Root::S3 {
                    bucket: bucket.to_string(),
                    prefix: prefix.trim_matches('/').to_string(),
                });
            } else {
                let path = std::fs::canonicalize(v).map_err(|e| {
                    ClusterError::Address(format!("--allow {v}: {e}: name an existing folder"))
                })?;
                roots.push(Root::Folder(path));
            }
        }
        Ok(Roots(roots))
    }

    /// Whether the local `path` is inside a root.
    pub fn allows_path(&self, path: &Path) -> bool {
        let Some(path) = normalized(path) else {
            return false;
        };
        // Symbolic links are followed where the file exists, so a link cannot lead out.
        let real = std::fs::canonicalize(&path).unwrap_or(path);
        self.0.iter().any(|r| match r {
            Root::Folder(root) => real.starts_with(root),
            Root::S3 { .. } => false,
        })
    }

    /// Whether `key` of S3 `bucket` is inside a root.
    pub fn allows_object(&self, bucket: &str, key: &str) -> bool {
        if key.split('/').any(|p| p == "..") {
            return false;
        }
        self.0.iter().any(|r| match r {
            Root::S3 { bucket: b, prefix } => {
                b == bucket
                    && (prefix.is_empty()
                        || key == prefix
                        || key.starts_with(&format!("{prefix}/")))
            }
            Root::Folder(_) => false,
        })
    }

    /// Whether any place of S3 bucket `bucket` is a root.
    pub fn allows_bucket(&self, bucket: &str) -> bool {
        self.0
            .iter()
            .any(|r| matches!(r, Root::S3 { bucket: b, .. } if b == bucket))
    }

    /// Whether a run (`store` as the client named it, and the run's name) lies inside a root.
    pub fn allows_run(&self, store: &str, run: &str) -> bool {
        if run.is_empty() || run.contains('/') || run.starts_with('.') {
            return false;
        }
        match store.strip_prefix("s3://") {
            Some(rest) => {
                let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
                let prefix = prefix.trim_matches('/');
                let key = if prefix.is_empty() {
                    run.to_string()
                } else {
                    format!("{prefix}/{run}")
                };
                self.allows_object(bucket, &key)
            }
            None => self.allows_path(&Path::new(store).join(run)),
        }
    }
}

/// An object store confined to [`Roots`]: a local file system (paths checked against the
/// folders) or one S3 bucket (keys checked against its prefixes). Every path outside them is
/// refused (`PermissionDenied`), so a task cannot read or write elsewhere.
#[derive(Debug)]
pub struct Confined {
    inner: Arc<dyn ObjectStore>,
    roots: Arc<Roots>,
    /// The bucket, for an S3 store; None for the local file system.
    bucket: Option<String>,
}

impl Confined {
    /// The local file system `inner`, confined.
    pub fn new(inner: Arc<dyn ObjectStore>, roots: Arc<Roots>) -> Self {
        Confined {
            inner,
            roots,
            bucket: None,
        }
    }

    /// S3 bucket `bucket` (`inner`), confined.
    pub fn bucket(inner: Arc<dyn ObjectStore>, bucket: &str, roots: Arc<Roots>) -> Self {
        Confined {
            inner,
            roots,
            bucket: Some(bucket.to_string()),
        }
    }

    fn allowed(
        roots: &Roots,
        bucket: Option<&str>,
        location: &ObjectPath,
    ) -> object_store::Result<()> {
        let (ok, shown) = match bucket {
            Some(b) => (
                roots.allows_object(b, location.as_ref()),
                format!("s3://{b}/{location}"),
            ),
            None => {
                let path = PathBuf::from(format!("/{}", location.as_ref()));
                (roots.allows_path(&path), path.display().to_string())
            }
        };
        if ok {
            Ok(())
        } else {
            Err(object_store::Error::PermissionDenied {
                path: shown,
                source: "outside the places this executor was started with (--allow)".into(),
            })
        }
    }

    fn check(&self, location: &ObjectPath) -> object_store::Result<()> {
        Self::allowed(&self.roots, self.bucket.as_deref(), location)
    }

    fn check_prefix(&self, prefix: Option<&ObjectPath>) -> object_store::Result<()> {
        match prefix {
            Some(p) => self.check(p),
            None => self.check(&ObjectPath::from("")),
        }
    }
}

impl fmt::Display for Confined {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Confined({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for Confined {
    async fn put_opts(
        &self,
        location: &ObjectPath,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        self.check(location)?;
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &ObjectPath,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.check(location)?;
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(
        &self,
        location: &ObjectPath,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        self.check(location)?;
        self.inner.get_opts(location, options).await
    }

    async fn get_ranges(
        &self,
        location: &ObjectPath,
        ranges: &[Range<u64>],
    ) -> object_store::Result<Vec<Bytes>> {
        self.check(location)?;
        self.inner.get_ranges(location, ranges).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<ObjectPath>>,
    ) -> BoxStream<'static, object_store::Result<ObjectPath>> {
        let (roots, bucket) = (self.roots.clone(), self.bucket.clone());
        let checked = locations
            .map(move |l| {
                let l = l?;
                Self::allowed(&roots, bucket.as_deref(), &l)?;
                Ok(l)
            })
            .boxed();
        self.inner.delete_stream(checked)
    }

    fn list(
        &self,
        prefix: Option<&ObjectPath>,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        if let Err(e) = self.check_prefix(prefix) {
            return futures::stream::once(async move { Err(e) }).boxed();
        }
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(
        &self,
        prefix: Option<&ObjectPath>,
    ) -> object_store::Result<ListResult> {
        self.check_prefix(prefix)?;
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(
        &self,
        from: &ObjectPath,
        to: &ObjectPath,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        self.check(from)?;
        self.check(to)?;
        self.inner.copy_opts(from, to, options).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use caiflow_llm::config::EndpointConfig;

    fn config(url: &str, key: Option<&str>) -> Config {
        let mut e = EndpointConfig::openai(url, "m");
        if let BackendConfig::Openai(o) = &mut e.backend {
            o.api_key_env = key.map(str::to_string);
        }
        let mut c = Config::default();
        c.endpoints.insert("policy".into(), e);
        c
    }

    #[test]
    fn only_the_executors_own_endpoints_are_served() {
        let own = config("https://user:pw@api.example.com/v1", Some("OPENAI_API_KEY"));
        let task = config("https://***@api.example.com/v1", Some("OPENAI_API_KEY"));
        let served = approve(Some(&own), &task, "w").expect("approved");
        assert_eq!(
            served.endpoints["policy"].backend,
            own.endpoints["policy"].backend
        );
        for (url, key) in [
            ("http://evil.example/v1", Some("OPENAI_API_KEY")),
            ("https://api.example.com/v1", Some("AWS_SECRET_ACCESS_KEY")),
        ] {
            let e = approve(Some(&own), &config(url, key), "w").expect_err("refused");
            assert!(e.contains("refuses endpoint 'policy'"), "{e}");
        }
        assert!(approve(None, &task, "w").is_err());
    }

    #[test]
    fn signatures_bind_the_options() {
        let mut o = RunOptions {
            store: "/runs".into(),
            run: "r".into(),
            ..Default::default()
        };
        o.auth = sign("secret", &o);
        assert!(verify(Some("secret"), &o).is_ok());
        assert!(verify(Some("other"), &o).is_err());
        o.store = "/etc".into();
        assert!(verify(Some("secret"), &o).is_err());
        assert!(verify(None, &o).is_ok());
    }

    #[test]
    fn roots_confine_paths() {
        let dir = tempfile::tempdir().expect("tempdir");
        let roots =
            Roots::parse(&[dir.path().display().to_string(), "s3://b/runs".into()]).expect("roots");
        assert!(roots.allows_path(&dir.path().join("x/y.jsonl")));
        assert!(!roots.allows_path(&dir.path().join("../etc/passwd")));
        assert!(!roots.allows_path(Path::new("/etc/passwd")));
        assert!(roots.allows_run("s3://b/runs", "r1"));
        assert!(!roots.allows_run("s3://b/other", "r1"));
        assert!(!roots.allows_run("s3://b/runs", "../x"));
        assert!(roots.allows_run(&dir.path().display().to_string(), "r"));
        assert!(!roots.allows_run("/tmp", "r"));
    }
}

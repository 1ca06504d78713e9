//! Bytes on the wire: raw watches that count what the API server sends, as a
//! node agent's watches (JSON, the only encoding custom resources have) and
//! as kube-proxy's EndpointSlice watch (protobuf, client-go's default for
//! built-in kinds; JSON too, for the like-for-like figure).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures::AsyncReadExt;
use http::Request;
use http::header::ACCEPT;
use tokio::task::JoinHandle;

use super::ScaleError;

pub const JSON: &str = "application/json";
pub const PROTOBUF: &str = "application/vnd.kubernetes.protobuf";

/// One collection's watch, counting the bytes of its events.
pub struct ByteWatch {
    bytes: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl ByteWatch {
    /// Watch `collection` (an API path, e.g. `/api/v1/nodes`) from now on,
    /// with optional field selector, in `encoding`.
    pub async fn start(
        client: &kube::Client,
        collection: &str,
        field_selector: Option<&str>,
        encoding: &'static str,
    ) -> Result<ByteWatch, ScaleError> {
        let fields = field_selector
            .map(|f| format!("&fieldSelector={f}"))
            .unwrap_or_default();
        let list: serde_json::Value = client
            .request(get(&format!("{collection}?limit=1{fields}"), JSON)?)
            .await
            .map_err(|source| ScaleError::api(format!("list {collection}"), source))?;
        let version = list["metadata"]["resourceVersion"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let uri = format!(
            "{collection}?watch=true&resourceVersion={version}&timeoutSeconds=3600{fields}"
        );
        let mut body = client
            .request_stream(get(&uri, encoding)?)
            .await
            .map_err(|source| ScaleError::api(format!("watch {collection}"), source))?;
        let bytes = Arc::new(AtomicU64::new(0));
        let counter = bytes.clone();
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 64 * 1024];
            while let Ok(n) = body.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                counter.fetch_add(n as u64, Ordering::Relaxed);
            }
        });
        Ok(ByteWatch { bytes, task })
    }

    /// Bytes received so far.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }
}

impl Drop for ByteWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn get(uri: &str, accept: &str) -> Result<Request<Vec<u8>>, ScaleError> {
    Request::get(uri)
        .header(ACCEPT, accept)
        .body(Vec::new())
        .map_err(|e| ScaleError::Setup(format!("request {uri}: {e}")))
}

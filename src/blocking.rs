//! Blocking file I/O from async code, on tokio's blocking pool.

use crate::Result;

/// Runs blocking file I/O on tokio's blocking pool, keeping the async workers free.
pub(crate) async fn blocking<T, F>(f: F) -> Result<T>
where
    F: FnOnce() -> Result<T> + Send + 'static,
    T: Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(result) => result,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

//! Config files that change while a service runs.

use std::path::Path;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// How often a config file is checked. Polling the content (not inotify) also sees
/// Kubernetes ConfigMap updates, which swap a symlink instead of writing the file.
pub const CONFIG_POLL_INTERVAL: Duration = Duration::from_secs(2);

/// Waits until the file's content differs from `current` and returns the new content, or
/// `None` once `cancel` fires. An unreadable file is retried at the next check.
pub async fn file_change(
    path: &Path,
    current: &[u8],
    cancel: &CancellationToken,
) -> Option<Vec<u8>> {
    loop {
        tokio::select! {
            () = cancel.cancelled() => return None,
            () = tokio::time::sleep(CONFIG_POLL_INTERVAL) => {}
        }
        match tokio::fs::read(path).await {
            Ok(bytes) if bytes != current => return Some(bytes),
            Ok(_) => {}
            Err(error) => {
                tracing::warn!(file = %path.display(), %error, "Cannot read the config file; keeping the running config.")
            }
        }
    }
}

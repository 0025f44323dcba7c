//! Config files that change while a service runs: the config itself, and the files it names
//! (secret mounts, CA bundles), watched together so that a rotated secret applies like an
//! edited config.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::ConfigError;

/// How often a config file is checked. Polling the content (not inotify) also sees
/// Kubernetes ConfigMap and Secret updates, which swap a symlink instead of writing the file.
pub const CONFIG_POLL_INTERVAL: Duration = Duration::from_secs(2);

/// Files and the content a service read from each (`None`: it could not be read). A service
/// records the bytes it actually parsed, so a change made between reading a file and starting
/// to watch it is still seen. `Debug` prints paths and sizes, never content (secrets).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Files(Vec<(PathBuf, Option<Vec<u8>>)>);

impl Files {
    /// Reads `path` and records what was read; the error is returned and recorded as `None`.
    pub fn read(&mut self, path: &Path) -> std::io::Result<Vec<u8>> {
        let read = std::fs::read(path);
        self.record(path, read.as_ref().ok().cloned());
        read
    }

    /// Reads the config file `path` as a service loads it: returns its text and records the
    /// very bytes read, the snapshot a watcher of the file starts from ([`Files::content`]).
    /// Never watch from a second read: a change made between the load and that read would
    /// never be applied. The error names the file and `what` it holds.
    pub fn read_config(&mut self, path: &Path, what: &'static str) -> Result<String, ConfigError> {
        let text = ConfigError::read(path, what);
        self.record(
            path,
            text.as_ref().ok().map(|text| text.as_bytes().to_vec()),
        );
        text
    }

    /// What was recorded of `path` (`None`: not recorded, or it could not be read).
    pub fn content(&self, path: &Path) -> Option<&[u8]> {
        self.0
            .iter()
            .find(|(p, _)| p == path)
            .and_then(|(_, content)| content.as_deref())
    }

    /// Records that `content` is what the service uses of `path`.
    pub fn record(&mut self, path: &Path, content: Option<Vec<u8>>) {
        match self.0.iter_mut().find(|(p, _)| p == path) {
            Some(entry) => entry.1 = content,
            None => self.0.push((path.to_owned(), content)),
        }
    }

    pub fn paths(&self) -> impl Iterator<Item = &Path> {
        self.0.iter().map(|(path, _)| path.as_path())
    }

    /// The files whose content differs in `other` (or that only one of the two has).
    pub fn changed_since<'a>(&'a self, other: &'a Files) -> impl Iterator<Item = &'a Path> {
        self.0
            .iter()
            .filter(move |entry| !other.0.contains(entry))
            .map(|(path, _)| path.as_path())
    }

    /// Waits until the content of any of the files differs from what was recorded (checked
    /// every [`CONFIG_POLL_INTERVAL`]) and returns them as they are now, or `None` once
    /// `cancel` fires. A file that becomes unreadable is a change (its content is `None`).
    pub async fn changed(&self, cancel: &CancellationToken) -> Option<Files> {
        loop {
            tokio::select! {
                () = cancel.cancelled() => return None,
                () = tokio::time::sleep(CONFIG_POLL_INTERVAL) => {}
            }
            let mut now = Files(Vec::with_capacity(self.0.len()));
            for (path, _) in &self.0 {
                now.record(path, tokio::fs::read(path).await.ok());
            }
            if now != *self {
                return Some(now);
            }
        }
    }
}

impl fmt::Debug for Files {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.0.iter().map(|(path, content)| {
                let size = content
                    .as_ref()
                    .map_or_else(|| "unreadable".to_owned(), |c| format!("{} bytes", c.len()));
                (path.display(), size)
            }))
            .finish()
    }
}

/// Waits until the file's content differs from `current` and returns the new content, or
/// `None` once `cancel` fires. An unreadable file is logged once and waited past (the running
/// config stays in force).
pub async fn file_change(
    path: &Path,
    current: &[u8],
    cancel: &CancellationToken,
) -> Option<Vec<u8>> {
    let mut files = Files::default();
    files.record(path, Some(current.to_vec()));
    loop {
        files = files.changed(cancel).await?;
        match &files.0[0].1 {
            Some(content) => return Some(content.clone()),
            None => {
                tracing::warn!(file = %path.display(), "Cannot read the config file; keeping the running config.");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_change_to_any_file_is_seen_and_named_and_content_never_printed() {
        let dir = std::env::temp_dir().join(format!("watch-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (config, key) = (dir.join("config.yaml"), dir.join("key"));
        std::fs::write(&config, "a: 1\n").unwrap();
        std::fs::write(&key, "secret-one").unwrap();
        let mut files = Files::default();
        assert_eq!(files.read(&config).unwrap(), b"a: 1\n");
        files.read(&key).unwrap();
        assert!(!format!("{files:?}").contains("secret-one"), "{files:?}");
        assert!(format!("{files:?}").contains("10 bytes"), "{files:?}");

        let cancel = CancellationToken::new();
        // Nothing changed: still waiting after a poll.
        let unchanged = tokio::time::timeout(CONFIG_POLL_INTERVAL * 3 / 2, files.changed(&cancel));
        assert!(unchanged.await.is_err());

        // A Kubernetes-style rotation: a new file renamed over the old one.
        std::fs::write(dir.join("key.new"), "secret-two").unwrap();
        std::fs::rename(dir.join("key.new"), &key).unwrap();
        let now = files.changed(&cancel).await.unwrap();
        assert_eq!(
            now.changed_since(&files).collect::<Vec<_>>(),
            [key.as_path()]
        );

        // A file that disappears is a change too, and is recorded as unreadable.
        std::fs::remove_file(&key).unwrap();
        let gone = now.changed(&cancel).await.unwrap();
        assert!(format!("{gone:?}").contains("unreadable"), "{gone:?}");

        cancel.cancel();
        assert!(gone.changed(&cancel).await.is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A service loads its config, then does other work (checks its topics, restores) before
    /// its watcher starts: an edit made meanwhile must still be applied. The watcher starts
    /// from the bytes the load parsed; started from a read of its own, it took the edited file
    /// for the running one and never applied it.
    #[tokio::test]
    async fn a_change_between_loading_and_watching_is_seen() {
        let dir = std::env::temp_dir().join(format!("watch-load-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("segments.yaml");
        std::fs::write(&config, "a: 1\n").unwrap();
        let mut loaded = Files::default();
        assert_eq!(
            loaded.read_config(&config, "definitions").unwrap(),
            "a: 1\n"
        );

        std::fs::write(&config, "a: 2\n").unwrap();
        let cancel = CancellationToken::new();
        let running = loaded.content(&config).unwrap();
        let change = tokio::time::timeout(
            CONFIG_POLL_INTERVAL * 3,
            file_change(&config, running, &cancel),
        )
        .await
        .expect("the change made after loading and before watching was never seen");
        assert_eq!(change.as_deref(), Some(&b"a: 2\n"[..]));

        // Unreadable at load: the error names the file, and nothing is recorded as running.
        let missing = dir.join("missing.yaml");
        let error = loaded.read_config(&missing, "definitions").unwrap_err();
        assert!(
            error
                .to_string()
                .contains("missing.yaml: invalid definitions"),
            "{error}"
        );
        assert_eq!(loaded.content(&missing), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

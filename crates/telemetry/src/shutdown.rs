//! The signals that stop a service: SIGTERM (Kubernetes stopping a pod) and SIGINT (Ctrl-C).

/// Resolves on the first SIGTERM (Kubernetes stopping a pod) or SIGINT (Ctrl-C).
pub async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = terminate.recv() => tracing::info!(signal = "SIGTERM", "Shutting down."),
                    _ = interrupt => tracing::info!(signal = "SIGINT", "Shutting down."),
                }
            }
            Err(error) => {
                tracing::warn!(%error, "Cannot listen for SIGTERM; only SIGINT stops this process.");
                let _ = interrupt.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
}

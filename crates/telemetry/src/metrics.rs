//! Registering a service's metrics: the services build their metrics into a struct of handles
//! and hand the registry every handle in one list. Also the one metric both define alike,
//! [`partitions_revoked`].

use prometheus::core::Collector;
use prometheus::{IntCounterVec, Opts, Registry};

/// A collector whose clones share its values, as every prometheus metric (`IntCounterVec`,
/// `Histogram`, …) is: the registry gets a clone, the service keeps the original.
pub trait MetricHandle: Collector {
    /// A clone for the registry.
    fn boxed_clone(&self) -> Box<dyn Collector>;
}

impl<T: Collector + Clone + 'static> MetricHandle for T {
    fn boxed_clone(&self) -> Box<dyn Collector> {
        Box::new(self.clone())
    }
}

/// Registers each of `metrics` with `registry`, in order; stops at the first that cannot be
/// registered (a name registered twice, or inconsistent with one of the same name).
pub fn register_all(registry: &Registry, metrics: &[&dyn MetricHandle]) -> prometheus::Result<()> {
    for metric in metrics {
        registry.register(metric.boxed_clone())?;
    }
    Ok(())
}

/// `<service>_partitions_revoked_total{topic}`: the input partitions a service's group
/// consumer gave up in rebalances (to another member joining, to its own leaving or its session
/// running out). A steady group adds none; a rising count is churn, and each partition revoked
/// costs its next owner a restart of its work there (the qualifier: a restore from the
/// changelog). Both services export it, `service` naming which.
pub fn partitions_revoked(service: &str) -> prometheus::Result<IntCounterVec> {
    IntCounterVec::new(
        Opts::new(
            format!("{service}_partitions_revoked_total"),
            "Input partitions this process's group consumer gave up in rebalances.",
        ),
        &["topic"],
    )
}

#[cfg(test)]
mod tests;

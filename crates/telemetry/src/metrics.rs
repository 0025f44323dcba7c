//! Registering a service's metrics: the services build their metrics into a struct of handles
//! and hand the registry every handle in one list.

use prometheus::Registry;
use prometheus::core::Collector;

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

#[cfg(test)]
mod tests;

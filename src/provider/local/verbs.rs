//! How the local provider words what it did, for the provision phase's summary line.

use super::ProvisionReport;

impl ProvisionReport {
    /// "3 nodes: 1 booted, 2 kept, 1 replaced (worker-1), 0 removed".
    pub fn detail(&self, nodes: usize) -> String {
        let list = |v: &[String]| {
            if v.is_empty() || v.len() > 5 {
                String::new()
            } else {
                format!(" ({})", v.join(", "))
            }
        };
        format!(
            "{nodes} local nodes: {} booted, {} kept, {} replaced{}, {} removed{}{}",
            self.booted.len(),
            self.kept.len(),
            self.replaced.len(),
            list(&self.replaced),
            self.removed.len(),
            list(&self.removed),
            if self.image_built {
                "; node image built"
            } else {
                ""
            }
        )
    }
}

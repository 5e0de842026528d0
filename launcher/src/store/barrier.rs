//! A barrier over the store, for the start of a job (every node, or every rank, arrives before
//! any goes on): one `add` on a counter, and a `wait` for the key the last arrival sets.

use std::time::Duration;

use crate::store::client::StoreClient;
use crate::store::error::{Result, StoreError};

/// The store keys barrier `name` uses: the arrival counter and the key the last arrival sets.
pub fn barrier_keys(name: &str) -> (String, String) {
    (format!("barrier/{name}/arrived"), format!("barrier/{name}/done"))
}

impl StoreClient {
    /// Waits until `world_size` participants have called `barrier` with this `name`, for up to
    /// [`wait_timeout`](Self::wait_timeout). A name serves one barrier: use a new one (add a
    /// generation number) for each.
    pub async fn barrier(&mut self, name: &str, world_size: usize) -> Result<()> {
        self.barrier_within(name, world_size, self.wait_timeout()).await
    }

    /// [`barrier`](Self::barrier) that waits for up to `timeout`. The timeout error says how many
    /// participants arrived.
    pub async fn barrier_within(&mut self, name: &str, world_size: usize, timeout: Duration) -> Result<()> {
        if world_size == 0 {
            return Err(StoreError::Usage(format!("barrier `{name}` for 0 participants")));
        }
        let (arrived, done) = barrier_keys(name);
        let n = self.add(&arrived, 1).await?;
        if n as usize > world_size {
            return Err(StoreError::Usage(format!(
                "barrier `{name}`: arrival {n} of {world_size}: more participants than expected; the name was used \
                 by an earlier barrier (use a new name for each), or the callers disagree on the world size"
            )));
        }
        if n as usize == world_size {
            self.set(&done, b"1").await?;
        }
        match self.wait_within(&[&done], timeout).await {
            Err(StoreError::Timeout(_)) => {
                let count = self
                    .try_get(&arrived)
                    .await?
                    .and_then(|v| String::from_utf8(v).ok())
                    .unwrap_or_else(|| "?".into());
                Err(StoreError::Timeout(format!(
                    "barrier `{name}`: {count} of {world_size} participants arrived within {:.1} s; the others \
                     have not reached it (crashed, stuck, or started with another world size)",
                    timeout.as_secs_f64()
                )))
            }
            other => other,
        }
    }
}

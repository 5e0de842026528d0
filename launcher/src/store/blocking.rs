//! `BlockingStoreClient`: the store client for code that is not async (such as
//! `nb::dist::init`). It runs a current-thread tokio runtime of its own and blocks on each call.

use std::path::Path;
use std::time::Duration;

use tokio::runtime::{Builder, Handle, Runtime};

use crate::store::client::{ClientOptions, StoreClient};
use crate::store::error::{Result, StoreError};
use crate::store::state::Swap;
use crate::store::token::Token;

/// Refuses to block inside an async runtime (tokio would panic).
fn outside_async() -> Result<()> {
    if Handle::try_current().is_ok() {
        return Err(StoreError::Usage(
            "BlockingStoreClient was used inside an async runtime, where blocking would stall it; use \
             StoreClient there"
                .into(),
        ));
    }
    Ok(())
}

/// A [`StoreClient`] with blocking calls. Each method is the async client's method of the same
/// name; see there.
pub struct BlockingStoreClient {
    runtime: Runtime,
    client: StoreClient,
}

impl std::fmt::Debug for BlockingStoreClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Blocking{:?}", self.client)
    }
}

impl BlockingStoreClient {
    /// Connects as [`StoreClient::connect`] does, retrying until `options.connect_timeout`.
    pub fn connect(addr: &str, token: &Token, options: ClientOptions) -> Result<BlockingStoreClient> {
        outside_async()?;
        let runtime = Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| StoreError::Connection(format!("cannot start the runtime the blocking client needs: {e}")))?;
        let client = runtime.block_on(StoreClient::connect(addr, token, options))?;
        Ok(BlockingStoreClient { runtime, client })
    }

    /// Connects with the token read from `token_file` ([`Token::from_file`]).
    pub fn connect_with_token_file(
        addr: &str,
        token_file: &Path,
        options: ClientOptions,
    ) -> Result<BlockingStoreClient> {
        BlockingStoreClient::connect(addr, &Token::from_file(token_file)?, options)
    }

    /// The async client underneath.
    pub fn inner(&self) -> &StoreClient {
        &self.client
    }

    /// [`StoreClient::set`].
    pub fn set(&mut self, key: &str, value: &[u8]) -> Result<()> {
        outside_async()?;
        self.runtime.block_on(self.client.set(key, value))
    }

    /// [`StoreClient::get`].
    pub fn get(&mut self, key: &str) -> Result<Vec<u8>> {
        outside_async()?;
        self.runtime.block_on(self.client.get(key))
    }

    /// [`StoreClient::get_within`].
    pub fn get_within(&mut self, key: &str, timeout: Duration) -> Result<Vec<u8>> {
        outside_async()?;
        self.runtime.block_on(self.client.get_within(key, timeout))
    }

    /// [`StoreClient::try_get`].
    pub fn try_get(&mut self, key: &str) -> Result<Option<Vec<u8>>> {
        outside_async()?;
        self.runtime.block_on(self.client.try_get(key))
    }

    /// [`StoreClient::add`].
    pub fn add(&mut self, key: &str, delta: i64) -> Result<i64> {
        outside_async()?;
        self.runtime.block_on(self.client.add(key, delta))
    }

    /// [`StoreClient::compare_and_set`].
    pub fn compare_and_set(&mut self, key: &str, expected: Option<&[u8]>, new: &[u8]) -> Result<Swap> {
        outside_async()?;
        self.runtime.block_on(self.client.compare_and_set(key, expected, new))
    }

    /// [`StoreClient::wait`].
    pub fn wait(&mut self, keys: &[&str]) -> Result<()> {
        outside_async()?;
        self.runtime.block_on(self.client.wait(keys))
    }

    /// [`StoreClient::wait_within`].
    pub fn wait_within(&mut self, keys: &[&str], timeout: Duration) -> Result<()> {
        outside_async()?;
        self.runtime.block_on(self.client.wait_within(keys, timeout))
    }

    /// [`StoreClient::delete`].
    pub fn delete(&mut self, key: &str) -> Result<bool> {
        outside_async()?;
        self.runtime.block_on(self.client.delete(key))
    }

    /// [`StoreClient::barrier`].
    pub fn barrier(&mut self, name: &str, world_size: usize) -> Result<()> {
        outside_async()?;
        self.runtime.block_on(self.client.barrier(name, world_size))
    }

    /// [`StoreClient::barrier_within`].
    pub fn barrier_within(&mut self, name: &str, world_size: usize, timeout: Duration) -> Result<()> {
        outside_async()?;
        self.runtime
            .block_on(self.client.barrier_within(name, world_size, timeout))
    }
}

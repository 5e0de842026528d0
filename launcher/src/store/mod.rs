//! The rendezvous store: a TCP key-value store (keys are strings, values bytes) in the manner of
//! PyTorch's TCPStore, served by node 0's launcher for the whole job. Nodes and ranks use it for
//! the rendezvous (`set`/`get` of addresses), the barrier at start ([`StoreClient::barrier`]),
//! failure notices (a `set` that a watcher's `wait` or `try_get` sees) and NCCL's 128-byte
//! unique id (rank 0 `set`s it, the others `get` it).
//!
//! Unlike TCPStore, which has no authentication and is meant for trusted networks only, the
//! store lets in only connections that prove they hold the job's secret [`Token`], in a mutual
//! challenge-response run before anything else is read (see [`protocol`] for the wire format).
//! It listens only on the address it is given. Hostile traffic (garbage, a frame that declares
//! 4 GiB, stalled peers, floods of connections) gets an error and a closed connection within
//! the limits of [`ServerConfig`], and the clients being served are not disturbed.
//!
//! What the token does not do: the traffic after the handshake is neither encrypted nor
//! integrity-protected, so someone who can read or inject packets on the path (not merely
//! connect) sees values and could tamper with a live connection. Keep the store on the
//! cluster's network.
//!
//! ```no_run
//! use nabla_launch::store::{ClientOptions, ServerConfig, StoreClient, StoreServer, Token};
//!
//! # async fn demo() -> Result<(), nabla_launch::store::StoreError> {
//! let token = Token::generate()?;
//! let server = StoreServer::bind("127.0.0.1:29400".parse().unwrap(), token.clone(), ServerConfig::default()).await?;
//! let mut rank0 = StoreClient::connect("127.0.0.1:29400", &token, ClientOptions::default()).await?;
//! rank0.set("nccl/unique_id", &[7u8; 128]).await?;
//! let mut rank1 = StoreClient::connect("127.0.0.1:29400", &token, ClientOptions::default()).await?;
//! assert_eq!(rank1.get("nccl/unique_id").await?, vec![7u8; 128]);
//! # drop(server);
//! # Ok(())
//! # }
//! ```

pub(crate) mod auth;
mod barrier;
mod blocking;
mod client;
mod config;
mod connection;
mod error;
pub mod protocol;
mod server;
mod state;
mod token;

pub use barrier::barrier_keys;
pub use blocking::BlockingStoreClient;
pub use client::{ClientOptions, StoreClient};
pub use config::{Logger, ServerConfig};
pub use error::{Result, StoreError};
pub use protocol::{DEFAULT_MAX_FRAME_BYTES, PROTOCOL_VERSION};
pub use server::{ServerStats, StoreServer};
pub use state::Swap;
pub use token::{MAX_TOKEN_CHARS, MIN_TOKEN_CHARS, TOKEN_RANDOM_BYTES, Token};

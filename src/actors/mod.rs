//! Supervised actors, each the single owner of one piece of state:
//! `StoreActor` the database, `RouterActor` the routing table, `ProviderActor` one
//! deployment's admission state, `QuotaActor` this instance's leases of the shared limits;
//! `ChangeFeed` tells whoever holds a copy of stored data what the store changed; `JobActor`
//! runs async jobs, `BusActor` brokers the agent bus, `PassthroughActor` the passthrough
//! route table and its per-key request windows.

pub mod bus;
pub mod feed;
pub mod jobs;
pub mod mcp;
pub mod passthrough;
pub mod provider;
pub mod quota;
pub mod router;
pub mod store;

use std::time::Duration;

/// Upper bound on any actor round trip from the HTTP edge; a miss becomes a 503.
pub const ASK_TIMEOUT: Duration = Duration::from_secs(5);

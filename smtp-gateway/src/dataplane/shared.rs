//! [`SharedDataplane`]: the one [`Dataplane`] of a running daemon, shared by its tasks (auto-ban,
//! sweeper, metrics scrapes, control socket, reload). Map operations are blocking: tasks take the
//! lock inside `spawn_blocking`.

use std::sync::{Arc, Mutex};

use super::Dataplane;

/// The data plane shared by the daemon's tasks.
pub type SharedDataplane = Arc<Mutex<Dataplane>>;

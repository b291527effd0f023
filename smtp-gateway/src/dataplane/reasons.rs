//! Reason texts live in the kernel (`REASONS`) next to the entries that cite them, so they survive
//! the daemon and any CLI can show them. An id is the FNV-1a hash of the text, probed linearly on
//! collision; 0 means "no reason".
//!
//! A text is freed when the last entry citing it goes: deleted ([`Dataplane::unblock`],
//! [`Dataplane::disallow`]), replaced by an entry with another reason ([`Dataplane::block`],
//! [`Dataplane::allow`]) or expired ([`Dataplane::sweep_expired`]). The entries are the only
//! record of who cites what (the maps outlive every process), so freeing walks them, stopping as
//! soon as every candidate is found cited. When the table is still full, every uncited text is
//! collected; when even that leaves no room, the entry is stored with no reason (id 0) rather than
//! refused: a ban never fails for want of a reason slot ([`fallbacks`] counts those, and each is
//! logged).

use std::{
    collections::HashSet,
    sync::atomic::{AtomicU64, Ordering},
};

use smtp_gateway_common::{REASON_TEXT_LEN, ReasonText, maps};

use super::{Dataplane, DataplaneError, error::is_not_found};

/// Collisions probed before giving up.
const MAX_PROBES: u32 = 32;

/// Entries stored without their reason by this process because the table had no room.
static FALLBACKS: AtomicU64 = AtomicU64::new(0);

/// How many entries this process stored without their reason text because the table was full.
pub fn fallbacks() -> u64 {
    FALLBACKS.load(Ordering::Relaxed)
}

/// Where `text` is or can go.
enum Slot {
    /// Stored under this id already.
    Found(u32),
    /// Not stored; this id is free.
    Free(u32),
    /// Not stored, and every probed id holds another text.
    Taken,
}

/// Stores `text` (truncated to the kernel's field at a character boundary) and returns its id.
/// A table without room gives 0 (no reason; counted and logged), never an error: only a failing
/// map operation is one.
pub fn intern(dp: &mut Dataplane, text: &str) -> Result<u32, DataplaneError> {
    let text = truncate(text);
    if text.is_empty() {
        return Ok(0);
    }
    let mut value = ReasonText {
        text: [0; REASON_TEXT_LEN],
    };
    if let Some(field) = value.text.get_mut(..text.len()) {
        field.copy_from_slice(text.as_bytes());
    }
    // At most twice: once as things are, once after collecting the texts nobody cites.
    for collected in [false, true] {
        let id = match probe(dp, text, &value)? {
            Slot::Found(id) => return Ok(id),
            Slot::Free(id) => id,
            Slot::Taken if collected => break,
            Slot::Taken => {
                collect_uncited(dp)?;
                continue;
            }
        };
        let capacity = dp.capacity(maps::REASONS);
        match dp.reasons.insert(id, value, 0) {
            Ok(()) => return Ok(id),
            Err(e) => match DataplaneError::map(maps::REASONS, capacity, "reasons", e) {
                DataplaneError::Full { .. } if !collected => {
                    collect_uncited(dp)?;
                }
                DataplaneError::Full { .. } => break,
                other => return Err(other),
            },
        }
    }
    FALLBACKS.fetch_add(1, Ordering::Relaxed);
    tracing::warn!(
        reason = text,
        capacity = dp.capacity(maps::REASONS),
        "the reasons table is full of texts cited by entries: the entry is stored without its \
         reason (raise dataplane.capacity.reasons and recreate the maps to keep them all)"
    );
    Ok(0)
}

/// Looks `text` up along its probe sequence.
fn probe(dp: &Dataplane, text: &str, value: &ReasonText) -> Result<Slot, DataplaneError> {
    let mut id = fnv1a32(text.as_bytes()).max(1);
    let mut free = None;
    // The whole sequence: a text may sit past a slot freed after it was stored.
    for _ in 0..MAX_PROBES {
        match dp.reasons.get(&id, 0) {
            Ok(existing) if existing == *value => return Ok(Slot::Found(id)),
            Ok(_) => {}
            Err(e) if is_not_found(&e) => {
                free.get_or_insert(id);
            }
            Err(source) => {
                return Err(DataplaneError::Map {
                    name: maps::REASONS,
                    source,
                });
            }
        }
        id = id.wrapping_add(1).max(1);
    }
    Ok(free.map_or(Slot::Taken, Slot::Free))
}

/// Frees those of `candidates` (reason ids of entries that just went) that no entry cites any
/// more. Returns how many were freed.
pub fn release(
    dp: &mut Dataplane,
    candidates: impl IntoIterator<Item = u32>,
) -> Result<usize, DataplaneError> {
    let candidates: HashSet<u32> = candidates.into_iter().filter(|id| *id != 0).collect();
    if candidates.is_empty() {
        return Ok(0);
    }
    let uncited = dp.uncited_reasons(candidates)?;
    forget(dp, uncited)
}

/// Deletes `ids` from the table (the caller knows no entry cites them).
pub(super) fn forget(
    dp: &mut Dataplane,
    ids: impl IntoIterator<Item = u32>,
) -> Result<usize, DataplaneError> {
    let mut freed = 0;
    for id in ids {
        match dp.reasons.remove(&id) {
            Ok(()) => freed += 1,
            Err(e) if is_not_found(&e) => {}
            Err(source) => {
                return Err(DataplaneError::Map {
                    name: maps::REASONS,
                    source,
                });
            }
        }
    }
    Ok(freed)
}

/// Frees every text no entry cites (left behind by an entry that could not be stored, or by a
/// process that stopped between its changes).
fn collect_uncited(dp: &mut Dataplane) -> Result<usize, DataplaneError> {
    let mut all = HashSet::new();
    for key in dp.reasons.keys() {
        match key {
            Ok(id) => {
                all.insert(id);
            }
            // Deleted while walking: nothing to free.
            Err(e) if is_not_found(&e) => {}
            Err(source) => {
                return Err(DataplaneError::Map {
                    name: maps::REASONS,
                    source,
                });
            }
        }
    }
    let freed = release(dp, all)?;
    if freed > 0 {
        tracing::info!(freed, "reasons table: freed texts no entry cites");
    }
    Ok(freed)
}

/// The text of reason `id` (`None` for 0 or an unknown id).
pub fn resolve(dp: &Dataplane, id: u32) -> Option<String> {
    if id == 0 {
        return None;
    }
    let value = dp.reasons.get(&id, 0).ok()?;
    let end = value
        .text
        .iter()
        .position(|b| *b == 0)
        .unwrap_or(REASON_TEXT_LEN);
    Some(String::from_utf8_lossy(value.text.get(..end).unwrap_or_default()).into_owned())
}

fn truncate(text: &str) -> &str {
    let text = text.trim();
    if text.len() <= REASON_TEXT_LEN {
        return text;
    }
    let mut end = REASON_TEXT_LEN;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.get(..end).unwrap_or_default()
}

fn fnv1a32(bytes: &[u8]) -> u32 {
    let mut hash: u32 = 0x811c_9dc5;
    for b in bytes {
        hash ^= u32::from(*b);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncates_at_char_boundary() {
        let long = "é".repeat(40);
        let t = truncate(&long);
        assert!(t.len() <= REASON_TEXT_LEN);
        assert!(t.chars().all(|c| c == 'é'));
        assert_eq!(truncate("  SBL123 "), "SBL123");
    }
}

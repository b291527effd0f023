//! Reason texts live in the kernel (`REASONS`) next to the entries that cite them, so they survive
//! the daemon and any CLI can show them. An id is the FNV-1a hash of the text, probed linearly on
//! collision; 0 means "no reason".

use smtp_gateway_common::{REASON_TEXT_LEN, ReasonText, maps};

use super::{Dataplane, DataplaneError, error::is_not_found};

/// Collisions probed before giving up.
const MAX_PROBES: u32 = 32;

/// Stores `text` (truncated to the kernel's field at a character boundary) and returns its id.
pub fn intern(dp: &mut Dataplane, text: &str) -> Result<u32, DataplaneError> {
    let text = truncate(text);
    if text.is_empty() {
        return Ok(0);
    }
    let mut value = ReasonText {
        text: [0; REASON_TEXT_LEN],
    };
    value.text[..text.len()].copy_from_slice(text.as_bytes());
    let mut id = fnv1a32(text.as_bytes()).max(1);
    for _ in 0..MAX_PROBES {
        match dp.reasons.get(&id, 0) {
            Ok(existing) if existing == value => return Ok(id),
            Ok(_) => id = id.wrapping_add(1).max(1),
            Err(e) if is_not_found(&e) => {
                let capacity = dp.capacity(maps::REASONS);
                dp.reasons
                    .insert(id, value, 0)
                    .map_err(|e| DataplaneError::map(maps::REASONS, capacity, "reasons", e))?;
                return Ok(id);
            }
            Err(source) => {
                return Err(DataplaneError::Map {
                    name: maps::REASONS,
                    source,
                });
            }
        }
    }
    Err(DataplaneError::ReasonsFull(text.to_string()))
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
    Some(String::from_utf8_lossy(&value.text[..end]).into_owned())
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
    &text[..end]
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

//! Keys of the live view and what they do.

use crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};

use super::model::SortKey;

/// What a key asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Quit,
    /// Sort by this column.
    Sort(SortKey),
    /// Sort by the next (1) or previous (-1) column.
    Cycle(isize),
}

/// The action of a key press, if it has one. Session sort keys do nothing while the session
/// columns are hidden (there would be nothing to sort by).
pub fn action(key: KeyEvent, sessions_known: bool) -> Option<Action> {
    if key.kind == KeyEventKind::Release {
        return None;
    }
    // Raw mode turns Ctrl-C into a key: it must still quit.
    if key.modifiers.contains(KeyModifiers::CONTROL) {
        return matches!(key.code, KeyCode::Char('c' | 'd')).then_some(Action::Quit);
    }
    let sort = |k: SortKey| (sessions_known || !k.is_session()).then_some(Action::Sort(k));
    match key.code {
        KeyCode::Char('q' | 'Q') | KeyCode::Esc => Some(Action::Quit),
        KeyCode::Char('p') => sort(SortKey::Packets),
        KeyCode::Char('r') => sort(SortKey::Rate),
        KeyCode::Char('s') => sort(SortKey::Syns),
        KeyCode::Char('d') => sort(SortKey::Drops),
        KeyCode::Char('b') => sort(SortKey::Bytes),
        KeyCode::Char('n') => sort(SortKey::Sessions),
        KeyCode::Char('j') => sort(SortKey::Rejected),
        KeyCode::Char('>') | KeyCode::Tab | KeyCode::Right => Some(Action::Cycle(1)),
        KeyCode::Char('<') | KeyCode::BackTab | KeyCode::Left => Some(Action::Cycle(-1)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys() {
        let none = KeyModifiers::NONE;
        let ctrl = KeyModifiers::CONTROL;
        let cases = [
            (KeyCode::Char('q'), none, false, Some(Action::Quit)),
            (KeyCode::Esc, none, false, Some(Action::Quit)),
            (KeyCode::Char('c'), ctrl, false, Some(Action::Quit)),
            (KeyCode::Char('c'), none, false, None),
            (
                KeyCode::Char('d'),
                none,
                false,
                Some(Action::Sort(SortKey::Drops)),
            ),
            (
                KeyCode::Char('p'),
                none,
                false,
                Some(Action::Sort(SortKey::Packets)),
            ),
            (
                KeyCode::Char('r'),
                none,
                false,
                Some(Action::Sort(SortKey::Rate)),
            ),
            (KeyCode::Char('n'), none, false, None),
            (
                KeyCode::Char('n'),
                none,
                true,
                Some(Action::Sort(SortKey::Sessions)),
            ),
            (
                KeyCode::Char('j'),
                none,
                true,
                Some(Action::Sort(SortKey::Rejected)),
            ),
            (KeyCode::Tab, none, false, Some(Action::Cycle(1))),
            (KeyCode::Char('<'), none, false, Some(Action::Cycle(-1))),
            (KeyCode::Char('x'), none, false, None),
        ];
        for (code, modifiers, sessions, expected) in cases {
            assert_eq!(
                action(KeyEvent::new(code, modifiers), sessions),
                expected,
                "{code:?} {modifiers:?} sessions={sessions}"
            );
        }
    }
}

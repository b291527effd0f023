//! A [`View`] as lines of text: the same lines for the live screen and the plain `--once` frame.
//! No escape codes here: a line says which part is highlighted and the terminal side draws it.

use std::time::Duration;

use super::model::{RowView, SortKey, View};

/// One line of a frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    /// ASCII text, already cut to the frame width.
    pub text: String,
    /// Byte range of `text` to highlight (the sorted column's title).
    pub highlight: Option<(usize, usize)>,
}

impl Line {
    fn plain(text: String) -> Self {
        Self {
            text,
            highlight: None,
        }
    }
}

/// How to lay a view out.
#[derive(Debug, Clone)]
pub struct Frame<'a> {
    /// The rates and sorted rows to show.
    pub view: &'a View,
    /// Named in the title and highlighted in the table header.
    pub sort: SortKey,
    /// Named in the live title ("every 1s").
    pub interval: Duration,
    /// Shown in the title (Unix seconds).
    pub taken_at_unix_s: u64,
    /// Columns available: the header's verdict cells wrap to it; live lines are cut to it.
    pub width: usize,
    /// Lines available (live screen: the table shrinks to fit); `None`: no limit (plain frame).
    pub height: Option<usize>,
    /// At most this many source rows (`--top`); `None`: as many as fit.
    pub max_rows: Option<usize>,
    /// Live screen: add the key help footer.
    pub interactive: bool,
}

/// One column of the source table.
struct Column {
    /// Header text (upper case, ASCII).
    title: &'static str,
    /// Cells are padded to this many characters.
    width: usize,
    /// The sort key this column shows, if it has one.
    key: Option<SortKey>,
    /// Text columns are left-aligned, numbers right-aligned.
    left: bool,
    /// The cell text of a row.
    cell: fn(&RowView) -> String,
}

/// Width of one verdict cell in the header: name, packets, rate.
const VERDICT_CELL: usize = 22 + 1 + 12 + 1 + 10;
const CELL_GAP: usize = 3;

impl Frame<'_> {
    /// The frame's lines, top to bottom.
    pub fn lines(&self) -> Vec<Line> {
        let mut lines = vec![Line::plain(self.title())];
        lines.push(Line::plain(String::new()));
        lines.extend(self.verdict_lines().into_iter().map(Line::plain));
        lines.push(Line::plain(String::new()));

        let columns = self.columns();
        lines.push(self.table_header(&columns));
        let footer = self.interactive.then(|| self.footer());
        let used = lines.len() + usize::from(footer.is_some());
        let fit = self.height.map_or(usize::MAX, |h| h.saturating_sub(used));
        let shown = fit.min(self.max_rows.unwrap_or(usize::MAX));
        if self.view.rows.is_empty() {
            lines.push(Line::plain("no sources tracked yet".into()));
        }
        for row in self.view.rows.iter().take(shown) {
            lines.push(Line::plain(table_row(&columns, row)));
        }
        if let Some(footer) = footer {
            // The help sits on the last line of the screen.
            while self.height.is_some_and(|h| lines.len() + 1 < h) {
                lines.push(Line::plain(String::new()));
            }
            lines.push(Line::plain(footer));
        }
        // A plain frame goes to scripts and files: nothing is cut there.
        if self.interactive {
            for line in &mut lines {
                cut(line, self.width);
            }
        }
        lines
    }

    fn title(&self) -> String {
        let taken = super::super::human_time(self.taken_at_unix_s);
        let every = if self.interactive {
            format!("  every {}", humantime::format_duration(self.interval))
        } else {
            String::new()
        };
        format!(
            "smtp-gateway top  {taken}{every}  {} sources tracked, sorted by {}",
            self.view.rows.len(),
            self.sort.name()
        )
    }

    fn verdict_lines(&self) -> Vec<String> {
        let per_line = ((self.width + CELL_GAP) / (VERDICT_CELL + CELL_GAP)).max(1);
        let cells: Vec<String> = self
            .view
            .verdicts
            .iter()
            .map(|v| {
                format!(
                    "{:<22} {:>12} {:>10}",
                    v.verdict,
                    v.packets,
                    per_sec(v.per_sec)
                )
            })
            .collect();
        cells
            .chunks(per_line)
            .map(|chunk| chunk.join(&" ".repeat(CELL_GAP)).trim_end().to_string())
            .collect()
    }

    fn columns(&self) -> Vec<Column> {
        let address = self
            .view
            .rows
            .iter()
            .map(|r| r.row.source.to_string().len())
            .max()
            .unwrap_or(0)
            .max("SOURCE".len());
        let mut columns = vec![
            Column {
                title: "SOURCE",
                width: address,
                key: None,
                left: true,
                cell: |r| r.row.source.to_string(),
            },
            Column {
                title: "PACKETS",
                width: 12,
                key: Some(SortKey::Packets),
                left: false,
                cell: |r| r.row.packets.to_string(),
            },
            Column {
                title: "PKT/S",
                width: 9,
                key: Some(SortKey::Rate),
                left: false,
                cell: |r| rate(r.packets_per_sec),
            },
            Column {
                title: "SYNS",
                width: 10,
                key: Some(SortKey::Syns),
                left: false,
                cell: |r| r.row.syns.to_string(),
            },
            Column {
                title: "DROPS",
                width: 10,
                key: Some(SortKey::Drops),
                left: false,
                cell: |r| r.row.drops.to_string(),
            },
            Column {
                title: "DROP/S",
                width: 9,
                key: None,
                left: false,
                cell: |r| rate(r.drops_per_sec),
            },
            Column {
                title: "BYTES",
                width: 14,
                key: Some(SortKey::Bytes),
                left: false,
                cell: |r| r.row.bytes.to_string(),
            },
            Column {
                title: "LAST SEEN",
                width: 10,
                key: None,
                left: false,
                cell: |r| r.row.last_seen_secs_ago.map_or_else(|| "-".into(), ago),
            },
        ];
        if self.view.sessions_known {
            columns.extend([
                Column {
                    title: "SESSIONS",
                    width: 9,
                    key: Some(SortKey::Sessions),
                    left: false,
                    cell: |r| optional(r.row.sessions),
                },
                Column {
                    title: "REJECTED",
                    width: 9,
                    key: Some(SortKey::Rejected),
                    left: false,
                    cell: |r| optional(r.row.rejected),
                },
                Column {
                    title: "LAST VERDICT",
                    width: 12,
                    key: None,
                    left: true,
                    cell: |r| r.row.last_verdict.clone().unwrap_or_else(|| "-".into()),
                },
            ]);
        }
        columns
    }

    fn table_header(&self, columns: &[Column]) -> Line {
        let mut text = String::new();
        let mut highlight = None;
        for (i, column) in columns.iter().enumerate() {
            if i > 0 {
                text.push(' ');
            }
            let start = text.len();
            push_cell(&mut text, column, column.title);
            if column.key == Some(self.sort) {
                // Only the title's letters, not the padding.
                let title_start = if column.left {
                    start
                } else {
                    text.len() - column.title.len()
                };
                highlight = Some((title_start, title_start + column.title.len()));
            }
        }
        Line {
            text: text.trim_end().to_string(),
            highlight,
        }
    }

    fn footer(&self) -> String {
        let mut keys = vec![
            "q quit",
            "p packets",
            "r pkt/s",
            "s SYNs",
            "d drops",
            "b bytes",
        ];
        if self.view.sessions_known {
            keys.extend(["n sessions", "j rejected"]);
        }
        keys.push("</> or Tab/arrows: next sort");
        keys.join("  ")
    }
}

fn table_row(columns: &[Column], row: &RowView) -> String {
    let mut text = String::new();
    for (i, column) in columns.iter().enumerate() {
        if i > 0 {
            text.push(' ');
        }
        push_cell(&mut text, column, &(column.cell)(row));
    }
    text.trim_end().to_string()
}

fn push_cell(text: &mut String, column: &Column, value: &str) {
    let width = column.width;
    if column.left {
        text.push_str(&format!("{value:<width$}"));
    } else {
        text.push_str(&format!("{value:>width$}"));
    }
}

/// Cuts a line to `width` characters (dropping a highlight that no longer fits).
fn cut(line: &mut Line, width: usize) {
    if let Some((end, _)) = line.text.char_indices().nth(width) {
        line.text.truncate(end);
        if let Some((start, stop)) = line.highlight {
            line.highlight = (start < end).then_some((start, stop.min(end)));
        }
    }
}

/// A per-second rate in a verdict cell: "12.5/s", "-" before the second frame.
fn per_sec(value: Option<f64>) -> String {
    match value {
        Some(_) => format!("{}/s", rate(value)),
        None => "-".into(),
    }
}

/// A rate with a sensible precision: one decimal below 10, none above.
pub fn rate(value: Option<f64>) -> String {
    match value {
        None => "-".into(),
        Some(v) if v < 10.0 => format!("{v:.1}"),
        Some(v) => format!("{v:.0}"),
    }
}

fn optional(value: Option<u64>) -> String {
    value.map_or_else(|| "-".into(), |v| v.to_string())
}

/// "42s", "3m07s", "5h02m", "3d04h".
pub fn ago(secs: u64) -> String {
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m{:02}s", s / 60, s % 60),
        s if s < 86_400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        s => format!("{}d{:02}h", s / 86_400, s % 86_400 / 3600),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use smtp_gateway::dataplane::stats::VerdictTotal;

    use super::super::{model, source};
    use super::*;

    fn view(sessions: bool) -> View {
        let row = |addr: &str, packets: u64, drops: u64| source::TopRow {
            source: addr.parse().expect("address"),
            packets,
            bytes: packets * 60,
            syns: packets,
            drops,
            last_seen_secs_ago: Some(75),
            sessions: sessions.then_some(packets / 2),
            rejected: sessions.then_some(drops),
            last_verdict: sessions.then(|| "reject:pregreet".to_string()),
        };
        let snapshot = source::Snapshot {
            verdicts: ["passed", "dropped_exact", "rate_limited"]
                .into_iter()
                .map(|verdict| VerdictTotal {
                    verdict,
                    packets: 7,
                    bytes: 420,
                })
                .collect(),
            sources: vec![
                row("198.18.0.7", 3, 0),
                row("2001:db8::7", 8, 0),
                row("198.18.0.9", 5, 5),
            ],
            taken: Instant::now(),
            taken_at_unix_s: 0,
        };
        model::build(None, &snapshot, SortKey::Drops)
    }

    fn frame(view: &View, interactive: bool, height: Option<usize>) -> Frame<'_> {
        Frame {
            view,
            sort: SortKey::Drops,
            interval: Duration::from_secs(1),
            taken_at_unix_s: 0,
            width: 200,
            height,
            max_rows: None,
            interactive,
        }
    }

    #[test]
    fn plain_frame_lists_sorted_rows_and_highlights_the_sort_title() {
        let view = view(false);
        let lines = frame(&view, false, None).lines();
        let header = lines
            .iter()
            .find(|l| l.text.starts_with("SOURCE"))
            .expect("table header");
        let (start, end) = header.highlight.expect("sort column highlighted");
        assert_eq!(&header.text[start..end], "DROPS");
        assert!(!header.text.contains("SESSIONS"), "{}", header.text);
        let rows: Vec<&str> = lines
            .iter()
            .skip_while(|l| !l.text.starts_with("SOURCE"))
            .skip(1)
            .map(|l| l.text.split_whitespace().next().unwrap_or(""))
            .collect();
        assert_eq!(rows, ["198.18.0.9", "2001:db8::7", "198.18.0.7"]);
        assert!(
            lines[0].text.contains("sorted by drops"),
            "{}",
            lines[0].text
        );
        assert!(lines.iter().all(|l| l.text.is_ascii()));
        assert!(!lines.iter().any(|l| l.text.contains("q quit")));
    }

    #[test]
    fn session_columns_appear_with_session_data() {
        let view = view(true);
        let lines = frame(&view, false, None).lines();
        let header = lines
            .iter()
            .find(|l| l.text.starts_with("SOURCE"))
            .expect("table header");
        assert!(
            header.text.ends_with("SESSIONS  REJECTED LAST VERDICT"),
            "{}",
            header.text
        );
        assert!(lines.iter().any(|l| l.text.ends_with("reject:pregreet")));
    }

    #[test]
    fn live_frame_fits_the_screen_with_the_help_on_the_last_line() {
        let view = view(false);
        for height in [7, 10, 30] {
            let lines = frame(&view, true, Some(height)).lines();
            assert_eq!(lines.len(), height, "height {height}");
            let last = lines.last().expect("lines");
            assert!(last.text.starts_with("q quit"), "{}", last.text);
        }
        // 6 fixed lines (title, blank, 1 verdict line at width 200, blank, header, footer) + 1 row.
        let lines = frame(&view, true, Some(7)).lines();
        assert_eq!(
            lines
                .iter()
                .filter(|l| l.text.starts_with("198.18."))
                .count(),
            1
        );
    }

    #[test]
    fn lines_are_cut_to_the_width() {
        let view = view(false);
        let mut f = frame(&view, true, Some(20));
        f.width = 30;
        assert!(f.lines().iter().all(|l| l.text.len() <= 30));
    }

    #[test]
    fn durations_and_rates() {
        let cases = [
            (0, "0s"),
            (59, "59s"),
            (60, "1m00s"),
            (187, "3m07s"),
            (18_120, "5h02m"),
            (273_600, "3d04h"),
        ];
        for (secs, text) in cases {
            assert_eq!(ago(secs), text);
        }
        let cases = [
            (None, "-"),
            (Some(0.0), "0.0"),
            (Some(2.24), "2.2"),
            (Some(12.6), "13"),
        ];
        for (value, text) in cases {
            assert_eq!(rate(value), text);
        }
    }
}

//! The Markdown report and the figures JSON.

use std::fmt::Write as _;

use smtp_gateway_tests::{
    figures::{Figure, Figures, Point, Series},
    machine, thousands,
};

use crate::{
    AIM_CPU_VS_HAPROXY, AIM_DIRECT, AIM_DNS, AIM_HAPROXY, AIM_HARAKA, AIM_KIB_PER_SESSION,
    MESSAGE_BYTES, Settings, Setup,
    contender::{GATEWAY, GATEWAY_DNS},
    dns_gateway::DnsSummary,
    memory::{IdleKind, MemoryRow},
    throughput::{Cell, Throughput},
    tls_cpu::{GATEWAY_IMPLICIT, GATEWAY_STARTTLS, HAPROXY_IMPLICIT, TlsCpu},
};

pub fn median(v: &[f64]) -> f64 {
    Point::from_samples("", v).median
}

fn min_max(v: &[f64]) -> (f64, f64) {
    let p = Point::from_samples("", v);
    (p.min, p.max)
}

fn met(ok: bool) -> &'static str {
    if ok { "met" } else { "MISSED" }
}

/// `median (min–max)` with `digits` decimals.
fn spread(v: &[f64], digits: usize) -> String {
    let (lo, hi) = min_max(v);
    format!("{:.digits$} ({lo:.digits$}–{hi:.digits$})", median(v))
}

/// Per-repeat ratios a[r] / b[r] (the runs of one repeat were made back to back).
fn ratios(a: &[f64], b: &[f64]) -> Vec<f64> {
    a.iter().zip(b).map(|(x, y)| x / y.max(1e-9)).collect()
}

/// Per repeat, the CPU per message (µs) of contender `ci`'s own cgroup at level `li`.
fn own_cpu(tp: &Throughput, ci: usize, li: usize) -> Vec<f64> {
    tp.cells[ci][li]
        .source
        .iter()
        .map(|x| x.contender_us)
        .collect()
}

fn source_rates(c: &Cell) -> Vec<f64> {
    c.source.iter().map(|s| s.rate).collect()
}

fn pipe_rates(c: &Cell) -> Vec<f64> {
    c.pipe.iter().map(|s| s.rate).collect()
}

/// Index of a contender by name.
fn idx(tp: &Throughput, name: &str) -> Option<usize> {
    tp.names.iter().position(|n| *n == name)
}

/// An aim on a contender's rate (`of`, a gateway) against another contender's: per-level medians
/// of the per-repeat ratios, and whether every level meets `aim`.
struct Aim {
    against: &'static str,
    aim: f64,
    /// (sessions, per-repeat ratios) for smtp-source and for the pipelining client.
    source: Vec<(u32, Vec<f64>)>,
    pipe: Vec<(u32, Vec<f64>)>,
}

impl Aim {
    fn new(tp: &Throughput, of: &str, against: &'static str, aim: f64) -> Option<Self> {
        let (g, o) = (idx(tp, of)?, idx(tp, against)?);
        let per = |f: fn(&Cell) -> Vec<f64>| {
            tp.levels
                .iter()
                .enumerate()
                .map(|(li, &s)| (s, ratios(&f(&tp.cells[g][li]), &f(&tp.cells[o][li]))))
                .collect()
        };
        Some(Self {
            against,
            aim,
            source: per(source_rates),
            pipe: per(pipe_rates),
        })
    }

    fn verdict(&self, v: &[(u32, Vec<f64>)]) -> String {
        let missed: Vec<String> = v
            .iter()
            .filter(|(_, r)| median(r) < self.aim)
            .map(|(s, _)| s.to_string())
            .collect();
        if missed.is_empty() {
            "**met** at every session level".into()
        } else {
            format!("**MISSED** at {} session(s)", missed.join(", "))
        }
    }
}

pub fn markdown(
    settings: &Settings,
    setup: &Setup,
    tp: &Throughput,
    dns: Option<&DnsSummary>,
    tls: &TlsCpu,
    mem: &[MemoryRow],
    load: &(String, String),
) -> String {
    let mut out = String::new();
    let w = &mut out;
    w.push_str(&smtp_gateway_tests::report_title(
        "bench-smtp",
        settings.quick,
    ));
    let _ = writeln!(
        w,
        "- load average (1, 5, 15 min): {} at the start, {} at the end (other work on the \
         machine shows here)",
        load.0, load.1
    );
    let _ = writeln!(
        w,
        "- method: six paths to one `smtp-sink`: **direct**; the **gateway** (every cheap check \
         on; the sink takes no client identity, so backend connections are reused between \
         sessions, the default for `identity = \"none\"`); the **{GATEWAY_DNS}** (the same \
         gateway with FCrDNS, SPF and Authentication-Results on, asking a DNS responder on \
         loopback); **HAProxy** (TCP mode); **Haraka** (`smtp_forward`); **Postfix** (postscreen + \
         smtpd, relaying). Two clients: `smtp-source` (one {MESSAGE_BYTES}-byte message per \
         connection, no pipelining; msgs/s = messages / its wall time) and this benchmark's \
         pipelining client (one message per connection, MAIL/RCPT/DATA sent as one RFC 2920 \
         group; msgs/s and per-session latency from connect to the 221). {} repeats at {} \
         concurrent sessions after a warm-up; within a repeat every contender runs back to \
         back, their order rotating between repeats; each run sized to about {:?} from the \
         warm-up rate. Ratios are medians of per-repeat ratios (runs made minutes apart are \
         never divided). The gateway's configuration sits in a directory of its own, as in \
         /etc/smtp-gateway: the daemon watches that directory, and its log is written elsewhere",
        settings.repeats,
        tp.levels
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(", "),
        settings.run_time
    );
    let _ = writeln!(
        w,
        "- CPU: every program runs in its own cgroup v2 (joined before exec, so forked \
         children count: Postfix's daemons, Haraka's workers); `cpu.stat` `usage_usec` before \
         and after each smtp-source run (for Postfix after its queue drained) / messages"
    );
    let v = &tp.verified;
    let _ = writeln!(
        w,
        "- verified, every run: the client exited 0 / got the expected reply to every command; \
         smtp-sink counted exactly the messages sent; both gateways logged one session per \
         message, no check fired, no warning or error (with FCrDNS + SPF on, every SPF result but \
         pass is refused, so each message sent had SPF pass), and their DNS responder had been \
         asked for the sender's SPF record; Haraka logged no warning or error; \
         Postfix logged one `status=sent` per message, its queue drained, and no reject, \
         postscreen test, warning (but cleanup's \"file system clock is N seconds ahead\" on \
         this VM) or deferral. This run: {} smtp-source runs and {} \
         pipelining-client runs ({} sessions), {} messages, all counted by the sink",
        v.source_runs,
        v.client_runs,
        thousands(v.client_sessions),
        thousands(v.messages)
    );
    let _ = writeln!(w, "- versions: {}", setup.versions.join("; "));

    let _ = writeln!(
        w,
        "\n## Throughput (smtp-source, msgs/s: median (min–max))\n"
    );
    table_header(w, "Sessions", &tp.names);
    for (li, s) in tp.levels.iter().enumerate() {
        let cells: Vec<String> = tp
            .cells
            .iter()
            .map(|c| spread(&source_rates(&c[li]), 0))
            .collect();
        let _ = writeln!(w, "| {s} | {} |", cells.join(" | "));
    }

    let _ = writeln!(
        w,
        "\nMessages per run (sized from the warm-up rate; the same for both clients):\n"
    );
    table_header(w, "Sessions", &tp.names);
    for (li, s) in tp.levels.iter().enumerate() {
        let cells: Vec<String> = tp
            .cells
            .iter()
            .map(|c| thousands(u64::from(c[li].messages)))
            .collect();
        let _ = writeln!(w, "| {s} | {} |", cells.join(" | "));
    }

    let aims: Vec<Aim> = [
        ("direct", AIM_DIRECT),
        ("Haraka", AIM_HARAKA),
        ("HAProxy", AIM_HAPROXY),
    ]
    .into_iter()
    .filter_map(|(n, a)| Aim::new(tp, GATEWAY, n, a))
    .collect();
    let dns_aim = Aim::new(tp, GATEWAY_DNS, GATEWAY, AIM_DNS);
    let _ = writeln!(
        w,
        "\n## Gateway ratios (median of per-repeat ratios (min–max))\n"
    );
    let _ = write!(w, "| Sessions | client |");
    for a in &aims {
        let _ = write!(w, " gateway / {} (aim ≥ {}) |", a.against, a.aim);
    }
    let _ = writeln!(w, "\n|--:|---|{}", "--:|".repeat(aims.len()));
    for (li, s) in tp.levels.iter().enumerate() {
        for (client, pipe) in [("smtp-source", false), ("pipelining", true)] {
            let _ = write!(w, "| {s} | {client} |");
            for a in &aims {
                let r = if pipe { &a.pipe[li].1 } else { &a.source[li].1 };
                let _ = write!(w, " {} {} |", spread(r, 2), met(median(r) >= a.aim));
            }
            let _ = writeln!(w);
        }
    }

    if let Some(a) = &dns_aim {
        dns_section(w, tp, a, dns);
    }

    let _ = writeln!(
        w,
        "\n## Pipelining client: msgs/s and session latency (median over repeats (min–max))\n"
    );
    let _ = writeln!(
        w,
        "| Sessions | contender | msgs/s | p50 session ms | p99 session ms | p99 / direct p99 |"
    );
    let _ = writeln!(w, "|--:|---|--:|--:|--:|--:|");
    let direct = idx(tp, "direct");
    for (li, s) in tp.levels.iter().enumerate() {
        for (ci, name) in tp.names.iter().enumerate() {
            let c = &tp.cells[ci][li];
            let p50: Vec<f64> = c.pipe.iter().map(|p| p.p50_ms).collect();
            let p99: Vec<f64> = c.pipe.iter().map(|p| p.p99_ms).collect();
            let vs = direct.map_or(String::from("–"), |d| {
                let dp99: Vec<f64> = tp.cells[d][li].pipe.iter().map(|p| p.p99_ms).collect();
                format!("{:.2}", median(&ratios(&p99, &dp99)))
            });
            let _ = writeln!(
                w,
                "| {s} | {name} | {} | {} | {} | {vs} |",
                spread(&pipe_rates(c), 0),
                spread(&p50, 2),
                spread(&p99, 2)
            );
        }
    }

    let _ = writeln!(
        w,
        "\n## CPU per message (smtp-source runs, µs: median (min–max))\n"
    );
    let _ = writeln!(
        w,
        "\"Contender\" is the cgroup of the program in the middle (none for direct); \"all\" adds \
         smtp-source and smtp-sink. On 2 shared cores the throughput of a CPU-bound path \
         follows the \"all\" figure.\n"
    );
    let _ = writeln!(
        w,
        "| Sessions | contender | contender µs/msg | all µs/msg | all / direct all | contender / \
         HAProxy (per-repeat) |"
    );
    let _ = writeln!(w, "|--:|---|--:|--:|--:|--:|");
    let haproxy = idx(tp, "HAProxy");
    for (li, s) in tp.levels.iter().enumerate() {
        for (ci, name) in tp.names.iter().enumerate() {
            let c = &tp.cells[ci][li];
            let own: Vec<f64> = c.source.iter().map(|x| x.contender_us).collect();
            let all: Vec<f64> = c.source.iter().map(|x| x.total_us).collect();
            let vs = direct.map_or(String::from("–"), |d| {
                let dall: Vec<f64> = tp.cells[d][li].source.iter().map(|x| x.total_us).collect();
                format!("{:.2}", median(&ratios(&all, &dall)))
            });
            let vs_haproxy = match haproxy {
                Some(h) if h != ci && direct != Some(ci) => {
                    spread(&ratios(&own, &own_cpu(tp, h, li)), 2)
                }
                _ => "–".into(),
            };
            let _ = writeln!(
                w,
                "| {s} | {name} | {} | {} | {vs} | {vs_haproxy} |",
                spread(&own, 0),
                spread(&all, 0)
            );
        }
    }
    if let Some(p) = idx(tp, "Postfix") {
        let _ = writeln!(w, "\n### Postfix: a queueing MTA\n");
        let _ = writeln!(
            w,
            "Its msgs/s is the **acceptance** rate (smtpd acknowledges once the message is \
             queued; postscreen hands every connection to smtpd after a cache lookup, as for a \
             returning client). After each run the benchmark waited for the queue to drain and \
             checked that every message reached smtp-sink (`status=sent` in the maillog, the \
             sink's count). Time from the end of smtp-source until the queue was empty:\n"
        );
        let _ = writeln!(
            w,
            "| Sessions | messages per run | drain s (median (min–max)) |"
        );
        let _ = writeln!(w, "|--:|--:|--:|");
        for (li, s) in tp.levels.iter().enumerate() {
            let c = &tp.cells[p][li];
            let d: Vec<f64> = c
                .source
                .iter()
                .filter_map(|x| x.drain.map(|d| d.as_secs_f64()))
                .collect();
            let _ = writeln!(
                w,
                "| {s} | {} | {} |",
                thousands(u64::from(c.messages)),
                spread(&d, 2)
            );
        }
    }

    tls_section(w, tls);

    let _ = writeln!(w, "\n## Memory per idle session (gateway)\n");
    let _ = writeln!(
        w,
        "A fresh gateway per row (max_connections and max_connections_per_source raised, \
         command_timeout \"10m\"), 20 warm-up sessions, then N connections opened from this \
         process, each reading its 220 banner and staying silent; VmRSS of the gateway \
         (/proc/PID/status) before and 2 s after. None of the sessions ended before the \
         connections were closed; after closing, the gateway logged all N. TLS rows: the same \
         with `[smtp.tls]` (self-signed P-256 certificate), each client saying EHLO, STARTTLS, \
         completing the handshake (TLS 1.3, rustls on both sides) and saying EHLO again before \
         falling silent; the aim is on plaintext sessions.\n"
    );
    let _ = writeln!(
        w,
        "| Session | Idle sessions | VmRSS before | VmRSS with them open | KiB per session | \
         VmRSS after closing | Aim ≤ {AIM_KIB_PER_SESSION:.0} KiB |"
    );
    let _ = writeln!(w, "|---|--:|--:|--:|--:|--:|---|");
    for m in mem {
        let per = m.per_session_kib();
        let _ = writeln!(
            w,
            "| {} | {}{} | {} KiB | {} KiB | {:.2} | {} KiB | {} |",
            m.kind.name(),
            thousands(m.sessions as u64),
            if m.extra_sources > 0 {
                format!(" (from {} source addresses)", m.extra_sources + 1)
            } else {
                String::new()
            },
            thousands(m.before_kib),
            thousands(m.after_kib),
            per,
            thousands(m.closed_kib),
            match m.kind {
                IdleKind::Plain => met(per <= AIM_KIB_PER_SESSION),
                IdleKind::StartTls => "(no aim)",
            }
        );
    }
    let _ = writeln!(
        w,
        "\nA plaintext idle session is its boxed session future (about 3.4 KiB: the session \
         state and the command wait, every other state boxed only while live), its task and \
         socket registration in tokio, its idle mark and slot; it holds no input or output \
         buffer while it waits. A TLS session adds rustls's per-connection state, which \
         dominates it: most of all the incoming-record (deframer) buffer, which rustls 0.23 \
         sizes to 4 KiB, zero-filled, before every read of the socket and keeps while the \
         connection is open, then the boxed `TlsStream` with its `ServerConnection` (record \
         layer, the AES-GCM keys of each direction, send and receive queues).\n"
    );
    let mem_ok = mem
        .iter()
        .filter(|m| m.kind == IdleKind::Plain)
        .max_by_key(|m| m.sessions)
        .is_some_and(|m| m.per_session_kib() <= AIM_KIB_PER_SESSION);

    let _ = writeln!(
        w,
        "\n## Aims (judged on smtp-source msgs/s, as the issue states them)\n"
    );
    for a in &aims {
        let _ = writeln!(
            w,
            "- Gateway at least {}× {}: {} (pipelining client: {}).",
            a.aim,
            a.against,
            a.verdict(&a.source),
            a.verdict(&a.pipe)
        );
    }
    if let Some(a) = &dns_aim {
        let _ = writeln!(
            w,
            "- Sessions/s with FCrDNS + SPF on at least {}× off: {} (pipelining client: {}).",
            a.aim,
            a.verdict(&a.source),
            a.verdict(&a.pipe)
        );
    }
    if let (Some(g), Some(h)) = (idx(tp, "gateway"), idx(tp, "HAProxy")) {
        let per_level: Vec<(u32, f64)> = tp
            .levels
            .iter()
            .enumerate()
            .map(|(li, &s)| (s, median(&ratios(&own_cpu(tp, g, li), &own_cpu(tp, h, li)))))
            .collect();
        let missed: Vec<String> = per_level
            .iter()
            .filter(|(_, r)| *r > AIM_CPU_VS_HAPROXY)
            .map(|(s, _)| s.to_string())
            .collect();
        let figures: Vec<String> = per_level.iter().map(|(_, r)| format!("{r:.2}")).collect();
        let _ = writeln!(
            w,
            "- Gateway's own CPU per message at most {AIM_CPU_VS_HAPROXY}× HAProxy's own \
             (smtp-source, plaintext; median of per-repeat ratios at 1 / 10 / 100 sessions: {}): \
             {}.",
            figures.join(" / "),
            if missed.is_empty() {
                "**met** at every session level".to_string()
            } else {
                format!("**MISSED** at {} session(s)", missed.join(", "))
            }
        );
    }
    for name in [GATEWAY_IMPLICIT, GATEWAY_STARTTLS] {
        let per_level = tls_ratios(tls, name);
        let missed: Vec<String> = per_level
            .iter()
            .filter(|(_, r)| median(r) > AIM_CPU_VS_HAPROXY)
            .map(|(s, _)| s.to_string())
            .collect();
        let figures: Vec<String> = per_level
            .iter()
            .map(|(_, r)| format!("{:.2}", median(r)))
            .collect();
        let _ = writeln!(
            w,
            "- Gateway's own CPU per message at most {AIM_CPU_VS_HAPROXY}× HAProxy's own, TLS \
             ({name} against {HAPROXY_IMPLICIT}, pipelining client; median of per-repeat ratios \
             at {} sessions: {}): {}.",
            tls.levels
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(" / "),
            figures.join(" / "),
            if missed.is_empty() {
                "**met** at every session level".to_string()
            } else {
                format!("**MISSED** at {} session(s)", missed.join(", "))
            }
        );
    }
    let _ = writeln!(
        w,
        "- At most {AIM_KIB_PER_SESSION:.0} KiB per idle plaintext session (at {} sessions): **{}**.",
        thousands(mem.iter().map(|m| m.sessions as u64).max().unwrap_or(0)),
        met(mem_ok)
    );

    let _ = writeln!(w, "\n## Commands and configurations\n");
    let _ = writeln!(
        w,
        "PORT values are this run's; S is 1, 10 or 100 and N the messages per run above; \
         ADDR is the sink's or a contender's address.\n"
    );
    let _ = writeln!(w, "```sh");
    for c in &setup.commands {
        let _ = writeln!(w, "{c}");
    }
    let _ = writeln!(w, "```");
    for (name, lang, text) in &setup.configs {
        let _ = writeln!(w, "\n{name}:\n\n```{lang}\n{}\n```", text.trim_end());
    }
    out
}

/// Per session level, the per-repeat ratios of route `name`'s own CPU per message to HAProxy's
/// (implicit TLS); empty when either is missing.
fn tls_ratios(tls: &TlsCpu, name: &str) -> Vec<(u32, Vec<f64>)> {
    let at = |n: &str| tls.names.iter().position(|x| *x == n);
    let (Some(g), Some(h)) = (at(name), at(HAPROXY_IMPLICIT)) else {
        return Vec::new();
    };
    let own = |pi: usize, li: usize| -> Vec<f64> {
        tls.samples[pi][li].iter().map(|s| s.own_us).collect()
    };
    tls.levels
        .iter()
        .enumerate()
        .map(|(li, &s)| (s, ratios(&own(g, li), &own(h, li))))
        .collect()
}

/// "CPU per message over TLS": each route's own CPU and rate, the ratios to HAProxy's, what was
/// negotiated, and HAProxy's TLS configuration.
fn tls_section(w: &mut String, tls: &TlsCpu) {
    let _ = writeln!(
        w,
        "\n## CPU per message over TLS (pipelining client, µs: median (min–max))\n"
    );
    let _ = writeln!(
        w,
        "The gateway terminating TLS, on an implicit-TLS listener (`kind = \"smtps\"`, profile \
         `mx`: the same checks as the plain port) and with STARTTLS on its plain listener, \
         against HAProxy terminating implicit TLS in TCP mode (`bind ... ssl crt`); each relays \
         the plaintext to the same smtp-sink. HAProxy has no SMTP mode and cannot answer \
         STARTTLS, so implicit TLS is the one service both offer; the STARTTLS row adds the \
         plaintext `EHLO` and `STARTTLS` exchange and a second `EHLO`. The client is this \
         benchmark's pipelining client in TLS 1.3 (rustls, ring) with session resumption off: \
         every session is a full handshake, with the certificate's ECDSA P-256 signature made \
         by the server, alike on both; each server picks the cipher suite by its own order, \
         AES-128-GCM first on both (the gateway's default; HAProxy's \
         `ssl-default-bind-ciphersuites` set to match), checked in every run. One message per session; within each repeat the three \
         run back to back, their order rotating; every run verified (the client got each \
         expected reply and sent its close_notify after the 221, the sink counted every \
         message, the gateway logged one session per message, no check, warning or error). \
         This part: {} runs, {} messages.\n",
        tls.runs,
        thousands(tls.verified_messages)
    );
    let _ = writeln!(
        w,
        "| Sessions | route | msgs/s | own µs/msg | own / HAProxy's (per-repeat) |"
    );
    let _ = writeln!(w, "|--:|---|--:|--:|--:|");
    for (li, s) in tls.levels.iter().enumerate() {
        for (pi, name) in tls.names.iter().enumerate() {
            let samples = &tls.samples[pi][li];
            let rates: Vec<f64> = samples.iter().map(|x| x.rate).collect();
            let own: Vec<f64> = samples.iter().map(|x| x.own_us).collect();
            let vs = if *name == HAPROXY_IMPLICIT {
                "–".to_string()
            } else {
                tls_ratios(tls, name)
                    .get(li)
                    .map_or("–".to_string(), |(_, r)| spread(r, 2))
            };
            let _ = writeln!(
                w,
                "| {s} | {name} | {} | {} | {vs} |",
                spread(&rates, 0),
                spread(&own, 0)
            );
        }
    }
    let _ = writeln!(
        w,
        "\nNegotiated (the client's view, one session per route):\n"
    );
    for (name, n) in tls.names.iter().zip(&tls.negotiated) {
        let _ = writeln!(w, "- {name}: {n}");
    }
    let _ = writeln!(
        w,
        "\nHAProxy's configuration for this part (its PEM holds the gateway's certificate and \
         key):\n\n```\n{}\n```",
        tls.haproxy_config.trim_end()
    );
}

/// "FCrDNS + SPF on vs off": the per-level ratios of the two gateways, both rates, and what the
/// DNS responder was asked.
fn dns_section(w: &mut String, tp: &Throughput, a: &Aim, dns: Option<&DnsSummary>) {
    let _ = writeln!(w, "\n## FCrDNS + SPF on vs off\n");
    let _ = writeln!(
        w,
        "Sessions/s (one message per session) of the gateway with `[fcrdns]`, `[spf]` and \
         `[auth_results]` on, its `[dns]` name server a responder on 127.0.0.1 (the test kit's \
         `DnsResponder`, table below), against the same gateway with them off, measured back to \
         back in each repeat. Both run greet_pause \"0s\", so the first MAIL waits for the \
         FCrDNS lookups instead of their running during a pause. The resolver caches answers \
         (`dns.cache_size` 4096, each for its TTL: 60 s at the responder); how often the \
         responder was asked is in the table below. Ratio: median of per-repeat ratios (min–max); aim ≥ {}.\n",
        a.aim
    );
    let _ = writeln!(
        w,
        "| Sessions | client | {GATEWAY} sessions/s | {GATEWAY_DNS} sessions/s | on / off |"
    );
    let _ = writeln!(w, "|--:|---|--:|--:|--:|");
    let (g, d) = (idx(tp, GATEWAY), idx(tp, GATEWAY_DNS));
    for (li, s) in tp.levels.iter().enumerate() {
        for (client, pipe) in [("smtp-source", false), ("pipelining", true)] {
            let rates = |ci: Option<usize>| {
                ci.map_or(String::from("–"), |ci| {
                    let c = &tp.cells[ci][li];
                    spread(&if pipe { pipe_rates(c) } else { source_rates(c) }, 0)
                })
            };
            let r = if pipe { &a.pipe[li].1 } else { &a.source[li].1 };
            let _ = writeln!(
                w,
                "| {s} | {client} | {} | {} | {} {} |",
                rates(g),
                rates(d),
                spread(r, 2),
                met(median(r) >= a.aim)
            );
        }
    }
    let Some(dns) = dns else {
        return;
    };
    let _ = writeln!(
        w,
        "\nWhat the DNS responder was asked over the whole benchmark (warm-up included):\n"
    );
    let _ = writeln!(w, "| type | name | questions |");
    let _ = writeln!(w, "|---|---|--:|");
    for ((kind, name), n) in &dns.questions {
        let _ = writeln!(w, "| {kind} | {name} | {} |", thousands(*n));
    }
    let asked_ptr = dns.questions.keys().any(|(kind, _)| kind == "PTR");
    let names: Vec<String> = dns
        .client_names
        .iter()
        .map(|(name, n)| format!("`{name}` ({} sessions)", thousands(*n)))
        .collect();
    let _ = writeln!(
        w,
        "\nClient names the gateway logged (`client_name` of its session lines): {}. {}",
        if names.is_empty() {
            "none".to_string()
        } else {
            names.join(", ")
        },
        if asked_ptr {
            "The PTR of the client address reached the responder: FCrDNS ran in full."
        } else {
            "No PTR question reached the responder: every client connects from 127.0.0.1, whose \
             PTR (and `localhost`'s address) the resolver, hickory, answers itself as RFC 6761 \
             special-use names. FCrDNS is measured only as far as it runs: the gateway starts \
             the lookups and awaits their answer at the first MAIL, but no query goes out. SPF \
             is measured in full (the TXT questions above)."
        }
    );
}

fn table_header(w: &mut String, first: &str, names: &[&str]) {
    let _ = writeln!(w, "| {first} | {} |", names.join(" | "));
    let _ = writeln!(w, "|--:|{}", "--:|".repeat(names.len()));
}

/// One grouped-bar figure: a series per contender (those `keep` accepts), a category per level.
fn figure(
    tp: &Throughput,
    id: &str,
    title: &str,
    y_label: &str,
    note: &str,
    keep: impl Fn(&str) -> bool,
    value: impl Fn(&Cell) -> Vec<f64>,
) -> Figure {
    let categories: Vec<String> = tp.levels.iter().map(u32::to_string).collect();
    let series: Vec<Series> = tp
        .names
        .iter()
        .enumerate()
        .filter(|(_, n)| keep(n))
        .map(|(ci, name)| Series {
            name: name.to_string(),
            points: tp.cells[ci]
                .iter()
                .zip(&categories)
                .map(|(cell, cat)| Point::from_samples(cat.clone(), &value(cell)))
                .collect(),
        })
        .collect();
    let medians: Vec<f64> = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.median))
        .filter(|m| m.is_finite() && *m > 0.0)
        .collect();
    let (lo, hi) = medians
        .iter()
        .fold((f64::INFINITY, 0.0f64), |(lo, hi), &m| {
            (lo.min(m), hi.max(m))
        });
    Figure {
        id: id.into(),
        title: title.into(),
        x_label: "concurrent sessions".into(),
        y_label: y_label.into(),
        // Orders of magnitude apart (Haraka vs the rest) read better on a log scale.
        log_y: hi > 20.0 * lo,
        categories,
        series,
        note: note.into(),
    }
}

/// The ratio of the gateway with FCrDNS + SPF to the gateway without, per level and client.
fn dns_figure(a: &Aim) -> Figure {
    let series = [("smtp-source", &a.source), ("pipelining client", &a.pipe)]
        .into_iter()
        .map(|(name, per)| Series {
            name: name.into(),
            points: per
                .iter()
                .map(|(s, r)| Point::from_samples(s.to_string(), r))
                .collect(),
        })
        .collect();
    Figure {
        id: "dns-ratio".into(),
        title: "Sessions per second with FCrDNS + SPF on, relative to off".into(),
        x_label: "concurrent sessions".into(),
        y_label: "on / off".into(),
        log_y: false,
        categories: a.source.iter().map(|(s, _)| s.to_string()).collect(),
        series,
        note: format!(
            "Median of per-repeat ratios, whiskers min–max; aim ≥ {}. DNS answered by a \
             responder on loopback; the resolver caches.",
            a.aim
        ),
    }
}

pub fn figures(tp: &Throughput) -> Figures {
    let all = |_: &str| true;
    let middle = |n: &str| n != "direct";
    let mut figures = Figures {
        bench: "smtp".into(),
        command: "cargo xtask bench smtp".into(),
        machine: machine(),
        figures: vec![
            figure(
                tp,
                "throughput",
                "Messages per second, smtp-source (one message per connection)",
                "messages/s",
                "Aims for the gateway: ≥ 0.85× direct, ≥ 5× Haraka, ≥ 1× HAProxy; with \
                 FCrDNS + SPF ≥ 0.9× without. Postfix: acceptance rate (it queues, then relays; every message reached the sink).",
                all,
                source_rates,
            ),
            figure(
                tp,
                "throughput-pipelined",
                "Messages per second, pipelining client (MAIL/RCPT/DATA in one group)",
                "messages/s",
                "One message per connection; same runs as the latency figures.",
                all,
                pipe_rates,
            ),
            figure(
                tp,
                "latency-p99",
                "p99 session latency, pipelining client (connect to 221)",
                "ms",
                "Whiskers: min–max of the per-run p99 over the repeats.",
                all,
                |c| c.pipe.iter().map(|p| p.p99_ms).collect(),
            ),
            figure(
                tp,
                "latency-p50",
                "Median session latency, pipelining client (connect to 221)",
                "ms",
                "Whiskers: min–max of the per-run p50 over the repeats.",
                all,
                |c| c.pipe.iter().map(|p| p.p50_ms).collect(),
            ),
            figure(
                tp,
                "cpu",
                "CPU per message of the program in the middle (its cgroup)",
                "CPU µs per message",
                "smtp-source runs; user + system time of every process of the contender \
                 (Postfix: all its daemons, relaying included).",
                middle,
                |c| c.source.iter().map(|s| s.contender_us).collect(),
            ),
            figure(
                tp,
                "cpu-total",
                "CPU per message of the whole path (smtp-source + contender + smtp-sink)",
                "CPU µs per message",
                "Direct is the baseline: client and sink only.",
                all,
                |c| c.source.iter().map(|s| s.total_us).collect(),
            ),
        ],
    };
    if let Some(a) = Aim::new(tp, GATEWAY_DNS, GATEWAY, AIM_DNS) {
        figures.figures.push(dns_figure(&a));
    }
    figures
}

//! RFC 2920 pipelining towards the backend: the MAIL and RCPT commands forwarded without waiting
//! for their replies, in the order they were sent, and how each reply settles the transaction
//! once it is read.
//!
//! The session forwards a command here only when every gateway check of that command passed and
//! running them needed no backend reply still outstanding; anything else (a refusal with side
//! effects, any other verb, the end of the buffered group) first settles every awaited reply in
//! order. A DATA ending the group goes out with the group and settles it before its own reply is
//! read (`session/data.rs`). So each reply reaches the client in the position it would have had
//! unpipelined, and [`settle`] makes each one change the transaction exactly as the unpipelined
//! command would have.

use std::collections::VecDeque;

use super::{backend::BackendError, reply::Reply};

/// A command forwarded to the backend whose reply has not been read yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Awaiting {
    /// `MAIL FROM`, with the sender it names (the session's sender once the backend accepts it).
    Mail { from: String },
    /// `MAIL FROM` the gateway answered `250` itself and sent with the first recipient
    /// (`backend.mail_with_first_rcpt`): its reply is never relayed; a refusal becomes the
    /// reply of every RCPT of the transaction.
    HeldMail { from: String },
    /// `RCPT TO`.
    Rcpt,
}

/// What one awaited reply means for the session.
#[derive(Debug)]
pub enum Settled {
    /// MAIL accepted: the transaction is open, `from` is the sender; relay `reply`.
    Opened { from: String, reply: Reply },
    /// MAIL refused: no transaction; relay `reply`.
    NotOpened(Reply),
    /// RCPT accepted: one more recipient; relay `reply`.
    Accepted(Reply),
    /// RCPT refused by the backend; relay `reply`.
    Refused(Reply),
    /// RCPT whose transaction was refused or lost before it: unpipelined, the gateway would have
    /// answered it `503` itself (and counted an error) without forwarding it. `discarded` is how
    /// reading the backend's own answer went (it is never relayed).
    NoTransaction { discarded: Result<(), BackendError> },
    /// The backend failed on this command (the transaction is lost).
    Lost(BackendError),
    /// Held MAIL accepted: the transaction is open at the backend too; nothing to relay.
    HeldOpened { from: String },
    /// Held MAIL refused: what every RCPT of the transaction is answered (the client had its
    /// `250`; nothing to relay now). Never a positive or an intermediate reply: a backend that
    /// answers MAIL so gets the `451` of a lost backend in its place.
    HeldRefused(Reply),
    /// The backend failed on a held MAIL (the connection is lost; every RCPT gets `451`).
    HeldLost(BackendError),
}

/// Settles one awaited command with the backend's `reply`. `txn_open` says whether the
/// transaction is still open after every earlier reply was settled.
pub fn settle(awaiting: Awaiting, txn_open: bool, reply: Result<Reply, BackendError>) -> Settled {
    match (awaiting, reply) {
        (Awaiting::Rcpt, reply) if !txn_open => Settled::NoTransaction {
            discarded: reply.map(drop),
        },
        (Awaiting::HeldMail { .. }, Err(e)) => Settled::HeldLost(e),
        (Awaiting::HeldMail { from }, Ok(reply)) if reply.is_positive() => {
            Settled::HeldOpened { from }
        }
        (Awaiting::HeldMail { .. }, Ok(reply)) if (400..600).contains(&reply.code) => {
            Settled::HeldRefused(reply)
        }
        (Awaiting::HeldMail { .. }, Ok(reply)) => Settled::HeldLost(BackendError::Protocol(
            format!("MAIL answered {}", reply.summary()),
        )),
        (_, Err(e)) => Settled::Lost(e),
        (Awaiting::Mail { from }, Ok(reply)) if reply.is_positive() => {
            Settled::Opened { from, reply }
        }
        (Awaiting::Mail { .. }, Ok(reply)) => Settled::NotOpened(reply),
        (Awaiting::Rcpt, Ok(reply)) if reply.is_positive() => Settled::Accepted(reply),
        (Awaiting::Rcpt, Ok(reply)) => Settled::Refused(reply),
    }
}

/// The commands forwarded and not answered yet, oldest first.
#[derive(Debug, Default)]
pub struct Pipeline {
    /// In the order they were written to the backend (its replies come in that order).
    awaiting: VecDeque<Awaiting>,
    /// How many of them are RCPTs.
    rcpts: usize,
}

impl Pipeline {
    /// Records a command just queued towards the backend.
    pub fn push(&mut self, awaiting: Awaiting) {
        if awaiting == Awaiting::Rcpt {
            self.rcpts += 1;
        }
        self.awaiting.push_back(awaiting);
    }

    /// Takes the oldest command still waiting for its reply.
    pub fn oldest(&mut self) -> Option<Awaiting> {
        let oldest = self.awaiting.pop_front();
        if oldest == Some(Awaiting::Rcpt) {
            self.rcpts = self.rcpts.saturating_sub(1);
        }
        oldest
    }

    /// RCPTs forwarded whose reply is awaited (each may yet be accepted).
    pub fn rcpts(&self) -> usize {
        self.rcpts
    }

    /// Nothing is awaited.
    pub fn is_empty(&self) -> bool {
        self.awaiting.is_empty()
    }

    /// Forgets every awaited command (the session is closing).
    pub fn clear(&mut self) {
        self.awaiting.clear();
        self.rcpts = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One step of a client's group as the session handles it.
    #[derive(Debug, Clone, Copy)]
    enum Step {
        /// MAIL forwarded; the backend answers with this code.
        Mail(u16),
        /// RCPT forwarded; the backend answers with this code (0: the backend fails).
        Rcpt(u16),
        /// RCPT the gateway refuses itself with this code (the session settles what is awaited
        /// first, then answers it, as `handle_rcpt` does).
        Refused(u16),
        /// MAIL the gateway answers 250 itself and holds for the next forwarded RCPT; the
        /// backend answers it with this code then.
        HeldMail(u16),
    }

    /// The transaction as the session keeps it, and what the client saw.
    #[derive(Debug, Default, PartialEq, Eq)]
    struct Model {
        txn_open: bool,
        accepted: usize,
        errors: usize,
        sender: Option<String>,
        backend_lost: bool,
        replies: Vec<u16>,
        /// The backend's code for the MAIL held and not sent yet.
        held: Option<u16>,
        /// The held MAIL's refusal, every RCPT's reply.
        refused: Option<u16>,
    }

    impl Model {
        fn settle_all(&mut self, pipeline: &mut Pipeline, backend: &mut VecDeque<u16>) {
            while let Some(awaiting) = pipeline.oldest() {
                let reply = match backend.pop_front() {
                    _ if self.backend_lost => Err(BackendError::Closed),
                    Some(0) | None => Err(BackendError::Closed),
                    Some(code) => Ok(Reply::new(code, "x")),
                };
                let open = self.txn_open && self.refused.is_none();
                match settle(awaiting, open, reply) {
                    Settled::Opened { from, reply } => {
                        self.sender = Some(from);
                        self.replies.push(reply.code);
                    }
                    Settled::NotOpened(reply) => {
                        self.txn_open = false;
                        self.replies.push(reply.code);
                    }
                    Settled::Accepted(reply) => {
                        self.accepted += 1;
                        self.replies.push(reply.code);
                    }
                    Settled::Refused(reply) => self.replies.push(reply.code),
                    Settled::NoTransaction { .. } => match self.refused {
                        Some(code) => self.replies.push(code),
                        None => {
                            self.errors += 1;
                            self.replies.push(503);
                        }
                    },
                    Settled::Lost(_) => {
                        self.backend_lost = true;
                        self.txn_open = false;
                        self.replies.push(451);
                    }
                    Settled::HeldOpened { from } => self.sender = Some(from),
                    Settled::HeldRefused(reply) => self.refused = Some(reply.code),
                    Settled::HeldLost(_) => {
                        self.backend_lost = true;
                        self.refused = Some(451);
                    }
                }
            }
        }

        /// Runs `steps` pipelined: forwarded commands queue, a gateway refusal settles first.
        fn pipelined(steps: &[Step]) -> Self {
            let mut m = Model::default();
            let mut pipeline = Pipeline::default();
            let mut backend = VecDeque::new();
            for step in steps {
                match *step {
                    Step::Mail(code) => {
                        // Only a RCPT or DATA joins a group (`may_join_group`): a MAIL line
                        // settles everything awaited first, so two MAILs are never in flight.
                        m.settle_all(&mut pipeline, &mut backend);
                        m.txn_open = true; // assumed until the reply says otherwise
                        (m.held, m.refused) = (None, None);
                        pipeline.push(Awaiting::Mail { from: "s".into() });
                        backend.push_back(code);
                    }
                    Step::HeldMail(code) => {
                        m.settle_all(&mut pipeline, &mut backend);
                        m.txn_open = true;
                        (m.held, m.refused) = (Some(code), None);
                        m.replies.push(250);
                    }
                    Step::Rcpt(code) => {
                        if let Some(held) = m.held.take() {
                            pipeline.push(Awaiting::HeldMail { from: "s".into() });
                            backend.push_back(held);
                        }
                        pipeline.push(Awaiting::Rcpt);
                        backend.push_back(code);
                    }
                    Step::Refused(code) => {
                        m.settle_all(&mut pipeline, &mut backend);
                        m.refuse(code);
                    }
                }
            }
            m.settle_all(&mut pipeline, &mut backend);
            m
        }

        fn refuse(&mut self, code: u16) {
            if let Some(refused) = self.refused {
                // `handle_rcpt` answers the sender's refusal before its own checks.
                self.replies.push(refused);
                return;
            }
            self.errors += 1;
            self.replies.push(if self.txn_open { code } else { 503 });
        }

        /// The same steps one round trip at a time, as the session did before pipelining.
        fn unpipelined(steps: &[Step]) -> Self {
            let mut m = Model::default();
            for step in steps {
                if matches!(step, Step::Rcpt(_))
                    && let Some(held) = m.held.take()
                {
                    // The held MAIL's answer comes with the first forwarded RCPT.
                    match held {
                        0 => (m.backend_lost, m.refused) = (true, Some(451)),
                        code if (200..300).contains(&code) => m.sender = Some("s".into()),
                        code => m.refused = Some(code),
                    }
                }
                if matches!(step, Step::Mail(_)) {
                    (m.held, m.refused) = (None, None);
                }
                match *step {
                    Step::HeldMail(code) => {
                        m.txn_open = true;
                        (m.held, m.refused) = (Some(code), None);
                        m.replies.push(250);
                    }
                    Step::Rcpt(_) if m.refused.is_some() => {
                        m.replies.extend(m.refused);
                    }
                    Step::Mail(0) | Step::Rcpt(0)
                        if m.txn_open || matches!(step, Step::Mail(_)) =>
                    {
                        m.backend_lost = true;
                        m.txn_open = false;
                        m.replies.push(451);
                    }
                    Step::Mail(code) => {
                        m.txn_open = (200..300).contains(&code);
                        if m.txn_open {
                            m.sender = Some("s".into());
                        }
                        m.replies.push(code);
                    }
                    Step::Rcpt(_) if !m.txn_open => {
                        m.errors += 1;
                        m.replies.push(503);
                    }
                    Step::Rcpt(code) => {
                        if (200..300).contains(&code) {
                            m.accepted += 1;
                        }
                        m.replies.push(code);
                    }
                    Step::Refused(code) => m.refuse(code),
                }
            }
            m
        }
    }

    #[test]
    fn replies_keep_their_order_and_settle_like_unpipelined() {
        use Step::*;
        // (group, replies the client sees, recipients accepted, errors counted)
        let table: &[(&[Step], &[u16], usize, usize)] = &[
            (&[Mail(250), Rcpt(250)], &[250, 250], 1, 0),
            (
                &[Mail(250), Rcpt(250), Refused(550), Rcpt(550), Rcpt(250)],
                &[250, 250, 550, 550, 250],
                2,
                1,
            ),
            (
                &[Mail(250), Refused(550), Refused(452), Rcpt(450)],
                &[250, 550, 452, 450],
                0,
                2,
            ),
            (
                &[Mail(250), Rcpt(550), Refused(501), Rcpt(250), Refused(550)],
                &[250, 550, 501, 250, 550],
                1,
                2,
            ),
            // The backend refuses the sender: every RCPT is the gateway's 503, as unpipelined.
            (
                &[Mail(550), Rcpt(250), Refused(550), Rcpt(250)],
                &[550, 503, 503, 503],
                0,
                3,
            ),
            (&[Mail(451), Rcpt(451)], &[451, 503], 0, 1),
            // The backend fails mid-group: 451 there, then no transaction.
            (
                &[Mail(250), Rcpt(250), Rcpt(0), Rcpt(250), Refused(550)],
                &[250, 250, 451, 503, 503],
                1,
                2,
            ),
            (&[Mail(0), Rcpt(250)], &[451, 503], 0, 1),
            // A MAIL the gateway answered itself, sent with the first recipient.
            (
                &[HeldMail(250), Rcpt(250), Rcpt(550)],
                &[250, 250, 550],
                1,
                0,
            ),
            (
                &[HeldMail(250), Refused(550), Rcpt(250)],
                &[250, 550, 250],
                1,
                1,
            ),
            // The backend refuses that sender: every RCPT gets its refusal, no error counted.
            (
                &[HeldMail(553), Rcpt(250), Refused(550), Rcpt(250)],
                &[250, 553, 553, 553],
                0,
                0,
            ),
            (&[HeldMail(0), Rcpt(250), Rcpt(250)], &[250, 451, 451], 0, 0),
        ];
        for (steps, replies, accepted, errors) in table {
            let piped = Model::pipelined(steps);
            assert_eq!(piped.replies, *replies, "replies of a group");
            assert_eq!(piped.accepted, *accepted, "accepted recipients");
            assert_eq!(piped.errors, *errors, "errors counted");
            assert_eq!(
                piped,
                Model::unpipelined(steps),
                "pipelined and unpipelined differ"
            );
        }
    }

    #[test]
    fn settles_in_forwarding_order() {
        let mut p = Pipeline::default();
        assert!(p.is_empty());
        p.push(Awaiting::Mail { from: "a@b".into() });
        p.push(Awaiting::Rcpt);
        assert_eq!(p.oldest(), Some(Awaiting::Mail { from: "a@b".into() }));
        assert_eq!(p.oldest(), Some(Awaiting::Rcpt));
        assert_eq!(p.oldest(), None);
        p.push(Awaiting::Rcpt);
        p.clear();
        assert!(p.is_empty());
    }

    #[test]
    fn a_held_mail_is_never_relayed_and_only_a_refusal_becomes_the_recipients_reply() {
        let held = || Awaiting::HeldMail { from: "a@b".into() };
        let s = settle(held(), true, Ok(Reply::new(250, "2.1.0 Ok")));
        assert!(matches!(s, Settled::HeldOpened { from } if from == "a@b"));
        for code in [450, 451, 550, 553] {
            let s = settle(held(), true, Ok(Reply::new(code, "refused")));
            assert!(
                matches!(s, Settled::HeldRefused(r) if r.code == code),
                "{code}"
            );
        }
        // A 354 (or any non-refusal) to MAIL is a broken backend: never a recipient's reply.
        for code in [150, 354] {
            let s = settle(held(), true, Ok(Reply::new(code, "odd")));
            assert!(
                matches!(s, Settled::HeldLost(BackendError::Protocol(_))),
                "{code}"
            );
        }
        let s = settle(held(), true, Err(BackendError::Closed));
        assert!(matches!(s, Settled::HeldLost(BackendError::Closed)));
    }

    #[test]
    fn a_rcpt_without_transaction_is_never_relayed() {
        let s = settle(Awaiting::Rcpt, false, Ok(Reply::new(250, "2.1.5 Ok")));
        assert!(matches!(s, Settled::NoTransaction { discarded: Ok(()) }));
        let s = settle(Awaiting::Rcpt, false, Err(BackendError::Timeout));
        assert!(matches!(s, Settled::NoTransaction { discarded: Err(_) }));
        let s = settle(Awaiting::Rcpt, true, Err(BackendError::Timeout));
        assert!(matches!(s, Settled::Lost(BackendError::Timeout)));
    }

    /// Backend reply codes a step may get (0: the backend fails on it).
    fn backend_code() -> impl proptest::strategy::Strategy<Value = u16> {
        proptest::sample::select(vec![0u16, 250, 251, 450, 451, 452, 550, 553, 554])
    }

    /// A client group: forwarded MAIL/RCPT and gateway refusals in any order. A backend failure
    /// (code 0) ends the group's forwarded commands: after it the real session has no backend,
    /// which neither model tracks beyond the failure itself.
    fn group() -> impl proptest::strategy::Strategy<Value = Vec<Step>> {
        use proptest::prelude::*;
        let step = prop_oneof![
            backend_code().prop_map(Step::Mail),
            backend_code().prop_map(Step::Rcpt),
            proptest::sample::select(vec![452u16, 501, 550]).prop_map(Step::Refused),
            backend_code().prop_map(Step::HeldMail),
        ];
        proptest::collection::vec(step, 0..24).prop_map(|steps| {
            // A held MAIL's failure happens at the RCPT that takes it to the backend.
            let (mut failed, mut held_fails) = (false, false);
            steps
                .into_iter()
                .filter(|s| {
                    let forwarded = matches!(s, Step::Mail(_) | Step::Rcpt(_) | Step::HeldMail(_));
                    let keep = !(failed && forwarded);
                    if keep {
                        failed |= matches!(s, Step::Mail(0) | Step::Rcpt(0))
                            || (held_fails && matches!(s, Step::Rcpt(_)));
                        match s {
                            Step::HeldMail(code) => held_fails = *code == 0,
                            Step::Mail(_) | Step::Rcpt(_) => held_fails = false,
                            Step::Refused(_) => {}
                        }
                    }
                    keep
                })
                .collect()
        })
    }

    proptest::proptest! {
        /// Any group, settled pipelined, gives the client the replies, the recipients and the
        /// error count the same commands would have given one round trip at a time.
        #[test]
        fn any_group_settles_like_unpipelined(steps in group()) {
            proptest::prop_assert_eq!(Model::pipelined(&steps), Model::unpipelined(&steps));
        }
    }
}

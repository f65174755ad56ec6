//! The store's connection to PostgreSQL, on a thread of its own, and its commit pipeline.

use super::rows::{Column, Writes};
use super::{fail, pg, set_user, take_lock};
use postgres::types::ToSql;
use postgres::{Client, NoTls};
use rockhound_engine::server::StoreError;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;

type Job = Box<dyn FnOnce(&mut Session) + Send>;

/// What the connection's thread is sent: a call, or a flush's rows to write.
enum Message {
    Call(Job),
    Write(Write),
}

/// One flush's rows, sealed under the server's lock: the history partitions they need,
/// the statements, and whom to tell how it went.
pub(super) struct Write {
    pub(super) months: Vec<String>,
    pub(super) writes: Writes,
    pub(super) done: Box<dyn FnOnce(Result<(), StoreError>) + Send>,
}

/// What the store and the connection's thread share about the writes under way.
#[derive(Default)]
pub(super) struct Progress {
    /// Writes sent and not yet settled.
    pub(super) in_flight: AtomicUsize,
    /// A write failed: every write after it fails too (each was sealed from tables that
    /// held the lost commits) until the store reads the tables back.
    pub(super) broken: AtomicBool,
}

/// The connection, the statements prepared on it (a flush's statements are prepared
/// once, not parsed again each time) and the history partitions known to exist.
pub(super) struct Session {
    pub(super) client: Client,
    statements: BTreeMap<&'static str, postgres::Statement>,
    /// Months (as `YYYY-MM`) whose history partition is known to exist.
    months: BTreeSet<String>,
}

/// A connection on a thread of its own.
///
/// The thread is also the store's commit pipeline: writes are sent to it under the server's
/// lock and written after the lock is released, and the writes that queued up while one
/// transaction ran are written together in the next (a group commit across requests and
/// users), each told the outcome once it is durable.
pub(super) struct Connection {
    jobs: Option<mpsc::Sender<Message>>,
    thread: Option<JoinHandle<()>>,
    pub(super) progress: Arc<Progress>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Connection")
    }
}

impl Connection {
    pub(super) fn open(url: &str) -> Result<Connection, StoreError> {
        let (jobs, queue) = mpsc::channel::<Message>();
        let (ready, opened) = mpsc::sync_channel(1);
        let url = url.to_owned();
        let progress = Arc::new(Progress::default());
        let shared = Arc::clone(&progress);
        let thread = std::thread::Builder::new()
            .name("postgres".to_owned())
            .spawn(move || match Client::connect(&url, NoTls) {
                Ok(client) => {
                    let _ = ready.send(Ok(()));
                    let session = Session {
                        client,
                        statements: BTreeMap::new(),
                        months: BTreeSet::new(),
                    };
                    serve_jobs(session, &url, &queue, &shared);
                }
                Err(error) => {
                    let _ = ready.send(Err(pg("cannot connect to PostgreSQL")(error)));
                }
            })
            .map_err(|e| fail("cannot start the database thread", e))?;
        let connection = Connection {
            jobs: Some(jobs),
            thread: Some(thread),
            progress,
        };
        opened
            .recv()
            .map_err(|_| StoreError("the database thread stopped".to_owned()))??;
        Ok(connection)
    }

    fn send(&self, message: Message) -> Result<(), StoreError> {
        self.jobs
            .as_ref()
            .ok_or_else(stopped)?
            .send(message)
            .map_err(|_| stopped())
    }

    /// Runs `job` on the connection and waits for its answer (after every write sent
    /// before it has settled).
    pub(super) fn call<R: Send + 'static>(
        &self,
        job: impl FnOnce(&mut Session) -> Result<R, StoreError> + Send + 'static,
    ) -> Result<R, StoreError> {
        let (answer, answered) = mpsc::sync_channel(1);
        self.send(Message::Call(Box::new(move |session| {
            let _ = answer.send(job(session));
        })))?;
        answered.recv().map_err(|_| stopped())?
    }

    /// Sends a flush's rows to be written; `done` is told the outcome.
    pub(super) fn write(&self, write: Write) -> Result<(), StoreError> {
        self.progress.in_flight.fetch_add(1, Ordering::SeqCst);
        self.send(Message::Write(write)).inspect_err(|_| {
            self.progress.in_flight.fetch_sub(1, Ordering::SeqCst);
        })
    }

    /// Every write sent so far is durable.
    pub(super) fn settled(&self) -> bool {
        self.progress.in_flight.load(Ordering::SeqCst) == 0 && !self.broken()
    }

    pub(super) fn broken(&self) -> bool {
        self.progress.broken.load(Ordering::SeqCst)
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        // Closing the queue ends the thread once it has done what was sent (every write
        // under way is settled), which closes the connection and so releases the advisory
        // lock.
        self.jobs = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

pub(super) fn stopped() -> StoreError {
    StoreError("the database connection's thread stopped".to_owned())
}

/// The connection's thread: runs calls in order and writes each run of queued writes in
/// one transaction.
fn serve_jobs(
    mut session: Session,
    url: &str,
    queue: &mpsc::Receiver<Message>,
    progress: &Progress,
) {
    let mut next = None;
    while let Some(message) = next.take().or_else(|| queue.recv().ok()) {
        if session.client.is_closed() {
            // The database went away (a restart): connect again and take the server lock
            // back; if either fails, the job fails on the closed connection and the next
            // one tries again.
            if let Ok(again) = Client::connect(url, NoTls) {
                session.client = again;
                session.statements.clear();
                if !matches!(take_lock(&mut session.client), Ok(true)) {
                    let _ = session
                        .client
                        .batch_execute("SELECT pg_terminate_backend(pg_backend_pid())");
                }
            }
        }
        let first = match message {
            Message::Call(job) => {
                job(&mut session);
                continue;
            }
            Message::Write(write) => write,
        };
        let mut group = vec![first];
        while let Ok(message) = queue.try_recv() {
            match message {
                Message::Write(write) => group.push(write),
                call => {
                    next = Some(call);
                    break;
                }
            }
        }
        let outcome = if progress.broken.load(Ordering::SeqCst) {
            Err(StoreError(
                "an earlier write to the database failed; the tables are being read back"
                    .to_owned(),
            ))
        } else {
            session.write_group(&group)
        };
        if outcome.is_err() {
            progress.broken.store(true, Ordering::SeqCst);
        }
        progress.in_flight.fetch_sub(group.len(), Ordering::SeqCst);
        for write in group {
            (write.done)(outcome.clone());
        }
    }
}

impl Session {
    /// Creates the history partitions of `months` that are not known to exist.
    pub(super) fn ensure_partitions<'a>(
        &mut self,
        months: impl IntoIterator<Item = &'a String>,
    ) -> Result<(), StoreError> {
        let missing: BTreeSet<String> = months
            .into_iter()
            .filter(|m| !self.months.contains(*m))
            .cloned()
            .collect();
        for m in missing {
            let first = format!("{m}-01 00:00:00+00");
            self.client
                .execute(
                    "SELECT rockhound_history_partition($1::text::timestamptz)",
                    &[&first],
                )
                .map_err(pg("cannot create a history partition"))?;
            self.months.insert(m);
        }
        Ok(())
    }

    /// Writes the rows of `group` in one transaction, each user's under that user's
    /// row-level security, in the order they were sealed.
    fn write_group(&mut self, group: &[Write]) -> Result<(), StoreError> {
        self.ensure_partitions(group.iter().flat_map(|w| &w.months))?;
        self.write(group.iter().map(|w| &w.writes))
    }

    /// Runs `writes` in one transaction, each user's under that user's row-level security.
    pub(super) fn write<'a>(
        &mut self,
        writes: impl Iterator<Item = &'a Writes> + Clone,
    ) -> Result<(), StoreError> {
        for (sql, _) in writes.clone().flat_map(|w| w.statements.values()) {
            if !self.statements.contains_key(sql) {
                let statement = self.client.prepare(sql).map_err(pg("cannot prepare"))?;
                self.statements.insert(sql, statement);
            }
        }
        let mut tx = self.client.transaction().map_err(pg("cannot begin"))?;
        for writes in writes {
            let mut current: Option<&String> = None;
            for ((user, _), (sql, columns)) in &writes.statements {
                if let Some(user) = user
                    && current != Some(user)
                {
                    set_user(&mut tx, user)?;
                    current = Some(user);
                }
                let params: Vec<&(dyn ToSql + Sync)> = columns.iter().map(Column::param).collect();
                tx.execute(&self.statements[sql], &params)
                    .map_err(pg("cannot write"))?;
            }
        }
        tx.commit().map_err(pg("cannot commit"))
    }
}

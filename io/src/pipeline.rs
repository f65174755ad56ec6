//! The durable stores' commit pipeline, shared by SQLite and PostgreSQL.
//!
//! The tables are kept in memory as a cache of the database (the engine decides from them):
//! a commit is checked and applied in memory, and a flush writes every row the commits
//! since the last flush changed, in one durable transaction. The database connection lives
//! on a thread of its own, which writes the flushes in the order they were sealed.
//!
//! With the pipeline on (`rockhound serve`), [`ServerStore::begin_flush`] seals the rows
//! under the server's lock, hands them to the thread and returns at once; the request waits
//! for the commit after releasing the lock, so other requests (other users' batches) are
//! decided while the database writes, and the flushes that queue up while one transaction
//! runs go in the next together (a group commit across requests and users). An answer waits
//! for its own flush, which covers everything committed before it. With it off (the
//! simulation, whose runtime must not be woken from another thread), every flush waits.
//!
//! A refused write fails every write sealed after it (each was sealed from tables that held
//! the lost commits); the next flush reads the tables back and moves the epoch on, so every
//! request that made or read those commits is answered 503. If the database cannot even be
//! read, the store stays broken, and each flush tries again.

use crate::pending::Pending;
use rockhound_engine::server::tables::{Commit, ServerStore, Tables};
use rockhound_engine::server::{Flushing, StoreError};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;

/// A database connection as the pipeline drives it.
pub(crate) trait Backend: Send + 'static {
    /// One flush's rows, sealed under the server's lock.
    type Rows: Send + 'static;
    /// The rows a cleanup deletes.
    type Removals: Send + 'static;
    /// The rows the commits since the last flush changed, as `tables` holds them now.
    fn seal(tables: &Tables, pending: &Pending) -> Result<Self::Rows, StoreError>;
    /// The rows of `before` that `after` no longer has.
    fn removals(before: &Tables, after: &Tables) -> Result<Self::Removals, StoreError>;
    /// Writes `group` in one durable transaction, in order; on `Err` none of it.
    fn write_group(&mut self, group: &[Self::Rows]) -> Result<(), StoreError>;
    /// Deletes `removals` in one durable transaction.
    fn remove(&mut self, removals: Self::Removals) -> Result<(), StoreError>;
    /// Reads the tables back.
    fn load(&mut self) -> Result<Tables, StoreError>;
    /// Called before each job (a lost connection is opened again here).
    fn before_job(&mut self) {}
}

/// Told whether a write is durable.
type Done = Box<dyn FnOnce(Result<(), StoreError>) + Send>;

/// What the connection's thread is sent: a call, or a flush's rows to write.
enum Message<B: Backend> {
    Call(Box<dyn FnOnce(&mut B) + Send>),
    Write(B::Rows, Done),
}

/// What the store and the connection's thread share about the writes under way.
#[derive(Default)]
struct Progress {
    /// Writes sent and not yet settled.
    in_flight: AtomicUsize,
    /// A write failed: every write after it fails too until the tables are read back.
    broken: AtomicBool,
}

/// A store's tables, cached in memory, over a database connection on a thread of its own.
pub(crate) struct Durable<B: Backend> {
    jobs: Option<mpsc::Sender<Message<B>>>,
    thread: Option<JoinHandle<()>>,
    progress: Arc<Progress>,
    tables: Tables,
    pending: Pending,
    epoch: u64,
    pipelined: bool,
}

impl<B: Backend> std::fmt::Debug for Durable<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Durable")
            .field("epoch", &self.epoch)
            .field("pipelined", &self.pipelined)
            .finish_non_exhaustive()
    }
}

fn stopped() -> StoreError {
    StoreError("the database connection's thread stopped".to_owned())
}

impl<B: Backend> Durable<B> {
    /// Opens the backend on a new thread named `name` and reads the tables.
    pub(crate) fn start(
        name: &str,
        open: impl FnOnce() -> Result<B, StoreError> + Send + 'static,
    ) -> Result<Durable<B>, StoreError> {
        let (jobs, queue) = mpsc::channel::<Message<B>>();
        let (ready, opened) = mpsc::sync_channel(1);
        let progress = Arc::new(Progress::default());
        let shared = Arc::clone(&progress);
        let thread = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || match open() {
                Ok(backend) => {
                    let _ = ready.send(Ok(()));
                    serve_jobs(backend, &queue, &shared);
                }
                Err(error) => {
                    let _ = ready.send(Err(error));
                }
            })
            .map_err(|e| StoreError(format!("cannot start the database thread: {e}")))?;
        let mut durable = Durable {
            jobs: Some(jobs),
            thread: Some(thread),
            progress,
            tables: Tables::default(),
            pending: Pending::default(),
            epoch: 0,
            pipelined: false,
        };
        opened.recv().map_err(|_| stopped())??;
        durable.tables = durable.call(B::load)?;
        Ok(durable)
    }

    /// Lets [`ServerStore::begin_flush`] return before the write is durable.
    pub(crate) fn set_pipelined(&mut self, pipelined: bool) {
        self.pipelined = pipelined;
    }

    fn send(&self, message: Message<B>) -> Result<(), StoreError> {
        self.jobs
            .as_ref()
            .ok_or_else(stopped)?
            .send(message)
            .map_err(|_| stopped())
    }

    /// Runs `job` on the connection and waits for its answer (after every write sent
    /// before it has settled).
    pub(crate) fn call<R: Send + 'static>(
        &self,
        job: impl FnOnce(&mut B) -> Result<R, StoreError> + Send + 'static,
    ) -> Result<R, StoreError> {
        let (answer, answered) = mpsc::sync_channel(1);
        self.send(Message::Call(Box::new(move |backend| {
            let _ = answer.send(job(backend));
        })))?;
        answered.recv().map_err(|_| stopped())?
    }

    /// Every write sent so far is durable.
    fn settled(&self) -> bool {
        self.progress.in_flight.load(Ordering::SeqCst) == 0 && !self.broken()
    }

    fn broken(&self) -> bool {
        self.progress.broken.load(Ordering::SeqCst)
    }

    /// Seals the commits since the last flush as one write and sends it; `done` is told
    /// whether it is durable. Nothing to write and nothing under way: `Ok(false)`, and
    /// `done` is dropped untold.
    fn send_pending(&mut self, done: Done) -> Result<bool, StoreError> {
        if self.broken() {
            return Err(self.read_back(StoreError(
                "a write to the database failed; the tables were read back".to_owned(),
            )));
        }
        if self.pending.is_empty() && self.settled() {
            return Ok(false);
        }
        let pending = std::mem::take(&mut self.pending);
        let sent = B::seal(&self.tables, &pending).and_then(|rows| {
            self.progress.in_flight.fetch_add(1, Ordering::SeqCst);
            self.send(Message::Write(rows, done)).inspect_err(|_| {
                self.progress.in_flight.fetch_sub(1, Ordering::SeqCst);
            })
        });
        match sent {
            Ok(()) => Ok(true),
            Err(error) => Err(self.read_back(error)),
        }
    }

    /// Undoes everything not known durable: fails the writes under way (the load is
    /// queued behind them), reads the tables back and moves the epoch on. If the database
    /// cannot be read either, the store stays broken and the next flush tries again.
    fn read_back(&mut self, error: StoreError) -> StoreError {
        self.pending = Pending::default();
        self.epoch += 1;
        self.progress.broken.store(true, Ordering::SeqCst);
        if let Ok(tables) = self.call(B::load) {
            self.tables = tables;
            self.progress.broken.store(false, Ordering::SeqCst);
        }
        error
    }
}

impl<B: Backend> Drop for Durable<B> {
    fn drop(&mut self) {
        // Closing the queue ends the thread once it has done what was sent (every write
        // under way is settled), which closes the connection and releases its locks.
        self.jobs = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The connection's thread: runs calls in order and writes each run of queued writes in
/// one transaction.
fn serve_jobs<B: Backend>(mut backend: B, queue: &mpsc::Receiver<Message<B>>, progress: &Progress) {
    let mut next = None;
    while let Some(message) = next.take().or_else(|| queue.recv().ok()) {
        backend.before_job();
        let (rows, done) = match message {
            Message::Call(job) => {
                job(&mut backend);
                continue;
            }
            Message::Write(rows, done) => (rows, done),
        };
        let mut group = vec![rows];
        let mut told = vec![done];
        while let Ok(message) = queue.try_recv() {
            match message {
                Message::Write(rows, done) => {
                    group.push(rows);
                    told.push(done);
                }
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
            backend.write_group(&group)
        };
        if outcome.is_err() {
            progress.broken.store(true, Ordering::SeqCst);
        }
        progress.in_flight.fetch_sub(told.len(), Ordering::SeqCst);
        for done in told {
            done(outcome.clone());
        }
    }
}

impl<B: Backend> ServerStore for Durable<B> {
    fn tables(&self) -> &Tables {
        &self.tables
    }

    fn commit(&mut self, commit: Commit) -> Result<(), StoreError> {
        self.pending.apply(&mut self.tables, commit);
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StoreError> {
        let (done, outcome) = mpsc::sync_channel(1);
        let tell = Box::new(move |result| {
            let _ = done.send(result);
        });
        if !self.send_pending(tell)? {
            return Ok(());
        }
        match outcome.recv().unwrap_or_else(|_| Err(stopped())) {
            Ok(()) => Ok(()),
            Err(error) => Err(self.read_back(error)),
        }
    }

    fn begin_flush(&mut self) -> Result<Flushing, StoreError> {
        if !self.pipelined {
            return self.flush().map(|()| Flushing::Done);
        }
        let (done, outcome) = tokio::sync::oneshot::channel();
        let tell = Box::new(move |result| {
            let _ = done.send(result);
        });
        if !self.send_pending(tell)? {
            return Ok(Flushing::Done);
        }
        // A failure is answered 503 by whoever waits; the next flush reads the tables back.
        Ok(Flushing::Pending(Box::pin(async move {
            outcome.await.unwrap_or_else(|_| Err(stopped()))
        })))
    }

    fn epoch(&self) -> u64 {
        self.epoch
    }

    fn retain(&mut self, keep: &mut dyn FnMut(&mut Tables)) -> Result<(), StoreError> {
        self.flush()?;
        let mut after = self.tables.clone();
        keep(&mut after);
        let removals = B::removals(&self.tables, &after)?;
        self.call(move |backend| backend.remove(removals))?;
        self.tables = after;
        Ok(())
    }
}

/// Implements [`ServerStore`] for a store that is a newtype over a [`Durable`].
macro_rules! durable_store {
    ($store:ty) => {
        impl rockhound_engine::server::tables::ServerStore for $store {
            fn tables(&self) -> &rockhound_engine::server::tables::Tables {
                self.0.tables()
            }

            fn commit(
                &mut self,
                commit: rockhound_engine::server::tables::Commit,
            ) -> Result<(), rockhound_engine::server::StoreError> {
                self.0.commit(commit)
            }

            fn flush(&mut self) -> Result<(), rockhound_engine::server::StoreError> {
                self.0.flush()
            }

            fn begin_flush(
                &mut self,
            ) -> Result<rockhound_engine::server::Flushing, rockhound_engine::server::StoreError>
            {
                self.0.begin_flush()
            }

            fn epoch(&self) -> u64 {
                self.0.epoch()
            }

            fn retain(
                &mut self,
                keep: &mut dyn FnMut(&mut rockhound_engine::server::tables::Tables),
            ) -> Result<(), rockhound_engine::server::StoreError> {
                self.0.retain(keep)
            }
        }
    };
}
pub(crate) use durable_store;

#[cfg(test)]
mod tests {
    //! The pipeline over a database that is a copy of the tables in memory, whose writes
    //! wait for the test to let them through: what is grouped, in what order, and what a
    //! refused write takes with it, on any machine.

    use super::*;
    use crate::store_tests::{config, send, still_writing, tag};
    use rockhound_engine::server::Server;
    use std::sync::Mutex;

    /// What the test controls and sees of the fake database.
    #[derive(Default)]
    struct Database {
        /// The tables as last committed.
        committed: Mutex<Tables>,
        /// The seq of each group's rows, per group written.
        groups: Mutex<Vec<Vec<u64>>>,
        /// Writes wait while this is set.
        held: Mutex<bool>,
        /// The next write is refused.
        refuse: AtomicBool,
    }

    struct Fake(Arc<Database>);

    impl Backend for Fake {
        type Rows = Tables;
        type Removals = Tables;

        fn seal(tables: &Tables, _: &Pending) -> Result<Tables, StoreError> {
            Ok(tables.clone())
        }

        fn removals(_: &Tables, after: &Tables) -> Result<Tables, StoreError> {
            Ok(after.clone())
        }

        fn write_group(&mut self, group: &[Tables]) -> Result<(), StoreError> {
            while *self.0.held.lock().unwrap() {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            if self.0.refuse.swap(false, Ordering::SeqCst) {
                return Err(StoreError("the disk is full".to_owned()));
            }
            let seqs = group.iter().map(|tables| tables.seq).collect();
            self.0.groups.lock().unwrap().push(seqs);
            *self.0.committed.lock().unwrap() = group.last().unwrap().clone();
            Ok(())
        }

        fn remove(&mut self, after: Tables) -> Result<(), StoreError> {
            *self.0.committed.lock().unwrap() = after;
            Ok(())
        }

        fn load(&mut self) -> Result<Tables, StoreError> {
            Ok(self.0.committed.lock().unwrap().clone())
        }
    }

    fn server(database: &Arc<Database>) -> Server<Durable<Fake>> {
        let shared = Arc::clone(database);
        let mut durable = Durable::start("fake", move || Ok(Fake(shared))).unwrap();
        durable.set_pipelined(true);
        Server::with_store(config(), durable)
    }

    fn wait(flushing: Flushing) -> Result<(), StoreError> {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(flushing.wait())
    }

    #[test]
    fn flushes_queued_behind_a_slow_write_go_together_in_the_order_sealed() {
        let database = Arc::new(Database::default());
        let mut server = server(&database);
        *database.held.lock().unwrap() = true;
        let mut ann = send(&mut server, "ann", "b-1", vec![tag(1)]).unwrap();
        let after_ann = server.tables().seq;
        assert!(still_writing(&mut ann));
        // The server is free while ann's write waits: bob's and cy's batches are decided.
        let bob = send(&mut server, "bob", "b-2", vec![tag(2)]).unwrap();
        let after_bob = server.tables().seq;
        let cy = send(&mut server, "cy", "b-3", vec![tag(3)]).unwrap();
        let after_cy = server.tables().seq;
        // A read waits for everything before it, and adds nothing to write.
        let read = server.begin_flush().unwrap();
        *database.held.lock().unwrap() = false;
        for flushing in [ann, bob, cy, read] {
            wait(flushing).unwrap();
        }
        assert_eq!(
            *database.groups.lock().unwrap(),
            [vec![after_ann], vec![after_bob, after_cy, after_cy]],
            "ann's write alone, then the three sealed while it ran, in order"
        );
        assert_eq!(*database.committed.lock().unwrap(), *server.tables());
        // Nothing to write and nothing under way: no wait at all.
        assert!(matches!(server.begin_flush().unwrap(), Flushing::Done));
    }

    #[test]
    fn a_refused_write_fails_the_ones_sealed_after_it_and_the_next_flush_reads_back() {
        let database = Arc::new(Database::default());
        let mut server = server(&database);
        wait(send(&mut server, "ann", "b-1", vec![tag(1)]).unwrap()).unwrap();
        let before = server.tables().clone();
        *database.held.lock().unwrap() = true;
        database.refuse.store(true, Ordering::SeqCst);
        let mut ann = send(&mut server, "ann", "b-2", vec![tag(2)]).unwrap();
        assert!(still_writing(&mut ann));
        let bob = send(&mut server, "bob", "b-3", vec![tag(3)]).unwrap();
        *database.held.lock().unwrap() = false;
        assert_eq!(wait(ann).unwrap_err().0, "the disk is full");
        assert!(wait(bob).unwrap_err().0.contains("an earlier write"));
        // The next flush reads the tables back, moves the epoch on and is refused itself;
        // the one after it has nothing to do.
        let epoch = server.store_epoch();
        assert!(server.begin_flush().is_err());
        assert_eq!(server.store_epoch(), epoch + 1);
        assert_eq!(
            server.tables(),
            &before,
            "memory is what the database holds"
        );
        assert!(matches!(server.begin_flush().unwrap(), Flushing::Done));
        // Bob's resend goes through.
        wait(send(&mut server, "bob", "b-3", vec![tag(3)]).unwrap()).unwrap();
        assert_eq!(*database.committed.lock().unwrap(), *server.tables());
    }
}

//! The embedded engine: one redb file on this host (`store.path`). redb is synchronous, so every
//! operation runs on tokio's blocking pool, never on a session's thread. Each value is stored
//! behind its expiry (8 bytes, Unix milliseconds, big-endian): reads ignore expired entries, and
//! the writer purges them every `store.purge_interval`. Writes arrive in batches: one
//! transaction (one fsync) per batch.

use std::{
    os::unix::fs::DirBuilderExt,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use redb::{Database, ReadableTable, TableDefinition};

use super::{
    CounterLife, SCAN_ROUND, Scan, ScanProgress, Scanned, StoreConfig, StoreError, Write,
    contain::contain, records::unix_now_ms,
};

/// The one table: key -> expiry (8 bytes) + value.
const ENTRIES: TableDefinition<&str, &[u8]> = TableDefinition::new("entries");

/// Bytes of the expiry in front of every value.
const EXPIRY: usize = 8;

/// Bytes of a counter's value.
const COUNTER: usize = 8;

/// Expired entries deleted by one purge transaction at most (the next purge takes the rest).
const PURGE_BATCH: usize = 10_000;

/// The redb database, shared with the blocking tasks.
pub(super) struct Embedded {
    /// The open database (holds the file's lock: one daemon per file); `None` after an I/O
    /// error (a full disk), until the next operation opens the file again: redb refuses every
    /// operation after one ("close and re-open the database").
    db: Arc<Mutex<Option<Arc<Database>>>>,
    /// The file, to open it again.
    path: PathBuf,
    /// `store.cache_bytes`.
    cache_bytes: usize,
}

/// Opens (or creates) the database at `path`. redb asserts (panics) on some damaged files (a
/// truncated file, a damaged region header): that is [`StoreError::Damaged`], not a crash.
fn open_database(path: &Path, cache_bytes: usize) -> Result<Database, StoreError> {
    let opened = contain(|| Database::builder().set_cache_size(cache_bytes).create(path));
    match opened {
        Ok(db) => db.map_err(|error| StoreError::Open {
            path: path.to_path_buf(),
            error: Box::new(error),
        }),
        Err(panic) => Err(StoreError::Damaged {
            path: path.to_path_buf(),
            reason: format!("redb: {panic}"),
        }),
    }
}

/// Any redb error, as a [`StoreError`].
fn db_error<E: Into<redb::Error>>(e: E) -> StoreError {
    StoreError::Embedded(Box::new(e.into()))
}

impl Embedded {
    /// Opens (or creates) the file, creating its directory with mode 0700.
    pub(super) fn open(config: &StoreConfig) -> Result<Self, StoreError> {
        if let Some(dir) = config.path.parent()
            && !dir.as_os_str().is_empty()
            && !dir.exists()
        {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|source| StoreError::Directory {
                    path: dir.to_path_buf(),
                    source,
                })?;
        }
        Self::open_file(&config.path, config.cache_bytes)
    }

    /// Opens (or creates) the database at `path` (see [`open_database`]).
    fn open_file(path: &Path, cache_bytes: usize) -> Result<Self, StoreError> {
        let db = open_database(path, cache_bytes)?;
        Ok(Self {
            db: Arc::new(Mutex::new(Some(Arc::new(db)))),
            path: path.to_path_buf(),
            cache_bytes,
        })
    }

    /// Runs `f` on the database on the blocking pool, opening the file again first when an I/O
    /// error closed it (an open that fails is this operation's error: the writer tries again
    /// every `store.retry_interval`, and reads count it as a store that is down).
    async fn blocking<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Database) -> Result<T, StoreError> + Send + 'static,
    {
        let (slot, path, cache_bytes) = (self.db.clone(), self.path.clone(), self.cache_bytes);
        tokio::task::spawn_blocking(move || {
            let db = {
                let mut open = slot.lock().unwrap_or_else(PoisonError::into_inner);
                match open.as_ref() {
                    Some(db) => db.clone(),
                    None => {
                        // Fails while an operation still holds the old handle (the file's
                        // lock); the next one succeeds.
                        let db = Arc::new(open_database(&path, cache_bytes)?);
                        tracing::info!(path = %path.display(), "embedded store opened again after an I/O error");
                        *open = Some(db.clone());
                        db
                    }
                }
            };
            let result = f(&db);
            if let Err(StoreError::Embedded(e)) = &result
                && matches!(**e, redb::Error::Io(_) | redb::Error::PreviousIo)
            {
                let mut open = slot.lock().unwrap_or_else(PoisonError::into_inner);
                if open.as_ref().is_some_and(|current| Arc::ptr_eq(current, &db)) {
                    tracing::warn!(path = %path.display(), error = %e, "embedded store closed after an I/O error; it is opened again at the next operation");
                    *open = None;
                }
            }
            result
        })
        .await
        .map_err(|e| {
            if e.is_cancelled() {
                StoreError::Stopping
            } else {
                StoreError::Task(e.to_string())
            }
        })?
    }

    /// Applies a batch in one transaction.
    pub(super) async fn apply(&self, batch: Vec<Write>) -> Result<(), StoreError> {
        self.blocking(move |db| apply(db, &batch, unix_now_ms()))
            .await
    }

    /// The value of `key` unless missing or expired.
    pub(super) async fn get(&self, key: String, max: usize) -> Result<Option<Vec<u8>>, StoreError> {
        self.blocking(move |db| get(db, &key, max, unix_now_ms()))
            .await
    }

    /// Up to `limit` live entries under `prefix`.
    pub(super) async fn scan(
        &self,
        prefix: String,
        limit: usize,
        max: usize,
        progress: ScanProgress,
    ) -> Result<Scan, StoreError> {
        self.blocking(move |db| scan(db, &prefix, limit, max, unix_now_ms(), &progress))
            .await
    }

    /// Adds one to the counter `key` and returns its new value; a new (or expired) counter
    /// lives `ttl`, and so does every one with [`CounterLife::Renewed`].
    pub(super) async fn incr(
        &self,
        key: String,
        ttl: Duration,
        life: CounterLife,
    ) -> Result<u64, StoreError> {
        self.blocking(move |db| incr(db, &key, ttl, life, unix_now_ms()))
            .await
    }

    /// Deletes expired entries (at most [`PURGE_BATCH`]).
    pub(super) async fn purge(&self) -> Result<usize, StoreError> {
        self.blocking(move |db| purge(db, unix_now_ms())).await
    }
}

/// Writes `batch` at `now` in one transaction.
fn apply(db: &Database, batch: &[Write], now: u64) -> Result<(), StoreError> {
    let tx = db.begin_write().map_err(db_error)?;
    {
        let mut table = tx.open_table(ENTRIES).map_err(db_error)?;
        for write in batch {
            match write {
                Write::Put { key, value, ttl } => {
                    let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
                    let mut stored = Vec::with_capacity(EXPIRY + value.len());
                    stored.extend_from_slice(&now.saturating_add(ttl_ms).to_be_bytes());
                    stored.extend_from_slice(value);
                    table
                        .insert(key.as_str(), stored.as_slice())
                        .map_err(db_error)?;
                }
                Write::Delete { key } => {
                    table.remove(key.as_str()).map_err(db_error)?;
                }
            }
        }
    }
    tx.commit().map_err(db_error)
}

/// Adds one to the counter `key` at `now` in one transaction: the count is 8 bytes, big-endian,
/// behind the expiry; a missing or expired counter starts at 1 and lives `ttl`, a live one keeps
/// its expiry (a window, not renewed) unless `life` renews it. A stored value that is not a
/// counter is an error.
fn incr(
    db: &Database,
    key: &str,
    ttl: Duration,
    life: CounterLife,
    now: u64,
) -> Result<u64, StoreError> {
    let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
    let tx = db.begin_write().map_err(db_error)?;
    let n = {
        let mut table = tx.open_table(ENTRIES).map_err(db_error)?;
        let current = match table.get(key).map_err(db_error)? {
            Some(stored) => Some(split(key, stored.value(), COUNTER)?),
            None => None,
        };
        let (expires, n) = match current {
            Some((expires, value)) if expires > now => {
                let bytes: [u8; COUNTER] =
                    value
                        .as_slice()
                        .try_into()
                        .map_err(|_| StoreError::Decode {
                            key: key.to_string(),
                            reason: format!("{} bytes, not a counter", value.len()),
                        })?;
                let expires = match life {
                    CounterLife::Window => expires,
                    CounterLife::Renewed => now.saturating_add(ttl_ms),
                };
                (expires, u64::from_be_bytes(bytes).saturating_add(1))
            }
            _ => (now.saturating_add(ttl_ms), 1),
        };
        let mut stored = [0u8; EXPIRY + COUNTER];
        stored[..EXPIRY].copy_from_slice(&expires.to_be_bytes());
        stored[EXPIRY..].copy_from_slice(&n.to_be_bytes());
        table.insert(key, stored.as_slice()).map_err(db_error)?;
        n
    };
    tx.commit().map_err(db_error)?;
    Ok(n)
}

/// Splits a stored value into its expiry and the value (hostile: a file may be damaged).
fn split(key: &str, stored: &[u8], max: usize) -> Result<(u64, Vec<u8>), StoreError> {
    let (Some(expiry), Some(value)) = (stored.get(..EXPIRY), stored.get(EXPIRY..)) else {
        return Err(StoreError::Decode {
            key: key.to_string(),
            reason: format!("{} bytes, shorter than its expiry", stored.len()),
        });
    };
    let mut at = [0u8; EXPIRY];
    at.copy_from_slice(expiry);
    if value.len() > max {
        return Err(StoreError::TooLarge {
            key: key.to_string(),
            len: value.len(),
            max,
        });
    }
    Ok((u64::from_be_bytes(at), value.to_vec()))
}

/// The live value of `key` at `now`.
fn get(db: &Database, key: &str, max: usize, now: u64) -> Result<Option<Vec<u8>>, StoreError> {
    let tx = db.begin_read().map_err(db_error)?;
    let table = match tx.open_table(ENTRIES) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
        Err(e) => return Err(db_error(e)),
    };
    let Some(stored) = table.get(key).map_err(db_error)? else {
        return Ok(None);
    };
    let (expires, value) = split(key, stored.value(), max)?;
    Ok((expires > now).then_some(value))
}

/// Up to `limit` live entries under `prefix` at `now`; damaged ones are skipped (counted, the
/// first logged).
fn scan(
    db: &Database,
    prefix: &str,
    limit: usize,
    max: usize,
    now: u64,
    progress: &ScanProgress,
) -> Result<Scan, StoreError> {
    let tx = db.begin_read().map_err(db_error)?;
    let table = match tx.open_table(ENTRIES) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok((Vec::new(), 0)),
        Err(e) => return Err(db_error(e)),
    };
    let mut out = Vec::new();
    let mut skipped = 0;
    for (read, entry) in table.range(prefix..).map_err(db_error)?.enumerate() {
        if read % SCAN_ROUND == 0 {
            progress.round_done();
        }
        let (key, stored) = entry.map_err(db_error)?;
        let key = key.value();
        if !key.starts_with(prefix) || out.len() >= limit {
            break;
        }
        match split(key, stored.value(), max) {
            Ok((expires, value)) if expires > now => out.push(Scanned {
                key: key.to_string(),
                value,
                left: Some(Duration::from_millis(expires - now)),
            }),
            Ok(_) => {}
            Err(e) => {
                if skipped == 0 {
                    tracing::warn!(error = %e, "store: damaged entry skipped (the first of this scan)");
                }
                skipped += 1;
            }
        }
    }
    Ok((out, skipped))
}

/// Deletes up to [`PURGE_BATCH`] entries expired at `now` (and damaged ones); how many.
fn purge(db: &Database, now: u64) -> Result<usize, StoreError> {
    let tx = db.begin_write().map_err(db_error)?;
    let removed = {
        let mut table = tx.open_table(ENTRIES).map_err(db_error)?;
        let mut expired = Vec::new();
        for entry in table.iter().map_err(db_error)? {
            let (key, stored) = entry.map_err(db_error)?;
            let dead = match split(key.value(), stored.value(), usize::MAX) {
                Ok((expires, _)) => expires <= now,
                Err(_) => true,
            };
            if dead {
                expired.push(key.value().to_string());
                if expired.len() >= PURGE_BATCH {
                    break;
                }
            }
        }
        for key in &expired {
            table.remove(key.as_str()).map_err(db_error)?;
        }
        expired.len()
    };
    tx.commit().map_err(db_error)?;
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn temp_db(tag: &str) -> (std::path::PathBuf, Database) {
        let dir = std::env::temp_dir().join(format!("sgw-store-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let db = Database::create(dir.join("state.redb")).expect("create");
        (dir, db)
    }

    fn put(key: &str, value: &[u8], ttl_ms: u64) -> Write {
        Write::Put {
            key: key.into(),
            value: value.to_vec(),
            ttl: Duration::from_millis(ttl_ms),
        }
    }

    #[test]
    fn entries_expire_at_their_ttl_and_are_purged() {
        let (dir, db) = temp_db("ttl");
        let t0 = 1_000_000;
        apply(
            &db,
            &[put("pass/a", b"1", 100), put("pass/b", b"2", 1000)],
            t0,
        )
        .expect("apply");
        assert_eq!(
            get(&db, "pass/a", 64, t0 + 99).expect("get"),
            Some(b"1".to_vec())
        );
        assert_eq!(
            get(&db, "pass/a", 64, t0 + 100).expect("get"),
            None,
            "expired"
        );
        let (live, _) =
            scan(&db, "pass/", 10, 64, t0 + 500, &ScanProgress::default()).expect("scan");
        // What is left of its life, by the same clock: 1000 ms from t0, read at t0 + 500.
        assert_eq!(
            live,
            vec![Scanned {
                key: "pass/b".to_string(),
                value: b"2".to_vec(),
                left: Some(Duration::from_millis(500))
            }]
        );
        assert_eq!(purge(&db, t0 + 500).expect("purge"), 1);
        assert_eq!(purge(&db, t0 + 500).expect("purge"), 0);
        assert_eq!(
            get(&db, "pass/b", 64, t0 + 999).expect("get"),
            Some(b"2".to_vec())
        );
        apply(
            &db,
            &[Write::Delete {
                key: "pass/b".into(),
            }],
            t0,
        )
        .expect("delete");
        assert_eq!(get(&db, "pass/b", 64, t0).expect("get"), None);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn oversized_and_damaged_values_are_errors_not_panics() {
        let (dir, db) = temp_db("hostile");
        let t0 = 1_000;
        apply(&db, &[put("pass/big", &[b'x'; 100], 1000)], t0).expect("apply");
        match get(&db, "pass/big", 99, t0) {
            Err(StoreError::TooLarge {
                len: 100, max: 99, ..
            }) => {}
            other => panic!("expected TooLarge, got {other:?}"),
        }
        // A value shorter than its expiry header, written behind the engine's back.
        let tx = db.begin_write().expect("tx");
        {
            let mut t = tx.open_table(ENTRIES).expect("table");
            t.insert("pass/short", b"abc".as_slice()).expect("insert");
        }
        tx.commit().expect("commit");
        match get(&db, "pass/short", 99, t0) {
            Err(StoreError::Decode { key, .. }) => assert_eq!(key, "pass/short"),
            other => panic!("expected Decode, got {other:?}"),
        }
        // A scan skips it, a purge removes it.
        let (live, skipped) =
            scan(&db, "pass/", 10, 1000, t0, &ScanProgress::default()).expect("scan");
        assert_eq!((live.len(), skipped), (1, 1));
        assert_eq!(purge(&db, t0).expect("purge"), 1);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_scan_stays_in_its_space_and_limit() {
        let (dir, db) = temp_db("scan");
        let writes: Vec<Write> = (0..5)
            .map(|i| put(&format!("count/{i}"), b"v", 1000))
            .chain([put("outcome/x", b"v", 1000), put("ban/y", b"v", 1000)])
            .collect();
        apply(&db, &writes, 0).expect("apply");
        assert_eq!(
            scan(&db, "count/", 3, 64, 1, &ScanProgress::default())
                .expect("scan")
                .0
                .len(),
            3
        );
        assert_eq!(
            scan(&db, "count/", 100, 64, 1, &ScanProgress::default())
                .expect("scan")
                .0
                .len(),
            5
        );
        assert_eq!(
            scan(&db, "pass/", 100, 64, 1, &ScanProgress::default())
                .expect("scan")
                .0
                .len(),
            0
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    /// A valid file of some size, written and closed: (its directory, its path).
    fn written_file(tag: &str) -> (std::path::PathBuf, std::path::PathBuf) {
        let (dir, db) = temp_db(tag);
        let writes: Vec<Write> = (0..20_000)
            .map(|i| {
                put(
                    &format!("ban/198.18.{}.{}", i / 256, i % 256),
                    &[b'v'; 64],
                    60_000,
                )
            })
            .collect();
        apply(&db, &writes, 0).expect("apply");
        drop(db);
        let path = dir.join("state.redb");
        (dir, path)
    }

    /// The open of a damaged file is an error naming the file, never a panic (redb asserts on
    /// damaged headers).
    fn assert_damaged(path: &Path) {
        match Embedded::open_file(path, 1 << 20) {
            Err(e @ StoreError::Damaged { .. }) => {
                let text = e.to_string();
                assert!(text.contains(&path.display().to_string()), "{text}");
                assert!(text.contains("damaged"), "{text}");
            }
            Err(other) => panic!("expected Damaged, got {other:?}"),
            Ok(_) => panic!("a damaged file opened"),
        }
    }

    #[test]
    fn a_truncated_file_is_an_error_not_a_panic() {
        let (dir, path) = written_file("truncated");
        let len = std::fs::metadata(&path).expect("metadata").len();
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .expect("open");
        file.set_len(len / 3).expect("truncate");
        drop(file);
        assert_damaged(&path);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_file_with_damaged_regions_is_an_error_not_a_panic() {
        use std::io::{Seek, SeekFrom, Write as _};
        let (dir, path) = written_file("regions");
        let len = std::fs::metadata(&path).expect("metadata").len();
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .expect("open");
        // 64 pseudo-random bytes every 8 KiB from 4096 (what a torn write might leave).
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut offset = 4096;
        while offset < len {
            let junk: Vec<u8> = (0..64)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x.to_be_bytes()[0]
                })
                .collect();
            file.seek(SeekFrom::Start(offset)).expect("seek");
            file.write_all(&junk).expect("write");
            offset += 8192;
        }
        drop(file);
        assert_damaged(&path);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_second_daemon_on_the_same_file_is_refused() {
        let dir = std::env::temp_dir().join(format!("sgw-store-{}-lock", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let cfg = StoreConfig {
            path: dir.join("sub/state.redb"),
            ..StoreConfig::default()
        };
        let first = Embedded::open(&cfg).expect("first");
        assert!(Embedded::open(&cfg).is_err(), "the file is locked");
        drop(first);
        Embedded::open(&cfg).expect("reopened after the first closed");
        let _ = std::fs::remove_dir_all(dir);
    }

    /// A small tmpfs mounted for one test (root only), unmounted and removed on drop.
    struct SmallDisk(std::path::PathBuf);

    impl SmallDisk {
        fn mount(tag: &str, size: &str) -> Self {
            let dir = std::env::temp_dir().join(format!("sgw-disk-{}-{tag}", std::process::id()));
            std::fs::create_dir_all(&dir).expect("dir");
            let status = std::process::Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
                .arg(&dir)
                .status()
                .expect("mount");
            assert!(status.success(), "mount a tmpfs (root needed)");
            Self(dir)
        }
    }

    impl Drop for SmallDisk {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[tokio::test]
    async fn a_store_that_filled_its_disk_writes_again_once_there_is_room() {
        // redb refuses every operation after an I/O error ("close and re-open the database"):
        // a full disk, once freed, must not leave the store down until a restart.
        let disk = SmallDisk::mount("full", "8m");
        let store = Embedded::open_file(&disk.0.join("state.redb"), 1 << 20).expect("open");
        let value = vec![b'v'; 4096];
        let batch = |from: usize| -> Vec<Write> {
            (from..from + 400)
                .map(|i| put(&format!("pass/{i}"), &value, 60_000))
                .collect()
        };
        store.apply(batch(0)).await.expect("room at first");
        // Fill the disk.
        let filler = disk.0.join("filler");
        {
            use std::io::Write as _;
            let mut f = std::fs::File::create(&filler).expect("filler");
            let chunk = vec![0u8; 64 * 1024];
            while f.write_all(&chunk).is_ok() {}
        }
        let full = store.apply(batch(1000)).await;
        assert!(full.is_err(), "a full disk refuses the batch");
        std::fs::remove_file(&filler).expect("free the disk");
        store
            .apply(batch(2000))
            .await
            .expect("writes again once the disk has room");
        assert_eq!(
            store.get("pass/2000".into(), 8192).await.expect("get"),
            Some(value.clone())
        );
        assert_eq!(
            store.get("pass/0".into(), 8192).await.expect("get"),
            Some(value),
            "what was written before stays"
        );
    }
}

//! The service's durable memory: one append-only log of every event about every study (accepted,
//! rejected, finding, critical finding, summary and its revisions), each with a service-wide sequence
//! number and a per-study one. Findings must outlive the stream that produced them and the process that
//! scored them: a viewer that connects later, or after a restart, replays them from here.
//!
//! The log is a small trait so the storage can change without touching its users: today an embedded
//! SQLite database in the data directory (no server to install); for several replicas, a stream on a
//! distributed log (NATS JetStream: one subject per study, the stream sequence as `sequence`) fits the
//! same five calls. Events are stored in their wire form (`pb::StudyEvent`, protobuf-encoded), so what
//! is replayed is byte for byte what was sent live. Beside the events, the `studies` table keeps one
//! row per study (counts, latest summary), updated in the same transaction, for listings. Overlay PNGs
//! of positive slices are appended to one pack per study beside the database, which keeps only where
//! each is ([`super::overlay_files`]): they are derived pictures, most of the bytes, and no part of
//! the event stream.
//!
//! Durability: WAL journal with `synchronous = NORMAL`: a committed event survives a crash of the
//! process; a power loss may lose the last transactions (a PACS re-sends what was not acknowledged).

use std::{
    path::{Path, PathBuf},
    sync::Mutex,
    time::{SystemTime, UNIX_EPOCH},
};

use prost::Message;
use rusqlite::{params, Connection, OptionalExtension};

use super::overlay_files::OverlayFiles;
use crate::proto::v1 as pb;

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("cannot open the event log {path}: {source}")]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("cannot create the data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("event log {op} failed: {source}")]
    Sqlite {
        op: &'static str,
        source: rusqlite::Error,
    },
    #[error("event log entry {sequence} cannot be decoded: {source}")]
    Corrupt {
        sequence: u64,
        source: prost::DecodeError,
    },
    #[error("cannot read the overlays under {path}: {source}")]
    Overlay {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the event log is closed")]
    Closed,
}

/// A PNG of one slice with its finding drawn, kept beside its study.
#[derive(Debug, Clone)]
pub struct Overlay {
    pub study: String,
    pub sop: String,
    pub frame: u32,
    pub png: Vec<u8>,
}

/// What the log knows of one study, for listings.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StudyRow {
    pub study_instance_uid: String,
    pub modality: String,
    /// First and last event logged (microseconds since the Unix epoch).
    pub first_unix_us: i64,
    pub last_unix_us: i64,
    /// A summary was issued and nothing arrived after it.
    pub complete: bool,
    /// Latest summary revision (0: none yet).
    pub revision: u32,
    pub last_sequence: u64,
    pub events: u64,
    pub slices_scored: u32,
    pub instances: u32,
    /// A critical finding was logged.
    pub critical: bool,
    /// The latest summary.
    pub summary: Option<pb::StudySummary>,
}

/// The durable, append-only event log (see the module docs).
pub trait EventLog: Send + Sync + 'static {
    /// Appends `events` in order (one transaction), setting their `sequence` and `logged_unix_us` (the
    /// caller's values are replaced). `study_sequence` is the caller's. On error nothing was appended.
    /// `overlays` are stored with them, each on its own: one that cannot be stored is logged and lost,
    /// never the events.
    fn append(&self, events: &mut [pb::StudyEvent], overlays: &[Overlay]) -> Result<(), LogError>;
    /// The highest sequence number logged (0: empty).
    fn last_sequence(&self) -> Result<u64, LogError>;
    /// Entries with `from <= sequence <= to`, in order, at most `limit`; `studies` empty: all studies.
    fn read(
        &self,
        from: u64,
        to: u64,
        studies: &[String],
        limit: usize,
    ) -> Result<Vec<pb::StudyEvent>, LogError>;
    /// One study's entries, in order.
    fn read_study(&self, study: &str) -> Result<Vec<pb::StudyEvent>, LogError>;
    /// Known studies, most recently active first.
    fn studies(&self, limit: usize) -> Result<Vec<StudyRow>, LogError>;
    fn study(&self, study: &str) -> Result<Option<StudyRow>, LogError>;
    /// Studies with events after their latest summary (or none yet): open when the process stopped.
    fn open_studies(&self) -> Result<Vec<String>, LogError>;
    /// The stored overlay PNG of one slice.
    fn overlay(&self, study: &str, sop: &str, frame: u32) -> Result<Option<Vec<u8>>, LogError>;
    /// Removes every study whose last event is older than `before_unix_us` (events, row, overlays);
    /// returns how many studies were removed.
    fn prune(&self, before_unix_us: i64) -> Result<u64, LogError>;
    /// A 16-byte secret kept with the log (created on first use): keys that must stay the same across
    /// restarts, such as the one behind stand-in UIDs.
    fn secret(&self, name: &str) -> Result<[u8; 16], LogError>;
}

pub(crate) fn now_unix_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// The short name of an event's kind, stored beside it so filters can be applied in SQL.
pub fn kind_name(event: &pb::StudyEvent) -> &'static str {
    use pb::study_event::Event as E;
    match &event.event {
        Some(E::Accepted(_)) => "accepted",
        Some(E::Rejected(_)) => "rejected",
        Some(E::Finding(_)) => "finding",
        Some(E::Critical(_)) => "critical",
        Some(E::Summary(_)) => "summary",
        None => "empty",
    }
}

/// The log in an SQLite database file.
pub struct SqliteLog {
    path: PathBuf,
    /// The overlay PNGs, one pack per study beside the database (`<file>.overlays/`); the
    /// `overlay_index` table says where each is.
    overlays: OverlayFiles,
    writer: Mutex<Connection>,
    /// Idle read connections (WAL: readers never wait for the writer).
    readers: Mutex<Vec<Connection>>,
}

impl std::fmt::Debug for SqliteLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteLog")
            .field("path", &self.path)
            .finish()
    }
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    study_uid TEXT NOT NULL,
    study_seq INTEGER NOT NULL,
    kind TEXT NOT NULL,
    logged_us INTEGER NOT NULL,
    body BLOB NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS events_by_study ON events(study_uid, study_seq);
CREATE TABLE IF NOT EXISTS studies (
    study_uid TEXT PRIMARY KEY,
    modality TEXT NOT NULL,
    first_us INTEGER NOT NULL,
    last_us INTEGER NOT NULL,
    complete INTEGER NOT NULL,
    revision INTEGER NOT NULL,
    last_seq INTEGER NOT NULL,
    events INTEGER NOT NULL,
    slices_scored INTEGER NOT NULL,
    instances INTEGER NOT NULL,
    critical INTEGER NOT NULL,
    summary BLOB
);
CREATE INDEX IF NOT EXISTS studies_by_activity ON studies(last_us);
CREATE TABLE IF NOT EXISTS overlays (
    study_uid TEXT NOT NULL,
    sop_uid TEXT NOT NULL,
    frame INTEGER NOT NULL,
    png BLOB NOT NULL,
    PRIMARY KEY (study_uid, sop_uid, frame)
);
CREATE TABLE IF NOT EXISTS overlay_index (
    study_uid TEXT NOT NULL,
    sop_uid TEXT NOT NULL,
    frame INTEGER NOT NULL,
    offset INTEGER NOT NULL,
    length INTEGER NOT NULL,
    PRIMARY KEY (study_uid, sop_uid, frame)
);
CREATE TABLE IF NOT EXISTS secrets (name TEXT PRIMARY KEY, value BLOB NOT NULL);
";

fn sql(op: &'static str) -> impl Fn(rusqlite::Error) -> LogError {
    move |source| LogError::Sqlite { op, source }
}

impl SqliteLog {
    /// Opens (creating when needed) the log at `path`; its directory is created too.
    pub fn open(path: &Path) -> Result<Self, LogError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|source| LogError::DataDir {
                path: dir.to_path_buf(),
                source,
            })?;
        }
        let writer = Self::connect(path)?;
        writer
            .execute_batch(SCHEMA)
            .map_err(|source| LogError::Open {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(Self {
            path: path.to_path_buf(),
            overlays: OverlayFiles::new(path.with_extension("overlays")),
            writer: Mutex::new(writer),
            readers: Mutex::new(Vec::new()),
        })
    }

    /// The log file of a data directory.
    pub fn in_data_dir(dir: &Path) -> Result<Self, LogError> {
        Self::open(&dir.join("events.sqlite"))
    }

    fn connect(path: &Path) -> Result<Connection, LogError> {
        let open = |source| LogError::Open {
            path: path.to_path_buf(),
            source,
        };
        let conn = Connection::open(path).map_err(open)?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA busy_timeout = 5000;",
        )
        .map_err(open)?;
        Ok(conn)
    }

    /// Runs `f` on an idle read connection (opening one when none is idle).
    fn reading<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, LogError>,
    ) -> Result<T, LogError> {
        let idle = self.readers.lock().map_err(|_| LogError::Closed)?.pop();
        let conn = match idle {
            Some(c) => c,
            None => Self::connect(&self.path)?,
        };
        let result = f(&conn);
        if let Ok(mut idle) = self.readers.lock() {
            if idle.len() < 8 {
                idle.push(conn);
            }
        }
        result
    }
}

fn decode_body(sequence: u64, body: &[u8]) -> Result<pb::StudyEvent, LogError> {
    pb::StudyEvent::decode(body).map_err(|source| LogError::Corrupt { sequence, source })
}

fn row_events(rows: &mut rusqlite::Rows<'_>) -> Result<Vec<pb::StudyEvent>, LogError> {
    let mut out = Vec::new();
    while let Some(row) = rows.next().map_err(sql("read"))? {
        let seq: i64 = row.get(0).map_err(sql("read"))?;
        let body: Vec<u8> = row.get(1).map_err(sql("read"))?;
        out.push(decode_body(seq as u64, &body)?);
    }
    Ok(out)
}

fn study_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<StudyRow> {
    let summary: Option<Vec<u8>> = row.get(11)?;
    Ok(StudyRow {
        study_instance_uid: row.get(0)?,
        modality: row.get(1)?,
        first_unix_us: row.get(2)?,
        last_unix_us: row.get(3)?,
        complete: row.get::<_, i64>(4)? != 0,
        revision: row.get::<_, i64>(5)? as u32,
        last_sequence: row.get::<_, i64>(6)? as u64,
        events: row.get::<_, i64>(7)? as u64,
        slices_scored: row.get::<_, i64>(8)? as u32,
        instances: row.get::<_, i64>(9)? as u32,
        critical: row.get::<_, i64>(10)? != 0,
        summary: summary.and_then(|b| pb::StudySummary::decode(b.as_slice()).ok()),
    })
}

/// The highest sequence ever handed out: AUTOINCREMENT keeps it in `sqlite_sequence`, so it never goes
/// down, not even when retention removed every event (a reader's cursor stays valid).
const HIGH_WATER: &str =
    "SELECT COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'events'), \
     (SELECT MAX(seq) FROM events), 0)";

const STUDY_COLUMNS: &str =
    "study_uid, modality, first_us, last_us, complete, revision, last_seq, \
     events, slices_scored, instances, critical, summary";

impl EventLog for SqliteLog {
    fn append(&self, events: &mut [pb::StudyEvent], overlays: &[Overlay]) -> Result<(), LogError> {
        use pb::study_event::Event as E;
        let mut conn = self.writer.lock().map_err(|_| LogError::Closed)?;
        // The pictures first, under the writer's lock (one appender per pack): their index rows go into
        // the events' transaction, so a row never points at bytes that were not written. A picture that
        // cannot be written costs only itself.
        let stored: Vec<(&Overlay, u64)> = overlays
            .iter()
            .filter_map(|o| match self.overlays.append(&o.study, &o.png) {
                Ok(offset) => Some((o, offset)),
                Err(e) => {
                    tracing::warn!(frame = o.frame, "overlay not stored: {e}");
                    None
                }
            })
            .collect();
        let tx = conn.transaction().map_err(sql("begin"))?;
        {
            // cached like the inserts: statements parsed per append (this one, BEGIN, COMMIT) were 2.7 %
            // of the server's CPU under load (perf)
            let last: i64 = tx
                .prepare_cached(HIGH_WATER)
                .and_then(|mut s| s.query_row([], |r| r.get(0)))
                .map_err(sql("append"))?;
            let mut insert = tx
                .prepare_cached(
                    "INSERT INTO events (seq, study_uid, study_seq, kind, logged_us, body) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )
                .map_err(sql("append"))?;
            let mut upsert = tx
                .prepare_cached(
                    "INSERT INTO studies (study_uid, modality, first_us, last_us, complete, revision, \
                     last_seq, events, slices_scored, instances, critical, summary) \
                     VALUES (?1, ?2, ?3, ?3, ?4, ?5, ?6, 1, ?7, ?8, ?9, ?10) \
                     ON CONFLICT(study_uid) DO UPDATE SET \
                       modality = CASE WHEN modality = '' THEN excluded.modality ELSE modality END, \
                       last_us = excluded.last_us, \
                       complete = excluded.complete, \
                       revision = MAX(revision, excluded.revision), \
                       last_seq = excluded.last_seq, \
                       events = events + 1, \
                       slices_scored = slices_scored + excluded.slices_scored, \
                       instances = instances + excluded.instances, \
                       critical = MAX(critical, excluded.critical), \
                       summary = COALESCE(excluded.summary, summary)",
                )
                .map_err(sql("append"))?;
            let now = now_unix_us();
            for (i, event) in events.iter_mut().enumerate() {
                event.sequence = last as u64 + 1 + i as u64;
                event.logged_unix_us = now;
                let body = event.encode_to_vec();
                insert
                    .execute(params![
                        event.sequence as i64,
                        event.study_instance_uid,
                        event.study_sequence as i64,
                        kind_name(event),
                        now,
                        body
                    ])
                    .map_err(sql("append"))?;
                let (complete, revision, scored, instances, critical, summary) = match &event.event
                {
                    Some(E::Summary(s)) => (1, s.revision, 0, 0, 0, Some(s.encode_to_vec())),
                    Some(E::Finding(_)) => (0, 0, 1, 0, 0, None),
                    Some(E::Accepted(a)) if !a.duplicate => (0, 0, 0, 1, 0, None),
                    Some(E::Critical(_)) => (0, 0, 0, 0, 1, None),
                    _ => (0, 0, 0, 0, 0, None),
                };
                upsert
                    .execute(params![
                        event.study_instance_uid,
                        event.modality,
                        now,
                        complete,
                        revision,
                        event.sequence as i64,
                        scored,
                        instances,
                        critical,
                        summary
                    ])
                    .map_err(sql("append"))?;
            }
            let mut index = tx
                .prepare_cached(
                    "INSERT OR REPLACE INTO overlay_index (study_uid, sop_uid, frame, offset, length) \
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                )
                .map_err(sql("append"))?;
            for (o, offset) in stored {
                index
                    .execute(params![
                        o.study,
                        o.sop,
                        o.frame,
                        offset as i64,
                        o.png.len() as i64
                    ])
                    .map_err(sql("append"))?;
            }
        }
        tx.commit().map_err(sql("commit"))?;
        Ok(())
    }

    fn last_sequence(&self) -> Result<u64, LogError> {
        self.reading(|c| {
            c.query_row(HIGH_WATER, [], |r| r.get::<_, i64>(0))
                .map(|v| v as u64)
                .map_err(sql("read"))
        })
    }

    fn read(
        &self,
        from: u64,
        to: u64,
        studies: &[String],
        limit: usize,
    ) -> Result<Vec<pb::StudyEvent>, LogError> {
        let (from, to, limit) = (
            from.min(i64::MAX as u64) as i64,
            to.min(i64::MAX as u64) as i64,
            limit.min(i64::MAX as usize) as i64,
        );
        self.reading(|c| {
            if studies.is_empty() {
                let mut stmt = c
                    .prepare_cached(
                        "SELECT seq, body FROM events WHERE seq >= ?1 AND seq <= ?2 \
                         ORDER BY seq LIMIT ?3",
                    )
                    .map_err(sql("read"))?;
                let mut rows = stmt.query(params![from, to, limit]).map_err(sql("read"))?;
                row_events(&mut rows)
            } else {
                // rarely more than a handful: one indexed range per study, merged in order
                let mut all = Vec::new();
                let mut stmt = c
                    .prepare_cached(
                        "SELECT seq, body FROM events WHERE study_uid = ?1 AND seq >= ?2 \
                         AND seq <= ?3 ORDER BY seq LIMIT ?4",
                    )
                    .map_err(sql("read"))?;
                for study in studies {
                    let mut rows = stmt
                        .query(params![study, from, to, limit])
                        .map_err(sql("read"))?;
                    all.extend(row_events(&mut rows)?);
                }
                all.sort_by_key(|e| e.sequence);
                all.truncate(limit as usize);
                Ok(all)
            }
        })
    }

    fn read_study(&self, study: &str) -> Result<Vec<pb::StudyEvent>, LogError> {
        self.reading(|c| {
            let mut stmt = c
                .prepare_cached("SELECT seq, body FROM events WHERE study_uid = ?1 ORDER BY seq")
                .map_err(sql("read"))?;
            let mut rows = stmt.query(params![study]).map_err(sql("read"))?;
            row_events(&mut rows)
        })
    }

    fn studies(&self, limit: usize) -> Result<Vec<StudyRow>, LogError> {
        self.reading(|c| {
            let mut stmt = c
                .prepare_cached(&format!(
                    "SELECT {STUDY_COLUMNS} FROM studies ORDER BY last_us DESC, last_seq DESC LIMIT ?1"
                ))
                .map_err(sql("read"))?;
            let rows = stmt
                .query_map(params![limit.min(i64::MAX as usize) as i64], study_row)
                .map_err(sql("read"))?;
            rows.collect::<Result<Vec<_>, _>>().map_err(sql("read"))
        })
    }

    fn study(&self, study: &str) -> Result<Option<StudyRow>, LogError> {
        self.reading(|c| {
            c.query_row(
                &format!("SELECT {STUDY_COLUMNS} FROM studies WHERE study_uid = ?1"),
                params![study],
                study_row,
            )
            .optional()
            .map_err(sql("read"))
        })
    }

    fn open_studies(&self) -> Result<Vec<String>, LogError> {
        self.reading(|c| {
            let mut stmt = c
                .prepare_cached("SELECT study_uid FROM studies WHERE complete = 0 ORDER BY last_us")
                .map_err(sql("read"))?;
            let rows = stmt
                .query_map([], |r| r.get::<_, String>(0))
                .map_err(sql("read"))?;
            rows.collect::<Result<Vec<_>, _>>().map_err(sql("read"))
        })
    }

    fn overlay(&self, study: &str, sop: &str, frame: u32) -> Result<Option<Vec<u8>>, LogError> {
        let (at, legacy) = self.reading(|c| {
            let at = c
                .prepare_cached(
                    "SELECT offset, length FROM overlay_index \
                     WHERE study_uid = ?1 AND sop_uid = ?2 AND frame = ?3",
                )
                .and_then(|mut q| {
                    q.query_row(params![study, sop, frame], |r| {
                        Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?))
                    })
                    .optional()
                })
                .map_err(sql("read"))?;
            if at.is_some() {
                return Ok((at, None));
            }
            // Data directories written before overlays moved out of the database keep theirs in it.
            let legacy = c
                .query_row(
                    "SELECT png FROM overlays WHERE study_uid = ?1 AND sop_uid = ?2 AND frame = ?3",
                    params![study, sop, frame],
                    |r| r.get::<_, Vec<u8>>(0),
                )
                .optional()
                .map_err(sql("read"))?;
            Ok((None, legacy))
        })?;
        match at {
            Some((offset, length)) => self
                .overlays
                .read(study, offset.max(0) as u64, length.max(0) as u64)
                .map_err(|source| LogError::Overlay {
                    path: self.overlays.root().to_path_buf(),
                    source,
                }),
            None => Ok(legacy),
        }
    }

    fn prune(&self, before_unix_us: i64) -> Result<u64, LogError> {
        let mut conn = self.writer.lock().map_err(|_| LogError::Closed)?;
        let tx = conn.transaction().map_err(sql("begin"))?;
        let old: Vec<String> = {
            let mut stmt = tx
                .prepare("SELECT study_uid FROM studies WHERE last_us < ?1")
                .map_err(sql("prune"))?;
            let rows = stmt
                .query_map(params![before_unix_us], |r| r.get::<_, String>(0))
                .map_err(sql("prune"))?;
            rows.collect::<Result<Vec<_>, _>>().map_err(sql("prune"))?
        };
        for study in &old {
            for table in ["events", "overlays", "overlay_index", "studies"] {
                tx.execute(
                    &format!("DELETE FROM {table} WHERE study_uid = ?1"),
                    params![study],
                )
                .map_err(sql("prune"))?;
            }
        }
        tx.commit().map_err(sql("commit"))?;
        drop(conn);
        for study in &old {
            if let Err(e) = self.overlays.remove_study(study) {
                tracing::warn!("overlays of a pruned study not removed: {e}");
            }
        }
        Ok(old.len() as u64)
    }

    fn secret(&self, name: &str) -> Result<[u8; 16], LogError> {
        let conn = self.writer.lock().map_err(|_| LogError::Closed)?;
        let existing: Option<Vec<u8>> = conn
            .query_row(
                "SELECT value FROM secrets WHERE name = ?1",
                params![name],
                |r| r.get(0),
            )
            .optional()
            .map_err(sql("secret"))?;
        if let Some(v) = existing.and_then(|v| <[u8; 16]>::try_from(v.as_slice()).ok()) {
            return Ok(v);
        }
        let fresh = crate::decode::uid::random_key();
        conn.execute(
            "INSERT OR REPLACE INTO secrets (name, value) VALUES (?1, ?2)",
            params![name, fresh.to_vec()],
        )
        .map_err(sql("secret"))?;
        Ok(fresh)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(study: &str, study_seq: u64, ev: pb::study_event::Event) -> pb::StudyEvent {
        pb::StudyEvent {
            study_instance_uid: study.into(),
            study_sequence: study_seq,
            modality: "CT".into(),
            event: Some(ev),
            ..Default::default()
        }
    }

    fn finding(sop: &str) -> pb::study_event::Event {
        pb::study_event::Event::Finding(pb::SliceFinding {
            slice: Some(pb::SliceRef {
                sop_instance_uid: sop.into(),
                ..Default::default()
            }),
            ..Default::default()
        })
    }

    #[test]
    fn entries_survive_reopening_in_order_with_their_study_rows() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("log.sqlite");
        {
            let log = SqliteLog::open(&path).expect("open");
            let mut stored = vec![
                event(
                    "1.2.3",
                    1,
                    pb::study_event::Event::Accepted(pb::InstanceAccepted {
                        frames: 1,
                        ..Default::default()
                    }),
                ),
                event("1.2.4", 1, finding("a")),
                event("1.2.3", 2, finding("b")),
            ];
            log.append(
                &mut stored,
                &[Overlay {
                    study: "1.2.3".into(),
                    sop: "b".into(),
                    frame: 0,
                    png: vec![1, 2, 3],
                }],
            )
            .expect("append");
            assert_eq!(
                stored.iter().map(|e| e.sequence).collect::<Vec<_>>(),
                [1, 2, 3]
            );
            log.append(
                &mut [event(
                    "1.2.3",
                    3,
                    pb::study_event::Event::Summary(pb::StudySummary {
                        revision: 1,
                        ..Default::default()
                    }),
                )],
                &[],
            )
            .expect("append");
        }
        let log = SqliteLog::open(&path).expect("reopen");
        assert_eq!(log.last_sequence().expect("last"), 4);
        let study = log.read_study("1.2.3").expect("read");
        assert_eq!(
            study.iter().map(|e| e.study_sequence).collect::<Vec<_>>(),
            [1, 2, 3]
        );
        let row = log.study("1.2.3").expect("row").expect("known");
        assert!(row.complete);
        assert_eq!(
            (row.revision, row.events, row.instances, row.slices_scored),
            (1, 3, 1, 1)
        );
        assert_eq!(log.open_studies().expect("open"), ["1.2.4"]);
        let some = log.read(2, 3, &[], 10).expect("range");
        assert_eq!(some.iter().map(|e| e.sequence).collect::<Vec<_>>(), [2, 3]);
        let one = log.read(1, u64::MAX, &["1.2.4".into()], 10).expect("one");
        assert_eq!(one.len(), 1);
        assert_eq!(
            log.overlay("1.2.3", "b", 0).expect("png"),
            Some(vec![1, 2, 3])
        );
        assert_eq!(log.overlay("1.2.3", "b", 1).expect("png"), None);
        // in the study's pack beside the database, not in a row of it
        assert!(path.with_extension("overlays").join("1.2.3.pack").is_file());
        let rows: i64 = rusqlite::Connection::open(&path)
            .expect("open")
            .query_row("SELECT COUNT(*) FROM overlays", [], |r| r.get(0))
            .expect("count");
        assert_eq!(rows, 0);
        let key = log.secret("uid").expect("secret");
        assert_eq!(log.secret("uid").expect("again"), key);
        assert_eq!(log.prune(i64::MAX).expect("prune"), 2);
        assert_eq!(
            log.overlay("1.2.3", "b", 0).expect("png"),
            None,
            "pruned with its study"
        );
        assert!(log.read(1, u64::MAX, &[], 10).expect("empty").is_empty());
        // sequence numbers never go back, even with the log emptied by retention
        assert_eq!(log.last_sequence().expect("last"), 4);
        let mut next = [event("1.2.5", 1, finding("c"))];
        log.append(&mut next, &[]).expect("append");
        assert_eq!(next[0].sequence, 5);
    }

    /// Data directories from before overlays moved to files keep serving theirs from the table.
    #[test]
    fn overlays_stored_in_the_table_by_earlier_versions_are_still_served() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("log.sqlite");
        let log = SqliteLog::open(&path).expect("open");
        rusqlite::Connection::open(&path)
            .expect("open")
            .execute(
                "INSERT INTO overlays (study_uid, sop_uid, frame, png) VALUES ('1.2', '1.2.3', 0, x'0102')",
                [],
            )
            .expect("legacy row");
        assert_eq!(
            log.overlay("1.2", "1.2.3", 0).expect("png"),
            Some(vec![1, 2])
        );
        assert_eq!(log.overlay("1.2", "1.2.3", 1).expect("png"), None);
    }

    /// A picture that cannot be written costs only itself: the events are logged all the same.
    #[test]
    fn an_overlay_that_cannot_be_stored_never_costs_its_events() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("log.sqlite");
        // where the packs' folder should be, a file: no pack can be created
        std::fs::write(path.with_extension("overlays"), b"in the way").expect("write");
        let log = SqliteLog::open(&path).expect("open");
        let mut events = [event("1.2.3", 1, finding("b"))];
        let overlay = Overlay {
            study: "1.2.3".into(),
            sop: "b".into(),
            frame: 0,
            png: vec![1, 2, 3],
        };
        log.append(&mut events, &[overlay])
            .expect("the events are logged");
        assert_eq!(log.read_study("1.2.3").expect("read").len(), 1);
        assert_eq!(log.overlay("1.2.3", "b", 0).expect("read"), None);
    }
}

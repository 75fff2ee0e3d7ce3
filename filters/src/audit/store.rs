//! The audit log on disk: one SQLite file per node (WAL), records chained by hash,
//! signed checkpoints, retention that keeps the chain verifiable, and the forwarder's
//! progress.
//!
//! Tables: `record_rows` (one row per transaction of the writer and config, up to 128
//! records, keyed by its last record's `seq`: the node and the config in columns, the
//! records as one JSON array of arrays), `batches` (the same rows before they said the node
//! and config once: every field in every record), `entries` (one row per record, the fields
//! as one JSON array) and `records` (one column per field): the rows logs held before each
//! newer table existed — never written to now, read and verified before it, oldest first,
//! deleted by retention; `checkpoints`
//! (`(node, seq, hash)` signed with the node's Ed25519 key every N records or T seconds)
//! and `meta` (`anchor_seq`/`anchor_hash`: the last record retention deleted, always a
//! checkpoint; `forwarded_seq`: the last record the collector acknowledged).

use std::path::Path;

use ed25519_dalek::{Signature, Signer as _, SigningKey, Verifier as _, VerifyingKey};
use edgegate_config::files;
use rusqlite::{params, Connection, OptionalExtension};

use super::record::{
    entry_hash, node_row_hash, row_hash, AsFields, Fields, Record, RowHead, Span, ENTRY_FIELDS, GENESIS, ROW_FIELDS,
    ROW_RECORDS,
};

/// SQLite's `synchronous` setting for the log: `Full` survives power loss with every
/// committed batch; `Normal` (WAL) may lose the last batches on power loss, never on a
/// process crash, and commits faster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    Full,
    Normal,
}

impl Durability {
    /// SQLite's `synchronous` value for it.
    fn synchronous(self) -> &'static str {
        match self {
            Durability::Full => "FULL",
            Durability::Normal => "NORMAL",
        }
    }
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS records (
    seq INTEGER PRIMARY KEY,
    time_ms INTEGER NOT NULL,
    node TEXT NOT NULL,
    request_id TEXT NOT NULL,
    route TEXT NOT NULL,
    client_ip TEXT NOT NULL,
    user TEXT NOT NULL,
    method TEXT NOT NULL,
    host TEXT NOT NULL,
    path TEXT NOT NULL,
    query TEXT NOT NULL,
    outcome TEXT NOT NULL,
    rule TEXT NOT NULL,
    config TEXT NOT NULL,
    status INTEGER NOT NULL,
    bytes INTEGER NOT NULL,
    duration_us INTEGER NOT NULL,
    upstream TEXT NOT NULL,
    cache TEXT NOT NULL,
    prev_hash BLOB NOT NULL,
    hash BLOB NOT NULL,
    trace_id TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS checkpoints (
    seq INTEGER PRIMARY KEY,
    node TEXT NOT NULL,
    hash BLOB NOT NULL,
    time_ms INTEGER NOT NULL,
    signature BLOB
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
";
/// The tables the writer adds: readers never create them, so reading a log from before
/// entries or rows of records leaves the file as it was. The older tables are closed: a
/// version that wrote them, started on this log (a rollback), would chain its records to
/// the last it knows of, not to the last row; its inserts fail instead (it reports the log
/// failing, and the policy refuses citizens until the node runs this version again).
const WRITER_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS entries (
    seq INTEGER PRIMARY KEY,
    time_ms INTEGER NOT NULL,
    record TEXT NOT NULL,
    hash BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS batches (
    last_seq INTEGER PRIMARY KEY,
    first_seq INTEGER NOT NULL,
    min_ms INTEGER NOT NULL,
    max_ms INTEGER NOT NULL,
    records TEXT NOT NULL,
    hash BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS record_rows (
    last_seq INTEGER PRIMARY KEY,
    first_seq INTEGER NOT NULL,
    min_ms INTEGER NOT NULL,
    max_ms INTEGER NOT NULL,
    node TEXT NOT NULL,
    config TEXT NOT NULL,
    records TEXT NOT NULL,
    hash BLOB NOT NULL
);
CREATE TRIGGER IF NOT EXISTS entries_closed BEFORE INSERT ON entries BEGIN
    SELECT RAISE(ABORT, 'this audit log is written as rows of records by a newer edgegate: \
an older one cannot continue it');
END;
CREATE TRIGGER IF NOT EXISTS batches_closed BEFORE INSERT ON batches BEGIN
    SELECT RAISE(ABORT, 'this audit log is written as rows with their node and config (the record_rows table) by a \
newer edgegate: an older one cannot continue it');
END;
";

/// `seq, time_ms` of every record whose table `has` (records always), as a `FROM` clause:
/// a row of records stands for its last record, at the latest time among its records.
fn seq_times(has: impl Fn(&str) -> bool) -> String {
    let mut from = String::from("(SELECT seq, time_ms FROM records");
    if has("entries") {
        from.push_str(" UNION ALL SELECT seq, time_ms FROM entries");
    }
    for rows in ["batches", "record_rows"] {
        if has(rows) {
            from.push_str(&format!(" UNION ALL SELECT last_seq AS seq, max_ms AS time_ms FROM {rows}"));
        }
    }
    from.push(')');
    from
}

fn has_table(conn: &Connection, name: &str) -> rusqlite::Result<bool> {
    conn.query_row("SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = ?1", [name], |r| {
        r.get::<_, i64>(0).map(|n| n > 0)
    })
}

/// A row of records a reader cannot expand, and why.
fn bad_row(span: &Span, e: String) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(
        4,
        rusqlite::types::Type::Text,
        format!("row of records {}..={}: {e}", span.first_seq, span.last_seq).into(),
    )
}

/// The records of a row of `batches` read as `first_seq, last_seq, min_ms, max_ms, records`.
fn records_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Vec<Record>> {
    let span = span_of(row)?;
    let text = row.get_ref(4)?.as_str().map_err(|e| bad_row(&span, format!("the records are not text: {e}")))?;
    Record::from_row(&span, text).map_err(|e| bad_row(&span, e))
}

/// The records of a row of `record_rows` read as [`NODE_ROW_COLUMNS`].
fn records_from_node_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Vec<Record>> {
    let span = span_of(row)?;
    let text =
        |i: usize, what: &str| row.get_ref(i)?.as_str().map_err(|e| bad_row(&span, format!("{what} not text: {e}")));
    let head = RowHead { span, node: text(5, "the node is")?, config: text(6, "the config is")? };
    Record::from_node_row(&head, text(4, "the records are")?).map_err(|e| bad_row(&span, e))
}

/// The span of a row of `batches` or `record_rows` read as `first_seq, last_seq, min_ms,
/// max_ms, …`.
fn span_of(row: &rusqlite::Row<'_>) -> rusqlite::Result<Span> {
    let n = |i: usize| row.get::<_, i64>(i).map(|v| v as u64);
    Ok(Span { first_seq: n(0)?, last_seq: n(1)?, min_ms: n(2)?, max_ms: n(3)? })
}

/// The tables that hold records, the newest format first, each with the column its rows
/// are keyed by (and a checkpoint's `seq` names): a row of records by its last record.
const RECORD_TABLES: [(&str, &str); 4] =
    [("record_rows", "last_seq"), ("batches", "last_seq"), ("entries", "seq"), ("records", "seq")];

/// The columns [`records_from_row`] and [`span_of`] read, in their order.
const ROW_COLUMNS: &str = "first_seq, last_seq, min_ms, max_ms, records";
/// The columns [`records_from_node_row`] reads, in their order.
const NODE_ROW_COLUMNS: &str = "first_seq, last_seq, min_ms, max_ms, records, node, config";

const COLUMNS: &str = "seq, time_ms, node, request_id, route, client_ip, user, method, host, path, query, \
                       outcome, rule, config, status, bytes, duration_us, upstream, cache, trace_id";
/// The same columns in a log written before records carried a trace id, for readers,
/// which never change the file they read.
const COLUMNS_WITHOUT_TRACE: &str = "seq, time_ms, node, request_id, route, client_ip, user, method, host, path, \
                                     query, outcome, rule, config, status, bytes, duration_us, upstream, cache, ''";

fn has_trace_column(conn: &Connection) -> rusqlite::Result<bool> {
    conn.query_row("SELECT COUNT(*) FROM pragma_table_info('records') WHERE name = 'trace_id'", [], |r| {
        r.get::<_, i64>(0).map(|n| n > 0)
    })
}

fn open_connection(path: &Path, durability: Durability) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    // A new log gets 16 KiB pages: a batch of records is a quarter as many WAL frames as with
    // SQLite's default 4 KiB, which takes about a tenth off the writer's CPU per record
    // (docs/benchmarks.md). It has to be set before the file's first table; on an existing
    // log it changes nothing.
    conn.pragma_update(None, "page_size", 16_384)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", durability.synchronous())?;
    conn.execute_batch(SCHEMA)?;
    Ok(conn)
}

fn record_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Record> {
    Ok(Record {
        seq: row.get::<_, i64>(0)? as u64,
        time_ms: row.get::<_, i64>(1)? as u64,
        node: row.get(2)?,
        request_id: row.get(3)?,
        route: row.get(4)?,
        client_ip: row.get(5)?,
        user: row.get(6)?,
        method: row.get(7)?,
        host: row.get(8)?,
        path: row.get(9)?,
        query: row.get(10)?,
        outcome: row.get(11)?,
        rule: row.get(12)?,
        config: row.get(13)?,
        status: row.get::<_, i64>(14)? as u16,
        bytes: row.get::<_, i64>(15)? as u64,
        duration_us: row.get::<_, i64>(16)? as u64,
        upstream: row.get(17)?,
        cache: row.get(18)?,
        trace_id: row.get(19)?,
    })
}

/// A record from an entry's `seq, time_ms, record` columns.
fn record_from_entry(row: &rusqlite::Row<'_>) -> rusqlite::Result<Record> {
    let (seq, time_ms) = (row.get::<_, i64>(0)? as u64, row.get::<_, i64>(1)? as u64);
    let bad = |e: String| {
        rusqlite::Error::FromSqlConversionFailure(2, rusqlite::types::Type::Text, format!("entry {seq}: {e}").into())
    };
    let text = row.get_ref(2)?.as_str().map_err(|e| bad(format!("the record is not text: {e}")))?;
    Record::from_entry(seq, time_ms, text).map_err(bad)
}

fn hash32(v: Vec<u8>) -> [u8; 32] {
    let mut out = [0u8; 32];
    if v.len() == 32 {
        out.copy_from_slice(&v);
    }
    out
}

fn meta_u64(conn: &Connection, key: &str) -> rusqlite::Result<Option<u64>> {
    conn.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get::<_, i64>(0))
        .optional()
        .map(|v| v.map(|n| n as u64))
}

fn meta_hash(conn: &Connection, key: &str) -> rusqlite::Result<Option<[u8; 32]>> {
    conn.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get::<_, Vec<u8>>(0))
        .optional()
        .map(|v| v.map(hash32))
}

/// What a checkpoint's signature covers.
pub fn checkpoint_message(node: &str, seq: u64, hash: &[u8; 32], time_ms: u64) -> Vec<u8> {
    let mut m = Vec::with_capacity(80 + node.len());
    m.extend_from_slice(b"edgegate-audit-checkpoint-v1\0");
    m.extend_from_slice(&(node.len() as u32).to_be_bytes());
    m.extend_from_slice(node.as_bytes());
    m.extend_from_slice(&seq.to_be_bytes());
    m.extend_from_slice(hash);
    m.extend_from_slice(&time_ms.to_be_bytes());
    m
}

/// The length the WAL is cut back to when it starts over after growing past it.
pub const WAL_LIMIT: u64 = 8 << 20;

/// The writer's handle on the log: it alone appends, so it keeps the chain's head in memory.
pub struct Store {
    conn: Connection,
    node: String,
    last_seq: u64,
    last_hash: [u8; 32],
    last_checkpoint: u64,
    /// The records inserted since the open transaction's last row was written.
    row: OpenRow,
    /// The head as the rows written in the open transaction leave it.
    pending: (u64, [u8; 32]),
}

/// The records of the row the writer is filling: the JSON text so far, its span and the
/// config its records were served by.
#[derive(Default)]
struct OpenRow {
    records: u64,
    min_ms: u64,
    max_ms: u64,
    config: String,
    text: String,
}

impl OpenRow {
    /// Whether `fields` can join the row: it is empty, or its records were served by the
    /// same config (a row names one).
    fn takes(&self, fields: &Fields<'_>) -> bool {
        self.records == 0 || self.config == fields.config
    }

    /// Adds `fields` as the row's next record; `plain` as [`AsFields::json_plain`] says.
    fn push(&mut self, fields: &Fields<'_>, plain: bool) {
        if self.records == 0 {
            self.text.clear();
            self.text.push('[');
            (self.min_ms, self.max_ms) = (fields.time_ms, fields.time_ms);
            self.config.clear();
            self.config.push_str(fields.config);
        } else {
            self.text.push(',');
            self.min_ms = self.min_ms.min(fields.time_ms);
            self.max_ms = self.max_ms.max(fields.time_ms);
        }
        fields.push_node_row_record(&mut self.text, plain);
        self.records += 1;
    }
}

impl Store {
    /// Opens (creating if needed) the log for `node`, and finds the chain's head.
    pub fn open(path: &Path, node: &str, durability: Durability) -> rusqlite::Result<Store> {
        let conn = open_connection(path, durability)?;
        conn.execute_batch(WRITER_SCHEMA)?;
        // A log written before records carried a trace id gains the column (empty for
        // the records it already holds, whose hashes do not cover it).
        if !has_trace_column(&conn)? {
            conn.execute_batch("ALTER TABLE records ADD COLUMN trace_id TEXT NOT NULL DEFAULT ''")?;
        }
        // Every record of a log as SQL sees it, one column per field, whichever table holds it
        // (made again: a log from before rows of records has a view without them).
        // `ENTRY_FIELDS` from `array`, the first at index `from`.
        let extract = |array: &str, from: usize| {
            ENTRY_FIELDS
                .iter()
                .enumerate()
                .map(|(i, name)| format!("json_extract({array}, '$[{}]') AS {name}", i + from))
                .collect::<Vec<_>>()
                .join(", ")
        };
        // A row with its node and config: `seq` from the record's place in its row, `node` and
        // `config` from the row, the rest from the record's array.
        let node_row_fields = ENTRY_FIELDS
            .iter()
            .map(|name| match ROW_FIELDS.iter().position(|f| f == name) {
                Some(i) => format!("json_extract(r.value, '$[{i}]') AS {name}"),
                None => format!("record_rows.{name} AS {name}"),
            })
            .collect::<Vec<_>>()
            .join(", ");
        conn.execute_batch(&format!(
            "DROP VIEW IF EXISTS audit_records; \
             CREATE VIEW audit_records AS SELECT {COLUMNS} FROM records \
             UNION ALL SELECT seq, time_ms, {} FROM entries \
             UNION ALL SELECT json_extract(r.value, '$[0]') AS seq, json_extract(r.value, '$[1]') AS time_ms, {} \
             FROM batches, json_each(batches.records) AS r \
             UNION ALL SELECT record_rows.first_seq + r.key AS seq, json_extract(r.value, '$[0]') AS time_ms, \
             {node_row_fields} FROM record_rows, json_each(record_rows.records) AS r",
            extract("record", 0),
            extract("r.value", 2),
        ))?;
        // The newest record is in the newest format's table that holds any.
        let mut head = None;
        for (table, key) in RECORD_TABLES {
            head = conn
                .query_row(&format!("SELECT {key}, hash FROM {table} ORDER BY {key} DESC LIMIT 1"), [], |r| {
                    Ok((r.get::<_, i64>(0)? as u64, hash32(r.get(1)?)))
                })
                .optional()?;
            if head.is_some() {
                break;
            }
        }
        let (last_seq, last_hash) = match head {
            Some(h) => h,
            None => (meta_u64(&conn, "anchor_seq")?.unwrap_or(0), meta_hash(&conn, "anchor_hash")?.unwrap_or(GENESIS)),
        };
        let last_checkpoint =
            conn.query_row("SELECT COALESCE(MAX(seq), 0) FROM checkpoints", [], |r| r.get::<_, i64>(0))? as u64;
        Ok(Store {
            conn,
            node: node.to_owned(),
            last_seq,
            last_hash,
            last_checkpoint,
            row: OpenRow::default(),
            pending: (last_seq, last_hash),
        })
    }

    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// Records written since the last checkpoint.
    pub fn since_checkpoint(&self) -> u64 {
        // A log truncated below its last checkpoint (which `verify` reports) must not
        // underflow here.
        self.last_seq.saturating_sub(self.last_checkpoint)
    }

    /// Numbers, chains and writes `batch` in one transaction. On error nothing was
    /// written and the chain's head is unchanged, so the same batch can be retried.
    pub fn append<R: AsFields>(&mut self, batch: &[R]) -> rusqlite::Result<()> {
        self.begin()?;
        let written = self.insert(batch).and_then(|()| self.commit());
        if written.is_err() {
            self.rollback();
        }
        written
    }

    /// Opens a transaction that [`Store::insert`] adds records to, in as many calls as
    /// the caller likes, and [`Store::commit`] ends; the chain's head moves only on commit.
    pub fn begin(&mut self) -> rusqlite::Result<()> {
        self.conn.execute_batch("BEGIN IMMEDIATE")?;
        self.pending = (self.last_seq, self.last_hash);
        self.row.records = 0;
        Ok(())
    }

    /// Numbers `records` and adds them to the open transaction: to the row it is filling,
    /// written (chained and inserted) when it holds [`ROW_RECORDS`] or at commit.
    pub fn insert<R: AsFields>(&mut self, records: &[R]) -> rusqlite::Result<()> {
        for r in records {
            let fields = r.fields();
            if !self.row.takes(&fields) {
                self.write_row()?;
            }
            self.row.push(&fields, r.json_plain());
            if self.row.records >= ROW_RECORDS {
                self.write_row()?;
            }
        }
        Ok(())
    }

    /// Writes the row being filled, if it holds any record: hashed as stored, chained to
    /// the last row. On an error the row is still being filled, as it was: a retried commit
    /// writes it whole.
    fn write_row(&mut self) -> rusqlite::Result<()> {
        let row = &mut self.row;
        if row.records == 0 {
            return Ok(());
        }
        let open = row.text.len();
        row.text.push(']');
        let (last, prev) = self.pending;
        let span = Span { first_seq: last + 1, last_seq: last + row.records, min_ms: row.min_ms, max_ms: row.max_ms };
        let head = RowHead { span, node: &self.node, config: &row.config };
        let hash = node_row_hash(&head, row.text.as_bytes(), &prev);
        let inserted = (|| {
            let mut insert = self.conn.prepare_cached(
                "INSERT INTO record_rows (last_seq, first_seq, min_ms, max_ms, node, config, records, hash) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )?;
            insert.raw_bind_parameter(1, span.last_seq as i64)?;
            insert.raw_bind_parameter(2, span.first_seq as i64)?;
            insert.raw_bind_parameter(3, span.min_ms as i64)?;
            insert.raw_bind_parameter(4, span.max_ms as i64)?;
            insert.raw_bind_parameter(5, self.node.as_str())?;
            insert.raw_bind_parameter(6, row.config.as_str())?;
            insert.raw_bind_parameter(7, row.text.as_str())?;
            insert.raw_bind_parameter(8, &hash[..])?;
            insert.raw_execute()
        })();
        if let Err(e) = inserted {
            row.text.truncate(open);
            return Err(e);
        }
        row.records = 0;
        self.pending = (span.last_seq, hash);
        Ok(())
    }

    /// Commits the open transaction: its records become the chain's head.
    pub fn commit(&mut self) -> rusqlite::Result<()> {
        self.write_row()?;
        self.conn.execute_batch("COMMIT")?;
        (self.last_seq, self.last_hash) = self.pending;
        Ok(())
    }

    /// [`Store::commit`], with a checkpoint at the new head (signed when a key is given)
    /// inserted in the same transaction when `every` or more records would then follow the
    /// last one: the checkpoint and the records it covers commit together, in one commit
    /// (and, with `synchronous: full`, one `fsync`) rather than two.
    pub fn commit_with_checkpoint(
        &mut self,
        key: Option<&SigningKey>,
        time_ms: u64,
        every: u64,
    ) -> rusqlite::Result<()> {
        self.write_row()?;
        let (seq, hash) = self.pending;
        let checkpointed = seq.saturating_sub(self.last_checkpoint) >= every.max(1);
        if checkpointed {
            self.insert_checkpoint(key, seq, &hash, time_ms)?;
        }
        self.commit()?;
        if checkpointed {
            self.last_checkpoint = seq;
        }
        Ok(())
    }

    fn insert_checkpoint(
        &self,
        key: Option<&SigningKey>,
        seq: u64,
        hash: &[u8; 32],
        time_ms: u64,
    ) -> rusqlite::Result<()> {
        let message = checkpoint_message(&self.node, seq, hash, time_ms);
        let signature = key.map(|k| k.sign(&message).to_bytes().to_vec());
        self.conn.execute(
            "INSERT OR REPLACE INTO checkpoints (seq, node, hash, time_ms, signature) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![seq as i64, self.node, &hash[..], time_ms as i64, signature],
        )?;
        Ok(())
    }

    /// Runs `sql` on the writer's own connection, inside its open transaction if any.
    #[cfg(test)]
    pub(super) fn execute_batch(&self, sql: &str) -> rusqlite::Result<()> {
        self.conn.execute_batch(sql)
    }

    /// Abandons the open transaction, if any; the head stays where the last commit left it.
    pub fn rollback(&mut self) {
        if !self.conn.is_autocommit() {
            let _ = self.conn.execute_batch("ROLLBACK");
        }
        self.pending = (self.last_seq, self.last_hash);
        self.row.records = 0;
    }

    /// WAL checkpoints only when [`Store::wal_checkpoint`] is called, not at whichever
    /// commit finds the WAL past 1,000 pages (SQLite's default).
    pub fn manual_wal_checkpoints(&mut self) -> rusqlite::Result<()> {
        self.conn.pragma_update(None, "wal_autocheckpoint", 0)?;
        // A WAL that grew past this (a reader held a snapshot for long) is cut back to it
        // when it starts over, rather than kept at its longest: its length on disk then
        // says whether it is long now (the background verifier reads it).
        self.conn.pragma_update(None, "journal_size_limit", WAL_LIMIT as i64)
    }

    /// Copies the WAL's committed pages into the database file, as far as readers allow
    /// (`PASSIVE`: it never waits for them). False when another connection's copy was
    /// running (SQLite then copies nothing).
    pub fn wal_checkpoint(&mut self) -> rusqlite::Result<bool> {
        passive_wal_checkpoint(&self.conn)
    }

    /// Records a checkpoint at the chain's head, signed when a key is given.
    pub fn checkpoint(&mut self, key: Option<&SigningKey>, time_ms: u64) -> rusqlite::Result<()> {
        if self.last_seq == self.last_checkpoint {
            return Ok(());
        }
        self.insert_checkpoint(key, self.last_seq, &self.last_hash, time_ms)?;
        self.last_checkpoint = self.last_seq;
        Ok(())
    }

    /// Bytes the log's pages hold (free pages left by deletions, which SQLite reuses, not
    /// counted), as this connection sees the log, its WAL included.
    pub fn used_bytes(&self) -> rusqlite::Result<u64> {
        let pragma = |name: &str| self.conn.query_row(&format!("PRAGMA {name}"), [], |r| r.get::<_, i64>(0));
        let pages = pragma("page_count")?.saturating_sub(pragma("freelist_count")?);
        Ok(pages.max(0) as u64 * pragma("page_size")?.max(0) as u64)
    }

    /// Deletes up to `batch` records older than `before_ms`, never past the newest
    /// checkpoint older than that nor past `keep_after` (records not yet forwarded). The
    /// last deleted record is a checkpoint, whose `(seq, hash)` becomes the anchor the
    /// remaining chain starts from. Returns how many records were deleted.
    pub fn retain(&mut self, before_ms: u64, keep_after: Option<u64>, batch: usize) -> rusqlite::Result<usize> {
        let anchor = meta_u64(&self.conn, "anchor_seq")?.unwrap_or(0);
        let limit = keep_after.unwrap_or(u64::MAX).min(self.last_seq);
        // The checkpoints are looked at one step from the anchor only: records finish in
        // about the order they are numbered, so the checkpoints whose records are old enough
        // come first, and the newest of them within one step is where this step cuts. (The
        // newest old enough in the whole log, searched from its head, read every checkpoint
        // of a log whose records were not yet old enough: ~5 µs each, every minute, at
        // normal priority — a 180-day log checkpointed every 10 s holds 1.5 million.)
        let checkpoint_at = |condition: &str, order: &str, params: &[&dyn rusqlite::ToSql]| {
            self.conn
                .query_row(
                    &format!(
                        "SELECT c.seq, c.hash, r.time_ms FROM checkpoints c JOIN {} r ON r.seq = c.seq \
                         WHERE {condition} ORDER BY c.seq {order} LIMIT 1",
                        seq_times(|_| true)
                    ),
                    params,
                    |r| Ok((r.get::<_, i64>(0)? as u64, hash32(r.get(1)?), r.get::<_, i64>(2)? as u64)),
                )
                .optional()
        };
        let step_end = limit.min(anchor.saturating_add(batch as u64));
        let within_step = checkpoint_at(
            "c.seq > ?1 AND c.seq <= ?2 AND r.time_ms < ?3",
            "DESC",
            params![anchor as i64, step_end as i64, before_ms.min(i64::MAX as u64) as i64],
        )?;
        let cut = match within_step {
            Some(c) => Some(c),
            // No checkpoint within a step (they are sparser than that): the first after it,
            // if its records are old enough.
            None => checkpoint_at("c.seq > ?1 AND c.seq <= ?2", "ASC", params![step_end as i64, limit as i64])?
                .filter(|(_, _, time_ms)| *time_ms < before_ms),
        };
        let Some((cut_seq, cut_hash, _)) = cut else { return Ok(0) };
        let tx = self.conn.transaction()?;
        let mut deleted = tx.execute("DELETE FROM records WHERE seq <= ?1", [cut_seq as i64])?
            + tx.execute("DELETE FROM entries WHERE seq <= ?1", [cut_seq as i64])?;
        for rows in ["batches", "record_rows"] {
            deleted += tx.query_row(
                &format!("SELECT COALESCE(SUM(last_seq - first_seq + 1), 0) FROM {rows} WHERE last_seq <= ?1"),
                [cut_seq as i64],
                |r| r.get::<_, i64>(0),
            )? as usize;
            tx.execute(&format!("DELETE FROM {rows} WHERE last_seq <= ?1"), [cut_seq as i64])?;
        }
        tx.execute("DELETE FROM checkpoints WHERE seq < ?1", [cut_seq as i64])?;
        tx.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('anchor_seq', ?1)", [cut_seq as i64])?;
        tx.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('anchor_hash', ?1)", [&cut_hash[..]])?;
        tx.commit()?;
        Ok(deleted)
    }
}

/// A second connection to a log, only to copy its WAL into the database file
/// (`PRAGMA wal_checkpoint(PASSIVE)`): SQLite runs such a checkpoint beside the writer's
/// commits, never waiting for them nor they for it, so a thread at the lowest priority can
/// do the copying without holding the writer up.
pub struct WalCopier {
    conn: Connection,
}

impl WalCopier {
    /// Opens a log the writer has created (a missing file is an error, not a new log).
    pub fn open(path: &Path, durability: Durability) -> rusqlite::Result<WalCopier> {
        let conn = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE)?;
        // The checkpoint syncs the database file as the writer's own would.
        conn.pragma_update(None, "synchronous", durability.synchronous())?;
        conn.pragma_update(None, "wal_autocheckpoint", 0)?;
        Ok(WalCopier { conn })
    }

    /// Copies the WAL's committed pages into the database file, as far as readers allow.
    /// False when another connection's copy was running.
    pub fn copy(&mut self) -> rusqlite::Result<bool> {
        passive_wal_checkpoint(&self.conn)
    }
}

/// `PRAGMA wal_checkpoint(PASSIVE)`: its first column is 1 when another checkpoint held the
/// WAL (nothing copied), 0 otherwise.
fn passive_wal_checkpoint(conn: &Connection) -> rusqlite::Result<bool> {
    conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get::<_, i64>(0).map(|busy| busy == 0))
}

/// A reader of the log, for the forwarder, export and verify; WAL lets it run beside
/// the writer.
pub struct Reader {
    conn: Connection,
    columns: &'static str,
    /// Whether the log has the `entries` table (not a log only older versions wrote).
    entries: bool,
    /// Whether the log has the `batches` table (rows of records).
    batches: bool,
    /// Whether the log has the `record_rows` table (rows with their node and config).
    node_rows: bool,
    /// `seq, time_ms` of every record the log holds, as a `FROM` clause.
    seq_times: String,
}

impl Reader {
    pub fn open(path: &Path) -> rusqlite::Result<Reader> {
        if !path.exists() {
            return Err(rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CANTOPEN),
                Some(format!("{}: no such file", path.display())),
            ));
        }
        let conn = open_connection(path, Durability::Full)?;
        let columns = if has_trace_column(&conn)? { COLUMNS } else { COLUMNS_WITHOUT_TRACE };
        let (entries, batches, node_rows) =
            (has_table(&conn, "entries")?, has_table(&conn, "batches")?, has_table(&conn, "record_rows")?);
        let mut reader = Reader { conn, columns, entries, batches, node_rows, seq_times: String::new() };
        reader.seq_times = seq_times(|table| reader.has(table));
        Ok(reader)
    }

    /// Whether the log has `table` (every log has `records`).
    fn has(&self, table: &str) -> bool {
        match table {
            "entries" => self.entries,
            "batches" => self.batches,
            "record_rows" => self.node_rows,
            _ => true,
        }
    }

    /// The rows of records where `column >= from` (`last_seq`: those holding a record after
    /// `from - 1`; `max_ms`: those holding one that finished at `from` or later), in order
    /// (`batches`, then `record_rows`), each expanded, handed to `each` until it answers false.
    fn rows_from(&self, column: &str, from: u64, mut each: impl FnMut(Vec<Record>) -> bool) -> rusqlite::Result<()> {
        type Expand = fn(&rusqlite::Row<'_>) -> rusqlite::Result<Vec<Record>>;
        let tables: [(&str, &str, Expand); 2] =
            [("batches", ROW_COLUMNS, records_from_row), ("record_rows", NODE_ROW_COLUMNS, records_from_node_row)];
        for (table, columns, expand) in tables {
            if !self.has(table) {
                continue;
            }
            let mut stmt = self
                .conn
                .prepare_cached(&format!("SELECT {columns} FROM {table} WHERE {column} >= ?1 ORDER BY last_seq"))?;
            let mut rows = stmt.query([from as i64])?;
            while let Some(row) = rows.next()? {
                if !each(expand(row)?) {
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// Up to `limit` records after `seq`, in order.
    pub fn after(&self, seq: u64, limit: usize) -> rusqlite::Result<Vec<Record>> {
        let mut out = Vec::new();
        let mut stmt = self
            .conn
            .prepare_cached(&format!("SELECT {} FROM records WHERE seq > ?1 ORDER BY seq LIMIT ?2", self.columns))?;
        for r in stmt.query_map(params![seq as i64, limit as i64], record_from_row)? {
            out.push(r?);
        }
        if out.len() < limit && self.entries {
            let mut stmt = self
                .conn
                .prepare_cached("SELECT seq, time_ms, record FROM entries WHERE seq > ?1 ORDER BY seq LIMIT ?2")?;
            for r in stmt.query_map(params![seq as i64, (limit - out.len()) as i64], record_from_entry)? {
                out.push(r?);
            }
        }
        if out.len() < limit {
            self.rows_from("last_seq", seq.saturating_add(1), |records| {
                out.extend(records.into_iter().filter(|r| r.seq > seq).take(limit - out.len()));
                out.len() < limit
            })?;
        }
        Ok(out)
    }

    /// Records that finished at or after `since_ms`, in order, handed to `each`.
    pub fn since(&self, since_ms: u64, mut each: impl FnMut(Record)) -> rusqlite::Result<()> {
        let mut stmt =
            self.conn.prepare(&format!("SELECT {} FROM records WHERE time_ms >= ?1 ORDER BY seq", self.columns))?;
        for r in stmt.query_map([since_ms as i64], record_from_row)? {
            each(r?);
        }
        if self.entries {
            let mut stmt =
                self.conn.prepare("SELECT seq, time_ms, record FROM entries WHERE time_ms >= ?1 ORDER BY seq")?;
            for r in stmt.query_map([since_ms as i64], record_from_entry)? {
                each(r?);
            }
        }
        self.rows_from("max_ms", since_ms, |records| {
            records.into_iter().filter(|r| r.time_ms >= since_ms).for_each(&mut each);
            true
        })
    }

    /// The last record the collector acknowledged (0: none).
    pub fn forwarded(&self) -> rusqlite::Result<u64> {
        Ok(meta_u64(&self.conn, "forwarded_seq")?.unwrap_or(0))
    }

    pub fn set_forwarded(&self, seq: u64) -> rusqlite::Result<()> {
        self.conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('forwarded_seq', ?1)", [seq as i64])?;
        Ok(())
    }

    /// The newest record's seq and time (None: empty).
    pub fn head(&self) -> rusqlite::Result<Option<(u64, u64)>> {
        let newest = self
            .conn
            .query_row(&format!("SELECT seq FROM {} ORDER BY seq DESC LIMIT 1", self.seq_times), [], |r| {
                r.get::<_, i64>(0)
            })
            .optional()?;
        match newest {
            Some(seq) => Ok(self.after((seq as u64).saturating_sub(1), 1)?.first().map(|r| (r.seq, r.time_ms))),
            None => Ok(None),
        }
    }

    /// The time of the oldest record after `seq`.
    pub fn time_after(&self, seq: u64) -> rusqlite::Result<Option<u64>> {
        Ok(self.after(seq, 1)?.first().map(|r| r.time_ms))
    }
}

/// Why a log does not verify; `seq` names the first bad record (or checkpoint).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyError {
    pub seq: Option<u64>,
    pub reason: String,
}

impl std::fmt::Display for VerifyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.seq {
            Some(seq) => write!(f, "record {seq}: {}", self.reason),
            None => f.write_str(&self.reason),
        }
    }
}

/// What a good log holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    pub records: u64,
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    pub checkpoints: u64,
    pub signed_checkpoints: u64,
    pub anchor_seq: u64,
    /// Records hashed by this walk: all of them, or those after where the last good walk
    /// ended (see [`verify_after`]).
    pub walked: u64,
    /// The chain's head as verified: where a later walk can go on from.
    pub head: Verified,
    /// The walk reached the log's end (not stopped at its `limit`).
    pub complete: bool,
}

/// A point of the chain a good walk reached: record `seq` (the anchor when the log holds
/// none) and the chain's hash there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verified {
    pub seq: u64,
    pub hash: [u8; 32],
}

/// The checkpoints a walk meets, read in `seq` order as it goes (a 180-day log holds
/// ~1.5 million of them at one per 10 s: never all in memory at once), each signature
/// checked when a key is given.
struct Checkpoints<'a> {
    rows: rusqlite::Rows<'a>,
    /// The next checkpoint not yet passed: its `seq` and hash.
    next: Option<(u64, [u8; 32])>,
    key: Option<&'a VerifyingKey>,
    /// Checkpoints up to this one were counted by the walk this one goes on from.
    counted: Option<u64>,
    seen: u64,
    signed: u64,
}

impl<'a> Checkpoints<'a> {
    fn new(
        rows: rusqlite::Rows<'a>,
        key: Option<&'a VerifyingKey>,
        counted: Option<u64>,
    ) -> Result<Checkpoints<'a>, VerifyError> {
        let mut c = Checkpoints { rows, next: None, key, counted, seen: 0, signed: 0 };
        c.advance()?;
        Ok(c)
    }

    /// Reads the next checkpoint and checks its signature.
    fn advance(&mut self) -> Result<(), VerifyError> {
        let db = |e: rusqlite::Error| VerifyError { seq: None, reason: format!("reading the checkpoints: {e}") };
        self.next = None;
        let Some(row) = self.rows.next().map_err(db)? else { return Ok(()) };
        let seq = row.get::<_, i64>(0).map_err(db)? as u64;
        let hash = hash32(row.get(2).map_err(db)?);

        if let Some(key) = self.key {
            let fail = |reason: &str| VerifyError { seq: Some(seq), reason: reason.into() };
            let signature = row.get_ref(4).map_err(db)?.as_blob_or_null().map_err(|e| db(e.into()))?;
            let Some(sig) = signature.and_then(|s| Signature::from_slice(s).ok()) else {
                return Err(fail("checkpoint is not signed"));
            };
            let node = row.get_ref(1).map_err(db)?.as_str().map_err(|e| db(e.into()))?;
            let time_ms = row.get::<_, i64>(3).map_err(db)? as u64;
            let message = checkpoint_message(node, seq, &hash, time_ms);
            if key.verify(&message, &sig).is_err() {
                return Err(fail("checkpoint signature does not verify with the given key"));
            }
        }
        self.next = Some((seq, hash));
        Ok(())
    }

    /// Passes every checkpoint up to `seq`; the hash of the one at `seq`, if any.
    fn through(&mut self, seq: u64) -> Result<Option<[u8; 32]>, VerifyError> {
        self.through_row(seq, seq)
    }

    /// [`Checkpoints::through`] `last`, for a row holding records `first` to `last`: a
    /// checkpoint at a record before its last is one the writer never made (its hash
    /// would be the chain's inside a row, which no row holds).
    fn through_row(&mut self, first: u64, last: u64) -> Result<Option<[u8; 32]>, VerifyError> {
        let mut at = None;
        while let Some((s, hash)) = self.next.filter(|(s, _)| *s <= last) {
            if s == last {
                at = Some(hash);
            } else if s >= first {
                return Err(VerifyError {
                    seq: Some(s),
                    reason: format!("a checkpoint inside the row of records {first}..={last}: not the writer's"),
                });
            }
            // Counted as passed (not as read ahead), once: not again by a walk going on from it.
            if self.counted.is_none_or(|c| s > c) {
                self.seen += 1;
                self.signed += u64::from(self.key.is_some());
            }
            self.advance()?;
        }
        Ok(at)
    }
}

/// Where a walk along the chain is: the record it expects next and the hash it follows.
struct Walk {
    expected: u64,
    prev: [u8; 32],
    count: u64,
    last: Option<u64>,
}

impl Walk {
    /// Takes record `seq`: it must be the next one, `check` (given the predecessor's hash)
    /// returns its verified hash, and a checkpoint at it must hold
    /// that hash.
    fn step(
        &mut self,
        seq: u64,
        checkpoints: &mut Checkpoints<'_>,
        check: impl FnOnce(&[u8; 32]) -> Result<[u8; 32], VerifyError>,
    ) -> Result<(), VerifyError> {
        self.step_row(seq, seq, checkpoints, check)
    }

    /// [`Walk::step`] for a row holding records `seq` to `last`, hashed as one.
    fn step_row(
        &mut self,
        seq: u64,
        last: u64,
        checkpoints: &mut Checkpoints<'_>,
        check: impl FnOnce(&[u8; 32]) -> Result<[u8; 32], VerifyError>,
    ) -> Result<(), VerifyError> {
        if seq != self.expected || last < seq {
            return Err(VerifyError {
                seq: Some(seq),
                reason: format!(
                    "expected record {} before it: records are missing (deleted) or renumbered",
                    self.expected
                ),
            });
        }
        let computed = check(&self.prev)?;
        if checkpoints.through_row(seq, last)?.is_some_and(|h| h != computed) {
            return Err(VerifyError { seq: Some(last), reason: "does not match its checkpoint".into() });
        }
        self.prev = computed;
        self.expected = last + 1;
        self.count += last - seq + 1;
        self.last = Some(last);
        Ok(())
    }
}

/// Walks the chain from its anchor and checks every checkpoint; with `key`, every
/// checkpoint must carry a valid signature by it.
/// In parts of [`VERIFY_PART`] records (see [`verify_in_parts`]).
pub fn verify(path: &Path, key: Option<&VerifyingKey>) -> Result<VerifyReport, VerifyError> {
    verify_in_parts(path, key, None, VERIFY_PART, || true)
}

/// The records [`verify`] walks per read snapshot: ~50 ms without signatures.
pub const VERIFY_PART: u64 = 100_000;

/// [`verify_after`] in parts of `part` records, each its own read snapshot, each from where
/// the last stopped. `between` runs after each part that did not reach the end; when it
/// answers false the walk stops there (its report not `complete`). The report counts the
/// parts together.
pub fn verify_in_parts(
    path: &Path,
    key: Option<&VerifyingKey>,
    mut after: Option<Verified>,
    part: u64,
    mut between: impl FnMut() -> bool,
) -> Result<VerifyReport, VerifyError> {
    let mut before = (0, 0, 0);
    loop {
        let mut report = verify_after(path, key, after, part)?;
        report.walked += before.0;
        report.checkpoints += before.1;
        report.signed_checkpoints += before.2;
        if report.complete || !between() {
            return Ok(report);
        }
        before = (report.walked, report.checkpoints, report.signed_checkpoints);
        after = Some(report.head);
    }
}

/// [`verify`], or with `after` (where an earlier good walk of this log ended) only what
/// was appended since: the record at `after` must still hold the hash that walk found, the
/// records after it must chain on from it, and the checkpoints from it on (and the
/// anchor's) are checked. A walk of the new records costs what they cost, not the whole
/// log's; an edit of a record before `after` is found by the next whole walk. When
/// retention has deleted past `after`, the whole log is walked.
///
/// The walk stops once it has walked `limit` records (the report is then not `complete`;
/// a row of records is walked whole, so a part may hold up to 127 more): a long log
/// walked in parts, each from the head the last part reached, holds no read snapshot for
/// long (a snapshot held open keeps the WAL from starting over, and it grows meanwhile).
pub fn verify_after(
    path: &Path,
    key: Option<&VerifyingKey>,
    after: Option<Verified>,
    limit: u64,
) -> Result<VerifyReport, VerifyError> {
    let fail = |seq: Option<u64>, reason: String| VerifyError { seq, reason };
    let reader = Reader::open(path).map_err(|e| fail(None, format!("cannot open {}: {e}", path.display())))?;
    let conn = &reader.conn;
    let db = |e: rusqlite::Error| fail(None, format!("reading {}: {e}", path.display()));
    // One read transaction: the anchor, the checkpoints and the records are read from the
    // same snapshot while the writer goes on appending (and retention on deleting).
    let _snapshot = conn.unchecked_transaction().map_err(db)?;
    let anchor_seq = meta_u64(conn, "anchor_seq").map_err(db)?.unwrap_or(0);
    let anchor_hash = meta_hash(conn, "anchor_hash").map_err(db)?.unwrap_or(GENESIS);
    // Where this walk starts: the anchor, or where the last good walk ended.
    let after = after.filter(|a| a.seq >= anchor_seq);
    let from = after.map_or(anchor_seq, |a| a.seq);

    let mut stmt = conn
        .prepare("SELECT seq, node, hash, time_ms, signature FROM checkpoints WHERE seq >= ?1 OR seq = ?2 ORDER BY seq")
        .map_err(db)?;
    // A whole walk checks every checkpoint, one going on from `after` those from it on.
    let first_checkpoint = if after.is_some() { from } else { 0 };
    let rows = stmt.query([first_checkpoint as i64, anchor_seq as i64]).map_err(db)?;
    let mut checkpoints = Checkpoints::new(rows, key, after.map(|a| a.seq))?;
    // Older checkpoints (kept by retention below the anchor) are checked as a whole walk
    // passes them; the anchor's must hold the anchor's hash.
    let at_anchor = checkpoints.through(anchor_seq)?;
    if anchor_seq > 0 && at_anchor != Some(anchor_hash) {
        return Err(fail(
            Some(anchor_seq),
            "the retention anchor does not match a checkpoint (records deleted outside retention)".into(),
        ));
    }
    let start = match after {
        None => anchor_hash,
        Some(a) if a.seq == anchor_seq => {
            if a.hash != anchor_hash {
                return Err(fail(Some(a.seq), "the retention anchor changed since the last walk".into()));
            }
            a.hash
        }
        Some(a) => {
            // The record the last walk ended at (a row's last), as stored now.
            let mut stored = None;
            for (table, key) in RECORD_TABLES.into_iter().filter(|(table, _)| reader.has(table)) {
                stored = conn
                    .query_row(&format!("SELECT hash FROM {table} WHERE {key} = ?1"), [a.seq as i64], |r| {
                        r.get::<_, Vec<u8>>(0)
                    })
                    .optional()
                    .map_err(db)?;
                if stored.is_some() {
                    break;
                }
            }
            match stored.map(hash32) {
                Some(h) if h == a.hash => a.hash,
                Some(_) => {
                    return Err(fail(
                        Some(a.seq),
                        "its stored hash changed since the last walk verified it: the record was edited".into(),
                    ))
                }
                None => return Err(fail(Some(a.seq), "verified before, now missing: the record was deleted".into())),
            }
        }
    };

    if checkpoints.through(from)?.is_some_and(|h| h != start) {
        return Err(fail(Some(from), "does not match its checkpoint".into()));
    }
    // The rows of the `records` table first (older), then the entries, as one chain.
    let mut walk = Walk { expected: from + 1, prev: start, count: 0, last: None };
    let mut stmt = conn
        .prepare(&format!("SELECT {}, prev_hash, hash FROM records WHERE seq > ?1 ORDER BY seq", reader.columns))
        .map_err(db)?;
    let mut rows = stmt.query([from as i64]).map_err(db)?;
    let mut scratch = Vec::new();
    let mut complete = true;
    while let Some(row) = rows.next().map_err(db)? {
        if walk.count >= limit {
            complete = false;
            break;
        }
        let record = record_from_row(row).map_err(db)?;
        let stored_prev: [u8; 32] = hash32(row.get(20).map_err(db)?);
        let stored_hash: [u8; 32] = hash32(row.get(21).map_err(db)?);
        walk.step(record.seq, &mut checkpoints, |prev| {
            if stored_prev != *prev {
                return Err(fail(
                    Some(record.seq),
                    "prev_hash does not match the preceding record: a record was deleted, inserted or reordered".into(),
                ));
            }
            let computed = record.chain_hash(prev, &mut scratch);
            if computed != stored_hash {
                return Err(fail(Some(record.seq), "content does not match its hash: the record was edited".into()));
            }
            Ok(computed)
        })?;
    }
    // A log only older versions wrote has no entries to walk.
    if reader.entries && complete {
        let mut stmt =
            conn.prepare("SELECT seq, time_ms, record, hash FROM entries WHERE seq > ?1 ORDER BY seq").map_err(db)?;
        let mut rows = stmt.query([from as i64]).map_err(db)?;
        while let Some(row) = rows.next().map_err(db)? {
            if walk.count >= limit {
                complete = false;
                break;
            }
            let seq = row.get::<_, i64>(0).map_err(db)? as u64;
            let time_ms = row.get::<_, i64>(1).map_err(db)? as u64;
            // Hashed as stored: whatever the text holds, a changed byte changes the hash.
            let text = row.get_ref(2).map_err(db)?;
            let text = match text {
                rusqlite::types::ValueRef::Text(t) => t,
                _ => return Err(fail(Some(seq), "the record is not text: the row was edited".into())),
            };
            let stored_hash: [u8; 32] = hash32(row.get(3).map_err(db)?);
            walk.step(seq, &mut checkpoints, |prev| {
                let computed = entry_hash(seq, time_ms, text, prev);
                if computed != stored_hash {
                    return Err(fail(
                        Some(seq),
                        "content does not match its hash: the record was edited, moved or renumbered".into(),
                    ));
                }
                Ok(computed)
            })?;
        }
    }
    // Then the rows of records, and the rows with their node and config: hashed as stored,
    // the text of the records and (the newer) the row's node and config.
    for (table, columns, with_head) in [("batches", ROW_COLUMNS, false), ("record_rows", NODE_ROW_COLUMNS, true)] {
        if !reader.has(table) || !complete {
            continue;
        }
        let mut stmt = conn
            .prepare(&format!("SELECT {columns}, hash FROM {table} WHERE last_seq > ?1 ORDER BY last_seq"))
            .map_err(db)?;
        let mut rows = stmt.query([from as i64]).map_err(db)?;
        // `hash` follows the columns.
        let hash_at = columns.split(',').count();
        while let Some(row) = rows.next().map_err(db)? {
            if walk.count >= limit {
                complete = false;
                break;
            }
            let span = span_of(row).map_err(db)?;
            let text = |i: usize, what: &str| match row.get_ref(i).map_err(db)? {
                rusqlite::types::ValueRef::Text(t) => Ok(t),
                _ => Err(fail(Some(span.first_seq), format!("{what} not text: the row was edited"))),
            };
            let records = text(4, "the records are")?;
            let head = if with_head {
                let name = |i: usize, what: &str| -> Result<&str, VerifyError> {
                    std::str::from_utf8(text(i, what)?)
                        .map_err(|_| fail(Some(span.first_seq), format!("{what} not UTF-8 text: the row was edited")))
                };
                Some(RowHead { span, node: name(5, "the node is")?, config: name(6, "the config is")? })
            } else {
                None
            };
            let stored_hash: [u8; 32] = hash32(row.get(hash_at).map_err(db)?);
            walk.step_row(span.first_seq, span.last_seq, &mut checkpoints, |prev| {
                let computed = match &head {
                    None => row_hash(&span, records, prev),
                    Some(head) => node_row_hash(head, records, prev),
                };
                if computed != stored_hash {
                    return Err(fail(
                        Some(span.first_seq),
                        format!(
                            "content does not match its hash: a record of the row {}..={} was edited, moved or \
                             renumbered",
                            span.first_seq, span.last_seq
                        ),
                    ));
                }
                Ok(computed)
            })?;
        }
    }
    let Walk { count, last, prev, .. } = walk;
    let head = last.unwrap_or(from);
    if let Some((seq, _)) = checkpoints.next.filter(|(s, _)| complete && *s > head) {
        return Err(fail(
            Some(seq),
            format!("a checkpoint covers record {seq} but the log ends at {head}: records were deleted from the end"),
        ));
    }
    Ok(VerifyReport {
        // The chain runs unbroken from the anchor to the head (this walk, or the ones before).
        records: head - anchor_seq,
        first_seq: if head > anchor_seq { Some(anchor_seq + 1) } else { None },
        last_seq: if head > anchor_seq { Some(head) } else { None },
        checkpoints: checkpoints.seen,
        signed_checkpoints: checkpoints.signed,
        anchor_seq,
        walked: count,
        head: Verified { seq: head, hash: prev },
        complete,
    })
}

/// Reads an Ed25519 private key (PKCS#8 PEM, as `openssl genpkey -algorithm ed25519` or
/// `edgegate audit keygen` writes it).
pub fn load_signing_key(path: &Path) -> Result<SigningKey, String> {
    use ed25519_dalek::pkcs8::DecodePrivateKey;
    let text = files::read_text(path, files::KEY_FILE).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    SigningKey::from_pkcs8_pem(&text)
        .map_err(|e| format!("{}: not an Ed25519 private key in PKCS#8 PEM: {e}", path.display()))
}

/// Reads an Ed25519 public key (SubjectPublicKeyInfo PEM). Only `edgegate audit verify`
/// reads one, from a path its operator gives: a pipe is fine (`--key <(…)`), so unlike the
/// files a config names it may be any kind of file.
pub fn load_verifying_key(path: &Path) -> Result<VerifyingKey, String> {
    use ed25519_dalek::pkcs8::DecodePublicKey;
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    VerifyingKey::from_public_key_pem(&text)
        .map_err(|e| format!("{}: not an Ed25519 public key in PEM: {e}", path.display()))
}

/// A new key pair as (private PKCS#8 PEM, public PEM), from 32 bytes of the OS's randomness.
pub fn generate_key_pair() -> Result<(String, String), String> {
    use ed25519_dalek::pkcs8::{spki::der::pem::LineEnding, EncodePrivateKey, EncodePublicKey};
    use std::io::Read;
    let mut seed = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut seed))
        .map_err(|e| format!("reading /dev/urandom: {e}"))?;
    let key = SigningKey::from_bytes(&seed);
    let private = key.to_pkcs8_pem(LineEnding::LF).map_err(|e| e.to_string())?;
    let public = key.verifying_key().to_public_key_pem(LineEnding::LF).map_err(|e| e.to_string())?;
    Ok((private.to_string(), public))
}

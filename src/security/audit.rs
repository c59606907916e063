//! The audit log: one JSON object per line, appended (`O_APPEND`) to `[audit] file`:
//! `{"time", "who", "role", "action", "study_instance_uid" | "model", "peer"}`.
//!
//! Why a plain file: it is what a hospital's log shipper already collects, and append-only opening
//! means the service itself never rewrites what it recorded. Who is the token's name from the tokens
//! file (`anonymous` when no tokens are configured); studies are named by their UID only. A line that
//! cannot be written is logged as an error and the request goes on: refusing to score a study because a
//! disk filled would harm patients more than a gap in the audit trail.

use std::{
    fs::File,
    io::Write,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{SystemTime, UNIX_EPOCH},
};

use serde_json::{json, Map, Value};

use super::{Role, SecurityError};

/// Where audit lines go; cheap to clone. [`Audit::off`] records nothing.
#[derive(Clone, Debug, Default)]
pub struct Audit {
    file: Option<Arc<(PathBuf, Mutex<File>)>>,
}

/// What an action was about.
#[derive(Debug, Clone)]
pub enum Subject<'a> {
    Study(&'a str),
    /// Several studies (a Watch filter); empty: every study.
    Studies(&'a [String]),
    Model {
        name: &'a str,
        version: Option<&'a str>,
    },
}

impl Audit {
    pub fn off() -> Self {
        Self::default()
    }

    /// Opens (creating) `path` for appending.
    pub fn open(path: &Path) -> Result<Self, SecurityError> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|source| SecurityError::Audit {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(Self {
            file: Some(Arc::new((path.to_path_buf(), Mutex::new(file)))),
        })
    }

    pub fn is_on(&self) -> bool {
        self.file.is_some()
    }

    /// Appends one line.
    pub fn record(
        &self,
        who: &str,
        role: Option<Role>,
        action: &str,
        subject: Subject<'_>,
        peer: Option<SocketAddr>,
    ) {
        let Some(file) = &self.file else {
            return;
        };
        let mut line = Map::new();
        line.insert("time".into(), json!(rfc3339(SystemTime::now())));
        line.insert("who".into(), json!(who));
        line.insert("role".into(), json!(role.map(Role::as_str)));
        line.insert("action".into(), json!(action));
        match subject {
            Subject::Study(uid) => {
                line.insert("study_instance_uid".into(), json!(uid));
            }
            Subject::Studies(uids) => {
                line.insert("study_instance_uid".into(), json!(uids));
            }
            Subject::Model { name, version } => {
                line.insert("model".into(), json!(name));
                if let Some(v) = version {
                    line.insert("version".into(), json!(v));
                }
            }
        }
        line.insert("peer".into(), json!(peer.map(|p| p.to_string())));
        let mut text = Value::Object(line).to_string();
        text.push('\n');
        let (path, lock) = &**file;
        // One write per line under the lock: lines never interleave.
        let written = match lock.lock() {
            Ok(mut f) => f.write_all(text.as_bytes()),
            Err(poisoned) => poisoned.into_inner().write_all(text.as_bytes()),
        };
        if let Err(e) = written {
            tracing::error!(path = %path.display(), "cannot append to the audit log: {e}");
        }
    }
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` (UTC).
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's civil_from_days.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn times_are_utc_rfc3339() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_709_210_096_789);
        assert_eq!(rfc3339(t), "2024-02-29T12:34:56.789Z");
    }

    #[test]
    fn lines_are_appended_not_rewritten() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.log");
        std::fs::write(&path, "earlier\n").expect("write");
        let audit = Audit::open(&path).expect("open");
        audit.record(
            "ward-3",
            Some(Role::Watch),
            "watch",
            Subject::Study("1.2.3"),
            None,
        );
        audit.record(
            "alice",
            Some(Role::Admin),
            "activate",
            Subject::Model {
                name: "lesion",
                version: Some("1.1.0"),
            },
            Some("127.0.0.1:5".parse().expect("addr")),
        );
        let text = std::fs::read_to_string(&path).expect("read");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "earlier");
        let a: Value = serde_json::from_str(lines[1]).expect("json");
        assert_eq!(a["who"], "ward-3");
        assert_eq!(a["role"], "watch");
        assert_eq!(a["study_instance_uid"], "1.2.3");
        let b: Value = serde_json::from_str(lines[2]).expect("json");
        assert_eq!(b["model"], "lesion");
        assert_eq!(b["version"], "1.1.0");
        assert_eq!(b["peer"], "127.0.0.1:5");
    }
}

//! What `/-/config` reports about the serving config: where it came from, how the last
//! reload went, what waits for a restart. Written by the control path only.

use std::path::PathBuf;
use std::time::SystemTime;

use serde_json::{json, Value};

use crate::snapshot::Snapshot;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    Startup,
    Watch,
    Signal,
    Admin,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Startup => "startup",
            Trigger::Watch => "watch",
            Trigger::Signal => "sighup",
            Trigger::Admin => "admin",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServingFrom {
    /// The configured file.
    File,
    /// The persisted copy of the last accepted config: the file was missing or invalid.
    LastKnownGood,
    /// The config compiled into the binary (`edgegate demo`).
    Embedded,
}

/// What `/-/config` reports. Guarded by a mutex: only the control path touches it.
#[derive(Debug, Clone)]
pub struct ConfigStatus {
    pub source: Option<PathBuf>,
    pub hash: String,
    pub loaded_at: SystemTime,
    pub serving_from: ServingFrom,
    /// The last reload that was applied, and the generation it made.
    pub last_reload: Option<(SystemTime, Trigger, u64)>,
    /// The last reload attempted, whatever came of it (`applied`, `unchanged`, `error`).
    pub last_attempt: Option<(SystemTime, Trigger, &'static str)>,
    pub last_error: Option<(SystemTime, Trigger, Vec<String>)>,
    /// Fields that changed in an accepted config but only apply on restart.
    pub restart_required: Vec<String>,
    /// Why the last-known-good copy could not be written, if it could not.
    pub persist_error: Option<String>,
}

impl ConfigStatus {
    pub fn new(source: Option<PathBuf>, hash: String, serving_from: ServingFrom) -> ConfigStatus {
        ConfigStatus {
            source,
            hash,
            loaded_at: SystemTime::now(),
            serving_from,
            last_reload: None,
            last_attempt: None,
            last_error: None,
            restart_required: Vec::new(),
            persist_error: None,
        }
    }

    pub fn to_json(&self, snapshot: &Snapshot) -> Value {
        let at = |t: SystemTime| humantime::format_rfc3339_millis(t).to_string();
        json!({
            "generation": snapshot.generation,
            "hash": self.hash,
            "loaded_at": at(self.loaded_at),
            "source": self.source.as_ref().map(|p| p.display().to_string()),
            "serving_from": match self.serving_from {
                ServingFrom::File => "file",
                ServingFrom::LastKnownGood => "last_known_good",
                ServingFrom::Embedded => "embedded",
            },
            "routes": snapshot.routes.len(),
            "upstreams": snapshot.pools.len(),
            "last_reload": self.last_reload.map(|(t, trigger, generation)| json!({"at": at(t), "trigger": trigger.as_str(), "generation": generation})),
            "last_attempt": self.last_attempt.map(|(t, trigger, result)| json!({"at": at(t), "trigger": trigger.as_str(), "result": result})),
            "last_error": self.last_error.as_ref().map(|(t, trigger, errors)| json!({"at": at(*t), "trigger": trigger.as_str(), "errors": errors})),
            "restart_required": self.restart_required,
            "persist_error": self.persist_error,
        })
    }
}

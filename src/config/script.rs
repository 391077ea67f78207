//! `[script]`: the default route script. Tenant domains name their own in
//! `[domains.<name>] script`. Only names here: the runtime reads and compiles the files.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// `[script]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScriptConfig {
    /// The default route script (relative paths: against the parent of the configuration
    /// directory, like certificates). Absent: the built-in route (answer OPTIONS addressed
    /// to siprox, forward everything else statelessly).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
}

//! Compiling route scripts: every script the configuration names, each error naming the
//! domain, file, line and column. Reads files: runs before the workers start or on a reload
//! thread, never on a worker.

use std::path::Path;

use siprox::config::Config;
use siprox::script::{self, Script};

use crate::state::ScriptSet;

/// Compile every script the configuration names. Every error is returned, each naming
/// the domain (if any), the file, line and column.
pub fn compile_scripts(config: &Config, base: &Path) -> Result<ScriptSet, Vec<String>> {
    let mut set = ScriptSet::default();
    let mut errors = Vec::new();
    if let Some(file) = &config.script.file {
        match compile_file(base, file) {
            Ok(s) => set.default = Some(s),
            Err(e) => errors.push(format!("[script] file: {e}")),
        }
    }
    for (name, d) in &config.domains {
        let Some(file) = &d.script else { continue };
        match compile_file(base, file) {
            Ok(s) => set.add_domain(name, &d.names, s),
            Err(e) => errors.push(format!("domain `{name}`: {e}")),
        }
    }
    if errors.is_empty() {
        Ok(set)
    } else {
        Err(errors)
    }
}

fn compile_file(base: &Path, file: &Path) -> Result<Script, String> {
    let path = siprox::tls::resolve(base, file);
    let src = std::fs::read_to_string(&path)
        .map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
    script::compile(&src, &path.display().to_string()).map_err(|e| e.to_string())
}

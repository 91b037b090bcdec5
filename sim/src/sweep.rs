//! Sweeps: several experiments run one after another and plotted together.
//!
//! `cohort-sim sweep` takes experiment files, sweep files, or both. A sweep file names a base
//! experiment and a grid of values for dotted keys; every combination is one run:
//!
//! ```toml
//! base = "mnist-fedavg-iid.toml"      # relative to the sweep file
//! [set]                                # applied to every run
//! rounds = 30
//! [grid]                               # the cartesian product (keys in sorted order)
//! "strategy" = [{ kind = "fed_avg" }, { kind = "fed_adam", eta = 0.01 }]
//! "data.partition" = [{ kind = "iid" }, { kind = "dirichlet", alpha = 0.1 }]
//! ```

use std::path::{Path, PathBuf};

use toml::Value;

use cohort_task::config::parse_table;

use crate::config::{ConfigError, Experiment};

/// One run of a sweep: a label and its experiment.
#[derive(Clone, Debug, PartialEq)]
pub struct SweepRun {
    /// The label used in plots and as the output folder's name.
    pub label: String,
    /// The experiment.
    pub experiment: Experiment,
}

fn parse_error(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Parse {
        key: key.to_string(),
        message: message.into(),
    }
}

/// Sets `dotted` (e.g. `data.partition`) in `table` to `value`, creating tables on the way.
pub fn set_dotted(table: &mut toml::Table, dotted: &str, value: Value) -> Result<(), ConfigError> {
    let mut parts: Vec<&str> = dotted.split('.').collect();
    let last = parts.pop().unwrap_or(dotted);
    let mut t = table;
    for p in parts {
        let entry = t
            .entry(p.to_string())
            .or_insert_with(|| Value::Table(toml::Table::new()));
        t = entry.as_table_mut().ok_or_else(|| {
            parse_error(
                dotted,
                format!("`{p}` is not a table, so `{dotted}` cannot be set"),
            )
        })?;
    }
    t.insert(last.to_string(), value);
    Ok(())
}

/// A short label for a grid value: `fed_adam`, `dirichlet alpha=0.1`, `0.5`.
fn value_label(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Table(t) => {
            let mut parts = Vec::new();
            if let Some(kind) = t.get("kind") {
                parts.push(value_label(kind));
            }
            for (k, x) in t {
                if k != "kind" {
                    parts.push(format!("{k}={}", value_label(x)));
                }
            }
            parts.join(" ")
        }
        other => other.to_string(),
    }
}

/// Expands a file into runs: a sweep file (with `base`) into its grid, an experiment file into
/// itself (labelled with its name).
pub fn expand(path: &Path) -> Result<Vec<SweepRun>, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let table = parse_table(&text)?;
    let Some(base) = table.get("base") else {
        let experiment = Experiment::from_table(table)?;
        return Ok(vec![SweepRun {
            label: experiment.task.id.clone(),
            experiment,
        }]);
    };
    for key in table.keys() {
        if !["base", "set", "grid"].contains(&key.as_str()) {
            return Err(parse_error(
                key,
                "unknown sweep key; allowed: base, set, grid",
            ));
        }
    }
    let base = base
        .as_str()
        .ok_or_else(|| parse_error("base", "must be the path of an experiment file"))?;
    let base_path: PathBuf = path.parent().unwrap_or(Path::new(".")).join(base);
    let base_text = std::fs::read_to_string(&base_path).map_err(|source| ConfigError::Read {
        path: base_path.clone(),
        source,
    })?;
    let mut base_table = parse_table(&base_text)
        .map_err(|e| parse_error("base", format!("{}: {e}", base_path.display())))?;
    if let Some(set) = table.get("set") {
        let set = set
            .as_table()
            .ok_or_else(|| parse_error("set", "must be a table of dotted keys"))?;
        for (k, v) in set {
            set_dotted(&mut base_table, k, v.clone())?;
        }
    }
    let grid: Vec<(String, Vec<Value>)> = match table.get("grid") {
        None => Vec::new(),
        Some(g) => g
            .as_table()
            .ok_or_else(|| parse_error("grid", "must be a table of dotted key = [values]"))?
            .iter()
            .map(|(k, v)| match v.as_array() {
                Some(a) if !a.is_empty() => Ok((k.clone(), a.clone())),
                _ => Err(parse_error(
                    &format!("grid.{k}"),
                    "must be a non-empty array of values",
                )),
            })
            .collect::<Result<_, _>>()?,
    };
    let combos: usize = grid.iter().map(|(_, v)| v.len()).product();
    let base_id = base_table
        .get("id")
        .and_then(Value::as_str)
        .unwrap_or("experiment")
        .to_string();
    let mut runs = Vec::with_capacity(combos);
    for run in 0..combos {
        let mut i = run;
        let mut t = base_table.clone();
        let mut labels = Vec::new();
        for (k, values) in &grid {
            let v = &values[i % values.len()];
            i /= values.len();
            set_dotted(&mut t, k, v.clone())?;
            labels.push(match v {
                Value::Table(_) | Value::String(_) => value_label(v),
                // A bare number says little on its own: name it (`epochs=5`).
                _ => format!("{}={}", k.rsplit('.').next().unwrap_or(k), value_label(v)),
            });
        }
        let label = if labels.is_empty() {
            base_id.clone()
        } else {
            labels.join(", ")
        };
        // The task id names the run in its summary; the label names it in plots.
        t.insert("id".into(), Value::String(format!("{base_id}-{run:02}")));
        runs.push(SweepRun {
            label,
            experiment: Experiment::from_table(t)?,
        });
    }
    Ok(runs)
}

/// A folder name for a label: letters, digits, `-`, `_` and `.`; others become `_`.
pub fn folder_name(index: usize, label: &str) -> String {
    let clean: String = label
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{index:02}-{clean}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_grid_expands_to_its_cartesian_product() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("base.toml"),
            crate::config::DEFAULT_EXPERIMENT,
        )
        .unwrap();
        let sweep = dir.path().join("sweep.toml");
        std::fs::write(
            &sweep,
            r#"base = "base.toml"
[set]
rounds = 2
[grid]
"strategy" = [{ kind = "fed_avg" }, { kind = "fed_adam", eta = 0.01 }]
"data.partition" = [{ kind = "iid" }, { kind = "dirichlet", alpha = 0.1 }, { kind = "dirichlet", alpha = 1.0 }]
"training.epochs" = [3]
"#,
        )
        .unwrap();
        let runs = expand(&sweep).unwrap();
        assert_eq!(runs.len(), 6);
        assert!(
            runs.iter()
                .all(|r| r.experiment.task.rounds == 2 && r.experiment.task.training.epochs == 3)
        );
        let labels: Vec<&str> = runs.iter().map(|r| r.label.as_str()).collect();
        assert!(
            labels.contains(&"dirichlet alpha=0.1, fed_adam eta=0.01, epochs=3"),
            "{labels:?}"
        );
        assert_eq!(folder_name(3, "fed_avg, iid"), "03-fed_avg__iid");
        std::fs::write(&sweep, "base = \"base.toml\"\nbogus = 1\n").unwrap();
        let err = expand(&sweep).unwrap_err().to_string();
        assert!(
            err.contains("bogus") && err.contains("base, set, grid"),
            "{err}"
        );
    }
}

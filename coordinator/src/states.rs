//! The lifecycle states of tasks, rounds and attempts, as the scheduler and the store see them,
//! and their names in the database (through rusqlite's `ToSql` and `FromSql`, so that a state
//! is never a free-form string in code).

use std::fmt;

use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSql, ToSqlOutput, ValueRef};

/// A task's lifecycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TaskState {
    /// Stored by `task create`, not started.
    Created,
    /// Its loop runs (and is resumed at start-up).
    Running,
    /// Stopped by its owner; kept, not resumed.
    Paused,
    /// Every round is done.
    Finished,
    /// Differential privacy: the next round did not fit the task's budget, so the task ended
    /// before its last round; no later round starts.
    BudgetExhausted,
    /// Stopped by its owner for good: kept with its log and checkpoints, never resumed.
    Stopped,
}

/// An attempt's lifecycle: one SecAgg+ run under its own round id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AttemptState {
    /// It runs now.
    Running,
    /// Its sum was released and published.
    Finished,
    /// It released nothing (below quorum, too few share holders, ...); the round is retried.
    Aborted,
    /// The coordinator stopped while it ran; nothing of it was applied.
    Abandoned,
}

/// A round's record carries the state of its latest attempt.
pub type RoundState = AttemptState;

impl TaskState {
    /// The state's name in the database and in `task list`.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Created => "created",
            TaskState::Running => "running",
            TaskState::Paused => "paused",
            TaskState::Finished => "finished",
            TaskState::BudgetExhausted => "privacy budget exhausted",
            TaskState::Stopped => "stopped",
        }
    }

    const ALL: [TaskState; 6] = [
        TaskState::Created,
        TaskState::Running,
        TaskState::Paused,
        TaskState::Finished,
        TaskState::BudgetExhausted,
        TaskState::Stopped,
    ];
}

impl AttemptState {
    /// The state's name in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            AttemptState::Running => "running",
            AttemptState::Finished => "finished",
            AttemptState::Aborted => "aborted",
            AttemptState::Abandoned => "abandoned",
        }
    }

    const ALL: [AttemptState; 4] = [
        AttemptState::Running,
        AttemptState::Finished,
        AttemptState::Aborted,
        AttemptState::Abandoned,
    ];
}

macro_rules! sql_state {
    ($t:ty) => {
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl ToSql for $t {
            fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
                Ok(ToSqlOutput::from(self.as_str()))
            }
        }

        impl FromSql for $t {
            fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
                let text = value.as_str()?;
                <$t>::ALL
                    .into_iter()
                    .find(|s| s.as_str() == text)
                    .ok_or_else(|| {
                        FromSqlError::Other(
                            format!(
                                "unknown {} {text:?} in the database; it was written by another \
                                 version of the coordinator",
                                stringify!($t)
                            )
                            .into(),
                        )
                    })
            }
        }
    };
}

sql_state!(TaskState);
sql_state!(AttemptState);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_round_trip_through_sqlite_and_unknown_names_are_refused() {
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        for s in TaskState::ALL {
            let back: TaskState = conn.query_row("SELECT ?1", [s], |r| r.get(0)).unwrap();
            assert_eq!(back, s);
        }
        for s in AttemptState::ALL {
            let back: AttemptState = conn.query_row("SELECT ?1", [s], |r| r.get(0)).unwrap();
            assert_eq!(back, s);
        }
        let bad: rusqlite::Result<TaskState> =
            conn.query_row("SELECT 'sleeping'", [], |r| r.get(0));
        assert!(bad.unwrap_err().to_string().contains("sleeping"));
        assert_eq!(AttemptState::Abandoned.to_string(), "abandoned");
    }
}

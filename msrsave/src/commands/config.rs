//! `config show | get`: the configuration in effect, asked of the binary so that scripts and
//! hooks never parse the file themselves.

use anyhow::Result;
use msr_backend::config::{Config, KEYS};
use schemars::JsonSchema;
use serde::Serialize;

use super::Context;
use crate::cli::ConfigCommand;
use crate::output::{line, ExitStatus, Outcome, Report};

pub fn run(ctx: &Context, cmd: &ConfigCommand) -> Result<Outcome> {
    match cmd {
        ConfigCommand::Show => Ok(Outcome::of(ConfigShow {
            file: Config::default_file().map(|p| p.display().to_string()),
            config: ctx.config.clone(),
        })),
        ConfigCommand::Get { key } => {
            let value = ctx.config.get(key).ok_or_else(|| {
                anyhow::anyhow!(
                    "unknown key {key:?} (known: {})",
                    KEYS.iter().map(|k| k.name).collect::<Vec<_>>().join(", ")
                )
            })?;
            Ok(Outcome::of(ConfigGet {
                key: key.clone(),
                value,
            }))
        }
    }
}

/// `config show`: every key in effect.
#[derive(Serialize, JsonSchema)]
pub struct ConfigShow {
    /// The configuration file read, if any (`--config` aside).
    pub file: Option<String>,
    pub config: Config,
}

impl Report for ConfigShow {
    const COMMAND: &'static str = "config show";
    fn status(&self) -> ExitStatus {
        ExitStatus::Ok
    }
    fn text(&self) -> String {
        let mut out = String::new();
        for k in KEYS {
            line(
                &mut out,
                format!(
                    "{} = {}",
                    k.name,
                    self.config.get(k.name).unwrap_or_default()
                ),
            );
        }
        out
    }
    fn shell(&self) -> Vec<(&'static str, String)> {
        KEYS.iter()
            .map(|k| (k.name, self.config.get(k.name).unwrap_or_default()))
            .collect()
    }
}

/// `config get KEY`: one value.
#[derive(Serialize, JsonSchema)]
pub struct ConfigGet {
    pub key: String,
    /// As the configuration file spells it; empty when unset.
    pub value: String,
}

impl Report for ConfigGet {
    const COMMAND: &'static str = "config get";
    fn status(&self) -> ExitStatus {
        ExitStatus::Ok
    }
    fn text(&self) -> String {
        format!("{}\n", self.value)
    }
    fn shell(&self) -> Vec<(&'static str, String)> {
        vec![("value", self.value.clone())]
    }
}

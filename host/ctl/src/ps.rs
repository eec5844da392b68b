//! `husk ps`: the running sandboxes, as an aligned table or JSON.
//!
//! Owns presentation only; the records come from [`husk_state`].

use std::path::Path;
use std::process::ExitCode;

fn age(created: u64) -> String {
    let s = husk_state::epoch_secs().saturating_sub(created);
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m", s / 60),
        _ => format!("{}h", s / 3600),
    }
}

pub fn run(json: bool, config: Option<&Path>) -> anyhow::Result<ExitCode> {
    let config = husk_config::Config::load(config)?;
    let records = husk_state::list(&config.runtime.state_dir);
    if json {
        println!("{}", serde_json::to_string_pretty(&records)?);
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<[String; 9]> = records
        .iter()
        .map(|r| {
            [
                r.id.clone(),
                r.name.clone(),
                r.image.clone(),
                r.command.join(" "),
                age(r.created),
                r.status().to_owned(),
                r.origin.name().to_owned(),
                if r.console { "yes" } else { "no" }.to_owned(),
                r.backend.clone(),
            ]
        })
        .collect();
    print!(
        "{}",
        crate::table::columns(
            &["ID", "NAME", "IMAGE", "COMMAND", "AGE", "STATUS", "FROM", "CONSOLE", "BACK END"],
            &rows
        )
    );
    Ok(ExitCode::SUCCESS)
}

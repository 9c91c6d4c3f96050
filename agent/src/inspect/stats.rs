//! `trunkline-agent inspect ...`: the pinned maps as tables or JSON. Reads
//! the pins directly, so it works while the agent is down.

use std::{fmt::Write as _, path::Path};

use dataplane_common::{Hook, Stats};
use serde_json::{json, Map, Value};

use crate::dataplane::{read_stats, Result, StatsByHook};

/// `inspect stats`: one row per counter, one column per program, plus the total.
pub fn stats(bpf_root: &Path, as_json: bool) -> Result<String> {
    let stats = read_stats(bpf_root)?;
    Ok(if as_json {
        stats_json(&stats).to_string()
    } else {
        stats_table(&stats)
    })
}

pub fn stats_json(stats: &StatsByHook) -> Value {
    let mut out = Map::new();
    let obj = |s: &Stats| -> Value {
        Stats::NAMES
            .iter()
            .zip(s.values())
            .map(|(n, v)| ((*n).to_string(), json!(v)))
            .collect::<Map<_, _>>()
            .into()
    };
    for hook in Hook::ALL {
        out.insert(hook.program_name().to_string(), obj(stats.hook(hook)));
    }
    out.insert("total".to_string(), obj(&stats.total()));
    out.into()
}

pub fn stats_table(stats: &StatsByHook) -> String {
    let total = stats.total();
    let mut cols: Vec<(&str, [u64; Stats::NAMES.len()])> = Hook::ALL
        .iter()
        .map(|h| (h.program_name(), stats.hook(*h).values()))
        .collect();
    cols.push(("total", total.values()));
    let name_w = Stats::NAMES.iter().map(|n| n.len()).max().unwrap_or(0);
    let mut out = String::new();
    let _ = write!(out, "{:<name_w$}", "COUNTER");
    for (name, _) in &cols {
        let _ = write!(out, " {:>12}", name.to_uppercase());
    }
    out.push('\n');
    for (i, name) in Stats::NAMES.iter().enumerate() {
        let _ = write!(out, "{name:<name_w$}");
        for (_, values) in &cols {
            let _ = write!(out, " {:>12}", values[i]);
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_has_a_row_per_counter_and_sums_hooks() {
        let mut s = StatsByHook::default();
        s.per_hook[Hook::FromPod as usize].tcp = 5;
        s.per_hook[Hook::ToEni as usize].tcp = 2;
        let t = stats_table(&s);
        assert_eq!(t.lines().count(), Stats::NAMES.len() + 1);
        let tcp = t.lines().find(|l| l.starts_with("tcp ")).unwrap();
        let cells: Vec<&str> = tcp.split_whitespace().collect();
        assert_eq!(cells, ["tcp", "5", "2", "0", "0", "7"]);
        let j = stats_json(&s);
        assert_eq!(j["total"]["tcp"], 7);
        assert_eq!(j["to_eni"]["tcp"], 2);
    }
}

//! `imgforge logs`: the app's output (every version, across deploys and reboots), nginx's
//! access and error logs, and the VM program's own steps, merged in time order; with
//! `--follow`, new lines as they come.

use std::io::Write;

use anyhow::{Context, Result};

use crate::contract::logs::{LogLine, LogsRequest, Source};
use crate::remote::Host;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub host: Host,
    /// Go on printing new lines as they come (Ctrl-C ends it)
    #[arg(long, short = 'f')]
    pub follow: bool,
    /// Only lines from the last DURATION (90s, 10m, 2h, 7d, 1h30m) [default: the last 200 lines]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub since: Option<u64>,
    /// At most the N newest lines
    #[arg(long, short = 'n', value_name = "N", value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub lines: Option<u32>,
    /// Where from (repeat or separate with commas) [default: all]
    #[arg(long, value_enum, value_delimiter = ',', value_name = "SOURCE")]
    pub source: Vec<Source>,
    /// One JSON object a line (guest/schema/log-line.schema.json)
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: Args) -> Result<()> {
    args.host.update_program()?;
    let request = LogsRequest {
        sources: args.source.clone(),
        since: args.since,
        lines: args.lines,
        follow: args.follow,
    };
    let stdout = std::io::stdout();
    let result = args.host.stream(
        &["logs"],
        |stdin| crate::remote::send(stdin, &request, None),
        |text| {
            let line: LogLine = serde_json::from_str(text)
                .with_context(|| format!("the VM sent a line that is not a log line: {text:?}"))?;
            let mut out = stdout.lock();
            if args.json {
                writeln!(out, "{}", serde_json::to_string(&line)?)?;
            } else {
                writeln!(out, "{}", human(&line))?;
            }
            Ok(out.flush()?)
        },
    );
    match result {
        // The reader went away (`imgforge logs | head`): that is the end, not an error.
        Err(e) if is_broken_pipe(&e) => Ok(()),
        other => other,
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// A line as a person reads it: time, source, the app's version, the text.
pub fn human(line: &LogLine) -> String {
    let source = serde_json::to_value(line.source)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    let who = match (&line.version, &line.slot) {
        (Some(v), _) => v.clone(),
        (None, Some(slot)) => slot.clone(),
        _ => String::new(),
    };
    let text: String = line
        .message
        .chars()
        .map(|c| if c.is_control() && c != '\t' { ' ' } else { c })
        .collect();
    format!("{} {source:<6} {who:<8} {text}", line.time)
        .trim_end()
        .to_owned()
}

/// `90s`, `10m`, `2h`, `7d`, `1h30m`: seconds.
pub fn parse_duration(text: &str) -> Result<u64, String> {
    let bad = || format!("{text:?} is not a duration: write it as 90s, 10m, 2h, 7d or 1h30m");
    let mut total: u64 = 0;
    let mut number = String::new();
    for c in text.chars() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            _ => return Err(bad()),
        };
        let n: u64 = number.parse().map_err(|_| bad())?;
        total = n
            .checked_mul(unit)
            .and_then(|s| total.checked_add(s))
            .ok_or_else(bad)?;
        number.clear();
    }
    if !number.is_empty() || total == 0 {
        return Err(bad());
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_and_nonsense_is_refused() {
        assert_eq!(parse_duration("90s"), Ok(90));
        assert_eq!(parse_duration("10m"), Ok(600));
        assert_eq!(parse_duration("1h30m"), Ok(5400));
        assert_eq!(parse_duration("7d"), Ok(604_800));
        for bad in [
            "",
            "10",
            "m",
            "10x",
            "-5m",
            "0s",
            "99999999999999999999d",
            "1.5h",
        ] {
            let err = parse_duration(bad).unwrap_err();
            assert!(err.contains("90s, 10m"), "{bad}: {err}");
        }
    }

    #[test]
    fn a_line_reads_with_its_version_and_no_control_characters() {
        let line: LogLine = serde_json::from_str(
            r#"{"time":"2026-12-06T21:04:36.123Z","source":"app","slot":"green","version":"0.2.0","message":"a\u001b[31mred\rline"}"#,
        )
        .unwrap();
        assert_eq!(
            human(&line),
            "2026-12-06T21:04:36.123Z app    0.2.0    a [31mred line"
        );
        let proxy: LogLine = serde_json::from_str(
            r#"{"time":"2026-12-06T21:04:36.123Z","source":"proxy","message":"GET / 200 0.001 s","request":{"remote":"10.0.2.2","method":"GET","uri":"/","status":200,"bytes":3,"request_time":0.001,"upstream_time":null}}"#,
        )
        .unwrap();
        assert_eq!(
            human(&proxy),
            "2026-12-06T21:04:36.123Z proxy           GET / 200 0.001 s"
        );
    }
}

//! The lamp's channel programs as its firmware reads them (the public SKABEN lamp firmware,
//! `skaben/simple_alarm_light`: `manage_rgb` and `manage_discr`), shared by the preset's and the
//! guide's tests so that no program either of them shows is one the lamp would ignore.
//!
//! Invariant: [`program`] accepts only what the firmware runs as meant: `RGB` in steps of
//! `RRGGBB/static/fade`, `LGT` and `STR` in steps of `0|1/static`, then `C` (loop) or `S` (once);
//! a static time above 0 ms (or a random range `a-b`, 0 < a ≤ b).

/// One step of a program: the value (a colour or 0/1) and the static time, ms (the lower bound
/// of a `a-b` range).
#[derive(Debug, Clone, PartialEq)]
#[allow(dead_code, reason = "not every test reads every field of a step")]
pub struct Step {
    pub value: String,
    pub ms: u64,
}

/// A static time: `ms` (> 0: the firmware does not allow 0) or a random range `a-b`, 0 < a ≤ b.
fn static_ms(s: &str) -> Result<u64, String> {
    let (lo, hi) = s.split_once('-').unwrap_or((s, s));
    let lo: u64 = lo
        .parse()
        .map_err(|_| format!("static time {s:?} is not ms"))?;
    let hi: u64 = hi
        .parse()
        .map_err(|_| format!("static time {s:?} is not ms"))?;
    if lo == 0 || hi < lo {
        return Err(format!(
            "static time {s:?} must be > 0 (a range a-b with a ≤ b)"
        ));
    }
    Ok(lo)
}

/// Checks a channel program as the lamp firmware reads it: `RGB` is steps of `RRGGBB/static/fade`, `LGT` and `STR` are steps of
/// `0|1/static`; then `C` (loop) or `S` (once).
pub fn program(channel: &str, text: &str) -> Result<Vec<Step>, String> {
    let parts: Vec<&str> = text.split('/').collect();
    let (mode, body) = parts.split_last().ok_or("empty program")?;
    if *mode != "C" && *mode != "S" {
        return Err(format!("{text:?} must end in /C or /S"));
    }
    let width = match channel {
        "RGB" => 3,
        "LGT" | "STR" => 2,
        other => return Err(format!("unknown channel {other}")),
    };
    if body.is_empty() || body.len() % width != 0 {
        return Err(format!("{text:?}: {channel} takes steps of {width} parts"));
    }
    body.chunks(width)
        .map(|step| {
            let value = step[0];
            let ok = if width == 3 {
                value.len() == 6 && value.chars().all(|c| c.is_ascii_hexdigit())
            } else {
                value == "0" || value == "1"
            };
            if !ok {
                return Err(format!("{text:?}: bad {channel} value {value:?}"));
            }
            let ms = static_ms(step[1])?;
            if width == 3 {
                step[2]
                    .parse::<u64>()
                    .map_err(|_| format!("{text:?}: fade {:?} is not ms", step[2]))?;
            }
            Ok(Step {
                value: value.to_string(),
                ms,
            })
        })
        .collect()
}

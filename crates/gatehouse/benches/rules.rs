//! The game layer's costs, through the library's public API only (docs/benchmarks.md, "The
//! game layer"):
//!
//! - `match/…`: one rule's conditions (`lock-failure-adds` of the SKABEN preset) for one lock
//!   INFO — the view alone, the condition tests alone, and whole `State::fire` calls of a rule
//!   file holding only that rule (rejected at its first or at its last test; accepted, with
//!   its action);
//! - `expr/…`: the `expr` of `lock-new-card-at-white` through `ExprEngine::eval_bool`, and
//!   whole `State::fire` calls of a rule file holding only that rule;
//! - `engine/…`: a stream of 100 realistic triggers (`Trigger::from_parts` + `State::fire`,
//!   one `Effects` per trigger as the live engine makes) on one state, with the preset's rules
//!   and with 200 generated rules: events/s.
//!
//! Run: `cargo bench -p gatehouse --bench rules -- --warm-up-time 1 --measurement-time 3`.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use gatehouse::core::event::DEVICE;
use gatehouse::core::game::engine::Trigger;
use gatehouse::core::game::expr::ExprInput;
use gatehouse::core::game::matcher::{self, Step};
use gatehouse::core::game::{RuleFile, RuleSet};
use gatehouse::core::skaben::TypeKind;
use gatehouse::core::{
    Command, CoreConfig, Effects, SkabenRegister, State, TypeUpdate, UnknownPolicy,
};
use serde_json::{Value, json};
use skaben::ClientProfile;

const PRESET: &str = include_str!("../../../presets/skaben.toml");

/// The state's clock at the start (Unix ms).
const T0: i64 = 1_764_590_400_000;
/// Virtual time between two triggers of a stream (ms): 20 events/s, so that no rule of the
/// stream exceeds its firing rate (20/s) and gets paused (a cheaper path than a venue's).
const STEP_MS: i64 = 50;

const LOCKS: usize = 20;
const TERMINALS: usize = 6;

fn lock(i: usize) -> String {
    format!("lock/b827eb0a{i:04x}")
}

fn terminal(i: usize) -> String {
    format!("terminal/b827eb0b{i:04x}")
}

/// The server's defaults (`gatehouse serve` with no flags).
fn core_config() -> CoreConfig {
    CoreConfig {
        unknown_devices: UnknownPolicy::Register,
        presence_timeout_ms: 120_000,
        code_length: 6,
        ping_interval_ms: 10_000,
        skaben_keepalive_ms: 60_000,
        acon_pin_peers: false,
        acon_max_new_boards_per_min: 60,
        acon_max_messages_per_sec: 20.0,
        skaben_max_packets_per_sec: 50.0,
        skaben_max_payload_bytes: 8192,
        timezone: None,
    }
}

/// A state with the server's seeded device types (created through `PutType`, the change behind
/// `PUT /api/types/{type}`: the seeding itself, `State::load_types`, is not public) and a
/// venue's devices registered: 20 locks, 6 terminals, 2 power shields, 6 lamps, a scale, 2 boxes.
fn venue() -> State {
    let mut st = State::new(core_config(), T0);
    let mut fx = Effects::new(T0);
    let types = [
        ("lock", TypeKind::Smart, ClientProfile::Reference),
        ("terminal", TypeKind::Smart, ClientProfile::Reference),
        ("rgb", TypeKind::Dumb, ClientProfile::Standard),
        ("pwr", TypeKind::Dumb, ClientProfile::Standard),
        ("scl", TypeKind::Dumb, ClientProfile::Standard),
        ("box", TypeKind::Dumb, ClientProfile::Standard),
    ];
    for (name, kind, profile) in types {
        let update = TypeUpdate {
            kind: Some(kind),
            active: Some(true),
            profile: Some(profile),
            config: Some(json!({})),
            ..TypeUpdate::default()
        };
        st.execute(
            Command::PutType {
                name: name.into(),
                update,
            },
            "bench",
            &mut fx,
        )
        .expect("type");
    }
    let mut devices: Vec<String> = (0..LOCKS).map(lock).collect();
    devices.extend((0..TERMINALS).map(terminal));
    devices.extend((0..2).map(|i| format!("pwr/b827eb0c{i:04x}")));
    devices.extend((0..6).map(|i| format!("rgb/b827eb0d{i:04x}")));
    devices.push("scl/b827eb0e0000".into());
    devices.extend((0..2).map(|i| format!("box/b827eb0f{i:04x}")));
    for key in devices {
        let (ty, id) = key.split_once('/').unwrap();
        st.execute(
            Command::RegisterProp {
                ty: ty.into(),
                id: id.into(),
                req: SkabenRegister::default(),
            },
            "bench",
            &mut fx,
        )
        .expect("device");
    }
    st
}

/// `venue()` with `file` imported and the level set by an operator (which pushes every type).
fn with_rules(file: RuleFile, level: &str) -> (State, Arc<RuleSet>) {
    let mut st = venue();
    let mut fx = Effects::new(T0);
    let rules = st
        .game_import(&mut fx, file, "bench")
        .unwrap_or_else(|e| panic!("rule file refused: {e:?}"));
    st.game_set_level(&mut fx, level, None, true, "bench")
        .expect("level");
    (st, rules)
}

fn preset() -> RuleFile {
    RuleFile::from_toml(PRESET).expect("preset")
}

/// The preset with only the rule `name` in it.
fn preset_only(name: &str) -> RuleFile {
    let mut f = preset();
    f.rules.retain(|r| r.name == name);
    assert_eq!(f.rules.len(), 1, "no rule {name} in the preset");
    f
}

fn info(device: &str, datahold: Value, at: i64) -> Trigger {
    Trigger::from_parts(
        "info",
        Some(device),
        DEVICE,
        at,
        json!({ "datahold": datahold }),
        0,
    )
    .expect("trigger")
}

fn access(code: &str, success: bool) -> Value {
    json!({"type": "access", "content": code, "success": success})
}

/// The access codes the preset's `codes` holds for lock 0 (what the engine hands the
/// expression: `codes_for` is not public).
fn codes(file: &RuleFile, device: &str) -> Vec<String> {
    file.access
        .iter()
        .filter(|c| c.locks.is_empty() || c.locks.iter().any(|l| l == device))
        .map(|c| c.code.clone())
        .collect()
}

fn bench_match(c: &mut Criterion) {
    let mut g = c.benchmark_group("match");
    let dev = lock(0);

    // The view every evaluation builds (the trigger event, the device with its effective
    // config and reported values, the game state): `State::view`, as `fire` calls it.
    let (st, rules) = with_rules(preset_only("lock-failure-adds"), "green");
    let t = info(&dev, access("999999", false), T0);
    g.bench_function("view (State::view, lock INFO)", |b| {
        b.iter(|| black_box(st.view(black_box(&t.event), t.device.as_deref())))
    });

    // The condition tests alone on a built view, as the engine's loop does them (lookup, test,
    // the trace's Step): all three of lock-failure-adds, all passing (green, success false).
    let view = st.view(&t.event, t.device.as_deref());
    let rule = &rules.rules[0];
    g.bench_function("conditions only (lock-failure-adds, 3 tests)", |b| {
        b.iter(|| {
            let mut steps = Vec::new();
            for (key, cond) in &rule.def.match_.0 {
                let value = matcher::lookup(black_box(&view), key);
                let passed = matcher::test(value, cond, &rules);
                steps.push(Step {
                    key: key.clone(),
                    value: value.cloned().unwrap_or(Value::Null),
                    test: matcher::written(cond),
                    passed,
                });
                if !passed {
                    break;
                }
            }
            black_box(steps)
        })
    });

    // Whole `fire` calls with only this rule loaded. Rejected: nothing changes, so the same
    // state and Effects serve every iteration.
    let mut fx = Effects::new(T0);
    let (mut green, _) = with_rules(preset_only("lock-failure-adds"), "green");
    let ok = info(&dev, access("424242", true), T0);
    g.bench_function("fire lock-failure-adds: rejected at its 1st test", |b| {
        b.iter(|| black_box(green.fire(&mut fx, black_box(&ok))))
    });
    let (mut white, _) = with_rules(preset_only("lock-failure-adds"), "white");
    let failed = info(&dev, access("999999", false), T0);
    g.bench_function("fire lock-failure-adds: rejected at its 3rd test", |b| {
        b.iter(|| black_box(white.fire(&mut fx, black_box(&failed))))
    });
    // Accepted: the counter action runs (an event, the game state row); each iteration on a
    // fresh copy of the state (the copy is not timed).
    g.bench_function("fire lock-failure-adds: accepted, counter add", |b| {
        b.iter_batched_ref(
            || (green.clone(), Effects::new(T0)),
            |(s, fx)| s.fire(fx, &failed),
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

fn bench_expr(c: &mut Criterion) {
    let mut g = c.benchmark_group("expr");
    let dev = lock(0);
    let name = "lock-new-card-at-white";
    let (mut st, rules) = with_rules(preset_only(name), "white");
    let expr = rules.rules[0].expr.clone().expect("the rule has an expr");
    let codes = codes(&rules.file, &dev);
    let empty = serde_json::Map::new();

    for (label, code, want) in [
        ("unknown code: true", "123456", true),
        ("known code: false", "100001", false),
    ] {
        let t = info(&dev, access(code, false), T0);
        let view = st.view(&t.event, t.device.as_deref());
        let input = ExprInput {
            event: &view["event"],
            device: &view["device"],
            level: "white",
            level_id: 1,
            counter: -1,
            ingame: false,
            run: "none",
            var: &empty,
            codes: &codes,
        };
        assert_eq!(rules.exprs.eval_bool(&expr, &input), Ok(want));
        g.bench_function(format!("eval_bool {name}: {label}"), |b| {
            b.iter(|| black_box(rules.exprs.eval_bool(&expr, black_box(&input))))
        });
    }

    // The whole rule: its `type` and `level` tests, then the expression.
    let mut fx = Effects::new(T0);
    let known = info(&dev, access("100001", false), T0);
    g.bench_function(format!("fire {name}: known code, expr false"), |b| {
        b.iter(|| black_box(st.fire(&mut fx, black_box(&known))))
    });
    let new = info(&dev, access("123456", false), T0);
    g.bench_function(format!("fire {name}: new code, expr true, add_code"), |b| {
        b.iter_batched_ref(
            || (st.clone(), Effects::new(T0)),
            |(s, fx)| s.fire(fx, &new),
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

/// One trigger of a stream, as a stored event row: kind, device, data.
struct Row {
    kind: &'static str,
    device: Option<String>,
    data: Value,
}

/// 100 triggers of a venue in play, in a shuffled but fixed order: 40 lock access attempts
/// (a fifth wrong), 5 other lock INFOs, 10 terminal hack INFOs, 15 terminal SUPs (one a lost
/// hack), 10 power shield INFOs, 5 lamp INFOs, 10 online/offline, 5 counter changes.
fn stream() -> Vec<Row> {
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut next = move |n: usize| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        (rng % n as u64) as usize
    };
    let codes = [
        "100001", "424242", "737373", "500003", "500017", "555555", "123123", "987654",
    ];
    let mut rows = Vec::new();
    let info = |device: String, datahold: Value| Row {
        kind: "info",
        device: Some(device),
        data: json!({ "datahold": datahold }),
    };
    for i in 0..40 {
        let code = codes[next(codes.len())];
        rows.push(info(lock(next(LOCKS)), access(code, i % 5 != 0)));
    }
    for _ in 0..5 {
        rows.push(info(
            lock(next(LOCKS)),
            json!({"type": "door", "content": "closed"}),
        ));
    }
    for i in 0..10 {
        rows.push(info(
            terminal(next(TERMINALS)),
            json!({"type": "hack", "success": i % 3 != 0}),
        ));
    }
    for i in 0..15 {
        rows.push(Row {
            kind: "config_changed",
            device: Some(terminal(next(TERMINALS))),
            data: json!({"old_version": 3, "new_version": 4, "hash": "0f3a9c", "via": "sup",
                         "keys": {"blocked": i == 7, "powered": true, "menu": "main"}}),
        });
    }
    for i in 0..10 {
        let ps = if i == 4 { "{AUX}" } else { "PWR" };
        rows.push(info(
            format!("pwr/b827eb0c{:04x}", i % 2),
            json!({"powerstate": ps}),
        ));
    }
    for _ in 0..5 {
        rows.push(info(
            format!("rgb/b827eb0d{:04x}", next(6)),
            json!({"RGB": "00FF00/1000/0/C"}),
        ));
    }
    for i in 0..10 {
        let kind = if i % 2 == 0 { "online" } else { "offline" };
        rows.push(Row {
            kind,
            device: Some(lock(next(LOCKS))),
            data: json!({"reason": "packet"}),
        });
    }
    for i in 0..5 {
        rows.push(Row {
            kind: "state_changed",
            device: None,
            data: json!({"name": "counter", "from": 1000 + 25 * i, "to": 1025 + 25 * i,
                         "reason": "failed lock attempt"}),
        });
    }
    for i in (1..rows.len()).rev() {
        rows.swap(i, next(i + 1));
    }
    rows
}

/// 200 rules on the preset's levels, types and access list, most on the stream's kinds with
/// conditions that rarely hold (one code, one device, a level not in play): 80 on lock INFOs,
/// 30 on terminal INFOs, 20 on shield INFOs, 30 on SUPs, 10 on lock online/offline, 20 on state
/// changes, 10 with an expression. What matches only logs.
fn generated() -> RuleFile {
    let mut t = String::from("version = 1\n");
    let mut rule = |name: String, when: &str, cond: String| {
        t.push_str(&format!(
            "[[rules]]\nname = \"{name}\"\nwhen = {when}\nif = {{ {cond} }}\nthen = [{{ log = \"{name}: {{device}} {{event.kind}}\" }}]\n"
        ));
    };
    for i in 0..80 {
        rule(
            format!("lock-code-{i}"),
            r#"{ event = "info", type = "lock" }"#,
            format!(
                r#""event.datahold.type" = "access", "event.datahold.content" = "{}""#,
                500_000 + i
            ),
        );
    }
    for i in 0..30 {
        rule(
            format!("terminal-hack-{i}"),
            r#"{ event = "info", type = "terminal" }"#,
            format!(
                r#""event.datahold.type" = "hack", "event.datahold.target" = "node-{i}", ingame = true"#
            ),
        );
    }
    for i in 0..20 {
        rule(
            format!("shield-{i}"),
            r#"{ event = "info", type = "pwr" }"#,
            format!(
                r#""event.datahold.powerstate" = {{ eq = "aux", normalize = true }}, level = "{}""#,
                ["blue", "cyan", "black", "white"][i % 4]
            ),
        );
    }
    for i in 0..30 {
        let (ty, dev) = if i % 3 == 0 {
            ("lock", lock(i % LOCKS))
        } else {
            ("terminal", terminal(i % TERMINALS))
        };
        rule(
            format!("sup-{i}"),
            &format!(r#"{{ event = "sup", type = "{ty}" }}"#),
            format!(
                r#""event.datahold.blocked" = true, device = "{dev}", counter = {{ min = {} }}"#,
                2_000_000 + i
            ),
        );
    }
    for i in 0..10 {
        let kind = if i % 2 == 0 { "online" } else { "offline" };
        rule(
            format!("presence-{i}"),
            &format!(r#"{{ event = "{kind}", type = "lock" }}"#),
            format!(r#"device = "{}", level = "black""#, lock(i)),
        );
    }
    for i in 0..20 {
        let (when, cond) = if i % 2 == 0 {
            (
                r#"{ state = "counter" }"#,
                format!(r#""event.to" = {{ min = {} }}"#, 1_000_000 + 1000 * i),
            )
        } else {
            (
                r#"{ state = "level" }"#,
                format!(
                    r#""event.to" = "{}""#,
                    ["black", "white", "blue", "cyan", "yellow"][i / 2 % 5]
                ),
            )
        };
        rule(format!("state-{i}"), when, cond);
    }
    for i in 0..10 {
        rule(
            format!("lock-expr-{i}"),
            r#"{ event = "info", type = "lock" }"#,
            format!(
                r#""event.datahold.type" = "access", expr = "is_digits(event.datahold.content, 6) && event.datahold.content == \"9{i:05}\" && !(event.datahold.content in codes)""#
            ),
        );
    }
    let extra = RuleFile::from_toml(&t).expect("generated rules");
    let mut f = preset();
    f.rules = extra.rules;
    f
}

fn bench_engine(c: &mut Criterion) {
    let rows = stream();
    let mut g = c.benchmark_group("engine");
    g.throughput(Throughput::Elements(rows.len() as u64));
    let sets = [
        ("preset (13 rules, 7 enabled)", preset()),
        ("200 rules", generated()),
    ];
    for (label, file) in sets {
        let (mut st, rules) = with_rules(file, "green");
        assert!(label.starts_with("preset") || rules.rules.len() == 200);
        let mut now = T0;
        let pass = |st: &mut State, now: &mut i64, count: bool| {
            let (mut traces, mut matched, mut skipped) = (0, 0, 0);
            for r in &rows {
                *now += STEP_MS;
                let t = Trigger::from_parts(
                    r.kind,
                    r.device.as_deref(),
                    DEVICE,
                    *now,
                    r.data.clone(),
                    0,
                )
                .expect("trigger");
                let mut fx = Effects::new(*now);
                let fired = st.fire(&mut fx, &t);
                if count {
                    traces += fired.traces.len();
                    matched += fired.traces.iter().filter(|t| t.matched).count();
                    skipped += fired.traces.iter().filter(|t| t.skipped.is_some()).count();
                }
                black_box((fired, fx));
            }
            (traces, matched, skipped)
        };
        // The mix, once (to stderr): rules evaluated, matched, skipped per pass of the stream.
        for _ in 0..3 {
            pass(&mut st, &mut now, false);
        }
        let (traces, matched, skipped) = pass(&mut st, &mut now, true);
        eprintln!(
            "engine/{label}: per pass of {} triggers: {traces} rule evaluations, {matched} matched, {skipped} skipped; level {}",
            rows.len(),
            st.game_snapshot(now).level
        );
        g.bench_function(label, |b| b.iter(|| pass(&mut st, &mut now, false)));
    }
    g.finish();
}

criterion_group!(benches, bench_match, bench_expr, bench_engine);
criterion_main!(benches);

//! A rule file checked as a whole and compiled into a [`RuleSet`].
//!
//! Everything a rule names is resolved here, when the file is saved, not when the rule runs:
//! levels, variables, device types, webhooks, event kinds, condition paths, template
//! placeholders, cron lines, and expressions (compiled, with the position of an error). An
//! error names the rule (if any), the field and the reason.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;

use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::def::{
    Action, Amount, Cond, FORMAT_VERSION, LevelDef, Rule, RuleFile, Trigger, VarType,
};
use super::expr::{Expr, ExprEngine};
use super::matcher::ROOTS;
use super::schedule::Schedule;
use super::template;

/// Event kinds a rule may listen to (`when = { event = "…" }`): device events of both
/// protocols, as the core records them (`sup` is a SUP's keys, recorded as a config change).
pub const TRIGGER_KINDS: &[&str] = &[
    // both protocols
    "registered",
    "online",
    "offline",
    "malformed",
    "rejected",
    // SKABEN
    "info",
    "sup",
    "cup",
    "config_changed",
    "config_confirmed",
    "push_failed",
    "sup_rejected",
    // ACon
    "rebooted",
    "reset_done",
    "cell_opened",
    "assignment_ended",
    "cell_timed_out",
    "short_circuit",
    "wrong_code",
    "lock_connected",
    "lock_disconnected",
    "matrix_changed",
    "assignment_expired",
    "cell_engaged",
    "cell_released",
    "blocked",
    "unblocked",
    "id_conflict",
];

/// What a run trigger may name.
pub const RUN_TRIGGERS: &[&str] = &["start", "pause", "resume", "end"];

/// Longest rule, level, variable, timer or webhook name.
const NAME_MAX: usize = 64;
/// Rules in one file at most.
pub const RULES_MAX: usize = 2000;
/// Longest delay or timer: a week.
const SECS_MAX: u64 = 7 * 24 * 3600;

/// Why a rule file (or one rule) was refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RuleError {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    pub field: String,
    pub reason: String,
}

impl fmt::Display for RuleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.rule {
            Some(r) => write!(f, "rule {r:?}: {}: {}", self.field, self.reason),
            None => write!(f, "{}: {}", self.field, self.reason),
        }
    }
}

/// A rule, ready to run.
#[derive(Clone)]
pub struct CompiledRule {
    pub def: Rule,
    /// The index key of its trigger (`event:info`, `state:level`, `timer:x`, `run:start`,
    /// `schedule`).
    pub key: String,
    pub expr: Option<Expr>,
    /// Firings per second before it is paused.
    pub rate: u32,
}

/// A checked rule file: the definitions, the rules indexed by trigger, the expressions
/// compiled. Shared (`Arc`) by the state and its dry-run copies.
pub struct RuleSet {
    pub file: RuleFile,
    /// The file as the server writes it (export), and a short hash of it.
    pub text: String,
    pub hash: String,
    levels: HashMap<String, usize>,
    pub rules: Vec<CompiledRule>,
    index: HashMap<String, Vec<usize>>,
    /// Rules with a schedule trigger, with the parsed line.
    pub schedules: Vec<(usize, Schedule)>,
    pub exprs: ExprEngine,
}

struct Check<'a> {
    errors: Vec<RuleError>,
    rule: Option<String>,
    levels: HashSet<&'a str>,
    vars: HashMap<&'a str, VarType>,
    types: HashSet<String>,
    /// No list of the server's types was given: any type name is accepted.
    any_type: bool,
    webhooks: HashSet<&'a str>,
}

impl Check<'_> {
    fn err(&mut self, field: impl Into<String>, reason: impl Into<String>) {
        if self.errors.len() < 50 {
            self.errors.push(RuleError {
                rule: self.rule.clone(),
                field: field.into(),
                reason: reason.into(),
            });
        }
    }

    fn level(&mut self, field: &str, name: &str) {
        if !self.levels.contains(name) {
            let known: Vec<&str> = {
                let mut v: Vec<&str> = self.levels.iter().copied().collect();
                v.sort_unstable();
                v
            };
            self.err(
                field,
                format!("unknown level {name:?} (levels: {})", known.join(", ")),
            );
        }
    }

    fn name(&mut self, field: &str, name: &str) {
        if name.is_empty()
            || name.len() > NAME_MAX
            || !name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
        {
            self.err(
                field,
                format!("{name:?}: a name is 1 to {NAME_MAX} of a-z, 0-9, '_' and '-'"),
            );
        }
    }

    /// A path a condition or a template reads.
    fn path(&mut self, field: &str, path: &str, extra_roots: &[&str]) {
        let root = path.split('.').next().unwrap_or("");
        if !ROOTS.contains(&root) && !extra_roots.contains(&root) {
            self.err(
                field,
                format!(
                    "{path:?}: unknown name {root:?} (known: {}{})",
                    ROOTS.join(", "),
                    if extra_roots.is_empty() {
                        String::new()
                    } else {
                        format!(", {}", extra_roots.join(", "))
                    }
                ),
            );
            return;
        }
        if root == "var" {
            match path.split('.').nth(1) {
                Some(v) if self.vars.contains_key(v) => {}
                Some(v) => self.err(field, format!("unknown variable {v:?}")),
                None => {}
            }
        }
    }

    fn template(&mut self, field: &str, t: &Value, extra_roots: &[&str]) {
        match template::paths(t) {
            Ok(paths) => {
                for p in paths {
                    self.path(field, &p, extra_roots);
                }
            }
            Err(e) => self.err(field, e),
        }
    }

    fn device_type(&mut self, field: &str, ty: &str) {
        if ty != "acon" && !self.any_type && !self.types.contains(ty) {
            let mut known: Vec<&str> = self.types.iter().map(String::as_str).collect();
            known.sort_unstable();
            self.err(
                field,
                format!(
                    "unknown device type {ty:?} (types: acon, {})",
                    known.join(", ")
                ),
            );
        }
    }

    fn device(&mut self, field: &str, key: &str) {
        match key.split_once('/') {
            Some((ty, id)) if !id.is_empty() && !id.contains('/') => self.device_type(field, ty),
            _ => self.err(
                field,
                format!("{key:?}: a device is <type>/<id> (acon/1953, lock/b827eb0a1b2c)"),
            ),
        }
    }

    fn secs(&mut self, field: &str, secs: u64) {
        if secs == 0 || secs > SECS_MAX {
            self.err(field, format!("{secs}: must be 1 to {SECS_MAX} seconds"));
        }
    }
}

fn hash(text: &str) -> String {
    let d = Sha256::digest(text.as_bytes());
    d.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

fn value_type_ok(ty: VarType, v: &Value) -> bool {
    matches!(
        (ty, v),
        (VarType::Int, Value::Number(n)) if n.is_i64()
    ) || matches!(
        (ty, v),
        (VarType::String, Value::String(_)) | (VarType::Bool, Value::Bool(_))
    )
}

impl RuleSet {
    /// The rule set of a server that was never given a file: no levels, no rules.
    pub fn empty() -> RuleSet {
        let file = RuleFile {
            version: FORMAT_VERSION,
            game: Default::default(),
            levels: Vec::new(),
            variables: Vec::new(),
            types: BTreeMap::new(),
            access: Vec::new(),
            webhooks: BTreeMap::new(),
            rules: Vec::new(),
        };
        let text = file.to_toml().unwrap_or_default();
        RuleSet {
            hash: hash(&text),
            text,
            file,
            levels: HashMap::new(),
            rules: Vec::new(),
            index: HashMap::new(),
            schedules: Vec::new(),
            exprs: ExprEngine::new(),
        }
    }

    /// Checks `file` as a whole against the device types the server has (`acon` always
    /// counts; an empty list skips the type check, for a file read back from the store) and
    /// compiles it. Every error found, up to 50.
    pub fn compile(file: RuleFile, known_types: &[&str]) -> Result<RuleSet, Vec<RuleError>> {
        let mut c = Check {
            errors: Vec::new(),
            rule: None,
            levels: file.levels.iter().map(|l| l.name.as_str()).collect(),
            vars: file
                .variables
                .iter()
                .map(|v| (v.name.as_str(), v.ty))
                .collect(),
            types: known_types.iter().map(|s| s.to_string()).collect(),
            any_type: known_types.is_empty(),
            webhooks: file.webhooks.keys().map(String::as_str).collect(),
        };
        if file.version != FORMAT_VERSION {
            c.err(
                "version",
                format!(
                    "{}: this server reads rule files of version {FORMAT_VERSION}",
                    file.version
                ),
            );
        }
        // Levels.
        let mut names = HashSet::new();
        let mut ids = HashSet::new();
        for (i, l) in file.levels.iter().enumerate() {
            let f = format!("levels[{i}]");
            c.name(&format!("{f}.name"), &l.name);
            if !names.insert(l.name.as_str()) {
                c.err(
                    format!("{f}.name"),
                    format!("level {:?} is defined twice", l.name),
                );
            }
            if !ids.insert(l.id) {
                c.err(
                    format!("{f}.id"),
                    format!("id {} is used by two levels", l.id),
                );
            }
            if let Some(d) = &l.drift
                && (d.every_secs == 0 || d.by == 0)
            {
                c.err(
                    format!("{f}.drift"),
                    "every_secs and by must not be 0 (leave drift out to turn it off)",
                );
            }
        }
        let ingame: Vec<&LevelDef> = file.levels.iter().filter(|l| l.ingame).collect();
        for w in ingame.windows(2) {
            if w[1].threshold <= w[0].threshold {
                c.err(
                    "levels",
                    format!(
                        "ingame levels must have growing thresholds in play order: {} ({}) then {} ({})",
                        w[0].name, w[0].threshold, w[1].name, w[1].threshold
                    ),
                );
            }
        }
        if let Some(l) = &file.game.initial_level {
            c.level("game.initial_level", l);
        }
        if file.game.max_depth == 0 || file.game.max_depth > 64 {
            c.err("game.max_depth", "must be 1 to 64");
        }
        if file.game.max_firings_per_sec == 0 {
            c.err("game.max_firings_per_sec", "must be at least 1");
        }
        if let Some(tz) = &file.game.timezone
            && let Err(e) = super::schedule::zone(Some(tz))
        {
            c.err("game.timezone", e);
        }
        // Variables.
        let mut seen = HashSet::new();
        for (i, v) in file.variables.iter().enumerate() {
            let f = format!("variables[{i}]");
            c.name(&format!("{f}.name"), &v.name);
            if ROOTS.contains(&v.name.as_str()) || !seen.insert(v.name.as_str()) {
                c.err(
                    format!("{f}.name"),
                    format!("{:?} is taken (defined twice, or a built-in name)", v.name),
                );
            }
            if !value_type_ok(v.ty, &v.initial) {
                c.err(
                    format!("{f}.initial"),
                    format!("{} is not a {:?}", v.initial, v.ty),
                );
            }
        }
        // Types.
        for (ty, tg) in &file.types {
            let f = format!("types.{ty}");
            c.device_type(&f, ty);
            for (level, cfg) in &tg.levels {
                c.level(&format!("{f}.levels"), level);
                c.template(&format!("{f}.levels.{level}"), cfg, &["acl"]);
            }
            if let Some(t) = &tg.template {
                c.template(&format!("{f}.template"), t, &["acl"]);
            }
            for l in &tg.override_except {
                c.level(&format!("{f}.override_except"), l);
            }
        }
        // Access list.
        let mut codes = HashSet::new();
        for (i, a) in file.access.iter().enumerate() {
            let f = format!("access[{i}]");
            if a.code.is_empty() || a.code.len() > 64 {
                c.err(format!("{f}.code"), "a code is 1 to 64 characters");
            }
            if !codes.insert((a.code.as_str(), a.locks.clone())) {
                c.err(
                    format!("{f}.code"),
                    format!("code {:?} is listed twice for the same locks", a.code),
                );
            }
            for l in &a.levels {
                c.level(&format!("{f}.levels"), l);
            }
            for l in &a.locks {
                c.device(&format!("{f}.locks"), l);
            }
        }
        // Webhooks.
        for (name, w) in &file.webhooks {
            c.name(&format!("webhooks.{name}"), name);
            if let Err(e) = crate::gateway::webhook::check_url(&w.url) {
                c.err(format!("webhooks.{name}.url"), e);
            }
            if w.timeout_secs.is_some_and(|t| t == 0 || t > 60) {
                c.err(format!("webhooks.{name}.timeout_secs"), "must be 1 to 60");
            }
        }
        // Rules.
        if file.rules.len() > RULES_MAX {
            c.err(
                "rules",
                format!("{} rules: at most {RULES_MAX}", file.rules.len()),
            );
        }
        let exprs = ExprEngine::new();
        let mut compiled = Vec::with_capacity(file.rules.len());
        let mut schedules = Vec::new();
        let mut rule_names = HashSet::new();
        for rule in &file.rules {
            c.rule = Some(rule.name.clone());
            c.name("name", &rule.name);
            if !rule_names.insert(rule.name.as_str()) {
                c.err("name", "two rules have this name");
            }
            let key = trigger_key(&mut c, &rule.when);
            if let Some(line) = &rule.when.schedule {
                match Schedule::parse(line) {
                    Ok(s) => schedules.push((compiled.len(), s)),
                    Err(e) => c.err("when.schedule", e),
                }
            }
            let mut expr = None;
            for (k, cond) in &rule.match_.0 {
                let field = format!("if.{k}");
                if k == "expr" {
                    match cond {
                        Cond::Equals(Value::String(src)) => match exprs.compile(src) {
                            Ok(e) => expr = Some(e),
                            Err(e) => c.err(field, e.to_string()),
                        },
                        _ => c.err(field, "expr is a string: an expression"),
                    }
                    continue;
                }
                c.path(&field, k, &[]);
                check_cond(&mut c, &field, k, cond);
            }
            if rule.then.is_empty() {
                c.err("then", "a rule needs at least one action");
            }
            for (i, a) in rule.then.iter().enumerate() {
                check_action(&mut c, &format!("then[{i}]"), a);
            }
            if rule.max_firings_per_sec == Some(0) {
                c.err("max_firings_per_sec", "must be at least 1");
            }
            compiled.push(CompiledRule {
                def: rule.clone(),
                key,
                expr,
                rate: rule
                    .max_firings_per_sec
                    .unwrap_or(file.game.max_firings_per_sec),
            });
        }
        c.rule = None;
        if !c.errors.is_empty() {
            return Err(c.errors);
        }
        let text = file.to_toml().map_err(|e| {
            vec![RuleError {
                rule: None,
                field: "file".into(),
                reason: format!("cannot be written as TOML: {e}"),
            }]
        })?;
        let mut index: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, r) in compiled.iter().enumerate() {
            if r.def.enabled && r.key != "schedule" {
                index.entry(r.key.clone()).or_default().push(i);
            }
        }
        schedules.retain(|(i, _)| compiled[*i].def.enabled);
        Ok(RuleSet {
            hash: hash(&text),
            text,
            levels: file
                .levels
                .iter()
                .enumerate()
                .map(|(i, l)| (l.name.clone(), i))
                .collect(),
            file,
            rules: compiled,
            index,
            schedules,
            exprs,
        })
    }

    /// Parses and compiles a TOML file; a parse error is one [`RuleError`] with the position.
    pub fn from_toml(text: &str, known_types: &[&str]) -> Result<RuleSet, Vec<RuleError>> {
        let file = RuleFile::from_toml(text).map_err(|e| {
            vec![RuleError {
                rule: None,
                field: "file".into(),
                reason: e.trim_end().to_string(),
            }]
        })?;
        RuleSet::compile(file, known_types)
    }

    /// The enabled rules whose trigger has this key.
    pub fn candidates(&self, key: &str) -> &[usize] {
        self.index.get(key).map_or(&[], Vec::as_slice)
    }

    pub fn level(&self, name: &str) -> Option<&LevelDef> {
        self.levels.get(name).map(|i| &self.file.levels[*i])
    }

    /// The position of a level in play order.
    pub fn level_index(&self, name: &str) -> Option<usize> {
        self.levels.get(name).copied()
    }

    pub fn initial_level(&self) -> &str {
        self.file
            .game
            .initial_level
            .as_deref()
            .or_else(|| self.file.levels.first().map(|l| l.name.as_str()))
            .unwrap_or("")
    }

    pub fn initial_vars(&self) -> BTreeMap<String, Value> {
        self.file
            .variables
            .iter()
            .map(|v| (v.name.clone(), v.initial.clone()))
            .collect()
    }

    pub fn var_type(&self, name: &str) -> Option<VarType> {
        self.file
            .variables
            .iter()
            .find(|v| v.name == name)
            .map(|v| v.ty)
    }

    pub fn rule(&self, name: &str) -> Option<&CompiledRule> {
        self.rules.iter().find(|r| r.def.name == name)
    }
}

fn trigger_key(c: &mut Check, t: &Trigger) -> String {
    let set = [
        t.event.is_some(),
        t.state.is_some(),
        t.timer.is_some(),
        t.schedule.is_some(),
        t.run.is_some(),
    ]
    .iter()
    .filter(|b| **b)
    .count();
    if set != 1 {
        c.err("when", "exactly one of event, state, timer, schedule, run");
    }
    if (t.device_type.is_some() || t.device.is_some()) && t.event.is_none() {
        c.err("when", "type and device go with event");
    }
    if let Some(ty) = &t.device_type {
        c.device_type("when.type", ty);
    }
    if let Some(d) = &t.device {
        c.device("when.device", d);
    }
    if let Some(k) = &t.event {
        if !TRIGGER_KINDS.contains(&k.as_str()) {
            c.err(
                "when.event",
                format!(
                    "unknown event kind {k:?} (kinds: {})",
                    TRIGGER_KINDS.join(", ")
                ),
            );
        }
        return format!("event:{k}");
    }
    if let Some(s) = &t.state {
        if s != "level" && s != "counter" && !c.vars.contains_key(s.as_str()) {
            c.err(
                "when.state",
                format!("{s:?}: level, counter, or a variable's name"),
            );
        }
        return format!("state:{s}");
    }
    if let Some(n) = &t.timer {
        c.name("when.timer", n);
        return format!("timer:{n}");
    }
    if let Some(r) = &t.run {
        if !RUN_TRIGGERS.contains(&r.as_str()) {
            c.err(
                "when.run",
                format!("{r:?}: one of {}", RUN_TRIGGERS.join(", ")),
            );
        }
        return format!("run:{r}");
    }
    "schedule".into()
}

fn check_cond(c: &mut Check, field: &str, key: &str, cond: &Cond) {
    let is_level = key == "level" || key == "event.to" || key == "event.from";
    match cond {
        Cond::Equals(v) => {
            if v.is_null() {
                c.err(field, "null is not a value (use { exists = false })");
            }
            if let Value::Object(m) = v {
                let keys: Vec<&str> = m.keys().map(String::as_str).collect();
                c.err(
                    field,
                    format!(
                        "unknown test {} (tests: eq, ne, in, not_in, min, max, at_least, at_most, exists, normalize); to compare with a table, write {{ eq = {{ … }} }}",
                        keys.join(", ")
                    ),
                );
            }
            if key == "level"
                && let Some(s) = v.as_str()
            {
                c.level(field, s);
            }
            if let Some(name) = key.strip_prefix("var.")
                && let Some(ty) = c.vars.get(name).copied()
                && !value_type_ok(ty, v)
            {
                c.err(field, format!("{v} is not a {ty:?}, the variable's type"));
            }
        }
        Cond::Tests(t) => {
            for l in [&t.at_least, &t.at_most].into_iter().flatten() {
                c.level(field, l);
            }
            if key == "level" {
                for v in t.one_of.iter().chain(t.not_in.iter()).flatten() {
                    if let Some(s) = v.as_str() {
                        c.level(field, s);
                    }
                }
                if let Some(s) = t.eq.as_ref().and_then(Value::as_str) {
                    c.level(field, s);
                }
            }
            let _ = is_level;
            if *t == Default::default() {
                c.err(field, "an empty test (write the value, or eq/in/min/…)");
            }
        }
    }
}

fn check_action(c: &mut Check, f: &str, a: &Action) {
    let with_event = &["acl"][..0];
    match a {
        Action::SetLevel(l) => c.level(&format!("{f}.set_level"), l),
        Action::Counter(ch) => {
            if ch.add.is_some() == ch.set.is_some() {
                c.err(format!("{f}.counter"), "exactly one of add, set");
            }
            if let Some(Amount::Level(s)) = &ch.add
                && s != "failure"
                && s != "success"
            {
                c.err(
                    format!("{f}.counter.add"),
                    format!("{s:?}: a number, \"failure\" or \"success\""),
                );
            }
        }
        Action::SetVar(sv) => match c.vars.get(sv.name.as_str()).copied() {
            None => c.err(
                format!("{f}.set_var.name"),
                format!("unknown variable {:?}", sv.name),
            ),
            Some(ty) => {
                let templated = sv.value.is_string() || sv.value.get("$").is_some();
                if !templated && !value_type_ok(ty, &sv.value) {
                    c.err(
                        format!("{f}.set_var.value"),
                        format!("{} is not a {ty:?}", sv.value),
                    );
                }
                if ty != VarType::String && sv.value.is_string() {
                    c.err(
                        format!("{f}.set_var.value"),
                        format!("a {ty:?} variable takes a {ty:?}, or {{ \"$\" = \"path\" }}"),
                    );
                }
                c.template(&format!("{f}.set_var.value"), &sv.value, with_event);
            }
        },
        Action::Push(p) => {
            let n = [p.device.is_some(), p.device_type.is_some(), p.all_types]
                .iter()
                .filter(|b| **b)
                .count();
            if n != 1 {
                c.err(
                    format!("{f}.push"),
                    "exactly one of device, type, all_types",
                );
            }
            if let Some(d) = &p.device {
                c.device(&format!("{f}.push.device"), d);
            }
            if let Some(t) = &p.device_type {
                c.device_type(&format!("{f}.push.type"), t);
            }
            if let Some(patch) = &p.patch {
                c.template(&format!("{f}.push.patch"), patch, &["acl"]);
            }
        }
        Action::Engage(e) => {
            board(c, &format!("{f}.engage.device"), &e.device);
            if let Some(code) = &e.code {
                c.template(
                    &format!("{f}.engage.code"),
                    &Value::String(code.clone()),
                    with_event,
                );
            }
            if e.minutes.is_some_and(|m| !(1..=525_600).contains(&m)) {
                c.err(format!("{f}.engage.minutes"), "1 to 525600 (a year)");
            }
        }
        Action::Release(r) => board(c, &format!("{f}.release.device"), &r.device),
        Action::Reset(d) => board(c, &format!("{f}.reset"), d),
        Action::Block(d) => board(c, &format!("{f}.block"), d),
        Action::Unblock(d) => board(c, &format!("{f}.unblock"), d),
        Action::Publish(p) => {
            let t = p.topic.to_ascii_lowercase();
            if t.is_empty()
                || t.starts_with("ask/")
                || t.starts_with('$')
                || t.contains(['+', '#'])
                || t.len() > 256
            {
                c.err(
                    format!("{f}.publish.topic"),
                    format!("{:?}: a device topic (<type>/<id>/<command>), not ask/…, $…, or a wildcard", p.topic),
                );
            }
            c.template(&format!("{f}.publish.payload"), &p.payload, with_event);
        }
        Action::StartTimer(t) => {
            c.name(&format!("{f}.start_timer.name"), &t.name);
            c.secs(&format!("{f}.start_timer.secs"), t.secs);
        }
        Action::CancelTimer(n) => c.name(&format!("{f}.cancel_timer"), n),
        Action::Log(s) => c.template(&format!("{f}.log"), &Value::String(s.clone()), with_event),
        Action::Webhook(w) => {
            if !c.webhooks.contains(w.name.as_str()) {
                c.err(
                    format!("{f}.webhook.name"),
                    format!("unknown webhook {:?} (define it under [webhooks])", w.name),
                );
            }
            if w.retries > 5 {
                c.err(format!("{f}.webhook.retries"), "at most 5");
            }
            if let Some(b) = &w.body {
                c.template(&format!("{f}.webhook.body"), b, with_event);
            }
        }
        Action::AddCode(a) => {
            c.template(
                &format!("{f}.add_code.code"),
                &Value::String(a.code.clone()),
                with_event,
            );
            for l in &a.levels {
                c.level(&format!("{f}.add_code.levels"), l);
            }
        }
        Action::Delay(d) => c.secs(&format!("{f}.delay.secs"), d.secs),
    }
}

fn board(c: &mut Check, field: &str, key: &str) {
    match key.strip_prefix("acon/") {
        Some(id) if !id.is_empty() && !id.contains('/') => {}
        _ => c.err(field, format!("{key:?}: a board is acon/<id>")),
    }
}

//! The sandboxed expression of a rule's `if` (`expr = "…"`), in Rhai.
//!
//! A rule's declarative conditions cannot say everything; `expr` can, as one Rhai
//! *expression* that game masters write the night before a game and that players then try
//! to break. So this module is a sandbox first and a language second.
//!
//! Invariants (each is tested below):
//! - **Expressions only.** Compiled with `compile_expression` and an engine that refuses
//!   statements, loops, assignments, blocks, function definitions, closures, `eval`,
//!   `print`/`debug`, `Fn`/`call`/`curry` and modules. Nothing an expression can call touches
//!   files, the network or the clock (`no_module`, `no_time`; the standard packages have no
//!   I/O; their `sleep`, `parse_json` and `blob` are replaced by functions that fail).
//! - **Strict variables.** An expression sees exactly [`VARIABLES`]; any other name is a
//!   compile error at its line and column (with a "did you mean" when one is close).
//! - **Bounded.** Every evaluation is limited in operations, string / array / map size and
//!   call depth, every compile in source size and nesting depth (the `MAX_*` constants).
//!   Hitting a limit is an error saying which limit; nothing is kept between evaluations, so
//!   the engine stays usable afterwards. Rhai counts operations per expression node and call,
//!   not inside a native function (a `contains` scan is one operation), so what really bounds
//!   an evaluation's work is the source limit times the value-size limits: the costliest
//!   expressions found take about 5 ms (`benches/expr.rs`, `worst/*`).
//! - **Never panics.** Rhai reports errors rather than panicking; as a last line of defence
//!   compile and eval run under `catch_unwind`, so a bug there is an error
//!   ([`INTERNAL_ERROR`]), not a dead engine task.
//! - **Cheap on the hot path.** Building Rhai values from JSON dominates an evaluation, so
//!   [`ExprEngine::compile`] records which of the variables an expression uses and
//!   [`ExprEngine::eval`] converts only those.
//!
//! JSON → Rhai: `null` → `()`, booleans, integers that fit `i64` → integers, other numbers →
//! floats, strings, arrays, objects → maps. A missing map key reads as `()` (use `?.` to go
//! through a field that may be missing: `event.datahold?.type`). Rhai → JSON is the reverse
//! (a character becomes a one-character string, a blob an array of bytes); values without a
//! JSON form (a NaN, a function pointer) are an error.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use rhai::{
    AST, Array, Dynamic, Engine, EvalAltResult, FuncRegistration, ImmutableString, Map,
    ParseErrorType, Position, Scope, Token,
};
use serde_json::Value;

/// Longest source accepted, in bytes: an expression that needs more belongs in several rules
/// or in declarative conditions, and the limit bounds what one expression can make Rhai do.
pub const MAX_SOURCE_BYTES: usize = 4096;
/// Operations (Rhai's unit of work: an expression node or a function call, not the work inside
/// a native function) per evaluation. A typical rule expression needs well under 100; without
/// loops or recursion no expression of [`MAX_SOURCE_BYTES`] was found to reach this, so it is
/// a backstop.
pub const MAX_OPERATIONS: u64 = 10_000;
/// Nesting depth of an expression (parentheses, operators, calls), checked at compile.
pub const MAX_EXPR_DEPTH: usize = 32;
/// Most string bytes in one value an evaluation builds (a string, or all the strings inside an
/// array or map, counted recursively). Rhai also checks a value an expression calls a method
/// on, so the *inputs* must stay within these three limits too: an event whose strings add up
/// to more, or more codes than [`MAX_ARRAY_LEN`], fails the expressions that call a method on
/// it (`codes.contains(…)`; Rhai does not check the operand of `in`) with this error.
pub const MAX_STRING_BYTES: usize = 16 * 1024;
/// Most items in one value (array items and blob bytes, counted recursively).
pub const MAX_ARRAY_LEN: usize = 1024;
/// Most map entries in one value (counted recursively).
pub const MAX_MAP_LEN: usize = 1024;
/// Call-stack depth. Expressions cannot define functions, so this is defence in depth.
pub const MAX_CALL_LEVELS: usize = 8;
/// Deepest nesting of a JSON value handed to or returned by an expression (an event is
/// device input: it must not be able to recurse the converter into a stack overflow).
pub const MAX_VALUE_DEPTH: usize = 64;

/// The variables an expression sees, in the order of [`ExprInput`]'s fields.
pub const VARIABLES: [&str; 9] = [
    "event", "device", "level", "level_id", "counter", "ingame", "run", "var", "codes",
];

/// The message of an error that comes from a panic inside Rhai (a bug, never an input's
/// fault): the expression is treated as failing, the engine goes on.
pub const INTERNAL_ERROR: &str =
    "the expression engine failed internally (a bug, please report it with the expression)";

/// Keywords the engine refuses, so that an expression that names them does not compile:
/// `eval` (code from strings), `print`/`debug` (output), `Fn`/`call`/`curry` (calling functions
/// by name: nothing an expression needs, and a way around the checks on what it calls).
const DISABLED_KEYWORDS: [&str; 6] = ["eval", "print", "debug", "Fn", "call", "curry"];

/// The engine for the expressions of one rule set: Rhai configured as the sandbox above, with
/// [`normalize`] and [`is_digits`] registered. Shared (it is `Send + Sync`); compile and eval
/// take `&self`.
pub struct ExprEngine {
    engine: Engine,
}

/// A compiled expression: cheap to clone (the AST is shared), `Send + Sync`, keeps its
/// source for traces and the console.
#[derive(Clone)]
pub struct Expr {
    source: Arc<str>,
    ast: Arc<AST>,
    /// Bit `i` set: the expression reads `VARIABLES[i]` (only those are converted at eval).
    uses: u16,
}

/// A compile error: where (1-based line and column, in characters) and what.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("line {line}, column {column}: {message}")]
pub struct ExprError {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

/// What an expression sees at one evaluation (borrowed: the engine converts only what the
/// expression uses).
#[derive(Debug, Clone, Copy)]
pub struct ExprInput<'a> {
    /// The trigger event: `kind`, `device`, `at` and its fields.
    pub event: &'a Value,
    /// The trigger's device (`key`, `type`, `id`, `config`, `reported`), `Null` when none
    /// (the expression then sees `()`).
    pub device: &'a Value,
    pub level: &'a str,
    pub level_id: i64,
    pub counter: i64,
    pub ingame: bool,
    /// `none`, `running`, `paused` or `ended`.
    pub run: &'a str,
    /// The user variables (int, string, bool).
    pub var: &'a serde_json::Map<String, Value>,
    /// The access codes known for the trigger's device.
    pub codes: &'a [String],
}

impl Default for ExprEngine {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for ExprEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExprEngine").finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Expr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Expr")
            .field("source", &self.source)
            .field("variables", &self.variables())
            .finish()
    }
}

impl Expr {
    /// The source as written.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The variables (of [`VARIABLES`]) the expression reads, in that order: what a
    /// validator may check against the rule's trigger (e.g. `device` for a timer rule).
    pub fn variables(&self) -> Vec<&'static str> {
        VARIABLES
            .iter()
            .enumerate()
            .filter(|(i, _)| self.uses & (1 << i) != 0)
            .map(|(_, name)| *name)
            .collect()
    }
}

impl ExprEngine {
    /// An engine with the standard Rhai packages (strings, arrays, maps, maths, logic; no
    /// time, no modules), the limits above, and `normalize` / `is_digits`.
    pub fn new() -> ExprEngine {
        let mut engine = Engine::new();
        engine
            .set_strict_variables(true)
            .set_max_operations(MAX_OPERATIONS)
            .set_max_expr_depths(MAX_EXPR_DEPTH, MAX_EXPR_DEPTH)
            .set_max_string_size(MAX_STRING_BYTES)
            .set_max_array_size(MAX_ARRAY_LEN)
            .set_max_map_size(MAX_MAP_LEN)
            .set_max_call_levels(MAX_CALL_LEVELS)
            .set_allow_looping(false)
            .set_allow_loop_expressions(false)
            .set_allow_statement_expression(false)
            .set_allow_anonymous_fn(false)
            .set_allow_shadowing(false);
        // `print`/`debug` are disabled keywords below; should a path to them remain, their
        // output goes nowhere rather than to the server's stdout.
        engine.on_print(|_| {});
        engine.on_debug(|_, _, _| {});
        for keyword in DISABLED_KEYWORDS {
            engine.disable_symbol(keyword);
        }
        // `var` is reserved in Rhai (for a future `var x = …`); here it names the user
        // variables, so its token becomes an identifier. Rhai calls this mapper on every
        // token; a reserved word is otherwise a compile error.
        #[allow(deprecated)] // "not deprecated, but volatile": pinned by the Rhai version.
        engine.on_parse_token(|token, _, _| match token {
            Token::Reserved(word) if word.as_str() == "var" => Token::Identifier(word),
            other => other,
        });
        // Functions of the standard packages an expression must not call, replaced by ones
        // that fail (functions registered on the engine take precedence over the packages'
        // ones of the same signature; tested): `sleep` blocks the server's thread (it is in
        // the core package even under `no_time`); `parse_json` compiles input text as Rhai;
        // `blob(n)` makes n bytes from a few of source, the one way to build a large value
        // without a large input, and Rhai's operation count does not see inside native
        // functions that then scan it.
        engine.register_fn("sleep", |_: rhai::INT| blocked("sleep"));
        engine.register_fn("sleep", |_: rhai::FLOAT| blocked("sleep"));
        engine.register_fn("parse_json", |_: &str| blocked("parse_json"));
        engine.register_fn("blob", || blocked("blob"));
        engine.register_fn("blob", |_: rhai::INT| blocked("blob"));
        engine.register_fn("blob", |_: rhai::INT, _: rhai::INT| blocked("blob"));
        // Pure: it may be called on the (constant) `codes`.
        FuncRegistration::new("contains")
            .with_purity(true)
            .register_into_engine(&mut engine, array_contains_string);
        engine.register_fn("normalize", normalize);
        engine.register_fn("is_digits", is_digits);
        ExprEngine { engine }
    }

    /// Compiles `src`: an error for a syntax error, a statement (`let`, `=`, loops, blocks,
    /// `fn`, closures), a name that is not one of [`VARIABLES`], a source over
    /// [`MAX_SOURCE_BYTES`] or nested deeper than [`MAX_EXPR_DEPTH`], an empty source.
    pub fn compile(&self, src: &str) -> Result<Expr, ExprError> {
        if src.len() > MAX_SOURCE_BYTES {
            let (line, column) = line_column(src, MAX_SOURCE_BYTES);
            return Err(ExprError {
                line,
                column,
                message: format!(
                    "the expression is {} bytes long, more than the {MAX_SOURCE_BYTES} allowed: \
                     move what you can into the rule's declarative conditions or split the rule",
                    src.len()
                ),
            });
        }
        if src.trim().is_empty() {
            return Err(ExprError {
                line: 1,
                column: 1,
                message: "the expression is empty: write one that gives true or false, or \
                          remove `expr`"
                    .to_string(),
            });
        }
        match catch_unwind(AssertUnwindSafe(|| self.compile_inner(src))) {
            Ok(result) => result,
            Err(_) => Err(ExprError {
                line: 1,
                column: 1,
                message: INTERNAL_ERROR.to_string(),
            }),
        }
    }

    /// Strict variables report the first unknown name; compiling first with no variables and
    /// adding each one of [`VARIABLES`] that is reported finds exactly the variables the
    /// expression uses (at most `VARIABLES.len() + 1` parses, once per rule-set import) with
    /// Rhai's public API only.
    fn compile_inner(&self, src: &str) -> Result<Expr, ExprError> {
        let mut scope = Scope::with_capacity(VARIABLES.len());
        let mut uses: u16 = 0;
        loop {
            let err = match self.engine.compile_expression_with_scope(&scope, src) {
                Ok(ast) => {
                    return Ok(Expr {
                        source: Arc::from(src),
                        ast: Arc::new(ast),
                        uses,
                    });
                }
                Err(err) => err,
            };
            let (line, column) = rhai_position(err.1);
            if let ParseErrorType::VariableUndefined(name) = &*err.0 {
                match VARIABLES.iter().position(|v| v == name) {
                    Some(i) if uses & (1 << i) == 0 => {
                        uses |= 1 << i;
                        // Not a constant: a constant's value would be folded into the AST.
                        scope.push_dynamic(VARIABLES[i], Dynamic::UNIT);
                        continue;
                    }
                    _ => {
                        return Err(ExprError {
                            line,
                            column,
                            message: unknown_variable(name),
                        });
                    }
                }
            }
            return Err(ExprError {
                line,
                column,
                message: describe_parse_error(&err.0),
            });
        }
    }

    /// Evaluates `e` on `input`; the result as JSON. An evaluation error (a limit hit, a
    /// function called on the wrong types, an integer overflow, a division by zero) is a
    /// message starting with the line and column where it happened; an input the expression
    /// cannot read starts with the variable's name (`event: nested deeper …`); a result
    /// without a JSON form says so.
    pub fn eval(&self, e: &Expr, input: &ExprInput) -> Result<Value, String> {
        let value = self.eval_dynamic(e, input)?;
        catch_unwind(AssertUnwindSafe(|| dynamic_to_json(value, 0)))
            .unwrap_or_else(|_| Err(INTERNAL_ERROR.to_string()))
    }

    /// Evaluates `e` on `input` as a condition: an error unless it gives a bool.
    pub fn eval_bool(&self, e: &Expr, input: &ExprInput) -> Result<bool, String> {
        let value = self.eval_dynamic(e, input)?;
        value.as_bool().map_err(|_| {
            format!(
                "the expression gave {}, not true/false",
                describe_type(&value)
            )
        })
    }

    fn eval_dynamic(&self, e: &Expr, input: &ExprInput) -> Result<Dynamic, String> {
        catch_unwind(AssertUnwindSafe(|| {
            let mut scope = Scope::with_capacity(e.uses.count_ones() as usize);
            for (i, name) in VARIABLES.iter().enumerate() {
                if e.uses & (1 << i) != 0 {
                    scope.push_constant_dynamic(*name, variable(i, input)?);
                }
            }
            self.engine
                .eval_ast_with_scope::<Dynamic>(&mut scope, &e.ast)
                .map_err(|err| describe_eval_error(*err))
        }))
        .unwrap_or_else(|_| Err(INTERNAL_ERROR.to_string()))
    }
}

fn blocked(name: &str) -> Result<(), Box<EvalAltResult>> {
    Err(format!("`{name}` is not available in a rule expression").into())
}

/// `array.contains(s)` and `s in array` for a string `s`, as Rhai's own (an item matches if
/// it is that string, or that one character) but without a call into the engine per item:
/// `… in codes` is the hot path, and Rhai's operation count does not see inside a native
/// function, so a scan must be cheap (it was 190 ns an item, now a comparison).
fn array_contains_string(array: &mut Array, value: ImmutableString) -> bool {
    array.iter().any(|item| {
        if let Some(s) = item.read_lock::<ImmutableString>() {
            return *s == value;
        }
        item.as_char().is_ok_and(|c| {
            let mut chars = value.chars();
            chars.next() == Some(c) && chars.next().is_none()
        })
    })
}

/// `s` without `{`, `}` and whitespace, lowercased: a power shield sends `"{AUX}"`, a player
/// types `" aux "`; both normalize to `"aux"`.
pub fn normalize(s: &str) -> String {
    s.chars()
        .filter(|c| *c != '{' && *c != '}' && !c.is_whitespace())
        .flat_map(char::to_lowercase)
        .collect()
}

/// `s` is exactly `n` ASCII digits (`is_digits("0042", 4)`): the shape of a lock's code. A
/// negative `n` is never matched; `is_digits("", 0)` holds.
pub fn is_digits(s: &str, n: i64) -> bool {
    usize::try_from(n).is_ok_and(|n| s.len() == n && s.bytes().all(|b| b.is_ascii_digit()))
}

/// Variable `VARIABLES[i]` of `input` as a Rhai value.
fn variable(i: usize, input: &ExprInput) -> Result<Dynamic, String> {
    Ok(match i {
        0 => json_to_dynamic(input.event, 0).map_err(|e| format!("event: {e}"))?,
        1 => json_to_dynamic(input.device, 0).map_err(|e| format!("device: {e}"))?,
        2 => Dynamic::from(ImmutableString::from(input.level)),
        3 => Dynamic::from_int(input.level_id),
        4 => Dynamic::from_int(input.counter),
        5 => Dynamic::from_bool(input.ingame),
        6 => Dynamic::from(ImmutableString::from(input.run)),
        7 => json_map_to_dynamic(input.var, 0).map_err(|e| format!("var: {e}"))?,
        _ => Dynamic::from_array(
            input
                .codes
                .iter()
                .map(|c| Dynamic::from(ImmutableString::from(c.as_str())))
                .collect(),
        ),
    })
}

fn json_to_dynamic(v: &Value, depth: usize) -> Result<Dynamic, String> {
    if depth > MAX_VALUE_DEPTH {
        return Err(format!(
            "nested deeper than {MAX_VALUE_DEPTH} levels, which an expression cannot read"
        ));
    }
    Ok(match v {
        Value::Null => Dynamic::UNIT,
        Value::Bool(b) => Dynamic::from_bool(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => Dynamic::from_int(i),
            // u64 above i64::MAX, or a fraction: a float (large u64s lose precision).
            None => Dynamic::from_float(n.as_f64().unwrap_or(f64::NAN)),
        },
        Value::String(s) => Dynamic::from(ImmutableString::from(s.as_str())),
        Value::Array(items) => {
            let mut array = Array::with_capacity(items.len());
            for item in items {
                array.push(json_to_dynamic(item, depth + 1)?);
            }
            Dynamic::from_array(array)
        }
        Value::Object(map) => json_map_to_dynamic(map, depth)?,
    })
}

fn json_map_to_dynamic(
    map: &serde_json::Map<String, Value>,
    depth: usize,
) -> Result<Dynamic, String> {
    let mut out = Map::new();
    for (k, v) in map {
        out.insert(k.as_str().into(), json_to_dynamic(v, depth + 1)?);
    }
    Ok(Dynamic::from_map(out))
}

fn dynamic_to_json(value: Dynamic, depth: usize) -> Result<Value, String> {
    if depth > MAX_VALUE_DEPTH {
        return Err(format!(
            "the expression gave a value nested deeper than {MAX_VALUE_DEPTH} levels"
        ));
    }
    let value = value.flatten();
    if value.is_unit() {
        return Ok(Value::Null);
    }
    if let Ok(b) = value.as_bool() {
        return Ok(Value::Bool(b));
    }
    if let Ok(i) = value.as_int() {
        return Ok(Value::from(i));
    }
    if let Ok(f) = value.as_float() {
        return serde_json::Number::from_f64(f)
            .map(Value::Number)
            .ok_or_else(|| format!("the expression gave {f}, which is not a JSON number"));
    }
    if let Ok(c) = value.as_char() {
        return Ok(Value::String(c.to_string()));
    }
    let type_name = value.type_name();
    let no_json =
        |_| format!("the expression gave a value of type {type_name}, which has no JSON form");
    if value.is_string() {
        let s = value.into_immutable_string().map_err(no_json)?;
        return Ok(Value::String(s.to_string()));
    }
    if value.is_array() {
        return value
            .into_array()
            .map_err(no_json)?
            .into_iter()
            .map(|item| dynamic_to_json(item, depth + 1))
            .collect::<Result<Vec<_>, _>>()
            .map(Value::Array);
    }
    if value.is_blob() {
        let bytes = value.into_blob().map_err(no_json)?;
        return Ok(Value::Array(bytes.into_iter().map(Value::from).collect()));
    }
    if value.is_map() {
        let map = value.try_cast::<Map>().ok_or(type_name).map_err(no_json)?;
        let mut out = serde_json::Map::with_capacity(map.len());
        for (k, v) in map {
            out.insert(k.to_string(), dynamic_to_json(v, depth + 1)?);
        }
        return Ok(Value::Object(out));
    }
    Err(no_json(type_name))
}

/// A value's type as a game master reads it in an error.
fn describe_type(value: &Dynamic) -> String {
    match value.type_name() {
        "()" => "() (nothing: a missing field or variable?)".to_string(),
        "i64" => "an integer".to_string(),
        "f64" => "a number".to_string(),
        "string" => "a string".to_string(),
        "char" => "a character".to_string(),
        "array" => "an array".to_string(),
        "map" => "a map".to_string(),
        "blob" => "a blob".to_string(),
        other => format!("a value of type {other}"),
    }
}

fn describe_parse_error(kind: &ParseErrorType) -> String {
    match kind {
        ParseErrorType::ExprTooDeep => format!(
            "the expression is nested more than {MAX_EXPR_DEPTH} levels deep (a chain of \
             `&&`/`||` may have {MAX_EXPR_DEPTH} terms, parentheses nest at most {} deep): \
             flatten it or move parts into declarative conditions",
            MAX_EXPR_DEPTH / 2 - 1
        ),
        ParseErrorType::UnexpectedEOF => {
            "the expression ends before it is complete (a missing operand or bracket?)".to_string()
        }
        ParseErrorType::Reserved(word)
        | ParseErrorType::BadInput(rhai::LexError::ImproperSymbol(word, _))
            if DISABLED_KEYWORDS.contains(&word.as_str()) =>
        {
            format!("`{word}` is not available in a rule expression")
        }
        other => {
            let text = other.to_string();
            if text.is_empty() {
                "the expression is not valid".to_string()
            } else {
                text
            }
        }
    }
}

fn describe_eval_error(mut err: EvalAltResult) -> String {
    let (line, column) = rhai_position(err.take_position());
    let message = match &err {
        EvalAltResult::ErrorTooManyOperations(..) => format!(
            "the expression ran more than {MAX_OPERATIONS} operations and was stopped: simplify it"
        ),
        EvalAltResult::ErrorDataTooLarge(what, ..) => format!(
            "{what} is over the limit (strings {MAX_STRING_BYTES} bytes, arrays {MAX_ARRAY_LEN} \
             items, maps {MAX_MAP_LEN} entries, in one value it built or was given) and the \
             expression was stopped"
        ),
        EvalAltResult::ErrorStackOverflow(..) => format!(
            "calls nested deeper than {MAX_CALL_LEVELS} levels and the expression was stopped"
        ),
        other => other.to_string(),
    };
    format!("line {line}, column {column}: {message}")
}

fn unknown_variable(name: &str) -> String {
    let close = VARIABLES
        .iter()
        .map(|v| (edit_distance(name, v), *v))
        .filter(|(d, _)| *d <= 2)
        .min();
    let hint = match close {
        Some((_, v)) => format!(" (did you mean `{v}`?)"),
        None => String::new(),
    };
    format!(
        "unknown variable `{name}`{hint}: an expression sees {}",
        VARIABLES.join(", ")
    )
}

/// Levenshtein distance, for the "did you mean" of an unknown variable (names are short).
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = if ca == *cb {
                prev
            } else {
                1 + prev.min(cur).min(row[j])
            };
            prev = cur;
        }
    }
    row[b.len()]
}

/// Rhai's position as 1-based line and column; where Rhai gives none, line 1, column 1
/// (the expression as a whole).
fn rhai_position(pos: Position) -> (usize, usize) {
    (pos.line().unwrap_or(1), pos.position().unwrap_or(1))
}

/// The 1-based line and column (in characters) of byte `offset` of `src` (rounded down to
/// a character boundary).
fn line_column(src: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(src.len());
    while !src.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &src[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    struct Fixture {
        event: Value,
        device: Value,
        var: serde_json::Map<String, Value>,
        codes: Vec<String>,
    }

    fn fixture() -> Fixture {
        let mut codes: Vec<String> = (1000..1019).map(|n| n.to_string()).collect();
        codes.push("1234".to_string());
        Fixture {
            event: json!({
                "kind": "info",
                "device": "lock/b827eb0a1b2c",
                "at": "2026-12-01T20:00:00Z",
                "datahold": {
                    "type": "access",
                    "content": "{AUX}",
                    "success": false,
                    "code": "1234",
                    "attempt": 2
                }
            }),
            device: json!({
                "key": "lock/b827eb0a1b2c",
                "type": "lock",
                "id": "b827eb0a1b2c",
                "config": { "closed": true, "override": false },
                "reported": { "sound": true }
            }),
            var: json!({ "alarms": 2, "mode": "quiet", "armed": true })
                .as_object()
                .unwrap()
                .clone(),
            codes,
        }
    }

    impl Fixture {
        fn input(&self) -> ExprInput<'_> {
            ExprInput {
                event: &self.event,
                device: &self.device,
                level: "green",
                level_id: 4,
                counter: 12,
                ingame: true,
                run: "running",
                var: &self.var,
                codes: &self.codes,
            }
        }
    }

    fn eval_src(engine: &ExprEngine, src: &str, input: &ExprInput) -> Result<Value, String> {
        let e = engine.compile(src).map_err(|e| format!("compile: {e}"))?;
        engine.eval(&e, input)
    }

    #[test]
    fn evaluates_expressions() {
        // (source, expected value, or Err(a part of the error))
        let cases: &[(&str, Result<Value, &str>)] = &[
            (
                r#"event.datahold.type == "access" && !event.datahold.success && ingame"#,
                Ok(json!(true)),
            ),
            (
                r#"normalize(event.datahold.content) == "aux""#,
                Ok(json!(true)),
            ),
            (
                r#"normalize(event.datahold.code) in codes"#,
                Ok(json!(true)),
            ),
            (r#"event.datahold.code in codes"#, Ok(json!(true))),
            (r#""0000" in codes"#, Ok(json!(false))),
            // `contains` of a string as Rhai's own (char items match a one-char string).
            (r#"['a'].contains("a")"#, Ok(json!(true))),
            (r#""a" in ['a', 1]"#, Ok(json!(true))),
            (r#""ab" in ['a']"#, Ok(json!(false))),
            (r#"[1, (), #{}].contains("a")"#, Ok(json!(false))),
            (r#"["ab", "a"].contains("a")"#, Ok(json!(true))),
            (r#"["ab"].contains("a")"#, Ok(json!(false))),
            (r#"[].contains("")"#, Ok(json!(false))),
            (r#"["a"].contains('a')"#, Ok(json!(true))),
            (r#"[1, 2].contains(2)"#, Ok(json!(true))),
            (r#"codes.contains("1005")"#, Ok(json!(true))),
            (r#"codes.len()"#, Ok(json!(20))),
            (r#"len(codes)"#, Ok(json!(20))),
            (r#"event.datahold.content.len()"#, Ok(json!(5))),
            (r#""ccess" in event.datahold.type"#, Ok(json!(true))),
            (r#"event.datahold.type.contains("cce")"#, Ok(json!(true))),
            (r#"event.datahold.type.starts_with("acc")"#, Ok(json!(true))),
            (r#""b" in #{a: 1, b: 2}"#, Ok(json!(true))),
            (r#"level == "green" && level_id >= 4"#, Ok(json!(true))),
            (r#"level != "green" || counter < 0"#, Ok(json!(false))),
            (r#"!(counter > 10)"#, Ok(json!(false))),
            (r#""apple" < "banana""#, Ok(json!(true))),
            (r#"counter >= 12 && counter <= 12"#, Ok(json!(true))),
            (
                r#"if counter > 10 { "high" } else { "low" }"#,
                Ok(json!("high")),
            ),
            (
                r#"if counter > 99 { "high" } else if counter > 5 { "mid" } else { "low" }"#,
                Ok(json!("mid")),
            ),
            (r#"switch level { "green" => 1, _ => 0 }"#, Ok(json!(1))),
            (r#"var.alarms + 1"#, Ok(json!(3))),
            (r#"var.mode"#, Ok(json!("quiet"))),
            (r#"var.armed && run == "running""#, Ok(json!(true))),
            (r#"var.missing"#, Ok(Value::Null)),
            // `var` is reserved in Rhai; here it is a name everywhere.
            (r#"var["mode"] + #{var: 1}.var"#, Ok(json!("quiet1"))),
            (r#"#{var: var.alarms}.var"#, Ok(json!(2))),
            (r#""mode" in var"#, Ok(json!(true))),
            (r#"event.nothing?.deeper"#, Ok(Value::Null)),
            (
                r#"device.type == "lock" && device.config.closed"#,
                Ok(json!(true)),
            ),
            (r#"device.reported.sound"#, Ok(json!(true))),
            (
                r#"event.kind + ":" + device.id"#,
                Ok(json!("info:b827eb0a1b2c")),
            ),
            (r#"is_digits(event.datahold.code, 4)"#, Ok(json!(true))),
            (r#"is_digits("12a4", 4)"#, Ok(json!(false))),
            (r#"is_digits("123", 4)"#, Ok(json!(false))),
            (r#"is_digits("١٢٣٤", 4)"#, Ok(json!(false))),
            (r#"is_digits("1234", -4)"#, Ok(json!(false))),
            (r#"normalize(" { Aux  Power } ")"#, Ok(json!("auxpower"))),
            (
                r#"[level, counter, ingame]"#,
                Ok(json!(["green", 12, true])),
            ),
            (
                r#"#{a: 1, b: [true, ()]}"#,
                Ok(json!({"a": 1, "b": [true, null]})),
            ),
            (
                r#"event.datahold"#,
                Ok(
                    json!({"type": "access", "content": "{AUX}", "success": false, "code": "1234", "attempt": 2}),
                ),
            ),
            (r#"1.5 * 2"#, Ok(json!(3.0))),
            (r#"'x'"#, Ok(json!("x"))),
            (r#"type_of(device)"#, Ok(json!("map"))),
            (r#"10 / 0"#, Err("Division by zero")),
            (r#"9223372036854775807 + 1"#, Err("overflow")),
            (r#"normalize(42)"#, Err("Function not found")),
            (r#"codes.push("9999")"#, Err("constant")),
            (r#"timestamp()"#, Err("Function not found")),
            (r#"0.0 / 0.0"#, Err("not a JSON number")),
            (r#""ab".to_blob()"#, Ok(json!([97, 98]))),
            (r#"0..10"#, Err("has no JSON form")),
            (r#"sleep(1)"#, Err("`sleep` is not available")),
            (r#"sleep(0.5)"#, Err("`sleep` is not available")),
            (r#"parse_json("{}")"#, Err("`parse_json` is not available")),
            (r#"blob()"#, Err("`blob` is not available")),
            (r#"blob(100000)"#, Err("`blob` is not available")),
            (r#"blob(1000, 65)"#, Err("`blob` is not available")),
        ];
        let engine = ExprEngine::new();
        let f = fixture();
        let input = f.input();
        for (src, want) in cases {
            let got = eval_src(&engine, src, &input);
            match (want, &got) {
                (Ok(v), Ok(g)) => assert_eq!(g, v, "{src}"),
                (Err(part), Err(g)) => assert!(g.contains(part), "{src}: {g}"),
                _ => panic!("{src}: want {want:?}, got {got:?}"),
            }
        }
    }

    #[test]
    fn device_is_unit_when_there_is_none() {
        let engine = ExprEngine::new();
        let f = fixture();
        let mut input = f.input();
        input.device = &Value::Null;
        let cases: &[(&str, Value)] = &[
            ("device == ()", json!(true)),
            ("type_of(device)", json!("()")),
            ("device?.type", Value::Null),
        ];
        for (src, want) in cases {
            assert_eq!(eval_src(&engine, src, &input).unwrap(), *want, "{src}");
        }
    }

    #[test]
    fn eval_bool_wants_a_bool() {
        let engine = ExprEngine::new();
        let f = fixture();
        let input = f.input();
        let cases: &[(&str, Result<bool, &str>)] = &[
            ("ingame && counter > 3", Ok(true)),
            ("level == \"red\"", Ok(false)),
            (
                "counter",
                Err("the expression gave an integer, not true/false"),
            ),
            ("var.missing", Err("the expression gave () (nothing")),
            ("level", Err("the expression gave a string, not true/false")),
            ("codes", Err("the expression gave an array, not true/false")),
            ("10 / 0", Err("Division by zero")),
        ];
        for (src, want) in cases {
            let e = engine.compile(src).unwrap();
            let got = engine.eval_bool(&e, &input);
            match (want, &got) {
                (Ok(v), Ok(g)) => assert_eq!(g, v, "{src}"),
                (Err(part), Err(g)) => assert!(g.contains(part), "{src}: {g}"),
                _ => panic!("{src}: want {want:?}, got {got:?}"),
            }
        }
    }

    #[test]
    fn compile_errors_say_where() {
        let long = format!("counter > 1 {}", "&& true ".repeat(600));
        let deep = format!("{}1{}", "(".repeat(16), ")".repeat(16));
        let chain = vec!["ingame"; MAX_EXPR_DEPTH + 1].join(" || ");
        // (source, line, column, a part of the message)
        let cases: &[(&str, usize, usize, &str)] = &[
            ("level == ", 1, 10, "ends before it is complete"),
            (
                "levle == \"red\"",
                1,
                1,
                "unknown variable `levle` (did you mean `level`?)",
            ),
            (
                "counter > 1 &&\n  foo",
                2,
                3,
                "unknown variable `foo`: an expression sees event",
            ),
            (
                "event.kind == \"info\" && countr > 1",
                1,
                25,
                "did you mean `counter`",
            ),
            ("let x = 1", 1, 1, ""),
            ("counter = 5", 1, 9, ""),
            ("counter += 1", 1, 9, ""),
            ("while true { 1 }", 1, 1, ""),
            ("loop { 1 }", 1, 1, ""),
            ("for c in codes { 1 }", 1, 1, ""),
            ("fn f() { 1 }", 1, 1, ""),
            ("|x| x + 1", 1, 1, ""),
            ("{ 1 }", 1, 1, ""),
            ("eval(\"1\")", 1, 1, "`eval` is not available"),
            ("print(\"x\")", 1, 1, "`print` is not available"),
            ("debug(\"x\")", 1, 1, "`debug` is not available"),
            ("Fn(\"normalize\")", 1, 1, "`Fn` is not available"),
            ("import \"x\" as y", 1, 1, ""),
            ("throw \"x\"", 1, 1, ""),
            ("\"unterminated", 1, 1, ""),
            ("", 1, 1, "the expression is empty"),
            ("   ", 1, 1, "the expression is empty"),
            (&long, 1, MAX_SOURCE_BYTES + 1, "more than the 4096 allowed"),
            (&deep, 1, 1, "nested more than 32 levels"),
            (&chain, 1, 1, "nested more than 32 levels"),
        ];
        let engine = ExprEngine::new();
        for (src, line, column, part) in cases {
            let err = engine.compile(src).expect_err(src);
            assert!(err.message.contains(part), "{src}: {err}");
            // Positions are pinned where they are the point of the case.
            if !part.is_empty() && !part.starts_with("nested") {
                assert_eq!((err.line, err.column), (*line, *column), "{src}: {err}");
            }
        }
    }

    #[test]
    fn depth_limit_allows_what_its_message_says() {
        let engine = ExprEngine::new();
        let chain = vec!["ingame"; MAX_EXPR_DEPTH].join(" || ");
        let parens = format!("{}1{}", "(".repeat(15), ")".repeat(15));
        for src in [chain, parens] {
            assert!(engine.compile(&src).is_ok(), "{src}");
        }
    }

    #[test]
    fn error_display_is_line_column_message() {
        let err = ExprEngine::new().compile("level == levle").unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("line 1, column 10: {}", err.message)
        );
        assert!(err.message.starts_with("unknown variable `levle`"));
    }

    #[test]
    fn records_the_variables_used() {
        let cases: &[(&str, &[&str])] = &[
            ("true", &[]),
            (
                r#"event.datahold.type == "access" && ingame"#,
                &["event", "ingame"],
            ),
            (
                r#"normalize(event.datahold.code) in codes"#,
                &["event", "codes"],
            ),
            (r#"#{level: 1}.level"#, &[]),
            (r#"event.level_id == level_id"#, &["event", "level_id"]),
            (
                r#"device?.type == "lock" && var.armed && run == "none" || counter > level_id"#,
                &["device", "level_id", "counter", "run", "var"],
            ),
        ];
        let engine = ExprEngine::new();
        for (src, want) in cases {
            let e = engine.compile(src).unwrap();
            let mut got = e.variables();
            let mut want = want.to_vec();
            got.sort_unstable();
            want.sort_unstable();
            assert_eq!(got, want, "{src}");
            assert_eq!(e.source(), *src);
        }
    }

    /// Runs `src` on `input` (it must hit a limit with an error containing `part`), then
    /// checks the engine still evaluates a normal expression.
    fn assert_limit(engine: &ExprEngine, src: &str, input: &ExprInput, part: &str) {
        assert!(src.len() <= MAX_SOURCE_BYTES, "{src}");
        match eval_src(engine, src, input) {
            Err(msg) => assert!(msg.contains(part), "{src}: {msg}"),
            Ok(v) => panic!("{src}: no limit hit, gave {v}"),
        }
        assert_eq!(eval_src(engine, "counter + 1", input), Ok(json!(13)));
    }

    /// `terms` joined by `||` as a balanced tree, so that many terms stay within the depth
    /// limit.
    fn balanced_or(terms: &[&str]) -> String {
        match terms {
            [] => "false".to_string(),
            [one] => one.to_string(),
            _ => {
                let (a, b) = terms.split_at(terms.len() / 2);
                format!("({} || {})", balanced_or(a), balanced_or(b))
            }
        }
    }

    /// As many copies of `term` as fit the source limit, in a balanced `||` tree.
    fn fill(term: &str) -> String {
        let mut n = MAX_SOURCE_BYTES / (term.len() + 6);
        loop {
            let src = balanced_or(&vec![term; n]);
            if src.len() <= MAX_SOURCE_BYTES {
                return src;
            }
            n -= 1;
        }
    }

    #[test]
    fn operations_limit_is_set_on_the_engine() {
        // Without loops, recursion or `blob`, an expression of at most 4096 bytes runs a few
        // hundred counted operations at most (Rhai counts expression nodes and calls, not the
        // work inside a native function): the limit is a backstop that no expression found
        // reaches. So it is shown on a loop compiled behind the sandbox's back.
        let mut engine = ExprEngine::new();
        engine.engine.set_allow_looping(true);
        let ast = engine
            .engine
            .compile("let x = 0; loop { x += 1; }")
            .unwrap();
        let err = engine.engine.eval_ast::<Dynamic>(&ast).unwrap_err();
        let msg = describe_eval_error(*err);
        assert!(msg.contains("more than 10000 operations"), "{msg}");
        let f = fixture();
        assert_eq!(eval_src(&engine, "counter + 1", &f.input()), Ok(json!(13)));
    }

    /// An event with a string of `n` bytes at `event.big`.
    fn event_with_big_string(n: usize) -> Value {
        json!({ "kind": "info", "big": "A".repeat(n) })
    }

    #[test]
    fn costliest_expressions_finish() {
        // The costliest expressions found within the limits (their times are in the
        // benchmark): scans of a full-size `codes`, and splitting a long input string.
        let engine = ExprEngine::new();
        let f = fixture();
        let codes: Vec<String> = (0..MAX_ARRAY_LEN).map(|n| n.to_string()).collect();
        let big = event_with_big_string(MAX_ARRAY_LEN - 2);
        let mut input = f.input();
        input.codes = &codes;
        input.event = &big;
        for term in ["\"none\" in codes", "event.big.split(\"\").len() > 9999"] {
            let src = fill(term);
            assert_eq!(eval_src(&engine, &src, &input), Ok(json!(false)), "{src}");
        }
    }

    #[test]
    fn size_limits_are_hit() {
        let engine = ExprEngine::new();
        let f = fixture();
        let big = event_with_big_string(1000);
        let codes: Vec<String> = (0..600).map(|n| n.to_string()).collect();
        let mut input = f.input();
        input.event = &big;
        input.codes = &codes;
        let cases = [
            (
                format!("\"a\".pad({}, \"a\")", MAX_STRING_BYTES + 1),
                "Length of string",
            ),
            (vec!["event.big"; 17].join(" + "), "Length of string"),
            (format!("[].pad({}, 0)", MAX_ARRAY_LEN + 1), "Size of array"),
            ("codes + codes".to_string(), "Size of array"),
            (
                "(event.big + event.big).split(\"\")".to_string(),
                "Size of array",
            ),
        ];
        for (src, part) in &cases {
            assert_limit(&engine, src, &input, part);
        }
        // Maps: a literal cannot reach the limit within the source limit; merging onto a big
        // event does.
        let mut big = serde_json::Map::new();
        for i in 0..MAX_MAP_LEN - 5 {
            big.insert(format!("k{i}"), json!(i));
        }
        let big = Value::Object(big);
        let mut input = f.input();
        input.event = &big;
        let src = "event + #{a: 1, b: 2, c: 3, d: 4, e: 5, f: 6, g: 7, h: 8}";
        assert_limit(&engine, src, &input, "Size of object map");
    }

    #[test]
    fn literal_size_limits_are_compile_errors() {
        let engine = ExprEngine::new();
        let array = format!("[{}]", vec!["0"; MAX_ARRAY_LEN + 1].join(","));
        assert!(array.len() <= MAX_SOURCE_BYTES);
        let err = engine.compile(&array).unwrap_err();
        assert!(
            err.message.contains("exceeds the maximum limit (1024)"),
            "{err}"
        );
    }

    #[test]
    fn call_depth_limit_is_set_on_the_engine() {
        // Expressions cannot define functions (see compile_errors_say_where), so the only way
        // to reach the call-depth limit is a script compiled behind the sandbox's back.
        let engine = ExprEngine::new();
        let ast = engine.engine.compile("fn f(n) { f(n + 1) } f(0)").unwrap();
        let err = engine.engine.eval_ast::<Dynamic>(&ast).unwrap_err();
        let msg = describe_eval_error(*err);
        assert!(msg.contains("calls nested deeper than 8 levels"), "{msg}");
        let f = fixture();
        assert_eq!(eval_src(&engine, "counter + 1", &f.input()), Ok(json!(13)));
    }

    #[test]
    fn input_too_deep_is_an_error_not_a_crash() {
        let engine = ExprEngine::new();
        let f = fixture();
        let mut deep = json!(1);
        for _ in 0..MAX_VALUE_DEPTH + 5 {
            deep = json!({ "a": deep });
        }
        let mut input = f.input();
        input.event = &deep;
        let e = engine.compile("event.a").unwrap();
        let err = engine.eval(&e, &input).unwrap_err();
        assert!(
            err.starts_with("event: nested deeper than 64 levels"),
            "{err}"
        );
        // The same input is fine for an expression that does not read `event`.
        let e = engine.compile("counter").unwrap();
        assert_eq!(engine.eval(&e, &input), Ok(json!(12)));
    }

    #[test]
    fn inputs_up_to_the_limits_are_readable() {
        let engine = ExprEngine::new();
        let f = fixture();
        let codes: Vec<String> = (0..MAX_ARRAY_LEN).map(|n| format!("{n:04}")).collect();
        let mut input = f.input();
        input.codes = &codes;
        assert_eq!(
            eval_src(&engine, "codes.contains(\"1023\")", &input),
            Ok(json!(true))
        );
        // One more code and a method call on `codes` fails with a clear error (Rhai checks a
        // method's receiver; `in` is not checked); the rest still works.
        let codes: Vec<String> = (0..=MAX_ARRAY_LEN).map(|n| format!("{n:04}")).collect();
        input.codes = &codes;
        assert_eq!(
            eval_src(&engine, "\"1024\" in codes", &input),
            Ok(json!(true))
        );
        let err = eval_src(&engine, "codes.contains(\"1023\")", &input).unwrap_err();
        assert!(err.contains("Size of array"), "{err}");
        assert_eq!(eval_src(&engine, "counter", &input), Ok(json!(12)));
    }

    #[test]
    fn engine_and_expr_are_shared_across_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<ExprEngine>();
        assert_send_sync::<Expr>();
        let engine = ExprEngine::new();
        let e = engine.compile("counter * 2").unwrap();
        let f = fixture();
        std::thread::scope(|s| {
            for _ in 0..2 {
                s.spawn(|| {
                    for _ in 0..100 {
                        assert_eq!(engine.eval(&e.clone(), &f.input()), Ok(json!(24)));
                    }
                });
            }
        });
    }

    #[test]
    fn normalize_and_is_digits() {
        let cases: &[(&str, &str)] = &[
            ("{AUX}", "aux"),
            (" { Aux }\t\n", "aux"),
            ("", ""),
            ("ÄÖ", "äö"),
            ("{{}}", ""),
        ];
        for (s, want) in cases {
            assert_eq!(normalize(s), *want, "{s:?}");
        }
        let cases: &[(&str, i64, bool)] = &[
            ("0042", 4, true),
            ("0042", 3, false),
            ("", 0, true),
            ("４２", 2, false),
            ("4 2", 3, false),
            ("42", i64::MIN, false),
        ];
        for (s, n, want) in cases {
            assert_eq!(is_digits(s, *n), *want, "{s:?} {n}");
        }
    }

    /// A small xorshift generator: reproducible garbage without a dependency.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    #[test]
    fn garbage_never_panics() {
        const PIECES: &[&str] = &[
            "event",
            "device",
            "level",
            "level_id",
            "counter",
            "ingame",
            "run",
            "var",
            "codes",
            ".",
            "?.",
            "[",
            "]",
            "(",
            ")",
            "{",
            "}",
            "#{",
            ":",
            ",",
            "\"",
            "'",
            "`",
            "${",
            "+",
            "-",
            "*",
            "/",
            "%",
            "**",
            "==",
            "!=",
            "<",
            ">=",
            "&&",
            "||",
            "!",
            "in",
            "if",
            "else",
            "switch",
            "=>",
            "_",
            "fn",
            "|",
            "let",
            "=",
            ";",
            "0",
            "1",
            "-1",
            "9223372036854775807",
            "1.5e308",
            "0x",
            "\"a\"",
            "'b'",
            "normalize",
            "is_digits",
            "len",
            "pad",
            "contains",
            "split",
            "sub_string",
            "datahold",
            "type",
            " ",
            "\n",
            "é",
            "\u{0}",
            "\\",
            "//",
            "/*",
            "*/",
            "()",
            "true",
            "false",
            "Fn",
            "eval",
            "print",
            "this",
            "global",
            "::",
            "..",
            "..=",
            "?",
            "??",
            "<<",
            ">>",
            "^",
            "&",
            "@",
            "$",
        ];
        let engine = ExprEngine::new();
        let f = fixture();
        let odd_event = json!({
            "kind": "",
            "datahold": {
                "type": 1e308,
                "content": null,
                "success": "yes",
                "code": u64::MAX,
                "attempt": -0.0
            },
            "x": [[[]], {}, "é\u{0}"]
        });
        let empty = serde_json::Map::new();
        let odd = ExprInput {
            event: &odd_event,
            device: &Value::Null,
            level: "",
            level_id: i64::MIN,
            counter: i64::MAX,
            ingame: false,
            run: "ended",
            var: &empty,
            codes: &[],
        };
        let inputs = [f.input(), odd];
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let seeds = [
            r#"event.datahold.type == "access" && !event.datahold.success && ingame"#,
            r#"normalize(event.datahold.content) in codes || is_digits(event.datahold.code, 4)"#,
            r#"if counter > 10 { var.mode } else { [level, `x${counter}`] }"#,
        ];
        let (mut compiled, mut total) = (0, 0);
        for round in 0..3000 {
            let src: String = match round % 3 {
                // Tokens in random order.
                0 => (0..rng.below(40))
                    .map(|_| PIECES[rng.below(PIECES.len())])
                    .collect(),
                // Random characters.
                1 => (0..rng.below(60))
                    .map(|_| char::from_u32(rng.below(0x250) as u32).unwrap_or('?'))
                    .collect(),
                // A valid expression mutated.
                _ => {
                    let mut chars: Vec<char> = seeds[rng.below(seeds.len())].chars().collect();
                    for _ in 0..1 + rng.below(4) {
                        let at = rng.below(chars.len() + 1);
                        match rng.below(3) {
                            0 if at < chars.len() => {
                                chars.remove(at);
                            }
                            1 => {
                                let piece = PIECES[rng.below(PIECES.len())];
                                for (k, c) in piece.chars().enumerate() {
                                    chars.insert(at + k, c);
                                }
                            }
                            _ if at + 1 < chars.len() => chars.swap(at, at + 1),
                            _ => {}
                        }
                    }
                    chars.into_iter().collect()
                }
            };
            total += 1;
            match engine.compile(&src) {
                Ok(e) => {
                    compiled += 1;
                    for input in &inputs {
                        for result in [
                            engine.eval(&e, input).map(|_| ()),
                            engine.eval_bool(&e, input).map(|_| ()),
                        ] {
                            if let Err(msg) = result {
                                assert!(!msg.contains(INTERNAL_ERROR), "{src:?}: {msg}");
                            }
                        }
                    }
                }
                Err(err) => {
                    assert!(!err.message.contains(INTERNAL_ERROR), "{src:?}: {err}");
                    assert!(err.line >= 1 && err.column >= 1, "{src:?}: {err}");
                }
            }
        }
        // The generator must reach evaluation too, not only compile errors.
        assert!(compiled > total / 50, "only {compiled} of {total} compiled");
    }
}

//! Rhai transform scripts: one sandboxed `Engine` (built once from `[scripts]`, shared),
//! the compiled scripts as an immutable `ScriptSet` that `ScriptRegistry` publishes over a
//! watch channel (reloaded from the store on every `Change::Scripts`, so a save takes
//! effect on the next request, with no restart), and `Scripts`, the handle request tasks
//! run them with: each call runs on tokio's blocking pool, never on an async worker, under
//! the sandbox's limits and a wall-clock budget.
//!
//! The sandbox: no module can be imported (`import` resolves nothing), `eval` is off,
//! `print`/`debug` go to the log, and the engine registers no file, network or process
//! functions (Rhai has none unless asked). Operations, call depth, expression depth, string,
//! array and map sizes are limited; the progress callback stops a call past its deadline
//! (a per-thread deadline, set by the call itself: one blocking thread runs one call).

mod registry;

use std::cell::Cell;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rhai::{AST, CallFnOptions, Dynamic, Engine, EvalAltResult, Scope};
use serde_json::Value;

pub use registry::{ReloadScripts, ScriptRegistry};

use crate::config::ScriptSettings;
use crate::domain::scripts::ScriptRecord;
use crate::error::{ApiError, ErrorKind};
use crate::providers::{FailureClass, UpstreamFailure};

/// The functions a script may define, each taking one object map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    /// A deployment's `request_script`: the body about to go upstream.
    OnRequest,
    /// A deployment's `response_script`: the upstream's answer, or one stream event.
    OnResponse,
    /// A ComfyUI deployment's `request_script`: the image request → the workflow.
    Workflow,
}

impl Hook {
    pub fn name(self) -> &'static str {
        match self {
            Self::OnRequest => "on_request",
            Self::OnResponse => "on_response",
            Self::Workflow => "workflow",
        }
    }
}

/// A script that did not produce its output: which, and why (the compiler's or the
/// engine's message, never the input).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("script `{script}` failed: {reason}")]
pub struct ScriptError {
    pub script: String,
    pub reason: String,
}

impl From<ScriptError> for ApiError {
    fn from(e: ScriptError) -> Self {
        ApiError::new(ErrorKind::ScriptError, e.to_string())
    }
}

impl From<ScriptError> for UpstreamFailure {
    /// A script failing on an attempt: final (never retried elsewhere), and not the
    /// deployment's fault.
    fn from(e: ScriptError) -> Self {
        let message = e.to_string();
        UpstreamFailure {
            vendor_message: Some(message.clone()),
            ..UpstreamFailure::new(FailureClass::Script, message)
        }
    }
}

/// Source that does not compile: the compiler's message and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompileError {
    pub message: String,
    pub line: Option<usize>,
    pub column: Option<usize>,
}

/// Which hooks a compiled script defines (with exactly one parameter).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct Functions {
    pub on_request: bool,
    pub on_response: bool,
    pub workflow: bool,
}

impl Functions {
    fn of(ast: &AST) -> Self {
        let mut functions = Self::default();
        for f in ast.iter_functions() {
            if f.params.len() != 1 {
                continue;
            }
            match f.name {
                "on_request" => functions.on_request = true,
                "on_response" => functions.on_response = true,
                "workflow" => functions.workflow = true,
                _ => {}
            }
        }
        functions
    }

    pub fn defines(self, hook: Hook) -> bool {
        match hook {
            Hook::OnRequest => self.on_request,
            Hook::OnResponse => self.on_response,
            Hook::Workflow => self.workflow,
        }
    }
}

/// A stored script, compiled (or why it no longer compiles: the limits changed).
pub struct LoadedScript {
    pub record: ScriptRecord,
    pub program: Result<Arc<AST>, String>,
    pub functions: Functions,
}

/// The scripts as the registry last published them, by name.
#[derive(Default)]
pub struct ScriptSet {
    pub scripts: BTreeMap<String, Arc<LoadedScript>>,
}

thread_local! {
    /// When the call running on this thread must stop (none outside a call).
    static DEADLINE: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// How often (in operations) the progress callback looks at the clock.
const CLOCK_EVERY_OPS: u64 = 256;

/// The one engine every script compiles and runs in.
pub struct Sandbox {
    engine: Engine,
    budget: Duration,
}

impl Sandbox {
    pub fn new(settings: &ScriptSettings) -> Self {
        let mut engine = Engine::new();
        engine.set_module_resolver(rhai::module_resolvers::DummyModuleResolver::new());
        engine.disable_symbol("eval");
        engine.set_max_operations(settings.max_operations);
        engine.set_max_call_levels(settings.max_call_levels);
        engine.set_max_expr_depths(settings.max_expr_depth, settings.max_expr_depth);
        engine.set_max_string_size(settings.max_string_bytes);
        engine.set_max_array_size(settings.max_array_len);
        engine.set_max_map_size(settings.max_map_len);
        engine.on_print(|text| tracing::debug!(target: "lowart::scripts", "{text}"));
        engine.on_debug(|text, source, pos| {
            tracing::debug!(target: "lowart::scripts", source = source.unwrap_or(""), position = %pos, "{text}");
        });
        engine.on_progress(|ops| {
            if ops % CLOCK_EVERY_OPS != 0 {
                return None;
            }
            DEADLINE
                .with(Cell::get)
                .filter(|deadline| Instant::now() >= *deadline)
                .map(|_| Dynamic::UNIT)
        });
        Self {
            engine,
            budget: Duration::from_millis(settings.timeout_ms.max(1)),
        }
    }

    /// Compiles `source` (the limits apply to parsing too).
    pub fn compile(&self, source: &str) -> Result<AST, CompileError> {
        self.engine.compile(source).map_err(|e| {
            let position = e.position();
            CompileError {
                message: e.err_type().to_string(),
                line: position.line(),
                column: position.position(),
            }
        })
    }

    /// A stored script, compiled.
    pub fn load(&self, record: ScriptRecord) -> LoadedScript {
        match self.compile(&record.source) {
            Ok(ast) => LoadedScript {
                functions: Functions::of(&ast),
                program: Ok(Arc::new(ast)),
                record,
            },
            Err(e) => {
                tracing::error!(script = %record.name, error = %e.message,
                    "a stored script no longer compiles (were the [scripts] limits lowered?)");
                LoadedScript {
                    record,
                    program: Err(e.message),
                    functions: Functions::default(),
                }
            }
        }
    }

    /// Runs `function` of `ast` on `input` on this thread, within the budget. Blocks: call
    /// it from the blocking pool.
    fn call(&self, ast: &AST, function: &str, input: &Value) -> Result<Value, String> {
        let argument = rhai::serde::to_dynamic(input).map_err(|e| e.to_string())?;
        let started = Instant::now();
        DEADLINE.with(|d| d.set(Some(started + self.budget)));
        let result = self.engine.call_fn_with_options::<Dynamic>(
            // Top-level statements run first (an `import` there fails, as it should).
            CallFnOptions::new(),
            &mut Scope::new(),
            ast,
            function,
            (argument,),
        );
        DEADLINE.with(|d| d.set(None));
        let output = result.map_err(|e| self.reason(*e, started))?;
        if !output.is_map() {
            return Err(format!(
                "`{function}` returned {} instead of an object map",
                output.type_name()
            ));
        }
        rhai::serde::from_dynamic::<Value>(&output).map_err(|e| e.to_string())
    }

    fn reason(&self, error: EvalAltResult, started: Instant) -> String {
        match error {
            EvalAltResult::ErrorTerminated(..) => format!(
                "it ran past its time budget of {} ms (stopped after {} ms)",
                self.budget.as_millis(),
                started.elapsed().as_millis()
            ),
            other => other.to_string(),
        }
    }
}

/// What request tasks run scripts with: the sandbox and the published scripts.
#[derive(Clone)]
pub struct Scripts {
    sandbox: Arc<Sandbox>,
    published: tokio::sync::watch::Receiver<Arc<ScriptSet>>,
}

impl Scripts {
    pub fn new(
        sandbox: Arc<Sandbox>,
        published: tokio::sync::watch::Receiver<Arc<ScriptSet>>,
    ) -> Self {
        Self { sandbox, published }
    }

    pub fn sandbox(&self) -> &Sandbox {
        &self.sandbox
    }

    /// The scripts as published now.
    pub fn current(&self) -> Arc<ScriptSet> {
        self.published.borrow().clone()
    }

    /// Runs `function` of the script `name` on `input` (an object map) on the blocking
    /// pool and answers the map it returned.
    pub async fn run(
        &self,
        name: &str,
        function: &str,
        input: Value,
    ) -> Result<Value, ScriptError> {
        let failed = |reason: String| ScriptError {
            script: name.to_string(),
            reason,
        };
        let script = self
            .current()
            .scripts
            .get(name)
            .cloned()
            .ok_or_else(|| failed("no such script".into()))?;
        let ast = script
            .program
            .clone()
            .map_err(|e| failed(format!("it does not compile: {e}")))?;
        if !ast
            .iter_functions()
            .any(|f| f.name == function && f.params.len() == 1)
        {
            return Err(failed(format!("it defines no `fn {function}(x)`")));
        }
        let sandbox = self.sandbox.clone();
        let function_name = function.to_string();
        tokio::task::spawn_blocking(move || sandbox.call(&ast, &function_name, &input))
            .await
            .map_err(|e| failed(format!("its thread failed: {e}")))?
            .map_err(failed)
    }

    /// Runs `hook` of `name` on a JSON body (an object; anything else goes through as it
    /// is) and answers the body serialised again.
    pub async fn transform(
        &self,
        name: &str,
        hook: Hook,
        body: &[u8],
    ) -> Result<Option<Vec<u8>>, ScriptError> {
        let Ok(value @ Value::Object(_)) = serde_json::from_slice::<Value>(body) else {
            return Ok(None);
        };
        let output = self.run(name, hook.name(), value).await?;
        serde_json::to_vec(&output)
            .map(Some)
            .map_err(|e| ScriptError {
                script: name.to_string(),
                reason: e.to_string(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sandbox(settings: ScriptSettings) -> Sandbox {
        Sandbox::new(&settings)
    }

    fn run(s: &Sandbox, source: &str, input: Value) -> Result<Value, String> {
        let ast = s.compile(source).map_err(|e| e.message)?;
        s.call(&ast, "on_request", &input)
    }

    #[test]
    fn a_script_changes_the_map_it_is_given() {
        let s = sandbox(ScriptSettings::default());
        let out = run(
            &s,
            r#"fn on_request(req) { req.model = "b"; req.n = req.n + 1; req }"#,
            json!({"model": "a", "n": 1, "keep": [1, {"x": null}]}),
        );
        assert_eq!(
            out,
            Ok(json!({"model": "b", "n": 2, "keep": [1, {"x": null}]}))
        );
    }

    #[test]
    fn the_wall_clock_budget_stops_an_endless_loop() {
        let s = sandbox(ScriptSettings {
            max_operations: 0,
            timeout_ms: 100,
            ..ScriptSettings::default()
        });
        let started = Instant::now();
        let out = run(&s, "fn on_request(req) { loop {} }", json!({}));
        assert!(out.unwrap_err().contains("time budget of 100 ms"));
        assert!(started.elapsed() < Duration::from_secs(2));
        // The deadline belonged to that call: the next one runs normally.
        assert_eq!(
            run(&s, "fn on_request(req) { req }", json!({"a": 1})),
            Ok(json!({"a": 1}))
        );
    }

    #[test]
    fn limits_stop_scripts_that_grow_too_much() {
        let s = sandbox(ScriptSettings {
            max_string_bytes: 100,
            max_call_levels: 8,
            max_array_len: 10,
            ..ScriptSettings::default()
        });
        let string = run(
            &s,
            r#"fn on_request(req) { let s = "x"; loop { s += s; } }"#,
            json!({}),
        );
        assert!(string.unwrap_err().contains("too large"), "string");
        let deep = run(
            &s,
            "fn f(n) { f(n + 1) } fn on_request(req) { f(0) }",
            json!({}),
        );
        assert!(
            deep.unwrap_err().to_lowercase().contains("stack overflow"),
            "calls"
        );
        let array = run(
            &s,
            "fn on_request(req) { let a = []; loop { a.push(1); } }",
            json!({}),
        );
        assert!(array.unwrap_err().contains("too large"), "array");
    }

    #[test]
    fn nothing_outside_the_sandbox_is_reachable() {
        let s = sandbox(ScriptSettings::default());
        for source in [
            r#"import "/etc/passwd" as p; fn on_request(req) { req }"#,
            r#"fn on_request(req) { import "/etc/passwd" as p; req }"#,
            r#"fn on_request(req) { open_file("/etc/passwd") }"#,
            r#"fn on_request(req) { eval("1") }"#,
        ] {
            let ast = s.compile(source);
            let Ok(ast) = ast else { continue };
            let out = s.call(&ast, "on_request", &json!({}));
            assert!(out.is_err(), "{source}: {out:?}");
        }
    }

    #[test]
    fn a_compile_error_says_where() {
        let s = sandbox(ScriptSettings::default());
        let e = s
            .compile("fn on_request(req) {\n  let x = ;\n}")
            .unwrap_err();
        assert_eq!(e.line, Some(2));
        assert!(e.column.is_some());
        assert!(!e.message.is_empty());
    }

    #[test]
    fn a_script_must_answer_a_map() {
        let s = sandbox(ScriptSettings::default());
        let out = run(&s, "fn on_request(req) { 42 }", json!({}));
        assert!(out.unwrap_err().contains("instead of an object map"));
    }

    #[test]
    fn the_hooks_a_script_defines_are_known() {
        let s = sandbox(ScriptSettings::default());
        let ast = s
            .compile("fn on_response(r) { r } fn workflow(r) { r } fn on_request() {}")
            .unwrap();
        assert_eq!(
            Functions::of(&ast),
            Functions {
                on_request: false,
                on_response: true,
                workflow: true
            }
        );
    }
}

"""Built-in rules, one module per family, and the registry that policy files name them by."""

from pathguard.rules._base import (
    CompileContext,
    EvalContext,
    Fail,
    Rule,
    compile_rule,
    get_rule,
    rule,
    rule_names,
)

__all__ = [
    "CompileContext",
    "EvalContext",
    "Fail",
    "Rule",
    "compile_rule",
    "get_rule",
    "rule",
    "rule_names",
]

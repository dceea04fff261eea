"""pathguard: runtime governance for AI agents.

Check every step an agent is about to take against policies over the whole path of its task,
in-process and in microseconds; allow, warn, ask for approval or block; record every step in
a tamper-evident trace.
"""

from pathguard.canonical import canonical_hash, canonical_json
from pathguard.capture import CaptureLimits
from pathguard.decisions import Action, Decision, Effect, Mode, Severity, Violation
from pathguard.engine import PolicyEngine
from pathguard.errors import (
    ApprovalDeniedError,
    BlockedError,
    CaptureError,
    ConfigurationError,
    InvalidBehaviorError,
    NoActiveTaskError,
    PathguardError,
    PolicyLoadError,
    PolicyProblem,
    TemplateError,
    TraceIntegrityError,
)
from pathguard.guard import ApprovalRequest, Guard, PolicyWarning
from pathguard.policies import Policy, PolicySet, load_policies
from pathguard.rules import EvalContext, Fail, Rule, rule, rule_names
from pathguard.templates import Template
from pathguard.trace import HashChain, JsonlSink, MemorySink, TraceRecord, verify_jsonl
from pathguard.vocabulary import (
    ABSENT,
    AgentRegistration,
    Behavior,
    RiskClass,
    Scope,
    Status,
    StepType,
    Verb,
)

__version__ = "0.1.0"

__all__ = [
    "ABSENT",
    "Action",
    "AgentRegistration",
    "ApprovalDeniedError",
    "ApprovalRequest",
    "Behavior",
    "BlockedError",
    "CaptureError",
    "CaptureLimits",
    "ConfigurationError",
    "Decision",
    "Effect",
    "EvalContext",
    "Fail",
    "Guard",
    "HashChain",
    "InvalidBehaviorError",
    "JsonlSink",
    "MemorySink",
    "Mode",
    "NoActiveTaskError",
    "PathguardError",
    "Policy",
    "PolicyEngine",
    "PolicyLoadError",
    "PolicyProblem",
    "PolicySet",
    "PolicyWarning",
    "RiskClass",
    "Rule",
    "Scope",
    "Severity",
    "Status",
    "StepType",
    "Template",
    "TemplateError",
    "TraceIntegrityError",
    "TraceRecord",
    "Verb",
    "Violation",
    "__version__",
    "canonical_hash",
    "canonical_json",
    "load_policies",
    "rule",
    "rule_names",
    "verify_jsonl",
]

"""Access rules: allowed step names, hosts, paths, data classes and hours."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from pathguard import (
    Action,
    AgentRegistration,
    Behavior,
    Decision,
    PolicyEngine,
    PolicyLoadError,
    PolicySet,
    StepType,
    Verb,
)


def make_engine(rule: str, params: dict[str, Any], **policy: Any) -> PolicyEngine:
    doc = {
        "version": 1,
        "name": "test",
        "policies": [{"id": "p", "rule": rule, "params": params, **policy}],
    }
    return PolicyEngine(PolicySet.from_dict(doc))


def step(step_name: str | None = "fetch", **fields: Any) -> Behavior:
    fields.setdefault("agent_key", "bot")
    return Behavior(
        step_type=StepType.step_resource,
        verb=Verb.GET,
        step_name=step_name,
        task_id="t1",
        **fields,
    )


def reason(decision: Decision) -> str:
    (violation,) = decision.violations
    return violation.reason


def load_error(rule: str, params: dict[str, Any]) -> str:
    with pytest.raises(PolicyLoadError) as info:
        make_engine(rule, params)
    return str(info.value)


# -- step_name_allowlist ------------------------------------------------------------------


def test_step_name_allowlist_with_names() -> None:
    engine = make_engine("step_name_allowlist", {"names": ["fetch", "search"]})
    assert engine.evaluate(step("search")).action is Action.allow
    decision = engine.evaluate(step("delete_all"))
    assert decision.action is Action.block
    assert reason(decision) == "'delete_all' is not in the allowlist"


def test_step_name_allowlist_defaults_to_the_declared_tools() -> None:
    engine = make_engine("step_name_allowlist", {})
    engine.register(
        AgentRegistration(agent_key="bot", name="Bot", purpose="Triage", tools=["fetch"])
    )
    assert engine.evaluate(step("fetch")).allowed
    assert reason(engine.evaluate(step("shell"))) == (
        "'shell' is not in the agent's declared tools"
    )


def test_step_name_allowlist_violates_when_there_are_no_names_at_all() -> None:
    engine = make_engine("step_name_allowlist", {})
    assert reason(engine.evaluate(step("fetch"))) == (
        "no allowed step names: the agent is not registered, so it declared no tools"
    )
    engine.register(AgentRegistration(agent_key="bot", name="Bot", purpose="Triage"))
    assert reason(engine.evaluate(step("fetch"))) == (
        "no allowed step names: the agent declared no tools"
    )
    empty = make_engine("step_name_allowlist", {"names": []})
    assert reason(empty.evaluate(step("fetch"))) == "no allowed step names: the allowlist is empty"


def test_step_name_allowlist_violates_for_an_unnamed_step() -> None:
    engine = make_engine("step_name_allowlist", {"names": ["fetch"]})
    assert reason(engine.evaluate(step(None))) == (
        "the step has no name, so it is not in the allowlist"
    )


# -- domain_allowlist ---------------------------------------------------------------------


def domain(value: Any) -> Behavior:
    return step(properties={"target": {"domain": value}})


@pytest.mark.parametrize(
    "value",
    [
        "example.com",
        "api.example.com",
        "deep.api.example.com",
        "EXAMPLE.com.",
        "example.com:8443",
        "https://api.example.com/v1/items?q=1",
        "https://user:pw@example.com/",
        "docs.python.org",
        "10.0.0.7",
        "http://10.0.0.7:8080/health",
        "::1",
        "[::1]:8080",
        "https://[::1]/",
    ],
)
def test_domain_allowlist_allows_listed_hosts_and_subdomains(value: str) -> None:
    domains = ["example.com", "python.org", "10.0.0.7", "::1"]
    engine = make_engine("domain_allowlist", {"domains": domains})
    assert engine.evaluate(domain(value)).action is Action.allow


@pytest.mark.parametrize(
    ("value", "host"),
    [
        ("evil-example.com", "evil-example.com"),
        ("example.com.evil.net", "example.com.evil.net"),
        ("https://example.com@evil.net/login", "evil.net"),
        ("notexample.com", "notexample.com"),
        ("com", "com"),
        ("10.0.0.8", "10.0.0.8"),
    ],
)
def test_domain_allowlist_blocks_look_alike_hosts(value: str, host: str) -> None:
    engine = make_engine("domain_allowlist", {"domains": ["example.com", "10.0.0.7"]})
    decision = engine.evaluate(domain(value))
    assert decision.action is Action.block
    assert reason(decision) == f"the host {host!r} is not in the allowed domains"


@pytest.mark.parametrize(
    "value",
    [
        "exa mple.com",
        "https://evil.net\\@example.com/",
        "example.com:99999",
        "https://",
        "-example.com",
        "0x7f.1",
        "2130706433",
        "",
        42,
        ["example.com"],
    ],
)
def test_domain_allowlist_blocks_what_it_cannot_parse(value: Any) -> None:
    engine = make_engine("domain_allowlist", {"domains": ["example.com", "127.0.0.1"]})
    decision = engine.evaluate(domain(value))
    assert decision.action is Action.block
    assert reason(decision).startswith("properties.target.domain is not a host that can be read")


def test_domain_allowlist_blocks_an_absent_host() -> None:
    engine = make_engine("domain_allowlist", {"domains": ["example.com"]})
    assert reason(engine.evaluate(step())) == (
        "properties.target.domain is absent, so the host cannot be checked"
    )


def test_domain_allowlist_reads_another_field() -> None:
    engine = make_engine("domain_allowlist", {"domains": ["example.com"], "field": "input.url"})
    assert engine.evaluate(step(input={"url": "https://www.example.com/a"})).allowed
    assert not engine.evaluate(step(input={"url": "https://example.org/a"})).allowed


def test_domain_allowlist_matches_international_names() -> None:
    engine = make_engine("domain_allowlist", {"domains": ["bücher.example"]})
    assert engine.evaluate(domain("shop.xn--bcher-kva.example")).allowed
    assert engine.evaluate(domain("https://Shop.Bücher.example/")).allowed


@pytest.mark.parametrize(
    ("entry", "hint"),
    [
        ("*.example.com", "Write 'example.com': a domain always covers its subdomains."),
        ("https://example.com", "Write a bare host such as 'example.com'"),
        ("example.com/path", "Write a bare host such as 'example.com'"),
    ],
)
def test_domain_lists_reject_entries_that_are_not_hosts(entry: str, hint: str) -> None:
    message = load_error("domain_allowlist", {"domains": [entry]})
    assert f"{entry!r} is not a domain name or IP address." in message
    assert hint in message
    assert "field 'params.domains'" in message


def test_domain_lists_need_a_domain_and_a_valid_field() -> None:
    assert "params.domains" in load_error("domain_denylist", {"domains": []})
    message = load_error("domain_denylist", {"domains": ["a.com"], "field": "target.domain"})
    assert "'target.domain' does not start with a field of a step" in message


# -- domain_denylist ----------------------------------------------------------------------


def test_domain_denylist_blocks_denied_hosts_and_subdomains() -> None:
    engine = make_engine("domain_denylist", {"domains": ["pastebin.com"]})
    decision = engine.evaluate(domain("https://www.PASTEBIN.com/raw/x"))
    assert decision.action is Action.block
    assert reason(decision) == "the host 'www.pastebin.com' is in the denied domain 'pastebin.com'"


def test_domain_denylist_allows_look_alikes_and_absent_hosts() -> None:
    engine = make_engine("domain_denylist", {"domains": ["pastebin.com"]})
    assert engine.evaluate(domain("notpastebin.com")).allowed
    assert engine.evaluate(domain("pastebin.com.example.org")).allowed
    assert engine.evaluate(step()).allowed


def test_domain_denylist_blocks_what_it_cannot_parse() -> None:
    engine = make_engine("domain_denylist", {"domains": ["127.0.0.1"]})
    # `0x7f.1` is 127.0.0.1 to a URL parser: unreadable hosts never slip past a denylist.
    assert not engine.evaluate(domain("http://0x7f.1/admin")).allowed
    assert not engine.evaluate(domain("http://127.0.0.1:8080/")).allowed
    assert not engine.evaluate(domain("http://[::ffff:127.0.0.1]/")).allowed
    assert not engine.evaluate(domain("::ffff:7f00:1")).allowed
    assert engine.evaluate(domain("http://127.0.0.2/")).allowed


# -- path_within_root ---------------------------------------------------------------------


def path(value: Any) -> Behavior:
    return step(properties={"target": {"path": value}})


@pytest.mark.parametrize(
    "value",
    [
        "/data",
        "/data/",
        "/data/reports/2024.csv",
        "/data/./reports/../reports/a.csv",
        "reports/a.csv",
        "./a.csv",
        "file:///data/a.csv",
    ],
)
def test_path_within_root_allows_paths_inside_the_root(value: str) -> None:
    engine = make_engine("path_within_root", {"root": "/data"})
    assert engine.evaluate(path(value)).action is Action.allow


@pytest.mark.parametrize(
    ("value", "resolved"),
    [
        ("/data/../etc/passwd", "/etc/passwd"),
        ("../etc/passwd", "/etc/passwd"),
        ("reports/../../etc", "/etc"),
        ("/database/x", "/database/x"),
        ("/", "/"),
        ("file:///data/%2e%2e/etc/shadow", "/etc/shadow"),
    ],
)
def test_path_within_root_blocks_paths_that_leave_the_root(value: str, resolved: str) -> None:
    engine = make_engine("path_within_root", {"root": "/data"})
    decision = engine.evaluate(path(value))
    assert decision.action is Action.block
    assert reason(decision) == f"the path {resolved!r} is outside '/data'"


@pytest.mark.parametrize(
    "value", ["~/.ssh/id_rsa", "C:\\data\\x", "/data\\..\\etc", "https://example.com/data/x", 7]
)
def test_path_within_root_blocks_paths_it_cannot_read(value: Any) -> None:
    engine = make_engine("path_within_root", {"root": "/data"})
    decision = engine.evaluate(path(value))
    assert reason(decision).startswith("properties.target.path is not a path that can be read")


def test_path_within_root_blocks_an_absent_path() -> None:
    engine = make_engine("path_within_root", {"root": "/data"})
    assert reason(engine.evaluate(step())) == (
        "properties.target.path is absent, so the path cannot be checked"
    )


def test_path_within_root_needs_an_absolute_root() -> None:
    message = load_error("path_within_root", {"root": "data"})
    assert "root must be an absolute POSIX path starting with '/'" in message


# -- forbidden_for_classification ---------------------------------------------------------


def test_forbidden_for_classification_blocks_forbidden_classes() -> None:
    engine = make_engine("forbidden_for_classification", {"classes": ["pii", "secret"]})
    decision = engine.evaluate(step(properties={"data": {"classification": "pii"}}))
    assert decision.action is Action.block
    assert reason(decision) == "the step touches data classified 'pii'"
    listed = step(properties={"data": {"classification": ["public", "secret"]}})
    assert reason(engine.evaluate(listed)) == "the step touches data classified 'secret'"


def test_forbidden_for_classification_allows_other_and_absent_classes() -> None:
    engine = make_engine("forbidden_for_classification", {"classes": ["pii"]})
    assert engine.evaluate(step(properties={"data": {"classification": "public"}})).allowed
    assert engine.evaluate(step(properties={"data": {"classification": ["internal"]}})).allowed
    # Classifications are compared exactly, as policy values are everywhere else.
    assert engine.evaluate(step(properties={"data": {"classification": "PII"}})).allowed
    assert engine.evaluate(step()).allowed


# -- working_hours ------------------------------------------------------------------------


def at(zone: str, year: int, month: int, day: int, hour: int, minute: int) -> float:
    return datetime(year, month, day, hour, minute, tzinfo=ZoneInfo(zone)).timestamp()


def test_working_hours_in_utc() -> None:
    engine = make_engine("working_hours", {"start_hour": 9, "end_hour": 17, "timezone": "UTC"})
    assert engine.evaluate(step(timestamp=at("UTC", 2024, 3, 4, 9, 0))).allowed
    assert engine.evaluate(step(timestamp=at("UTC", 2024, 3, 4, 16, 59))).allowed
    decision = engine.evaluate(step(timestamp=at("UTC", 2024, 3, 4, 17, 0)))
    assert decision.action is Action.block
    assert reason(decision) == "17:00 is outside working hours (09:00-17:00 UTC)"


def test_working_hours_in_a_named_zone_follow_daylight_saving() -> None:
    engine = make_engine(
        "working_hours", {"start_hour": 9, "end_hour": 17, "timezone": "Europe/Amsterdam"}
    )
    # 07:30 UTC is 09:30 in Amsterdam in summer (UTC+2) but 08:30 in winter (UTC+1).
    assert engine.evaluate(step(timestamp=at("UTC", 2024, 7, 1, 7, 30))).allowed
    decision = engine.evaluate(step(timestamp=at("UTC", 2024, 1, 15, 7, 30)))
    assert reason(decision) == "08:30 is outside working hours (09:00-17:00 Europe/Amsterdam)"
    assert decision.violations[0].details["local_time"] == "2024-01-15T08:30+01:00"


@pytest.mark.parametrize(
    ("hour", "allowed"), [(22, True), (23, True), (0, True), (5, True), (6, False), (21, False)]
)
def test_working_hours_across_midnight(hour: int, allowed: bool) -> None:
    engine = make_engine(
        "working_hours", {"start_hour": 22, "end_hour": 6, "timezone": "America/New_York"}
    )
    when = at("America/New_York", 2024, 11, 20, hour, 15)
    assert engine.evaluate(step(timestamp=when)).allowed is allowed


def test_working_hours_until_midnight() -> None:
    engine = make_engine("working_hours", {"start_hour": 18, "end_hour": 24, "timezone": "UTC"})
    assert engine.evaluate(step(timestamp=at("UTC", 2024, 1, 1, 23, 59))).allowed
    assert not engine.evaluate(step(timestamp=at("UTC", 2024, 1, 2, 0, 0))).allowed


def test_working_hours_unknown_zone_is_a_load_error() -> None:
    message = load_error(
        "working_hours", {"start_hour": 9, "end_hour": 17, "timezone": "Europe/Amsterdm"}
    )
    assert "'Europe/Amsterdm' is not a known time zone." in message
    assert "Did you mean 'Europe/Amsterdam'?" in message
    assert "Use an IANA name such as 'Europe/Amsterdam'" in message
    assert "field 'params.timezone'" in message


def test_working_hours_rejects_an_empty_window_and_bad_hours() -> None:
    message = load_error("working_hours", {"start_hour": 8, "end_hour": 8, "timezone": "UTC"})
    assert "leaves no hour inside the window" in message
    assert "params.start_hour" in load_error(
        "working_hours", {"start_hour": 24, "end_hour": 8, "timezone": "UTC"}
    )


def test_working_hours_suggests_the_right_case_of_a_zone() -> None:
    message = load_error(
        "working_hours", {"start_hour": 9, "end_hour": 17, "timezone": "europe/amsterdam"}
    )
    assert "Did you mean 'Europe/Amsterdam'?" in message

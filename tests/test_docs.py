"""Every example in the README and docs/ runs: Python blocks execute, policy YAML loads."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest
import yaml

from pathguard import PolicySet, Template
from pathguard.testing import isolated_rules

ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted([ROOT / "README.md", *(ROOT / "docs").rglob("*.md")])
# Pages whose examples need a running platform server: their own tests run them against one.
NEEDS_SERVER = {
    ROOT / "docs" / "how-to" / "run-the-platform.md": "tests/platform/app/test_howto_platform.py",
}
FENCE = re.compile(r"^```(\w+)\n(.*?)^```", re.MULTILINE | re.DOTALL)


def blocks(language: str) -> list[tuple[str, str]]:
    found = []
    for path in DOCS:
        if language == "python" and path in NEEDS_SERVER:
            continue
        text = path.read_text(encoding="utf-8")
        for i, match in enumerate(FENCE.finditer(text)):
            if match.group(1) == language:
                found.append((f"{path.relative_to(ROOT)}#{i}", match.group(2)))
    return found


@pytest.mark.parametrize(("where", "code"), blocks("python"), ids=lambda v: v)
def test_python_examples_run(where: str, code: str, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    with isolated_rules(), contextlib.redirect_stdout(io.StringIO()):
        exec(compile(code, where, "exec"), {"__name__": "__docs__"})


def test_pages_that_need_a_server_have_their_own_test() -> None:
    for page, test in NEEDS_SERVER.items():
        assert page.exists() and (ROOT / test).exists()
        assert page.name in (ROOT / test).read_text(encoding="utf-8")


@pytest.mark.parametrize(("where", "text"), blocks("yaml"), ids=lambda v: v)
def test_yaml_examples_load(where: str, text: str) -> None:
    data = yaml.safe_load(text)
    if isinstance(data, dict) and "policies" in data:
        PolicySet.from_yaml(text, source=where)
    elif isinstance(data, dict) and "rules" in data:
        Template.from_yaml(text, source=where)


def test_readme_quickstart_prints_what_the_readme_says() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    quickstart = readme.split("## Quickstart", 1)[1]
    code = FENCE.search(quickstart)
    assert code is not None and code.group(1) == "python"
    printed = quickstart.split("It prints:", 1)[1]
    expected = FENCE.search(printed)
    assert expected is not None
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code.group(2), "README quickstart", "exec"), {"__name__": "__docs__"})
    assert out.getvalue() == expected.group(2)


def test_the_docs_cover_every_rule() -> None:
    from pathguard.rules._base import rule_names

    pages = (ROOT / "docs/reference/rules").glob("*.md")
    text = "\n".join(p.read_text(encoding="utf-8") for p in pages)
    missing = [name for name in rule_names() if f"`{name}`" not in text]
    assert not missing, f"rules without a reference section: {missing}"

"""Generated docs in sync with the settings table; troubleshooting covers every warning; links resolve."""

from __future__ import annotations

import ast
import re
import tomllib
from pathlib import Path

import pytest

from services import docgen
from shared.config import load_config, settings
from tests.deploy.support import ROOT

DOCS = ROOT / "docs"
LOG_METHODS = {"warning", "error", "exception", "critical"}
_PLACEHOLDER = re.compile(r"%[-#0 +]*\d*(?:\.\d+)?[sdrfxi]")
_KEY_LINE = re.compile(r"^# ([a-z0-9_]+) = (.+)$")


def test_generated_files_are_in_sync_with_shared_config() -> None:
    for path, text in docgen.outputs().items():
        assert path.read_text() == text, f"{path.name} is out of date: run python -m services.docgen"


def test_check_mode_reports_drift(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stale = tmp_path / "configuration.md"
    stale.write_text("old\n")
    monkeypatch.setattr(docgen, "outputs", lambda: {stale: "new\n"})
    assert docgen.main(["--check"]) == 1
    assert stale.read_text() == "old\n"
    assert docgen.main([]) == 0 and stale.read_text() == "new\n"
    assert docgen.main(["--check"]) == 0


def test_configuration_doc_lists_every_key_with_env_and_default() -> None:
    text = (DOCS / "configuration.md").read_text()
    for info in settings():
        row = next((line for line in text.splitlines() if line.startswith(f"| `{info.path}` |")), None)
        assert row is not None, info.path
        assert f"`{info.env}`" in row
        assert ("**secret**" in row) == info.secret


def test_example_config_has_every_key_and_loads_uncommented(tmp_path: Path) -> None:
    lines = docgen.EXAMPLE_TOML.read_text().splitlines()
    secrets = {info.path.rpartition(".")[2] for info in settings() if info.secret}
    uncommented, keys = [], []
    for line in lines:
        match = _KEY_LINE.match(line)
        if match is None:
            uncommented.append(line)
            continue
        keys.append(match[1])
        # Secrets carry placeholders like "<password>"; the TLS files exist only where TLS is set up (load
        # checks that they do).
        if match[1] not in secrets | {"ca_file", "cert_file"}:
            uncommented.append(f"{match[1]} = {match[2]}")
    assert len(keys) == len(list(settings()))
    path = tmp_path / "config.toml"
    path.write_text("\n".join(uncommented))
    tomllib.loads(path.read_text())
    config = load_config(path, environ={})
    assert config.reader.bt2_address == "C4:64:E3:38:3D:0E"
    assert str(config.state_dir) == "/var/lib/renogy-proxy"


def _log_formats() -> list[tuple[str, int, str]]:
    """Constant format strings of every WARNING-or-worse log call in services/ and shared/."""
    found = []
    for path in sorted([*(ROOT / "services").rglob("*.py"), *(ROOT / "shared").rglob("*.py")]):
        if "simulator" in path.parts:  # a test fixture, not a deployed service
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
                continue
            name, args = node.func.attr, node.args
            if name in LOG_METHODS and args:
                fmt = args[0]
            elif name in ("failure", "log") and len(args) >= 2:
                fmt = args[1]
            else:
                continue
            if isinstance(fmt, ast.Constant) and isinstance(fmt.value, str):
                found.append((str(path.relative_to(ROOT)), node.lineno, fmt.value))
    return found


def test_troubleshooting_documents_every_warning_and_error() -> None:
    doc = " ".join((DOCS / "troubleshooting.md").read_text().split())
    formats = _log_formats()
    assert len(formats) > 40, "the scan of log calls found too little"
    missing = []
    for where, line, fmt in formats:
        parts = _PLACEHOLDER.split(fmt)
        if sum(len(p.strip()) for p in parts) < 8:
            continue  # "%s" and friends: the texts are documented where they are built
        pattern = ".{1,80}?".join(re.escape(" ".join(p.split())) for p in parts)
        if not re.search(pattern, doc):
            missing.append(f"{where}:{line}: {fmt!r}")
    assert not missing, "add these to docs/troubleshooting.md:\n" + "\n".join(missing)


def _slug(heading: str) -> str:
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


@pytest.mark.parametrize("name", ["deploy.md", "troubleshooting.md", "configuration.md"])
def test_relative_links_resolve(name: str) -> None:
    text = (DOCS / name).read_text()
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if "://" in target:
            continue
        file_part, _, anchor = target.partition("#")
        linked = (DOCS / file_part) if file_part else DOCS / name
        assert linked.exists(), f"{name}: broken link {target}"
        if anchor:
            body = linked.read_text()
            anchors = {_slug(h) for h in re.findall(r"^#+ (.+)$", body, re.M)}
            anchors |= set(re.findall(r'<a id="([^"]+)"></a>', body))
            assert anchor in anchors, f"{name}: no anchor #{anchor} in {linked.name}"

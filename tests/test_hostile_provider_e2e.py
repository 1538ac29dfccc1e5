"""A hostile model provider against the real system (issue 21, items 13-15): real `smartgen
api` and `smartgen worker` processes, the fake LLM in hostile modes, the terminal client.

What the provider sends is stored bounded and shown safely: `finishReason` of a cut-off
text on GET, no forged log lines in the worker's log, no terminal escapes on screen."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx

from smartgen.kit.text import escape_controls, printable
from tests.conftest import Process, register, start_system, wait_for_status
from tests.fakellm import FakeLLM, Reply
from tests.test_terminal import Client


def chunk(text: str, finish: str | None = None) -> str:
    choice: dict[str, Any] = {"index": 0, "delta": {"content": text}}
    if finish:
        choice["finish_reason"] = finish
    return "data: " + json.dumps({"model": "up/model", "choices": [choice]}) + "\n\n"


ESCAPES = (
    "\x1b[2J\x1b[H\x1b]0;owned window\x07\x1b]8;;http://evil.example/\x1b\\click\x1b]8;;\x1b\\"
)


async def queue(client: httpx.AsyncClient, user: dict[str, Any], prompt: str) -> str:
    r = await client.post(
        "/generate-content",
        json={"prompt": prompt, "contentType": "Blog Post Outline"},
        headers=user["headers"],
    )
    assert r.status_code == 202, r.text
    return str(r.json()["jobId"])


async def test_cut_off_text_escapes_and_forged_log_lines(
    env: dict[str, str],
    processes: list[Process],
    fake_llm: FakeLLM,
    unique: str,
    tmp_path: Path,
) -> None:
    cut, esc, forged = f"[cut-{unique}]", f"[esc-{unique}]", f"[forge-{unique}]"
    fake_llm.always(
        cut, Reply(sse=[chunk("# Half a "), chunk("title", finish="length"), "data: [DONE]\n\n"])
    )
    fake_llm.always(
        esc,
        Reply(sse=[chunk(f"# Title{ESCAPES}\n\nbody"), chunk(" end", "stop"), "data: [DONE]\n\n"]),
    )
    fake_line = f"2026-01-01 00:00:00,000 ERROR   smartgen.worker: FORGED-{unique}"
    fake_llm.always(
        forged,
        Reply(status=503, json_body={"error": {"message": f"busy\n{fake_line}\r\n"}}),
    )
    _, worker, url = await start_system(
        {**env, "JOB_ATTEMPTS": "2", "LOG_LEVEL": "info"}, processes
    )
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        user = await register(client)
        cut_id = await queue(client, user, f"a cut-off text {cut}")
        esc_id = await queue(client, user, f"escapes {esc}")
        forged_id = await queue(client, user, f"a forged log line {forged}")
        done = await wait_for_status(client, cut_id, user["headers"], {"completed", "failed"}, 60)
        assert done["status"] == "completed", done
        assert done["finishReason"] == "length"
        assert done["generatedContent"] == "# Half a title"
        shown = await wait_for_status(client, esc_id, user["headers"], {"completed", "failed"}, 60)
        assert shown["status"] == "completed", shown
        assert shown["finishReason"] == "stop"
        failed = await wait_for_status(client, forged_id, user["headers"], {"failed"}, 60)
        assert "\n" not in failed["error"] and "\r" not in failed["error"]

    # The worker's log: the provider's text never starts a line of its own.
    lines = worker.output().splitlines()
    assert any(f"FORGED-{unique}" in line for line in lines), worker.output()[-3000:]
    assert not any(line.startswith("2026-01-01 00:00:00,000 ERROR") for line in lines)

    # The terminal client shows the stored text without its escape sequences.
    terminal = Client(tmp_path, url)
    token_file = terminal.credentials_file
    token_file.parent.mkdir(parents=True, exist_ok=True)
    token_file.write_text(
        json.dumps({url: {"email": user["email"], "token": user["token"], "local": False}})
    )
    token_file.chmod(0o600)
    r = await terminal.run("show", esc_id)
    assert r.code == 0, r.err
    assert "\x1b" not in r.out and "\x07" not in r.out
    assert "Title" in r.out and "click" in r.out
    r = await terminal.run("show", cut_id)
    assert r.code == 0, r.err
    assert re.search(r"cut off|length", r.out), r.out


def test_escape_controls_keeps_a_log_line_one_line() -> None:
    assert escape_controls("a\nb\r\x1b[2Jc\td") == "a\\nb\\r\\x1b[2Jc\td"
    assert escape_controls("plain") == "plain"


def test_printable_strips_terminal_escapes_but_keeps_lines() -> None:
    assert printable(f"one{ESCAPES}\ntwo\tthree\x07\x9b2J") == "oneclick\ntwo\tthree"
    assert printable("lone \ud800") == "lone \ufffd"


def test_text_log_lines_escape_control_characters_in_their_message() -> None:
    """Any message built from outside text stays one line (the traceback of a real
    exception keeps its own lines)."""
    import io
    import logging

    from smartgen.kit.logcontext import TextFormatter

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(TextFormatter("%(levelname)s %(name)s: %(message)s"))
    logger = logging.getLogger(f"smartgen.test.{id(stream)}")
    logger.propagate = False
    logger.addHandler(handler)
    logger.warning("job %s: %s", "j1", "busy\nERROR smartgen.worker: forged\x1b[2J")
    lines = stream.getvalue().splitlines()
    assert lines == [
        "WARNING " + logger.name + ": job j1: busy\\nERROR smartgen.worker: forged\\x1b[2J"
    ]
    try:
        raise ValueError("boom")
    except ValueError:
        logger.exception("failed: %s", "a\rb")
    text = stream.getvalue()
    assert "failed: a\\rb" in text and "Traceback" in text and "ValueError: boom" in text


def test_a_process_logs_outside_text_on_one_line() -> None:
    """`setup_logging` as every smartgen process runs it (text format)."""
    import subprocess
    import sys

    code = (
        "import logging\n"
        "from smartgen.server.startup import setup_logging\n"
        "setup_logging('info')\n"
        "logging.getLogger('smartgen.worker').warning('job %s: %s', 'j1', "
        "'busy\\n2026-01-01 00:00:00,000 ERROR   smartgen.worker: forged')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    lines = done.stderr.splitlines()
    assert len(lines) == 1, lines
    assert lines[0].endswith(
        "job j1: busy\\n2026-01-01 00:00:00,000 ERROR   smartgen.worker: forged"
    )

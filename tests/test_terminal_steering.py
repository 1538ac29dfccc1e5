"""The terminal client's steering and paying commands as a user runs them (issue 15):
`generate` with every option, `voices`, `variations`, `usage`, a budget refusal; real
subprocesses against real `smartgen api` and `smartgen worker` processes."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import Process, start_system
from tests.fakellm import FakeLLM, Reply
from tests.test_terminal import Client


@pytest.fixture
def env(env: dict[str, str]) -> dict[str, str]:
    return {**env, "ALLOWED_MODELS": "fake/model-1,fake/model-2"}


async def test_generate_with_options_voices_variations_and_usage(
    env: dict[str, str], processes: list[Process], tmp_path: Path, unique: str, fake_llm: FakeLLM
) -> None:
    _, _, url = await start_system(env, processes)
    client = Client(tmp_path, url)
    marker = f"[term-{unique}]"
    fake_llm.always(marker, Reply(cost=0.002))

    r = await client.run(
        "voices", "add", "Cosy", "--description", "Warm and plain", "--example", "Hi there!",
        "--json",
    )  # fmt: skip
    assert r.code == 0, r.err
    voice_id = r.json()["voiceId"]
    r = await client.run("voices")
    assert r.code == 0 and voice_id in r.out and "Warm and plain" in r.out and "Hi there!" in r.out

    r = await client.run(
        "generate", f"Sourdough {marker}", "--tone", "bold", "--length", "short",
        "--language", "de", "--audience", "bakers", "--keyword", "crumb", "--keyword", "levain",
        "--model", "fake/model-2", "--temperature", "0.4", "--voice", voice_id, "--json",
    )  # fmt: skip
    assert r.code == 0, r.err
    job = r.json()
    assert job["status"] == "completed" and job["model"] == "fake/model-2"
    assert job["options"]["keywords"] == ["crumb", "levain"]
    assert job["options"]["voice"]["name"] == "Cosy" and job["cost"] == 0.002
    [call] = fake_llm.calls_for(marker)
    assert call.body["model"] == "fake/model-2" and call.body["temperature"] == 0.4
    assert "bold" in call.system and "BCP-47 tag de" in call.system and "Cosy" in call.system
    assert "<keywords>crumb; levain</keywords>" in call.user

    r = await client.run("show", job["jobId"])
    assert r.code == 0, r.err
    assert "Options: tone=bold" in r.out and "keywords=crumb; levain" in r.out
    assert "Used: 46 tokens · $0.002000" in r.out

    r = await client.run("variations", job["jobId"], "--json")
    assert r.code == 0, r.err
    child = r.json()
    assert child["parentJobId"] == job["jobId"] and child["status"] == "completed"
    assert child["options"] == job["options"]
    r = await client.run("variations", "no-such-job")
    assert r.code == 1 and r.err_lines == ["smartgen: job no-such-job not found"]

    r = await client.run("usage", "--json", "--by", "model")
    assert r.code == 0, r.err
    usage = r.json()
    assert usage["totals"]["jobs"] == 2 and usage["totals"]["cost"] == pytest.approx(0.004)
    assert [g["key"] for g in usage["groups"]] == ["fake/model-2"]
    r = await client.run("usage")
    assert r.code == 0 and "fake/model-1" not in r.out and "0.004000" in r.out

    r = await client.run("voices", "delete", voice_id)
    assert r.code == 0 and r.out.strip() == f"Voice {voice_id} deleted."
    r = await client.run("voices", "show", voice_id)
    assert r.code == 1 and r.err_lines == [f"smartgen: voice {voice_id} not found"]
    r = await client.run("voices", "delete")
    assert r.code == 2 and "needs a VOICE_ID" in r.err

    r = await client.run("generate", "x", "--tone", "angry")
    assert r.code == 2  # argparse names the choices
    r = await client.run("generate", "x", "--model", "fake/other", "--no-wait")
    assert r.code == 1 and "fake/model-1, fake/model-2" in r.err_lines[-1]


async def test_a_budget_refusal_is_one_line(
    env: dict[str, str], processes: list[Process], tmp_path: Path, unique: str
) -> None:
    _, _, url = await start_system({**env, "USER_MONTHLY_TOKEN_BUDGET": "100"}, processes)
    client = Client(tmp_path, url)
    r = await client.run("generate", f"Too big {unique}", "--no-wait")
    assert r.code == 1
    [line] = r.err_lines[-1:]
    assert line.startswith("smartgen: Monthly budget exceeded: 0 of 100 tokens used")
    assert "resets at" in line
    r = await client.run("usage")
    assert r.code == 0 and "Budget (tokens): 0 of 100 used, 100 left" in r.out


async def test_offline_drafts_show_the_options_in_real_processes(
    env: dict[str, str], processes: list[Process], tmp_path: Path, unique: str
) -> None:
    offline = {**env, "LLM_PROVIDER": "offline", "GENERATION_DELAY_SECONDS": "0"}
    _, _, url = await start_system(offline, processes)
    client = Client(tmp_path, url)
    r = await client.run(
        "generate", f"Sourdough {unique}", "--language", "fr", "--keyword", "levain",
        "--length", "long", "--tone", "playful", "--json",
    )  # fmt: skip
    assert r.code == 0, r.err
    job = r.json()
    content = job["generatedContent"]
    assert job["model"] == "offline/smartgen-draft" and job["cost"] == 0
    assert "## Les bases" in content and "**levain**" in content and "## FAQ" in content
    assert "A fun, light-hearted tour" in content

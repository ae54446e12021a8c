"""Shared by scripts/compose-check and scripts/fault-check: running docker and compose,
waiting for containers, reading the API's stored rounds, and the checks every run ends with
(stored rounds strictly increasing, none doubled, none missing, the counter equal to the
readings in them).

Standard library only: both scripts run on a fresh machine before anything is installed.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


class CheckFailed(Exception):
    """A check that did not hold; the message says what was expected and what was seen."""


def log(prefix: str, message: str) -> None:
    print(f"[{prefix}] {message}", flush=True)


# A docker command that has not answered in this long has hung (a stuck engine): no wait in
# these checks is without a deadline. Builds pass their own, longer one.
DEFAULT_TIMEOUT = 300.0


def run(args: list[str], *, check: bool = True, capture: bool = True,
        timeout: float = DEFAULT_TIMEOUT,
        input_text: str | None = None) -> subprocess.CompletedProcess:
    """Runs a command; on failure raises CheckFailed with the command and its output."""
    try:
        done = subprocess.run(args, cwd=ROOT, text=True, capture_output=capture, timeout=timeout,
                              input=input_text)
    except subprocess.TimeoutExpired as e:
        raise CheckFailed(f"`{' '.join(args)}` did not finish within {timeout} s") from e
    if check and done.returncode != 0:
        output = ((done.stdout or "") + (done.stderr or "")).strip()[-3000:]
        raise CheckFailed(f"`{' '.join(args)}` exited {done.returncode}:\n{output}")
    return done


def docker_answers() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=30).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def compose_command() -> list[str]:
    """`docker compose` (v2) where it exists, else `docker-compose` (v1, as Debian 12 ships)."""
    if subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    raise CheckFailed("neither `docker compose` nor `docker-compose` is installed "
                      "(Debian: apt-get install docker-compose)")


def inspect(container: str) -> dict:
    out = run(["docker", "inspect", container]).stdout
    return json.loads(out)[0]


def wait_until(what: str, predicate, timeout: float, interval: float = 0.5):
    """Polls `predicate` until it returns something truthy; CheckFailed after `timeout`."""
    deadline = time.monotonic() + timeout
    last_error = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except CheckFailed as e:
            last_error = e
        time.sleep(interval)
    detail = f" (last: {last_error})" if last_error else ""
    raise CheckFailed(f"{what}: not within {timeout:.0f} s{detail}")


def http_text(url: str, timeout: float = 5.0, context=None) -> str:
    """The body at `url`; `context`: an ssl.SSLContext for https (a private CA, say)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout, context=context) as response:
            return response.read().decode()
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise CheckFailed(f"GET {url}: {e}") from e


def http_json(url: str, timeout: float = 5.0, context=None):
    text = http_text(url, timeout, context)
    try:
        return json.loads(text)
    except ValueError as e:
        raise CheckFailed(f"GET {url}: not JSON: {e}") from e


def stored_rounds(api: str) -> list[dict]:
    """Every stored round the API lists (newest first there), oldest first."""
    rounds = http_json(f"{api}/api/v1/rounds?limit=1000")
    return sorted(rounds, key=lambda r: r["round"])


def check_rounds(rounds: list[dict], expected_devices: int | None = None) -> str:
    """The checks every run ends with, on the API's stored rounds (oldest first, as listed):
    round numbers strictly increasing with none doubled and none missing between the first
    and the last, each round's count equal to its devices, and the counter equal to the
    readings in them (each round's counter is the previous one's plus its count). Returns a
    one-line summary.

    A fleet that started while the API was not answering yet (its agents do not wait for the
    API) numbers rounds from the clock and commits them without a `counter` until it can ask
    the API for the base (README, "measuring never waits for the API"): such rounds may lead
    the record, and only lead it; the first round with a counter then carries the readings of
    those before it too (the stack starts empty, so the base is 0)."""
    if len(rounds) < 2:
        raise CheckFailed(f"only {len(rounds)} stored round(s); expected a run of them")
    numbers = [r["round"] for r in rounds]
    doubled = sorted({n for n in numbers if numbers.count(n) > 1})
    if doubled:
        raise CheckFailed(f"rounds stored more than once: {doubled}")
    missing = sorted(set(range(numbers[0], numbers[-1] + 1)) - set(numbers))
    if missing:
        raise CheckFailed(f"rounds missing between {numbers[0]} and {numbers[-1]}: {missing}")
    for r in rounds:
        if r["count"] != len(r["devices"]):
            raise CheckFailed(f"round {r['round']}: count {r['count']} but devices {r['devices']}")
        if expected_devices is not None and r["count"] > expected_devices:
            raise CheckFailed(f"round {r['round']}: {r['count']} readings from a fleet of "
                              f"{expected_devices}")
    pending = 0
    while pending < len(rounds) and rounds[pending].get("counter") is None:
        pending += 1
    if pending == len(rounds):
        raise CheckFailed(f"no stored round carries a counter (rounds {numbers[0]}.."
                          f"{numbers[-1]}): the counter's base never became known")
    for r in rounds[pending:]:
        if r.get("counter") is None:
            raise CheckFailed(f"round {r['round']} has no counter, after round "
                              f"{rounds[pending]['round']} had one")
    counted = rounds[pending:]
    if pending:
        first = counted[0]
        readings_before = sum(r["count"] for r in rounds[:pending])
        if first["counter"] != readings_before + first["count"]:
            raise CheckFailed(
                f"round {first['round']}, the first with a counter, has {first['counter']}; the "
                f"{pending} round(s) before it (committed while the counter's base was pending) "
                f"and it hold {readings_before + first['count']} readings")
    for before, after in zip(counted, counted[1:]):
        if after["counter"] != before["counter"] + after["count"]:
            raise CheckFailed(
                f"counter: round {before['round']} has {before['counter']}, round "
                f"{after['round']} has {after['counter']} with {after['count']} readings "
                f"(expected {before['counter'] + after['count']})")
    readings = sum(r["count"] for r in counted[1:])
    full = sum(1 for r in rounds if expected_devices and r["count"] == expected_devices)
    summary = (f"{len(rounds)} stored rounds {numbers[0]}..{numbers[-1]}: strictly increasing, "
               f"none doubled, none missing; counter {counted[0]['counter']} -> "
               f"{counted[-1]['counter']} = the {readings} readings after round "
               f"{counted[0]['round']}")
    if pending:
        summary += (f"; the first {pending} round(s) committed before the API answered carry no "
                    f"counter, and round {counted[0]['round']}'s counts their readings")
    if expected_devices:
        summary += f"; {full} with all {expected_devices} devices"
    return summary


def fail(prefix: str, error: BaseException) -> None:
    """A failed check says what; anything else (a bug in the check, ctrl-c) says its type too."""
    what = error if isinstance(error, CheckFailed) else f"{type(error).__name__}: {error}"
    print(f"[{prefix}] FAILED: {what}", file=sys.stderr, flush=True)

"""featureguard audit show and tail: replies with their triggering tokens marked."""

from __future__ import annotations

import io
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from featureguard.audit import JsonlSink, read
from featureguard.audit.render import render_request
from featureguard.audit.requests import Follower, RequestGrouper, RequestView
from featureguard.audit_cli import use_color
from featureguard.cli import main


def _view(log: Path, request: str) -> RequestView:
    grouper = RequestGrouper()
    return next(v for rec in read(log) if (v := grouper.add(rec)) and v.request_id == request)


def test_plain_render_brackets_triggering_tokens(log: Path) -> None:
    """Without colour, triggering tokens are in brackets, in the prompt and in the reply."""
    text = render_request(_view(log, "r1"), color=False)
    assert "prompt: def[ f]():" in text
    assert "reply:   verify[=False] ok [withheld from the user]" in text
    assert "row 0 (blocked by unsafe)" in text
    assert "\x1b[" not in text


def test_render_lists_each_trigger_with_features(log: Path) -> None:
    """Each trigger is listed with policy, action, severity, score, threshold and features."""
    text = render_request(_view(log, "r1"), color=False)
    assert ("2. reply token 4 '=False': unsafe (block, high) score 4.000 > 3.000; "
            "features 1234 (disables TLS) = 4.000") in text  # fmt: skip
    assert "1. prompt token 1 ' f': watch (log, low)" in text


def test_colour_render_uses_the_action_colour(log: Path) -> None:
    """With colour, a blocking token gets a red background and the text has no brackets."""
    text = render_request(_view(log, "r1"), color=True)
    assert "\x1b[1;97;41m=False\x1b[0m" in text  # block: red
    assert "\x1b[1;30;46m f\x1b[0m" in text  # log: cyan
    assert "[=False]" not in text


def test_row_without_triggers_is_shown_plain(log: Path) -> None:
    """Rows without triggers show their text unmarked."""
    text = render_request(_view(log, "r1"), color=False)
    assert "prompt: hi\nreply:   there\n" in text


def test_render_without_text_shows_ids(tmp_path: Path, sample: SimpleNamespace) -> None:
    """A log kept without text shows token ids, the triggering ones still marked."""
    path = sample.write_log(tmp_path / "ids.jsonl", include_text=False)
    text = render_request(_view(path, "r2"), color=False)
    dumb = sample.tid(" dumb")
    assert f"[#{dumb} ][#{dumb} ]" in text and "dumb" not in text


def test_use_color_follows_the_tty() -> None:
    """auto: colour only for a TTY; always and never force it."""

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert use_color("auto", Tty()) and not use_color("auto", io.StringIO())
    assert use_color("always", io.StringIO()) and not use_color("never", Tty())


def test_use_color_respects_no_color(monkeypatch: pytest.MonkeyPatch) -> None:
    """NO_COLOR turns automatic colour off."""

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setenv("NO_COLOR", "1")
    assert not use_color("auto", Tty())


def test_cli_show_prints_the_request(log: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`audit show --request` prints that request, plain when stdout is not a terminal."""
    assert main(["audit", "show", str(log), "--request", "r2"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("request r2 ") and "reply:   are[ dumb][ dumb]" in out
    assert "r1" not in out and "\x1b[" not in out


def test_cli_show_unknown_request(log: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An unknown request id exits 1 with a message."""
    assert main(["audit", "show", str(log), "--request", "nope"]) == 1
    assert "no request 'nope'" in capsys.readouterr().err


def test_cli_tail_prints_the_last_requests(log: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`audit tail -n 2 --no-follow` prints the last two completed requests and exits."""
    assert main(["audit", "tail", str(log), "-n", "2", "--no-follow"]) == 0
    out = capsys.readouterr().out
    assert [line.split()[1] for line in out.splitlines() if line.startswith("request ")] == [
        "r3", "r4",
    ]  # fmt: skip
    assert "guard error: boom" in out


def test_follow_prints_requests_as_they_complete(tmp_path: Path, sample: SimpleNamespace) -> None:
    """Following a log yields a request once its completion is appended, not before."""
    path = sample.write_log(tmp_path / "live.jsonl", sample.requests[:1])
    follower, grouper = Follower(path), RequestGrouper()
    assert [v.request_id for rec in follower.poll() if (v := grouper.add(rec))] == ["r1"]
    recs = sample.records(sample.requests[1:2])
    seen: list[str] = []

    def writer() -> None:
        with JsonlSink(path) as sink:
            for rec in recs:
                sink.write(rec)

    deadline = time.monotonic() + 20

    def stop() -> bool:
        return bool(seen) or time.monotonic() > deadline

    thread = threading.Thread(target=writer)
    thread.start()
    for rec in follower.follow(interval=0.01, stop=stop):
        view = grouper.add(rec)
        if view is not None:
            seen.append(view.request_id)
    thread.join()
    assert seen == ["r2"]

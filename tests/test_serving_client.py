"""`crashchat serve batch`'s client: resends what a dying process cost, reports against the truth."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest

from crashchat.data.annotations import annotation_file_name, make_record, write_annotation_file
from crashchat.serving.client import report_row, send_batch, truth_of_split


class _Batch(BaseHTTPRequestHandler):
    """A stand-in ``/v1/batch``: streams NDJSON lines in chunks; records each request's ids."""

    calls: ClassVar[list[list[str]]] = []

    def begin(self) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = json.loads(
            self.rfile.read(int(self.headers["Content-Length"]))
        )
        self.calls.append([it["id"] for it in items])
        self.send_response(200)
        self.send_header("Content-Type", "application/x-ndjson")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        return items

    def chunk(self, obj: dict[str, Any]) -> None:
        data = (json.dumps(obj) + "\n").encode()
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def die(self) -> None:
        self.wfile.write(b'ff\r\n{"partial')  # the router died mid-line
        self.wfile.flush()
        self.close_connection = True

    def log_message(self, *args: Any) -> None:
        pass


@contextlib.contextmanager
def _serving(handler: type[_Batch]) -> Iterator[str]:
    handler.calls = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


class _FlakyBatch(_Batch):
    """Answers the first request's first item, fails the second with a dead replica, then
    drops the connection mid-stream; later requests answer everything."""

    def do_POST(self) -> None:
        items = self.begin()
        first = len(self.calls) == 1
        for i, it in enumerate(items):
            if first and i == 1:
                self.chunk(
                    {"index": i, "id": it["id"], "error": {"status": 503, "detail": "ActorDied"}}
                )
                continue
            if first and i == 2:
                self.die()
                return
            if it["id"] == "bad.mp4":
                self.chunk(
                    {"index": i, "id": it["id"], "error": {"status": 422, "detail": "no video"}}
                )
            else:
                self.chunk({"index": i, "id": it["id"], "result": {"report": {"crash": True}}})
        self.chunk({"summary": {"items": len(items)}})
        self.wfile.write(b"0\r\n\r\n")


@pytest.fixture
def flaky_url() -> Iterator[str]:
    with _serving(_FlakyBatch) as url:
        yield url


class _DyingRouter(_Batch):
    """A router that answers ``answers[call]`` items (the last count repeats), the first with
    ``first_error`` when set, then dies mid-line, or first hangs ``hang_s`` when set."""

    answers: ClassVar[list[int]] = [1]
    first_error: ClassVar[dict[str, Any] | None] = None
    hang_s: ClassVar[float] = 0.0

    def do_POST(self) -> None:
        items = self.begin()
        n = self.answers[min(len(self.calls), len(self.answers)) - 1]
        for i, it in enumerate(items[:n]):
            body = {"error": self.first_error} if i == 0 and self.first_error else {"result": {}}
            self.chunk({"index": i, "id": it["id"], **body})
        if self.hang_s:
            time.sleep(self.hang_s)  # the client's read times out first
        self.die()


@pytest.fixture
def dying_router() -> Iterator[tuple[str, type[_DyingRouter]]]:
    _DyingRouter.answers, _DyingRouter.first_error, _DyingRouter.hang_s = [1], None, 0.0
    with _serving(_DyingRouter) as url:
        yield url, _DyingRouter


# Seen in the chaos benchmark's full run: each router kill cost every waiting item a try, so ten
# kills over two minutes failed all 200 items of a batch (retries 8) that was still progressing.
@pytest.mark.timeout(60)
def test_router_deaths_that_leave_the_batch_further_along_cost_no_item_a_try(
    dying_router: tuple[str, type[_DyingRouter]],
) -> None:
    url, router = dying_router
    router.answers = [1]
    ids = [f"{n}.mp4" for n in range(6)]
    lines = list(send_batch(url, [{"id": i} for i in ids], retries=2, backoff_s=0.01))
    assert [line["id"] for line in lines[:-1]] == ids  # 6 breaks > 2 retries, all answered
    assert all("result" in line for line in lines[:-1])
    assert [line["retries"] for line in lines[:-1]] == [0, 1, 2, 3, 4, 5]
    assert len(router.calls) == 6 and router.calls[-1] == ["5.mp4"]


@pytest.mark.timeout(60)
def test_breaks_with_nothing_answered_give_up_after_the_retries(
    dying_router: tuple[str, type[_DyingRouter]],
) -> None:
    url, router = dying_router
    router.answers = [1, 0]  # progress once, then nothing
    lines = list(send_batch(url, [{"id": "x"}, {"id": "y"}], retries=2, backoff_s=0.01))
    assert "result" in lines[0] and lines[0]["id"] == "x"
    assert len(router.calls) == 4  # after the progress, 2 resends answer nothing, then y ends
    assert "stream broken" in lines[1]["error"]["detail"] and lines[1]["retries"] == 3
    assert lines[-1]["summary"]["failed"] == 1
    router.calls, router.answers = [], [0]
    lines = list(send_batch(url, [{"id": "x"}], retries=0, backoff_s=0.01))
    assert len(router.calls) == 1 and "stream broken" in lines[0]["error"]["detail"]


@pytest.mark.timeout(60)
def test_an_item_erring_before_each_break_ends_with_its_error(
    dying_router: tuple[str, type[_DyingRouter]],
) -> None:
    url, router = dying_router
    router.first_error = {"status": 503, "detail": "ActorDied"}
    lines = list(send_batch(url, [{"id": "x"}, {"id": "y"}], retries=1, backoff_s=0.01))
    assert [(line["id"], line["error"]["detail"]) for line in lines[:-1]] == [
        ("x", "ActorDied"), ("y", "ActorDied"),
    ]  # fmt: skip
    assert len(router.calls) == 4  # each item: its error, one resend, its error again


@pytest.mark.timeout(60)
def test_a_hung_endpoint_costs_at_most_retries_plus_one_timeouts(
    dying_router: tuple[str, type[_DyingRouter]],
) -> None:
    url, router = dying_router
    router.hang_s = 2.0  # answers one item per request, then hangs
    items = [{"id": f"{n}"} for n in range(5)]
    lines = list(send_batch(url, items, retries=1, timeout_s=0.3, backoff_s=0.01))
    assert len(router.calls) == 2  # answered or not, a stall counts
    assert [("result" in line) for line in lines[:-1]] == [True, True, False, False, False]
    assert "timed out" in lines[-2]["error"]["detail"].lower()


@pytest.mark.timeout(60)
def test_send_batch_resends_only_what_a_dead_process_cost(flaky_url: str) -> None:
    ids = ["a.mp4", "b.mp4", "c.mp4", "bad.mp4", "d.mp4"]
    lines = list(send_batch(flaky_url, [{"id": i} for i in ids], backoff_s=0.01))
    finals = lines[:-1]
    assert sorted(line["id"] for line in finals) == sorted(ids)  # exactly one line per item
    by_id = {line["id"]: line for line in finals}
    assert by_id["a.mp4"]["retries"] == 0 and "result" in by_id["a.mp4"]
    assert by_id["b.mp4"]["retries"] == 1 and "result" in by_id["b.mp4"]  # replica died: resent
    assert by_id["c.mp4"]["retries"] == 1 and "result" in by_id["c.mp4"]  # stream broke: resent
    assert by_id["bad.mp4"]["error"]["status"] == 422  # the item's own fault: not resent
    assert _FlakyBatch.calls == [ids, ["b.mp4", "c.mp4", "bad.mp4", "d.mp4"]]
    assert lines[-1]["summary"] | {"elapsed_s": 0} == {
        "items": 5, "succeeded": 4, "failed": 1, "resent": 4, "elapsed_s": 0,
    }  # fmt: skip


@pytest.mark.timeout(60)
def test_send_batch_gives_up_after_its_retries_with_the_last_error(flaky_url: str) -> None:
    lines = list(send_batch(flaky_url, [{"id": "x"}, {"id": "y"}, {"id": "z"}], retries=0))
    by_id = {line["id"]: line for line in lines[:-1]}
    assert by_id["y"]["error"]["detail"] == "ActorDied"
    assert "stream broken" in by_id["z"]["error"]["detail"]
    assert lines[-1]["summary"]["failed"] == 2


def test_report_holds_answers_against_the_annotations(tmp_path: Path) -> None:
    def write(task_file: str, answers: dict[str, str]) -> None:
        records = [make_record(v, "Question?", a, "synth") for v, a in answers.items()]
        write_annotation_file(tmp_path / annotation_file_name("synth", task_file, "test"), records)

    write("crash_recognition", {"videos/c1.mp4": "Yes", "videos/n1.mp4": "No"})
    write("crash_localization", {"videos/c1.mp4": "2.0 - 3.0 seconds"})
    write("pre_crash_localization", {"videos/c1.mp4": "1.5 seconds"})
    truth = truth_of_split(tmp_path, "test")
    assert truth == {
        "c1.mp4": {"crash": True, "crash_interval_s": [2.0, 3.0], "pre_crash_cue_s": 1.5},
        "n1.mp4": {"crash": False},
    }
    assert truth_of_split(tmp_path, "train") == {}

    def line(checkpoint: str) -> dict[str, Any]:
        report = {
            "crash": True,
            "crash_interval_s": [2.2, 3.1],
            "pre_crash_cue_s": 4.0,
            "description": "zx7 qq",
        }
        results = {
            t: {"checkpoint": checkpoint} for t in ("crash_recognition", "crash_description")
        }
        return {"id": "c1.mp4", "result": {"report": report, "results": results}}

    row = report_row(line("heterogeneous"), truth["c1.mp4"])
    assert row["crash"] == "yes / yes"
    assert row["crash_interval_s"] == "2.2-3.1 / 2.0-3.0"
    assert row["match"] == {"crash": True, "crash_interval_s": True, "pre_crash_cue_s": False}
    assert row["answered_by"] == "heterogeneous" and row["description"] == "zx7 qq"

    base = report_row(line("baseline"), truth["n1.mp4"])
    assert base["match"] == {"crash": False}
    assert base["answered_by"] == "baseline (untrained)"
    assert base["description"] == "(untrained baseline: text not shown)"
    assert report_row(line("baseline"))["crash"] == "yes"  # no truth: the answer alone

"""The Serve endpoint on a real local Ray: HTTP API, refusals, replica death, autoscaling,
multiplexed adapters, bearer tokens, the real clips and the web page in a headless browser.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import ray
import requests
from ray import serve

from conftest import REAL_CLIPS, needs_shared, start_local_ray
from crashchat.config import AutoscalingSettings, ReplicaSettings, ServeConfig, load_config
from crashchat.local_cluster import free_port, serve_replicas
from crashchat.serving.builder import build_application
from crashchat.serving.catalog import build_catalog_from_dir
from helpers import make_checkpoints

REPO = Path(__file__).resolve().parents[1]
APP = "crashchat"
TOKEN_ENV = "CRASHCHAT_TEST_SERVE_TOKEN"
TOKEN = "test-token-123"
MX_TIMEOUT_S = 10
MIXTURES = ["crash_recognition", "perception_centric", "linguistic_centric"]

pytestmark = pytest.mark.timeout(900)


def replica_pids(deployment: str, app: str = APP) -> set[int]:
    """PIDs of the live replicas of ``deployment`` (Ray titles actor processes by class).

    Only this module's Ray counts: another Ray on the machine (a demo left serving with
    ``DEMO_KEEP_SERVING=1``, a second test run) may serve an app of the same name.
    """
    return serve_replicas(app, ray.get_runtime_context().gcs_address).get(deployment, set())


def running_replicas(deployment: str, app: str = APP) -> int:
    status = serve.status().applications[app].deployments[deployment]
    return int(status.replica_states.get("RUNNING", 0))


def settled_pids(deployments: tuple[str, ...], quiet_s: float = 5.0) -> dict[str, set[int]]:
    """Replica PIDs once every deployment is back at one replica and stays so for ``quiet_s``.

    Why: an earlier test's load can leave an upscale decided but not yet carried out (or a
    downscale pending), which would change the PIDs under a test that checks they do not. After
    a test a short ``quiet_s`` does: a replica its requests crashed is already gone (its PID
    missing), and an upscale its load left pending is the next test's to wait out.
    """
    deadline = time.monotonic() + 90
    seen: dict[str, set[int]] = {}
    since = time.monotonic()
    while time.monotonic() < deadline:
        now = {d: replica_pids(d) for d in deployments}
        if now != seen or any(len(p) != 1 for p in now.values()):
            seen, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            return now
        time.sleep(0.5)
    raise AssertionError(f"replicas did not settle at one each: {seen}")


class Served:
    """The module's endpoint: URL, folders and the clips it may read."""

    def __init__(self, url: str, videos: Path, bad: Path, ckpts: Path) -> None:
        self.url = url
        self.videos = videos
        self.bad = bad
        self.ckpts = ckpts

    def clip(self, i: int = 0) -> Path:
        return sorted(self.videos.glob("*.mp4"))[i]

    def upload(self, path: Path, **form: str) -> requests.Response:
        with path.open("rb") as fh:
            return requests.post(
                self.url + "v1/analyze",
                files={"video": (path.name, fh, "video/mp4")},
                data=form,
                timeout=120,
            )

    def by_path(self, path: Path | str, **body: Any) -> requests.Response:
        return requests.post(
            self.url + "v1/analyze", json={"video_path": str(path), **body}, timeout=120
        )

    def mx_by_path(self, path: Path | str, **body: Any) -> requests.Response:
        """``by_path`` on the multiplexed app, with its token."""
        return requests.post(
            self.url + "mx/v1/analyze",
            json={"video_path": str(path), **body},
            headers={"Authorization": f"Bearer {TOKEN}"},
            timeout=120,
        )


def _zero_frame_mp4(path: Path) -> None:
    import av

    # A container header and nothing else: no frame was ever written.
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=10)
        stream.width, stream.height = 64, 64
        out.start_encoding()


@pytest.fixture(scope="module")
def served(tiny_model_dir: Path, synth_dir: Path, tmp_path_factory) -> Iterator[Served]:  # type: ignore[no-untyped-def]
    prompts = json.loads((synth_dir / "prompts.json").read_text())
    ckpts = make_checkpoints(tiny_model_dir, tmp_path_factory.mktemp("ckpts"), MIXTURES, prompts)
    bad = tmp_path_factory.mktemp("bad")
    clip = sorted((synth_dir / "videos").glob("*.mp4"))[0]
    shutil.copy(clip, bad / "zz_abort.mp4")
    shutil.copy(clip, bad / "zz_hang.mp4")
    data = clip.read_bytes()
    (bad / "truncated.mp4").write_bytes(data[: len(data) // 3])
    (bad / "garbage.mp4").write_bytes(os.urandom(5000))
    _zero_frame_mp4(bad / "empty_stream.mp4")

    cfg = load_config(REPO / "serve/tiny.yaml", ServeConfig)
    cfg.port = free_port()
    cfg.prompts = str(synth_dir / "prompts.json")
    roots = [str(synth_dir), str(bad)] + ([str(REAL_CLIPS)] if REAL_CLIPS.exists() else [])
    cfg.limits.allowed_roots = roots
    cfg.limits.max_upload_mb = 2
    cfg.limits.request_timeout_s = 20
    cfg.preprocess.fault_injection = "abort:zz_abort,hang:zz_hang"
    # The baseline gets a tiny queue (backpressure test); perception_centric scales fast.
    cfg.per_checkpoint = {
        "baseline": ReplicaSettings(
            num_cpus=0.2,
            max_ongoing_requests=1,
            max_queued_requests=2,
            max_batch_size=1,
            autoscaling=AutoscalingSettings(min_replicas=1, max_replicas=1),
        ),
        "perception_centric": cfg.model.model_copy(
            update={
                "autoscaling": AutoscalingSettings(
                    min_replicas=1,
                    max_replicas=2,
                    target_ongoing_requests=1,
                    upscale_delay_s=1,
                    downscale_delay_s=2,
                    look_back_period_s=2,
                    metrics_interval_s=0.5,
                ),
                "max_batch_size": 1,
            }
        ),
    }
    os.environ[TOKEN_ENV] = TOKEN  # inherited by the Ray this module starts
    start_local_ray(4)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": cfg.port})
        catalog = build_catalog_from_dir(ckpts, prompts=cfg.prompts)
        serve.run(build_application(catalog, cfg), name=APP, route_prefix="/")
        mx = cfg.model_copy(deep=True)
        mx.mode = "multiplexed"
        mx.token_env = TOKEN_ENV
        mx.per_checkpoint = {}
        # Its own router's bound: the hung-decoder test waits for it, not for the main app's.
        mx.limits.request_timeout_s = MX_TIMEOUT_S
        serve.run(build_application(catalog, mx), name="mx", route_prefix="/mx")
        yield Served(f"http://127.0.0.1:{cfg.port}/", synth_dir / "videos", bad, ckpts)
    finally:
        serve.shutdown()
        ray.shutdown()
        os.environ.pop(TOKEN_ENV, None)


def test_checkpoints_health_and_docs(served: Served) -> None:
    info = requests.get(served.url + "v1/checkpoints", timeout=30).json()
    names = {c["name"] for c in info["checkpoints"]}
    assert names == set(MIXTURES) | {"baseline"}
    assert len(info["tasks"]) == 6
    assert info["auto"]["crash_recognition"] == "crash_recognition"
    assert info["auto"]["pre_crash_localization"] == "perception_centric"
    assert info["auto"]["causal_reasoning"] == "linguistic_centric"
    assert requests.get(served.url + "healthz", timeout=30).json()["status"] == "ok"
    spec = requests.get(served.url + "openapi.json", timeout=30).json()
    assert {"/v1/analyze", "/v1/batch", "/v1/checkpoints", "/healthz"} <= set(spec["paths"])
    assert "swagger" in requests.get(served.url + "docs", timeout=30).text.lower()


def test_haproxy_ingress_on_a_cluster_started_without_it_is_refused(served: Served) -> None:
    from crashchat.serving.lifecycle import ServeSetupError, check_ingress

    check_ingress(ServeConfig(ingress="proxy"))  # nothing needed
    with pytest.raises(ServeSetupError, match="RAY_SERVE_ENABLE_HA_PROXY=1"):
        check_ingress(ServeConfig(ingress="haproxy"))


def test_analyze_upload_all_tasks_is_a_crash_report(served: Served) -> None:
    resp = served.upload(served.clip(1), tasks="all")
    assert resp.status_code == 200, resp.text
    out = resp.json()
    assert set(out["results"]) == set(out["tasks"]) and len(out["tasks"]) == 6
    for task, r in out["results"].items():
        assert "error" not in r, (task, r)
        assert isinstance(r["answer"], str)
        assert r["checkpoint"] in MIXTURES
    assert out["results"]["crash_recognition"]["checkpoint"] == "crash_recognition"
    assert out["results"]["crash_localization"]["checkpoint"] == "perception_centric"
    assert out["video"]["frames_sampled"] > 0 and out["video"]["duration_s"] > 0
    assert out["timings"]["total_ms"] >= out["timings"]["decode_ms"] > 0
    # The report carries every parsed answer that parsed, under plain names.
    report = out["report"]
    assert set(report) <= {
        "crash",
        "crash_interval_s",
        "pre_crash_cue_s",
        "description",
        "cause",
        "prevention",
    }
    assert report.get("description") == out["results"]["crash_description"]["value"]


def test_same_answer_by_upload_and_by_path_and_explicit_checkpoint(served: Served) -> None:
    clip = served.clip(2)
    up = served.upload(clip, tasks="crash_recognition,crash_localization").json()
    by_path = served.by_path(clip, tasks=["crash_recognition", "crash_localization"]).json()
    for task in ("crash_recognition", "crash_localization"):
        assert up["results"][task]["answer"] == by_path["results"][task]["answer"]
    base = served.by_path(clip, tasks=["crash_recognition"], checkpoint="baseline").json()
    assert base["results"]["crash_recognition"]["checkpoint"] == "baseline"


def test_batch_streams_results_and_isolates_bad_items(served: Served) -> None:
    clips = sorted(served.videos.glob("*.mp4"))[:5]
    items: list[Any] = [{"id": c.name, "video_path": str(c), "tasks": "all"} for c in clips]
    items += [
        {"id": "outside", "video_path": "/etc/hostname"},
        {"id": "corrupt", "video_path": str(served.bad / "garbage.mp4")},
        {"id": "badtask", "video_path": str(clips[0]), "tasks": ["nope"]},
        "not an object",
    ]
    with requests.post(served.url + "v1/batch", json=items, stream=True, timeout=300) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("application/x-ndjson")
        lines = [json.loads(x) for x in resp.iter_lines() if x]
    summary = lines[-1]["summary"]
    assert summary == {**summary, "items": 9, "succeeded": 5, "failed": 4}
    by_id = {str(x["id"]): x for x in lines[:-1]}
    assert len(by_id) == 9
    for c in clips:
        assert len(by_id[c.name]["result"]["results"]) == 6
    assert by_id["outside"]["error"]["status"] == 403
    assert by_id["corrupt"]["error"]["status"] == 422
    assert by_id["badtask"]["error"]["status"] == 404
    assert by_id["8"]["error"]["status"] == 422
    # JSONL works too.
    body = "\n".join(json.dumps(i) for i in items[:2]) + "\n{broken\n"
    resp = requests.post(
        served.url + "v1/batch",
        data=body,
        headers={"content-type": "application/x-ndjson"},
        timeout=300,
    )
    lines = [json.loads(x) for x in resp.text.splitlines()]
    assert lines[-1]["summary"]["succeeded"] == 2 and lines[-1]["summary"]["failed"] == 1
    assert any("line 3" in str(x.get("error", {}).get("detail", "")) for x in lines)


def test_bad_requests_are_refused_without_touching_replicas(served: Served, tmp_path: Path) -> None:
    before = settled_pids(("model_crash_recognition", "decoder", "router"))
    mx = ("router", "decoder", "model_multiplexed")
    mx_before = {d: replica_pids(d, "mx") for d in mx}  # no request has reached it yet
    assert all(len(pids) == 1 for pids in mx_before.values()), mx_before
    big = tmp_path / "big.mp4"
    big.write_bytes(os.urandom(3 * 2**20))
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    good = served.clip(0)
    bad_requests = [
        (413, lambda: served.upload(big)),
        (
            415,
            lambda: requests.post(
                served.url + "v1/analyze",
                files={"video": ("notes.txt", text.open("rb"), "text/plain")},
                timeout=60,
            ),
        ),
        (415, lambda: requests.post(served.url + "v1/analyze", data=b"x", timeout=60)),
        (422, lambda: requests.post(served.url + "v1/analyze", json={"tasks": "all"}, timeout=60)),
        (
            422,
            lambda: requests.post(
                served.url + "v1/analyze",
                data=b"{not json",
                headers={"content-type": "application/json"},
                timeout=60,
            ),
        ),
        (
            422,
            lambda: requests.post(served.url + "v1/analyze", files={"x": ("a", b"1")}, timeout=60),
        ),
        (404, lambda: served.by_path(good, tasks=["no_such_task"])),
        (404, lambda: served.by_path(good, checkpoint="no_such_checkpoint")),
        (
            404,
            lambda: served.by_path(
                good, tasks=["causal_reasoning"], checkpoint="crash_recognition"
            ),
        ),
        (403, lambda: served.by_path("/etc/hostname")),
        (403, lambda: served.by_path(str(served.videos) + "/../prompts.json")),
        (422, lambda: served.by_path(served.bad / "garbage.mp4")),
        (422, lambda: served.by_path(served.bad / "truncated.mp4")),
        (422, lambda: served.by_path(served.bad / "empty_stream.mp4")),
        (422, lambda: served.by_path(served.bad / "zz_abort.mp4")),  # decoder process dies
    ]

    # The hung decoder answers 504 only at the request timeout: it waits while the rest run.
    # It goes to the multiplexed app (same decoder faults, a 10 s bound instead of 20 s).
    with ThreadPoolExecutor(1) as pool:
        hung = pool.submit(served.mx_by_path, served.bad / "zz_hang.mp4")
        for status, send in [*bad_requests, (504, hung.result)]:
            resp = send()
            assert resp.status_code == status, (status, resp.status_code, resp.text)
            err = resp.json()["error"]
            assert err["status"] == status and err["detail"]
            ok = served.by_path(good, tasks=["crash_recognition"])
            assert ok.status_code == 200 and "answer" in ok.json()["results"]["crash_recognition"]
    after = {d: replica_pids(d) for d in before}
    assert after == before
    # The app whose decoder hung answers the next request, on the same replicas.
    ok = served.mx_by_path(good, tasks=["crash_recognition"])
    assert ok.status_code == 200 and "answer" in ok.json()["results"]["crash_recognition"]
    assert {d: replica_pids(d, "mx") for d in mx} == mx_before


def test_backpressure_answers_503_with_retry_after(served: Served) -> None:
    clip = served.clip(0)

    def send(_: int) -> requests.Response:
        return served.by_path(clip, tasks=["crash_description"], checkpoint="baseline")

    with ThreadPoolExecutor(16) as pool:
        responses = list(pool.map(send, range(16)))
    codes = [r.status_code for r in responses]
    assert 503 in codes and 200 in codes, codes
    assert set(codes) <= {200, 503}, codes
    refused = next(r for r in responses if r.status_code == 503)
    assert refused.headers["Retry-After"].isdigit()
    assert "capacity" in refused.json()["error"]["detail"]


def test_a_killed_replica_is_replaced_and_requests_keep_succeeding(served: Served) -> None:
    deployment = "model_linguistic_centric"
    old = replica_pids(deployment)
    assert len(old) == 1
    clip = served.clip(3)
    results: list[tuple[int, float]] = []
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            start = time.monotonic()
            try:
                code = served.by_path(clip, tasks=["causal_reasoning"]).status_code
            except requests.RequestException:
                code = -1
            results.append((code, time.monotonic() - start))

    threads = [threading.Thread(target=load) for _ in range(3)]
    for t in threads:
        t.start()
    time.sleep(3)
    os.kill(next(iter(old)), signal.SIGKILL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        new = replica_pids(deployment)
        if new and not (new & old) and running_replicas(deployment) >= 1:
            break
        time.sleep(0.5)
    time.sleep(5)
    stop.set()
    for t in threads:
        t.join(timeout=150)
    new = replica_pids(deployment)
    assert new and not (new & old), (old, new)
    failures = [c for c, _ in results if c != 200]
    assert len(results) > 20
    assert len(failures) <= 6, failures
    assert max(s for _, s in results) < 60  # nothing hung
    # After the replacement, requests succeed again.
    assert all(c == 200 for c, _ in results[-5:]), results[-5:]


def test_autoscaling_up_under_load_and_down_after(served: Served) -> None:
    deployment = "model_perception_centric"
    assert running_replicas(deployment) == 1
    clip = served.clip(4)
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            served.by_path(clip, tasks=["crash_localization"])

    threads = [threading.Thread(target=load) for _ in range(6)]
    for t in threads:
        t.start()
    peak = 1
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and peak < 2:
            time.sleep(0.5)
            peak = max(peak, running_replicas(deployment))
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=150)
    assert peak == 2
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and running_replicas(deployment) > 1:
        time.sleep(0.5)
    assert running_replicas(deployment) == 1


def test_multiplexed_mode_swaps_adapters_and_requires_the_token(served: Served) -> None:
    url = served.url + "mx/v1/analyze"
    clip = served.clip(5)
    body = {"video_path": str(clip), "tasks": ["crash_recognition", "crash_localization"]}
    assert requests.post(url, json=body, timeout=60).status_code == 401
    wrong = {"Authorization": "Bearer wrong"}
    assert requests.post(url, json=body, headers=wrong, timeout=60).status_code == 401
    mx = served.mx_by_path(clip, tasks=body["tasks"])
    assert mx.status_code == 200, mx.text
    replicas = served.by_path(clip, tasks=body["tasks"]).json()
    for task in body["tasks"]:
        # One base model with the adapter swapped in answers as the merged checkpoint does.
        assert mx.json()["results"][task]["answer"] == replicas["results"][task]["answer"], task
        assert mx.json()["results"][task]["checkpoint"] == replicas["results"][task]["checkpoint"]
    base_mx = served.mx_by_path(clip, tasks=body["tasks"], checkpoint="baseline")
    base_resp = served.by_path(clip, tasks=body["tasks"], checkpoint="baseline")
    assert base_resp.status_code == 200, base_resp.text
    base = base_resp.json()
    for task in body["tasks"]:
        assert base_mx.status_code == 200, base_mx.text
        assert base_mx.json()["results"][task]["answer"] == base["results"][task]["answer"], task
    handle = serve.get_deployment_handle("model_multiplexed", "mx")
    loaded = handle.options(multiplexed_model_id="crash_recognition").loaded_adapters.remote()
    assert "crash_recognition" in loaded.result(timeout_s=60)
    assert len(replica_pids("model_multiplexed", "mx")) == 1


@needs_shared(REAL_CLIPS)
def test_real_clips_through_analyze_and_batch(served: Served) -> None:
    clips = sorted(REAL_CLIPS.glob("*.mp4"))
    assert len(clips) == 3
    for clip in clips:
        resp = served.upload(clip, tasks="all")
        assert resp.status_code == 200, resp.text
        assert all("error" not in r for r in resp.json()["results"].values())
    items = [{"id": c.name, "video_path": str(c), "tasks": "all"} for c in clips]
    resp = requests.post(served.url + "v1/batch", json=items, timeout=300)
    lines = [json.loads(x) for x in resp.text.splitlines()]
    assert lines[-1]["summary"]["succeeded"] == 3, lines


@pytest.mark.skipif(not Path("/usr/bin/chromium").exists(), reason="Debian chromium not installed")
def test_web_page_in_a_headless_browser(served: Served) -> None:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    opts = webdriver.ChromeOptions()
    opts.binary_location = "/usr/bin/chromium"
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
    ):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
    try:
        driver.get(served.url)
        wait = WebDriverWait(driver, 60)
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, 'input[name="task"]')) == 6)
        options = [
            o.get_attribute("value")
            for o in driver.find_elements(By.CSS_SELECTOR, "#checkpoint option")
        ]
        assert set(options) == {"auto", "baseline", *MIXTURES}
        clip = served.clip(1)
        driver.find_element(By.ID, "video").send_keys(str(clip))
        # The chosen clip shows its first frame before anything is analysed (not a black box).
        wait.until(
            lambda d: d.execute_script("return document.getElementById('player').readyState") >= 2
        )
        driver.find_element(By.ID, "submit").click()
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "tr.result")) == 6)
        rows = {
            r.get_attribute("data-task") for r in driver.find_elements(By.CSS_SELECTOR, "tr.result")
        }
        assert len(rows) == 6
        wait.until(ec.visibility_of_element_located((By.ID, "timeline")))
        assert "done in" in driver.find_element(By.ID, "status").text
        # The report leads: a verdict and one line per answer, the raw table folded below it.
        report = driver.find_element(By.ID, "report")
        assert report.is_displayed()
        assert driver.find_element(By.ID, "verdict").text in (
            "Crash",
            "No crash",
            "Crash: not asked or not answered",
        )
        facts = [dt.text for dt in report.find_elements(By.TAG_NAME, "dt")]
        assert facts[:3] == ["crash", "crash interval", "pre-crash cue"] and len(facts) == 6
        assert not driver.find_element(By.CSS_SELECTOR, "#raw-box").get_attribute("open")
        if os.environ.get("CRASHCHAT_SCREENSHOT"):
            driver.set_window_size(1100, 1400)
            driver.save_screenshot(os.environ["CRASHCHAT_SCREENSHOT"])
        ticks = driver.find_elements(By.CSS_SELECTOR, "#timeline .tick")
        assert len(ticks) >= 2
        # The drawn markers follow the answers the API gives for the same clip.
        api = served.upload(clip, tasks="all").json()["report"]
        interval = driver.find_element(By.ID, "crash-interval")
        iv = api.get("crash_interval_s")
        assert interval.is_displayed() == bool(iv and iv[1] > iv[0])
        cue = driver.find_element(By.ID, "precrash-cue")
        assert cue.is_displayed() == isinstance(api.get("pre_crash_cue_s"), (int, float))
    finally:
        driver.quit()


# -- OpenAI-compatible chat, through the official client ------------------------------------------
def _openai(served: Served):  # type: ignore[no-untyped-def]
    import openai

    return openai.OpenAI(base_url=served.url + "v1", api_key="unused", max_retries=0, timeout=120)


def _data_url(path: Path, mime: str = "video/mp4") -> str:
    import base64

    return f"data:{mime};base64," + base64.b64encode(path.read_bytes()).decode()


def _chat(url: str, text: str) -> list[dict[str, Any]]:
    return [
        {
            "role": "user",
            "content": [
                {"type": "video_url", "video_url": {"url": url}},
                {"type": "text", "text": text},
            ],
        }
    ]


def test_openai_client_task_prompt_answers_as_analyze_does(served: Served, synth_dir: Path) -> None:
    prompts = json.loads((synth_dir / "prompts.json").read_text())
    clip = served.clip(3)
    client = _openai(served)
    got = client.chat.completions.create(
        model="auto",
        messages=_chat(_data_url(clip), prompts["crash_localization"]),  # type: ignore[arg-type]
    )
    analyzed = served.upload(clip, tasks="crash_localization").json()["results"][
        "crash_localization"
    ]
    assert got.model == analyzed["checkpoint"] == "perception_centric"
    assert got.choices[0].message.content == analyzed["answer"]
    assert got.choices[0].finish_reason in ("stop", "length")
    extra = got.model_extra["crashchat"]  # type: ignore[index]
    assert extra["task"] == "crash_localization" and extra["value"] == analyzed["value"]
    assert extra["frames"] == len(extra["timestamps"]) > 0
    usage = got.usage
    assert usage is not None and usage.prompt_tokens > usage.model_extra["visual_tokens"] > 0  # type: ignore[index]
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    # The same clip by file:// path under an allowed root, and an explicit checkpoint name.
    by_path = client.chat.completions.create(
        model="perception_centric",
        messages=_chat(clip.resolve().as_uri(), prompts["crash_localization"]),  # type: ignore[arg-type]
    )
    assert by_path.choices[0].message.content == analyzed["answer"]


def test_openai_client_free_form_streaming_and_models(served: Served) -> None:
    client = _openai(served)
    url = _data_url(served.clip(4))
    question = "What colour is the car on the left?"
    whole = client.chat.completions.create(
        model="auto",
        messages=_chat(url, question),
        max_tokens=12,
        temperature=0,  # type: ignore[arg-type]
    )
    assert whole.model == "baseline"  # no all-task checkpoint is served: the baseline answers
    assert whole.model_extra["crashchat"]["task"] is None  # type: ignore[index]
    assert isinstance(whole.choices[0].message.content, str)
    assert whole.usage is not None and 0 < whole.usage.completion_tokens <= 12
    stream = client.chat.completions.create(
        model="auto", messages=_chat(url, question), max_tokens=12, stream=True,  # type: ignore[arg-type]
        stream_options={"include_usage": True},
    )  # fmt: skip
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[
        0
    ].finish_reason
    assert (
        chunks[-1].usage is not None and chunks[-1].usage.total_tokens == whole.usage.total_tokens
    )
    listed = {m.id: m for m in client.models.list()}
    assert set(listed) == set(MIXTURES) | {"baseline", "auto"}
    assert "crash_recognition" in listed["crash_recognition"].model_extra["crashchat"]["tasks"]  # type: ignore[index]


def test_openai_client_refusals_name_the_field(served: Served, tmp_path: Path) -> None:
    import openai

    before = settled_pids(("router", "decoder", "model_baseline"))
    client = _openai(served)
    clip = served.clip(0)
    big = tmp_path / "big.mp4"
    big.write_bytes(clip.read_bytes() + os.urandom(3 * 2**20))
    cases: list[tuple[dict[str, Any], int, str]] = [
        ({"messages": _chat(_data_url(big), "Crash?")}, 413, "above the 2 MiB limit"),
        ({"messages": _chat(_data_url(clip, "text/plain"), "Crash?")}, 415, "not a video"),
        ({"messages": _chat(_data_url(clip), "Crash?"), "model": "gpt-4o"}, 404, "not found"),
        ({"messages": _chat("https://example.com/a.mp4", "Crash?")}, 403, "not fetched"),
        ({"messages": _chat("file:///etc/hostname", "Crash?")}, 403, "outside the allowed roots"),
        ({"messages": _chat(_data_url(clip), "Crash?"), "extra_body": {"mm_processor_kwargs": {"fps": 500}}}, 422, "fps"),
        ({"messages": _chat(_data_url(clip), "Crash?"), "n": 2}, 422, "n:"),
        ({"messages": [{"role": "user", "content": "no video"}]}, 422, "video part"),
    ]  # fmt: skip
    for kwargs, status, words in cases:
        kwargs = {"model": "auto", **kwargs}
        with pytest.raises(openai.APIStatusError) as err:
            client.chat.completions.create(**kwargs)  # type: ignore[call-overload]
        assert err.value.status_code == status, (kwargs.get("model"), err.value)
        body = err.value.body
        assert isinstance(body, dict) and words in body["message"], body
        assert body["type"] and "param" in body and "code" in body
    assert settled_pids(("router", "decoder", "model_baseline"), quiet_s=1.0) == before


# -- API fuzzing --------------------------------------------------------------------------------
def test_api_fuzzing_finds_no_server_error(served: Served) -> None:
    """schemathesis against the OpenAPI the router publishes: at least 1,000 generated requests
    (schema-valid and schema-breaking, side by side), no 5xx, every response in its documented
    shape, and no replica restarted."""
    from fuzzing import fuzz

    before = settled_pids(("router", "decoder", "model_baseline"))
    breaking = subprocess.Popen(
        [
            sys.executable,
            str(Path(__file__).with_name("fuzzing.py")),
            served.url,
            "negative",
            "600",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        sent = fuzz(served.url, "positive", 600)
        out, err = breaking.communicate(timeout=300)
    finally:
        if breaking.poll() is None:
            breaking.kill()
            breaking.communicate()
    assert breaking.returncode == 0, err[-4000:]
    lines = out.strip().splitlines()
    assert lines, f"the schema-breaking fuzzer printed no counts: {err[-2000:]}"
    sent.update(json.loads(lines[-1]))
    assert sum(sent.values()) >= 1000, sent
    assert {"/v1/analyze", "/v1/batch", "/v1/chat/completions", "/v1/checkpoints"} <= set(sent)
    assert settled_pids(("router", "decoder", "model_baseline"), quiet_s=1.0) == before


def test_a_body_that_is_not_utf8_is_a_422_not_a_500(served: Served) -> None:
    """Found by the API fuzzer: invalid UTF-8 in a JSON body crashed the route with a 500."""
    for path in ("v1/analyze", "v1/batch", "v1/chat/completions"):
        resp = requests.post(
            served.url + path,
            data=b"\xff\xfe\x80",
            headers={"Content-Type": "application/json"},
            timeout=30,
        )
        assert resp.status_code == 422, (path, resp.text)
        assert "UTF-8" in resp.text

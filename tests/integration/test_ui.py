"""Dagster's UI, served by the local stack, in headless Chromium (Debian's package, driven by
selenium with Debian's chromedriver; nothing is downloaded): the example BatchRun's run with one step
per Task, the Batch's asset with its Task partitions, and the Batch's schedule. Screenshots are saved
under artifacts/ui/."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "artifacts" / "ui"
CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if not (CHROMIUM and CHROMEDRIVER):
        if os.environ.get("CI"):
            pytest.fail("CI must install Debian's chromium and chromium-driver (see .ci/run)")
        pytest.skip("Debian's chromium and chromium-driver are not installed (apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1600,1000",
                 f"--user-data-dir={tmp_path_factory.mktemp('chromium')}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    yield driver
    driver.quit()


def _show(browser, url: str, texts: list[str], shot: str, timeout: float = 60) -> str:
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(url)
    try:
        WebDriverWait(browser, timeout, poll_frequency=0.5).until(lambda d: all(t in d.page_source for t in texts))
    finally:
        browser.save_screenshot(str(ARTIFACTS / f"{shot}.png"))
    return browser.page_source


def test_dagster_ui_shows_the_batchrun_its_asset_and_schedule(browser, kubectl, wait_for, namespace, bridge, dagster):
    kubectl("apply", "-n", namespace, "-f", str(ROOT / "examples" / "00-workspaceconfig.yaml"))  # with its ServiceAccount
    batch, batchrun = yaml.safe_load_all((ROOT / "examples" / "20-batch.yaml").read_text())
    kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(batch))
    # the Batch's asset and schedule appear once the bridge has reloaded the code location
    schedules = "{ repositoriesOrError { ... on RepositoryConnection { nodes { schedules { name } } } } }"
    wait_for(lambda: "update_deps" in json.dumps(dagster.graphql(schedules)),
             timeout=60, what="the Batch's schedule in Dagster")
    kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(batchrun))
    name = batchrun["metadata"]["name"]

    def finished():
        obj = json.loads(kubectl("get", "batchrun", name, "-n", namespace, "-o", "json").stdout)
        return obj if (obj.get("status") or {}).get("phase") in ("Completed", "Failed") else None

    obj = wait_for(finished, timeout=180, interval=1, what="the example BatchRun to finish")
    assert obj["status"]["phase"] == "Completed", obj["status"]
    run_id = obj["status"]["dagsterRunId"]

    page = _show(browser, f"{dagster.url}/runs/{run_id}", ["run_batch_task[task_0]", "run_batch_task[task_2]"], "1-batchrun-run")
    assert "expand_batch" in page

    asset_path = "/".join(["kubetask", namespace, "batches", "update-deps"])
    _show(browser, f"{dagster.url}/assets/{asset_path}?view=partitions", ["task-0", "task-1", "task-2"], "2-batch-asset-partitions")

    _show(browser, f"{dagster.url}/automation", ["update_deps"], "3-schedules")


def test_dagster_ui_shows_a_tasks_pull_request_and_cost(browser, kubectl, wait_for, namespace, bridge, dagster, steer):
    pr = "https://github.com/example/app/pull/7"
    result = {"summary": "Updated 3 dependencies.", "pullRequests": [{"url": pr, "branch": "deps"}],
              "usage": {"inputTokens": 18250, "outputTokens": 2310, "costUSD": 0.09, "model": "example-model"}}
    steer(["reported"], {"kubetask.io/test-duration-ms": "200"}, annotations={"kubetask.io/test-result": json.dumps(result)})
    workspace = {"apiVersion": "kubetask.io/v1alpha1", "kind": "WorkspaceConfig", "metadata": {"name": "default"},
                 "spec": {"agentImage": "example.invalid/echo-agent:1", "serviceAccountName": "default"}}
    task = {"apiVersion": "kubetask.io/v1alpha1", "kind": "Task", "metadata": {"name": "reported"},
            "spec": {"contexts": [{"type": "File", "file": {"filePath": "/workspace/task.md", "source": {"inline": "bump"}}}]}}
    kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump_all([workspace, task]))

    def done():
        obj = json.loads(kubectl("get", "task", "reported", "-n", namespace, "-o", "json").stdout)
        return obj if (obj.get("status") or {}).get("phase") in ("Completed", "Failed") else None

    obj = wait_for(done, timeout=90, interval=1, what="the Task to finish")
    assert obj["status"]["result"]["pullRequests"][0]["url"] == pr
    asset_path = "/".join(["kubetask", namespace, "tasks"])
    page = _show(browser, f"{dagster.url}/assets/{asset_path}?view=events&partition=reported", [pr, "cost_usd", "0.09"],
                 "4-task-pull-request-and-cost")
    assert "example-model" in page

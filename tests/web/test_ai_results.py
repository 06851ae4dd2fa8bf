"""The AI results of the review area in headless chromium: the inference service's pending results listed,
one accepted, one rejected with a reason (refused in the page without one), the outcome shown as text; their
annotation versions are not in the ordinary review queue.

The results are real: the service tests' tiny CT lesion segmenter run by ``process_files`` (hold on) on two
generated CT phantom studies (SIMULATED), in a workspace of its own served by ``sobre serve``.
"""

from __future__ import annotations

import pytest

from apps.conftest import _torch_threads, seg_run  # noqa: F401  (the app tests' tiny CT lesion segmenter)
from tests.web.serve import sobre_serve
from tests.web.workspace import PASSWORD

pytestmark = pytest.mark.slow

DEST = [{"name": "pacs", "kind": "dicom", "host": "127.0.0.1", "port": 9, "aet": "NOWHERE"}]


@pytest.fixture(scope="module")
def server(tmp_path_factory, seg_run):  # noqa: F811  (this module's own workspace: two results pending review)
    from sobre.base import shutdown_local_pool
    from sobre.catalog import Workspace
    from sobre.service import ServiceConfig, process_files
    from tests.service.helpers import ct_study

    root = tmp_path_factory.mktemp("web-ai")
    ws = Workspace.init(root / "ws")
    cfg = ServiceConfig(apps=[{"name": "ct-lesions", "model": str(seg_run)}], review={"hold": True},
                        destinations=DEST, receive={"port": 0, "quiet_seconds": 0.5})
    ct_study(root / "ct1", seed=21)
    ct_study(root / "ct2", seed=22)
    assert process_files(ws, cfg, [root / "ct1", root / "ct2"])["jobs"] == {1: "proposed", 2: "proposed"}
    for user, role in (("carol", "reviewer"), ("dave", "viewer")):
        ws.accounts.add_user(user, PASSWORD)
        ws.accounts.grant(user, "sobre-service", role)
    ws.close()
    shutdown_local_pool(wait=True)  # see web_workspace in conftest.py
    with sobre_serve(root / "ws", root / "serve.log") as url:
        yield url


def test_ai_versions_are_not_in_the_ordinary_review_queue(session_of):
    """Issue 11/12: the AI masks (annotation versions of the service, submitted) are reviewed in the AI results only."""
    c = session_of("carol")
    page = c.page
    page.goto(f"{c.base}/#/p/sobre-service/review")
    page.wait_for_selector("table.ai-results tbody tr")
    versions = c.js("fetch('/api/projects/sobre-service/service-results/1').then((r) => r.json())"
                    ".then((j) => fetch('/api/projects/sobre-service/annotations/' + j.annotation_version))"
                    ".then((r) => r.json())")
    assert versions["status"] == "submitted" and versions["reviewed_in"]["job"] == 1  # submitted, yet not listed:
    assert "Nothing waits for review." in page.inner_text("main")
    assert page.locator("table.queue").count() == 0
    assert not c.errors


def test_ai_results_accept_and_reject(session_of):
    c = session_of("carol")
    page = c.page
    page.goto(f"{c.base}/#/p/sobre-service/review")
    page.wait_for_selector("table.ai-results tbody tr")
    assert page.locator("table.ai-results tbody tr").count() == 2
    c.wait("[...document.querySelectorAll('table.ai-results tbody tr td:nth-child(3)')]"
           ".every((td) => td.textContent !== '…')", what="the models")
    rows = page.inner_text("table.ai-results")
    assert "ct-lesions" in rows and "Lesion = Present" in rows and "held" in rows
    # reject without a reason: refused in the page, nothing sent
    page.click(".decide[data-job='2'] button[data-action=reject]")
    page.wait_for_selector(".decide[data-job='2'] .outcome .error")
    # accept the first, reject the second with a reason that holds markup (shown as text)
    page.fill(".decide[data-job='1'] input[name=comment-1]", "agree")
    page.click(".decide[data-job='1'] button[data-action=accept]")
    page.wait_for_selector(".decide[data-job='1'] .outcome .chip")
    assert "accepted by carol" in page.inner_text(".decide[data-job='1'] .outcome")
    page.fill(".decide[data-job='2'] input[name=reason-2]", "<b>motion</b> artefact")
    page.click(".decide[data-job='2'] button[data-action=reject]")
    page.wait_for_selector(".decide[data-job='2'] .outcome .chip")
    out = page.inner_text(".decide[data-job='2'] .outcome")
    assert "rejected by carol" in out and "<b>motion</b> artefact" in out
    assert page.locator(".ai-results b").count() == 0
    page.reload()
    page.wait_for_selector(".ai-results p.muted")
    assert "No AI result waits for review." in page.inner_text(".ai-results")
    assert not c.errors


def test_a_viewer_is_refused(session_of):
    d = session_of("dave")
    d.page.goto(f"{d.base}/#/p/sobre-service/review")
    d.page.wait_for_selector("main .error")
    assert "annotation.review" in d.page.inner_text("main .error")

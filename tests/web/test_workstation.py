"""End to end in headless chromium against ``sobre serve``: browse, view, annotate, conflict, review, export.

Screens are checked for content (a canvas that is not blank, the mask's colour where it was painted,
a window change that changes the picture), never for pixel equality. The annotation flow is one test
(its steps depend on each other); it ends with the exported SEG read back by highdicom, checked by
``dciodvfy`` and accepted by a real Orthanc (each peer skipped with its reason when absent).
"""

from __future__ import annotations

import json
import urllib.parse
import urllib.request

import numpy as np
import pytest

from tests.web.workspace import CT_SHAPE

pytestmark = pytest.mark.slow

LESION = (int(0.33 * CT_SHAPE[0]), int(0.45 * CT_SHAPE[1]))  # (i, j) of the phantom's lesion


def open_series(s, key: str, extra: str = "") -> None:
    s.page.goto(f"{s.base}/#/p/abdomen/series/{urllib.parse.quote(key, safe='')}{extra}")
    s.wait(f"!!(window.__sobre && window.__sobre.ready && window.__sobre.key === {json.dumps(key)})",
           timeout=90, what="the viewer to be ready")


def ct_keys(s) -> list[str]:
    got = s.js("""async () => (await (await fetch('/api/projects/abdomen/series?where=' +
        encodeURIComponent('modality == "CT"'))).json()).items.map((r) => [r.subject_id, r.key])""")
    return [k for _, k in sorted(got)]


def paint(s, k_offset: int, radius_px: float = 10) -> None:
    """A short brush stroke over the lesion on the axial slice `k_offset` from the current one."""
    page = s.page
    x, y = s.js(f"window.__sobre.pagePoint('axial', [{LESION[0]}, {LESION[1]}, 0])")
    page.mouse.move(x, y)
    for _ in range(abs(k_offset)):
        page.keyboard.press("ArrowDown" if k_offset > 0 else "ArrowUp")
    page.mouse.down()
    page.mouse.move(x + radius_px, y, steps=4)
    page.mouse.move(x + radius_px, y + radius_px, steps=4)
    page.mouse.up()


def reddish(px) -> bool:
    r, g, b = px[:3]
    return r > g + 40 and r > b + 40


def save_mask(s) -> dict:
    before = s.js("window.__sobre.maskVersion ? window.__sobre.maskVersion.id : 0")
    s.page.click("button[data-action=save-mask]")
    s.wait(f"window.__sobre.maskVersion && window.__sobre.maskVersion.id !== {before} && !window.__sobre.maskDirty",
           timeout=30, what="the save")
    return s.js("window.__sobre.maskVersion")


def test_login_browse_search_and_escaping(session_of):
    s = session_of("dave")  # a viewer: may look, not draw
    page = s.page
    assert "abdomen" in page.inner_text("a.card.project")
    page.click("a.card.project")
    page.wait_for_selector("table.subjects")
    # the project's description is data: shown as text, never as markup
    assert "<i>for the browser tests</i>" in page.inner_text(".project-head")
    assert page.locator(".project-head i").count() == 0
    # a cohort, then its frozen version
    page.click(".cohort a >> text=ct")
    page.wait_for_selector("table.subjects tbody tr")
    assert page.locator("table.subjects tbody tr").count() == 2
    assert page.locator("table.subjects .badge.simulated").count() == 2  # the phantoms are SyntheticData YES
    page.click("a.version >> text=ct@v1")
    page.wait_for_selector("table.subjects tbody tr")
    # the filter language: an error is shown as the server words it, a good filter narrows
    page.fill("input.where", "age >>> 3")
    page.click("form.search button")
    page.wait_for_selector(".results .error")
    assert page.inner_text(".results .error").strip()
    page.fill("input.where", 'subject_id == "P001"')
    page.click("form.search button")
    s.wait("document.querySelectorAll('table.subjects tbody tr').length === 1", what="one subject")
    # subject → studies → series with a thumbnail
    page.click("table.subjects a >> text=P001")
    page.wait_for_selector(".study a.card.series img")
    s.wait("[...document.querySelectorAll('a.card.series img')].every((i) => i.complete && i.naturalWidth > 0)",
           what="the thumbnail")
    assert "score" in page.inner_text("table.variables")
    assert page.locator("a.card.series .badge.simulated").count() == 1
    # open the viewer: the label schema's hostile names are text, not elements
    page.click("a.card.series")
    s.wait("!!(window.__sobre && window.__sobre.ready)", timeout=90, what="the viewer")
    assert "<img src=x onerror=alert(1)>liver" in page.inner_text(".segments")
    assert page.locator(".segments img, .labels b").count() == 0
    assert "<b>poor</b>" in page.inner_text("form.labels")
    assert page.locator("button[data-action=save-mask]").count() == 0  # viewers do not save
    assert not s.errors


def test_view_paint_save_reload_conflict_review_export(session_of, tmp_path, request):
    alice = session_of("alice")
    key = ct_keys(alice)[0]
    open_series(alice, key)
    a = alice.page
    t = alice.js("window.__sobre.timings")
    assert t["firstImage"] <= t["mprReady"], t
    stats = alice.js("window.__sobre.canvasStats('axial')")
    assert stats["sd"] > 10, f"the axial view looks blank: {stats}"

    # scroll (keys and wheel) and window/level
    x, y = alice.js(f"window.__sobre.pagePoint('axial', [{LESION[0]}, {LESION[1]}, 0])")
    a.mouse.move(x, y)
    k0 = alice.js("window.__sobre.sliceIndex('axial')")
    a.keyboard.press("ArrowDown")
    alice.wait(f"window.__sobre.sliceIndex('axial') !== {k0}", what="a scroll with the arrow key")
    k1 = alice.js("window.__sobre.sliceIndex('axial')")
    for _ in range(3):
        a.mouse.wheel(0, 120)
        a.wait_for_timeout(150)
    alice.wait(f"window.__sobre.sliceIndex('axial') !== {k1}", what="a scroll with the wheel")
    a.keyboard.press("Home")  # harmless
    for _ in range(abs(alice.js("window.__sobre.sliceIndex('axial')") - k0)):
        a.keyboard.press("ArrowUp" if alice.js("window.__sobre.sliceIndex('axial')") > k0 else "ArrowDown")
    alice.wait(f"window.__sobre.sliceIndex('axial') === {k0}", what="back to the first slice")
    before = alice.js("window.__sobre.canvasStats('axial')")["mean"]
    a.select_option("select[name=preset]", "CT bone")
    voi = alice.wait("(() => { const v = window.__sobre.voi('axial'); return v && Math.abs(v.lower + 500) < 1 && v; })()",
                     what="the bone window")
    assert abs(voi["upper"] - 1300) < 1
    alice.wait(f"Math.abs(window.__sobre.canvasStats('axial').mean - {before}) > 2", what="the picture to change")
    a.select_option("select[name=preset]", "CT mediastinum")

    # the volume's texture: 2 bytes a voxel (half floats under SwiftShader), and the values it shows are the
    # voxels' (signed, exact in half floats below 2048 HU): air (-1000 HU, no noise) mid-grey in a window
    # centred on -1000; the spine (700 HU, noise SD 8) mid-grey in a window centred on 700
    tex = alice.js("window.__sobre.texture()")
    assert tex["bytesPerVoxel"] == 2 and tex["bytes"] == CT_SHAPE[0] * CT_SHAPE[1] * CT_SHAPE[2] * 2, tex
    for ijk, (c, w), tol, what in [((2, 2, 0), (-1000, 200), 3, "air"), ((CT_SHAPE[0] // 2, int(0.72 * CT_SHAPE[1]), 0), (700, 400), 20, "spine")]:
        alice.js(f"window.__sobre.setWindow({c}, {w})")
        px, py = alice.js(f"window.__sobre.pagePoint('axial', {list(ijk)})")
        alice.wait(f"(() => {{ const p = window.__sobre.pixel('axial', {px}, {py}); return Math.abs(p[0] - 127.5) <= {tol} && p[0] === p[1]; }})()",
                   what=f"the {what} mid-grey in the window {c}, {w}")
    alice.js("window.__sobre.setWindow(50, 350)")

    # paint on two slices, see the mask colour where painted, save
    a.click("button[data-tool=Brush]")
    paint(alice, 0)
    alice.wait("window.__sobre.maskCount() > 0", what="painted voxels")
    paint(alice, 3)
    slices = alice.wait("(() => { const s = window.__sobre.maskSlices(); return s.length >= 2 && s; })()",
                        what="mask on two slices")
    assert len(slices) >= 2
    for _ in range(3):
        a.keyboard.press("ArrowUp")
    alice.wait(f"window.__sobre.sliceIndex('axial') === {k0}", what="back to the first painted slice")
    # the canvas is redrawn after the slice change: wait for the mask's colour where the stroke went
    alice.wait(f"(() => {{ const p = window.__sobre.pixel('axial', {x + 5}, {y + 1}); return p[0] > p[1] + 40 && p[0] > p[2] + 40; }})()",
               what="the mask colour where painted")
    assert reddish(alice.js(f"window.__sobre.pixel('axial', {x + 5}, {y + 1})")), "no mask colour where painted"
    v1 = save_mask(alice)
    assert (v1["number"], v1["status"], v1["branch"], v1["author"]) == (1, "draft", "main", "alice")
    count1 = alice.js("window.__sobre.maskCount()")
    assert v1["summary"]["segments"]["lesion"] == count1

    # reload: the draft comes back, painted where it was
    a.reload()
    alice.wait("!!(window.__sobre && window.__sobre.ready && window.__sobre.maskVersion)", timeout=90, what="the reload")
    assert alice.js("window.__sobre.maskVersion.id") == v1["id"]
    assert alice.js("window.__sobre.maskCount()") == count1
    x, y = alice.js(f"window.__sobre.pagePoint('axial', [{LESION[0]}, {LESION[1]}, 0])")
    alice.wait(f"(() => {{ const p = window.__sobre.pixel('axial', {x + 5}, {y + 1}); return p[0] > p[1] + 40; }})()",
               what="the saved mask's colour after the reload")

    # a second annotator opens the same mask; alice saves first; bob's save is a conflict
    bob = session_of("bob")
    open_series(bob, key)
    assert bob.js("window.__sobre.maskVersion.id") == v1["id"]
    a.click("button[data-tool=Brush]")
    paint(alice, 0, radius_px=14)
    v2 = save_mask(alice)
    assert (v2["number"], v2["parent"]) == (2, 1)
    b = bob.page
    b.click("button[data-tool=Brush3D]")
    paint(bob, 0, radius_px=6)
    b.click("button[data-action=save-mask]")
    b.wait_for_selector("dialog.modal[open]")
    assert "alice" in b.inner_text("dialog.modal")
    b.click("dialog.modal button[data-value=reload]")
    bob.wait(f"window.__sobre.maskVersion && window.__sobre.maskVersion.id === {v2['id']}", what="bob reloading v2")
    assert bob.js("window.__sobre.maskCount()") == alice.js("window.__sobre.maskCount()")
    b.click("button[data-tool=Eraser]")
    paint(bob, 0, radius_px=4)
    v3 = save_mask(bob)
    assert (v3["number"], v3["parent"], v3["author"], v3["branch"]) == (3, 2, "bob", "main")
    # now alice is behind: she keeps her work as a new branch
    paint(alice, 1, radius_px=8)
    a.click("button[data-action=save-mask]")
    a.wait_for_selector("dialog.modal[open]")
    a.click("dialog.modal button[data-value=branch]")
    v4 = alice.wait("(() => { const v = window.__sobre.maskVersion; return v && v.number === 4 && v; })()",
                    what="alice's branch")
    assert v4["branch"] != "main" and v4["author"] == "alice"
    count4 = alice.js("window.__sobre.maskCount()")
    # undo / redo of a stroke
    paint(alice, 0, radius_px=20)
    grown = alice.wait(f"(() => {{ const n = window.__sobre.maskCount(); return n > {count4} && n; }})()",
                       what="the stroke to grow the mask")
    assert grown > count4
    a.click("button[data-action=undo]")
    alice.wait(f"window.__sobre.maskCount() === {count4}", what="the undo")
    a.click("button[data-action=redo]")
    alice.wait(f"window.__sobre.maskCount() === {grown}", what="the redo")
    a.click("button[data-action=undo]")
    alice.wait(f"window.__sobre.maskCount() === {count4}", what="the second undo")
    # a landmark, saved as points (exported below as a TID 1500 SR)
    a.select_option("select[name=point-name]", "carina")
    a.click("button[data-tool=Landmark]")
    lx, ly = alice.js(f"window.__sobre.pagePoint('axial', [{CT_SHAPE[0] // 2}, {CT_SHAPE[1] // 2}, 0])")
    a.mouse.click(lx, ly)
    alice.wait("(window.__sobre.measurements || []).some((m) => m.tool === 'Landmark')", what="the landmark")
    assert "carina" in a.inner_text("ul.points")
    a.click("button[data-action=save-points]")
    alice.wait("!!document.querySelector('li.version[data-kind=points]')", what="the saved points")
    points_id = alice.js("Number(document.querySelector('li.version[data-kind=points]').dataset.versionId)")
    # submit the branch version for review
    a.click(f"li.version[data-version-id='{v4['id']}'] button[data-action=submit]")
    alice.wait(f"!!document.querySelector(\"li.version[data-version-id='{v4['id']}'][data-status=submitted]\")",
               what="the submission")

    # the reviewer finds it in the queue, opens it and accepts it
    carol = session_of("carol")
    c = carol.page
    c.goto(f"{carol.base}/#/p/abdomen/review")
    c.wait_for_selector("table.queue a.button")
    assert "alice" in c.inner_text("table.queue")
    c.click("table.queue a.button")
    carol.wait(f"!!(window.__sobre && window.__sobre.ready && window.__sobre.maskVersion && window.__sobre.maskVersion.id === {v4['id']})",
               timeout=90, what="the reviewer's viewer")
    assert carol.js("window.__sobre.maskCount()") == count4
    box = f"li.version[data-version-id='{v4['id']}']"
    c.fill(f"{box} textarea[name=review-comment]", "Good outline <script>x</script>")
    c.click(f"{box} button[data-action=accept]")
    carol.wait(f"!!document.querySelector(\"{box}[data-status=accepted]\")", what="the acceptance")
    assert "<script>x</script>" in c.inner_text(box)  # the comment is text

    # export SEG (and the points' SR) from the UI, read them back, check them
    with c.expect_download() as dl:
        c.click(f"{box} button[data-action=export-seg]")
    seg_path = tmp_path / "mask.seg.dcm"
    dl.value.save_as(seg_path)
    with c.expect_download() as dl:
        c.click(f"li.version[data-version-id='{points_id}'] button[data-action=export-sr]")
    sr_path = tmp_path / "points.sr.dcm"
    dl.value.save_as(sr_path)
    assert not (alice.errors or bob.errors or carol.errors), (alice.errors, bob.errors, carol.errors)

    import highdicom as hd
    import pydicom

    seg = hd.seg.segread(seg_path)
    assert seg.SeriesInstanceUID != key.split("#")[0]
    assert any(ref.SeriesInstanceUID == key.split("#")[0] for ref in seg.ReferencedSeriesSequence)
    pixels = np.asarray(seg.pixel_array)
    assert int((pixels > 0).sum()) == count4, "the SEG holds another number of voxels than the accepted mask"
    assert "lesion" in [s.SegmentLabel for s in seg.SegmentSequence]
    sr = pydicom.dcmread(sr_path)
    assert sr.Modality == "SR"
    request.node.user_properties.append(("seg", str(seg_path)))

    from tests.image.test_dicom_objects import iod_check

    for path in (seg_path, sr_path):
        try:
            print(path.name, iod_check(path))  # what dciodvfy said, in the test log
        except pytest.skip.Exception as why:
            print("dciodvfy:", why)

    orthanc = request.getfixturevalue("web_orthanc")
    if orthanc is not None:
        for path in (seg_path, sr_path):
            req = urllib.request.Request(orthanc.url + "/instances", data=path.read_bytes(), method="POST",
                                         headers={"Content-Type": "application/dicom"})
            with urllib.request.urlopen(req, timeout=30) as r:
                got = json.loads(r.read())
            assert got.get("Status") in ("Success", "AlreadyStored"), got

"""--series/--series-mbox: b4 turns a mailing-list thread into the series to apply.

Offline: the test writes a thread of its own (two revisions of a two-patch series, the
v2 messages out of order, replies carrying trailers) and hands it to the real b4 with
--series-mbox; no network is touched.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from mshare_lab.errors import ConfigError, PatchError
from mshare_lab.kernel import series
from mshare_lab.kernel.build import BuildRequest, resolve_inputs
from mshare_lab.kernel.patches import expand

TARBALL = "/usr/src/linux-source-6.12.tar.xz"
AUTHOR = "Dev Eloper <dev@example.org>"
REVIEWER = "Re Viewer <rev@example.org>"
TESTER = "Tes Ter <test@example.org>"


def _message(mid: str, subject: str, body: str, day: int, minute: int, *, sender: str = AUTHOR,
             parents: tuple[str, ...] = ()) -> str:
    head = ["From mshare-lab Mon Sep 17 00:00:00 2001", f"From: {sender}", "To: linux-mm@kvack.org",
            f"Subject: {subject}", f"Date: Mon, {day} Dec 2025 10:{minute:02d}:00 +0000", f"Message-ID: <{mid}>"]
    if parents:
        head += [f"In-Reply-To: <{parents[-1]}>", "References: " + " ".join(f"<{p}>" for p in parents)]
    return "\n".join(head) + "\n\n" + body + "\n"


def _patch_body(number: int, revision: int) -> str:
    path = f"Documentation/mm/mshare-lab-demo{number}.rst"
    return f"""Document demo {number} (revision {revision}).

Signed-off-by: {AUTHOR}
---
 {path} | 1 +
 1 file changed, 1 insertion(+)

diff --git a/{path} b/{path}
new file mode 100644
index 0000000..1111111
--- /dev/null
+++ b/{path}
@@ -0,0 +1 @@
+demo {number} revision {revision}
-- 
2.39.5
"""


def write_thread(path: Path, *, drop: tuple[int, int] | None = None) -> Path:
    """v1 (day 1) and v2 (day 5) with covers; v2's patches out of order; two replies with trailers.
    ``drop=(revision, number)`` leaves that patch out of the thread."""
    messages = []
    for revision, day in ((1, 1), (2, 5)):
        tag = "PATCH" if revision == 1 else f"PATCH v{revision}"
        cover = f"v{revision}-0@example.org"
        messages.append(_message(cover, f"[{tag} 0/2] mm: mshare-lab demo", "The cover letter.\n", day, 0))
        for number in (2, 1):
            if drop == (revision, number):
                continue
            messages.append(_message(f"v{revision}-{number}@example.org", f"[{tag} {number}/2] mm: demo {number}",
                                     _patch_body(number, revision), day, number, parents=(cover,)))
    messages.append(_message("r1@example.org", "Re: [PATCH v2 2/2] mm: demo 2",
                             f"> +demo 2 revision 2\n\nReviewed-by: {REVIEWER}\n", 6, 0, sender=REVIEWER,
                             parents=("v2-0@example.org", "v2-2@example.org")))
    messages.append(_message("r2@example.org", "Re: [PATCH v2 0/2] mm: mshare-lab demo",
                             f"Works here.\n\nTested-by: {TESTER}\n", 6, 5, sender=TESTER,
                             parents=("v2-0@example.org",)))
    path.write_text("\n".join(messages))
    return path


def test_b4_picks_the_newest_revision_in_order_with_trailers(tmp_path):
    fetched = series.fetch(mbox=write_thread(tmp_path / "thread.mbox"))
    assert fetched.revision == "v2" and fetched.patches == 2
    units = expand(fetched.mbox).units
    assert [u.label.split("] ", 1)[-1] for u in units] == ["[PATCH v2 1/2] mm: demo 1", "[PATCH v2 2/2] mm: demo 2"]
    first, second = (u.data.decode() for u in units)
    assert "+demo 1 revision 2" in first and "+demo 2 revision 2" in second
    assert "revision 1" not in first + second                    # v1 is not mixed in
    assert "cover letter" not in (first + second).lower()
    # the cover's Tested-by goes to every patch, the review only to the one it answered
    assert f"Tested-by: {TESTER}" in first and f"Tested-by: {TESTER}" in second
    assert f"Reviewed-by: {REVIEWER}" in second and "Reviewed-by" not in first
    assert fetched.mbox.parent == series.series_dir()


def test_series_is_the_first_patch_input_and_in_the_hash(tmp_path):
    thread = write_thread(tmp_path / "thread.mbox")
    plain = resolve_inputs(BuildRequest(source=TARBALL, name="t"))
    with_series = resolve_inputs(BuildRequest(source=TARBALL, name="t", series_mbox=thread,
                                              patches=(Path(__file__).parent / "fixtures/does-not-apply.patch",)))
    assert with_series.series is not None and with_series.series.origin == str(thread)
    assert [len(p.units) for p in with_series.patches] == [2, 1]   # series first, --patch on top
    assert with_series.content_hash() != plain.content_hash()
    with pytest.raises(ConfigError):
        resolve_inputs(BuildRequest(source=TARBALL, name="t", series="x@example.org", series_mbox=thread))


def test_missing_patch_is_a_clear_error(tmp_path):
    thread = write_thread(tmp_path / "thread.mbox", drop=(2, 1))
    with pytest.raises(PatchError) as info:
        series.fetch(mbox=thread)
    assert "incomplete: patch 1/2 missing" in str(info.value)
    cli = subprocess.run([sys.executable, "-m", "mshare_lab.cli", "kernel", "build", "--source", TARBALL,
                          "--name", "test-series-missing", "--series-mbox", str(thread)],
                         capture_output=True, text=True, timeout=120)
    assert cli.returncode == 2, cli.stderr
    assert "patch 1/2 missing" in cli.stderr and "Traceback" not in cli.stderr

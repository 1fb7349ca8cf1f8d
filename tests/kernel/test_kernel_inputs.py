"""Build inputs without compiling: fragments, patch series, sources, content hash, store."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from mshare_lab.errors import ConfigError, NotFoundError
from mshare_lab.kernel import kconfig, patches, source, store
from mshare_lab.kernel.build import BASE_FRAGMENT, BuildRequest, resolve_fragment, resolve_inputs
from mshare_lab.kernel.progress import MakeTail

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture
def lab_home(tmp_path, monkeypatch) -> Path:
    home = tmp_path / "home"
    monkeypatch.setenv("MSHARE_LAB_HOME", str(home))
    return home


def test_base_fragment_asks_for_what_guests_need():
    asked = {r.option: r.value for r in kconfig.parse_fragment(BASE_FRAGMENT)}
    for option in ("64BIT", "SMP", "SERIAL_8250_CONSOLE", "BLK_DEV_INITRD", "RD_GZIP", "DEVTMPFS", "TMPFS",
                   "SYSVIPC", "HUGETLBFS", "TRANSPARENT_HUGEPAGE", "MEMCG", "CGROUPS", "VIRTIO_PCI",
                   "VIRTIO_BLK", "VIRTIO_NET", "VIRTIO_CONSOLE", "9P_FS", "EXT4_FS", "ACPI", "INOTIFY_USER",
                   "FHANDLE", "AUTOFS_FS", "SECCOMP", "UNIX", "INET", "PACKET", "FUTEX", "EPOLL", "SIGNALFD"):
        assert asked.get(f"CONFIG_{option}") == "y", option
    assert int(asked["CONFIG_SERIAL_8250_RUNTIME_UARTS"]) >= 2      # ttyS1 carries result frames


def test_malformed_fragment_names_file_and_line(tmp_path):
    fragment = tmp_path / "bad.config"
    fragment.write_text("# comment\nCONFIG_SHMEM=y\nSHMEM=y\n")
    with pytest.raises(ConfigError) as info:
        kconfig.parse_fragment(fragment)
    assert f"{fragment}:3" in str(info.value)


def test_later_fragment_overrides_earlier(tmp_path):
    first, second = tmp_path / "a.config", tmp_path / "b.config"
    first.write_text("CONFIG_X86_5LEVEL=y\nCONFIG_SMP=y\n")
    second.write_text("# CONFIG_X86_5LEVEL is not set\n")
    merged = kconfig.effective_requests([first, second])
    assert merged["CONFIG_X86_5LEVEL"].value == "n" and merged["CONFIG_SMP"].value == "y"
    lost = kconfig.dropped(merged, {"CONFIG_X86_5LEVEL": "y", "CONFIG_SMP": "y"})
    assert [(r.option, got) for r, got in lost] == [("CONFIG_X86_5LEVEL", "y")]


def test_module_request_is_met_by_built_in():
    request = kconfig.Request("CONFIG_9P_FS", "m", None)
    assert kconfig.satisfied(request, {"CONFIG_9P_FS": "y"})
    assert not kconfig.satisfied(request, {})


def test_fragment_by_name_and_unknown_name():
    assert resolve_fragment("mshare").name == "mshare.config"
    with pytest.raises(NotFoundError) as info:
        resolve_fragment("no-such-fragment")
    assert "mshare" in str(info.value)


def test_mbox_series_splits_into_messages():
    series = patches.expand(FIXTURES / "marker-series.mbox")
    assert len(series.units) == 4
    assert "[1/4]" in series.units[0].label and "test marker source" in series.units[0].label
    assert patches.touched_files(series.units[1]) == {"init/Makefile"}
    assert len(series.files) == 1 and len(series.files[0][1]) == 64
    # the metadata records each commit subject, without the [PATCH n/m] tag
    assert series.describe()["subjects"] == [
        "init: add the mshare-lab test marker source", "init: build the mshare-lab test marker",
        "uapi: test stand-in msharefs ioctls and MAP_SHARED_PT", "mm: test stand-in msharefs and kernel-log trigger"]
    assert patches.touched_files(series.units[2]) == {"include/uapi/linux/msharefs.h",
                                                      "include/uapi/asm-generic/mman-common.h"}


def test_patch_directory_is_applied_in_name_order(tmp_path):
    for name in ("0002-second.patch", "0001-first.patch", "notes.txt", "0010-tenth.diff"):
        (tmp_path / name).write_text(f"--- a/{name}\n+++ b/{name}\n")
    series = patches.expand(tmp_path)
    assert [Path(p).name for p, _ in series.files] == ["0001-first.patch", "0002-second.patch", "0010-tenth.diff"]


def test_patch_applies_without_writing_through_hard_links(tmp_path):
    original = tmp_path / "cache" / "init"
    original.mkdir(parents=True)
    (original / "Makefile").write_text("obj-y := a.o\n")
    tree = tmp_path / "tree"
    subprocess.run(["cp", "-al", str(tmp_path / "cache"), str(tree)], check=True)
    unit = patches.PatchUnit("t", b"--- a/init/Makefile\n+++ b/init/Makefile\n@@ -1 +1 @@\n-obj-y := a.o\n+obj-y := b.o\n")
    patches.apply_one(unit, tree)
    assert (tree / "init/Makefile").read_text() == "obj-y := b.o\n"
    assert (original / "Makefile").read_text() == "obj-y := a.o\n"


def test_failure_summary_names_missing_file():
    output = ("can't find file to patch at input line 3\nPerhaps you used the wrong -p or --strip option?\n"
              "The text leading up to this was:\n--------------------------\n|--- a/mm/mshare.c\n"
              "|+++ b/mm/mshare.c\n--------------------------\nNo file to patch.  Skipping patch.\n")
    assert patches.failure_summary(output) == "mm/mshare.c: file not found in the source"


def _git_repo(path: Path) -> str:
    path.mkdir()
    (path / "Makefile").write_text("all:\n")
    (path / "Kconfig").write_text("config X\n")
    git = ["git", "-C", str(path), "-c", "user.name=t", "-c", "user.email=t@example.invalid"]
    subprocess.run(["git", "init", "-q", str(path)], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "one"], check=True)
    subprocess.run([*git, "tag", "v1"], check=True)
    (path / "Makefile").write_text("all: changed\n")
    subprocess.run([*git, "commit", "-qam", "two"], check=True)
    return subprocess.run([*git, "rev-parse", "v1"], capture_output=True, text=True, check=True).stdout.strip()


def test_git_source_resolves_ref_and_checks_out_privately(tmp_path):
    repo = tmp_path / "repo"
    commit = _git_repo(repo)
    identity = source.identify(str(repo), "v1")
    assert (identity.kind, identity.digest) == ("git", commit)
    tree = source.private_tree(identity, tmp_path / "private", lambda _l: None)
    assert (tree / "Makefile").read_text() == "all:\n"
    assert (repo / "Makefile").read_text() == "all: changed\n"             # user's checkout untouched
    status = subprocess.run(["git", "-C", str(repo), "status", "--porcelain"], capture_output=True, text=True)
    assert status.stdout == "" and not (repo / ".git" / "worktrees").exists()
    with pytest.raises(NotFoundError):
        source.identify(str(repo), "no-such-ref")


def test_directory_fingerprint_follows_edits(tmp_path):
    tree = tmp_path / "linux"
    tree.mkdir()
    (tree / "Makefile").write_text("a\n")
    (tree / "Kconfig").write_text("b\n")
    before = source.identify(str(tree))
    (tree / "Makefile").write_text("a changed\n")
    assert before.kind == "directory" and source.identify(str(tree)).digest != before.digest


def test_not_a_source_is_a_user_error(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ConfigError):
        source.identify(str(tmp_path / "notes.txt"))
    with pytest.raises(NotFoundError):
        source.identify(str(tmp_path / "missing"))


def test_content_hash_changes_with_each_input(tmp_path, tarball_sha256, monkeypatch):
    # identify() would hash the 150 MB tarball each time; the digest is what matters here
    fake = source.SourceIdentity("tarball", "/x.tar.xz", tarball_sha256)
    monkeypatch.setattr(source, "identify", lambda *_a, **_k: fake)
    patch = tmp_path / "one.patch"
    patch.write_text("--- a/x\n+++ b/x\n")
    fragment = tmp_path / "f.config"
    fragment.write_text("CONFIG_SMP=y\n")
    plain = resolve_inputs(BuildRequest(source="x", name="a")).content_hash()
    assert resolve_inputs(BuildRequest(source="x", name="other-name")).content_hash() == plain
    with_patch = resolve_inputs(BuildRequest(source="x", name="a", patches=(patch,))).content_hash()
    with_fragment = resolve_inputs(BuildRequest(source="x", name="a", fragments=(str(fragment),))).content_hash()
    assert len({plain, with_patch, with_fragment}) == 3
    patch.write_text("--- a/y\n+++ b/y\n")
    assert resolve_inputs(BuildRequest(source="x", name="a", patches=(patch,))).content_hash() != with_patch


def test_unknown_kernel_lists_known_names(lab_home):
    with store.staging("abc123") as stage:
        (stage / "metadata.json").write_text('{"release": "6.12.0", "kind": "built"}')
    store.alias("known-one", "abc123")
    with pytest.raises(NotFoundError) as info:
        store.get("unknown")
    assert "known-one" in str(info.value)
    assert [a.name for a in store.list_all()] == ["known-one"]
    assert store.get("known-one").release == "6.12.0"
    assert not list(store.by_hash_dir().glob(".tmp-*"))


def test_failed_staging_leaves_nothing(lab_home):
    with pytest.raises(KeyboardInterrupt):
        with store.staging("deadbeef") as stage:
            (stage / "bzImage").write_bytes(b"half")
            raise KeyboardInterrupt
    assert list(store.by_hash_dir().iterdir()) == []


@pytest.mark.parametrize("name", ["", "a b", "../escape", "x" * 65])
def test_bad_kernel_names_are_refused(name):
    with pytest.raises(ConfigError):
        store.check_name(name)


def test_make_tail_throttles_and_counts():
    now = [0.0]
    shown: list[str] = []
    tail = MakeTail(shown.append, interval=5.0, clock=lambda: now[0])
    for i in range(100):
        now[0] = i * 0.5                          # 100 lines over 50 s
        tail.feed(f"  CC      mm/file{i}.o")
    tail.feed("make[2]: Entering directory")      # not a kbuild step
    assert tail.compiled == 100 and tail.steps == 100
    assert len(shown) == 9                        # one line per 5 s, not one per file
    assert shown[0] == "  make: 11 objects, 5 s elapsed; last CC mm/file10.o"


def test_make_tail_estimates_from_the_expected_total_and_keeps_the_first_error():
    now = [0.0]
    shown: list[str] = []
    tail = MakeTail(shown.append, interval=5.0, clock=lambda: now[0], expected=400)
    for i in range(100):
        now[0] = i * 0.5                          # 2 objects/s: the other 300 take ~150 s
        tail.feed(f"  CC      mm/file{i}.o")
    assert shown[-1] == "  make: 91 of ~400 objects, 45.0 s elapsed, ~2 min 33 s left; last CC mm/file90.o"
    tail.feed("../mm/file3.c:12:5: error: 'x' undeclared (first use in this function)")
    tail.feed("../mm/file4.c:7:1: error: expected ';' before '}' token")
    tail.feed("make[4]: *** [../scripts/Makefile.build:229: mm/file3.o] Error 1")
    error = tail.first_error
    assert (error.file, error.line, error.column) == ("mm/file3.c", 12, 5)
    assert str(error) == "mm/file3.c:12:5: error: 'x' undeclared (first use in this function)"

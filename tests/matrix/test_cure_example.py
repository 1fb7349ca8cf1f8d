"""examples/cure.yaml: the seed's failure and its cure, loaded and checked by arithmetic.

The point is chosen with `predict` and the per-client cost measured in a 6.12 micro guest
(43.5 KiB of page tables and 184 kB of anonymous memory per client): shmem's private page
tables must exceed the guest's RAM, the shared run must fit with room to spare.
"""

from __future__ import annotations

from mshare_lab.lab import matrix
from mshare_lab.paths import REPO_ROOT
from mshare_lab.workload.feasibility import ClientCost
from mshare_lab.workload.predict import predict

CURE = REPO_ROOT / "examples" / "cure.yaml"
#: the measured fixed cost of one client (page tables + anonymous RSS), without the stack
MEASURED_CLIENT = int(43.5 * 1024) + 184 * 1000


def test_cure_example_loads_and_validates():
    loaded = matrix.load(CURE)
    points = {(s.workload.mechanism, s.workload.sga >> 20, s.workload.clients): s for s in loaded.scenarios}
    assert set(points) == {("shmem", 512, 800), ("msharefs-ioctl", 512, 800),
                           ("shmem", 128, 100), ("msharefs-ioctl", 128, 100)}
    for scenario in loaded.scenarios:
        assert scenario.kernel == "my-mshare"
        assert scenario.guest.memory == 1280 << 20 and scenario.guest.image == "micro"
        assert scenario.workload.populate == 1.0
    assert points[("shmem", 512, 800)].expect["outcome"] == ["oom"]
    cure = points[("msharefs-ioctl", 512, 800)].expect
    assert cure["outcome"] == ["completed"] and cure["sharing_verified"] is True and cure["kernel_log"] == "clean"
    assert points[("shmem", 128, 100)].expect["protect_held"] is True
    assert points[("msharefs-ioctl", 128, 100)].expect["protect_held"] is True


def test_the_cure_point_is_oom_for_shmem_and_fits_when_shared():
    cost = ClientCost(MEASURED_CLIENT, "measured")
    ram = 1280 << 20
    failure = predict(512 << 20, 800, ram, "shmem", cost=cost)
    cure = predict(512 << 20, 800, ram, "msharefs-ioctl", cost=cost)
    assert failure.mechanism_pte_bytes == 800 << 20            # 800 private copies of 1 MiB
    assert not failure.fits and failure.total_bytes > ram * 1.15
    assert cure.fits and cure.mechanism_pte_bytes == 1 << 20   # one shared copy
    # the shared run leaves more than 40% of the guest for the kernel and slack
    assert ram - cure.total_bytes > 0.4 * ram
    print(f"\nshmem needs {failure.total_bytes / 2**20:.0f} MiB, msharefs-ioctl {cure.total_bytes / 2**20:.0f} MiB "
          f"of {ram >> 20} MiB")

/* The sharing mechanisms: how an owner creates the region and how an unrelated client
 * attaches to it by itself (by key, by path, by msharefs file), never through fork.
 *
 * Kernel parameters of the patched series (syscall numbers, ioctl ABI, MAP_SHARED_PT
 * value) come from the command line, which gets them from the kernel's description;
 * nothing here guesses them.
 */
#include "sga.h"

#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/shm.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef SHM_HUGETLB
#define SHM_HUGETLB 04000
#endif
#ifndef MAP_FIXED_NOREPLACE
#define MAP_FIXED_NOREPLACE 0x100000
#endif
#ifndef MADV_HUGEPAGE
#define MADV_HUGEPAGE 14
#endif
#define TMPFS_MAGIC_ 0x01021994
#define MSHAREFS_DIR "/sys/fs/mshare"

/* msharefs ioctl ABIs (include/uapi/linux/msharefs.h of each series) */
struct mshare_info { uint64_t start, size; };
struct mshare_create_2024 { uint64_t addr, size, offset; uint32_t prot, flags, fd; };
struct mshare_create_2025 { uint64_t region_offset, size, offset; uint32_t prot, flags, fd; };
#define MSHAREFS_GET_SIZE_2024 _IOR('x', 0, struct mshare_info)
#define MSHAREFS_SET_SIZE_2024 _IOW('x', 1, struct mshare_info)
#define MSHAREFS_CREATE_MAPPING_2024 _IOW('x', 2, struct mshare_create_2024)
#define MSHAREFS_CREATE_MAPPING_2025 _IOW('x', 0, struct mshare_create_2025)

static int tmp_mount_made;   /* shm_dir is a temporary directory we mounted on */

static uint64_t round_up(uint64_t v, uint64_t unit) { return (v + unit - 1) / unit * unit; }

static void *fail(char *err, size_t len, const char *what)
{
    snprintf(err, len, "%s: %s", what, strerror(errno));
    return NULL;
}

/* mmap a region file: at the fixed base (same address in every process) when the
 * mechanism needs one, else wherever the kernel chooses. */
static void *map_fd(const struct config *cfg, int fd, uint64_t len, int extra_flags)
{
    int flags = MAP_SHARED | extra_flags;
    void *want = NULL;
    if (cfg->base) {
        want = (void *)cfg->base;
        flags |= MAP_FIXED_NOREPLACE;
    }
    void *addr = mmap(want, len, PROT_READ | PROT_WRITE, flags, fd, 0);
    if (addr == MAP_FAILED)
        return NULL;
    if (cfg->base && addr != want) {
        /* old kernels treat MAP_FIXED_NOREPLACE as a hint */
        munmap(addr, len);
        errno = EEXIST;
        return NULL;
    }
    return addr;
}

/* ---- file-backed: shmem, thp, ptshare ------------------------------------------------ */

static int extra_map_flags(const struct config *cfg)
{
    return strcmp(cfg->mechanism, "ptshare") == 0 ? (int)cfg->ptshare_flag : 0;
}

static void *file_create(struct config *cfg, char *err, size_t len)
{
    int fd = open(cfg->path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0)
        return fail(err, len, cfg->path);
    if (ftruncate(fd, (off_t)cfg->map_size) < 0) {
        close(fd);
        return fail(err, len, "ftruncate region file");
    }
    void *addr = map_fd(cfg, fd, cfg->map_size, extra_map_flags(cfg));
    int saved = errno;
    close(fd);
    errno = saved;
    return addr ? addr : fail(err, len, "mmap region file");
}

static void *file_attach(const struct config *cfg, char *err, size_t len)
{
    int fd = open(cfg->path, O_RDWR | O_CLOEXEC);
    if (fd < 0)
        return fail(err, len, cfg->path);
    void *addr = map_fd(cfg, fd, cfg->map_size, extra_map_flags(cfg));
    int saved = errno;
    close(fd);
    errno = saved;
    if (addr && strcmp(cfg->mechanism, "thp") == 0)
        madvise(addr, cfg->map_size, MADV_HUGEPAGE);   /* harmless where huge=always */
    return addr ? addr : fail(err, len, "mmap region file");
}

static void unmap(const struct config *cfg, void *addr) { munmap(addr, cfg->map_size); }
static void file_destroy(const struct config *cfg) { if (cfg->path[0]) unlink(cfg->path); }

static int shm_dir_probe(struct config *cfg, char *reason, size_t len)
{
    if (!cfg->shm_dir[0]) {
        snprintf(reason, len, "no tmpfs directory for the region file "
                 "(/dev/shm is not tmpfs and mounting one needs root)");
        return 1;
    }
    snprintf(cfg->path, sizeof cfg->path, "%s/mshare-sga-%d", cfg->shm_dir, (int)getpid());
    return 0;
}

static int thp_probe(struct config *cfg, char *reason, size_t len)
{
    if (!tmp_mount_made) {
        char mode[128] = "";
        read_file_str("/sys/kernel/mm/transparent_hugepage/shmem_enabled", mode, sizeof mode);
        if (!strstr(mode, "[always]") && !strstr(mode, "[advise]") && !strstr(mode, "[force]")
            && !strstr(mode, "[within_size]")) {
            snprintf(reason, len, "no tmpfs mount with huge=always (needs root) and shmem_enabled is %s",
                     mode[0] ? strtok(mode, "\n") : "unreadable");
            return 1;
        }
    }
    return shm_dir_probe(cfg, reason, len);
}

/* MAP_SHARED_PT: a stock kernel ignores the unknown bit, so a successful mmap proves
 * nothing.  Map and touch a region in a few processes at once and look at what their
 * page tables cost: private-sized growth means the kernel does not share. */
#define PT_PROBES 6
#define PT_PROBE_BYTES (128ul << 20)
#define PT_PROBE_MIN_BYTES (16ul << 20)

/* The probe region: 128 MiB, or a quarter of what the machine has available when that is
 * less (a 256 MiB guest's /dev/shm is 128 MiB: the full size filled it and the guest hung
 * in reclaim).  Whole 2 MiB, at least 16 MiB: 6 processes x 32 KiB of private page tables
 * still stand well above the tens of KiB other activity moves PageTables by. */
static uint64_t pt_probe_bytes(void)
{
    int64_t avail = read_meminfo_kb("MemAvailable") * 1024;
    uint64_t bytes = PT_PROBE_BYTES;
    if (avail > 0 && (uint64_t)avail / 4 < bytes)
        bytes = ((uint64_t)avail / 4) & ~((2ul << 20) - 1);
    return bytes < PT_PROBE_MIN_BYTES ? PT_PROBE_MIN_BYTES : bytes;
}
#define PT_PROBE_ATTEMPTS 3

/* One measured attempt: PT_PROBES processes map and touch the file at once.  Returns 1
 * with a reason when the mmap failed or the processes could not be forked, else 0 with the
 * noise-corrected PageTables growth and the sum of the processes' own VmPTE growth. */
static int ptshare_attempt(struct config *cfg, int fd, uint64_t bytes, int64_t *growth, int64_t *vm_sum,
                           int *started, char *reason, size_t len)
{
    struct res { _Atomic int done; _Atomic int go; int64_t growth; int err; } *res =
        mmap(NULL, sizeof *res * PT_PROBES, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (res == MAP_FAILED) {
        snprintf(reason, len, "ptshare probe: %s", strerror(errno));
        return 1;
    }
    /* page tables of processes that exited just before (earlier runs, earlier attempts)
     * are freed after an RCU grace period: a drop during the window would look like sharing */
    settle_pagetables();
    int64_t others_before = others_pte_bytes();
    int64_t before = read_meminfo_kb("PageTables");
    pid_t pids[PT_PROBES];
    int n = 0;
    for (int i = 0; i < PT_PROBES; i++) {
        pids[i] = fork();
        if (pids[i] == 0) {
            int64_t pte0 = read_status_kb(0, "VmPTE");
            char *a = mmap((void *)FIXED_BASE, bytes, PROT_READ | PROT_WRITE,
                           MAP_SHARED | MAP_FIXED_NOREPLACE | (int)cfg->ptshare_flag, fd, 0);
            if (a == MAP_FAILED) {
                res[i].err = errno;
            } else {
                for (uint64_t off = 0; off < bytes; off += 4096)
                    a[off] = 1;
                res[i].growth = (read_status_kb(0, "VmPTE") - pte0) * 1024;
            }
            atomic_store(&res[i].done, 1);
            while (!atomic_load(&res[0].go))   /* stay mapped until the global sample */
                usleep(1000);
            _exit(0);
        }
        if (pids[i] > 0)
            n++;
    }
    for (int i = 0; i < n; i++)
        while (!atomic_load(&res[i].done))
            usleep(1000);
    int64_t after = read_meminfo_kb("PageTables");
    int64_t others_after = others_pte_bytes();
    atomic_store(&res[0].go, 1);
    for (int i = 0; i < n; i++)
        waitpid(pids[i], NULL, 0);
    int rc = 0;
    *started = n;
    /* minus what the rest of the machine did meanwhile */
    *growth = (after - before) * 1024 - (others_after - others_before);
    *vm_sum = 0;
    for (int i = 0; i < n && !rc; i++) {
        if (res[i].err) {
            snprintf(reason, len, "mmap with MAP_SHARED|MAP_SHARED_PT (0x%lx) failed: %s",
                     cfg->ptshare_flag, strerror(res[i].err));
            rc = 1;
        }
        *vm_sum += res[i].growth;
    }
    if (!rc && n < PT_PROBES) {
        snprintf(reason, len, "could not fork the ptshare probe processes");
        rc = 1;
    }
    munmap(res, sizeof *res * PT_PROBES);
    return rc;
}

/* ptshare is decided by measurement: a stock kernel ignores the unknown flag bit and shares
 * nothing.  Noise on a busy machine only ever makes private tables look smaller (frees
 * elsewhere), never shared tables look private, so one private-sized attempt out of
 * PT_PROBE_ATTEMPTS decides "not shared"; a sharing kernel passes every attempt. */
static int ptshare_probe(struct config *cfg, char *reason, size_t len)
{
    if (shm_dir_probe(cfg, reason, len))
        return 1;
    char path[340];
    snprintf(path, sizeof path, "%s/mshare-sga-%d-probe", cfg->shm_dir, (int)getpid());
    uint64_t bytes = pt_probe_bytes();
    int fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0 || ftruncate(fd, (off_t)bytes) < 0) {
        snprintf(reason, len, "probe file %s: %s", path, strerror(errno));
        if (fd >= 0) { close(fd); unlink(path); }
        return 1;
    }
    int64_t private_each = (int64_t)(bytes / 4096 * 8);
    int rc = 0;
    for (int attempt = 0; attempt < PT_PROBE_ATTEMPTS && rc == 0; attempt++) {
        int64_t growth, vm_sum;
        int started;
        rc = ptshare_attempt(cfg, fd, bytes, &growth, &vm_sum, &started, reason, len);
        /* shared page tables are counted once: the global growth stays near one copy */
        if (!rc && growth > private_each * started / 2) {
            snprintf(reason, len, "MAP_SHARED_PT accepted but page tables not shared: measured "
                     "PageTables +%lld KiB (VmPTE +%lld KiB) for %d processes mapping %lu MiB; "
                     "private page tables would be %lld KiB",
                     (long long)growth / 1024, (long long)vm_sum / 1024, started,
                     (unsigned long)(bytes >> 20), (long long)private_each * started / 1024);
            rc = 1;
        }
    }
    close(fd);
    unlink(path);
    return rc;
}

/* ---- System V: sysv (4 KiB) and hugetlb (SHM_HUGETLB, 2 MiB, 1 GiB aligned) ------- */

static int sysv_flags(const struct config *cfg)
{
    return strcmp(cfg->mechanism, "hugetlb") == 0 ? SHM_HUGETLB : 0;
}

static void *sysv_create(struct config *cfg, char *err, size_t len)
{
    int id = shmget(cfg->sysv_key, cfg->map_size, IPC_CREAT | IPC_EXCL | 0600 | sysv_flags(cfg));
    if (id < 0)
        return fail(err, len, "shmget(IPC_CREAT)");
    void *addr = shmat(id, (void *)cfg->base, 0);
    return addr == (void *)-1 ? fail(err, len, "shmat") : addr;
}

static void *sysv_attach(const struct config *cfg, char *err, size_t len)
{
    int id = shmget(cfg->sysv_key, 0, 0600);
    if (id < 0)
        return fail(err, len, "shmget(key)");
    void *addr = shmat(id, (void *)cfg->base, 0);
    return addr == (void *)-1 ? fail(err, len, "shmat") : addr;
}

static void sysv_detach(const struct config *cfg, void *addr) { (void)cfg; shmdt(addr); }

static void sysv_destroy(const struct config *cfg)
{
    int id = shmget(cfg->sysv_key, 0, 0600);
    if (id >= 0)
        shmctl(id, IPC_RMID, NULL);
}

static int sysv_probe(struct config *cfg, char *reason, size_t len)
{
    (void)cfg;
    char buf[64];
    if (read_file_str("/proc/sys/kernel/shmmax", buf, sizeof buf) < 0) {
        snprintf(reason, len, "System V IPC missing (no /proc/sys/kernel/shmmax: CONFIG_SYSVIPC)");
        return 1;
    }
    return 0;
}

static int hugetlb_probe(struct config *cfg, char *reason, size_t len)
{
    if (sysv_probe(cfg, reason, len))
        return 1;
    if (!filesystem_listed("hugetlbfs")) {
        snprintf(reason, len, "hugetlbfs not in /proc/filesystems (CONFIG_HUGETLBFS)");
        return 1;
    }
    if (read_meminfo_kb("Hugepagesize") != 2048) {
        snprintf(reason, len, "default huge page size is %lld kB, not 2048",
                 (long long)read_meminfo_kb("Hugepagesize"));
        return 1;
    }
    return 0;
}

/* ---- msharefs family ----------------------------------------------------------------- */

static int msharefs_prepare(struct config *cfg, char *reason, size_t len)
{
    if (!filesystem_listed("msharefs")) {
        snprintf(reason, len, "msharefs not in /proc/filesystems: the running kernel has no mshare");
        return 1;
    }
    struct statfs sfs;
    if (statfs(MSHAREFS_DIR, &sfs) < 0 || sfs.f_type != 0x4d534852) {
        mkdir(MSHAREFS_DIR, 0755);
        if (mount("msharefs", MSHAREFS_DIR, "msharefs", 0, NULL) < 0) {
            snprintf(reason, len, "mount -t msharefs on %s: %s", MSHAREFS_DIR, strerror(errno));
            return 1;
        }
    }
    char buf[64];
    cfg->align_unit = 512ul << 30;   /* PGDIR_SIZE with 4-level paging, when not published */
    if (read_file_str(MSHAREFS_DIR "/mshare_info", buf, sizeof buf) > 0 && strtoull(buf, NULL, 0))
        cfg->align_unit = strtoull(buf, NULL, 0);
    cfg->base = round_up(FIXED_BASE, cfg->align_unit);
    cfg->map_size = round_up(cfg->size, cfg->align_unit);
    snprintf(cfg->name, sizeof cfg->name, "mshare-sga-%d", (int)getpid());
    snprintf(cfg->path, sizeof cfg->path, MSHAREFS_DIR "/%s", cfg->name);
    return 0;
}

static int msharefs_probe(struct config *cfg, char *reason, size_t len)
{
    return msharefs_prepare(cfg, reason, len);
}

/* 2022 v2: the creator's mmap of a new msharefs file makes the region (no ftruncate) */
static void *msharefs_create(struct config *cfg, char *err, size_t len)
{
    int fd = open(cfg->path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0)
        return fail(err, len, cfg->path);
    void *addr = map_fd(cfg, fd, cfg->map_size, 0);
    int saved = errno;
    close(fd);
    errno = saved;
    return addr ? addr : fail(err, len, "mmap new msharefs file");
}

static void *msharefs_attach(const struct config *cfg, char *err, size_t len)
{
    int fd = open(cfg->path, O_RDWR | O_CLOEXEC);
    if (fd < 0)
        return fail(err, len, cfg->path);
    struct mshare_info info;
    if (read(fd, &info, sizeof info) != (ssize_t)sizeof info) {
        close(fd);
        return fail(err, len, "read mshare_info from region file");
    }
    void *addr = mmap((void *)info.start, info.size, PROT_READ | PROT_WRITE,
                      MAP_SHARED | MAP_FIXED_NOREPLACE, fd, 0);
    close(fd);
    return addr == MAP_FAILED ? fail(err, len, "mmap msharefs region") : addr;
}

static int syscall_probe(struct config *cfg, char *reason, size_t len)
{
    if (!filesystem_listed("msharefs"))
        return msharefs_prepare(cfg, reason, len);
    if (cfg->nr_mshare < 0) {
        snprintf(reason, len, "no mshare syscall numbers given (--mshare-syscall-nr from the kernel "
                 "metadata); numbers are never guessed");
        return 1;
    }
    return msharefs_prepare(cfg, reason, len);
}

static void *syscall_create(struct config *cfg, char *err, size_t len)
{
    void *addr = mmap((void *)cfg->base, cfg->map_size, PROT_READ | PROT_WRITE,
                      MAP_SHARED | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE | MAP_NORESERVE, -1, 0);
    if (addr == MAP_FAILED)
        return fail(err, len, "mmap region before mshare()");
    if (syscall(cfg->nr_mshare, cfg->name, cfg->base, cfg->map_size,
                O_CREAT | O_RDWR | O_EXCL, 0600) < 0) {
        munmap(addr, cfg->map_size);
        return fail(err, len, "mshare(O_CREAT)");
    }
    return addr;
}

static void *syscall_attach(const struct config *cfg, char *err, size_t len)
{
    int fd = open(cfg->path, O_RDONLY | O_CLOEXEC);
    uint64_t info[2];
    if (fd < 0 || read(fd, info, sizeof info) != (ssize_t)sizeof info) {
        if (fd >= 0)
            close(fd);
        return fail(err, len, "read region start/size from msharefs");
    }
    close(fd);
    if (syscall(cfg->nr_mshare, cfg->name, info[0], info[1], O_RDWR, 0600) < 0)
        return fail(err, len, "mshare(attach)");
    return (void *)info[0];
}

static void syscall_destroy(const struct config *cfg)
{
    if (cfg->nr_mshare_unlink >= 0 && cfg->name[0])
        syscall(cfg->nr_mshare_unlink, cfg->name);
}

static int ioctl_probe(struct config *cfg, char *reason, size_t len)
{
    if (!filesystem_listed("msharefs"))
        return msharefs_prepare(cfg, reason, len);
    if (cfg->ioctl_abi != 2024 && cfg->ioctl_abi != 2025) {
        snprintf(reason, len, "no msharefs ioctl ABI given (--msharefs-ioctl-abi 2024|2025 from the "
                 "kernel metadata)");
        return 1;
    }
    return msharefs_prepare(cfg, reason, len);
}

static void *ioctl_create(struct config *cfg, char *err, size_t len)
{
    int fd = open(cfg->path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0)
        return fail(err, len, cfg->path);
    uint64_t mem = round_up(cfg->size, 4096);
    int rc;
    if (cfg->ioctl_abi == 2024) {
        struct mshare_info info = { cfg->base, cfg->map_size };
        rc = ioctl(fd, MSHAREFS_SET_SIZE_2024, &info);
        if (rc == 0) {
            struct mshare_create_2024 mc = { cfg->base, mem, 0, PROT_READ | PROT_WRITE,
                                             MAP_ANONYMOUS | MAP_SHARED | MAP_FIXED, (uint32_t)-1 };
            rc = ioctl(fd, MSHAREFS_CREATE_MAPPING_2024, &mc);
        }
    } else {
        rc = ftruncate(fd, (off_t)cfg->map_size);
        if (rc == 0) {
            struct mshare_create_2025 mc = { 0, mem, 0, PROT_READ | PROT_WRITE,
                                             MAP_ANONYMOUS | MAP_SHARED | MAP_FIXED, (uint32_t)-1 };
            rc = ioctl(fd, MSHAREFS_CREATE_MAPPING_2025, &mc);
        }
    }
    if (rc < 0) {
        int saved = errno;
        close(fd);
        errno = saved;
        return fail(err, len, "msharefs size/create-mapping ioctl");
    }
    void *addr = map_fd(cfg, fd, cfg->map_size, 0);
    int saved = errno;
    close(fd);
    errno = saved;
    return addr ? addr : fail(err, len, "mmap msharefs region");
}

static void *ioctl_attach(const struct config *cfg, char *err, size_t len)
{
    int fd = open(cfg->path, O_RDWR | O_CLOEXEC);
    if (fd < 0)
        return fail(err, len, cfg->path);
    uint64_t start = cfg->base, size;
    if (cfg->ioctl_abi == 2024) {
        struct mshare_info info;
        if (ioctl(fd, MSHAREFS_GET_SIZE_2024, &info) < 0) {
            close(fd);
            return fail(err, len, "MSHAREFS_GET_SIZE");
        }
        start = info.start;
        size = info.size;
    } else {
        struct stat st;
        if (fstat(fd, &st) < 0) {
            close(fd);
            return fail(err, len, "fstat msharefs region");
        }
        size = (uint64_t)st.st_size;
    }
    void *addr = mmap((void *)start, size, PROT_READ | PROT_WRITE,
                      MAP_SHARED | MAP_FIXED_NOREPLACE, fd, 0);
    close(fd);
    return addr == MAP_FAILED ? fail(err, len, "mmap msharefs region") : addr;
}

static void msharefs_detach(const struct config *cfg, void *addr) { munmap(addr, cfg->map_size); }

const struct mechanism MECHANISMS[] = {
    { "shmem", 4096, 0, shm_dir_probe, file_create, file_attach, unmap, file_destroy, 0 },
    { "sysv", 4096, 0, sysv_probe, sysv_create, sysv_attach, sysv_detach, sysv_destroy, 0 },
    { "thp", 2ul << 20, 0, thp_probe, file_create, file_attach, unmap, file_destroy, 0 },
    /* hugetlb_change_protection unshares PMDs: every client changes its own mapping */
    { "hugetlb", 2ul << 20, 0, hugetlb_probe, sysv_create, sysv_attach, sysv_detach, sysv_destroy, 0 },
    { "ptshare", 4096, 1, ptshare_probe, file_create, file_attach, unmap, file_destroy, 1 },
    { "msharefs", 4096, 1, msharefs_probe, msharefs_create, msharefs_attach, msharefs_detach,
      file_destroy, 1 },
    { "mshare-syscall", 4096, 1, syscall_probe, syscall_create, syscall_attach, msharefs_detach,
      syscall_destroy, 1 },
    { "msharefs-ioctl", 4096, 1, ioctl_probe, ioctl_create, ioctl_attach, msharefs_detach,
      file_destroy, 1 },
};
const int NMECHANISMS = sizeof MECHANISMS / sizeof MECHANISMS[0];

const struct mechanism *mechanism_get(const char *name)
{
    for (int i = 0; i < NMECHANISMS; i++)
        if (strcmp(MECHANISMS[i].name, name) == 0)
            return &MECHANISMS[i];
    return NULL;
}

/* A fresh empty directory for a mount point; a minimal guest may lack /tmp. */
int make_tmp_dir(char *out, size_t len)
{
    static const char *parents[] = { "/tmp", "/run", "/dev", "" };
    for (size_t i = 0; i < sizeof parents / sizeof parents[0]; i++) {
        snprintf(out, len, "%s/mshare-sga.XXXXXX", parents[i]);
        if (mkdtemp(out))
            return 0;
    }
    return -1;
}

/* As root, work in a private mount namespace: every mount made here (a huge=always
 * tmpfs, msharefs) disappears with the last process of the run, even after SIGKILL. */
int prepare_private_mounts(struct config *cfg, char *err, size_t len)
{
    int private_ns = 0;
    if (geteuid() == 0 && unshare(CLONE_NEWNS) == 0 &&
        mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) == 0)
        private_ns = 1;

    int want_huge = strcmp(cfg->mechanism, "thp") == 0;
    struct statfs sfs;
    if (!want_huge && statfs("/dev/shm", &sfs) == 0 && sfs.f_type == TMPFS_MAGIC_) {
        snprintf(cfg->shm_dir, sizeof cfg->shm_dir, "/dev/shm");
        return 0;
    }
    if (!private_ns)
        return 0;   /* probes report what is missing */
    if (make_tmp_dir(cfg->shm_dir, sizeof cfg->shm_dir) < 0) {
        snprintf(err, len, "no writable directory for a private tmpfs (/tmp, /run, /dev, /): %s",
                 strerror(errno));
        return -1;
    }
    char *tmpl = cfg->shm_dir;
    if (mount("tmpfs", tmpl, "tmpfs", 0, want_huge ? "huge=always,mode=0700" : "mode=0700") < 0) {
        snprintf(err, len, "mount tmpfs on %s: %s", tmpl, strerror(errno));
        rmdir(tmpl);
        return -1;
    }
    tmp_mount_made = 1;
    return 0;
}

void release_private_mounts(const struct config *cfg)
{
    if (tmp_mount_made) {
        umount2(cfg->shm_dir, MNT_DETACH);
        rmdir(cfg->shm_dir);
        tmp_mount_made = 0;
    }
}

/* A client plays one database session: it attaches to the SGA by itself, populates its
 * working set, waits at the barrier, runs transactions, takes the protection change,
 * parks, detaches.  The owner holds the region for the whole run. */
#include "sga.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/futex.h>
#include <sched.h>
#include <setjmp.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

void futex_wait_change(_Atomic int *word, int seen, int timeout_ms)
{
    struct timespec ts = { timeout_ms / 1000, (long)(timeout_ms % 1000) * 1000000 };
    syscall(SYS_futex, (int *)word, FUTEX_WAIT, seen, timeout_ms >= 0 ? &ts : NULL, NULL, 0);
}

void futex_wake_all(_Atomic int *word)
{
    syscall(SYS_futex, (int *)word, FUTEX_WAKE, INT_MAX, NULL, NULL, 0);
}

static void wait_phase_at_least(struct control *ctl, int phase)
{
    int seen;
    while ((seen = atomic_load(&ctl->phase)) < phase)
        futex_wait_change(&ctl->phase, seen, 1000);
}

static volatile sig_atomic_t protect_pending;
static void on_protect(int sig) { (void)sig; protect_pending = 1; }

static sigjmp_buf probe_env;
static void on_probe_fault(int sig) { (void)sig; siglongjmp(probe_env, 1); }

/* Whether a write to *p goes through (1) or faults (0): the proof that a protection
 * change reached this process. It writes back the byte it read, so data never changes. */
static int write_goes_through(volatile char *p)
{
    struct sigaction sa = { .sa_handler = on_probe_fault }, old_segv, old_bus;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGSEGV, &sa, &old_segv);
    sigaction(SIGBUS, &sa, &old_bus);
    volatile int wrote = 0;
    if (sigsetjmp(probe_env, 1) == 0) {
        char v = *p;
        *p = v;
        wrote = 1;
    }
    sigaction(SIGSEGV, &old_segv, NULL);
    sigaction(SIGBUS, &old_bus, NULL);
    return wrote;
}

/* The permissions /proc/self/maps shows for the mapping that starts at addr ("r--s"), "?"
 * when none does.  Only read when a change did not hold: the buffer is static so that its
 * pages are private memory of the clients that need it, not of every client. */
static void maps_perms(const void *addr, char out[8])
{
    static char buf[4096];
    char want[24];
    snprintf(want, sizeof want, "%lx-", (unsigned long)addr);
    snprintf(out, 8, "?");
    int fd = open("/proc/self/maps", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return;
    size_t have = 0;
    ssize_t n;
    while ((n = read(fd, buf + have, sizeof buf - 1 - have)) > 0) {
        have += (size_t)n;
        buf[have] = 0;
        char *line = buf, *nl;
        while ((nl = strchr(line, '\n'))) {
            *nl = 0;
            char *sp = strchr(line, ' ');
            if (strncmp(line, want, strlen(want)) == 0 && sp) {
                snprintf(out, 8, "%.4s", sp + 1);
                close(fd);
                return;
            }
            line = nl + 1;
        }
        have = strlen(line);
        memmove(buf, line, have);
        if (have >= sizeof buf - 1)   /* a line longer than the buffer: drop it */
            have = 0;
    }
    close(fd);
}

static uint64_t xorshift(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return *s = x;
}

/* Grow the stack now, so that the fixed page-table cost is measured before attaching.
 * 12 KiB is as deep as a client goes (a 4 KiB /proc read buffer under a signal frame of the
 * protection check); every page more is private memory that thousands of clients pay. */
static __attribute__((noinline)) void pretouch_stack(void)
{
    volatile char buf[12 << 10];
    for (size_t i = 0; i < sizeof buf; i += 4096)
        buf[i] = 0;
}

static void latch_acquire(_Atomic int *lock)
{
    for (;;) {
        if (!atomic_exchange_explicit(lock, 1, memory_order_acquire))
            return;
        for (int i = 0; i < 64 && atomic_load_explicit(lock, memory_order_relaxed); i++)
            __builtin_ia32_pause();
        /* thousands of sessions on two cores: a preempted holder needs the CPU */
        sched_yield();
    }
}

static void populate(char *addr, uint64_t bytes, struct slot *slot)
{
    if (!bytes)
        return;
    if (madvise(addr, bytes, MADV_POPULATE_WRITE) == 0) {
        slot->populate_method = 1;
        return;
    }
    /* older kernels (EINVAL), or a charge that failed (ENOMEM): fault page by page, which
     * lets the memory cgroup's OOM killer act the way it would for a real database */
    slot->populate_method = 0;
    for (uint64_t off = 0; off < bytes; off += 4096)
        ((volatile char *)addr)[off] = ((volatile char *)addr)[off];
}

void client_main(const struct config *cfg, struct control *ctl, int idx, const char *cgroup_procs)
{
    struct slot *slot = &ctl->slots[idx];
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    signal(SIGINT, SIG_DFL);
    signal(SIGTERM, SIG_DFL);
    signal(SIGHUP, SIG_DFL);
    struct sigaction sa = { .sa_handler = on_protect };
    sigaction(SIGUSR1, &sa, NULL);
    /* the coordinator shields itself; a client is what the OOM killer should pick */
    write_file_str("/proc/self/oom_score_adj", "0");
    setpriority(PRIO_PROCESS, 0, 0);
    char pid[24];
    snprintf(pid, sizeof pid, "%d", (int)getpid());
    if (cgroup_procs && write_file_str(cgroup_procs, pid) < 0) {
        snprintf(slot->err, sizeof slot->err, "join memory cgroup %s: %s", cgroup_procs, strerror(errno));
        atomic_store(&slot->state, S_FAILED);
        atomic_fetch_add(&ctl->failed, 1);
        _exit(2);
    }
    slot->pid = getpid();
    memset(slot->hist, 0, sizeof slot->hist);
    pretouch_stack();
    slot->vmpte_before = read_status_kb(0, "VmPTE") * 1024;
    /* wait until every client exists: the coordinator measures their fixed cost here */
    atomic_store(&slot->state, S_READY);
    wait_phase_at_least(ctl, PH_ATTACH);

    const struct mechanism *mech = mechanism_get(cfg->mechanism);
    int64_t t0 = now_ns();
    char *addr = mech->attach(cfg, slot->err, sizeof slot->err);
    if (!addr) {
        atomic_store(&slot->state, S_FAILED);
        atomic_fetch_add(&ctl->failed, 1);
        _exit(2);
    }
    slot->attach_ns = now_ns() - t0;
    atomic_store(&slot->state, S_ATTACHED);
    struct sga_header *hdr = (struct sga_header *)addr;
    if (hdr->magic != SGA_MAGIC) {
        snprintf(slot->err, sizeof slot->err, "attached region has no SGA header (magic %#llx)",
                 (unsigned long long)hdr->magic);
        atomic_store(&slot->state, S_FAILED);
        atomic_fetch_add(&ctl->failed, 1);
        _exit(2);
    }

    uint64_t ws = (uint64_t)(cfg->populate * (double)cfg->size);
    ws = (ws + 4095) & ~4095ull;
    if (ws > cfg->size)
        ws = cfg->size & ~4095ull;
    populate(addr, ws, slot);
    slot->vmpte_after = read_status_kb(0, "VmPTE") * 1024;
    slot->populated_ns = now_ns();
    atomic_store(&slot->state, S_POPULATED);
    atomic_fetch_add(&ctl->populated, 1);

    wait_phase_at_least(ctl, PH_GO);
    atomic_store(&slot->state, S_RUNNING);

    /* transactions over the populated blocks; nothing outside the working set is touched,
     * so page tables do not grow after the barrier */
    uint64_t nblocks = ws > HEADER_BYTES ? (ws - HEADER_BYTES) / BLOCK_BYTES : 0;
    uint64_t rng = 0x9E3779B97F4A7C15ull ^ ((uint64_t)getpid() << 17) ^ (uint64_t)now_ns();
    uint64_t write_cut = (uint64_t)(cfg->write_share * 18446744073709551615.0);
    int read_only = 0, stage = 0;   /* protection changes taken: 1 read-only, 2 read-write */
    uint64_t sink = 0;
    while (atomic_load_explicit(&ctl->phase, memory_order_relaxed) == PH_GO) {
        if (stage < 2 && atomic_load_explicit(&ctl->protect, memory_order_relaxed) > stage) {
            int want = stage + 1, ready = 0, protected_here = 0;
            if (mech->owner_protects) {
                /* shared page tables: the owner's one mprotect is meant to cover everyone */
                ready = atomic_load(&ctl->owner_protect_done) >= want;
            } else if (protect_pending) {
                protect_pending = 0;
                if (mprotect(addr, cfg->map_size, want == 1 ? PROT_READ : PROT_READ | PROT_WRITE) < 0)
                    snprintf(slot->err, sizeof slot->err, "mprotect(%s): %s",
                             want == 1 ? "PROT_READ" : "PROT_READ|PROT_WRITE", strerror(errno));
                else
                    protected_here = 1;
                ready = 1;
            }
            if (ready) {
                /* proven, not assumed: read-only holds when a write faults, read-write
                 * when it goes through */
                int held = write_goes_through((volatile char *)hdr->pad) == (want == 2);
                if (held)
                    atomic_fetch_or(&slot->held, want);
                else if (want == 1 && protected_here && !slot->err[0]) {
                    /* our own mprotect succeeded and a write still went through: the
                     * kernel's evidence for the verdict, kept with the client's error */
                    char perms[8];
                    maps_perms(addr, perms);
                    int again = write_goes_through((volatile char *)hdr->pad);
                    snprintf(slot->err, sizeof slot->err, "mprotect(PROT_READ) returned 0 but a write "
                             "went through (maps says %s; a second write %s)", perms,
                             again ? "went through too" : "faulted");
                }
                atomic_store(want == 1 ? &slot->ack_ns : &slot->back_ns, now_ns());
                atomic_fetch_add(&ctl->acked, 1);
                stage = want;
                /* no writes while read-only, nor after a change back that did not hold */
                read_only = want == 1 || !held;
            }
        }
        int64_t s = now_ns();
        if (nblocks) {
            uint64_t b = xorshift(&rng) % nblocks;
            uint64_t *blk = (uint64_t *)(addr + HEADER_BYTES + b * BLOCK_BYTES);
            for (unsigned i = 0; i < BLOCK_BYTES / 8; i += 8)
                sink += blk[i];
            if (!read_only && !atomic_load_explicit(&hdr->read_only, memory_order_relaxed)
                && xorshift(&rng) < write_cut) {
                _Atomic int *lock = &hdr->latch[b % NLATCHES].lock;
                latch_acquire(lock);
                for (unsigned i = 0; i < BLOCK_BYTES / 8; i += 64)
                    blk[i] += 1;
                atomic_store_explicit(lock, 0, memory_order_release);
                atomic_fetch_add_explicit(&hdr->commits, 1, memory_order_relaxed);
                atomic_fetch_add_explicit(&slot->tx_writes, 1, memory_order_relaxed);
            }
        } else {
            sink += atomic_load(&hdr->commits);
        }
        hist_add(slot->hist, (uint64_t)(now_ns() - s));
        atomic_fetch_add_explicit(&slot->tx, 1, memory_order_relaxed);
    }
    __asm__ volatile("" ::"r"(sink));

    atomic_store(&slot->state, S_PARKED);
    atomic_fetch_add(&ctl->parked, 1);
    wait_phase_at_least(ctl, PH_DETACH);
    mech->detach(cfg, addr);
    atomic_store(&slot->state, S_DETACHED);
    atomic_fetch_add(&ctl->detached, 1);
    /* stay until everyone detached, so exiting clients do not blur the detach sample */
    wait_phase_at_least(ctl, PH_EXIT);
    _exit(0);
}

void owner_main(struct config *cfg, struct control *ctl)
{
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    signal(SIGINT, SIG_IGN);    /* the coordinator decides when the region goes */
    signal(SIGTERM, SIG_DFL);
    const struct mechanism *mech = mechanism_get(cfg->mechanism);
    char *addr = mech->create(cfg, ctl->owner_err, sizeof ctl->owner_err);
    if (!addr) {
        atomic_store(&ctl->owner_state, -1);
        futex_wake_all(&ctl->owner_state);
        _exit(2);
    }
    struct sga_header *hdr = (struct sga_header *)addr;
    hdr->size = cfg->size;
    hdr->nblocks = cfg->size > HEADER_BYTES ? (cfg->size - HEADER_BYTES) / BLOCK_BYTES : 0;
    hdr->magic = SGA_MAGIC;
    atomic_store(&ctl->owner_state, 1);
    futex_wake_all(&ctl->owner_state);

    int done = 0, seen;
    while ((seen = atomic_load(&ctl->phase)) < PH_EXIT) {
        int want = atomic_load(&ctl->protect);
        if (mech->owner_protects && want > done && want <= 2) {
            /* 1: read-only (the header flag first, while it can still be written),
             * 2: back to read-write (the flag after) */
            if (want == 1)
                atomic_store(&hdr->read_only, 1);
            if (mprotect(addr, cfg->map_size, want == 1 ? PROT_READ : PROT_READ | PROT_WRITE) < 0)
                snprintf(ctl->owner_err, sizeof ctl->owner_err, "owner mprotect: %s", strerror(errno));
            else if (want == 2)
                atomic_store(&hdr->read_only, 0);
            atomic_store(&ctl->owner_protect_ns, now_ns());
            atomic_store(&ctl->owner_protect_done, want);
            done = want;
        }
        /* the coordinator wakes the phase word when it asks for the protection change */
        futex_wait_change(&ctl->phase, seen, 20);
    }
    mech->detach(cfg, addr);
    _exit(0);
}

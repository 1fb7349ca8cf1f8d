/* The coordinator: probes the mechanism, checks and raises limits, has an owner create
 * the region, forks the clients (without the region mapped), drives the phases, samples
 * the counters, cleans up everything it made and writes one result document. */
#include "sga.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <poll.h>
#include <sched.h>
#include <stdarg.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/shm.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

void release_private_mounts(const struct config *cfg);

#define MAX_SAMPLES 4096
#define MAX_RESTORE 8

static volatile sig_atomic_t interrupted;
/* the first signal names the interruption: a Ctrl-C followed by the supervisor's SIGTERM
 * is still a SIGINT */
static void on_interrupt(int sig) { if (!interrupted) interrupted = sig; }
/* The first OOM kill is the event an OOM scenario reproduces. Going on would only let the
 * OOM killer churn through the clients one by one (minutes under emulation, and a guest
 * that thrashes in reclaim), so by default the run stops there and reports what it saw. */
static int oom_stop;

/* Everything measured so far: progress lines and the final document render this. */
static struct run {
    const char *phase;
    enum outcome outcome;
    char reason[512];
    char kernel_release[128];
    const struct mechanism *mech;
    int64_t started_at;
    int64_t t0_ns, fork_ns;
    int forked, attached, failed, killed, reaped_count;
    int64_t pt_before, pt_after, pt_peak, pt_parked, pt_detached;   /* bytes, -1 unknown */
    int64_t oth_before, oth_after, oth_parked, oth_detached;        /* others' VmPTE sums */
    int64_t pt_ready, oth_ready;    /* every client forked, nothing attached yet */
    int64_t free_before, free_ready;   /* MemFree around forking the clients */
    /* per-client cost at the ready barrier, medians over the clients sampled */
    int cost_sampled;
    int64_t cost_rss, cost_anon, cost_private, cost_pte, cost_stk;
    int64_t fixed_pte;
    int64_t vm_min, vm_med, vm_max, vm_sum;
    double attach_populate_s;
    uint64_t transactions, writes;
    double tx_seconds;
    double p50, p90, p99;
    double protect_us;
    int protect_acked;
    /* each protection change (0: read-only, 1: back to read-write), as the clients proved it */
    struct protect_stat { int done, asked, acked, held; double us; } protect[2];
    int64_t oom_vmstat_before, oom_vmstat_delta, cg_oom_kill;
    int populate_madvise;
    /* memory cgroup */
    const char *cg_version;
    char cg_dir[512];
    char cg_procs[560];
    char cg_home_procs[1560];       /* the coordinator's own cgroup, to go back to */
    int cg_entered;                 /* the coordinator is in the clients' cgroup (fork loop) */
    int oom_group;                  /* memory.oom.group set: one OOM kill takes every client */
    int64_t cg_group_kills;         /* memory.events oom_group_kill */
    double oom_at_s;                /* when the coordinator saw the first OOM kill, -1 never */
    int64_t watcher_loops;          /* how often the OOM watcher woke, and when it last did */
    double watcher_last_s;
    char oom_phase[16];             /* the phase it saw it in */
    /* errors */
    char errors[8][200];
    int nerrors;
    /* sysctls raised, restored at the end */
    struct { char path[96]; char old[64]; char now[64]; } restore[MAX_RESTORE];
    int nrestore;
    /* time series */
    int ns, stride_samples;
    double sample_every, next_sample;
    double ts_t[MAX_SAMPLES];
    int64_t ts_pt[MAX_SAMPLES], ts_free[MAX_SAMPLES], ts_oom[MAX_SAMPLES];
    /* when each phase began, on the time series' clock: the report marks them on its plots */
    struct { const char *name; double t; } marks[16];
    int nmarks;
} R;

static struct config *C;
static struct control *CTL;
static size_t ctl_bytes;
static pid_t owner_pid = -1;
static pid_t clients_pgid;   /* the clients' own process group: one kill() reaches all */
/* The clients' memory.events (or memory.oom_control), open for the whole run: a pread of an
 * open cgroup file reuses its buffer, so the OOM watcher notices a kill without allocating. */
static int oom_events_fd = -1;
static int *reaped;          /* per client: 0 alive, 1 reaped */
static int teardown;         /* kills from here on are ours, not the OOM killer's */

static double since_start(void) { return (double)(now_ns() - R.t0_ns) / 1e9; }

static void add_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void add_error(const char *fmt, ...)
{
    if (R.nerrors >= 8)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(R.errors[R.nerrors], sizeof R.errors[0], fmt, ap);
    va_end(ap);
    for (int i = 0; i < R.nerrors; i++)
        if (strcmp(R.errors[i], R.errors[R.nerrors]) == 0)
            return;
    R.nerrors++;
}

/* ---- monitor: PageTables, MemFree, oom_kill over time (mmtests-style) ---------------- */

static void sample_now(void)
{
    double t = since_start();
    int64_t pt = read_meminfo_kb("PageTables") * 1024;
    if (pt > R.pt_peak)
        R.pt_peak = pt;
    if (t < R.next_sample)
        return;
    if (R.ns == MAX_SAMPLES) {
        /* full: keep every other sample and halve the rate */
        for (int i = 0; i < MAX_SAMPLES / 2; i++) {
            R.ts_t[i] = R.ts_t[2 * i];
            R.ts_pt[i] = R.ts_pt[2 * i];
            R.ts_free[i] = R.ts_free[2 * i];
            R.ts_oom[i] = R.ts_oom[2 * i];
        }
        R.ns = MAX_SAMPLES / 2;
        R.sample_every *= 2;
    }
    R.ts_t[R.ns] = t;
    R.ts_pt[R.ns] = pt;
    R.ts_free[R.ns] = read_meminfo_kb("MemFree") * 1024;
    R.ts_oom[R.ns] = read_vmstat("oom_kill");
    R.ns++;
    R.next_sample = t + R.sample_every;
}

/* PageTables now, and the page tables of everyone else at the same moment.  Our
 * processes are still whenever this is called, so the true (PageTables - others) is
 * constant: of five samples keep the median, which drops a process that started or
 * exited elsewhere between the reads. */
#define PT_SAMPLES 5
static int64_t sample_pagetables(int64_t *others)
{
    int64_t pts[PT_SAMPLES], oth[PT_SAMPLES], ours[PT_SAMPLES];
    for (int i = 0; i < PT_SAMPLES; i++) {
        if (i)
            usleep(10000);
        int64_t o1 = others_pte_bytes();
        pts[i] = read_meminfo_kb("PageTables") * 1024;
        int64_t o2 = others_pte_bytes();
        oth[i] = o1 >= 0 && o2 >= 0 ? (o1 + o2) / 2 : -1;
        ours[i] = pts[i] - (oth[i] > 0 ? oth[i] : 0);
    }
    int best = 0;
    for (int i = 0; i < PT_SAMPLES; i++) {
        int below = 0, above = 0;
        for (int j = 0; j < PT_SAMPLES; j++) {
            below += ours[j] < ours[i];
            above += ours[j] > ours[i];
        }
        if (below <= PT_SAMPLES / 2 && above <= PT_SAMPLES / 2) {
            best = i;
            break;
        }
    }
    *others = oth[best];
    return pts[best];
}

/* ---- the document -------------------------------------------------------------------- */

static const char *outcome_name(enum outcome o)
{
    static const char *names[] = { "completed", "oom", "unsupported", "error" };
    return names[o];
}

static uint64_t working_set(void)
{
    uint64_t ws = (uint64_t)(C->populate * (double)C->size);
    ws = (ws + 4095) & ~4095ull;
    return ws > C->size ? C->size & ~4095ull : ws;
}

static void render_client_cost(struct jbuf *b, int64_t fixed_global);

static void render(struct jbuf *b, int final)
{
    uint64_t ws = working_set();
    int64_t theory = (int64_t)(ws / 4096) * 8 * R.attached;
    uint64_t psize = R.mech ? R.mech->page_size : 4096;
    int64_t private_at_ps = (int64_t)((ws + psize - 1) / psize) * 8 * R.attached;
    int have_pt = R.pt_before >= 0 && R.pt_after >= 0;
    int64_t raw_delta = have_pt ? R.pt_after - R.pt_before : 0;
    int64_t noise = R.oth_before >= 0 && R.oth_after >= 0 ? R.oth_after - R.oth_before : 0;
    int64_t delta = raw_delta - noise;
    /* the fixed cost measured globally at the ready barrier includes per-process tables
     * VmPTE does not count (the PGD); fall back to the VmPTE sum without it */
    int have_ready = R.pt_ready >= 0 && R.pt_before >= 0;
    int64_t ready_noise = R.oth_ready >= 0 && R.oth_before >= 0 ? R.oth_ready - R.oth_before : 0;
    int64_t fixed_global = have_ready ? R.pt_ready - R.pt_before - ready_noise : 0;
    int64_t fixed = have_ready ? fixed_global : R.fixed_pte;
    int64_t region = delta - fixed > 0 ? delta - fixed : 0;
    int have_detach = R.pt_parked >= 0 && R.pt_detached >= 0;
    int64_t detach_noise = R.oth_parked >= 0 && R.oth_detached >= 0 ? R.oth_parked - R.oth_detached : 0;
    int64_t detach = have_detach ? R.pt_parked - R.pt_detached - detach_noise : 0;
    if (detach < 0)
        detach = 0;
    int verified = -1;
    if (have_pt && R.attached >= 2 && theory > 0) {
        /* The barrier estimate decides: it is the sharing the clients attached with.  The
         * detach release comes after the protection change, which can undo sharing (per-
         * client mprotect unshares hugetlb PMDs; concurrent refaults re-share only in
         * part), so it only confirms a barrier estimate in the grey zone blurred by other
         * activity on the machine. */
        double p = (double)private_at_ps, r = (double)region, d = (double)detach;
        verified = r < 0.25 * p || (have_detach && r < 0.5 * p && d < 0.25 * p);
    }

    jb_obj_begin(b);
    jb_str(b, "schema", "mshare-lab/result");
    jb_int(b, "version", 1);
    jb_str(b, "phase", R.phase);
    jb_str(b, "outcome", final ? outcome_name(R.outcome) : NULL);
    jb_str(b, "reason", R.reason[0] ? R.reason : NULL);
    jb_str(b, "mechanism", C->mechanism);
    jb_int(b, "mechanism_page_size", (int64_t)psize);
    jb_str(b, "kernel_release", R.kernel_release);
    jb_int(b, "started_at", R.started_at);
    jb_num(b, "wall_s", since_start());
    jb_int(b, "region_bytes", (int64_t)C->size);
    jb_int(b, "mapped_bytes", (int64_t)C->map_size);
    jb_int(b, "working_set_bytes", (int64_t)ws);
    jb_num(b, "populate", C->populate);
    jb_num(b, "write_share", C->write_share);
    jb_num(b, "duration_s", C->duration);
    jb_int(b, "clients_requested", C->clients);
    jb_int(b, "clients_started", R.forked);
    jb_int(b, "clients_attached", R.attached);
    jb_int(b, "clients_failed", R.failed);
    jb_str(b, "populate_method", R.attached ? (R.populate_madvise ? "MADV_POPULATE_WRITE" : "touch") : NULL);

    jb_key(b, "pagetables");
    jb_obj_begin(b);
    jb_int(b, "before_bytes", R.pt_before);
    jb_int(b, "after_bytes", R.pt_after);
    jb_int(b, "peak_bytes", R.pt_peak);
    jb_int(b, "parked_bytes", R.pt_parked);
    jb_int(b, "detached_bytes", R.pt_detached);
    jb_int(b, "ready_bytes", R.pt_ready);
    jb_int(b, "others_before_bytes", R.oth_before);
    jb_int(b, "others_after_bytes", R.oth_after);
    jb_obj_end(b);
    if (have_pt) {
        jb_int(b, "pagetables_delta_bytes", delta);
        jb_int(b, "pagetables_delta_raw_bytes", raw_delta);
        jb_int(b, "region_pagetable_bytes", region);
    } else {
        jb_null(b, "pagetables_delta_bytes");
        jb_null(b, "pagetables_delta_raw_bytes");
        jb_null(b, "region_pagetable_bytes");
    }
    if (have_detach)
        jb_int(b, "region_pagetable_bytes_detach", detach);
    else
        jb_null(b, "region_pagetable_bytes_detach");
    jb_int(b, "client_fixed_pte_bytes", R.fixed_pte);
    if (have_ready)
        jb_int(b, "client_fixed_pagetables_bytes", fixed_global);
    else
        jb_null(b, "client_fixed_pagetables_bytes");
    jb_int(b, "theory_pte_bytes", theory);
    jb_int(b, "private_pte_bytes_at_page_size", private_at_ps);
    jb_num(b, "pte_ratio", have_pt && theory ? (double)region / (double)theory : NAN);
    jb_num(b, "pte_ratio_raw", have_pt && theory ? (double)delta / (double)theory : NAN);
    jb_bool(b, "sharing_verified", verified);
    render_client_cost(b, have_ready ? fixed_global : 0);
    jb_key(b, "vmpte_bytes");
    jb_obj_begin(b);
    jb_int(b, "min", R.vm_min);
    jb_int(b, "median", R.vm_med);
    jb_int(b, "max", R.vm_max);
    jb_int(b, "sum", R.vm_sum);
    jb_obj_end(b);

    jb_num(b, "attach_populate_s", R.attach_populate_s);
    jb_int(b, "transactions", (int64_t)R.transactions);
    jb_int(b, "transactions_written", (int64_t)R.writes);
    jb_num(b, "throughput_tps", R.tx_seconds > 0 ? (double)R.transactions / R.tx_seconds : NAN);
    jb_key(b, "latency_us");
    jb_obj_begin(b);
    jb_num(b, "p50", R.p50);
    jb_num(b, "p90", R.p90);
    jb_num(b, "p99", R.p99);
    jb_obj_end(b);
    jb_num(b, "protect_change_us", R.protect_us);
    jb_str(b, "protect_mode", R.mech ? (R.mech->owner_protects ? "owner" : "per-client") : NULL);
    jb_int(b, "protect_acked", R.protect_acked);
    jb_num(b, "protect_back_us", R.protect[1].us);
    for (int k = 0; k < 2; k++) {
        const struct protect_stat *ps = &R.protect[k];
        const char *name = k == 0 ? "protect_effective" : "protect_back_effective";
        if (!ps->done) {
            jb_null(b, name);
            continue;
        }
        jb_key(b, name);
        jb_obj_begin(b);
        jb_int(b, "asked", ps->asked);
        jb_int(b, "acked", ps->acked);
        jb_int(b, "held", ps->held);
        jb_obj_end(b);
    }

    jb_key(b, "oom_kills");
    jb_obj_begin(b);
    jb_int(b, "clients_killed", R.killed);
    jb_int(b, "vmstat_oom_kill_delta", R.oom_vmstat_delta);
    if (R.cg_version)
        jb_int(b, "cgroup_oom_kill", R.cg_oom_kill);
    else
        jb_null(b, "cgroup_oom_kill");
    jb_bool(b, "group", R.oom_group);
    if (R.oom_group)
        jb_int(b, "group_kills", R.cg_group_kills);
    else
        jb_null(b, "group_kills");
    jb_num(b, "first_seen_s", R.oom_at_s >= 0 ? R.oom_at_s : NAN);
    jb_str(b, "first_seen_phase", R.oom_at_s >= 0 ? R.oom_phase : NULL);
    jb_int(b, "watcher_wakeups", R.watcher_loops);
    jb_num(b, "watcher_last_awake_s", R.watcher_last_s);
    jb_obj_end(b);
    jb_key(b, "memory_cgroup");
    if (R.cg_version) {
        jb_obj_begin(b);
        jb_str(b, "version", R.cg_version);
        jb_str(b, "path", R.cg_dir);
        if (C->memory_limit)
            jb_int(b, "limit_bytes", (int64_t)C->memory_limit);
        else
            jb_null(b, "limit_bytes");
        jb_obj_end(b);
    } else {
        jb_raw(b, "null");
        b->need_comma = 1;
    }
    jb_key(b, "limits_raised");
    jb_arr_begin(b);
    for (int i = 0; i < R.nrestore; i++) {
        jb_key(b, NULL);
        jb_obj_begin(b);
        jb_str(b, "path", R.restore[i].path);
        jb_str(b, "from", R.restore[i].old);
        jb_str(b, "to", R.restore[i].now);
        jb_obj_end(b);
    }
    jb_arr_end(b);
    jb_key(b, "resources");
    jb_obj_begin(b);
    jb_str(b, "region_path", C->path[0] ? C->path : NULL);
    if (strcmp(C->mechanism, "sysv") == 0 || strcmp(C->mechanism, "hugetlb") == 0)
        jb_int(b, "sysv_key", C->sysv_key);
    else
        jb_null(b, "sysv_key");
    jb_str(b, "cgroup", R.cg_version ? R.cg_dir : NULL);
    jb_int(b, "coordinator_pid", getpid());
    jb_obj_end(b);
    jb_key(b, "errors");
    jb_arr_begin(b);
    for (int i = 0; i < R.nerrors; i++)
        jb_elem_str(b, R.errors[i]);
    jb_arr_end(b);
    if (final) {
        jb_key(b, "timeseries");
        jb_obj_begin(b);
        jb_num(b, "interval_s", R.sample_every);
        jb_key(b, "t_s");
        jb_arr_begin(b);
        for (int i = 0; i < R.ns; i++)
            jb_elem_num(b, R.ts_t[i]);
        jb_arr_end(b);
        jb_key(b, "pagetables_bytes");
        jb_arr_begin(b);
        for (int i = 0; i < R.ns; i++)
            jb_elem_int(b, R.ts_pt[i]);
        jb_arr_end(b);
        jb_key(b, "memfree_bytes");
        jb_arr_begin(b);
        for (int i = 0; i < R.ns; i++)
            jb_elem_int(b, R.ts_free[i]);
        jb_arr_end(b);
        jb_key(b, "oom_kill");
        jb_arr_begin(b);
        for (int i = 0; i < R.ns; i++)
            jb_elem_int(b, R.ts_oom[i]);
        jb_arr_end(b);
        jb_key(b, "phases");
        jb_obj_begin(b);
        for (int i = 0; i < R.nmarks; i++)
            jb_num(b, R.marks[i].name, R.marks[i].t);
        jb_obj_end(b);
        jb_obj_end(b);
    }
    jb_obj_end(b);
}

/* In a lab guest (MSHARE_SGA_KMSG_PHASES=1, set by the micro init) each new phase is
 * also a line in the kernel log, so that what the kernel reports is placed in the phase
 * it happened in (orchestrator lab/kernel_log.py). Info level: never on the console. */
static void kmsg_phase(const char *phase)
{
    static int fd = -2;
    static const char *last;
    if (fd == -2) {
        const char *on = getenv("MSHARE_SGA_KMSG_PHASES");
        fd = on && strcmp(on, "1") == 0 ? open("/dev/kmsg", O_WRONLY | O_CLOEXEC) : -1;
    }
    if (fd < 0 || (last && strcmp(last, phase) == 0))
        return;
    last = phase;
    char line[80];
    int n = snprintf(line, sizeof line, "<6>mshare-lab: phase %s\n", phase);
    if (write(fd, line, (size_t)n) < 0) {
        /* rate-limited or refused: the phase is only a hint for the log reader */
    }
}

static void progress(const char *phase)
{
    R.phase = phase;
    kmsg_phase(phase);
    if (R.nmarks < (int)(sizeof R.marks / sizeof R.marks[0]) &&
        (R.nmarks == 0 || strcmp(R.marks[R.nmarks - 1].name, phase) != 0)) {
        R.marks[R.nmarks].name = phase;
        R.marks[R.nmarks++].t = since_start();
    }
    struct jbuf b = { 0 };
    render(&b, 0);
    fprintf(stderr, "MSHARE-LAB-PROGRESS %s\n", b.s);
    fflush(stderr);
    jb_free(&b);
}

static int write_document(void)
{
    struct jbuf b = { 0 };
    render(&b, 1);
    jb_raw(&b, "\n");
    int rc = 0;
    if (C->json_path) {
        char tmp[4200];
        snprintf(tmp, sizeof tmp, "%s.tmp", C->json_path);
        FILE *f = fopen(tmp, "w");
        if (!f || fwrite(b.s, 1, b.len, f) != b.len || fclose(f) != 0 || rename(tmp, C->json_path) < 0) {
            fprintf(stderr, "mshare-sga: cannot write %s: %s\n", C->json_path, strerror(errno));
            rc = -1;
        }
    } else {
        fwrite(b.s, 1, b.len, stdout);
        fflush(stdout);
    }
    jb_free(&b);
    return rc;
}

/* ---- host state for gc ------------------------------------------------------------------ */

static char cg2_mount[300];   /* a cgroup2 mount we made (private namespace), or "" */

/* What this run creates on the host, written (atomically) before each thing is created:
 * after a SIGKILL of this process, `mshare-lab gc` reads it to remove the region file, the
 * SysV segment, the cgroup and the temporary directories, and to put raised sysctls back. */
static void save_state(void)
{
    if (!C || !C->state_path)
        return;
    char start[32] = "", stat[1024];
    if (read_file_str("/proc/self/stat", stat, sizeof stat) > 0) {
        /* field 22 (starttime) counts from after the ")" that ends the command name */
        char *p = strrchr(stat, ')');
        for (int field = 2; p && field < 22; field++)
            p = strchr(p + 1, ' ');
        if (p)
            snprintf(start, sizeof start, "%lld", strtoll(p + 1, NULL, 10));
    }
    struct jbuf b = { 0 };
    jb_obj_begin(&b);
    jb_str(&b, "schema", "mshare-lab/host-state");
    jb_int(&b, "coordinator_pid", getpid());
    jb_str(&b, "coordinator_start", start);
    jb_str(&b, "mechanism", C->mechanism);
    jb_str(&b, "region_path", C->path[0] ? C->path : NULL);
    if (strcmp(C->mechanism, "sysv") == 0 || strcmp(C->mechanism, "hugetlb") == 0)
        jb_int(&b, "sysv_key", C->sysv_key);
    else
        jb_null(&b, "sysv_key");
    jb_str(&b, "tmp_dir", C->shm_dir[0] && strcmp(C->shm_dir, "/dev/shm") ? C->shm_dir : NULL);
    jb_str(&b, "cgroup_mount_dir", cg2_mount[0] ? cg2_mount : NULL);
    jb_str(&b, "cgroup", R.cg_dir[0] ? R.cg_dir : NULL);
    jb_key(&b, "limits_raised");
    jb_arr_begin(&b);
    for (int i = 0; i < R.nrestore; i++) {
        jb_key(&b, NULL);
        jb_obj_begin(&b);
        jb_str(&b, "path", R.restore[i].path);
        jb_str(&b, "from", R.restore[i].old);
        jb_str(&b, "to", R.restore[i].now);
        jb_obj_end(&b);
    }
    jb_arr_end(&b);
    jb_obj_end(&b);
    jb_raw(&b, "\n");
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp", C->state_path);
    FILE *f = fopen(tmp, "w");
    if (!f || fwrite(b.s, 1, b.len, f) != b.len || fflush(f) != 0 || fsync(fileno(f)) != 0
        || fclose(f) != 0 || rename(tmp, C->state_path) < 0)
        add_error("cannot write the host state file %s: %s", C->state_path, strerror(errno));
    jb_free(&b);
}

/* ---- limits ---------------------------------------------------------------------------- */

static int64_t read_sysctl(const char *path)
{
    char buf[64];
    return read_file_str(path, buf, sizeof buf) > 0 ? strtoll(buf, NULL, 10) : -1;
}

/* raise a sysctl for this run and remember how to put it back */
static int raise_sysctl(const char *path, int64_t value)
{
    if (R.nrestore >= MAX_RESTORE)
        return -1;
    char old[64], now[64];
    if (read_file_str(path, old, sizeof old) <= 0)
        return -1;
    old[strcspn(old, "\n")] = 0;
    snprintf(now, sizeof now, "%lld", (long long)value);
    snprintf(R.restore[R.nrestore].path, sizeof R.restore[0].path, "%s", path);
    snprintf(R.restore[R.nrestore].old, sizeof R.restore[0].old, "%s", old);
    snprintf(R.restore[R.nrestore].now, sizeof R.restore[0].now, "%s", now);
    /* recorded before it is changed: a SIGKILL right after the write leaves gc the way back */
    R.nrestore++;
    save_state();
    if (write_file_str(path, now) < 0) {
        R.nrestore--;
        save_state();
        return -1;
    }
    return 0;
}

static void restore_sysctls(void)
{
    for (int i = R.nrestore - 1; i >= 0; i--)
        write_file_str(R.restore[i].path, R.restore[i].old);
}

static int refuse(char *msg, size_t len, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int refuse(char *msg, size_t len, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, len, fmt, ap);
    va_end(ap);
    return 3;
}

static int check_limits(char *msg, size_t len)
{
    int root = geteuid() == 0;
    int64_t need = C->clients + 64;

    struct rlimit rl;
    if (!root && getrlimit(RLIMIT_NPROC, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY
        && rl.rlim_cur < (rlim_t)need) {
        if (rl.rlim_max != RLIM_INFINITY && rl.rlim_max < (rlim_t)need)
            return refuse(msg, len, "RLIMIT_NPROC hard limit %llu is below the %lld processes this run "
                          "needs; raise it (ulimit -Hu, limits.conf) or run as root",
                          (unsigned long long)rl.rlim_max, (long long)need);
        rl.rlim_cur = (rlim_t)need;
        setrlimit(RLIMIT_NPROC, &rl);
    }

    char loadavg[128];
    int64_t threads = 0;
    if (read_file_str("/proc/loadavg", loadavg, sizeof loadavg) > 0) {
        char *slash = strchr(loadavg, '/');
        threads = slash ? strtoll(slash + 1, NULL, 10) : 0;
    }
    int64_t pid_max = read_sysctl("/proc/sys/kernel/pid_max");
    if (pid_max > 0 && threads + need > pid_max) {
        int64_t want = threads + need;   /* what this run needs, no more */
        if (!root || raise_sysctl("/proc/sys/kernel/pid_max", want) < 0)
            return refuse(msg, len, "kernel.pid_max %lld is too small for %lld more processes "
                          "(%lld running); raise it: sysctl kernel.pid_max=%lld",
                          (long long)pid_max, (long long)need, (long long)threads, (long long)want);
    }
    int64_t threads_max = read_sysctl("/proc/sys/kernel/threads-max");
    if (threads_max > 0 && threads + need > threads_max) {
        int64_t want = threads + need;
        if (!root || raise_sysctl("/proc/sys/kernel/threads-max", want) < 0)
            return refuse(msg, len, "kernel.threads-max %lld is too small for %lld more processes; "
                          "raise it: sysctl kernel.threads-max=%lld",
                          (long long)threads_max, (long long)need, (long long)want);
    }

    int sysv = strcmp(C->mechanism, "sysv") == 0 || strcmp(C->mechanism, "hugetlb") == 0;
    if (sysv) {
        int64_t shmmax = read_sysctl("/proc/sys/kernel/shmmax");
        if (shmmax >= 0 && (uint64_t)shmmax < C->map_size
            && (!root || raise_sysctl("/proc/sys/kernel/shmmax", (int64_t)C->map_size) < 0))
            return refuse(msg, len, "kernel.shmmax %lld is below the region size %llu; raise it: "
                          "sysctl kernel.shmmax=%llu", (long long)shmmax,
                          (unsigned long long)C->map_size, (unsigned long long)C->map_size);
        int64_t shmall = read_sysctl("/proc/sys/kernel/shmall");
        int64_t pages = (int64_t)(C->map_size / 4096);
        if (shmall >= 0 && shmall < pages
            && (!root || raise_sysctl("/proc/sys/kernel/shmall", pages) < 0))
            return refuse(msg, len, "kernel.shmall %lld pages is below the region's %lld pages; raise "
                          "it: sysctl kernel.shmall=%lld", (long long)shmall, (long long)pages,
                          (long long)pages);
    }

    if (strcmp(C->mechanism, "hugetlb") == 0) {
        int64_t need_pages = (int64_t)(C->map_size / PMD_SIZE_);
        int64_t total = read_meminfo_kb("HugePages_Total");
        int64_t avail = read_meminfo_kb("HugePages_Free") - read_meminfo_kb("HugePages_Rsvd");
        if (avail < need_pages) {
            const char *path = "/proc/sys/vm/nr_hugepages";
            if (!root || raise_sysctl(path, total + need_pages - avail) < 0)
                return refuse(msg, len, "only %lld free 2 MiB huge pages, the region needs %lld; "
                              "raise vm.nr_hugepages (sysctl vm.nr_hugepages=%lld) or run as root",
                              (long long)avail, (long long)need_pages,
                              (long long)(total + need_pages - avail));
            avail = read_meminfo_kb("HugePages_Free") - read_meminfo_kb("HugePages_Rsvd");
            if (avail < need_pages)
                return refuse(msg, len, "vm.nr_hugepages raised but only %lld of the %lld 2 MiB huge "
                              "pages the region needs could be allocated (memory too small or "
                              "fragmented); use a smaller --sga or reserve huge pages at boot",
                              (long long)avail, (long long)need_pages);
        }
    }
    return 0;
}

/* ---- memory cgroup for OOM reproduction ------------------------------------------------ */

/* the mount point of a cgroup hierarchy: v2 ("cgroup2") or the v1 one carrying "memory" */
static int find_mount(int v2, char *out, size_t len)
{
    FILE *f = fopen("/proc/mounts", "r");
    if (!f)
        return -1;
    char dev[256], dir[512], type[64], opts[512];
    int found = -1;
    while (fscanf(f, "%255s %511s %63s %511s %*d %*d", dev, dir, type, opts) == 4) {
        if (v2 && strcmp(type, "cgroup2") == 0) {
            snprintf(out, len, "%s", dir);
            found = 0;
            break;
        }
        if (!v2 && strcmp(type, "cgroup") == 0) {
            for (char *tok = strtok(opts, ","); tok; tok = strtok(NULL, ","))
                if (strcmp(tok, "memory") == 0) {
                    snprintf(out, len, "%s", dir);
                    found = 0;
                }
            if (!found)
                break;
        }
    }
    fclose(f);
    return found;
}

/* our own cgroup path in a hierarchy: "0::/x" for v2, "N:...memory...:/x" for v1 */
static int own_cgroup(int v2, char *out, size_t len)
{
    char buf[4096];
    if (read_file_str("/proc/self/cgroup", buf, sizeof buf) < 0)
        return -1;
    for (char *line = strtok(buf, "\n"); line; line = strtok(NULL, "\n")) {
        char *c1 = strchr(line, ':'), *c2 = c1 ? strchr(c1 + 1, ':') : NULL;
        if (!c2)
            continue;
        *c2 = 0;
        const char *ctrls = c1 + 1;
        int match = v2 ? (strncmp(line, "0", 1) == 0 && ctrls[0] == 0)
                       : (strstr(ctrls, "memory") != NULL);
        if (match) {
            snprintf(out, len, "%s", strcmp(c2 + 1, "/") == 0 ? "" : c2 + 1);
            return 0;
        }
    }
    return -1;
}

/* The cgroup2 mount only this process sees, when it had to make one. */
static void release_cg2_mount(void)
{
    if (cg2_mount[0]) {
        umount2(cg2_mount, MNT_DETACH);
        rmdir(cg2_mount);
        cg2_mount[0] = 0;
    }
}

/* A cgroup that was only wanted (no limit asked) and cannot serve: remove what was made. */
static int drop_cgroup(void)
{
    if (R.cg_version)
        rmdir(R.cg_dir);
    R.cg_version = NULL;
    R.cg_dir[0] = 0;
    release_cg2_mount();
    save_state();
    return 0;
}

/* The clients' memory cgroup.  With --memory-limit it is required and holds the limit.
 * Without one it is only wanted when the run stops at the first OOM kill: its counters are
 * what the OOM watcher waits on, and memory.oom.group (cgroup v2) makes the kernel's own
 * kill take every client too.  An unavailable controller is then no error: the run goes on
 * without the group and says so in its result. */
static int setup_cgroup(char *msg, size_t len)
{
    char mnt[512], own[1024], path[1536], buf[512], limit[32];
    int required = C->memory_limit != 0;
    snprintf(limit, sizeof limit, "%llu", (unsigned long long)C->memory_limit);
    /* a minimal guest may mount no cgroup at all: mount cgroup2 where only we see it */
    if (find_mount(1, mnt, sizeof mnt) < 0 && find_mount(0, mnt, sizeof mnt) < 0 && geteuid() == 0
        && make_tmp_dir(cg2_mount, sizeof cg2_mount) == 0) {
        save_state();
        if (mount("cgroup2", cg2_mount, "cgroup2", 0, NULL) < 0) {
            rmdir(cg2_mount);
            cg2_mount[0] = 0;
        }
    }
    /* v2 when a unified mount offers the memory controller to our cgroup */
    if (find_mount(1, mnt, sizeof mnt) == 0 && own_cgroup(1, own, sizeof own) == 0) {
        snprintf(path, sizeof path, "%s%s/cgroup.controllers", mnt, own);
        if (read_file_str(path, buf, sizeof buf) > 0 && strstr(buf, "memory")) {
            snprintf(path, sizeof path, "%s%s/cgroup.subtree_control", mnt, own);
            write_file_str(path, "+memory");
            snprintf(R.cg_dir, sizeof R.cg_dir, "%s%s/mshare-sga-%d", mnt, own, (int)getpid());
            save_state();
            if (mkdir(R.cg_dir, 0755) < 0) {
                if (!required)
                    return drop_cgroup();
                return refuse(msg, len, "memory cgroup: mkdir %s: %s", R.cg_dir, strerror(errno));
            }
            R.cg_version = "v2";
            if (required) {
                snprintf(path, sizeof path, "%s/memory.max", R.cg_dir);
                if (write_file_str(path, limit) < 0)
                    return refuse(msg, len, "memory cgroup: cannot set %s (is +memory in the parent's "
                                  "cgroup.subtree_control?): %s", path, strerror(errno));
                snprintf(path, sizeof path, "%s/memory.swap.max", R.cg_dir);
                write_file_str(path, "0");
            }
            if (!C->oom_continue) {
                snprintf(path, sizeof path, "%s/memory.oom.group", R.cg_dir);
                R.oom_group = write_file_str(path, "1") == 0;
            }
            if (!required && !R.oom_group)
                return drop_cgroup();
            snprintf(R.cg_procs, sizeof R.cg_procs, "%s/cgroup.procs", R.cg_dir);
            snprintf(R.cg_home_procs, sizeof R.cg_home_procs, "%s%s/cgroup.procs", mnt, own);
            snprintf(path, sizeof path, "%s/memory.events", R.cg_dir);
            oom_events_fd = open(path, O_RDONLY | O_CLOEXEC);
            return 0;
        }
    }
    if (!required)      /* cgroup v1 has no group kill */
        return drop_cgroup();
    if (find_mount(0, mnt, sizeof mnt) == 0 && own_cgroup(0, own, sizeof own) == 0) {
        snprintf(R.cg_dir, sizeof R.cg_dir, "%s%s/mshare-sga-%d", mnt, own, (int)getpid());
        save_state();
        if (mkdir(R.cg_dir, 0755) < 0)
            return refuse(msg, len, "memory cgroup: mkdir %s: %s (run as root)", R.cg_dir, strerror(errno));
        R.cg_version = "v1";
        snprintf(path, sizeof path, "%s/memory.limit_in_bytes", R.cg_dir);
        if (write_file_str(path, limit) < 0)
            return refuse(msg, len, "memory cgroup: cannot set %s: %s", path, strerror(errno));
        snprintf(R.cg_procs, sizeof R.cg_procs, "%s/cgroup.procs", R.cg_dir);
        snprintf(R.cg_home_procs, sizeof R.cg_home_procs, "%s%s/cgroup.procs", mnt, own);
        snprintf(path, sizeof path, "%s/memory.oom_control", R.cg_dir);
        oom_events_fd = open(path, O_RDONLY | O_CLOEXEC);
        return 0;
    }
    return refuse(msg, len, "--memory-limit needs a memory cgroup controller (v2 memory.max or v1 "
                  "memory.limit_in_bytes) and none is available to this process");
}

/* The "name value" line of a memory.events (v2) or memory.oom_control (v1) text, 0 when
 * absent.  At a line start: "oom_kill" must not match inside "oom_group_kill". */
static int64_t event_count(const char *text, const char *name)
{
    size_t n = strlen(name);
    for (const char *line = text; line; line = strchr(line, '\n')) {
        if (*line == '\n')
            line++;
        if (strncmp(line, name, n) == 0 && line[n] == ' ')
            return strtoll(line + n + 1, NULL, 10);
    }
    return 0;
}

/* One counter of the clients' cgroup, read afresh: -1 when unreadable. */
static int64_t cgroup_event(const char *name)
{
    char path[600], buf[1024];
    snprintf(path, sizeof path, "%s/%s", R.cg_dir,
             strcmp(R.cg_version, "v2") == 0 ? "memory.events" : "memory.oom_control");
    if (read_file_str(path, buf, sizeof buf) < 0)
        return -1;
    return event_count(buf, name);
}

/* Has the OOM killer taken a client?  Asked before anything that allocates, in every loop
 * that waits on the clients.  A client's SIGKILL is seen only once it has exited, which
 * under a guest-wide OOM can take minutes; the cgroup's counter moves at the kill. */
static int oom_seen(void)
{
    char buf[512];
    if (oom_events_fd < 0 || C->oom_continue)
        return 0;
    ssize_t n = pread(oom_events_fd, buf, sizeof buf - 1, 0);
    if (n <= 0)
        return 0;
    buf[n] = 0;
    return event_count(buf, "oom_kill") > 0;
}

static void note_oom(void)
{
    if (oom_stop)
        return;
    oom_stop = 1;
    R.oom_at_s = since_start();
    snprintf(R.oom_phase, sizeof R.oom_phase, "%s", R.phase ? R.phase : "");
}

/* The OOM watcher: a small process of the coordinator's that only waits on the clients'
 * memory.events (cgroup v2 wakes poll() when it changes; the timeout covers v1) and, at the
 * first OOM kill, kills the clients' process group.  The coordinator cannot be relied on
 * for that: under a guest-wide OOM it sits in fork() or in a /proc read waiting for memory,
 * for as long as the OOM killer needs to work through the clients one by one.
 *
 * The watcher must not need memory itself, which rules out a thread: every fork of a client
 * write-protects the coordinator's private pages for copy-on-write, so a thread's next write
 * to its stack would wait for a page (and for the mmap lock fork holds).  A process forked
 * before the clients owns its few pages; it writes only its stack and the shared control
 * area, and reads nothing that allocates. */
static pid_t watcher_pid = -1;

static void start_oom_watcher(void)
{
    if (oom_events_fd < 0 || C->oom_continue)
        return;
    pid_t parent = getpid();
    fflush(NULL);
    pid_t pid = fork();
    if (pid != 0) {
        watcher_pid = pid;   /* -1 when fork failed: the coordinator's own check remains */
        /* the clients start once the watcher has read memory.events once (its buffer
         * allocated, its pages its own) */
        for (int i = 0; pid > 0 && i < 400 && !atomic_load(&CTL->watcher_loops); i++)
            usleep(5000);
        return;
    }
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent)
        _exit(0);
    /* it sleeps but for a pread every 50 ms: real-time priority costs nothing and lets it
     * run the moment it wakes, whatever thousands of clients want (best effort: needs root) */
    struct sched_param rt = { .sched_priority = 1 };
    sched_setscheduler(0, SCHED_FIFO, &rt);
    /* own the stack pages now, while memory is plentiful: a first write later would be a
     * copy-on-write fault waiting for memory */
    volatile char stack[16 << 10];
    for (size_t i = 0; i < sizeof stack; i += 4096)
        stack[i] = 0;
    signal(SIGINT, SIG_IGN);    /* the coordinator ends it, with everything else */
    signal(SIGTERM, SIG_IGN);
    signal(SIGHUP, SIG_IGN);
    for (;;) {
        struct pollfd pfd = { .fd = oom_events_fd, .events = POLLPRI };
        poll(&pfd, 1, 50);
        int seen = oom_seen();
        atomic_store(&CTL->watcher_last_ns, now_ns());
        atomic_fetch_add(&CTL->watcher_loops, 1);
        if (seen) {
            atomic_store(&CTL->oom_seen_ns, now_ns());
            atomic_store(&CTL->oom_seen, 1);
            int pgid = atomic_load(&CTL->clients_pgid);
            if (pgid > 0)
                kill(-pgid, SIGKILL);
            _exit(0);
        }
    }
}

/* What the watcher saw, taken over by the coordinator; without a watcher, the cgroup's
 * counter read here.  Asked in every loop that waits on the clients. */
static void oom_check(void)
{
    if (oom_stop || !CTL)
        return;
    if (atomic_load(&CTL->oom_seen)) {
        note_oom();
        R.oom_at_s -= (double)(now_ns() - atomic_load(&CTL->oom_seen_ns)) / 1e9;
    } else if (watcher_pid <= 0 && oom_seen()) {
        note_oom();
    }
}

static void stop_oom_watcher(void)
{
    oom_check();
    if (CTL) {
        R.watcher_loops = atomic_load(&CTL->watcher_loops);
        int64_t last = atomic_load(&CTL->watcher_last_ns);
        R.watcher_last_s = last ? (double)(last - R.t0_ns) / 1e9 : NAN;
    }
    if (watcher_pid > 0) {
        kill(watcher_pid, SIGKILL);
        waitpid(watcher_pid, NULL, 0);
    }
    watcher_pid = -1;
}

/* While it forks the clients the coordinator stands in their cgroup, so that each client is
 * born there: a client that joined by itself only once it first ran would be outside the
 * group while thousands of forks wait for memory, and the group kill would miss it.  The
 * coordinator's oom_score_adj of -1000 keeps the group kill off itself. */
static void enter_cgroup(void)
{
    char pid[24];
    snprintf(pid, sizeof pid, "%d", (int)getpid());
    if (R.cg_version && R.cg_home_procs[0])
        R.cg_entered = write_file_str(R.cg_procs, pid) == 0;
}

static void leave_cgroup(void)
{
    char pid[24];
    snprintf(pid, sizeof pid, "%d", (int)getpid());
    if (R.cg_entered && write_file_str(R.cg_home_procs, pid) < 0)
        add_error("could not leave the clients' cgroup for %s: %s", R.cg_home_procs, strerror(errno));
    R.cg_entered = 0;
}

static void remove_cgroup(void)
{
    leave_cgroup();
    if (oom_events_fd >= 0) {
        close(oom_events_fd);
        oom_events_fd = -1;
    }
    if (R.cg_version) {
        R.cg_oom_kill = cgroup_event("oom_kill");
        R.cg_group_kills = R.oom_group ? cgroup_event("oom_group_kill") : 0;
        int i;
        for (i = 0; i < 50; i++) {
            if (rmdir(R.cg_dir) == 0 || errno == ENOENT)
                break;
            usleep(20000);
        }
        if (i == 50)
            add_error("could not remove memory cgroup %s: %s", R.cg_dir, strerror(errno));
    }
    release_cg2_mount();
}

/* ---- children --------------------------------------------------------------------------- */

static int client_index(pid_t pid)
{
    for (int i = 0; i < R.forked; i++)
        if (CTL->slots[i].pid == pid)
            return i;
    return -1;
}

static void reap(void)
{
    int status;
    pid_t pid;
    while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
        if (pid == watcher_pid) {   /* it ends after it killed the clients */
            watcher_pid = -1;
            continue;
        }
        if (pid == owner_pid) {
            owner_pid = -1;
            if (!teardown && !interrupted)
                add_error("the owner process died (%s %d)", WIFSIGNALED(status) ? "signal" : "exit",
                          WIFSIGNALED(status) ? WTERMSIG(status) : WEXITSTATUS(status));
            continue;
        }
        int idx = client_index(pid);
        if (idx < 0 || reaped[idx])
            continue;
        reaped[idx] = 1;
        R.reaped_count++;
        if (WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL && !teardown) {
            R.killed++;
            if (!C->oom_continue)
                note_oom();
        }
        else if (WIFSIGNALED(status) && !teardown)
            add_error("client %d died of signal %d", idx, WTERMSIG(status));
    }
}

/* Wait until done() holds, sampling as we go; 0 on success, -1 timeout or interrupt. */
static int alive_in_state_at_least(int state);
static int wait_for(int (*done)(void), double timeout_s)
{
    int64_t deadline = now_ns() + (int64_t)(timeout_s * 1e9);
    double next_progress = since_start() + 1.0;
    while (!done()) {
        oom_check();
        if (interrupted || oom_stop || now_ns() > deadline)
            return -1;
        reap();
        sample_now();
        if (since_start() > next_progress) {
            if (strcmp(R.phase, "attach") == 0)
                R.attached = alive_in_state_at_least(S_POPULATED);
            progress(R.phase);
            next_progress = since_start() + 1.0;
        }
        usleep(2000);
    }
    reap();
    return 0;
}

static int alive_in_state_at_least(int state)
{
    int n = 0;
    for (int i = 0; i < R.forked; i++)
        if (!reaped[i] && atomic_load(&CTL->slots[i].state) >= state
            && atomic_load(&CTL->slots[i].state) != S_FAILED)
            n++;
    return n;
}

static int alive(void)
{
    int n = 0;
    for (int i = 0; i < R.forked; i++)
        if (!reaped[i] && atomic_load(&CTL->slots[i].state) != S_FAILED)
            n++;
    return n;
}

static int all_ready(void) { return alive_in_state_at_least(S_READY) == alive(); }
static int all_populated(void) { return alive_in_state_at_least(S_POPULATED) == alive(); }
static int all_parked(void) { return alive_in_state_at_least(S_PARKED) == alive(); }
static int all_detached(void) { return alive_in_state_at_least(S_DETACHED) == alive(); }
static int owner_settled(void) { return atomic_load(&CTL->owner_state) != 0 || owner_pid < 0; }
static int never(void) { return 0; }

static int protect_stage = 1;   /* the change all_acked waits for */

static int all_acked(void)
{
    int n = 0, running = 0;
    for (int i = 0; i < R.forked; i++) {
        /* a populated client not yet woken from the barrier must still take the change */
        int st = atomic_load(&CTL->slots[i].state);
        if (reaped[i] || (st != S_RUNNING && st != S_POPULATED))
            continue;
        running++;
        if (atomic_load(protect_stage == 1 ? &CTL->slots[i].ack_ns : &CTL->slots[i].back_ns))
            n++;
    }
    return n == running;
}

/* One protection change (1: read-only, 2: back to read-write) asked of every running
 * client and timed until the last client that verified it: after the change each client
 * tries a write, and the new protection held when read-only faults it and read-write lets
 * it through. A change that did not hold everywhere shows as held < asked. */
static void protection_change(int stage)
{
    struct protect_stat *ps = &R.protect[stage - 1];
    ps->asked = 0;
    for (int i = 0; i < R.forked; i++) {
        int st = atomic_load(&CTL->slots[i].state);
        if (!reaped[i] && (st == S_RUNNING || st == S_POPULATED))
            ps->asked++;
    }
    protect_stage = stage;
    int64_t p0 = now_ns();
    atomic_store(&CTL->protect, stage);
    if (R.mech->owner_protects) {
        futex_wake_all(&CTL->phase);
    } else {
        /* one kill for the group, then each pid: a client that could not join the
         * group (its leader OOM-killed) must not be missed; a second signal is harmless */
        if (clients_pgid)
            kill(-clients_pgid, SIGUSR1);
        for (int i = 0; i < R.forked; i++)
            if (!reaped[i] && CTL->slots[i].pid > 0)
                kill(CTL->slots[i].pid, SIGUSR1);
    }
    if (wait_for(all_acked, 60) < 0 && !interrupted)
        add_error("not every client verified the %s protection change within 60 s",
                  stage == 1 ? "read-only" : "read-write");
    int64_t last = 0;
    for (int i = 0; i < R.forked; i++) {
        int64_t a = atomic_load(stage == 1 ? &CTL->slots[i].ack_ns : &CTL->slots[i].back_ns);
        if (!a)
            continue;
        ps->acked++;
        if (atomic_load(&CTL->slots[i].held) & stage) {
            ps->held++;
            if (a > last)
                last = a;
        }
    }
    ps->us = last ? (double)(last - p0) / 1e3 : NAN;
    ps->done = 1;
}

static void set_phase(int phase)
{
    atomic_store(&CTL->phase, phase);
    futex_wake_all(&CTL->phase);
}

static void kill_everything(void)
{
    teardown = 1;
    /* one call reaches every client at once, even while thousands wait for memory */
    if (clients_pgid > 0)
        kill(-clients_pgid, SIGKILL);
    if (watcher_pid > 0)
        kill(watcher_pid, SIGKILL);
    for (int i = 0; i < R.forked; i++)
        if (!reaped[i] && CTL->slots[i].pid > 0)
            kill(CTL->slots[i].pid, SIGKILL);
    if (owner_pid > 0)
        kill(owner_pid, SIGKILL);
    /* children that have not yet stored their pid are reaped by waiting for any child */
    int status;
    while (waitpid(-1, &status, 0) > 0 || errno == EINTR)
        ;
    owner_pid = -1;
    watcher_pid = -1;
}

/* ---- aggregation ------------------------------------------------------------------------ */

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

static void aggregate_attach(void)
{
    int64_t *vm = calloc((size_t)R.forked + 1, sizeof *vm);
    int n = 0;
    int64_t last = 0;
    R.fixed_pte = 0;
    R.vm_sum = 0;
    R.populate_madvise = 1;
    R.failed = 0;
    for (int i = 0; i < R.forked; i++) {
        struct slot *s = &CTL->slots[i];
        int st = atomic_load(&s->state);
        if (st == S_FAILED) {
            R.failed++;
            add_error("client %d: %s", i, s->err);
            continue;
        }
        if (st < S_POPULATED || reaped[i])
            continue;
        vm[n++] = s->vmpte_after;
        R.vm_sum += s->vmpte_after;
        R.fixed_pte += s->vmpte_before;
        if (!s->populate_method)
            R.populate_madvise = 0;
        if (s->populated_ns > last)
            last = s->populated_ns;
    }
    R.attached = n;
    if (n) {
        qsort(vm, (size_t)n, sizeof *vm, cmp_i64);
        R.vm_min = vm[0];
        R.vm_max = vm[n - 1];
        R.vm_med = vm[n / 2];
        R.attach_populate_s = (double)(last - R.fork_ns) / 1e9;
    }
    free(vm);
}

static void aggregate_transactions(void)
{
    static uint64_t hist[HIST_BUCKETS];
    memset(hist, 0, sizeof hist);
    R.transactions = R.writes = 0;
    for (int i = 0; i < R.forked; i++) {
        struct slot *s = &CTL->slots[i];
        R.transactions += atomic_load(&s->tx);
        R.writes += atomic_load(&s->tx_writes);
        /* a protection change the kernel refused is an error, not a change that "did not hold" */
        if (s->err[0] && atomic_load(&s->state) != S_FAILED)
            add_error("client %d: %s", i, s->err);
        for (int k = 0; k < HIST_BUCKETS; k++)
            hist[k] += s->hist[k];
    }
    R.p50 = hist_quantile_us(hist, 0.50);
    R.p90 = hist_quantile_us(hist, 0.90);
    R.p99 = hist_quantile_us(hist, 0.99);
}

/* ---- what one client costs ------------------------------------------------------------ */

#define COST_SAMPLES 256
#define KERNEL_STACK_BYTES (16 << 10)   /* THREAD_SIZE on x86_64: one kernel stack per task */

static int64_t median_of(int64_t *v, int n)
{
    if (n == 0)
        return -1;
    qsort(v, (size_t)n, sizeof *v, cmp_i64);
    return v[n / 2];
}

/* At the ready barrier every client exists and none has attached: what each one holds now
 * is the fixed cost a run pays per client whatever the mechanism.  Up to COST_SAMPLES
 * clients, evenly spread, are read (smaps_rollup walks page tables; thousands would take
 * long on an emulated CPU).  Private_* of smaps_rollup counts pages mapped by this process
 * only: COW pages still shared with the coordinator are not counted, unlike RssAnon. */
static void measure_client_cost(void)
{
    static int64_t rss[COST_SAMPLES], anon[COST_SAMPLES], priv[COST_SAMPLES], pte[COST_SAMPLES],
        stk[COST_SAMPLES];
    int n = 0;
    int step = R.forked > COST_SAMPLES ? R.forked / COST_SAMPLES : 1;
    for (int i = 0; i < R.forked && n < COST_SAMPLES; i += step) {
        pid_t pid = CTL->slots[i].pid;
        if (reaped[i] || pid <= 0 || atomic_load(&CTL->slots[i].state) != S_READY)
            continue;
        int64_t r = read_proc_kb(pid, "status", "VmRSS"), a = read_proc_kb(pid, "status", "RssAnon");
        int64_t t = read_proc_kb(pid, "status", "VmPTE"), k = read_proc_kb(pid, "status", "VmStk");
        int64_t pc = read_proc_kb(pid, "smaps_rollup", "Private_Clean");
        int64_t pd = read_proc_kb(pid, "smaps_rollup", "Private_Dirty");
        if (r < 0 || a < 0 || t < 0)
            continue;
        rss[n] = r * 1024;
        anon[n] = a * 1024;
        pte[n] = t * 1024;
        stk[n] = k < 0 ? 0 : k * 1024;
        priv[n] = pc >= 0 && pd >= 0 ? (pc + pd) * 1024 : a * 1024;
        n++;
    }
    R.cost_sampled = n;
    R.cost_rss = median_of(rss, n);
    R.cost_anon = median_of(anon, n);
    R.cost_private = median_of(priv, n);
    R.cost_pte = median_of(pte, n);
    R.cost_stk = median_of(stk, n);
}

static void render_client_cost(struct jbuf *b, int64_t fixed_global)
{
    jb_key(b, "client_cost");
    if (!R.cost_sampled) {
        jb_raw(b, "null");
        b->need_comma = 1;
        return;
    }
    int clients = R.forked > 0 ? R.forked : 1;
    /* page tables per client from the global PageTables at the barrier (it counts the PGD,
     * which VmPTE leaves out); the VmPTE median when that sample is missing */
    int64_t pt = fixed_global > 0 ? fixed_global / clients : R.cost_pte;
    int64_t parts = R.cost_private + pt + KERNEL_STACK_BYTES;
    int64_t memfree = R.free_before > 0 && R.free_ready > 0 ? (R.free_before - R.free_ready) / clients : -1;
    jb_obj_begin(b);
    jb_int(b, "clients_sampled", R.cost_sampled);
    jb_int(b, "rss_bytes", R.cost_rss);
    jb_int(b, "rss_anon_bytes", R.cost_anon);
    jb_int(b, "private_bytes", R.cost_private);
    jb_int(b, "vmpte_bytes", R.cost_pte);
    jb_int(b, "vmstk_bytes", R.cost_stk);
    jb_int(b, "fixed_pagetables_bytes", pt);
    jb_int(b, "kernel_stack_bytes", KERNEL_STACK_BYTES);
    jb_int(b, "memfree_drop_bytes", memfree);
    /* the larger of the parts and the MemFree drop: the drop also holds the kernel's
     * per-task objects (task_struct, mm, VMAs), the parts hold when other activity blurs it */
    jb_int(b, "per_client_bytes", memfree > parts ? memfree : parts);
    jb_obj_end(b);
}

/* ---- the run ------------------------------------------------------------------------------ */

static void init_run(struct config *cfg)
{
    memset(&R, 0, sizeof R);
    C = cfg;
    R.phase = "start";
    R.t0_ns = now_ns();
    R.started_at = (int64_t)time(NULL);
    R.pt_before = R.pt_after = R.pt_parked = R.pt_detached = -1;
    R.oth_before = R.oth_after = R.oth_parked = R.oth_detached = -1;
    R.pt_ready = R.oth_ready = -1;
    R.pt_peak = read_meminfo_kb("PageTables") * 1024;
    R.vm_min = R.vm_med = R.vm_max = -1;
    R.p50 = R.p90 = R.p99 = R.protect_us = R.attach_populate_s = NAN;
    R.protect[0].us = R.protect[1].us = NAN;
    R.sample_every = cfg->sample_interval;
    R.oom_at_s = -1;
    R.watcher_last_s = NAN;
    R.oom_vmstat_before = read_vmstat("oom_kill");
    struct utsname u;
    if (uname(&u) == 0)
        snprintf(R.kernel_release, sizeof R.kernel_release, "%s", u.release);
    R.mech = mechanism_get(cfg->mechanism);
}

/* region geometry and fixed address per mechanism (msharefs ones set it in their probe) */
static void place_region(struct config *cfg)
{
    const struct mechanism *m = R.mech;
    uint64_t unit = m->page_size > 4096 ? m->page_size : 4096;
    cfg->map_size = (cfg->size + unit - 1) / unit * unit;
    if (cfg->map_size < HEADER_BYTES)
        cfg->map_size = HEADER_BYTES;
    /* same address everywhere, 1 GiB aligned; for thp it also gives the region its own
     * PMD page, so detaching frees exactly what the region cost */
    if (strcmp(m->name, "hugetlb") == 0 || strcmp(m->name, "ptshare") == 0 || strcmp(m->name, "thp") == 0)
        cfg->base = FIXED_BASE;
    int key = 0x4d530000 | (getpid() & 0xffff);
    while (shmget(key, 0, 0) >= 0)
        key++;
    cfg->sysv_key = key;
}

static void finish_outcome(void)
{
    int64_t oom_now = read_vmstat("oom_kill");
    R.oom_vmstat_delta = oom_now >= 0 && R.oom_vmstat_before >= 0 ? oom_now - R.oom_vmstat_before : 0;
    if (R.outcome == OUT_UNSUPPORTED || R.outcome == OUT_ERROR)
        return;
    if (R.killed > 0 || (R.cg_version && R.cg_oom_kill > 0)) {
        R.outcome = OUT_OOM;
        if (R.oom_at_s >= 0 && R.cg_version)
            snprintf(R.reason, sizeof R.reason, "OOM kill at %.1f s (%s, %d of %d clients started): "
                     "the OOM killer took %lld process(es) in the clients' cgroup%s, %lld system-wide; "
                     "the run stopped there", R.oom_at_s, R.oom_phase, R.forked, C->clients,
                     (long long)R.cg_oom_kill, R.cg_group_kills > 0 ? " (memory.oom.group)" : "",
                     (long long)R.oom_vmstat_delta);
        else if (R.oom_at_s >= 0)
            snprintf(R.reason, sizeof R.reason, "OOM kill at %.1f s (%s, %d of %d clients started): "
                     "%d client(s) killed, %lld system-wide; the run stopped there", R.oom_at_s,
                     R.oom_phase, R.forked, C->clients, R.killed, (long long)R.oom_vmstat_delta);
        else
            snprintf(R.reason, sizeof R.reason, "%d client(s) killed (OOM killer: %lld in the memory "
                     "cgroup, %lld system-wide)", R.killed, (long long)R.cg_oom_kill,
                     (long long)R.oom_vmstat_delta);
    } else if (R.attached < C->clients) {
        R.outcome = OUT_ERROR;
        snprintf(R.reason, sizeof R.reason, "only %d of %d clients attached%s%s", R.attached,
                 C->clients, R.nerrors ? ": " : "", R.nerrors ? R.errors[0] : "");
    } else {
        R.outcome = OUT_COMPLETED;
    }
}

static int cleanup_and_report(int exit_code)
{
    stop_oom_watcher();
    kill_everything();
    if (R.mech)
        R.mech->destroy(C);
    remove_cgroup();
    restore_sysctls();
    release_private_mounts(C);
    if (CTL)
        munmap(CTL, ctl_bytes);
    CTL = NULL;
    /* everything is gone: nothing left for gc */
    if (C->state_path)
        unlink(C->state_path);
    if (exit_code == 3)
        return 3;
    finish_outcome();
    R.phase = "done";
    sample_now();
    progress("done");
    if (write_document() < 0)
        return 1;
    return exit_code;
}

int coordinator_run(struct config *cfg)
{
    init_run(cfg);
    struct sigaction sa = { .sa_handler = on_interrupt };
    /* signals pending together would nest (the last one's handler runs first): block the
     * others while one is recorded, so the first signal sent is the one reported */
    sigfillset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);
    /* a supervisor that died closes our stderr: the next progress line must end the run
     * through the cleanup, not kill it with the region still there */
    sigaction(SIGPIPE, &sa, NULL);
    /* a supervisor killed with SIGKILL cannot stop us: the kernel sends SIGTERM instead */
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    signal(SIGUSR1, SIG_IGN);
    /* what the coordinator measured must survive the OOM it provokes */
    write_file_str("/proc/self/oom_score_adj", "-1000");
    /* thousands of busy clients on few CPUs must not starve the one who measures */
    setpriority(PRIO_PROCESS, 0, -10);

    char msg[600] = "";
    place_region(cfg);
    if (prepare_private_mounts(cfg, msg, sizeof msg) < 0) {
        R.outcome = OUT_ERROR;
        snprintf(R.reason, sizeof R.reason, "%s", msg);
        return cleanup_and_report(0);
    }
    save_state();
    progress("probe");
    if (R.mech->probe(cfg, R.reason, sizeof R.reason) != 0) {
        R.outcome = OUT_UNSUPPORTED;
        return cleanup_and_report(0);
    }
    R.reason[0] = 0;
    save_state();   /* the region path and SysV key are known now, before the owner makes them */
    int rc = check_limits(msg, sizeof msg);
    if (rc == 0 && (cfg->memory_limit || !cfg->oom_continue))
        rc = setup_cgroup(msg, sizeof msg);
    if (rc) {
        fprintf(stderr, "mshare-sga: limit: %s\n", msg);
        return cleanup_and_report(3);
    }

    ctl_bytes = sizeof(struct control) + sizeof(struct slot) * (size_t)cfg->clients;
    CTL = mmap(NULL, ctl_bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    reaped = calloc((size_t)cfg->clients, sizeof *reaped);
    if (CTL == MAP_FAILED || !reaped) {
        CTL = NULL;
        R.outcome = OUT_ERROR;
        snprintf(R.reason, sizeof R.reason, "cannot allocate the control area for %d clients", cfg->clients);
        return cleanup_and_report(0);
    }
    progress("resources");

    /* the owner creates the region; this process never maps it */
    fflush(NULL);
    owner_pid = fork();
    if (owner_pid == 0)
        owner_main(cfg, CTL);
    if (owner_pid < 0 || wait_for(owner_settled, 300) < 0 || atomic_load(&CTL->owner_state) != 1) {
        int patched = R.mech->needs_patch;
        R.outcome = interrupted ? OUT_ERROR : patched ? OUT_UNSUPPORTED : OUT_ERROR;
        snprintf(R.reason, sizeof R.reason, "%s%s", interrupted ? "interrupted" :
                 patched ? "the kernel offers the interface but creating the region failed: "
                         : "creating the region failed: ",
                 interrupted ? "" : CTL->owner_err[0] ? CTL->owner_err : "owner did not start");
        return cleanup_and_report(interrupted ? 128 + interrupted : 0);
    }

    /* clients: forked without the region, each attaches by itself.  Let page tables
     * still being freed through RCU (an earlier run's clients) land first. */
    settle_pagetables();
    R.pt_before = sample_pagetables(&R.oth_before);
    R.free_before = read_meminfo_kb("MemFree") * 1024;
    progress("attach");
    start_oom_watcher();
    enter_cgroup();
    for (int i = 0; i < cfg->clients && !interrupted && !oom_stop; i++) {
        pid_t pid = fork();
        if (pid == 0) {
            setpgid(0, clients_pgid);   /* also in the parent: whichever runs first */
            client_main(cfg, CTL, i, R.cg_version ? R.cg_procs : NULL);
        }
        if (pid > 0 && setpgid(pid, clients_pgid ? clients_pgid : pid) == 0 && !clients_pgid) {
            clients_pgid = pid;
            atomic_store(&CTL->clients_pgid, pid);
        }
        if (pid < 0) {
            add_error("fork of client %d failed: %s", i, strerror(errno));
            break;
        }
        CTL->slots[i].pid = pid;   /* the child stores it too; whoever is first */
        R.forked++;
        oom_check();
        if ((i & 63) == 63) {
            reap();
            sample_now();
        }
    }
    leave_cgroup();
    if (wait_for(all_ready, cfg->attach_timeout) == 0) {
        R.pt_ready = sample_pagetables(&R.oth_ready);
        R.free_ready = read_meminfo_kb("MemFree") * 1024;
        measure_client_cost();
    } else if (!interrupted && !oom_stop) {
        add_error("not every client started within %.0f s", cfg->attach_timeout);
    }
    /* attach+populate is timed from the release of the ready barrier */
    R.fork_ns = now_ns();
    set_phase(PH_ATTACH);
    if (wait_for(all_populated, cfg->attach_timeout) < 0) {
        if (!interrupted && !oom_stop) {
            add_error("not every client populated within %.0f s", cfg->attach_timeout);
            R.outcome = OUT_ERROR;
            snprintf(R.reason, sizeof R.reason, "attach/populate timed out after %.0f s", cfg->attach_timeout);
        }
    }
    aggregate_attach();
    if (interrupted) {
        R.outcome = OUT_ERROR;
        snprintf(R.reason, sizeof R.reason, "interrupted by signal %d", (int)interrupted);
        return cleanup_and_report(128 + interrupted);
    }
    if (oom_stop) {
        /* stop the clients before anything that allocates, then let the kernel's count of
         * this OOM episode settle */
        kill_everything();
        usleep(200000);
        reap();
        progress("oom");
        return cleanup_and_report(0);
    }
    /* the barrier: everyone populated and waiting, nothing else of ours moving */
    R.pt_after = sample_pagetables(&R.oth_after);
    if (R.pt_after > R.pt_peak)
        R.pt_peak = R.pt_after;
    progress("barrier");

    if (R.outcome != OUT_ERROR && R.attached > 0) {
        set_phase(PH_GO);
        int64_t go = now_ns();
        progress("transactions");
        wait_for(never, cfg->duration);
        if (oom_stop) {
            progress("oom");
            return cleanup_and_report(0);
        }

        /* protection changes across all clients: read-only, then back to read-write, each
         * timed until the last client that proved it with a write */
        protection_change(1);
        protection_change(2);
        R.protect_us = R.protect[0].us;
        R.protect_acked = R.protect[0].acked;
        set_phase(PH_PARK);
        R.tx_seconds = (double)(now_ns() - go) / 1e9;
        wait_for(all_parked, 60);
        aggregate_transactions();
        progress("parked");

        /* detach while parked: what the region's page tables really cost, in a short window */
        R.pt_parked = sample_pagetables(&R.oth_parked);
        set_phase(PH_DETACH);
        wait_for(all_detached, 60);
        settle_pagetables();
        R.pt_detached = sample_pagetables(&R.oth_detached);
    }
    if (interrupted) {
        R.outcome = OUT_ERROR;
        snprintf(R.reason, sizeof R.reason, "interrupted by signal %d", (int)interrupted);
        return cleanup_and_report(128 + interrupted);
    }
    set_phase(PH_EXIT);
    teardown = 1;
    int status;
    int64_t deadline = now_ns() + 30 * (int64_t)1000000000;
    while (R.reaped_count < R.forked && now_ns() < deadline) {
        pid_t pid = waitpid(-1, &status, WNOHANG);
        if (pid > 0) {
            int idx = client_index(pid);
            if (idx >= 0 && !reaped[idx]) {
                reaped[idx] = 1;
                R.reaped_count++;
            } else if (pid == owner_pid) {
                owner_pid = -1;
            }
        } else {
            usleep(2000);
        }
    }
    return cleanup_and_report(0);
}

/* ---- probe: which mechanisms does the running kernel offer? ------------------------------ */

int probe_command(struct config *cfg)
{
    init_run(cfg);
    char err[300] = "";
    snprintf(cfg->mechanism, sizeof cfg->mechanism, "thp");   /* get the huge tmpfs if we can */
    prepare_private_mounts(cfg, err, sizeof err);
    char huge_dir[256];
    snprintf(huge_dir, sizeof huge_dir, "%s", cfg->shm_dir);
    struct jbuf b = { 0 };
    jb_obj_begin(&b);
    jb_str(&b, "schema", "mshare-lab/probe");
    jb_int(&b, "version", 1);
    jb_str(&b, "kernel_release", R.kernel_release);
    jb_key(&b, "mechanisms");
    jb_obj_begin(&b);
    for (int i = 0; i < NMECHANISMS; i++) {
        const struct mechanism *m = &MECHANISMS[i];
        struct config c = *cfg;
        snprintf(c.mechanism, sizeof c.mechanism, "%s", m->name);
        c.map_size = c.size = 64 << 20;
        if (strcmp(m->name, "thp") != 0) {
            snprintf(c.shm_dir, sizeof c.shm_dir, "%s", access("/dev/shm", W_OK) == 0 ? "/dev/shm" : huge_dir);
        }
        char reason[512] = "";
        int rc = m->probe(&c, reason, sizeof reason);
        jb_key(&b, m->name);
        jb_obj_begin(&b);
        jb_bool(&b, "supported", rc == 0);
        jb_str(&b, "reason", rc ? reason : NULL);
        jb_bool(&b, "needs_patched_kernel", m->needs_patch);
        jb_obj_end(&b);
    }
    jb_obj_end(&b);
    jb_obj_end(&b);
    jb_raw(&b, "\n");
    release_private_mounts(cfg);
    int rc = 0;
    if (cfg->json_path) {
        FILE *f = fopen(cfg->json_path, "w");
        if (!f || fwrite(b.s, 1, b.len, f) != b.len || fclose(f) != 0) {
            fprintf(stderr, "mshare-sga: cannot write %s: %s\n", cfg->json_path, strerror(errno));
            rc = 1;
        }
    } else {
        fwrite(b.s, 1, b.len, stdout);
    }
    jb_free(&b);
    return rc;
}

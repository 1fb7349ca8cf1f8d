/* mshare-sga: a database-shaped workload for page-table sharing experiments.
 *
 * A coordinator has an owner process create one shared region (the "SGA"), then forks
 * N clients that each attach to it through the mechanism's own API, populate a working
 * set, run transactions and take a protection change.  The coordinator never maps the
 * region itself, so no client inherits the mapping through fork.
 */
#ifndef SGA_H
#define SGA_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/types.h>

#define SGA_MAGIC 0x5347414d53484152ULL   /* "SGAMSHAR" */
#define HEADER_BYTES (64u << 10)           /* latches and counters at offset 0 */
#define BLOCK_BYTES 8192u                  /* a database block */
#define NLATCHES 256
#define HIST_SUB_BITS 3
#define HIST_BUCKETS (64 << HIST_SUB_BITS)
#define PMD_SIZE_ (2ul << 20)
#define PUD_SIZE_ (1ul << 30)

/* Fixed-address mechanisms map here: 1 GiB aligned and inside the first 512 GiB, so the
 * region shares the PGD slot (and PUD page) the static binary already uses; a slot of its
 * own would cost every client a private PUD page and hide PMD sharing. */
#define FIXED_BASE 0x4000000000ul            /* 256 GiB */

enum outcome { OUT_COMPLETED, OUT_OOM, OUT_UNSUPPORTED, OUT_ERROR };

struct config {
    char mechanism[32];
    uint64_t size;               /* region bytes, as asked */
    uint64_t map_size;           /* bytes mapped (rounded to the mechanism's unit) */
    int clients;
    double duration;
    double populate;
    double write_share;
    uint64_t memory_limit;       /* 0 = none */
    double attach_timeout;
    double sample_interval;
    int oom_continue;            /* keep going after the first OOM kill (default: stop there) */
    const char *json_path;
    const char *state_path;      /* host resources recorded here before they are made (gc) */
    /* kernel parameters, never guessed */
    long nr_mshare, nr_mshare_unlink;  /* -1 when not given */
    int ioctl_abi;                     /* 0 (not given), 2024 or 2025 */
    unsigned long ptshare_flag;
    /* resources, filled by the coordinator before forking */
    char shm_dir[256];
    char path[320];              /* region file (shmem, thp, ptshare, msharefs*) */
    char name[64];               /* object name (mshare syscall, msharefs file) */
    int sysv_key;
    uint64_t align_unit;         /* mshare PGDIR unit read from mshare_info */
    uint64_t base;               /* fixed address, 0 = kernel chooses */
};

/* Region header, at offset 0 of the region: what a database keeps in its SGA header. */
struct sga_header {
    uint64_t magic;
    uint64_t size;
    uint64_t nblocks;
    _Atomic uint64_t commits;
    _Atomic int read_only;       /* set by the owner when it changed protection for everyone */
    char pad[64 - 36];
    struct { _Atomic int lock; char pad[60]; } latch[NLATCHES];
};

enum slot_state { S_FORKED, S_READY, S_ATTACHED, S_POPULATED, S_RUNNING, S_PARKED, S_DETACHED, S_FAILED };

struct slot {
    _Atomic int state;
    int pid;
    int64_t vmpte_before;        /* bytes, before attaching (the client's fixed cost) */
    int64_t vmpte_after;         /* bytes, after populating */
    int64_t attach_ns, populated_ns;
    _Atomic uint64_t tx, tx_writes;
    _Atomic int64_t ack_ns;      /* when it verified the read-only change, 0 = not yet */
    _Atomic int64_t back_ns;     /* when it verified the change back to read-write */
    _Atomic int held;            /* bit 1: read-only held (a write faulted), bit 2: read-write held */
    int populate_method;         /* 0 touch, 1 MADV_POPULATE_WRITE */
    char err[120];
    uint32_t hist[HIST_BUCKETS]; /* transaction latency, log-linear ns buckets */
};

enum phase { PH_READY, PH_ATTACH, PH_GO, PH_PARK, PH_DETACH, PH_EXIT };

/* Control area: anonymous shared memory created before any fork (not the region). */
struct control {
    _Atomic int phase;           /* futex word */
    _Atomic int protect;         /* protection changes asked for: 1 read-only, 2 back to read-write */
    _Atomic int owner_state;     /* 0 starting, 1 ready, -1 failed */
    _Atomic int owner_protect_done;  /* the owner's mprotect done for change 1, then 2 */
    _Atomic int64_t owner_protect_ns;
    _Atomic int populated, parked, detached, failed, acked;
    /* the coordinator's OOM watcher (a process of its own: see coordinator.c) */
    _Atomic int clients_pgid;    /* the clients' process group, for the watcher to kill */
    _Atomic int oom_seen;        /* the watcher saw an OOM kill and killed the clients */
    _Atomic int64_t oom_seen_ns;
    _Atomic int64_t watcher_loops, watcher_last_ns;   /* that the watcher was awake */
    char owner_err[200];
    struct slot slots[];
};

/* mechanisms.c */
struct mechanism {
    const char *name;
    uint64_t page_size;
    int needs_patch;
    /* 0 supported, 1 unsupported (reason filled); may prepare cfg (paths, alignment) */
    int (*probe)(struct config *cfg, char *reason, size_t len);
    /* owner: create the object and map it; returns the mapping or NULL with err */
    void *(*create)(struct config *cfg, char *err, size_t len);
    /* client: attach by itself; returns the mapping or NULL with err */
    void *(*attach)(const struct config *cfg, char *err, size_t len);
    void (*detach)(const struct config *cfg, void *addr);
    /* coordinator: remove the named object (file, segment, msharefs file) */
    void (*destroy)(const struct config *cfg);
    int owner_protects;          /* page tables shared: one mprotect by the owner */
};
const struct mechanism *mechanism_get(const char *name);
extern const struct mechanism MECHANISMS[];
extern const int NMECHANISMS;
int prepare_private_mounts(struct config *cfg, char *err, size_t len);
void release_private_mounts(const struct config *cfg);
int make_tmp_dir(char *out, size_t len);

/* measure.c */
int64_t now_ns(void);
int64_t read_meminfo_kb(const char *key);
int64_t read_vmstat(const char *key);
int64_t read_status_kb(pid_t pid, const char *key);   /* pid 0 = self */
int64_t read_proc_kb(pid_t pid, const char *file, const char *key);
void settle_pagetables(void);                         /* RCU frees done, PageTables still */
int64_t others_pte_bytes(void);                       /* VmPTE of processes not ours */
int filesystem_listed(const char *fs);
void hist_add(uint32_t *hist, uint64_t ns);
double hist_quantile_us(const uint64_t *hist, double q);
int read_file_str(const char *path, char *buf, size_t len);
int write_file_str(const char *path, const char *text);

/* json.c: a growable buffer with just enough JSON */
struct jbuf { char *s; size_t len, cap; int need_comma; };
void jb_raw(struct jbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void jb_key(struct jbuf *b, const char *key);
void jb_obj_begin(struct jbuf *b);
void jb_obj_end(struct jbuf *b);
void jb_arr_begin(struct jbuf *b);
void jb_arr_end(struct jbuf *b);
void jb_str(struct jbuf *b, const char *key, const char *val);
void jb_int(struct jbuf *b, const char *key, int64_t val);
void jb_num(struct jbuf *b, const char *key, double val);     /* NaN -> null */
void jb_bool(struct jbuf *b, const char *key, int val);       /* -1 -> null */
void jb_null(struct jbuf *b, const char *key);
void jb_elem_int(struct jbuf *b, int64_t val);
void jb_elem_num(struct jbuf *b, double val);
void jb_elem_str(struct jbuf *b, const char *val);
void jb_free(struct jbuf *b);

/* client.c */
void client_main(const struct config *cfg, struct control *ctl, int idx, const char *cgroup_procs)
    __attribute__((noreturn));
void owner_main(struct config *cfg, struct control *ctl) __attribute__((noreturn));
void futex_wait_change(_Atomic int *word, int seen, int timeout_ms);
void futex_wake_all(_Atomic int *word);

/* coordinator.c */
int coordinator_run(struct config *cfg);
int probe_command(struct config *cfg);

/* floor.c */
int floor_command(const struct config *cfg);

#endif

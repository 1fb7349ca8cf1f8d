/* Counters the lab judges by: /proc/meminfo, /proc/vmstat, /proc/PID/status, and the
 * latency histogram.  Readers use plain read(2) so that thousands of clients stay light. */
#include "sga.h"

#include <dirent.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

int read_file_str(const char *path, char *buf, size_t len)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    size_t got = 0;
    ssize_t n;
    while (got + 1 < len && (n = read(fd, buf + got, len - 1 - got)) > 0)
        got += (size_t)n;
    close(fd);
    buf[got] = 0;
    return (int)got;
}

int write_file_str(const char *path, const char *text)
{
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    ssize_t n = write(fd, text, strlen(text));
    int saved = n < 0 ? -1 : 0;
    if (close(fd) < 0)
        saved = -1;
    return saved;
}

/* "Key:   value kB" lines (meminfo, status) or "key value" lines (vmstat). */
static int64_t lookup(const char *text, const char *key)
{
    size_t klen = strlen(key);
    for (const char *p = text; p && *p; p = strchr(p, '\n'), p = p ? p + 1 : NULL) {
        if (strncmp(p, key, klen) == 0 && (p[klen] == ':' || p[klen] == ' '))
            return strtoll(p + klen + 1, NULL, 10);
    }
    return -1;
}

int64_t read_meminfo_kb(const char *key)
{
    static char buf[8192];
    if (read_file_str("/proc/meminfo", buf, sizeof buf) < 0)
        return -1;
    return lookup(buf, key);
}

int64_t read_vmstat(const char *key)
{
    static char buf[16384];
    if (read_file_str("/proc/vmstat", buf, sizeof buf) < 0)
        return -1;
    return lookup(buf, key);
}

/* one "Key: N kB" field of /proc/PID/<file> (status, smaps_rollup) */
int64_t read_proc_kb(pid_t pid, const char *file, const char *key)
{
    char path[96], buf[4096];
    snprintf(path, sizeof path, "/proc/%d/%s", (int)pid, file);
    if (read_file_str(path, buf, sizeof buf) < 0)
        return -1;
    return lookup(buf, key);
}

int64_t read_status_kb(pid_t pid, const char *key)
{
    char path[64], buf[4096];
    if (pid)
        snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    else
        snprintf(path, sizeof path, "/proc/self/status");
    if (read_file_str(path, buf, sizeof buf) < 0)
        return -1;
    return lookup(buf, key);
}

int filesystem_listed(const char *fs)
{
    char buf[4096];
    if (read_file_str("/proc/filesystems", buf, sizeof buf) < 0)
        return 0;
    size_t flen = strlen(fs);
    for (char *p = buf; (p = strstr(p, fs)); p += flen) {
        int starts = p == buf || p[-1] == '\t' || p[-1] == ' ';
        int ends = p[flen] == '\n' || p[flen] == 0;
        if (starts && ends)
            return 1;
    }
    return 0;
}

/* Log-linear buckets: 8 per power of two, so quantiles are within ~12%. */
void hist_add(uint32_t *hist, uint64_t ns)
{
    if (ns < 8) {
        hist[ns]++;
        return;
    }
    int e = 63 - __builtin_clzll(ns);
    int sub = (int)((ns >> (e - HIST_SUB_BITS)) & ((1 << HIST_SUB_BITS) - 1));
    hist[(e << HIST_SUB_BITS) + sub]++;
}

static double bucket_mid_ns(int idx)
{
    if (idx < 8)
        return idx;
    int e = idx >> HIST_SUB_BITS, sub = idx & ((1 << HIST_SUB_BITS) - 1);
    double lo = (double)((uint64_t)((1 << HIST_SUB_BITS) + sub) << (e - HIST_SUB_BITS));
    double width = (double)(1ull << (e - HIST_SUB_BITS));
    return lo + width / 2;
}

double hist_quantile_us(const uint64_t *hist, double q)
{
    uint64_t total = 0;
    for (int i = 0; i < HIST_BUCKETS; i++)
        total += hist[i];
    if (!total)
        return __builtin_nan("");
    uint64_t rank = (uint64_t)(q * (double)total);
    if (rank >= total)
        rank = total - 1;
    uint64_t seen = 0;
    for (int i = 0; i < HIST_BUCKETS; i++) {
        seen += hist[i];
        if (seen > rank)
            return bucket_mid_ns(i) / 1000.0;
    }
    return __builtin_nan("");
}

/* Page tables of every process that is not this one or its child, in bytes.  Subtracting
 * its change from the change of /proc/meminfo PageTables removes what the rest of the
 * machine (guests booting, compilers starting and exiting) did in the same window:
 * processes that appear or exit change both sums by the same amount. */
int64_t others_pte_bytes(void)
{
    DIR *proc = opendir("/proc");
    if (!proc)
        return -1;
    pid_t self = getpid();
    int64_t sum = 0;
    struct dirent *de;
    char path[64], buf[4096];
    while ((de = readdir(proc))) {
        if (de->d_name[0] < '1' || de->d_name[0] > '9')
            continue;
        pid_t pid = (pid_t)atoi(de->d_name);
        if (pid == self)
            continue;
        snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
        if (read_file_str(path, buf, sizeof buf) <= 0)
            continue;
        if (lookup(buf, "PPid") == self)
            continue;
        int64_t kb = lookup(buf, "VmPTE");
        if (kb > 0)
            sum += kb * 1024;
    }
    closedir(proc);
    return sum;
}

/* Page-table pages are freed after an RCU grace period (MMU_GATHER_RCU_TABLE_FREE):
 * wait for one (membarrier GLOBAL is synchronize_rcu) and for PageTables to stop moving. */
void settle_pagetables(void)
{
    syscall(SYS_membarrier, 1 /* MEMBARRIER_CMD_GLOBAL */, 0, 0);
    int64_t last = -1;
    for (int stable = 0, i = 0; stable < 3 && i < 50; i++) {
        usleep(20000);
        int64_t now = read_meminfo_kb("PageTables");
        stable = now == last ? stable + 1 : 0;
        last = now;
    }
}

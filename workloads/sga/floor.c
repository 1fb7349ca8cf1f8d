/* The floor for attach+populate: the least work N processes can do to map and touch a
 * region.  The parent maps one tmpfs file, forks N children that inherit the mapping
 * (no attach of their own) and each populate it; no barrier, header or transactions. */
#include "sga.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <signal.h>
#include <unistd.h>

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

int floor_command(const struct config *cfg)
{
    char path[] = "/dev/shm/mshare-sga-floor-XXXXXX";
    int fd = mkstemp(path);
    if (fd < 0) {
        fprintf(stderr, "mshare-sga: floor: %s: %s\n", path, strerror(errno));
        return 1;
    }
    unlink(path);   /* nothing to clean up whatever happens */
    uint64_t len = (cfg->size + 4095) & ~4095ull;
    char *addr = MAP_FAILED;
    if (ftruncate(fd, (off_t)len) == 0)
        addr = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    if (addr == MAP_FAILED) {
        fprintf(stderr, "mshare-sga: floor: map %llu bytes: %s\n", (unsigned long long)len, strerror(errno));
        return 1;
    }
    /* like the workload, time from a barrier after every fork: closing the pipe's write
     * end releases all children at once */
    int gate[2];
    if (pipe(gate) < 0) {
        perror("mshare-sga: floor: pipe");
        return 1;
    }
    /* each child's populate end, so exit-time page-table teardown is not timed */
    int64_t *done_ns = mmap(NULL, sizeof(int64_t) * (size_t)cfg->clients, PROT_READ | PROT_WRITE,
                            MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (done_ns == MAP_FAILED) {
        perror("mshare-sga: floor: mmap");
        return 1;
    }
    int started = 0, failed = 0;
    for (int i = 0; i < cfg->clients; i++) {
        pid_t pid = fork();
        if (pid == 0) {
            prctl(PR_SET_PDEATHSIG, SIGKILL);
            close(gate[1]);
            char c;
            while (read(gate[0], &c, 1) < 0 && errno == EINTR)
                ;
            if (madvise(addr, len, MADV_POPULATE_WRITE) < 0)
                for (uint64_t off = 0; off < len; off += 4096)
                    ((volatile char *)addr)[off] = 0;
            done_ns[i] = now_ns();
            _exit(0);
        }
        if (pid < 0)
            break;
        started++;
    }
    close(gate[0]);
    int64_t t0 = now_ns();
    close(gate[1]);
    int status;
    while (wait(&status) > 0)
        if (!WIFEXITED(status) || WEXITSTATUS(status))
            failed++;
    int64_t last = t0;
    for (int i = 0; i < started; i++)
        if (done_ns[i] > last)
            last = done_ns[i];
    double s = (double)(last - t0) / 1e9;
    munmap(done_ns, sizeof(int64_t) * (size_t)cfg->clients);
    printf("{\"schema\":\"mshare-lab/floor\",\"version\":1,\"region_bytes\":%llu,\"clients\":%d,"
           "\"failed\":%d,\"seconds\":%.6f}\n", (unsigned long long)len, started, failed, s);
    munmap(addr, len);
    return started == cfg->clients && !failed ? 0 : 1;
}

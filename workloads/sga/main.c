/* mshare-sga command line: `run` a workload or `probe` the running kernel.
 * Exit codes: 0 a result document was written (whatever the outcome), 1 the program
 * itself failed, 2 bad usage, 3 a host limit refused the run. */
#include "sga.h"

#include <errno.h>
#include <getopt.h>
#include <stdlib.h>
#include <string.h>

static const char USAGE[] =
    "usage: mshare-sga run --mechanism M --sga BYTES --clients N [--duration S] [--populate F]\n"
    "                      [--write-share F] [--memory-limit BYTES] [--json PATH]\n"
    "                      [--mshare-syscall-nr NR_MSHARE,NR_UNLINK] [--msharefs-ioctl-abi 2024|2025]\n"
    "                      [--ptshare-flag HEX] [--attach-timeout S] [--sample-interval S]\n"
    "                      [--oom-continue] [--state-file PATH]\n"
    "       mshare-sga probe [kernel-parameter flags] [--json PATH]\n"
    "       mshare-sga floor --sga BYTES --clients N   (fork-and-touch floor, JSON on stdout)\n";

/* one line that says what is wrong (the caller shows it as the error), no usage text */
static int usage_error(const char *fmt, const char *arg)
{
    fprintf(stderr, "mshare-sga: error: ");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, " (mshare-sga without arguments prints the usage)\n");
    return 2;
}

/* 256M, 1G, 4096: binary units, as the Python side writes them */
static int parse_size(const char *s, uint64_t *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || v < 0)
        return -1;
    double mult = 1;
    switch (*end) {
    case 'k': case 'K': mult = 1024.0; end++; break;
    case 'm': case 'M': mult = 1048576.0; end++; break;
    case 'g': case 'G': mult = 1073741824.0; end++; break;
    case 't': case 'T': mult = 1099511627776.0; end++; break;
    }
    if (*end)
        return -1;
    *out = (uint64_t)(v * mult);
    return 0;
}

static int parse_double(const char *s, double lo, double hi, double *out)
{
    char *end;
    double v = strtod(s, &end);
    if (end == s || *end || v < lo || v > hi)
        return -1;
    *out = v;
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 2 || (strcmp(argv[1], "run") && strcmp(argv[1], "probe") && strcmp(argv[1], "floor"))) {
        fputs(USAGE, stderr);
        return 2;
    }
    int is_run = strcmp(argv[1], "run") == 0;
    static struct config cfg;
    snprintf(cfg.mechanism, sizeof cfg.mechanism, "shmem");
    cfg.size = 256ull << 20;
    cfg.clients = 100;
    cfg.duration = 5;
    cfg.populate = 1;
    cfg.write_share = 0.1;
    cfg.attach_timeout = 900;
    cfg.sample_interval = 0.2;
    cfg.nr_mshare = cfg.nr_mshare_unlink = -1;
    cfg.ptshare_flag = 0x200000;

    enum { O_MECH = 1, O_SGA, O_CLIENTS, O_DUR, O_POP, O_WS, O_MEMLIM, O_JSON, O_NR, O_ABI, O_PT, O_AT, O_SI, O_OOMC, O_STATE };
    static const struct option opts[] = {
        { "mechanism", required_argument, 0, O_MECH }, { "sga", required_argument, 0, O_SGA },
        { "clients", required_argument, 0, O_CLIENTS }, { "duration", required_argument, 0, O_DUR },
        { "populate", required_argument, 0, O_POP }, { "write-share", required_argument, 0, O_WS },
        { "memory-limit", required_argument, 0, O_MEMLIM }, { "json", required_argument, 0, O_JSON },
        { "mshare-syscall-nr", required_argument, 0, O_NR },
        { "msharefs-ioctl-abi", required_argument, 0, O_ABI },
        { "ptshare-flag", required_argument, 0, O_PT }, { "attach-timeout", required_argument, 0, O_AT },
        { "sample-interval", required_argument, 0, O_SI },
        { "oom-continue", no_argument, 0, O_OOMC }, { "state-file", required_argument, 0, O_STATE },
        { 0, 0, 0, 0 },
    };
    optind = 2;
    int c;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        char *end;
        switch (c) {
        case O_MECH:
            if (!mechanism_get(optarg))
                return usage_error("--mechanism: unknown mechanism '%s'", optarg);
            snprintf(cfg.mechanism, sizeof cfg.mechanism, "%s", optarg);
            break;
        case O_SGA:
            if (parse_size(optarg, &cfg.size) || cfg.size == 0)
                return usage_error("--sga: '%s' is not a size (e.g. 256M)", optarg);
            break;
        case O_CLIENTS: {
            long n = strtol(optarg, &end, 10);
            if (*end || n < 1 || n > 1000000)
                return usage_error("--clients: '%s' must be a whole number from 1 to 1000000", optarg);
            cfg.clients = (int)n;
            break;
        }
        case O_DUR:
            if (parse_double(optarg, 0, 1e6, &cfg.duration))
                return usage_error("--duration: '%s' is not a number of seconds", optarg);
            break;
        case O_POP:
            if (parse_double(optarg, 0, 1, &cfg.populate))
                return usage_error("--populate: '%s' must be between 0 and 1", optarg);
            break;
        case O_WS:
            if (parse_double(optarg, 0, 1, &cfg.write_share))
                return usage_error("--write-share: '%s' must be between 0 and 1", optarg);
            break;
        case O_MEMLIM:
            if (parse_size(optarg, &cfg.memory_limit))
                return usage_error("--memory-limit: '%s' is not a size", optarg);
            break;
        case O_JSON:
            cfg.json_path = optarg;
            break;
        case O_NR:
            if (sscanf(optarg, "%ld,%ld", &cfg.nr_mshare, &cfg.nr_mshare_unlink) != 2
                || cfg.nr_mshare < 0 || cfg.nr_mshare_unlink < 0)
                return usage_error("--mshare-syscall-nr: '%s' must be NR_MSHARE,NR_UNLINK", optarg);
            break;
        case O_ABI:
            cfg.ioctl_abi = atoi(optarg);
            if (cfg.ioctl_abi != 2024 && cfg.ioctl_abi != 2025)
                return usage_error("--msharefs-ioctl-abi: '%s' must be 2024 or 2025", optarg);
            break;
        case O_PT:
            cfg.ptshare_flag = strtoul(optarg, &end, 16);
            if (*end || !cfg.ptshare_flag)
                return usage_error("--ptshare-flag: '%s' is not a hex flag", optarg);
            break;
        case O_AT:
            if (parse_double(optarg, 1, 1e6, &cfg.attach_timeout))
                return usage_error("--attach-timeout: '%s' is not a number of seconds", optarg);
            break;
        case O_SI:
            if (parse_double(optarg, 0.01, 60, &cfg.sample_interval))
                return usage_error("--sample-interval: '%s' is not a number of seconds", optarg);
            break;
        case O_OOMC:
            cfg.oom_continue = 1;
            break;
        case O_STATE:
            cfg.state_path = optarg;
            break;
        default:   /* getopt printed what it did not understand */
            fputs("mshare-sga: error: bad option (mshare-sga without arguments prints the usage)\n", stderr);
            return 2;
        }
    }
    if (optind < argc)
        return usage_error("unexpected argument '%s'", argv[optind]);
    setvbuf(stderr, NULL, _IOLBF, 0);
    if (strcmp(argv[1], "floor") == 0)
        return floor_command(&cfg);
    return is_run ? coordinator_run(&cfg) : probe_command(&cfg);
}

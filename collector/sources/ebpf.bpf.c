// incidentlab eBPF programs, compiled by bcc at collector start.
//
// Tracepoints only (kprobes are absent on some kernels we run on), and no
// struct task_struct access: bcc compiles against the installed headers, which
// need not match the running kernel, while tracepoint arguments come from the
// running kernel's own tracefs format. Records use the probe_core binary format
// of docs/event-format.md and leave through one perf buffer.

#include <uapi/linux/ptrace.h>

#define ILEV_MAGIC 0x56454C49
#define ILEV_VERSION 1
#define T_EXEC 1
#define T_EXIT 2
#define T_OOM 3
#define T_RETRANS 4
#define EXIT_UNKNOWN -1

struct ilev_header {
    u32 magic;
    u8 version;
    u8 type;
    u16 length;
    u64 ts_ns;
    u32 cpu;
    u32 reserved;
};

struct exec_rec {
    struct ilev_header h;
    u32 pid;
    u32 ppid;
    u32 uid;
    u16 filename_len;
    u16 reserved;
    char comm[16];
    char filename[256];
};

struct exit_rec {
    struct ilev_header h;
    u32 pid;
    u32 ppid;
    s32 exit_code;
    u32 reserved;
    u64 age_ns;
    char comm[16];
};

struct oom_rec {
    struct ilev_header h;
    u32 pid;
    u32 uid;
    u64 total_vm_kb;
    u64 anon_rss_kb;
    u64 file_rss_kb;
    u64 shmem_rss_kb;
    s16 oom_score_adj;
    u16 reserved1;
    u32 reserved2;
    char comm[16];
};

struct retrans_rec {
    struct ilev_header h;
    u32 pid;
    u16 family;
    u16 sport;
    u16 dport;
    u8 state;
    u8 reserved1;
    u32 reserved2;
    u8 saddr[16];
    u8 daddr[16];
};

struct bio_key {
    u32 dev;
    u32 slot;
};

struct rq_key {
    u32 dev;
    u32 pad;
    u64 sector;
};

BPF_PERF_OUTPUT(events);
BPF_PERCPU_ARRAY(exec_scratch, struct exec_rec, 1);
// Bounded maps: a busy host overwrites its oldest entries rather than failing.
BPF_TABLE("lru_hash", u32, u64, exec_ts, 65536);
BPF_TABLE("lru_hash", u32, s32, exit_codes, 65536);
BPF_TABLE("lru_hash", u32, u32, parent_of, 65536);
BPF_TABLE("lru_hash", u32, u64, wakeup_ts, 65536);
BPF_TABLE("lru_hash", struct rq_key, u64, rq_issue_ts, 65536);
BPF_HISTOGRAM(runq_hist, u32, 64);
BPF_HISTOGRAM(bio_hist, struct bio_key, 4096);

static __always_inline void fill_header(struct ilev_header *h, u8 type, u16 length) {
    h->magic = ILEV_MAGIC;
    h->version = ILEV_VERSION;
    h->type = type;
    h->length = length;
    h->ts_ns = bpf_ktime_get_ns();
    h->cpu = bpf_get_smp_processor_id();
    h->reserved = 0;
}

TRACEPOINT_PROBE(sched, sched_process_fork) {
    // The forking task is current: its tgid is the child's parent process.
    u32 parent = bpf_get_current_pid_tgid() >> 32;
    u32 child = args->child_pid;
    parent_of.update(&child, &parent);
    return 0;
}

static __always_inline u32 parent_tgid(u32 tgid) {
    u32 *p = parent_of.lookup(&tgid);
    return p ? *p : 0;  // forked before the programs loaded: the collector fills it from /proc
}

TRACEPOINT_PROBE(sched, sched_process_exec) {
    u32 zero = 0;
    struct exec_rec *r = exec_scratch.lookup(&zero);
    if (!r)
        return 0;
    u64 id = bpf_get_current_pid_tgid();
    u32 tgid = id >> 32;
    r->pid = tgid;
    r->ppid = parent_tgid(tgid);
    r->uid = (u32)bpf_get_current_uid_gid();
    r->reserved = 0;
    __builtin_memset(r->comm, 0, sizeof(r->comm));
    bpf_get_current_comm(&r->comm, sizeof(r->comm));
    unsigned short off = args->data_loc_filename & 0xFFFF;
    int n = bpf_probe_read_kernel_str(r->filename, sizeof(r->filename), (char *)args + off);
    u32 len = n > 0 ? (u32)(n - 1) : 0;
    len &= 0xFF;
    r->filename_len = len;
    u32 size = sizeof(struct ilev_header) + 32 + len;
    fill_header(&r->h, T_EXEC, size);
    u64 now = r->h.ts_ns;
    exec_ts.update(&tgid, &now);
    if (size > sizeof(*r))
        size = sizeof(*r);
    events.perf_submit(args, r, size);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_enter_exit_group) {
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    s32 code = (args->error_code & 0xff) << 8;  // as a wait status: WEXITSTATUS in bits 8..15
    exit_codes.update(&tgid, &code);
    return 0;
}

TRACEPOINT_PROBE(sched, sched_process_exit) {
    u64 id = bpf_get_current_pid_tgid();
    u32 tgid = id >> 32;
    if ((u32)id != tgid)
        return 0;  // a thread, not the process
    struct exit_rec r = {};
    r.pid = tgid;
    r.ppid = parent_tgid(tgid);
    s32 *code = exit_codes.lookup(&tgid);
    r.exit_code = code ? *code : EXIT_UNKNOWN;  // killed by a signal, or an exit we did not see
    bpf_probe_read_kernel(&r.comm, sizeof(r.comm), args->comm);
    fill_header(&r.h, T_EXIT, sizeof(r));
    u64 *start = exec_ts.lookup(&tgid);
    r.age_ns = start ? r.h.ts_ns - *start : 0;  // since exec; 0 when the exec was not seen
    exit_codes.delete(&tgid);
    exec_ts.delete(&tgid);
    parent_of.delete(&tgid);
    events.perf_submit(args, &r, sizeof(r));
    return 0;
}

TRACEPOINT_PROBE(oom, mark_victim) {
    struct oom_rec r = {};
    r.pid = args->pid;
#ifdef MARK_VICTIM_HAS_RSS
    // Linux 6.8+ carries the victim's memory in the tracepoint (kB).
    r.uid = args->uid;
    r.total_vm_kb = args->total_vm;
    r.anon_rss_kb = args->anon_rss;
    r.file_rss_kb = args->file_rss;
    r.shmem_rss_kb = args->shmem_rss;
    r.oom_score_adj = args->oom_score_adj;
    unsigned short off = args->data_loc_comm & 0xFFFF;
    bpf_probe_read_kernel_str(&r.comm, sizeof(r.comm), (char *)args + off);
#endif
    fill_header(&r.h, T_OOM, sizeof(r));
    events.perf_submit(args, &r, sizeof(r));
    return 0;
}

TRACEPOINT_PROBE(tcp, tcp_retransmit_skb) {
    struct retrans_rec r = {};
    r.pid = 0;  // retransmits fire from timers and softirqs: no meaningful current task
    r.family = args->family;
    r.sport = args->sport;
    r.dport = args->dport;
    r.state = (u8)args->state;
    if (args->family == 2) {
        bpf_probe_read_kernel(&r.saddr, 4, args->saddr);
        bpf_probe_read_kernel(&r.daddr, 4, args->daddr);
    } else {
        bpf_probe_read_kernel(&r.saddr, 16, args->saddr_v6);
        bpf_probe_read_kernel(&r.daddr, 16, args->daddr_v6);
    }
    fill_header(&r.h, T_RETRANS, sizeof(r));
    events.perf_submit(args, &r, sizeof(r));
    return 0;
}

static __always_inline void mark_wakeup(u32 pid) {
    u64 now = bpf_ktime_get_ns();
    wakeup_ts.update(&pid, &now);
}

TRACEPOINT_PROBE(sched, sched_wakeup) {
    mark_wakeup(args->pid);
    return 0;
}

TRACEPOINT_PROBE(sched, sched_wakeup_new) {
    mark_wakeup(args->pid);
    return 0;
}

TRACEPOINT_PROBE(sched, sched_switch) {
    // A preempted task (still TASK_RUNNING, state 0) goes straight back on the run queue.
    if (args->prev_state == 0)
        mark_wakeup(args->prev_pid);
    u32 next = args->next_pid;
    u64 *ts = wakeup_ts.lookup(&next);
    if (!ts)
        return 0;
    u64 delta_us = (bpf_ktime_get_ns() - *ts) / 1000;
    wakeup_ts.delete(&next);
    runq_hist.increment(bpf_log2l(delta_us));
    return 0;
}

TRACEPOINT_PROBE(block, block_rq_issue) {
    struct rq_key k = {.dev = args->dev, .pad = 0, .sector = args->sector};
    u64 now = bpf_ktime_get_ns();
    rq_issue_ts.update(&k, &now);
    return 0;
}

TRACEPOINT_PROBE(block, block_rq_complete) {
    struct rq_key k = {.dev = args->dev, .pad = 0, .sector = args->sector};
    u64 *ts = rq_issue_ts.lookup(&k);
    if (!ts)
        return 0;
    u64 delta_us = (bpf_ktime_get_ns() - *ts) / 1000;
    rq_issue_ts.delete(&k);
    struct bio_key hk = {.dev = args->dev, .slot = bpf_log2l(delta_us)};
    bio_hist.increment(hk);
    return 0;
}

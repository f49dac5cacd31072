/* rsttrace kernel programs (bcc).
 *
 * Every struct offset and enum value comes from the running kernel's BTF
 * and reaches this file as a -D flag (tracer/offsets.py); installed headers
 * belong to another kernel here and their layouts are wrong. (Structs its
 * BTF lacks may come from headers of exactly the running release instead:
 * bpf/layout.c.)
 *
 * Hooks are tracepoints taken at their raw arguments (sk, skb, reason, ...),
 * without the kernel first building the tracefs record. Two ways, one text:
 *  - TP_BTF: BTF tracepoints (tp_btf). The verifier knows each argument's
 *    type, so fields are plain loads it checks against BTF: no helper call
 *    per field. bcc compiles these; tracer/loader.py loads and attaches them.
 *  - otherwise raw tracepoints, attached by bcc, where every field is a
 *    probe read (the fields that sit together read in one go).
 * Argument positions come from the BTF prototype of each tracepoint (ARG_*
 * flags), so one program serves every kernel from 5.10 to 6.18. kprobe
 * fallbacks always use probe reads.
 *
 * Configuration: the -D flags tracer/loader.py passes, all of them, as its
 * table DEFINES lists them (this list is written from it by
 * `python -m rsttrace.tracer.loader`; a unit test compares):
 * -D flags:
 *   OFF_*  struct member offsets, from the running kernel's BTF
 *       (tracer/offsets.py)
 *   ARG_*  argument positions of raw tracepoints, and of an fexit program's
 *       return value, from their BTF prototypes
 *   SOCK_KEEPOPEN_BIT  enum sock_flags.SOCK_KEEPOPEN, from BTF
 *   NETFILTER_DROP_REASON  SKB_DROP_REASON_NETFILTER_DROP of enum
 *       skb_drop_reason, from BTF (5.17+)
 *   CT_DROP_DERIVED  before 5.17 (skb:kfree_skb has no reason): a netfilter
 *       drop told by where the packet was freed, with NF_DROP_SITE
 *   NF_DROP_SITE  NF_DROP_SITE(addr): whether a code address lies in
 *       netfilter's drop sites (offsets.NF_DROP_FUNCS, their ranges from
 *       /proc/kallsyms), compared with constants
 *   TCP_*_  the TCP states the programs compare with, from the kernel's own
 *       table (tracefs)
 *   AF_INET  the address family values user space uses
 *   AF_INET6  (the same)
 *   IPPROTO_TCP  (the same)
 *   TP_BTF  tracepoints as BTF tracepoints (plain loads), else raw
 *       tracepoints
 *   CALL_SOCKET_COOKIE  BTF programs may call bpf_get_socket_cookie (5.12+):
 *       the owner table tells sockets apart by cookie
 *   CALL_TASK_BTF  BTF programs may call bpf_get_current_task_btf (5.11+):
 *       the task's fields as plain loads
 *   KFUNC_RDONLY_CAST  BTF id of bpf_rdonly_cast: tcp_sock and packet headers
 *       typed by a cast
 *   BTF_*  BTF ids of the structs cast to (with KFUNC_RDONLY_CAST)
 *   HAVE_TP_*  each tracepoint to attach
 *   HAVE_TP_SEND_RESET_REASON  tcp:tcp_send_reset carries the reset's reason
 *       (6.10+)
 *   HAVE_FEXIT_ACCEPT  owners of accepted sockets from an fexit on
 *       inet_csk_accept
 *   HAVE_TP_ACCEPT  owners of accepted sockets from syscalls:sys_exit_accept4
 *       (record --accept-syscalls)
 *   HAVE_TP_ACCEPT_PLAIN  and from syscalls:sys_exit_accept
 *   WANT_KPROBE_SEND_RESET  kprobes on tcp_v4/v6_send_reset (no-socket resets
 *       before 6.10)
 *   WANT_KPROBE_TCP_RESET  kprobe on tcp_reset (no tcp:tcp_receive_reset)
 *   WANT_KPROBE_IPVS_EXPIRE  kprobe on ip_vs_conn_expire
 *   WANT_KRETPROBE_CT_ALLOC  kretprobe on __nf_conntrack_alloc
 *   NET_NAMESPACE_LIST  address of net_namespace_list (/proc/kallsyms): an
 *       IPVS entry's namespace found by walking the list
 *   USE_PCRING  per-CPU rings, with PCRING_CPUS and PCRING_SLOTS
 *   PCRING_CPUS  (per-CPU rings)
 *   PCRING_SLOTS  (per-CPU rings)
 *   USE_RINGBUF  the BPF ring buffer, with RINGBUF_PAGES and RESCUE_PAGES
 *       (neither: the perf buffer)
 *   RINGBUF_PAGES  (BPF ring buffer)
 *   RESCUE_PAGES  (BPF ring buffer)
 *   PORT_WANTED  PORT_WANTED(p): the --port filter, compared with constants
 *       (no map lookup)
 *   NETNS_WANTED  NETNS_WANTED(ns): the --netns filter, the same way
 *   STORM_RATE  storm mode: above this many resets per second on a CPU,
 *       resets are counted per key and only a sample sent in full (record
 *       --storm-rate; absent: every reset in full)
 *   STORM_SAMPLE  (storm mode) full events per key, interval and CPU
 *       (tracer/storm.py)
 *   BENCH_RETURN_EARLY  bench/bench_storm.py --floor only
 *   BENCH_MINIMAL  (the same)
 * end of -D flags
 */
#include <uapi/linux/ptrace.h>
#include "rsttrace.h"
/* AF_INET, AF_INET6 and IPPROTO_TCP come as -D flags from the loader (the
 * values user space uses): including <linux/socket.h> and <linux/in.h> for
 * three constants took 40 % of the compile time. */

#ifdef TP_BTF
#define TP_PROBE(name) int tpbtf__##name(unsigned long long *ctx)
#define TP_ARG(i) (ctx[i])
#define DIRECT 1
#else
#define TP_PROBE(name) RAW_TRACEPOINT_PROBE(name)
#define TP_ARG(i) (ctx->args[i])
#define DIRECT 0
#endif

/* bpf_rdonly_cast(obj, btf_id): `obj` typed as the kernel struct whose BTF
 * type id is `btf_id`, read-only, its loads fault-safe. The verifier turns
 * the call into a register move, so a socket's tcp_sock and a packet's
 * headers become plain loads instead of a helper call each (a tcp_sock
 * helper, a probe read of the headers). A kfunc, which bcc cannot call:
 * written as a call of helper number KFUNC_RDONLY_CAST (the kfunc's BTF id,
 * far above every helper's), which the loader turns into the kfunc call
 * (bpfsys.as_kfunc_calls). BTF tracepoints only, where the probe loaded one. */
#if defined(KFUNC_RDONLY_CAST) && defined(TP_BTF)
static const void *(*rdonly_cast)(const void *obj, __u32 btf_id) = (void *)KFUNC_RDONLY_CAST;
#define CAST 1
#else
#define CAST 0
#define rdonly_cast(obj, id) ((const void *)0)
#define BTF_TCP_SOCK 0
#define BTF_IPHDR 0
#define BTF_IPV6HDR 0
#define BTF_TCPHDR 0
#endif

/* bench/bench_storm.py --floor, the benchmark's lower bounds:
 * BENCH_RETURN_EARLY: every program returns at once (what running attached
 * programs costs by itself); BENCH_MINIMAL: the reset programs emit a bare
 * event (time, kind, direction) and the others return at once (the least
 * these hooks cost while seeing every reset). BENCH_EARLY() opens the reset
 * programs, BENCH_SKIP() the others. */
#ifdef BENCH_RETURN_EARLY
#define BENCH_EARLY() return 0
#else
#define BENCH_EARLY() do { } while (0)
#endif
#if defined(BENCH_RETURN_EARLY) || defined(BENCH_MINIMAL)
#define BENCH_SKIP() return 0
#else
#define BENCH_SKIP() do { } while (0)
#endif


/* Owner of a socket, learned where the kernel runs in the owner's context:
 * connect() moves the socket to SYN_SENT in the calling task, and accept()
 * returns an accepted one to the accepting task (fexit on inet_csk_accept,
 * or where asked for, the accept() syscall tracepoints). A reset
 * later arrives in softirq context, where `current` is arbitrary.
 *
 * Kept in a plain array indexed by a hash of the socket's address, two
 * slots per socket (no hash-map locking on every connect and close: array
 * lookups are inlined by the verifier). When the socket moves to CLOSE its
 * entry is marked (bit 0 of `sk`, which socket addresses never set): still
 * read for the reset an abort sends right after, but free for the next
 * connect, so connect churn does not push out the entries of live idle
 * connections. A socket reusing the memory must never inherit an owner:
 * with BTF (where the kernel lets its programs make a socket's cookie:
 * CALL_SOCKET_COOKIE, 5.12+) the entry holds the socket's cookie (unique
 * for the life of the host) and a reset's owner counts only if the cookies
 * agree (an accepted socket, which has no cookie yet when accept()
 * returns, is told apart by its socket file's inode number instead,
 * OWNER_BY_INODE); otherwise (raw tracepoints, or BTF ones before 5.12),
 * tcp_destroy_sock empties the slot instead. When both slots are taken by
 * live sockets the first is overwritten: that socket's owner becomes unknown, never wrong. `check`
 * folds every field, so an entry torn by two CPUs writing the same slot at
 * once is ignored rather than misread. */
struct owner {
	__u64 sk;
	__u64 cookie;
	__u64 cgroup;
	__u64 comm[2];
	__u32 pid;
	__u32 check;
};
#define OWNER_CLOSED 1ULL
/* in `cookie`: the rest is the socket file's inode number (kernel cookies
 * count up from 1 and never reach this bit) */
#define OWNER_BY_INODE (1ULL << 63)
#define OWNER_BITS 17
BPF_ARRAY(owners, struct owner, 1 << OWNER_BITS);

/* Never written: it makes bcc describe struct rst_event exactly as clang
 * laid it out, so a test can compare the Python layout with it. */
BPF_ARRAY(layout_check, struct rst_event, 1);

BPF_PERCPU_ARRAY(tcp_transitions, __u64, 256);

/* Events the ring buffer could not take, counted here so loss is never silent. */
BPF_PERCPU_ARRAY(lost, __u64, 1);


#if defined(USE_PCRING)
/* One ring per CPU in memory the consumer maps (no helper call, no lock:
 * reserving a slot is one compare-and-swap on this CPU's head, publishing
 * it one store of its sequence number). A program interrupted on its CPU
 * by another (softirq over process context) only makes the consumer wait
 * for the slot reserved first. The consumer (tracer/bpfsys.py) reads each
 * CPU's slots from its tail while their `seq` says they are published,
 * then advances the tail; a full ring refuses, and the refusal is counted.
 * Publishing with a plain store relies on stores becoming visible in
 * program order (x86-64): the probe chooses these rings only there
 * (tracer/probe.py), else the BPF ring buffer below. */
struct pc_slot {
	__u64 seq;   /* position + 1 once the event is complete */
	__u64 pos;   /* position taken at reservation */
	struct rst_event e;
};
struct pc_pos {
	__u64 head;  /* next position; programs only */
	__u64 tail;  /* first position not yet read; the consumer only */
	__u64 _pad[6];
};
BPF_F_TABLE("array", u32, struct pc_slot, pcring, PCRING_CPUS * PCRING_SLOTS, BPF_F_MMAPABLE);
BPF_F_TABLE("array", u32, struct pc_pos, pcpos, PCRING_CPUS, BPF_F_MMAPABLE);
#elif defined(USE_RINGBUF)
BPF_RINGBUF_OUTPUT(events, RINGBUF_PAGES);
/* Taken only when `events` refuses a reservation (full, or its lock not
 * granted: kernels with resilient spinlocks give up on a lock held too
 * long, e.g. by a preempted vCPU). The consumer reads both. */
BPF_RINGBUF_OUTPUT(rescue, RESCUE_PAGES);
#else
BPF_PERF_OUTPUT(events);
BPF_PERCPU_ARRAY(scratch, struct rst_event, 1);
#endif

static __always_inline void count_lost(void)
{
	int zero = 0;
	__u64 *n = lost.lookup(&zero);
	if (n)
		*n += 1;
}

static __always_inline struct rst_event *ev_new(void)
{
	struct rst_event *e;
#if defined(USE_PCRING)
	__u32 cpu = bpf_get_smp_processor_id(), idx;
	struct pc_pos *p = pcpos.lookup(&cpu);
	struct pc_slot *s = 0;

	e = 0;
	if (p) {
#pragma unroll
		for (int i = 0; i < 2; i++) {
			__u64 h = *(volatile __u64 *)&p->head;
			if (h - *(volatile __u64 *)&p->tail >= PCRING_SLOTS)
				break;  /* full */
			/* fails only if a program interrupting this one took h */
			if (__sync_val_compare_and_swap(&p->head, h, h + 1) == h) {
				idx = cpu * PCRING_SLOTS + (__u32)(h & (PCRING_SLOTS - 1));
				s = pcring.lookup(&idx);
				if (s) {
					s->pos = h;
					e = &s->e;
				}
				break;
			}
		}
	}
#elif defined(USE_RINGBUF)
	e = events.ringbuf_reserve(sizeof(struct rst_event));
	if (!e)
		e = rescue.ringbuf_reserve(sizeof(struct rst_event));
#else
	int zero = 0;
	e = scratch.lookup(&zero);
#endif
	if (!e) {
		count_lost();
		return 0;
	}
	/* the log text is written (and zeroed) by the one kind that has it */
	__builtin_memset(e, 0, offsetof(struct rst_event, text));
	e->ts_ns = bpf_ktime_get_ns();
	return e;
}

static __always_inline void ev_send(void *ctx, struct rst_event *e)
{
#if defined(USE_PCRING)
	struct pc_slot *s = (struct pc_slot *)((char *)e - offsetof(struct pc_slot, e));
	__u64 seq = s->pos + 1;
	asm volatile("" ::: "memory");  /* the event's stores first */
	*(volatile __u64 *)&s->seq = seq;
#elif defined(USE_RINGBUF)
	/* No wake-up per event: the consumer polls on a timer, so a storm does
	 * not become a storm of wake-ups on the traced host. */
	events.ringbuf_submit(e, BPF_RB_NO_WAKEUP);
#else
	if (events.perf_submit(ctx, e, sizeof(*e)) < 0)
		count_lost();
#endif
}

static __always_inline int ports_wanted(__u16 a, __u16 b)
{
#ifdef PORT_WANTED
	return PORT_WANTED(a) || PORT_WANTED(b);
#else
	return 1;
#endif
}

static __always_inline int netns_wanted(__u32 ns)
{
#ifdef NETNS_WANTED
	return NETNS_WANTED(ns);
#else
	return 1;
#endif
}

/* A plain load of `sz` (u8/u16/u32/u64) at `off` from `base`, written in
 * BPF assembly so bcc's rewriter (which turns dereferences it cannot place
 * into probe reads) leaves it alone; the verifier checks it against BTF. */
#define LDA(sz, base, off) ({ __u64 __a; \
	asm volatile("%0 = *(" #sz " *)(%1 + %2)" : "=r"(__a) : "r"(base), "i"(off)); __a; })
#define LD_DIRECT(type, base, off) ((type)( \
	sizeof(type) == 1 ? LDA(u8, base, off) : \
	sizeof(type) == 2 ? LDA(u16, base, off) : \
	sizeof(type) == 4 ? LDA(u32, base, off) : LDA(u64, base, off)))
/* The field of type `type` at `off` in the kernel object at `base`: a plain
 * load where the verifier knows the object's type (BTF tracepoint arguments
 * and pointers read from them), a probe read otherwise. `direct` is a
 * constant at every call site, so only one of the two is compiled. */
#define LD(type, base, off, direct) ({ \
	type __v = 0; \
	if (direct) \
		__v = LD_DIRECT(type, base, off); \
	else \
		bpf_probe_read_kernel(&__v, sizeof(__v), (const char *)(base) + (off)); \
	__v; })
#define MAX2(a, b) ((a) > (b) ? (a) : (b))
#define MIN2(a, b) ((a) < (b) ? (a) : (b))
/* a field of a block read into a local buffer */
#define AT(buf, off, type) (*(type *)((char *)(buf) + (off)))

/* Every probe read is a helper call, and in a reset storm they add up: the
 * fields that sit together are read in one go. sock_common (addresses,
 * ports, family, state, netns, cookie, flags) is one block at the start of
 * every socket, full or mini. */
#define SK_HEAD_LEN MAX2(MAX2(MAX2(OFF_SK_DADDR + 4, OFF_SK_RCV_SADDR + 4), \
				   MAX2(OFF_SK_DPORT + 2, OFF_SK_NUM + 2)), \
			  MAX2(MAX2(MAX2(OFF_SK_FAMILY + 2, OFF_SK_STATE + 1), \
				    MAX2(OFF_SK_NET + 8, OFF_SK_COOKIE + 8)), \
			       MAX2(MAX2(OFF_SK_V6_DADDR + 16, OFF_SK_V6_RCV_SADDR + 16), \
				    OFF_SK_FLAGS + 8)))
_Static_assert(SK_HEAD_LEN <= 192, "sock_common fields spread too far for one read");
#define SK_HEAD_WORDS ((SK_HEAD_LEN + 7) / 8)

/* sk_buff: the header offsets and head pointer, together in every kernel */
/* (from an 8-byte boundary: the head pointer is read back from the stack
 * copy, and the verifier wants 8-byte stack loads aligned) */
#define SKB_BLK_START (MIN2(MIN2(OFF_SKB_PROTOCOL, OFF_SKB_TRANSPORT_HEADER), \
			    MIN2(OFF_SKB_NETWORK_HEADER, OFF_SKB_HEAD)) & ~7)
#define SKB_BLK_END MAX2(MAX2(OFF_SKB_PROTOCOL + 2, OFF_SKB_TRANSPORT_HEADER + 2), \
			 MAX2(OFF_SKB_NETWORK_HEADER + 2, OFF_SKB_HEAD + 8))
_Static_assert(SKB_BLK_END - SKB_BLK_START <= 64, "sk_buff header fields spread too far");
#define SKB_BLK_WORDS ((SKB_BLK_END - SKB_BLK_START + 7) / 8)
#define SKB_AT(blk, off, type) AT(blk, (off) - SKB_BLK_START, type)

static __always_inline __u32 net_inum(const void *net, int direct)
{
	return net ? LD(__u32, net, OFF_NET_INUM, direct) : 0;
}

static __always_inline __u32 dev_netns(const void *skb, int direct)
{
	const void *dev = LD(const void *, skb, OFF_SKB_DEV, direct);
	return dev ? net_inum(LD(const void *, dev, OFF_DEV_NET, direct), direct) : 0;
}

static __always_inline __u32 skb_netns(const void *skb, int direct)
{
	__u32 ns = dev_netns(skb, direct);
	if (!ns) {
		/* locally generated packets may not have a device yet */
		const void *sk = LD(const void *, skb, OFF_SKB_SK, direct);
		if (sk)
			ns = net_inum(LD(const void *, sk, OFF_SK_NET, direct), direct);
	}
	return ns;
}

/* A socket's address as a number, for the owner table. BTF pointers allow
 * no arithmetic but subtraction from another pointer, so there it is the
 * distance from a fixed map value (the same in every BTF program); a raw
 * pointer is a number already. (A kernel mixing both, a BTF set_state with
 * the tcp_reset kprobe, would find no owner for those resets, never a
 * wrong one: the two kinds of key never meet.) */
static __always_inline __u64 sk_key(const void *sk, int direct)
{
	if (!direct)
		return (__u64)sk;
	int zero = 0;
	struct owner *base = owners.lookup(&zero);
	return base ? (__u64)sk - (__u64)base : 0;
}

/* sock_common of a socket (full or mini): read in one go for probe reads
 * (`head`), a plain load per field otherwise. */
#define SKF(type, off) (direct ? LD(type, sk, off, 1) : AT(head, off, type))

/* The tcp_sock behind a socket, or 0 (time-wait and request minisocks have
 * no tcp_sock fields; every other socket a tcp: tracepoint passes is a full
 * TCP one). With BTF the pointer must be typed as tcp_sock for the verifier
 * to let us read it: cast, or where the cast is missing, the helper. */
static __always_inline const void *tcp_sk_of(const void *sk, __u8 st, int direct)
{
	if (st == TCP_TIME_WAIT_ || st == TCP_NEW_SYN_RECV_)
		return 0;
	if (direct && CAST)
		return rdonly_cast(sk, BTF_TCP_SOCK);
	if (direct)
		return bpf_skc_to_tcp_sock((void *)sk);
	return sk;
}

/* Socket facts that explain an idle reset: how long nothing was received
 * before it (a write that meets forgotten state has just set lsndtime, so
 * only received activity counts), and the keepalive in force. */
static __always_inline void fill_sock(struct rst_event *e, const void *sk, const void *tp,
				      const __u64 *head, const void *net, int direct)
{
	__u32 last, kat, kai;
	__u8 kap;

	e->flags |= EVF_HAS_SOCK;
	/* the socket's cookie; with BTF, one the kernel's helper makes if it
	 * never had one (as `ss -e` does). A connect()ed socket's was made at
	 * connect (for the owner table): a plain load, 25 ns less than the
	 * helper. Raw tracepoints: the cookie if it has one. */
	if (direct || tp)
		e->cookie = SKF(__u64, OFF_SK_COOKIE);
#ifdef CALL_SOCKET_COOKIE
	if (direct && !e->cookie)
		e->cookie = bpf_get_socket_cookie((void *)sk);
#endif
	if (!tp)
		return;
	if (SKF(__u64, OFF_SK_FLAGS) & (1ULL << SOCK_KEEPOPEN_BIT))
		e->flags |= EVF_KEEPALIVE;
	last = LD(__u32, tp, OFF_TP_RCV_TSTAMP, direct);
	__u32 lrcvtime = LD(__u32, tp, OFF_ICSK_LRCVTIME, direct);
	if ((__s32)(lrcvtime - last) > 0)
		last = lrcvtime;
	/* a connecting socket has received nothing yet: no idle time */
	if (e->state != TCP_SYN_SENT_ && last) {
		e->idle_jiffies = (__u32)bpf_jiffies64() - last;
		e->flags |= EVF_IDLE;
	}
	kat = LD(__u32, tp, OFF_TP_KA_TIME, direct);
	kai = LD(__u32, tp, OFF_TP_KA_INTVL, direct);
	kap = LD(__u8, tp, OFF_TP_KA_PROBES, direct);
	if (kat)
		e->flags |= EVF_KA_PER_SOCK;
	else if (net)
		kat = LD(__u32, net, OFF_NET_KA_TIME, direct);
	/* the namespace's sysctls, where the socket has no value of its own */
	if (!kai && net)
		kai = LD(__u32, net, OFF_NET_KA_INTVL, direct);
	if (!kap && net)
		kap = LD(__u8, net, OFF_NET_KA_PROBES, direct);
	e->ka_time = kat;
	e->ka_intvl = kai;
	e->ka_probes = kap;
	e->flags |= EVF_KA;
}

static __always_inline __u32 owner_slot(__u64 sk, int way)
{
	return (__u32)((sk * 0x9E3779B97F4A7C15ULL) >> (64 - OWNER_BITS)) ^ way;
}

static __always_inline __u32 owner_check(__u64 sk, __u64 cookie, __u64 cgroup, const __u64 *comm,
					 __u32 pid)
{
	__u64 x = sk ^ (cookie * 13) ^ (cgroup * 31) ^ (comm[0] * 7) ^ (comm[1] * 3) ^ pid;
	return (__u32)(x ^ (x >> 32)) | 1;
}

/* A slot a connect may take: empty, its own, or a closed socket's. */
static __always_inline int owner_free(const struct owner *o, __u64 key)
{
	return !o->sk || (o->sk & OWNER_CLOSED) || o->sk == key;
}

/* Every slot that holds socket `key` (closed or not) gets `to` in its place. */
static __always_inline void owner_rewrite(__u64 key, __u64 to)
{
#pragma unroll
	for (int way = 0; way < 2; way++) {
		__u32 slot = owner_slot(key, way);
		struct owner *o = owners.lookup(&slot);
		if (o && (o->sk & ~OWNER_CLOSED) == key)
			o->sk = to;
	}
}

#ifdef HAVE_TP_ACCEPT
/* The inode number of a full socket's file (0 when it has none: orphaned
 * by close()). */
static __always_inline __u64 sock_inode(const void *sk, int direct)
{
	const void *sock = LD(const void *, sk, OFF_SK_SOCKET, direct);
	const void *file = sock ? LD(const void *, sock, OFF_SOCKET_FILE, direct) : 0;
	const void *inode = file ? LD(const void *, file, OFF_FILE_INODE, direct) : 0;
	return inode ? LD(__u64, inode, OFF_INODE_INO, direct) : 0;
}
#endif

/* Whether an owner entry guarded by `guard` (struct owner.cookie) is the
 * socket `sk` whose cookie is `cookie`, not another one at the same address:
 * BTF: the cookies agree (raw tracepoints: tcp_destroy_sock empties the
 * entries instead); an entry learned by the accept() syscalls: the same
 * socket file; `full`: sk is a full socket. */
static __always_inline int owner_same_socket(const void *sk, __u64 guard, __u64 cookie,
					     int full, int direct)
{
#ifdef HAVE_TP_ACCEPT
	if (guard & OWNER_BY_INODE)
		return full && (OWNER_BY_INODE | sock_inode(sk, direct)) == guard;
#endif
#ifdef CALL_SOCKET_COOKIE
	return cookie && guard == cookie;
#else
	return 1;
#endif
}

/* The owner of the socket `sk` whose cookie is `cookie` (BTF: the reset's
 * own); `full`: sk is a full socket. */
static __always_inline void fill_owner(struct rst_event *e, const void *sk, __u64 cookie,
				       int full, int direct)
{
	__u64 key = sk_key(sk, direct);
#pragma unroll
	for (int way = 0; way < 2; way++) {
		__u32 slot = owner_slot(key, way);
		struct owner *o = owners.lookup(&slot);
		if (!o || (o->sk & ~OWNER_CLOSED) != key)
			continue;
		__u64 ocookie = o->cookie, cgroup = o->cgroup, comm[2] = {o->comm[0], o->comm[1]};
		__u32 pid = o->pid;
		if (o->check != owner_check(key, ocookie, cgroup, comm, pid) ||
		    (o->sk & ~OWNER_CLOSED) != key)
			continue;  /* being rewritten: unknown rather than wrong */
		if (!owner_same_socket(sk, ocookie, cookie, full, direct))
			continue;
		e->pid = pid;
		e->cgroup = cgroup;
		__builtin_memcpy(e->comm, comm, sizeof(e->comm));
		e->flags |= EVF_OWNER;
		return;
	}
}

#ifdef OFF_KN_ID
/* A cgroup v2's id (what bpf_get_current_cgroup_id gives): its kernfs
 * node's id, 0 for no cgroup. */
static __always_inline __u64 cgrp_kn_id(const void *cg, int direct)
{
	const void *kn = cg ? LD(const void *, cg, OFF_CGROUP_KN, direct) : 0;
	return kn ? LD(__u64, kn, OFF_KN_ID, direct) : 0;
}
#endif

/* The current task's process id, name and cgroup v2 id. With BTF the
 * task's fields are plain loads (these three helpers together cost ~90 ns
 * per connect on a kernel whose every return goes through a mitigation
 * thunk); otherwise, or where BTF lacks a field, the helpers. */
#if defined(TP_BTF) && defined(CALL_TASK_BTF) && defined(OFF_TASK_TGID) && defined(OFF_KN_ID)
#define OWNER_FROM_TASK 1
#endif
static __always_inline void current_owner(__u64 *cgroup, __u64 *comm, __u32 *pid)
{
#ifdef OWNER_FROM_TASK
	const void *task = bpf_get_current_task_btf();
	const void *cset = LD(const void *, task, OFF_TASK_CGROUPS, 1);

	*cgroup = cgrp_kn_id(cset ? LD(const void *, cset, OFF_CSS_SET_DFL_CGRP, 1) : 0, 1);
	*pid = LD(__u32, task, OFF_TASK_TGID, 1);
	/* the name up to its NUL; the decoder ignores what follows */
	comm[0] = LD(__u64, task, OFF_TASK_COMM, 1);
	comm[1] = LD(__u64, task, OFF_TASK_COMM + 8, 1);
#else
	*cgroup = bpf_get_current_cgroup_id();
	*pid = bpf_get_current_pid_tgid() >> 32;
	comm[0] = comm[1] = 0;
	bpf_get_current_comm(comm, 16);
#endif
}

static __always_inline void ev_drop(struct rst_event *e)
{
#if defined(USE_PCRING)
	e->kind = 0;  /* the slot still has to be published: the consumer skips it */
	ev_send(0, e);
#elif defined(USE_RINGBUF)
	events.ringbuf_discard(e, BPF_RB_NO_WAKEUP);
#endif
}

/* A socket's addresses (sock_common, valid for full and mini sockets) as
 * the reset's source and destination: a sent reset leaves the local end,
 * a received one arrives at it. */
static __always_inline void sock_addrs(struct rst_event *e, const void *sk, const void *tp,
				       const __u64 *head, int sent, int direct)
{
	__u16 fam = SKF(__u16, OFF_SK_FAMILY), num, rport;
	__u64 *local = (__u64 *)(sent ? e->saddr : e->daddr);
	__u64 *remote = (__u64 *)(sent ? e->daddr : e->saddr);

	/* the port as sent on the wire (skc_num is zeroed when a closing socket
	 * leaves the hash); minisocks have only sock_common's */
	if (tp)
		num = ntohs(LD(__u16, tp, OFF_INET_SPORT, direct));
	else
		num = SKF(__u16, OFF_SK_NUM);
	rport = ntohs(SKF(__u16, OFF_SK_DPORT));
	e->family = fam;
	if (fam == AF_INET6) {
		local[0] = SKF(__u64, OFF_SK_V6_RCV_SADDR);
		local[1] = SKF(__u64, OFF_SK_V6_RCV_SADDR + 8);
		remote[0] = SKF(__u64, OFF_SK_V6_DADDR);
		remote[1] = SKF(__u64, OFF_SK_V6_DADDR + 8);
	} else {
		*(__u32 *)local = SKF(__u32, OFF_SK_RCV_SADDR);
		*(__u32 *)remote = SKF(__u32, OFF_SK_DADDR);
	}
	e->sport = sent ? num : rport;
	e->dport = sent ? rport : num;
}

/* The segment's TCP flags and, with `addrs`, its addresses reversed, read
 * through headers cast to the kernel's iphdr/ipv6hdr and tcphdr: plain loads
 * at their wire offsets. */
static __always_inline void skb_trigger_cast(struct rst_event *e, const unsigned char *head,
					     __u16 nh, __u16 th, int addrs)
{
	const void *ip = rdonly_cast(head + nh, BTF_IPHDR);
	const void *tcp = rdonly_cast(head + th, BTF_TCPHDR);

	e->trigger_flags = LD_DIRECT(__u8, tcp, 13);
	e->flags |= EVF_TRIGGER;
	if (!addrs)
		return;
	e->sport = ntohs(LD_DIRECT(__u16, tcp, 2));
	e->dport = ntohs(LD_DIRECT(__u16, tcp, 0));
	if ((LD_DIRECT(__u8, ip, 0) >> 4) == 6) {
		const void *ip6 = rdonly_cast(head + nh, BTF_IPV6HDR);
		e->family = AF_INET6;
		*(__u64 *)e->saddr = LD_DIRECT(__u64, ip6, 24);
		*(__u64 *)(e->saddr + 8) = LD_DIRECT(__u64, ip6, 32);
		*(__u64 *)e->daddr = LD_DIRECT(__u64, ip6, 8);
		*(__u64 *)(e->daddr + 8) = LD_DIRECT(__u64, ip6, 16);
	} else {
		e->family = AF_INET;
		*(__u32 *)e->saddr = LD_DIRECT(__u32, ip, 16);
		*(__u32 *)e->daddr = LD_DIRECT(__u32, ip, 12);
	}
}

/* The segment a reset answers: its TCP flags (a reset that answers a SYN
 * is a refused connection) and, with `addrs`, its addresses reversed (the
 * reset goes from the segment's destination back to its source). */
static __always_inline void skb_trigger(struct rst_event *e, const void *skb, int addrs, int direct)
{
	__u64 blk[SKB_BLK_WORDS] = {}, pkt[8] = {};
	const unsigned char *head;
	__u16 nh, th;
	__u8 tcph[14] = {};

	if (!skb)
		return;
	if (direct) {
		head = LD(const unsigned char *, skb, OFF_SKB_HEAD, 1);
		nh = LD(__u16, skb, OFF_SKB_NETWORK_HEADER, 1);
		th = LD(__u16, skb, OFF_SKB_TRANSPORT_HEADER, 1);
		if (CAST) {
			if (head)
				skb_trigger_cast(e, head, nh, th, addrs);
			return;
		}
	} else {
		if (bpf_probe_read_kernel(blk, sizeof(blk), (const char *)skb + SKB_BLK_START))
			return;
		head = SKB_AT(blk, OFF_SKB_HEAD, const unsigned char *);
		nh = SKB_AT(blk, OFF_SKB_NETWORK_HEADER, __u16);
		th = SKB_AT(blk, OFF_SKB_TRANSPORT_HEADER, __u16);
	}
	/* without the cast, packet bytes are probe reads either way. The
	 * IP header's first 40 bytes hold both addresses (v4 and v6); with no
	 * IP options or extension headers the TCP header's flags follow within
	 * the same 64 bytes, so one read serves. */
	if (!head || bpf_probe_read_kernel(pkt, sizeof(pkt), head + nh))
		return;
	if (th == nh + 20)
		__builtin_memcpy(tcph, (const char *)pkt + 20, sizeof(tcph));
	else if (th == nh + 40)
		__builtin_memcpy(tcph, (const char *)pkt + 40, sizeof(tcph));
	else if (bpf_probe_read_kernel(tcph, sizeof(tcph), head + th))
		return;
	e->trigger_flags = tcph[13];
	e->flags |= EVF_TRIGGER;
	if (!addrs)
		return;
	e->sport = (tcph[2] << 8) | tcph[3];
	e->dport = (tcph[0] << 8) | tcph[1];
	if ((((__u8 *)pkt)[0] >> 4) == 6) {
		e->family = AF_INET6;
		__builtin_memcpy(e->saddr, (const char *)pkt + 24, 16);
		__builtin_memcpy(e->daddr, (const char *)pkt + 8, 16);
	} else {
		e->family = AF_INET;
		__builtin_memcpy(e->saddr, (const char *)pkt + 16, 4);
		__builtin_memcpy(e->daddr, (const char *)pkt + 12, 4);
	}
}

#ifdef STORM_RATE
/* Storm mode. Below STORM_RATE resets per second on a CPU nothing changes;
 * above it, a reset is counted in storm_aggs under its key (struct
 * rst_agg_key) and only the first STORM_SAMPLE of each key per interval and
 * CPU go out as full events. Inside a storm of identical refusals the
 * detail of every one adds nothing a count does not say, and building,
 * queuing, draining and writing it costs the storm's CPU.
 *
 * The rate is judged per window of STORM_WINDOW_NS on each CPU: a CPU is hot
 * for the window after one with STORM_RATE's share of resets, and at once
 * when the current window passes it; a window with nothing before it starts
 * cold. Every reset is either an event or a count: a key the hash cannot
 * take (full) goes out in full. */
#define STORM_WINDOW_NS 100000000ULL
#define STORM_WINDOW_MAX (STORM_RATE / 10)
#define STORM_KEYS 2048
/* RFC 793's SYN bit of the TCP flags byte */
#define TCPHDR_SYN 0x02
struct storm_rate {
	__u64 win;   /* start of the current window */
	__u32 n;     /* resets in it */
	__u32 hot;
};
BPF_PERCPU_ARRAY(storm_rates, struct storm_rate, 1);
BPF_PERCPU_HASH(storm_aggs, struct rst_agg_key, struct rst_agg_val, STORM_KEYS);
/* the interval the programs count into; user space moves it on and then
 * drains the previous one, which no program writes any more */
BPF_ARRAY(storm_epoch, __u32, 1);
/* where a storm reset's key fields are worked out (the event helpers fill
 * a struct rst_event; it is too large for the stack beside the rest) */
BPF_PERCPU_ARRAY(storm_ev, struct rst_event, 1);

static __always_inline int storm_hot(__u64 now)
{
	int zero = 0;
	struct storm_rate *r = storm_rates.lookup(&zero);

	if (!r)
		return 0;
	if (now - r->win >= STORM_WINDOW_NS) {
		/* hot if the window just ended was, and it was the last one */
		r->hot = r->n >= STORM_WINDOW_MAX && now - r->win < 2 * STORM_WINDOW_NS;
		r->win = now;
		r->n = 0;
	}
	r->n++;
	return r->hot || r->n > STORM_WINDOW_MAX;
}

/* 1: the reset was counted (or is one the port filter leaves out), 0: send
 * it as a full event. */
static __always_inline int storm_count(const void *sk, const void *skb, int sent, __u32 reason,
				       int has_reason, __u32 ns, const __u64 *head, __u64 now,
				       int direct)
{
	int zero = 0;
	struct rst_event *e = storm_ev.lookup(&zero);
	__u32 *epoch = storm_epoch.lookup(&zero);
	struct rst_agg_key k = {};
	struct rst_agg_val *v, nv = {};

	if (!e || !epoch)
		return 0;
	__builtin_memset(e, 0, offsetof(struct rst_event, comm));
	if (sk) {
		__u8 st = SKF(__u8, OFF_SK_STATE);
		e->state = st;
		sock_addrs(e, sk, tcp_sk_of(sk, st, direct), head, sent, direct);
		e->flags |= EVF_HAS_SOCK;
		if (sent)
			skb_trigger(e, skb, 0, direct);
	} else {
		skb_trigger(e, skb, 1, direct);
	}
	if (!ports_wanted(e->sport, e->dport))
		return 1;
	__builtin_memcpy(k.saddr, e->saddr, 16);
	__builtin_memcpy(k.daddr, e->daddr, 16);
	k.netns = ns;
	k.epoch = *epoch;
	if (has_reason) {
		k.reason = reason;
		e->flags |= EVF_REASON;
	}
	if (e->sport <= e->dport)
		k.sport = e->sport;
	else
		k.dport = e->dport;
	k.dir = sent ? DIR_SENT : DIR_RECV;
	k.family = e->family;
	k.state = e->state;
	k.flags = e->flags & (EVF_HAS_SOCK | EVF_REASON | EVF_TRIGGER);
	if ((e->flags & EVF_TRIGGER) && (e->trigger_flags & TCPHDR_SYN))
		k.aflags |= AGGF_SYN;
	v = storm_aggs.lookup(&k);
	if (!v) {
		/* new this interval: sent in full. Should another CPU have made
		 * the key meanwhile, or the hash be full, the insert fails and
		 * the reset is still a full event: nothing uncounted. */
		nv.sampled = 1;
		storm_aggs.insert(&k, &nv);
		return 0;
	}
	if (v->sampled < STORM_SAMPLE) {
		v->sampled++;
		return 0;
	}
	if (!v->count)
		v->first_ns = now;
	v->count++;
	v->last_ns = now;
	return 1;
}
#endif

/* One reset: sent by this host (sk may be NULL: no socket matched the
 * segment `skb`) or received by the local socket `sk`. */
static __always_inline void emit_reset(void *ctx, const void *sk, const void *skb, int sent,
				       __u32 reason, int has_reason, int direct)
{
	struct rst_event *e;
#ifdef BENCH_MINIMAL
	e = ev_new();
	if (e) {
		e->kind = EV_RESET;
		e->dir = sent ? DIR_SENT : DIR_RECV;
		ev_send(ctx, e);
	}
	return;
#endif
	__u64 head[SK_HEAD_WORDS] = {};
	const void *net = 0, *tp = 0;
	__u32 ns;
	__u8 st = 0;

	if (sk) {
		if (!direct && bpf_probe_read_kernel(head, sizeof(head), sk))
			return;
		net = SKF(const void *, OFF_SK_NET);
		ns = net_inum(net, direct);
	} else {
		/* the verifier holds BTF tracepoints to their NULL checks */
		if (!skb)
			return;
		ns = dev_netns(skb, direct);
	}
	if (!netns_wanted(ns))
		return;
#ifdef STORM_RATE
	__u64 now = bpf_ktime_get_ns();
	if (storm_hot(now) && storm_count(sk, skb, sent, reason, has_reason, ns, head, now, direct))
		return;
#endif
	e = ev_new();
	if (!e)
		return;
	e->kind = EV_RESET;
	e->dir = sent ? DIR_SENT : DIR_RECV;
	e->netns = ns;
	if (has_reason) {
		e->reason = reason;
		e->flags |= EVF_REASON;
	}
	if (sk) {
		st = SKF(__u8, OFF_SK_STATE);
		e->state = st;
		tp = tcp_sk_of(sk, st, direct);
		sock_addrs(e, sk, tp, head, sent, direct);
		fill_sock(e, sk, tp, head, net, direct);
		fill_owner(e, sk, e->cookie, tp != 0, direct);
#ifdef OFF_SK_CGROUP
		if (!(e->flags & EVF_OWNER) && tp) {
			/* no owner learned (a socket connected or accepted before
			 * tracing began): the socket's own cgroup still names its pod */
			e->cgroup = cgrp_kn_id(LD(const void *, sk, OFF_SK_CGROUP, direct), direct);
			if (e->cgroup)
				e->flags2 |= EVF2_SK_CGROUP;
		}
#endif
		if (sent)
			skb_trigger(e, skb, 0, direct);
	} else {
		skb_trigger(e, skb, 1, direct);
		e->dev_netns = ns;
	}
	if (!ports_wanted(e->sport, e->dport)) {
		ev_drop(e);
		return;
	}
	ev_send(ctx, e);
}

#ifdef HAVE_TP_SEND_RESET
TP_PROBE(tcp_send_reset)
{
	BENCH_EARLY();
	const void *sk = (const void *)TP_ARG(ARG_SR_SK);
	const void *skb = (const void *)TP_ARG(ARG_SR_SKB);
#ifdef WANT_KPROBE_SEND_RESET
	/* before 6.10 this tracepoint fires only with a socket; the kprobe
	 * sees the no-socket resets, so none is counted twice */
	if (!sk)
		return 0;
#endif
#ifdef HAVE_TP_SEND_RESET_REASON
	emit_reset(ctx, sk, skb, 1, (__u32)TP_ARG(ARG_SR_REASON), 1, DIRECT);
#else
	emit_reset(ctx, sk, skb, 1, 0, 0, DIRECT);
#endif
	return 0;
}
#endif

#ifdef HAVE_TP_RECEIVE_RESET
TP_PROBE(tcp_receive_reset)
{
	BENCH_EARLY();
	emit_reset(ctx, (const void *)TP_ARG(ARG_RR_SK), 0, 0, 0, 0, DIRECT);
	return 0;
}
#endif

/* The current task owns socket `key` (`cookie`: see struct owner). */
static __always_inline void owner_learn(__u64 key, __u64 cookie)
{
	__u64 cgroup, comm[2];
	__u32 pid, oslot = owner_slot(key, 0);
	struct owner *o = owners.lookup(&oslot);

	current_owner(&cgroup, comm, &pid);
	if (o && !owner_free(o, key)) {
		/* first way taken by another live socket: the second, unless
		 * that one is taken too (then the first is overwritten) */
		__u32 slot2 = owner_slot(key, 1);
		struct owner *o2 = owners.lookup(&slot2);
		if (o2 && owner_free(o2, key))
			o = o2;
	}
	if (o) {
		o->sk = 0;
		o->cookie = cookie;
		o->cgroup = cgroup;
		o->comm[0] = comm[0];
		o->comm[1] = comm[1];
		o->pid = pid;
		o->check = owner_check(key, cookie, cgroup, comm, pid);
		o->sk = key;
	}
}

#ifdef HAVE_TP_SET_STATE
TP_PROBE(inet_sock_set_state)
{
	BENCH_SKIP();
	const void *sk = (const void *)TP_ARG(ARG_SS_SK);
	int oldstate = (int)TP_ARG(ARG_SS_OLD);
	int newstate = (int)TP_ARG(ARG_SS_NEW);

	if (LD(__u16, sk, OFF_SK_PROTOCOL, DIRECT) != IPPROTO_TCP)
		return 0;
	/* TCP state transitions counted here, so a state distribution costs
	 * nothing per event in user space: slot = old * 16 + new */
	int slot = ((oldstate & 15) << 4) | (newstate & 15);
	__u64 *cnt = tcp_transitions.lookup(&slot);
	if (cnt)
		*cnt += 1;
	if (newstate == TCP_SYN_SENT_) {
		__u64 cookie = 0;
#ifdef CALL_SOCKET_COOKIE
		cookie = bpf_get_socket_cookie((void *)sk);
#endif
		owner_learn(sk_key(sk, DIRECT), cookie);
	} else if (newstate == TCP_CLOSE_) {
		__u64 key = sk_key(sk, DIRECT);
		owner_rewrite(key, key | OWNER_CLOSED);
	}
	return 0;
}
#endif

#ifdef HAVE_TP_DESTROY_SOCK
TP_PROBE(tcp_destroy_sock)
{
	BENCH_SKIP();
	/* only where no cookie tells sockets apart (without CALL_SOCKET_COOKIE): the
	 * socket's memory may be reused by another socket, so forget it and no
	 * reset is ever attributed to a wrong process */
	owner_rewrite(sk_key((const void *)TP_ARG(ARG_DS_SK), DIRECT), 0);
	return 0;
}
#endif

#if defined(HAVE_FEXIT_ACCEPT) && defined(TP_BTF)
/* inet_csk_accept() returning an accepted socket, in the accepting task
 * (loaded by the tracer as an fexit program, like the BTF tracepoints):
 * its cookie is made here, as connect()'s is. */
int fexit__inet_csk_accept(unsigned long long *ctx)
{
	BENCH_SKIP();
	const void *sk = (const void *)ctx[ARG_ACCEPT_RET];

	if (!sk || LD(__u16, sk, OFF_SK_PROTOCOL, 1) != IPPROTO_TCP)
		return 0;
#ifdef CALL_SOCKET_COOKIE
	owner_learn(sk_key(sk, 1), bpf_get_socket_cookie((void *)sk));
#else
	owner_learn(sk_key(sk, 1), 0);
#endif
	return 0;
}
#endif

#ifdef HAVE_TP_ACCEPT
/* accept() returning descriptor `fd` to the current task: the owner of the
 * TCP socket behind it. A syscall tracepoint, not a BTF one, so every read
 * is a probe read (accept()s are few: this is no storm's path). The file
 * table is read as the syscall leaves it; should another thread replace
 * `fd` in between, the entry names another file's inode, which no reset
 * on this socket can match (owner_same_socket): unknown, never wrong. */
static __always_inline void accept_learn(long fd)
{
	const void *task = (const void *)bpf_get_current_task();
	const void *files, *fdt, *fds, *file = 0, *sock, *sk, *inode;
	__u64 ino, key;

	if (fd < 0)
		return;
	files = LD(const void *, task, OFF_TASK_FILES, 0);
	fdt = files ? LD(const void *, files, OFF_FILES_FDT, 0) : 0;
	if (!fdt || (__u64)fd >= LD(__u32, fdt, OFF_FDT_MAX_FDS, 0))
		return;
	fds = LD(const void *, fdt, OFF_FDT_FD, 0);
	if (fds)
		bpf_probe_read_kernel(&file, sizeof(file), (const char *)fds + fd * sizeof(void *));
	sock = file ? LD(const void *, file, OFF_FILE_PRIVATE, 0) : 0;
	sk = sock ? LD(const void *, sock, OFF_SOCKET_SK, 0) : 0;
	inode = file ? LD(const void *, file, OFF_FILE_INODE, 0) : 0;
	if (!sk || !inode || LD(__u16, sk, OFF_SK_PROTOCOL, 0) != IPPROTO_TCP)
		return;
	ino = LD(__u64, inode, OFF_INODE_INO, 0);
	if (!ino)
		return;
#ifdef TP_BTF
	/* the key BTF programs compute (sk_key): the distance from the same
	 * map value, here taken as a number */
	int zero = 0;
	struct owner *base = owners.lookup(&zero);
	__u64 at = 0;
	if (!base)
		return;
	bpf_probe_read_kernel(&at, sizeof(at), &base);
	key = (__u64)sk - at;
#else
	key = (__u64)sk;
#endif
	owner_learn(key, OWNER_BY_INODE | ino);
}

TRACEPOINT_PROBE(syscalls, sys_exit_accept4)
{
	BENCH_SKIP();
	accept_learn(args->ret);
	return 0;
}

#ifdef HAVE_TP_ACCEPT_PLAIN
TRACEPOINT_PROBE(syscalls, sys_exit_accept)
{
	BENCH_SKIP();
	accept_learn(args->ret);
	return 0;
}
#endif
#endif

#ifdef HAVE_TP_KFREE_SKB
/* The dropped packet's flow in its own direction, as netfilter saw it (on a
 * router's forward path: after DNAT): its IP header's family, addresses
 * and L4 protocol (EVF2_L3) and, for a TCP segment, its ports and flags
 * (EVF_TRIGGER). The TCP header is found from the IP header, not from
 * transport_header: at a netfilter hook that may be unset (a packet this
 * host makes before its TCP layer set it) or still equal to the network
 * header (the receive path resets it there; bridge hooks see it so), and
 * for IPv6 it marks the first extension header. Read: a TCP header right
 * after the fixed IPv6 header (no extension headers walked), none of a
 * later IPv4 fragment (it carries none). Probe reads, as skb_trigger's
 * fallback: the first 64 bytes hold both headers without IP options. */
static __always_inline void skb_flow(struct rst_event *e, const void *skb, int direct)
{
	__u64 blk[SKB_BLK_WORDS] = {}, pkt[8] = {};
	const __u8 *ip = (const __u8 *)pkt;
	const unsigned char *head;
	__u16 nh, eth, frag;
	__u8 l4, tcph[14] = {};
	__u32 thoff;

	if (!skb)
		return;
	if (direct) {
		head = LD(const unsigned char *, skb, OFF_SKB_HEAD, 1);
		nh = LD(__u16, skb, OFF_SKB_NETWORK_HEADER, 1);
		eth = LD(__u16, skb, OFF_SKB_PROTOCOL, 1);
	} else {
		if (bpf_probe_read_kernel(blk, sizeof(blk), (const char *)skb + SKB_BLK_START))
			return;
		head = SKB_AT(blk, OFF_SKB_HEAD, const unsigned char *);
		nh = SKB_AT(blk, OFF_SKB_NETWORK_HEADER, __u16);
		eth = SKB_AT(blk, OFF_SKB_PROTOCOL, __u16);
	}
	if (!head || bpf_probe_read_kernel(pkt, sizeof(pkt), head + nh))
		return;
	/* the ethertype (IEEE: IPv4 0x0800, IPv6 0x86DD) and the header's own
	 * version agree: an IP packet, not an ARP or bridged frame */
	if ((ip[0] >> 4) == 4 && ntohs(eth) == 0x0800) {
		e->family = AF_INET;
		__builtin_memcpy(e->saddr, ip + 12, 4);
		__builtin_memcpy(e->daddr, ip + 16, 4);
		l4 = ip[9];
		thoff = (ip[0] & 15) * 4;
		frag = ((ip[6] & 0x1f) << 8) | ip[7];
	} else if ((ip[0] >> 4) == 6 && ntohs(eth) == 0x86DD) {
		e->family = AF_INET6;
		__builtin_memcpy(e->saddr, ip + 8, 16);
		__builtin_memcpy(e->daddr, ip + 24, 16);
		l4 = ip[6];
		thoff = 40;
		frag = 0;
	} else {
		return;
	}
	e->proto = l4;
	e->flags2 |= EVF2_L3;
	if (l4 != IPPROTO_TCP || frag || thoff < 20)
		return;
	if (thoff == 20)
		__builtin_memcpy(tcph, ip + 20, sizeof(tcph));
	else if (thoff == 40)
		__builtin_memcpy(tcph, ip + 40, sizeof(tcph));
	else if (bpf_probe_read_kernel(tcph, sizeof(tcph), head + nh + thoff))
		return;
	e->sport = (tcph[0] << 8) | tcph[1];
	e->dport = (tcph[2] << 8) | tcph[3];
	e->trigger_flags = tcph[13];
	e->flags |= EVF_TRIGGER;
}

TP_PROBE(kfree_skb)
{
	BENCH_SKIP();
	struct rst_event *e;
	const void *skb = (const void *)TP_ARG(ARG_KS_SKB);
	__u32 ns;

#ifdef CT_DROP_DERIVED
	/* Before 5.17 the tracepoint has no reason, only the code address
	 * that freed the packet: a netfilter drop is one freed inside
	 * netfilter's verdict handling (NF_DROP_SITE: those functions' code
	 * ranges in this boot's kernel, from /proc/kallsyms). */
	if (!NF_DROP_SITE((__u64)TP_ARG(ARG_KS_LOCATION)))
		return 0;
#else
	if ((__u32)TP_ARG(ARG_KS_REASON) != NETFILTER_DROP_REASON)
		return 0;
#endif
	ns = skb_netns(skb, DIRECT);
	if (!netns_wanted(ns))
		return 0;
	e = ev_new();
	if (!e)
		return 0;
	e->kind = EV_CT_DROP;
	e->netns = ns;
#ifdef CT_DROP_DERIVED
	e->flags2 |= EVF2_REASON_DERIVED;  /* no kernel value to carry */
#else
	e->reason = NETFILTER_DROP_REASON;
	e->flags |= EVF_REASON;
#endif
	/* L3 protocol (ethertype) of the dropped packet */
	e->rport = ntohs(LD(__u16, skb, OFF_SKB_PROTOCOL, DIRECT));
	skb_flow(e, skb, DIRECT);
	ev_send(ctx, e);
	return 0;
}
#endif

#ifdef HAVE_TP_CONSOLE
TP_PROBE(console)
{
	BENCH_SKIP();
	/* Only conntrack's and IPVS's lines: "nf_conntrack: table full in
	 * netns N, dropping packet" (rate-limited by the kernel). */
	struct rst_event *e;
	char head[12] = {};
	const char *msg = (const char *)TP_ARG(ARG_CON_TEXT);

	bpf_probe_read_kernel(head, sizeof(head), msg);
	if (!(head[0] == 'n' && head[1] == 'f' && head[2] == '_' && head[3] == 'c' &&
	      head[4] == 'o' && head[5] == 'n' && head[6] == 'n' && head[7] == 't') &&
	    !(head[0] == 'I' && head[1] == 'P' && head[2] == 'V' && head[3] == 'S'))
		return 0;
	e = ev_new();
	if (!e)
		return 0;
	e->kind = EV_CT_FULL;
	__builtin_memset(e->text, 0, sizeof(e->text));
	bpf_probe_read_kernel_str(e->text, sizeof(e->text), msg);
	ev_send(ctx, e);
	return 0;
}
#endif

#ifdef WANT_KPROBE_SEND_RESET
/* Kernels before 6.10 do not trace no-socket resets: catch them in
 * tcp_v4_send_reset / tcp_v6_send_reset(const struct sock *sk, struct sk_buff *skb, ...). */
int kp_send_reset(struct pt_regs *ctx)
{
	BENCH_EARLY();
	const void *sk = (const void *)PT_REGS_PARM1(ctx);
	const void *skb = (const void *)PT_REGS_PARM2(ctx);
	if (!sk && skb)
		emit_reset(ctx, 0, skb, 1, 0, 0, 0);
	return 0;
}
#endif

#ifdef WANT_KPROBE_TCP_RESET
/* Fallback where tcp:tcp_receive_reset is missing: tcp_reset(sk, skb). */
int kp_tcp_reset(struct pt_regs *ctx)
{
	BENCH_EARLY();
	emit_reset(ctx, (const void *)PT_REGS_PARM1(ctx), 0, 0, 0, 0, 0);
	return 0;
}
#endif

#ifdef WANT_KPROBE_IPVS_EXPIRE
#if !defined(OFF_NETNS_IPVS_NET) && defined(NET_NAMESPACE_LIST)
/* The namespace of an IPVS instance (struct netns_ipvs) where BTF does not
 * describe it: the struct net on the kernel's namespace list
 * (NET_NAMESPACE_LIST, its head's address) whose `ipvs` is this instance.
 * Found once per instance and remembered; a remembered namespace counts
 * only while its `ipvs` still points back (an instance freed with its
 * namespace and its memory reused by another is found again). */
#define NETNS_WALK_MAX 1024
BPF_HASH(ipvs_nets, __u64, __u64, 256);

static __always_inline __u32 ipvs_netns(const void *ipvs)
{
	const char *head = (const char *)NET_NAMESPACE_LIST, *node;
	__u64 key = (__u64)ipvs, *hit;

	if (!ipvs)
		return 0;
	hit = ipvs_nets.lookup(&key);
	if (hit && LD(const void *, (const char *)*hit, OFF_NET_IPVS, 0) == ipvs)
		return net_inum((const void *)*hit, 0);
	node = LD(const char *, head, 0, 0);  /* list_head.next */
	for (int i = 0; i < NETNS_WALK_MAX && node && node != head; i++) {
		const char *net = node - OFF_NET_LIST;
		if (LD(const void *, net, OFF_NET_IPVS, 0) == ipvs) {
			__u64 val = (__u64)net;
			ipvs_nets.update(&key, &val);
			return net_inum(net, 0);
		}
		node = LD(const char *, node, 0, 0);
	}
	return 0;  /* more namespaces than the walk's bound: unknown */
}
#endif

/* ip_vs_conn_expire(struct timer_list *t) is the timer callback that drops
 * an idle IPVS entry; there is no tracepoint for it. The entry is the
 * ip_vs_conn containing the timer (offsets from the ip_vs module's BTF, or
 * where there is none, from this kernel's own headers: bpf/layout.c). */
int kp_ip_vs_conn_expire(struct pt_regs *ctx)
{
	BENCH_SKIP();
	const char *cp = (const char *)PT_REGS_PARM1(ctx) - OFF_IPVS_TIMER;
	struct rst_event *e;
	__u16 cport, vport, dport;
	__u32 ns = 0;

	const void *ipvs = LD(const void *, cp, OFF_IPVS_IPVS, 0);
#if defined(OFF_NETNS_IPVS_NET)
	ns = ipvs ? net_inum(LD(const void *, ipvs, OFF_NETNS_IPVS_NET, 0), 0) : 0;
#elif defined(NET_NAMESPACE_LIST)
	ns = ipvs_netns(ipvs);
#else
	(void)ipvs;
#endif
	/* an unknown namespace (0: neither way exists here, or the walk gave
	 * up) passes the namespace filter: only the port filter applies */
	if (ns && !netns_wanted(ns))
		return 0;
	cport = ntohs(LD(__u16, cp, OFF_IPVS_CPORT, 0));
	vport = ntohs(LD(__u16, cp, OFF_IPVS_VPORT, 0));
	dport = ntohs(LD(__u16, cp, OFF_IPVS_DPORT, 0));
	if (!ports_wanted(vport, dport))
		return 0;
	e = ev_new();
	if (!e)
		return 0;
	e->kind = EV_IPVS_EXPIRE;
	e->netns = ns;
	e->family = LD(__u16, cp, OFF_IPVS_AF, 0);
	e->proto = LD(__u16, cp, OFF_IPVS_PROTOCOL, 0);
	e->ipvs_state = LD(__u16, cp, OFF_IPVS_STATE, 0);
	e->sport = cport;
	e->dport = vport;
	e->rport = dport;
	bpf_probe_read_kernel(e->saddr, 16, cp + OFF_IPVS_CADDR);
	bpf_probe_read_kernel(e->daddr, 16, cp + OFF_IPVS_VADDR);
	bpf_probe_read_kernel(e->raddr, 16, cp + OFF_IPVS_DADDR);
	ev_send(ctx, e);
	return 0;
}
#endif

#ifdef WANT_KRETPROBE_CT_ALLOC
/* __nf_conntrack_alloc returns ERR_PTR(-ENOMEM) when the table is full
 * and nothing could be early-dropped: the exact moment a flow is refused. */
int kr_nf_conntrack_alloc(struct pt_regs *ctx)
{
	BENCH_SKIP();
	long ret = PT_REGS_RC(ctx);
	struct rst_event *e;
	if (ret < 0 && ret > -4096) {
		e = ev_new();
		if (!e)
			return 0;
		e->kind = EV_CT_ALLOC_FAIL;
		e->reason = (__u32)(-ret);
		ev_send(ctx, e);
	}
	return 0;
}
#endif

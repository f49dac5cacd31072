/* rsttrace kernel programs (bcc).
 *
 * Every struct offset and enum value comes from the running kernel's BTF
 * and reaches this file as a -D flag (tracer/offsets.py); installed headers
 * belong to another kernel here and their layouts are wrong.
 *
 * Hooks are raw tracepoints: the program gets the tracepoint's arguments
 * (sk, skb, reason, ...) without the kernel first building the tracefs
 * record, which costs more than the program itself in a reset storm. Their
 * positions come from the BTF prototype of each tracepoint (ARG_* flags),
 * and everything read through them uses BTF offsets, so one program serves
 * every kernel from 6.1 to 6.18.
 *
 * Configuration (-D): OFF_* offsets, ARG_* argument positions,
 * NETFILTER_DROP_REASON, SOCK_KEEPOPEN_BIT, USE_RINGBUF, RINGBUF_PAGES,
 * RESCUE_PAGES, the filters PORT_WANTED(p) and NETNS_WANTED(ns) (compared
 * against constants: no map lookup per event), HAVE_TP_* for each
 * tracepoint to attach (bcc
 * attaches every RAW_TRACEPOINT_PROBE it compiles), and the optional hooks
 * HAVE_TP_SEND_RESET_REASON, WANT_KPROBE_SEND_RESET, WANT_KPROBE_TCP_RESET,
 * WANT_KPROBE_IPVS_EXPIRE, WANT_KRETPROBE_CT_ALLOC.
 */
#include <uapi/linux/ptrace.h>
#include <linux/socket.h>
#include <linux/in.h>
#include "rsttrace.h"

#define TCP_SYN_SENT_ 2
#define TCP_TIME_WAIT_ 6
#define TCP_NEW_SYN_RECV_ 12

/* Owner of a socket, learned where the kernel runs in the owner's context:
 * connect() moves the socket to SYN_SENT in the calling task. A reset later
 * arrives in softirq context, where `current` is arbitrary.
 *
 * Kept in a plain array indexed by a hash of the socket's address, two
 * slots per socket (no hash-map locking on every connect and close: array
 * lookups are inlined by the verifier). tcp_destroy_sock empties the slot,
 * so a socket reusing the memory never inherits an owner. When both slots
 * are taken the oldest entry is overwritten: that socket's owner becomes
 * unknown, never wrong. `check` folds every field, so an entry torn by two
 * CPUs writing the same slot at once is ignored rather than misread. */
struct owner {
	__u64 sk;
	__u64 cgroup;
	__u64 comm[2];
	__u32 pid;
	__u32 check;
};
#define OWNER_BITS 17
BPF_ARRAY(owners, struct owner, 1 << OWNER_BITS);

/* Never written: it makes bcc describe struct rst_event exactly as clang
 * laid it out, so a test can compare the Python layout with it. */
BPF_ARRAY(layout_check, struct rst_event, 1);

BPF_PERCPU_ARRAY(tcp_transitions, __u64, 256);

/* Events the ring buffer could not take, counted here so loss is never silent. */
BPF_PERCPU_ARRAY(lost, __u64, 1);


#ifdef USE_RINGBUF
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
#ifdef USE_RINGBUF
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
	__builtin_memset(e, 0, sizeof(*e));
	e->ts_ns = bpf_ktime_get_ns();
	return e;
}

static __always_inline void ev_send(void *ctx, struct rst_event *e)
{
#ifdef USE_RINGBUF
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

#define RD(dst, base, off) bpf_probe_read_kernel(&(dst), sizeof(dst), (const char *)(base) + (off))
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
#define SKB_BLK_START MIN2(MIN2(OFF_SKB_PROTOCOL, OFF_SKB_TRANSPORT_HEADER), \
			   MIN2(OFF_SKB_NETWORK_HEADER, OFF_SKB_HEAD))
#define SKB_BLK_END MAX2(MAX2(OFF_SKB_PROTOCOL + 2, OFF_SKB_TRANSPORT_HEADER + 2), \
			 MAX2(OFF_SKB_NETWORK_HEADER + 2, OFF_SKB_HEAD + 8))
_Static_assert(SKB_BLK_END - SKB_BLK_START <= 64, "sk_buff header fields spread too far");
#define SKB_BLK_WORDS ((SKB_BLK_END - SKB_BLK_START + 7) / 8)
#define SKB_AT(blk, off, type) AT(blk, (off) - SKB_BLK_START, type)

static __always_inline __u32 net_inum(const void *net)
{
	__u32 inum = 0;
	if (net)
		RD(inum, net, OFF_NET_INUM);
	return inum;
}

static __always_inline const void *sk_net(const void *sk)
{
	const void *net = 0;
	RD(net, sk, OFF_SK_NET);
	return net;
}

static __always_inline __u32 dev_netns(const void *skb)
{
	const void *dev = 0, *net = 0;
	RD(dev, skb, OFF_SKB_DEV);
	if (!dev)
		return 0;
	RD(net, dev, OFF_DEV_NET);
	return net_inum(net);
}

static __always_inline __u32 skb_netns(const void *skb)
{
	__u32 ns = dev_netns(skb);
	if (!ns) {
		/* locally generated packets may not have a device yet */
		const void *sk = 0;
		RD(sk, skb, OFF_SKB_SK);
		if (sk)
			ns = net_inum(sk_net(sk));
	}
	return ns;
}

/* Socket facts that explain an idle reset: how long nothing was received
 * before it (a write that meets forgotten state has just set lsndtime, so
 * only received activity counts), and the keepalive in force. `head` is
 * the socket's sock_common, already read. */
static __always_inline void fill_sock(struct rst_event *e, const void *sk, const __u64 *head,
				      const void *net)
{
	__u32 rcv_tstamp = 0, lrcvtime = 0, last, kat = 0, kai = 0;
	__u8 kap = 0, st = e->state;

	e->flags |= EVF_HAS_SOCK;
	/* time-wait and request minisocks have no tcp_sock fields */
	if (st == TCP_TIME_WAIT_ || st == TCP_NEW_SYN_RECV_)
		return;
	e->cookie = AT(head, OFF_SK_COOKIE, __u64);
	if (AT(head, OFF_SK_FLAGS, __u64) & (1ULL << SOCK_KEEPOPEN_BIT))
		e->flags |= EVF_KEEPALIVE;
	RD(rcv_tstamp, sk, OFF_TP_RCV_TSTAMP);
	RD(lrcvtime, sk, OFF_ICSK_LRCVTIME);
	last = rcv_tstamp;
	if ((__s32)(lrcvtime - last) > 0)
		last = lrcvtime;
	/* a connecting socket has received nothing yet: no idle time */
	if (st != TCP_SYN_SENT_ && last) {
		e->idle_jiffies = (__u32)bpf_jiffies64() - last;
		e->flags |= EVF_IDLE;
	}

#if OFF_TP_KA_INTVL == OFF_TP_KA_TIME + 4
	{
		__u32 ka[2] = {};
		RD(ka, sk, OFF_TP_KA_TIME);
		kat = ka[0];
		kai = ka[1];
	}
#else
	RD(kat, sk, OFF_TP_KA_TIME);
	RD(kai, sk, OFF_TP_KA_INTVL);
#endif
	RD(kap, sk, OFF_TP_KA_PROBES);
	if (kat)
		e->flags |= EVF_KA_PER_SOCK;
	if (net && (!kat || !kai || !kap)) {
		/* the namespace's sysctls, where the socket has no value of its own */
#if OFF_NET_KA_INTVL == OFF_NET_KA_TIME + 4 && OFF_NET_KA_PROBES == OFF_NET_KA_TIME + 8
		__u32 nka[3] = {};
		RD(nka, net, OFF_NET_KA_TIME);
		if (!kat)
			kat = nka[0];
		if (!kai)
			kai = nka[1];
		if (!kap)
			kap = nka[2];
#else
		if (!kat)
			RD(kat, net, OFF_NET_KA_TIME);
		if (!kai)
			RD(kai, net, OFF_NET_KA_INTVL);
		if (!kap)
			RD(kap, net, OFF_NET_KA_PROBES);
#endif
	}
	e->ka_time = kat;
	e->ka_intvl = kai;
	e->ka_probes = kap;
	e->flags |= EVF_KA;
}

static __always_inline __u32 owner_slot(__u64 sk, int way)
{
	return (__u32)((sk * 0x9E3779B97F4A7C15ULL) >> (64 - OWNER_BITS)) ^ way;
}

static __always_inline __u32 owner_check(__u64 sk, __u64 cgroup, const __u64 *comm, __u32 pid)
{
	__u64 x = sk ^ (cgroup * 31) ^ (comm[0] * 7) ^ (comm[1] * 3) ^ pid;
	return (__u32)(x ^ (x >> 32)) | 1;
}

static __always_inline void fill_owner(struct rst_event *e, __u64 skaddr)
{
#pragma unroll
	for (int way = 0; way < 2; way++) {
		__u32 slot = owner_slot(skaddr, way);
		struct owner *o = owners.lookup(&slot);
		if (!o || o->sk != skaddr)
			continue;
		__u64 cgroup = o->cgroup, comm[2] = {o->comm[0], o->comm[1]};
		__u32 pid = o->pid;
		if (o->check != owner_check(skaddr, cgroup, comm, pid) || o->sk != skaddr)
			continue;  /* being rewritten: unknown rather than wrong */
		e->pid = pid;
		e->cgroup = cgroup;
		__builtin_memcpy(e->comm, comm, sizeof(e->comm));
		e->flags |= EVF_OWNER;
		return;
	}
}

static __always_inline void ev_drop(struct rst_event *e)
{
#ifdef USE_RINGBUF
	events.ringbuf_discard(e, BPF_RB_NO_WAKEUP);
#endif
}

/* A socket's addresses (sock_common, valid for full and mini sockets) as
 * the reset's source and destination: a sent reset leaves the local end,
 * a received one arrives at it. */
static __always_inline void sock_addrs(struct rst_event *e, const void *sk, const __u64 *head,
				       int sent)
{
	__u16 fam = AT(head, OFF_SK_FAMILY, __u16), num, rport;
	__u8 st = AT(head, OFF_SK_STATE, __u8);
	__u8 *local = sent ? e->saddr : e->daddr;
	__u8 *remote = sent ? e->daddr : e->saddr;

	if (st == TCP_TIME_WAIT_ || st == TCP_NEW_SYN_RECV_) {
		/* minisocks are not inet_socks: sock_common's port is all they have */
		num = AT(head, OFF_SK_NUM, __u16);
	} else {
		num = 0;
		RD(num, sk, OFF_INET_SPORT);
		num = ntohs(num);
	}
	rport = ntohs(AT(head, OFF_SK_DPORT, __u16));
	e->family = fam;
	e->state = st;
	if (fam == AF_INET6) {
		__builtin_memcpy(local, (const char *)head + OFF_SK_V6_RCV_SADDR, 16);
		__builtin_memcpy(remote, (const char *)head + OFF_SK_V6_DADDR, 16);
	} else {
		__builtin_memcpy(local, (const char *)head + OFF_SK_RCV_SADDR, 4);
		__builtin_memcpy(remote, (const char *)head + OFF_SK_DADDR, 4);
	}
	e->sport = sent ? num : rport;
	e->dport = sent ? rport : num;
}

/* The segment a reset answers: its TCP flags (a reset that answers a SYN
 * is a refused connection) and, with `addrs`, its addresses reversed (the
 * reset goes from the segment's destination back to its source). */
static __always_inline void skb_trigger(struct rst_event *e, const void *skb, int addrs)
{
	__u64 blk[SKB_BLK_WORDS] = {}, ip[5] = {};
	const unsigned char *head;
	__u8 tcph[14] = {};

	if (!skb || bpf_probe_read_kernel(blk, sizeof(blk), (const char *)skb + SKB_BLK_START))
		return;
	head = SKB_AT(blk, OFF_SKB_HEAD, const unsigned char *);
	if (!head || bpf_probe_read_kernel(tcph, sizeof(tcph),
					   head + SKB_AT(blk, OFF_SKB_TRANSPORT_HEADER, __u16)))
		return;
	e->trigger_flags = tcph[13];
	e->flags |= EVF_TRIGGER;
	if (!addrs)
		return;
	e->sport = (tcph[2] << 8) | tcph[3];
	e->dport = (tcph[0] << 8) | tcph[1];
	/* the first 40 bytes of the IP header hold both addresses (v4 and v6) */
	bpf_probe_read_kernel(ip, sizeof(ip), head + SKB_AT(blk, OFF_SKB_NETWORK_HEADER, __u16));
	if ((((__u8 *)ip)[0] >> 4) == 6) {
		e->family = AF_INET6;
		__builtin_memcpy(e->saddr, (const char *)ip + 24, 16);
		__builtin_memcpy(e->daddr, (const char *)ip + 8, 16);
	} else {
		e->family = AF_INET;
		__builtin_memcpy(e->saddr, (const char *)ip + 16, 4);
		__builtin_memcpy(e->daddr, (const char *)ip + 12, 4);
	}
}

/* One reset: sent by this host (sk may be NULL: no socket matched the
 * segment `skb`) or received by the local socket `sk`. */
static __always_inline void emit_reset(void *ctx, const void *sk, const void *skb, int sent,
				       __u32 reason, int has_reason)
{
	struct rst_event *e;
	__u64 head[SK_HEAD_WORDS] = {};
	const void *net = 0;
	__u32 ns;

	if (sk) {
		if (bpf_probe_read_kernel(head, sizeof(head), sk))
			return;
		net = AT(head, OFF_SK_NET, const void *);
		ns = net_inum(net);
	} else {
		ns = dev_netns(skb);
	}
	if (!netns_wanted(ns))
		return;
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
		sock_addrs(e, sk, head, sent);
		fill_sock(e, sk, head, net);
		fill_owner(e, (__u64)sk);
		if (sent)
			skb_trigger(e, skb, 0);
	} else {
		skb_trigger(e, skb, 1);
		e->dev_netns = ns;
	}
	if (!ports_wanted(e->sport, e->dport)) {
		ev_drop(e);
		return;
	}
	ev_send(ctx, e);
}

#ifdef HAVE_TP_SEND_RESET
RAW_TRACEPOINT_PROBE(tcp_send_reset)
{
	const void *sk = (const void *)ctx->args[ARG_SR_SK];
	const void *skb = (const void *)ctx->args[ARG_SR_SKB];
#ifdef WANT_KPROBE_SEND_RESET
	/* before 6.10 this tracepoint fires only with a socket; the kprobe
	 * sees the no-socket resets, so none is counted twice */
	if (!sk)
		return 0;
#endif
#ifdef HAVE_TP_SEND_RESET_REASON
	emit_reset(ctx, sk, skb, 1, (__u32)ctx->args[ARG_SR_REASON], 1);
#else
	emit_reset(ctx, sk, skb, 1, 0, 0);
#endif
	return 0;
}
#endif

#ifdef HAVE_TP_RECEIVE_RESET
RAW_TRACEPOINT_PROBE(tcp_receive_reset)
{
	emit_reset(ctx, (const void *)ctx->args[ARG_RR_SK], 0, 0, 0, 0);
	return 0;
}
#endif

#ifdef HAVE_TP_SET_STATE
RAW_TRACEPOINT_PROBE(inet_sock_set_state)
{
	const void *sk = (const void *)ctx->args[ARG_SS_SK];
	int oldstate = (int)ctx->args[ARG_SS_OLD];
	int newstate = (int)ctx->args[ARG_SS_NEW];
	__u64 skaddr = (__u64)sk;
	__u16 proto = 0;

	RD(proto, sk, OFF_SK_PROTOCOL);
	if (proto != IPPROTO_TCP)
		return 0;
	/* TCP state transitions counted here, so a state distribution costs
	 * nothing per event in user space: slot = old * 16 + new */
	int slot = ((oldstate & 15) << 4) | (newstate & 15);
	__u64 *cnt = tcp_transitions.lookup(&slot);
	if (cnt)
		*cnt += 1;
	if (newstate == TCP_SYN_SENT_) {
		__u64 cgroup = bpf_get_current_cgroup_id(), comm[2] = {};
		__u32 pid = bpf_get_current_pid_tgid() >> 32, slot = owner_slot(skaddr, 0);
		struct owner *o = owners.lookup(&slot);

		bpf_get_current_comm(comm, sizeof(comm));
		if (o && o->sk && o->sk != skaddr) {
			/* first way taken by another live socket: the second, unless
			 * that one is taken too (then the first is overwritten) */
			__u32 slot2 = owner_slot(skaddr, 1);
			struct owner *o2 = owners.lookup(&slot2);
			if (o2 && (!o2->sk || o2->sk == skaddr))
				o = o2;
		}
		if (o) {
			o->sk = 0;
			o->cgroup = cgroup;
			o->comm[0] = comm[0];
			o->comm[1] = comm[1];
			o->pid = pid;
			o->check = owner_check(skaddr, cgroup, comm, pid);
			o->sk = skaddr;
		}
	}
	return 0;
}
#endif

#ifdef HAVE_TP_DESTROY_SOCK
RAW_TRACEPOINT_PROBE(tcp_destroy_sock)
{
	/* the socket's memory may be reused by another socket: forget it so
	 * no reset is ever attributed to a wrong process */
	__u64 skaddr = (__u64)ctx->args[ARG_DS_SK];
#pragma unroll
	for (int way = 0; way < 2; way++) {
		__u32 slot = owner_slot(skaddr, way);
		struct owner *o = owners.lookup(&slot);
		if (o && o->sk == skaddr)
			o->sk = 0;
	}
	return 0;
}
#endif

#ifdef HAVE_TP_KFREE_SKB
RAW_TRACEPOINT_PROBE(kfree_skb)
{
	struct rst_event *e;
	const void *skb = (const void *)ctx->args[ARG_KS_SKB];
	__u32 ns;
	__u16 proto = 0;

	if ((__u32)ctx->args[ARG_KS_REASON] != NETFILTER_DROP_REASON)
		return 0;
	ns = skb_netns(skb);
	if (!netns_wanted(ns))
		return 0;
	e = ev_new();
	if (!e)
		return 0;
	e->kind = EV_CT_DROP;
	e->netns = ns;
	e->reason = NETFILTER_DROP_REASON;
	e->flags |= EVF_REASON;
	RD(proto, skb, OFF_SKB_PROTOCOL);
	e->sport = ntohs(proto);  /* L3 protocol (ethertype) of the dropped packet */
	ev_send(ctx, e);
	return 0;
}
#endif

#ifdef HAVE_TP_CONSOLE
RAW_TRACEPOINT_PROBE(console)
{
	/* Only conntrack's and IPVS's lines: "nf_conntrack: table full in
	 * netns N, dropping packet" (rate-limited by the kernel). */
	struct rst_event *e;
	char head[12] = {};
	const char *msg = (const char *)ctx->args[ARG_CON_TEXT];

	bpf_probe_read_kernel(head, sizeof(head), msg);
	if (!(head[0] == 'n' && head[1] == 'f' && head[2] == '_' && head[3] == 'c' &&
	      head[4] == 'o' && head[5] == 'n' && head[6] == 'n' && head[7] == 't') &&
	    !(head[0] == 'I' && head[1] == 'P' && head[2] == 'V' && head[3] == 'S'))
		return 0;
	e = ev_new();
	if (!e)
		return 0;
	e->kind = EV_CT_FULL;
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
	const void *sk = (const void *)PT_REGS_PARM1(ctx);
	const void *skb = (const void *)PT_REGS_PARM2(ctx);
	if (!sk && skb)
		emit_reset(ctx, 0, skb, 1, 0, 0);
	return 0;
}
#endif

#ifdef WANT_KPROBE_TCP_RESET
/* Fallback where tcp:tcp_receive_reset is missing: tcp_reset(sk, skb). */
int kp_tcp_reset(struct pt_regs *ctx)
{
	emit_reset(ctx, (const void *)PT_REGS_PARM1(ctx), 0, 0, 0, 0);
	return 0;
}
#endif

#ifdef WANT_KPROBE_IPVS_EXPIRE
/* ip_vs_conn_expire(struct timer_list *t) is the timer callback that drops
 * an idle IPVS entry; there is no tracepoint for it. The entry is the
 * ip_vs_conn containing the timer (offsets from the ip_vs module's BTF). */
int kp_ip_vs_conn_expire(struct pt_regs *ctx)
{
	const char *cp = (const char *)PT_REGS_PARM1(ctx) - OFF_IPVS_TIMER;
	struct rst_event *e;
	const void *ipvs = 0, *net = 0;
	__u16 af = 0, cport = 0, vport = 0, dport = 0, proto = 0, state = 0;
	__u32 ns;

#ifdef OFF_NETNS_IPVS_NET
	RD(ipvs, cp, OFF_IPVS_IPVS);
	if (ipvs)
		RD(net, ipvs, OFF_NETNS_IPVS_NET);
	ns = net_inum(net);
	if (!netns_wanted(ns))
		return 0;
#else
	/* No BTF for struct netns_ipvs (Debian 6.1/6.12): the namespace is
	 * unknown (0) and only the port filter applies. */
	ns = 0;
	(void)ipvs;
	(void)net;
#endif
	RD(cport, cp, OFF_IPVS_CPORT);
	RD(vport, cp, OFF_IPVS_VPORT);
	RD(dport, cp, OFF_IPVS_DPORT);
	cport = ntohs(cport);
	vport = ntohs(vport);
	dport = ntohs(dport);
	if (!ports_wanted(vport, dport))
		return 0;
	e = ev_new();
	if (!e)
		return 0;
	e->kind = EV_IPVS_EXPIRE;
	e->netns = ns;
	RD(af, cp, OFF_IPVS_AF);
	RD(proto, cp, OFF_IPVS_PROTOCOL);
	RD(state, cp, OFF_IPVS_STATE);
	e->family = af;
	e->proto = proto;
	e->ipvs_state = state;
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

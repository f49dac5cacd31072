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
 * FILTER_PORTS, FILTER_NETNS, HAVE_TP_* for each tracepoint to attach (bcc
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
 * arrives in softirq context, where `current` is arbitrary. */
struct owner {
	__u64 cgroup;
	__u32 pid;
	char comm[16];
};
BPF_TABLE("lru_hash", __u64, struct owner, owners, 65536);

/* Never written: it makes bcc describe struct rst_event exactly as clang
 * laid it out, so a test can compare the Python layout with it. */
BPF_ARRAY(layout_check, struct rst_event, 1);

BPF_PERCPU_ARRAY(tcp_transitions, __u64, 256);

/* Events the ring buffer could not take, counted here so loss is never silent. */
BPF_PERCPU_ARRAY(lost, __u64, 1);

#ifdef FILTER_PORTS
BPF_HASH(port_filter, __u16, __u8, 64);
#endif
#ifdef FILTER_NETNS
BPF_HASH(netns_filter, __u32, __u8, 64);
#endif

#ifdef USE_RINGBUF
BPF_RINGBUF_OUTPUT(events, RINGBUF_PAGES);
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
#ifdef FILTER_PORTS
	if (!port_filter.lookup(&a) && !port_filter.lookup(&b))
		return 0;
#endif
	return 1;
}

static __always_inline int netns_wanted(__u32 ns)
{
#ifdef FILTER_NETNS
	if (!netns_filter.lookup(&ns))
		return 0;
#endif
	return 1;
}

#define RD(dst, base, off) bpf_probe_read_kernel(&(dst), sizeof(dst), (const char *)(base) + (off))

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

static __always_inline __u32 skb_dev_netns(const void *skb)
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
	__u32 ns = skb_dev_netns(skb);
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
 * only received activity counts), and the keepalive in force. */
static __always_inline void fill_sock(struct rst_event *e, const void *sk)
{
	__u64 skflags = 0;
	__u32 rcv_tstamp = 0, lrcvtime = 0, last, kat = 0, kai = 0;
	__u8 kap = 0, st = 0;
	const void *net = sk_net(sk);

	e->flags |= EVF_HAS_SOCK;
	e->netns = net_inum(net);
	RD(st, sk, OFF_SK_STATE);
	e->state = st;
	/* time-wait and request minisocks have no tcp_sock fields */
	if (st == TCP_TIME_WAIT_ || st == TCP_NEW_SYN_RECV_)
		return;
	RD(e->cookie, sk, OFF_SK_COOKIE);

	RD(skflags, sk, OFF_SK_FLAGS);
	if (skflags & (1ULL << SOCK_KEEPOPEN_BIT))
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

	RD(kat, sk, OFF_TP_KA_TIME);
	RD(kai, sk, OFF_TP_KA_INTVL);
	RD(kap, sk, OFF_TP_KA_PROBES);
	if (kat)
		e->flags |= EVF_KA_PER_SOCK;
	else
		RD(kat, net, OFF_NET_KA_TIME);
	if (!kai)
		RD(kai, net, OFF_NET_KA_INTVL);
	if (!kap)
		RD(kap, net, OFF_NET_KA_PROBES);
	e->ka_time = kat;
	e->ka_intvl = kai;
	e->ka_probes = kap;
	e->flags |= EVF_KA;
}

static __always_inline void fill_owner(struct rst_event *e, __u64 skaddr)
{
	struct owner *o = owners.lookup(&skaddr);
	if (!o)
		return;
	e->pid = o->pid;
	e->cgroup = o->cgroup;
	__builtin_memcpy(e->comm, o->comm, sizeof(e->comm));
	e->flags |= EVF_OWNER;
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
static __always_inline void sock_addrs(struct rst_event *e, const void *sk, int sent)
{
	__u16 fam = 0, num = 0, rport = 0;
	__u8 *local = sent ? e->saddr : e->daddr;
	__u8 *remote = sent ? e->daddr : e->saddr;

	__u8 st = 0;

	RD(fam, sk, OFF_SK_FAMILY);
	RD(st, sk, OFF_SK_STATE);
	if (st == TCP_TIME_WAIT_ || st == TCP_NEW_SYN_RECV_) {
		/* minisocks are not inet_socks: sock_common's port is all they have */
		RD(num, sk, OFF_SK_NUM);
	} else {
		RD(num, sk, OFF_INET_SPORT);
		num = ntohs(num);
	}
	RD(rport, sk, OFF_SK_DPORT);
	rport = ntohs(rport);
	e->family = fam;
	if (fam == AF_INET6) {
		bpf_probe_read_kernel(local, 16, (const char *)sk + OFF_SK_V6_RCV_SADDR);
		bpf_probe_read_kernel(remote, 16, (const char *)sk + OFF_SK_V6_DADDR);
	} else {
		bpf_probe_read_kernel(local, 4, (const char *)sk + OFF_SK_RCV_SADDR);
		bpf_probe_read_kernel(remote, 4, (const char *)sk + OFF_SK_DADDR);
	}
	e->sport = sent ? num : rport;
	e->dport = sent ? rport : num;
}

/* The segment a reset answers: its TCP flags (a reset that answers a SYN
 * is a refused connection) and, with `addrs`, its addresses reversed (the
 * reset goes from the segment's destination back to its source). */
static __always_inline void skb_trigger(struct rst_event *e, const void *skb, int addrs)
{
	const unsigned char *head = 0;
	__u16 nh = 0, th = 0;
	__u8 ver = 0, tcph[14] = {};

	if (!skb)
		return;
	RD(head, skb, OFF_SKB_HEAD);
	RD(nh, skb, OFF_SKB_NETWORK_HEADER);
	RD(th, skb, OFF_SKB_TRANSPORT_HEADER);
	if (!head || bpf_probe_read_kernel(tcph, sizeof(tcph), head + th))
		return;
	e->trigger_flags = tcph[13];
	e->flags |= EVF_TRIGGER;
	if (!addrs)
		return;
	e->sport = (tcph[2] << 8) | tcph[3];
	e->dport = (tcph[0] << 8) | tcph[1];
	bpf_probe_read_kernel(&ver, 1, head + nh);
	if ((ver >> 4) == 6) {
		e->family = AF_INET6;
		bpf_probe_read_kernel(e->saddr, 16, head + nh + 24);
		bpf_probe_read_kernel(e->daddr, 16, head + nh + 8);
	} else {
		e->family = AF_INET;
		bpf_probe_read_kernel(e->saddr, 4, head + nh + 16);
		bpf_probe_read_kernel(e->daddr, 4, head + nh + 12);
	}
}

/* One reset: sent by this host (sk may be NULL: no socket matched the
 * segment `skb`) or received by the local socket `sk`. */
static __always_inline void emit_reset(void *ctx, const void *sk, const void *skb, int sent,
				       __u32 reason, int has_reason)
{
	struct rst_event *e;
	__u32 ns = sk ? net_inum(sk_net(sk)) : skb_dev_netns(skb);

	if (!netns_wanted(ns))
		return;
	e = ev_new();
	if (!e)
		return;
	e->kind = EV_RESET;
	e->dir = sent ? DIR_SENT : DIR_RECV;
	if (has_reason) {
		e->reason = reason;
		e->flags |= EVF_REASON;
	}
	if (sk) {
		sock_addrs(e, sk, sent);
		fill_sock(e, sk);
		fill_owner(e, (__u64)sk);
		if (sent)
			skb_trigger(e, skb, 0);
	} else {
		skb_trigger(e, skb, 1);
		e->netns = ns;
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
		struct owner o = {};
		o.pid = bpf_get_current_pid_tgid() >> 32;
		o.cgroup = bpf_get_current_cgroup_id();
		bpf_get_current_comm(&o.comm, sizeof(o.comm));
		owners.update(&skaddr, &o);
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
	owners.delete(&skaddr);
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

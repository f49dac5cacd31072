/* The one event layout shared by the BPF programs and Python
 * (schema/catalog.py mirrors it, with every field it becomes: a unit test
 * parses this file and compares members, offsets, kinds and flags; a kernel
 * test compares with what bcc compiled).
 *
 * One struct for every kind and both address families: a family field and
 * 16-byte addresses (IPv4 in the first 4 bytes). Raw kernel values (state,
 * reason) are carried as they are; Python decodes them with the running
 * kernel's own tables.
 */
#ifndef RSTTRACE_H
#define RSTTRACE_H

enum rst_kind {
	EV_RESET = 1,        /* a TCP reset sent or received */
	EV_CT_DROP = 2,      /* a packet dropped by netfilter (kfree_skb NETFILTER_DROP) */
	EV_CT_FULL = 3,      /* a kernel log line from conntrack / IPVS (printk:console) */
	EV_IPVS_EXPIRE = 4,  /* an IPVS connection entry expired (kprobe ip_vs_conn_expire) */
	EV_CT_ALLOC_FAIL = 5,/* conntrack could not allocate an entry (kretprobe) */
};

enum rst_dir {
	DIR_SENT = 1,
	DIR_RECV = 2,
};

/* bits of rst_event.flags */
#define EVF_HAS_SOCK     0x01  /* a local socket was involved */
#define EVF_KEEPALIVE    0x02  /* SO_KEEPALIVE (SOCK_KEEPOPEN) set */
#define EVF_KA_PER_SOCK  0x04  /* the socket overrides the netns keepalive time */
#define EVF_IDLE         0x08  /* idle_jiffies is valid */
#define EVF_REASON       0x10  /* reason holds a kernel reason */
#define EVF_TRIGGER      0x20  /* trigger_flags holds the triggering segment's TCP flags
                                * (EV_CT_DROP: the dropped segment's, and sport/dport its ports) */
#define EVF_OWNER        0x40  /* pid/comm/cgroup are the socket's owner */
#define EVF_KA           0x80  /* keepalive fields are valid (a full TCP socket) */

/* bits of rst_event.flags2 */
#define EVF2_SK_CGROUP   0x01  /* cgroup is the socket's own (its creator's, or for an
                                * accepted socket its listener's), not a learned owner's */
#define EVF2_L3          0x02  /* EV_CT_DROP: family, saddr, daddr and proto are the dropped
                                * packet's IP header's */
#define EVF2_REASON_DERIVED 0x04 /* EV_CT_DROP: NETFILTER_DROP told from where the packet
                                  * was freed (kernels whose kfree_skb has no reason) */

struct rst_event {
	__u64 ts_ns;          /* bpf_ktime_get_ns(): CLOCK_MONOTONIC */
	__u64 cookie;         /* socket cookie, 0 when unknown */
	__u64 cgroup;         /* owner's cgroup id */
	__u32 netns;          /* netns inode where it happened */
	__u32 dev_netns;      /* no-socket reset: netns of the receiving device */
	__u32 pid;            /* owner's tgid */
	__u32 reason;         /* raw sk_rst_reason / skb_drop_reason */
	__u32 idle_jiffies;   /* since the last data/ACK received */
	__u32 ka_time;        /* effective keepalive time, jiffies */
	__u32 ka_intvl;       /* effective keepalive interval, jiffies */
	__u16 sport;          /* host order; the reset's source (EV_CT_DROP: the packet's) */
	__u16 dport;          /* host order; the reset's destination (EV_CT_DROP: the packet's) */
	__u8  kind;           /* enum rst_kind */
	__u8  dir;            /* enum rst_dir */
	__u8  family;         /* AF_INET / AF_INET6 */
	__u8  state;          /* TCP state of the socket, 0 when none */
	__u8  flags;          /* EVF_* */
	__u8  ka_probes;
	__u8  trigger_flags;  /* TCP flags byte of the segment that triggered a sent reset
	                       * (EV_CT_DROP: of the dropped segment) */
	__u8  proto;          /* IPVS, EV_CT_DROP: L4 protocol */
	__u8  saddr[16];      /* the reset's source (IPVS: client; EV_CT_DROP: the packet's) */
	__u8  daddr[16];      /* the reset's destination (IPVS: virtual address; EV_CT_DROP:
	                       * the packet's) */
	__u8  raddr[16];      /* IPVS: real server */
	__u16 rport;          /* IPVS: real server port; EV_CT_DROP: the packet's ethertype */
	__u16 ipvs_state;     /* IPVS: connection state */
	__u8  flags2;         /* EVF2_* */
	__u8  _pad[3];
	char  comm[16];       /* owner's comm */
	char  text[96];       /* EV_CT_FULL: the log line (NUL-terminated or cut);
	                       * left unwritten by the other kinds */
};

/* Storm mode (STORM_RATE): above that many resets per second on a CPU,
 * resets are counted per key in a per-CPU hash (key -> value below) and
 * only a bounded sample per key and interval is sent as full events. The
 * key holds what the classifier needs; of the two ports only the lower is
 * kept (the service's: the other is an ephemeral port that would make every
 * refused connect a key of its own), the other is 0. User space drains one
 * epoch while the programs count into the next (tracer/session.py). */
#define AGGF_SYN 0x01      /* the triggering segment had SYN */

struct rst_agg_key {
	__u8  saddr[16];      /* the reset's source */
	__u8  daddr[16];      /* the reset's destination */
	__u32 netns;
	__u32 reason;         /* raw sk_rst_reason, with EVF_REASON in flags */
	__u32 epoch;          /* the interval it was counted in (storm_epoch) */
	__u16 sport;          /* the lower port kept, the other 0 */
	__u16 dport;
	__u8  dir;            /* enum rst_dir */
	__u8  family;
	__u8  state;
	__u8  flags;          /* EVF_HAS_SOCK | EVF_REASON | EVF_TRIGGER of the resets */
	__u8  aflags;         /* AGGF_* */
	__u8  _pad[3];
};

struct rst_agg_val {
	__u64 count;          /* resets counted, not sent in full */
	__u64 first_ns;       /* bpf_ktime_get_ns() of the first counted */
	__u64 last_ns;        /* and of the last */
	__u64 sampled;        /* resets of this key sent in full this interval */
};

#endif

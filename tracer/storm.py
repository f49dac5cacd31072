"""Storm mode's settings (bpf/rsttrace.bpf.c, storm_count): above a rate of
resets per CPU the programs count resets per key in the kernel and send a
bounded sample in full; the tracer drains the counts once per interval as
`reset_agg` records (tracer/session.py). No imports: the commands read the
default for their --help without loading the tracer."""

# Resets per second on a CPU above which they are counted per key instead of
# sent in full. Measured before storm mode (docs/PERFORMANCE.md, against
# tcpdump): at a loop per CPU, about 75,000 refused connects/s per CPU and
# two resets each, `rsttrace record` cost the storm 6.6 %: about 0.45 us of
# CPU per full event, everything included. At this rate that is under 0.5 %
# of a CPU, and every reset of a source this slow is still seen in full.
STORM_RATE = 10000
# full events per key, interval and CPU in a storm
STORM_SAMPLE = 8
# how long the programs count into one interval (epoch) of the aggregation
# map before user space moves them on; the interval before the one just
# left is drained then, a whole interval after any program read its number
STORM_INTERVAL_S = 1.0
# after the last move, before the final drain: longer than any program run
STORM_GRACE_S = 0.05

"""rsttrace.remedy: turn recommended fixes into a checked, reversible change.

Layers, each usable alone:
- `keys`: what can be changed, its scope, sane range and which way is "stronger";
- `netns`: naming a network namespace (inode and cookie: the same one, not
  a later one with its inode) and reading/writing values inside it;
- `planner`: proposals (from analysis fixes, config findings or `--set`)
  merged and validated into a `Plan` of `Change`s plus hand-overs;
- `apply`: the transaction (journal first, read-back, rollback on failure),
  persistence and `rollback_last`, each under `lock.fix_lock` (one run at a
  time).
Every error a caller sees derives from `model.RemedyError` (`netns.NetnsError`,
`netns.AccessError`, `apply.ApplyError`, `apply.JournalError`,
`lock.LockHeld`). Nothing here imports bcc or textual.
"""

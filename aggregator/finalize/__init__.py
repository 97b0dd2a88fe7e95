"""Finalize: wait for every stream's eof, then, under the job's lock, turn staging into artifacts.

- `handler`: the HTTP route (admin token, job id, the optional JSON body);
- `job`: `finalize_job`, the orchestration, in the order replicas rely on;
- `lock`: `JobLock`, the job's finalize lock in storage;
- `manifest`: which chunks a finalize wrote (the manifest's bytes) and the numbering of new chunks;
- `worker`, `child`: finalizes in a child process of their own (`finalize_process=child`, the default).

The pure merge of batches into artifacts is `aggregator.artifacts`.
"""

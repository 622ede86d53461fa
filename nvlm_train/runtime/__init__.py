"""The distributed runtime: where this process sits in the job, process groups, the CPU runtime, sessions."""

"""`toolgate serve --workers N`: N gateway processes on one agent port, and their supervisor.

The supervisor (`supervisor`) loads the config once and checks what a gateway would refuse at
start (`preflight`: the same one-line errors, before any worker exists), then starts N
workers (`worker`: what each knows of its place):
`python -m gateway serve --config FILE --worker I/N`, fresh interpreters (nothing forked
from a process that has threads or an event loop). Each worker is a whole gateway, with
these differences (`gateway.serve`):

- **Agent port.** Every worker binds it with SO_REUSEPORT; the kernel spreads new
  connections across them. They share the state store (SQLite in WAL mode, whose changes take
  the file's write lock, or PostgreSQL), so idempotency keys, budgets, the approval
  queue and kill switches hold across workers exactly as across replicas.
- **Audit.** One chain per worker, in its own file: worker 1 writes `audit.file`, worker i
  `<stem>.w<i><suffix>` beside it (`gateway.audit.files.worker_file`), so `toolgate audit`
  finds them all from the config, and each worker resumes its own chain at a restart.
- **Admin port.** Worker 1's alone, opened once every worker listens on the agent port (so
  `/readyz` answering means all of them serve). `/metrics` adds up every worker's values
  (prometheus_client's multiprocess mode, in a directory the supervisor makes for the run
  and removes). A reload by `POST /v1/policy/reload` is passed on to every other worker
  (their records say `trigger: worker`); SIGHUP to the supervisor reaches every worker.
  Kill switches set there reach the others by the store, within `killswitch.poll_ms`.
- **Logs** name the worker (`"worker": 2` in JSON, `worker=2` on a console); the
  supervisor's say `supervisor` (`gateway.logs`).
- **Metrics** of every process: `process_*{worker="1"…"N"|"supervisor"}`, read from each
  one's `/proc` when worker 1 is scraped (each leaves its pid in the run's directory).

Workers talk to the supervisor over one pipe (`I listening`, `1 reload`, `I failed <error>`);
the supervisor talks to them by signals: SIGTERM (stop), SIGINT (a second Ctrl-C: cut the
drain short), SIGHUP (reload), SIGUSR1 (reload: another worker did), SIGUSR2 (worker 1:
every worker listens, open the admin port).

**Starting.** A worker that cannot start (a port, the store, its audit file) says why on the
pipe and exits 1; the supervisor prints that `error:` line once, however many workers fail
alike, stops the others and exits 1.

**Stopping.** SIGTERM or SIGINT to the supervisor is passed to every worker, which drains
as one gateway does (`gateway.listener.drain`: unready at once, calls in flight finish
within `shutdown.drain_ms`) and stops (its chain ends with `closed`); a worker still running
`shutdown.delay_ms + drain_ms` plus `TEARDOWN_S` (10 s) later is killed. **A worker that
dies** stops the others the same way and the supervisor exits 1: fail closed, and let what
runs the gateway (Kubernetes, systemd) restart it whole, rather than run on at part
capacity with a crash nobody sees. A worker started by a
supervisor that is then killed gets SIGTERM from the kernel (`PR_SET_PDEATHSIG`), or sees
its parent gone, and stops: no orphans. The exit code is 0 only when every worker stopped
cleanly after a stop was asked for.
"""

from gateway.workers.preflight import preflight
from gateway.workers.supervisor import Supervisor, supervise
from gateway.workers.worker import MAX_WORKERS, Worker, WorkersError, workers_count

__all__ = ["MAX_WORKERS", "Supervisor", "Worker", "WorkersError", "preflight", "supervise",
           "workers_count"]

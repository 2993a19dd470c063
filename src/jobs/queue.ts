/**
 * Enqueueing background work on graphile-worker's PostgreSQL queue, inside the caller's
 * transaction: a job exists exactly when the state change that needs it committed.
 */
import type { Queryable } from '../store/db.ts';

export type JobName = 'order_expire' | 'payment_poll' | 'refund_poll' | 'refund_overpayment';

const MAX_ATTEMPTS = 25;

export async function enqueueJob(
  tx: Queryable,
  name: JobName,
  payload: Record<string, unknown>,
  opts: { runAt?: Date; jobKey?: string; maxAttempts?: number } = {},
): Promise<void> {
  await tx.query(
    `SELECT graphile_worker.add_job($1, $2::json, run_at := $3, job_key := $4, max_attempts := $5)`,
    [name, JSON.stringify(payload), opts.runAt ?? null, opts.jobKey ?? null, opts.maxAttempts ?? MAX_ATTEMPTS],
  );
}

/**
 * The background worker: graphile-worker over the same PostgreSQL, so any number of worker
 * processes share the load through row locks (SKIP LOCKED) alone.
 */
import { run, type Runner, type TaskList, type Logger as GwLogger } from 'graphile-worker';
import { Logger } from 'graphile-worker';
import type { Pool } from '../store/db.ts';
import type { SyncContext } from '../payments/sync.ts';
import { expireOrder, pollPayment } from '../payments/sync.ts';
import { runSettlement } from '../settlement/settlement.ts';
import { pollRefund, refundOverpayment } from '../refunds/refunds.ts';
import { previousBillDate, reconcileFromChannel } from '../reconciliation/reconcile.ts';
import { BILL_READERS } from '../reconciliation/readers.ts';
import type { Logger as PinoLogger } from 'pino';

function gwLogger(log: PinoLogger): GwLogger {
  return new Logger(() => (level, message, meta) => {
    // A Ctrl-C reaches the embedded PostgreSQL too (same process group): its connections closing
    // under the worker during shutdown is expected, not an error.
    const shutdownNoise = /terminating connection due to administrator command/.test(message);
    const fn = level === 'error' && !shutdownNoise ? log.error.bind(log) : level === 'warning' || shutdownNoise ? log.warn.bind(log) : log.debug.bind(log);
    fn({ worker: meta }, message);
  });
}

function str(payload: unknown, key: string): string {
  const v = (payload as Record<string, unknown> | null)?.[key];
  if (typeof v !== 'string' || v.length === 0 || v.length > 64) throw new Error(`job payload lacks ${key}`);
  return v;
}

export function taskList(ctx: SyncContext, log: PinoLogger): TaskList {
  return {
    payment_poll: async (payload) => {
      const paymentId = str(payload, 'payment_id');
      const attempt = Number((payload as { attempt?: unknown }).attempt ?? 0);
      const result = await pollPayment(ctx, paymentId, Number.isInteger(attempt) && attempt >= 0 ? attempt : 0);
      log.debug({ job: 'payment_poll', payment_id: paymentId, attempt, result }, 'polled payment');
    },
    refund_poll: async (payload) => {
      const refundId = str(payload, 'refund_id');
      const attempt = Number((payload as { attempt?: unknown }).attempt ?? 0);
      const result = await pollRefund(ctx, refundId, Number.isInteger(attempt) && attempt >= 0 ? attempt : 0);
      log.debug({ job: 'refund_poll', refund_id: refundId, attempt, result }, 'polled refund');
    },
    refund_overpayment: async (payload) => {
      const paymentId = str(payload, 'payment_id');
      const result = await refundOverpayment(ctx, paymentId);
      log.info({ job: 'refund_overpayment', payment_id: paymentId, result }, 'automatic refund of an extra payment');
    },
    /**
     * Yesterday's bill (in each channel's bill time zone) of every channel whose bills can be
     * downloaded and read. One channel failing does not keep the others from running; its
     * failure is logged (and kept on the reconciliation when it got that far), for the next day's
     * run or a person with `npm run reconcile` to take up.
     */
    reconcile_daily: async () => {
      for (const [channel, connector] of ctx.channels) {
        const reader = BILL_READERS[channel];
        if (!reader || !connector.downloadBill) continue;
        const billDate = previousBillDate(channel);
        try {
          const r = await reconcileFromChannel(ctx, { channel, billDate, reader });
          log.info({ job: 'reconcile_daily', channel, bill_date: billDate, reconciliation_id: r.id, summary: r.summary }, 'daily reconciliation');
        } catch (err) {
          log.error({ job: 'reconcile_daily', channel, bill_date: billDate, err }, 'daily reconciliation failed');
        }
      }
    },
    settlement_run: async () => {
      const s = await runSettlement(ctx.db, { asOf: new Date() });
      log.info({ job: 'settlement_run', settlement_id: s.id, statements: s.statement_count }, 'scheduled settlement run');
    },
    order_expire: async (payload) => {
      const orderId = str(payload, 'order_id');
      const result = await expireOrder(ctx, orderId);
      log.info({ job: 'order_expire', order_id: orderId, result }, 'order expiry');
    },
  };
}

/** graphile-worker crontab line for the daily settlement run ('off' disables it). */
export function settlementCrontab(schedule: string | undefined): string {
  const s = (schedule ?? '0 2 * * *').trim();
  if (s === 'off') return '';
  if (!/^(\S+\s+){4}\S+$/.test(s)) throw new Error(`KNOWPAY_SETTLEMENT_CRON must be five cron fields or 'off', got '${s}'`);
  return `${s} settlement_run ?max=3`;
}

/** graphile-worker crontab line for the daily reconciliation ('off' disables it). */
export function reconcileCrontab(schedule: string | undefined): string {
  const s = (schedule ?? '30 10 * * *').trim();
  if (s === 'off') return '';
  if (!/^(\S+\s+){4}\S+$/.test(s)) throw new Error(`KNOWPAY_RECONCILE_CRON must be five cron fields or 'off', got '${s}'`);
  return `${s} reconcile_daily ?max=3`;
}

export async function startWorker(opts: { pool: Pool; ctx: SyncContext; log: PinoLogger; concurrency: number; pollIntervalMs?: number }): Promise<Runner> {
  return run({
    crontab: [settlementCrontab(process.env.KNOWPAY_SETTLEMENT_CRON), reconcileCrontab(process.env.KNOWPAY_RECONCILE_CRON)].filter(Boolean).join('\n'),
    pgPool: opts.pool,
    taskList: taskList(opts.ctx, opts.log),
    concurrency: opts.concurrency,
    noHandleSignals: true,
    pollInterval: opts.pollIntervalMs ?? 1000,
    logger: gwLogger(opts.log),
  });
}

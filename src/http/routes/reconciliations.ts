/**
 * Reconciliation: upload a channel's bill as the raw body (its own format and encoding, streamed
 * to a temporary file, never held in memory), or name a channel and day to download it.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { pipeline } from 'node:stream/promises';
import { Transform, type Readable } from 'node:stream';
import type { FastifyPluginAsync } from 'fastify';
import type { AppContext } from '../context.ts';
import { ApiError, invalid } from '../../domain/errors.ts';
import { dailySummary, getReconciliation, listExceptions, listReconciliations, reconcileFromChannel, resolveException, runReconciliation } from '../../reconciliation/reconcile.ts';
import { BILL_READERS } from '../../reconciliation/readers.ts';
import type { ChannelName } from '../../channels/types.ts';

export const MAX_BILL_BYTES = 1024 * 1024 * 1024;

async function saveUpload(body: Readable): Promise<string> {
  const file = path.join(os.tmpdir(), `knowpay-bill-${randomBytes(8).toString('hex')}`);
  let bytes = 0;
  const limit = new Transform({
    transform(chunk: Buffer, _enc, cb) {
      bytes += chunk.length;
      if (bytes > MAX_BILL_BYTES) cb(new ApiError(413, 'invalid_request_error', 'body_too_large', `A bill may be at most ${MAX_BILL_BYTES} bytes`));
      else cb(null, chunk);
    },
  });
  await pipeline(body, limit, fs.createWriteStream(file));
  if (bytes === 0) { fs.rmSync(file, { force: true }); throw invalid('bill_missing', 'Send the bill file as the request body', 'body'); }
  return file;
}

export const reconciliationRoutes: FastifyPluginAsync<{ ctx: AppContext }> = async (app, { ctx }) => {
  app.removeAllContentTypeParsers();
  app.addContentTypeParser('application/json', { parseAs: 'string', bodyLimit: 64 * 1024 }, (_req, body, done) => {
    try { done(null, JSON.parse(body as string)); } catch { done(new ApiError(400, 'invalid_request_error', 'invalid_json', 'The request body is not valid JSON'), undefined); }
  });
  app.addContentTypeParser('*', (_req, payload, done) => done(null, payload));

  app.post<{ Querystring: { channel?: string; bill_date?: string } }>('/v1/reconciliations', {
    schema: { tags: ['reconciliation'], description: 'Upload a bill as the raw body with ?channel=&bill_date=, or JSON { channel, bill_date } to download it from the channel.' },
  }, async (req) => {
    const isStream = typeof (req.body as Readable | undefined)?.pipe === 'function';
    const body = (isStream ? {} : (req.body ?? {})) as { channel?: unknown; bill_date?: unknown };
    const channel = String(req.query.channel ?? body.channel ?? '') as ChannelName;
    const billDate = String(req.query.bill_date ?? body.bill_date ?? '');
    const reader = BILL_READERS[channel];
    if (!reader) throw invalid('channel_not_reconcilable', `No bill format known for channel '${channel}'`, 'channel');
    if (!isStream) return reconcileFromChannel({ db: ctx.db, channels: ctx.channels }, { channel, billDate, reader });
    const file = await saveUpload(req.body as Readable);
    try {
      return await runReconciliation({ db: ctx.db, channels: ctx.channels }, { channel, billDate, source: 'upload', file, reader });
    } finally {
      fs.rmSync(file, { force: true });
    }
  });
  app.get<{ Querystring: { limit?: string; starting_after?: string; bill_date?: string; channel?: string } }>('/v1/reconciliations', {
    schema: { tags: ['reconciliation'], description: 'Runs, newest first; filter by bill_date and channel.' },
  }, async (req) => {
    const limit = Math.min(Math.max(Number(req.query.limit ?? 10) || 10, 1), 100);
    return listReconciliations(ctx.db, { limit, starting_after: req.query.starting_after, bill_date: req.query.bill_date, channel: req.query.channel });
  });
  app.get<{ Querystring: { bill_date?: string } }>('/v1/reconciliations/daily_summary', {
    schema: { tags: ['reconciliation'], description: "A bill day across channels: each channel's latest completed run, its open exceptions, totals, and channels whose runs failed." },
  }, async (req) => {
    if (!req.query.bill_date) throw invalid('parameter_missing', 'bill_date (YYYY-MM-DD) is required', 'bill_date');
    return dailySummary(ctx.db, req.query.bill_date);
  });
  app.get<{ Params: { id: string } }>('/v1/reconciliations/:id', { schema: { tags: ['reconciliation'] } }, async (req) => getReconciliation(ctx.db, req.params.id));
  app.get<{ Params: { id: string }; Querystring: { limit?: string; starting_after?: string; kind?: string } }>('/v1/reconciliations/:id/exceptions', { schema: { tags: ['reconciliation'] } }, async (req) => {
    const limit = Math.min(Math.max(Number(req.query.limit ?? 10) || 10, 1), 100);
    return listExceptions(ctx.db, req.params.id, { limit, starting_after: req.query.starting_after, kind: req.query.kind });
  });
  app.post<{ Params: { id: string; exception_id: string }; Body: { action?: string; reason?: string } }>('/v1/reconciliations/:id/exceptions/:exception_id/resolve', { schema: { tags: ['reconciliation'] } }, async (req) => {
    const action = req.body?.action;
    const reason = req.body?.reason;
    if (action !== 'accept' && action !== 'ignore') throw invalid('parameter_invalid', "action must be 'accept' or 'ignore'", 'action');
    if (typeof reason !== 'string' || reason.trim() === '' || reason.length > 500) throw invalid('parameter_missing', 'a reason (1-500 characters) is required', 'reason');
    if (!/^\d{1,18}$/.test(req.params.exception_id)) throw invalid('parameter_invalid', 'unknown exception id', 'exception_id');
    return resolveException(ctx.db, req.params.id, req.params.exception_id, { action, reason });
  });
};
